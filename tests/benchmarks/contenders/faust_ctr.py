"""faust: the CTR computation as the idiomatic faust-streaming application.

Runs in the project's venv (faust-streaming 0.15.x is a dependency):

    .venv/bin/python -m tests.benchmarks.contenders.faust_ctr SPEC.json

It needs `cramjam` (the `bench` extra): the datasets are lz4-compressed, and
aiokafka decompresses lz4 with cramjam (streamwatch reads with librdkafka and
does not need it).

One agent over one topic description naming both topics
(`app.topic(impressions, clicks)`), iterating events one by one
(`async for event in stream.events()`), `value_serializer="raw"` and an
orjson decode per event. Two tables, in memory (`store="memory://"`), each
with its changelog topic on the broker (faust's default):

- `ctr-windows`: `app.Table(...).tumbling(60)` keyed by "campaign|variant",
  a list [impressions, clicks, orphan clicks, duplicate clicks, duplicate
  impressions] per window;
- `ctr-impressions`: impression_id -> [ts, variant, clicked, pending clicks],
  the join.

Event time. `relative_to_field(...)` takes the window time from a field of the
event being processed, which cannot express "a click counts in the window of
its impression" (the click's own `ts` is the wrong time), and needs a faust
Record (not raw values). The table is instead `relative_to(handler)`, faust's
documented form for a callable: the handler returns the event time the agent
is counting at, the impression's `ts` for both an impression and its click
(the orphan click's own `ts` for an orphan). Windows are in seconds, faust's
unit (`ts / 1000`).

Window close. The windowed table's `expires` and `on_window_close` are not
used: faust expires windows by the wall clock (`window.stale(range_end,
time.time())` in `Table._del_old_keys`), not by event time. The benchmark's
data is replayed with event times in the past (September 2026 as simulated,
weeks before the machine's clock), so every window, open or not, is stale at
each cleanup tick. Measured with `tumbling(60, expires=670)`,
`on_window_close` and `table_cleanup_interval=10` on 100k events: every tick
deleted all the windows then in the table, mid-run, clicks still to come;
`on_window_close` was called only for windows starting after the last one it
had closed (213 calls over 4 ticks, with partial counts: 21.6k of ~96k
impressions), the rest were deleted silently, and windows touched again
afterwards restarted from zero. (Its aggregated-window lookup is also dead
code in this version: see the comment in `_del_old_keys`.) With the default
interval (30 s) the first tick comes ~60 s after start. So the agent closes
windows itself by event time, as streamwatch does: a watermark W = min over
its input partitions (both topics) of the largest `ts` seen, less 10 s, and
a window is emitted (once, to `{group}.ctr-windows`) when W >= end + 600 s.
Windows are not deleted from the table after emission.

Reading a window: `table[key].current()` is relative to the Kafka message
timestamp whatever the table's `relative_to` says; `table[key].value()`
honours it, so the agent uses `.value()`.

Differences from streamwatch's semantics (operators/ctr.py, operators/watermark.py):

- Same: windows per (campaign, variant or ""), 60 s by the impression's ts;
  a click counts when 0 <= click.ts - imp.ts <= 600 s, once per impression
  (more are duplicates); other clicks are orphans in the window of their own
  ts with variant ""; a click read before its impression waits until W passes
  its ts, then is an orphan; events with ts < W are late and dropped
  (counted, not produced to a late-events topic); the watermark is the
  minimum over input partitions less 10 s.
- No idleness: a partition that stops sending holds W (streamwatch drops it
  from the minimum after its idle timeout).
- Rows: only the final row per window (streamwatch also emits a provisional
  row when W reaches the window's end); windows not final when the input ends
  are never emitted. No baseline, ctr_drop, p-values, alerts or ClickHouse.
- State lifetime: impressions stay in the join table (memory) for the whole
  run; streamwatch forgets them when their window is final. Deleting them
  would write a changelog tombstone per impression, and from whichever event
  closes the window, i.e. into the changelog partition of that event (faust
  writes a table change to the partition of the event being processed), not
  the impression's. The same holds for orphan counts decided by the watermark
  and for pending clicks resolved by it: correct in this process, but a
  changelog recovery would place them in the wrong partition.
- `ts` is taken as integer epoch milliseconds (the simulator's wire format);
  no schema validation, no dead letters.
- Delivery: at-least-once (Tansu cannot do exactly-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from typing import Any

import orjson

from tests.benchmarks.contenders.common import Clock, Progress, Spec, ctr_row, write_result

WINDOW_MS = 60_000
ATTRIBUTION_MS = 600_000
LATENESS_MS = 10_000  # streamwatch's default allowed lateness
IMPS, CLICKS, ORPHANS, DUP_CLICKS, DUP_IMPS = range(5)  # the counters of a window


def zero_counts() -> list[int]:
    return [0, 0, 0, 0, 0]


def build(spec: Spec, clock: Clock, done: asyncio.Event, stats: dict[str, int]) -> Any:
    import faust

    partitions = spec.dataset.partitions
    app = faust.App(
        spec.group,
        broker=f"kafka://{spec.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=partitions,
        topic_replication_factor=1,
        # Tansu holds a group join for half the session timeout
        broker_session_timeout=10,
        broker_rebalance_timeout=10,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        stream_wait_empty=False,
        # aiokafka lingers 0 ms by default, so every changelog message is its own
        # request; 5 ms is librdkafka's default, which the other contenders have
        producer_linger=0.005,
        datadir=str(spec.workdir / "faust"),
    )
    json_schema = faust.Schema(key_serializer="json", value_serializer="json")
    source = app.topic(*spec.dataset.topics.values())
    output = app.topic(f"{spec.group}.ctr-windows", partitions=1)

    class At:
        """The event time (seconds) the agent is counting at: the windowed table's time."""

        ts_s = 0.0

    at = At()
    windows = (
        app.Table("ctr-windows", default=zero_counts, partitions=partitions, schema=json_schema)
        .tumbling(WINDOW_MS // 1000)
        .relative_to(lambda event=None: at.ts_s)
    )
    impressions = app.Table("ctr-impressions", partitions=partitions, schema=json_schema)

    imp_topic, click_topic = spec.dataset.topics["impressions"], spec.dataset.topics["clicks"]
    progress = Progress(spec.dataset)
    max_ts = {source: -(2**62) for source in progress.remaining}  # (topic, partition) -> ts
    watermark = -(2**62)
    opened: set[tuple[str, int]] = set()
    closing: list[tuple[int, int, str]] = []  # (window end, window start, key)
    pending: list[tuple[int, int, str, str]] = []  # (click ts, seq, impression_id, campaign)

    def count(key: str, ts: int, counter: int) -> None:
        at.ts_s = ts / 1000
        counts = windows[key].value()
        counts[counter] += 1
        windows[key] = counts
        start = ts - ts % WINDOW_MS
        if (key, start) not in opened:
            opened.add((key, start))
            heapq.heappush(closing, (start + WINDOW_MS, start, key))

    def attribute(entry: list[Any], campaign: str, click_ts: int) -> None:
        imp_ts, variant, clicked = entry[0], entry[1], entry[2]
        if 0 <= click_ts - imp_ts <= ATTRIBUTION_MS:
            if clicked:
                count(f"{campaign}|{variant}", imp_ts, DUP_CLICKS)
            else:
                count(f"{campaign}|{variant}", imp_ts, CLICKS)
                entry[2] = True
        else:
            count(f"{campaign}|", click_ts, ORPHANS)

    def impression(value: dict[str, Any], campaign: str) -> None:
        imp_id = value["impression_id"]
        entry = impressions.get(imp_id)
        if entry is not None and entry[0] is not None:
            count(f"{campaign}|{entry[1]}", entry[0], DUP_IMPS)
            return
        waiting = entry[3] if entry is not None else []
        entry = [value["ts"], value.get("variant") or "", False, []]
        count(f"{campaign}|{entry[1]}", entry[0], IMPS)
        for click_ts, _seq, click_campaign in waiting:  # clicks read before their impression
            attribute(entry, click_campaign, click_ts)
        impressions[imp_id] = entry

    def click(value: dict[str, Any], campaign: str) -> None:
        imp_id = value["impression_id"]
        entry = impressions.get(imp_id)
        if entry is not None and entry[0] is not None:
            clicked = entry[2]
            attribute(entry, campaign, value["ts"])
            if entry[2] != clicked:
                impressions[imp_id] = entry
            return
        # the impression may still come: wait until the watermark passes the click
        stats["seq"] += 1
        if entry is None:
            entry = [None, "", False, []]
        entry[3].append([value["ts"], stats["seq"], campaign])
        impressions[imp_id] = entry
        heapq.heappush(pending, (value["ts"], stats["seq"], imp_id, campaign))

    async def advance(new_watermark: int) -> None:
        while pending and pending[0][0] < new_watermark:
            click_ts, seq, imp_id, campaign = heapq.heappop(pending)
            entry = impressions.get(imp_id)
            if entry is None or entry[0] is not None:
                continue  # its impression came meanwhile
            entry[3] = [c for c in entry[3] if c[1] != seq]
            impressions[imp_id] = entry
            count(f"{campaign}|", click_ts, ORPHANS)
        final_until = new_watermark - ATTRIBUTION_MS
        while closing and closing[0][0] <= final_until:
            end, start, key = heapq.heappop(closing)
            opened.discard((key, start))
            at.ts_s = start / 1000
            campaign, _, variant = key.partition("|")
            row = ctr_row(start, end, campaign, variant, tuple(windows[key].value()))
            await output.send(key=campaign.encode(), value=orjson.dumps(row))
            stats["windows"] += 1

    @app.agent(source)
    async def ctr(stream: Any) -> None:
        nonlocal watermark
        loads = orjson.loads
        async for event in stream.events():
            clock.start()
            message = event.message
            stats["events"] += 1
            value = loads(event.value)
            ts = value["ts"]
            source_key = (message.topic, message.partition)
            if ts < watermark:
                stats["late"] += 1
            else:
                campaign = value["campaign_id"]
                if message.topic == imp_topic:
                    impression(value, campaign)
                elif message.topic == click_topic:
                    click(value, campaign)
                if ts > max_ts.get(source_key, ts):
                    max_ts[source_key] = ts
                    candidate = min(max_ts.values()) - LATENESS_MS
                    if candidate > watermark:
                        watermark = candidate
                        await advance(watermark)
            progress.seen(message.topic, message.partition, message.offset)
            if progress.done:
                done.set()

    return app


async def run(spec: Spec) -> dict[str, int]:
    import faust
    from aiokafka.codec import has_lz4

    if not has_lz4():
        # the datasets are produced lz4-compressed; without the codec aiokafka's
        # fetcher fails inside faust, which then waits for ever
        raise SystemExit("faust_ctr: aiokafka cannot decompress lz4; install cramjam")
    clock = Clock()
    done = asyncio.Event()
    stats = {"events": 0, "windows": 0, "late": 0, "seq": 0}
    app = build(spec, clock, done, stats)

    class Worker(faust.Worker):
        def install_signal_handlers(self) -> None:
            """No signal handling: this process stops itself when done."""

    worker = Worker(
        app,
        loglevel="warning",
        loop=asyncio.get_running_loop(),
        daemon=False,
        redirect_stdouts=False,
        override_logging=False,
        quiet=True,  # no start-up banner or spinner on stdout
    )
    await worker.start()
    try:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 1.0)
            if app.crashed or worker.crashed:
                reason = app.crash_reason or worker.crash_reason
                raise RuntimeError(f"the faust app crashed: {reason!r}")
        await app.producer.flush()  # every window row emitted so far is on the broker
        clock.stop()
    finally:
        with contextlib.suppress(Exception):
            await worker.stop()
    write_result(
        spec,
        clock,
        stats["events"],
        windows=stats["windows"],
        late_events=stats["late"],
        notes="faust-streaming 0.15 (project venv): one agent over both topics, per-event "
        "`async for event in stream.events()`, raw values + orjson, windowed "
        "app.Table(...).tumbling(60).relative_to(event time), join table, memory:// store "
        "with changelog topics, windows closed by an event-time watermark",
    )
    return stats


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    # "producer buffer full" every ~100 changelog messages under load: expected here
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    spec = Spec.from_argv()
    asyncio.run(run(spec))


if __name__ == "__main__":
    main()
