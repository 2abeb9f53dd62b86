"""Detection benchmark of the CTR monitor: recall, delay and false alarms at scale.

    PYTHONPATH=. python -m tests.benchmarks.detection --scenario ctr          # the table
    PYTHONPATH=. python -m tests.benchmarks.detection --scenario ctr --write  # + DETECTION.md
    PYTHONPATH=. python -m tests.benchmarks.detection --mode counts --after-only \
        --option baseline_z=1.0                                  # one option, counts only
    PYTHONPATH=. python -m tests.benchmarks.detection --slow-declines  # by their evidence

Scenario (seeded, generated with numpy as per-window counts):

- `--campaigns` campaigns (default 1,000) over `--hours` of event time (default
  24), 60-s windows. Mean traffic per campaign lognormal (median 40
  impressions/min, sigma 1.2) clipped to [5, 500]; a diurnal cycle of +-40 %;
  impressions per window Poisson. CTR per campaign log-uniform in [0.5 %, 10 %],
  with a diurnal drift of +-10 % and a per-window extra-binomial jitter (the
  window's rate multiplied by a lognormal of sigma 0.05). 30 % of campaigns run
  an A/B test (two variants, half the traffic each, CTRs within +-10 % of each
  other).
- 35 % of campaigns get one incident (start uniform in [2 h, end - 4 h]):
  `collapse` (CTR x 0, 10-60 min), `severe` (x 0.1-0.3, 10-60 min), `moderate`
  (x 0.5, 20-120 min), `slow_decline` (linear to x 0.4 over 60-180 min, then 30
  min there) and, in A/B campaigns, `variant_collapse` (one variant x 0,
  20-60 min).

Paths (`--mode events`, the default, runs both; `--mode counts` the second only):

- events (`run_events`): the counts become impression and click events (uniform
  times in their minute, lognormal click delays inside the attribution window) fed
  to the worker's own CTR task built by `build_monitors` from the default
  `Settings`: join, windows, watermark, judge and rules all run; compared alert for
  alert with the counts path (`compare`).
- counts (`run`): the counts go through the CTR monitor's judging and rule engine
  exactly as the worker runs them: `CtrOperator.advance` hands the counts of the
  windows it finalises to `operators.ctr_evidence.CtrJudge.judge`, and
  `MonitorTask.collect` passes the observations to `RuleEngine.evaluate` with the
  default rules (`streams.config.DEFAULT_RULES`); only the windowing and the click
  join are skipped, their output being the generated counts. "Before" is the code
  of `--before-ref` (default: the commit before issue 13), loaded from git: its
  `operators/ctr.py` (`CtrOperator._judge`, fed the same counts), its
  `operators/rules.py` and its default CTR rules from `streams/config.py`.

Metrics per rule (and for any CTR rule):

- recall: incidents with a firing alert of the rule on the campaign or one of
  its variants with ts (the window end, event time) in [start, end + 60 s];
- delay: that alert's ts - incident start (event time; a window is judged
  `attribution_ms` = 10 min after its end, which adds to the wall-clock delay);
- false alerts per 1,000 entity-days: firing alerts outside every incident's
  [start, end + 15 min] on its campaign, per 1,000 campaign-days.

Target class ("overwhelming", issue 13): a campaign-level incident to < 30 %
of the CTR lasting >= 10 min in a campaign with >= 100 impressions/min
(expected at the time of the incident).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WINDOW_MS = 60_000
T0 = 1_780_000_000_000 - 1_780_000_000_000 % 3_600_000
BEFORE_REF = "5ed12d3"  # the last commit before issue 13's CTR changes
GRACE_MS = 15 * 60_000  # alerts this long after an incident's end are not false alarms
# buckets of an incident's evidence: the expected number of clicks it removes
EVIDENCE = ((0, 10), (10, 30), (30, 100), (100, 10**9))
# the evidence (nats) a 5-minute stretch must hold to be detectable at the default
# budget: the CUSUM threshold log(ARL0) of CtrConfig() (16.67)
REACHABLE_NATS = 16.67
KINDS = ("collapse", "severe", "moderate", "slow_decline", "variant_collapse")
ANY_CHANGE = "any change rule"


@dataclass
class Incident:
    campaign: int
    kind: str
    start: int  # window index
    length: int  # windows
    factor: float
    variant: int | None = None  # index of the one variant affected (variant_collapse)
    rate: float = 0.0  # expected impressions/min of the campaign at the start
    ctr: float = 0.0
    missing: float = 0.0  # expected clicks the incident removes (its evidence)
    missing5: float = 0.0  # ... in its first 5 minutes
    # the expected log-likelihood ratio of its first 5 minutes for a test that knows the
    # baseline CTR p and the factor r exactly: sum of expected clicks * (r ln r + 1 - r)
    # (the Kullback-Leibler divergence of Poisson(r mu) from Poisson(mu)); no test can
    # be sure of the incident at level alpha with much less than log(1/alpha) of it
    kl5: float = 0.0


@dataclass
class Scenario:
    campaigns: int
    windows: int
    rate: np.ndarray  # campaigns: mean impressions / min
    ctr: np.ndarray  # campaigns
    ab: np.ndarray  # campaigns: bool
    imps: np.ndarray  # (campaigns, 2, windows): variant slot 0 / 1 (slot 1 unused if not ab)
    clicks: np.ndarray
    incidents: list[Incident] = field(default_factory=list)


def generate(campaigns: int, hours: float, seed: int) -> Scenario:
    rng = np.random.default_rng(seed)
    windows = int(hours * 60)
    t = np.arange(windows)
    rate = np.clip(rng.lognormal(np.log(40), 1.2, campaigns), 5, 500)
    ctr = np.exp(rng.uniform(np.log(0.005), np.log(0.10), campaigns))
    ab = rng.random(campaigns) < 0.3
    phase = rng.uniform(0, 2 * np.pi, campaigns)[:, None]
    day = 2 * np.pi * t[None, :] / 1440
    traffic = rate[:, None] * (1 + 0.4 * np.sin(day + phase))
    ctr_t = ctr[:, None] * (1 + 0.1 * np.sin(day + phase + 1.0))
    # variant CTRs within +-10 % of each other
    lift = np.where(ab, rng.uniform(-0.1, 0.1, campaigns), 0.0)
    share = (
        np.where(ab, 0.5, 1.0)[:, None, None]
        * np.stack([np.ones(campaigns), ab.astype(float)], axis=1)[:, :, None]
    )
    mult = np.ones((campaigns, 2, windows))
    incidents = []
    first, last = 120, windows - 240
    for c in np.flatnonzero(rng.random(campaigns) < 0.35):
        kinds = KINDS if ab[c] else KINDS[:4]
        kind = str(rng.choice(kinds))
        start = int(rng.integers(first, max(first + 1, last)))
        variant = None
        if kind == "collapse":
            length, factor = int(rng.integers(10, 61)), 0.0
        elif kind == "severe":
            length, factor = int(rng.integers(10, 61)), float(rng.uniform(0.1, 0.3))
        elif kind == "moderate":
            length, factor = int(rng.integers(20, 121)), 0.5
        elif kind == "slow_decline":
            length, factor = int(rng.integers(60, 181)) + 30, 0.4
        else:
            length, factor, variant = int(rng.integers(20, 61)), 0.0, int(rng.integers(0, 2))
        end = min(windows, start + length)
        if kind == "slow_decline":
            ramp = length - 30
            shape = np.ones(end - start) * factor
            k = min(ramp, end - start)
            shape[:k] = 1 - (1 - factor) * (np.arange(1, k + 1) / ramp)
        else:
            shape = np.full(end - start, factor)
        slots = [variant] if variant is not None else [0, 1]
        for s in slots:
            mult[c, s, start:end] = shape
        base = traffic[c, start:end] * ctr_t[c, start:end]
        expected = base * (1 - shape)
        part = share[c, variant, 0] if variant is not None else 1.0
        r = np.maximum(shape, 1e-300)
        kl = base * (r * np.log(r) + 1 - r)
        incidents.append(
            Incident(
                c,
                kind,
                start,
                end - start,
                factor,
                variant,
                float(traffic[c, start]),
                float(ctr[c]),
                float(expected.sum() * part),
                float(expected[:5].sum() * part),
                float(kl[:5].sum() * part),
            )
        )
    lam = traffic[:, None, :] * share
    imps = rng.poisson(lam)
    p = ctr_t[:, None, :] * np.stack([1 + lift, 1 - lift], axis=1)[:, :, None] * mult
    p = np.clip(p * rng.lognormal(0.0, 0.05, p.shape), 0.0, 1.0)
    clicks = rng.binomial(imps, p)
    return Scenario(campaigns, windows, rate, ctr, ab, imps, clicks, incidents)


# -- the monitor, now and before -------------------------------------------------


def _load(ref: str, path: str, name: str) -> types.ModuleType:
    """A module of this repository at git `ref`, imported under `name` (its own
    imports resolve to the current tree: only the file itself is old)."""
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{ref}:{path}"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


class Monitor:
    """Judging + rules of one configuration, fed one step of final window counts."""

    def __init__(
        self,
        before: bool,
        ref: str = BEFORE_REF,
        options: dict[str, Any] | None = None,
        changes: bool = False,
        change_options: dict[str, Any] | None = None,
    ) -> None:
        self.changes: Any = None
        self.change_names: list[str] = []
        if before:
            ctr = _load(ref, "operators/ctr.py", "before_ctr")
            rules = _load(ref, "operators/rules.py", "before_rules")
            config = _load(ref, "streams/config.py", "before_config")
            self.op = ctr.CtrOperator()
            self.window_type = ctr.CtrWindow
            chosen = [r.rule() for r in config.DEFAULT_RULES if r.kind == "ctr"]
            self.engine = rules.RuleEngine(chosen)
            self.judge = None
        else:
            from operators.ctr import CtrConfig
            from operators.ctr_evidence import CtrJudge
            from operators.rules import RuleEngine
            from streams.config import DEFAULT_RULES, ctr_rules

            config = CtrConfig(**(options or {}))
            self.judge = CtrJudge(config)
            # the default rules; with options, as the defaults derive them from the budget
            rules = ctr_rules(config) if options else DEFAULT_RULES
            chosen = [r.rule() for r in rules if r.kind == "ctr"]
            self.engine = RuleEngine(chosen)
        if changes:
            # change detection on the CTR observations, as MonitorTask runs it (the default
            # `[change_detection]`), with the default change rules on the ctr metric. After:
            # the judge's `ctr` observations carry its baseline, so the detectors judge the
            # window's residual against it with thresholds from the budget; "before" feeds
            # the old judge's observations (no baseline) to the same detectors, which then
            # run on the raw CTR with the fixed thresholds they had before
            from operators.change import ChangeConfig, ChangeDetectors
            from operators.rules import RuleEngine as Engine
            from streams.config import DEFAULT_RULES as CURRENT

            self.changes = ChangeDetectors(ChangeConfig(**(change_options or {})))
            picked = [r.rule() for r in CURRENT if r.metric.startswith("ctr_change_")]
            self.change_engine = Engine(picked)
            self.change_names = [r.name for r in picked]
        self.rule_names = [r.name for r in chosen]

    def step(self, counts: list[tuple[int, str, str, int, int]]) -> list[Any]:
        if self.judge is not None:
            observations = self.judge.judge(counts)
        else:
            closed = []
            for start, campaign, variant, n, k in counts:
                w = self.window_type()
                w.imps, w.clicks = n, k
                closed.append((start, f"{campaign}\x1f{variant}", w))
            self.op._judge(closed)
            observations = self.op.collect().observations
        alerts = self.engine.evaluate(observations)
        if self.changes is not None:
            alerts = alerts + self.change_engine.evaluate(self.changes.observe(observations))
        return [a for a in alerts if a.status == "firing"]


def run(
    scenario: Scenario,
    before: bool,
    ref: str = BEFORE_REF,
    options: dict[str, Any] | None = None,
    changes: bool = False,
    change_options: dict[str, Any] | None = None,
) -> list[tuple[str, int, int]]:
    """Firing alerts as (rule, campaign index, ts); with `changes`, also those of the
    change-detection rules on the CTR (`ctr_change_*`)."""
    monitor = Monitor(before, ref, options, changes, change_options)
    names = [f"cmp-{c:04d}" for c in range(scenario.campaigns)]
    index = {name: c for c, name in enumerate(names)}
    imps, clicks, ab = scenario.imps, scenario.clicks, scenario.ab
    plain = np.flatnonzero(~ab)
    tested = np.flatnonzero(ab)
    fired = []
    for w in range(scenario.windows):
        start = T0 + w * WINDOW_MS
        counts: list[tuple[int, str, str, int, int]] = []
        n0, k0 = imps[:, :, w].tolist(), clicks[:, :, w].tolist()
        for c in plain:
            if n0[c][0]:
                counts.append((start, names[c], "", n0[c][0], k0[c][0]))
        for c in tested:
            for s, variant in ((0, "A"), (1, "B")):
                if n0[c][s]:
                    counts.append((start, names[c], variant, n0[c][s], k0[c][s]))
        counts.sort(key=lambda x: (x[1], x[2]))
        for alert in monitor.step(counts):
            fired.append((alert.rule, index[alert.entity.split("/")[0]], alert.ts))
    return fired


def issue13_collapses(seed: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Issue 13's second scenario, scaled up: 150 campaigns of 100-400 impressions a
    minute at CTR 2-6 % (extra-binomial noise as above), 40 of them collapsing to 30 % of
    their CTR for 20 minutes at minute 180 of 240; the default CTR rules through
    `CtrJudge`. Returns how many collapses alerted within them, the delays (windows from
    the collapse's start to the alerting window's end) and the false alerts."""
    from operators.ctr import CtrConfig
    from operators.ctr_evidence import CtrJudge
    from operators.rules import RuleEngine
    from streams.config import ctr_rules

    rng = np.random.default_rng(seed)
    campaigns, windows, start, length = 150, 240, 180, 20
    rate = rng.uniform(100, 400, campaigns)
    ctr = rng.uniform(0.02, 0.06, campaigns)
    hit = np.zeros(campaigns, dtype=bool)
    hit[rng.choice(campaigns, 40, replace=False)] = True
    config = CtrConfig(**(options or {}))
    judge = CtrJudge(config)
    engine = RuleEngine([r.rule() for r in ctr_rules(config)])
    first: dict[int, int] = {}
    false = 0
    for w in range(windows):
        n = rng.poisson(rate)
        during = hit & (start <= w < start + length)
        p = np.clip(ctr * np.where(during, 0.3, 1.0) * rng.lognormal(0, 0.05, campaigns), 0, 1)
        k = rng.binomial(n, p)
        counts = [
            (T0 + w * WINDOW_MS, f"cmp-{c:03d}", "", int(n[c]), int(k[c])) for c in range(campaigns)
        ]
        for alert in engine.evaluate(judge.judge(counts)):
            if alert.status != "firing":
                continue
            c = int(alert.entity.split("-")[1])
            if hit[c] and start <= w < start + length + 1:
                first.setdefault(c, w - start + 1)
            else:
                false += 1
    missed = [round(float(rate[c] * ctr[c]), 2) for c in np.flatnonzero(hit) if c not in first]
    return {
        "detected": len(first),
        "of": int(hit.sum()),
        "delays": sorted(first.values()),
        "false": false,
        "missed_clicks_per_min": missed,
    }


def slow_declines(scenario: Scenario, fired: list[tuple[str, int, int]]) -> str:
    """Recall on the slow declines by the evidence of the whole incident: for a test
    that knew the path, sum over its minutes of expected clicks x (r ln r + 1 - r)
    (expected clicks taken at the incident's start: traffic x the campaign's CTR), in
    bands of the CUSUM threshold h (`REACHABLE_NATS`)."""
    hit: dict[int, list[int]] = {}
    for _, c, ts in fired:
        hit.setdefault(c, []).append(ts)
    rows = []
    for inc in scenario.incidents:
        if inc.kind != "slow_decline":
            continue
        ramp = max(1, inc.length - 30)
        k = np.arange(1, inc.length + 1)
        r = np.where(k <= ramp, 1 - (1 - inc.factor) * k / ramp, inc.factor)
        kl = float((inc.rate * inc.ctr * (r * np.log(r) + 1 - r)).sum())
        s = T0 + inc.start * WINDOW_MS
        e = s + inc.length * WINDOW_MS
        seen = [ts for ts in hit.get(inc.campaign, []) if s < ts <= e + WINDOW_MS]
        rows.append((kl, (min(seen) - s) / 60_000 if seen else None, inc.length))
    h = REACHABLE_NATS
    lines = [
        "| oracle evidence of the whole incident | slow declines | detected "
        "| median delay (min) | median length (min) |",
        "|---|---|---|---|---|",
    ]
    for lo, hi, name in ((0, h, f"< {h:.1f} nats"), (h, 2 * h, f"{h:.1f}-{2 * h:.1f} nats"),
                         (2 * h, float("inf"), f">= {2 * h:.1f} nats")):  # fmt: skip
        these = [x for x in rows if lo <= x[0] < hi]
        got = [x[1] for x in these if x[1] is not None]
        delay = f"{np.median(got):.0f}" if got else "-"
        length = f"{np.median([x[2] for x in these]):.0f}" if these else "-"
        lines.append(
            f"| {name} | {len(these)} | {len(got)} ({len(got) / max(1, len(these)):.0%}) "
            f"| {delay} | {length} |"
        )
    return "\n".join(lines)


def late_overwhelming(scenario: Scenario, options: dict[str, Any] | None = None) -> str:
    """The overwhelming incidents (issue 13's class) not alerted within 5 minutes, window
    by window: the campaign-level CUSUM statistic (`ctr_evidence`'s `llr`) and baseline
    in the incident's first 6 windows, beside the oracle evidence of its first 5 minutes
    (`kl5`) and the threshold h (counts path, after). Where the evidence goes: the
    threshold (kl5 < h), the CUSUM's loss against the oracle, or the baseline."""
    monitor = Monitor(False, options=options)
    assert monitor.judge is not None
    target = {i.campaign: i for i in scenario.incidents if overwhelming(i)}
    names = [f"cmp-{c:04d}" for c in range(scenario.campaigns)]
    plain, tested = np.flatnonzero(~scenario.ab), np.flatnonzero(scenario.ab)
    trace: dict[int, list[tuple[int, int, float, float]]] = {c: [] for c in target}
    first: dict[int, tuple[int, str]] = {}
    for w in range(scenario.windows):
        start = T0 + w * WINDOW_MS
        counts: list[tuple[int, str, str, int, int]] = []
        n0, k0 = scenario.imps[:, :, w].tolist(), scenario.clicks[:, :, w].tolist()
        for c in plain:
            if n0[c][0]:
                counts.append((start, names[c], "", n0[c][0], k0[c][0]))
        for c in tested:
            for slot, variant in ((0, "A"), (1, "B")):
                if n0[c][slot]:
                    counts.append((start, names[c], variant, n0[c][slot], k0[c][slot]))
        counts.sort(key=lambda x: (x[1], x[2]))
        observations = monitor.judge.judge(counts)
        for alert in monitor.engine.evaluate(observations):
            c = int(alert.entity.split("/")[0][4:])
            inc = target.get(c)
            if alert.status == "firing" and inc and inc.start <= w and c not in first:
                first[c] = (w - inc.start + 1, alert.rule)
        for o in observations:
            c = int(o.entity[4:]) if o.metric == "ctr_evidence" and "/" not in o.entity else -1
            inc = target.get(c)
            if inc and inc.start <= w < inc.start + 6:
                d = o.details
                trace[c].append((d["impressions"], d["clicks"], d["llr"], d["baseline_ctr"]))
    h = monitor.judge.threshold
    lines = [f"h = {h:.2f} nats; per window: (impressions, clicks, CUSUM llr, baseline)"]
    late = 0
    for c, inc in sorted(target.items()):
        alerted = first.get(c)
        if alerted and alerted[0] <= 5:
            continue
        late += 1
        s5 = trace[c][4][2] if len(trace[c]) > 4 else float("nan")
        lines.append(
            f"cmp-{c:04d} {inc.kind} factor {inc.factor:.2f}, {inc.rate:.0f}/min at "
            f"{inc.ctr:.2%}: kl5 {inc.kl5:.1f} nats, CUSUM after 5 windows {s5:.1f} "
            f"({s5 / inc.kl5:.2f} of kl5); first alert {alerted}"
        )
        lines += [f"    {n}, {k}, {llr:.1f}, {p0:.4f}" for n, k, llr, p0 in trace[c]]
    lines.append(f"{late} of {len(target)} overwhelming incidents not alerted within 5 min")
    return "\n".join(lines)


# -- events through the worker's task ------------------------------------------------

CLICK_DELAY_MEDIAN_S = 20.0  # median impression-to-click delay (lognormal)
CLICK_DELAY_SIGMA = 1.2  # ... its spread: ~2 % of clicks come after 2.5 min


def run_events(
    scenario: Scenario, seed: int, batch_ms: int = 10_000
) -> tuple[list[tuple[str, int, int]], dict[str, Any]]:
    """The scenario as impression and click events through the worker's own CTR task.

    Every (campaign, variant, window) gets `imps` impressions at uniform times in its
    minute; `clicks` of them, drawn without replacement, are clicked after a lognormal
    delay (median `CLICK_DELAY_MEDIAN_S`, sigma `CLICK_DELAY_SIGMA`, capped below the
    600-s attribution window) - the counts mode's counts, as events. They are fed in
    `batch_ms` slices of event time, each source in time order, to the task that
    `streams.runtime.monitors.build_monitors` makes from the default `Settings` (only the `ctr`
    monitor enabled): `MonitorTask.feed` per source, then `tick` and `collect` with the
    batch's last event time as processing time - the calls `Pipeline` makes after
    decoding a poll. Returns the firing CTR alerts and those of change detection on the
    CTR (`ctr_change_*`) as (rule, campaign, ts) and counters (events, alerts of other
    rules, seconds)."""
    from schemas.events import Click, Impression
    from streams.config import load_settings
    from streams.runtime.monitors import build_monitors

    def scored(alert: Any) -> bool:  # CTR rules, and change detection on the CTR
        return alert.kind == "ctr" or alert.rule.startswith("ctr_change_")

    settings = load_settings(env={})
    for name, monitor in settings.monitors.items():
        monitor.enabled = name == "ctr"
    (spec,) = build_monitors(settings)
    task = spec.make_task()
    rng = np.random.default_rng(seed + 1_000_003)
    names = [f"cmp-{c:04d}" for c in range(scenario.campaigns)]
    variants = ("", "A", "B")
    index = {name: c for c, name in enumerate(names)}
    cap_ms = 590_000  # within the 600-s attribution window
    # clicks generated but not fed yet, by the batch their time falls in
    held: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}
    fired: list[tuple[str, int, int]] = []
    other: dict[str, int] = {}
    n_imps = n_clicks = 0
    serial = 0
    started = time.perf_counter()
    per_window = WINDOW_MS // batch_ms
    ab = scenario.ab
    for w in range(scenario.windows):
        counts = scenario.imps[:, :, w]
        k = scenario.clicks[:, :, w]
        # slot -> variant label: "" for a campaign without a test, A/B otherwise
        label = np.where(ab[:, None], np.array([[1, 2]]), np.array([[0, 0]]))
        n = counts.ravel()
        total = int(n.sum())
        camp = np.repeat(np.repeat(np.arange(scenario.campaigns), 2), n)
        var = np.repeat(label.ravel(), n)
        ts = T0 + w * WINDOW_MS + rng.integers(0, WINDOW_MS, total)
        ids = np.arange(serial, serial + total)
        serial += total
        # choose k of each group's n impressions: rank of a uniform key within its group
        group = np.repeat(np.arange(n.size), n)
        order = np.lexsort((rng.random(total), group))
        first = np.repeat(np.cumsum(n) - n, n)
        rank = np.empty(total, dtype=np.int64)
        rank[order] = np.arange(total) - first
        clicked = rank < np.repeat(k.ravel(), n)
        delay = np.minimum(
            rng.lognormal(
                np.log(CLICK_DELAY_MEDIAN_S * 1000), CLICK_DELAY_SIGMA, int(clicked.sum())
            ),
            cap_ms,
        ).astype(np.int64)
        cts = ts[clicked] + np.maximum(delay, 1)
        cb = (cts - T0) // batch_ms
        for b in np.unique(cb):
            m = cb == b
            held.setdefault(int(b), []).append(
                (cts[m], ids[clicked][m], camp[clicked][m], var[clicked][m])
            )
        # the window's impressions, in batches of event time
        ib = (ts - T0) // batch_ms
        for b in range(w * per_window, (w + 1) * per_window):
            m = ib == b
            o = np.argsort(ts[m], kind="stable")
            its, iid, ic, iv = (
                ts[m][o].tolist(),
                ids[m][o].tolist(),
                camp[m][o].tolist(),
                var[m][o].tolist(),
            )
            imps = [
                Impression(
                    ts=t,
                    impression_id=f"i{i}",
                    campaign_id=names[c],
                    user_id="u",
                    variant=variants[v] or None,
                )
                for t, i, c, v in zip(its, iid, ic, iv, strict=True)
            ]
            parts = held.pop(b, [])
            clicks: list[Any] = []
            if parts:
                cts_b = np.concatenate([p[0] for p in parts])
                o = np.argsort(cts_b, kind="stable")
                cid = np.concatenate([p[1] for p in parts])[o].tolist()
                cc = np.concatenate([p[2] for p in parts])[o].tolist()
                clicks = [
                    Click(
                        ts=t,
                        click_id=f"c{i}",
                        impression_id=f"i{i}",
                        campaign_id=names[c],
                        user_id="u",
                    )
                    for t, i, c in zip(cts_b[o].tolist(), cid, cc, strict=True)
                ]
            n_imps += len(imps)
            n_clicks += len(clicks)
            now = T0 + (b + 1) * batch_ms
            task.feed("impressions", imps, now)
            task.feed("clicks", clicks, now)
            task.tick(now)
            for alert in task.collect().alerts:
                if alert.status != "firing":
                    continue
                if not scored(alert):
                    other[alert.rule] = other.get(alert.rule, 0) + 1
                    continue
                fired.append((alert.rule, index[alert.entity.split("/")[0]], alert.ts))
    task.finish()
    for alert in task.collect().alerts:
        if alert.status == "firing" and scored(alert):
            fired.append((alert.rule, index[alert.entity.split("/")[0]], alert.ts))
    info = {
        "impressions": n_imps,
        "clicks": n_clicks,
        # clicks made after the scenario's last minute (not fed; their windows end it)
        "clicks_after_end": sum(len(p[0]) for parts in held.values() for p in parts),
        "seconds": time.perf_counter() - started,
        "other_alerts": other,
    }
    return fired, info


# -- scoring -----------------------------------------------------------------------


def overwhelming(inc: Incident) -> bool:
    return (
        inc.variant is None
        and inc.kind in ("collapse", "severe")
        and inc.factor < 0.3
        and inc.length >= 10
        and inc.rate >= 100
    )


def score(
    scenario: Scenario,
    fired: list[tuple[str, int, int]],
    rules: list[str],
    total: str = "any CTR rule",
) -> dict:
    """Per rule of `rules`, and for any of them (row `total`)."""
    by_campaign: dict[int, Incident] = {inc.campaign: inc for inc in scenario.incidents}
    days = scenario.campaigns * scenario.windows / 1440
    table = {}
    for rule in [*rules, total]:
        mine = [f for f in fired if f[0] == rule or (rule == total and f[0] in rules)]
        delays: dict[int, int] = {}
        false = 0
        for _, c, ts in mine:
            inc = by_campaign.get(c)
            if inc is not None:
                s = T0 + inc.start * WINDOW_MS
                e = s + inc.length * WINDOW_MS
                if s < ts <= e + WINDOW_MS:
                    delays[c] = min(delays.get(c, 10**15), ts - s)
                    continue
                if s < ts <= e + GRACE_MS:
                    continue
            false += 1
        incs = scenario.incidents
        row: dict[str, Any] = {
            "recall": sum(1 for i in incs if i.campaign in delays) / max(1, len(incs)),
            "false_per_1000": 1000 * false / days,
            "false": false,
        }
        d = np.array(list(delays.values()), dtype=float) / 1000
        row["p50"] = float(np.percentile(d, 50)) if d.size else float("nan")
        row["p95"] = float(np.percentile(d, 95)) if d.size else float("nan")
        for kind in KINDS:
            these = [i for i in incs if i.kind == kind]
            row[kind] = sum(1 for i in these if i.campaign in delays) / max(1, len(these))
        for lo, hi in EVIDENCE:
            these = [i for i in incs if lo <= i.missing < hi]
            row[f"ev{lo}"] = (
                sum(1 for i in these if i.campaign in delays),
                len(these),
            )
        target = [i for i in incs if overwhelming(i)]
        strong = [i for i in target if i.missing5 >= 20]
        row["strong_n"] = len(strong)
        row["strong_5min"] = sum(
            1 for i in strong if delays.get(i.campaign, 10**15) <= 300_000
        ) / max(1, len(strong))
        # those whose first 5 minutes hold the evidence the budget demands of any test
        # (kl5 >= the CUSUM threshold log(ARL0), ~16.7 nats by default)
        for tier, nats in (("reach", REACHABLE_NATS), ("reach2", 2 * REACHABLE_NATS)):
            reach = [i for i in target if i.kl5 >= nats]
            row[f"{tier}_n"] = len(reach)
            row[f"{tier}_5min"] = sum(
                1 for i in reach if delays.get(i.campaign, 10**15) <= 300_000
            ) / max(1, len(reach))
        row["target_n"] = len(target)
        row["target_5min"] = sum(
            1 for i in target if delays.get(i.campaign, 10**15) <= 300_000
        ) / max(1, len(target))
        row["target_missed"] = [
            (
                f"cmp-{i.campaign:04d}",
                round(i.rate),
                f"{i.ctr:.2%}",
                round(i.factor, 2),
                i.length,
                round(i.missing5, 1),
                round(i.kl5, 1),
                int(delays.get(i.campaign, -1000) // 1000),
            )
            for i in target
            if delays.get(i.campaign, 10**15) > 300_000
        ]
        table[rule] = row
    return table


def compare(
    counted: list[tuple[str, int, int]], fired: list[tuple[str, int, int]], info: dict
) -> str:
    """How the events path's alerts compare with the counts path's, rule by rule."""
    lines = [
        f"Events path: {info['impressions']:,} impressions and {info['clicks']:,} clicks through "
        f"the worker's CTR task in {info['seconds']:.0f} s "
        f"({(info['impressions'] + info['clicks']) / info['seconds']:,.0f} events/s).",
        "",
        "| rule | firing alerts (counts) | (events) | in both | only counts | only events |",
        "|---|---|---|---|---|---|",
    ]
    for rule in sorted({r for r, _, _ in counted} | {r for r, _, _ in fired}):
        a = {f for f in counted if f[0] == rule}
        b = {f for f in fired if f[0] == rule}
        lines.append(
            f"| `{rule}` | {len(a)} | {len(b)} | {len(a & b)} | {len(a - b)} | {len(b - a)} |"
        )
    others = ", ".join(f"`{k}` {v}" for k, v in sorted(info["other_alerts"].items()))
    lines.append("")
    lines.append(f"Other firing alerts of the CTR task on the events path: {others or 'none'}.")
    return "\n".join(lines)


def format_table(results: dict[str, dict], scenario: Scenario) -> str:
    head = (
        "| config | rule | recall | delay p50 (s) | delay p95 (s) | false alerts / 1,000 "
        "campaign-days | " + " | ".join(KINDS) + " | overwhelming within 5 min |"
    )
    lines = [head, "|" + "---|" * (7 + len(KINDS))]
    for config, table in results.items():
        for rule, r in table.items():
            kinds = " | ".join(f"{r[k]:.0%}" for k in KINDS)
            lines.append(
                f"| {config} | `{rule}` | {r['recall']:.1%} | {r['p50']:.0f} | {r['p95']:.0f} | "
                f"{r['false_per_1000']:.2f} ({r['false']}) | {kinds} | "
                f"{r['target_5min']:.0%} of {r['target_n']} |"
            )
    lines.append("")
    lines.append(
        "Recall by the incident's evidence (expected clicks it removes; the budget makes "
        "< 10 undetectable):"
    )
    lines.append("")
    heads = [f"{lo}-{hi}" if hi < 10**9 else f">= {lo}" for lo, hi in EVIDENCE]
    lines.append("| config | rule | " + " | ".join(heads) + " |")
    lines.append("|" + "---|" * (2 + len(EVIDENCE)))
    for config, table in results.items():
        r = table["any CTR rule"]
        cells = []
        for lo, _ in EVIDENCE:
            hit, n = r[f"ev{lo}"]
            cells.append(f"{hit}/{n} ({hit / max(1, n):.0%})")
        lines.append(f"| {config} | any CTR rule | " + " | ".join(cells) + " |")
    lines.append("")
    for config, table in results.items():
        r = table["any CTR rule"]
        lines.append(
            f"- {config}: overwhelming incidents (issue 13's class) detected within 5 min: "
            f"{r['target_5min']:.0%} of {r['target_n']}; of those removing >= 20 expected "
            f"clicks in their first 5 min: {r['strong_5min']:.0%} of {r['strong_n']}; of those "
            f"whose first 5 min hold >= {REACHABLE_NATS:.1f} nats (reachable at the budget): "
            f"{r['reach_5min']:.0%} of {r['reach_n']}; >= {2 * REACHABLE_NATS:.1f} nats: "
            f"{r['reach2_5min']:.0%} of {r['reach2_n']}"
        )
    counts = {k: sum(1 for i in scenario.incidents if i.kind == k) for k in KINDS}
    lines.append("")
    lines.append(
        f"{scenario.campaigns} campaigns ({int(scenario.ab.sum())} A/B), "
        f"{scenario.windows / 60:.0f} h, {len(scenario.incidents)} incidents: "
        + ", ".join(f"{k} {n}" for k, n in counts.items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["ctr", "ctr-issue13"], default="ctr")
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--before-ref", default=BEFORE_REF)
    parser.add_argument("--write", action="store_true", help="write DETECTION.md")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        help="KEY=JSON: a CtrConfig option for the 'after' run (e.g. baseline_z=1.5)",
    )
    parser.add_argument("--after-only", action="store_true")
    parser.add_argument(
        "--slow-declines",
        action="store_true",
        help="only the slow declines' recall by their evidence (counts path, after)",
    )
    parser.add_argument(
        "--late",
        action="store_true",
        help="only the overwhelming incidents late by > 5 min, window by window (counts, after)",
    )
    parser.add_argument(
        "--mode",
        choices=["events", "counts"],
        default="events",
        help="events: also run the 'after' configuration on impression and click events "
        "through the worker's CTR task (run_events) and compare with the counts path",
    )
    args = parser.parse_args(argv)
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        parsed = json.loads(value)
        options[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    t = time.perf_counter()
    if args.scenario == "ctr-issue13":
        for seed in (1, 2, 3):
            r = issue13_collapses(seed, options)
            d = r["delays"]
            print(
                f"seed {seed}: {r['detected']}/{r['of']} collapses alerted within them, delay "
                f"p50 {np.median(d):.0f} / max {max(d)} windows, false alerts {r['false']}; "
                f"missed (their clicks/min): {r['missed_clicks_per_min']}"
            )
        return 0
    scenario = generate(args.campaigns, args.hours, args.seed)
    if args.slow_declines:
        print(slow_declines(scenario, run(scenario, False, args.before_ref, options)))
        return 0
    if args.late:
        print(late_overwhelming(scenario, options))
        return 0
    results = {}
    configs = (("after", False),) if args.after_only else (("before", True), ("after", False))
    counted: list[tuple[str, int, int]] = []
    for name, before in configs:
        tr = time.perf_counter()
        fired = run(scenario, before, args.before_ref, options, changes=True)
        monitor = Monitor(before, args.before_ref, options, changes=True)
        results[name] = {
            **score(scenario, fired, monitor.rule_names),
            **score(scenario, fired, monitor.change_names, total=ANY_CHANGE),
        }
        if not before:
            counted = fired
        print(f"{name}: {time.perf_counter() - tr:.0f} s", file=sys.stderr)
    agreement = ""
    if args.mode == "events" and not options:
        if not counted:
            counted = run(scenario, False, args.before_ref, changes=True)
        fired, info = run_events(scenario, args.seed)
        monitor = Monitor(False, args.before_ref, changes=True)
        results["after (events)"] = {
            **score(scenario, fired, monitor.rule_names),
            **score(scenario, fired, monitor.change_names, total=ANY_CHANGE),
        }
        agreement = compare(counted, fired, info)
        print(f"events: {info['seconds']:.0f} s", file=sys.stderr)
    text = format_table(results, scenario)
    if agreement:
        text += "\n\n" + agreement
    print(text)
    missed = results["after"]["any CTR rule"]["target_missed"]
    print(f"\noverwhelming incidents missed within 5 min (after): {missed}")
    print(f"total {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if args.write:
        write_report(text, missed, args)
    return 0


def write_report(text: str, missed: list, args: argparse.Namespace) -> None:
    path = Path(__file__).resolve().parents[2] / "DETECTION.md"
    command = (
        "PYTHONPATH=. python -m tests.benchmarks.detection --scenario ctr "
        f"--mode {args.mode} --campaigns {args.campaigns} --hours {args.hours:g} "
        f"--seed {args.seed} --write"
    )
    body = path.read_text() if path.exists() else ""
    marker_a, marker_b = "<!-- ctr-table -->", "<!-- /ctr-table -->"
    block = (
        f"{marker_a}\n`{command}`\n\n{text}\n\nOverwhelming incidents not detected within "
        "5 min (after; campaign, impressions/min, CTR, factor, minutes, expected clicks "
        f"removed in the first 5 min, their evidence in nats, delay s or -1): {missed}\n{marker_b}"
    )
    if marker_a in body:
        a, b = body.index(marker_a), body.index(marker_b) + len(marker_b)
        body = body[:a] + block + body[b:]
    else:
        body = (body or "# Detection benchmark\n\n") + block + "\n"
    path.write_text(body)


if __name__ == "__main__":
    raise SystemExit(main())
