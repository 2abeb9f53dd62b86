"""Where the worker's consume loop spends its wall time: handling batches, or waiting.

    .venv/bin/python -m tests.benchmarks.cycle_waits --kind drift --events 300000 --runs 3

Loads one dataset into an embedded broker and runs the streamwatch contender of
`tests.benchmarks.bench` (`contenders/streamwatch_pipeline.py`: the real worker, the
same clock) in a fresh process per run, with wall-clock timers around the cycle's
steps, clipped to the contender's clock (its first message to its last row written):

    handle           `Runtime.handle` (decode, operators, buffering; includes the two below)
    flush wait       `Runtime._flush` awaited (ClickHouse insert and producer flush, in a thread)
    checkpoint wait  `Runtime._checkpoint` awaited (state encoding, write to the broker)
    poll, full       `in_thread(KafkaSource._poll)` awaited, when consume() returned a
                     full batch (`batch_size` messages: the input was there)
    poll, partial    the same, when consume() returned fewer (it waited `batch_timeout_s` for
                     input: in these runs, the end of the input, a short last batch and empty
                     polls until the next flush finds every row written)
    poll thread CPU  the polling thread's CPU time in `_poll` (consume() building the messages)

and the flush thread's own wall and CPU time (`Sinks.flush`, thread CPU time).

What it answers (issue 18): how much a pipelined cycle, which overlaps the next batch's
processing with the previous flush, could gain at most (the flush wait share), and how
much of a short run's wall time is the end of the input rather than work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# (kind, start, end) in time.time(), or (kind, start, end, extra) for a measured value
Interval = tuple[Any, ...]


def instrument(out: Path) -> None:
    """Patch the worker's classes with timers (in the contender's process, before it
    starts); the intervals are summarised into `out` when the contender returns."""
    from streams.connectors import clickhouse
    from streams.runtime import cycle, source
    from streams.runtime import sinks as sinks_module
    from tests.benchmarks.contenders import common

    intervals: list[Interval] = []
    clocks: list[Any] = []

    start = common.Clock.start

    def clock_start(self: Any) -> None:
        clocks[:] = [self]
        start(self)

    common.Clock.start = clock_start  # type: ignore[method-assign]

    def timed_async(cls: Any, name: str, kind: str) -> None:
        original = getattr(cls, name)

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            began = time.time()
            try:
                return await original(self, *args, **kwargs)
            finally:
                intervals.append((kind, began, time.time()))

        setattr(cls, name, wrapper)

    timed_async(cycle.Runtime, "handle", "handle")
    timed_async(cycle.Runtime, "_flush", "flush wait")
    timed_async(cycle.Runtime, "_checkpoint", "checkpoint wait")

    poll = source.KafkaSource._poll

    def timed_poll(self: Any) -> list[Any]:
        began, cpu = time.time(), time.thread_time()
        batch = poll(self)
        intervals.append(("poll thread CPU", began, began, time.thread_time() - cpu))
        # fewer than batch_size: consume() waited batch_timeout_s for input that was not there
        self._cycle_waits_full = len(batch) >= self.settings.batch_size
        return batch

    source.KafkaSource._poll = timed_poll  # type: ignore[method-assign]
    run = source.KafkaSource.run

    async def timed_run(self: Any) -> None:
        # the await of the polling thread, as the loop sees it: wrap `in_thread` as this
        # module sees it (`streams.connectors.threads.in_thread`, the runtime's only way
        # into a thread), and only for the poll
        in_thread = source.in_thread

        async def poll_timed(func: Any, *args: Any) -> Any:
            if getattr(func, "__func__", None) is not timed_poll:
                return await in_thread(func, *args)
            began = time.time()
            result = await in_thread(func, *args)
            kind = "poll, full" if self._cycle_waits_full else "poll, partial"
            intervals.append((kind, began, time.time()))
            return result

        source.in_thread = poll_timed  # type: ignore[attr-defined]
        try:
            await run(self)
        finally:
            source.in_thread = in_thread  # type: ignore[attr-defined]

    source.KafkaSource.run = timed_run  # type: ignore[method-assign]

    flush = sinks_module.Sinks.flush

    def timed_flush(self: Any, *args: Any, **kwargs: Any) -> None:
        began, cpu = time.time(), time.thread_time()
        try:
            flush(self, *args, **kwargs)
        finally:
            intervals.append(("flush thread", began, time.time()))
            intervals.append(("flush thread CPU", began, began, time.thread_time() - cpu))

    sinks_module.Sinks.flush = timed_flush  # type: ignore[method-assign]
    insert = clickhouse.Writer.insert

    def timed_insert(self: Any, table: str, rows: Any) -> float:
        began = time.time()
        try:
            return insert(self, table, rows)
        finally:
            intervals.append(("ClickHouse insert", began, time.time()))

    clickhouse.Writer.insert = timed_insert  # type: ignore[method-assign]

    import atexit

    atexit.register(lambda: out.write_text(json.dumps(summarise(intervals, clocks))))


def summarise(intervals: list[Interval], clocks: list[Any]) -> dict[str, float]:
    """Seconds per kind within the contender's clock (an interval is cut to it)."""
    if not clocks:
        return {}
    begin, end = clocks[0].wall0, clocks[0].wall1
    out: dict[str, float] = {"wall": end - begin}
    for kind, began, ended, *extra in intervals:
        if extra:  # a measured value, counted when it began within the clock
            if begin <= began <= end:
                out[kind] = out.get(kind, 0.0) + extra[0]
            continue
        seconds = max(0.0, min(ended, end) - max(began, begin))
        if seconds > 0:
            out[kind] = out.get(kind, 0.0) + seconds
            out[f"{kind}, calls"] = out.get(f"{kind}, calls", 0) + 1
    return out


CONTENDER = """
import sys
from pathlib import Path
from tests.benchmarks.cycle_waits import instrument
instrument(Path(sys.argv[2]))
from tests.benchmarks.contenders import streamwatch_pipeline
sys.argv = sys.argv[:2]
streamwatch_pipeline.main()
"""

ROWS = (
    "handle",
    "flush wait",
    "checkpoint wait",
    "poll, full",
    "poll, partial",
    "poll thread CPU",
    "flush thread",
    "flush thread CPU",
    "ClickHouse insert",
)


def main() -> None:
    from streams.connectors.embedded import EmbeddedBroker
    from tests.benchmarks import dataset as datasets
    from tests.benchmarks.contenders.common import Spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=datasets.KINDS, default="ctr")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--keys", type=int, default=None, help="default: as tests.benchmarks.bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/streamwatch-cycle-waits")
    args = parser.parse_args()
    keys = args.keys or {"ctr": 100, "sensor": 100, "drift": 4, "quality": 4}[args.kind]
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runs: list[dict[str, float]] = []
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        data = datasets.load(broker.bootstrap, args.kind, args.events, 4, keys, "waits")
        for i in range(args.runs):
            run_dir = work / f"run-{i}"
            run_dir.mkdir()
            spec = Spec(
                "streamwatch", broker.bootstrap, f"waits-{i}", data, run_dir, run_dir / "r.json"
            )
            (run_dir / "spec.json").write_text(json.dumps(spec.to_json()))
            waits = run_dir / "waits.json"
            subprocess.run(
                [sys.executable, "-c", CONTENDER, str(run_dir / "spec.json"), str(waits)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                check=True,
                capture_output=True,
            )
            measured = json.loads(waits.read_text())
            result = json.loads(spec.result.read_text())
            measured["events/s"] = result["events"] / result["seconds"]
            runs.append(measured)
            print(f"run {i + 1}/{args.runs}: {measured['events/s']:,.0f} events/s", flush=True)
    print(f"\n{args.kind}, {args.events:,} events, {args.runs} runs: seconds (share of the wall)")
    print("| step | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median share |")
    print("|---|" + "---:|" * (len(runs) + 1))
    walls = " | ".join(f"{r['wall']:.3f}" for r in runs)
    print(f"| wall (the contender's clock) | {walls} | |")
    for row in ROWS:
        cells = [
            f"{r.get(row, 0.0):.3f} ({r.get(row, 0.0) / r['wall']:.1%}, "
            f"{int(r.get(row + ', calls', 0))} calls)"
            if "CPU" not in row
            else f"{r.get(row, 0.0):.3f}"
            for r in runs
        ]
        share = statistics.median(r.get(row, 0.0) / r["wall"] for r in runs)
        print(f"| {row} | " + " | ".join(cells) + f" | {share:.1%} |")
    rates = [r["events/s"] for r in runs]
    steady = [r["events/s"] * r["wall"] / (r["wall"] - r.get("poll, partial", 0.0)) for r in runs]
    print(
        f"\nevents/s: {statistics.median(rates):,.0f} (median); without the partial polls' "
        f"time (the end of the input): {statistics.median(steady):,.0f}"
    )


if __name__ == "__main__":
    main()
