"""Conversions and the funnel guardrails end to end, through the real broker (Tansu)
and chDB, with a kill -9 of the worker mid-run.

One experiment (`exp-1`, arms `control` and `treatment`) over four campaigns in
four partitions; every fifth impression is clicked in both arms, a third of the
control's clicks convert and a twentieth of the treatment's (a CVR drop), 20
minutes after the click, with an order value. Clicks and conversions carry the
experiment (what re-keys them for the funnel monitor). A few conversions are
orphans (no such click) and a few are duplicates.

The end state is counted by hand here: `ctr_windows FINAL` holds each minute's
conversions, cvr and revenue per campaign and arm; the alert topic holds the
critical `experiment_guardrail_cvr` alert for exp-1/treatment (stop or roll back),
with both CVRs and the always-valid p-value, and no CTR guardrail alert.
"""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from tests.harness import Deployment, Message, WorkerProcess, consume_all, produce

pytestmark = pytest.mark.integration

MIN = 60_000
WINDOW = 5 * MIN
T0 = 1_795_000_200_000 - 1_795_000_200_000 % WINDOW
PARTITIONS = 4
CAMPAIGNS = [f"camp-{i}" for i in range(4)]
RUN = 4 * WINDOW
CVR = {"control": 3, "treatment": 20}  # one conversion per this many clicks


def traffic(d: Deployment) -> tuple[list[Message], dict[tuple, list[float]]]:
    """The messages in time order, and per (minute, campaign, arm) the expected
    [impressions, clicks, conversions, revenue, orphan conversions, duplicates]."""
    timed: list[tuple[int, Message]] = []
    want: dict[tuple, list[float]] = {}
    clicks_per_arm: Counter = Counter()
    for n, ts in enumerate(range(T0, T0 + RUN, 200)):
        p = n % PARTITIONS
        campaign = CAMPAIGNS[p]
        arm = "control" if (n // PARTITIONS) % 2 == 0 else "treatment"
        key = campaign.encode()
        imp = {
            "impression_id": f"i{n}",
            "ts": ts,
            "campaign_id": campaign,
            "user_id": f"u{n}",
            "experiment": "exp-1",
            "variant": arm,
        }
        timed.append((ts, (d.topics["impressions"], key, orjson.dumps(imp), p)))
        row = want.setdefault((ts - ts % MIN, campaign, arm), [0, 0, 0, 0.0, 0, 0])
        row[0] += 1
        if n % 5 != 0:
            continue
        click_ts = ts + 3_000
        clk = {
            "click_id": f"k{n}",
            "impression_id": f"i{n}",
            "ts": click_ts,
            "campaign_id": campaign,
            "user_id": f"u{n}",
            "experiment": "exp-1",
        }
        timed.append((click_ts, (d.topics["clicks"], key, orjson.dumps(clk), p)))
        row[1] += 1
        clicks_per_arm[arm] += 1
        if clicks_per_arm[arm] % CVR[arm]:
            continue
        conv_ts = click_ts + 20 * MIN
        value = float(10 + n % 50)
        conv = {
            "conversion_id": f"v{n}",
            "click_id": f"k{n}",
            "ts": conv_ts,
            "campaign_id": campaign,
            "user_id": f"u{n}",
            "value": value,
            "experiment": "exp-1",
        }
        timed.append((conv_ts, (d.topics["conversions"], key, orjson.dumps(conv), p)))
        row[2] += 1
        row[3] += value
        if n % 7 == 0:  # delivered twice: counted once, the copy a duplicate
            timed.append((conv_ts + 1, (d.topics["conversions"], key, orjson.dumps(conv), p)))
            row[5] += 1
        if n % 11 == 0:  # a conversion of a click never seen: an orphan, own minute
            orphan = {**conv, "conversion_id": f"o{n}", "click_id": f"nope{n}"}
            timed.append((conv_ts, (d.topics["conversions"], key, orjson.dumps(orphan), p)))
            o = want.setdefault((conv_ts - conv_ts % MIN, campaign, ""), [0, 0, 0, 0.0, 0, 0])
            o[4] += 1
    timed.sort(key=lambda t: t[0])
    return [m for _, m in timed], want


def tail(d: Deployment) -> list[Message]:
    """Far later events on every partition of every input: every window closes, with
    its conversions final (end + 600 s + 3,600 s) in the CTR and funnel monitors."""
    ts = T0 + RUN + 3 * 3_600_000
    out: list[Message] = []
    for p in range(PARTITIONS):
        c = f"zz-{p}"
        imp = {"impression_id": f"t{p}", "ts": ts, "campaign_id": c, "user_id": "u"}
        clk = {"click_id": f"t{p}", **imp}
        conv = {"conversion_id": f"t{p}", "click_id": f"t{p}", **imp}
        for topic, event in (("impressions", imp), ("clicks", clk), ("conversions", conv)):
            out.append((d.topics[topic], c.encode(), orjson.dumps(event), p))
    return out


CTR_SQL = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant, impressions, "
    "clicks, conversions, cvr, revenue, orphan_conversions, duplicate_conversions, final "
    "FROM streamwatch.ctr_windows FINAL WHERE campaign_id NOT LIKE 'zz%'"
)
FUNNEL_SQL = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, variant, metric, value, n, "
    "control_value, p_value FROM streamwatch.experiment_windows FINAL "
    "WHERE metric IN ('ctr', 'cvr', 'revenue_per_impression')"
)


def test_cvr_drop_in_one_arm_end_to_end_with_a_kill(tmp_path, broker) -> None:
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "conv",
        partitions=PARTITIONS,
        **{"monitors.ctr.options": {"conversions": True}, "monitors.funnel.enabled": True},
    )
    msgs, want = traffic(d)
    half = len(msgs) // 2
    w = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, msgs[:half])
        w.wait_until(lambda: w.metric("streamwatch_checkpoints_total") >= 2, 60, "a checkpoint")
        w.kill()  # SIGKILL: state since the last checkpoint is rebuilt from replay
        w = WorkerProcess(d, log_name="worker-2").start()
        produce(broker.bootstrap, msgs[half:] + tail(d))

        def done() -> bool:
            rows = w.query(CTR_SQL)
            funnel = w.query(FUNNEL_SQL)
            settled = sum(r["conversions"] for r in rows) == sum(v[2] for v in want.values())
            judged = len({r["ws"] for r in funnel}) >= RUN // WINDOW
            return settled and judged

        w.wait_until(done, 180, "conversions final and the funnel judged")
        time.sleep(2)
        rows = w.query(CTR_SQL)
        funnel = w.query(FUNNEL_SQL)
    finally:
        code = w.stop()
    assert code == 0
    got = {
        (r["ws"], r["campaign_id"], r["variant"]): [
            r["impressions"],
            r["clicks"],
            r["conversions"],
            r["revenue"],
            r["orphan_conversions"],
            r["duplicate_conversions"],
        ]
        for r in rows
        if r["impressions"] or r["orphan_conversions"]
    }
    assert got == want  # revenues are sums of whole numbers: exact
    for r in rows:
        if r["clicks"]:
            assert r["cvr"] == pytest.approx(r["conversions"] / r["clicks"])
            assert r["final"] == 1
    # the funnel: one row per window, arm and metric; the treatment's CVR far below
    assert len(funnel) == (RUN // WINDOW) * 2 * 3
    cvr = {(r["ws"], r["variant"]): r for r in funnel if r["metric"] == "cvr"}
    assert all(
        cvr[(ws, "treatment")]["value"] < 0.1 < cvr[(ws, "control")]["value"] for ws, _ in cvr
    )
    assert min(r["p_value"] for r in cvr.values() if r["variant"] == "treatment") < 0.001
    alerts = [orjson.loads(m.value()) for m in consume_all(broker.bootstrap, d.topics["alerts"])]
    breach = [
        a for a in alerts if a["rule"] == "experiment_guardrail_cvr" and a["status"] == "firing"
    ]
    assert breach, [(a["rule"], a["entity"]) for a in alerts]
    a = breach[0]
    assert (a["kind"], a["severity"], a["entity"]) == ("experiment", "critical", "exp-1/treatment")
    assert a["message"].startswith("stop or roll back arm treatment of exp-1: CVR ")
    assert a["details"]["always_valid_p"] < 0.001
    assert a["details"]["treatment_value"] < a["details"]["control_value"]
    assert len({b["alert_id"] for b in breach}) == len(breach)
    assert not [a for a in alerts if a["rule"] == "experiment_guardrail_ctr"]
    assert consume_all(broker.bootstrap, d.topics["dead_letter"], idle_s=1.0) == []
