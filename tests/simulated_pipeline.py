"""The simulator's traffic through the worker's pipeline in-process (the re-keying looped
back), keyed and partitioned as a producer keying by the contract would (CRC-32 of the
key): the set-up the simulator's incident tests share."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from schemas.rows import Row
from streams.cli.simulate import Scenario, Simulator
from streams.config import Settings
from streams.runtime.monitors import build_monitors
from streams.runtime.pipeline import Pipeline, RawMessage
from tests.row_dicts import as_dicts


class Collected:
    """The pipeline's outputs kept in memory: every alert, and the rows of `tables`.
    A rejected message fails the test; so does a late event unless `late_ok`."""

    def __init__(self, tables: Iterable[str] = (), late_ok: bool = False) -> None:
        self.alert_list: list[Any] = []
        self.tables: dict[str, list[dict[str, Any]]] = {t: [] for t in tables}
        self.late_ok = late_ok

    def rows(self, table: str, rows: list[Row]) -> None:
        if table in self.tables:
            self.tables[table].extend(as_dicts(rows))

    def alerts(self, out: list[Any]) -> None:
        self.alert_list.extend(out)

    def rejected(self, message: RawMessage, rejection: Any) -> None:
        raise AssertionError(f"rejected: {rejection}")

    def late(self, *args: Any) -> None:
        if not self.late_ok:
            raise AssertionError(f"late: {args}")


def run_simulated(
    sc: Scenario,
    settings: Settings,
    topics: Iterable[str],
    outputs: Collected,
    partitions: int = 4,
    idle_after_s: float | None = None,
) -> None:
    """Feed the simulation's messages of `topics` (logical names used as topic names)
    to a pipeline over `partitions` partitions, in batches at its clock ticks, the
    pipeline's clock following the simulation's; then, with `idle_after_s`, let that
    much wall-clock time pass without input and tick (idle partitions catch up)."""
    clock = [sc.start_ms / 1000]
    logical = {t: t for t in topics}
    pipeline = Pipeline(build_monitors(settings), outputs, logical, clock=lambda: clock[0])
    pipeline.assign(range(partitions), {})
    offsets: Counter = Counter()
    batch: list[RawMessage] = []
    for topic, key, value in Simulator(sc).messages():
        if topic == "__tick__":
            clock[0] = int(value) / 1000
            if len(batch) > 2000:
                pipeline.process(batch)
                batch = []
            continue
        partition = zlib.crc32(key.encode()) % partitions
        batch.append(RawMessage(topic, partition, offsets[(topic, partition)], key.encode(), value))
        offsets[(topic, partition)] += 1
    pipeline.process(batch)
    if idle_after_s is not None:
        clock[0] += idle_after_s
        pipeline.tick()
