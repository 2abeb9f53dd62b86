CREATE DATABASE IF NOT EXISTS streamwatch;

CREATE TABLE IF NOT EXISTS streamwatch.ctr_windows
(
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `campaign_id` String,
    `variant` String,
    `impressions` UInt64,
    `clicks` UInt64,
    `ctr` Float64,
    `orphan_clicks` UInt64,
    `duplicate_clicks` UInt64,
    `duplicate_impressions` UInt64,
    `final` UInt8,
    `version` UInt32,
    `conversions` UInt64,
    `cvr` Float64,
    `revenue` Float64,
    `orphan_conversions` UInt64,
    `duplicate_conversions` UInt64,
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (campaign_id, variant, window_start)
COMMENT 'Tumbling event-time CTR windows; final=1 once the attribution window has passed; conversions of clicks (cvr = conversions / clicks, revenue) complete once the conversion window has passed too (version 3 where they changed after the final row)';
ALTER TABLE streamwatch.ctr_windows ADD COLUMN IF NOT EXISTS `conversions` UInt64 AFTER `version`;
ALTER TABLE streamwatch.ctr_windows ADD COLUMN IF NOT EXISTS `cvr` Float64 AFTER `conversions`;
ALTER TABLE streamwatch.ctr_windows ADD COLUMN IF NOT EXISTS `revenue` Float64 AFTER `cvr`;
ALTER TABLE streamwatch.ctr_windows ADD COLUMN IF NOT EXISTS `orphan_conversions` UInt64 AFTER `revenue`;
ALTER TABLE streamwatch.ctr_windows ADD COLUMN IF NOT EXISTS `duplicate_conversions` UInt64 AFTER `orphan_conversions`;

CREATE TABLE IF NOT EXISTS streamwatch.sensor_anomalies
(
    `ts` DateTime64(3, 'UTC'),
    `sensor_id` String,
    `metric` String,
    `value` Float64,
    `method` LowCardinality(String),
    `score` Float64,
    `threshold` Float64,
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (sensor_id, metric, method, ts)
COMMENT 'Anomalous sensor readings, one row per reading, metric and detection method';

CREATE TABLE IF NOT EXISTS streamwatch.sensor_windows
(
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `sensor_id` String,
    `metric` String,
    `n` UInt64,
    `min` Float64,
    `max` Float64,
    `mean` Float64,
    `p95` Float64,
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (sensor_id, metric, window_start)
COMMENT 'Per-window aggregates of sensor metrics';

CREATE TABLE IF NOT EXISTS streamwatch.drift_scores
(
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `model_id` String,
    `model_version` String,
    `feature` String,
    `psi` Float64,
    `ks` Nullable(Float64),
    `ks_pvalue` Nullable(Float64),
    `chi2` Nullable(Float64),
    `chi2_pvalue` Nullable(Float64),
    `js` Float64,
    `n` UInt64,
    `reference_version` String,
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_id, feature, window_start)
COMMENT 'Drift of each feature and the prediction against the reference profile';

CREATE TABLE IF NOT EXISTS streamwatch.inference_windows
(
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `model_id` String,
    `model_version` String,
    `requests` UInt64,
    `errors` UInt64,
    `error_rate` Float64,
    `latency_p50` Float64,
    `latency_p95` Float64,
    `latency_p99` Float64,
    `confidence_mean` Nullable(Float64),
    `low_confidence_ratio` Nullable(Float64),
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_id, model_version, window_start)
COMMENT 'Service health of each model version per tumbling window';

CREATE TABLE IF NOT EXISTS streamwatch.srm_checks
(
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `experiment` String,
    `unit` LowCardinality(String),
    `variants` String,
    `counts` String,
    `expected` String,
    `unexpected` String,
    `chi2` Float64,
    `p_value` Float64,
    `total` UInt64,
    `srm` UInt8,
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (experiment, unit, window_start)
COMMENT 'Sample-ratio-mismatch tests per experiment and window; counts etc. are JSON';

CREATE TABLE IF NOT EXISTS streamwatch.quality_windows
(
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `model_id` String,
    `model_version` String,
    `estimated` UInt8,
    `predictions` UInt64,
    `labelled` UInt64,
    `coverage` Float64,
    `orphan_labels` UInt64,
    `duplicate_labels` UInt64,
    `duplicate_predictions` UInt64,
    `task` LowCardinality(String),
    `accuracy` Nullable(Float64),
    `precision_macro` Nullable(Float64),
    `recall_macro` Nullable(Float64),
    `f1_macro` Nullable(Float64),
    `log_loss` Nullable(Float64),
    `brier` Nullable(Float64),
    `roc_auc` Nullable(Float64),
    `ece` Nullable(Float64),
    `per_class` String,
    `mae` Nullable(Float64),
    `rmse` Nullable(Float64),
    `mape` Nullable(Float64),
    `mape_skipped` UInt64,
    `mean_error` Nullable(Float64),
    `estimated_accuracy` Nullable(Float64),
    `final` UInt8,
    `version` UInt32,
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_id, model_version, window_start)
COMMENT 'Model quality from labels per model version and window of the prediction time; estimated=1 is a label-free CBPE estimate that the final realized row (final=1) replaces';

CREATE TABLE IF NOT EXISTS streamwatch.experiment_windows
(
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `experiment` String,
    `variant` String,
    `metric` LowCardinality(String),
    `value` Float64,
    `n` UInt64,
    `control_value` Nullable(Float64),
    `p_value` Nullable(Float64),
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (experiment, metric, variant, window_start)
COMMENT 'Per experiment arm and window: shares, guardrail metrics, crossover; control_value is the expected share or the control arm value';

CREATE TABLE IF NOT EXISTS streamwatch.alerts
(
    `alert_id` String,
    `ts` DateTime64(3, 'UTC'),
    `kind` LowCardinality(String),
    `rule` LowCardinality(String),
    `severity` LowCardinality(String),
    `status` LowCardinality(String),
    `entity` String,
    `metric` String,
    `value` Float64,
    `threshold` Float64,
    `window_start` Nullable(DateTime64(3, 'UTC')),
    `window_end` Nullable(DateTime64(3, 'UTC')),
    `message` String,
    `details` String,
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (alert_id)
COMMENT 'Every alert event also published on the alerts topic; details is a JSON object';

CREATE TABLE IF NOT EXISTS streamwatch.dead_letters
(
    `ts` DateTime64(3, 'UTC'),
    `source_topic` LowCardinality(String),
    `partition` UInt32,
    `offset` UInt64,
    `key` Nullable(String),
    `reason` LowCardinality(String),
    `error` String,
    `raw` String,
    `raw_truncated` UInt8,
    `raw_size` UInt64,
    `raw_sha256` String,
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, partition, offset)
COMMENT 'Rejected input messages (also on the dead-letter topic) with the reason; raw is base64 of the first bytes when raw_truncated';
ALTER TABLE streamwatch.dead_letters ADD COLUMN IF NOT EXISTS `raw_truncated` UInt8 AFTER `raw`;
ALTER TABLE streamwatch.dead_letters ADD COLUMN IF NOT EXISTS `raw_size` UInt64 AFTER `raw_truncated`;
ALTER TABLE streamwatch.dead_letters ADD COLUMN IF NOT EXISTS `raw_sha256` String AFTER `raw_size`;

CREATE TABLE IF NOT EXISTS streamwatch.late_events
(
    `monitor` LowCardinality(String),
    `source_topic` LowCardinality(String),
    `partition` UInt32,
    `offset` UInt64,
    `event_ts` DateTime64(3, 'UTC'),
    `watermark` DateTime64(3, 'UTC'),
    `window_start` DateTime64(3, 'UTC'),
    `key` String,
    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (monitor, source_topic, partition, offset)
COMMENT 'Events later than the allowed lateness: not in any window, copied to late-events';
