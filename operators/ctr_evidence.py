"""Judging final CTR windows: per campaign and per variant, window by window and
accumulated over windows, against a baseline the incident cannot leak into.

Input: the final counts of the windows one watermark step closed, as
(start, campaign, variant, impressions, clicks). Output: observations for the
rule engine. No windowing, joining or alert state lives here (the operator
windows, the rule engine keeps episodes), so the same object judges the
worker's windows (`CtrOperator`) and the detection benchmark's simulated
counts (`tests/benchmarks/detection.py`).

Levels. A campaign whose impressions carry variants is judged per variant
(entity `campaign/variant`, `details.level = "variant"`) and pooled (entity
`campaign`, level `"campaign"`: the sum over its variants, where a collapse of
the whole campaign has twice the evidence of either half); a campaign without
variants is judged once, at level `"campaign"`.

Per judged window with n impressions and k clicks (p0 = baseline CTR):

- `ctr`: value k / n, p-value P(X <= k), X ~ Binomial(n, floor_ctr) (exact);
  once the entity has a baseline, `details.baseline_ctr` = p0 (change detection
  judges the window's residual against it: operators/change.py).
- `ctr_drop`: value (p0 - k/n) / p0, p-value of Fisher's exact test (one-sided,
  Fisher 1922) of (k, n - k) against the baseline's pooled counts.
- `ctr_evidence`: max over d in `drops_to_detect` of S_d / h, S_d the CUSUM
  (Page 1954) of the binomial log-likelihood ratio of "CTR = p0' (1 - d)"
  against "CTR = p0'", p0' = (C - z sqrt(C)) / N the baseline's lower bound
  (C clicks, N impressions; z = `baseline_z`) so that a baseline high by chance
  does not read as a drop. >= 1 is an alarm; h = log(ARL0) (Lorden 1971, see
  `operators/sequential.py`). It accumulates the evidence of a drop too small
  to be significant in any one window. After an alarm the value stays >= 1
  until a CUSUM of the opposite ratio (the way back, "p0'" against
  "p0' (1 - first d)") reaches `recovery_evidence`; then the CUSUMs restart.

Baseline (`operators.baseline.ClearedRate`): the pooled clicks / impressions of
the entity's last `baseline_windows` windows that the CUSUMs cleared. A window
is held until the CUSUMs are all back at 0 (then it was ordinary and enters
the baseline) or alarm (then it, and every window until recovery, is part of
the incident and never enters); a window whose own `ctr_drop` p-value is
below the budget's per-window level is dropped as well. So during an
incident the baseline stays what it was before, and an episode can only end
because the CTR came back, never because the baseline followed it down.

Budget. `CtrConfig.false_alarms_per_1000_campaign_days` (B) is split evenly
over the m judgements of a window (floor, drop, one CUSUM per drop to detect)
and the L = `levels_per_campaign` entities of a campaign; with W windows per day

    window_alpha = B / (1000 * W * m * L)        (Bonferroni, per window)
    h = log(1000 * W * m * L / B)                 (ARL0 of each entity's CUSUM)

so on traffic without incidents the expected number of false CTR alerts is at
most B per 1,000 campaign-days however many campaigns are watched (both are
upper bounds; DETECTION.md measures the real rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import compress, count, repeat
from operator import add, itemgetter, truediv
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

# scipy.stats is imported where it is used: at import it costs ~0.4 s of CPU in every
# process that reads the configuration (the CLI), most of which never call it
from operators.base import Observation
from operators.baseline import ClearedRate, ClearedRateState, HeldWindow, cleared_rate_from_format_1
from operators.exact import fisher_less_small_counts
from operators.sequential import Cusum

if TYPE_CHECKING:
    from operators.ctr import CtrConfig

# (start, campaign, variant, impressions, clicks)
WindowCounts = tuple[int, str, str, int, int]
# the three observations of a unit with a baseline, filled in once judged
_SLOTS: tuple[None, None, None] = (None, None, None)
_CAMPAIGN, _VARIANT = itemgetter(0), itemgetter(1)


def judged_units(
    windows: Sequence[WindowCounts], ordered: bool = False
) -> list[tuple[int, str, str, int, int]]:
    """(start, entity, level, impressions, clicks) to judge, by start, campaign, then
    the pooled campaign before its variants; windows without impressions are skipped.
    `ordered`: the windows come sorted by (start, campaign, variant), as the operator
    pops them, so a campaign's windows are consecutive: the same units without
    grouping them in a dict and sorting the groups.

    >>> judged_units([(0, "c", "A", 10, 1), (0, "c", "B", 12, 0), (0, "d", "", 5, 1)])
    [(0, 'c', 'campaign', 22, 1), (0, 'c/A', 'variant', 10, 1), (0, 'c/B', 'variant', 12, 0), (0, 'd', 'campaign', 5, 1)]
    >>> judged_units([(0, "c", "A", 10, 1), (0, "c", "B", 12, 0), (0, "d", "", 5, 1)], True)
    [(0, 'c', 'campaign', 22, 1), (0, 'c/A', 'variant', 10, 1), (0, 'c/B', 'variant', 12, 0), (0, 'd', 'campaign', 5, 1)]
    """  # noqa: E501
    if ordered:
        return _ordered_units(windows)
    groups: dict[tuple[int, str], list[tuple[str, int, int]]] = {}
    for start, campaign, variant, imps, clicks in windows:
        group = (start, campaign)
        parts = groups.get(group)
        if parts is None:
            groups[group] = [(variant, imps, clicks)]
        else:
            parts.append((variant, imps, clicks))
    units: list[tuple[int, str, str, int, int]] = []
    append = units.append
    for group in sorted(groups):
        start, campaign = group
        parts = groups[group]
        if len(parts) == 1:
            # the common case with many keys (one window per campaign and step): the
            # same units as the general path below, without its sums and sorts
            variant, imps, clicks = parts[0]
            if imps:
                append((start, campaign, "campaign", imps, clicks))
                if variant:
                    append((start, f"{campaign}/{variant}", "variant", imps, clicks))
            continue
        imps = sum(p[1] for p in parts)
        if imps:
            units.append((start, campaign, "campaign", imps, sum(p[2] for p in parts)))
        if any(variant for variant, _, _ in parts):
            for variant, v_imps, v_clicks in sorted(parts):
                if variant and v_imps:
                    units.append((start, f"{campaign}/{variant}", "variant", v_imps, v_clicks))
    return units


def _ordered_units(windows: Sequence[WindowCounts]) -> list[tuple[int, str, str, int, int]]:
    """`judged_units` of windows sorted by (start, campaign, variant)."""
    units: list[tuple[int, str, str, int, int]] = []
    append = units.append
    n = len(windows)
    i = 0
    while i < n:
        start, campaign, variant, imps, clicks = windows[i]
        j = i + 1
        while j < n and windows[j][1] == campaign and windows[j][0] == start:
            j += 1
        if j == i + 1:  # one window of the campaign in the step: the common case
            if imps:
                append((start, campaign, "campaign", imps, clicks))
                if variant:
                    append((start, f"{campaign}/{variant}", "variant", imps, clicks))
        else:
            parts = windows[i:j]  # by variant already
            total = sum(p[3] for p in parts)
            if total:
                append((start, campaign, "campaign", total, sum(p[4] for p in parts)))
            if any(p[2] for p in parts):
                for p in parts:
                    if p[2] and p[3]:
                        append((start, f"{campaign}/{p[2]}", "variant", p[3], p[4]))
        i = j
    return units


#: units as columns: (starts, entities, levels, impressions, clicks)
UnitColumns = tuple[list[int], list[str], list[str], list[int], list[int]]


def ordered_unit_columns(
    buckets: Iterable[tuple[int, Sequence[tuple[str, str]]]],
    imps: Sequence[int],
    clicks: Sequence[int],
) -> UnitColumns:
    """`judged_units(windows, ordered=True)` as columns (`CtrJudge.judge_columns`), of
    windows given as (start, its (campaign, variant) keys sorted) by start, with every
    window's impressions and clicks in that order in `imps` and `clicks`.

    A campaign without variants has one window per start (the keys are distinct), its
    unit when it has impressions: runs of such windows (with many campaigns nearly
    every window) get their columns made in C (`compress`, `repeat`), not window by
    window (~0.3 µs a unit, issue 18 point 3); the windows of a campaign with variants
    are grouped as `judged_units` does.

    >>> ordered_unit_columns([(0, [("c", "A"), ("c", "B"), ("d", "")]), (60, [("d", "")])],
    ...                      [10, 12, 5, 0], [1, 0, 1, 0])
    ([0, 0, 0, 0], ['c', 'c/A', 'c/B', 'd'], ['campaign', 'variant', 'variant', 'campaign'], [22, 10, 12, 5], [1, 1, 0, 1])
    """  # noqa: E501
    columns: UnitColumns = ([], [], [], [], [])
    at = 0  # the bucket's first window in `imps` and `clicks`
    for start, keys in buckets:
        n = len(keys)
        done = 0  # the start's windows before this one have their units
        # the windows with a variant, each taking its campaign's other windows along
        # (they are its neighbours: the keys are sorted)
        for i in compress(count(), map(_VARIANT, keys)):
            if i < done:
                continue  # in the group of an earlier variant of its campaign
            campaign = keys[i][0]
            lo, hi = i, i + 1
            while lo > done and keys[lo - 1][0] == campaign:
                lo -= 1
            while hi < n and keys[hi][0] == campaign:
                hi += 1
            _plain_units(
                columns,
                start,
                keys[done:lo],
                imps[at + done : at + lo],
                clicks[at + done : at + lo],
            )
            group = [
                (start, campaign, variant, k, c)
                for (_, variant), k, c in zip(
                    keys[lo:hi], imps[at + lo : at + hi], clicks[at + lo : at + hi], strict=True
                )
            ]
            for unit in _ordered_units(group):
                for column, value in zip(columns, unit, strict=True):
                    column.append(value)
            done = hi
        _plain_units(
            columns, start, keys[done:], imps[at + done : at + n], clicks[at + done : at + n]
        )
        at += n
    return columns


def _plain_units(
    columns: UnitColumns,
    start: int,
    keys: Sequence[tuple[str, str]],
    imps: Sequence[int],
    clicks: Sequence[int],
) -> None:
    """The units of windows of one start without variants, one per campaign: each its
    campaign's unit when it has impressions, appended to `columns`."""
    starts, entities, levels, imps_col, clicks_col = columns
    before = len(entities)
    entities.extend(compress(map(_CAMPAIGN, keys), imps))
    imps_col.extend(filter(None, imps))
    clicks_col.extend(compress(clicks, imps))
    added = len(entities) - before
    starts.extend(repeat(start, added))
    levels.extend(repeat("campaign", added))


class CtrJudgeState(msgspec.Struct):
    """What a `CtrJudge` keeps per entity: its baseline (held and committed windows),
    one CUSUM per drop to detect, and in an alarm the CUSUM of the way back."""

    baseline: ClearedRateState = msgspec.field(default_factory=ClearedRateState)
    cusums: dict[str, list[Cusum]] = {}
    recovery: dict[str, Cusum] = {}


def judge_from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """A judge of state format 1 (CUSUMs as bare statistics) as plain `CtrJudgeState`."""
    return {
        "baseline": cleared_rate_from_format_1(old["baseline"]),
        "cusums": {k: [{"statistic": s} for s in cs] for k, cs in old["cusums"].items()},
        "recovery": {k: {"statistic": s} for k, s in old["recovery"].items()},
    }


class CtrJudge:
    """Observations for final CTR windows (see the module docstring)."""

    def __init__(self, config: CtrConfig) -> None:
        self.config = config
        self.threshold = config.evidence_threshold
        self.alpha = config.window_alpha
        self.baseline = ClearedRate(
            config.baseline_windows,
            config.baseline_min_windows,
            config.baseline_min_impressions,
            config.baseline_max_pending,
            config.baseline_min_clicks,
            config.baseline_block,
        )
        self.cusums: dict[str, list[Cusum]] = {}  # one per drop to detect
        self.recovery: dict[str, Cusum] = {}  # entities in an alarm: evidence of the way back
        self.log_ratios = [math.log(1.0 - d) for d in config.drops_to_detect]

    def _sequential(
        self, entity: str, n: int, k: int, base: tuple[int, int]
    ) -> tuple[float, float, float, HeldWindow | None]:
        """Update the entity's CUSUMs with one window; returns (statistic, value for
        the rule, recovery statistic, the window's baseline entry if it was held)."""
        cfg = self.config
        h = self.threshold
        hits, trials = base
        # the baseline's lower bound: an estimate high by chance must not read as a drop
        p0 = max(hits - cfg.baseline_z * math.sqrt(hits), 0.5) / trials
        log_p0 = math.log1p(-p0)
        llrs = [
            k * log_ratio + (n - k) * (math.log1p(-p0 * (1.0 - d)) - log_p0)
            for d, log_ratio in zip(cfg.drops_to_detect, self.log_ratios, strict=True)
        ]
        cusums = self.cusums.get(entity)
        if cusums is None:
            cusums = self.cusums[entity] = [Cusum() for _ in llrs]
        s = max([c.update(llr) for c, llr in zip(cusums, llrs, strict=True)])
        recovery = self.recovery.get(entity)
        if recovery is not None:  # in an alarm: has the CTR come back?
            r = recovery.update(-llrs[0])
            if r < cfg.recovery_evidence:
                return s, max(1.0, s / h), r, None
            del self.recovery[entity]  # recovered: start afresh, learn from the next window
            for c in cusums:
                c.reset()
            return 0.0, 0.0, r, None
        if s >= h:
            self.recovery[entity] = Cusum()
            self.baseline.discard(entity)  # the run that led here is the incident's
            return s, s / h, 0.0, None
        held = self.baseline.hold(entity, k, n)
        if s == 0.0:
            self.baseline.commit(entity)  # no evidence of a drop left: they were ordinary
        return s, s / h, 0.0, held

    def _learning(
        self,
        out: list[Any],
        starts: Sequence[int],
        entities: Sequence[str],
        levels: Sequence[str],
        imps: Sequence[int],
        clicks: Sequence[int],
        floor_p: Sequence[float],
    ) -> None:
        """Append to `out` the `ctr` observation of each unit without a baseline (unit
        i: starts[i], entities[i], levels[i], imps[i] > 0, clicks[i], its floor p-value
        floor_p[i]): its window learned, nothing else to judge. The observations are
        built by one `map` in C over the columns (with many keys nearly every unit
        learns: ~0.1 µs a unit less than a Python loop, issue 18 point 3); the same
        values: `truediv` is `k / n`, `add` is `start + window_ms`."""
        ends = list(map(add, starts, repeat(self.config.window_ms)))
        details = [
            {"impressions": n, "clicks": k, "level": level}
            for n, k, level in zip(imps, clicks, levels, strict=True)
        ]
        # positional: kind, entity, metric, value, ts, n, window_start, window_end,
        # details, p_value
        out.extend(
            map(
                Observation,
                repeat("ctr"),
                entities,
                repeat("ctr"),
                map(truediv, clicks, imps),
                ends,
                imps,
                starts,
                ends,
                details,
                floor_p,
            )
        )

    def judge(self, windows: Sequence[WindowCounts], ordered: bool = False) -> list[Observation]:
        """Observations of one watermark step's final windows; `ordered`: they come
        sorted by (start, campaign, variant) (`judged_units`)."""
        return self.judge_units(judged_units(windows, ordered))

    def judge_units(self, units: Sequence[tuple[int, str, str, int, int]]) -> list[Observation]:
        """Observations of one watermark step's units, as `judged_units` gives them
        (by start, campaign, the pooled campaign before its variants, none without
        impressions): `judge_columns` of their columns."""
        if not units:
            return []
        starts, entities, levels, imps, clicks = zip(*units, strict=True)
        return self.judge_columns(starts, entities, levels, imps, clicks)

    def judge_columns(
        self,
        starts: Sequence[int],
        entities: Sequence[str],
        levels: Sequence[str],
        imps: Sequence[int],
        clicks: Sequence[int],
    ) -> list[Observation]:
        """Observations of one watermark step's units given as columns (unit i is
        (starts[i], entities[i], levels[i], imps[i], clicks[i]), in `judged_units`'
        order): what `judge_units` does, for a caller that builds the columns itself
        (the CTR operator, from its windows by start, without a tuple per unit: with
        many keys about one unit per two events, issue 18 point 3)."""
        if not entities:
            return []
        cfg = self.config
        h = self.threshold
        window_ms = cfg.window_ms
        # the floor p-values of every unit of this step in one vectorised call
        clicks_arr = np.array(clicks, dtype=np.int64)
        imps_arr = np.array(imps, dtype=np.int64)
        from scipy.stats import binom

        floor_p = binom.cdf(clicks_arr, imps_arr, cfg.floor_ctr).tolist()
        # one pass per unit, sequential per entity (each window against the baseline
        # before it), in the units' order: an entity's windows of several starts in one
        # step see each other's updates. A unit without a baseline (learning: with many
        # keys nearly every unit, issue 18) is emitted here and then; a unit with one
        # takes three slots, filled once its drop p-value is known (vectorised below)
        out: list[Any] = []
        learn_until_based = self.baseline.learn_until_based
        judged: list[tuple[int, int, tuple[int, int], Any]] = []  # (slot, unit, base, seq)
        size = len(entities)
        i = 0
        while i < size:
            # the units without a baseline from i on learn their windows (`base_or_learn`)
            based, base = learn_until_based(entities, clicks, imps, i)
            if based > i:
                self._learning(
                    out,
                    starts[i:based],
                    entities[i:based],
                    levels[i:based],
                    imps[i:based],
                    clicks[i:based],
                    floor_p[i:based],
                )
            if base is not None:
                entity = entities[based]
                seq = self._sequential(entity, imps[based], clicks[based], base)
                judged.append((len(out), based, base, seq))
                out += _SLOTS
            i = based + 1
        if not judged:
            return out

        # the drop p-values of the units with a baseline in one vectorised call
        at = np.array([j[1] for j in judged], dtype=np.int64)
        base_k = np.array([j[2][0] for j in judged], dtype=np.int64)
        base_n = np.array([j[2][1] for j in judged], dtype=np.int64)
        drop_p = fisher_less_small_counts(
            clicks_arr[at], imps_arr[at] - clicks_arr[at], base_k, base_n - base_k
        ).tolist()
        for (slot, i, base, seq), p_drop in zip(judged, drop_p, strict=True):
            start, entity, level, n, k = starts[i], entities[i], levels[i], imps[i], clicks[i]
            end = start + window_ms
            ctr = k / n
            counts = {"impressions": n, "clicks": k, "level": level}
            baseline = base[0] / base[1]
            # the expected value change detection judges the window's residual against
            # (operators/change.py): the baseline no incident enters
            own = {**counts, "baseline_ctr": baseline}
            out[slot] = Observation("ctr", entity, "ctr", ctr, end, n, start, end, own, floor_p[i])
            s, value, r, held = seq
            if held is not None and p_drop <= self.alpha:
                self.baseline.drop(entity, held)  # significant on its own: not ordinary
            details = {
                **counts,
                "ctr": ctr,
                "baseline_ctr": baseline,
                "baseline_impressions": base[1],
            }
            out[slot + 1] = Observation(
                "ctr",
                entity,
                "ctr_drop",
                (baseline - ctr) / baseline,
                end,
                n,
                start,
                end,
                details,
                p_drop,
            )
            out[slot + 2] = Observation(
                "ctr",
                entity,
                "ctr_evidence",
                value,
                end,
                n,
                start,
                end,
                {**details, "llr": s, "llr_threshold": h, "recovery_llr": r},
            )
        return out

    def state(self) -> CtrJudgeState:
        """The typed state (not a copy): a field of the CTR operator's state."""
        return CtrJudgeState(self.baseline.state(), self.cusums, self.recovery)

    def load(self, state: CtrJudgeState) -> None:
        """Take `state` (e.g. as restored) as this judge's."""
        self.baseline.load(state.baseline)
        self.cusums, self.recovery = state.cusums, state.recovery

    def snapshot(self) -> dict[str, Any]:
        """`state()` as plain data (a copy), for a judge checkpointed on its own (the
        detection benchmark's); the operator's checkpoint holds `state()` instead."""
        return msgspec.to_builtins(self.state())

    def restore(self, plain: Any) -> None:
        self.load(msgspec.convert(plain, CtrJudgeState))


__all__ = [
    "CtrJudge",
    "CtrJudgeState",
    "UnitColumns",
    "WindowCounts",
    "judge_from_format_1",
    "judged_units",
    "ordered_unit_columns",
]
