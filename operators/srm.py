"""Sample ratio mismatch (SRM) of A/B experiments, in tumbling event-time windows.

An experiment splits its traffic between variants in planned shares (50/50,
90/10, ...). When the observed counts are too far from that split to be
chance, assignment or logging is broken (a variant crashes, a bot hits one
arm, a redirect loses users) and every metric of the experiment is suspect:
the SRM check (Fabijan, A., Gupchup, J., Gupta, S., Omhover, J., Qin, W.,
Vermeer, L. & Dmitriev, P. (2019), "Diagnosing Sample Ratio Mismatch in
Online Controlled Experiments: A Taxonomy and Rules of Thumb for
Practitioners", KDD 2019, 2156-2164; Kohavi, Tang & Xu (2020), "Trustworthy
Online Controlled Experiments", ch. 21).

Per (experiment, window) -- windows [start, start + window_ms) by the
impression's event time, closed when the watermark reaches their end -- the
unit is counted per variant: impressions, or distinct `user_id`s
(unit="users"; a user seen in several variants counts in each, and their
number is reported as `crossover`). Impressions without an experiment or a
variant are ignored.

Expected shares p_i: `splits[experiment]` (normalised to sum 1; a planned
variant with no traffic counts 0 -- the strongest mismatch), else an equal
split over the variants seen in the window. Variants seen but not planned are
left out of the test and reported as `unexpected`. With n = sum of the tested
counts O_i and E_i = n p_i, Pearson's chi-square goodness of fit (Pearson, K.
(1900), Philosophical Magazine 50(302):157-175):

    chi2 = sum_i (O_i - E_i)^2 / E_i,   df = k - 1,   p = P(X^2_df >= chi2)

computed directly, p by scipy.special.chdtrc (the chi-square survival function;
scipy.stats.chisquare(O, f_exp=E) gives the same, and is the tests' reference,
but its argument checking costs far more than the test itself, twice per
experiment and window: BENCHMARKS.md). Fabijan et al. flag an SRM
at p < 0.0005 to 0.001: the test runs every window, so a loose alpha would
raise false alarms daily.

Two tests, two jobs (docs/monitors/srm.md):

1. Per window, at the false-alarm budget (issue 13). Accumulated evidence:
   per (experiment, variant) two CUSUMs of the binomial log-likelihood ratio
   of the variant's count, for a share `sequential_shift` above and below its
   expected share (operators.sequential_rates, Page 1954), updated once per
   judged window in window order. exp(-S) is a valid p-value at every window
   (Ville's inequality), so an imbalance too small for any one window (a 45/55
   split in an experiment of 300 units a window: each window adds about
   300 KL(0.55 || 0.5) = 1.5 nats) is caught within about ten, and, unlike a
   test since the start, a mismatch that begins after weeks of clean traffic
   is not diluted by them (the CUSUM restarts at 0 whenever the evidence
   does). The observation's value and p-value combine the window's
   chi-square p (1 when the window's deviation is under `min_deviation`)
   with the 2k CUSUMs by Bonferroni:

       p = min(1, (2k + 1) min(p_chi2, min_j exp(-S_j)))

   The default rule `srm` is critical below the per-window level of the
   budget (operators.stats.alpha_for_budget: 1 false alert per 1,000
   experiment-days over 288 five-minute windows a day, 3.5e-6).

2. Cumulatively since the experiment's start, with Statsig's tiers. Per
   experiment the counts of every closed window add up (one counter per
   variant), and each window close tests them too: Observation(metric=
   "srm_cumulative_p", window_start = the experiment's first window). This
   test is looked at after every window, so a fixed-sample chi-square would
   raise false alarms more and more often as the experiment runs (the
   peeking problem); its p-value is an always-valid one: per arm, the
   normal-mixture SPRT (operators/msprt.py; Johari, Pekelis & Walsh 2015) of
   the arm's share against its expected share p_i, Delta = O_i/n - p_i with
   the null variance V = p_i (1 - p_i) / n and mixing scale
   `cumulative_tau`, running minimum of 1/Lambda over the looks, Bonferroni
   over the k arms (min_i p_i x k). P(the p-value ever falls under a)
   <= a over the experiment's whole life, however often it is looked at
   (Ville's inequality). That is a lifetime bound; the false-alarm budget
   (issue 13) is per experiment-day, and a quiet experiment spends most of
   its lifetime alpha in its first hours, while its counts are small (the
   quiet-data benchmark, DETECTION_QUIET.md: 0.4 % of 1,000 one-day
   experiments crossed the warning tier). So the lifetime alpha is spread
   over `cumulative_spending_days` (D, default 10) experiment-days by a
   uniform alpha-spending function in calendar time, one step a day (Lan &
   DeMets 1983; `spending`): with d the days the experiment has started
   (event time since its first window), the value judged is

       p = min(1, p_av / s),   s = min(1, d / D)

   and P(a quiet experiment gets a tier-a alert by the end of its day d)
   <= P(p_av ever < a s(d)) <= a min(1, d / D): at most a / D false alerts
   per experiment-day, for any number of arms and any traffic -- with the
   tiers of the default rule `srm_cumulative` (warning at p < 0.01 =
   `warning_alpha`, critical at p < 0.001 = `alpha`), 1 and 0.1 per 1,000
   experiment-days, the budget. After D days the lifetime bound alone
   holds (at most a of the experiments ever). The running minimum restarts
   (the arms' running p back to 1) when the shares since the start are
   back within `min_deviation` of the plan, which is also when the alert
   resolves: without the restart a quiet experiment whose running minimum
   once crossed a tier alerted again whenever its deviation wandered back
   over `min_deviation` (two of the benchmark's quiet experiments raised
   two alerts each). Any alert still needs p_av < a s at its look, so the
   bound on experiments alerted stands. While the shares stay off the plan
   the alert stays (the experiment's data since its start is compromised:
   restart the experiment under a new name).

   The cumulative mSPRT does not replace the CUSUMs of (1): it catches a
   small imbalance present since the start, but a mismatch that starts late
   is weighed against all the clean traffic before it; the CUSUMs are the
   accumulated evidence of issue 13 and keep the per-window alert's
   resolution (capped at `cusum_cap` nats, so it clears within a few windows
   after the incident).

Minimum deviation (as Statsig does: no alert for a deviation too small to
matter however large the sample): a test whose largest absolute difference
between an observed and an expected share, max_i |O_i/n - p_i|, is under
`min_deviation` (default 0.01, one percentage point) reports value 1.0 (the
cumulative test) or a chi-square p of 1.0 (the window's); the raw p-values
stay in the details.

A window is judged when n >= min_total (30, a sanity floor: the p-value is
the evidence, and Pearson's approximation holds from about five expected per
variant) and it has at least two tested variants. Output, per judged window:

- a row in `srm_checks`: window_start, window_end, experiment, unit,
  variants (comma list, sorted), counts ({variant: count}), expected
  ({variant: share}), unexpected ({variant: count}), chi2, p_value (the
  window's chi-square p), total, srm (1 when p_value < alpha and the
  deviation is at least min_deviation);
- Observation(kind="srm", entity=experiment, metric="srm_chi2_p", value=p,
  p_value=p (the combined p of (1)), n=total, ts=window_end), details:
  counts, expected, unexpected, observed (shares), shares and planned
  (the same as text), chi2, chi2_p, p_sequential, df, total, unit, alpha,
  max_deviation, crossover (users only), and the drill-down below when
  p < warning_alpha;
- Observation(metric="srm_cumulative_p") of (2), details likewise (scope
  "cumulative", and its own drill-down over the cumulative dimension counts).

Drill-down: when a test reaches the warning level, the same chi-square is run
per value of each dimension present on the impressions (`dimensions`:
campaign_id, ad_id, model_id; at most `max_dimension_values` values per
dimension and window -- or experiment, for the cumulative test, whose
dimension counts add up like its totals -- the rest pooled as "(other)"),
and the details carry
the most significant ones (`drilldown`) and the one that carries the mismatch
(`mismatch_in`, e.g. "campaign_id=camp-3", when its own p-value is below the
warning level; else "spread").

Crossover: a user seen in more than one arm of an experiment within a window
(an exact map user -> first arm per window, bounded by `max_tracked_users`
users per window; later users are not tracked and counted in `untracked`).
Observation(kind="experiment", metric="crossover_rate") = crossed users /
tracked users, judged by the rule `experiment_crossover` (default: warning
above 1 %).

Rows per window also go to `experiment_windows` (contract v2), one per
variant: metric `share` (window) and `share_cumulative`; value = observed
share, n = the variant's count, control_value = its expected share, p_value =
the test's p-value.

State is the open windows (counts, dimension counts, user maps), per
experiment one counter per variant and per (dimension value, variant), one
running p per variant, and one float per (experiment, variant, direction)
with CUSUM evidence (a CUSUM back at 0 is dropped): bounded by window_ms plus
the lateness, max_dimension_values and the number of experiments. Counting is commutative, so any
arrival order within the lateness gives the sorted input's result. It is
typed and versioned (`SrmState`, format 2, `operators.state`): the CUSUMs are
keyed by (experiment, variant, "+" | "-") tuples; format 1 (positional window
lists, "\x1f"-joined CUSUM keys) is upgraded on restore.

>>> counts = {"A": 4500, "B": 5500}
>>> round(srm_test(counts, None)[3], 1)  # chi2 = (500^2 + 500^2) / 5000
100.0
>>> round(max_deviation({"A": 4500, "B": 5500}, {"A": 0.5, "B": 0.5}), 12)
0.05
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from scipy.special import chdtrc

from operators.base import Observation, Operator
from operators.msprt import always_valid_p
from operators.rules import FALSE_ALARM_BUDGET
from operators.rules import rule_spec as _rule
from operators.sequential_rates import cusum_step
from operators.state import StateCodec
from operators.stats import alpha_for_budget
from operators.windows import TumblingWindows, window_start
from schemas.events import Impression
from schemas.rows import ExperimentWindowRow, SrmCheckRow

SRM_TABLE = SrmCheckRow.__table__.name
EXPERIMENT_TABLE = ExperimentWindowRow.__table__.name
OTHER = "(other)"


@dataclass(frozen=True)
class SrmConfig:
    window_ms: int = 300_000
    unit: Literal["impressions", "users"] = "impressions"
    min_total: int = 30
    # experiment -> variant -> expected share (normalised); absent: equal split
    splits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # the cumulative test's tiers (the default rule `srm_cumulative` uses the same
    # numbers): critical level, also the window row's `srm` flag ...
    alpha: float = 0.001
    warning_alpha: float = 0.01  # ... and warning level; drill-down from here
    # smallest max |observed - expected share| that counts as a mismatch (Statsig-style)
    min_deviation: float = 0.01
    cumulative: bool = True
    cumulative_tau: float = 0.02  # mSPRT mixing scale of a share's deviation
    # the tiers' lifetime alpha spread over this many experiment-days (a day's share
    # from each day's start): at most alpha / days false alerts per experiment-day.
    # 0: no spreading (the lifetime bound only)
    cumulative_spending_days: float = 10.0
    # the per-window CUSUMs (accumulated evidence at the budget, issue 13)
    sequential_shift: float = 0.05  # share shift the CUSUMs are tuned to
    cusum_cap: float = 20.0  # nats of evidence kept: a quick resolve after the incident
    dimensions: tuple[str, ...] = ("campaign_id", "ad_id", "model_id")
    max_dimension_values: int = 1000
    drilldown_top: int = 5
    drilldown_min_total: int = 20
    max_tracked_users: int = 200_000  # crossover: users tracked per experiment window

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= self.warning_alpha < 1:
            raise ValueError("srm needs 0 < alpha <= warning_alpha < 1")
        if not 0 <= self.min_deviation < 1:
            raise ValueError("srm min_deviation must be in [0, 1)")
        if not 0 < self.sequential_shift < 1 or self.cusum_cap <= 0:
            raise ValueError("srm sequential_shift must be in (0, 1) and cusum_cap > 0")
        if self.unit not in ("impressions", "users"):
            raise ValueError(f"srm unit must be 'impressions' or 'users', got {self.unit!r}")
        if self.window_ms <= 0 or self.min_total < 1:
            raise ValueError("srm window_ms and min_total must be positive")
        if self.cumulative_spending_days < 0:
            raise ValueError("srm cumulative_spending_days must be >= 0")
        for experiment, split in self.splits.items():
            if len(split) < 2 or any(s <= 0 for s in split.values()):
                raise ValueError(f"srm split of {experiment!r} needs >= 2 positive shares")


class SrmWindow(msgspec.Struct):
    """Counts of one (experiment, window): impressions, or user ids, per variant;
    per dimension value and variant; each user's first arm and the crossed users.

    Sets of users are dicts with None values: insertion-ordered, so a restored
    window lists them (and snapshots them) in the order the original did."""

    counts: dict[str, int] = {}
    users: dict[str, dict[str, None]] = {}  # variant -> its user ids
    dims: dict[str, dict[str, dict[str, int]]] = {}  # dim -> value -> variant -> n
    arms: dict[str, str] = {}  # user -> first variant seen
    crossed: dict[str, None] = {}  # users seen in more than one arm
    untracked: int = 0


class Cumulative(msgspec.Struct):
    """One experiment since its start: the counts of its closed windows, each arm's
    always-valid running p, and the dimension counts (dim -> value -> variant -> n)."""

    first: int  # start of its first window
    counts: dict[str, int] = {}
    running: dict[str, float] = {}
    dims: dict[str, dict[str, dict[str, int]]] = {}


#: a CUSUM of the per-window evidence: (experiment, variant, "+" | "-")
CusumKey = tuple[str, str, str]


class SrmState(msgspec.Struct):
    """What a checkpoint keeps."""

    unit: str  # "impressions" or "users" ("" in a format-1 snapshot that did not say)
    windows: dict[int, dict[str, SrmWindow]] = {}  # start -> experiment -> window
    cumulative: dict[str, Cumulative] = {}
    cusum: dict[CusumKey, float] = {}  # -> S (a CUSUM back at 0 is dropped)


def _from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """Format 1: windows as [start, experiment, per-variant counts or sorted user ids,
    dims, arms, sorted crossed users, untracked] (the first three only before the
    drill-down and crossover), cumulative entries as [first, counts, running p, dims]
    (the last two absent before the mSPRT and drill-down), CUSUMs keyed by
    "experiment\x1fvariant\x1f+|-"; what a field's absence stood for is kept."""
    unit = old.get("unit", "")
    windows: dict[int, dict[str, dict[str, Any]]] = {}
    for entry in old["windows"]:
        start, experiment, per_variant = entry[:3]
        users = unit == "users" or any(isinstance(v, list) for v in per_variant.values())
        window: dict[str, Any] = (
            {"users": {v: dict.fromkeys(ids) for v, ids in per_variant.items()}}
            if users
            else {"counts": per_variant}
        )
        if len(entry) > 3:
            window.update(
                dims=entry[3], arms=entry[4], crossed=dict.fromkeys(entry[5]), untracked=entry[6]
            )
        windows.setdefault(start, {})[experiment] = window
    cumulative = {
        e: {
            "first": entry[0],
            "counts": entry[1],
            "running": entry[2] if len(entry) > 2 else {},
            "dims": entry[3] if len(entry) > 3 else {},
        }
        for e, entry in old.get("cumulative", {}).items()
    }
    cusum = {tuple(k.split("\x1f")): s for k, s in old.get("cusum", {}).items()}
    return {"unit": unit, "windows": windows, "cumulative": cumulative, "cusum": cusum}


CODEC = StateCodec("srm", SrmState, format=2, upgrades={1: _from_format_1})


DAY_MS = 86_400_000


def spending(age_ms: int, days: float) -> float:
    """The share of the lifetime alpha an experiment of age `age_ms` may have spent:
    min(1, d / days), d the days it has started (1 in its first 24 h of event time);
    1 when days <= 0 (no spreading). A uniform alpha-spending function in calendar
    time (Lan, K. K. G. & DeMets, D. L. (1983), "Discrete sequential boundaries for
    clinical trials", Biometrika 70(3):659-663), one step a day.

    >>> spending(300_000, 10), spending(DAY_MS, 10), spending(30 * DAY_MS, 10)
    (0.1, 0.2, 1.0)
    >>> spending(300_000, 0)
    1.0
    """
    if days <= 0:
        return 1.0
    return min(1.0, (age_ms // DAY_MS + 1) / days)


def max_deviation(counts: Mapping[str, int], expected: Mapping[str, float]) -> float:
    """max_i |O_i / n - p_i| over the tested variants (0 when n = 0)."""
    total = sum(counts.get(v, 0) for v in expected)
    if total <= 0:
        return 0.0
    return max(abs(counts.get(v, 0) / total - share) for v, share in expected.items())


def srm_test(
    counts: Mapping[str, int], split: Mapping[str, float] | None
) -> tuple[dict[str, int], dict[str, float], dict[str, int], float, float] | None:
    """Chi-square GOF of `counts` to `split` (None: equal over the variants counted).

    Returns (tested counts, expected shares, unexpected counts, chi2, p), or
    None when fewer than two variants or no unit can be tested.
    """
    if split:
        total_share = float(sum(split.values()))
        expected = {v: split[v] / total_share for v in sorted(split)}
    else:
        seen = sorted(v for v, c in counts.items() if c > 0)
        expected = {v: 1.0 / len(seen) for v in seen} if seen else {}
    tested = {v: counts.get(v, 0) for v in expected}
    unexpected = {v: c for v, c in sorted(counts.items()) if v not in expected and c > 0}
    total = sum(tested.values())
    if len(expected) < 2 or total <= 0:
        return None
    chi2 = 0.0
    for v, share in expected.items():
        e = total * share
        chi2 += (tested[v] - e) ** 2 / e
    return tested, expected, unexpected, chi2, float(chdtrc(len(expected) - 1, chi2))


def _add_dims(
    total: dict[str, dict[str, dict[str, int]]],
    dims: Mapping[str, Mapping[str, Mapping[str, int]]],
    limit: int,
) -> None:
    """Add a window's dimension counts to the experiment's, at most `limit` values per
    dimension (the rest pooled as OTHER)."""
    for dim, values in dims.items():
        into = total.setdefault(dim, {})
        for value, per in values.items():
            key = value if value in into or len(into) < limit else OTHER
            mine = into.setdefault(key, {})
            for variant, n in per.items():
                mine[variant] = mine.get(variant, 0) + n


SRM_WINDOWS_PER_DAY = 86_400_000 / SrmConfig.window_ms  # judgements per experiment and day

# The default alert rules of the SRM monitor's observations (the window's and the
# cumulative sample ratio mismatch, the experiment's crossover of users between arms),
# collected by operators.registry into streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    _rule(
        "srm",
        "srm",
        "srm_chi2_p",
        "<",
        # the value is the window's p-value (chi-square and the CUSUMs' accumulated
        # evidence, operators/srm.py): judged every window, so its line is the
        # budget's per-window level (issue 13), not a fixed 0.001
        {"critical": alpha_for_budget(FALSE_ALARM_BUDGET, SRM_WINDOWS_PER_DAY)},
        "sample ratio mismatch in {entity}: p = {value:.2g} ({shares} against {planned}; "
        "carried by {mismatch_in}); pause readouts of this experiment until the assignment "
        "is fixed",
        label="sample ratio mismatch p-value",
        value_format="{:.2g}",
        resolved_note="the variants' shares match the configured split again",
        cooldown_s=900,  # a resolved episode must not mask a real mismatch an hour long
        min_samples=30,
        false_alarm_budget=FALSE_ALARM_BUDGET,
        judgements_per_day=SRM_WINDOWS_PER_DAY,
        clear_windows=1,  # one clear five-minute window
    ),
    _rule(
        "srm_cumulative",
        "srm",
        "srm_cumulative_p",
        "<",
        # Statsig's tiers, on the always-valid p-value since the experiment's start:
        # P(ever below alpha) <= alpha per quiet experiment, however often it is looked
        # at (SrmConfig.warning_alpha / alpha; p = 1 under min_deviation)
        {"warning": 0.01, "critical": 0.001},
        "sample ratio mismatch in {entity} since its start: p = {value:.2g} ({shares} "
        "against {planned} over {total} units; carried by {mismatch_in}); pause readouts until "
        "the assignment is fixed",
        label="cumulative sample ratio mismatch p-value",
        value_format="{:.2g}",
        resolved_note="the cumulative shares match the configured split again",
        cooldown_s=3600,
    ),
    _rule(
        "experiment_crossover",
        "experiment",
        "crossover_rate",
        ">",
        {"warning": 0.01},
        "{crossed_users} users of {entity} were seen in more than one arm ({value:.1%} of "
        "{tracked_users}): the assignment is not sticky; its comparisons are contaminated",
        label="share of users seen in more than one arm",
        value_format="{:.1%}",
        min_samples=100,
        cooldown_s=3600,
    ),
]


class SrmOperator(Operator):
    sources = ("impressions",)
    # read from the experiment-keyed stream (streams/runtime/repartition.py): one task
    # sees an experiment's whole traffic, whatever partitions it came from
    keyed_by = "experiment"
    observes = (
        ("srm", "srm_chi2_p"),
        ("srm", "srm_cumulative_p"),
        ("experiment", "crossover_rate"),
    )

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)

    def __init__(self, config: SrmConfig | None = None) -> None:
        super().__init__()
        self.config = config or SrmConfig()
        self.windows: TumblingWindows[SrmWindow] = TumblingWindows(self.config.window_ms, SrmWindow)
        self.users = self.config.unit == "users"
        self.cumulative: dict[str, Cumulative] = {}  # experiment -> since its start
        self.cusum: dict[CusumKey, float] = {}  # (experiment, variant, "+" | "-") -> S

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[Any]) -> None:
        for imp in events:
            self._impression(imp)

    def _impression(self, imp: Impression) -> None:
        if not imp.experiment or not imp.variant:
            return
        variant = imp.variant
        window = self.windows.at(imp.experiment, imp.ts)
        if self.users:
            window.users.setdefault(variant, {})[imp.user_id] = None
        else:
            window.counts[variant] = window.counts.get(variant, 0) + 1
        limit = self.config.max_dimension_values
        for dim in self.config.dimensions:
            value = getattr(imp, dim, None)
            if not value:
                continue
            values = window.dims.setdefault(dim, {})
            per = values.get(value)
            if per is None:
                if len(values) >= limit:
                    value = OTHER
                per = values.setdefault(value, {})
            per[variant] = per.get(variant, 0) + 1
        first = window.arms.get(imp.user_id)
        if first is None:
            if len(window.arms) < self.config.max_tracked_users:
                window.arms[imp.user_id] = variant
            else:
                window.untracked += 1
        elif first != variant:
            window.crossed[imp.user_id] = None

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        for start, experiment, window in self.windows.pop_ending_until(watermark):
            self._judge(start, experiment, window)

    def _judge(self, start: int, experiment: str, window: SrmWindow) -> None:
        cfg = self.config
        counts = {v: len(ids) for v, ids in window.users.items()} if self.users else window.counts
        end = start + cfg.window_ms
        self._crossover(start, end, experiment, window)
        split = cfg.splits.get(experiment)
        if cfg.cumulative:
            entry = self.cumulative.get(experiment)
            if entry is None:
                entry = self.cumulative[experiment] = Cumulative(start)
            for v, c in counts.items():
                entry.counts[v] = entry.counts.get(v, 0) + c
            _add_dims(entry.dims, window.dims, cfg.max_dimension_values)
        result = srm_test(counts, split)
        if result is not None and sum(result[0].values()) >= cfg.min_total:
            tested, expected, _, _, p_chi2 = result
            if max_deviation(tested, expected) < cfg.min_deviation:
                p_chi2 = 1.0  # too small to matter, however large the window
            p_seq = self._accumulate(experiment, tested, expected)
            combined = min(1.0, (2 * len(tested) + 1) * min(p_chi2, p_seq))
            extra: dict[str, float] = {"chi2_p": result[4], "p_sequential": p_seq}
            if self.users:
                seen: set[str] = set()
                crossover: set[str] = set()
                for ids in window.users.values():
                    crossover.update(seen.intersection(ids))
                    seen.update(ids)
                extra["crossover"] = len(crossover)
            self._emit(
                start, end, experiment, window.dims, result, combined, extra, "srm_chi2_p", start
            )
        if cfg.cumulative:
            since = self.cumulative[experiment]
            first, total_counts, running = since.first, since.counts, since.running
            dims = since.dims
            cumulative = srm_test(total_counts, split)
            if cumulative is not None and sum(cumulative[0].values()) >= cfg.min_total:
                p_av = self._always_valid(cumulative, running)
                spent = spending(end - first, cfg.cumulative_spending_days)
                value = min(1.0, p_av / spent)
                if max_deviation(cumulative[0], cumulative[1]) < cfg.min_deviation:
                    # back within the plan (the alert resolves): a new alert needs new
                    # evidence, not the running minimum of an episode that is over
                    running.clear()
                    value = 1.0
                self._emit(
                    start,
                    end,
                    experiment,
                    dims,
                    cumulative,
                    value,
                    {"chi2_p": cumulative[4], "p_always_valid": p_av, "spending": spent},
                    "srm_cumulative_p",
                    first,
                )

    def _accumulate(
        self, experiment: str, tested: Mapping[str, int], expected: Mapping[str, float]
    ) -> float:
        """Update the variants' two CUSUMs (main's accumulated evidence); return the
        smallest exp(-S)."""
        cfg = self.config
        n = sum(tested.values())
        smallest = 1.0
        for variant, share in expected.items():
            x = tested[variant]
            for sign, p1 in (
                ("+", share + cfg.sequential_shift),
                ("-", share - cfg.sequential_shift),
            ):
                key = (experiment, variant, sign)
                if not 0.0 < p1 < 1.0:
                    continue
                s = cusum_step(self.cusum.get(key, 0.0), x, n, share, p1, cfg.cusum_cap)
                if s > 0.0:
                    self.cusum[key] = s
                    smallest = min(smallest, math.exp(-s))
                else:
                    self.cusum.pop(key, None)
        return smallest

    def _emit(
        self,
        start: int,
        end: int,
        experiment: str,
        dims: Mapping[str, Mapping[str, Mapping[str, int]]],
        result: tuple[dict[str, int], dict[str, float], dict[str, int], float, float],
        value: float,
        extra: Mapping[str, float],
        metric: str,
        evidence_start: int,
    ) -> None:
        """Rows and the observation of one test (a window's, or the cumulative one);
        `value` is the test's p-value as judged (combined, or always-valid)."""
        cfg = self.config
        tested, expected, unexpected, chi2, p = result
        total = sum(tested.values())
        deviation = max_deviation(tested, expected)
        matters = deviation >= cfg.min_deviation
        window = metric == "srm_chi2_p"
        share_metric = "share" if window else "share_cumulative"
        if window:
            self._out.add_row(
                SrmCheckRow(
                    window_start=start,
                    window_end=end,
                    experiment=experiment,
                    unit=cfg.unit,
                    variants=",".join(tested),
                    counts=tested,
                    expected=expected,
                    unexpected=unexpected,
                    chi2=chi2,
                    p_value=p,
                    total=total,
                    srm=int(p < cfg.alpha and matters),
                ),
            )
        for v, c in tested.items():
            self._out.add_row(
                ExperimentWindowRow(
                    window_start=start,
                    window_end=end,
                    experiment=experiment,
                    variant=v,
                    metric=share_metric,
                    value=c / total,
                    n=c,
                    control_value=expected[v],
                    p_value=value,
                ),
            )
        details: dict[str, Any] = {
            "counts": tested,
            "expected": expected,
            "unexpected": unexpected,
            "observed": {v: c / total for v, c in tested.items()},
            "chi2": chi2,
            "df": len(tested) - 1,
            "total": total,
            "unit": cfg.unit,
            "alpha": cfg.alpha,
            "p_value": p,
            "max_deviation": deviation,
            "min_deviation": cfg.min_deviation,
            "scope": "window" if window else "cumulative",
            # the split as a sentence says it: "A 45.0 %, B 55.0 %"
            "shares": ", ".join(f"{v} {c / total:.1%}" for v, c in tested.items()),
            "planned": ", ".join(f"{v} {share:.1%}" for v, share in expected.items()),
            **extra,
        }
        if value < cfg.warning_alpha:
            details.update(self._drilldown(dims, expected))
        self._out.observations.append(
            Observation(
                "srm",
                experiment,
                metric,
                value,
                ts=end,
                n=total,
                window_start=evidence_start,
                window_end=end,
                details=details,
                p_value=value,
            )
        )

    def _always_valid(
        self,
        result: tuple[dict[str, int], dict[str, float], dict[str, int], float, float],
        running: dict[str, float],
    ) -> float:
        """The cumulative test's always-valid p-value (see the module docstring);
        `running` holds each arm's running minimum and is updated."""
        tested, expected, _, _, _ = result
        n = sum(tested.values())
        tau2 = self.config.cumulative_tau**2
        for v, share in expected.items():
            if 0 < share < 1:
                delta = tested[v] / n - share
                running[v] = always_valid_p(
                    running.get(v, 1.0), delta, share * (1 - share) / n, tau2
                )
        return min(1.0, min(running.get(v, 1.0) for v in expected) * len(expected))

    def _drilldown(
        self, dims: Mapping[str, Mapping[str, Mapping[str, int]]], expected: Mapping[str, float]
    ) -> dict[str, Any]:
        """The chi-square per value of every dimension: which one carries the mismatch."""
        cfg = self.config
        split = dict(expected)
        found = []
        for dim, values in sorted(dims.items()):
            for value, per in values.items():
                result = srm_test(per, split)
                if result is None or sum(result[0].values()) < cfg.drilldown_min_total:
                    continue
                tested, _, _, _, p = result
                found.append(
                    {
                        "dimension": dim,
                        "value": value,
                        "counts": tested,
                        "p_value": p,
                        "max_deviation": max_deviation(tested, split),
                    }
                )
        found.sort(key=lambda d: (d["p_value"], -d["max_deviation"], d["dimension"], d["value"]))
        top = found[: cfg.drilldown_top]
        mismatch = "spread"
        if top and top[0]["p_value"] < cfg.warning_alpha:
            mismatch = f"{top[0]['dimension']}={top[0]['value']}"
        return {"drilldown": top, "mismatch_in": mismatch}

    def _crossover(self, start: int, end: int, experiment: str, window: SrmWindow) -> None:
        tracked = len(window.arms)
        if not tracked:
            return
        crossed = len(window.crossed)
        rate = crossed / tracked
        self._out.add_row(
            ExperimentWindowRow(
                window_start=start,
                window_end=end,
                experiment=experiment,
                variant="",
                metric="crossover_rate",
                value=rate,
                n=tracked,
                control_value=0.0,
                p_value=None,
            ),
        )
        self._out.observations.append(
            Observation(
                "experiment",
                experiment,
                "crossover_rate",
                rate,
                ts=end,
                n=tracked,
                window_start=start,
                window_end=end,
                details={
                    "crossed_users": crossed,
                    "tracked_users": tracked,
                    "untracked_impressions": window.untracked,
                    "examples": sorted(window.crossed)[:5],
                },
            )
        )

    def late_window(self, source: str, event: Any) -> int:
        return window_start(event.ts, self.config.window_ms)

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return CODEC.dump(
            SrmState(self.config.unit, self.windows.state(), self.cumulative, self.cusum)
        )

    def restore(self, state: dict[str, Any]) -> None:
        """A snapshot of the other unit is refused (its counts mean something else)."""
        typed = CODEC.load(state)
        if typed.unit and typed.unit != self.config.unit:
            raise ValueError(f"srm snapshot counts {typed.unit}, this operator {self.config.unit}")
        self.windows.load(typed.windows)
        self.cumulative = typed.cumulative
        self.cusum = typed.cusum


__all__ = [
    "DAY_MS",
    "DEFAULT_RULES",
    "EXPERIMENT_TABLE",
    "SRM_TABLE",
    "SRM_WINDOWS_PER_DAY",
    "SrmConfig",
    "SrmOperator",
    "SrmState",
    "SrmWindow",
    "max_deviation",
    "spending",
    "srm_test",
]
