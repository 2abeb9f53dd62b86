"""The sinks' close->delivery delays: measured only once rows are written, kept on failure.

Unit test of `streams.sinks.Sinks` bookkeeping; the writer and producer are minimal
stand-ins at the sink's boundary (the integration tests use the real ones).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from streams.clickhouse import ClickHouseError
from streams.sinks import SinkError, Sinks


class Writer:
    def __init__(self) -> None:
        self.fail = False
        self.written: dict[str, int] = {}

    def insert(self, table: str, rows: list[dict[str, Any]]) -> float:
        if self.fail:
            raise ClickHouseError("down")
        self.written[table] = self.written.get(table, 0) + len(rows)
        return 0.0


class Producer:
    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0


def test_row_delays_are_recorded_when_written_and_kept_across_a_failure() -> None:
    writer = Writer()
    sinks = Sinks(writer, Producer(), topics=None)
    sinks.rows("ctr_windows", [{"a": 1}, {"a": 2}])
    writer.fail = True
    with pytest.raises(SinkError):
        sinks.flush()
    assert not sinks.delays["row"]  # nothing delivered, nothing measured
    assert sinks.buffered == 2
    time.sleep(0.05)
    writer.fail = False
    sinks.flush()
    assert writer.written == {"ctr_windows": 2}
    assert len(sinks.delays["row"]) == 2  # one per row
    assert all(d >= 0.05 for d in sinks.delays["row"])  # from creation, not from the retry
    sinks.flush()
    assert len(sinks.delays["row"]) == 2  # a flush with nothing new adds nothing
