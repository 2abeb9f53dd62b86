"""streamwatch's service around the pure operators (`operators/`), grouped by job.

`config` (read by everything, so at the top: settings from defaults, TOML and the
environment), `connectors` (I/O with Kafka and ClickHouse), `runtime` (the worker and its
runtime), `delivery` (alert delivery to receivers), `cli` (the command line, simulator and
demo). Imports go one way: config <- connectors <- runtime <- cli (delivery: config, connectors).
"""
