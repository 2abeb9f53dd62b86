"""Crash recovery and idempotent sinks, over the real broker (Tansu) and chDB.

The CTR ground truth of `test_e2e_ctr` is fed to a worker that is killed
(SIGKILL) or stopped (SIGTERM) part-way and restarted. Whatever the moment of
the crash, the end state must be that of an uninterrupted run:

- `ctr_windows FINAL` holds exactly the reference rows, every one final;
- the alert topic holds the same (alert_id, content) pairs as an uninterrupted
  run: a replay may publish an alert again, never with a different content;
- a replay after a crash between a ClickHouse insert and the offset commit
  leaves duplicate raw rows that `FINAL` collapses to one per window;
- a restart after a clean stop resumes at the committed offsets with the
  checkpointed state instead of rereading the input.

The uninterrupted expectation for alerts is computed in-process: the same
`Pipeline` (operators, watermarks, rules) fed the same messages, with the
partitions and offsets they have on the broker, and no crash.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from typing import Any

import orjson
import pytest

from operators.rules import alert_id
from streams.connectors.checkpoints import CheckpointStore
from tests.harness import (
    Deployment,
    Message,
    WorkerProcess,
    committed,
    consume_all,
    ctr_rows,
    input_ends,
    produce,
    uninterrupted_alerts,
)
from tests.test_e2e_ctr import MALFORMED, MIN, CtrTraffic

pytestmark = pytest.mark.integration

# -- reading results ----------------------------------------------------------------


def consumed(worker: WorkerProcess) -> int:
    return int(worker.metric("streamwatch_events_consumed_total"))


def log_count(worker: WorkerProcess, pattern: str) -> int:
    """How often a pattern occurs in the worker's log (every run appends to it)."""
    try:
        return len(re.findall(pattern, worker.log_path.read_text()))
    except FileNotFoundError:
        return 0


def wait_assigned(worker: WorkerProcess, before: int, timeout: float = 60) -> None:
    """Until this run's Kafka source has its partitions (a new 'assigned' log line)."""
    worker.wait_until(
        lambda: log_count(worker, r"streamwatch\.source: assigned") > before,
        timeout,
        "the source to be assigned its partitions",
    )


CTR_FINAL = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant, impressions,"
    " clicks, orphan_clicks, duplicate_clicks, final FROM streamwatch.ctr_windows FINAL"
    " WHERE campaign_id NOT LIKE 'zz-%' ORDER BY ws, campaign_id, variant"
)


def final_windows(worker: WorkerProcess) -> int:
    return worker.query(
        "SELECT count() AS n FROM streamwatch.ctr_windows FINAL "
        "WHERE final = 1 AND campaign_id NOT LIKE 'zz-%'"
    )[0]["n"]


def alerts_on_topic(d: Deployment) -> list[tuple[str, dict[str, Any]]]:
    return [
        (orjson.loads(m.value())["alert_id"], orjson.loads(m.value()))
        for m in consume_all(d.bootstrap, d.topics["alerts"], idle_s=1.5)
    ]


class AlertWatcher:
    """Polls the alert topic from the start, to act the moment an alert is out."""

    def __init__(self, d: Deployment) -> None:
        from confluent_kafka import Consumer, TopicPartition

        topic = d.topics["alerts"]
        self.consumer = Consumer(
            {
                "bootstrap.servers": d.bootstrap,
                "group.id": f"watcher-{time.time_ns()}",
                "enable.auto.commit": False,
            }
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])

    def seen(self) -> bool:
        return any(not m.error() for m in self.consumer.consume(100, 0.02))

    def __enter__(self) -> AlertWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.close()


def check_end_state(d: Deployment, traffic: CtrTraffic, sent: list[Message]) -> list[tuple]:
    """The end state equals an uninterrupted run's; returns the alerts on the topic."""
    rows = d.query(CTR_FINAL)
    assert ctr_rows(rows) == traffic.expected, "a window was lost or counted twice"
    assert all(r["final"] == 1 for r in rows)

    on_topic = alerts_on_topic(d)
    contents: dict[str, list[dict[str, Any]]] = {}
    for aid, content in on_topic:
        if content not in contents.setdefault(aid, []):
            contents[aid].append(content)
    changed = {aid: c for aid, c in contents.items() if len(c) > 1}
    assert not changed, f"one alert id published with different contents: {changed}"
    reference = uninterrupted_alerts(d, sent)
    assert {aid: c[0] for aid, c in contents.items()} == reference
    # the reference itself is test_e2e_ctr's: the drop in window 8 (judged on its own
    # and by the accumulated evidence) and its recovery after 3 clear windows (issue 13)
    drop = traffic.drop_ws
    back = drop + 3 * MIN
    assert sorted(reference) == sorted(
        [
            alert_id("ctr_drop", "big", drop, drop + MIN, "firing", 0),
            alert_id("ctr_sustained_drop", "big", drop, drop + MIN, "firing", 0),
            alert_id("ctr_drop", "big", back, back + MIN, "resolved", 0),
            alert_id("ctr_sustained_drop", "big", back, back + MIN, "resolved", 0),
        ]
    )
    stored = d.query("SELECT alert_id FROM streamwatch.alerts FINAL")
    assert sorted(r["alert_id"] for r in stored) == sorted(reference)
    letters = d.query("SELECT count() AS n FROM streamwatch.dead_letters FINAL")
    assert letters[0]["n"] == len(MALFORMED)
    return on_topic


# -- the tests ----------------------------------------------------------------------


def test_kill_9_at_several_moments(tmp_path, broker) -> None:
    """SIGKILL three times at different points; the end state is an uninterrupted run's.

    Its checkpoints are written in parts of 1 KiB (`checkpoint_part_bytes`), so the
    worker resumes from heads and their parts (the path of a large state,
    streams/connectors/checkpoints.py); the other tests here write one record each."""
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "rec-kill",
        checkpoint_interval_s=1.0,
        flush_interval_s=0.2,
        checkpoint_part_bytes=1024,
    )
    traffic = CtrTraffic(d)
    half = len(traffic.body) // 2
    first, second = traffic.body[:half], traffic.body[half:]
    worker = WorkerProcess(d)
    kills: list[dict[str, Any]] = []
    sent = [0]

    def start() -> None:
        assigned = log_count(worker, r"streamwatch\.source: assigned")
        worker.start()
        wait_assigned(worker, assigned)

    def kill(where: str) -> None:
        kills.append(
            {
                "where": where,
                "consumed": consumed(worker),
                "checkpoints": worker.metric("streamwatch_checkpoints_total"),
            }
        )
        worker.kill()

    def trickle(messages: list[Message], slices: int, pause: float) -> threading.Thread:
        """Produce in slices, `pause` apart, in a thread; `sent` counts the messages."""
        size = -(-len(messages) // slices)
        sent[0] = 0

        def run() -> None:
            for i in range(0, len(messages), size):
                sent[0] += produce(broker.bootstrap, messages[i : i + size])
                time.sleep(pause)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    try:
        # 1: the first half consumed and its rows written, between two checkpoints
        produce(broker.bootstrap, first)
        start()
        worker.wait_until(lambda: consumed(worker) >= len(first), 60, "the first half")
        worker.wait_until(
            lambda: worker.query("SELECT count() AS n FROM streamwatch.ctr_windows")[0]["n"] > 0,
            30,
            "rows in ClickHouse",
        )
        time.sleep(0.2)
        kill("first half consumed, rows written, between checkpoints")

        # 2: in the middle of the second half, trickling in, after this run's first
        # checkpoint (so the last run can resume from one: under load, the three
        # kills could all come before any checkpoint, and the last run reread all)
        start()
        feeding = trickle(second, slices=10, pause=0.4)
        worker.wait_until(
            lambda: (
                sent[0] >= len(second) // 2
                and consumed(worker) > 0
                and worker.metric("streamwatch_checkpoints_total") >= 1
            ),
            60,
            "half of the second half, and a checkpoint",
        )
        kill(f"{sent[0]} of {len(second)} of the second half sent")
        feeding.join()

        # 3: the tail finalises every window and raises the alerts; killed as soon
        # as an alert is on the topic, before the checkpoint covering it (likely)
        start()
        with AlertWatcher(d) as watcher:
            produce(broker.bootstrap, traffic.tail)
            worker.wait_until(watcher.seen, 30, "an alert on the topic", interval=0)
        kill("right after the first alert was published")

        # 4: this run finishes: every input offset checkpointed and committed
        ends = input_ends(d)
        start()
        worker.wait_until(lambda: committed(d, list(ends)) == ends, 60, "every offset committed")
        assert final_windows(worker) >= len(traffic.expected)
        last_run = consumed(worker)
    finally:
        code = worker.stop()
    assert code == 0
    print("kills:", kills, "last run consumed", last_run, "of", len(traffic.messages))
    assert all(k["consumed"] > 0 for k in kills), kills
    # the last run resumed from checkpoints rather than rereading everything
    assert last_run < len(traffic.messages)
    on_topic = check_end_state(d, traffic, traffic.messages)
    print("alerts on the topic:", len(on_topic))
    assert chunked_checkpoints(d) > 0


def chunked_checkpoints(d: Deployment) -> int:
    """How many checkpoints of `d`'s group on its topic were written as parts (heads)."""
    store = CheckpointStore(
        {"bootstrap.servers": d.config["kafka"]["bootstrap"]},
        d.topics["checkpoints"],
        d.config["kafka"]["group_id"],
    )
    store.load()
    return len(store.parts_of)


def test_kill_between_insert_and_commit(tmp_path, broker) -> None:
    """Rows in ClickHouse, no checkpoint, no commit, SIGKILL: the replay writes every
    row again; FINAL shows one per window, and the replayed alerts are identical."""
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "rec-dup",
        checkpoint_interval_s=30,
        flush_interval_s=0.2,
    )
    traffic = CtrTraffic(d)
    n = len(traffic.expected)
    produce(broker.bootstrap, traffic.messages)
    worker = WorkerProcess(d)
    raw_final = (
        "SELECT count() AS n FROM streamwatch.ctr_windows "
        "WHERE final = 1 AND campaign_id NOT LIKE 'zz-%'"
    )
    try:
        assigned = log_count(worker, r"streamwatch\.source: assigned")
        worker.start()
        wait_assigned(worker, assigned)
        worker.wait_until(lambda: final_windows(worker) >= n, 60, "every window final")
        # written to ClickHouse, yet neither checkpointed nor committed
        assert worker.metric("streamwatch_checkpoints_total") == 0
        worker.kill()

        assigned = log_count(worker, r"streamwatch\.source: assigned")
        worker.start()
        wait_assigned(worker, assigned)
        worker.wait_until(lambda: worker.query(raw_final)[0]["n"] >= 2 * n, 60, "the replay")
        raw_during = worker.query(raw_final)[0]["n"]
        replayed = consumed(worker)
    finally:
        code = worker.stop()
    assert code == 0
    # nothing was committed: the second run found no checkpoint and read everything again
    assert log_count(worker, r"took over partitions .* \(0 checkpoints found\)") >= 2
    assert log_count(worker, r"\([1-9]\d* checkpoints found\)") == 0
    assert replayed >= len(traffic.messages) - len(traffic.tail)
    # the duplicates really happened, and FINAL removes them
    assert raw_during >= 2 * n
    keys = "campaign_id, variant, window_start"
    counts = d.query(
        f"SELECT (SELECT count() FROM streamwatch.ctr_windows) AS raw, "
        f"(SELECT count() FROM streamwatch.ctr_windows FINAL) AS final, "
        f"(SELECT uniqExact({keys}) FROM streamwatch.ctr_windows) AS windows"
    )[0]
    print("raw rows during the replay", raw_during, "after the stop", counts)
    assert counts["final"] == counts["windows"]
    total = d.query(
        "SELECT count() AS n FROM streamwatch.ctr_windows FINAL WHERE campaign_id NOT LIKE 'zz-%'"
    )[0]["n"]
    assert total == n
    on_topic = check_end_state(d, traffic, traffic.messages)
    # each alert published twice (once per run), with the same content
    ids = [aid for aid, _ in on_topic]
    assert sorted(ids) == sorted(2 * sorted(set(ids)))


def test_restart_resumes_from_checkpoint(tmp_path, broker) -> None:
    """After a clean stop, a restart reads no old input and carries the state on:
    windows opened before the restart close with the counts of the whole input."""
    d = Deployment(tmp_path, broker.bootstrap, "rec-resume", checkpoint_interval_s=0.5)
    traffic = CtrTraffic(d)
    half = len(traffic.body) // 2
    before, after = traffic.body[:half], traffic.body[half:] + traffic.tail
    worker = WorkerProcess(d)
    provisional = (
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant, impressions,"
        " clicks, orphan_clicks, duplicate_clicks, final FROM streamwatch.ctr_windows FINAL"
        " WHERE final = 0"
    )
    try:
        assigned = log_count(worker, r"streamwatch\.source: assigned")
        worker.start()
        produce(broker.bootstrap, before)
        wait_assigned(worker, assigned)
        worker.wait_until(lambda: consumed(worker) >= len(before), 60, "the first half")
        worker.wait_until(lambda: worker.query(provisional), 30, "provisional windows")
        wm_before = worker.wait_http("/health", 10)["watermarks"]["ctr"]
    finally:
        assert worker.stop() == 0
    open_at_stop = ctr_rows(d.query(provisional))

    try:
        assigned = log_count(worker, r"streamwatch\.source: assigned")
        worker.start()
        wait_assigned(worker, assigned)
        time.sleep(3)  # rereading from offset 0 would take well under a second
        reread = consumed(worker)
        produce(broker.bootstrap, after)
        worker.wait_until(lambda: consumed(worker) >= reread + len(after), 60, "the second half")
        worker.wait_until(
            lambda: final_windows(worker) >= len(traffic.expected), 60, "every window final"
        )
        resumed = consumed(worker)
        wm_after = worker.wait_http("/health", 10)["watermarks"]["ctr"]
        late = worker.metric("streamwatch_events_late_total")
    finally:
        assert worker.stop() == 0
    print("reread", reread, "resumed", resumed, "of", len(after), "watermarks", wm_before, wm_after)
    assert reread <= 5, f"the restarted worker reread {reread} old messages"
    assert resumed - len(after) <= 5
    assert log_count(worker, r"took over partitions .* \([1-9]\d* checkpoints found\)") >= 1
    assert wm_after > wm_before and late == 0
    check_end_state(d, traffic, traffic.messages)
    # the windows open at the stop were closed by input after the restart, with the
    # counts of the whole input: state from before the stop plus input after it
    final = {r[:3]: r for r in traffic.expected}
    assert open_at_stop and all(r[:3] in final for r in open_at_stop)
    assert any(final[r[:3]] != r for r in open_at_stop)


def test_restart_silent_partitions_still_close(tmp_path, broker) -> None:
    """Uninterrupted, a partition without new input follows the other partitions'
    watermark once idle (idle_timeout_s), so input on one partition closes every
    window. The same must hold after a restart from checkpoints."""
    d = Deployment(tmp_path, broker.bootstrap, "rec-idle", checkpoint_interval_s=0.5)
    traffic = CtrTraffic(d)
    worker = WorkerProcess(d)
    produce(broker.bootstrap, traffic.body)
    try:
        assigned = log_count(worker, r"streamwatch\.source: assigned")
        worker.start()
        wait_assigned(worker, assigned)
        worker.wait_until(lambda: consumed(worker) >= len(traffic.body), 60, "the input")
    finally:
        assert worker.stop() == 0
    big = {
        m.partition()
        for m in consume_all(d.bootstrap, d.topics["impressions"], idle_s=1)
        if m.key() == b"big"
    }
    (p_big,) = big
    # the tail on one other partition only: "big" and the rest must follow when idle
    tail = [m for m in traffic.tail if m[3] == (p_big + 1) % 4]
    try:
        assigned = log_count(worker, r"streamwatch\.source: assigned")
        worker.start()
        wait_assigned(worker, assigned)
        produce(broker.bootstrap, tail)
        deadline = time.monotonic() + 3 * d.config["idle_timeout_s"]
        while time.monotonic() < deadline and final_windows(worker) < len(traffic.expected):
            time.sleep(0.5)
        closed = final_windows(worker)
        owned = worker.wait_http("/health", 10)["partitions"]
    finally:
        assert worker.stop() == 0
    assert closed == len(traffic.expected), (
        f"{closed} of {len(traffic.expected)} windows final; partitions with a task "
        f"after the restart: {owned}"
    )
    check_end_state(d, traffic, traffic.body + tail)


def test_sigterm_during_startup_stops_the_worker(tmp_path, broker) -> None:
    d = Deployment(tmp_path, broker.bootstrap, "rec-term")
    worker = WorkerProcess(d).start()  # the web server answers; the group join is under way
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    try:
        code = worker.process.wait(25)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise AssertionError(f"still running 25 s after SIGTERM:\n{worker.log()}") from None
    assert code == 0
