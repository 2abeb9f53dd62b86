"""The source's polls while catching up (issue 18: the end of a backlog).

After a full poll the source takes what librdkafka holds without waiting
`batch_timeout_s` for a full batch; the first poll short of a batch, after a
`SETTLE_S` wait for a fetch in flight, ends the catch-up and asks the loop for a
flush (`caught_up`). A live stream whose polls are never full polls as before.

What the consumer returns is scripted here (the decision is the source's own; the
real broker's polls are in tests/test_e2e_ctr.py, tests/test_end_of_input.py and
tests/test_recovery.py, which run the worker with it).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from streams.config import load_settings
from streams.runtime.faults import Faults
from streams.runtime.source import SETTLE_S, KafkaSource

SIZE = 5


class ScriptedConsumer:
    """`consume(n, timeout)`: the next scripted count of messages (at most n), and the
    calls it was given."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts
        self.calls: list[tuple[int, float]] = []

    def consume(self, n: int, timeout: float) -> list[Any]:
        self.calls.append((n, timeout))
        got = min(n, self.counts.pop(0)) if self.counts else 0
        return [object() for _ in range(got)]


@pytest.fixture
def source() -> Any:
    settings = load_settings(env={}, overrides={"batch_size": SIZE})
    runtime = SimpleNamespace(faults=Faults())
    src = KafkaSource(settings, runtime, ["impressions"])  # type: ignore[arg-type]
    real = src.consumer
    yield src
    real.close()


def polls(src: Any, counts: list[int], n: int) -> list[tuple[int, bool]]:
    """n polls over the scripted counts: (messages, caught_up) of each, caught_up reset
    as the consume loop does."""
    src.consumer = ScriptedConsumer(counts)
    out = []
    for _ in range(n):
        got = len(src._consume())
        out.append((got, src.caught_up))
        src.caught_up = False
    return out


def test_a_backlog_is_read_without_waiting_and_its_end_flushes_once(source: Any) -> None:
    # 12 messages waiting: a full blocking poll, a full one without waiting, the
    # last 2 (nothing more within SETTLE_S), then an ordinary wait for input
    assert polls(source, [5, 5, 2, 0, 0], 4) == [(5, False), (5, False), (2, True), (0, False)]
    timeout = source.settings.batch_timeout_s
    assert source.consumer.calls == [
        (SIZE, timeout),
        (SIZE, 0),
        (SIZE, 0),
        (SIZE - 2, SETTLE_S),
        (SIZE, timeout),
    ]


def test_a_fetch_in_flight_does_not_end_the_catch_up(source: Any) -> None:
    # librdkafka ran dry for a moment: the rest of the batch came within SETTLE_S
    assert polls(source, [5, 3, 2, 1, 0], 3) == [(5, False), (5, False), (1, True)]
    assert source.consumer.calls[1:3] == [(SIZE, 0), (SIZE - 3, SETTLE_S)]


def test_a_live_stream_keeps_its_batches_and_flush_interval(source: Any) -> None:
    # polls never full: each waits batch_timeout_s as before, and no extra flush
    assert polls(source, [3, 0, 4, 1], 4) == [(3, False), (0, False), (4, False), (1, False)]
    timeout = source.settings.batch_timeout_s
    assert source.consumer.calls == [(SIZE, timeout)] * 4
