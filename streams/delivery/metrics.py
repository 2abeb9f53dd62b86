"""Prometheus metrics of delivery (served at /metrics with the worker's others)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DELIVERED = Counter("streamwatch_deliveries_total", "Alerts delivered to a receiver", ["receiver"])
FAILURES = Counter(
    "streamwatch_delivery_failures_total",
    "Failed delivery attempts (each is retried)",
    ["receiver"],
)
PENDING = Gauge("streamwatch_delivery_pending", "Alerts waiting for a receiver", ["receiver"])
OLDEST = Gauge(
    "streamwatch_delivery_oldest_pending_seconds",
    "Age of the oldest alert waiting for a receiver (0: none waiting)",
    ["receiver"],
)
REPOSTS = Counter(
    "streamwatch_alertmanager_reposts_total", "Re-posts of firing alerts to Alertmanager"
)
SKIPPED_OLD = Counter(
    "streamwatch_delivery_skipped_old_total",
    "Alerts not delivered because they were published before delivery.max_age_s",
)
DROPPED = Counter(
    "streamwatch_delivery_dropped_total",
    "Alerts that could not be read or formatted for a receiver (a bug or a foreign "
    "message on the alerts topic; logged with the alert_id)",
    ["receiver"],
)
