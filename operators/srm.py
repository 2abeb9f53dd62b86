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

computed by scipy.stats.chisquare(O, f_exp=E). Fabijan et al. flag an SRM
at p < 0.0005 to 0.001: the test runs every window, so a loose alpha would
raise false alarms daily.

A window is judged when n >= min_total and it has at least two tested
variants. Output, per judged window:

- a row in `srm_checks`: window_start, window_end, experiment, unit,
  variants (comma list, sorted), counts ({variant: count}), expected
  ({variant: share}), unexpected ({variant: count}), chi2, p_value, total,
  srm (1 when p_value < alpha);
- Observation(kind="srm", entity=experiment, metric="srm_chi2_p",
  value=p_value, p_value=p_value, n=total, ts=window_end), details: counts,
  expected, unexpected, observed (shares), chi2, df, total, unit, alpha,
  crossover (users only). A rule `srm_chi2_p < 0.001` is critical.

State is the open windows only (for users, their sets of user ids), so it is
bounded by window_ms plus the lateness. Counting is commutative, so any
arrival order within the lateness gives the sorted input's result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from scipy.stats import chisquare

from operators.base import Observation, Operator
from operators.windows import TumblingWindows
from schemas.events import Impression

SRM_TABLE = "srm_checks"


@dataclass(frozen=True)
class SrmConfig:
    window_ms: int = 300_000
    unit: Literal["impressions", "users"] = "impressions"
    min_total: int = 200
    # experiment -> variant -> expected share (normalised); absent: equal split
    splits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    alpha: float = 0.001

    def __post_init__(self) -> None:
        if self.unit not in ("impressions", "users"):
            raise ValueError(f"srm unit must be 'impressions' or 'users', got {self.unit!r}")
        if self.window_ms <= 0 or self.min_total < 1:
            raise ValueError("srm window_ms and min_total must be positive")
        for experiment, split in self.splits.items():
            if len(split) < 2 or any(s <= 0 for s in split.values()):
                raise ValueError(f"srm split of {experiment!r} needs >= 2 positive shares")


class SrmWindow:
    """Counts of one (experiment, window): impressions, or user ids, per variant."""

    __slots__ = ("counts", "users")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.users: dict[str, set[str]] = {}


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
    observed = [tested[v] for v in expected]
    f_exp = [total * expected[v] for v in expected]
    result = chisquare(observed, f_exp=f_exp)
    return tested, expected, unexpected, float(result.statistic), float(result.pvalue)


class SrmOperator(Operator):
    sources = ("impressions",)
    # read from the experiment-keyed stream (streams/repartition.py): one task
    # sees an experiment's whole traffic, whatever partitions it came from
    keyed_by = "experiment"

    def __init__(self, config: SrmConfig | None = None) -> None:
        super().__init__()
        self.config = config or SrmConfig()
        self.windows: TumblingWindows[SrmWindow] = TumblingWindows(self.config.window_ms, SrmWindow)
        self.users = self.config.unit == "users"

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[Any]) -> None:
        for imp in events:
            self._impression(imp)

    def _impression(self, imp: Impression) -> None:
        if not imp.experiment or not imp.variant:
            return
        window = self.windows.at(imp.experiment, imp.ts)
        if self.users:
            window.users.setdefault(imp.variant, set()).add(imp.user_id)
        else:
            window.counts[imp.variant] = window.counts.get(imp.variant, 0) + 1

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        for start, experiment, window in self.windows.pop_ending_until(watermark):
            self._judge(start, experiment, window)

    def _judge(self, start: int, experiment: str, window: SrmWindow) -> None:
        cfg = self.config
        counts = {v: len(ids) for v, ids in window.users.items()} if self.users else window.counts
        result = srm_test(counts, cfg.splits.get(experiment))
        if result is None:
            return
        tested, expected, unexpected, chi2, p = result
        total = sum(tested.values())
        if total < cfg.min_total:
            return
        end = start + cfg.window_ms
        self._out.add_row(
            SRM_TABLE,
            {
                "window_start": start,
                "window_end": end,
                "experiment": experiment,
                "unit": cfg.unit,
                "variants": ",".join(tested),
                "counts": tested,
                "expected": expected,
                "unexpected": unexpected,
                "chi2": chi2,
                "p_value": p,
                "total": total,
                "srm": int(p < cfg.alpha),
            },
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
        }
        if self.users:
            seen: set[str] = set()
            crossover: set[str] = set()
            for ids in window.users.values():
                crossover |= seen & ids
                seen |= ids
            details["crossover"] = len(crossover)
        self._out.observations.append(
            Observation(
                "srm",
                experiment,
                "srm_chi2_p",
                p,
                ts=end,
                n=total,
                window_start=start,
                window_end=end,
                details=details,
                p_value=p,
            )
        )

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        windows = []
        for start, experiment, w in self.windows.items():
            if self.users:
                per_variant = {v: sorted(ids) for v, ids in sorted(w.users.items())}
            else:
                per_variant = dict(sorted(w.counts.items()))
            windows.append([start, experiment, per_variant])
        return {"unit": self.config.unit, "windows": windows}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("unit", self.config.unit) != self.config.unit:
            raise ValueError(
                f"srm snapshot counts {state['unit']}, this operator {self.config.unit}"
            )
        self.windows.clear()
        for start, experiment, per_variant in state["windows"]:
            w = self.windows.at(experiment, start)
            for variant, value in per_variant.items():
                if self.users:
                    w.users[variant] = set(value)
                else:
                    w.counts[variant] = int(value)


__all__ = ["SRM_TABLE", "SrmConfig", "SrmOperator", "SrmWindow", "srm_test"]
