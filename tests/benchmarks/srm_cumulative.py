"""False alerts per 1,000 experiment-days and recall of the cumulative SRM test.

`srm_cumulative` (operators/srm.py, docs/monitors/srm.md) judges an always-valid
p-value since the experiment's start with Statsig's tiers (warning p < 0.01,
critical p < 0.001), its lifetime alpha spread over `cumulative_spending_days`
experiment-days. This measures, with the operator and the default rule as the
worker runs them (`SrmOperator._judge` per experiment and five-minute window,
`RuleEngine` with the configured `srm_cumulative` rule):

- quiet A/A experiments, 50/50 as planned, traffic per experiment log-normal and
  clipped to 30-3,000 units a window (as tests/benchmarks/detection_quiet.py),
  binomial per window: false alerts (firing alerts, any tier) and experiments
  alerted, per 1,000 experiment-days, for the default spending (10 days) and
  without it (0: the lifetime bound only, the test as it was);
- experiments with a real SRM from their start (one arm served `--srm-share`
  instead of 50 %, the same traffic distribution): how many the default rule
  finds within the run, and after how long (event time from the start), with
  and without the spending.

    PYTHONPATH=. python -m tests.benchmarks.srm_cumulative
    PYTHONPATH=. python -m tests.benchmarks.srm_cumulative --small   # seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from operators.rules import RuleEngine
from operators.srm import SrmConfig, SrmOperator, SrmWindow
from streams.config import load_settings

T0 = 1_795_000_200_000  # a five-minute boundary
WINDOW_MS = 300_000
WINDOWS_A_DAY = 288


@dataclass
class Result:
    experiment_days: float
    alerts: dict[str, int] = field(default_factory=dict)  # severity -> firing alerts
    alerted: set[str] = field(default_factory=set)  # experiments with any firing alert
    first_s: dict[str, float] = field(default_factory=dict)  # experiment -> first alert

    @property
    def false_per_1000(self) -> float:
        return 1000 * sum(self.alerts.values()) / self.experiment_days


def rates(rng: np.random.Generator, n: int, lo: float = 30, hi: float = 3000) -> np.ndarray:
    """Units per window per experiment: log-normal, clipped to [lo, hi]."""
    mu = np.log(np.sqrt(lo * hi))
    return np.clip(rng.lognormal(mu, np.log(hi / lo) / 4, n), lo, hi)


def run(experiments: int, days: float, share: float, spending_days: float, seed: int) -> Result:
    """`experiments` experiments of `days` days, arm A served `share` of the traffic."""
    [rule] = [r.rule() for r in load_settings(env={}).rules if r.name == "srm_cumulative"]
    engine = RuleEngine([rule])
    op = SrmOperator(SrmConfig(cumulative_spending_days=spending_days))
    rng = np.random.default_rng(seed)
    rate = rates(rng, experiments)
    steps = round(days * WINDOWS_A_DAY)
    result = Result(experiment_days=experiments * days)
    for s in range(steps):
        start = T0 + s * WINDOW_MS
        n = rng.poisson(rate)
        a = rng.binomial(n, share)
        for i in range(experiments):
            w = SrmWindow()
            w.counts = {"A": int(a[i]), "B": int(n[i] - a[i])}
            op._judge(start, f"e{i}", w)
        out = op.collect()
        cumulative = [o for o in out.observations if o.metric == "srm_cumulative_p"]
        for alert in engine.evaluate(cumulative):
            if alert.status != "firing":
                continue
            result.alerts[alert.severity] = result.alerts.get(alert.severity, 0) + 1
            result.alerted.add(alert.entity)
            result.first_s.setdefault(alert.entity, (alert.ts - T0) / 1000)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=2000, help="quiet experiments")
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--srm-experiments", type=int, default=100)
    ap.add_argument("--srm-share", type=float, default=0.47)
    ap.add_argument("--srm-days", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--small", action="store_true", help="100 quiet experiments, 1 day")
    args = ap.parse_args(argv)
    if args.small:
        args.experiments, args.days, args.srm_experiments = 100, 1.0, 20
    began = time.monotonic()
    print(
        f"quiet: {args.experiments} A/A experiments x {args.days:g} days, 30-3,000 units "
        f"a 5-min window (seed {args.seed})"
    )
    print("| spending days | experiment-days | false alerts (warning / critical) "
          "| per 1,000 experiment-days | experiments alerted |")  # fmt: skip
    print("|---|---|---|---|---|")
    for spending_days in (10.0, 0.0):
        r = run(args.experiments, args.days, 0.5, spending_days, args.seed)
        label = f"{spending_days:g}" + (" (default)" if spending_days == 10.0 else " (none)")
        print(
            f"| {label} | {r.experiment_days:,.0f} | {r.alerts.get('warning', 0)} / "
            f"{r.alerts.get('critical', 0)} | {r.false_per_1000:.2f} | {len(r.alerted)} |"
        )
    for spending_days in (10.0, 0.0):
        r = run(args.srm_experiments, args.srm_days, args.srm_share, spending_days, args.seed + 1)
        delays = np.asarray(sorted(r.first_s.values()))
        found = len(r.alerted)
        timing = (
            f"first alert after {np.percentile(delays, 50) / 60:.0f} / "
            f"{np.percentile(delays, 95) / 60:.0f} min (p50 / p95)"
            if found
            else "none found"
        )
        print(
            f"real SRM from the start (arm A {args.srm_share:.0%} instead of 50 %), spending "
            f"days {spending_days:g}: {found}/{args.srm_experiments} found within "
            f"{args.srm_days:g} day(s), {timing}"
        )
    print(f"({time.monotonic() - began:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
