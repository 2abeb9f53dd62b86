"""Start-up checks (streams/connectors/preflight.py): each failure is one line naming a fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.config import load_settings
from streams.connectors.embedded import free_port
from streams.connectors.preflight import (
    PreflightError,
    chdb_holder,
    check_clickhouse,
    check_kafka,
    hold_data_dir,
    release_data_dir,
)

ROOT = Path(__file__).resolve().parents[1]


def _holder(env: dict[str, str]) -> subprocess.Popen[str]:
    """Another process holding the data directory, as a running worker does."""
    code = (
        "import sys, time\n"
        "from streams.config import load_settings\n"
        "from streams.connectors.preflight import hold_data_dir\n"
        "hold_data_dir(load_settings())\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    env = {"STREAMWATCH_DATA_DIR": str(tmp_path / "var")}
    settings = load_settings(env=env)
    child = _holder(env)
    try:
        assert chdb_holder(settings) == child.pid
        with pytest.raises(PreflightError) as caught:
            hold_data_dir(settings)
        message = str(caught.value)
        assert f"pid {child.pid}" in message and "STREAMWATCH_DATA_DIR" in message
        assert str(tmp_path / "var") in message and "\n" not in message
    finally:
        child.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops the lock
        child.wait()
    # a holder killed with -9 leaves its pid file behind, which blocks nobody
    assert chdb_holder(settings) is None
    hold_data_dir(settings)
    try:
        assert (tmp_path / "var" / "clickhouse.pid").read_text().strip() == str(os.getpid())
        assert chdb_holder(settings) == os.getpid()
    finally:
        release_data_dir(settings)
    assert chdb_holder(settings) is None


def test_an_explicit_chdb_path_names_streamwatch_clickhouse(tmp_path: Path) -> None:
    env = {"STREAMWATCH_CLICKHOUSE": f"chdb://{tmp_path / 'elsewhere'}"}
    child = _holder(env)
    try:
        with pytest.raises(PreflightError, match="STREAMWATCH_CLICKHOUSE") as caught:
            hold_data_dir(load_settings(env=env))
        assert f"pid {child.pid}" in str(caught.value)
    finally:
        child.kill()
        child.wait()


def test_a_clickhouse_server_needs_no_lock(tmp_path: Path) -> None:
    settings = load_settings(env={"STREAMWATCH_CLICKHOUSE": "http://u:p@127.0.0.1:1/db"})
    hold_data_dir(settings)  # nothing to hold
    assert chdb_holder(settings) is None


def test_an_unreachable_kafka_names_the_address_and_the_variable() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = load_settings(env={"STREAMWATCH_KAFKA": address})
    started = time.monotonic()
    with pytest.raises(PreflightError) as caught:
        check_kafka(settings, timeout_s=3)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert address in message and "STREAMWATCH_KAFKA" in message and "\n" not in message


def test_a_reachable_kafka_passes(broker) -> None:
    check_kafka(load_settings(env={"STREAMWATCH_KAFKA": broker.bootstrap}), timeout_s=10)


def test_an_unreachable_clickhouse_names_the_address_not_the_password() -> None:
    dsn = f"http://app:s3cret@127.0.0.1:{free_port()}/streamwatch"
    with pytest.raises(PreflightError) as caught:
        check_clickhouse(load_settings(env={"STREAMWATCH_CLICKHOUSE": dsn}), timeout_s=3)
    message = str(caught.value)
    assert "STREAMWATCH_CLICKHOUSE" in message and "127.0.0.1" in message
    assert "s3cret" not in message and "refused" in message.lower()


def test_query_names_the_process_holding_the_directory(tmp_path: Path) -> None:
    """`streamwatch query` with no worker address published but the directory held
    (a worker starting up): one line with the pid, not chDB's engine error."""
    env = {"STREAMWATCH_DATA_DIR": str(tmp_path / "var")}
    child = _holder(env)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "query", "SELECT 1"],
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        child.kill()
        child.wait()
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert f"pid {child.pid}" in line and "STREAMWATCH_DATA_DIR" in line, line
