"""The `streamwatch` command line.

streamwatch demo                 everything embedded, simulated incidents, live alerts
streamwatch run                  the worker, against the configured Kafka and ClickHouse
                                 (--discard-state MONITOR: start a monitor afresh)
streamwatch simulate             synthetic traffic with switchable incidents
streamwatch query "SELECT ..."   read-only query, printed as a table
streamwatch alerts               the alert topic: print (or --follow), filter by rule/entity glob
streamwatch config show          the effective configuration, secrets masked
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import click
import msgspec
import orjson
from rich.console import Console
from rich.table import Table

from streams.cli.console import print_alert
from streams.config import ConfigError, Settings, load_settings

console = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays one line


class Failure(click.ClickException):
    """One clear line on stderr, exit code 1, no traceback."""

    def show(self, file: Any = None) -> None:
        err.print(f"[red]error:[/red] {self.message}")


def _settings(ctx: click.Context) -> Settings:
    try:
        return load_settings(ctx.obj.get("config"))
    except ConfigError as exc:
        raise Failure(str(exc)) from None


def explain(ctx: click.Context, exc: Exception) -> str:
    """One line for an error that escaped a command: what failed, where, what to set."""
    from confluent_kafka import KafkaException

    from streams.connectors.clickhouse import ClickHouseError
    from streams.connectors.embedded import EmbeddedError
    from streams.connectors.preflight import PreflightError, chdb_holder, in_use_message

    if isinstance(exc, PreflightError | ConfigError | EmbeddedError):
        return str(exc)
    if isinstance(exc, ClickHouseError):
        try:
            settings = load_settings(ctx.obj.get("config"))
            holder = chdb_holder(settings)
        except Exception:  # the explanation must not fail in turn
            holder = None
        if holder is not None:
            return in_use_message(settings, holder)
        return f"{_one_line(exc)} (ClickHouse: STREAMWATCH_CLICKHOUSE, or clickhouse.dsn)"
    if isinstance(exc, KafkaException):
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        try:
            where = load_settings(ctx.obj.get("config")).kafka.bootstrap or "the embedded broker"
        except Exception:
            where = "the configured brokers"
        return f"Kafka at {where}: {reason} (STREAMWATCH_KAFKA, or kafka.bootstrap)"
    return f"{_one_line(exc)} (run with -v for the traceback)"


class Main(click.Group):
    """The top level: an error that escapes a command is one line on stderr and exit
    code 1 (usage errors: 2, click's own); `-v` keeps the traceback instead."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if (ctx.obj or {}).get("verbose"):
                raise
            raise Failure(explain(ctx, exc)) from None


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--verbose", "-v", is_flag=True, help="Log what the worker does.")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """streamwatch: event-time monitors for ad, ML and IoT streams.

    \b
    Example:
        streamwatch demo
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["verbose"] = verbose
    # `kill -USR1 <pid>` prints every thread's stack: for a worker that seems stuck
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # urllib3 / clickhouse_connect warn about each retry of a connection that then
    # fails with one clear line anyway (clickhouse_connect sets `urllib3` itself
    # when imported, so its child is the one set here)
    noisy_loggers = ("aiokafka", "faust", "mode", "kafka", "urllib3.connectionpool")
    for noisy in (*noisy_loggers, "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)


# -- run --------------------------------------------------------------------


@main.command()
@click.option(
    "--discard-state",
    "discard_state",
    multiple=True,
    metavar="MONITOR",
    help="Do not restore this monitor's checkpointed state (repeatable): its tasks "
    "start afresh at the consumer group's committed offsets. Lost: that monitor's open "
    "windows and everything it learned (baselines, reference models, change-detection "
    "series), and its open alert episodes (no `resolved` follows them). For a "
    "checkpoint this version refuses (docs/operations.md, Upgrading).",
)
@click.pass_context
def run(ctx: click.Context, discard_state: tuple[str, ...]) -> None:
    """Run the worker against the configured Kafka and ClickHouse (also: `worker`).

    \b
    Without STREAMWATCH_KAFKA / STREAMWATCH_CLICKHOUSE the embedded broker and
    embedded ClickHouse are started and stopped with the worker.
    Example:
        STREAMWATCH_KAFKA=kafka:9092 \\
        STREAMWATCH_CLICKHOUSE=http://user:pass@clickhouse:8123/streamwatch streamwatch run
    """
    from streams.connectors.preflight import check_clickhouse, check_kafka, hold_data_dir
    from streams.runtime.worker import Services, Worker

    settings = _settings(ctx)
    # before anything starts: a second process on the same chDB directory, or
    # brokers that do not answer, fail with one line naming what to set
    hold_data_dir(settings)
    check_kafka(settings)
    check_clickhouse(settings)
    services = Services(settings)
    try:
        settings = services.start()
        worker = Worker(settings, discard_state=discard_state)
        services.publish_addresses()
        err.print(
            f"streamwatch worker (pid {os.getpid()}): Kafka {settings.kafka.bootstrap}, "
            f"ClickHouse {settings.masked()['clickhouse']['dsn'] or settings.clickhouse_dsn()}, "
            f"web http://localhost:{settings.web_port}/"
        )
        worker.run()
    finally:
        services.stop()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -- simulate ---------------------------------------------------------------


def _parse_incident(spec: str) -> Any:
    from streams.cli.simulate import INCIDENT_KINDS, Incident

    parts = spec.split(":")
    try:
        kind, target, start, duration = parts[0], parts[1], float(parts[2]), float(parts[3])
        factor = float(parts[4]) if len(parts) > 4 else 0.3
    except (IndexError, ValueError):
        raise click.BadParameter(
            f"{spec!r}: expected KIND:TARGET:START_S:DURATION_S[:FACTOR]"
        ) from None
    if kind not in INCIDENT_KINDS:
        raise click.BadParameter(f"{spec!r}: kind must be one of {', '.join(INCIDENT_KINDS)}")
    return Incident(kind, target, start, duration, factor)


def simulation_options(f: Any) -> Any:
    options = [
        click.option(
            "--duration",
            "duration_s",
            default=3600,
            show_default=True,
            help="Event-time seconds to simulate.",
        ),
        click.option(
            "--speed",
            default=90.0,
            show_default=True,
            help="Event-time seconds per wall-clock second (0: as fast as possible).",
        ),
        click.option("--rate", default=60.0, show_default=True, help="Impressions per second."),
        click.option(
            "--campaigns",
            default=3,
            show_default=True,
            help="Campaigns; the first two run an A/B experiment.",
        ),
        click.option("--seed", default=42, show_default=True),
        click.option(
            "--incident",
            "incident_specs",
            multiple=True,
            metavar="KIND:TARGET:START:DUR[:F]",
            help="An incident instead of the default set (one of every kind), e.g. "
            "ctr_drop:cmp-002:1200:600:0.2, latency_spike:model-0:900:300:3, "
            "error_spike:model-1:900:300:0.2, feature_drift:model-0/distance_km:1500:600:1.5, "
            "prediction_shift:model-1:1200:600:1.5, srm:exp-cmp-000:600:600:0.4, "
            "sensor_spike:sensor-01:700:3:8, sensor_rise:sensor-02:800:400:10, "
            "sensor_regime:sensor-03:1000:300:6, cvr_drop:exp-cmp-000/B:600:1200:0.5; with "
            "--experiments also arm_latency:exp-model/treatment:600:600:1.6, "
            "arm_error:exp-model/treatment:600:300:0.08, ramp:exp-shared:1200:600:0.85, "
            "crossover:exp-shared:300:300:0.05, srm_dimension:exp-shared/ad-3:300:600:0.9, "
            "arm_ctr_drop:exp-cmp-000/B:1500:600:0.3. "
            "Times in event-time seconds from the start.",
        ),
        click.option("--no-incidents", is_flag=True, help="Quiet traffic only."),
        click.option(
            "--experiments/--no-experiments",
            default=None,
            help="The demo's experiments (issue 16): exp-shared over cmp-001 and cmp-002, "
            "exp-model serving model-0 (needs 3 campaigns or more). Default: on for the "
            "demo, off for simulate.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _scenario(
    duration_s: int,
    rate: float,
    campaigns: int,
    seed: int,
    incident_specs: tuple[str, ...],
    no_incidents: bool,
    demo: bool = False,
    experiments: bool | None = None,
) -> Any:
    from streams.cli.simulate import (
        Incident,
        Scenario,
        check_incidents,
        check_timing,
        default_incidents,
    )

    start_ms = (int(time.time()) - duration_s) * 1000
    incidents = [_parse_incident(s) for s in incident_specs]
    if not incidents and not no_incidents:
        try:
            incidents = default_incidents(duration_s, campaigns=campaigns)
        except ValueError as exc:
            raise Failure(f"{exc} (or pass --incident / --no-incidents)") from None
        if demo:
            # change detection needs ~30 windows of history before it judges a
            # series: one late latency spike lets the demo show a `change` alert
            incidents.append(
                Incident("latency_spike", "model-0", duration_s * 0.8, duration_s * 0.1, 3.0)
            )
    if experiments is None:
        experiments = demo
    extra: dict[str, int] = {}
    if experiments:
        from streams.cli.demo import DEMO_EXPERIMENTS, experiment_incidents

        if campaigns < 3:
            raise click.BadParameter(
                "--experiments needs 3 campaigns or more", param_hint="--campaigns"
            )
        extra = dict(DEMO_EXPERIMENTS)
        if not incident_specs and not no_incidents:
            incidents.extend(experiment_incidents(duration_s))
    # v2: conversions of clicks (a CVR of about 10 %, order values ~40); the demo's come
    # within its shorter conversion window (streams/cli/demo.py DEMO_CONVERSIONS)
    conversions: dict[str, float] = {"cvr": 0.1}
    if demo:
        from streams.cli.demo import DEMO_CONVERSIONS

        conversions = dict(DEMO_CONVERSIONS)
    scenario = Scenario(
        start_ms=start_ms,
        duration_s=duration_s,
        campaigns=campaigns,
        impressions_per_s=rate,
        seed=seed,
        incidents=incidents,
        **conversions,
        **extra,
    )
    if demo and not incident_specs and not no_incidents:
        from streams.cli.demo import linked_incidents

        scenario.incidents.extend(linked_incidents(scenario))  # a possible cause to show
    try:
        check_incidents(scenario)
        check_timing(scenario)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--incident") from None
    return scenario


@main.command()
@simulation_options
@click.pass_context
def simulate(
    ctx: click.Context,
    duration_s: int,
    speed: float,
    rate: float,
    campaigns: int,
    seed: int,
    incident_specs: tuple[str, ...],
    no_incidents: bool,
    experiments: bool | None,
) -> None:
    """Publish synthetic traffic of all four kinds, with incidents (ground truth).

    \b
    Event time starts DURATION seconds ago and runs SPEED times faster than
    the clock, so the traffic ends about now.
    Example:
        streamwatch simulate --duration 3600 --speed 120 --incident ctr_drop:cmp-002:1800:600:0.2
    """
    from streams.cli.simulate import Simulator
    from streams.connectors import kafka

    scenario = _scenario(
        duration_s, rate, campaigns, seed, incident_specs, no_incidents, experiments=experiments
    )
    settings = _connect_kafka(ctx)
    for inc in scenario.incidents:
        err.print(
            f"incident: {inc.kind} on {inc.target} from +{inc.start_s:.0f}s for "
            f"{inc.duration_s:.0f}s (x{inc.factor})"
        )
    kafka.ensure_topics(settings)
    counts = _publish_with_progress(
        kafka.producer(settings),
        Simulator(scenario),
        speed or None,
        topics=settings.topics.inputs(),
    )
    console.print("published " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())))


def _publish_with_progress(
    producer: Any,
    simulator: Any,
    speed: float | None,
    stop: Any = None,
    topics: dict[str, str] | None = None,
) -> dict[str, int]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from streams.cli.simulate import publish

    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} event-time s"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("sim", total=simulator.s.duration_s)
        return publish(
            producer,
            simulator,
            speed,
            progress=lambda done, total: progress.update(task, completed=done),
            stop=stop,
            topics=topics,
        )


def _connect_kafka(ctx: click.Context) -> Settings:
    """Settings whose Kafka is the configured one, or the running embedded worker's."""
    from streams.connectors.preflight import check_kafka
    from streams.runtime.worker import read_embedded

    settings = _settings(ctx)
    if settings.embedded_kafka:
        info = read_embedded(settings)
        if info is None:
            raise Failure(
                "no Kafka configured and no embedded worker running under "
                f"STREAMWATCH_DATA_DIR={settings.data_path()}: start `streamwatch run` "
                "first (with the same STREAMWATCH_DATA_DIR), or set STREAMWATCH_KAFKA"
            )
        settings.kafka.bootstrap = info["kafka"]
    check_kafka(settings)
    return settings


# -- query ------------------------------------------------------------------


@main.command()
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_context
def query(ctx: click.Context, sql: str, as_json: bool) -> None:
    """Run one read-only SELECT against ClickHouse and print a table.

    The statement is judged by ClickHouse's parser: one SELECT (or SHOW
    TABLES), no INTO OUTFILE, SETTINGS or table functions that reach files,
    URLs or other servers; it runs within a time and result-size limit
    (query_timeout_s, query_max_rows). SQL of any length works ("-" reads it
    from stdin).

    \b
    Example:
        streamwatch query "SELECT campaign_id, sum(clicks)/sum(impressions) AS ctr
                           FROM streamwatch.ctr_windows FINAL GROUP BY campaign_id"
    """
    from rich.markup import escape

    settings = _settings(ctx)
    if sql == "-":
        sql = sys.stdin.read()
    try:
        result = _query(settings, sql)
    except Failure:
        raise
    except Exception as exc:
        raise Failure(escape(_query_error(exc))) from None
    if as_json:
        for row in result["rows"]:
            record = dict(zip(result["columns"], row, strict=True))
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
        return
    from rich.text import Text

    table = Table(show_lines=False)
    for column in result["columns"]:
        # Text: names and values are not rich markup; fold: a narrow terminal
        # wraps a value instead of cutting it to "…"
        table.add_column(Text(column), overflow="fold")
    for row in result["rows"]:
        table.add_row(*(Text(_cell(v)) for v in row))
    console.print(table)
    err.print(f"{len(result['rows'])} rows")


def _query_error(exc: BaseException) -> str:
    from streams.connectors.clickhouse import ClickHouseError, QueryBusy
    from streams.connectors.sqlguard import QueryRefused, one_line

    if isinstance(exc, QueryRefused | QueryBusy | ClickHouseError):
        return one_line(exc)
    return _one_line(exc)


def _cell(value: Any) -> str:
    """A JSON-ready value (streams.runtime.web.jsonable) as table text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return "NULL" if value is None else str(value)


def _query(settings: Settings, sql: str) -> dict[str, Any]:
    """Through the running embedded worker (chDB allows one process), else directly."""
    import urllib.error
    import urllib.request

    from streams.connectors.clickhouse import ClickHouseError, Reader
    from streams.connectors.preflight import chdb_holder, in_use_message
    from streams.connectors.sqlguard import QueryRefused
    from streams.runtime.web import run_query
    from streams.runtime.worker import read_embedded

    if settings.embedded_clickhouse:
        info = read_embedded(settings)
        if info is not None:
            # POST: SQL of any length (a URL is cut at about 8 kB)
            host = settings.web_bind if settings.web_bind not in ("0.0.0.0", "::") else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{info['web_port']}/api/query"
            headers = {"Content-Type": "application/json"}
            if settings.web_token:
                headers["Authorization"] = f"Bearer {settings.web_token}"
            request = urllib.request.Request(
                url, data=orjson.dumps({"sql": sql}), headers=headers, method="POST"
            )
            timeout = settings.query_timeout_s + 30
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return orjson.loads(response.read())
            except urllib.error.HTTPError as exc:
                try:
                    message = orjson.loads(exc.read()).get("error", str(exc))
                except (orjson.JSONDecodeError, AttributeError):
                    message = f"HTTP {exc.code} {exc.reason}"
                if exc.code == 401:
                    message += " (set STREAMWATCH_WEB_TOKEN to the worker's token)"
                raise (QueryRefused if exc.code == 400 else ClickHouseError)(message) from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise Failure(
                    f"the running worker's web server at {url} does not answer ({reason}); "
                    "check STREAMWATCH_WEB_PORT / STREAMWATCH_WEB_BIND"
                ) from None
    holder = chdb_holder(settings)  # a worker starting up, or not publishing its address
    if holder is not None and holder != os.getpid():
        raise Failure(in_use_message(settings, holder))
    reader = Reader.open(
        settings.clickhouse_dsn(),
        settings.clickhouse.database,
        settings.query_timeout_s,
        settings.query_max_rows,
    )
    return run_query(reader, sql)


# -- alerts -----------------------------------------------------------------


@main.command()
@click.option(
    "--follow", "-f", is_flag=True, help="Keep following new alerts (else print and exit)."
)
@click.option("--kind", multiple=True, help="Only these kinds (ctr, sensor, drift, ...).")
@click.option("--severity", multiple=True, type=click.Choice(["info", "warning", "critical"]))
@click.option("--rule", help="Only rules matching this glob (drift_*, ctr_floor).")
@click.option(
    "--entity",
    help="Only entities matching this glob (model-a/*); without * ? [ a substring match.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--from-beginning", is_flag=True, help="With --follow: start at the oldest alert kept."
)
@click.option("--max", "max_alerts", type=int, help="Stop after this many alerts.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
@click.pass_context
def alerts(
    ctx: click.Context,
    follow: bool,
    kind: tuple[str, ...],
    severity: tuple[str, ...],
    rule: str | None,
    entity: str | None,
    as_json: bool,
    from_beginning: bool,
    max_alerts: int | None,
    timeout: float | None,
) -> None:
    """Print the alerts on the alert topic, or follow it (--follow).

    \b
    Without --follow: every alert the topic holds, oldest first, then exit.
    With --follow: alerts as they come (from now, or --from-beginning), until Ctrl-C.
    Possible causes (details.possible_causes) are shown under an alert.

    \b
    Example:
        streamwatch alerts --follow --severity critical --kind ctr
        streamwatch alerts --follow --rule 'ctr_*' --entity 'cmp-00?'
        streamwatch alerts --follow --json | jq .message
    """
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    from schemas.events import Alert
    from streams.connectors import kafka
    from streams.runtime.worker import read_embedded

    settings = _connect_kafka(ctx)
    through_worker = _settings(ctx).embedded_kafka  # the running embedded worker's broker
    consumer = kafka.consumer(settings, f"streamwatch-cli-{uuid.uuid4().hex[:8]}")
    topic = settings.topics.alerts
    found = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        consumer.close()
        raise Failure(
            f"no topic {topic} at Kafka {settings.kafka.bootstrap}: start the worker first "
            "(it creates its topics), or set topics.alerts"
        )
    # Assigned, not subscribed: no group to join, and nothing to leave when it stops,
    # even with the broker gone.
    start = OFFSET_BEGINNING if (from_beginning or not follow) else OFFSET_END
    since_ms = int(time.time() * 1000) if start == OFFSET_END else None
    partitions = sorted(found.partitions)
    if start == OFFSET_END:
        # each partition's end asked for now, not resolved at the first fetch: what is
        # published once "following" is printed is shown (scripts and tests wait for it)
        consumer.assign(
            [
                TopicPartition(
                    topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
                )
                for p in partitions
            ]
        )
    else:
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
    if follow:
        err.print(f"following {topic} at {settings.kafka.bootstrap} (Ctrl-C stops)")
    decoder = msgspec.json.Decoder(Alert)
    deadline = time.monotonic() + timeout if timeout else None
    entity_pattern = _glob(entity) if entity else None
    shown = 0
    checked = time.monotonic()
    # Without --follow, the end of the topic is where it stays quiet: the broker's
    # reported high watermark is not trusted (Tansu's is wrong, see the notes).
    quiet_s, last = 1.5, time.monotonic()
    # Following from now: the end offsets come from that same high watermark, which on
    # Tansu can fall before the last batch, so older messages are skipped by time too
    # (since_ms, taken before the ends were asked for).
    # Ctrl-C sets a flag that the loop reads after each consume (<= 0.5 s) rather than
    # raising KeyboardInterrupt inside librdkafka's call; the close is then bounded.
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        while (deadline is None or time.monotonic() < deadline) and not interrupted.is_set():
            if through_worker and time.monotonic() - checked > 2:
                checked = time.monotonic()
                if read_embedded(settings) is None:  # its broker went with it
                    err.print("the embedded worker stopped: nothing more to follow")
                    return
            batch = consumer.consume(100, 0.5)
            if batch:
                last = time.monotonic()
            elif not follow and time.monotonic() - last >= quiet_s:
                return
            for message in batch:
                if message.error():
                    continue
                if since_ms is not None and message.timestamp()[1] < since_ms:
                    continue
                try:
                    alert = decoder.decode(message.value())
                except msgspec.DecodeError as exc:  # not ours: say so, keep following
                    err.print(f"[yellow]skipped a message that is not an alert:[/yellow] {exc}")
                    continue
                if not _alert_matches(alert, kind, severity, rule, entity_pattern):
                    continue
                if as_json:
                    sys.stdout.write(msgspec.json.encode(alert).decode() + "\n")
                    sys.stdout.flush()
                else:
                    print_alert(alert, console)
                shown += 1
                if max_alerts and shown >= max_alerts:
                    return
    finally:
        signal.signal(signal.SIGINT, previous)
        _close_within(consumer, 10.0)


def _close_within(consumer: Any, seconds: float) -> None:
    """Close a consumer, waiting at most `seconds`: an assigned consumer has no group
    to leave, so a close that takes longer is stuck on the broker, and Ctrl-C must
    still end the command (the process exits; librdkafka's threads go with it)."""
    closer = threading.Thread(target=consumer.close, daemon=True)
    closer.start()
    closer.join(seconds)
    if closer.is_alive():
        err.print(f"[yellow]the Kafka client did not close within {seconds:g} s[/yellow]")


def _glob(pattern: str) -> str:
    """A pattern without wildcards matches as a substring (the option's old meaning).

    >>> _glob("big"), _glob("model-*")
    ('*big*', 'model-*')
    """
    return pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"


def _alert_matches(
    alert: Any,
    kind: tuple[str, ...],
    severity: tuple[str, ...],
    rule: str | None,
    entity: str | None,
) -> bool:
    from fnmatch import fnmatchcase

    return (
        (not kind or alert.kind in kind)
        and (not severity or alert.severity in severity)
        and (rule is None or fnmatchcase(alert.rule, rule))
        and (entity is None or fnmatchcase(alert.entity, entity))
    )


# -- reference --------------------------------------------------------------


@main.group()
def reference() -> None:
    """Reference profiles for drift detection."""


def _number_or_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def read_sample(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV (header row; numbers parsed) or Parquet file."""
    import csv
    from pathlib import Path

    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise Failure("reading Parquet needs pyarrow: pip install pyarrow") from None
        return pq.read_table(path).to_pylist()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="") as f:
            dialect = "excel-tab" if suffix == ".tsv" else "excel"
            return [
                {k: _number_or_text(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f, dialect=dialect)
            ]
    raise Failure(f"{path}: expected a .csv, .tsv or .parquet file")


@reference.command("build")
@click.argument("sample", type=click.Path(exists=True, dir_okay=False))
@click.option("--model-id", required=True, help="The model the profile is for.")
@click.option("--version", "version", required=True, help="A version name for the profile.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Default: MODEL.ref.json")
@click.option("--bins", default=10, show_default=True, help="Quantile bins for numbers.")
def reference_build(
    sample: str, model_id: str, version: str, output: str | None, bins: int
) -> None:
    """Build a drift reference profile from a CSV or Parquet sample.

    \b
    One column per feature, plus `prediction` (and optionally `confidence`).
    Numbers get `bins` quantile bins, strings one bin per category plus
    "other". Point the worker at the result with `drift_references`.
    Example:
        streamwatch reference build train_sample.csv --model-id ranker --version 2026-11
    """
    from rich.progress import Progress

    from operators.reference import build_profile

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(f"reading {sample}", total=None)
        rows = read_sample(sample)
        progress.update(task, description=f"profiling {len(rows)} rows", total=1)
        if not rows:
            raise Failure(f"{sample} has no rows")
        profile = build_profile(rows, model_id, version, bins=bins)
        progress.update(task, completed=1)
    target = output or f"{model_id}.ref.json"
    with open(target, "wb") as f:
        f.write(profile.to_json())
    console.print(
        f"wrote {target}: {len(profile.features)} features from {len(rows)} rows "
        f"(model {model_id}, version {version})"
    )


# -- config -----------------------------------------------------------------


@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the effective configuration (file, then environment), secrets masked.

    \b
    Example:
        STREAMWATCH_CONFIG=prod.toml streamwatch config show
    """
    settings = _settings(ctx.parent.parent if ctx.parent and ctx.parent.parent else ctx)
    console.print_json(orjson.dumps(settings.masked()).decode())


# -- demo -------------------------------------------------------------------


@main.command()
@simulation_options
@click.option("--data-dir", default=None, help="Where the demo keeps ClickHouse data.")
@click.pass_context
def demo(
    ctx: click.Context,
    duration_s: int,
    speed: float,
    rate: float,
    campaigns: int,
    seed: int,
    incident_specs: tuple[str, ...],
    no_incidents: bool,
    experiments: bool | None,
    data_dir: str | None,
) -> None:
    """Everything embedded: broker, ClickHouse, worker, simulated incidents, live alerts.

    \b
    Example:
        streamwatch demo --duration 1800 --speed 90
    """
    from streams.cli.demo import run_demo
    from streams.connectors.preflight import check_clickhouse, check_kafka, hold_data_dir

    settings = _settings(ctx)
    if not settings.embedded_kafka:
        err.print("note: STREAMWATCH_KAFKA is set; the demo uses that broker")
    if data_dir:
        settings.data_dir = data_dir
    scenario = _scenario(
        duration_s,
        rate,
        campaigns,
        seed,
        incident_specs,
        no_incidents,
        demo=True,
        experiments=experiments,
    )
    hold_data_dir(settings)
    check_kafka(settings)
    check_clickhouse(settings)
    ok = run_demo(settings, scenario, speed or None, console, err)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
