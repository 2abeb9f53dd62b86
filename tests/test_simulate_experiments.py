"""The simulator's experiment incidents (issue 16), and the alerts each raises when its
traffic runs through the worker's pipeline (in-process, the re-keying looped back):
an experiment spanning campaigns in four partitions, an arm with a latency regression,
a ramp jump, crossover users and an SRM carried by one ad only."""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import orjson
import pytest

from streams.cli.simulate import Incident, Scenario, Simulator
from streams.config import load_settings
from tests.simulated_pipeline import Collected, run_simulated

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window boundary
PARTITIONS = 4

INCIDENTS = [
    Incident("srm_dimension", "exp-shared/ad-3", 300, 600, 0.9),
    Incident("crossover", "exp-shared", 300, 300, 0.05),
    Incident("arm_latency", "exp-model/treatment", 600, 600, 1.6),
    Incident("ramp", "exp-shared", 1200, 600, 0.85),
]


def scenario(incidents: list[Incident]) -> Scenario:
    return Scenario(
        start_ms=START_MS,
        duration_s=2100,
        campaigns=10,
        experiment_campaigns=2,
        shared_experiment_campaigns=4,
        experiment_models=1,
        labels=False,  # no quality monitor here: the labels topic has no reader
        sensors=0,
        incidents=incidents,
    )


def test_quiet_traffic_is_unchanged_by_the_experiment_incidents() -> None:
    quiet = list(Simulator(scenario([])).messages())
    loud = list(Simulator(scenario(INCIDENTS)).messages())
    # outside the incidents' windows (the first 300 s) the bytes are the same
    cut = START_MS + 300_000
    assert [m for m in quiet if m[0] != "__tick__" and orjson.loads(m[2])["ts"] < cut] == [
        m for m in loud if m[0] != "__tick__" and orjson.loads(m[2])["ts"] < cut
    ]
    shared = {
        orjson.loads(v)["campaign_id"]
        for t, _, v in quiet
        if t == "impressions" and orjson.loads(v).get("experiment") == "exp-shared"
    }
    assert shared == {"cmp-002", "cmp-003", "cmp-004", "cmp-005"}
    # the shared experiment's campaigns land in several partitions
    assert len({zlib.crc32(c.encode()) % PARTITIONS for c in shared}) > 1
    arms = Counter(
        orjson.loads(v)["variant"]
        for t, _, v in quiet
        if t == "inference-logs" and orjson.loads(v).get("experiment") == "exp-model"
    )
    assert (
        set(arms) == {"control", "treatment"} and abs(arms["control"] / arms.total() - 0.5) < 0.02
    )


def test_incident_validation() -> None:
    with pytest.raises(ValueError, match="shared-experiment-campaigns"):
        Simulator(
            Scenario(start_ms=START_MS, incidents=[Incident("ramp", "exp-shared", 0, 60, 0.8)])
        )
    with pytest.raises(ValueError, match="exp-model/ARM"):
        Simulator(scenario([Incident("arm_latency", "exp-model/other", 0, 60, 2.0)]))


def run_pipeline(sc: Scenario) -> list[Any]:
    """The simulator's messages through the worker's pipeline, keyed and partitioned
    as a producer keying by the contract would (CRC-32 of the key)."""
    settings = load_settings(
        env={},
        overrides={
            "idle_timeout_s": 5,
            **{f"monitors.{m}.enabled": False for m in ("sensor", "cluster", "drift")},
        },
    )
    out = Collected(late_ok=True)
    topics = ("impressions", "clicks", "inference-logs")
    run_simulated(sc, settings, topics, out, PARTITIONS, idle_after_s=3600)
    return out.alert_list


def test_each_experiment_incident_raises_its_alert() -> None:
    alerts = [a for a in run_pipeline(scenario(INCIDENTS)) if a.status == "firing"]
    by_rule: dict[str, list[Any]] = {}
    for a in alerts:
        by_rule.setdefault(a.rule, []).append(a)
    # SRM of exp-shared, carried by ad-3, while the srm_dimension incident runs
    srm = [a for a in by_rule.get("srm", []) if a.entity == "exp-shared"]
    assert srm and srm[0].window_start >= START_MS + 300_000
    assert srm[0].details["mismatch_in"] == "ad_id=ad-3"
    # users in both arms during the crossover incident
    [cross] = [a for a in by_rule["experiment_crossover"] if a.entity == "exp-shared"][:1]
    assert START_MS + 300_000 <= cross.window_start < START_MS + 600_000
    # the treatment arm's latency regression: stop or roll back
    latency = [
        a for r, v in by_rule.items() if r.startswith("experiment_guardrail_latency") for a in v
    ]
    assert latency and all(a.entity == "exp-model/treatment" for a in latency)
    assert min(a.window_start for a in latency) >= START_MS + 600_000
    assert all(a.severity == "critical" for a in latency)
    # the ramp jump from 50/50 to 85/15
    [ramp] = [a for a in by_rule["experiment_ramp"] if a.entity == "exp-shared"][:1]
    assert ramp.window_start >= START_MS + 1_200_000 and ramp.value >= 0.2


def test_quiet_experiments_raise_no_experiment_alert() -> None:
    alerts = [a for a in run_pipeline(scenario([])) if a.status == "firing"]
    noisy = [(a.rule, a.entity) for a in alerts if a.kind in ("experiment", "srm")]
    assert noisy == []
