"""Checkpoints take at most `checkpoint_max_share` of the worker's time
(`Runtime._checkpoint`, `next_interval`): after a slow one the next waits longer than
`checkpoint_interval_s`, and the interval comes back when they are quick again.

The checkpoints are written to the real broker; the pipeline here only hands the
runtime a checkpoint, taking as long as a large state's snapshot would (the decision is
the runtime's; the worker with real states is in tests/test_recovery.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from streams.config import load_settings
from streams.connectors.checkpoints import Checkpoint, CheckpointStore
from streams.connectors.kafka import ensure_topics
from streams.runtime import metrics
from streams.runtime.cycle import Runtime, next_interval


def _runtime(broker: Any, snapshot_s: list[float]) -> tuple[Runtime, list[float]]:
    prefix = f"cpshare-{uuid.uuid4().hex[:8]}"
    names = {f: f"{prefix}.{f}" for f in load_settings(env={}).topics.__struct_fields__}
    settings = load_settings(
        env={},
        overrides={
            "kafka.bootstrap": broker.bootstrap,
            "topics": names,
            "checkpoint_interval_s": 0.5,
            "checkpoint_max_share": 0.1,
            "flush_interval_s": 0.1,
        },
    )
    ensure_topics(settings, partitions=1)
    store = CheckpointStore({"bootstrap.servers": broker.bootstrap}, names["checkpoints"], "g")
    taken: list[float] = []

    def checkpoints(only_dirty: bool = True) -> dict[str, Checkpoint]:
        # a large state's snapshot: Python work holding the GIL for snapshot_s
        end = time.monotonic() + snapshot_s[0]
        while time.monotonic() < end:
            sum(range(1000))
        taken.append(time.monotonic())
        return {"sensor/0": Checkpoint({"in": len(taken)}, {"n": len(taken)})}

    pipeline = SimpleNamespace(
        checkpoints=checkpoints, mark_clean=lambda: None, committable=lambda: {}
    )
    sinks = SimpleNamespace(flush=lambda timeout: None, buffered=0)
    return Runtime(settings, pipeline=pipeline, sinks=sinks, store=store), taken  # type: ignore[arg-type]


def test_a_slow_checkpoint_spaces_the_next_and_a_quick_one_brings_the_interval_back(
    broker: Any,
) -> None:
    snapshot_s = [0.3]
    rt, taken = _runtime(broker, snapshot_s)

    async def scenario() -> None:
        rt.last_checkpoint = time.monotonic() - 1.0  # due
        await rt._maybe_flush_and_checkpoint(force_flush=True)
        assert len(taken) == 1
        # 0.3 s and more, at most a tenth of the time: not before 3 s
        assert 3.0 <= rt.checkpoint_every < 6.0
        assert metrics.CHECKPOINT_EVERY._value.get() == rt.checkpoint_every
        assert metrics.CHECKPOINT_SECONDS._value.get() >= 0.3
        await asyncio.sleep(0.7)  # past checkpoint_interval_s, not past the spaced one
        await rt._maybe_flush_and_checkpoint(force_flush=True)
        assert len(taken) == 1
        snapshot_s[0] = 0.0
        rt.last_checkpoint -= rt.checkpoint_every  # its time has come
        await rt._maybe_flush_and_checkpoint(force_flush=True)
        assert len(taken) == 2
        assert rt.checkpoint_every == 0.5
        await asyncio.sleep(0.6)
        await rt._maybe_flush_and_checkpoint(force_flush=True)
        assert len(taken) == 3

    asyncio.run(scenario())
    assert rt.store.load() == {"sensor/0": Checkpoint({"in": 3}, {"n": 3})}


def test_the_share_is_checked() -> None:
    with pytest.raises(ValueError, match="checkpoint_max_share"):
        load_settings(env={}, overrides={"checkpoint_max_share": 0})
    assert next_interval(0.2, 5.0, 1.0) == 5.0
    assert next_interval(20.0, 5.0, 0.5) == 40.0


def test_the_event_loop_answers_during_a_long_snapshot_and_input_waits(broker: Any) -> None:
    """The snapshots run in a thread under the runtime's lock: a coroutine on the loop (as
    /health is) runs every few milliseconds meanwhile and sees the checkpoint in progress
    (`checkpointing_since`, which /health/live does not count as a stuck poll), and input
    (which takes the lock) waits for the checkpoint to end."""
    snapshot_s = [1.0]
    rt, taken = _runtime(broker, snapshot_s)
    lags: list[float] = []
    handled: list[float] = []

    async def ticking(until: float) -> None:
        last = time.monotonic()
        while time.monotonic() < until:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            lags.append(now - last - 0.01)
            last = now

    during: list[float | None] = []

    async def input_batch() -> None:
        await asyncio.sleep(0.2)  # arrives while the snapshot runs
        during.append(rt.checkpointing_since)  # what /health reads (health.py)
        async with rt.lock:  # as `Runtime.handle` takes it
            handled.append(time.monotonic())

    async def scenario() -> None:
        rt.last_checkpoint = time.monotonic() - 1.0
        began = time.monotonic()
        watch = asyncio.create_task(ticking(began + 1.3))
        batch = asyncio.create_task(input_batch())
        async with rt.lock:  # as `_tick` and `_handle` hold it around a checkpoint
            await rt._maybe_flush_and_checkpoint(force_flush=True)
        await asyncio.gather(watch, batch)
        assert len(taken) == 1 and handled[0] >= taken[0]
        assert during[0] is not None and during[0] <= began + 0.1
        assert rt.checkpointing_since is None

    asyncio.run(scenario())
    assert len(lags) > 50, lags  # it ran throughout, not once after the snapshot
    assert max(lags) < 0.3, max(lags)


def test_a_cancelled_checkpoint_keeps_the_lock_until_its_snapshot_ended(broker: Any) -> None:
    """A timer cancelled mid-checkpoint (faust stopping its timers) does not release the
    runtime's lock while the snapshot still reads the tasks in its thread: input taking
    the lock comes after the snapshot's end (`in_thread_to_end`)."""
    snapshot_s = [0.8]
    rt, taken = _runtime(broker, snapshot_s)

    async def scenario() -> tuple[float, bool]:
        rt.last_checkpoint = time.monotonic() - 1.0

        async def tick() -> None:
            async with rt.lock:
                await rt._maybe_flush_and_checkpoint(force_flush=True)

        task = asyncio.create_task(tick())
        await asyncio.sleep(0.2)  # inside the snapshot
        task.cancel()
        async with rt.lock:  # as `Runtime.handle` takes it
            handled = time.monotonic()
        try:
            await task
        except asyncio.CancelledError:
            return handled, True
        return handled, False

    handled, cancelled = asyncio.run(scenario())
    assert cancelled and len(taken) == 1 and handled >= taken[0]
    assert rt.checkpointing_since is None
