"""Stops when asked: SIGTERM ends the real worker in bounded time in every state,
and the embedded broker never outlives its parent, even one killed with SIGKILL.

States: healthy; a polling thread stuck for good (the `hang` fault: only the exit
watchdog can end the process); a failed task while a thread is stuck (the process
would wait forever in `threading._shutdown` without the watchdog); ClickHouse down
(the injected outage of tests/test_outage.py, rows buffered); the broker gone (a
Tansu of this test's own, killed with SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streams.connectors.embedded import EmbeddedBroker, free_port
from tests.harness import ROOT, Deployment, WorkerProcess, produce, to_toml
from tests.test_crash_only import ALL_FAULTS, get, trigger, wait_ready
from tests.test_e2e_ctr import MALFORMED

pytestmark = pytest.mark.integration

STOP_TIMEOUT_S = 12.0  # the worker's `stop_timeout_s` in these tests


def deployment(tmp_path: Path, bootstrap: str, name: str, **overrides: Any) -> Deployment:
    d = Deployment(
        tmp_path, bootstrap, name, partitions=2, stop_timeout_s=STOP_TIMEOUT_S, **overrides
    )
    d.test_faults = ALL_FAULTS
    return d


def sigterm(worker: WorkerProcess) -> tuple[int, float]:
    """SIGTERM; (exit code, seconds to exit). Fails if it outlives the stop timeout."""
    assert worker.process is not None and worker.process.poll() is None
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        code = worker.process.wait(STOP_TIMEOUT_S + 10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker ignored SIGTERM:\n{worker.log()}") from None
    return code, time.monotonic() - started


def test_sigterm_when_healthy(tmp_path, broker) -> None:
    d = deployment(tmp_path, broker.bootstrap, "stop-healthy")
    worker = WorkerProcess(d).start()
    try:
        wait_ready(worker)
        code, took = sigterm(worker)
        assert code == 0, worker.log()
        assert took < 10, took  # an orderly stop: flush, checkpoint, commit, leave
        assert "stopped" in worker.log()
    finally:
        worker.kill()


def test_sigterm_with_a_thread_stuck_for_good(tmp_path, broker) -> None:
    """A polling call that never returns: the watchdog ends the process at the
    stop timeout, with the threads named and their stacks dumped."""
    d = deployment(tmp_path, broker.bootstrap, "stop-hang")
    worker = WorkerProcess(d).start()
    try:
        wait_ready(worker)
        trigger(d, "hang")
        time.sleep(2)  # consumed, and the next poll hangs
        code, took = sigterm(worker)
        log = worker.log_path.read_text()
        assert code == 1, log[-3000:]
        assert took < STOP_TIMEOUT_S + 5, took
        assert "still running" in log and "after the stop request" in log, log[-3000:]
        assert "TEST-ONLY fault 'hang'" in log
    finally:
        worker.kill()


def test_failed_task_with_a_stuck_thread_still_exits(tmp_path, broker) -> None:
    """The timer fails while the polling thread is stuck for good: without the
    watchdog the process would wait for that thread forever after the failure
    (the `threading._shutdown` hang); a SIGTERM meanwhile changes nothing."""
    from confluent_kafka import Producer

    from streams.runtime.faults import HEADER

    d = deployment(tmp_path, broker.bootstrap, "stop-failed")
    worker = WorkerProcess(d).start()
    try:
        wait_ready(worker)
        producer = Producer({"bootstrap.servers": d.bootstrap, "enable.idempotence": False})
        producer.produce(
            d.topics["impressions"],
            b"{}",
            key=b"cmp-0",
            partition=0,
            headers=[(HEADER, b"hang"), (HEADER, b"timer")],
        )
        assert producer.flush(30) == 0
        started = time.monotonic()
        worker.wait_until(lambda: "the timer (tick) failed" in worker.log(), 20, "the failure")
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        code = worker.process.wait(30)
        took = time.monotonic() - started
        log = worker.log_path.read_text()
        assert code != 0, log[-3000:]
        assert took < 20, took  # FAILED_EXIT_S (10 s) after the failure
        assert "after an unhandled failure" in log, log[-3000:]
    finally:
        worker.kill()


def test_sigterm_while_clickhouse_is_down(tmp_path, broker) -> None:
    d = deployment(
        tmp_path,
        broker.bootstrap,
        "stop-chdown",
        debug_endpoints=True,
        flush_interval_s=0.2,
    )
    worker = WorkerProcess(d).start()
    try:
        wait_ready(worker)
        assert worker.wait_http("/debug/clickhouse?fail=1", 10) == {"fail_writes": True}
        # malformed messages: dead-letter rows, buffered while inserts fail
        produce(d.bootstrap, [(d.topics[t], k, v, None) for t, k, v, _ in MALFORMED])

        def degraded() -> bool:
            status, body = get(worker, "/health")
            return status == 503 and body["status"] == "degraded" and body["buffered_rows"] > 0

        worker.wait_until(degraded, 30, "rows buffered while ClickHouse is down")
        code, took = sigterm(worker)
        log = worker.log()
        assert code == 0, log
        assert took < STOP_TIMEOUT_S, took
        assert "stopping with unwritten results" in log, log
    finally:
        worker.kill()


def test_sigterm_after_the_broker_is_gone(tmp_path) -> None:
    with EmbeddedBroker(log_path=tmp_path / "own-tansu.log") as own:
        d = deployment(tmp_path, own.bootstrap, "stop-nobroker")
        worker = WorkerProcess(d).start()
        try:
            wait_ready(worker)
            assert own.process is not None
            own.process.kill()  # SIGKILL: the broker is gone, no goodbye
            own.process.wait()
            time.sleep(3)  # the worker notices (connections refused)
            code, took = sigterm(worker)
            assert took < STOP_TIMEOUT_S + 5, (took, worker.log())
            # an orderly stop (0), or the watchdog's (1) if a client call hung
            assert code in (0, 1), worker.log()
        finally:
            worker.kill()


# -- the embedded broker dies with its parent -----------------------------------


def children(pid: int) -> dict[int, str]:
    """Live processes whose parent is `pid`: {pid: command name}."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = name
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_embedded_broker_dies_with_a_killed_parent(tmp_path) -> None:
    """`streamwatch run` with nothing configured starts Tansu itself; SIGKILL the
    worker (no clean-up runs) and the broker must be gone within seconds."""
    data = tmp_path / "embedded-data"
    web_port = free_port()
    config = tmp_path / "embedded.toml"
    config.write_text(to_toml({"data_dir": str(data), "web_port": web_port}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWATCH_")}
    env.update(STREAMWATCH_CONFIG=str(config), PYTHONPATH=str(ROOT))
    log_path = tmp_path / "embedded-worker.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "-v", "run"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    tansu: list[int] = []
    try:
        deadline = time.monotonic() + 90
        info: dict[str, Any] = {}
        while time.monotonic() < deadline and not info:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                info = json.loads((data / "embedded.json").read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.3)
        assert info.get("pid") == process.pid, log_path.read_text()[-3000:]
        tansu += [pid for pid, name in children(process.pid).items() if name == "tansu"]
        assert len(tansu) == 1, children(process.pid)
        port = int(info["kafka"].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), 2):
            pass  # the broker answers

        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and alive(tansu[0]):
            time.sleep(0.05)
        assert not alive(tansu[0]), "the embedded broker outlived its killed parent"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), 1).close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in tansu:  # never leave a broker behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_while_a_slow_query_holds_the_writer(tmp_path, broker) -> None:
    """A query that runs for a long time (issue 11: it held the writer's lock and
    SIGTERM did not stop the worker) delays at most the stop timeout."""
    import threading
    import urllib.parse

    d = deployment(tmp_path, broker.bootstrap, "stop-slowquery", flush_interval_s=0.2)
    worker = WorkerProcess(d).start()
    try:
        wait_ready(worker)
        sql = "SELECT count() FROM system.numbers WHERE cityHash64(number) = 0"
        path = "/api/query?" + urllib.parse.urlencode({"sql": sql})
        threading.Thread(target=get, args=(worker, path), daemon=True).start()
        time.sleep(1)  # the query runs
        # rows to write while it runs: dead letters of malformed messages
        produce(d.bootstrap, [(d.topics[t], k, v, None) for t, k, v, _ in MALFORMED])
        time.sleep(2)
        code, took = sigterm(worker)
        assert took < STOP_TIMEOUT_S + 5, (took, worker.log())
        assert code in (0, 1), worker.log()
    finally:
        worker.kill()
