"""The upgrade policy end to end (docs/operations.md, "Upgrading"), on the real broker.

A checkpoint this version cannot restore (here: the CTR monitor's task snapshot in a
state format 99, from "a later version") stops the worker at start, loudly: exit code
non-zero, the `StateFormatError` text in its log, /health not ok meanwhile; it never
runs on without that state. `streamwatch run --discard-state ctr` is the way out the
message names: the worker then runs, the CTR monitor afresh, and its next checkpoint
is one this version reads.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest

from operators.state import StateCodec
from operators.task import CODEC, TaskState
from streams.connectors import kafka
from streams.connectors.checkpoints import Checkpoint, CheckpointStore, key_of
from streams.runtime.monitors import build_monitors
from tests.harness import ROOT, Deployment

pytestmark = pytest.mark.integration


def health(d: Deployment) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{d.web_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


def worker(d: Deployment, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "-v", "run", *args],
        env=d.env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_checkpoint_of_a_newer_format_stops_the_worker_until_discarded(tmp_path, broker) -> None:
    d = Deployment(tmp_path, broker.bootstrap, "upgrade", partitions=1)
    settings = d.settings()
    kafka.ensure_topics(settings)
    (ctr,) = [spec for spec in build_monitors(settings) if spec.name == "ctr"]
    # the task snapshot as a later version with state format 99 would write it
    later = StateCodec(CODEC.owner, TaskState, format=99)
    state = later.dump(CODEC.load(ctr.make_task().snapshot()))
    store = CheckpointStore(
        settings.kafka_client_config(), settings.topics.checkpoints, settings.kafka.group_id
    )
    store.write({key_of("ctr", 0): Checkpoint(positions={}, state=state)})

    # 1. refused: the worker stops at start, non-zero, with the StateFormatError's text
    process = worker(d)
    statuses = []
    deadline = time.monotonic() + 40
    while process.poll() is None and time.monotonic() < deadline:
        statuses.append(health(d))
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
    out = process.communicate(timeout=10)[0]
    assert process.returncode not in (0, None), out[-3000:]
    assert "StateFormatError" in out and "state format 99" in out, out[-3000:]
    assert "monitor ctr:" in out and "--discard-state ctr" in out, out[-3000:]
    failed = [body for status, body in statuses if status == 503 and body["status"] == "failed"]
    assert failed and "state format 99" in failed[-1]["sink_error"], statuses[-5:]
    assert not [body for status, body in statuses if status == 200 and body["partitions"]]
    # ... and it wrote nothing over the checkpoint it refused
    assert store.load()[key_of("ctr", 0)].state["format"] == 99

    # 2. discarded: the worker runs, and what it checkpoints this version reads
    process = worker(d, "--discard-state", "ctr")
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0][-3000:]
            status, body = health(d)
            if status == 200 and body.get("partitions"):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"not healthy with --discard-state: {health(d)}")
    finally:
        process.terminate()
        out = process.communicate(timeout=60)[0]
    assert process.returncode == 0, out[-3000:]
    assert "discarding the checkpoint of ctr/0" in out, out[-3000:]
    written = store.load()[key_of("ctr", 0)]
    assert written.state["format"] == CODEC.format
    ctr.make_task().restore(written.state)  # the fresh state restores without a flag
