"""Sensor incidents of the simulator at scale: recall, delay, false alerts per 1,000 sensor-days.

    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.detection_sim --sensors 200 --seconds 2400

The simulator (`streams.simulate`, the demo's and the end-to-end test's generator)
produces `--sensors` sensors at 1 Hz for `--seconds`, with `--incidents` sensor
incidents (spike, rise, regime in turn, each on its own sensor, with the default
incidents' sizes) spread after a quiet first 600 s. The readings are replayed in
event-time batches through the worker's own tasks (`build_monitors` with the
default settings; the monitors of `--monitors`), as `detection_skab` does. An alert
is explained by an incident when its entity is the incident's (sensor/metric of the
affected metrics for kind `sensor`, the sensor for `cluster` and the autoencoder)
and it fires between the incident's start and 300 s after its end (the end-to-end
test's rule); every other firing alert is false. Reported: incidents detected,
median and worst delay of the first explaining alert, false alerts, and false
alerts per 1,000 sensor-days of readings.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from typing import Any

import orjson

from schemas.events import SensorReading
from streams.config import load_settings
from streams.monitors import OPERATORS, build_monitors
from streams.simulate import Incident, Scenario, Simulator

START_MS = 1_790_000_000_000
METRICS = ("temperature", "vibration", "pressure")
KINDS = (("sensor_spike", 3.0, 8.0), ("sensor_rise", 330.0, 10.0), ("sensor_regime", 180.0, 6.0))
SLACK_MS = 300_000


def incidents(sensors: int, seconds: int, count: int) -> list[Incident]:
    out = []
    span = seconds - 600 - 400 - 330
    for k in range(count):
        kind, duration, factor = KINDS[k % len(KINDS)]
        sensor = f"sensor-{(7 * k + 1) % sensors:02d}"
        target = f"{sensor}/vibration" if kind == "sensor_spike" else sensor
        start = 600 + span * k / max(1, count)
        out.append(Incident(kind, target, float(int(start)), duration, factor))
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


def run(sensors: int, seconds: int, count: int, monitors: tuple[str, ...]) -> dict[str, Any]:
    truth = incidents(sensors, seconds, count)
    scenario = Scenario(
        start_ms=START_MS,
        duration_s=seconds,
        impressions_per_s=0.0,
        inference_per_s=0.0,
        sensors=sensors,
        incidents=truth,
    )
    readings = []
    for topic, _key, value in (m[:3] for m in Simulator(scenario).messages()):
        if topic == "sensor-readings":
            d = orjson.loads(value)
            readings.append(
                SensorReading(
                    ts=d["ts"], sensor_id=d["sensor_id"], values=d["values"], site=d.get("site")
                )
            )
    readings.sort(key=lambda e: e.ts)
    settings = load_settings(env={})
    for name, monitor in settings.monitors.items():
        monitor.enabled = name in monitors
    tasks = [spec.make_task() for spec in build_monitors(settings)]
    alerts = []
    started = time.perf_counter()
    batch = 2000
    for i in range(0, len(readings), batch):
        part = readings[i : i + batch]
        now = part[-1].ts
        for task in tasks:
            task.feed("sensor-readings", part, now)
            task.tick(now)
            alerts.extend(task.collect().alerts)
    seconds_cpu = time.perf_counter() - started
    firing = [a for a in alerts if a.status == "firing" and a.kind in ("sensor", "cluster")]
    delays: list[float] = []
    detected = 0
    explained: set[str] = set()
    for inc in truth:
        start = START_MS + int(inc.start_s * 1000)
        end = START_MS + int((inc.start_s + inc.duration_s) * 1000) + SLACK_MS
        hits = [
            a for a in firing if a.entity in affected(inc).get(a.kind, ()) and start <= a.ts <= end
        ]
        explained |= {a.alert_id for a in hits}
        if hits:
            detected += 1
            delays.append((min(a.ts for a in hits) - start) / 1000)
    false = [a for a in firing if a.alert_id not in explained]
    sensor_days = sensors * seconds / 86_400
    return {
        "readings": len(readings),
        "incidents": len(truth),
        "detected": detected,
        "median_delay_s": statistics.median(delays) if delays else None,
        "max_delay_s": max(delays) if delays else None,
        "false_alerts": len(false),
        "false_per_1000_sensor_days": 1000 * len(false) / sensor_days,
        "false_by_rule": dict(sorted(Counter(a.rule for a in false).items())),
        "cpu_s": seconds_cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=2400)
    parser.add_argument("--incidents", type=int, default=30)
    parser.add_argument("--monitors", default="sensor,cluster")
    args = parser.parse_args(argv)
    monitors = tuple(m for m in args.monitors.split(",") if m in OPERATORS)
    result = run(args.sensors, args.seconds, args.incidents, monitors)
    print(f"monitors: {', '.join(monitors)}")
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
