"""Configuration: defaults, an optional TOML file, then environment variables.

    STREAMWATCH_CONFIG      path of a TOML file (see deploy/streamwatch.example.toml)
    STREAMWATCH_KAFKA       bootstrap servers; unset = the embedded Tansu broker
    STREAMWATCH_CLICKHOUSE  clickhouse-connect URL/DSN; unset = embedded chDB
    STREAMWATCH_WEB_PORT    the worker's web server (default 6066)
    STREAMWATCH_WEB_BIND    its address (default 127.0.0.1; containers set 0.0.0.0)
    STREAMWATCH_WEB_TOKEN   when set, every /api/ request needs "Authorization: Bearer <it>"
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


KeyingMode = Literal["strict", "repartition"]
KEYED_INPUTS = ("impressions", "clicks", "inference-logs", "sensor-readings")


def _default_keying() -> dict[str, KeyingMode]:
    """Per input topic (logical name), how its message keys are treated: `strict`
    (v1: a missing or wrong key is dead-lettered) or `repartition` (the worker re-keys
    every event through an internal topic; see streams/repartition.py)."""
    return dict.fromkeys(KEYED_INPUTS, "strict")


class MonitorSettings(Strict):
    """One monitor: on or off, its allowed lateness, and its operator's options
    (the fields of the operator's config dataclass, e.g. `window_ms`)."""

    enabled: bool = True
    lateness_s: float = 10
    options: dict[str, Any] = msgspec.field(default_factory=dict)


def _default_monitors() -> dict[str, MonitorSettings]:
    names = ("ctr", "sensor", "cluster", "drift", "service", "srm", "experiment")
    return {name: MonitorSettings() for name in names}


class ChangeSettings(Strict):
    """Page-Hinkley / ADWIN on window metrics (options: operators.change.ChangeConfig)."""

    enabled: bool = True
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class RuleSettings(Strict):
    name: str
    kind: str
    metric: str
    op: Literal[">", ">=", "<", "<="]
    thresholds: dict[Literal["info", "warning", "critical"], float]
    cooldown_s: float = 600
    min_samples: int = 0
    max_p_value: float | None = None
    clear_windows: int = 1  # hysteresis: consecutive clear observations that resolve
    clear_by_value: bool = False  # resolve on the value alone, not its p-value
    message: str | None = None
    # the resolved alert's sentence (operators.rules.resolved_sentence): the
    # metric's name, how numbers are written, an extra clause, or a template
    label: str | None = None
    value_format: str = "{:.4g}"
    resolved_note: str | None = None
    resolved_message: str | None = None

    def __post_init__(self) -> None:
        try:
            self.value_format.format(0.5)
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(
                f"rule {self.name}: value_format {self.value_format!r} cannot write a "
                f"number ({exc}); e.g. '{{:.2%}}' or '{{:.0f}} ms'"
            ) from None

    def rule(self) -> Rule:
        extra = {"message": self.message} if self.message else {}
        return Rule(
            label=self.label,
            value_format=self.value_format,
            resolved_note=self.resolved_note,
            resolved_message=self.resolved_message,
            name=self.name,
            kind=self.kind,
            metric=self.metric,
            op=self.op,
            thresholds=dict(self.thresholds),
            cooldown_s=self.cooldown_s,
            min_samples=self.min_samples,
            max_p_value=self.max_p_value,
            clear_windows=self.clear_windows,
            clear_by_value=self.clear_by_value,
            **extra,
        )


def _rule(
    name: str,
    kind: str,
    metric: str,
    op: str,
    thresholds: dict[str, float],
    message: str,
    **kw: Any,
) -> RuleSettings:
    return msgspec.convert(
        {
            "name": name,
            "kind": kind,
            "metric": metric,
            "op": op,
            "thresholds": thresholds,
            "message": message,
            **kw,
        },
        RuleSettings,
    )


def ctr_rules(config: CtrConfig | None = None) -> list[RuleSettings]:
    """The CTR rules, their evidence levels derived from the monitor's false-alarm
    budget (`CtrConfig.false_alarms_per_1000_campaign_days`, docs/monitors/ctr.md):
    `max_p_value` is the budget's per-window level, `ctr_evidence` fires when the
    CUSUM reaches its threshold (value 1.0 = h). `min_samples` is only a sanity
    floor: the evidence decides. Episodes resolve after 3 clear windows."""
    alpha = (config or CtrConfig()).window_alpha
    return [
        _rule(
            "ctr_floor",
            "ctr",
            "ctr",
            "<",
            {"warning": 0.005, "critical": 0.001},
            "CTR of {entity} ({level}) is {value:.2%}, below the floor of {threshold:.2%}",
            label="CTR",
            value_format="{:.2%}",
            min_samples=30,
            max_p_value=alpha,
            clear_windows=3,
            clear_by_value=True,
        ),
        _rule(
            "ctr_drop",
            "ctr",
            "ctr_drop",
            ">",
            {"warning": 0.3, "critical": 0.5},
            "CTR of {entity} ({level}) dropped {value:.0%} to {ctr:.2%} against a baseline "
            "of {baseline_ctr:.2%}",
            label="CTR drop",
            value_format="{:.0%}",
            resolved_note="CTR {ctr:.2%} against a baseline of {baseline_ctr:.2%}",
            min_samples=30,
            max_p_value=alpha,
            clear_windows=3,
            clear_by_value=True,
        ),
        _rule(
            "ctr_sustained_drop",
            "ctr",
            "ctr_evidence",
            ">=",
            {"warning": 1.0},
            "CTR of {entity} ({level}) has stayed below its baseline of {baseline_ctr:.2%} "
            "(now {ctr:.2%}): accumulated evidence {llr:.1f} nats, threshold "
            "{llr_threshold:.1f}",
            label="accumulated CTR-drop evidence",
            value_format="{:.2f}",
            resolved_message="CTR of {entity} ({level}) is back near its baseline of "
            "{baseline_ctr:.2%} (now {ctr:.2%})",
            clear_windows=3,
        ),
    ]


def _ctr_rules_for_budget(rules: list[RuleSettings], options: dict[str, Any]) -> list[RuleSettings]:
    """The default CTR rules re-derived from the CTR monitor's options (its false-alarm
    budget, window size ...) when those are set; rules a user wrote are kept as they are.
    Invalid options are left for the monitor's own check to report."""
    if not options:
        return rules
    try:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        derived = {r.name: r for r in ctr_rules(CtrConfig(**values))}
    except (TypeError, ValueError):
        return rules
    defaults = {r.name: r for r in ctr_rules()}
    return [derived[r.name] if defaults.get(r.name) == r else r for r in rules]


# The seeds' thresholds (shared/seeds 000, 001, 004) and the contract's bands.
DEFAULT_RULES = [
    *ctr_rules(),
    _rule(
        "drift_psi",
        "drift",
        "psi",
        ">=",
        {"warning": 0.1, "critical": 0.2},
        "PSI of {entity} is {value:.3f} (moderate drift from 0.1, significant from 0.2)",
        label="PSI",
        value_format="{:.3f}",
        min_samples=200,
        cooldown_s=1800,
    ),
    _rule(
        "confidence_shift",
        "drift",
        "confidence_shift",
        ">",
        {"warning": 0.1},
        "mean confidence of {entity} fell by {value:.3f} against its reference",
        label="fall in mean confidence",
        value_format="{:.3f}",
        min_samples=100,
        max_p_value=0.01,
        cooldown_s=1800,
    ),
    _rule(
        "latency_p99",
        "service",
        "latency_p99",
        ">",
        {"warning": 500.0, "critical": 2000.0},
        "p99 latency of {entity} is {value:.0f} ms (line: {threshold:.0f} ms)",
        label="p99 latency",
        value_format="{:.0f} ms",
        min_samples=50,
    ),
    _rule(
        "error_rate",
        "service",
        "error_rate",
        ">",
        {"critical": 0.01},
        "error rate of {entity} is {value:.2%}, above {threshold:.0%}",
        label="error rate",
        value_format="{:.2%}",
        min_samples=100,
        max_p_value=0.01,
    ),
    _rule(
        "low_confidence",
        "service",
        "low_confidence_ratio",
        ">",
        {"warning": 0.6},
        "{value:.0%} of {entity}'s predictions have low confidence",
        label="share of low-confidence predictions",
        value_format="{:.0%}",
        min_samples=100,
    ),
    _rule(
        "sensor_zscore",
        "sensor",
        "anomaly_zscore",
        ">",
        {"warning": 4.5, "critical": 6.0},
        "{entity} reads {reading:.4g}, z-score {value:.1f}",
        label="z-score",
        value_format="{:.1f}",
        cooldown_s=300,
    ),
    _rule(
        "sensor_iqr",
        "sensor",
        "anomaly_iqr",
        ">",
        {"warning": 1.5, "critical": 3.0},
        "{entity} reads {reading:.4g}, {value:.1f} IQR beyond Tukey's fence",
        label="distance beyond Tukey's fence (IQRs)",
        value_format="{:.1f}",
        cooldown_s=300,
    ),
    _rule(
        "sensor_rise",
        "sensor",
        "anomaly_rise",
        ">",
        {"warning": 0.0},
        "{entity} has risen steadily by {value:.3g}",
        label="steady rise",
        value_format="{:.3g}",
        cooldown_s=900,
    ),
    _rule(
        "cluster_distance",
        "cluster",
        "cluster_distance",
        ">",
        {"warning": 3.0, "critical": 6.0},
        "{entity} is {value:.1f}x the usual distance from every known operating regime",
        label="distance from the known operating regimes",
        value_format="{:.1f}x the usual",
        cooldown_s=1800,
    ),
    _rule(
        "srm",
        "srm",
        "srm_chi2_p",
        "<",
        # Statsig's tiers; the operator reports p = 1 for a deviation under its
        # min_deviation (1 point of share by default), however large the sample
        {"warning": 0.01, "critical": 0.001},
        "sample ratio mismatch in {entity}: p = {value:.2g} ({observed} against {expected}; "
        "carried by {mismatch_in}); pause readouts of this experiment until the assignment "
        "is fixed",
        label="sample ratio mismatch p-value",
        value_format="{:.2g}",
        resolved_note="the variants' shares match the configured split again",
        # short: a warning that resolved must not mask a real mismatch an hour long
        cooldown_s=900,
    ),
    _rule(
        "srm_cumulative",
        "srm",
        "srm_cumulative_p",
        "<",
        {"warning": 0.01, "critical": 0.001},
        "sample ratio mismatch in {entity} since its start: p = {value:.2g} ({observed} "
        "against {expected} over {total} units); pause readouts until the assignment is fixed",
        label="cumulative sample ratio mismatch p-value",
        value_format="{:.2g}",
        resolved_note="the cumulative shares match the configured split again",
        cooldown_s=3600,
    ),
    *(
        _rule(
            f"experiment_guardrail_{metric}",
            "experiment",
            f"guardrail_{metric}",
            ">=",
            {"critical": 1.0},
            "stop or roll back arm {variant} of {experiment}: "
            + label
            + " {treatment_value:"
            + fmt
            + "}"
            + unit
            + " against {control_value:"
            + fmt
            + "}"
            + unit
            + " in {control} "
            "(red line " + line + ", always-valid p = {always_valid_p:.2g}, mSPRT)",
            label=f"{label} guardrail breach",
            value_format="{:.0f}",
            resolved_message="{entity}: " + label + " back within its red line against "
            "{control} ({treatment_value:"
            + fmt
            + "}"
            + unit
            + " against {control_value:"
            + fmt
            + "}"
            + unit
            + ")",
            cooldown_s=3600,
            clear_windows=3,
        )
        for metric, label, fmt, unit, line in (
            ("error_rate", "error rate", ".2%", "", "+{red_line:.2%}"),
            ("latency_p95", "p95 latency", ".0f", " ms", "+{red_line:.0%}"),
            ("latency_p99", "p99 latency", ".0f", " ms", "+{red_line:.0%}"),
        )
    ),
    _rule(
        "experiment_ramp",
        "experiment",
        "ramp_change",
        ">",
        {"warning": 0.2},
        "the share of arm {variant} of {entity} moved {change:+.0%} (from {share_before:.0%} "
        "to {share:.0%}) within the ramp period: ramp by at most 20 points a day",
        label="ramp change of an arm's share",
        value_format="{:.0%}",
        cooldown_s=3600,
    ),
    _rule(
        "experiment_crossover",
        "experiment",
        "crossover_rate",
        ">",
        {"warning": 0.01},
        "{crossed_users} users of {entity} were seen in more than one arm ({value:.1%} of "
        "{tracked_users}): the assignment is not sticky; its comparisons are contaminated",
        label="share of users seen in more than one arm",
        value_format="{:.1%}",
        min_samples=100,
        cooldown_s=3600,
    ),
    *(
        _rule(
            f"{metric}_change_{method}",
            "change",
            f"{metric}_change_{method}",
            ">=",
            {"warning": 0.5},
            f"{{entity}}: the level of {metric} changed ({method.replace('_', '-')})",
            resolved_message=f"{{entity}}: the level of {metric} is steady again at "
            f"{{latest:.4g}} ({method.replace('_', '-')})",
            cooldown_s=3600,
        )
        for metric in ("ctr", "error_rate", "latency_p99", "psi")
        for method in ("page_hinkley", "adwin")
    ),
]


class Settings(Strict):
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = msgspec.field(default_factory=ClickHouseSettings)
    topics: TopicNames = msgspec.field(default_factory=TopicNames)
    monitors: dict[str, MonitorSettings] = msgspec.field(default_factory=_default_monitors)
    keying: dict[str, KeyingMode] = msgspec.field(default_factory=_default_keying)
    change_detection: ChangeSettings = msgspec.field(default_factory=ChangeSettings)
    # reference profiles for drift (`streamwatch reference build` writes them)
    drift_references: list[str] = msgspec.field(default_factory=list)
    rules: list[RuleSettings] = msgspec.field(default_factory=lambda: list(DEFAULT_RULES))
    data_dir: str = "var"
    web_port: int = 6066
    web_bind: str = "127.0.0.1"  # loopback only unless asked (containers set 0.0.0.0)
    web_token: str | None = None  # bearer token for /api/ (None: no token asked)
    web_enabled: bool = True
    query_timeout_s: float = 10  # /api/query and `streamwatch query`: time limit
    query_max_rows: int = 100_000  # ... and result size limit
    # POST-free test hooks on the web server (/debug/clickhouse?fail=1): tests only
    debug_endpoints: bool = False
    idle_timeout_s: float = 30  # a partition silent this long stops holding the watermark
    # a re-keyed stream waits this long for an upstream partition gone silent (its
    # forwarder crashed or is moving) before its watermark goes on without it
    repartition_idle_s: float = 120
    flush_interval_s: float = 0.5  # rows and alerts leave at least this often
    checkpoint_interval_s: float = 5  # state snapshots + offset commits
    max_buffered_rows: int = 200_000  # past this, consumption pauses until ClickHouse writes
    batch_size: int = 5000
    batch_timeout_s: float = 0.2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.keying) - set(KEYED_INPUTS))
        if unknown:
            raise ValueError(f"keying: unknown input topic(s) {unknown}; known: {KEYED_INPUTS}")
        self.keying = {**_default_keying(), **self.keying}
        # a partial [monitors] table only overrides the monitors it names
        self.monitors = {**_default_monitors(), **self.monitors}
        for name, monitor in self.monitors.items():
            if monitor.lateness_s < 0:
                raise ValueError(f"monitors.{name}.lateness_s must be >= 0")
        if not 0 < self.web_port < 65536:
            raise ValueError(f"web_port {self.web_port} is not a TCP port")
        if self.query_timeout_s <= 0 or self.query_max_rows <= 0:
            raise ValueError("query_timeout_s and query_max_rows must be > 0")
        if self.max_buffered_rows < self.batch_size:
            raise ValueError("max_buffered_rows must be at least batch_size")
        self.rules = _ctr_rules_for_budget(self.rules, self.monitors["ctr"].options)

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
        if data.get("web_token"):
            data["web_token"] = "***"
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
    "STREAMWATCH_WEB_BIND": ("web_bind",),
    "STREAMWATCH_WEB_TOKEN": ("web_token",),
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
