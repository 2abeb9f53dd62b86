"""Small input streams for the conformance suite (tests/test_conformance.py), one per monitor.

`GENERATORS` is keyed by the monitor's name in the registry (`streams.monitors.OPERATORS`);
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

from schemas.events import Click, Impression, InferenceLog, LabelEvent, SensorReading

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


def ctr() -> Case:
    """Two campaigns at ~10 % CTR; c2 collapses to ~0 for six minutes, then recovers."""
    rng = random.Random(1)
    events: list[tuple[str, Any]] = []
    for k in range(30 * 240):
        ts = T0 + k * 250  # 4 impressions a second over 30 minutes
        campaign = "c1" if k % 2 else "c2"
        variant = "A" if k % 4 < 2 else "B"
        imp_id = f"i{k}"
        events.append(
            (
                "impressions",
                Impression(
                    impression_id=imp_id,
                    ts=ts,
                    campaign_id=campaign,
                    user_id=f"u{k % 97}",
                    variant=variant,
                ),
            )
        )
        broken = campaign == "c2" and T0 + 15 * MIN <= ts < T0 + 21 * MIN
        rate = 0.002 if broken else 0.1
        if rng.random() < rate:
            delay = rng.choice([200, 3_000, 20_000])
            events.append(
                (
                    "clicks",
                    Click(
                        click_id=f"k{k}",
                        impression_id=imp_id,
                        ts=ts + delay,
                        campaign_id=campaign,
                        user_id=f"u{k % 97}",
                    ),
                )
            )
            if rng.random() < 0.05:  # a duplicate click
                events.append(
                    (
                        "clicks",
                        Click(
                            click_id=f"k{k}b",
                            impression_id=imp_id,
                            ts=ts + delay + 50,
                            campaign_id=campaign,
                            user_id=f"u{k % 97}",
                        ),
                    )
                )
        if rng.random() < 0.003:  # an orphan click
            events.append(
                (
                    "clicks",
                    Click(
                        click_id=f"o{k}",
                        impression_id=f"gone{k}",
                        ts=ts,
                        campaign_id=campaign,
                        user_id="u0",
                    ),
                )
            )
    return Case(
        _sorted(events),
        options={"attribution_ms": 60_000, "baseline_min_impressions": 100},
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
    rng = random.Random(7)
    events = []
    for k in range(6000):
        ts = T0 + k * 300  # 30 minutes
        broken = T0 + 15 * MIN <= ts < T0 + 25 * MIN
        variant = "A" if rng.random() < (0.7 if broken else 0.5) else "B"
        events.append(
            (
                "impressions",
                Impression(
                    impression_id=f"i{k}",
                    ts=ts,
                    campaign_id="c1",
                    user_id=f"u{rng.randrange(500)}",
                    experiment="e1",
                    variant=variant,
                ),
            )
        )
    return Case(
        events,
        # per (experiment, variant): never dropped, also for an experiment that has ended
        keeps={"cusum": "each experiment's accumulated SRM evidence"},
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
}
