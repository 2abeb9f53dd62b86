"""I/O with Kafka and ClickHouse, and nothing else: no monitor logic, no worker cycle.

`kafka` (confluent-kafka clients, topic creation), `clickhouse` (the chDB/server client,
schema, `Writer` and `Reader`), `sqlguard` (judging a user's SQL before it runs),
`checkpoints` (task snapshots on a Kafka topic), `dead_letters` (bounded dead-letter
envelopes), `embedded` (the embedded Tansu broker), `preflight` (start-up checks of the
broker, the ClickHouse server and the data directory). Depends only on `streams.config`.
"""
