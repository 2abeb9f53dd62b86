"""The worker and its runtime: from Kafka batches to monitor tasks, rows, alerts and checkpoints.

`worker` assembles everything; `source` (the consumer group) feeds `cycle` (flush,
checkpoint, commit, backpressure), which drives `pipeline` (decode, route to monitor tasks,
late events) over the monitors listed by `monitors`; `sinks` write rows to ClickHouse and
alerts to Kafka; `repartition` re-keys through internal topics; `app` and `web` are the faust
app and its pages (`static/` the dashboard), `health` and `metrics` what they report;
`correlate`, `retrain` and `sql_rules` run beside the monitors (`parts`: the worker as they
and `web` see it, so they never import `worker` back); `faults` is test-only.
Uses `streams.connectors` for I/O; never imports `streams.cli`.
"""
