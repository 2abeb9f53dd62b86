"""A poll's run of one partition taken in pieces (`Pipeline.piece_messages`, issue 18:
decoded and fed while the objects it makes are in the CPU's caches) gives what the
whole run gives: the same rows, alerts, rejections, late events and checkpoints, with
every default monitor (the re-keying forwarder and the monitors of its internal topics
included), on polls of valid, hostile, out-of-order and late messages of every input
topic, whatever the piece size. Each monitor's late events come in the same order;
between monitors they interleave piece by piece, as they would in smaller polls.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.rows import Row
from streams.config import load_settings
from streams.connectors.checkpoints import encode
from streams.runtime.monitors import build_monitors
from streams.runtime.pipeline import PIECE_MESSAGES, Pipeline, RawMessage
from tests.poison import nasty, valid
from tests.row_dicts import as_dicts

T0 = 1_795_000_020_000
TOPICS = ("impressions", "clicks", "inference-logs", "sensor-readings")
PARTITIONS = 2


class Recorder:
    """The pipeline's Outputs, remembering everything it was given, in order."""

    def __init__(self) -> None:
        self.seen: list[Any] = []  # rows, alerts and rejections, in order
        self.late_events: dict[str, list[Any]] = {}  # monitor -> its late events, in order

    def rows(self, table: str, rows: list[Row]) -> None:
        self.seen.append(("rows", table, as_dicts(rows)))

    def alerts(self, alerts: list[Any]) -> None:
        self.seen.append(("alerts", repr(alerts)))

    def rejected(self, message: RawMessage, rejection: Any) -> None:
        self.seen.append(("rejected", message.topic(), message.offset(), rejection))

    def late(self, monitor: str, message: RawMessage, *args: Any) -> None:
        self.late_events.setdefault(monitor, []).append((message.topic(), message.offset(), args))


def _messages(seed: int, n: int) -> list[tuple[str, bytes | None, bytes | None]]:
    """(topic, key, value) of every input topic over ~15 minutes of event time, some
    out of order, some far behind (late), some hostile (`tests.poison.nasty`)."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes | None, bytes | None]] = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        ts = T0 + i * 450 + rng.randrange(-20_000, 20_000)
        if rng.random() < 0.02:
            ts -= 600_000  # behind the watermark by then: late
        if rng.random() < 0.03:
            key, value = nasty(rng, topic, ts)
        else:
            entity = rng.choice(["a", "b", "c"])
            event = valid(rng, topic, ts, entity)
            if topic == "impressions" and rng.random() < 0.5:
                event |= {"experiment": "e", "variant": rng.choice(["A", "B"])}
            key, value = entity.encode(), orjson.dumps(event)
        out.append((topic, key, value))
    return out


def _polls(
    messages: list[tuple[str, bytes | None, bytes | None]], sizes: list[int]
) -> list[list[RawMessage]]:
    """The messages in polls of the given sizes (cycled), each poll in per-partition
    runs as librdkafka hands them over, offsets counted per topic partition."""
    offsets: dict[tuple[str, int], int] = {}
    polls: list[list[RawMessage]] = []
    i = k = 0
    while i < len(messages):
        size = sizes[k % len(sizes)]
        k += 1
        chunk = messages[i : i + size]
        i += size
        keyed = [(len(key or b"") % PARTITIONS, topic, key, value) for topic, key, value in chunk]
        poll: list[RawMessage] = []
        for partition, topic, key, value in sorted(keyed, key=lambda m: (m[0], m[1])):
            offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
            poll.append(RawMessage(topic, partition, offset, key, value))
        polls.append(poll)
    return polls


def _run(
    polls: list[list[RawMessage]], piece: int
) -> tuple[list[Any], dict[str, list[Any]], dict[str, bytes]]:
    """What the outputs were given (see `Recorder`) and the final checkpoints' bytes."""
    clock = [1000.0]
    out = Recorder()
    settings_ = load_settings(env={}, overrides={"idle_timeout_s": 30})
    pipeline = Pipeline(
        build_monitors(settings_), out, {t: t for t in TOPICS}, clock=lambda: clock[0]
    )
    pipeline.piece_messages = piece
    pipeline.assign(range(PARTITIONS), {})
    for poll in polls:
        pipeline.process(poll)
        clock[0] += 0.5
    pipeline.finish()
    checkpoints = pipeline.checkpoints(only_dirty=False)
    return out.seen, out.late_events, {name: encode(c) for name, c in checkpoints.items()}


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(100, 600),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    piece=st.integers(3, 40),
)
def test_a_run_in_pieces_gives_what_the_whole_run_gives(
    seed: int, n: int, sizes: list[int], piece: int
) -> None:
    polls = _polls(_messages(seed, n), sizes)
    whole = _run(polls, 10**9)
    pieces = _run(polls, piece)
    assert pieces[0] == whole[0]  # rows, alerts, rejections
    assert pieces[1] == whole[1]  # late events
    assert pieces[2] == whole[2]  # checkpoints, byte for byte


def test_the_worker_takes_a_run_in_pieces() -> None:
    """The default piece is smaller than the worker's poll, so a poll's long runs of
    one partition are taken in pieces."""
    assert 1 <= PIECE_MESSAGES < load_settings(env={}).batch_size
