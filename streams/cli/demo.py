"""`streamwatch demo`: the whole product on one laptop, in about a minute.

Starts the embedded services and a worker, publishes simulated traffic with
injected incidents from a background thread, prints alerts as the worker
raises them, stops once event time has passed the end of the simulation, and
summarises what ClickHouse holds.

To show possible causes and retraining (docs/causes.md), the default incidents
gain a CTR drop on a campaign served by the model of the feature drift, while
the drift lasts (`linked_incidents`): its CTR alert names the drift ("possible
cause: PSI of distance_km = ..."); and unless retraining is configured, the
demo asks for it on PSI, error rate and accuracy (`DEMO_RETRAIN`), printing
each request.

Experiments (issue 16, `DEMO_EXPERIMENTS`): the first campaign runs its own
A/B test (`exp-cmp-000`, with the default `srm` incident), the next two run
`exp-shared` together (its traffic spans campaigns in different partitions,
re-keyed by experiment), and model-0's requests are served by the two arms of
`exp-model`. `experiment_incidents` adds one incident per experiment alert:
an SRM carried by one ad only, a latency and an error-rate regression of the
treatment arm (guardrails), crossover users, a ramp jump, and a CVR drop then a
CTR drop of arm B of `exp-cmp-000` (the funnel's CVR, CTR and revenue
guardrails).

Conversions (issue 16, `demo_monitors`): the built-in defaults leave the CTR
monitor's conversion join and the funnel guardrails off (an upgrade from v1
reads v1's topics only), and their verdict comes when the conversion window
has passed (3,600 s by default: over an hour of event time after a window).
The demo turns both on with a conversion window of `DEMO_CONVERSION_MS` (10
min; a setting of the deployment: `conversion_ms` in `[monitors.ctr]` and
`[monitors.funnel]` options, kept when set), and its simulated conversions
come within it (`DEMO_CONVERSIONS`: 30 s to 9 min after the click), so the
CVR drop's guardrail alert fires within the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from operators.ctr import CtrConfig
from streams.cli.simulate import (
    MODEL_EXPERIMENT,
    SHARED_EXPERIMENT,
    Incident,
    Scenario,
    Simulator,
    publish,
)
from streams.config import RetrainSettings, Settings
from streams.connectors import kafka
from streams.runtime.worker import Services, Worker

# a CTR window is judged once final: the attribution window after its end
CTR_FINAL_S = (CtrConfig().attribution_ms + CtrConfig().window_ms) / 1000
DEMO_LABEL_DELAY_MS = 600_000
# the demo is one worker: an input partition none of its keys hash to must not hold
# the experiment-keyed streams back for the default 120 s (streams/runtime/repartition.py).
# A partition with messages still unread is not left out however busy the machine
# (its forwarder keeps it in the merge: Pipeline._keep_alive), so the short timeout
# costs no late events (--speed 0 on a loaded machine: 76,425 late events before, 0)
DEMO_REPARTITION_IDLE_S = 5.0
# the demo's conversion window (CTR join and funnel guardrails): a window's CVR verdict
# comes window end + attribution (600 s) + this after its start, within the demo's hour
DEMO_CONVERSION_MS = 600_000
# the simulator's conversions in the demo (Scenario fields): CVR about 10 % of first
# clicks, delays log-normal (median 2 min) between 30 s and 9 min, inside the window
DEMO_CONVERSIONS: dict[str, float] = {
    "cvr": 0.1,
    "conversion_delay_median_s": 120.0,
    "conversion_delay_min_s": 30.0,
    "conversion_delay_max_s": 540.0,
}


def publish_traffic(
    settings: Settings,
    scenario: Scenario,
    speed: float | None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """The demo's traffic: the simulator's messages, on the topics the configuration
    names (`[topics]`); returns the messages per logical topic."""
    return publish(
        kafka.producer(settings),
        Simulator(scenario),
        speed,
        stop=stop,
        topics=settings.topics.inputs(),
    )


# the demo's retraining policy when none is configured (docs/causes.md)
DEMO_RETRAIN = {
    "policies": [
        {
            "models": "*",
            "interval_s": 86_400,
            "conditions": [
                {"metric": "psi", "op": ">=", "threshold": 0.2, "for_s": 120},
                {"metric": "error_rate", "op": ">", "threshold": 0.05, "for_s": 60},
                {"metric": "accuracy_drop", "op": ">", "threshold": 0.1, "for_s": 300},
            ],
        }
    ]
}


# the demo's experiments (Scenario fields): exp-cmp-000 alone, exp-shared over
# cmp-001 and cmp-002, exp-model serving model-0's requests
DEMO_EXPERIMENTS = {
    "experiment_campaigns": 1,
    "shared_experiment_campaigns": 2,
    "experiment_models": 1,
}
EXPERIMENT_WINDOW_S = 300  # SRM and experiment windows: incidents start on their edges


def experiment_incidents(duration_s: float) -> list[Incident]:
    """One incident per experiment alert, on a run of `duration_s` seconds (at
    its default 3600 s: crossover at 600-900 s, treatment latency x1.6 at
    900-1500 s, SRM in ad-3 at 1200-1800 s, treatment errors 8 % at 2100-2400 s,
    ramp to 85 % from 2700 s to the end, the CVR of arm B of exp-cmp-000 x0.3 at
    300-1500 s and its CTR x0.3 at 1500-2400 s). Starts are on window edges, so each
    window is wholly in or out of an incident. The crossover comes first: the
    SRM in one ad also puts some users in both arms (their arm is a hash of the
    user against the ad's share), and a crossover alert during it would hold
    the crossover rule's hour of cooldown over a later crossover incident.

    >>> [(i.kind, i.start_s, i.end_s) for i in experiment_incidents(3600)][:2]
    [('crossover', 600.0, 900.0), ('arm_latency', 900.0, 1500.0)]
    """
    d = float(duration_s)

    def at(fraction: float) -> float:
        return max(1, round(fraction * d / EXPERIMENT_WINDOW_S)) * float(EXPERIMENT_WINDOW_S)

    treatment = f"{MODEL_EXPERIMENT}/treatment"
    ramp = at(0.75)
    return [
        Incident("crossover", SHARED_EXPERIMENT, at(1 / 6), at(1 / 12), 0.05),
        Incident("arm_latency", treatment, at(0.25), at(1 / 6), 1.6),
        Incident("srm_dimension", f"{SHARED_EXPERIMENT}/ad-3", at(1 / 3), at(1 / 6), 0.9),
        Incident("arm_error", treatment, at(7 / 12), at(1 / 12), 0.08),
        # a ramp is not undone: from its start to the end of the run
        Incident("ramp", SHARED_EXPERIMENT, ramp, max(d - ramp, 1.0), 0.85),
        # early: a window's CVR verdict comes attribution + conversion window after its
        # end (20 min with the demo's, DEMO_CONVERSION_MS), and the always-valid test
        # since the start needs a few windows of the drop (about 90 clicks per arm and
        # window) before clean ones dilute it; four
        Incident("cvr_drop", "exp-cmp-000/B", at(1 / 12), at(1 / 3), 0.3),
        # the same arm's CTR x0.3 next (the funnel's CTR guardrail), judged with its CVR
        Incident("arm_ctr_drop", "exp-cmp-000/B", at(5 / 12), at(1 / 4), 0.3),
    ]


def linked_incidents(scenario: Scenario) -> list[Incident]:
    """A CTR drop (x0.25) on a campaign served by the model of each feature drift,
    from a minute into the drift for up to 300 s: a CTR alert with a possible cause.
    The campaign is one no other CTR drop targets (a rule that fired on it shortly
    before would still be cooling down), a campaign without an experiment first.
    None when the drop could not be judged before the run ends (a CTR window is
    judged once final: the attribution window after its end).

    >>> s = Scenario(0, duration_s=3600, campaigns=4,
    ...              incidents=[Incident("feature_drift", "model-0/distance_km", 2025, 540, 1.5)])
    >>> linked_incidents(s)
    [Incident(kind='ctr_drop', target='cmp-002', start_s=2085.0, duration_s=300.0, factor=0.25)]
    >>> s.incidents.append(Incident("ctr_drop", "cmp-002", 720, 450, 0.25))
    >>> [i.target for i in linked_incidents(s)]  # cmp-002 is taken: cmp-000 (an experiment's)
    ['cmp-000']
    >>> s.duration_s = 1800  # a window from 2085 s would be final after the run
    >>> linked_incidents(s)
    []
    """
    experiments = set(scenario.campaign_ids()[: scenario.experiment_campaigns])
    dropped = {i.target for i in scenario.incidents if i.kind == "ctr_drop"}
    out = []
    for drift in scenario.incidents:
        if drift.kind != "feature_drift" or drift.duration_s <= 120:
            continue
        model = drift.target.partition("/")[0]
        served = [c for c in scenario.campaign_ids() if scenario.model_of(c) == model]
        free = [c for c in served if c not in dropped]
        # no other drop on it, no experiment on it; or no other drop; or any
        ranked = [c for c in free if c not in experiments] + free + served
        start = float(drift.start_s + 60)
        # judged only once final (attribution + one window after it): before the run ends
        duration = min(300.0, drift.duration_s - 60, scenario.duration_s - CTR_FINAL_S - start)
        if ranked and duration >= 120:
            out.append(Incident("ctr_drop", ranked[0], start, duration, 0.25))
            dropped.add(ranked[0])
    return out


def demo_monitors(settings: Settings) -> None:
    """The demo's monitor settings, where the configuration does not set them: the
    quality monitor's label delay, and conversions on (the CTR monitor's join and the
    funnel guardrails) with the demo's conversion window.

    >>> from streams.config import load_settings
    >>> s = load_settings(env={})
    >>> s.monitors["funnel"].enabled, s.monitors["ctr"].options.get("conversions")
    (False, None)
    >>> demo_monitors(s)
    >>> s.monitors["funnel"].enabled, s.monitors["funnel"].options["conversion_ms"]
    (True, 600000)
    >>> s.monitors["ctr"].options["conversions"], s.monitors["ctr"].options["conversion_ms"]
    (True, 600000)
    """
    quality = settings.monitors.get("quality")
    if quality is not None and "label_delay_ms" not in quality.options:
        # the simulator's labels come within 540 s: a 10-min label delay makes the
        # quality windows final (and the concept drift's alert fire) within the demo
        quality.options = {**quality.options, "label_delay_ms": DEMO_LABEL_DELAY_MS}
    ctr = settings.monitors.get("ctr")
    if ctr is not None:
        ctr.options = {"conversions": True, "conversion_ms": DEMO_CONVERSION_MS, **ctr.options}
    funnel = settings.monitors.get("funnel")
    if funnel is not None:
        # the demo shows every alert: the CVR guardrail too (off in the built-in defaults)
        funnel.enabled = True
        funnel.options = {"conversion_ms": DEMO_CONVERSION_MS, **funnel.options}


def run_demo(
    settings: Settings, scenario: Scenario, speed: float | None, out: Console, err: Console
) -> bool:
    from streams.cli.console import print_alert

    if not settings.retrain.policies:
        settings.retrain = msgspec.convert(DEMO_RETRAIN, RetrainSettings)
    demo_monitors(settings)
    settings.repartition_idle_s = min(settings.repartition_idle_s, DEMO_REPARTITION_IDLE_S)
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
        requested: list[Any] = []

        def on_retrain(request: Any) -> None:
            requested.append(request)
            reasons = "; ".join(r["message"] for r in request.reasons)
            out.print(
                f"[bold magenta]retraining requested[/bold magenta] for {request.model_id} "
                f"(request {request.request_id[:8]}): {reasons}"
            )

        worker.causes.publisher.listeners.append(on_retrain)
        done = threading.Event()
        failure: list[BaseException] = []

        published: list[int] = []  # how many events the simulator sent, once it is done

        def traffic() -> None:
            try:
                counts = publish_traffic(settings, scenario, speed, lambda: stopping.is_set())
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
            internal = worker.pipeline.internal
            counts = worker.pipeline.events_in
            processed = sum(n for t, n in counts.items() if t not in internal)
            # and the re-keyed copies of them read back (experiments: srm, experiment)
            rekeyed = sum(n for t, n in counts.items() if t in internal)
            processed_all = processed + rekeyed
            if processed_all != quiet_since[1]:
                quiet_since[:] = [now, processed_all]
            if now - last_report[0] > 10:
                last_report[0] = now
                wm = worker.pipeline.watermarks().get("ctr")
                when = time.strftime("%H:%M:%S", time.gmtime(wm / 1000)) if wm else "-"
                err.print(f"[dim]... {processed} events processed, event time at {when} UTC[/dim]")
            # all published traffic consumed, and the results written; a worker that
            # has not even joined its group yet (with --speed 0 the traffic can be
            # out before it does) is not done, unless nothing comes for a minute
            caught_up = (
                bool(published) and processed >= published[0] and rekeyed >= worker.sinks.forwarded
            )
            quiet = now - quiet_since[0]
            drained = worker.sinks.buffered == 0 and (quiet > 3 if caught_up else quiet > 60)
            return done.is_set() and (drained or now - started > 900)

        err.print("publishing traffic; alerts appear below as they fire\n")
        worker.run(until=finished)
        stopping.set()
        if failure:
            raise failure[0]
        return summarise(worker, raised, out, requested)
    finally:
        services.stop()


def summarise(
    worker: Worker, raised: list[Any], out: Console, requested: list[Any] | None = None
) -> bool:
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
    caused = [a for a in raised if a.details.get("possible_causes")]
    table.add_row("alerts naming a possible cause", str(len(caused)))
    table.add_row("retraining requests", str(len(requested or [])))
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
