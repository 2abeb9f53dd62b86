"""The detection benchmark's events path (impressions and clicks through the worker's
CTR task: join, windows, watermark, judge, rules) gives the counts path's alerts, alert
for alert (the CTR rules', and change detection's on the CTR, which the events path also
scores), on a small scenario with incidents; and it really judges the events (a
scenario whose clicks are removed raises alerts the full one does not)."""

from __future__ import annotations

import numpy as np

from tests.benchmarks.detection import T0, WINDOW_MS, generate, run, run_events


def test_events_path_matches_counts_path() -> None:
    scenario = generate(campaigns=40, hours=7, seed=3)
    counted = run(scenario, before=False, changes=True)
    fired, info = run_events(scenario, seed=3)
    assert counted, "the scenario must raise CTR alerts for the comparison to mean anything"
    assert {r for r, _, _ in counted} >= {"ctr_sustained_drop", "ctr_change_page_hinkley"}
    assert sorted(fired) == sorted(counted)
    assert info["impressions"] == int(scenario.imps.sum())
    assert info["clicks"] + info["clicks_after_end"] == int(scenario.clicks.sum())


def test_events_path_sees_a_collapse_the_counts_do_not_contain() -> None:
    scenario = generate(campaigns=40, hours=7, seed=3)
    alerted = {c for _, c, _ in run_events(scenario, seed=3)[0]}
    hit = {i.campaign for i in scenario.incidents}
    # the campaign with the most clicks, no incident and no alert loses every click
    # for an hour (windows 240-299)
    clicks = scenario.clicks.sum(axis=(1, 2))
    target = next(int(c) for c in np.argsort(-clicks) if int(c) not in alerted | hit)
    scenario.clicks[target, :, 240:300] = 0
    fired, _ = run_events(scenario, seed=3)
    windows = [(ts - T0) // WINDOW_MS for _, c, ts in fired if c == target]
    assert windows and 240 < min(windows) <= 250, windows
