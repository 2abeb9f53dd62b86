"""The worker's cycle around the pipeline: flush, checkpoint, commit, backpressure.

    batch -> pipeline.process -> (every flush_interval) sinks.flush
          -> (every checkpoint_interval, after a clean flush)
             checkpoint store.write -> commit offsets

The order is what makes a crash harmless: offsets are committed only after
the checkpoint that covers them is durable, and a checkpoint is written only
after every row and alert it implies is in ClickHouse and on the broker.

When ClickHouse fails, rows stay buffered and flushes are retried with
exponential backoff (0.5 s doubling to 30 s); consumption goes on until
`max_buffered_rows`, then `handle` blocks until the rows are written:
backpressure, never a drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from streams import metrics
from streams.checkpoints import CheckpointStore
from streams.config import Settings
from streams.pipeline import Pipeline, RawMessage, by_partition
from streams.sinks import SinkError, Sinks

log = logging.getLogger("streamwatch.runtime")


class Runtime:
    def __init__(
        self, settings: Settings, pipeline: Pipeline, sinks: Sinks, store: CheckpointStore
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.sinks = sinks
        self.store = store
        # Told the offsets a new checkpoint covers: only then may the source
        # commit them to the consumer group.
        self.on_checkpoint: Callable[[dict[tuple[str, int], int]], None] = lambda offsets: None
        self.lock = asyncio.Lock()
        self.last_flush = 0.0
        self.last_checkpoint = time.monotonic()
        self.backoff = 0.0
        self.next_try = 0.0
        self.healthy = True
        self.last_error: str | None = None
        self.stopping = False  # set on shutdown: stop waiting out backpressure

    # -- assignment ---------------------------------------------------------

    async def assign(self, partitions: Iterable[int]) -> None:
        """Partitions assigned to this worker: restore their state now, so a silent
        partition's open windows still close as the others' watermark moves."""
        async with self.lock:
            await self._assign(partitions)

    async def _assign(self, partitions: Iterable[int]) -> None:
        """Take partitions over, restoring their checkpointed state (under the lock)."""
        new = sorted(set(partitions) - self.pipeline.owned_partitions())
        if new:
            topics = self.pipeline.topics
            self.pipeline.topic_ids = await asyncio.to_thread(self.store.topic_ids, topics)
            checkpoints = await asyncio.to_thread(self.store.load)
            self.pipeline.assign(new, checkpoints)
            log.info(
                "took over partitions %s (%d checkpoints found)",
                new,
                sum(1 for p in new for m in self.pipeline.monitors if f"{m}/{p}" in checkpoints),
            )

    async def revoke(self, partitions: Iterable[int], lost: bool = False) -> None:
        """Hand partitions back: flush and checkpoint them first, when possible.

        `lost` (the group went on without us, e.g. the broker was away): another
        member may own them already, so write no checkpoint for them; the new
        owner replays from the last one.
        """
        partitions = set(partitions) & self.pipeline.owned_partitions()
        if not partitions:
            return
        async with self.lock:
            if not lost:
                try:
                    await self._flush()
                    await self._checkpoint(force=True)
                except SinkError as exc:  # the next owner replays from the last checkpoint
                    log.warning("could not checkpoint revoked partitions: %s", exc)
            self.pipeline.revoke(partitions)

    # -- the cycle ----------------------------------------------------------

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        async with self.lock:
            if messages:
                groups = by_partition(messages)
                # a partition's first batch here: its state comes from its checkpoint
                await self._assign({p for _, p in groups})
                self.pipeline.process(groups)
                self.sinks.poll()  # delivery reports of alerts sent so far, promptly
                for (topic, _), batch in groups.items():
                    if topic not in self.pipeline.internal:  # input events, not re-keyed copies
                        metrics.EVENTS.labels(topic).inc(len(batch))
            await self._maybe_flush_and_checkpoint()
            paused = time.monotonic()
            while self.sinks.buffered >= self.settings.max_buffered_rows and not self.stopping:
                # backpressure: take nothing more until ClickHouse has the rows
                await asyncio.sleep(max(0.0, self.next_try - time.monotonic()))
                await self._maybe_flush_and_checkpoint(force_flush=True)
            blocked_ms = int((time.monotonic() - paused) * 1000)
            if blocked_ms > 100:
                self.pipeline.pause_idle_clock(blocked_ms)

    async def tick(self) -> None:
        """Periodic: let idle partitions advance, flush and checkpoint on time."""
        async with self.lock:
            self.pipeline.tick()
            await self._maybe_flush_and_checkpoint()
            now = time.time()
            for monitor, wm in self.pipeline.watermarks().items():
                metrics.WATERMARK.labels(monitor).set(wm / 1000)
                metrics.WATERMARK_DELAY.labels(monitor).set(now - wm / 1000)

    async def close(self) -> None:
        async with self.lock:
            try:
                await self._flush()
                await self._checkpoint(force=True)
            except SinkError as exc:
                log.warning("stopping with unwritten results (they will be replayed): %s", exc)

    async def _maybe_flush_and_checkpoint(self, force_flush: bool = False) -> None:
        now = time.monotonic()
        due = now - self.last_flush >= self.settings.flush_interval_s
        if not (due or force_flush) or now < self.next_try:
            return
        try:
            await self._flush()
        except SinkError as exc:
            self.healthy = False
            self.last_error = str(exc)
            self.backoff = min(30.0, max(0.5, self.backoff * 2))
            self.next_try = time.monotonic() + self.backoff
            log.warning(
                "sink failed, %d rows kept, retry in %.1f s: %s",
                self.sinks.buffered,
                self.backoff,
                exc,
            )
            return
        self.healthy, self.last_error, self.backoff = True, None, 0.0
        if now - self.last_checkpoint >= self.settings.checkpoint_interval_s:
            await self._checkpoint()

    async def _flush(self) -> None:
        self.last_flush = time.monotonic()
        await asyncio.to_thread(self.sinks.flush)

    async def _checkpoint(self, force: bool = False) -> None:
        """Write dirty tasks' state, then commit the offsets that state covers."""
        self.last_checkpoint = time.monotonic()
        if self.sinks.buffered:
            return  # only a state whose results are all written may be checkpointed
        items = self.pipeline.checkpoints(only_dirty=not force)
        if not items:
            self.on_checkpoint(self.pipeline.committable())  # only replayed input
            return
        try:
            await asyncio.to_thread(self.store.write, items)
        except Exception as exc:
            raise SinkError(f"checkpoint write failed: {exc}") from exc
        self.pipeline.mark_clean()
        metrics.CHECKPOINTS.inc()
        self.on_checkpoint(self.pipeline.committable())
