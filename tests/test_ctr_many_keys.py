"""The CTR operator's per-step loops (rows, judged units, impressions by batch; issue 18
point 3) give exactly what its per-window, per-event paths give, with many keys,
out-of-order events within the lateness, duplicates, orphans, conversions, and a
snapshot and restore mid-run; and the final rows equal the independent reference."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.base import Observation
from operators.ctr import CtrConfig, CtrOperator, CtrWindow, WindowKey
from schemas.events import Click, Conversion, Impression
from tests.ctr_replay import within_lateness
from tests.reference import ctr_reference
from tests.test_ctr_learn_batch import PerWindow

T = 1_790_000_000_000  # an event time the schemas accept
MIN = 60_000
LATENESS = 20_000


class GetThenLearn(PerWindow):
    """`base_or_learn` as the judge did it before it: `get`, then `learn` if None (and
    `learn_until_based` through it, window by window: `PerWindow`)."""

    def base_or_learn(self, key: str, hits: int, trials: int) -> tuple[int, int] | None:
        base = self.get(key)
        if base is None:
            self.learn(key, hits, trials)
        return base


class PerWindow(CtrOperator):
    """The reference: the operator with its per-event and per-window paths (each
    impression through `_impression`, each row through `_emit_row`, the judge through
    `judge(counts, ordered=True)` and `judged_units`, the baseline through get + learn)."""

    def __init__(self, config: CtrConfig) -> None:
        super().__init__(config)
        self._use_get_then_learn()

    def _use_get_then_learn(self) -> None:
        old = self.judge.baseline
        new = GetThenLearn(
            old.size, old.min_windows, old.min_trials, old.max_pending, old.min_hits, old.block
        )
        new.load(old.state())
        self.judge.baseline = new

    def _load(self, state: Any) -> None:
        super()._load(state)
        self._use_get_then_learn()

    def _impressions(self, events: Sequence[Impression]) -> None:
        for event in events:
            self._impression(event)

    def _window_key(self, imp: Impression) -> WindowKey:
        return super()._window_key(imp)

    def _emit_row(
        self, start: int, key: WindowKey, window: CtrWindow, final: bool, version: int | None = None
    ) -> None:
        super()._emit_row(start, key, window, final, version)

    def _judge(self, closed: list[tuple[int, WindowKey, CtrWindow]]) -> None:
        super()._judge(closed)


def test_the_reference_takes_the_per_window_paths() -> None:
    op = PerWindow(CtrConfig())
    assert op._custom_key and op._custom_rows and op._custom_judge
    fast = CtrOperator(CtrConfig())
    assert not (fast._custom_key or fast._custom_rows or fast._custom_judge)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[str, Any]], int]:
    """(events in arrival order, a seed): impressions of many (campaign, variant)
    keys over several windows, clicks on them (some twice, some after the
    attribution, some on impressions never seen), duplicate impressions, and
    conversions of some clicks (some of unknown clicks)."""
    campaigns = draw(st.integers(1, 60))
    minutes = draw(st.integers(1, 8))
    n = draw(st.integers(1, 250))
    rng = random.Random(draw(st.integers(0, 2**32)))
    events: list[tuple[str, Any]] = []
    for i in range(n):
        ts = T + rng.randrange(minutes * MIN)
        campaign = f"c{rng.randrange(campaigns)}"
        variant = rng.choice([None, None, "", "A", "B"])
        imp = Impression(
            impression_id=f"i{i}", ts=ts, campaign_id=campaign, user_id="u", variant=variant
        )
        events.append(("impressions", imp))
        if rng.random() < 0.05:  # the same impression again
            events.append(("impressions", imp))
        for c in range(rng.choice([0, 0, 1, 1, 2])):
            # mostly within the attribution (3 min), some after it
            click_ts = ts + rng.randrange(4 * MIN)
            click_id = f"k{i}.{c}"
            events.append(
                (
                    "clicks",
                    Click(
                        click_id=click_id,
                        impression_id=f"i{i}",
                        ts=click_ts,
                        campaign_id=campaign,
                        user_id="u",
                    ),
                )
            )
            if rng.random() < 0.3:
                conv_id = f"v{i}.{c}"
                events.append(
                    (
                        "conversions",
                        Conversion(
                            conversion_id=conv_id,
                            click_id=click_id,
                            ts=click_ts + rng.randrange(3 * MIN),
                            campaign_id=campaign,
                            user_id="u",
                            value=rng.choice([None, 1.5, 2.0]),
                        ),
                    )
                )
        if rng.random() < 0.05:  # a click on an impression never seen
            events.append(
                (
                    "clicks",
                    Click(
                        click_id=f"o{i}",
                        impression_id=f"never{i}",
                        ts=ts,
                        campaign_id=campaign,
                        user_id="u",
                    ),
                )
            )
    return within_lateness(events, rng, LATENESS), rng.randrange(2**32)


configs = st.sampled_from(
    [
        CtrConfig(attribution_ms=3 * MIN),
        # baselines after one window: the sequential judging (CUSUMs, held windows,
        # Fisher's test) on nearly every unit
        CtrConfig(
            attribution_ms=3 * MIN,
            baseline_min_windows=1,
            baseline_min_impressions=1,
            baseline_min_clicks=1,  # (0 would divide by a baseline CTR of 0)
            baseline_max_pending=2,
            cusum_threshold=0.5,
            recovery_evidence=0.5,
        ),
        CtrConfig(attribution_ms=2 * MIN, conversions=True, conversion_ms=2 * MIN),
    ]
)


def joined(op: CtrOperator) -> dict[str, int]:
    """The impressions and counted clicks the join holds, and the windows waiting for
    conversions (not the waiting heaps' sizes: they drop stale entries lazily, and a
    restore rebuilds them without)."""
    items = op.memory_items()
    return {k: items[k] for k in ("impressions", "clicks", "converting_windows")}


def run(
    new: Any,
    config: CtrConfig,
    events: list[tuple[str, Any]],
    batch: int,
    split_at: int | None,
) -> tuple[list[Any], list[Any], list[dict[str, int]]]:
    """(rows, observations) as plain data, and what the join holds after each batch
    (`joined`: impressions and clicks are forgotten when their windows close), of
    an operator fed `events` in batches
    (by source), the watermark the lateness behind the newest event after each; from
    the batch at `split_at` on a new operator restored from the old one's snapshot
    (through msgpack, as a checkpoint); then a far watermark closes everything."""
    op = new(config)
    rows: list[Any] = []
    observations: list[Observation] = []
    held: list[dict[str, int]] = []
    newest = 0
    for i in range(0, len(events), batch):
        if split_at is not None and i >= split_at:
            snapshot = msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot()))
            op = new(config)
            op.restore(snapshot)
            split_at = None
        chunk = events[i : i + batch]
        for source in op.sources:
            evs = [e for s, e in chunk if s == source]
            if evs:
                op.feed(source, evs)
        newest = max([newest, *(e.ts for _, e in chunk)])
        op.advance(newest - LATENESS)
        out = op.collect()
        rows += out.rows.get("ctr_windows", [])
        observations += out.observations
        held.append(joined(op))
    op.advance(newest + 100 * MIN)
    out = op.collect()
    rows += out.rows.get("ctr_windows", [])
    observations += out.observations
    held.append(joined(op))
    return msgspec.to_builtins(rows), msgspec.to_builtins(observations), held


@settings(max_examples=120, deadline=None)
@given(streams(), configs, st.integers(1, 60), st.data())
def test_per_step_loops_equal_the_per_window_paths(
    stream: tuple[list[tuple[str, Any]], int], config: CtrConfig, batch: int, data: st.DataObject
) -> None:
    events, _ = stream
    split_at = data.draw(st.none() | st.integers(0, len(events)))
    rows, observations, held = run(CtrOperator, config, events, batch, split_at)
    ref_rows, ref_observations, ref_held = run(PerWindow, config, events, batch, None)
    assert rows == ref_rows
    assert observations == ref_observations
    assert held == ref_held
    assert held[-1]["impressions"] == 0  # every window closed: every impression forgotten
    # and the final rows are the contract's, computed directly from the events
    finals = sorted(
        (
            r["window_start"],
            r["campaign_id"],
            r["variant"],
            r["impressions"],
            r["clicks"],
            r["orphan_clicks"],
            r["duplicate_clicks"],
        )
        for r in rows
        # (not windows holding only orphan conversions: the reference counts no
        # conversions)
        if r["version"] == 2 and (r["impressions"] or r["orphan_clicks"])
    )
    expected = ctr_reference(
        [(s, e) for s, e in events if s != "conversions"], MIN, config.attribution_ms
    )
    assert finals == expected


def test_many_keys_one_window_each() -> None:
    """The case the loops are for: nearly every impression opens its own window
    (10,000 campaigns); rows, observations and their order as the per-window paths'."""
    rng = random.Random(7)
    events = []
    for i in range(20_000):
        ts = T + i * 30  # 10 minutes of impressions
        campaign = f"c{rng.randrange(10_000)}"
        events.append(
            (
                "impressions",
                Impression(
                    impression_id=f"i{i}",
                    ts=ts,
                    campaign_id=campaign,
                    user_id="u",
                    variant=rng.choice([None, "A", "B"]),
                ),
            )
        )
        if rng.random() < 0.1:
            events.append(
                (
                    "clicks",
                    Click(
                        click_id=f"k{i}",
                        impression_id=f"i{i}",
                        ts=ts + 5_000,
                        campaign_id=campaign,
                        user_id="u",
                    ),
                )
            )
    events = within_lateness(events, rng, LATENESS)
    config = CtrConfig(attribution_ms=2 * MIN)
    rows, observations, held = run(CtrOperator, config, events, 1250, len(events) // 2)
    assert (rows, observations, held) == run(PerWindow, config, events, 1250, None)
    assert len(rows) > 20_000 and len(observations) > 10_000
