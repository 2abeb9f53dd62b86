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

Conversions (v2, option `conversions = true`): a conversion joins
the click named by its `click_id` when 0 <= conversion.ts - click.ts <=
conversion_ms (default 3,600 s) and that click counted for an impression
(itself or as a duplicate click on it). It counts for the window of the click's
impression, once per clicked impression (`conversions` = converted clicks, `cvr`
= conversions / clicks); further conversions on it are `duplicate_conversions`.
The impression's revenue is the `value` of its first conversion by (ts,
conversion_id), so any arrival order gives the same sum (math.fsum, exact).
Any other conversion is an orphan (`orphan_conversions`, window of its own time,
variant ""): its click never counted, or it came outside the conversion window;
a conversion whose click is not (yet) known waits until the watermark passes
it, as clicks wait for their impressions. At the final row (end +
attribution_ms) the window's impressions are forgotten, but its counted clicks
are kept (click_id, time, impression: what a conversion needs) until end +
attribution_ms + conversion_ms, when the conversions are final: a version-3 row
is written then if a conversion at or after end + attribution_ms joined (one
that can come after the final row was written, so whether it did depends on the
arrival order, which the rows must not; FINAL gives the latest; a window without
such conversions keeps its version-2 row).

Every decision depends on event data and the watermark alone, so any
arrival order within the allowed lateness gives the same rows.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, TypeVar

import msgspec

from operators.base import Operator
from operators.ctr_evidence import (
    CtrJudge,
    CtrJudgeState,
    judge_from_format_1,
    ordered_unit_columns,
)
from operators.rules import rule_spec as _rule
from operators.sequential import bonferroni_alpha, cusum_threshold, windows_per_1000_entity_days
from operators.state import StateCodec
from operators.watermark import NO_WATERMARK
from operators.windows import TumblingWindows, sorted_pairs, window_start
from schemas.events import Click, Conversion, Impression
from schemas.rows import CtrWindowRow

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
    # v2: join the conversions topic. Off in the built-in defaults, so an upgrade keeps
    # v1's sources: a third source holds the watermark, and a topic that never carries a
    # conversion holds it for the idle timeout after every start; the example
    # configuration (deploy/streamwatch.example.toml), where new deployments start,
    # turns it on
    conversions: bool = False
    conversion_ms: int = 3_600_000  # a conversion counts up to this long after its click

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.attribution_ms < 0 or self.conversion_ms < 0:
            raise ValueError("window_ms must be > 0, attribution_ms and conversion_ms >= 0")
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


#: a window's key: (campaign, variant), or (experiment, arm) for the funnel monitor
WindowKey = tuple[str, str]
_CTR_TABLE = CtrWindowRow.__table__.name


class Converted(msgspec.Struct, gc=False):
    """The conversion that gives a converted impression its revenue: its first by
    (ts, conversion_id), so any arrival order chooses the same one."""

    ts: int
    conversion_id: str
    value: float


class CountedClick(msgspec.Struct, gc=False):
    """A click that counted for an impression, kept while a conversion may join it."""

    click_id: str
    ts: int
    impression_id: str


# gc=False (here and on the other state Structs without cycles): the garbage collector
# does not track them, which with many keys is a large part of the join's cost
class CtrWindow(msgspec.Struct, gc=False, omit_defaults=True):
    """Counts of one (campaign, variant, window), the impressions in it and its counted
    clicks: the join's canonical state (its indexes are rebuilt from these on restore)."""

    imps: int = 0
    clicks: int = 0
    orphans: int = 0
    dup_clicks: int = 0
    dup_imps: int = 0
    # the window's impressions, as parallel lists (id, event time), and those clicked.
    # `times` is filled for snapshots only (`CtrOperator.snapshot`): while running, an
    # impression's time is in the join's index (`ImpressionRef.ts`), and the live
    # window's `times` is the shared empty list: one list fewer per window to build,
    # append to and for the garbage collector to traverse (issue 18, point 3)
    ids: list[str] = []
    times: list[int] = []
    clicked: list[str] = []
    # conversions: the window's counted clicks, kept until its conversions are final
    counted: list[CountedClick] = []
    # converted impression -> the conversion that gives its value
    converted: dict[str, Converted] = {}
    dup_convs: int = 0
    orphan_convs: int = 0
    # whether the conversion figures changed since the final row was written, and the
    # latest time of a joined conversion (the final row decides from it, not from
    # arrival order, whether a version-3 row follows)
    conv_changed: bool = False
    conv_last: int = NO_WATERMARK

    def revenue(self) -> float:
        """Sum of the converted impressions' values, exactly rounded (order-free)."""
        if not self.converted:
            return 0.0  # what fsum of nothing is, without building its generator
        return math.fsum(c.value for c in self.converted.values())


# A new window's impressions, clicked impressions, counted clicks and conversions:
# most windows never get clicks or conversions (with many campaigns nearly every
# window holds one impression) and a window holding only orphans gets no
# impressions, so a new window shares these empty containers, and the operator gives
# it its own on the first write (`if not window.clicked: window.clicked = [...]`);
# never written to.
# Three fewer containers per window the garbage collector tracks and traverses (with
# 100 k campaigns a fifth of the pipeline's cost was collections, issue 18); a
# snapshot is the same (empty, the default, is omitted either way).
_NO_IDS: list[str] = []
_NO_TIMES: list[int] = []
_NO_CLICKED: list[str] = []
_NO_COUNTED: list[CountedClick] = []
_NO_CONVERTED: dict[str, Converted] = {}


#: `CtrOperator._impressions`: a batch whose impressions fell in more windows than
#: 1 / CACHED_MAX_SHARE of its size (many keys) sends the next IN_LINE_BATCHES batches
#: through the in-line loop, which costs less than the cache there
CACHED_MAX_SHARE = 4
IN_LINE_BATCHES = 15


def new_window() -> CtrWindow:
    """A new, empty window sharing the empty containers above."""
    return CtrWindow(
        ids=_NO_IDS,
        times=_NO_TIMES,
        clicked=_NO_CLICKED,
        counted=_NO_COUNTED,
        converted=_NO_CONVERTED,
    )


class ImpressionRef(msgspec.Struct, gc=False):
    """The join's index entry of an impression (derived, not state): its window, time,
    whether a click counted for it yet, and its id."""

    window: CtrWindow
    ts: int
    clicked: bool
    impression_id: str


class PendingClick(msgspec.Struct, gc=False):
    """A click whose impression has not been seen (yet)."""

    ts: int
    campaign: str
    click_id: str


class PendingConversion(msgspec.Struct, gc=False):
    """A conversion whose click is not known (yet)."""

    ts: int
    campaign: str
    conversion_id: str
    value: float


class Converting(msgspec.Struct, gc=False):
    """A window past its final row whose counted clicks may still convert."""

    start: int
    key: WindowKey
    window: CtrWindow


class CtrState(msgspec.Struct):
    """The CTR operator's checkpoint (state format 2, `operators.state`). Derived
    indexes (impressions and counted clicks by id, the heaps of waiting clicks and
    conversions) are not in it: `restore` rebuilds them from the windows."""

    #: open windows by start, then (campaign, variant)
    windows: dict[int, dict[WindowKey, CtrWindow]] = {}
    #: clicks waiting for their impression: impression_id -> {arrival seq: click}
    pending: dict[str, dict[int, PendingClick]] = {}
    seq: int = 0
    provisional_until: int = NO_WATERMARK  # provisional rows emitted for ends <= this
    judge: CtrJudgeState = msgspec.field(default_factory=CtrJudgeState)
    #: windows past their final row, waiting for conversions, by start
    converting: list[Converting] = []
    #: conversions waiting for their click: click_id -> {arrival seq: conversion}
    conv_pending: dict[str, dict[int, PendingConversion]] = {}


def split_key(key: str) -> WindowKey:
    """A window key of state format 1 ("campaign\\x1fvariant") as a tuple."""
    campaign, _, variant = key.partition("\x1f")
    return campaign, variant


def _window_from_format_1(item: list[Any]) -> tuple[int, WindowKey, dict[str, Any]]:
    """(start, key, plain CtrWindow) of a format-1 window; the conversion fields
    follow v1's ten (snapshots before conversions have only those)."""
    start, key, imps, clicks, orphans, dup_clicks, dup_imps, ids, times, clicked = item[:10]
    window: dict[str, Any] = {
        "imps": imps,
        "clicks": clicks,
        "orphans": orphans,
        "dup_clicks": dup_clicks,
        "dup_imps": dup_imps,
        "ids": ids,
        "times": times,
        "clicked": clicked,
    }
    if len(item) > 10:
        counted, converted, dup_convs, orphan_convs, changed = item[10:15]
        window.update(
            counted=[{"click_id": c[0], "ts": c[1], "impression_id": c[2]} for c in counted],
            converted={c[0]: {"ts": c[1], "conversion_id": c[2], "value": c[3]} for c in converted},
            dup_convs=dup_convs,
            orphan_convs=orphan_convs,
            conv_changed=bool(changed),
            # snapshots without it: a window that saw conversions gets its version-3 row
            conv_last=item[15] if len(item) > 15 else (2**62 if changed else NO_WATERMARK),
        )
    return start, split_key(key), window


def ctr_state_from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """The CTR operator's state format 1 (positional windows and waiting entries,
    "\\x1f"-joined keys) as the plain data of `CtrState`, with format 1's own
    fallbacks: waiting clicks without a click_id (before conversions) wait with "";
    a snapshot from before the evidence-based judge (no "judge") restores the windows
    and joins exactly while the baselines and CUSUMs start afresh (warm-up:
    baseline_min_windows windows), the documented upgrade policy."""
    windows: dict[int, dict[WindowKey, Any]] = {}
    for item in old["windows"]:
        start, key, window = _window_from_format_1(item)
        windows.setdefault(start, {})[key] = window
    pending: dict[str, dict[int, Any]] = {}
    for imp_id, seq, ts, campaign, *rest in old["pending"]:
        click_id = rest[0] if rest else ""
        pending.setdefault(imp_id, {})[seq] = {"ts": ts, "campaign": campaign, "click_id": click_id}
    conv_pending: dict[str, dict[int, Any]] = {}
    for click_id, seq, ts, campaign, conv_id, value in old.get("conv_pending", []):
        conv_pending.setdefault(click_id, {})[seq] = {
            "ts": ts,
            "campaign": campaign,
            "conversion_id": conv_id,
            "value": value,
        }
    converting = []
    for item in old.get("converting", []):
        start, key, window = _window_from_format_1(item)
        converting.append({"start": start, "key": key, "window": window})
    state: dict[str, Any] = {
        "windows": windows,
        "pending": pending,
        "seq": old["seq"],
        "provisional_until": old["provisional_until"],
        "converting": converting,
        "conv_pending": conv_pending,
    }
    if "judge" in old:
        state["judge"] = judge_from_format_1(old["judge"])
    return state


def ctr_rules(config: CtrConfig | None = None) -> list[dict[str, Any]]:
    """The CTR rules, their evidence levels derived from the monitor's false-alarm
    budget (`CtrConfig.false_alarms_per_1000_campaign_days`, docs/monitors/ctr.md):
    `max_p_value` is the budget's per-window level, `ctr_evidence` fires when the
    CUSUM reaches its threshold (value 1.0 = h). `min_samples` is only a sanity
    floor: the evidence decides. Episodes resolve after 3 clear windows."""
    alpha = (config or CtrConfig()).window_alpha
    return [
        _rule(
            "ctr_floor",
            "ctr",
            "ctr",
            "<",
            {"warning": 0.005, "critical": 0.001},
            "CTR of {entity} ({level}) is {value:.2%}, below the floor of {threshold:.2%}",
            label="CTR",
            value_format="{:.2%}",
            min_samples=30,
            max_p_value=alpha,
            clear_windows=3,
            clear_by_value=True,
        ),
        _rule(
            "ctr_drop",
            "ctr",
            "ctr_drop",
            ">",
            {"warning": 0.3, "critical": 0.5},
            "CTR of {entity} ({level}) dropped {value:.0%} to {ctr:.2%} against a baseline "
            "of {baseline_ctr:.2%}",
            label="CTR drop",
            value_format="{:.0%}",
            resolved_note="CTR {ctr:.2%} against a baseline of {baseline_ctr:.2%}",
            min_samples=30,
            max_p_value=alpha,
            clear_windows=3,
            clear_by_value=True,
        ),
        _rule(
            "ctr_sustained_drop",
            "ctr",
            "ctr_evidence",
            ">=",
            {"warning": 1.0},
            "CTR of {entity} ({level}) has stayed below its baseline of {baseline_ctr:.2%} "
            "(now {ctr:.2%}): accumulated evidence {llr:.1f} nats, threshold "
            "{llr_threshold:.1f}",
            label="accumulated CTR-drop evidence",
            value_format="{:.2f}",
            resolved_message="CTR of {entity} ({level}) back to {ctr:.2%}, near its "
            "baseline of {baseline_ctr:.2%}",
            clear_windows=3,
        ),
    ]


#: one start's windows in order: (start, its keys sorted, its windows in that order)
OrderedBucket = tuple[int, list[WindowKey], list[CtrWindow]]
#: one start's windows as `TumblingWindows.pop_buckets_until` gives them
PoppedBucket = tuple[int, list[WindowKey], dict[WindowKey, CtrWindow]]


def _in_order(
    buckets: list[tuple[int, list[WindowKey], dict[WindowKey, CtrWindow]]],
) -> list[OrderedBucket]:
    """Each bucket's windows listed in its keys' order, looked up once (in C, `map`):
    with many keys each lookup is a few cache misses on a large dict (~0.5 µs a window
    with 100 k keys on a loaded machine), and the final rows, the index's forgetting
    and the judge each looked the same windows up again (issue 18, point 3)."""
    return [(start, keys, list(map(bucket.__getitem__, keys))) for start, keys, bucket in buckets]


CTR_STATE = StateCodec("ctr", CtrState, format=2, upgrades={1: ctr_state_from_format_1})

T = TypeVar("T")  # what a snapshot is written as: plain data or msgpack bytes


class CtrOperator(Operator):
    sources = ("impressions", "clicks")
    #: how its state is checkpointed (a subclass with more state declares its own)
    state_codec: StateCodec[Any] = CTR_STATE
    observes = (("ctr", "ctr"), ("ctr", "ctr_drop"), ("ctr", "ctr_evidence"))

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return ctr_rules(config)

    def __init__(self, config: CtrConfig | None = None) -> None:
        super().__init__()
        self.config = config or CtrConfig()
        # the state (`CtrState`) is these fields; the indexes below them are derived
        # keys are (campaign, variant) pairs: sorted in two passes of string compares
        self.windows: TumblingWindows[CtrWindow] = TumblingWindows(
            self.config.window_ms, new_window, sorted_pairs
        )
        # derived: impression_id -> its window, time, ..., until the window is final
        self.impressions: dict[str, ImpressionRef] = {}
        # derived: window start -> the ids the index holds for that start's windows, in
        # the order they were claimed (`_forget_start`)
        self.arrivals: dict[int, list[str]] = {}
        # clicks whose impression has not been seen: impression_id -> {seq: click}
        self.pending: dict[str, dict[int, PendingClick]] = {}
        self.pending_heap: list[tuple[int, int, str]] = []  # (click ts, seq, impression_id)
        self.seq = 0
        self.provisional_until = NO_WATERMARK  # provisional rows emitted for ends <= this
        self.judge = CtrJudge(self.config)
        if self.config.conversions:
            self.sources = ("impressions", "clicks", "conversions")
        # derived: counted clicks, click_id -> (window, click), until the window's
        # conversions are final
        self.clicks: dict[str, tuple[CtrWindow, CountedClick]] = {}
        # conversions whose click is not known: click_id -> {seq: conversion}
        self.conv_pending: dict[str, dict[int, PendingConversion]] = {}
        self.conv_heap: list[tuple[int, int, str]] = []  # (conversion ts, seq, click_id)
        # windows past their final row, waiting for conversions, by start
        self.converting: deque[Converting] = deque()
        # a subclass (operators/funnel.py) with its own window key, rows or judgement:
        # those hooks are called per window, not the in-line loops of this class
        cls = type(self)
        self._custom_key = cls._window_key is not CtrOperator._window_key
        self._custom_rows = cls._emit_row is not CtrOperator._emit_row
        self._custom_judge = cls._judge is not CtrOperator._judge
        # batches left to take the in-line loop (`_impressions`); not state
        self._in_line_left = 0
        # derived: per start with provisional rows, its keys and windows in order as
        # listed for them (`_final_order`)
        self._listed: dict[int, tuple[list[WindowKey], list[CtrWindow]]] = {}

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[Any]) -> None:
        if source == "impressions":
            self._impressions(events)
        elif source == "conversions":
            for event in events:
                self._conversion(event)
        else:
            for event in events:
                self._click(event)

    def _impression(self, imp: Impression) -> None:
        """One impression, in the plain per-event form: what `_impressions` does in
        line for a batch (tests/test_ctr_many_keys.py holds the two equal)."""
        known = self.impressions.get(imp.impression_id)
        if known is not None:
            known.window.dup_imps += 1
            return
        window = self.windows.at(self._window_key(imp), imp.ts)
        window.imps += 1
        if window.ids:
            window.ids.append(imp.impression_id)
        else:  # a new window's is the shared empty list (`new_window`)
            window.ids = [imp.impression_id]
        entry = ImpressionRef(window, imp.ts, False, imp.impression_id)
        self.impressions[imp.impression_id] = entry
        start = window_start(imp.ts, self.config.window_ms)
        self.arrivals.setdefault(start, []).append(imp.impression_id)
        waiting = self.pending.pop(imp.impression_id, None)
        if waiting:
            for click in waiting.values():
                self._attribute(entry, click.ts, click.campaign, click.click_id)

    def _impressions(self, events: Sequence[Impression]) -> None:
        """`_impression` of each event: through the batch's windows by campaign
        (`_impressions_cached`) while the batches fall in few windows, else each
        window found or made in line (`_impressions_in_line`); the same state."""
        if self._custom_key:
            self._impressions_in_line(events)
        elif self._in_line_left:
            self._in_line_left -= 1
            self._impressions_in_line(events)
        elif self._impressions_cached(events) * CACHED_MAX_SHARE > len(events):
            # most of the batch's impressions were in windows new to it (many keys):
            # there the cache costs (a miss, a store) more than it saves, so the next
            # batches go in line; then the cache is tried again
            self._in_line_left = IN_LINE_BATCHES

    def _impressions_cached(self, events: Sequence[Impression]) -> int:
        """`_impression` of each event, for the default window key; returns how many
        windows the batch's impressions fell in.

        With few keys nearly every impression falls in a window an earlier one of the
        batch found: the batch keeps its windows by start, and by campaign for the
        impressions without a variant (most; by key for the others), so such an
        impression costs two comparisons of its time and one probe of a small dict
        keyed by a string whose hash is known, not the window start's arithmetic (two
        new big ints), a key tuple and its hash and two look-ups; and `imps` is added
        once per window (14 % of the operator's CPU per message with 100 campaigns,
        issue 18 point 4)."""
        impressions, pending = self.impressions, self.pending
        claim = impressions.setdefault
        size = self.config.window_ms
        # per window start the batch has seen: its windows without a variant by
        # campaign, and those with one by key
        by_start: dict[int, tuple[dict[str, CtrWindow], dict[WindowKey, CtrWindow]]] = {}
        plain: dict[str, CtrWindow] = {}
        varied: dict[WindowKey, CtrWindow] = {}
        arrivals = self.arrivals
        arrive = [].append  # the start's arrivals (rebound at the first impression)
        # the windows the batch found, each with its number of ids before: the batch's
        # impressions are counted in `imps` at the end, from the ids added (nothing
        # reads `imps` meanwhile), not one `+= 1` per impression
        found: list[tuple[CtrWindow, int]] = []
        start = lo = hi = 0  # the window [lo, hi) of the previous impression
        for imp in events:
            imp_id = imp.impression_id
            ts = imp.ts
            if not lo <= ts < hi:
                start = ts - ts % size
                lo, hi = start, start + size
                cached = by_start.get(start)
                if cached is None:
                    cached = by_start[start] = ({}, {})
                plain, varied = cached
                arrive = arrivals.setdefault(start, []).append
            # the window the batch found for the key, looked up before the index is
            # probed (finding it changes nothing): the entry is then made whole, not
            # made with a placeholder window and set after (issue 18)
            variant = imp.variant
            if variant:
                key = (imp.campaign_id, variant)
                window = varied.get(key)
            else:
                key = None
                window = plain.get(imp.campaign_id)
            if window is None:
                # the batch's first impression of the key: a duplicate must not make
                # its window, so the index is probed before the window is found or made
                known = impressions.get(imp_id)
                if known is not None:
                    known.window.dup_imps += 1
                    continue
                if key is None:
                    campaign = imp.campaign_id
                    window = plain[campaign] = self._window_at(start, (campaign, ""), found)
                else:
                    window = varied[key] = self._window_at(start, key, found)
                entry = impressions[imp_id] = ImpressionRef(window, ts, False, imp_id)
            else:
                # one probe of the (large) index: the entry is claimed, or the one
                # already there returned (a duplicate impression)
                entry = ImpressionRef(window, ts, False, imp_id)
                known = claim(imp_id, entry)
                if known is not entry:
                    known.window.dup_imps += 1
                    continue
            window.ids.append(imp_id)
            arrive(imp_id)
            # a membership test, not `pop(imp_id, None)`: some click nearly always waits
            # (for an impression never seen, until the watermark passes it), so the
            # check runs per impression and a method call per impression cost more
            # than the test; it almost never hits (issue 18)
            if imp_id in pending:
                for click in pending.pop(imp_id).values():
                    self._attribute(entry, click.ts, click.campaign, click.click_id)
        for window, before in found:
            window.imps += len(window.ids) - before
        return len(found)

    def _window_at(
        self, start: int, key: WindowKey, found: list[tuple[CtrWindow, int]]
    ) -> CtrWindow:
        """The window of `key` at `start`, made if new, with its own id list (an
        impression goes in it next), added to `found` with its number of ids."""
        bucket = self.windows.by_start.get(start)
        window = None if bucket is None else bucket.get(key)
        if window is None:
            # `new_window` with its own id list
            window = CtrWindow(
                ids=[],
                times=_NO_TIMES,
                clicked=_NO_CLICKED,
                counted=_NO_COUNTED,
                converted=_NO_CONVERTED,
            )
            self.windows.insert(key, start, window)
        elif window.ids is _NO_IDS:  # a window holding orphans only: the shared list
            window.ids = []
        found.append((window, len(window.ids)))
        return window

    def _impressions_in_line(self, events: Sequence[Impression]) -> None:
        """`_impression` of each event, with the window found or made in line: with
        many keys nearly every impression opens a window, and the calls per event
        (window key, `TumblingWindows.at`, the factory, then filling the new window)
        were a fifth of the feed's cost (issue 18). The same state as `_impression`."""
        impressions, pending = self.impressions, self.pending
        claim = impressions.setdefault
        windows = self.windows
        by_start = windows.by_start
        size = self.config.window_ms
        key_of = self._window_key if self._custom_key else None
        arrivals = self.arrivals
        arrive = [].append  # the start's arrivals (rebound at the first impression)
        arriving = None  # ... and that start
        for imp in events:
            imp_id = imp.impression_id
            ts = imp.ts
            key = (imp.campaign_id, imp.variant or "") if key_of is None else key_of(imp)
            start = ts - ts % size
            bucket = by_start.get(start)
            window = None if bucket is None else bucket.get(key)
            # the entry made whole with its window (a new one not yet among the
            # windows), then claimed: one probe of the (large) index per impression;
            # a duplicate's new window is dropped unseen
            if window is None:
                # `new_window` with this impression in it (its own id list)
                window = CtrWindow(
                    imps=1,
                    ids=[imp_id],
                    times=_NO_TIMES,
                    clicked=_NO_CLICKED,
                    counted=_NO_COUNTED,
                    converted=_NO_CONVERTED,
                )
                entry = ImpressionRef(window, ts, False, imp_id)
                known = claim(imp_id, entry)
                if known is not entry:
                    known.window.dup_imps += 1
                    continue
                windows.insert(key, start, window)
            else:
                entry = ImpressionRef(window, ts, False, imp_id)
                known = claim(imp_id, entry)
                if known is not entry:
                    known.window.dup_imps += 1
                    continue
                window.imps += 1
                if window.ids:
                    window.ids.append(imp_id)
                else:  # a window holding orphans only: the shared empty list
                    window.ids = [imp_id]
            if start != arriving:
                arrive, arriving = arrivals.setdefault(start, []).append, start
            arrive(imp_id)
            if imp_id in pending:  # a test, not a pop per impression (`_impressions_cached`)
                for click in pending.pop(imp_id).values():
                    self._attribute(entry, click.ts, click.campaign, click.click_id)

    def _window_key(self, imp: Impression) -> WindowKey:
        return imp.campaign_id, imp.variant or ""

    @classmethod
    def sources_for(cls, config: CtrConfig) -> tuple[str, ...]:
        """The sources an operator of this config reads (conversions when joined)."""
        return ("impressions", "clicks", "conversions") if config.conversions else cls.sources

    def _click(self, click: Click) -> None:
        entry = self.impressions.get(click.impression_id)
        if entry is not None:
            self._attribute(entry, click.ts, click.campaign_id, click.click_id)
            return
        # The impression may still arrive (out of order): wait until the
        # watermark passes the click, after which it could only come late.
        self.seq += 1
        self.pending.setdefault(click.impression_id, {})[self.seq] = PendingClick(
            click.ts, click.campaign_id, click.click_id
        )
        heapq.heappush(self.pending_heap, (click.ts, self.seq, click.impression_id))

    def _attribute(self, entry: ImpressionRef, click_ts: int, campaign: str, click_id: str) -> None:
        window = entry.window
        if 0 <= click_ts - entry.ts <= self.config.attribution_ms:
            if entry.clicked:
                window.dup_clicks += 1
            else:
                window.clicks += 1
                if window.clicked:
                    window.clicked.append(entry.impression_id)
                else:  # a new window's is the shared empty list (`new_window`)
                    window.clicked = [entry.impression_id]
                entry.clicked = True
            if self.config.conversions and click_id and click_id not in self.clicks:
                counted = CountedClick(click_id, click_ts, entry.impression_id)
                if window.counted:
                    window.counted.append(counted)
                else:  # a new window's is the shared empty list (`new_window`)
                    window.counted = [counted]
                record = self.clicks[click_id] = (window, counted)
                waiting = self.conv_pending.pop(click_id, None)
                if waiting:
                    for conv in waiting.values():
                        self._convert(
                            record, conv.ts, conv.campaign, conv.conversion_id, conv.value
                        )
        else:
            self.windows.at((campaign, ""), click_ts).orphans += 1

    def _conversion(self, conv: Conversion) -> None:
        value = conv.value if conv.value is not None else 0.0
        record = self.clicks.get(conv.click_id)
        if record is not None:
            self._convert(record, conv.ts, conv.campaign_id, conv.conversion_id, value)
            return
        # its click may still come, or still find its impression: wait for the watermark
        self.seq += 1
        self.conv_pending.setdefault(conv.click_id, {})[self.seq] = PendingConversion(
            conv.ts, conv.campaign_id, conv.conversion_id, value
        )
        heapq.heappush(self.conv_heap, (conv.ts, self.seq, conv.click_id))

    def _convert(
        self,
        record: tuple[CtrWindow, CountedClick],
        conv_ts: int,
        campaign: str,
        conv_id: str,
        value: float,
    ) -> None:
        window, click = record
        imp_id = click.impression_id
        if not 0 <= conv_ts - click.ts <= self.config.conversion_ms:
            self.windows.at((campaign, ""), conv_ts).orphan_convs += 1
            return
        window.conv_changed = True
        window.conv_last = max(window.conv_last, conv_ts)
        chosen = window.converted.get(imp_id)
        if chosen is None:
            if window.converted:
                window.converted[imp_id] = Converted(conv_ts, conv_id, value)
            else:  # a new window's is the shared empty dict (`new_window`)
                window.converted = {imp_id: Converted(conv_ts, conv_id, value)}
            return
        window.dup_convs += 1
        # the first by (ts, id) gives the value
        if (conv_ts, conv_id) < (chosen.ts, chosen.conversion_id):
            window.converted[imp_id] = Converted(conv_ts, conv_id, value)

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        cfg = self.config
        heap = self.pending_heap
        while heap and heap[0][0] < watermark:
            click_ts, seq, imp_id = heapq.heappop(heap)
            waiting = self.pending.get(imp_id)
            if waiting is None or seq not in waiting:
                continue  # its impression arrived meanwhile
            campaign = waiting.pop(seq).campaign
            if not waiting:
                del self.pending[imp_id]
            self.windows.at((campaign, ""), click_ts).orphans += 1
        # after the clicks: a conversion's click (earlier than it) has been placed by now
        conv_heap = self.conv_heap
        while conv_heap and conv_heap[0][0] < watermark:
            conv_ts, seq, click_id = heapq.heappop(conv_heap)
            waiting_convs = self.conv_pending.get(click_id)
            if waiting_convs is None or seq not in waiting_convs:
                continue  # its click came meanwhile
            campaign = waiting_convs.pop(seq).campaign
            if not waiting_convs:
                del self.conv_pending[click_id]
            self.windows.at((campaign, ""), conv_ts).orphan_convs += 1

        final_until = watermark - cfg.attribution_ms
        provisional_from = max(self.provisional_until, final_until)
        provisional = self.windows.buckets_ending_between(provisional_from, watermark)
        if provisional:
            listed = _in_order(provisional)
            self._emit_rows(listed, False)
            for start, keys, windows in listed:
                self._listed[start] = (keys, windows)
        self.provisional_until = max(self.provisional_until, watermark)

        # by start, each with its keys in order: the windows made final, in the order
        # the rows, the judge and the conversions see them (by start, then key)
        popped = self.windows.pop_buckets_until(final_until)
        if popped:
            # each start's windows looked up once, for the rows and the judge
            closed = self._final_order(popped)
            # the final rows read each window's counts, and the judge takes them from
            # there: one pass over the (many, scattered) windows, not two (issue 18)
            counts: tuple[list[int], list[int]] = ([], [])
            self._emit_rows(closed, True, counts)
            keep_all = self.keep_all_windows
            for start, keys, bucket in popped if cfg.conversions else ():
                for key in keys:
                    window = bucket[key]
                    if window.counted or keep_all:
                        # its impressions are forgotten (`_forget_until`); its counted
                        # clicks wait for their conversions
                        # a version-3 row follows when a conversion at or after the final
                        # row's watermark has joined: one that came before this row may as
                        # well have come after it (it is not late then), so the row it is
                        # in must not depend on which (the rows are then the same in any
                        # arrival order)
                        window.conv_changed = (
                            window.conv_last >= start + cfg.window_ms + cfg.attribution_ms
                        )
                        self.converting.append(Converting(start, key, window))
            self._judge_buckets(closed, counts)
        self._forget_until(final_until, popped)
        self._close_conversions(final_until - cfg.conversion_ms)

    def _forget_until(self, until: int, popped: list[PoppedBucket]) -> None:
        """Drop the impressions of the windows ending by `until` (made final: `popped`)
        from the join's index, as no click can join them any more, and the windows' id
        lists, which nothing reads after the final row.

        In the order they were claimed (`arrivals`), not window by window: the index's
        entries, their `ImpressionRef`s and id strings were made in that order and lie
        in memory in it, so the pops walk them in step instead of jumping between a
        hundred campaigns' impressions (forgetting was a sixth of the CTR task's time
        with 100 campaigns, issue 18); `map` of the index's `pop` runs in C. The same
        ids either way: each claim adds its id to its window and to its start's
        arrivals. Every start ending by `until` goes, popped or not: a batch loop may
        open a start's arrivals for a duplicate alone (an empty list, no window)."""
        for _, _, bucket in popped:
            for window in bucket.values():
                window.ids = _NO_IDS
        arrivals, size, forget = self.arrivals, self.config.window_ms, self.impressions.pop
        for start in [start for start in arrivals if start + size <= until]:
            deque(map(forget, arrivals.pop(start), repeat(None)), 0)

    def _final_order(self, popped: list[PoppedBucket]) -> list[OrderedBucket]:
        """`_in_order` of the buckets made final: a start whose keys are the list its
        provisional rows were listed with takes the windows listed then, not looked up
        again (~0.1 µs an event with 100 k keys, issue 18 point 3). The same windows:
        `TumblingWindows` gives a start's keys as a new list once a key was added (a
        window is only ever added to a start, never replaced), so the same list is the
        same keys, each with the same window."""
        listed = self._listed
        closed = []
        for start, keys, bucket in popped:
            held = listed.pop(start, None)
            if held is not None and held[0] is keys:
                closed.append((start, keys, held[1]))
            else:
                closed.append((start, keys, list(map(bucket.__getitem__, keys))))
        return closed

    #: keep every window until its conversions are final, not only those with clicks
    #: (a subclass that judges windows at that point: operators/funnel.py)
    keep_all_windows = False

    def _close_conversions(self, until: int) -> None:
        """Windows whose clicks can no longer convert: the version-3 row where their
        conversions changed since the final row; their clicks are forgotten."""
        cfg = self.config
        done = []
        while self.converting and self.converting[0].start + cfg.window_ms <= until:
            held = self.converting.popleft()
            for click in held.window.counted:
                self.clicks.pop(click.click_id, None)
            done.append((held.start, held.key, held.window))
        if done:
            self._conversions_final(done)

    def _conversions_final(self, done: list[tuple[int, WindowKey, CtrWindow]]) -> None:
        for start, key, window in done:
            if window.conv_changed:
                self._emit_row(start, key, window, final=True, version=3)

    def _emit_rows(
        self,
        buckets: list[OrderedBucket],
        final: bool,
        counts: tuple[list[int], list[int]] | None = None,
    ) -> None:
        """The provisional (version 1) or final (version 2) row of every window of
        `buckets` ((start, keys in order, windows in that order), by start), in that
        order: `_emit_row` of each, in one loop (with many keys nearly two rows per
        event, and the call per row was a third of building it, issue 18). A subclass
        that writes its own rows (its own `_emit_row`) gets a call per window.
        `counts`: two lists that get each window's impressions and clicks, in the same
        order (for `_judge_buckets`, which then reads no window again); left empty for
        a subclass with its own rows."""
        if self._custom_rows:
            emit = self._emit_row
            for start, keys, windows in buckets:
                for key, window in zip(keys, windows, strict=True):
                    emit(start, key, window, final)
            return
        if not any(keys for _, keys, _ in buckets):
            return
        rows = self._out.rows.get(_CTR_TABLE)
        if rows is None:
            rows = self._out.rows[_CTR_TABLE] = []
        append = rows.append
        version = 2 if final else 1
        final_flag = 1 if final else 0
        full_row = self._full_row
        window_ms = self.config.window_ms
        collect = counts is not None
        imps_out, clicks_out = counts if counts is not None else ([], [])
        imps_seen, clicks_seen = imps_out.append, clicks_out.append
        for start, keys, windows in buckets:
            end = start + window_ms
            for key, window in zip(keys, windows, strict=True):
                imps, clicks = window.imps, window.clicks
                if collect:
                    imps_seen(imps)
                    clicks_seen(clicks)
                if window.converted or window.orphan_convs or window.dup_convs:
                    append(full_row(start, key, window, final, version))
                    continue
                # no conversion figures: `_full_row`'s row (zero conversions, cvr and
                # revenue) built by position, in `CtrWindowRow`'s field order: ~0.04 µs
                # less per row than replacing a template's fields by keyword, with many
                # keys ~1.35 rows per event (issue 18, point 3)
                append(
                    CtrWindowRow(
                        start,
                        end,
                        key[0],
                        key[1],
                        imps,
                        clicks,
                        clicks / imps if imps else 0.0,
                        window.orphans,
                        window.dup_clicks,
                        window.dup_imps,
                        final_flag,
                        version,
                        0,
                        0.0,
                        0.0,
                        0,
                        0,
                    )
                )

    def _emit_row(
        self, start: int, key: WindowKey, window: CtrWindow, final: bool, version: int | None = None
    ) -> None:
        """The row of one window (`_emit_rows` writes the provisional and final rows
        of this class in one loop; this is the version-3 row's, and the hook a
        subclass with rows of its own overrides)."""
        row = self._full_row(start, key, window, final, version or (2 if final else 1))
        rows = self._out.rows.get(_CTR_TABLE)
        if rows is None:
            self._out.rows[_CTR_TABLE] = [row]
        else:
            rows.append(row)

    def _full_row(
        self, start: int, key: WindowKey, window: CtrWindow, final: bool, version: int
    ) -> CtrWindowRow:
        imps, clicks = window.imps, window.clicks
        converted = len(window.converted)
        return CtrWindowRow(
            window_start=start,
            window_end=start + self.config.window_ms,
            campaign_id=key[0],
            variant=key[1],
            impressions=imps,
            clicks=clicks,
            ctr=clicks / imps if imps else 0.0,
            orphan_clicks=window.orphans,
            duplicate_clicks=window.dup_clicks,
            duplicate_impressions=window.dup_imps,
            final=1 if final else 0,
            version=version,
            conversions=converted,
            cvr=converted / clicks if clicks else 0.0,
            revenue=window.revenue(),
            orphan_conversions=window.orphan_convs,
            duplicate_conversions=window.dup_convs,
        )

    def _judge_buckets(
        self, closed: list[OrderedBucket], counts: tuple[list[int], list[int]] | None = None
    ) -> None:
        """`_judge` of the windows of `closed` ((start, keys in order, windows in that
        order), by start): the judge's units (`operators.ctr_evidence.judged_units`)
        made from the keys and counts as columns (`ordered_unit_columns`, for
        `CtrJudge.judge_columns`), without a tuple per window or unit. `counts`: every
        window's impressions and clicks in that order, as `_emit_rows` collected them
        (else read from the windows). A subclass with its own `_judge` gets that called
        with (start, key, window) per window."""
        if self._custom_judge:
            self._judge(
                [
                    (start, key, window)
                    for start, keys, windows in closed
                    for key, window in zip(keys, windows, strict=True)
                ]
            )
            return
        if counts is None or not counts[0]:
            counts = ([], [])
            for _, _, windows in closed:
                counts[0].extend([w.imps for w in windows])
                counts[1].extend([w.clicks for w in windows])
        units = ordered_unit_columns([(start, keys) for start, keys, _ in closed], *counts)
        if units[1]:
            self._out.observations.extend(self.judge.judge_columns(*units))

    def _judge(self, closed: list[tuple[int, WindowKey, CtrWindow]]) -> None:
        """Judge the windows one watermark step made final (`operators.ctr_evidence`)."""
        counts = [(start, key[0], key[1], w.imps, w.clicks) for start, key, w in closed if w.imps]
        if counts:
            # popped by start then key: already in the judge's order
            self._out.observations.extend(self.judge.judge(counts, ordered=True))

    def late_window(self, source: str, event: Any) -> int:
        """An impression's window; a late click's is its impression's while that is
        held, a late conversion's its click's impression's while the click is held;
        else the window it would have counted in as an orphan."""
        ts = event.ts
        if source == "clicks":
            entry = self.impressions.get(event.impression_id)
            ts = ts if entry is None else entry.ts
        elif source == "conversions":
            record = self.clicks.get(event.click_id)
            if record is not None:
                return self._start_of(record[0], ts)
        return window_start(ts, self.config.window_ms)

    def _start_of(self, window: CtrWindow, ts: int) -> int:
        """The start of a held window (windows do not store it: looked up, which only
        late conversions need), else that of `ts`."""
        for start, _, w in self.windows.items():
            if w is window:
                return start
        for held in self.converting:
            if held.window is window:
                return held.start
        return window_start(ts, self.config.window_ms)

    # -- checkpoints ---------------------------------------------------------

    def _state(self) -> CtrState:
        """The typed state (not a copy: the live windows and waiting entries)."""
        return self.state_codec.state_type(
            windows=self.windows.state(),
            pending=self.pending,
            seq=self.seq,
            provisional_until=self.provisional_until,
            judge=self.judge.state(),
            converting=list(self.converting),
            conv_pending=self.conv_pending,
        )

    def snapshot(self) -> dict[str, Any]:
        return self._with_times(self.state_codec.dump)

    def snapshot_encoded(self) -> msgspec.Raw:
        # the typed state written as msgpack in one pass, without the plain copy that cost
        # most of a checkpoint (1.67 s against 0.18 s with 100 k campaigns, issue 18)
        return self._with_times(self.state_codec.encode)

    def _with_times(self, write: Callable[[CtrState], T]) -> T:
        """`write` of the state with the open windows' impression times filled in.

        The times come from the join's index, for the dump only (`write` makes a copy);
        the live windows go back to the shared empty list after it. The index is in
        arrival order, so each window's times come in its ids' order (and an index that
        lost impressions gives a snapshot that differs, not a failure)."""
        filled = []
        for ref in self.impressions.values():
            w = ref.window
            if w.times is _NO_TIMES:
                w.times = [ref.ts]
                filled.append(w)
            else:
                w.times.append(ref.ts)
        try:
            return write(self._state())
        finally:
            for w in filled:
                w.times = _NO_TIMES

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._load(self.state_codec.load(snapshot))

    def _load(self, state: CtrState) -> None:
        """Take a restored state and rebuild the indexes derived from it."""
        self.windows.load(state.windows)
        self.converting = deque(state.converting)
        self.pending, self.conv_pending = state.pending, state.conv_pending
        self.seq, self.provisional_until = state.seq, state.provisional_until
        self.judge = CtrJudge(self.config)
        self.judge.load(state.judge)
        self._listed = {}
        self.impressions = {}
        self.arrivals = {}
        self.clicks = {}
        for start, _, w in self.windows.items():
            was_clicked = set(w.clicked)
            for imp_id, ts in zip(w.ids, w.times, strict=True):
                self.impressions[imp_id] = ImpressionRef(w, ts, imp_id in was_clicked, imp_id)
            if w.ids:  # in the windows' order: any order forgets the same ids
                self.arrivals.setdefault(start, []).extend(w.ids)
            # from here on the index holds the times (`CtrWindow.times`)
            w.times = _NO_TIMES
            self._index_clicks(w)
        for held in self.converting:
            self._index_clicks(held.window)
        self.pending_heap = [
            (click.ts, seq, imp_id)
            for imp_id, waiting in self.pending.items()
            for seq, click in waiting.items()
        ]
        heapq.heapify(self.pending_heap)
        self.conv_heap = [
            (conv.ts, seq, click_id)
            for click_id, waiting in self.conv_pending.items()
            for seq, conv in waiting.items()
        ]
        heapq.heapify(self.conv_heap)

    def _index_clicks(self, w: CtrWindow) -> None:
        for click in w.counted:
            self.clicks[click.click_id] = (w, click)

    def memory_items(self) -> dict[str, int]:
        """What the join holds: impressions, counted clicks awaiting conversions, and
        clicks and conversions waiting for their impression or click."""
        return {
            "impressions": len(self.impressions),
            "clicks": len(self.clicks),
            "pending_clicks": len(self.pending_heap),
            "pending_conversions": len(self.conv_heap),
            "converting_windows": len(self.converting),
        }


__all__ = ["CtrConfig", "CtrOperator", "CtrState", "CtrWindow", "ctr_rules", "window_start"]
