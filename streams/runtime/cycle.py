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

The end of input (issue 14): a monitor task whose input has been silent for
`close_idle_after_s` is finished on the timer (`Pipeline.finish`: its held
readings judged, its windows ending by its last event closed); at an orderly
stop, after the last regular checkpoint, the tasks silent for `idle_timeout_s`
(every task when `end_of_input` is set, the demo's end) are finished, their
results written and their finished state checkpointed, in that order.

Anything else that goes wrong (an exception that is not a `SinkError`: a bug,
a fatal producer error) is not retried: `fail` records it, the worker logs it
at error level and exits non-zero without writing a checkpoint (crash-only:
the supervisor restarts it and it resumes from the last durable checkpoint).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from operators.state import StateFormatError
from streams.config import Settings
from streams.connectors.checkpoints import CheckpointStore
from streams.connectors.threads import in_thread, in_thread_to_end
from streams.runtime import metrics
from streams.runtime.faults import Faults, InjectedFault
from streams.runtime.health import unjudgeable_series
from streams.runtime.pipeline import Pipeline, RawMessage, by_partition
from streams.runtime.sinks import SinkError, Sinks

log = logging.getLogger("streamwatch.runtime")


class Runtime:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        sinks: Sinks,
        store: CheckpointStore,
        faults: Faults | None = None,
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
        # seconds from one checkpoint to the next: the interval, or longer where a
        # checkpoint takes more than its share of the time (`next_interval`)
        self.checkpoint_every = settings.checkpoint_interval_s
        # (monotonic) when the checkpoint being taken began, None between them: input
        # waits meanwhile, which /health does not count as a stuck poll (streams/runtime/
        # health.py)
        self.checkpointing_since: float | None = None
        self.backoff = 0.0
        self.next_try = 0.0
        self.healthy = True
        self.last_error: str | None = None
        self.stopping = False  # set on shutdown: stop waiting out backpressure
        # on shutdown: the last flush and checkpoint give up at this time (monotonic)
        self.stop_deadline: float | None = None
        self.faults = faults or Faults()
        # an unhandled failure: (where, exception); the worker exits on it
        self.failure: tuple[str, BaseException] | None = None
        self.failed = asyncio.Event()
        # liveness while consumption is paused on purpose (backpressure): the
        # retry loop's last turn (monotonic), None when not paused
        self.paused_since: float | None = None
        self.paused_beat = 0.0
        # the highest watermark seen (max over monitors, ms) and when it last rose
        self.watermark_high = -1
        self.watermark_moved = time.monotonic()
        # set by whoever stops the worker because its input is over (the demo's end):
        # close() then finishes every task, not only those whose input went quiet
        self.end_of_input = False
        self.unjudgeable_monitors: set[str] = set()  # monitors given the metric so far
        metrics.BACKPRESSURE.set_function(lambda: 0.0 if self.paused_since is None else 1.0)

    # -- failure --------------------------------------------------------------

    def fail(self, where: str, exc: BaseException) -> None:
        """Record an unhandled failure (the first one wins); the worker exits on it."""
        if self.failure is None:
            # the error text first: /health may read `failure` from another thread at
            # any moment, and must then find the cause beside it
            self.last_error = f"{where} failed: {type(exc).__name__}: {exc}"
            self.healthy = False
            self.failure = (where, exc)
            metrics.FAILED.set(1)
        self.failed.set()

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
            self.pipeline.topic_ids = await in_thread(self.store.topic_ids, topics)
            checkpoints = await in_thread(self.store.load)
            try:
                self.pipeline.assign(new, checkpoints)
            except StateFormatError as exc:
                # a checkpoint this version cannot restore: stop now, loudly, rather
                # than wait for the partition's first message (or run without it);
                # the message names the monitor and the way out (--discard-state)
                self.fail("restoring the checkpoints", exc)
                raise
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
            if not lost and self.failure is None:
                try:
                    await self._flush()
                    await self._checkpoint(force=True)
                except SinkError as exc:  # the next owner replays from the last checkpoint
                    log.warning("could not checkpoint revoked partitions: %s", exc)
                except Exception as exc:
                    self.fail("handing over partitions", exc)
                    raise
            self.pipeline.revoke(partitions)

    # -- the cycle ----------------------------------------------------------

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        try:
            await self._handle(messages)
        except Exception as exc:
            self.fail("the consume loop", exc)
            raise

    async def _handle(self, messages: Sequence[RawMessage]) -> None:
        async with self.lock:
            if messages and self.faults.armed:
                self.faults.scan(messages)
                if self.faults.fire("decode"):
                    raise InjectedFault("injected failure in the batch loop (decode)")
            began = time.monotonic()
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
                self.paused_since = self.paused_since or paused
                self.paused_beat = time.monotonic()
                await asyncio.sleep(min(1.0, max(0.0, self.next_try - time.monotonic())))
                await self._maybe_flush_and_checkpoint(force_flush=True)
            self.paused_since = None
            # Nothing was read while the input was held (backpressure), nor during a long
            # step such as an autoencoder's training: that is not idleness, or a busy
            # partition would count as idle and its next events arrive late. Ordinary
            # batches (< 1 s) keep the clock running: librdkafka fetches meanwhile, and a
            # worker busy without pause must still see its idle partitions as idle.
            held_ms = int((time.monotonic() - paused) * 1000)
            step_ms = int((paused - began) * 1000)
            blocked_ms = (held_ms if held_ms > 100 else 0) + max(0, step_ms - 1000)
            if blocked_ms > 0:
                self.pipeline.pause_idle_clock(blocked_ms)

    async def caught_up(self) -> None:
        """The source has read all the input there was after a backlog (a poll short
        of a batch after full ones, `KafkaSource._consume`), and that last batch is
        handled: flush now, and checkpoint if due, rather than at the next
        `flush_interval_s`, so the backlog's last results are out as soon as they
        are made. Once per catch-up, and never sooner than a fifth of
        `flush_interval_s` after the last flush (at most five flushes a second on a
        stream that catches up again and again): when the last flush was sooner, this
        waits out the rest of that fifth (at most 0.1 s by default). Before, it then
        left the results to the next `flush_interval_s`, up to 0.5 s later: a backlog
        of 300 k inference logs ended 0.45 s later in one run out of six (issue 18)."""
        try:
            gap = self.settings.flush_interval_s / 5
            wait = self.last_flush + gap - time.monotonic()
            if wait > 0:
                # (outside the lock: the timer may tick meanwhile; nothing is polled,
                # as the input was drained)
                await asyncio.sleep(wait)
            async with self.lock:
                # (a flush by the timer meanwhile wrote every row there was)
                if time.monotonic() - self.last_flush >= gap:
                    await self._maybe_flush_and_checkpoint(force_flush=True)
        except Exception as exc:
            self.fail("the consume loop", exc)
            raise

    async def tick(self) -> None:
        """Periodic: let idle partitions advance, flush and checkpoint on time.

        A failure here is recorded (the worker exits on it), not raised: the
        timer belongs to faust, which would only log it and stop ticking."""
        if self.failure is not None:
            return
        try:
            await self._tick()
        except Exception as exc:
            self.fail("the timer (tick)", exc)

    async def _tick(self) -> None:
        async with self.lock:
            if self.faults.fire("timer"):
                raise InjectedFault("injected failure in the timer")
            self.pipeline.tick()
            if self.settings.close_idle_after_s > 0:
                # input silent for close_idle_after_s: its last windows close now
                quiet_ms = int(self.settings.close_idle_after_s * 1000)
                moved = self.pipeline.finish(quiet_ms)
                if moved:
                    log.info("input idle: finished %d monitor tasks (their last windows)", moved)
            await self._maybe_flush_and_checkpoint()
            now = time.time()
            watermarks = self.pipeline.watermarks()
            for monitor, wm in watermarks.items():
                metrics.WATERMARK.labels(monitor).set(wm / 1000)
                metrics.WATERMARK_DELAY.labels(monitor).set(now - wm / 1000)
            unjudgeable = unjudgeable_series(self.pipeline)
            for monitor in self.unjudgeable_monitors - set(unjudgeable):
                metrics.UNJUDGEABLE.labels(monitor).set(0)  # its partitions went elsewhere
            for monitor, series in unjudgeable.items():
                metrics.UNJUDGEABLE.labels(monitor).set(len(series))
            self.unjudgeable_monitors |= set(unjudgeable)
            high = max(watermarks.values(), default=-1)
            if high > self.watermark_high:
                self.watermark_high, self.watermark_moved = high, time.monotonic()

    async def close(self) -> None:
        if self.failure is not None:
            # crash-only: state after an unhandled failure may be half-updated,
            # so nothing of it is checkpointed; the restart replays from the last one
            log.error("not checkpointing after a failure: the restart replays from the last one")
            return
        async with self.lock:
            try:
                await self._flush()
                await self._checkpoint(force=True)
            except SinkError as exc:
                log.warning("stopping with unwritten results (they will be replayed): %s", exc)
                return  # nothing is finished early when it could not be written
            await self._finish()

    async def _finish(self) -> None:
        """At an orderly stop, after the state is safe: finish the tasks whose input is
        over (all at the end of input, else those silent for idle_timeout_s and their
        lateness), write their results, then checkpoint the finished state. A task
        still receiving input is left as it is: a restart carries its windows on,
        exactly as an uninterrupted run would (a rolling restart changes no result)."""
        quiet = None if self.end_of_input else int(self.settings.idle_timeout_s * 1000)
        try:
            moved = self.pipeline.finish(quiet)
            if not moved:
                return
            log.info("stopping: finished %d monitor tasks whose input is over", moved)
            await self._flush()
            await self._checkpoint()  # the finished tasks (dirty), the rest is written
        except SinkError as exc:
            # the finished results may be partly written and the finished state is not
            # checkpointed: the restart replays from the checkpoint above
            log.warning("stopping with unwritten final windows (they will be replayed): %s", exc)
        except Exception as exc:
            self.fail("finishing at the stop", exc)

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
        self.backoff = 0.0
        if self.failure is None:  # a failure's reason stays for /health until the exit
            self.healthy, self.last_error = True, None
        if now - self.last_checkpoint >= self.checkpoint_every:
            await self._checkpoint()

    def _timeout(self, default: float = 30.0) -> float:
        """How long a flush or checkpoint may wait for the broker: less when stopping."""
        if self.stop_deadline is None:
            return default
        return max(0.1, min(default, self.stop_deadline - time.monotonic()))

    async def _flush(self) -> None:
        self.last_flush = time.monotonic()
        await in_thread_to_end(self.sinks.flush, self._timeout())

    async def _checkpoint(self, force: bool = False) -> None:
        """Write dirty tasks' state, then commit the offsets that state covers."""
        self.last_checkpoint = time.monotonic()
        if self.failure is not None:
            return  # crash-only: a state a failure may have half-updated is never saved
        if self.sinks.buffered:
            return  # only a state whose results are all written may be checkpointed
        # The snapshots in a thread, under the runtime's lock: no input is processed
        # meanwhile (each task's state stays the one its written results imply), but the
        # event loop is free, so /health, /metrics and the timers answer during a large
        # state's snapshot (12-24 s at 50,000 sensors: BENCHMARKS.md) instead of after it.
        self.checkpointing_since = self.last_checkpoint
        try:
            # (to their end even if this is cancelled: the lock is held until then)
            items = await in_thread_to_end(self.pipeline.checkpoints, not force)
            if not items:
                self.on_checkpoint(self.pipeline.committable())  # only replayed input
                return
            try:
                await in_thread_to_end(self.store.write, items, self._timeout())
            except Exception as exc:
                raise SinkError(f"checkpoint write failed: {exc}") from exc
        finally:
            self.checkpointing_since = None
        self.pipeline.mark_clean()
        metrics.CHECKPOINTS.inc()
        self.on_checkpoint(self.pipeline.committable())
        took = time.monotonic() - self.last_checkpoint
        every = next_interval(
            took, self.settings.checkpoint_interval_s, self.settings.checkpoint_max_share
        )
        if every > self.settings.checkpoint_interval_s and every > 1.5 * self.checkpoint_every:
            log.info(
                "a checkpoint took %.1f s: the next in %.0f s (checkpoint_max_share %.2f)",
                took,
                every,
                self.settings.checkpoint_max_share,
            )
        self.checkpoint_every = every
        metrics.CHECKPOINT_SECONDS.set(took)
        metrics.CHECKPOINT_EVERY.set(every)


def next_interval(took_s: float, interval_s: float, max_share: float) -> float:
    """Seconds from a checkpoint that took `took_s` to the next: `interval_s`, or
    `took_s / max_share` where that is longer, so checkpoints take at most `max_share`
    of the worker's time however large its state (a crash replays at most that much
    more input; the input topics' retention must cover it).

    >>> next_interval(0.05, 5.0, 0.1)
    5.0
    >>> next_interval(3.0, 5.0, 0.1)
    30.0
    """
    return max(interval_s, took_s / max_share)
