"""The input source: a confluent-kafka consumer group feeding the runtime in batches.

Why not a faust agent: a faust agent (even `stream.take`) delivers some twenty
times fewer events per second per process than a batch `consume()` on the same
broker (BENCHMARKS.md), and `take()` acks a batch as soon as the next
one is asked for, which would commit offsets before their results are
durable. faust still runs the worker (web server, timers, lifecycle); the
hot path reads with librdkafka.

- Assignment: the `range` assignor gives partition p of every input topic to
  the same member (the topics have equal partition counts), which the
  impression-click join needs.
- Offsets: auto-commit is off. The runtime reports the offsets a durable
  checkpoint covers; they are committed before the next poll.
- Revocation: the runtime flushes and checkpoints before partitions go.
- Catching up (a backlog, a replay): after a full batch the next poll takes what
  librdkafka holds without waiting `batch_timeout_s` for a full one; when that is
  short of a batch even after `SETTLE_S`, the input is caught up and the runtime
  flushes right after that batch (`Runtime.caught_up`), instead of the last short
  poll waiting `batch_timeout_s` and its rows waiting for the next
  `flush_interval_s`: at a backlog's end that was 0.2-0.6 s of wall time (issue
  18). A caught-up live stream polls as before (each poll waits up to
  `batch_timeout_s`) and flushes on its interval: only a full poll starts
  catching up, and the first short one ends it.
- Liveness: `last_poll` is when `consume()` last returned (exported as
  `streamwatch_last_poll_age_seconds`, computed at scrape time); `waiting`
  is how much input waits for this worker, from the broker's high watermarks
  (every few seconds, in the polling thread).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaException

from streams.config import Settings
from streams.connectors import kafka
from streams.connectors.threads import guarded, in_thread
from streams.runtime import metrics
from streams.runtime.cycle import Runtime

log = logging.getLogger("streamwatch.source")

# While catching up, how long a poll short of a batch still waits before the input
# counts as caught up: a fetch in flight when librdkafka's queue ran dry lands within it
SETTLE_S = 0.02


class KafkaSource:
    def __init__(self, settings: Settings, runtime: Runtime, topics: list[str]) -> None:
        self.settings = settings
        self.runtime = runtime
        self.topics = topics
        self.consumer = kafka.consumer(
            settings,
            settings.kafka.group_id,
            **{
                "partition.assignment.strategy": "range",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "queued.max.messages.kbytes": 256 * 1024,
                # librdkafka stops fetching a partition whose local queue is over its
                # thresholds and looks again only after this (default 1000 ms): a
                # stall of a second each time the worker falls behind a fast broker
                "fetch.queue.backoff.ms": 10,
            },
        )
        self.pending_commit: dict[tuple[str, int], int] = {}
        # the last poll found messages without waiting (a full batch, or what followed
        # one): the next takes what librdkafka holds (see the module's docstring)
        self.catching_up = False
        # set by a poll that found the input caught up: the loop flushes at once
        self.caught_up = False
        self.lag_reported = 0.0
        self.unread_checked = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.subscribed = False
        self.finished = asyncio.Event()
        runtime.on_checkpoint = self._checkpointed
        self.last_poll = time.monotonic()  # (monotonic) when consume() last returned
        # messages past our positions on the assigned partitions (None: not known);
        # while nothing is assigned, past the group's committed offsets on every
        # input partition. From the brokers' high watermarks: Tansu reports them
        # too low (base offset of its last batch + 1), so the figure may miss the
        # tail of the last batch, never invent input.
        self.waiting: int | None = None
        self.unassigned_since: float | None = time.monotonic()
        # while nothing is assigned: other members of the group that hold partitions
        # (None: not known; Tansu's group description lists no members at all)
        self.members_elsewhere: int | None = None
        self._admin: Any = None
        metrics.LAST_POLL_AGE.set_function(lambda: time.monotonic() - self.last_poll)

    def _checkpointed(self, offsets: dict[tuple[str, int], int]) -> None:
        self.pending_commit.update(offsets)

    def subscribe(self) -> None:
        """Join the consumer group (once): librdkafka joins in its own thread, and the
        assignment waits for the first poll (`run`), where `_on_assign` restores the
        partitions. The worker subscribes before the faust app starts, so the join
        (half the session timeout on Tansu) overlaps the app's own start."""
        if self.subscribed:
            return
        self.subscribed = True
        self.consumer.subscribe(
            self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.last_poll = time.monotonic()  # the poll age counts from here
        self.subscribe()
        try:
            while not self.stopping and self.runtime.failure is None:
                batch = await in_thread(self._poll)
                await self.runtime.handle(batch)
                if self.caught_up:
                    self.caught_up = False
                    await self.runtime.caught_up()
        finally:
            await self.runtime.close()
            await in_thread(self._close)

    def stop(self, budget: float | None = None) -> None:
        """Stop after the current batch; the last flush and checkpoint may take
        `budget` seconds (the rest of the stop needs time too)."""
        self.stopping = True
        self.runtime.stopping = True
        if budget is not None:
            self.runtime.stop_deadline = time.monotonic() + budget

    # -- in the polling thread ------------------------------------------------

    def _poll(self) -> list[Any]:
        if self.runtime.faults.fire("stall"):
            log.warning("TEST-ONLY fault 'stall': the polling thread blocks until stopped")
            while not self.stopping:
                time.sleep(0.1)
        if self.runtime.faults.fire("hang"):
            log.warning("TEST-ONLY fault 'hang': the polling thread blocks for good")
            threading.Event().wait()
        self._commit()
        if time.monotonic() - self.lag_reported > 5:
            self._report_lag()
        messages = self._consume()
        self.last_poll = time.monotonic()
        if self.last_poll - self.unread_checked > 0.5:
            self._report_unread()
        # librdkafka's messages go to the pipeline as they are (same accessors as RawMessage)
        batch = [m for m in messages if m.error() is None]
        if len(batch) < len(messages):
            for m in messages:
                if m.error() is not None:
                    log.warning("consumer error: %s", m.error())
        return batch

    def _consume(self) -> list[Any]:
        """One poll's messages: up to `batch_size`, waiting up to `batch_timeout_s`
        for them; or, catching up (the last poll was full), what librdkafka holds
        now, and when that is short of a batch what comes within `SETTLE_S`: still
        short, the input is caught up (`caught_up`: the loop flushes after this
        batch, and the next poll waits as usual). A live stream thus keeps its
        batches of `batch_timeout_s` and its flushes every `flush_interval_s`, with
        one flush more each time it catches up after a full batch."""
        size = self.settings.batch_size
        if self.catching_up:
            messages = self.consumer.consume(size, 0)
            if len(messages) < size:  # librdkafka ran dry: a fetch in flight, or the end
                messages += self.consumer.consume(size - len(messages), SETTLE_S)
                if len(messages) < size:
                    self.catching_up = False
                    self.caught_up = True
            return messages
        messages = self.consumer.consume(size, self.settings.batch_timeout_s)
        self.catching_up = len(messages) >= size
        return messages

    def _report_unread(self) -> None:
        """Tell the pipeline where we are on each partition against the high watermark
        librdkafka cached from fetch responses (no request): a partition with messages
        not read yet is never idle (`Pipeline.waiting`). A starved worker can leave a
        partition's fetched data queued longer than the idle timeout; counted idle,
        its events would come after the watermark had passed them (late, out of their
        windows). Tansu's high watermarks may be too low (see `waiting`), which can
        only miss a partition, never invent one."""
        self.unread_checked = time.monotonic()
        fetched = []
        try:
            for tp in self.consumer.position(self.consumer.assignment()):
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    fetched.append((tp.topic, tp.partition, tp.offset, high))
        except Exception as exc:  # bookkeeping: it must never end the consume loop
            # not known now (a rebalance, a closing consumer): nothing is reported as
            # unread, so idleness works as without this; the next poll looks again
            log.debug("consumer positions not known now: %s", exc)
            fetched = []
        self.runtime.pipeline.fetched = tuple(fetched)

    def _report_lag(self) -> None:
        """Consumer lag per partition from the high watermarks librdkafka has cached
        from fetch responses (no extra request). Some brokers (Tansu) report wrong
        high watermarks: the gauge is only as good as the broker's figure."""
        self.lag_reported = time.monotonic()
        assignment = self.consumer.assignment()
        if not assignment:
            if self.unassigned_since is None:
                self.unassigned_since = time.monotonic()
            self.waiting = self._waiting_unassigned()
            self.members_elsewhere = self._members_elsewhere()
            return
        self.unassigned_since = None
        self.members_elsewhere = None
        waiting = 0
        for tp in self.consumer.position(assignment):
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except Exception:  # not known yet
                continue
            if high >= 0 and tp.offset >= 0:
                lag = max(0, high - tp.offset)
                waiting += lag
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(lag)
        self.waiting = waiting

    def _waiting_unassigned(self) -> int | None:
        """With no partition of our own: messages past the group's committed offsets
        on every input partition (None when the broker does not answer in time)."""
        from confluent_kafka import TopicPartition

        try:
            metadata = self.consumer.list_topics(timeout=2)
            tps = [
                TopicPartition(topic, p)
                for topic in self.topics
                if topic in metadata.topics
                for p in metadata.topics[topic].partitions
            ]
            waiting = 0
            deadline = time.monotonic() + 3  # bounded: this runs in the polling thread
            for tp in self.consumer.committed(tps, timeout=2):
                if time.monotonic() > deadline:
                    return None
                low, high = self.consumer.get_watermark_offsets(tp, timeout=1, cached=False)
                start = tp.offset if tp.offset >= 0 else low
                waiting += max(0, high - start)
            return waiting
        except Exception as exc:  # the broker is away: not known
            log.debug("input waiting not known: %s", exc)
            return None

    def _members_elsewhere(self) -> int | None:
        """Members of our group (not us) that hold partitions, from the broker's
        group description; None when it does not answer in time or lists nobody."""
        try:
            from confluent_kafka.admin import AdminClient

            if self._admin is None:
                self._admin = AdminClient(self.settings.kafka_client_config())
            group = self.settings.kafka.group_id
            description = self._admin.describe_consumer_groups([group])[group].result(timeout=2)
            me = self.consumer.memberid()
            members = [m for m in description.members if m.member_id != me]
            if not description.members:
                return None  # not described (Tansu): not known
            return sum(
                1 for m in members if m.assignment is not None and m.assignment.topic_partitions
            )
        except Exception as exc:
            log.debug("group members not known: %s", exc)
            return None

    def _commit(self) -> None:
        if not self.pending_commit:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets, self.pending_commit = self.pending_commit, {}
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in owned]
        if not tps:
            return
        try:
            self.consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:  # harmless: the checkpoint holds the position
            log.warning("offset commit failed (will replay from the checkpoint): %s", exc)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))
        numbers = {tp.partition for tp in partitions}
        if self.loop is not None and numbers and self.loop.is_running():
            # before any message of them is fetched: their state comes from checkpoints
            future = asyncio.run_coroutine_threadsafe(self.runtime.assign(numbers), self.loop)
            try:
                self._wait(future)
            except Exception as exc:  # the first batch of the partition retries
                log.warning("could not restore partitions %s on assignment: %s", numbers, exc)

    def _wait(self, future: Any, timeout: float = 120) -> None:
        """Wait for the event loop's work from librdkafka's callback (in the polling
        thread), but not past a failure or a stop: then the loop may never run it,
        and a thread blocked here would keep the process from exiting."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                future.result(timeout=0.5)
                return
            except TimeoutError:
                if self.runtime.failure is not None or time.monotonic() > deadline:
                    future.cancel()
                    raise
                if self.stopping and self.loop is not None and not self.loop.is_running():
                    future.cancel()
                    raise

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._on_revoke(consumer, partitions, lost=True)

    def _on_revoke(self, consumer: Any, partitions: list[Any], lost: bool = False) -> None:
        numbers = {tp.partition for tp in partitions}
        log.info("%s partitions %s", "lost" if lost else "revoking", sorted(numbers))
        if lost:
            self.pending_commit.clear()  # not ours to commit any more
        if self.loop is not None and numbers and self.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(
                self.runtime.revoke(numbers, lost=lost), self.loop
            )
            try:
                self._wait(future)
            except Exception as exc:  # the next owner replays from the last checkpoint
                log.warning("could not hand over partitions cleanly: %s", exc)
        self._commit()

    def _close(self) -> None:
        self._commit()
        try:
            guarded(self.consumer.close)
        except KafkaException as exc:
            # (closing during a rebalance: `streams.connectors.threads`) the state is
            # checkpointed already; the group drops this member after its session
            # timeout, and the next owner resumes from the checkpoints
            log.warning("closing the consumer: %s", exc)
