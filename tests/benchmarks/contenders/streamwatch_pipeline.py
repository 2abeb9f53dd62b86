"""streamwatch itself: the real worker (`streams.runtime.worker.Worker`), end to end.

The same code `streamwatch run` starts: the faust app and its web server,
the confluent-kafka consumer group, decode, the monitors of one pipeline,
rows into chDB, alerts and checkpoints onto the broker, offsets committed
after checkpoints. Only the monitors of the dataset's pipeline are enabled
(`options.monitors`):

    ctr     the CTR monitor (join, windows, baseline, rules, change detection)
    sensor  the sensor monitor (sliding z-score, IQR, rise) and clustering
    drift   the drift monitor (PSI, KS, chi-square, JS) and service health
    quality the same two and the quality monitor (labels joined to the
            predictions, metrics per window, degradation, CBPE estimate), with
            the label delay of the demo (`streams.cli.demo.DEMO_LABEL_DELAY_MS`):
            the simulator's labels come within it, and windows become final
            within a run of a few hundred thousand messages

Measured from the first consumed batch to the moment every input message has
been processed and every row it produced is in ClickHouse (a flush that left
nothing buffered). The delays from a window's close to its row in ClickHouse
and to its alert's delivery on the alert topic come from the worker's own
measurements (`Sinks.delays`, also exported as the Prometheus histogram
`streamwatch_result_delay_seconds`), as they stand when the clock stops: the
results the worker's stop makes afterwards (it finishes the tasks whose input is
over, closing every window still open at once, then checkpoints) are not a window
closed by the stream, and at 50,000 sensors their alerts waited 1.1-1.7 s for
the other tasks' finishing (BENCHMARKS.md, session 18).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from streams.cli.demo import DEMO_LABEL_DELAY_MS
from streams.config import load_settings
from streams.connectors.embedded import free_port
from streams.runtime.monitors import OPERATORS
from streams.runtime.worker import Worker
from tests.benchmarks.contenders.common import Clock, Spec, rss_mb, write_result

PIPELINES = {
    "ctr": ("ctr",),
    "sensor": ("sensor", "cluster"),
    "drift": ("drift", "service"),
    "quality": ("drift", "service", "quality"),
}
# every monitor the worker knows is switched explicitly, so one that is on by default
# (quality, since contract v2) runs only in the pipelines that name it
ALL_MONITORS = tuple(OPERATORS)
MILLION = 1_000_000


def settings_for(spec: Spec) -> Any:
    enabled = PIPELINES[spec.options.get("pipeline", spec.dataset.kind)]
    logical_to_field = {
        "impressions": "impressions",
        "clicks": "clicks",
        "inference-logs": "inference_logs",
        "sensor-readings": "sensor_readings",
        "labels": "labels",
    }
    topics = {f: f"{spec.group}.unused-{f}" for f in logical_to_field.values()}
    for logical, topic in spec.dataset.topics.items():
        topics[logical_to_field[logical]] = topic
    for output in ("alerts", "dead_letter", "late_events", "checkpoints"):
        topics[output] = f"{spec.group}.{output}"
    overrides: dict[str, Any] = {
        "data_dir": str(spec.workdir),
        "web_port": free_port(),
        "kafka.bootstrap": spec.bootstrap,
        "kafka.group_id": spec.group,
        "kafka.partitions": spec.dataset.partitions,
        "clickhouse.dsn": f"chdb://{spec.workdir / 'clickhouse'}",
        "topics": topics,
    }
    for name in ALL_MONITORS:
        overrides[f"monitors.{name}.enabled"] = name in enabled
    if "quality" in enabled:
        overrides["monitors.quality.options"] = {"label_delay_ms": DEMO_LABEL_DELAY_MS}
    if spec.options.get("keying"):  # e.g. "repartition": re-key every input topic
        overrides["keying"] = dict.fromkeys(spec.dataset.topics, spec.options["keying"])
    return load_settings(env={}, overrides=overrides)


class Meter:
    """Counts what the worker processed; stops the clock when the partitions it
    owns are read to their end offsets and every row is written.

    With several workers in one group each stops at the end of its own share;
    the harness times the group from the first start to the last stop."""

    def __init__(self, worker: Worker, spec: Spec, clock: Clock) -> None:
        self.worker = worker
        self.ends = {
            (topic, p): end
            for topic, ends in spec.dataset.end_offsets.items()
            for p, end in ends.items()
        }
        self.clock = clock
        self.processed = 0
        self.done = False
        # the worker's delays when the clock stopped (`watched_flush`)
        self.delays: dict[str, list[float]] = {}
        self.rss_by_million: dict[int, float] = {}
        # re-keyed records (streams/runtime/repartition.py): their internal topics are read
        # to what was forwarded (fresh topics: offsets = counts)
        self.forwarded: dict[tuple[str, int], int] = {}
        process, flush, forward = (
            worker.pipeline.process,
            worker.sinks.flush,
            worker.sinks.forward,
        )

        def counted_forward(topic: str, partition: int, *args: Any) -> None:
            forward(topic, partition, *args)
            tp = (topic, partition)
            self.forwarded[tp] = self.forwarded.get(tp, 0) + 1

        def counted_process(messages: Any) -> None:
            self.clock.start()
            process(messages)
            before = self.processed // MILLION
            groups = messages.values() if isinstance(messages, dict) else [messages]
            self.processed += sum(len(batch) for batch in groups)
            if self.processed // MILLION > before:
                self.rss_by_million[self.processed // MILLION] = rss_mb()

        def watched_flush(*args: Any, **kwargs: Any) -> None:
            flush(*args, **kwargs)  # raises on failure: not done then
            if not self.done and not self.worker.sinks.buffered and self._read_to_end():
                self.clock.stop()
                self.done = True
                self.delays = {k: list(v) for k, v in self.worker.sinks.delays.items()}

        worker.pipeline.process = counted_process  # type: ignore[method-assign]
        worker.sinks.forward = counted_forward  # type: ignore[method-assign]
        worker.sinks.flush = watched_flush  # type: ignore[method-assign]

    def _read_to_end(self) -> bool:
        if not self.processed:
            return False
        positions = self.worker.pipeline.start_offsets()  # (topic, partition) -> next offset
        ends = {**self.ends, **self.forwarded}
        return bool(positions) and all(
            offset >= ends.get(tp, 0) for tp, offset in positions.items()
        )


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    spec = Spec.from_argv()
    settings = settings_for(spec)
    worker = Worker(settings)
    clock = Clock()
    meter = Meter(worker, spec, clock)
    worker.run(until=lambda: meter.done)
    rows = {}
    with contextlib.suppress(Exception):
        for table in (
            "ctr_windows",
            "sensor_windows",
            "sensor_anomalies",
            "drift_scores",
            "inference_windows",
            "quality_windows",
        ):
            rows[table] = worker.query(
                f"SELECT count() FROM streamwatch.{table} FINAL"
            ).result_rows[0][0]
    write_result(
        spec,
        clock,
        meter.processed,
        delays=meter.delays,
        rows=rows,
        alerts=worker.query("SELECT count() FROM streamwatch.alerts FINAL").result_rows[0][0],
        rss_by_million=meter.rss_by_million,
    )


if __name__ == "__main__":
    main()
