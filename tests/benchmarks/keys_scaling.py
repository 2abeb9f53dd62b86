"""CPU per event of one monitor's whole task against the number of keys, in-process.

    .venv/bin/python -m tests.benchmarks.keys_scaling --kind ctr --keys 100 10000 100000
    .venv/bin/python -m tests.benchmarks.keys_scaling --kind sensor --keys 100 50000
    .venv/bin/python -m tests.benchmarks.keys_scaling --kind sensor --keys 100 5000 --per-key 60
    .venv/bin/python -m tests.benchmarks.keys_scaling --kind ctr --keys 100000 --profile
    .venv/bin/python -m tests.benchmarks.keys_scaling --kind sensor+cluster --keys 100 --per-key 60
    .venv/bin/python -m tests.benchmarks.keys_scaling --kind sensor+cluster \
        --keys 100 5000 50000 --events 1 --per-key 120 --warm 60

`--kind sensor+cluster` runs the sensor pipeline of the end-to-end benchmark: the
sensor and the cluster monitors' tasks, both fed every reading, their costs summed.

The task is built as the worker builds it (`streams.runtime.monitors.build_monitors` over the
default configuration, via `tests.conformance.task_factory`): the operator, its
default rules, change detection and relations. The same number of simulated,
decoded events (`tests.benchmarks.operator_cost.events_of`, untimed) is fed in
batches as the worker does (feed per source, tick, collect after each batch), and
the CPU time per event of the fastest of `--repeats` passes is printed per key
count: issue 18 asks the per-event cost to stay within 1.5x as the keys grow.
No broker, no ClickHouse, no decoding: the end-to-end figures are
`tests.benchmarks.bench`'s. `--profile` runs one pass under cProfile instead (its
timed part) and prints the top functions by cumulative and by own time. `--per-key N` feeds N events
per key instead of `--events` in all (at least `--events`), so that every key gets past
its warm-up (a sensor measures its cadence over 16 readings and judges from 30 on):
with a fixed event count, 50 k sensors get 10 readings each and the run measures
nothing but warm-up (BENCHMARKS.md). `--warm N` feeds each key's first N events
before the clock starts and times the rest: with `--events 1 --per-key 2N` every key
count is timed on series of the same age (readings N to 2N of each), so the ratio is
the number of keys' alone; without it, `--per-key 60` compares 100 sensors' 3,000
readings each (the `--events` floor) with 50,000 sensors' first 60, whose warm-up
readings cost less than judged ones (session 20: 1.77x that way, 2.28x at equal age).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from collections.abc import Callable
from typing import Any

from operators.task import MonitorTask
from tests.benchmarks.operator_cost import events_of
from tests.conformance import task_factory
from tests.conformance_inputs import Case

NOW = 1_000  # processing time: constant, so no source counts as idle


KINDS = {"ctr": ("ctr",), "sensor": ("sensor",), "sensor+cluster": ("sensor", "cluster")}


def make_tasks(kind: str) -> Callable[[], list[MonitorTask]]:
    """A factory of the kind's monitor tasks (one each), fresh at each call."""
    factories = [task_factory(name, Case(events=[], lateness_s=10.0)) for name in KINDS[kind]]
    return lambda: [make() for make in factories]


def one_pass(
    make: Callable[[], list[MonitorTask]],
    events: list[tuple[str, Any]],
    batch: int,
    untimed: int = 0,
    profile: cProfile.Profile | None = None,
) -> tuple[float, int, int]:
    """(CPU seconds, rows, alerts) of one pass over `events` with fresh tasks, the
    clock (and `profile`, if given) started after the first `untimed` events (a
    multiple of `batch`: fed, not timed, their rows and alerts not counted)."""
    tasks = make()
    rows = alerts = 0
    gc.collect()
    gc.freeze()  # as the worker does after start-up (streams/runtime/worker.py)
    gc.set_threshold(50_000, 20, 100)
    for i in range(0, untimed, batch):
        feed_batch(tasks, events[i : i + batch])
    if profile is not None:
        profile.enable()
    started = time.process_time()
    for i in range(untimed, len(events), batch):
        made = feed_batch(tasks, events[i : i + batch])
        rows, alerts = rows + made[0], alerts + made[1]
    elapsed = time.process_time() - started
    if profile is not None:
        profile.disable()
    gc.unfreeze()
    return elapsed, rows, alerts


def feed_batch(tasks: list[MonitorTask], batch: list[tuple[str, Any]]) -> tuple[int, int]:
    """One batch into every task as the worker hands it (feed per source, tick,
    collect); (rows, alerts) it made."""
    by_source: dict[str, list[Any]] = {}
    for topic, event in batch:
        by_source.setdefault(topic, []).append(event)
    rows = alerts = 0
    for task in tasks:
        for source, evs in by_source.items():
            if source in task.operator.sources:
                task.feed(source, evs, NOW)
        task.tick(NOW)
        out = task.collect()
        rows += sum(len(r) for r in out.rows.values())
        alerts += len(out.alerts)
    return rows, alerts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=tuple(KINDS), default="ctr")
    parser.add_argument("--keys", type=int, nargs="+", default=[100, 10_000, 100_000])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=1250, help="events per poll")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--per-key",
        type=int,
        default=0,
        help="events per key (at least --events in all): every key past its warm-up",
    )
    parser.add_argument(
        "--warm",
        type=int,
        default=0,
        help="events per key fed before the clock starts: series of the same age compared",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one pass")
    args = parser.parse_args()
    make = make_tasks(args.kind)
    per_key = f" (at least {args.per_key} per key)" if args.per_key else ""
    warm = f", the first {args.warm} per key untimed" if args.warm else ""
    print(
        f"{args.kind}: {args.events:,} events{per_key}{warm}, batches of {args.batch}, whole task"
    )
    head = f"µs CPU / event (min of {args.repeats})"
    print(f"{'keys':>8} {head:>28} {'rows':>9} {'alerts':>7}")
    first = None
    for keys in args.keys:
        events = events_of(KINDS[args.kind][0], max(args.events, args.per_key * keys), keys)
        # the warm-up's events: whole batches, so the timed part is batched as before
        untimed = min(len(events), -(-args.warm * keys // args.batch) * args.batch)
        timed = len(events) - untimed
        if not timed:
            raise SystemExit(f"--warm {args.warm}: nothing left to time at {keys:,} keys")
        if args.profile:
            prof = cProfile.Profile()
            one_pass(make, events, args.batch, untimed, prof)
            stats = pstats.Stats(prof)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(30)
            continue
        runs = [one_pass(make, events, args.batch, untimed) for _ in range(args.repeats)]
        best, rows, alerts = min(runs)
        per = best / timed * 1e6
        first = first or per
        print(
            f"{keys:>8,} {per:>20.2f} ({per / first:.2f}x) {rows:>9,} {alerts:>7,}"
            f"  {timed:,} events timed"
        )


if __name__ == "__main__":
    main()
