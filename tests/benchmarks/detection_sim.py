"""Sensor incidents of the simulator at scale: recall, delay, false alerts per 1,000 sensor-days.

    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.detection_sim --sensors 200 --seconds 2400
    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.detection_sim \
        --sensors 1000 --seconds 86400 --interval 30 --incidents 150   # the issue's scale

The simulator (`streams.cli.simulate`, the demo's and the end-to-end test's generator)
produces `--sensors` sensors, one reading every `--interval` seconds each, for
`--seconds`, with `--incidents` sensor incidents (spike, rise, regime in turn, each
on its own sensor, with the default incidents' sizes) spread after a quiet first
600 readings' time. An incident lasts as many readings as the default one lasts
seconds at 1 Hz, at least (spike 3, rise 330, regime 180 readings... scaled by
`--interval`, see `KINDS`), so a slower cadence keeps its shape in readings. The
readings are streamed (never all in memory) in event-time batches through the
worker's own tasks (`build_monitors` with the default settings; the monitors of
`--monitors`, default: those the default settings enable), as `detection_skab`
does. An alert is explained by an incident when its entity is the incident's
(sensor/metric of the affected metrics for kind `sensor`, the sensor for
`cluster` and the autoencoder) and it fires between the incident's start and
`SLACK` after its end (300 s, the end-to-end test's rule, or 10 readings if
longer); every other firing alert is false. Reported: incidents detected,
median and worst delay of the first explaining alert, false alerts, and false
alerts per 1,000 sensor-days of readings.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from schemas.events import SensorReading
from streams.cli.simulate import Incident, Scenario, Simulator
from streams.config import load_settings
from streams.runtime.monitors import OPERATORS, build_monitors

START_MS = 1_790_000_000_000
METRICS = ("temperature", "vibration", "pressure")
# (kind, duration in readings = the default incident's seconds at 1 Hz, factor)
KINDS = (("sensor_spike", 3.0, 8.0), ("sensor_rise", 330.0, 10.0), ("sensor_regime", 180.0, 6.0))
SLACK_MS = 300_000
SLACK_READINGS = 10
QUIET_READINGS = 600  # before the first incident


def incidents(sensors: int, seconds: int, count: int, interval_s: float = 1.0) -> list[Incident]:
    """`count` incidents, kinds in turn, each on its own sensor, starts evenly spread
    after `QUIET_READINGS` readings' time and ending before the run does."""
    out = []
    longest = max(d for _, d, _ in KINDS) * interval_s
    quiet = QUIET_READINGS * interval_s
    span = seconds - quiet - longest - 400 * interval_s
    if span <= 0:
        raise ValueError("--seconds too short for the quiet start and the longest incident")
    for k in range(count):
        kind, readings, factor = KINDS[k % len(KINDS)]
        sensor = f"sensor-{(7 * k + 1) % sensors:02d}"
        target = f"{sensor}/vibration" if kind == "sensor_spike" else sensor
        start = quiet + span * k / max(1, count)
        out.append(Incident(kind, target, float(int(start)), readings * interval_s, factor))
    return out


def affected(inc: Incident) -> dict[str, set[str]]:
    sensor, _, metric = inc.target.partition("/")
    if inc.kind == "sensor_spike":
        metrics = {metric or "vibration"}
    elif inc.kind == "sensor_rise":
        metrics = {"temperature"}
    else:
        metrics = set(METRICS)
    return {"sensor": {f"{sensor}/{m}" for m in metrics} | {sensor}, "cluster": {sensor}}


def readings_of(scenario: Scenario, batch: int) -> Iterator[list[SensorReading]]:
    """The simulator's sensor readings in event-time order, `batch` at a time (the
    simulator yields each second's messages sorted by time)."""
    part: list[SensorReading] = []
    for topic, _key, value in (m[:3] for m in Simulator(scenario).messages()):
        if topic != "sensor-readings":
            continue
        d = orjson.loads(value)
        part.append(
            SensorReading(
                ts=d["ts"], sensor_id=d["sensor_id"], values=d["values"], site=d.get("site")
            )
        )
        if len(part) >= batch:
            yield part
            part = []
    if part:
        yield part


def run(
    sensors: int,
    seconds: int,
    count: int,
    monitors: tuple[str, ...],
    interval_s: float = 1.0,
    batch: int = 2000,
) -> dict[str, Any]:
    truth = incidents(sensors, seconds, count, interval_s)
    scenario = Scenario(
        start_ms=START_MS,
        duration_s=seconds,
        impressions_per_s=0.0,
        inference_per_s=0.0,
        sensors=sensors,
        sensor_readings_per_s=1.0 / interval_s,
        incidents=truth,
    )
    if hasattr(scenario, "regressor_per_s"):  # absent in older code ("before" runs)
        scenario.regressor_per_s = 0.0
    settings = load_settings(env={})
    for name, monitor in settings.monitors.items():
        monitor.enabled = name in monitors
    tasks = [spec.make_task() for spec in build_monitors(settings)]
    alerts = []
    started = time.perf_counter()
    n = 0
    for part in readings_of(scenario, batch):
        n += len(part)
        now = part[-1].ts
        for task in tasks:
            task.feed("sensor-readings", part, now)
            task.tick(now)
            alerts.extend(task.collect().alerts)
    for task in tasks:
        finish = getattr(task, "finish", None)
        if finish is not None:  # the end-of-input flush, where the code has one
            finish()
        alerts.extend(task.collect().alerts)
    wall = time.perf_counter() - started
    firing = [a for a in alerts if a.status == "firing" and a.kind in ("sensor", "cluster")]
    slack = max(SLACK_MS, int(SLACK_READINGS * interval_s * 1000))
    delays: list[float] = []
    by_kind: dict[str, list[int]] = {k: [0, 0] for k, _, _ in KINDS}
    explained: set[str] = set()
    for inc in truth:
        start = START_MS + int(inc.start_s * 1000)
        end = START_MS + int((inc.start_s + inc.duration_s) * 1000) + slack
        hits = [
            a for a in firing if a.entity in affected(inc).get(a.kind, ()) and start <= a.ts <= end
        ]
        explained |= {a.alert_id for a in hits}
        by_kind[inc.kind][1] += 1
        if hits:
            by_kind[inc.kind][0] += 1
            delays.append((min(a.ts for a in hits) - start) / 1000)
    false = [a for a in firing if a.alert_id not in explained]
    sensor_days = sensors * seconds / 86_400
    return {
        "readings": n,
        "interval_s": interval_s,
        "incidents": len(truth),
        "detected": len(delays),
        "detected_by_kind": {k: f"{d}/{t}" for k, (d, t) in by_kind.items()},
        "median_delay_s": statistics.median(delays) if delays else None,
        "max_delay_s": max(delays) if delays else None,
        "false_alerts": len(false),
        "false_per_1000_sensor_days": 1000 * len(false) / sensor_days,
        "false_by_rule": dict(sorted(Counter(a.rule for a in false).items())),
        "wall_s": wall,
        "us_per_reading": 1e6 * wall / max(1, n),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=2400)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--incidents", type=int, default=30)
    parser.add_argument(
        "--monitors", default="", help="comma-separated; default: those enabled by default"
    )
    args = parser.parse_args(argv)
    if args.monitors:
        monitors = tuple(m for m in args.monitors.split(",") if m in OPERATORS)
    else:
        defaults = load_settings(env={}).monitors
        monitors = tuple(
            m for m in ("sensor", "cluster", "autoencoder") if m in defaults and defaults[m].enabled
        )
    result = run(args.sensors, args.seconds, args.incidents, monitors, args.interval)
    print(f"monitors: {', '.join(monitors)}")
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
