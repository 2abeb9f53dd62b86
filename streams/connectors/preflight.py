"""Checks before a worker starts, each failing with one line that says what to fix.

- `check_kafka`: the configured brokers answer within a bounded time, else the
  error names the address and `STREAMWATCH_KAFKA` (a worker would otherwise wait
  in librdkafka's retries and fail with a bare `_TRANSPORT` code).
- `check_clickhouse`: the same for a ClickHouse server (`STREAMWATCH_CLICKHOUSE`),
  with the reason in a few words (refused, unknown host, authentication failed).
- `hold_data_dir`: this process is the only one using the embedded ClickHouse
  (chDB) directory. chDB lets one process open a directory at a time, and a
  second one fails deep inside the engine ("Error initializing EmbeddedServer").
  The holder keeps an exclusive `flock` on `<chdb dir>.pid` holding its pid for
  as long as it lives (the kernel drops the lock when the process dies, even by
  SIGKILL, so a stale file never blocks a restart); a second process is refused
  with the holder's pid and `STREAMWATCH_DATA_DIR`.
- `chdb_holder`: the pid holding a chDB directory, for explaining a failed open
  by any other command (e.g. `streamwatch query` reading the directory directly).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

from streams.config import Settings


class PreflightError(RuntimeError):
    """A start-up problem, with a one-line message fit for the user."""


# lock files this process holds, by path: open for the life of the process
_held: dict[Path, int] = {}


def check_kafka(settings: Settings, timeout_s: float = 10.0) -> None:
    """Raise PreflightError unless the configured Kafka answers a metadata request
    within `timeout_s` (the embedded broker is not checked: this process starts it)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = settings.kafka.bootstrap
    if bootstrap is None:
        return
    conf = settings.kafka_client_config()
    # a refused or unresolvable address fails fast instead of retrying for minutes
    conf["socket.connection.setup.timeout.ms"] = int(timeout_s * 1000)
    try:
        AdminClient(conf).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        raise PreflightError(
            f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s ({reason}): set "
            "STREAMWATCH_KAFKA (or kafka.bootstrap in the config file) to reachable "
            "bootstrap servers, or unset it to use the embedded broker"
        ) from None


def _reason(exc: BaseException) -> str:
    """The few words that say why a connection failed, out of a driver's long text."""
    text = str(exc)
    for pattern in (
        r"\[Errno -?\d+\] ([^\"')\]]+)",  # refused, unknown host, unreachable
        r"(Code: \d+\. DB::Exception: [^.(]+)",  # the server's own error
        r"(timed out|Read timed out)",
    ):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return (text.strip().splitlines() or [type(exc).__name__])[0][:200]


def check_clickhouse(settings: Settings, timeout_s: float = 10.0) -> None:
    """Raise PreflightError unless the configured ClickHouse server answers (with
    these credentials) within `timeout_s`; embedded chDB is not checked here."""
    if settings.embedded_clickhouse:
        return
    import clickhouse_connect

    from streams.connectors.clickhouse import _safe

    dsn = settings.clickhouse.dsn or ""
    try:
        client = clickhouse_connect.get_client(
            dsn=dsn, connect_timeout=timeout_s, send_receive_timeout=timeout_s
        )
        client.close()
    except Exception as exc:
        raise PreflightError(
            f"cannot reach ClickHouse at {_safe(dsn)} ({_reason(exc)}): set "
            "STREAMWATCH_CLICKHOUSE (or clickhouse.dsn in the config file) to a reachable "
            "server URL with valid credentials, or unset it to use embedded chDB"
        ) from None


def chdb_dir(settings: Settings) -> Path | None:
    """The embedded ClickHouse directory, or None when ClickHouse is a server."""
    if not settings.embedded_clickhouse:
        return None
    return Path(settings.clickhouse_dsn().removeprefix("chdb://")).resolve()


def _lock_file(directory: Path) -> Path:
    return directory.with_name(directory.name + ".pid")


def _where_configured(settings: Settings, directory: Path) -> str:
    if settings.clickhouse.dsn:  # an explicit chdb:// path
        return f"STREAMWATCH_CLICKHOUSE (or clickhouse.dsn; now chdb://{directory})"
    return f"STREAMWATCH_DATA_DIR (or data_dir; now {settings.data_path()})"


def chdb_holder(settings: Settings) -> int | None:
    """The pid of the live process holding the chDB directory, if another one does."""
    directory = chdb_dir(settings)
    if directory is None:
        return None
    path = _lock_file(directory)
    if path in _held:
        return os.getpid()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held exclusively: its pid is in the file
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def in_use_message(settings: Settings, pid: int) -> str:
    directory = chdb_dir(settings)
    assert directory is not None
    who = f"streamwatch process pid {pid}" if pid > 0 else "another streamwatch process"
    return (
        f"the embedded ClickHouse directory {directory} is in use by {who} (chDB allows "
        f"one process per directory): stop it, or point this one elsewhere with "
        f"{_where_configured(settings, directory)}"
    )


def hold_data_dir(settings: Settings) -> None:
    """Take the embedded ClickHouse directory for this process (no-op for a server).

    Raises PreflightError naming the holder's pid when another process has it."""
    directory = chdb_dir(settings)
    if directory is None:
        return
    path = _lock_file(directory)
    if path in _held:
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise PreflightError(
            in_use_message(settings, int(text) if text.isdigit() else -1)
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd


def release_data_dir(settings: Settings) -> None:
    """Give the directory back (the process's exit does the same)."""
    directory = chdb_dir(settings)
    if directory is None:
        return
    fd = _held.pop(_lock_file(directory), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
