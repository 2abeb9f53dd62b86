"""Prometheus metrics of the worker, served at /metrics by its web server."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("streamwatch_events_consumed_total", "Messages consumed", ["topic"])
PROCESSED = Counter(
    "streamwatch_events_processed_total",
    "Messages decoded and fed to the monitors (consumed = processed + rejected, "
    "less replayed messages a checkpoint already holds)",
    ["topic"],
)
OPERATOR_ERRORS = Counter(
    "streamwatch_operator_errors_total",
    "Exceptions a monitor raised on input the schema accepted (a bug; logged at error level)",
    ["monitor", "stage"],
)
REJECTED = Counter(
    "streamwatch_events_rejected_total", "Messages sent to the dead letter", ["topic", "reason"]
)
LATE = Counter(
    "streamwatch_events_late_total", "Events later than the allowed lateness", ["monitor", "topic"]
)
WINDOWS_CLOSED = Counter(
    "streamwatch_rows_emitted_total",
    "Rows emitted by operators (closed windows, anomalies)",
    ["table"],
)
ALERTS = Counter("streamwatch_alerts_total", "Alert events raised", ["kind", "severity", "status"])
SINK_BATCH = Histogram(
    "streamwatch_sink_batch_rows",
    "Rows per ClickHouse insert",
    ["table"],
    buckets=(1, 10, 100, 1000, 10_000, 100_000),
)
WRITE_SECONDS = Histogram(
    "streamwatch_clickhouse_write_seconds", "ClickHouse insert latency", ["table"]
)
RESULT_DELAY = Histogram(
    "streamwatch_result_delay_seconds",
    "From a result's creation (its window closing) to its delivery: a batch of rows "
    "in ClickHouse, or an alert acknowledged by the broker",
    ["output"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60),
)
SINK_FAILURES = Counter("streamwatch_sink_failures_total", "Failed sink writes", ["sink"])
BUFFERED = Gauge("streamwatch_sink_buffered_rows", "Rows waiting for ClickHouse")
WATERMARK_DELAY = Gauge(
    "streamwatch_watermark_delay_seconds", "Wall clock minus the watermark", ["monitor"]
)
WATERMARK = Gauge("streamwatch_watermark_seconds", "Event-time watermark", ["monitor"])
CHECKPOINTS = Counter("streamwatch_checkpoints_total", "Checkpoints written")
CHECKPOINT_SECONDS = Gauge(
    "streamwatch_checkpoint_seconds", "Wall time of the last checkpoint (snapshot and write)"
)
CHECKPOINT_EVERY = Gauge(
    "streamwatch_checkpoint_interval_seconds",
    "Seconds between checkpoints now: checkpoint_interval_s, or longer when checkpoints "
    "take more than checkpoint_max_share of the time",
)
LAG = Gauge(
    "streamwatch_consumer_lag",
    "Messages behind the end of the partition, where the broker reports it",
    ["topic", "partition"],
)
# Set at scrape time from the source's clock (see KafkaSource): the liveness signal
LAST_POLL_AGE = Gauge(
    "streamwatch_last_poll_age_seconds",
    "Seconds since the consumer last returned from a poll of the broker",
)
BACKPRESSURE = Gauge(
    "streamwatch_backpressure_paused",
    "1 while consumption is paused on purpose until ClickHouse takes the buffered rows",
)
FAILED = Gauge(
    "streamwatch_worker_failed",
    "1 once an unhandled failure occurred: the worker is exiting to be restarted",
)
UNJUDGEABLE = Gauge(
    "streamwatch_unjudgeable_series",
    "Series a monitor can never judge with its configuration (a window that cannot "
    "hold min_points readings at the series' cadence); listed in /health",
    ["monitor"],
)
FORWARDED = Counter(
    "streamwatch_repartition_forwarded_total",
    "Events re-keyed onto an internal repartition topic",
    ["topic"],
)
REPARTITION_DUPLICATES = Counter(
    "streamwatch_repartition_duplicates_total",
    "Re-keyed records skipped as replayed duplicates",
)
