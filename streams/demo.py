"""`streamwatch demo`: the whole product on one laptop, in about a minute.

Starts the embedded services and a worker, publishes simulated traffic with
injected incidents from a background thread, prints alerts as the worker
raises them, stops once event time has passed the end of the simulation, and
summarises what ClickHouse holds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from streams import kafka
from streams.config import Settings
from streams.simulate import Scenario, Simulator, publish
from streams.worker import Services, Worker

DEMO_LABEL_DELAY_MS = 600_000


def _topic_map(settings: Settings) -> dict[str, str]:
    from streams.cli import _topic_map as topic_map

    return topic_map(settings)


def run_demo(
    settings: Settings, scenario: Scenario, speed: float | None, out: Console, err: Console
) -> bool:
    from streams.cli import print_alert

    quality = settings.monitors.get("quality")
    if quality is not None and "label_delay_ms" not in quality.options:
        # the simulator's labels come within 540 s: a 10-min label delay makes the
        # quality windows final (and the concept drift's alert fire) within the demo
        quality.options = {**quality.options, "label_delay_ms": DEMO_LABEL_DELAY_MS}
    services = Services(settings)
    settings = services.start()
    try:
        worker = Worker(settings)
        services.publish_addresses()
        err.print(
            f"[bold]streamwatch demo[/bold]: Kafka (Tansu) on {settings.kafka.bootstrap}, "
            f"ClickHouse (chDB) in {settings.clickhouse_dsn()}"
        )
        err.print(
            f"dashboard and metrics: http://localhost:{settings.web_port}/  (/metrics, /health)"
        )
        for inc in scenario.incidents:
            err.print(
                f"injected incident: {inc.kind} on {inc.target} at +{inc.start_s:.0f}s "
                f"for {inc.duration_s:.0f}s (x{inc.factor})"
            )
        raised: list[Any] = []

        def on_alert(alert: Any) -> None:
            raised.append(alert)
            print_alert(alert, out)

        worker.sinks.alert_listeners.append(on_alert)
        done = threading.Event()
        failure: list[BaseException] = []

        published: list[int] = []  # how many events the simulator sent, once it is done

        def traffic() -> None:
            try:
                counts = publish(
                    kafka.producer(settings),
                    Simulator(scenario),
                    speed,
                    stop=lambda: stopping.is_set(),
                )
                published.append(sum(counts.values()))
            except BaseException as exc:  # reported after the worker stops
                failure.append(exc)
            finally:
                done.set()

        stopping = threading.Event()
        thread = threading.Thread(target=traffic, name="simulator", daemon=True)
        started = time.monotonic()
        last_report = [started]
        quiet_since = [0.0, -1]  # when the processed count last changed, and that count

        def finished() -> bool:
            if not thread.is_alive() and not done.is_set():
                thread.start()
            now = time.monotonic()
            processed = sum(worker.pipeline.events_in.values())
            if processed != quiet_since[1]:
                quiet_since[:] = [now, processed]
            if now - last_report[0] > 10:
                last_report[0] = now
                wm = worker.pipeline.watermarks().get("ctr")
                when = time.strftime("%H:%M:%S", time.gmtime(wm / 1000)) if wm else "-"
                err.print(f"[dim]... {processed} events processed, event time at {when} UTC[/dim]")
            # all published traffic consumed, and the results written; a worker that
            # has not even joined its group yet (with --speed 0 the traffic can be
            # out before it does) is not done, unless nothing comes for a minute
            caught_up = bool(published) and processed >= published[0]
            quiet = now - quiet_since[0]
            drained = worker.sinks.buffered == 0 and (quiet > 3 if caught_up else quiet > 60)
            return done.is_set() and (drained or now - started > 900)

        err.print("publishing traffic; alerts appear below as they fire\n")
        worker.run(until=finished)
        stopping.set()
        if failure:
            raise failure[0]
        return summarise(worker, raised, out)
    finally:
        services.stop()


def summarise(worker: Worker, raised: list[Any], out: Console) -> bool:
    db = worker.settings.clickhouse.database
    windows = worker.query(
        f"SELECT count(), countIf(final = 1), sum(impressions), sum(clicks) "
        f"FROM {db}.ctr_windows FINAL"
    ).result_rows[0]
    alerts = worker.query(
        f"SELECT kind, severity, status, count() FROM {db}.alerts FINAL "
        f"GROUP BY kind, severity, status ORDER BY kind, severity, status"
    ).result_rows
    rejected = worker.query(f"SELECT count() FROM {db}.dead_letters FINAL").result_rows[0][0]
    table = Table(title="streamwatch demo summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("CTR windows written (final)", f"{windows[0]} ({windows[1]})")
    table.add_row("impressions / clicks in final windows", f"{windows[2]} / {windows[3]}")
    for kind, severity, status, n in alerts:
        table.add_row(f"alerts: {kind} {severity} {status}", str(n))
    table.add_row("messages rejected to dead-letter", str(rejected))
    from schemas.tables import TABLES

    for spec in TABLES:
        if spec.name in ("alerts", "dead_letters"):
            continue
        n = worker.query(f"SELECT count() FROM {db}.{spec.name} FINAL").result_rows[0][0]
        table.add_row(f"rows in {db}.{spec.name}", str(n))
    out.print()
    out.print(table)
    out.print(
        'query more: streamwatch query "SELECT * FROM streamwatch.ctr_windows FINAL '
        'ORDER BY window_start DESC LIMIT 10"  (after the demo, the data stays in '
        f"{worker.settings.data_dir})"
    )
    return windows[0] > 0
