"""Experiments watched whole, through the real broker (Tansu) and chDB.

Keyless impressions and clicks (a producer that never sets keys, Kafka clients'
default) of one experiment spread over four campaigns and four partitions, with
a 60/40 split where 50/50 is planned. The worker runs with `keying =
"repartition"` for impressions and clicks: every event is re-keyed through the
internal topics, SRM reads the experiment-keyed copy.

Two workers share the group; one is killed with SIGKILL mid-run and restarted.
The end state must be an uninterrupted run's, counted by hand here:

- `srm_checks FINAL` holds one row per (experiment, window) with the counts of
  all four partitions together (one worker owned the experiment whole);
- `ctr_windows FINAL` holds every campaign's exact impressions and clicks
  (impressions and clicks re-keyed by campaign met in one partition);
- `experiment_windows FINAL` holds the guardrail rows (error rate, p95 and p99
  latency per arm, with the control's value and the always-valid p-value) of an
  uninterrupted in-process run, and the alert topic its critical guardrail
  alert for the treatment arm slowed down in the second window;
- nothing was dead-lettered, and replayed forwards were dropped as duplicates
  rather than counted twice.
"""

from __future__ import annotations

import time
from collections import Counter

import msgspec
import orjson
import pytest

from schemas.rows import Row
from streams.connectors.partitioning import partition_for
from streams.runtime import repartition
from streams.runtime.monitors import build_monitors
from streams.runtime.pipeline import Pipeline, RawMessage
from tests.harness import Deployment, Message, WorkerProcess, consume_all, produce
from tests.row_dicts import as_dicts

pytestmark = pytest.mark.integration

MIN = 60_000
WINDOW = 5 * MIN
T0 = 1_795_000_200_000 - 1_795_000_200_000 % WINDOW  # a window start
PARTITIONS = 4
CAMPAIGNS = [f"camp-{i}" for i in range(8)]


def traffic(d: Deployment) -> tuple[list[Message], Counter, Counter, Counter]:
    """Two SRM windows of keyless impressions (one click per 5 impressions), in
    time order, written round-robin to partitions as a keyless producer might."""
    msgs: list[Message] = []
    variants: Counter = Counter()
    imps: Counter = Counter()
    clicks: Counter = Counter()
    for n, ts in enumerate(range(T0, T0 + 2 * WINDOW, 500)):
        campaign = CAMPAIGNS[n % len(CAMPAIGNS)]
        variant = "control" if n % 10 < 6 else "treatment"
        imp = {
            "impression_id": f"i{n}",
            "ts": ts,
            "campaign_id": campaign,
            "user_id": f"u{n}",
            "experiment": "exp-1",
            "variant": variant,
        }
        msgs.append((d.topics["impressions"], None, orjson.dumps(imp), n % PARTITIONS))
        variants[(ts - ts % WINDOW, variant)] += 1
        imps[(ts - ts % MIN, campaign)] += 1
        if n % 5 == 0:
            clk = {"click_id": f"k{n}", **imp, "ts": ts + 200}
            del clk["experiment"], clk["variant"]
            msgs.append((d.topics["clicks"], None, orjson.dumps(clk), (n + 1) % PARTITIONS))
            clicks[(ts - ts % MIN, campaign)] += 1
        # inference logs of both arms (keyed by model, strict); the treatment's latency
        # 1.6x the control's in the second window: a guardrail breach
        for arm, factor in (("control", 1.0), ("treatment", 1.6 if ts >= T0 + WINDOW else 1.0)):
            log = {
                "request_id": f"r{n}{arm}",
                "ts": ts + 100,
                "model_id": "m1",
                "model_version": "1",
                "features": {},
                "prediction": 0.5,
                "latency_ms": round(factor * (80 + (n * 37 + len(arm)) % 40), 3),
                "status": "ok",
                "experiment": "exp-1",
                "variant": arm,
            }
            msgs.append((d.topics["inference_logs"], b"m1", orjson.dumps(log), n % PARTITIONS))
    return msgs, variants, imps, clicks


def tail(d: Deployment) -> list[Message]:
    """Far later events from every input partition into every re-keyed partition (a
    re-keyed stream has got as far as its slowest upstream partition): every
    window closes."""
    out: list[Message] = []
    ts = T0 + 2 * WINDOW + 30 * MIN
    names = [f"zz-{i}" for i in range(100)]
    for p in range(PARTITIONS):
        for q in range(PARTITIONS):
            # a campaign that re-keys into internal partition q
            zz = next(c for c in names if partition_for(c.encode(), PARTITIONS) == q)
            imp = {"impression_id": f"t{p}{q}", "ts": ts, "campaign_id": zz, "user_id": "u"}
            imp |= {"experiment": "exp-1", "variant": "control"}
            out.append((d.topics["impressions"], None, orjson.dumps(imp), p))
            clk = {"click_id": f"t{p}{q}", "impression_id": f"t{p}{q}", "ts": ts}
            clk |= {"campaign_id": zz, "user_id": "u"}
            out.append((d.topics["clicks"], None, orjson.dumps(clk), p))
        log = {
            "request_id": f"t{p}",
            "ts": ts,
            "model_id": "m1",
            "model_version": "1",
            "features": {},
            "prediction": 0.5,
            "latency_ms": 1.0,
            "status": "ok",
            "experiment": "exp-1",
            "variant": "control",
        }
        out.append((d.topics["inference_logs"], b"m1", orjson.dumps(log), p))
    return out


GUARDRAIL_SQL = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, experiment, variant, metric, value, n,"
    " control_value, p_value FROM streamwatch.experiment_windows FINAL"
    " WHERE metric IN ('error_rate', 'latency_p95', 'latency_p99')"
)


def reference(d: Deployment, sent: list[Message]) -> tuple[list[dict], dict[str, dict]]:
    """An uninterrupted run in-process (the re-keying looped back), fed every message
    with the partition and offset it has on the broker: guardrail rows and alerts."""
    offsets: Counter = Counter()
    raw = []
    for topic, key, value, partition in sent:
        raw.append(RawMessage(topic, partition, offsets[(topic, partition)], key, value))
        offsets[(topic, partition)] += 1
    rows: list[dict] = []
    alerts: dict[str, dict] = {}

    class Outputs:
        def rows(self, table: str, out: list[Row]) -> None:
            if table == "experiment_windows":
                rows.extend(as_dicts(out))

        def alerts(self, out: list) -> None:
            for a in out:
                alerts[a.alert_id] = orjson.loads(msgspec.json.encode(a))

        def rejected(self, *args: object) -> None:
            raise AssertionError("the reference run rejected a message")

        def late(self, *args: object) -> None:
            raise AssertionError("the reference run saw a late event")

    settings = d.settings()
    t = settings.topics
    logical = {t.impressions: "impressions", t.clicks: "clicks", t.inference_logs: "inference-logs"}
    pipeline = Pipeline(build_monitors(settings), Outputs(), logical, clock=lambda: 0.0)
    pipeline.assign(range(PARTITIONS), {})
    for i in range(0, len(raw), 500):
        pipeline.process(raw[i : i + 500])
    guardrails = [
        {**r, "ws": r["window_start"]}
        for r in rows
        if r["metric"] in ("error_rate", "latency_p95", "latency_p99")
    ]
    return guardrails, alerts


SRM_SQL = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, experiment, counts, total "
    "FROM streamwatch.srm_checks FINAL ORDER BY ws"
)
CTR_SQL = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant, impressions, "
    "clicks, final FROM streamwatch.ctr_windows FINAL WHERE campaign_id NOT LIKE 'zz%'"
)


def test_experiment_rekeyed_two_workers_and_a_kill(tmp_path, broker) -> None:
    keying = {"impressions": "repartition", "clicks": "repartition"}
    # A checkpoints every 10 s, so the kill below surely comes between forwarding and
    # A's next checkpoint (with the tests' usual 1 s, a loaded machine checkpointed the
    # forwards first and nothing was replayed)
    da = Deployment(
        tmp_path,
        broker.bootstrap,
        "exp-a",
        partitions=PARTITIONS,
        keying=keying,
        checkpoint_interval_s=10.0,
    )
    db = Deployment(
        tmp_path, broker.bootstrap, "exp-b", partitions=PARTITIONS, shared=da, keying=keying
    )
    msgs, variants, imps, clicks = traffic(da)
    third = len(msgs) // 3
    a = WorkerProcess(da).start()
    b = WorkerProcess(db)
    try:
        produce(broker.bootstrap, msgs[:third])
        a.wait_until(lambda: a.metric("streamwatch_checkpoints_total") >= 1, 60, "A to checkpoint")
        b.start()
        b.wait_until(lambda: "assigned [(" in b.log_path.read_text(), 60, "B to get partitions")
        # a few events, forwarded and checkpointed: the next checkpoint is 10 s away
        forwarded = a.metric("streamwatch_repartition_forwarded_total")
        checkpoints = a.metric("streamwatch_checkpoints_total")
        produce(broker.bootstrap, msgs[third : third + 20])
        a.wait_until(
            lambda: (
                a.metric("streamwatch_repartition_forwarded_total") > forwarded
                and a.metric("streamwatch_checkpoints_total") > checkpoints
            ),
            60,
            "A to forward and checkpoint the first events",
            interval=0.05,
        )
        forwarded = a.metric("streamwatch_repartition_forwarded_total")
        produce(broker.bootstrap, msgs[third + 20 : 2 * third])
        a.wait_until(
            lambda: a.metric("streamwatch_repartition_forwarded_total") > forwarded + 50,
            60,
            "A to forward the new events",
            interval=0.05,
        )
        a.kill()  # SIGKILL: its forwards since the last checkpoint are replayed
        a = WorkerProcess(da, log_name="worker-2").start()
        produce(broker.bootstrap, msgs[2 * third :] + tail(da))

        def done() -> bool:
            rows = [r for w in (a, b) for r in w.query(SRM_SQL)]
            windows = [r for w in (a, b) for r in w.query(CTR_SQL) if r["final"] == 1]
            guardrails = [r for w in (a, b) for r in w.query(GUARDRAIL_SQL)]
            return (
                len({r["ws"] for r in rows if r["ws"] < T0 + 2 * WINDOW}) >= 2
                and len({(r["ws"], r["campaign_id"]) for r in windows}) >= len(imps)
                and len({r["ws"] for r in guardrails if r["ws"] < T0 + 2 * WINDOW}) >= 2
            )

        a.wait_until(done, 120, "both SRM windows to close")

        def dropped() -> float:
            return sum(w.metric("streamwatch_repartition_duplicates_total") for w in (a, b))

        # the readers drop the replayed forwards: give them up to 3 s more (the stop
        # below writes every worker's last rows)
        deadline = time.monotonic() + 3
        while dropped() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        duplicates = dropped()
    finally:
        code_b = b.stop() if b.process is not None else 0
        code_a = a.stop()
    assert (code_a, code_b) == (0, 0)
    # the kill came between forwarding and checkpointing: forwards were replayed
    # and dropped by the readers
    assert duplicates > 0

    srm = {}
    ctr = {}
    for d in (da, db):
        for r in d.query(SRM_SQL):
            if r["ws"] >= T0 + 2 * WINDOW:
                continue
            counts = orjson.loads(r["counts"]) if isinstance(r["counts"], str) else r["counts"]
            # a window written by both workers (its partition moved) must agree
            assert srm.setdefault(r["ws"], counts) == counts
        for r in d.query(CTR_SQL):
            if r["final"] != 1:
                continue
            row = (r["impressions"], r["clicks"])
            assert ctr.setdefault((r["ws"], r["campaign_id"], r["variant"]), row) == row
    # one row per window with the whole experiment's counts
    assert srm == {
        ws: {v: variants[(ws, v)] for v in ("control", "treatment")} for ws in (T0, T0 + WINDOW)
    }
    pooled: dict[tuple[int, str], tuple[int, int]] = {}
    for (ws, campaign, _), (n_imps, n_clicks) in ctr.items():
        old = pooled.get((ws, campaign), (0, 0))
        pooled[(ws, campaign)] = (old[0] + n_imps, old[1] + n_clicks)
    assert pooled == {key: (imps[key], clicks.get(key, 0)) for key in imps}
    # guardrails: the rows and alerts of an uninterrupted single run
    expected_rows, expected_alerts = reference(da, msgs + tail(da))
    key = ("ws", "variant", "metric")
    want = {tuple(r[k] for k in key): r for r in expected_rows if r["ws"] < T0 + 2 * WINDOW}
    got: dict[tuple, dict] = {}
    for d in (da, db):
        for r in d.query(GUARDRAIL_SQL):
            if r["ws"] < T0 + 2 * WINDOW:
                got.setdefault(tuple(r[k] for k in key), r)
    assert set(got) == set(want) and len(want) == 2 * 2 * 3
    for k, r in want.items():
        assert got[k]["value"] == pytest.approx(r["value"]) and got[k]["n"] == r["n"]
        assert got[k]["p_value"] == (r["p_value"] and pytest.approx(r["p_value"]))
    breach = [
        a
        for a in expected_alerts.values()
        if a["rule"].startswith("experiment_guardrail") and a["status"] == "firing"
    ]
    assert breach and all(a["window_start"] == T0 + WINDOW for a in breach)
    on_topic = {
        c["alert_id"]: c
        for c in (
            orjson.loads(m.value()) for m in consume_all(broker.bootstrap, da.topics["alerts"])
        )
    }
    for a in breach:
        assert on_topic[a["alert_id"]] == a
    assert "stop or roll back arm treatment of exp-1" in breach[0]["message"]
    # nothing dead-lettered: keyless events were re-keyed, not rejected
    assert consume_all(broker.bootstrap, da.topics["dead_letter"], idle_s=1.0) == []
    internal = repartition.experiment_topic(da.config["kafka"]["group_id"], "impressions")
    # the re-keyed impressions (progress records, without key or value, aside)
    forwarded = [m for m in consume_all(broker.bootstrap, internal, idle_s=1.0) if m.value()]
    # every forwarded record is keyed by its experiment, in the experiment's partition
    owner = partition_for(b"exp-1", PARTITIONS)
    assert forwarded and {(m.key(), m.partition()) for m in forwarded} == {(b"exp-1", owner)}
