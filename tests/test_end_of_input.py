"""Windows close at the end of input (issue 14, point 6), on the real worker (Tansu + chDB).

A replay's last readings sit after the watermark (the last event time less the
lateness): without an end of input they are never judged and their windows never
close. The worker finishes a monitor task (`MonitorTask.finish`: the watermark
moves to one past the last event seen) when its input has been silent for
`close_idle_after_s` (and its lateness), at an orderly stop when it has been silent
for `idle_timeout_s` (and its lateness), and at a stop whose caller declares the end
of input (`Worker.run(until=...)`, the demo) in any case; the results are written
before the final checkpoint, so after a restart a finished window is never closed again: an
event for it is a late event.

The input: one sensor, one reading a second over five minutes, the last reading at
the last millisecond of the fifth minute, so its 60 s aggregate window ends exactly
one past the last event time: 5 `sensor_windows` rows once finished, 4 before.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from tests.harness import Deployment, Message, WorkerProcess, produce

pytestmark = pytest.mark.integration

SENSOR = "s-end"
MIN = 60_000
WINDOWS = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, n, max FROM streamwatch.sensor_windows "
    f"FINAL WHERE sensor_id = '{SENSOR}' ORDER BY ws"
)


def readings(d: Deployment) -> tuple[int, list[Message]]:
    """(t0, 301 readings: one a second over [t0, t0 + 5 min), the last at t0 + 5 min - 1)."""
    now = int(time.time() * 1000)
    t0 = now - now % MIN - 60 * MIN
    times = [t0 + i * 1000 for i in range(300)] + [t0 + 5 * MIN - 1]
    topic = d.topics["sensor_readings"]
    out: list[Message] = []
    for i, ts in enumerate(times):
        value = 20.0 + (i % 7) * 0.1 + (5.0 if ts == times[-1] else 0.0)
        event = {"sensor_id": SENSOR, "ts": ts, "values": {"temperature": value}}
        out.append((topic, SENSOR.encode(), orjson.dumps(event), 0))
    return t0, out


# the lateness of the monitors of sensor readings and the idle timeout: a task is finished
# once its input is silent for the larger (4 s, not the defaults' 10 s: the waits below)
LATENESS_S = 4.0
IDLE_TIMEOUT_S = 4.0


def deployment(tmp_path: Any, bootstrap: str, name: str, **overrides: Any) -> Deployment:
    lateness = {
        f"monitors.{m}.lateness_s": LATENESS_S for m in ("sensor", "cluster", "autoencoder")
    }
    return Deployment(
        tmp_path,
        bootstrap,
        name,
        partitions=1,
        idle_timeout_s=IDLE_TIMEOUT_S,
        **lateness,
        **overrides,
    )


def consumed(worker: WorkerProcess) -> int:
    return int(worker.metric("streamwatch_events_consumed_total"))


def test_idle_input_closes_the_last_windows(tmp_path, broker) -> None:
    """While running: input silent for close_idle_after_s (here at least the 4 s
    lateness) finishes the task and its last window is written."""
    d = deployment(tmp_path, broker.bootstrap, "eoi-idle", close_idle_after_s=1.0)
    t0, sent = readings(d)
    worker = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, sent)
        worker.wait_until(lambda: consumed(worker) >= len(sent), 60, "the readings")
        # before the silence: the watermark (last - 4 s) holds the fifth window open
        assert len(worker.query(WINDOWS)) <= 4
        worker.wait_until(lambda: len(worker.query(WINDOWS)) == 5, 60, "the last window")
        rows = worker.query(WINDOWS)
    finally:
        assert worker.stop() == 0
    assert [r["ws"] for r in rows] == [t0 + i * MIN for i in range(5)]
    assert [r["n"] for r in rows] == [60, 60, 60, 60, 61]
    assert rows[-1]["max"] == pytest.approx(25.0 + (300 % 7) * 0.1)


def test_orderly_stop_closes_the_last_windows_once(tmp_path, broker) -> None:
    """SIGTERM after the input went quiet writes the last window before the final
    checkpoint; after a restart that window is not closed again: a reading for it
    is a late event and the row stays as written."""
    d = deployment(tmp_path, broker.bootstrap, "eoi-stop", close_idle_after_s=0)
    t0, sent = readings(d)
    worker = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, sent)
        worker.wait_until(lambda: consumed(worker) >= len(sent), 60, "the readings")
        time.sleep(max(IDLE_TIMEOUT_S, LATENESS_S) + 1)  # quiet for both
        assert len(worker.query(WINDOWS)) == 4, "closed before the stop: nothing to test"
    finally:
        assert worker.stop() == 0
    assert "stopping: finished" in worker.log()
    rows = d.query(WINDOWS)
    assert [r["n"] for r in rows] == [60, 60, 60, 60, 61]

    # restart: the finished state is the checkpoint's; a reading inside the closed
    # window is late, one after it opens the next window as usual
    topic = d.topics["sensor_readings"]
    late = {"sensor_id": SENSOR, "ts": t0 + 5 * MIN - 2, "values": {"temperature": 99.0}}
    new = {"sensor_id": SENSOR, "ts": t0 + 5 * MIN + 500, "values": {"temperature": 21.0}}
    try:
        worker.start()
        produce(
            broker.bootstrap,
            [
                (topic, SENSOR.encode(), orjson.dumps(late), 0),
                (topic, SENSOR.encode(), orjson.dumps(new), 0),
            ],
        )
        worker.wait_until(
            lambda: worker.query("SELECT count() AS n FROM streamwatch.late_events")[0]["n"] >= 1,
            60,
            "the late reading",
        )
    finally:
        assert worker.stop() == 0
    assert d.query(WINDOWS)[:5] == rows, "a finished window was closed again"
    late_rows = d.query(
        "SELECT monitor, toUnixTimestamp64Milli(event_ts) AS ts FROM streamwatch.late_events"
    )
    assert {(r["monitor"], r["ts"]) for r in late_rows} >= {("sensor", late["ts"])}


UNTIL_SCRIPT = """
import sys, time
from streams.config import load_settings
from streams.runtime.worker import Worker

settings = load_settings(sys.argv[1], env={})
worker = Worker(settings)
expected = int(sys.argv[2])
started = time.monotonic()

def until():
    # the caller's end of input, as the demo's: everything consumed and written
    done = sum(worker.pipeline.events_in.values()) >= expected and not worker.sinks.buffered
    return done or time.monotonic() - started > 90

worker.run(until=until)
rows = worker.query(
    "SELECT count() FROM streamwatch.sensor_windows FINAL WHERE sensor_id = 's-end'"
).result_rows
print("windows", rows[0][0])
"""


def test_the_end_of_input_a_caller_declares_finishes_every_task(tmp_path, broker) -> None:
    """`Worker.run(until=...)` (the demo's end): the stop comes right after the input is
    consumed, long before any idle bound, and still every task is finished: the
    last window is written before the worker returns."""
    import subprocess
    import sys

    from tests.harness import ROOT

    d = deployment(tmp_path, broker.bootstrap, "eoi-until", close_idle_after_s=0)
    _, sent = readings(d)
    produce(broker.bootstrap, sent)
    done = subprocess.run(
        [sys.executable, "-c", UNTIL_SCRIPT, str(d.path), str(len(sent))],
        env=d.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "windows 5" in done.stdout, done.stdout + done.stderr[-3000:]
