"""Crash-only: an unhandled failure ends the real worker, loudly and at once.

Each fault of streams/runtime/faults.py (test-only, armed by STREAMWATCH_TEST_FAULTS when
the worker starts) is triggered inside a real worker process on the suite's broker
(Tansu) and chDB by a message carrying the `streamwatch-test-fault` header. The
worker must then log the cause at ERROR level and exit non-zero within seconds
(never idle with its web server up), its /health and metrics saying so while it
goes; a hung polling loop (the `stall` fault) must show in /health, /health/live
and `streamwatch_last_poll_age_seconds`.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest

from streams.runtime.faults import HEADER
from tests.harness import Deployment, WorkerProcess

pytestmark = pytest.mark.integration

ALL_FAULTS = ("decode", "sink", "producer", "timer", "stall", "hang")
EXIT_WITHIN_S = 15.0  # FAILED_EXIT_S (10 s) is the worker's own bound, plus start-up slack


def fault_deployment(tmp_path, broker, name: str, **overrides: Any) -> Deployment:
    d = Deployment(tmp_path, broker.bootstrap, name, partitions=2, **overrides)
    d.test_faults = ALL_FAULTS
    return d


def trigger(d: Deployment, fault: str) -> None:
    """A malformed impression (it becomes a dead letter: a produce and a row to
    insert) carrying the header that triggers `fault`."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": d.bootstrap, "enable.idempotence": False})
    producer.produce(
        d.topics["impressions"],
        b"not json at all",
        key=b"cmp-0",
        partition=0,
        headers=[(HEADER, fault.encode())],
    )
    assert producer.flush(30) == 0


def get(worker: WorkerProcess, path: str) -> tuple[int, Any]:
    """(status, parsed body) of a GET on the worker; (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(worker.url(path), timeout=2) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return 0, str(exc)
    if path == "/metrics":
        return status, raw.decode()
    return status, orjson.loads(raw)


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def wait_ready(worker: WorkerProcess) -> dict[str, Any]:
    """Healthy, with partitions assigned and polling."""
    body: dict[str, Any] = {}

    def ready() -> bool:
        status, found = get(worker, "/health")
        body.update(found if isinstance(found, dict) else {})
        return status == 200 and bool(found["partitions"])

    worker.wait_until(ready, 60, "the worker to be healthy with partitions")
    return body


class Watcher:
    """Polls /health and /metrics as fast as it can, keeping every answer."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.health: list[tuple[int, Any]] = []
        self.failed_metric: list[float | None] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(10)

    def _run(self) -> None:
        # the worker answers 503 "failed" for FAILED_LINGER_S (2 s) before it stops
        while not self.done.is_set():
            for _ in range(3):
                self.health.append(get(self.worker, "/health"))
                time.sleep(0.05)
            status, text = get(self.worker, "/metrics")
            if status == 200:
                self.failed_metric.append(metric_value(text, "streamwatch_worker_failed"))


FAULT_LOGS = {
    "decode": "the consume loop failed: InjectedFault: injected failure in the batch loop",
    "sink": "failed: InjectedFault: injected sink failure writing dead_letters",
    "producer": "the consume loop failed: KafkaException:",
    "timer": "the timer (tick) failed: InjectedFault: injected failure in the timer",
}


@pytest.mark.parametrize("fault", sorted(FAULT_LOGS))
def test_unhandled_failure_logs_and_exits_nonzero(tmp_path, broker, fault: str) -> None:
    d = fault_deployment(tmp_path, broker, f"crash-{fault}")
    worker = WorkerProcess(d).start()
    try:
        wait_ready(worker)
        status, text = get(worker, "/metrics")
        assert status == 200
        assert metric_value(text, "streamwatch_worker_failed") == 0
        age = metric_value(text, "streamwatch_last_poll_age_seconds")
        assert age is not None and 0 <= age < 5, age
        assert get(worker, "/health/live")[0] == 200

        with Watcher(worker) as watcher:
            started = time.monotonic()
            trigger(d, fault)
            assert worker.process is not None
            code = worker.process.wait(60)
            took = time.monotonic() - started
            time.sleep(0.2)  # the watcher's last answers: nothing listens any more
        log = worker.log_path.read_text()
        assert code != 0, log[-3000:]
        assert took < EXIT_WITHIN_S, f"exited after {took:.1f} s:\n{log[-3000:]}"
        # the cause at ERROR level, from the worker, with its traceback
        error_lines = [line for line in log.splitlines() if " ERROR streamwatch.worker: " in line]
        assert any(FAULT_LOGS[fault] in line for line in error_lines), log[-4000:]
        assert "Traceback" in log
        if fault == "producer":
            assert "injected fatal producer error" in log
        # no checkpoint of a state the failure may have left half-updated
        assert "not checkpointing after a failure" in log
        # /health: never "ok" once the worker has failed; 503 "failed" while it
        # stops, then nobody answers (the supervisor's restart is next)
        answers = [(s, b) for s, b in watcher.health if s != 0]
        first_failed = next(
            (i for i, (s, b) in enumerate(answers) if s == 503 and b["status"] == "failed"), None
        )
        assert first_failed is not None, answers[-5:]
        assert all(s == 503 for s, _ in answers[first_failed:]), answers[first_failed:]
        failed_body = answers[first_failed][1]
        exception = "KafkaException" if fault == "producer" else "InjectedFault"
        assert exception in failed_body["sink_error"], failed_body
        assert watcher.health[-1][0] == 0  # the web server is gone with the process
        assert 1.0 in watcher.failed_metric  # streamwatch_worker_failed while it stopped
    finally:
        worker.kill()


def test_stalled_polling_shows_in_health_liveness_and_metric(tmp_path, broker) -> None:
    """A polling loop that stops coming back (a hung consumer) is not silent:
    the poll age grows, /health and /health/live turn 503, and SIGTERM still stops it."""
    d = fault_deployment(tmp_path, broker, "crash-stall", health_poll_age_s=3.0)
    worker = WorkerProcess(d).start()
    try:
        wait_ready(worker)
        trigger(d, "stall")
        ages: list[float] = []

        def stalled() -> bool:
            status, body = get(worker, "/health")
            live, live_body = get(worker, "/health/live")
            age = worker.metric("streamwatch_last_poll_age_seconds")
            ages.append(age)
            return (
                status == 503
                and body["status"] == "stalled"
                and any("no poll of the broker" in p for p in body["problems"])
                and live == 503
                and live_body["status"] == "stalled"
                and age > 3.0
            )

        worker.wait_until(stalled, 30, "health, liveness and the poll age to show the stall")
        time.sleep(1.5)
        assert worker.metric("streamwatch_last_poll_age_seconds") > ages[-1]  # still growing
        started = time.monotonic()
        code = worker.stop(timeout=60)
        assert time.monotonic() - started < 30
        assert code == 0, worker.log()
    finally:
        worker.kill()
