"""The transport-free pipeline: routing, positions after a restore, idle partitions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from operators.state import StateFormatError
from schemas.rows import Row
from streams.config import load_settings
from streams.connectors.checkpoints import Checkpoint, decode, encode
from streams.runtime.monitors import build_monitors
from streams.runtime.pipeline import Pipeline, RawMessage
from tests.row_dicts import as_dicts

MIN = 60_000
T0 = 1_795_000_020_000
LOGICAL = {n: n for n in ("impressions", "clicks", "inference-logs", "sensor-readings")}


class Recorder:
    """The pipeline's Outputs, remembering what it was given."""

    def __init__(self) -> None:
        self.table_rows: dict[str, list[dict[str, Any]]] = {}
        self.rejects: list[str] = []
        self.late_events: list[tuple[str, int]] = []

    def rows(self, table: str, rows: list[Row]) -> None:
        self.table_rows.setdefault(table, []).extend(as_dicts(rows))

    def alerts(self, alerts: list[Any]) -> None: ...

    def rejected(self, message: RawMessage, rejection: Any) -> None:
        self.rejects.append(rejection.reason)

    def late(self, monitor: str, message: RawMessage, *args: Any) -> None:
        self.late_events.append((monitor, message.offset()))


def pipeline(clock: list[float], idle_s: float = 30) -> tuple[Pipeline, Recorder]:
    settings = load_settings(env={}, overrides={"idle_timeout_s": idle_s})
    out = Recorder()
    return Pipeline(build_monitors(settings), out, LOGICAL, clock=lambda: clock[0]), out


def imp(i: int, ts: int, campaign: str, partition: int, offset: int) -> RawMessage:
    body = {"impression_id": f"i{i}", "ts": ts, "campaign_id": campaign, "user_id": "u"}
    return RawMessage("impressions", partition, offset, campaign.encode(), orjson.dumps(body))


def clk(i: int, ts: int, campaign: str, partition: int, offset: int) -> RawMessage:
    body = {
        "click_id": f"k{i}",
        "impression_id": f"i{i}",
        "ts": ts,
        "campaign_id": campaign,
        "user_id": "u",
    }
    return RawMessage("clicks", partition, offset, campaign.encode(), orjson.dumps(body))


def test_idle_partition_follows_the_busy_ones() -> None:
    clock = [1000.0]
    p, out = pipeline(clock, idle_s=5)
    p.assign([0, 1], {})
    # partition 1 gets one window of data, then falls silent
    p.process([imp(1, T0, "quiet", 1, 0), clk(1, T0 + 10, "quiet", 1, 0)])
    # partition 0 keeps going far into event time
    for k in range(1, 4):
        clock[0] += 3
        ts = T0 + k * 20 * MIN
        p.process([imp(100 + k, ts, "busy", 0, k), clk(100 + k, ts, "busy", 0, k)])
    final = {
        (r["campaign_id"], r["window_start"])
        for r in out.table_rows.get("ctr_windows", [])
        if r["final"]
    }
    # 9 s of silence > 5 s idle timeout: partition 1's window closed on partition 0's watermark
    assert ("quiet", T0) in final


def test_a_partition_with_unread_messages_is_never_idle() -> None:
    """A starved worker can leave a partition's fetched messages queued past the idle
    timeout; while the consumer reports them unread the partition holds the
    watermark, so its events are not late when they come (CI saw 31k late events)."""
    clock = [1000.0]
    p, out = pipeline(clock, idle_s=5)
    p.assign([0, 1], {})
    p.process([imp(1, T0, "slow", 1, 0), clk(1, T0 + 10, "slow", 1, 0)])
    # more of it waits: the consumer's position (1) is before the high watermark (9)
    p.fetched = (("impressions", 1, 1, 9), ("clicks", 1, 1, 9))
    for k in range(1, 4):
        clock[0] += 3
        ts = T0 + k * 20 * MIN
        p.process([imp(100 + k, ts, "busy", 0, k), clk(100 + k, ts, "busy", 0, k)])
    # 9 s without a message from partition 1, but it was never idle: its next event,
    # 10 minutes of event time on, is on time and counted in its window
    p.process([imp(2, T0 + 10 * MIN, "slow", 1, 1)])
    assert out.late_events == []
    assert p.tasks[("ctr", 1)].watermark.value < T0 + 10 * MIN
    # once it is read up, silence is idleness again and its window closes
    p.fetched = (("impressions", 1, 9, 9), ("clicks", 1, 9, 9))
    clock[0] += 6
    p.tick()
    final = {
        (r["campaign_id"], r["window_start"])
        for r in out.table_rows.get("ctr_windows", [])
        if r["final"]
    }
    assert ("slow", T0) in final


def test_restored_positions_skip_what_the_checkpoint_already_holds() -> None:
    clock = [0.0]
    first, _ = pipeline(clock)
    first.assign([0], {})
    msgs = [imp(i, T0 + i * 1000, "c", 0, i) for i in range(10)]
    first.process(msgs[:6])
    state = {k: decode(encode(c)) for k, c in first.checkpoints(only_dirty=False).items()}
    assert state["ctr/0"].positions == {"impressions": 6}
    # a restarted worker reads from an older committed offset (at-least-once)
    second, _ = pipeline(clock)
    second.assign([0], state)
    second.process(msgs[3:])  # 3, 4, 5 are replays: skipped, not counted twice
    ctr = second.tasks[("ctr", 0)].operator
    assert sum(w.imps for _, _, w in ctr.windows.items()) == 10


def test_a_damaged_checkpoint_stops_the_assignment_with_a_state_format_error() -> None:
    """Not only a format the codec refuses: a checkpoint whose restore fails in any way
    (here a format-1 CTR state missing its windows) must raise StateFormatError naming
    the partition, the monitor and --discard-state, the error the runtime stops on."""
    clock = [0.0]
    first, _ = pipeline(clock)
    first.assign([0], {})
    state = {k: decode(encode(c)) for k, c in first.checkpoints(only_dirty=False).items()}
    broken = state["ctr/0"]
    broken.state["state"]["operator"] = {"seq": 0}  # format 1, no "windows": KeyError
    second, _ = pipeline(clock)
    with pytest.raises(StateFormatError) as raised:
        second.assign([0], state)
    text = str(raised.value)
    assert text.startswith("partition 0 of monitor ctr:"), text
    assert "--discard-state ctr" in text, text
    assert ("ctr", 0) not in second.tasks


def test_decoded_once_rejected_once_and_every_monitor_fed() -> None:
    clock = [0.0]
    p, out = pipeline(clock)
    p.assign([0], {})
    bad = RawMessage("impressions", 0, 7, b"c", b"{oops")
    p.process([imp(1, T0, "c", 0, 6), bad])
    assert out.rejects == ["invalid_json"]
    assert p.positions[("ctr", 0)]["impressions"] == 8
    # SRM reads the experiment-keyed copy; the forwarder reads impressions for it
    assert p.positions[("repartition", 0)]["impressions"] == 8
    assert isinstance(p.checkpoints()["ctr/0"], Checkpoint)


def sensor(ts: int, partition: int, offset: int, sensor_id: str = "s") -> RawMessage:
    body = {"sensor_id": sensor_id, "ts": ts, "values": {"t": 20.0 + offset % 3}}
    return RawMessage("sensor-readings", partition, offset, sensor_id.encode(), orjson.dumps(body))


def test_finish_closes_only_the_tasks_whose_input_is_over() -> None:
    """Issue 14.6: `finish(quiet_ms)` finishes a task only once its input has been
    silent that long and at least its lateness (10 s); `finish()` finishes all. A
    finished window is checkpointed closed: after a restore an event for it is late."""
    clock = [1000.0]
    p, out = pipeline(clock)
    p.assign([0, 1], {})
    # two partitions, one reading a second over 2 min; partition 1 keeps going later
    # (partition 0's last reading is the last millisecond of the second minute)
    p.process(
        [sensor(T0 + i * 1000, 0, i, "a") for i in range(119)] + [sensor(T0 + 119_999, 0, 119, "a")]
    )
    p.process(
        [sensor(T0 + i * 1000, 1, i, "b") for i in range(119)] + [sensor(T0 + 119_999, 1, 119, "b")]
    )

    def windows(s: str) -> list[int]:
        rows = out.table_rows.get("sensor_windows", [])
        return sorted(r["window_start"] for r in rows if r["sensor_id"] == s)

    assert windows("a") == windows("b") == [T0]  # the second minute waits for the lateness
    clock[0] += 5  # silent for 5 s: less than the lateness
    p.process([sensor(T0 + 120_000 + i * 1000, 1, 120 + i, "b") for i in range(5)])
    assert p.finish(quiet_ms=1000) == 0
    clock[0] += 6  # partition 0 silent 11 s, partition 1 for 6 s
    p.process([])  # (a tick)
    moved = p.finish(quiet_ms=1000)
    assert moved >= 1 and windows("a") == [T0, T0 + MIN]  # ends at 120 000 = last + 1
    assert windows("b") == [T0]
    assert ("sensor", 0) in p.dirty
    # the finished state after a checkpoint round trip: the closed window stays closed
    state = {k: decode(encode(c)) for k, c in p.checkpoints(only_dirty=False).items()}
    q, q_out = pipeline(clock)
    q.assign([0, 1], state)
    q.process([sensor(T0 + 119_500, 0, 120, "a")])
    assert ("sensor", 120) in q_out.late_events
    assert not any(r["sensor_id"] == "a" for r in q_out.table_rows.get("sensor_windows", []))
    # finish() without a bound: every task, also the one still receiving input
    assert p.finish() >= 1
    assert windows("b") == [T0, T0 + MIN]


def test_checkpoints_are_taken_with_the_collector_paused_and_it_comes_back() -> None:
    """`Pipeline.checkpoints` pauses the garbage collector around the snapshots (their
    containers are freed by reference counting) and restores it as it was, also when a
    snapshot fails."""
    import gc

    clock = [0.0]
    p, _ = pipeline(clock)
    p.assign([0], {})
    p.process([imp(i, T0 + i * 1000, "c", 0, i) for i in range(10)])
    task = p.tasks[("ctr", 0)]
    seen: list[bool] = []
    take = task.snapshot_encoded

    def snapshot() -> dict[str, Any]:
        seen.append(gc.isenabled())
        return take()

    task.snapshot_encoded = snapshot  # type: ignore[method-assign]
    assert gc.isenabled()
    assert set(p.checkpoints(only_dirty=False)) >= {"ctr/0"}
    assert seen == [False] and gc.isenabled()

    def failing() -> dict[str, Any]:
        raise RuntimeError("snapshot failed")

    task.snapshot_encoded = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        p.checkpoints(only_dirty=False)
    assert gc.isenabled()
    gc.disable()
    try:  # a collector the caller had off stays off
        task.snapshot_encoded = take  # type: ignore[method-assign]
        p.checkpoints(only_dirty=False)
        assert not gc.isenabled()
    finally:
        gc.enable()
