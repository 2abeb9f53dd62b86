"""The throughput cost of `keying = "repartition"` (streams/runtime/repartition.py).

    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.repartition_cost --events 200000 --runs 2

One embedded Tansu broker and the CTR dataset of the side-by-side benchmark
(`tests.benchmarks.dataset`, impressions and clicks keyed by campaign) produced
once, untimed. Then the real worker (`contenders.streamwatch_pipeline`, CTR
monitor only) reads it, interleaved run by run, with

- `strict`: today's path, every event decoded once and fed to the CTR monitor;
- `repartition`: every impression and click re-keyed by `campaign_id` through
  the internal topics (produced, fetched back, decoded again, de-duplicated),
  then fed to the CTR monitor.

Events/s are the dataset's input events over the worker's time from its first
message to the last row written (for `repartition` that includes reading the
internal topics to their end); CPU is the worker process's, per million input
events. Medians over the runs, with min and max.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from streams.connectors.embedded import EmbeddedBroker
from tests.benchmarks import dataset as datasets
from tests.benchmarks.bench import Bench, Contender

MODES = ("strict", "repartition")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--campaigns", type=int, default=100)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="streamwatch-repartition-cost-"))
    broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
    try:
        data = datasets.load(
            broker.bootstrap, "ctr", args.events, args.partitions, args.campaigns, "rp"
        )
        bench = Bench(broker, workdir)
        worker = Contender("streamwatch", "streamwatch_pipeline", "ctr")
        results: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        for _ in range(args.runs):
            for mode in MODES:
                run = bench.measure(worker, data, label=mode, keying=mode)
                if not run.ok:
                    raise SystemExit(f"{mode} run failed (exit {run.returncode})")
                seconds = run.result["seconds"]
                results[mode].append(
                    (data.events / seconds, run.result["cpu_seconds"] / data.events * 1e6)
                )
    finally:
        broker.stop()
    print(f"{data.events:,} input events, {args.partitions} partitions, {args.runs} runs")
    print("| keying | events/s (median, min-max) | CPU s per M events (median) |")
    print("|---|---|---|")
    for mode in MODES:
        rates = [r for r, _ in results[mode]]
        cpus = [c for _, c in results[mode]]
        print(
            f"| `{mode}` | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
            f" | {statistics.median(cpus):.1f} |"
        )
    strict = statistics.median(r for r, _ in results["strict"])
    rekeyed = statistics.median(r for r, _ in results["repartition"])
    print(f"repartition / strict throughput: {rekeyed / strict:.2f}")


if __name__ == "__main__":
    main()
