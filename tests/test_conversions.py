"""Conversions joined to their clicks in the CTR operator: hand cases, a brute-force
reference (tests/reference.py), arrival order within the lateness, snapshots."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.ctr import CtrConfig, CtrOperator
from tests.ctr_replay import clk, conv, imp, replay, within_lateness
from tests.reference import conversions_reference
from tests.row_dicts import as_dicts

T0 = 1_795_000_020_000
HOUR = 3_600_000
CFG = CtrConfig(conversions=True)


def latest(rows: list[dict]) -> dict[tuple, dict]:
    """The row FINAL shows per window: the highest version."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["window_start"], r["campaign_id"], r["variant"])
        if key not in out or r["version"] >= out[key]["version"]:
            out[key] = r
    return out


def test_hand_computed_conversions() -> None:
    op = CtrOperator(CFG)
    op.feed(
        "impressions",
        [imp("a", T0 + 1_000), imp("b", T0 + 2_000), imp("c", T0 + 3_000), imp("d", T0 + 4_000)],
    )
    op.feed(
        "clicks",
        [
            clk("ka", "a", T0 + 5_000),
            clk("ka2", "a", T0 + 6_000),  # duplicate click on a: its conversions count for a
            clk("kb", "b", T0 + 10_000),
            clk("kc", "c", T0 + 3_000 + 600_001),  # past attribution: orphan click
            clk("kd", "d", T0 + 20_000),
        ],
    )
    op.feed(
        "conversions",
        [
            conv("v1", "ka", T0 + 60_000, 30.0),  # counts: a converted, revenue 30
            conv("v2", "ka2", T0 + 50_000, 12.0),  # a again: duplicate, but earlier: its value
            conv("v1", "ka", T0 + 60_000, 30.0),  # redelivered: duplicate
            conv("v3", "kb", T0 + 10_000 + HOUR),  # exactly at the limit: counts, no value
            conv("v4", "kd", T0 + 20_000 + HOUR + 1),  # 1 ms late: orphan (own window)
            conv("v5", "kc", T0 + 700_000, 5.0),  # its click never counted: orphan
            conv("v6", "nope", T0 + 30_000),  # click never seen: orphan, window T0
        ],
    )
    op.advance(T0 + 60_000 + 600_000)  # the CTR final row: conversions so far
    final = latest(as_dicts(op.collect().rows["ctr_windows"]))[(T0, "c1", "")]
    assert (final["version"], final["clicks"], final["conversions"]) == (2, 3, 2)
    assert final["cvr"] == 2 / 3
    assert final["revenue"] == 12.0  # a's first conversion by time is v2
    assert (final["duplicate_conversions"], final["orphan_conversions"]) == (2, 1)
    op.advance(T0 + 10**9)
    rows = latest(as_dicts(op.collect().rows["ctr_windows"]))
    # v3 (at T0 + 10 s + 1 h) is past the final row's watermark: it came before that row
    # here but could as well have come after it, so a version-3 row follows either way
    # (the rows do not depend on the arrival order), with the same figures
    again = rows[(T0, "c1", "")]
    assert again["version"] == 3
    assert {k: v for k, v in again.items() if k != "version"} == {
        k: v for k, v in final.items() if k != "version"
    }
    late = rows[((T0 + 20_000 + HOUR + 1) // 60_000 * 60_000, "c1", "")]
    assert late["orphan_conversions"] == 1
    click_late = rows[((T0 + 700_000) // 60_000 * 60_000, "c1", "")]
    assert click_late["orphan_conversions"] == 1
    assert not op.clicks and not op.conv_pending and not op.converting


def test_conversion_after_the_final_row_writes_version_3() -> None:
    op = CtrOperator(CFG)
    op.feed("impressions", [imp("a", T0), imp("b", T0 + 1)])
    op.feed("clicks", [clk("ka", "a", T0 + 10), clk("kb", "b", T0 + 20)])
    op.advance(T0 + 60_000 + 600_000)
    (v2,) = [r for r in as_dicts(op.collect().rows["ctr_windows"]) if r["final"]]
    assert (v2["version"], v2["conversions"], v2["cvr"]) == (2, 0, 0.0)
    assert op.memory_items()["impressions"] == 0  # impressions forgotten ...
    assert op.memory_items()["clicks"] == 2  # ... the counted clicks kept
    op.feed("conversions", [conv("v", "kb", T0 + 30 * 60_000, 99.5)])
    op.advance(T0 + 60_000 + 600_000 + HOUR - 1)  # not yet
    assert not op.collect().rows.get("ctr_windows")
    op.advance(T0 + 60_000 + 600_000 + HOUR)
    rows = [r for r in as_dicts(op.collect().rows["ctr_windows"]) if r["window_start"] == T0]
    assert [(r["version"], r["final"], r["conversions"], r["revenue"]) for r in rows] == [
        (3, 1, 1, 99.5)
    ]
    assert rows[0]["cvr"] == 0.5 and rows[0]["clicks"] == 2 and rows[0]["impressions"] == 2
    assert op.memory_items()["clicks"] == 0


def test_no_version_3_when_every_conversion_came_before_the_final_rows_watermark() -> None:
    op = CtrOperator(CFG)
    op.feed("impressions", [imp("a", T0)])
    op.feed("clicks", [clk("ka", "a", T0 + 10)])
    op.feed("conversions", [conv("v", "ka", T0 + 60_000 + 600_000 - 1, 3.0)])
    op.advance(T0 + 10**9)
    rows = [r for r in as_dicts(op.collect().rows["ctr_windows"]) if r["window_start"] == T0]
    assert [(r["version"], r["conversions"]) for r in rows] == [(2, 1)]


def test_conversion_before_its_click_and_impression_joins() -> None:
    op = CtrOperator(CFG)
    op.feed("conversions", [conv("v", "k", T0 + 5_000, 7.0)])
    op.advance(T0 + 4_000)
    op.feed("clicks", [clk("k", "a", T0 + 2_000)])
    op.advance(T0 + 1_500)  # no effect: the watermark never goes back
    op.feed("impressions", [imp("a", T0 + 1_000)])
    op.advance(T0 + 10**9)
    row = latest(as_dicts(op.collect().rows["ctr_windows"]))[(T0, "c1", "")]
    assert (row["clicks"], row["conversions"], row["revenue"], row["orphan_conversions"]) == (
        1,
        1,
        7.0,
        0,
    )


def test_conversions_off_leaves_v1_sources_and_rows() -> None:
    assert CtrOperator().sources == ("impressions", "clicks")
    assert CtrOperator(CFG).sources == ("impressions", "clicks", "conversions")


def _random_stream(rng: random.Random, n: int) -> list:
    events = []
    for k in range(n):
        ts = T0 + rng.randrange(0, 900_000)
        campaign = rng.choice(["c1", "c2"])
        events.append(("impressions", imp(f"i{k}", ts, campaign, rng.choice([None, "A"]))))
        for c in range(rng.choice([0, 0, 1, 1, 2])):
            delay = rng.choice([10, 5_000, 300_000, 600_000, 600_001, -5])
            target = f"i{k}" if rng.random() < 0.9 else f"missing{k}"
            click = clk(f"k{k}.{c}", target, ts + delay, campaign)
            events.append(("clicks", click))
            for v in range(rng.choice([0, 0, 1, 1, 2])):
                cdelay = rng.choice([0, 60_000, HOUR, HOUR + 1, -3, 1_800_000])
                cid = click.click_id if rng.random() < 0.9 else f"nope{k}.{c}"
                value = rng.choice([None, 10.0, 25.5, 0.1])
                event = conv(f"v{k}.{c}.{v}", cid, click.ts + cdelay, value, campaign)
                events.append(("conversions", event))
                if rng.random() < 0.1:
                    events.append(("conversions", event))  # redelivered
    events.sort(key=lambda se: se[1].ts)
    return events


def _run(events: list, split_at: int | None = None, lateness_ms: int = 0, batch: int = 7) -> list:
    end = T0 + 10**8
    flush = [
        ("impressions", imp("flush", end)),
        ("clicks", clk("flush", "flush", end)),
        ("conversions", conv("flush", "flush", end)),
    ]
    sources = ("impressions", "clicks", "conversions")
    rows = replay(lambda: CtrOperator(CFG), events, sources, flush, split_at, lateness_ms, batch)
    return sorted(
        (
            r["window_start"],
            r["campaign_id"],
            r["variant"],
            r["conversions"],
            round(r["revenue"], 9),
            r["orphan_conversions"],
            r["duplicate_conversions"],
        )
        for r in latest(rows).values()
        if r["window_start"] < T0 + 10**7
        and (r["conversions"] or r["orphan_conversions"] or r["duplicate_conversions"])
    )


def test_matches_brute_force_reference() -> None:
    events = _random_stream(random.Random(1), 500)
    got = _run(events)
    assert got == conversions_reference(events)
    assert sum(r[3] for r in got) > 50 and sum(r[5] for r in got) > 20  # both paths taken


def test_snapshot_restore_mid_stream_gives_the_same_rows() -> None:
    events = _random_stream(random.Random(7), 400)
    whole = _run(events)
    for split in (len(events) // 3, len(events) // 2, 2 * len(events) // 3):
        assert _run(events, split_at=split) == whole


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), lateness_s=st.integers(1, 120))
def test_shuffled_within_lateness_equals_sorted(seed: int, lateness_s: int) -> None:
    """Displace every event by less than the lateness: results must not change."""
    rng = random.Random(seed)
    events = _random_stream(rng, 120)
    lateness = lateness_s * 1000
    shuffled = within_lateness(events, rng, lateness)
    assert _run(shuffled, lateness_ms=lateness) == _run(events) == conversions_reference(events)


def test_memory_is_the_counted_clicks_of_the_conversion_window() -> None:
    """Steady traffic: what the join holds is the impressions of the attribution window
    and the counted clicks of the conversion window; the bytes per held click are
    measured (tracemalloc) and bounded."""
    import tracemalloc

    op = CtrOperator(CFG)
    rng = random.Random(5)
    tracemalloc.start()
    held = []
    for minute in range(180):
        base = T0 + minute * 60_000
        imps = [imp(f"i{minute}.{j}", base + j * 600) for j in range(100)]
        clicks = [
            clk(f"k{minute}.{j}", f"i{minute}.{j}", base + j * 600 + 5_000) for j in range(10)
        ]
        convs = [
            conv(f"v{minute}.{j}", f"k{minute}.{j}", base + j * 600 + 600_000, 10.0)
            for j in range(10)
            if rng.random() < 0.3
        ]
        op.feed("impressions", imps)
        op.feed("clicks", clicks)
        op.feed("conversions", convs)
        op.advance(base)
        op.collect()
        held.append(op.memory_items())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    steady = held[-1]
    # ~ (attribution + a window) of impressions, (attribution + conversion + window) of clicks
    assert steady["impressions"] <= 100 * 12
    assert steady["clicks"] <= 10 * (10 + 60 + 2)
    assert steady["pending_conversions"] == 0 and steady["pending_clicks"] == 0
    assert peak < 3_000_000, peak  # the whole operator with its windows, under 3 MB
