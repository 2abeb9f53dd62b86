"""What every contender shares: its spec, its progress over the dataset, its result.

A contender is a module run in a fresh process as

    python -m tests.benchmarks.contenders.NAME SPEC.json

The spec (written by `tests.benchmarks.bench`) names the broker, a consumer
group of its own, the dataset (topics and the end offset of every partition)
and where to write the result. The contender reads every topic of the dataset
from the start, does its work, and stops when it has read up to every end
offset and its results are out. It measures itself between `Clock.start()`,
when the first message reaches it (so start-up and the consumer group join,
~3 s on Tansu whatever the contender, are left out), and `Clock.stop()`;
the harness adds what the operating system says of the whole process (peak
resident memory).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.benchmarks.dataset import Dataset

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


@dataclass
class Spec:
    name: str
    bootstrap: str
    group: str
    dataset: Dataset
    workdir: Path
    result: Path
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> Spec:
        argv = sys.argv[1:] if argv is None else argv
        if len(argv) != 1:
            raise SystemExit("usage: python -m tests.benchmarks.contenders.NAME SPEC.json")
        data = json.loads(Path(argv[0]).read_text())
        return cls(
            name=data["name"],
            bootstrap=data["bootstrap"],
            group=data["group"],
            dataset=Dataset.from_json(data["dataset"]),
            workdir=Path(data["workdir"]),
            result=Path(data["result"]),
            options=data.get("options", {}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bootstrap": self.bootstrap,
            "group": self.group,
            "dataset": self.dataset.to_json(),
            "workdir": str(self.workdir),
            "result": str(self.result),
            "options": self.options,
        }


class Progress:
    """Which partitions still have messages to read (by end offset)."""

    def __init__(self, dataset: Dataset) -> None:
        self.remaining: dict[tuple[str, int], int] = {
            (t, p): end for t, ps in dataset.end_offsets.items() for p, end in ps.items() if end > 0
        }

    def seen(self, topic: str, partition: int, offset: int) -> None:
        """Record that the message at `offset` of (topic, partition) has been handled."""
        key = (topic, partition)
        end = self.remaining.get(key)
        if end is not None and offset + 1 >= end:
            del self.remaining[key]

    @property
    def done(self) -> bool:
        return not self.remaining


class Clock:
    """Wall and CPU time (all threads of this process) between start and stop."""

    def __init__(self) -> None:
        self.wall0 = self.cpu0 = self.wall1 = self.cpu1 = 0.0
        self.started = False

    def start(self) -> None:
        """Start the clock (at the first message); later calls do nothing."""
        if not self.started:
            self.started = True
            self.wall0, self.cpu0 = time.time(), time.process_time()

    def stop(self) -> None:
        self.wall1, self.cpu1 = time.time(), time.process_time()


def write_result(spec: Spec, clock: Clock, events: int, **extra: Any) -> None:
    """The contender's own measurements; `extra` holds what it computed (counts, notes)."""
    result = {
        "name": spec.name,
        "events": events,
        "wall_start": clock.wall0,
        "wall_end": clock.wall1,
        "seconds": clock.wall1 - clock.wall0,
        "cpu_seconds": clock.cpu1 - clock.cpu0,
        "rss_end_mb": rss_mb(),
        **extra,
    }
    spec.result.write_text(json.dumps(result, indent=1, sort_keys=True))


def consumer_config(spec: Spec, **extra: Any) -> dict[str, Any]:
    """confluent-kafka settings every contender reading with librdkafka uses."""
    return {
        "bootstrap.servers": spec.bootstrap,
        "group.id": spec.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,  # Tansu: joins wait half the session timeout
        "fetch.max.bytes": 64 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        # librdkafka's default (1000 ms) pauses fetching for a second whenever the
        # local queue is full: measured here, that alone cut reads from ~1 M to ~150 k/s
        "fetch.queue.backoff.ms": 10,
        **extra,
    }


def ctr_row(
    start: int, end: int, campaign: str, variant: str, counts: tuple[int, int, int, int, int]
) -> dict[str, Any]:
    """A window result with streamwatch's `ctr_windows` columns (less final and version);
    `counts` = (impressions, clicks, orphan clicks, duplicate clicks, duplicate impressions)."""
    imps, clicks, orphans, dup_clicks, dup_imps = counts
    return {
        "window_start": start,
        "window_end": end,
        "campaign_id": campaign,
        "variant": variant,
        "impressions": imps,
        "clicks": clicks,
        "ctr": clicks / imps if imps else 0.0,
        "orphan_clicks": orphans,
        "duplicate_clicks": dup_clicks,
        "duplicate_impressions": dup_imps,
    }
