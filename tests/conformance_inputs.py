"""Small input streams for the conformance suite (tests/test_conformance.py), one per monitor.

`GENERATORS` is keyed by the monitor's name in the registry (`streams.runtime.monitors.OPERATORS`);
the suite fails for a monitor without an entry here, so a new monitor cannot skip it.
Each generator returns a `Case`: a stream in event-time order that makes its monitor emit
rows, observations and (where `alerts` is true) alerts, the monitor's options that keep it
small, and the lateness the shuffled runs displace events within.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.events import (
    Click,
    Conversion,
    Impression,
    InferenceLog,
    LabelEvent,
    SensorReading,
)

T0 = 1_795_000_200_000  # 2026-11-18, a 5-minute boundary
MIN = 60_000


@dataclass(frozen=True)
class Case:
    #: (logical source, event), sorted by event time
    events: list[tuple[str, Any]]
    #: the monitor's `[monitors.NAME].options`
    options: dict[str, Any] = field(default_factory=dict)
    lateness_s: float = 30
    #: whether the stream must raise at least one alert (so alerts are compared on
    #: something); false only where an alert needs more input than a unit test affords
    alerts: bool = True
    #: top-level keys of the operator's snapshot that are models learned from the
    #: whole stream rather than state of open windows or entities (kept after every
    #: window has closed), each with the reason
    keeps: dict[str, str] = field(default_factory=dict)


def _sorted(events: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return sorted(events, key=lambda se: se[1].ts)


def _pair(
    source: str, kind: type, ts: int, campaign: str, user: str, **fields: Any
) -> tuple[str, Any]:
    """(source, event) of an ad event: its ids and extra fields, its time, campaign, user."""
    return (source, kind(ts=ts, campaign_id=campaign, user_id=user, **fields))


def _impression(
    impression_id: str, ts: int, campaign: str, user: str, **extra: Any
) -> tuple[str, Any]:
    return _pair(
        "impressions", Impression, ts, campaign, user, impression_id=impression_id, **extra
    )


def _click(
    click_id: str, impression_id: str, ts: int, campaign: str, user: str, **extra: Any
) -> tuple[str, Any]:
    ids = {"click_id": click_id, "impression_id": impression_id}
    return _pair("clicks", Click, ts, campaign, user, **ids, **extra)


def _conversion(
    conversion_id: str, click_id: str, ts: int, campaign: str, user: str, **extra: Any
) -> tuple[str, Any]:
    ids = {"conversion_id": conversion_id, "click_id": click_id}
    return _pair("conversions", Conversion, ts, campaign, user, **ids, **extra)


def ctr() -> Case:
    """Two campaigns at ~10 % CTR; c2 collapses to ~0 for six minutes, then recovers.
    Conversions joined (v2): about a third of the clicks convert within minutes, some
    twice, and a few conversions name a click that never counted (orphans)."""
    rng = random.Random(1)
    events: list[tuple[str, Any]] = []
    for k in range(30 * 240):
        ts = T0 + k * 250  # 4 impressions a second over 30 minutes
        campaign = "c1" if k % 2 else "c2"
        variant = "A" if k % 4 < 2 else "B"
        imp_id = f"i{k}"
        events.append(_impression(imp_id, ts, campaign, f"u{k % 97}", variant=variant))
        broken = campaign == "c2" and T0 + 15 * MIN <= ts < T0 + 21 * MIN
        rate = 0.002 if broken else 0.1
        if rng.random() < rate:
            delay = rng.choice([200, 3_000, 20_000])
            events.append(_click(f"k{k}", imp_id, ts + delay, campaign, f"u{k % 97}"))
            if rng.random() < 0.3:  # a conversion (sometimes two) of this click
                for n in range(1 + (rng.random() < 0.1)):
                    events.append(
                        _conversion(
                            f"v{k}-{n}",
                            f"k{k}",
                            ts + delay + rng.choice([1_000, 40_000, 150_000]) + n,
                            campaign,
                            f"u{k % 97}",
                            value=round(rng.uniform(1, 50), 2),
                        )
                    )
            if rng.random() < 0.05:  # a duplicate click
                events.append(_click(f"k{k}b", imp_id, ts + delay + 50, campaign, f"u{k % 97}"))
        if rng.random() < 0.002:  # a conversion of a click never seen
            events.append(_conversion(f"ov{k}", f"none{k}", ts, campaign, "u0"))
        if rng.random() < 0.003:  # an orphan click
            events.append(_click(f"o{k}", f"gone{k}", ts, campaign, "u0"))
    return Case(
        _sorted(events),
        options={
            "attribution_ms": 60_000,
            "baseline_min_impressions": 100,
            "conversions": True,
            "conversion_ms": 180_000,
        },
        keeps={"judge": "each campaign's baseline and CUSUMs, learned from all its windows"},
    )


def _readings(n: int, seed: int, sensors: tuple[str, ...]) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    events = []
    t = T0
    for i in range(n):
        t += 500
        sid = sensors[i % len(sensors)]
        temp = 20 + rng.gauss(0, 0.5)
        vib = 1 + rng.gauss(0, 0.05)
        if sid == sensors[0] and 800 <= i < 830:
            temp += 15  # a spike / a new operating regime
        if sid == sensors[-1] and i >= n - 400:
            temp += (i - (n - 400)) * 0.05  # a steady rise
        events.append(
            (
                "sensor-readings",
                SensorReading(
                    ts=t, sensor_id=sid, values={"temp": temp, "vib": vib}, site="plant-1"
                ),
            )
        )
    return events


def sensor() -> Case:
    return Case(
        _readings(2400, 2, ("s1", "s2")),
        options={"window_ms": 60_000, "min_points": 20, "aggregate_window_ms": 60_000},
    )


def cluster() -> Case:
    return Case(
        _readings(2400, 3, ("s1", "s2")),
        options={"warmup": 100, "history": 200, "quantile": 0.95, "n_clusters": 3},
        keeps={"models": "each sensor's k-means regimes and recent distances"},
    )


def autoencoder() -> Case:
    rng = np.random.default_rng(4)
    events = []
    for i in range(900):
        a = float(rng.normal())
        sign = -2.0 if 600 <= i < 660 else 2.0
        b = sign * a + float(rng.normal(scale=0.1))
        c = 0.5 * a + float(rng.normal(scale=0.05))
        events.append(
            (
                "sensor-readings",
                SensorReading(ts=T0 + 1000 * i, sensor_id="p1", values={"a": a, "b": b, "c": c}),
            )
        )
    return Case(
        events,
        options={"warmup": 200, "epochs": 10, "quiet": 5, "min_history": 100},
        keeps={"models": "each sensor's trained autoencoder and its error history"},
    )


def _inference(
    rng: np.random.Generator,
    n: int,
    start: int,
    span: int,
    model: str,
    version: str,
    shift: float = 0.0,
    error_rate: float = 0.0,
    latency: float = 20.0,
) -> list[tuple[str, Any]]:
    step = span // n
    out = []
    for i in range(n):
        ts = start + i * step
        out.append(
            (
                "inference-logs",
                InferenceLog(
                    request_id=f"{model}-{version}-{ts}-{i}",
                    ts=ts,
                    model_id=model,
                    model_version=version,
                    features={
                        "x": float(rng.normal(shift, 1.0)),
                        "cat": str(rng.choice(["A", "B", "C"], p=[0.5, 0.3, 0.2])),
                    },
                    prediction=float(rng.uniform(0, 1)),
                    latency_ms=float(rng.exponential(latency)),
                    status="error" if rng.uniform() < error_rate else "ok",
                    confidence=float(rng.beta(5, 1)),
                ),
            )
        )
    return out


def drift() -> Case:
    rng = np.random.default_rng(5)
    events = _inference(rng, 1500, T0, 15 * MIN, "m1", "v1")
    events += _inference(rng, 600, T0 + 15 * MIN, 10 * MIN, "m1", "v1", shift=1.5)
    events += _inference(rng, 900, T0, 25 * MIN, "m2", "v1")
    return Case(
        _sorted(events),
        options={"warmup_events": 500, "min_count": 100},
        keeps={
            "learned": "the reference profiles learned from each model's first events",
            # pruned when the model's next window closes, not by the watermark
            # alone: bounded per model (pool_windows), kept for a model gone quiet
            "recent": "each model's pooled counts of its last pool_windows windows",
        },
    )


def service() -> Case:
    rng = np.random.default_rng(6)
    events = _inference(rng, 1200, T0, 10 * MIN, "m1", "v1")
    events += _inference(
        rng, 600, T0 + 10 * MIN, 5 * MIN, "m1", "v1", error_rate=0.3, latency=900.0
    )
    events += _inference(rng, 1200, T0 + 15 * MIN, 10 * MIN, "m1", "v1")
    return Case(_sorted(events))


def srm() -> Case:
    """One experiment split 50/50 that drifts to 70/30 for ten minutes (on campaign c2
    only, which the drill-down names); a few users switch arms (crossover)."""
    rng = random.Random(7)
    events = []
    for k in range(6000):
        ts = T0 + k * 300  # 30 minutes
        campaign = f"c{k % 3}"
        broken = campaign == "c2" and T0 + 15 * MIN <= ts < T0 + 25 * MIN
        user = rng.randrange(2000)
        variant = "A" if user % 2 else "B"  # sticky assignment by user ...
        if user % 50 == 0:  # ... except for one user in fifty, who switches arms
            variant = rng.choice("AB")
        if broken and rng.random() < 0.4:  # c2 sends B's traffic to A (70/30)
            variant = "A"
        events.append(
            _impression(f"i{k}", ts, campaign, f"u{user}", experiment="e1", variant=variant)
        )
    return Case(
        events,
        # per experiment: never dropped, also for an experiment that has ended
        keeps={
            "cumulative": "each experiment's counts and always-valid p since its start",
            "cusum": "each experiment's accumulated per-window evidence (the CUSUMs)",
        },
    )


def _experiment_log(
    rng: random.Random, ts: int, i: int, variant: str, error_rate: float, latency: float
) -> tuple[str, Any]:
    return (
        "inference-logs",
        InferenceLog(
            request_id=f"r{i}",
            ts=ts,
            model_id="m1",
            model_version="v2" if variant == "treatment" else "v1",
            features={"x": rng.random()},
            prediction=rng.random(),
            latency_ms=rng.expovariate(1 / latency),
            status="error" if rng.random() < error_rate else "ok",
            experiment="e1",
            variant=variant,
        ),
    )


def experiment() -> Case:
    """Experiment e1, control and treatment served 50/50: from minute 12 the treatment
    errs on 15 % of its requests (control 1 %) and is twice as slow; from minute 10 the
    treatment gets 85 % of the impressions instead of half (a ramp too fast)."""
    rng = random.Random(9)
    events: list[tuple[str, Any]] = []
    for i in range(20 * 60 * 4):  # 4 requests a second for 20 minutes
        ts = T0 + i * 250
        variant = "treatment" if i % 2 else "control"
        bad = variant == "treatment" and ts >= T0 + 12 * MIN
        events.append(
            _experiment_log(rng, ts, i, variant, 0.15 if bad else 0.01, 60 if bad else 30)
        )
        if i % 2 == 0:  # 2 impressions a second
            share = 0.85 if ts >= T0 + 10 * MIN else 0.5
            events.append(
                _impression(
                    f"i{i}",
                    ts,
                    "c1",
                    f"u{rng.randrange(300)}",
                    experiment="e1",
                    variant="treatment" if rng.random() < share else "control",
                )
            )
    return Case(
        events,
        options={"window_ms": 60_000, "ramp_min_total": 60},
        keeps={
            "evidence": "each arm's moments and always-valid p-values since the start",
            # pruned when the experiment's next window closes, not by the watermark
            # alone: bounded by ramp_period_ms per experiment
            "shares": "each experiment's arm shares of its last ramp period",
        },
    )


def funnel() -> Case:
    """Experiment e1 at 25 % CTR and 30 % CVR in both arms until minute 8; then the
    treatment's clicks convert at 2 % (a broken checkout), its CTR unchanged. Some
    impressions carry no experiment (ignored), a few clicks and conversions are orphans."""
    rng = random.Random(10)
    events: list[tuple[str, Any]] = []
    for k in range(25 * 60 * 8):  # 8 impressions a second for 25 minutes
        ts = T0 + k * 125
        variant = "treatment" if k % 2 else "control"
        experiment = None if k % 13 == 0 else "e1"
        imp_id = f"i{k}"
        events.append(
            _impression(
                imp_id,
                ts,
                "c1",
                f"u{k % 500}",
                experiment=experiment,
                variant=variant if experiment else None,
            )
        )
        if experiment is None or rng.random() >= 0.25:
            continue
        delay = rng.choice([300, 5_000, 40_000])
        click_id = f"k{k}"
        events.append(_click(click_id, imp_id, ts + delay, "c1", f"u{k % 500}", experiment="e1"))
        broken = variant == "treatment" and ts >= T0 + 8 * MIN
        if rng.random() < (0.02 if broken else 0.3):
            for n in range(1 + (rng.random() < 0.1)):  # sometimes converted twice
                events.append(
                    _conversion(
                        f"v{k}-{n}",
                        click_id,
                        ts + delay + rng.choice([2_000, 30_000, 90_000]) + n,
                        "c1",
                        f"u{k % 500}",
                        value=round(rng.uniform(5, 80), 2),
                        experiment="e1",
                    )
                )
        if rng.random() < 0.01:  # a conversion of a click never seen
            events.append(_conversion(f"ov{k}", f"none{k}", ts, "c1", "u0", experiment="e1"))
    return Case(
        _sorted(events),
        options={
            "window_ms": 60_000,
            "attribution_ms": 60_000,
            "conversion_ms": 120_000,
            "min_impressions": 100,
            "min_clicks": 10,
        },
        keeps={
            "arms": "each arm's moments and always-valid p-values since the start",
            "judge": "the CTR monitor's baselines (the funnel judges none: empty)",
        },
    )


def freshness() -> Case:
    events = []
    for k in range(3000):
        ts = T0 + k * 1_000  # 50 minutes
        campaign = f"c{k % 3}"
        if campaign == "c2" and T0 + 10 * MIN <= ts < T0 + 30 * MIN:
            continue  # c2 falls silent for 20 minutes
        events.append(
            (
                "impressions",
                Impression(impression_id=f"i{k}", ts=ts, campaign_id=campaign, user_id="u"),
            )
        )
    return Case(events, options={"min_silence_ms": 5 * MIN})


def quality() -> Case:
    rng = np.random.default_rng(8)
    events: list[tuple[str, Any]] = []
    for i in range(3000):
        ts = T0 + i * 800  # 40 minutes
        p = float(rng.uniform())
        truth = rng.uniform() < p
        if ts >= T0 + 25 * MIN:
            truth = not truth  # concept drift: the model is now mostly wrong
        rid = f"r{i}"
        events.append(
            (
                "inference-logs",
                InferenceLog(
                    request_id=rid,
                    ts=ts,
                    model_id="m1",
                    model_version="v1",
                    features={"x": p},
                    prediction=p,
                    latency_ms=5.0,
                    status="ok",
                    confidence=p,
                ),
            )
        )
        if rng.uniform() < 0.9:
            # most labels 2 minutes later; some within seconds (even before their
            # prediction), which the shuffled runs deliver before the prediction
            delay = 2 * MIN if rng.uniform() < 0.8 else int(rng.integers(-2_000, 20_000))
            events.append(
                (
                    "labels",
                    LabelEvent(
                        request_id=rid, ts=ts + delay, model_id="m1", label=1.0 if truth else 0.0
                    ),
                )
            )
    return Case(
        _sorted(events),
        options={"label_delay_ms": 3 * MIN, "reference_labelled": 300},
        lateness_s=60,
        keeps={"references": "each model version's reference quality, from its first labels"},
    )


GENERATORS: dict[str, Callable[[], Case]] = {
    "ctr": ctr,
    "sensor": sensor,
    "cluster": cluster,
    "autoencoder": autoencoder,
    "drift": drift,
    "service": service,
    "srm": srm,
    "freshness": freshness,
    "quality": quality,
    "experiment": experiment,
    "funnel": funnel,
}
