"""A fast variant of tests/benchmarks/detection_quiet.py: quiet data through the real
operators' window code and the real rule engine, before and after the evidence gates."""

from __future__ import annotations

from tests.benchmarks.detection_quiet import run_service, run_srm


def test_service_quiet_data_raises_no_false_alerts_and_a_burst_is_caught() -> None:
    res = run_service(entities=60, hours=3, incidents=10, seed=1)
    after = res["after"]
    # 50 quiet model versions x 3 h at up to 300 requests a minute
    assert after["error_rate"].false == 0 and after["low_confidence"].false == 0
    assert after["error_rate"].detected >= 1  # 6 % for 10 minutes in busy versions
    assert all(d <= 600 for d in after["error_rate"].delays_s)


def test_srm_quiet_data_raises_no_false_alerts_and_a_broken_arm_is_caught() -> None:
    res = run_srm(experiments=80, hours=4, incidents=10, seed=2)
    assert res["after"]["srm"].false == 0
    assert res["after"]["srm"].detected >= 1


def test_freshness_quiet_data_and_a_tail_event_raise_nothing_and_silences_are_caught() -> None:
    from tests.benchmarks.detection_quiet import run_freshness

    res = run_freshness(entities=80, hours=4, incidents=10, seed=3)
    after, before = res["after"], res["before"]
    # quiet campaigns at 0.1-20 impressions a minute, then a tail event 16 min ahead
    assert after["freshness_entity"].false == 0 and after["freshness_topic"].false == 0
    # without dead time (main's monitor, switched on) the tail silences nearly everyone
    assert before["freshness_entity"].false > 30
    # 30-minute silences of campaigns at 1-20 a minute: 10 minutes after the last event
    assert after["freshness_entity"].detected >= 8
    assert all(d <= 1800 for d in after["freshness_entity"].delays_s)
