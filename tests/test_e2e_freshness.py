"""Freshness end to end: a campaign goes silent, the real worker (Tansu + chDB)
raises a `freshness` alert, and resolves it when the campaign's data returns."""

from __future__ import annotations

import msgspec
import orjson

from schemas.events import Alert
from tests.harness import Deployment, WorkerProcess, consume_all, produce

T0 = 1_800_000_000_000  # a minute boundary
MIN = 60_000


def test_silent_campaign_raises_and_resolves_a_freshness_alert(tmp_path, broker) -> None:
    others_off: dict[str, dict[str, bool]] = {
        f"monitors.{m}": {"enabled": False}
        for m in ("ctr", "srm", "sensor", "cluster", "drift", "service")
    }
    # freshness is opt-in: its table turns it on
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "freshness-e2e",
        partitions=1,
        **others_off,
        **{"monitors.freshness": {"enabled": True}},
    )
    messages = []
    # c1 and c2: an impression every 10 s for an hour; c1 silent from minute 20 to 40
    for t in range(0, 60 * MIN, 10_000):
        for campaign in ("c1", "c2"):
            if campaign == "c1" and 20 * MIN <= t < 40 * MIN:
                continue
            event = {
                "impression_id": f"{campaign}-{t}",
                "ts": T0 + t,
                "campaign_id": campaign,
                "user_id": "u",
            }
            messages.append((d.topics["impressions"], campaign.encode(), orjson.dumps(event), 0))
    worker = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, messages)
        sql = (
            "SELECT status, entity, rule, toUnixTimestamp64Milli(ts) AS ts "
            "FROM streamwatch.alerts FINAL WHERE kind = 'freshness' ORDER BY ts"
        )

        def both() -> bool:
            return len(worker.query(sql)) >= 2

        worker.wait_until(both, 120, "a freshness alert to fire and resolve")
        stored = worker.query(sql)
    finally:
        assert worker.stop() == 0
    # allowed silence: max(20 x 10 s, 10 minutes); last event 19:50 -> fires at 30:00;
    # data back in [40, 41) -> resolved when that step closes, at 41:00
    assert stored == [
        {"status": "firing", "entity": "c1", "rule": "freshness_entity", "ts": T0 + 30 * MIN},
        {"status": "resolved", "entity": "c1", "rule": "freshness_entity", "ts": T0 + 41 * MIN},
    ]
    on_topic = [
        msgspec.json.decode(m.value(), type=Alert)
        for m in consume_all(broker.bootstrap, d.topics["alerts"])
    ]
    assert [(a.kind, a.status, a.entity) for a in on_topic] == [
        ("freshness", "firing", "c1"),
        ("freshness", "resolved", "c1"),
    ]
    assert "c1 has sent nothing on impressions" in on_topic[0].message
