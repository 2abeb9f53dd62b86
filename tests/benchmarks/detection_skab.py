"""Sensor detection on real, labelled data: SKAB through the worker's own operators and rules.

    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.detection_skab
    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.detection_skab --markdown   # tables only

SKAB (Skoltech Anomaly Benchmark, github.com/waico/SKAB; `../shared/datasets/skab`,
override with `--data` or $SKAB_DIR; read-only, never copied into the repository) is
a pump test bed with 8 sensors at 1 Hz. Each labelled run (34: valve1, valve2,
other) is replayed as ONE sensor (`sensor_id` = the run, the 8 channels as
`values`) through exactly what the worker runs per partition: a
`operators.task.MonitorTask` per enabled monitor built by
`streams.runtime.monitors.build_monitors` from the default `Settings` (default
operator options, default rules, change detection), fed in batches with the
watermark ticked after each batch, rows and alerts collected. Processing time
follows event time (a real-time replay), so no source goes idle. At the end
of a run the task's end-of-input flush is called when the code has one
(`MonitorTask.finish`), as the worker does on an orderly stop; without it the
last `lateness` seconds of a run are never judged.

Protocol, as SKAB's: its baselines train on the first 400 rows of each run
(`df[:400]` in SKAB's notebooks) and are scored as binary classifiers per
row. Here the streaming monitors see those rows as warm-up (they learn from
them as from every reading) and only rows 400.. are scored. A row is
predicted anomalous when an alert of the detector is firing at its time:
from the row of a `firing` alert up to (not including) the row of its
`resolved` alert, or to the end of the run if it never resolves. This is how
an operator reads alerts (the episode is open until resolved); it is also
SKAB's convention of a per-row label over a whole anomalous stretch. The
secondary "rows" columns count only readings that have a `sensor_anomalies`
row (per flagged reading).

Scores, over the concatenation of every run's test rows (as SKAB's
`tsad.evaluating.evaluating(..., metric="binary")` does):

- F1 = 2 TP / (2 TP + FP + FN); FAR = FP / (FP + TN) (false-alarm rate);
  MAR = FN / (FN + TP) (missed-alarm rate), in %.
- NAB (Lavin & Ahmad 2015, "Evaluating real-time anomaly detection
  algorithms", standard profile A_TP = 1, A_FP = -0.11, A_FN = -1), windows
  of 60 s to the right of each labelled changepoint (SKAB's setting). The
  detections are the `firing` alerts. In each window only the first
  detection counts, with weight sigma(y) = 2 / (1 + exp(5 y)) - 1, y = the
  detection's position in the window scaled to [-1, 0] (start .. end); a
  detection outside every window scores A_FP; a window without one scores
  A_FN. Normalised: 100 (S - S_null) / (S_perfect - S_null), S_null = the
  score of no detections, S_perfect = every window hit at its start. (NAB's
  own scorer also weights false positives by their distance after a window;
  here every false positive weighs the full A_FP.)

`anomaly-free/anomaly-free.csv` (2.6 h of normal operation) is replayed the
same way: the share of its rows flagged after warm-up is the false-alarm rate
on normal data alone (the "false-alarm budget" of docs/monitors/sensor.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from schemas.events import Alert, SensorReading
from streams.config import load_settings
from streams.runtime.monitors import build_monitors
from tests.row_dicts import as_dicts

# ../shared beside the main checkout (/work/main), or beside a worktree's parent (/work/wt/x)
_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = next(
    (
        d / "shared" / "datasets" / "skab" / "data"
        for d in (_ROOT.parent, _ROOT.parent.parent)
        if (d / "shared" / "datasets" / "skab" / "data").is_dir()
    ),
    _ROOT.parent / "shared" / "datasets" / "skab" / "data",
)
TRAIN_ROWS = 400  # SKAB's notebooks: df[:400] trains, the rest is the test part
NAB_WINDOW_MS = 60_000
BATCH = 10  # readings per feed/tick, as a consumer batch
# `--warmup protocol` (the default): the learners' warm-up is SKAB's training part,
# 400 rows (the autoencoder trains on 250 and calibrates on 150, its defaults; the
# cluster's threshold starts after 400); every other option keeps its default
PROTOCOL_WARMUP: dict[str, Any] = {
    "autoencoder.warmup": TRAIN_ROWS - 150,
    "autoencoder.min_history": 150,
    "cluster.warmup": TRAIN_ROWS,
}
A_TP, A_FP, A_FN = 1.0, -0.11, -1.0

# the published leaderboard (SKAB README, outlier detection; changepoints: NAB standard)
LEADERBOARD = [
    ("Conv-AE", 0.78, 13.55, 28.02, 23.61),
    ("MSET", 0.78, 39.73, 14.13, 13.84),
    ("T-squared + Q (PCA)", 0.76, 26.62, 24.92, 25.35),
    ("LSTM-AE", 0.74, 29.96, 25.92, 23.51),
    ("T-squared", 0.66, 19.21, 42.60, 19.54),
    ("LSTM-VAE", 0.56, 9.13, 55.03, None),
    ("Vanilla LSTM", 0.54, 12.54, 59.53, None),
    ("Vanilla AE", 0.39, 2.59, 75.15, None),
    ("Isolation forest", 0.29, 2.56, 82.89, 26.16),
    ("MSCRED", None, None, None, 32.42),
    ("null detector", 0.0, 0.0, 100.0, 0.0),
]


@dataclass
class Run:
    name: str
    ts: np.ndarray  # int64 epoch ms per row
    values: list[dict[str, float]]
    anomaly: np.ndarray  # 0/1 per row
    changepoint: np.ndarray


@dataclass
class Replay:
    """What the monitors emitted for one run."""

    alerts: list[Alert] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # sensor_anomalies
    seconds: float = 0.0


def load_run(path: Path, name: str) -> Run:
    ts: list[int] = []
    values: list[dict[str, float]] = []
    anomaly: list[float] = []
    change: list[float] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            t = datetime.strptime(row.pop("datetime"), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            ts.append(int(t.timestamp() * 1000))
            anomaly.append(float(row.pop("anomaly", 0) or 0))
            change.append(float(row.pop("changepoint", 0) or 0))
            values.append({k: float(v) for k, v in row.items()})
    return Run(name, np.asarray(ts), values, np.asarray(anomaly), np.asarray(change))


def load_runs(data: Path) -> tuple[list[Run], Run]:
    runs = [
        load_run(p, f"{p.parent.name}-{p.stem}")
        for group in ("valve1", "valve2", "other")
        for p in sorted((data / group).glob("*.csv"), key=lambda p: int(p.stem))
    ]
    free = load_run(data / "anomaly-free" / "anomaly-free.csv", "anomaly-free")
    return runs, free


def replay(run: Run, monitors: tuple[str, ...], options: dict[str, Any] | None = None) -> Replay:
    """One run through the worker's tasks (one per monitor), as one sensor.

    `options`: "monitor.option" -> value, for exploring settings (the documented
    tables use the defaults)."""
    overrides = {
        f"monitors.{k.split('.')[0]}.options.{k.split('.')[1]}": v
        for k, v in (options or {}).items()
    }
    settings = load_settings(env={}, overrides=overrides)
    for name, monitor in settings.monitors.items():
        monitor.enabled = name in monitors
    tasks = [spec.make_task() for spec in build_monitors(settings)]
    out = Replay()
    events = [
        SensorReading(ts=int(t), sensor_id=run.name, values=v)
        for t, v in zip(run.ts, run.values, strict=True)
    ]
    started = time.perf_counter()
    for i in range(0, len(events), BATCH):
        batch = events[i : i + BATCH]
        now = batch[-1].ts  # a real-time replay: processing time = event time
        for task in tasks:
            task.feed("sensor-readings", batch, now)
            task.tick(now)
            _drain(task, out)
    for task in tasks:
        finish = getattr(task, "finish", None)
        if finish is not None:  # the end-of-input flush, where the code has one
            finish()
        _drain(task, out)
    out.seconds = time.perf_counter() - started
    return out


def _drain(task: Any, out: Replay) -> None:
    collected = task.collect()
    out.alerts.extend(collected.alerts)
    out.rows.extend(as_dicts(collected.rows.get("sensor_anomalies", [])))


def predicted_by_episodes(run: Run, alerts: Iterable[Alert]) -> np.ndarray:
    """Per row: 1 while an alert (any entity) is firing (firing row .. resolved row)."""
    pred = np.zeros(len(run.ts), dtype=bool)
    open_at: dict[tuple[str, str], int] = {}
    for a in sorted(alerts, key=lambda a: (a.ts, a.status != "resolved")):
        key = (a.rule, a.entity)
        if a.status == "firing":
            open_at.setdefault(key, a.ts)
        elif key in open_at:
            start = open_at.pop(key)
            pred |= (run.ts >= start) & (run.ts < a.ts)
    for start in open_at.values():
        pred |= run.ts >= start
    return pred


def predicted_by_rows(run: Run, rows: Iterable[dict[str, Any]]) -> np.ndarray:
    flagged = {r["ts"] for r in rows}
    return np.fromiter((t in flagged for t in run.ts), dtype=bool, count=len(run.ts))


def binary_scores(label: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    label = label.astype(bool)
    tp = int(np.sum(label & pred))
    fp = int(np.sum(~label & pred))
    fn = int(np.sum(label & ~pred))
    tn = int(np.sum(~label & ~pred))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return {"f1": f1, "far": far, "mar": mar, "fp_rows": fp}


def nab_raw(run: Run, detections: list[int]) -> tuple[float, float, float]:
    """(score, null score, perfect score) of one run's detection times (test part)."""
    test_start = int(run.ts[TRAIN_ROWS])
    windows = [
        (int(t), int(t) + NAB_WINDOW_MS) for t in run.ts[run.changepoint > 0] if t >= test_start
    ]
    hit = [False] * len(windows)
    score = 0.0
    for d in sorted(t for t in detections if t >= test_start):
        inside = [i for i, (a, b) in enumerate(windows) if a <= d <= b]
        if not inside:
            score += A_FP
            continue
        i = inside[0]
        if hit[i]:
            continue  # only the first detection in a window counts
        hit[i] = True
        a, b = windows[i]
        y = (d - b) / (b - a)  # -1 at the window's start, 0 at its end
        score += A_TP * (2.0 / (1.0 + math.exp(5.0 * y)) - 1.0)
    score += A_FN * hit.count(False)
    perfect = len(windows) * A_TP * (2.0 / (1.0 + math.exp(-5.0)) - 1.0)
    return score, A_FN * len(windows), perfect


@dataclass
class Detector:
    """A column of the table: a set of rules (alerts) and of anomaly methods (rows)."""

    name: str
    rules: tuple[str, ...]
    methods: tuple[str, ...]


DETECTORS = [
    Detector("zscore", ("sensor_zscore",), ("zscore",)),
    Detector("iqr", ("sensor_iqr",), ("iqr",)),
    Detector("rise", ("sensor_rise",), ("rise",)),
    Detector("cluster", ("cluster_distance",), ("cluster",)),
    Detector("autoencoder", ("sensor_autoencoder",), ("autoencoder",)),
]


def evaluate(
    runs: list[Run], replays: list[Replay], detectors: list[Detector], free: tuple[Run, Replay]
) -> list[dict[str, Any]]:
    results = []
    for det in detectors:
        labels, by_ep, by_rows = [], [], []
        nab = np.zeros(3)
        alerts_n = 0
        for run, rep in zip(runs, replays, strict=True):
            alerts = [a for a in rep.alerts if a.rule in det.rules]
            rows = [r for r in rep.rows if r["method"] in det.methods]
            alerts_n += sum(a.status == "firing" and a.ts >= run.ts[TRAIN_ROWS] for a in alerts)
            test = slice(TRAIN_ROWS, None)
            labels.append(run.anomaly[test])
            by_ep.append(predicted_by_episodes(run, alerts)[test])
            by_rows.append(predicted_by_rows(run, rows)[test])
            nab += nab_raw(run, [a.ts for a in alerts if a.status == "firing"])
        label = np.concatenate(labels)
        ep = binary_scores(label, np.concatenate(by_ep))
        rw = binary_scores(label, np.concatenate(by_rows))
        score, null, perfect = nab
        frun, frep = free
        falerts = [a for a in frep.alerts if a.rule in det.rules]
        fpred = predicted_by_episodes(frun, falerts)[TRAIN_ROWS:]
        ffiring = sum(a.status == "firing" and a.ts >= frun.ts[TRAIN_ROWS] for a in falerts)
        # per flagged value: rows of the detector per metric value judged (cluster and
        # autoencoder: per reading; zscore/iqr/rise: per metric of a reading)
        frows = [
            r for r in frep.rows if r["method"] in det.methods and r["ts"] >= frun.ts[TRAIN_ROWS]
        ]
        per_reading = det.name in ("cluster", "autoencoder")
        judged = (len(frun.ts) - TRAIN_ROWS) * (1 if per_reading else len(frun.values[0]))
        hours = (frun.ts[-1] - frun.ts[TRAIN_ROWS]) / 3_600_000
        results.append(
            {
                "detector": det.name,
                **ep,
                "rows_f1": rw["f1"],
                "rows_far": rw["far"],
                "nab": 100.0 * (score - null) / (perfect - null),
                "alerts": alerts_n,
                "free_far": 100.0 * float(np.mean(fpred)) if len(fpred) else 0.0,
                "free_alerts_per_h": ffiring / hours,
                "free_rows": 100.0 * len(frows) / judged if "combined" not in det.name else None,
            }
        )
    return results


def markdown(results: list[dict[str, Any]], runs: list[Run], seconds: float, readings: int) -> str:
    lines = [
        f"SKAB: {len(runs)} runs, {readings} readings ({readings * 8} values), "
        f"scored rows {sum(len(r.ts) - TRAIN_ROWS for r in runs)} "
        f"(rows {TRAIN_ROWS}.. of each run); replay {seconds:.1f} s "
        f"({1e6 * seconds / readings:.0f} µs per reading, all enabled monitors).",
        "",
        "| detector | F1 | FAR % | MAR % | NAB | firing alerts | F1 (rows) | FAR % (rows) "
        "| anomaly-free: FAR % | anomaly-free: alerts/h | anomaly-free: rows % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['detector']} | {r['f1']:.2f} | {r['far']:.2f} | {r['mar']:.2f} "
            f"| {r['nab']:.2f} | {r['alerts']} | {r['rows_f1']:.2f} | {r['rows_far']:.2f} "
            f"| {r['free_far']:.2f} | {r['free_alerts_per_h']:.1f} "
            f"| {'' if r['free_rows'] is None else format(r['free_rows'], '.3f')} |"
        )
    lines += [
        "",
        "Published (SKAB README; trained offline on each run's first 400 rows):",
        "",
        "| algorithm | F1 | FAR % | MAR % | NAB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, f1, far, mar, nab in LEADERBOARD:

        def cell(v: float | None, fmt: str) -> str:
            return "" if v is None else format(v, fmt)

        lines.append(
            f"| {name} | {cell(f1, '.2f')} | {cell(far, '.2f')} | {cell(mar, '.2f')} "
            f"| {cell(nab, '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SKAB_DIR", DEFAULT_DATA)))
    parser.add_argument(
        "--monitors",
        default="sensor,cluster,autoencoder",
        help="monitors to enable (those the code does not have are skipped)",
    )
    parser.add_argument("--runs", type=int, default=0, help="only the first N runs (0: all)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        help="monitor.option=value (a JSON value), e.g. autoencoder.alpha=1e-4; not the defaults",
    )
    parser.add_argument(
        "--warmup",
        choices=("protocol", "default"),
        default="protocol",
        help="protocol: the learners warm up on SKAB's 400 training rows; default: their defaults",
    )
    args = parser.parse_args(argv)
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    from streams.runtime.monitors import OPERATORS

    monitors = tuple(m for m in args.monitors.split(",") if m in OPERATORS)
    if args.warmup == "protocol":
        warm = {k: v for k, v in PROTOCOL_WARMUP.items() if k.split(".")[0] in monitors}
        options = {**warm, **options}
        print(f"warm-up on SKAB's training part: {warm}")
    runs, free = load_runs(args.data)
    if args.runs:
        runs = runs[: args.runs]
    started = time.perf_counter()
    replays = [replay(run, monitors, options) for run in runs]
    seconds = sum(r.seconds for r in replays)
    free_replay = replay(free, monitors, options)
    readings = sum(len(r.ts) for r in runs)
    detectors = [d for d in DETECTORS if any(m in monitors for m in _monitors_of(d))]
    combined = Detector(
        "combined (" + " + ".join(d.name for d in detectors) + ")",
        tuple(r for d in detectors for r in d.rules),
        tuple(m for d in detectors for m in d.methods),
    )
    extra = [combined]
    defaults = load_settings(env={}).monitors
    on_by_default = [
        d for d in detectors if all(defaults[m].enabled for m in _monitors_of(d) if m in defaults)
    ]
    if len(on_by_default) < len(detectors) and on_by_default:
        # a monitor is off by default: the combination a default set-up runs
        extra.append(
            Detector(
                "combined, on by default (" + " + ".join(d.name for d in on_by_default) + ")",
                tuple(r for d in on_by_default for r in d.rules),
                tuple(m for d in on_by_default for m in d.methods),
            )
        )
    results = evaluate(runs, replays, [*detectors, *extra], (free, free_replay))
    explored = {k: v for k, v in options.items() if k not in PROTOCOL_WARMUP}
    if explored:
        print(f"NOT the defaults: {explored}")
    print(f"monitors: {', '.join(monitors)}; wall {time.perf_counter() - started:.1f} s")
    print(markdown(results, runs, seconds, readings))
    # the options were chosen on the valve1 runs only (the development split); the
    # other runs are held out: each detector on both
    dev = [i for i, r in enumerate(runs) if r.name.startswith("valve1-")]
    held = [i for i, r in enumerate(runs) if not r.name.startswith("valve1-")]
    if dev and held:
        split = [
            evaluate(
                [runs[i] for i in part],
                [replays[i] for i in part],
                [*detectors, *extra],
                (free, free_replay),
            )
            for part in (dev, held)
        ]
        print()
        print(
            f"By split: development = valve1 ({len(dev)} runs, where options were chosen), "
            f"held out = valve2 + other ({len(held)} runs)."
        )
        print()
        print(
            "| detector | dev F1 | dev FAR % | dev MAR % | held-out F1 | held-out FAR % "
            "| held-out MAR % |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for d, h in zip(*split, strict=True):
            print(
                f"| {d['detector']} | {d['f1']:.2f} | {d['far']:.2f} | {d['mar']:.2f} "
                f"| {h['f1']:.2f} | {h['far']:.2f} | {h['mar']:.2f} |"
            )


def _monitors_of(det: Detector) -> tuple[str, ...]:
    if det.name == "cluster":
        return ("cluster",)
    if det.name == "autoencoder":
        return ("autoencoder",)
    return ("sensor",)


if __name__ == "__main__":
    main()
