"""Reference profiles: what a model's inputs and outputs looked like when it was good.

A profile holds, per feature and for the prediction (feature name
`__prediction__`):

- numeric: the interior quantile cut points of the reference (10 bins by
  default, `operators.stats.quantile_edges`), the reference count in each bin,
  and a bounded sorted sample (evenly spaced order statistics, at most 5000)
  for the Kolmogorov-Smirnov test;
- categorical: the most frequent categories (at most `max_categories`, ties by
  name) with their counts, and a last count for "other" (every rarer
  category; at scoring time, every category the reference never saw).

A feature is numeric when every reference value is a number; one string makes
it categorical, its numbers then named by `category_key` (1.0 -> "1").
Missing values (None, NaN) are skipped. Everything built here depends on the
multiset of values only, never on row order, so a profile is reproducible.

Where profiles come from:

- `build_profile(rows, model_id, version)`: from a reference data set (the
  `streamwatch reference build` command reads CSV/Parquet into row dicts);
- `WarmupProfileBuilder`: when no reference file is given, the drift operator
  feeds it the model's first closed windows until they hold `target` events
  (default 1000) and freezes the profile from them (version "warmup:<model
  versions>"). Those windows are the reference and are not scored.

Profiles serialise to JSON (`to_json` / `from_json`) and to plain data
(`to_builtins` / `from_builtins`); in checkpoints a profile, and a warm-up's
`WarmupState`, are typed fields of the drift operator's state (`operators.state`).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from operators.stats import binned_counts, quantile_edges, systematic_sample

PREDICTION = "__prediction__"

# Columns of a flat reference row that are not features (an inference-log
# shaped row keeps its features under "features" instead).
NOT_FEATURES = frozenset(
    {"request_id", "ts", "v", "model_id", "model_version", "latency_ms", "status"}
)


def category_key(value: Any) -> str:
    """The category name of a value: strings as they are, numbers without a trailing .0."""
    if isinstance(value, str):
        return str(value)  # a plain str (not e.g. numpy.str_)
    x = float(value)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class FeatureProfile(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: Literal["numeric", "categorical"]
    count: int  # reference values behind the profile
    counts: list[int]  # numeric: per bin, len(edges) + 1; categorical: per category, then "other"
    edges: list[
        float
    ] = []  # numeric: interior cut points, bins (-inf, c1), [c1, c2), .., [ck, inf)
    sample: list[float] = []  # numeric: ascending, at most sample_size order statistics
    categories: list[str] = []  # categorical: the named bins, in order
    mean: float | None = None  # numeric
    std: float | None = None  # numeric, ddof=1

    def __post_init__(self) -> None:
        expected = len(self.edges) + 1 if self.kind == "numeric" else len(self.categories) + 1
        if len(self.counts) != expected:
            raise ValueError(f"{self.kind} profile needs {expected} counts, got {len(self.counts)}")
        if self.kind == "numeric" and (not self.edges or not self.sample):
            raise ValueError("numeric profile needs edges and a sample")
        if sum(self.counts) <= 0:
            raise ValueError("profile counts must have a positive total")


class ReferenceProfile(msgspec.Struct, kw_only=True):
    model_id: str
    version: str
    features: dict[str, FeatureProfile]  # includes PREDICTION when predictions were given
    rows: int = 0
    source: str = "file"  # "file" or "warmup"
    confidence_count: int = 0
    confidence_mean: float | None = None
    confidence_std: float | None = None  # ddof=1

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)

    @classmethod
    def from_json(cls, data: bytes | str) -> ReferenceProfile:
        return msgspec.json.decode(data, type=cls)

    def to_builtins(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    @classmethod
    def from_builtins(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        return msgspec.convert(data, cls)


def profile_feature(
    values: Sequence[Any],
    *,
    bins: int = 10,
    sample_size: int = 5000,
    max_categories: int = 50,
    view: array | Counter[Any] | None = None,
) -> FeatureProfile | None:
    """The profile of one feature's reference values (None when all are missing).

    `view`: the same values already converted, if known (a warm-up's, kept as its
    windows came in: `WarmupProfileBuilder`): array('d') of them all when every one
    is a number, or their Counter; used only when it holds as many values."""
    # Fast paths (issue 18: a warm-up profiles ~1000+ values per feature; the per-value
    # Python of the general path below was a third of a model's first scoring). Both
    # give exactly what the general path gives, and defer to it on any doubt.
    x: np.ndarray | None = None
    raw: Counter[Any] | None = None
    if view.__class__ is array and len(view) == len(values):  # type: ignore[arg-type]
        x = np.frombuffer(view, dtype=np.float64)  # what _all_numbers converts
        if np.isnan(x).any():
            x = None  # missing values: as _all_numbers
    elif (
        view.__class__ is Counter
        and view.total() == len(values)  # type: ignore[union-attr]
        and str in {v.__class__ for v in view}  # type: ignore[union-attr]
    ):
        raw = view  # type: ignore[assignment]  # a str among them: not all numbers
    else:
        x = _all_numbers(values)
    if x is not None:
        return _numeric_profile(np.sort(x), bins, sample_size) if x.size else None
    counter = _category_counts(values, raw)
    if counter is None:
        present = [v for v in values if not _is_missing(v)]
        if not present:
            return None
        if not any(isinstance(v, str) for v in present):
            x = np.sort(np.asarray(present, dtype=np.float64))
            return _numeric_profile(x, bins, sample_size)
        counter = Counter(category_key(v) for v in present)
    return _categorical_profile(counter, max_categories)


def _numeric_profile(x: np.ndarray, bins: int, sample_size: int) -> FeatureProfile:
    """The numeric profile of an ascending float64 array of at least one value."""
    edges = quantile_edges(x, bins)
    return FeatureProfile(
        kind="numeric",
        count=int(x.size),
        edges=edges.tolist(),
        counts=binned_counts(x, edges).tolist(),
        sample=systematic_sample(x, sample_size).tolist(),
        mean=float(np.mean(x)),
        std=float(np.std(x, ddof=1)) if x.size > 1 else 0.0,
    )


def _all_numbers(values: Sequence[Any]) -> np.ndarray | None:
    """`values` as float64 when every one converts to a number and none is NaN, else
    None. array('d') converts in C with float()'s rules, as numpy's asarray does, and
    refuses strings and None; with no None and no NaN nothing is missing, so the
    general path's `present` is every value and converts to the same array."""
    try:
        x = np.frombuffer(array("d", values), dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if np.isnan(x).any():
        return None  # missing values: the general path drops them
    return x


def _category_counts(values: Sequence[Any], raw: Counter[Any] | None = None) -> Counter[str] | None:
    """The category counts of `values` when at least one is a str, no value is missing
    and all are str, int or float; counted per distinct value first (in C; `raw`: that
    Counter, if known), then named (`category_key` maps equal values to one name, so
    the sums are the general path's). None when the general path must decide."""
    if raw is None:
        try:
            raw = Counter(values)
        except TypeError:  # an unhashable value
            return None
    kinds = {v.__class__ for v in raw}
    if str not in kinds or not kinds <= {str, int, float}:
        return None
    counter: Counter[str] = Counter()
    for v, c in raw.items():
        if v.__class__ is float and math.isnan(v):
            return None
        counter[v if v.__class__ is str else category_key(v)] += c
    return counter


def _categorical_profile(counter: Counter[str], max_categories: int) -> FeatureProfile:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ranked[:max_categories]
    other = sum(c for _, c in ranked[max_categories:])
    return FeatureProfile(
        kind="categorical",
        count=sum(counter.values()),
        categories=[k for k, _ in top],
        counts=[c for _, c in top] + [other],
    )


class Columns(msgspec.Struct):
    """Values per feature (and prediction), and confidences, of reference rows.

    A msgspec Struct: a warm-up's columns are checkpointed as they are (values of
    inference logs are numbers or strings; a reference file's rows may hold others,
    but those columns are built into a profile at once, never checkpointed)."""

    values: dict[str, list[float | str]] = {}
    confidences: list[float] = []
    rows: int = 0

    def add(self, features: Mapping[str, Any], prediction: Any, confidence: Any) -> None:
        self.rows += 1
        values = self.values
        for name, value in features.items():
            values.setdefault(name, []).append(value)
        if prediction is not None:
            values.setdefault(PREDICTION, []).append(prediction)
        if not _is_missing(confidence):
            self.confidences.append(float(confidence))

    def build(
        self,
        model_id: str,
        version: str,
        source: str,
        bins: int,
        sample_size: int,
        max_categories: int,
        views: Mapping[str, array | Counter[Any]] | None = None,
    ) -> ReferenceProfile:
        """`views`: per feature, its values already converted, if known (profile_feature)."""
        features = {}
        views = views or {}
        for name in sorted(self.values):
            fp = profile_feature(
                self.values[name],
                bins=bins,
                sample_size=sample_size,
                max_categories=max_categories,
                view=views.get(name),
            )
            if fp is not None:
                features[name] = fp
        if not features:
            raise ValueError(f"no feature values to build a reference profile of {model_id}")
        conf = np.sort(np.asarray(self.confidences, dtype=np.float64))
        return ReferenceProfile(
            model_id=model_id,
            version=version,
            features=features,
            rows=self.rows,
            source=source,
            confidence_count=int(conf.size),
            confidence_mean=math.fsum(conf.tolist()) / conf.size if conf.size else None,
            confidence_std=float(np.std(conf, ddof=1)) if conf.size > 1 else None,
        )


def build_profile(
    rows: Iterable[Mapping[str, Any]],
    model_id: str,
    version: str,
    *,
    bins: int = 10,
    sample_size: int = 5000,
    max_categories: int = 50,
    prediction_key: str = "prediction",
    confidence_key: str = "confidence",
) -> ReferenceProfile:
    """A reference profile from rows of a reference data set.

    A row is either inference-log shaped ({"features": {...}, "prediction":
    ..., "confidence": ...}) or flat, one column per feature: then every
    column except `prediction_key`, `confidence_key` and the log's metadata
    (NOT_FEATURES) is a feature. The prediction becomes feature
    "__prediction__".
    """
    cols = Columns()
    for row in rows:
        feats = row.get("features")
        if isinstance(feats, Mapping):
            features = feats
        else:
            skip = {prediction_key, confidence_key}
            features = {k: v for k, v in row.items() if k not in NOT_FEATURES and k not in skip}
        cols.add(features, row.get(prediction_key), row.get(confidence_key))
    return cols.build(model_id, version, "file", bins, sample_size, max_categories)


class WarmupState(msgspec.Struct):
    """What a warm-up has absorbed: its columns and the model versions seen (with
    their events). The builder's checkpointed state; its settings are configuration."""

    columns: Columns = msgspec.field(default_factory=Columns)
    versions: dict[str, int] = {}


class WarmupProfileBuilder:
    """Accumulates a model's first `target` events, then freezes a reference profile.

    `add` takes one event and ignores events once `full`. `add_window` takes a
    whole closed window (column lists, as the drift operator keeps them) and
    is what the operator uses: windows are absorbed whole, in event-time
    order, until at least `target` events are held, so the reference never
    depends on arrival order inside a window. The profile's version is
    "warmup:" + the model versions seen, joined by "+".
    """

    def __init__(
        self,
        model_id: str,
        target: int = 1000,
        *,
        bins: int = 10,
        sample_size: int = 5000,
        max_categories: int = 50,
    ) -> None:
        self.model_id = model_id
        self.target = target
        self.bins = bins
        self.sample_size = sample_size
        self.max_categories = max_categories
        self.state = WarmupState()
        # per feature, its columns' values already converted (array('d') or Counter), from
        # windows that came with them (`add_window`); derived, not checkpointed: a
        # restored builder has none, and `build` converts the lists as before
        self.views: dict[str, array | Counter[Any]] = {}

    @property
    def count(self) -> int:
        return self.state.columns.rows

    @property
    def full(self) -> bool:
        return self.state.columns.rows >= self.target

    def add(
        self,
        features: Mapping[str, Any],
        prediction: Any,
        confidence: float | None = None,
        model_version: str = "",
    ) -> bool:
        """Add one event; False (and nothing added) once full."""
        if self.full:
            return False
        self.state.columns.add(features, prediction, confidence)
        versions = self.state.versions
        versions[model_version] = versions.get(model_version, 0) + 1
        return True

    def add_window(
        self,
        columns: Mapping[str, Iterable[Any]],
        confidences: Iterable[float],
        events: int,
        versions: Mapping[str, int],
        views: Mapping[str, array | Counter[Any]] | None = None,
    ) -> None:
        """Add a closed window: values per feature, confidences, event count, versions;
        `views`: per feature, the window's values already converted, where known."""
        cols = self.state.columns
        views = views or {}
        for name, values in columns.items():
            column = cols.values.setdefault(name, [])
            view, mine = views.get(name), self.views.get(name)
            if not column and view is not None:
                self.views[name] = array("d", view) if view.__class__ is array else Counter(view)
            elif isinstance(mine, array) and isinstance(view, array):
                mine.extend(view)
            elif isinstance(mine, Counter) and isinstance(view, Counter):
                mine.update(view)
            else:
                self.views.pop(name, None)
            column.extend(values)
        cols.confidences.extend(confidences)
        cols.rows += events
        mine = self.state.versions
        for v, c in versions.items():
            mine[v] = mine.get(v, 0) + c

    def build(self) -> ReferenceProfile:
        version = "warmup:" + "+".join(sorted(self.state.versions))
        return self.state.columns.build(
            self.model_id,
            version,
            "warmup",
            self.bins,
            self.sample_size,
            self.max_categories,
            self.views,
        )


__all__ = [
    "PREDICTION",
    "Columns",
    "FeatureProfile",
    "ReferenceProfile",
    "WarmupProfileBuilder",
    "WarmupState",
    "build_profile",
    "category_key",
    "profile_feature",
]
