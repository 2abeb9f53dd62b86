"""From Kafka messages to monitor tasks, and from tasks to outputs and checkpoints.

Transport-free: the worker hands it batches of raw messages of the partitions
it owns and tells it about assignments; it decodes each message once, routes
it to every monitor reading its topic (one `MonitorTask` per monitor and
partition), sends rejects to the dead letter, late events aside, and passes
rows and alerts to the `Outputs`.

Exactly-once effect under at-least-once delivery: each task remembers, per
input topic, the offset of the next message its state has not seen
(`positions`). After a restart from a checkpoint, anything below those
offsets is skipped; everything above is new. Outputs re-emitted in between
are idempotent (ReplacingMergeTree rows, deterministic alert ids).

One message never takes its batch down: the decoder turns any failure on a
message into a rejection (dead letter), and should a monitor's operator still
raise on a batch of decoded events (a bug: an input the schema accepts and
the operator cannot take), that monitor is fed the batch again one event at a
time and each event it fails on is rejected with reason `operator_error`,
logged at error level. The operator may have taken part of the failed batch
before it raised, so those events of that one batch may count twice in that
monitor: a visible, bounded error instead of a worker that dies on the same
offset after every restart. The same holds when a monitor raises while its
watermark advances (`tick`): logged, counted in
`streamwatch_operator_errors_total`, and the other monitors go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from operators.task import MonitorTask
from operators.watermark import NO_WATERMARK
from schemas.decode import Decoder, Rejection
from schemas.events import INPUT_EVENTS, Alert
from streams import metrics
from streams.checkpoints import Checkpoint, key_of
from streams.monitors import MonitorSpec

log = logging.getLogger("streamwatch.pipeline")


class RawMessage:
    """One input message, with the accessors of `confluent_kafka.Message`.

    The worker passes librdkafka's messages through as they are (no copy per
    message on the hot path); this class is the same interface for tests and
    tools that make messages themselves."""

    __slots__ = ("_key", "_offset", "_partition", "_topic", "_value")

    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value = key, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


Batch = dict[tuple[str, int], list[Any]]  # (topic, partition) -> its messages, in offset order


def by_partition(messages: Iterable[Any]) -> Batch:
    """Group a poll's messages (RawMessage or confluent_kafka.Message) by topic partition."""
    groups: Batch = {}
    for m in messages:
        tp = (m.topic(), m.partition())
        group = groups.get(tp)
        if group is None:
            groups[tp] = [m]
        else:
            group.append(m)
    return groups


class Outputs(Protocol):
    def rows(self, table: str, rows: list[dict[str, Any]]) -> None: ...
    def alerts(self, alerts: list[Alert]) -> None: ...
    def rejected(self, message: RawMessage, rejection: Rejection) -> None: ...
    def late(
        self, monitor: str, message: RawMessage, event_ts: int, watermark: int, window_start: int
    ) -> None: ...


class Pipeline:
    def __init__(
        self,
        monitors: Sequence[MonitorSpec],
        outputs: Outputs,
        topic_logical: dict[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.monitors = {m.name: m for m in monitors}
        self.outputs = outputs
        self.clock = clock
        # Kafka topic -> (monitor, logical source) pairs reading it
        self.readers: dict[str, list[tuple[MonitorSpec, str]]] = {}
        for m in monitors:
            for logical, topic in m.topics.items():
                self.readers.setdefault(topic, []).append((m, logical))
        self.decoders = {
            topic: Decoder(logical)
            for topic, logical in topic_logical.items()
            if topic in self.readers and logical in INPUT_EVENTS
        }
        self.tasks: dict[tuple[str, int], MonitorTask] = {}
        self.positions: dict[tuple[str, int], dict[str, int]] = {}
        self.dirty: set[tuple[str, int]] = set()
        self.topic_ids: dict[str, str] = {}  # set by the runtime from the broker
        self.events_in: dict[str, int] = {}

    @property
    def topics(self) -> list[str]:
        return sorted(self.readers)

    # -- assignment ---------------------------------------------------------

    def assign(self, partitions: Iterable[int], checkpoints: dict[str, Checkpoint]) -> None:
        """Own these partitions of every input topic, restoring checkpointed state."""
        for partition in partitions:
            for name, spec in self.monitors.items():
                key = (name, partition)
                if key in self.tasks:
                    continue
                task = spec.make_task()
                checkpoint = checkpoints.get(key_of(name, partition))
                if checkpoint is not None and self._stale(spec, checkpoint):
                    log.warning(
                        "ignoring the checkpoint of %s/%d: an input topic was "
                        "recreated since it was written",
                        name,
                        partition,
                    )
                    checkpoint = None
                if checkpoint is not None:
                    task.restore(checkpoint.state)
                    self.positions[key] = dict(checkpoint.positions)
                else:
                    self.positions[key] = {}
                self.tasks[key] = task

    def _stale(self, spec: MonitorSpec, checkpoint: Checkpoint) -> bool:
        return any(
            topic in checkpoint.topic_ids
            and topic in self.topic_ids
            and checkpoint.topic_ids[topic] != self.topic_ids[topic]
            for topic in spec.topics.values()
        )

    def revoke(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            for name in self.monitors:
                key = (name, partition)
                self.tasks.pop(key, None)
                self.positions.pop(key, None)
                self.dirty.discard(key)

    def owned_partitions(self) -> set[int]:
        return {p for _, p in self.tasks}

    def start_offsets(self) -> dict[tuple[str, int], int]:
        """Where to start reading each (topic, partition): the oldest position any
        task reading it needs (0 where a task has no checkpoint)."""
        starts: dict[tuple[str, int], int] = {}
        for (name, partition), positions in self.positions.items():
            for topic in self.monitors[name].topics.values():
                offset = positions.get(topic, 0)
                tp = (topic, partition)
                starts[tp] = min(starts.get(tp, offset), offset)
        return starts

    # -- processing ---------------------------------------------------------

    def process(self, messages: Sequence[RawMessage] | Batch) -> None:
        """Feed one poll's messages (any mix of topics and owned partitions, or
        already grouped by `by_partition`), then tick."""
        groups = messages if isinstance(messages, dict) else by_partition(messages)
        now_ms = int(self.clock() * 1000)
        for (topic, partition), batch in groups.items():
            self._process_partition(topic, partition, batch, now_ms)
        self.tick(now_ms)

    def _process_partition(
        self, topic: str, partition: int, batch: list[RawMessage], now_ms: int
    ) -> None:
        readers = [
            (spec, logical, (spec.name, partition))
            for spec, logical in self.readers.get(topic, ())
            if (spec.name, partition) in self.tasks
        ]
        if not readers:
            return
        lowest = min(self.positions[key].get(topic, 0) for _, _, key in readers)
        if batch[0].offset() < lowest:  # a replay: skip what every task's state holds
            batch = [m for m in batch if m.offset() >= lowest]
            if not batch:
                return
        # the hot loop: one typed decode per message, nothing else
        decode = self.decoders[topic].decode
        rejected = self.outputs.rejected
        events: list[Any] = []
        kept: list[RawMessage] = []
        for m in batch:
            result = decode(m.value(), m.key())
            if result.__class__ is Rejection:
                rejected(m, result)
            else:
                events.append(result)
                kept.append(m)
        self.events_in[topic] = self.events_in.get(topic, 0) + len(events)
        metrics.PROCESSED.labels(topic).inc(len(events))
        next_offset = batch[-1].offset() + 1
        for spec, logical, key in readers:
            start = self.positions[key].get(topic, 0)
            if next_offset <= start:
                continue
            mine, mine_msgs = events, kept
            if start > lowest:  # this task's state is ahead of another's
                picked = [i for i, m in enumerate(kept) if m.offset() >= start]
                mine, mine_msgs = [events[i] for i in picked], [kept[i] for i in picked]
            task = self.tasks[key]
            try:
                late = task.feed(logical, mine, now_ms)
            except Exception:
                late = self._feed_one_by_one(spec.name, task, logical, mine, mine_msgs, now_ms)
            for i in late:
                event = mine[i]
                self.outputs.late(
                    spec.name,
                    mine_msgs[i],
                    event.ts,
                    task.watermark.value,
                    task.operator.late_window(logical, event),
                )
            self.positions[key][topic] = next_offset
            self.dirty.add(key)

    def _feed_one_by_one(
        self,
        monitor: str,
        task: MonitorTask,
        logical: str,
        events: list[Any],
        messages: list[RawMessage],
        now_ms: int,
    ) -> list[int]:
        """After a monitor failed on a batch: feed it event by event, rejecting the
        events it fails on. Returns the indices of the late events, as `feed` does."""
        log.exception(
            "monitor %s failed on a batch of %d %s events (partition %d, offsets %d..%d); "
            "feeding them one at a time and rejecting those it fails on",
            monitor,
            len(events),
            messages[0].topic(),
            messages[0].partition(),
            messages[0].offset(),
            messages[-1].offset(),
        )
        metrics.OPERATOR_ERRORS.labels(monitor, "feed").inc()
        late: list[int] = []
        for i, event in enumerate(events):
            try:
                if task.feed(logical, [event], now_ms):
                    late.append(i)
            except Exception as exc:
                text = f"monitor {monitor} failed on this event: {type(exc).__name__}: {exc}"
                log.error("%s (%s offset %d)", text, messages[i].topic(), messages[i].offset())
                self.outputs.rejected(messages[i], Rejection("operator_error", text[:1000]))
        return late

    def tick(self, now_ms: int | None = None) -> None:
        """Advance every task's watermark. A task whose sources are all idle follows
        its monitor's slowest busy task, or, when every task is idle, the furthest
        one: a silent partition does not hold its windows open forever."""
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        busy: dict[str, int] = {}
        furthest: dict[str, int] = {}
        for (name, _), task in self.tasks.items():
            value = task.watermark.value
            if value <= NO_WATERMARK:
                continue
            furthest[name] = max(furthest.get(name, value), value)
            if not task.watermark.idle(now_ms):
                busy[name] = min(busy.get(name, value), value)
        floors = {name: busy.get(name, furthest[name]) for name in furthest}
        for key, task in self.tasks.items():
            before = task.watermark.value
            try:
                task.tick(now_ms, floors.get(key[0], NO_WATERMARK))
            except Exception:  # see _operator_failed: logged and counted, never a dead worker
                self._operator_failed(key, "tick")
            try:
                out = task.collect()
            except Exception:
                self._operator_failed(key, "collect")
                continue
            for table, rows in out.rows.items():
                self.outputs.rows(table, rows)
            if out.alerts:
                self.outputs.alerts(out.alerts)
            if task.watermark.value != before:
                self.dirty.add(key)

    def finish(self, quiet_ms: int | None = None, now_ms: int | None = None) -> int:
        """End of input: `MonitorTask.finish` (judge everything fed so far, as if the
        lateness had elapsed) on every task, or with `quiet_ms` only on the tasks whose
        input has been silent that long (`MonitorTask.input_ended`); their results go
        to the outputs. The finished state is checkpointed like any other, so a window
        closed here is never closed again after a restart: later events at or before
        the last one seen are late events. Returns how many tasks moved."""
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        moved = 0
        for key, task in self.tasks.items():
            if quiet_ms is not None and not task.input_ended(now_ms, quiet_ms):
                continue
            before = task.watermark.value
            try:
                if task.finish() == before:
                    continue
                out = task.collect()
            except Exception:
                self._operator_failed(key, "finish")
                if task.watermark.value != before:
                    self.dirty.add(key)
                continue
            moved += 1
            self.dirty.add(key)
            for table, rows in out.rows.items():
                self.outputs.rows(table, rows)
            if out.alerts:
                self.outputs.alerts(out.alerts)
        return moved

    @staticmethod
    def _operator_failed(key: tuple[str, int], stage: str) -> None:
        """A monitor raised while advancing its watermark or collecting its results: a
        bug on input the schema accepted. Restarting would replay the same input into
        the same failure (a poison pill), so the worker logs it at error level, counts
        it and goes on; what that call was producing for this monitor may be lost."""
        log.exception("monitor %s (partition %d) failed in %s", key[0], key[1], stage)
        metrics.OPERATOR_ERRORS.labels(key[0], stage).inc()

    def pause_idle_clock(self, ms: int) -> None:
        """The worker read nothing for `ms` (backpressure, or a long step): sources that
        sent nothing meanwhile were not idle, so no watermark may jump ahead."""
        for task in self.tasks.values():
            task.watermark.pause(ms)

    # -- checkpoints --------------------------------------------------------

    def checkpoints(self, only_dirty: bool = True) -> dict[str, Checkpoint]:
        keys = self.dirty if only_dirty else set(self.tasks)
        return {
            key_of(*key): Checkpoint(
                dict(self.positions[key]),
                self.tasks[key].snapshot(),
                {
                    t: self.topic_ids[t]
                    for t in self.monitors[key[0]].topics.values()
                    if t in self.topic_ids
                },
            )
            for key in sorted(keys)
            if key in self.tasks
        }

    def mark_clean(self) -> None:
        self.dirty.clear()

    def committable(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition), the offset every task reading it has passed."""
        return {tp: o for tp, o in self.start_offsets().items() if o > 0}

    def watermarks(self) -> dict[str, int]:
        """Per monitor, the lowest watermark over its tasks (for metrics)."""
        out: dict[str, int] = {}
        for (name, _), task in self.tasks.items():
            value = task.watermark.value
            if value > NO_WATERMARK:
                out[name] = min(out.get(name, value), value)
        return out
