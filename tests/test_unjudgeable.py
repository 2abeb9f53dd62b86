"""A sensor series the configuration can never judge is reported, not silent (issue 14,
point 1), on the real worker (Tansu + chDB): in /health (a detail: the worker stays
ready), in the metric `streamwatch_unjudgeable_series{monitor}` and once in the log.

The configuration: the sensor monitor's fixed 300 s window (adapt_window off) with
min_points 30; the input: readings every 5 minutes, so no window ever holds 30."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.harness import Deployment, WorkerProcess, produce

pytestmark = pytest.mark.integration

MIN = 60_000


def test_unjudgeable_series_show_in_health_metrics_and_log(tmp_path, broker) -> None:
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "unjudgeable",
        partitions=1,
        **{"monitors.sensor.options": {"adapt_window": False}},
    )
    now = int(time.time() * 1000)
    t0 = now - now % MIN - 240 * MIN
    topic = d.topics["sensor_readings"]
    sent = []
    for sensor, gap in (("s-slow", 300_000), ("s-fast", 1000)):
        for i in range(40):
            reading = {"sensor_id": sensor, "ts": t0 + i * gap, "values": {"temperature": 20.0}}
            sent.append((topic, sensor.encode(), orjson.dumps(reading), 0))
    worker = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, sent)

        def reported() -> bool:
            return worker.metric("streamwatch_unjudgeable_series") >= 1

        worker.wait_until(reported, 60, "the unjudgeable series metric")
        health = worker.wait_http("/health", 10)  # 200: a detail, not a 503
        metrics = urllib_get(worker.url("/metrics"))
    finally:
        assert worker.stop() == 0
    assert health["status"] == "ok"
    assert health["unjudgeable"] == {"sensor": {"count": 1, "series": ["s-slow/temperature"]}}
    assert 'streamwatch_unjudgeable_series{monitor="sensor"} 1.0' in metrics
    assert worker.log().count("sensor s-slow/temperature: readings every 300000 ms") == 1


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
