"""End to end over the real broker (Tansu) and real ClickHouse (chDB).

A few thousand impressions and clicks with a known ground truth, including
late clicks within the attribution window, clicks past it, duplicate and
orphan clicks, out-of-order delivery, A/B variants and one engineered CTR
drop, plus malformed messages of every kind. The worker runs as its own
process; the test asserts the exact `ctr_windows` rows, the exact alerts on
the alert topic and in ClickHouse, and every rejected message on dead-letter.
"""

from __future__ import annotations

import base64
import random
import time

import msgspec
import orjson
import pytest

from operators.rules import alert_id
from schemas.decode import Decoder
from schemas.events import Alert, DeadLetter
from tests.harness import (
    Deployment,
    Message,
    WorkerProcess,
    consume_all,
    ctr_rows,
    ctr_tail,
    produce,
)
from tests.reference import ctr_reference

pytestmark = pytest.mark.integration

MIN = 60_000
LATENESS = 10_000  # the CTR monitor's default allowed lateness


def build_traffic(t0: int, seed: int = 3) -> tuple[list[tuple[str, dict]], int]:
    """Valid events as (topic, json dict); returns them and the number of windows."""
    rng = random.Random(seed)
    events: list[tuple[str, dict]] = []
    n = 0

    def impression(ts: int, campaign: str, variant: str | None = None) -> str:
        nonlocal n
        n += 1
        imp = {"impression_id": f"i{n}", "ts": ts, "campaign_id": campaign, "user_id": f"u{n % 97}"}
        if variant:
            imp |= {"experiment": "exp-1", "variant": variant}
        events.append(("impressions", imp))
        return imp["impression_id"]

    def click(imp_id: str, ts: int, campaign: str, k: int = 0) -> None:
        events.append(
            (
                "clicks",
                {
                    "click_id": f"c-{imp_id}-{k}",
                    "impression_id": imp_id,
                    "ts": ts,
                    "campaign_id": campaign,
                    "user_id": "u",
                },
            )
        )

    windows = 12
    for w in range(windows):
        base = t0 + w * MIN
        # "big": 300 impressions a window at exactly 10 % CTR, 1 % in window 8
        clicks_wanted = 3 if w == 8 else 30
        for j in range(300):
            ts = base + j * 199
            imp = impression(ts, "big")
            if j < clicks_wanted:
                click(imp, ts + rng.choice([50, 5_000, 120_000, 590_000]), "big")
        # small campaigns: every awkward case, too few impressions for any rule
        for campaign in ("s1", "s2", "s3"):
            for _ in range(rng.randrange(20, 60)):
                ts = base + rng.randrange(MIN)
                imp = impression(ts, campaign)
                r = rng.random()
                if r < 0.15:
                    click(imp, ts + rng.randrange(1_000, 540_000), campaign)  # late but counted
                elif r < 0.20:
                    click(imp, ts + 600_000 + rng.randrange(1, 90_000), campaign)  # too late
                elif r < 0.25:
                    click(imp, ts + 2_000, campaign)
                    click(imp, ts + 9_000, campaign, 1)  # duplicate click
                elif r < 0.28:
                    click(f"never-{imp}", ts + 1_000, campaign)  # orphan
        for _ in range(40):
            ts = base + rng.randrange(MIN)
            imp = impression(ts, "ab", rng.choice("AB"))
            if rng.random() < 0.2:
                click(imp, ts + 3_000, "ab")
    return events, windows


def shuffle_within(
    events: list[tuple[str, dict]], lateness_ms: int, rng: random.Random
) -> list[tuple[str, dict]]:
    """Out-of-order delivery: each event overtaken only by events < lateness newer."""
    return sorted(events, key=lambda e: e[1]["ts"] + rng.uniform(0, lateness_ms - 1))


MALFORMED: list[tuple[str, bytes | None, bytes | None, str]] = [
    ("impressions", b"big", b"{not json", "invalid_json"),
    ("impressions", b"big", b'{"ts": 1, "campaign_id": "big"}', "missing_field"),
    (
        "clicks",
        b"big",
        b'{"click_id": 5, "impression_id": "x", "ts": 1795000000000, '
        b'"campaign_id": "big", "user_id": "u"}',
        "wrong_type",
    ),
    (
        "impressions",
        b"big",
        b'{"impression_id": "z1", "ts": 1000, "campaign_id": "big", "user_id": "u"}',
        "bad_timestamp",
    ),
    (
        "impressions",
        b"big",
        b'{"impression_id": "z2", "ts": "2100-01-01T00:00:00Z", '
        b'"campaign_id": "big", "user_id": "u"}',
        "bad_timestamp",
    ),
    (
        "impressions",
        b"big",
        b'{"impression_id": "z3", "ts": 1795000000000, "campaign_id": '
        b'"big", "user_id": "u", "x": NaN}',
        "invalid_json",
    ),
    (
        "impressions",
        b"big",
        b'{"impression_id": "z4", "ts": 1795000000000, "campaign_id": '
        b'"big", "user_id": "u", "pad": "' + b"x" * 300_000 + b'"}',
        "too_large",
    ),
    (
        "impressions",
        b"big",
        b'{"v": 2, "impression_id": "z5", "ts": 1795000000000, '
        b'"campaign_id": "big", "user_id": "u"}',
        "unsupported_version",
    ),
    (
        "impressions",
        None,
        b'{"impression_id": "z6", "ts": 1795000000000, "campaign_id": "big", "user_id": "u"}',
        "empty_key",
    ),
    (
        "clicks",
        b"s1",
        b'{"click_id": "k", "impression_id": "x", "ts": 1795000000000, '
        b'"campaign_id": "big", "user_id": "u"}',
        "key_mismatch",
    ),
    ("impressions", b"big", b"[1, 2, 3]", "wrong_type"),
]


class CtrTraffic:
    """`build_traffic` on a deployment's topics, starting an hour ago: the body (the
    valid events shuffled within the lateness, and with `malformed` the MALFORMED
    messages interleaved), the tail (`ctr_tail`, far enough ahead to finalise every
    window) and the reference rows (`ctr_reference` of the valid events)."""

    def __init__(
        self,
        d: Deployment,
        seed: int = 3,
        shuffle_seed: int = 9,
        malformed: bool = True,
        partitions: int = 4,
    ) -> None:
        now = int(time.time() * 1000)
        self.t0 = now - now % MIN - 60 * MIN
        events, _ = build_traffic(self.t0, seed)
        ordered = shuffle_within(events, LATENESS, random.Random(shuffle_seed))
        topic = d.topics
        body: list[Message] = [
            (topic[t], e["campaign_id"].encode(), orjson.dumps(e), None) for t, e in ordered
        ]
        if malformed:
            for i, (t, key, value, _) in enumerate(MALFORMED):
                body.insert(200 + i * 300, (topic[t], key, value, None))
        self.body = body
        last = max(e["ts"] for _, e in events)
        self.tail = ctr_tail(topic, last - last % MIN + MIN + 600_000 + 2 * LATENESS, partitions)
        decoded = [
            (t, Decoder(t).decode(orjson.dumps(e), e["campaign_id"].encode())) for t, e in events
        ]
        self.expected = ctr_reference(decoded)
        self.drop_ws = self.t0 + 8 * MIN  # the engineered CTR drop of "big"

    @property
    def messages(self) -> list[Message]:
        return self.body + self.tail


def test_ctr_end_to_end_exact(tmp_path, broker) -> None:
    d = Deployment(tmp_path, broker.bootstrap, "ctr-e2e")
    traffic = CtrTraffic(d)
    t0, topic, expected = traffic.t0, d.topics, traffic.expected

    worker = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, traffic.messages)
        db = "streamwatch"

        def all_final() -> bool:
            rows = worker.query(
                f"SELECT count() AS n FROM {db}.ctr_windows FINAL "
                f"WHERE final = 1 AND campaign_id NOT LIKE 'zz-%'"
            )
            return rows[0]["n"] >= len(expected)

        worker.wait_until(all_final, 120, "every window to be final")
        worker.wait_until(
            lambda: (
                worker.query(f"SELECT count() AS n FROM {db}.dead_letters")[0]["n"]
                >= len(MALFORMED)
            ),
            30,
            "dead letters in ClickHouse",
        )
        # events far behind the watermark now: late, kept aside, not counted
        late = [
            {
                "impression_id": f"late{i}",
                "ts": t0 + 30_000 + i,
                "campaign_id": "big",
                "user_id": "u",
            }
            for i in range(5)
        ]
        produce(
            broker.bootstrap, [(topic["impressions"], b"big", orjson.dumps(e), None) for e in late]
        )
        worker.wait_until(
            lambda: worker.query(f"SELECT count() AS n FROM {db}.late_events")[0]["n"] >= 5,
            30,
            "late events in ClickHouse",
        )
    finally:
        assert worker.stop() == 0

    rows = d.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant, impressions,"
        " clicks, orphan_clicks, duplicate_clicks, final, ctr FROM streamwatch.ctr_windows "
        "FINAL WHERE campaign_id NOT LIKE 'zz-%' ORDER BY ws, campaign_id, variant"
    )
    got = ctr_rows(rows)
    assert got == expected
    assert all(r["final"] == 1 for r in rows)
    assert all(
        abs(r["ctr"] - (r["clicks"] / r["impressions"] if r["impressions"] else 0)) < 1e-12
        for r in rows
    )
    # the awkward cases were really exercised
    assert sum(r[5] for r in got) > 20 and sum(r[6] for r in got) > 10

    # exactly four alerts: the drop in window 8, judged on its own (ctr_drop, critical)
    # and by the accumulated evidence (ctr_sustained_drop: one window of 3/300 against
    # 10 % already passes the CUSUM's threshold), both resolved after the 3 clear windows
    # 9-11 (hysteresis, issue 13; before it the drop resolved in window 9, the first)
    drop_ws = traffic.drop_ws
    on_topic = [
        msgspec.json.decode(m.value(), type=Alert)
        for m in consume_all(broker.bootstrap, topic["alerts"])
    ]
    assert [(a.rule, a.entity, a.status, a.severity, a.window_start) for a in on_topic] == [
        ("ctr_drop", "big", "firing", "critical", drop_ws),
        ("ctr_sustained_drop", "big", "firing", "warning", drop_ws),
        ("ctr_drop", "big", "resolved", "critical", drop_ws + 3 * MIN),
        ("ctr_sustained_drop", "big", "resolved", "warning", drop_ws + 3 * MIN),
    ]
    firing = on_topic[0]
    assert firing.alert_id == alert_id("ctr_drop", "big", drop_ws, drop_ws + MIN, "firing", 0)
    assert abs(firing.value - 0.9) < 1e-12 and firing.threshold == 0.5
    assert firing.details["baseline_ctr"] == 0.1 and firing.details["p_value"] < 1e-6
    assert firing.kind == "ctr" and "dropped 90%" in firing.message
    stored = d.query("SELECT alert_id, status FROM streamwatch.alerts FINAL ORDER BY ts")
    assert sorted((r["alert_id"], r["status"]) for r in stored) == sorted(
        (a.alert_id, a.status) for a in on_topic
    )

    # `streamwatch alerts`: JSON lines for piping, filters, and the human view
    cli = d.cli("alerts", "--from-beginning", "--json", "--max", "4", "--timeout", "30")
    assert cli.returncode == 0, cli.stderr
    assert [orjson.loads(line)["alert_id"] for line in cli.stdout.splitlines()] == [
        a.alert_id for a in on_topic
    ]
    cli = d.cli("alerts", "--from-beginning", "--kind", "srm", "--timeout", "5")
    assert cli.returncode == 0 and cli.stdout == ""
    cli = d.cli("alerts", "--from-beginning", "--entity", "big", "--max", "1", "--timeout", "30")
    assert (
        cli.stdout.startswith("FIRING") and "critical" in cli.stdout and "dropped 90%" in cli.stdout
    )

    # every malformed message on dead-letter with its reason; the original bytes kept
    letters = [
        msgspec.json.decode(m.value(), type=DeadLetter)
        for m in consume_all(broker.bootstrap, topic["dead_letter"])
    ]
    assert sorted(dl.reason for dl in letters) == sorted(r for *_, r in MALFORMED)
    by_reason = {dl.reason: dl for dl in letters}
    assert base64.b64decode(by_reason["invalid_json"].raw) in {b"{not json", MALFORMED[5][2]}
    assert "impression_id" in by_reason["missing_field"].error
    late_rows = d.query(
        "SELECT monitor, toUnixTimestamp64Milli(window_start) AS ws, count() AS n "
        "FROM streamwatch.late_events FINAL GROUP BY monitor, ws"
    )
    # late for the CTR monitor, in its window; SRM reads only impressions that carry
    # an experiment (re-keyed by it, issue 16), which these do not
    assert sorted(late_rows, key=lambda r: r["monitor"]) == [
        {"monitor": "ctr", "ws": t0, "n": 5},
    ]
    copied = consume_all(broker.bootstrap, topic["late_events"])
    assert sorted(orjson.loads(m.value())["impression_id"] for m in copied) == sorted(
        [f"late{i}" for i in range(5)]
    )
    assert sorted(dict(m.headers())["monitor"] for m in copied) == [b"ctr"] * 5
    counted = d.query(
        "SELECT reason, count() AS n FROM streamwatch.dead_letters FINAL "
        "GROUP BY reason ORDER BY reason"
    )
    assert sum(r["n"] for r in counted) == len(MALFORMED)
