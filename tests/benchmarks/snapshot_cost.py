"""What one checkpoint's snapshots cost, in process, at many keys (issue 18, session 18).

    python -m tests.benchmarks.snapshot_cost --kind sensor+cluster --keys 12500 --per-key 60
    python -m tests.benchmarks.snapshot_cost --kind ctr --keys 100000 --events 500000

Builds the kind's tasks as the worker does (`keys_scaling.make_tasks`), feeds them the
simulated events, then takes each task's `snapshot_encoded` several rounds, each round
three ways, alternating, with the worker's collector settings (`tune_garbage_collector`,
applied before the tasks are built, as the worker applies them at start-up):

    collector on   the snapshots on the calling thread, the garbage collector on
    collector off  the same with it paused, as `Pipeline.checkpoints` takes them
    in a thread    paused, in `asyncio.to_thread` while the event loop runs a coroutine
                   every 10 ms (as the worker's checkpoint runs: streams/runtime/cycle.py)

and prints CPU and wall milliseconds per round (all the kind's tasks) and, for the thread,
how often the loop's coroutine ran. A table to read side by side, not an assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from operators.task import MonitorTask
from tests.benchmarks.keys_scaling import feed_batch, make_tasks
from tests.benchmarks.operator_cost import events_of


def fed_tasks(kind: str, keys: int, events: int) -> list[MonitorTask]:
    """The kind's tasks after `events` simulated events over `keys` keys, in batches of
    5,000 (feed per source, tick, collect, as keys_scaling does)."""
    tasks = make_tasks(kind)()
    stream = events_of(kind.split("+")[0], events, keys)
    for i in range(0, len(stream), 5000):
        feed_batch(tasks, stream[i : i + 5000])
    return tasks


def snapshots(tasks: list[MonitorTask], paused: bool) -> Callable[[], list[Any]]:
    def take() -> list[Any]:
        if paused:
            gc.disable()
        try:
            return [task.snapshot_encoded() for task in tasks]
        finally:
            if paused:
                gc.enable()

    return take


async def in_thread_with_loop(take: Callable[[], list[Any]]) -> tuple[float, float, int]:
    """(wall s, CPU s, loop turns) of `take` in a thread while a coroutine ticks."""
    turns = 0
    stop = asyncio.Event()

    async def ticking() -> None:
        nonlocal turns
        while not stop.is_set():
            await asyncio.sleep(0.01)
            turns += 1

    ticker = asyncio.create_task(ticking())
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.to_thread(take)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stop.set()
    await ticker
    return wall, cpu, turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("ctr", "sensor", "sensor+cluster"), required=True)
    parser.add_argument("--keys", type=int, required=True)
    parser.add_argument("--events", type=int, default=0, help="events in all")
    parser.add_argument("--per-key", type=int, default=0, help="or this many per key")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    events = max(args.events, args.keys * args.per_key)
    if not events:
        parser.error("give --events or --per-key")
    from streams.runtime.worker import tune_garbage_collector

    tune_garbage_collector()
    tasks = fed_tasks(args.kind, args.keys, events)
    print(f"{args.kind}: {args.keys:,} keys, {events:,} events; ms per round, all its tasks")
    print(f"{'round':>5} {'collector on':>14} {'collector off':>14} {'in a thread':>22}")
    for r in range(1, args.rounds + 1):
        cells = []
        for paused in (False, True):
            cpu = time.process_time()
            snapshots(tasks, paused)()
            cells.append(f"{(time.process_time() - cpu) * 1000:>11,.0f} ms")
        wall, cpu, turns = asyncio.run(in_thread_with_loop(snapshots(tasks, True)))
        thread = f"{wall * 1000:,.0f} ms wall, {turns} turns"
        print(f"{r:>5} {cells[0]:>14} {cells[1]:>14} {thread:>22}")


if __name__ == "__main__":
    main()
