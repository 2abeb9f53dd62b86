"""Model quality from delayed labels: inference logs joined with labels, per window.

Semantics (the public contract's defaults, all configurable):

- A window is [start, start + window_ms) (default 5 min) per (model_id,
  model_version), by the prediction's event time. Inference logs with
  `status = "error"` are not predictions and are left out.
- A label joins the inference log with the same `request_id` (and the same
  `model_id`) when 0 <= label.ts - prediction.ts <= label delay (default
  3,600 s, `label_delay_by_model` per model, up to days). Several labels of one
  prediction count once (`duplicate_labels`): the one with the earliest `ts`
  (then the smallest value) is kept, so the arrival order does not matter.
  A second inference log with a known `request_id` counts as a
  `duplicate_predictions` of the first window and is not used.
- Any other label is an orphan (`orphan_labels`, in the window of the label's
  own time, model_version ""): its prediction was never seen, came after it,
  or it came later than the label delay. Orphans are counted, never dropped.
- When the watermark reaches a window's end, a provisional row (version 1) is
  emitted: for a classifier whose reference has calibrated its confidences,
  the CBPE estimate of the accuracy (`estimated = 1`,
  `operators.quality_calibration`), else the metrics of the labels joined so
  far (`estimated = 0`). When it reaches end + label delay, no label can still
  join: the final row (version 2, `estimated = 0`, `final = 1`) replaces it
  (one ReplacingMergeTree identity: model_id, model_version, window_start;
  the estimate stays in `estimated_accuracy` for comparison), the window's
  predictions are forgotten and its metrics are judged
  (`operators.quality_judge`).
- Task: a model listed in `tasks` is a "classification" or "regression" model;
  otherwise a window reads as classification when a label or prediction is a
  string, or every label is 0/1 and every prediction a score in [0, 1]
  (predicted class: score >= `threshold`); else as regression.

Memory: per pending prediction the join keeps its request id, time,
prediction, confidence, and (once joined) label, label time and weight —
nothing of its features (docs/monitors/quality.md has the measured bytes).
Every decision depends on event data and the watermark alone, so any arrival
order within the allowed lateness gives the same final rows.

State (typed, `operators.state`, format 2, `QualityState`): the open windows by
start then (model_id, model_version), each a `QualityWindow` Struct of parallel
lists; the labels waiting for their prediction; the references. The request-id
index and the pending labels' heap are rebuilt from them on restore. Format 1
(this module's own earlier SNAPSHOT_FORMAT 1: a "format" key, windows as a list,
"\x1f"-joined keys) is upgraded on restore.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import orjson

from operators.base import Observation, Operator
from operators.quality_judge import QualityReference, accuracy_drop, mae_increase
from operators.quality_metrics import (
    accuracy,
    brier,
    class_report,
    ece,
    log_loss,
    regression_report,
    roc_auc,
)
from operators.rules import rule_spec as _rule
from operators.sequential import bonferroni_alpha, windows_per_1000_entity_days
from operators.state import StateCodec, StateFormatError
from operators.watermark import NO_WATERMARK
from operators.windows import TumblingWindows, window_start
from schemas.events import InferenceLog, LabelEvent
from schemas.rows import QualityWindowRow

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class QualityConfig:
    window_ms: int = 300_000
    label_delay_ms: int = 3_600_000
    # per model_id, overrides label_delay_ms (e.g. a model whose truth takes days)
    label_delay_by_model: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)  # model_id -> classification|regression
    threshold: float = 0.5  # a score at or above it predicts class "1"
    reference_labelled: int = 500  # labelled predictions forming a version's reference
    ece_bins: int = 10
    # expected false `quality` alerts on a stable model, per 1,000 model-version-days:
    # sets the per-window significance level of the degradation rules (Bonferroni)
    false_alarms_per_1000_model_days: float = 1.0

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.label_delay_ms < 0:
            raise ValueError("window_ms must be > 0 and label_delay_ms >= 0")
        if any(v < 0 for v in self.label_delay_by_model.values()):
            raise ValueError("label_delay_by_model: delays must be >= 0")
        bad = {m: t for m, t in self.tasks.items() if t not in TASKS}
        if bad:
            raise ValueError(f"tasks: {bad} must be one of {TASKS}")
        if not 0 < self.threshold < 1 or self.reference_labelled < 1 or self.ece_bins < 1:
            raise ValueError("need 0 < threshold < 1, reference_labelled >= 1, ece_bins >= 1")
        if self.false_alarms_per_1000_model_days <= 0:
            raise ValueError("false_alarms_per_1000_model_days must be > 0")

    def delay_of(self, model_id: str) -> int:
        return self.label_delay_by_model.get(model_id, self.label_delay_ms)

    @property
    def max_delay_ms(self) -> int:
        return max([self.label_delay_ms, *self.label_delay_by_model.values()])

    @property
    def min_delay_ms(self) -> int:
        return min([self.label_delay_ms, *self.label_delay_by_model.values()])

    @property
    def window_alpha(self) -> float:
        """Per-window significance level of the degradation tests (one test a window).

        >>> f"{QualityConfig().window_alpha:.3g}"
        '3.47e-06'
        """
        tests = windows_per_1000_entity_days(self.window_ms)
        return bonferroni_alpha(self.false_alarms_per_1000_model_days, tests)


#: a model version: (model_id, model_version); model_version "" for a model's orphans
Version = tuple[str, str]


class QualityWindow(msgspec.Struct):
    """The predictions of one (model, version, window), as parallel lists, and counts."""

    key: Version = ("", "")  # set when it is created
    ids: list[str] = []  # request ids, in arrival order
    ts: list[int] = []
    pred: list[float | str] = []
    conf: list[float | None] = []
    label: list[float | str | None] = []
    label_ts: list[int] = []  # 0 while unlabelled
    weight: list[float] = []
    orphans: int = 0
    dup_labels: int = msgspec.field(default=0, name="duplicate_labels")
    dup_preds: int = msgspec.field(default=0, name="duplicate_predictions")


class PendingLabel(msgspec.Struct, array_like=True):
    """A label waiting for its prediction (compact: one array per label)."""

    ts: int
    model_id: str
    label: float | str
    weight: float


class QualityState(msgspec.Struct):
    """What a checkpoint keeps (the request-id index and the heap are rebuilt from it)."""

    windows: dict[int, dict[Version, QualityWindow]] = {}  # start -> version -> window
    # labels whose prediction has not been seen: request_id -> {seq: label}
    pending: dict[str, dict[int, PendingLabel]] = {}
    seq: int = 0
    provisional_until: int = NO_WATERMARK
    references: dict[Version, QualityReference] = {}


def _version(key: str) -> Version:
    model, _, version = key.partition("\x1f")
    return model, version


def _from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (SNAPSHOT_FORMAT 1 of before): {"format": 1, windows: [{start, key
    "model\x1fversion", ids, ...}], pending: [[request_id, seq, ts, model_id, label,
    weight]], seq, provisional_until, references: {key: {..., calibration: [x, y]}}}."""
    if not isinstance(old, dict) or old.get("format") != 1:
        found = old.get("format") if isinstance(old, dict) else None
        raise StateFormatError(
            f"quality: a checkpoint in snapshot format {found!r}, which this version cannot "
            "read (it writes format 2 and upgrades format 1); start this monitor afresh: "
            "`streamwatch run --discard-state quality`"
        )
    windows: dict[int, dict[Version, dict[str, Any]]] = {}
    for w in old["windows"]:
        key = _version(w["key"])
        windows.setdefault(w["start"], {})[key] = {
            "key": key,
            **{f: w[f] for f in ("ids", "ts", "pred", "conf", "label", "label_ts", "weight")},
            **{f: w[f] for f in ("orphans", "duplicate_labels", "duplicate_predictions")},
        }
    pending: dict[str, dict[int, list[Any]]] = {}
    for request_id, seq, ts, model_id, label, weight in old["pending"]:
        pending.setdefault(request_id, {})[seq] = [ts, model_id, label, weight]
    references = {}
    for key, ref in old["references"].items():
        cal = ref["calibration"]
        calibration = {"x": cal[0], "y": cal[1]} if cal else None
        references[_version(key)] = {**ref, "calibration": calibration}
    return {
        "windows": windows,
        "pending": pending,
        "seq": old["seq"],
        "provisional_until": old["provisional_until"],
        "references": references,
    }


CODEC = StateCodec("quality", QualityState, format=2, upgrades={1: _from_format_1})


def _order(label: float | str) -> tuple[int, float | str]:
    """A total order on labels (numbers before strings): the duplicate kept."""
    return (1, label) if isinstance(label, str) else (0, float(label))


def class_name(value: float | str) -> str:
    """A label or class prediction as a class name: 1, 1.0 and "1" are the same class.

    >>> class_name(1.0), class_name(2), class_name(0.5), class_name("cat")
    ('1', '2', '0.5', 'cat')
    """
    if isinstance(value, str):
        return value
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(f)


@dataclass
class Labelled:
    """The labelled predictions of one window, ready for the metrics."""

    pred: list[float | str]
    label: list[float | str]
    conf: list[float | None]
    weight: np.ndarray


def window_task(config: QualityConfig, model: str, lab: Labelled) -> tuple[str, bool]:
    """(task, score mode) of a window's labelled predictions (see the module docstring)."""
    score = all(not isinstance(p, str) and 0.0 <= p <= 1.0 for p in lab.pred) and all(
        not isinstance(y, str) and float(y) in (0.0, 1.0) for y in lab.label
    )
    task = config.tasks.get(model)
    if task is None:
        if any(isinstance(v, str) for v in (*lab.pred, *lab.label)) or score:
            task = "classification"
        else:
            task = "regression"
    return task, task == "classification" and score


def cbpe_confidence(pred: float | str, conf: float | None) -> float | None:
    """The confidence CBPE calibrates: the logged `confidence`, else a score's
    max(p, 1 - p); None for a class prediction without one."""
    if conf is not None:
        return conf
    if isinstance(pred, str) or not 0.0 <= pred <= 1.0:
        return None
    return max(pred, 1.0 - pred)


def quality_rules(config: QualityConfig | None = None) -> list[dict[str, Any]]:
    """The quality rules (docs/monitors/quality.md): accuracy or MAE worse than the
    model version's reference by > 5 % (warning) / > 10 % (critical, seed 001),
    gated by the one-sided test's p-value at the per-window level of the monitor's
    false-alarm budget (`QualityConfig.window_alpha`); `min_samples` is a sanity
    floor only. An episode resolves after 3 windows back within the margin. Page-
    Hinkley and ADWIN watch the window accuracy and MAE (kind `change`)."""
    alpha = (config or QualityConfig()).window_alpha
    return [
        _rule(
            "quality_accuracy_drop",
            "quality",
            "accuracy_drop",
            ">",
            {"warning": 0.05, "critical": 0.10},
            "accuracy of {entity} is {accuracy:.1%}, {value:.0%} below its reference of "
            "{reference_accuracy:.1%} ({labelled} labels)",
            label="relative accuracy drop",
            value_format="{:.0%}",
            resolved_note="accuracy {accuracy:.1%} against a reference of {reference_accuracy:.1%}",
            min_samples=30,
            max_p_value=alpha,
            clear_windows=3,
            clear_by_value=True,
            cooldown_s=1800,
        ),
        _rule(
            "quality_mae_increase",
            "quality",
            "mae_increase",
            ">",
            {"warning": 0.05, "critical": 0.10},
            "MAE of {entity} is {mae:.4g}, {value:.0%} above its reference of "
            "{reference_mae:.4g} ({labelled} labels)",
            label="relative MAE increase",
            value_format="{:.0%}",
            resolved_note="MAE {mae:.4g} against a reference of {reference_mae:.4g}",
            min_samples=30,
            max_p_value=alpha,
            clear_windows=3,
            clear_by_value=True,
            cooldown_s=1800,
        ),
    ]


class QualityOperator(Operator):
    sources = ("inference-logs", "labels")
    observes = (
        ("quality", "accuracy"),
        ("quality", "mae"),
        ("quality", "accuracy_drop"),
        ("quality", "mae_increase"),
    )

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return quality_rules(config)

    def __init__(self, config: QualityConfig | None = None) -> None:
        super().__init__()
        self.config = config or QualityConfig()
        self.windows: TumblingWindows[QualityWindow] = TumblingWindows(
            self.config.window_ms, QualityWindow
        )
        # derived from the windows (rebuilt on restore): request_id -> its prediction's
        # window, and its position in the window's lists
        self.by_id: dict[str, QualityWindow] = {}
        self.position: dict[str, int] = {}
        # labels whose prediction has not been seen: request_id -> {seq: label}
        self.pending: dict[str, dict[int, PendingLabel]] = {}
        self.pending_heap: list[tuple[int, int, str]] = []  # (label ts, seq, request_id)
        self.seq = 0
        self.provisional_until = NO_WATERMARK
        self.references: dict[Version, QualityReference] = {}

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[Any]) -> None:
        if source == "inference-logs":
            for event in events:
                if event.status == "ok":
                    self._prediction(event)
        else:
            for event in events:
                self._label(event)

    def _prediction(self, log: InferenceLog) -> None:
        known = self.by_id.get(log.request_id)
        if known is not None:
            known.dup_preds += 1
            return
        key = (log.model_id, log.model_version)
        window = self.windows.at(key, log.ts)
        window.key = key
        self.position[log.request_id] = len(window.ts)
        window.ids.append(log.request_id)
        window.ts.append(log.ts)
        window.pred.append(log.prediction)
        window.conf.append(log.confidence)
        window.label.append(None)
        window.label_ts.append(0)
        window.weight.append(1.0)
        self.by_id[log.request_id] = window
        waiting = self.pending.pop(log.request_id, None)
        if waiting:
            for p in waiting.values():
                self._join(window, log.request_id, p.ts, p.model_id, p.label, p.weight)

    def _label(self, event: LabelEvent) -> None:
        weight = 1.0 if event.weight is None else float(event.weight)
        window = self.by_id.get(event.request_id)
        if window is not None:
            self._join(window, event.request_id, event.ts, event.model_id, event.label, weight)
            return
        # the prediction may still come (out of order): wait until the watermark
        # passes the label, after which it could only come late
        self.seq += 1
        label = PendingLabel(event.ts, event.model_id, event.label, weight)
        self.pending.setdefault(event.request_id, {})[self.seq] = label
        heapq.heappush(self.pending_heap, (event.ts, self.seq, event.request_id))

    def _join(
        self,
        window: QualityWindow,
        request_id: str,
        label_ts: int,
        model: str,
        label: float | str,
        weight: float,
    ) -> None:
        i = self.position[request_id]
        pred_model = window.key[0]
        if model != pred_model or not 0 <= label_ts - window.ts[i] <= self.config.delay_of(model):
            self._orphan(model, label_ts)
            return
        current = window.label[i]
        if current is None:
            window.label[i], window.label_ts[i], window.weight[i] = label, label_ts, weight
            return
        window.dup_labels += 1
        if (label_ts, _order(label)) < (window.label_ts[i], _order(current)):
            window.label[i], window.label_ts[i], window.weight[i] = label, label_ts, weight

    def _orphan(self, model: str, ts: int) -> None:
        window = self.windows.at((model, ""), ts)
        window.key = (model, "")
        window.orphans += 1

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        cfg = self.config
        heap = self.pending_heap
        while heap and heap[0][0] < watermark:
            label_ts, seq, request_id = heapq.heappop(heap)
            waiting = self.pending.get(request_id)
            if waiting is None or seq not in waiting:
                continue  # its prediction arrived meanwhile
            model = waiting.pop(seq).model_id
            if not waiting:
                del self.pending[request_id]
            self._orphan(model, label_ts)

        size = cfg.window_ms
        after = max(self.provisional_until, watermark - cfg.max_delay_ms)
        for start, key, window in list(self.windows.ending_between(after, watermark)):
            end = start + size
            if end <= self.provisional_until:
                continue
            if end + cfg.delay_of(key[0]) > watermark:  # not final in this step
                self._emit(start, key, window, final=False)
        self.provisional_until = max(self.provisional_until, watermark)

        for start, key, window in self._pop_final(watermark):
            self._emit(start, key, window, final=True)
            for request_id in window.ids:
                self.by_id.pop(request_id, None)
                self.position.pop(request_id, None)

    def _pop_final(self, watermark: int) -> list[tuple[int, Version, QualityWindow]]:
        """Remove and return the windows whose label delay has passed, by start then key."""
        cfg = self.config
        w = self.windows
        out = []
        for start in list(w.starts):
            if start + cfg.window_ms + cfg.min_delay_ms > watermark:
                break
            bucket = w.by_start[start]
            for key in sorted(bucket):
                if start + cfg.window_ms + cfg.delay_of(key[0]) <= watermark:
                    out.append((start, key, bucket.pop(key)))
            if not bucket:
                del w.by_start[start]
                w.starts.remove(start)
        return out

    # -- rows and judgement --------------------------------------------------

    def _labelled(self, window: QualityWindow) -> Labelled:
        # in (time, request id) order: sums in the same order whatever the arrival order,
        # so the metrics are equal to the last bit (not only to rounding)
        ids = window.ids
        idx = sorted(
            (i for i, y in enumerate(window.label) if y is not None),
            key=lambda i: (window.ts[i], ids[i]),
        )
        return Labelled(
            pred=[window.pred[i] for i in idx],
            label=[window.label[i] for i in idx],  # type: ignore[misc]
            conf=[window.conf[i] for i in idx],
            weight=np.asarray([window.weight[i] for i in idx], dtype=np.float64),
        )

    def _estimate(self, key: Version, window: QualityWindow) -> float | None:
        ref = self.references.get(key)
        if ref is None or ref.calibration is None or not window.pred:
            return None
        ids = window.ids
        order = sorted(range(len(ids)), key=lambda i: (window.ts[i], ids[i]))
        conf = [cbpe_confidence(window.pred[i], window.conf[i]) for i in order]
        if any(c is None for c in conf):
            return None
        return ref.calibration.expected_accuracy(conf)

    def _emit(self, start: int, key: Version, window: QualityWindow, final: bool) -> None:
        cfg = self.config
        model, version = key
        # the estimate with the calibration as it is now: at a final row, fitted on the
        # reference windows before this one (deterministic, whatever the arrival order)
        estimate = self._estimate(key, window)
        lab = self._labelled(window)
        n = len(window.pred)
        row: dict[str, Any] = {
            "window_start": start,
            "window_end": start + cfg.window_ms,
            "model_id": model,
            "model_version": version,
            "estimated": 0,
            "predictions": n,
            "labelled": len(lab.pred),
            "coverage": len(lab.pred) / n if n else 0.0,
            "orphan_labels": window.orphans,
            "duplicate_labels": window.dup_labels,
            "duplicate_predictions": window.dup_preds,
            "task": "",
            "accuracy": None,
            "precision_macro": None,
            "recall_macro": None,
            "f1_macro": None,
            "log_loss": None,
            "brier": None,
            "roc_auc": None,
            "ece": None,
            "per_class": "{}",
            "mae": None,
            "rmse": None,
            "mape": None,
            "mape_skipped": 0,
            "mean_error": None,
            "estimated_accuracy": estimate,
            "final": int(final),
            "version": 2 if final else 1,
        }
        if not final and estimate is not None:
            row["estimated"] = 1
            row["task"] = "classification"
            row["accuracy"] = estimate
            self._out.add_row(QualityWindowRow(**row))
            return
        judged: tuple[str, np.ndarray | None, np.ndarray | None, np.ndarray | None] = (
            "",
            None,
            None,
            None,
        )
        if lab.pred:
            judged = self._metrics(model, lab, row)
        self._out.add_row(QualityWindowRow(**row))
        if final and version:
            self._judge(start, key, row, *judged)

    def _metrics(
        self, model: str, lab: Labelled, row: dict[str, Any]
    ) -> tuple[str, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Fill `row` with the window's metrics; return what the judge needs:
        (task, correct 0/1, absolute errors, CBPE confidences of the labelled)."""
        cfg = self.config
        task, score = window_task(cfg, model, lab)
        row["task"] = task
        w = lab.weight
        if task == "regression":
            if any(isinstance(v, str) for v in (*lab.pred, *lab.label)):
                row["task"] = ""
                return "", None, None, None  # text in a regression model: no metric
            y = np.asarray(lab.label, dtype=np.float64)
            p = np.asarray(lab.pred, dtype=np.float64)
            r = regression_report(y, p, w)
            row.update(
                mae=r.mae,
                rmse=r.rmse,
                mape=r.mape,
                mape_skipped=r.mape_skipped,
                mean_error=r.mean_error,
            )
            return "regression", None, r.abs_errors, None
        y_cls = [class_name(v) for v in lab.label]
        if score:
            p_pos = np.asarray(lab.pred, dtype=np.float64)
            pred_cls = ["1" if p >= cfg.threshold else "0" for p in p_pos]
            top = np.where(p_pos >= cfg.threshold, p_pos, 1.0 - p_pos)
        else:
            pred_cls = [class_name(v) for v in lab.pred]
            p_pos, top = None, None
            if all(c is not None for c in lab.conf):
                top = np.asarray(lab.conf, dtype=np.float64)
                classes = sorted(set(y_cls) | set(pred_cls))
                if len(classes) == 2:
                    is_pos = np.asarray([c == classes[1] for c in pred_cls])
                    p_pos = np.where(is_pos, top, 1.0 - top)
        yarr, parr = np.asarray(y_cls), np.asarray(pred_cls)
        correct = (yarr == parr).astype(np.int64)
        report = class_report(yarr, parr, w)
        row.update(
            accuracy=accuracy(yarr, parr, w),
            precision_macro=report.precision_macro,
            recall_macro=report.recall_macro,
            f1_macro=report.f1_macro,
            per_class=orjson.dumps(
                {
                    c: {"precision": pr, "recall": rc, "f1": f, "support": s}
                    for c, pr, rc, f, s in zip(
                        report.classes,
                        report.precision,
                        report.recall,
                        report.f1,
                        report.support,
                        strict=True,
                    )
                }
            ).decode(),
        )
        if p_pos is not None:
            classes = sorted(set(y_cls) | set(pred_cls)) if not score else ["0", "1"]
            y01 = np.asarray([c == classes[-1] for c in y_cls], dtype=np.float64)
            row["log_loss"] = log_loss(y01, p_pos, w)
            row["brier"] = brier(y01, p_pos, w)
            row["roc_auc"] = roc_auc(y01, p_pos, w)
        if top is not None:
            row["ece"] = ece(top, correct, w, cfg.ece_bins)
        cbpe = [cbpe_confidence(p, c) for p, c in zip(lab.pred, lab.conf, strict=True)]
        conf = None if any(c is None for c in cbpe) else np.asarray(cbpe, dtype=np.float64)
        return "classification", correct, None, conf

    def _judge(
        self,
        start: int,
        key: Version,
        row: dict[str, Any],
        task: str,
        correct: np.ndarray | None,
        abs_errors: np.ndarray | None,
        conf: np.ndarray | None,
    ) -> None:
        """Feed the reference while it is incomplete; judge the windows after it."""
        cfg = self.config
        ref = self.references.get(key)
        if ref is None:
            ref = self.references[key] = QualityReference()
        if not task:
            return
        entity = "/".join(key)
        end = start + cfg.window_ms
        n = int(row["labelled"])
        common = {"kind": "quality", "entity": entity, "ts": end, "n": n}
        span = {"window_start": start, "window_end": end}
        if task == "classification":
            self._out.observations.append(
                Observation(metric="accuracy", value=row["accuracy"], **common, **span)
            )
        else:
            self._out.observations.append(
                Observation(metric="mae", value=row["mae"], **common, **span)
            )
        if not ref.done:
            ref.add(task, correct, abs_errors, conf, cfg.reference_labelled)
            return
        if task != ref.task:
            return
        if task == "classification" and correct is not None:
            k = int(correct.sum())
            drop, p = accuracy_drop(k, n, ref.n_correct, ref.n)
            details = {
                "accuracy": k / n,
                "reference_accuracy": ref.accuracy,
                "labelled": n,
                "reference_labelled": ref.n,
                "estimated_accuracy": row["estimated_accuracy"],
                "test": "Fisher exact, one-sided",
            }
            self._out.observations.append(
                Observation(
                    metric="accuracy_drop",
                    value=drop,
                    p_value=p,
                    details=details,
                    **common,
                    **span,
                )
            )
        elif abs_errors is not None:
            mean = float(abs_errors.mean())
            std = float(abs_errors.std(ddof=1)) if n > 1 else 0.0
            inc, p = mae_increase(mean, std, n, ref.mae, ref.abs_error_std, ref.n)
            details = {
                "mae": mean,
                "reference_mae": ref.mae,
                "labelled": n,
                "reference_labelled": ref.n,
                "test": "Welch t, one-sided",
            }
            if math.isfinite(inc):
                self._out.observations.append(
                    Observation(
                        metric="mae_increase",
                        value=inc,
                        p_value=p,
                        details=details,
                        **common,
                        **span,
                    )
                )

    def late_window(self, source: str, event: Any) -> int:
        """The window of the prediction: a late label's is its prediction's while that
        is held, else the window of the label's time (where an orphan counts)."""
        ts = event.ts
        if source == "labels":
            window = self.by_id.get(event.request_id)
            if window is not None:
                ts = window.ts[self.position[event.request_id]]
        return window_start(ts, self.config.window_ms)

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return CODEC.dump(
            QualityState(
                windows=self.windows.state(),
                pending=self.pending,
                seq=self.seq,
                provisional_until=self.provisional_until,
                references=self.references,
            )
        )

    def restore(self, state: dict[str, Any]) -> None:
        typed = CODEC.load(state)
        self.windows.load(typed.windows)
        self.by_id, self.position = {}, {}
        for _, _, window in self.windows.items():
            for i, request_id in enumerate(window.ids):
                self.by_id[request_id] = window
                self.position[request_id] = i
        self.pending = typed.pending
        self.pending_heap = [
            (label.ts, seq, request_id)
            for request_id, waiting in self.pending.items()
            for seq, label in waiting.items()
        ]
        heapq.heapify(self.pending_heap)
        self.seq = typed.seq
        self.provisional_until = typed.provisional_until
        self.references = typed.references


__all__ = ["QualityConfig", "QualityOperator", "class_name", "quality_rules"]
