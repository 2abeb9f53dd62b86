"""The `streamwatch` command line.

streamwatch demo                 everything embedded, simulated incidents, live alerts
streamwatch run                  the worker, against the configured Kafka and ClickHouse
streamwatch simulate             synthetic traffic with switchable incidents
streamwatch query "SELECT ..."   read-only query, printed as a table
streamwatch alerts               follow the alert topic
streamwatch config show          the effective configuration, secrets masked
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
import msgspec
import orjson
from rich.console import Console
from rich.table import Table

from streams.config import ConfigError, Settings, load_settings

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


class Failure(click.ClickException):
    """One clear line on stderr, exit code 1, no traceback."""

    def show(self, file: Any = None) -> None:
        err.print(f"[red]error:[/red] {self.message}")


def _settings(ctx: click.Context) -> Settings:
    try:
        return load_settings(ctx.obj.get("config"))
    except ConfigError as exc:
        raise Failure(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    # `kill -USR1 <pid>` prints every thread's stack: for a worker that seems stuck
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)


# -- run --------------------------------------------------------------------


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the worker against the configured Kafka and ClickHouse.

    \b
    Without STREAMWATCH_KAFKA / STREAMWATCH_CLICKHOUSE the embedded broker and
    embedded ClickHouse are started and stopped with the worker.
    Example:
        STREAMWATCH_KAFKA=kafka:9092 \\
        STREAMWATCH_CLICKHOUSE=http://user:pass@clickhouse:8123/streamwatch streamwatch run
    """
    from streams.worker import Services, Worker

    settings = _settings(ctx)
    services = Services(settings)
    try:
        settings = services.start()
        worker = Worker(settings)
        services.publish_addresses()
        err.print(
            f"streamwatch worker: Kafka {settings.kafka.bootstrap}, ClickHouse "
            f"{settings.masked()['clickhouse']['dsn'] or settings.clickhouse_dsn()}, "
            f"web http://localhost:{settings.web_port}/"
        )
        worker.run()
    except Exception as exc:
        raise Failure(_one_line(exc)) from None
    finally:
        services.stop()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -- simulate ---------------------------------------------------------------


def _parse_incident(kind: str, spec: str) -> Any:
    from streams.simulate import Incident

    parts = spec.split(":")
    try:
        target, start, duration = parts[0], float(parts[1]), float(parts[2])
        factor = float(parts[3]) if len(parts) > 3 else 0.3
    except (IndexError, ValueError):
        raise click.BadParameter(f"{spec!r}: expected TARGET:START_S:DURATION_S[:FACTOR]") from None
    return Incident(kind, target, start, duration, factor)


def simulation_options(f: Any) -> Any:
    options = [
        click.option(
            "--duration",
            "duration_s",
            default=2400,
            show_default=True,
            help="Event-time seconds to simulate.",
        ),
        click.option(
            "--speed",
            default=60.0,
            show_default=True,
            help="Event-time seconds per wall-clock second (0: as fast as possible).",
        ),
        click.option("--rate", default=60.0, show_default=True, help="Impressions per second."),
        click.option("--campaigns", default=10, show_default=True),
        click.option("--seed", default=42, show_default=True),
        click.option(
            "--ctr-drop",
            "ctr_drops",
            multiple=True,
            metavar="CAMPAIGN:START:DUR[:F]",
            help="Multiply a campaign's CTR by F (default 0.3) from START for DUR "
            "seconds of event time, e.g. cmp-001:1200:600:0.25.",
        ),
        click.option("--no-incidents", is_flag=True, help="Quiet traffic only."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _scenario(
    duration_s: int,
    rate: float,
    campaigns: int,
    seed: int,
    ctr_drops: tuple[str, ...],
    no_incidents: bool,
) -> Any:
    from streams.simulate import Incident, Scenario

    start_ms = (int(time.time()) - duration_s) * 1000
    incidents = [_parse_incident("ctr_drop", s) for s in ctr_drops]
    if not incidents and not no_incidents:
        incidents = [Incident("ctr_drop", "cmp-003", duration_s * 0.5, duration_s * 0.25, 0.2)]
    return Scenario(
        start_ms=start_ms,
        duration_s=duration_s,
        campaigns=campaigns,
        impressions_per_s=rate,
        seed=seed,
        incidents=incidents,
    )


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
    ctr_drops: tuple[str, ...],
    no_incidents: bool,
) -> None:
    """Publish synthetic impressions and clicks, with incidents.

    \b
    Event time starts DURATION seconds ago and runs SPEED times faster than
    the clock, so the traffic ends about now.
    Example:
        streamwatch simulate --duration 3600 --speed 120 --ctr-drop cmp-003:1800:600:0.2
    """
    from streams import kafka
    from streams.simulate import Simulator

    settings = _connect_kafka(ctx)
    scenario = _scenario(duration_s, rate, campaigns, seed, ctr_drops, no_incidents)
    for inc in scenario.incidents:
        err.print(
            f"incident: {inc.kind} on {inc.target} from +{inc.start_s:.0f}s for "
            f"{inc.duration_s:.0f}s (x{inc.factor})"
        )
    kafka.ensure_topics(settings)
    counts = _publish_with_progress(kafka.producer(settings), Simulator(scenario), speed or None)
    console.print("published " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())))


def _publish_with_progress(
    producer: Any, simulator: Any, speed: float | None, stop: Any = None
) -> dict[str, int]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from streams.simulate import publish

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
        )


def _connect_kafka(ctx: click.Context) -> Settings:
    """Settings whose Kafka is the configured one, or the running embedded worker's."""
    from streams.worker import read_embedded

    settings = _settings(ctx)
    if settings.embedded_kafka:
        info = read_embedded(settings)
        if info is None:
            raise Failure(
                "no Kafka configured and no embedded worker running: start "
                "`streamwatch run` first, or set STREAMWATCH_KAFKA"
            )
        settings.kafka.bootstrap = info["kafka"]
    return settings


# -- query ------------------------------------------------------------------


@main.command()
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_context
def query(ctx: click.Context, sql: str, as_json: bool) -> None:
    """Run a read-only query against ClickHouse and print a table.

    \b
    Example:
        streamwatch query "SELECT campaign_id, sum(clicks)/sum(impressions) AS ctr
                           FROM streamwatch.ctr_windows FINAL GROUP BY campaign_id"
    """
    from streams.web import check_read_only

    settings = _settings(ctx)
    try:
        check_read_only(sql)
        result = _query(settings, sql)
    except Exception as exc:
        raise Failure(_one_line(exc) if not isinstance(exc, ValueError) else str(exc)) from None
    if as_json:
        for row in result["rows"]:
            record = dict(zip(result["columns"], row, strict=True))
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
        return
    table = Table(*result["columns"], show_lines=False)
    for row in result["rows"]:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)
    err.print(f"{len(result['rows'])} rows")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "NULL" if value is None else str(value)


def _query(settings: Settings, sql: str) -> dict[str, Any]:
    """Through the running embedded worker (chDB allows one process), else directly."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from streams.clickhouse import Writer, connect
    from streams.web import run_query
    from streams.worker import read_embedded

    if settings.embedded_clickhouse:
        info = read_embedded(settings)
        if info is not None:
            url = f"http://127.0.0.1:{info['web_port']}/api/query?" + urllib.parse.urlencode(
                {"sql": sql}
            )
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    return orjson.loads(response.read())
            except urllib.error.HTTPError as exc:
                raise ValueError(orjson.loads(exc.read()).get("error", str(exc))) from None
    client = connect(settings.clickhouse_dsn(), readonly=True)
    return run_query(Writer(client, settings.clickhouse.database), sql)


# -- alerts -----------------------------------------------------------------


@main.command()
@click.option("--kind", multiple=True, help="Only these kinds (ctr, sensor, drift, ...).")
@click.option("--severity", multiple=True, type=click.Choice(["info", "warning", "critical"]))
@click.option("--entity", help="Only alerts whose entity contains this text.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest alert kept.")
@click.option("--max", "max_alerts", type=int, help="Stop after this many alerts.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
@click.pass_context
def alerts(
    ctx: click.Context,
    kind: tuple[str, ...],
    severity: tuple[str, ...],
    entity: str | None,
    as_json: bool,
    from_beginning: bool,
    max_alerts: int | None,
    timeout: float | None,
) -> None:
    """Follow the alert topic and print alerts as they come.

    \b
    Example:
        streamwatch alerts --severity critical --kind ctr
        streamwatch alerts --json | jq .message
    """
    import uuid

    from schemas.events import Alert
    from streams import kafka

    settings = _connect_kafka(ctx)
    consumer = kafka.consumer(
        settings,
        f"streamwatch-cli-{uuid.uuid4().hex[:8]}",
        **{"auto.offset.reset": "earliest" if from_beginning else "latest"},
    )
    consumer.subscribe([settings.topics.alerts])
    decoder = msgspec.json.Decoder(Alert)
    deadline = time.monotonic() + timeout if timeout else None
    shown = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                if message.error():
                    continue
                alert = decoder.decode(message.value())
                if kind and alert.kind not in kind:
                    continue
                if severity and alert.severity not in severity:
                    continue
                if entity and entity not in alert.entity:
                    continue
                if as_json:
                    sys.stdout.write(msgspec.json.encode(alert).decode() + "\n")
                    sys.stdout.flush()
                else:
                    print_alert(alert)
                shown += 1
                if max_alerts and shown >= max_alerts:
                    return
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def print_alert(alert: Any, out: Console = console) -> None:
    when = datetime.fromtimestamp(alert.ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    style = SEVERITY_STYLE.get(alert.severity, "white")
    mark = "FIRING  " if alert.status == "firing" else "RESOLVED"
    if alert.status == "resolved":
        style = "green"
    out.print(
        f"[{style}]{mark} {alert.severity:<8}[/{style}] {when}  [bold]{alert.kind}"
        f"[/bold]/{alert.rule}  {alert.entity}: {alert.message}"
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
    ctr_drops: tuple[str, ...],
    no_incidents: bool,
    data_dir: str | None,
) -> None:
    """Everything embedded: broker, ClickHouse, worker, simulated incidents, live alerts.

    \b
    Example:
        streamwatch demo --duration 1800 --speed 90
    """
    from streams.demo import run_demo

    settings = _settings(ctx)
    if not settings.embedded_kafka:
        err.print("note: STREAMWATCH_KAFKA is set; the demo uses that broker")
    if data_dir:
        settings.data_dir = data_dir
    scenario = _scenario(duration_s, rate, campaigns, seed, ctr_drops, no_incidents)
    try:
        ok = run_demo(settings, scenario, speed or None, console, err)
    except Exception as exc:
        raise Failure(_one_line(exc)) from None
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
