"""The simulator's `cvr_drop` incident raises its alert through the worker's pipeline
(in-process, the re-keying looped back): the funnel monitor reads the experiment's
impressions, clicks and conversions re-keyed by experiment and calls for stopping the arm
whose CVR dropped, and only that arm."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from streams.cli.simulate import Incident, Scenario, Simulator, check_incidents
from streams.config import load_settings
from tests.simulated_pipeline import Collected, run_simulated

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window boundary
PARTITIONS = 4
DROP = Incident("cvr_drop", "exp-cmp-000/B", 300, 1200, 0.2)


def scenario() -> Scenario:
    return Scenario(
        start_ms=START_MS,
        duration_s=2400,
        campaigns=2,
        experiment_campaigns=2,  # exp-cmp-000 and exp-cmp-001, arms A and B
        impressions_per_s=60.0,
        models=0,
        sensors=0,
        labels=False,
        regressor_per_s=0,
        cvr=0.3,
        # short delays, so the conversion windows close within the run
        conversion_delay_median_s=60,
        conversion_delay_sigma=0.5,
        conversion_delay_min_s=10,
        conversion_delay_max_s=300,
        incidents=[DROP],
    )


def run_pipeline(sc: Scenario) -> tuple[list[Any], list[dict[str, Any]]]:
    settings = load_settings(
        env={},
        overrides={
            "idle_timeout_s": 5,
            "monitors.funnel.enabled": True,
            "monitors.funnel.options": {"conversion_ms": 600_000},
            "monitors.ctr.options": {"conversions": True, "conversion_ms": 600_000},
            **{f"monitors.{m}.enabled": False for m in ("sensor", "cluster", "drift")},
        },
    )
    out = Collected(tables=["ctr_windows"])
    run_simulated(sc, settings, ("impressions", "clicks", "conversions"), out, PARTITIONS)
    return out.alert_list, out.tables["ctr_windows"]


def test_cvr_drop_stops_that_arm_only() -> None:
    alerts, ctr_rows = run_pipeline(scenario())
    firing = [a for a in alerts if a.status == "firing" and a.kind == "experiment"]
    cvr = [a for a in firing if a.rule == "experiment_guardrail_cvr"]
    assert cvr, [(a.rule, a.entity) for a in firing]
    assert {a.entity for a in cvr} == {"exp-cmp-000/B"}
    first = min(cvr, key=lambda a: a.window_start)
    assert START_MS + 300_000 <= first.window_start < START_MS + 1_500_000
    assert (
        first.severity == "critical" and "stop or roll back arm B of exp-cmp-000" in first.message
    )
    assert first.details["treatment_value"] < 0.5 * first.details["control_value"]
    # nothing on the CTR (unchanged) nor on the other experiment
    assert not [a for a in firing if a.rule == "experiment_guardrail_ctr"]
    assert not [a for a in firing if a.entity.startswith("exp-cmp-001")]
    # the CTR monitor's windows carry the conversions too
    assert sum(r["conversions"] for r in ctr_rows if r["final"]) > 100


def test_arm_ctr_drop_lowers_the_clicks_of_that_arm_only() -> None:
    """`arm_ctr_drop` (the demo's CTR guardrail incident): the impressions of arm B of
    exp-cmp-000 inside the incident get about `factor` of their clicks; every other
    impression's clicks, and every impression, are the same bytes as without it (the
    click draw is taken whether or not it is dropped)."""
    inc = Incident("arm_ctr_drop", "exp-cmp-000/B", 300, 600, 0.2)
    quiet = dataclasses.replace(scenario(), incidents=[], duration_s=1200, cvr=0.0)

    def run(sc: Scenario) -> tuple[list[bytes], dict[str, bytes], dict[str, Any]]:
        imps: list[bytes] = []
        clicks: dict[str, bytes] = {}
        by_id: dict[str, Any] = {}
        for topic, _, value in Simulator(sc).messages():
            if topic == "impressions":
                imps.append(value)
                e = orjson.loads(value)
                by_id[e["impression_id"]] = e
            elif topic == "clicks":
                clicks[orjson.loads(value)["click_id"]] = value
        return imps, clicks, by_id

    imps0, clicks0, by_id = run(quiet)
    imps1, clicks1, _ = run(dataclasses.replace(quiet, incidents=[inc]))
    assert imps0 == imps1

    def hit(click: bytes) -> bool:
        imp = by_id.get(orjson.loads(click)["impression_id"])
        t = (imp["ts"] - START_MS) / 1000 if imp else -1
        arm = imp and (imp.get("experiment"), imp.get("variant"))
        return arm == ("exp-cmp-000", "B") and 300 <= t < 900

    kept = {k: v for k, v in clicks0.items() if not hit(v)}
    assert {k: v for k, v in clicks1.items() if not hit(v)} == kept
    before = sum(hit(v) for v in clicks0.values())
    after = sum(hit(v) for v in clicks1.values())
    assert before > 100 and after / before == pytest.approx(0.2, abs=0.08)
    with pytest.raises(ValueError, match="an experiment's arm"):
        check_incidents(
            dataclasses.replace(quiet, incidents=[Incident("arm_ctr_drop", "cmp-000", 0, 60, 0.5)])
        )
