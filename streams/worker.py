"""Assemble and run a worker: services, sinks, pipeline, runtime, faust app.

With nothing configured, the embedded broker (Tansu) and embedded ClickHouse
(chDB under data_dir) are started here; their addresses are written to
`data_dir/embedded.json` so `streamwatch simulate`, `alerts` and `query` in
another terminal find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams import kafka, repartition
from streams.checkpoints import CheckpointStore
from streams.clickhouse import Writer, connect, ensure_schema
from streams.config import Settings
from streams.embedded import EmbeddedBroker
from streams.monitors import build_monitors
from streams.pipeline import Pipeline
from streams.runtime import Runtime
from streams.sinks import Sinks

log = logging.getLogger("streamwatch.worker")


def embedded_file(settings: Settings) -> Path:
    return settings.data_path() / "embedded.json"


def read_embedded(settings: Settings) -> dict[str, Any] | None:
    """Addresses of a running embedded worker, or None."""
    path = embedded_file(settings)
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(info["pid"], 0)
    except (ProcessLookupError, PermissionError, KeyError):
        return None
    return info


class Services:
    """The broker and ClickHouse this process uses: embedded or configured."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: EmbeddedBroker | None = None

    def start(self) -> Settings:
        """Start what is embedded; return settings pointing at the live services."""
        s = self.settings
        s.data_path().mkdir(parents=True, exist_ok=True)
        if s.embedded_kafka:
            self.broker = EmbeddedBroker(log_path=s.data_path() / "tansu.log").start()
            s.kafka.bootstrap = self.broker.bootstrap
            log.info("embedded Kafka broker (Tansu) on %s", self.broker.bootstrap)
        return s

    def publish_addresses(self) -> None:
        s = self.settings
        info = {
            "pid": os.getpid(),
            "kafka": s.kafka.bootstrap,
            "web_port": s.web_port,
            "clickhouse": s.clickhouse_dsn(),
        }
        embedded_file(s).write_text(json.dumps(info))

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            info = json.loads(embedded_file(self.settings).read_text())
            if info.get("pid") == os.getpid():
                embedded_file(self.settings).unlink()
        if self.broker:
            self.broker.stop()
            self.broker = None


def tune_garbage_collector() -> None:
    """Collect cycles far less often than CPython's default (every 700 allocations).

    The worker holds hundreds of thousands of live containers (open windows,
    impressions awaiting clicks) and allocates a few objects per event, so the
    default thresholds scan that state again and again: measured on the CTR
    pipeline, 25 % of its time (5.2 against 3.8 µs per event). Its state has
    no reference cycles to reclaim; the few the libraries make are still
    collected. What was loaded at start-up is frozen out of every scan."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Worker:
    """One streamwatch worker process: consume, compute, write, alert."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        kafka.ensure_topics(settings)
        self.client = connect(settings.clickhouse_dsn())
        ensure_schema(self.client, settings.clickhouse.database)
        self.writer = Writer(self.client, settings.clickhouse.database)
        self.producer = kafka.producer(settings)
        self.sinks = Sinks(self.writer, self.producer, settings.topics)
        monitors = build_monitors(settings)
        plan = next((m.plan for m in monitors if m.plan), None)
        if plan:  # re-keying: internal topics, and a producer that keeps their order
            repartition.ensure_internal_topics(settings, plan)
            self.sinks.forward_producer = kafka.producer(
                settings, **repartition.forward_producer_config()
            )
        t = settings.topics
        logical = {
            t.impressions: "impressions",
            t.clicks: "clicks",
            t.inference_logs: "inference-logs",
            t.sensor_readings: "sensor-readings",
        }
        self.pipeline = Pipeline(
            monitors, self.sinks, logical, repartition_idle_s=settings.repartition_idle_s
        )
        self.store = CheckpointStore(
            settings.kafka_client_config(), t.checkpoints, settings.kafka.group_id
        )
        self.runtime = Runtime(settings, self.pipeline, self.sinks, self.store)
        from streams.app import build_app
        from streams.source import KafkaSource
        from streams.web import register_pages

        self.source = KafkaSource(settings, self.runtime, self.pipeline.topics)
        self.app = build_app(settings, self.runtime)
        register_pages(self.app, self)

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Run until SIGINT/SIGTERM, or until `until()` turns true (checked each second)."""
        tune_garbage_collector()
        asyncio.run(self._main(until))

    async def _main(self, until: Callable[[], bool] | None) -> None:
        import signal

        import faust

        class FaustWorker(faust.Worker):
            def install_signal_handlers(self) -> None:
                """SIGINT/SIGTERM are ours (below): the source stops first."""

        worker = FaustWorker(
            self.app,
            loglevel="warning",
            loop=asyncio.get_running_loop(),
            daemon=False,
            redirect_stdouts=False,
            override_logging=False,
        )
        # installed before anything starts, so a signal during start-up is ours
        # too: the source stops first, every result is written and committed,
        # and only then does faust take the app down
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await worker.start()
        source = asyncio.create_task(self.source.run(), name="streamwatch-source")
        try:
            while not stop.is_set() and not self.source.finished.is_set():
                if until is not None and until():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            log.info("stopping: draining the source")
            self.source.stop()
            try:
                await asyncio.wait_for(source, 120)
            except TimeoutError:
                log.error("the source did not stop within 120 s; its results will be replayed")
            log.info("stopping: the faust app")
            await worker.stop()
            self.producer.flush(10)
            log.info("stopped")

    def query(self, sql: str, **kwargs: Any) -> Any:
        return self.writer.query(sql, **kwargs)
