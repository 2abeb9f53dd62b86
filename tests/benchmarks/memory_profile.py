"""Resident memory of the hot path over a long run with a fixed set of keys.

    .venv/bin/python -m tests.benchmarks.memory_profile --events 5000000

Feeds simulated traffic of all four kinds (fixed campaigns, sensors, models)
through the real decode -> route -> operators -> rules path (`Pipeline`, every
default monitor, a sink that only counts) in one process, and prints resident
memory as it goes. Event time advances, so windows close and state is evicted:
after warm-up the resident size must stay flat. No broker or ClickHouse is
involved: this isolates the state the worker keeps, which is what could grow.
"""

from __future__ import annotations

import argparse
import os
import time
import zlib
from typing import Any

from streams.cli.simulate import Scenario, Simulator
from streams.config import load_settings
from streams.runtime.monitors import build_monitors
from streams.runtime.pipeline import Pipeline, RawMessage

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class CountingSink:
    """Outputs that only count (the pipeline's Outputs protocol)."""

    def __init__(self) -> None:
        self.n_rows = self.n_alerts = self.n_rejected = self.n_late = 0
        self.by_rule: dict[str, int] = {}

    def rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.n_rows += len(rows)

    def alerts(self, alerts: list[Any]) -> None:
        self.n_alerts += len(alerts)
        for alert in alerts:
            if alert.status == "firing":
                self.by_rule[alert.rule] = self.by_rule.get(alert.rule, 0) + 1

    def rejected(self, message: Any, rejection: Any) -> None:
        self.n_rejected += 1

    def late(self, *args: Any) -> None:
        self.n_late += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--report-every", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()

    settings = load_settings(env={})
    sink = CountingSink()
    logical = {n: n for n in ("impressions", "clicks", "inference-logs", "sensor-readings")}
    pipeline = Pipeline(build_monitors(settings), sink, logical, clock=lambda: 0.0)
    pipeline.assign(range(args.partitions), {})
    # event time runs ~40 s ahead per wall second of simulation: a long stretch
    per_second = 93  # messages per simulated second (streams/cli/simulate.py)
    duration = int(args.events / per_second * 1.5) + 1
    scenario = Scenario(start_ms=1_790_000_000_000, duration_s=duration, campaigns=3, seed=7)
    offsets = [0] * args.partitions
    batch: list[RawMessage] = []
    done = 0
    started = time.perf_counter()
    print(
        f"{'events':>10} {'rss MB':>8} {'ctr windows':>12} {'pending imps':>13} "
        f"{'rows':>9} {'ev/s':>8}"
    )
    for topic, key, value in Simulator(scenario).messages():
        if topic == "__tick__":
            continue
        p = zlib.crc32(key.encode()) % args.partitions
        batch.append(RawMessage(topic, p, offsets[p], key.encode(), value))
        offsets[p] += 1
        if len(batch) >= args.batch:
            pipeline.process(batch)
            done += len(batch)
            batch = []
            if done % args.report_every < args.batch:
                ctr = [t.operator for (m, _), t in pipeline.tasks.items() if m == "ctr"]
                windows = sum(len(op.windows) for op in ctr)
                pending = sum(len(op.impressions) for op in ctr)
                rate = done / (time.perf_counter() - started)
                print(
                    f"{done:>10} {rss_mb():>8.1f} {windows:>12} {pending:>13} "
                    f"{sink.n_rows:>9} {rate:>8.0f}",
                    flush=True,
                )
            if done >= args.events:
                break
    hours = (done / per_second) / 3600
    print(
        f"alerts {sink.n_alerts} over ~{hours:.1f} h of quiet event time, late {sink.n_late}, "
        f"rejected {sink.n_rejected}; firing by rule: {sink.by_rule}"
    )


if __name__ == "__main__":
    main()
