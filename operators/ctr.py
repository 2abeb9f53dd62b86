"""Click-through rate in tumbling event-time windows: impressions joined with clicks.

Semantics (the public contract's defaults, all configurable):

- A window is [start, start + window_ms) per (campaign_id, variant), by the
  impression's event time.
- A click counts for the window of its impression (joined on impression_id)
  when 0 <= click.ts - impression.ts <= attribution_ms. Several clicks on one
  impression count once (the rest are `duplicate_clicks`).
- Any other click is an orphan (`orphan_clicks`, in the window of the click's
  own time, variant ""): its impression was never seen, or the click came
  outside the attribution window.
- When the watermark reaches a window's end, a provisional row (version 1) is
  emitted; when it reaches end + attribution_ms no click can still join, and
  the final row (version 2) is emitted, the window's impressions are
  forgotten and its CTR is judged by `operators.ctr_evidence.CtrJudge`: per
  campaign (variants pooled) and per variant, `ctr` (exact binomial p-value
  against `floor_ctr`), `ctr_drop` (Fisher's exact test against a baseline the
  incident cannot leak into) and `ctr_evidence` (a CUSUM of the binomial
  log-likelihood ratio that accumulates the evidence of a sustained drop),
  with significance levels derived from `false_alarms_per_1000_campaign_days`.

Every decision depends on event data and the watermark alone, so any
arrival order within the allowed lateness gives the same rows.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from operators.base import Operator
from operators.ctr_evidence import CtrJudge
from operators.sequential import bonferroni_alpha, cusum_threshold, windows_per_1000_entity_days
from operators.watermark import NO_WATERMARK
from operators.windows import TumblingWindows, window_start
from schemas.events import Click, Impression

# the judgements per entity and window the false-alarm budget is split over, besides
# one CUSUM per `drops_to_detect`: the `ctr` floor and the `ctr_drop` window test
WINDOW_TESTS = 2


@dataclass(frozen=True)
class CtrConfig:
    window_ms: int = 60_000
    attribution_ms: int = 600_000
    baseline_windows: int = 240  # how many cleared final windows form the baseline
    baseline_block: int = 10  # ... summed in blocks of this many (memory)
    baseline_min_windows: int = 3  # no drop is judged before this many
    baseline_min_impressions: int = 200  # ... nor before the baseline pools this many
    baseline_min_clicks: int = 20  # ... nor before it pools this many clicks
    baseline_max_pending: int = 60  # windows held past this enter the baseline anyway
    # the CUSUM's baseline is the pooled rate's lower bound (clicks - z sqrt(clicks)) /
    # impressions, so an estimate high by chance does not read as a drop
    baseline_z: float = 2.0
    floor_ctr: float = 0.005  # the p-value of the `ctr` observation is against this rate
    # expected false CTR alerts on traffic without incidents, per 1,000 campaign-days;
    # sets `window_alpha` and `evidence_threshold` (docs/monitors/ctr.md)
    false_alarms_per_1000_campaign_days: float = 1.0
    levels_per_campaign: int = 3  # entities judged per campaign (pooled + 2 variants)
    # one CUSUM per drop d: the alternative "CTR = baseline * (1 - d)"; 0.5 for
    # partial drops, 0.9 for collapses (nearly twice the evidence per missing click)
    drops_to_detect: tuple[float, ...] = (0.5, 0.9)
    # after an alarm the episode lasts until a CUSUM for the way back ("CTR = baseline"
    # against "baseline * (1 - first d)") reaches this many nats (log 100: a false
    # "recovered" during an ongoing incident has probability <= 1 %, Wald)
    recovery_evidence: float = 4.6
    cusum_threshold: float | None = None  # raw override of the threshold h (nats)

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.attribution_ms < 0:
            raise ValueError("window_ms must be > 0 and attribution_ms >= 0")
        if self.baseline_windows < 1 or not 1 <= self.baseline_min_windows <= self.baseline_windows:
            raise ValueError("need 1 <= baseline_min_windows <= baseline_windows")
        if not 0 < self.floor_ctr < 1:
            raise ValueError("floor_ctr must be in (0, 1)")
        if self.false_alarms_per_1000_campaign_days <= 0 or self.levels_per_campaign < 1:
            raise ValueError("need false_alarms_per_1000_campaign_days > 0, levels >= 1")
        if not self.drops_to_detect or not all(0 < d < 1 for d in self.drops_to_detect):
            raise ValueError("drops_to_detect: one or more drops in (0, 1)")
        if self.recovery_evidence <= 0 or self.baseline_z < 0:
            raise ValueError("need recovery_evidence > 0 and baseline_z >= 0")
        if self.cusum_threshold is not None and self.cusum_threshold <= 0:
            raise ValueError("cusum_threshold must be > 0")

    @property
    def budgeted_tests(self) -> float:
        """Judgements per 1,000 campaign-days the budget is spread over."""
        per_entity = windows_per_1000_entity_days(self.window_ms)
        judgements = WINDOW_TESTS + len(self.drops_to_detect)
        return per_entity * judgements * self.levels_per_campaign

    @property
    def window_alpha(self) -> float:
        """The per-window significance level of `ctr` and `ctr_drop` (Bonferroni).

        >>> f"{CtrConfig().window_alpha:.3g}"
        '5.79e-08'
        """
        return bonferroni_alpha(self.false_alarms_per_1000_campaign_days, self.budgeted_tests)

    @property
    def evidence_threshold(self) -> float:
        """The CUSUM threshold h = log(ARL0), ARL0 = budgeted tests / budget (windows).

        >>> round(CtrConfig().evidence_threshold, 2)
        16.67
        """
        if self.cusum_threshold is not None:
            return self.cusum_threshold
        return cusum_threshold(self.budgeted_tests / self.false_alarms_per_1000_campaign_days)


class CtrWindow:
    """Counts of one (campaign, variant, window), and the impressions in it."""

    __slots__ = ("clicked", "clicks", "dup_clicks", "dup_imps", "ids", "imps", "orphans", "times")

    def __init__(self) -> None:
        self.imps = 0
        self.clicks = 0
        self.orphans = 0
        self.dup_clicks = 0
        self.dup_imps = 0
        # the window's impressions, as parallel lists, and those clicked: a
        # snapshot hands these lists to the encoder as they are (no per-impression work)
        self.ids: list[str] = []
        self.times: list[int] = []
        self.clicked: list[str] = []


def _key(campaign: str, variant: str) -> str:
    return f"{campaign}\x1f{variant}"


def _split(key: str) -> tuple[str, str]:
    campaign, _, variant = key.partition("\x1f")
    return campaign, variant


class CtrOperator(Operator):
    sources = ("impressions", "clicks")
    observes = (("ctr", "ctr"), ("ctr", "ctr_drop"), ("ctr", "ctr_evidence"))

    def __init__(self, config: CtrConfig | None = None) -> None:
        super().__init__()
        self.config = config or CtrConfig()
        self.windows: TumblingWindows[CtrWindow] = TumblingWindows(self.config.window_ms, CtrWindow)
        # impression_id -> [window, ts, clicked, impression_id]; kept until the window is final
        self.impressions: dict[str, list[Any]] = {}
        # clicks whose impression has not been seen: impression_id -> {seq: (ts, campaign)}
        self.pending: dict[str, dict[int, tuple[int, str]]] = {}
        self.pending_heap: list[tuple[int, int, str]] = []  # (click ts, seq, impression_id)
        self.seq = 0
        self.provisional_until = NO_WATERMARK  # provisional rows emitted for ends <= this
        self.judge = CtrJudge(self.config)

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[Any]) -> None:
        if source == "impressions":
            for event in events:
                self._impression(event)
        else:
            for event in events:
                self._click(event)

    def _impression(self, imp: Impression) -> None:
        known = self.impressions.get(imp.impression_id)
        if known is not None:
            known[0].dup_imps += 1
            return
        window = self.windows.at(_key(imp.campaign_id, imp.variant or ""), imp.ts)
        window.imps += 1
        window.ids.append(imp.impression_id)
        window.times.append(imp.ts)
        entry = [window, imp.ts, False, imp.impression_id]
        self.impressions[imp.impression_id] = entry
        waiting = self.pending.pop(imp.impression_id, None)
        if waiting:
            for click_ts, campaign in waiting.values():
                self._attribute(entry, click_ts, campaign)

    def _click(self, click: Click) -> None:
        entry = self.impressions.get(click.impression_id)
        if entry is not None:
            self._attribute(entry, click.ts, click.campaign_id)
            return
        # The impression may still arrive (out of order): wait until the
        # watermark passes the click, after which it could only come late.
        self.seq += 1
        self.pending.setdefault(click.impression_id, {})[self.seq] = (click.ts, click.campaign_id)
        heapq.heappush(self.pending_heap, (click.ts, self.seq, click.impression_id))

    def _attribute(self, entry: list[Any], click_ts: int, campaign: str) -> None:
        window, imp_ts, clicked, imp_id = entry
        if 0 <= click_ts - imp_ts <= self.config.attribution_ms:
            if clicked:
                window.dup_clicks += 1
            else:
                window.clicks += 1
                window.clicked.append(imp_id)
                entry[2] = True
        else:
            self.windows.at(_key(campaign, ""), click_ts).orphans += 1

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        cfg = self.config
        heap = self.pending_heap
        while heap and heap[0][0] < watermark:
            click_ts, seq, imp_id = heapq.heappop(heap)
            waiting = self.pending.get(imp_id)
            if waiting is None or seq not in waiting:
                continue  # its impression arrived meanwhile
            _, campaign = waiting.pop(seq)
            if not waiting:
                del self.pending[imp_id]
            self.windows.at(_key(campaign, ""), click_ts).orphans += 1

        final_until = watermark - cfg.attribution_ms
        provisional_from = max(self.provisional_until, final_until)
        for start, key, window in self.windows.ending_between(provisional_from, watermark):
            self._emit_row(start, key, window, final=False)
        self.provisional_until = max(self.provisional_until, watermark)

        closed = self.windows.pop_ending_until(final_until)
        for start, key, window in closed:
            self._emit_row(start, key, window, final=True)
            for imp_id in window.ids:
                self.impressions.pop(imp_id, None)
        if closed:
            self._judge(closed)

    def _emit_row(self, start: int, key: str, window: CtrWindow, final: bool) -> None:
        campaign, variant = _split(key)
        self._out.add_row(
            "ctr_windows",
            {
                "window_start": start,
                "window_end": start + self.config.window_ms,
                "campaign_id": campaign,
                "variant": variant,
                "impressions": window.imps,
                "clicks": window.clicks,
                "ctr": window.clicks / window.imps if window.imps else 0.0,
                "orphan_clicks": window.orphans,
                "duplicate_clicks": window.dup_clicks,
                "duplicate_impressions": window.dup_imps,
                "final": int(final),
                "version": 2 if final else 1,
            },
        )

    def _judge(self, closed: list[tuple[int, str, CtrWindow]]) -> None:
        """Judge the windows one watermark step made final (`operators.ctr_evidence`)."""
        counts = [(start, *_split(key), w.imps, w.clicks) for start, key, w in closed if w.imps]
        if counts:
            self._out.observations.extend(self.judge.judge(counts))

    def late_window(self, source: str, event: Any) -> int:
        """An impression's window; a late click's is its impression's while that is
        held, else the window it would have counted in as an orphan."""
        ts = event.ts
        if source == "clicks":
            entry = self.impressions.get(event.impression_id)
            ts = ts if entry is None else entry[1]
        return window_start(ts, self.config.window_ms)

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        windows = [
            [
                start,
                key,
                w.imps,
                w.clicks,
                w.orphans,
                w.dup_clicks,
                w.dup_imps,
                w.ids,
                w.times,
                w.clicked,
            ]
            for start, key, w in self.windows.items()
        ]
        pending = [
            [imp_id, seq, ts, campaign]
            for imp_id, waiting in self.pending.items()
            for seq, (ts, campaign) in waiting.items()
        ]
        return {
            "windows": windows,
            "pending": pending,
            "seq": self.seq,
            "provisional_until": self.provisional_until,
            "judge": self.judge.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.windows.clear()
        self.impressions = {}
        for start, key, imps, clicks, orphans, dup_c, dup_i, ids, times, clicked in state[
            "windows"
        ]:
            w = self.windows.at(key, start)
            w.imps, w.clicks, w.orphans, w.dup_clicks, w.dup_imps = (
                imps,
                clicks,
                orphans,
                dup_c,
                dup_i,
            )
            w.ids, w.times, w.clicked = list(ids), list(times), list(clicked)
            was_clicked = set(clicked)
            for imp_id, ts in zip(ids, times, strict=True):
                self.impressions[imp_id] = [w, ts, imp_id in was_clicked, imp_id]
        self.pending = {}
        self.pending_heap = []
        for imp_id, seq, ts, campaign in state["pending"]:
            self.pending.setdefault(imp_id, {})[seq] = (ts, campaign)
            self.pending_heap.append((ts, seq, imp_id))
        heapq.heapify(self.pending_heap)
        self.seq = state["seq"]
        self.provisional_until = state["provisional_until"]
        # a snapshot from before the evidence-based judge (key "baseline") restores the
        # windows and joins exactly; the baselines and CUSUMs start afresh (warm-up:
        # baseline_min_windows windows), which is the documented upgrade policy
        self.judge = CtrJudge(self.config)
        if "judge" in state:
            self.judge.restore(state["judge"])


__all__ = ["CtrConfig", "CtrOperator", "window_start"]
