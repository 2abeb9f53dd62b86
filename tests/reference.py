"""Independent references for tests: the contract's semantics computed directly,
with none of the operators' code (no windows, no watermark, no state)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def ctr_reference(
    events: Iterable[tuple[str, Any]], window_ms: int = 60_000, attribution_ms: int = 600_000
) -> list[tuple]:
    """Rows (window_start, campaign, variant, impressions, clicks, orphans, duplicates)
    for a complete set of (topic, event) pairs, in any order."""
    events = list(events)
    imps: dict[str, Any] = {}
    for s, e in events:  # the first occurrence of an impression id wins
        if s == "impressions" and e.impression_id not in imps:
            imps[e.impression_id] = e
    counts: dict[tuple, list[int]] = {}

    def row(key: tuple) -> list[int]:
        return counts.setdefault(key, [0, 0, 0, 0])

    for e in imps.values():
        row((e.ts - e.ts % window_ms, e.campaign_id, e.variant or ""))[0] += 1
    clicked = set()
    for s, e in events:
        if s != "clicks":
            continue
        i = imps.get(e.impression_id)
        if i is not None and 0 <= e.ts - i.ts <= attribution_ms:
            key = (i.ts - i.ts % window_ms, i.campaign_id, i.variant or "")
            if e.impression_id in clicked:
                row(key)[3] += 1
            else:
                clicked.add(e.impression_id)
                row(key)[1] += 1
        else:
            row((e.ts - e.ts % window_ms, e.campaign_id, ""))[2] += 1
    return sorted((*k, *v) for k, v in counts.items())
