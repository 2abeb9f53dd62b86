"""What the CTR operator's tests (tests/test_ctr_operator.py, tests/test_conversions.py)
share: terse event builders, a replay of a stream through a monitor task in batches
(optionally snapshotted and restored mid-stream), and a reordering within the lateness."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from operators.base import Operator
from operators.rules import RuleEngine
from operators.task import MonitorTask
from schemas.events import Click, Conversion, Impression
from tests.row_dicts import as_dicts


def imp(i: str, ts: int, campaign: str = "c1", variant: str | None = None) -> Impression:
    return Impression(impression_id=i, ts=ts, campaign_id=campaign, user_id="u", variant=variant)


def clk(c: str, i: str, ts: int, campaign: str = "c1") -> Click:
    return Click(click_id=c, impression_id=i, ts=ts, campaign_id=campaign, user_id="u")


def conv(v: str, c: str, ts: int, value: float | None = None, campaign: str = "c1") -> Conversion:
    return Conversion(
        conversion_id=v, click_id=c, ts=ts, campaign_id=campaign, user_id="u", value=value
    )


def replay(
    new_operator: Callable[[], Operator],
    events: Sequence[tuple[str, Any]],
    sources: Sequence[str],
    flush: Sequence[tuple[str, Any]],
    split_at: int | None = None,
    lateness_ms: int = 0,
    batch: int = 7,
) -> list[dict[str, Any]]:
    """Every `ctr_windows` row of a task fed `events` (source, event) in batches of
    `batch`, each batch by source in the order of `sources` (no event may be late);
    from the batch at `split_at` on, a new task restored from the old one's snapshot.
    Then the `flush` events (far ahead) close every window."""

    def new_task() -> MonitorTask:
        return MonitorTask(new_operator(), RuleEngine([]), lateness_ms, 10**12)

    task = new_task()
    rows: list[dict[str, Any]] = []
    for i in range(0, len(events), batch):
        if split_at is not None and i >= split_at:
            state = task.snapshot()
            task = new_task()
            task.restore(state)
            split_at = None
        for source in sources:
            chunk = [e for s, e in events[i : i + batch] if s == source]
            assert task.feed(source, chunk, now_ms=0) == []
        task.tick(now_ms=0)
        rows += as_dicts(task.collect().rows.get("ctr_windows", []))
    for source, event in flush:
        task.feed(source, [event], now_ms=0)
    task.tick(now_ms=0)
    rows += as_dicts(task.collect().rows.get("ctr_windows", []))
    return rows


def within_lateness(
    events: Sequence[tuple[str, Any]], rng: random.Random, lateness_ms: int
) -> list[tuple[str, Any]]:
    """`events` sorted by a jittered time: an event can only be overtaken by events at
    most `lateness_ms` newer than it, so none ever falls behind the watermark."""
    return sorted(events, key=lambda se: se[1].ts + rng.uniform(0, lateness_ms - 1))
