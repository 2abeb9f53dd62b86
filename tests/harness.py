"""Helpers for integration tests: config files, worker processes, topics, queries.

Everything here talks to the real services the suite starts (Tansu, chDB; or
a ClickHouse server for tests/test_clickhouse_server.py): the worker runs as
its own process (`python -m streams.cli run`), exactly as a user runs it, and
results are read back through its web API while it runs or through
`streamwatch query` after it stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import orjson

from schemas.events import INPUT_TOPICS
from schemas.rows import Row
from streams.connectors.embedded import free_port
from streams.runtime.monitors import build_monitors
from streams.runtime.pipeline import Pipeline, RawMessage

Message = tuple[str, bytes | None, bytes | None, int | None]  # topic, key, value, partition

ROOT = Path(__file__).resolve().parent.parent


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for our configuration: scalars, tables, arrays of tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict | list)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for item in value:
                lines.append(f"\n[[{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


class Deployment:
    """A worker configuration on the test broker: own topics, database and data dir."""

    def __init__(
        self,
        tmp: Path,
        bootstrap: str,
        name: str,
        partitions: int = 4,
        shared: Deployment | None = None,
        clickhouse_dsn: str | None = None,
        database: str = "streamwatch",
        **overrides: Any,
    ) -> None:
        """`shared`: another deployment whose topics and consumer group this one
        uses (a second worker of the same group, with its own data dir and port).
        `clickhouse_dsn`: a ClickHouse server (http(s)://user:password@host:port)
        instead of chDB in the data dir; `database`: the database of the tables."""
        self.name = name
        self.database = database
        self.data_dir = tmp / f"{name}-data"
        self.web_port = free_port()
        self.topics = {
            "impressions": f"{name}.impressions",
            "clicks": f"{name}.clicks",
            "inference_logs": f"{name}.inference-logs",
            "sensor_readings": f"{name}.sensor-readings",
            "labels": f"{name}.labels",
            "conversions": f"{name}.conversions",
            "alerts": f"{name}.alerts",
            "dead_letter": f"{name}.dead-letter",
            "late_events": f"{name}.late-events",
            "checkpoints": f"{name}.checkpoints",
        }
        group_id = f"{name}-group"
        if shared is not None:
            self.topics = dict(shared.topics)
            group_id = shared.config["kafka"]["group_id"]
        config: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "web_port": self.web_port,
            "checkpoint_interval_s": 1.0,
            "idle_timeout_s": 5.0,
            "kafka": {
                "bootstrap": bootstrap,
                "partitions": partitions,
                "group_id": group_id,
                # group joins on Tansu wait half of it, rounded up to whole seconds (3 s
                # and 5 s at the defaults, 2 s here; 2 s, with 3 s too, at 4 s), and a
                # killed worker's partitions move after it: short on this one host
                "session_timeout_s": 4.0,
            },
            "clickhouse": {
                "dsn": clickhouse_dsn or f"chdb://{self.data_dir / 'clickhouse'}",
                "database": database,
            },
            "topics": self.topics,
        }
        for dotted, value in overrides.items():
            node = config
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        self.config = config
        self.path = tmp / f"{name}.toml"
        self.path.write_text(to_toml(config))
        self.bootstrap = bootstrap
        self.test_faults: tuple[str, ...] = ()  # STREAMWATCH_TEST_FAULTS for its workers

    def settings(self) -> Any:
        from streams.config import load_settings

        return load_settings(self.path, env={})

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWATCH_")}
        env["STREAMWATCH_CONFIG"] = str(self.path)
        # test-only fault injection (streams/runtime/faults.py); the outage endpoint needs it too
        faults = set(self.test_faults)
        if self.config.get("debug_endpoints"):
            faults.add("clickhouse")
        if faults:
            env["STREAMWATCH_TEST_FAULTS"] = ",".join(sorted(faults))
        env["PYTHONPATH"] = str(ROOT)
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows as dicts, through the CLI (the worker's web API while it runs)."""
        done = self.cli("query", "--json", sql)
        if done.returncode != 0:
            raise AssertionError(f"query failed: {done.stderr.strip()}")
        return [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]


class WorkerProcess:
    def __init__(self, deployment: Deployment, log_name: str = "worker") -> None:
        self.d = deployment
        self.log_path = deployment.data_dir.parent / f"{deployment.name}-{log_name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.d.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "-v", "run"],
            env=self.d.env(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_http("/health", timeout=60, accept_503=True)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.d.web_port}{path}"

    def wait_http(self, path: str, timeout: float, accept_503: bool = False) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.url(path), timeout=5) as response:
                    return orjson.loads(response.read())
            except urllib.error.HTTPError as exc:
                if accept_503 and exc.code == 503:
                    return orjson.loads(exc.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker did not answer {path} in {timeout} s; log:\n{self.log()}")

    def query(self, sql: str) -> list[dict[str, Any]]:
        body = self.wait_http("/api/query?" + urllib.parse.urlencode({"sql": sql}), 30)
        return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]

    def wait_until(
        self, check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if check():
                return
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}; worker log:\n{self.log()}")

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except FileNotFoundError:
            return ""

    def metric(self, name: str) -> float:
        """A Prometheus counter or gauge of the running worker, summed over labels."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((f"{name}{{", f"{name} "))
        )

    def stop(self, timeout: float = 60) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"worker did not stop on SIGTERM:\n{self.log()}") from None
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None


def inference_only(start_ms: int, duration_s: int, seed: int, **options: Any) -> Any:
    """A simulation of inference logs and their labels only (no ads, no sensors)."""
    from streams.cli.simulate import Scenario

    return Scenario(
        start_ms=start_ms,
        duration_s=duration_s,
        campaigns=1,
        experiment_campaigns=0,
        impressions_per_s=0.0,
        sensors=0,
        seed=seed,
        **options,
    )


def topic_names(d: Deployment, logical: Iterable[str] = INPUT_TOPICS) -> dict[str, str]:
    """Logical input topic -> the deployment's topic."""
    return {t: d.topics[t.replace("-", "_")] for t in logical}


def simulated(d: Deployment, scenario: Any, logical: Iterable[str] = INPUT_TOPICS) -> list[Message]:
    """The simulator's messages of the `logical` topics, in order, on the deployment's
    topics (the partition left to the key)."""
    from streams.cli.simulate import Simulator

    names = topic_names(d, logical)
    return [
        (names[t], k.encode(), v, None) for t, k, v in Simulator(scenario).messages() if t in names
    ]


def tail(
    d: Deployment, ts: int, partitions: int, logical: Iterable[str] = INPUT_TOPICS
) -> list[Message]:
    """One event per partition and `logical` topic at `ts`, on that partition, keyed
    (key field too) `zz-tail-<partition>`: far enough ahead of a run, it closes every
    window of the run on every task."""
    names = topic_names(d, logical)
    out: list[Message] = []
    for p in range(partitions):
        key = f"zz-tail-{p}"
        imp = {"impression_id": key, "ts": ts, "campaign_id": key, "user_id": "u"}
        events = {
            "labels": {"request_id": key, "ts": ts, "model_id": key, "label": 0},
            "impressions": imp,
            "clicks": {**imp, "click_id": key},
            "inference-logs": {
                "request_id": key, "ts": ts, "model_id": key, "model_version": "tail",
                "features": {}, "prediction": 0.0, "latency_ms": 1.0, "status": "ok",
            },
            "sensor-readings": {"sensor_id": key, "ts": ts, "values": {"temperature": 0.0}},
        }  # fmt: skip
        out += [
            (names[t], key.encode(), orjson.dumps(e), p) for t, e in events.items() if t in names
        ]
    return out


def produce(
    bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes | None, int | None]]
) -> int:
    """Produce (topic, key, value, partition or None) in order; return how many."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 10,
            "enable.idempotence": False,
            "message.max.bytes": 10_000_000,
        }
    )
    n = 0
    for topic, key, value, partition in messages:
        kwargs: dict[str, Any] = {"key": key, "value": value}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    assert producer.flush(30) == 0
    return n


# quiet after reading past the ends the broker reported (consume_all)
CAUGHT_UP_QUIET_S = 0.5


def consume_all(
    bootstrap: str,
    topic: str,
    idle_s: float = 3.0,
    timeout: float = 60,
    settled: bool = True,
) -> list[Any]:
    """Every message of a topic, read from the start until it stays quiet for idle_s,
    or, with `settled` (what is still to come is not wanted: the topic's producers
    stopped or flushed, or the caller polls), sooner: once every partition is read past
    the end the broker reported at the start and then stays quiet for
    CAUGHT_UP_QUIET_S. Tansu reports the base offset of its last record batch + 1 (too
    low), and a fetch returns that batch whole: past it, everything the topic held at
    the call has been read."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.time_ns()}",
            "enable.auto.commit": False,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    read = dict.fromkeys(parts, 0)  # per partition, the offset after the last message read
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < deadline:
        quiet = time.monotonic() - last
        caught_up = settled and all(read[p] >= ends[p] for p in parts)
        if quiet >= idle_s or (caught_up and quiet >= min(idle_s, CAUGHT_UP_QUIET_S)):
            break
        batch = consumer.consume(500, 0.1 if caught_up else 0.5)
        for m in batch:
            if not m.error():
                out.append(m)
                read[m.partition()] = max(read[m.partition()], m.offset() + 1)
                last = time.monotonic()
    consumer.close()
    return out


def ctr_tail(
    topics: dict[str, str], ts: int, partitions: int = 4, prefix: str = ""
) -> list[Message]:
    """The tail of CTR traffic: per partition an impression and its click at `ts`
    (campaign `zz-{prefix}tail-{p}`, left out of the checks by `NOT LIKE 'zz-%'`).
    With `ts` past the last window's end + attribution + lateness, it moves every
    partition's watermark past the last windows, which makes them final."""
    messages: list[Message] = []
    for p in range(partitions):
        c = f"zz-{prefix}tail-{p}"
        imp = {"impression_id": f"{prefix}tail{p}", "ts": ts, "campaign_id": c, "user_id": "u"}
        clk = {"click_id": f"{prefix}tail{p}", **imp}
        messages.append((topics["impressions"], c.encode(), orjson.dumps(imp), p))
        messages.append((topics["clicks"], c.encode(), orjson.dumps(clk), p))
    return messages


CTR_COUNTS = ("impressions", "clicks", "orphan_clicks", "duplicate_clicks")


def ctr_rows(rows: Iterable[dict[str, Any]]) -> list[tuple]:
    """`ctr_windows` rows (with `ws` = window_start in epoch ms) as sorted tuples
    (ws, campaign, variant, impressions, clicks, orphans, duplicates), the shape
    of `tests.reference.ctr_reference`."""
    return sorted(
        (r["ws"], r["campaign_id"], r["variant"], *(r[c] for c in CTR_COUNTS)) for r in rows
    )


def input_ends(d: Deployment) -> dict[tuple[str, int], int]:
    """Per input (topic, partition), the offset after its last message (read back:
    Tansu's reported high watermarks are wrong)."""
    ends: dict[tuple[str, int], int] = {}
    for name in ("impressions", "clicks"):
        for m in consume_all(d.bootstrap, d.topics[name], idle_s=0.5):
            tp = (m.topic(), m.partition())
            ends[tp] = max(ends.get(tp, 0), m.offset() + 1)
    return ends


def committed(
    d: Deployment, tps: list[tuple[str, int]] | None = None
) -> dict[tuple[str, int], int]:
    """The worker group's committed offsets (read without joining the group), of
    `tps` or of every partition of the input topics (negative: none committed)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": d.bootstrap,
            "group.id": d.config["kafka"]["group_id"],
            "enable.auto.commit": False,
        }
    )
    try:
        if tps is None:
            tps = []
            for name in ("impressions", "clicks"):
                topic = d.topics[name]
                parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                tps += [(topic, p) for p in sorted(parts)]
        found = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): tp.offset for tp in found}


def uninterrupted_alerts(d: Deployment, sent: list[Message]) -> dict[str, dict[str, Any]]:
    """Alerts of an uninterrupted run, the reference for crash and rebalance tests:
    the worker's pipeline in-process, fed every message with the partition and
    offset it has on the broker, in the order sent, then left idle."""
    where: dict[tuple[str, bytes], tuple[int, int]] = {}
    for name in ("impressions", "clicks"):
        topic = d.topics[name]
        for m in consume_all(d.bootstrap, topic, idle_s=1.0):
            where[(topic, m.value())] = (m.partition(), m.offset())
    alerts: list[Any] = []

    class Outputs:
        def rows(self, table: str, rows: list[Row]) -> None:
            pass

        def alerts(self, out: list[Any]) -> None:
            alerts.extend(out)

        def rejected(self, message: RawMessage, rejection: Any) -> None:
            pass

        def late(self, *args: Any) -> None:
            raise AssertionError("the reference run saw a late event")

    settings = d.settings()
    t = settings.topics
    logical = {t.impressions: "impressions", t.clicks: "clicks"}
    clock = [time.time()]
    pipeline = Pipeline(build_monitors(settings), Outputs(), logical, clock=lambda: clock[0])
    raw = []
    for topic, key, value, _ in sent:
        partition, offset = where[(topic, value)]
        raw.append(RawMessage(topic, partition, offset, key, value))
    pipeline.assign(sorted({m.partition() for m in raw}), {})
    for i in range(0, len(raw), 500):
        pipeline.process(raw[i : i + 500])
    # then the input stays quiet, as for the worker: idle partitions catch up
    clock[0] += settings.idle_timeout_s + 1
    pipeline.tick()
    out: dict[str, dict[str, Any]] = {}
    for a in alerts:
        content = orjson.loads(msgspec.json.encode(a))
        assert out.setdefault(a.alert_id, content) == content
    return out
