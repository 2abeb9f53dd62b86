"""Configuration: defaults, an optional TOML file, then environment variables.

    STREAMWATCH_CONFIG      path of a TOML file (see deploy/streamwatch.example.toml)
    STREAMWATCH_KAFKA       bootstrap servers; unset = the embedded Tansu broker
    STREAMWATCH_CLICKHOUSE  clickhouse-connect URL/DSN; unset = embedded chDB
    STREAMWATCH_WEB_PORT    the worker's web server (default 6066)
    STREAMWATCH_DATA_DIR    where embedded state lives (default ./var)
    STREAMWATCH_KAFKA_SASL_USERNAME / _PASSWORD, STREAMWATCH_KAFKA_SECURITY_PROTOCOL, ...

Unknown keys and wrong types are refused with the path of the offending key.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from operators.ctr import CtrConfig
from operators.rules import Rule


class ConfigError(ValueError):
    """A configuration problem, with a message fit for the user."""


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaSettings(Strict):
    bootstrap: str | None = None  # None: start the embedded broker
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    partitions: int = 4  # partitions of topics the worker creates when missing
    group_id: str = "streamwatch"


class ClickHouseSettings(Strict):
    dsn: str | None = None  # None: embedded chDB under data_dir/clickhouse
    database: str = "streamwatch"


class TopicNames(Strict):
    impressions: str = "impressions"
    clicks: str = "clicks"
    inference_logs: str = "inference-logs"
    sensor_readings: str = "sensor-readings"
    alerts: str = "alerts"
    dead_letter: str = "dead-letter"
    late_events: str = "late-events"
    checkpoints: str = "streamwatch-checkpoints"


class CtrSettings(Strict):
    window_s: float = 60
    attribution_s: float = 600
    lateness_s: float = 10
    baseline_windows: int = 10
    baseline_min_windows: int = 3
    baseline_min_impressions: int = 100
    floor_ctr: float = 0.005

    def operator_config(self) -> CtrConfig:
        return CtrConfig(
            window_ms=round(self.window_s * 1000),
            attribution_ms=round(self.attribution_s * 1000),
            baseline_windows=self.baseline_windows,
            baseline_min_windows=self.baseline_min_windows,
            baseline_min_impressions=self.baseline_min_impressions,
            floor_ctr=self.floor_ctr,
        )


class RuleSettings(Strict):
    name: str
    kind: str
    metric: str
    op: Literal[">", ">=", "<", "<="]
    thresholds: dict[Literal["info", "warning", "critical"], float]
    cooldown_s: float = 600
    min_samples: int = 0
    max_p_value: float | None = None
    message: str | None = None

    def rule(self) -> Rule:
        extra = {"message": self.message} if self.message else {}
        return Rule(
            name=self.name,
            kind=self.kind,
            metric=self.metric,
            op=self.op,
            thresholds=dict(self.thresholds),
            cooldown_s=self.cooldown_s,
            min_samples=self.min_samples,
            max_p_value=self.max_p_value,
            **extra,
        )


DEFAULT_RULES = [
    RuleSettings(
        name="ctr_floor",
        kind="ctr",
        metric="ctr",
        op="<",
        thresholds={"warning": 0.005, "critical": 0.001},
        min_samples=200,
        max_p_value=0.01,
        message="CTR of {entity} is {value:.2%}, below the floor of {threshold:.2%}",
    ),
    RuleSettings(
        name="ctr_drop",
        kind="ctr",
        metric="ctr_drop",
        op=">",
        thresholds={"warning": 0.3, "critical": 0.5},
        min_samples=200,
        max_p_value=0.01,
        message="CTR of {entity} dropped {value:.0%} to {ctr:.2%} against a baseline "
        "of {baseline_ctr:.2%}",
    ),
]


class Settings(Strict):
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = msgspec.field(default_factory=ClickHouseSettings)
    topics: TopicNames = msgspec.field(default_factory=TopicNames)
    ctr: CtrSettings = msgspec.field(default_factory=CtrSettings)
    rules: list[RuleSettings] = msgspec.field(default_factory=lambda: list(DEFAULT_RULES))
    data_dir: str = "var"
    web_port: int = 6066
    web_enabled: bool = True
    idle_timeout_s: float = 30  # a partition silent this long stops holding the watermark
    flush_interval_s: float = 0.5  # rows and alerts leave at least this often
    checkpoint_interval_s: float = 5  # state snapshots + offset commits
    max_buffered_rows: int = 200_000  # past this, consumption pauses until ClickHouse writes
    batch_size: int = 5000
    batch_timeout_s: float = 0.2

    def __post_init__(self) -> None:
        if self.ctr.window_s <= 0 or self.ctr.attribution_s < 0 or self.ctr.lateness_s < 0:
            raise ValueError("ctr: window_s must be > 0, attribution_s and lateness_s >= 0")
        if (self.ctr.window_s * 1000) % 1:
            raise ValueError("ctr.window_s must be a whole number of milliseconds")
        if not 0 < self.web_port < 65536:
            raise ValueError(f"web_port {self.web_port} is not a TCP port")
        if self.max_buffered_rows < self.batch_size:
            raise ValueError("max_buffered_rows must be at least batch_size")

    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka.bootstrap is None

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse.dsn is None or self.clickhouse.dsn.startswith("chdb://")

    def clickhouse_dsn(self) -> str:
        if self.clickhouse.dsn:
            return self.clickhouse.dsn
        return "chdb://" + str(self.data_path() / "clickhouse")

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings (bootstrap and security) shared by every client."""
        k = self.kafka
        conf: dict[str, Any] = {
            "bootstrap.servers": k.bootstrap,
            "security.protocol": k.security_protocol,
            # librdkafka logs through Python logging, and not for idle disconnects
            "logger": logging.getLogger("librdkafka"),
            "log.connection.close": False,
        }
        if k.sasl_mechanism:
            conf["sasl.mechanism"] = k.sasl_mechanism
        if k.sasl_username:
            conf["sasl.username"] = k.sasl_username
        if k.sasl_password:
            conf["sasl.password"] = k.sasl_password
        if k.ssl_ca_location:
            conf["ssl.ca.location"] = k.ssl_ca_location
        return conf

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets replaced by ***."""
        data = msgspec.to_builtins(self)
        if data["kafka"].get("sasl_password"):
            data["kafka"]["sasl_password"] = "***"
        dsn = data["clickhouse"].get("dsn")
        if dsn and "@" in dsn and "://" in dsn:
            scheme, rest = dsn.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            data["clickhouse"]["dsn"] = f"{scheme}://{user}:***@{host}"
        return data


ENV = {
    "STREAMWATCH_KAFKA": ("kafka", "bootstrap"),
    "STREAMWATCH_KAFKA_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "STREAMWATCH_KAFKA_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "STREAMWATCH_KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "STREAMWATCH_KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
    "STREAMWATCH_KAFKA_SSL_CA_LOCATION": ("kafka", "ssl_ca_location"),
    "STREAMWATCH_CLICKHOUSE": ("clickhouse", "dsn"),
    "STREAMWATCH_WEB_PORT": ("web_port",),
    "STREAMWATCH_DATA_DIR": ("data_dir",),
}


def load_settings(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML file (`path` or $STREAMWATCH_CONFIG) < environment < overrides."""
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get("STREAMWATCH_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for var, where in ENV.items():
        value = env.get(var)
        if value:
            node = data
            for part in where[:-1]:
                node = node.setdefault(part, {})
            node[where[-1]] = int(value) if where[-1] == "web_port" and value.isdigit() else value
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
