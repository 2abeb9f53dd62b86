"""Feature and prediction drift against a reference profile, per model and window.

Semantics (the public contract's defaults, all configurable in DriftConfig):

- Windows are tumbling event-time windows [start, start + window_ms) per
  `model_id` (all versions together: a drift row is about the model's
  traffic; `model_version` in the row lists the versions seen, joined by
  ","). A window is scored when the watermark reaches its end, then dropped.
- The reference of a model is the profile given at construction
  (`references`, model_id -> ReferenceProfile). Without one, the model's
  first closed windows are the reference: they are absorbed, whole, by a
  `WarmupProfileBuilder` until they hold `warmup_events` events, the profile
  is frozen, and only the windows closing after that are scored
  (`warmup_events=None` turns warm-up off: such models are not scored).
- Per feature of the reference and the prediction ("__prediction__"), with
  the reference's bins (10 quantile bins for numbers, one bin per category
  plus "other" for strings; a category the reference never saw goes to
  "other"):
    psi   always (operators.stats.psi, proportions clipped at psi_eps)
    js    always, base 2, over the same bins
    ks, ks_pvalue     numeric: the window's values against the reference
                      sample; above `ks_sample` values, the window is reduced
                      to `ks_sample` evenly spaced order statistics (a
                      quantile sketch, so its ECDF is within 1/ks_sample of
                      the window's and the p-value is not that of a huge n)
    chi2, chi2_pvalue categorical: Pearson's test of the window's counts
                      against the reference proportions
  One `drift_scores` row each, and an Observation(kind="drift",
  entity="<model_id>/<feature>", metric="psi", value=psi, n=values,
  p_value=the PSI's own p-value under no drift (operators.stats.psi_test:
  PSI / (1/n + 1/m) ~ chi2(k - 1), Yurdakul & Naranjo 2020, computed as the
  2 x k homogeneity chi-square of reference and window counts), details
  ks_pvalue / chi2_pvalue and psi_critical, the PSI chance alone reaches at
  `psi_alpha` for this window size. A small window's PSI is biased upwards
  by sampling alone (with 50 values and 10 bins, 0.46 at 1 %), so the rule
  requires the PSI band AND that p-value (docs/monitors/drift.md).
  Accumulated evidence: the same test also runs on the feature's bin counts
  pooled over its scored windows of the last `pool_windows` windows (an
  hour by default), so a sustained shift in a model of 20 events a window is
  caught though no window alone is significant; with a pooled test the
  observation's p_value is min(1, 2 min(window p, pooled p)) (Bonferroni;
  each is a valid p-value at every window, so the per-window budget holds),
  details pooled_pvalue and pooled_n. A feature
  with no value in the window
  has no row; features the reference does not know are ignored; a string in
  a numeric feature is left out and counted in the observation's details
  (`non_numeric`).
- Confidence: when the reference and the window both have confidences,
  Observation(kind="drift", entity=model_id, metric="confidence_shift",
  value=reference mean - window mean, n=window confidences), p-value from
  Welch's one-sided t-test (window mean lower). The window's confidence mean
  and low-confidence ratio go to `inference_windows` (ServiceOperator).
- Small windows are MERGED, not skipped: a window with fewer than
  `min_count` events is not scored; its events are carried into the model's
  next window, whose row then starts at the first carried window's start. A
  carried group that spans `max_merge_windows` windows without reaching
  `min_count` is dropped unscored (`max_merge_windows=1`: plain skipping).

Cost: a poll's events are grouped by model and window, and each group is taken
feature by feature: the group's values of a feature as one list, copied into a
numeric reference feature's compact array('d') in C (issue 18; the same values
in the same order as event by event, `_take`); all statistics run with numpy
once per window and feature. A feature kept in a list (an open window's, a
categorical one) also gets a derived view as its values come in, array('d') of
its numbers or a Counter of its values (`DriftWindow`; issue 18, session 10):
scoring and the warm-up's profile read the view, not the list's objects, which
lie scattered in memory by the window's close. Every figure depends on the
multiset of a window's events only (sorted samples, exact sums), so any
arrival order within the allowed lateness gives the same rows.

State (typed, `operators.state`, format 2, `DriftState`): the open windows
by start then model, the carried small windows, the learned reference
profiles (not the configured ones), the warm-ups in progress, the dropped
count and the pooled counts of recent windows. Format 1 (positional window
lists) is upgraded on restore. A live window keeps a numeric feature's
numbers in array('d') (copied in as the event is read: a list would keep each
event's float object alive, scattered in memory, 32 bytes a value instead of
8, and slow to read back at the close), so it is converted by field name to
its `WindowState` Struct at a snapshot and back at a restore.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

import msgspec
import numpy as np

# scipy.stats is imported where it is used: at import it costs ~0.4 s of CPU in every
# process that reads the configuration (the CLI), most of which never call it
from operators.base import BuildContext, Observation, Operator
from operators.drift_kernel import binned_counts_sorted, fsum, kernel_array, ks_statistic
from operators.reference import (
    PREDICTION,
    ReferenceProfile,
    WarmupProfileBuilder,
    WarmupState,
    category_key,
)
from operators.rules import FALSE_ALARM_BUDGET
from operators.rules import rule_spec as _rule
from operators.state import StateCodec
from operators.stats import (
    binned_counts,
    chi_square,
    js_divergence,
    ks_2samp_from_sorted,
    ks_2samp_pvalue,
    psi,
    psi_critical,
    psi_test,
    systematic_sample,
)
from operators.windows import TumblingWindows, window_start
from schemas.events import InferenceLog
from schemas.rows import DriftScoreRow


@dataclass(frozen=True)
class DriftConfig:
    window_ms: int = 300_000
    # fewer events: carried into the next window (merged). A sanity floor only: the
    # PSI's p-value (psi_test) judges small windows fairly
    min_count: int = 50
    max_merge_windows: int = 12  # a carried group older than this many windows is dropped
    warmup_events: int | None = 1000  # None: no warm-up, models without a reference are ignored
    low_confidence: float = 0.5  # for the low-confidence share in confidence_shift's details
    ks_sample: int = 2000
    psi_eps: float = 1e-4
    psi_alpha: float = 0.001  # level of `psi_critical` in the details (information only)
    # accumulated evidence: the PSI test also runs on the feature's counts pooled over
    # the scored windows of the last `pool_windows` windows (1: off)
    pool_windows: int = 12
    # how a warm-up profile is built
    bins: int = 10
    reference_sample: int = 5000
    max_categories: int = 50


Acc = list[Any] | array  # values of one feature in a window


class WindowState(msgspec.Struct):
    """One model's window in a checkpoint (the fields of `DriftWindow`)."""

    n: int = 0
    versions: dict[str, int] = {}  # model version -> events
    values: dict[str, list[float | str]] = {}  # feature -> its values in the window
    numeric: list[str] = []  # the features kept as numbers only (array('d'))
    mismatch: dict[str, int] = {}  # strings offered to those (left out)
    conf: list[float] = []
    open: bool = True
    ready: bool = False
    first: int | None = None


class DriftWindow:
    """Raw values of one model's window, per feature, and its confidences.

    Two derived views, kept as the values come in (while they are in the CPU's
    caches) and never checkpointed (issue 18): `numbers`, for a feature kept in a
    list (an open window's), the same values in array('d') while every one is a
    number (the name is dropped at the first that is not); `counts`, for a
    categorical feature (of the reference, or an open window's list once it holds a
    value that is not a number), the Counter of its list. Scoring reads a view
    instead of the list, whose float and str objects lie scattered in memory by the
    time the window closes (reading them back cost more than taking them in). A
    restored window has no views: scoring then reads its lists, as before."""

    __slots__ = (
        "conf",
        "counts",
        "first",
        "mismatch",
        "n",
        "numbers",
        "open",
        "ready",
        "values",
        "versions",
    )

    def __init__(self) -> None:
        self.n = 0
        self.versions: dict[str, int] = {}
        self.values: dict[str, Acc] = {}
        self.mismatch: dict[str, int] = {}  # strings offered to a numeric feature
        self.conf = array("d")
        self.open = True  # take any feature (no reference yet), else only the reference's
        self.ready = False  # accumulators set up for the model's reference
        self.first: int | None = None  # start of the first window merged into this one
        self.numbers: dict[str, array] = {}  # a list's values as numbers (see above)
        self.counts: dict[str, Counter[Any]] = {}  # a categorical list's values, counted

    def merge(self, other: DriftWindow) -> None:
        # the views first, from both windows' values as they were
        numbers: dict[str, array] = {}
        counts: dict[str, Counter[Any]] = {}
        for name in {*self.values, *other.values}:
            mine, theirs = _numeric_view(self, name), _numeric_view(other, name)
            if mine is not None and theirs is not None:
                numbers[name] = array("d", mine)
                numbers[name].extend(theirs)
            mine_c, theirs_c = _count_view(self, name), _count_view(other, name)
            if mine_c is not None and theirs_c is not None:
                counts[name] = Counter(mine_c)
                counts[name].update(theirs_c)
        self.n += other.n
        for v, c in other.versions.items():
            self.versions[v] = self.versions.get(v, 0) + c
        for name, vals in other.values.items():
            mine = self.values.get(name)
            if mine is None:
                self.values[name] = vals
            elif type(mine) is type(vals):
                mine.extend(vals)  # type: ignore[arg-type]
            else:
                self.values[name] = [*mine, *vals]
        for name, c in other.mismatch.items():
            self.mismatch[name] = self.mismatch.get(name, 0) + c
        self.conf.extend(other.conf)
        self.numbers = {n: a for n, a in numbers.items() if self.values[n].__class__ is list}
        self.counts = {n: c for n, c in counts.items() if self.values[n].__class__ is list}

    def state(self) -> WindowState:
        values: dict[str, list[float | str]] = {}
        numeric = []
        for name, acc in self.values.items():
            if isinstance(acc, array):
                values[name] = acc.tolist()
                numeric.append(name)
            else:
                values[name] = acc
        return WindowState(
            n=self.n,
            versions=self.versions,
            values=values,
            numeric=numeric,
            mismatch=self.mismatch,
            conf=self.conf.tolist(),
            open=self.open,
            ready=self.ready,
            first=self.first,
        )

    @classmethod
    def of(cls, state: WindowState) -> DriftWindow:
        w = cls()
        w.n, w.versions, w.mismatch = state.n, state.versions, state.mismatch
        numeric = set(state.numeric)
        w.values = {
            name: array("d", vals) if name in numeric else vals  # type: ignore[arg-type]
            for name, vals in state.values.items()
        }
        w.conf = array("d", state.conf)
        w.open, w.ready, w.first = state.open, state.ready, state.first
        return w


# A list whose Counter view holds more distinct values is no category (a numeric
# feature with a stray string): the view is dropped, scoring counts the list if need be.
MAX_COUNTED = 256


def _views(w: DriftWindow) -> dict[str, array | Counter[Any]]:
    """A window's lists' views that hold as many values as their list."""
    views: dict[str, array | Counter[Any]] = {}
    for name, acc in w.values.items():
        view = w.numbers.get(name)
        if view is not None and len(view) == len(acc):
            views[name] = view
            continue
        counted = w.counts.get(name)
        if counted is not None and counted.total() == len(acc):
            views[name] = counted
    return views


def _numeric_view(w: DriftWindow, name: str) -> array | None:
    """A feature's values that count as numbers, as array('d'), when known without
    reading the list back; None otherwise."""
    acc = w.values.get(name)
    if acc is None:
        return array("d")
    if acc.__class__ is array:
        return acc  # type: ignore[return-value]
    return w.numbers.get(name)


def _count_view(w: DriftWindow, name: str) -> Counter[Any] | None:
    """A feature's values counted, when known without reading the list back."""
    acc = w.values.get(name)
    if acc is None:
        return Counter()
    if acc.__class__ is array:
        return None
    return w.counts.get(name)


class PooledCounts(msgspec.Struct):
    """A scored window's bin counts of one feature, kept for the pooled test."""

    end: int
    counts: list[int]


class DriftState(msgspec.Struct):
    """What a checkpoint keeps (the configured references are configuration)."""

    windows: dict[int, dict[str, WindowState]] = {}  # start -> model_id -> window
    carry: dict[str, WindowState] = {}  # model_id -> small windows awaiting a merge
    learned: dict[str, ReferenceProfile] = {}  # model_id -> the profile its warm-up froze
    warmup: dict[str, WarmupState] = {}  # model_id -> the warm-up in progress
    dropped_windows: int = 0
    # model_id -> feature -> counts of its recent scored windows, oldest first
    recent: dict[str, dict[str, list[PooledCounts]]] = {}


def _window_from_format_1(old: Sequence[Any]) -> dict[str, Any]:
    """A format-1 window: [n, versions, {feature: ["d" | "o", values]}, mismatch,
    confidences, open, ready, first]."""
    n, versions, values, mismatch, conf, is_open, ready, first = old
    return {
        "n": n,
        "versions": versions,
        "values": {name: vals for name, (_, vals) in values.items()},
        "numeric": [name for name, (code, _) in values.items() if code == "d"],
        "mismatch": mismatch,
        "conf": conf,
        "open": is_open,
        "ready": ready,
        "first": first,
    }


def _from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    windows: dict[int, dict[str, Any]] = {}
    for start, model_id, data in old["windows"]:
        windows.setdefault(start, {})[model_id] = _window_from_format_1(data)
    return {
        "windows": windows,
        "carry": {m: _window_from_format_1(d) for m, d in old["carry"].items()},
        "learned": old["learned"],
        "warmup": {
            m: {
                "columns": {
                    "values": b["values"],
                    "confidences": b["confidences"],
                    "rows": b["rows"],
                },
                "versions": b["versions"],
            }
            for m, b in old["warmup"].items()
        },
        "dropped_windows": old["dropped_windows"],
        # a snapshot from before pooling starts it afresh
        "recent": {
            m: {f: [{"end": end, "counts": c} for end, c in hist] for f, hist in feats.items()}
            for m, feats in old.get("recent", {}).items()
        },
    }


CODEC = StateCodec("drift", DriftState, format=2, upgrades={1: _from_format_1})


class _FeatureRef:
    """One reference feature, as numpy arrays ready for scoring."""

    __slots__ = (
        "edges",
        "edges_sorted",
        "index",
        "kind",
        "name",
        "other",
        "props",
        "ref_counts",
        "sample",
    )

    def __init__(self, name: str, profile: Any) -> None:
        self.name = name
        self.kind = profile.kind
        self.ref_counts = np.asarray(profile.counts, dtype=np.float64)
        self.props = self.ref_counts / self.ref_counts.sum()
        self.edges = np.asarray(profile.edges, dtype=np.float64)
        # cut points ascending, without NaN: a sorted window is binned by `bin_sorted`
        self.edges_sorted = bool(np.all(self.edges[1:] >= self.edges[:-1])) and not bool(
            np.isnan(self.edges).any()
        )
        self.sample = np.asarray(profile.sample, dtype=np.float64)  # sorted by construction
        self.index = {c: i for i, c in enumerate(profile.categories)}
        self.other = len(profile.categories)

    def bin_sorted(self, x: np.ndarray) -> np.ndarray:
        """The bin counts of an ascending array of a window's values (as
        `operators.stats.binned_counts`; by the cut points' positions where it can)."""
        if self.edges_sorted:
            return binned_counts_sorted(x, self.edges)
        return binned_counts(x, self.edges)


class _CompiledRef:
    __slots__ = ("features", "numeric", "profile")

    def __init__(self, profile: ReferenceProfile) -> None:
        self.profile = profile
        self.features = [_FeatureRef(n, fp) for n, fp in sorted(profile.features.items())]
        self.numeric = {f.name for f in self.features if f.kind == "numeric"}


DRIFT_WINDOWS_PER_DAY = 86_400_000 / DriftConfig.window_ms  # judgements per model and day

# The default alert rules of the drift monitor's observations (the contract's PSI
# bands), collected by operators.registry into streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    _rule(
        "drift_psi",
        "drift",
        "psi",
        ">=",
        {"warning": 0.1, "critical": 0.2},
        "PSI of {entity} is {value:.3f} (moderate drift from 0.1, significant from 0.2)",
        label="PSI",
        value_format="{:.3f}",
        min_samples=30,
        false_alarm_budget=FALSE_ALARM_BUDGET,
        judgements_per_day=DRIFT_WINDOWS_PER_DAY,
        clear_windows=1,  # one clear five-minute window
        cooldown_s=1800,
    ),
    _rule(
        "confidence_shift",
        "drift",
        "confidence_shift",
        ">",
        {"warning": 0.1},
        "mean confidence of {entity} fell by {value:.3f} against its reference",
        label="fall in mean confidence",
        value_format="{:.3f}",
        min_samples=30,
        false_alarm_budget=FALSE_ALARM_BUDGET,
        judgements_per_day=DRIFT_WINDOWS_PER_DAY,
        clear_windows=1,  # one clear five-minute window
        cooldown_s=1800,
    ),
]


class DriftOperator(Operator):
    sources = ("inference-logs",)
    observes = (("drift", "psi"), ("drift", "confidence_shift"))

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)

    def __init__(
        self,
        config: DriftConfig | None = None,
        references: Mapping[str, ReferenceProfile] | None = None,
    ) -> None:
        super().__init__()
        self.config = config or DriftConfig()
        self.references: dict[str, ReferenceProfile] = {}
        self.compiled: dict[str, _CompiledRef] = {}
        for model_id, profile in (references or {}).items():
            if profile.model_id != model_id:
                raise ValueError(f"reference of {profile.model_id!r} given for {model_id!r}")
            self._set_reference(model_id, profile)
        self.given = frozenset(self.references)  # configuration, not checkpointed
        self.windows: TumblingWindows[DriftWindow] = TumblingWindows(
            self.config.window_ms, DriftWindow
        )
        self.warmup: dict[str, WarmupProfileBuilder] = {}
        self.carry: dict[str, DriftWindow] = {}  # model_id -> small windows awaiting a merge
        self.dropped_windows = 0  # carried groups that never reached min_count
        # model -> feature -> bin counts of recent scored windows, oldest first
        self.recent: dict[str, dict[str, list[PooledCounts]]] = {}

    @classmethod
    def build(cls, config: DriftConfig, context: BuildContext) -> DriftOperator:
        """With the configured reference profiles (models without one warm up)."""
        return cls(config, references=context.references)

    def _set_reference(self, model_id: str, profile: ReferenceProfile) -> None:
        self.references[model_id] = profile
        self.compiled[model_id] = _CompiledRef(profile)

    # -- input ---------------------------------------------------------------

    def _prepare(self, w: DriftWindow, model_id: str) -> None:
        w.ready = True
        ref = self.compiled.get(model_id)
        if ref is None:
            return
        w.open = False
        numeric = ref.numeric
        for f in ref.features:
            if f.name not in w.values:
                if f.name in numeric:
                    w.values[f.name] = array("d")
                else:
                    w.values[f.name] = []
                    w.counts[f.name] = Counter()

    def feed(self, source: str, events: Sequence[InferenceLog]) -> None:
        size = self.config.window_ms
        at = self.windows.at
        for (model_id, start), group in _by_window(events, size):
            w = at(model_id, start)
            if not w.ready:
                self._prepare(w, model_id)
            _take(w, group)

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        for start, model_id, w in self.windows.pop_ending_until(watermark):
            self._close(start, model_id, w)
        # A carried group no later window can join any more is dropped.
        horizon = self.config.max_merge_windows * self.config.window_ms
        for model_id in sorted(self.carry):
            first = self.carry[model_id].first
            assert first is not None
            if first + horizon <= watermark:
                del self.carry[model_id]
                self.dropped_windows += 1

    def _close(self, start: int, model_id: str, w: DriftWindow) -> None:
        cfg = self.config
        end = start + cfg.window_ms
        if model_id not in self.compiled:
            self._warm_up(model_id, w)
            return
        first = start
        carried = self.carry.pop(model_id, None)
        if carried is not None:
            assert carried.first is not None
            if start < carried.first + cfg.max_merge_windows * cfg.window_ms:
                carried.merge(w)
                w, first = carried, carried.first
            else:
                self.dropped_windows += 1
        if w.n < cfg.min_count:
            if end - first < cfg.max_merge_windows * cfg.window_ms:
                w.first = first
                self.carry[model_id] = w
            else:
                self.dropped_windows += 1
            return
        self._score(first, end, model_id, w)

    def _warm_up(self, model_id: str, w: DriftWindow) -> None:
        cfg = self.config
        if cfg.warmup_events is None:
            return
        builder = self.warmup.get(model_id)
        if builder is None:
            builder = self.warmup[model_id] = self._builder(model_id)
        builder.add_window(w.values, w.conf, w.n, w.versions, _views(w))
        if builder.full:
            del self.warmup[model_id]
            self._set_reference(model_id, builder.build())

    def _builder(self, model_id: str) -> WarmupProfileBuilder:
        cfg = self.config
        return WarmupProfileBuilder(
            model_id,
            cfg.warmup_events or 0,
            bins=cfg.bins,
            sample_size=cfg.reference_sample,
            max_categories=cfg.max_categories,
        )

    # -- scoring -------------------------------------------------------------

    def _score(self, start: int, end: int, model_id: str, w: DriftWindow) -> None:
        cfg = self.config
        ref = self.compiled[model_id]
        ref_version = ref.profile.version
        model_version = ",".join(sorted(w.versions))
        window = {"ts": end, "window_start": start, "window_end": end}
        for f in ref.features:
            acc = w.values.get(f.name)
            if not acc:
                continue
            non_numeric = w.mismatch.get(f.name, 0)
            ks = ks_p = chi2 = chi2_p = None
            if f.kind == "numeric":
                view = w.numbers.get(f.name)
                # a view is the list's values only if it holds as many (code that
                # appends to the list alone, e.g. a test's reference feed, leaves it short)
                x = _numbers(acc if view is None or len(view) != len(acc) else view)
                non_numeric += len(acc) - x.size
                if x.size == 0:
                    continue
                x.sort()
                counts = f.bin_sorted(x)
                ks, ks_p = _ks(f.sample, systematic_sample(x, cfg.ks_sample))
            else:
                counts = np.zeros(f.other + 1, dtype=np.int64)
                index, other = f.index, f.other
                counted = w.counts.get(f.name)
                if counted is None or counted.total() != len(acc):
                    counted = Counter(acc)
                for value, c in counted.items():
                    key = value if isinstance(value, str) else category_key(value)
                    counts[index.get(key, other)] += c
                chi2, chi2_p = chi_square(f.props, counts, cfg.psi_eps)
            n = int(counts.sum())
            p = psi(f.ref_counts, counts, cfg.psi_eps)
            psi_p, df = psi_test(f.ref_counts, counts)
            pooled_p, pooled_n = self._pooled(model_id, f, end, counts)
            js = js_divergence(f.ref_counts, counts)
            self._out.add_row(
                DriftScoreRow(
                    window_start=start,
                    window_end=end,
                    model_id=model_id,
                    model_version=model_version,
                    feature=f.name,
                    psi=p,
                    ks=ks,
                    ks_pvalue=ks_p,
                    chi2=chi2,
                    chi2_pvalue=chi2_p,
                    js=js,
                    n=n,
                    reference_version=ref_version,
                )
            )
            details = {
                "feature": f.name,
                "model_version": model_version,
                "reference_version": ref_version,
                "js": js,
                "ks": ks,
                "ks_pvalue": ks_p,
                "chi2": chi2,
                "chi2_pvalue": chi2_p,
                "psi_pvalue": psi_p,
                "pooled_pvalue": pooled_p,
                "pooled_n": pooled_n,
                "psi_critical": psi_critical(n, float(f.ref_counts.sum()), df + 1, cfg.psi_alpha)
                if df
                else None,
            }
            if non_numeric:
                details["non_numeric"] = non_numeric
            self._out.observations.append(
                Observation(
                    "drift",
                    f"{model_id}/{f.name}",
                    "psi",
                    p,
                    n=n,
                    details=details,
                    # Bonferroni over the window's test and the pooled one
                    p_value=psi_p if pooled_p is None else min(1.0, 2.0 * min(psi_p, pooled_p)),
                    **window,
                )
            )
        self._confidence(model_id, w, model_version, window)

    def _pooled(
        self, model_id: str, f: _FeatureRef, end: int, counts: np.ndarray
    ) -> tuple[float | None, int]:
        """The PSI test of this window pooled with the feature's scored windows of the
        last `pool_windows` windows; (None, n) when there are none to pool with."""
        cfg = self.config
        history = self.recent.setdefault(model_id, {}).setdefault(f.name, [])
        horizon = end - cfg.pool_windows * cfg.window_ms
        history[:] = [h for h in history if h.end > horizon]
        pooled = counts.astype(np.int64)
        for past in history:
            pooled = pooled + np.asarray(past.counts, dtype=np.int64)
        if cfg.pool_windows > 1:
            history.append(PooledCounts(end, counts.astype(np.int64).tolist()))
        n = int(pooled.sum())
        if len(history) < 2:
            return None, n
        return psi_test(f.ref_counts, pooled)[0], n

    def _confidence(
        self, model_id: str, w: DriftWindow, model_version: str, window: dict[str, int]
    ) -> None:
        profile = self.compiled[model_id].profile
        k = len(w.conf)
        if profile.confidence_mean is None or k == 0:
            return
        conf = np.sort(np.frombuffer(w.conf, dtype=np.float64))
        mean = fsum(conf) / k
        shift = profile.confidence_mean - mean
        p_value = None
        if k > 1 and profile.confidence_count > 1 and profile.confidence_std is not None:
            std = float(np.std(conf, ddof=1))
            if std > 0 or profile.confidence_std > 0:
                from scipy.stats import ttest_ind_from_stats

                res = ttest_ind_from_stats(
                    profile.confidence_mean,
                    profile.confidence_std,
                    profile.confidence_count,
                    mean,
                    std,
                    k,
                    equal_var=False,
                    alternative="greater",
                )
                if math.isfinite(res.pvalue):
                    p_value = float(res.pvalue)
        low = int(np.count_nonzero(conf < self.config.low_confidence))
        self._out.observations.append(
            Observation(
                "drift",
                model_id,
                "confidence_shift",
                shift,
                n=k,
                details={
                    "model_version": model_version,
                    "reference_version": profile.version,
                    "reference_mean": profile.confidence_mean,
                    "window_mean": mean,
                    "low_confidence_ratio": low / k,
                },
                p_value=p_value,
                **window,
            )
        )

    def late_window(self, source: str, event: Any) -> int:
        return window_start(event.ts, self.config.window_ms)

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return CODEC.dump(
            DriftState(
                windows={
                    start: {m: w.state() for m, w in bucket.items()}
                    for start, bucket in self.windows.state().items()
                },
                carry={m: w.state() for m, w in self.carry.items()},
                learned={m: p for m, p in self.references.items() if m not in self.given},
                warmup={m: b.state for m, b in self.warmup.items()},
                dropped_windows=self.dropped_windows,
                recent=self.recent,
            )
        )

    def restore(self, state: dict[str, Any]) -> None:
        typed = CODEC.load(state)
        for model_id in [m for m in self.references if m not in self.given]:
            del self.references[model_id]
            del self.compiled[model_id]
        for model_id, profile in typed.learned.items():
            self._set_reference(model_id, profile)
        self.windows.load(
            {
                start: {m: DriftWindow.of(w) for m, w in bucket.items()}
                for start, bucket in typed.windows.items()
            }
        )
        self.carry = {m: DriftWindow.of(w) for m, w in typed.carry.items()}
        self.warmup = {}
        for model_id, warmup in typed.warmup.items():
            builder = self.warmup[model_id] = self._builder(model_id)
            builder.state = warmup
        self.dropped_windows = typed.dropped_windows
        self.recent = typed.recent


def _ks(reference: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    """`operators.stats.ks_2samp_from_sorted` of two ascending arrays, its D by one
    merge of the two (`operators.drift_kernel.ks_statistic`) where it can."""
    d = ks_statistic(kernel_array(reference), kernel_array(sample))
    if d != d:  # a NaN, an unsorted or empty sample: the reference says what it is
        return ks_2samp_from_sorted(reference, sample)
    return d, ks_2samp_pvalue(d, reference.size, sample.size)


_TS = attrgetter("ts")
_MODEL = attrgetter("model_id")
_VERSION = attrgetter("model_version")
_FEATURES = attrgetter("features")
_PREDICTION = attrgetter("prediction")
_CONFIDENCE = attrgetter("confidence")


def _by_window(
    events: Sequence[InferenceLog], size: int
) -> Iterable[tuple[tuple[str, int], list[InferenceLog]]]:
    """The events by (model, window start), each group in arrival order (issue 18: the
    operator then takes a group's values feature by feature, `_take`). A poll's events
    mostly fall in one window of each model: then they are grouped by model alone."""
    if not events:
        return []
    times = list(map(_TS, events))
    lo, hi = min(times), max(times)
    groups: dict[Any, list[InferenceLog]] = {}
    if lo - lo % size == hi - hi % size:
        start = lo - lo % size
        for e, model_id in zip(events, map(_MODEL, events), strict=True):
            group = groups.get(model_id)
            if group is None:
                groups[model_id] = [e]
            else:
                group.append(e)
        return [((model_id, start), group) for model_id, group in groups.items()]
    for e, ts in zip(events, times, strict=True):
        here = (e.model_id, ts - ts % size)
        group = groups.get(here)
        if group is None:
            groups[here] = [e]
        else:
            group.append(e)
    return groups.items()


def _take(w: DriftWindow, events: list[InferenceLog]) -> None:
    """A window takes a group of its events, feature by feature: the group's values of
    a feature as a list, copied into a numeric feature's array('d') in C (`fromlist`:
    all or, on a string, nothing; then value by value, the strings left out and
    counted). A window of a model with a reference takes the reference's features (and
    ignores the others); an open one (no reference yet) every feature, each created
    in the order first met. Every accumulator gets the values in the events' order, as
    one by one (`_take_each`, where the group is irregular), except where a features
    mapping holds the name `__prediction__` itself: that accumulator then has the
    group's such feature values before its predictions (the same multiset, which is
    all scoring reads)."""
    features = list(map(_FEATURES, events))
    values = w.values
    total = sum(map(len, features))  # feature values in the group
    if w.open:
        # every event with the same feature names: then the columns are the names of
        # the first (creating the missing ones in that order, as one by one would)
        same = _same_names(features, total)
        if same is None or PREDICTION in same:
            _take_each(w, events)
            return
        columns = list(same.items())
        numbers = w.numbers
        for name, _ in columns:
            if name not in values:
                values[name] = []
                numbers[name] = array("d")
        if PREDICTION not in values:
            values[PREDICTION] = []
            numbers[PREDICTION] = array("d")
    elif (same := _same_names(features, total)) is not None:
        columns = [(name, same.get(name, [])) for name in values if name != PREDICTION]
        if PREDICTION in same and PREDICTION in values:  # a feature named __prediction__
            columns.append((PREDICTION, same[PREDICTION]))
    else:
        columns = []
        taken = 0  # feature values the columns hold
        for name in values:
            if name == PREDICTION:
                continue
            try:
                column = list(map(itemgetter(name), features))
            except KeyError:  # a feature missing from some events
                column = [f[name] for f in features if name in f]
            columns.append((name, column))
            taken += len(column)
        if PREDICTION in values and taken != total:
            # features the reference does not know, maybe one named __prediction__,
            # whose values go to the prediction's accumulator (before the predictions)
            named = [f[PREDICTION] for f in features if PREDICTION in f]
            if named:
                columns.append((PREDICTION, named))
    if PREDICTION in values:
        columns.append((PREDICTION, list(map(_PREDICTION, events))))
    w.n += len(events)
    versions = w.versions
    names = list(map(_VERSION, events))
    v = names[0]
    if names.count(v) == len(names):
        versions[v] = versions.get(v, 0) + len(names)
    else:
        for v, c in Counter(names).items():
            versions[v] = versions.get(v, 0) + c
    for name, column in columns:
        acc = values[name]
        if not column:
            continue
        if acc.__class__ is array:
            try:
                acc.fromlist(column)  # type: ignore[union-attr]
            except TypeError:  # a string offered to a numeric feature
                append = acc.append
                for x in column:
                    try:
                        append(x)
                    except TypeError:
                        w.mismatch[name] = w.mismatch.get(name, 0) + 1
        else:
            acc.extend(column)
            view = w.numbers.get(name)
            if view is not None:
                try:
                    view.fromlist(column)  # all or nothing
                    continue
                except Exception:  # not a number (kept in the list): counted instead
                    del w.numbers[name]
                    _count(w, name, acc, acc)  # type: ignore[arg-type]
            elif name in w.counts:
                _count(w, name, w.counts[name], column)
    conf = list(map(_CONFIDENCE, events))
    if None in conf:
        conf = [c for c in conf if c is not None]
    w.conf.fromlist(conf)


def _same_names(features: list[dict[str, Any]], total: int) -> dict[str, list[Any]] | None:
    """Each feature's column, by name in the order of the first event's mapping, when
    every event's mapping has the same names (`total` values in all): the usual case,
    one producer writing the same JSON. One lookup pass in C per name (`itemgetter`: a
    mapping without the name raises KeyError), instead of a lookup per value in
    Python; with `total` equal to names x events and every name in every mapping, each
    mapping has exactly those names (issue 18, session 10: the names need not be in
    the same order, and are not compared one by one). A pass per name, not one pass
    of all names and a transposition (`zip(*rows)`): no tuple per event, 7 % less
    (session 13, 184 against 198 ns per event). None when the mappings differ."""
    first = features[0]
    if total != len(first) * len(features):
        return None
    try:
        return {name: list(map(itemgetter(name), features)) for name in first}
    except KeyError:
        return None


def _take_each(w: DriftWindow, events: list[InferenceLog]) -> None:
    """An open window takes its events one by one: every feature, each in the order
    first met (where the events' feature names differ)."""
    versions = w.versions
    for e in events:
        w.n += 1
        v = e.model_version
        versions[v] = versions.get(v, 0) + 1
        for name, x in e.features.items():
            _append(w, name, x)
        _append(w, PREDICTION, e.prediction)
        c = e.confidence
        if c is not None:
            w.conf.append(c)


def _append(w: DriftWindow, name: str, x: Any) -> None:
    """An open window takes one value of a feature (and of its views)."""
    acc = w.values.get(name)
    if acc is None:
        acc = w.values[name] = []
        w.numbers[name] = array("d")
    try:
        acc.append(x)
    except TypeError:  # a string offered to a numeric feature (a restored array)
        w.mismatch[name] = w.mismatch.get(name, 0) + 1
        return
    view = w.numbers.get(name)
    if view is not None:
        try:
            view.append(x)
            return
        except Exception:  # not a number (kept in the list): counted instead
            del w.numbers[name]
            _count(w, name, acc, acc)
    elif name in w.counts:
        _count(w, name, w.counts[name], (x,))


def _count(w: DriftWindow, name: str, counted: Counter[Any] | list[Any], more: Any) -> None:
    """The Counter view of a list (`counted`: the view, or the list to count) takes
    `more`; dropped where it is no category (too many values, an unhashable one)."""
    try:
        if counted.__class__ is list:
            counted = w.counts[name] = Counter(more)
        else:
            counted.update(more)  # type: ignore[union-attr]
    except TypeError:  # an unhashable value: scoring decides what to do with it
        w.counts.pop(name, None)
        return
    if len(counted) > MAX_COUNTED:
        del w.counts[name]


def _numbers(acc: Acc) -> np.ndarray:
    """The numbers of an accumulator as a float64 array (a copy: callers sort it)."""
    if isinstance(acc, array):
        return np.frombuffer(acc, dtype=np.float64).copy()
    # a list (a window opened before its model's reference existed): array('d')
    # converts it in C and refuses any string (numpy would parse "1.5" as a number),
    # so the scan for strings runs only when there is one
    try:
        return np.frombuffer(array("d", acc), dtype=np.float64)
    except TypeError:
        return np.array([v for v in acc if not isinstance(v, str)], dtype=np.float64)


__all__ = [
    "DEFAULT_RULES",
    "DRIFT_WINDOWS_PER_DAY",
    "DriftConfig",
    "DriftOperator",
    "DriftState",
    "DriftWindow",
    "PooledCounts",
    "WindowState",
]
