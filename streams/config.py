"""Configuration: defaults, an optional TOML file, then environment variables.

    STREAMWATCH_CONFIG      path of a TOML file (see deploy/streamwatch.example.toml)
    STREAMWATCH_KAFKA       bootstrap servers; unset = the embedded Tansu broker
    STREAMWATCH_CLICKHOUSE  clickhouse-connect URL/DSN; unset = embedded chDB
    STREAMWATCH_WEB_PORT    the worker's web server (default 6066)
    STREAMWATCH_WEB_BIND    its address (default 127.0.0.1; containers set 0.0.0.0)
    STREAMWATCH_WEB_TOKEN   when set, every /api/ request needs "Authorization: Bearer <it>"
    STREAMWATCH_DATA_DIR    where embedded state lives (default ./var)
    STREAMWATCH_ALERTMANAGER_URL  post every alert to this Alertmanager (docs/delivery.md)
    STREAMWATCH_KAFKA_SASL_USERNAME / _PASSWORD, STREAMWATCH_KAFKA_SECURITY_PROTOCOL, ...

Unknown keys and wrong types are refused with the path of the offending key.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec

from operators import registry
from operators.causes import RELATION_MAX_KEYS
from operators.change import CHANGE_THRESHOLDS as CHANGE_THRESHOLDS
from operators.change import DEFAULT_WATCH, change_rules
from operators.ctr import CtrConfig, CtrOperator
from operators.drift import DRIFT_WINDOWS_PER_DAY as DRIFT_WINDOWS_PER_DAY
from operators.quality import QualityConfig, QualityOperator
from operators.rules import FALSE_ALARM_BUDGET as FALSE_ALARM_BUDGET
from operators.rules import Rule
from operators.service import SERVICE_WINDOWS_PER_DAY as SERVICE_WINDOWS_PER_DAY
from operators.srm import SRM_WINDOWS_PER_DAY as SRM_WINDOWS_PER_DAY
from operators.stats import alpha_for_budget
from schemas.events import INPUT_TOPICS

# (the `X as X` imports: the default rules' figures, defined with the rules in
# operators/ and still importable from here)


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
    # The consumer-group session timeout of the worker's input consumer and its faust
    # app, in seconds (None: 6 s and 10 s). Tansu holds every group join for half of
    # it, and Kafka drops a crashed member after it: a single-host test deployment
    # can shorten both (tests/harness.py uses 4 s); Apache Kafka's brokers accept
    # 6 s or more by default (group.min.session.timeout.ms).
    session_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.session_timeout_s is not None and self.session_timeout_s < 1:
            raise ValueError("kafka.session_timeout_s must be at least 1 s")


class ClickHouseSettings(Strict):
    dsn: str | None = None  # None: embedded chDB under data_dir/clickhouse
    database: str = "streamwatch"


class TopicNames(Strict):
    """The Kafka topic of each logical topic (the field is the logical name with `_`
    for `-`); `inputs()` and `of()` are the one mapping every module uses."""

    impressions: str = "impressions"
    clicks: str = "clicks"
    inference_logs: str = "inference-logs"
    sensor_readings: str = "sensor-readings"
    labels: str = "labels"  # v2: ground truth of inference logs (the quality monitor)
    conversions: str = "conversions"  # v2: conversions of clicks (ctr and funnel monitors)
    alerts: str = "alerts"
    dead_letter: str = "dead-letter"
    late_events: str = "late-events"
    retrain_requests: str = "retrain-requests"  # v2 (docs/causes.md)
    checkpoints: str = "streamwatch-checkpoints"

    def of(self, logical: str) -> str:
        """The Kafka topic of a logical topic name, e.g. "inference-logs"."""
        field = logical.replace("-", "_")
        if field not in self.__struct_fields__:
            raise KeyError(f"no topic {logical!r}; known: {sorted(self.__struct_fields__)}")
        return str(getattr(self, field))

    def inputs(self) -> dict[str, str]:
        """Logical input topic -> its Kafka topic (`schemas.events.INPUT_TOPICS`)."""
        return {logical: self.of(logical) for logical in INPUT_TOPICS}


KeyingMode = Literal["strict", "repartition"]
KEYED_INPUTS = ("impressions", "clicks", "inference-logs", "sensor-readings")


def _default_keying() -> dict[str, KeyingMode]:
    """Per input topic (logical name), how its message keys are treated: `strict`
    (v1: a missing or wrong key is dead-lettered) or `repartition` (the worker re-keys
    every event through an internal topic; see streams/runtime/repartition.py)."""
    return dict.fromkeys(KEYED_INPUTS, "strict")


class MonitorSettings(Strict):
    """One monitor: on or off, its allowed lateness, and its operator's options
    (the fields of the operator's config dataclass, e.g. `window_ms`)."""

    enabled: bool = True
    lateness_s: float = 10
    options: dict[str, Any] = msgspec.field(default_factory=dict)


def _default_monitors() -> dict[str, MonitorSettings]:
    # every monitor of the registry (freshness last, the order they are wired up in)
    monitors = {name: MonitorSettings() for name in registry.OPERATORS if name != "freshness"}
    # Opt-in: a `[monitors.freshness]` table (its `enabled` defaults to true) turns it on.
    # A jump of event time ahead of every topic is dead time now (FreshnessConfig.jump_ms);
    # on by default waits for tests/harness.py's in-process reference to model idle
    # sources (docs/monitors/freshness.md, "Configuration").
    monitors["freshness"] = MonitorSettings(enabled=False)
    # the autoencoder is on by default (issue 14): the model of a multivariate sensor's
    # normal operation is what holds a long level shift (SKAB's valve faults); cost and
    # false alarms measured in DETECTION_SKAB.md and docs/monitors/autoencoder.md
    # v2 funnel guardrails: off in the built-in defaults, as the CTR monitor's conversions
    # (an upgrade keeps v1's topics read and forwarded: the funnel re-keys every click and
    # conversion that carries an experiment); the example configuration turns both on
    monitors["funnel"] = MonitorSettings(enabled=False)
    return monitors


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
    clear_by_value: bool = True  # resolve on the value back within bounds, not its p-value
    message: str | None = None
    # the resolved alert's sentence (operators.rules.resolved_sentence): the
    # metric's name, how numbers are written, an extra clause, or a template
    label: str | None = None
    value_format: str = "{:.4g}"
    resolved_note: str | None = None
    resolved_message: str | None = None
    # A false-alarm budget instead of a raw p-value bound: at most this many false
    # alerts per 1,000 entity-days on quiet data, with `judgements_per_day`
    # observations per entity and day (e.g. 1440 one-minute windows); sets
    # max_p_value by Sidak's correction (operators.stats.alpha_for_budget).
    false_alarm_budget: float | None = None
    judgements_per_day: float | None = None

    def __post_init__(self) -> None:
        try:
            self.value_format.format(0.5)
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(
                f"rule {self.name}: value_format {self.value_format!r} cannot write a "
                f"number ({exc}); e.g. '{{:.2%}}' or '{{:.0f}} ms'"
            ) from None
        if self.false_alarm_budget is not None:
            if self.judgements_per_day is None:
                raise ValueError(f"rule {self.name}: false_alarm_budget needs judgements_per_day")
            if self.max_p_value is not None:
                raise ValueError(
                    f"rule {self.name}: give false_alarm_budget or max_p_value, not both"
                )

    def p_bound(self) -> float | None:
        """max_p_value, or the one the false-alarm budget implies."""
        if self.false_alarm_budget is not None and self.judgements_per_day is not None:
            return alpha_for_budget(self.false_alarm_budget, self.judgements_per_day)
        return self.max_p_value

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
            max_p_value=self.p_bound(),
            clear_windows=self.clear_windows,
            clear_by_value=self.clear_by_value,
            **extra,
        )


def _settings(rules: Iterable[dict[str, Any]]) -> list[RuleSettings]:
    """Rules the monitors declare as data (`Operator.default_rules`), checked as the
    configuration's `[[rules]]` tables are."""
    return [msgspec.convert(rule, RuleSettings) for rule in rules]


def ctr_rules(config: CtrConfig | None = None) -> list[RuleSettings]:
    """The CTR monitor's default rules (`operators.ctr.ctr_rules`), their evidence levels
    derived from its false-alarm budget."""
    return _settings(CtrOperator.default_rules(config))


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


def quality_rules(config: QualityConfig | None = None) -> list[RuleSettings]:
    """The quality monitor's default rules (`operators.quality.quality_rules`), their
    evidence levels derived from its false-alarm budget, then the change rules of the
    window accuracy and MAE that Page-Hinkley and ADWIN watch (kind `change`)."""
    watched = [(kind, metric) for kind, metric in DEFAULT_WATCH if kind == "quality"]
    return _settings([*QualityOperator.default_rules(config), *change_rules(watched)])


def _quality_rules_for_budget(
    rules: list[RuleSettings], options: dict[str, Any]
) -> list[RuleSettings]:
    """The default quality rules re-derived from the quality monitor's options (its
    false-alarm budget and window size), as `_ctr_rules_for_budget` does for CTR."""
    if not options:
        return rules
    try:
        derived = {r.name: r for r in quality_rules(QualityConfig(**options))}
    except (TypeError, ValueError):
        return rules
    defaults = {r.name: r for r in quality_rules()}
    return [derived[r.name] if defaults.get(r.name) == r else r for r in rules]


# The seeds' thresholds (shared/seeds 000, 001, 004) and the contract's bands: each
# monitor declares its rules next to the code that emits the metric
# (`Operator.default_rules`), the registry collects them (operators/registry.py).
DEFAULT_RULES = _settings(registry.default_rules())


class CausesSettings(Strict):
    """Possible causes (docs/causes.md): relations learned from the input, bounded."""

    enabled: bool = True
    relation_ttl_s: float = 3600  # a campaign's model, a sensor's site: forgotten after
    relation_max_keys: int = RELATION_MAX_KEYS  # campaigns (sensors) per partition
    lookback_s: float = 3600  # a cause's evidence may start this long before the alert's
    slack_s: float = 60  # ... or this long after its window ends (point evidence)
    # an alert episode is forgotten this long after it ended (or, never resolved,
    # after its evidence); at most max_keys (rule, entity) pairs are remembered
    firing_ttl_s: float = 6 * 3600
    max_keys: int = 50_000
    max_causes: int = 5
    # a CTR or quality alert waits (at most max_hold_s of wall-clock time) until the
    # drift/service/quality monitors reach its window's end + hold_s of event time:
    # the longest window a cause may close (drift: 300 s). Only a backlog waits
    hold_s: float = 300
    max_hold_s: float = 30
    # read every worker's alerts (all partitions of the alerts topic), from this far back
    # at start: causes raised by other workers, and the firing set after a restart
    feed: bool = True
    feed_lookback_s: float = 6 * 3600


class RetrainConditionSettings(Strict):
    metric: str  # an alert metric: psi, error_rate, latency_p99, accuracy, ...
    op: Literal[">", ">=", "<", "<="]
    threshold: float
    for_s: float = 0

    def __post_init__(self) -> None:
        if self.for_s < 0:
            raise ValueError(f"retrain condition on {self.metric}: for_s must be >= 0")


class RetrainPolicySettings(Strict):
    models: str = "*"  # glob over model ids
    conditions: list[RetrainConditionSettings] = msgspec.field(default_factory=list)
    interval_s: float = 86_400

    def __post_init__(self) -> None:
        if not self.conditions:
            raise ValueError(f"retrain policy for {self.models!r} has no conditions")
        if self.interval_s <= 0:
            raise ValueError(f"retrain policy for {self.models!r}: interval_s must be > 0")


class RetrainSettings(Strict):
    """Retraining requests (docs/causes.md); none unless policies are configured."""

    policies: list[RetrainPolicySettings] = msgspec.field(default_factory=list)
    # POST each request as JSON here too (a training pipeline's trigger); the URL may
    # hold a secret, so it is read from this environment variable, never the file
    webhook_env: str = "STREAMWATCH_RETRAIN_WEBHOOK"
    webhook_timeout_s: float = 5
    webhook_retries: int = 5


class SqlRuleSettings(Strict):
    """A rule written in ClickHouse SQL (docs/causes.md): each row is an observation."""

    name: str
    sql: str
    entity_column: str
    value_column: str
    op: Literal[">", ">=", "<", "<="]
    thresholds: dict[Literal["info", "warning", "critical"], float]
    interval_s: float = 60
    timeout_s: float = 10
    max_rows: int = 10_000
    cooldown_s: float = 600
    message: str | None = None

    def __post_init__(self) -> None:
        if not self.thresholds:
            raise ValueError(f"sql rule {self.name}: thresholds need at least one severity")
        for key in ("interval_s", "timeout_s", "max_rows"):
            if getattr(self, key) <= 0:
                raise ValueError(f"sql rule {self.name}: {key} must be > 0")


# -- delivery (streams/delivery): Alertmanager, webhooks, e-mail ---------------

RECEIVER_TYPES = ("generic", "slack", "dingtalk", "wecom", "feishu", "email", "log")
# fields whose values are secrets (webhook URLs carry their token): masked in
# `config show` unless they are `${ENV}` references, which are not secret
SECRET_FIELDS = ("url", "password")


class ReceiverSettings(Strict):
    """One direct receiver. String fields may hold `${ENV}` references, resolved at
    start from the worker's environment (keep webhook URLs and passwords there)."""

    name: str
    type: Literal["generic", "slack", "dingtalk", "wecom", "feishu", "email", "log"]
    url: str | None = None  # webhook kinds
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # generic: e.g. auth
    # email
    smtp_host: str | None = None
    smtp_port: int = 587
    starttls: bool = True  # STARTTLS before login (port 465 implicit TLS: tls = true)
    tls: bool = False
    username: str | None = None
    password: str | None = None
    sender: str | None = None
    to: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.type == "email":
            if not (self.smtp_host and self.sender and self.to):
                raise ValueError(f"receiver {self.name}: email needs smtp_host, sender and to")
        elif self.type != "log" and not self.url:
            raise ValueError(f"receiver {self.name}: type {self.type} needs a url")


class RouteSettings(Strict):
    """Alerts matching every given condition go to `receivers` (empty list: any)."""

    receivers: list[str]
    severity: list[Literal["info", "warning", "critical"]] = msgspec.field(default_factory=list)
    kind: list[str] = msgspec.field(default_factory=list)
    entity: str = "*"  # glob (fnmatch): "model-*", "cmp-00?", "*/user_segment"
    rule: str = "*"  # glob on the rule name
    status: list[Literal["firing", "resolved"]] = msgspec.field(default_factory=list)


class DeliverySettings(Strict):
    """Where alerts go besides the `alerts` topic (docs/delivery.md)."""

    # Alertmanager base URL (env STREAMWATCH_ALERTMANAGER_URL): every alert is posted
    # to its /api/v2/alerts; grouping, silences and routing are then Alertmanager's
    alertmanager_url: str | None = None
    # firing alerts are re-posted this often, with endsAt = now + alertmanager_ttl_s:
    # well inside Alertmanager's resolve_timeout (5 min), so a lost worker makes its
    # alerts resolve by themselves after the TTL rather than stay firing forever
    alertmanager_repost_s: float = 60
    alertmanager_ttl_s: float = 240
    dashboard_url: str | None = None  # link in messages (default: the worker's web server)
    receivers: list[ReceiverSettings] = msgspec.field(default_factory=list)
    routes: list[RouteSettings] = msgspec.field(default_factory=list)
    # the durable delivery log (jobs, done marks, Alertmanager's firing set), compacted;
    # default "<kafka.group_id>-delivery": one log per deployment sharing a cluster
    topic: str | None = None
    timeout_s: float = 10  # per request
    # an alert published longer ago than this is not delivered (counted and logged):
    # the first start of delivery on a topic with history does not page anyone for
    # old alerts; 0 = no limit. Jobs already queued are always delivered.
    max_age_s: float = 6 * 3600
    retry_initial_s: float = 1  # backoff: initial * 2**n, full jitter, capped at retry_max_s
    retry_max_s: float = 300

    def __post_init__(self) -> None:
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError("delivery.receivers: names must be unique")
        if "alertmanager" in names:
            raise ValueError("delivery.receivers: 'alertmanager' is reserved (alertmanager_url)")
        for i, route in enumerate(self.routes):
            unknown = sorted(set(route.receivers) - set(names))
            if unknown:
                raise ValueError(f"delivery.routes[{i}] names unknown receivers {unknown}")
        if not 0 < self.alertmanager_repost_s < self.alertmanager_ttl_s:
            raise ValueError("delivery: 0 < alertmanager_repost_s < alertmanager_ttl_s")
        if not 0 < self.retry_initial_s <= self.retry_max_s or self.timeout_s <= 0:
            raise ValueError("delivery: 0 < retry_initial_s <= retry_max_s, timeout_s > 0")

    @property
    def enabled(self) -> bool:
        return bool(self.alertmanager_url or self.routes)

    def masked(self) -> dict[str, Any]:
        data = msgspec.to_builtins(self)
        for receiver in data["receivers"]:
            for field in SECRET_FIELDS:
                value = receiver.get(field)
                if value and not _is_env_reference(value):
                    receiver[field] = "***"
            receiver["headers"] = {
                k: v if _is_env_reference(v) else "***" for k, v in receiver["headers"].items()
            }
        url = data.get("alertmanager_url")
        if url and "@" in url and "://" in url:  # basic-auth credentials in the URL
            scheme, rest = url.split("://", 1)
            data["alertmanager_url"] = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return data


def _is_env_reference(value: str) -> bool:
    import re

    return re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", value) is not None


def expand_env(value: str, env: dict[str, str] | None = None) -> str:
    """`${NAME}` references replaced from the environment; an unset one is an error.

    >>> expand_env("https://hook/${T}", {"T": "abc"})
    'https://hook/abc'
    """
    import re

    env = dict(os.environ) if env is None else env

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"environment variable {name} (referenced in the config) is unset")
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", one, value)


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
    causes: CausesSettings = msgspec.field(default_factory=CausesSettings)
    retrain: RetrainSettings = msgspec.field(default_factory=RetrainSettings)
    sql_rules: list[SqlRuleSettings] = msgspec.field(default_factory=list)
    data_dir: str = "var"
    web_port: int = 6066
    web_bind: str = "127.0.0.1"  # loopback only unless asked (containers set 0.0.0.0)
    web_token: str | None = None  # bearer token for /api/ (None: no token asked)
    web_enabled: bool = True
    delivery: DeliverySettings = msgspec.field(default_factory=DeliverySettings)
    query_timeout_s: float = 10  # /api/query and `streamwatch query`: time limit
    query_max_rows: int = 100_000  # ... and result size limit
    # test hooks on the web server (/debug/clickhouse?fail=1): tests only, and only
    # with STREAMWATCH_TEST_FAULTS=clickhouse in the environment (streams/runtime/faults.py)
    debug_endpoints: bool = False
    # /health is 503 (and /health/live too, for the poll) past these bounds: no poll of
    # the broker for health_poll_age_s; input waiting while the watermark has not
    # moved, or while no partition is assigned, for health_stall_s
    health_poll_age_s: float = 60
    health_stall_s: float = 120
    # SIGTERM to exit, whatever hangs (under the deployment's termination grace period)
    stop_timeout_s: float = 90
    idle_timeout_s: float = 30  # a partition silent this long stops holding the watermark
    # a task whose input has been silent this long (and at least its lateness) is
    # finished: its held readings judged, its windows ending by its last event closed
    # and written (the last windows of a replay); 0: only at the end of input
    close_idle_after_s: float = 300
    # a re-keyed stream waits this long for an upstream partition gone silent (its
    # forwarder crashed or is moving) before its watermark goes on without it
    repartition_idle_s: float = 120
    flush_interval_s: float = 0.5  # rows and alerts leave at least this often
    checkpoint_interval_s: float = 5  # state snapshots + offset commits
    # at most this share of the worker's time goes to checkpoints: after one that took
    # c seconds the next waits c / checkpoint_max_share, if that is longer than the
    # interval (a state of many sensors is checkpointed less often, and a crash replays
    # more input: docs/operations.md, "Checkpoint size")
    checkpoint_max_share: float = 0.1
    # a checkpoint larger than this is written as parts of this size (8 MiB), then a
    # head naming them; lower it where the checkpoints topic takes smaller records
    checkpoint_part_bytes: int = 8 * 1024 * 1024
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
        if min(self.health_poll_age_s, self.health_stall_s, self.stop_timeout_s) <= 0:
            raise ValueError("health_poll_age_s, health_stall_s and stop_timeout_s must be > 0")
        if self.close_idle_after_s < 0:
            raise ValueError("close_idle_after_s must be >= 0 (0: off)")
        if not 1024 <= self.checkpoint_part_bytes <= 99 * 1024 * 1024:
            raise ValueError("checkpoint_part_bytes must be between 1 KiB and 99 MiB")
        if not 0 < self.checkpoint_max_share <= 1:
            raise ValueError("checkpoint_max_share must be in (0, 1]")
        if self.max_buffered_rows < self.batch_size:
            raise ValueError("max_buffered_rows must be at least batch_size")
        self.rules = _ctr_rules_for_budget(self.rules, self.monitors["ctr"].options)
        self.rules = _quality_rules_for_budget(self.rules, self.monitors["quality"].options)

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
        data["delivery"] = self.delivery.masked()
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
    "STREAMWATCH_ALERTMANAGER_URL": ("delivery", "alertmanager_url"),
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
