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


def run_demo(
    settings: Settings, scenario: Scenario, speed: float | None, out: Console, err: Console
) -> bool:
    from streams.cli import print_alert

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

        def traffic() -> None:
            try:
                publish(
                    kafka.producer(settings),
                    Simulator(scenario),
                    speed,
                    stop=lambda: stopping.is_set(),
                )
            except BaseException as exc:  # reported after the worker stops
                failure.append(exc)
            finally:
                done.set()

        stopping = threading.Event()
        thread = threading.Thread(target=traffic, name="simulator", daemon=True)
        end_ms = scenario.start_ms + scenario.duration_s * 1000
        lateness_ms = round(settings.ctr.lateness_s * 1000)
        started = time.monotonic()
        last_report = [started]

        def finished() -> bool:
            if not thread.is_alive() and not done.is_set():
                thread.start()
            now = time.monotonic()
            wm = worker.pipeline.watermarks().get("ctr")
            if now - last_report[0] > 10:
                last_report[0] = now
                behind = f"{(end_ms - wm) / 1000:.0f} event-s to go" if wm else "starting"
                err.print(
                    f"[dim]... {sum(worker.pipeline.events_in.values())} events "
                    f"processed, {behind}[/dim]"
                )
            caught_up = wm is not None and wm >= end_ms - lateness_ms - 2000
            return done.is_set() and (caught_up or now - started > 600)

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
    out.print()
    out.print(table)
    out.print(
        'query more: streamwatch query "SELECT * FROM streamwatch.ctr_windows FINAL '
        'ORDER BY window_start DESC LIMIT 10"  (after the demo, the data stays in '
        f"{worker.settings.data_dir})"
    )
    return windows[0] > 0
