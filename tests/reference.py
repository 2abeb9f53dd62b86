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


def conversions_reference(
    events: Iterable[tuple[str, Any]],
    window_ms: int = 60_000,
    attribution_ms: int = 600_000,
    conversion_ms: int = 3_600_000,
) -> list[tuple]:
    """Rows (window_start, campaign, variant, conversions, revenue, orphan conversions,
    duplicate conversions) for a complete set of (topic, event) pairs, in any order:
    the contract's v2 conversion semantics computed directly. A conversion counts when
    its click counted for an impression (0 <= click - impression <= attribution) and
    0 <= conversion - click <= conversion_ms; once per clicked impression, whose revenue
    is the value of its first conversion by (ts, conversion_id)."""
    events = list(events)
    imps: dict[str, Any] = {}
    for s, e in events:
        if s == "impressions" and e.impression_id not in imps:
            imps[e.impression_id] = e
    counted: dict[str, Any] = {}  # click_id -> the click, where it counted for its impression
    for s, e in events:
        if s == "clicks" and e.click_id not in counted:
            i = imps.get(e.impression_id)
            if i is not None and 0 <= e.ts - i.ts <= attribution_ms:
                counted[e.click_id] = e
    joined: dict[str, list[tuple[int, str, float]]] = {}  # impression -> its conversions
    counts: dict[tuple, list[float]] = {}

    def row(key: tuple) -> list[float]:
        return counts.setdefault(key, [0, 0.0, 0, 0])

    for s, e in events:
        if s != "conversions":
            continue
        c = counted.get(e.click_id)
        if c is not None and 0 <= e.ts - c.ts <= conversion_ms:
            joined.setdefault(c.impression_id, []).append(
                (e.ts, e.conversion_id, e.value if e.value is not None else 0.0)
            )
        else:
            row((e.ts - e.ts % window_ms, e.campaign_id, ""))[2] += 1
    for imp_id, convs in joined.items():
        i = imps[imp_id]
        r = row((i.ts - i.ts % window_ms, i.campaign_id, i.variant or ""))
        r[0] += 1
        r[1] += min(convs)[2]
        r[3] += len(convs) - 1
    return sorted((*k, v[0], round(v[1], 9), v[2], v[3]) for k, v in counts.items())
