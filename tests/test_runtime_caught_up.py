"""The flush at the end of a backlog (`Runtime.caught_up`, issue 18).

The source asks for it when a poll comes back short after full ones. Flushes stay at
least a fifth of `flush_interval_s` apart; a catch-up that comes sooner after the last
flush waits out the rest of that fifth, instead of leaving the backlog's last rows to
the next `flush_interval_s`.

The sinks here only record when they are flushed (the decision is the runtime's own;
the real ClickHouse and broker are in tests/test_end_of_input.py and
tests/test_e2e_ctr.py, which run the worker).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from streams.config import load_settings
from streams.runtime.cycle import Runtime

INTERVAL = 0.5
GAP = INTERVAL / 5


def runtime(flushed: list[float]) -> Any:
    settings = load_settings(env={}, overrides={"flush_interval_s": INTERVAL})
    # `Sinks.flush(timeout)` writes every buffered row; none is left after it
    sinks = SimpleNamespace(flush=lambda timeout: flushed.append(time.monotonic()), buffered=0)
    return Runtime(settings, pipeline=None, sinks=sinks, store=None)  # type: ignore[arg-type]


def test_a_catch_up_right_after_a_flush_flushes_once_the_gap_is_out() -> None:
    flushed: list[float] = []
    rt = runtime(flushed)
    rt.last_flush = last = time.monotonic()  # a flush on the interval just now
    asyncio.run(rt.caught_up())
    assert len(flushed) == 1
    # not sooner than the gap, and well before the next interval's flush
    assert GAP <= flushed[0] - last < INTERVAL - 0.15


def test_a_catch_up_long_after_a_flush_flushes_at_once() -> None:
    flushed: list[float] = []
    rt = runtime(flushed)
    rt.last_flush = time.monotonic() - INTERVAL
    began = time.monotonic()
    asyncio.run(rt.caught_up())
    assert len(flushed) == 1 and flushed[0] - began < GAP / 2


def test_a_flush_while_it_waits_is_not_repeated() -> None:
    flushed: list[float] = []
    rt = runtime(flushed)
    rt.last_flush = time.monotonic()

    async def scenario() -> None:
        waiting = asyncio.create_task(rt.caught_up())
        await asyncio.sleep(GAP / 2)
        async with rt.lock:  # the timer flushes meanwhile (`Runtime.tick`)
            await rt._flush()
        await waiting

    asyncio.run(scenario())
    assert len(flushed) == 1
