"""Quix Streams: the CTR computation as an idiomatic Quix Streams application.

Runs in its own environment, not the project's: quixstreams 3.28.1 requires
confluent-kafka<2.13 and the project needs >=2.16, so it lives in `.venv-quix`,
built from `tests/benchmarks/requirements-quix.txt`, and is started as

    PYTHONPATH=<repo> .venv-quix/bin/python -m tests.benchmarks.contenders.quix_ctr SPEC.json

(`tests.benchmarks.contenders.common` and `tests.benchmarks.dataset` import only
the standard library and orjson, which that environment has.)

The pipeline:

    impressions ─┐  (timestamp extractor: the event's `ts`)
                 ├─ concat ─ apply(join, stateful=True, expand=True) ─ set_timestamp
    clicks ──────┘        ─ tumbling_window(60 s, grace 610 s).reduce(...)
                          .final(closing_strategy="partition") ─ rows ─ to_topic

- Both topics are keyed by campaign_id and co-partitioned, so `concat` merges
  them without repartitioning; Quix then aligns the two topics of each
  partition number by message timestamp (its buffered consumer), which on
  this data (produced in event-time order) approximates event-time order.
  (Its idleness test uses the broker's high watermark, which Tansu reports too
  low: a partition can look idle early, and the order is then looser.)
- The click join is a stateful `apply` over the merged stream. Its State (per
  message key, i.e. per campaign; RocksDB with a changelog topic, Quix's
  defaults) maps impression_id -> [ts, variant, clicked, pending clicks].
  `join_asof` and `join_interval` do not fit: they match on the message key
  only, so joining on impression_id would mean repartitioning both topics by
  impression_id (`group_by`) and the result back by campaign, three extra
  trips through the broker, and neither counts a click at most once per
  impression.
- The join emits contributions (event time, variant, counter, +1/-1) whose
  timestamp is set to the impression's ts (`set_timestamp`), so a click lands
  in its impression's window. One window per campaign (the message key)
  reduces them into per-variant counters: rekeying by (campaign, variant)
  would need `group_by`, a repartition through the broker; the variant is a
  sub-key of the campaign, so the window holds {variant: counts} and emits
  one row per variant when it closes.
- `.final()`: a window is emitted once, when closed. `.current()` would emit a
  row per update (one per impression) and cannot tell when a window's clicks
  are complete.

Differences from streamwatch's semantics (operators/ctr.py, operators/watermark.py):

- Event time and window closing. streamwatch's watermark is the minimum over
  all its input partitions (both topics) of the largest event time seen, less
  10 s of lateness, and a window is final when the watermark passes
  end + 600 s. Here a window closes when the largest timestamp seen in its
  partition number (impressions and clicks together, not the minimum of the
  two topics) passes end + grace, grace = 610 s (600 s attribution + the same
  10 s lateness); there is no watermark across partitions, and no idleness
  handling. When one topic runs ahead of the other in a partition, windows
  can close before all their clicks are read: those clicks are late and
  dropped (counted in `late_records`).
- Late data. streamwatch drops any event older than its watermark (to its
  late-events topic); here only a record whose window has already closed is
  dropped (Quix's on_late), and it is only counted.
- Rows. streamwatch emits a provisional row (version 1) when the watermark
  reaches a window's end and the final row (version 2) at end + 600 s; here
  only the final row. Windows whose end + 610 s is beyond the last event time
  of their partition are never closed, so never emitted (streamwatch has only
  provisional rows for most of them too). No baseline, no ctr_drop, no
  p-values, no alerts, no ClickHouse: rows go to the output topic only.
- Clicks before their impression. streamwatch holds such a click until its
  watermark passes the click's time and only then calls it an orphan. Quix has
  no event-time timers, so the click is counted as an orphan at once (in the
  window of its own time, variant "") and remembered; if its impression comes
  later, a correction (-1 orphan) and the click (+1 in the impression's
  window) are emitted. A correction for an orphan window already closed is
  late and dropped, so that orphan stays counted.
- State lifetime. streamwatch forgets an impression when its window is final;
  Quix's key-value State has no expiry, so every impression stays in RocksDB
  for the whole run (memory is bounded by RocksDB, disk grows).
- The join is per campaign: Quix's State is scoped to the message key, so a
  click whose campaign_id differs from its impression's is an orphan
  (streamwatch joins on impression_id alone).
- `ts` is taken as integer epoch milliseconds (the simulator's and the
  benchmark's wire format); streamwatch also accepts ISO-8601 strings, and
  validates every event against its schema (dead letters), which this does not.
- Delivery: at-least-once (Quix's default; Tansu cannot do exactly-once).

Tansu: its DescribeConfigs returns only the configs a topic was created with
(none for the dataset's topics), and Quix needs the inputs' `retention.ms` to
configure its changelog topics; the inputs are given Apache Kafka's defaults
in the app (the broker is not touched).
"""

from __future__ import annotations

import logging
from typing import Any

from tests.benchmarks.contenders.common import Clock, Progress, Spec, ctr_row, write_result

WINDOW_MS = 60_000
ATTRIBUTION_MS = 600_000
LATENESS_MS = 10_000  # streamwatch's default allowed lateness
# counters of a (campaign, variant, window): their index in the window's lists
IMPS, CLICKS, ORPHANS, DUP_CLICKS, DUP_IMPS = range(5)


Contribution = tuple[int, str, int, int]  # (event time, variant, counter, delta)
Counts = dict[str, list[int]]  # variant -> counters


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return value["ts"]


def join(value: dict[str, Any], state: Any) -> list[Contribution]:
    """One impression or click -> contributions (window time, variant, counter, delta)."""
    if "click_id" in value:
        click_ts = value["ts"]
        imp_id = value["impression_id"]
        entry = state.get(imp_id)
        if entry is None or entry[0] is None:  # impression not seen (yet)
            if entry is None:
                entry = [None, "", False, []]
            entry[3].append(click_ts)
            state.set(imp_id, entry)
            return [(click_ts, "", ORPHANS, 1)]
        imp_ts, variant, clicked, _ = entry
        if not 0 <= click_ts - imp_ts <= ATTRIBUTION_MS:
            return [(click_ts, "", ORPHANS, 1)]
        if clicked:
            return [(imp_ts, variant, DUP_CLICKS, 1)]
        entry[2] = True
        state.set(imp_id, entry)
        return [(imp_ts, variant, CLICKS, 1)]

    imp_id = value["impression_id"]
    imp_ts = value["ts"]
    variant = value.get("variant") or ""
    entry = state.get(imp_id)
    if entry is not None and entry[0] is not None:
        return [(entry[0], entry[1], DUP_IMPS, 1)]
    out = [(imp_ts, variant, IMPS, 1)]
    clicked = False
    if entry is not None:  # clicks that came first, already counted as orphans
        for click_ts in entry[3]:
            if 0 <= click_ts - imp_ts <= ATTRIBUTION_MS:
                out.append((click_ts, "", ORPHANS, -1))
                out.append((imp_ts, variant, DUP_CLICKS if clicked else CLICKS, 1))
                clicked = True
    state.set(imp_id, [imp_ts, variant, clicked, []])
    return out


def init_counts(value: Contribution) -> Counts:
    return reduce_counts({}, value)


def reduce_counts(agg: Counts, value: Contribution) -> Counts:
    _, variant, counter, delta = value
    counts = agg.get(variant)
    if counts is None:
        counts = agg[variant] = [0, 0, 0, 0, 0]
    counts[counter] += delta
    return agg


def rows(window: dict[str, Any], key: bytes, timestamp: int, headers: Any) -> list[dict[str, Any]]:
    campaign = key.decode()
    out = []
    for variant, counts in sorted(window["value"].items()):
        if not any(counts):
            continue  # only an orphan click and its correction (the impression came later)
        out.append(ctr_row(window["start"], window["end"], campaign, variant, tuple(counts)))
    return out


def main() -> None:
    from quixstreams import Application

    spec = Spec.from_argv()
    clock = Clock()
    progress = Progress(spec.dataset)
    counts = {"events": 0, "windows": 0, "late_records": 0}
    app: Application

    def processed(topic: str, partition: int, offset: int) -> None:
        clock.start()
        counts["events"] += 1
        progress.seen(topic, partition, offset)
        if progress.done:
            app.stop()

    def late(*_args: Any) -> bool:
        counts["late_records"] += 1
        return False  # do not log every late record

    def emitted(row: dict[str, Any]) -> None:
        counts["windows"] += 1

    app = Application(
        broker_address=spec.bootstrap,
        consumer_group=spec.group,
        auto_offset_reset="earliest",
        state_dir=str(spec.workdir / "quix-state"),
        consumer_extra_config={
            "session.timeout.ms": 6000,  # Tansu: joins wait half the session timeout
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            "fetch.queue.backoff.ms": 10,  # as every librdkafka contender (common.py)
        },
        on_message_processed=processed,
        loglevel="WARNING",
    )
    inputs = {
        name: app.topic(topic, value_deserializer="json", timestamp_extractor=event_time)
        for name, topic in spec.dataset.topics.items()
    }
    for topic in inputs.values():
        # Tansu's DescribeConfigs returns only the configs set at creation (none
        # here); Quix derives its changelog topics' retention from the inputs'
        # and fails without one. Apache Kafka would report its defaults:
        topic.broker_config.extra_config.setdefault("retention.ms", str(7 * 24 * 3600 * 1000))
        topic.broker_config.extra_config.setdefault("retention.bytes", "-1")
    impressions = app.dataframe(inputs["impressions"])
    clicks = app.dataframe(inputs["clicks"])
    output = app.topic(f"{spec.group}.ctr-windows", value_serializer="json")

    sdf = impressions.concat(clicks)
    sdf = sdf.apply(join, stateful=True, expand=True)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value[0])
    sdf = (
        sdf.tumbling_window(WINDOW_MS, grace_ms=ATTRIBUTION_MS + LATENESS_MS, on_late=late)
        .reduce(reduce_counts, init_counts)
        .final(closing_strategy="partition")
    )
    sdf = sdf.apply(rows, expand=True, metadata=True)
    sdf = sdf.update(emitted)
    sdf.to_topic(output)

    app.run()  # returns after the final checkpoint: outputs flushed, offsets committed
    clock.stop()
    write_result(
        spec,
        clock,
        counts["events"],
        windows=counts["windows"],
        late_records=counts["late_records"],
        notes="quixstreams 3.28.1 (own venv): concat + stateful apply join, "
        "tumbling_window(60 s, grace 610 s).reduce().final(closing_strategy='partition'), "
        "RocksDB state with changelog topics, at-least-once",
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
