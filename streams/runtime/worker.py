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
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from operators import sensor_slots
from operators.state import StateFormatError
from streams.config import ConfigError, Settings
from streams.connectors import kafka
from streams.connectors.checkpoints import CheckpointStore
from streams.connectors.clickhouse import Writer, connect, ensure_schema
from streams.connectors.embedded import EmbeddedBroker
from streams.connectors.threads import in_thread
from streams.runtime import repartition
from streams.runtime.cycle import Runtime
from streams.runtime.faults import Faults, FaultyProducer, FaultyWriter
from streams.runtime.monitors import OPERATORS, build_monitors
from streams.runtime.pipeline import Pipeline
from streams.runtime.sinks import Sinks

log = logging.getLogger("streamwatch.worker")

# an unhandled failure to exit: no checkpoint is written then, only the
# consumer leaves its group and the web server stops
FAILED_EXIT_S = 10.0
# ... after answering 503 "failed" on /health (and streamwatch_worker_failed 1 on
# /metrics) this long, so a probe or scrape under way sees why it goes
FAILED_LINGER_S = 2.0


class WorkerFailed(RuntimeError):
    """An unhandled failure of the consume loop, a sink or a timer."""


class ExitWatchdog:
    """Ends the process with `code` if it still runs `seconds` after arming.

    The worker's blocking calls run in threads (consumer, producer, ClickHouse);
    one that never returns (a broker gone, a query holding the writer's lock)
    would keep the interpreter waiting forever in `threading._shutdown` or in
    asyncio's executor shutdown. A daemon thread still runs then, and
    `os._exit` does not wait for anyone."""

    def __init__(self, seconds: float, code: int, why: str) -> None:
        self.seconds, self.code, self.why = seconds, code, why
        self.cancelled = threading.Event()
        threading.Thread(target=self._run, name="streamwatch-exit-watchdog", daemon=True).start()

    def disarm(self) -> None:
        self.cancelled.set()

    def _run(self) -> None:
        if self.cancelled.wait(self.seconds):
            return
        stuck = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        log.error(
            "still running %.0f s after %s (threads: %s): exiting now with code %d",
            self.seconds,
            self.why,
            ", ".join(stuck),
            self.code,
        )
        import faulthandler
        import sys

        with contextlib.suppress(Exception):
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(self.code)


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
    default thresholds scan that state again and again: on the CTR pipeline a
    quarter of its time (BENCHMARKS.md, "Measurements behind design choices"). Its state has
    no reference cycles to reclaim; the few the libraries make are still
    collected. What was loaded at start-up is frozen out of every scan."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def warm_up(monitor_names: set[str]) -> None:
    """What the operators leave to their first use (so that the CLI, which reads the
    configuration and so imports them, never pays it), done at the worker's start rather
    than on its first readings: scipy.stats and river imported, numba's typed-list
    methods of the sensor monitor compiled (not in its on-disk cache)."""
    import river.cluster
    import river.drift
    import river.preprocessing  # noqa: F401
    import scipy.stats  # noqa: F401

    if "sensor" in monitor_names:
        sensor_slots.warm_lists()


class Worker:
    """One streamwatch worker process: consume, compute, write, alert."""

    def __init__(self, settings: Settings, discard_state: Iterable[str] = ()) -> None:
        """`discard_state`: monitors whose checkpointed state is not restored: their
        tasks start afresh at the group's committed offsets, their open windows and
        learned baselines lost (`streamwatch run --discard-state`, docs/operations.md
        "Upgrading")."""
        self.settings = settings
        discard_state = sorted(set(discard_state))
        unknown = [name for name in discard_state if name not in OPERATORS]
        if unknown:
            raise ConfigError(
                f"--discard-state {', '.join(unknown)}: no such monitor; known: "
                f"{', '.join(sorted(OPERATORS))}"
            )
        kafka.ensure_topics(settings)
        self.client = connect(settings.clickhouse_dsn())
        ensure_schema(self.client, settings.clickhouse.database)
        self.faults = Faults.from_env()  # test-only; see streams/runtime/faults.py
        writer = Writer(self.client, settings.clickhouse.database)
        self.writer: Any = FaultyWriter(writer, self.faults) if self.faults.armed else writer
        producer = kafka.producer(settings)
        self.producer: Any = (
            FaultyProducer(producer, self.faults) if self.faults.armed else producer
        )
        self.watchdog: ExitWatchdog | None = None
        self.sinks = Sinks(self.writer, self.producer, settings.topics)
        monitors = build_monitors(settings)
        self.monitor_names = {m.name for m in monitors}
        plan = next((m.plan for m in monitors if m.plan), None)
        if plan:  # re-keying: internal topics, and a producer that keeps their order
            repartition.ensure_internal_topics(settings, plan)
            self.sinks.forward_producer = kafka.producer(
                settings, **repartition.forward_producer_config()
            )
        t = settings.topics
        logical = {topic: name for name, topic in t.inputs().items()}
        self.pipeline = Pipeline(
            monitors,
            self.sinks,
            logical,
            repartition_idle_s=settings.repartition_idle_s,
            discard_state=discard_state,
        )
        self.store = CheckpointStore(
            settings.kafka_client_config(),
            t.checkpoints,
            settings.kafka.group_id,
            part_bytes=settings.checkpoint_part_bytes,
        )
        self.runtime = Runtime(settings, self.pipeline, self.sinks, self.store, self.faults)
        from streams.runtime.app import build_app
        from streams.runtime.source import KafkaSource
        from streams.runtime.web import register_pages

        self.source = KafkaSource(settings, self.runtime, self.pipeline.topics)
        self.app = build_app(settings, self.runtime)
        register_pages(self.app, self)
        # possible causes, retraining requests, SQL rules (docs/causes.md)
        from streams.runtime import correlate, sql_rules

        self.causes = correlate.install(self)
        self.sql_rules = sql_rules.install(self)

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Run until SIGINT/SIGTERM, or until `until()` turns true (checked each second).

        On `until()` the input is taken to be over: at the stop every monitor task is
        finished (`MonitorTask.finish`) and its last windows written before the final
        checkpoint. On a signal only the tasks whose input has been silent for
        `idle_timeout_s` (and their lateness) are finished; the others are
        checkpointed as they are and a restart carries them on.

        Raises WorkerFailed after an unhandled failure (the CLI exits non-zero).
        Whatever hangs, the process is gone within `stop_timeout_s` (settings;
        under Kubernetes' 120 s grace period) of SIGTERM and FAILED_EXIT_S of a
        failure (ExitWatchdog)."""
        tune_garbage_collector()
        try:
            asyncio.run(self._main(until))
        finally:
            if self.runtime.failure is None and self.watchdog is not None:
                # stopped in time, every thread joined: the caller (the demo's
                # summary) may go on; after a failure the watchdog stays armed
                self.watchdog.disarm()
        if self.runtime.failure is not None:
            where, exc = self.runtime.failure
            raise WorkerFailed(f"{where} failed: {type(exc).__name__}: {exc}")

    def _failure_reason(self, source: asyncio.Task[None]) -> tuple[str, BaseException] | None:
        """An unhandled failure of the source, a sink or a timer, if any."""
        if self.runtime.failure is not None:
            return self.runtime.failure
        if source.done() and not self.source.stopping:
            exc = source.exception() if not source.cancelled() else None
            return ("the consume loop", exc or RuntimeError("the source stopped by itself"))
        if self.app.crashed:  # a faust task (e.g. a timer) crashed
            reason = self.app.crash_reason or RuntimeError("the faust app crashed")
            return ("a faust task", reason)
        return None

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
        # the input's group join runs while faust starts (its own group join, the web
        # server); the partitions are taken at the source's first poll, after that
        self.source.subscribe()
        try:
            warm_up(self.monitor_names)  # while the join waits
            await worker.start()
        except BaseException:
            await in_thread(self.source.consumer.close)  # leave the group now
            raise
        source = asyncio.create_task(self.source.run(), name="streamwatch-source")
        failure = None
        try:
            while not stop.is_set():
                failure = self._failure_reason(source)
                if failure is not None:
                    break
                if until is not None and until():
                    # the caller says the input is over (the demo's traffic is all
                    # in): every task's last windows close and are written at the stop
                    self.runtime.end_of_input = True
                    break
                # wake at once on a signal, a recorded failure or the source's end
                waiters = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self.runtime.failed.wait()),
                ]
                await asyncio.wait([*waiters, source], timeout=1.0, return_when="FIRST_COMPLETED")
                for waiter in waiters:
                    waiter.cancel()
        finally:
            failure = failure or self._failure_reason(source)
            if failure is not None and isinstance(failure[1], StateFormatError):
                where, exc = failure
                self.runtime.fail(where, exc)  # /health and the metric say so while we stop
                # not a crash a restart cures: the same checkpoint is read again
                log.error("%s failed: %s; exiting (code 1)", where, exc)
                self.watchdog = ExitWatchdog(FAILED_EXIT_S, 1, "an unhandled failure")
                self.source.stop()
                await asyncio.sleep(FAILED_LINGER_S)
                budget = FAILED_EXIT_S / 2
            elif failure is not None:
                where, exc = failure
                self.runtime.fail(where, exc)  # /health and the metric say so while we stop
                log.error(
                    "%s failed: %s: %s; exiting (code 1) so that the supervisor restarts "
                    "the worker, which resumes from the last checkpoint",
                    where,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                self.watchdog = ExitWatchdog(FAILED_EXIT_S, 1, "an unhandled failure")
                self.source.stop()  # no more batches meanwhile
                await asyncio.sleep(FAILED_LINGER_S)
                budget = FAILED_EXIT_S / 2
            else:
                timeout = self.settings.stop_timeout_s
                self.watchdog = ExitWatchdog(timeout, 1, "the stop request")
                budget = timeout * 0.85  # the rest: services, interpreter exit
            await self._shutdown(worker, source, budget)

    async def _shutdown(self, worker: Any, source: asyncio.Task[None], budget: float) -> None:
        """Stop the source (which writes and checkpoints what it can, unless the
        worker failed), then faust, then flush the producer; within `budget`
        seconds in all, whatever the broker, ClickHouse or a stuck thread does."""
        deadline = time.monotonic() + budget
        log.info("stopping: draining the source")
        self.source.stop(budget * 0.5)
        try:
            await asyncio.wait_for(asyncio.shield(source), max(1.0, budget * 0.7))
        except TimeoutError:
            log.error(
                "the source did not stop within %.0f s; its results will be replayed",
                budget * 0.7,
            )
        except Exception:  # the failure itself, already logged
            pass
        log.info("stopping: the faust app")
        try:
            await asyncio.wait_for(worker.stop(), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            log.error("the faust app did not stop in time")
        self.causes.stop()  # docs/causes.md: the alerts feed, the retraining webhook
        if self.sql_rules is not None:
            self.sql_rules.stop()
        remaining = max(0.0, deadline - time.monotonic())
        await in_thread(self.producer.flush, min(10.0, remaining))
        log.info("stopped")

    def query(self, sql: str, **kwargs: Any) -> Any:
        return self.writer.query(sql, **kwargs)
