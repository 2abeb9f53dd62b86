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
        time.sleep(snapshot_s[0])  # a large state's snapshot, on the event loop
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
