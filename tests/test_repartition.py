"""Re-keying through internal topics (streams/runtime/repartition.py), transport-free.

The pipeline without a broker loops forwarded records back to itself, with the
same keys, partitions and source headers the worker produces; the broker runs
are in tests/test_e2e_experiments.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from operators.watermark import NO_WATERMARK
from streams.config import ConfigError, load_settings
from streams.connectors.checkpoints import decode, encode
from streams.connectors.partitioning import partition_for
from streams.runtime import repartition
from streams.runtime.monitors import build_monitors
from streams.runtime.pipeline import SEEN, Pipeline, RawMessage, merged_progress
from tests.test_pipeline import LOGICAL, MIN, T0, Recorder

# one experiment over four campaigns in four partitions, 60/40 instead of 50/50:
# visible only on the whole experiment (each partition alone has ~75 impressions)
N_PER_PARTITION = 150


def experiment_traffic() -> list[RawMessage]:
    msgs = []
    for p in range(4):
        campaign = f"camp-{p}"
        for i in range(N_PER_PARTITION):
            variant = "a" if i % 10 < 6 else "b"
            body = {
                "impression_id": f"i{p}-{i}",
                "ts": T0 + i * 100,
                "campaign_id": campaign,
                "user_id": f"u{p}-{i}",
                "experiment": "exp-1",
                "variant": variant,
            }
            msgs.append(RawMessage("impressions", p, i, campaign.encode(), orjson.dumps(body)))
    # as the partitions deliver them: interleaved in time
    return sorted(msgs, key=lambda m: (m.offset(), m.partition()))


def tail(ts: int) -> list[RawMessage]:
    """One impression per partition far later: every window closes."""
    out = []
    for p in range(4):
        body = {"impression_id": f"t{p}", "ts": ts, "campaign_id": f"camp-{p}", "user_id": "u"}
        body |= {"experiment": "exp-1", "variant": "a"}
        key = f"camp-{p}".encode()
        out.append(RawMessage("impressions", p, 10_000 + p, key, orjson.dumps(body)))
    return out


def make(**overrides: Any) -> tuple[Pipeline, Recorder]:
    settings = load_settings(env={}, overrides=overrides)
    out = Recorder()
    return Pipeline(build_monitors(settings), out, LOGICAL, clock=lambda: 0.0), out


def test_srm_reads_the_experiment_keyed_stream() -> None:
    settings = load_settings(env={})
    specs = {m.name: m for m in build_monitors(settings)}
    internal = repartition.experiment_topic("streamwatch", "impressions")
    assert specs["srm"].topics == {"impressions": internal}
    assert specs["repartition"].topics == {
        "impressions": "impressions",
        "inference-logs": "inference-logs",  # the experiment monitor's guardrails
    }
    assert specs["experiment"].topics == {
        "impressions": internal,
        "inference-logs": repartition.experiment_topic("streamwatch", "inference-logs"),
    }
    assert specs["ctr"].topics == {"impressions": "impressions", "clicks": "clicks"}


def test_one_experiment_across_partitions_is_tested_whole() -> None:
    p, out = make()
    p.assign(range(4), {})
    p.process(experiment_traffic())
    p.process(tail(T0 + 10 * MIN))
    rows = [r for r in out.table_rows["srm_checks"] if r["window_start"] == T0 - T0 % (5 * MIN)]
    # one row for the experiment, over all four partitions' traffic
    assert len(rows) == 1
    assert rows[0]["counts"] == {"a": 4 * 90, "b": 4 * 60}
    assert rows[0]["total"] == 4 * N_PER_PARTITION
    assert rows[0]["srm"] == 1
    owner = partition_for(b"exp-1", 4)
    internal = repartition.experiment_topic("streamwatch", "impressions")
    # read to the end: the forwarded impressions and the forwarders' progress records
    assert p.positions[("srm", owner)] == {internal: p.loop_offsets[(internal, owner)]}
    assert p.loop_offsets[(internal, owner)] > 4 * N_PER_PARTITION + 4


def test_replayed_forwards_are_not_counted_twice() -> None:
    """Kill -9 after the reader's checkpoint but before the forwarder's: the forwarder
    replays from its older checkpoint and sends the same records again."""
    msgs = experiment_traffic()
    first, _ = make()
    first.assign(range(4), {})
    first.process(msgs[:200])
    forwarder_old = {k: decode(encode(c)) for k, c in first.checkpoints(only_dirty=False).items()}
    first.process(msgs[200:400])
    newer = {k: decode(encode(c)) for k, c in first.checkpoints(only_dirty=False).items()}
    # restart: the readers' state is the newer one, the forwarder's the older one
    state = {**newer, **{k: c for k, c in forwarder_old.items() if k.startswith("repartition/")}}
    owner = partition_for(b"exp-1", 4)
    assert state[f"srm/{owner}"].state[SEEN] == {f"impressions:{p}": 100 for p in range(4)}
    second, out = make()
    second.assign(range(4), state)
    # the loop-back offsets of a new process start at 0: continue where the broker was
    second.loop_offsets = dict(first.loop_offsets)
    # every partition from the start: the first 50 offsets are skipped by the
    # forwarder's position, the next 50 are forwarded again and dropped as duplicates
    for i in range(0, len(msgs), 100):
        second.process(msgs[i : i + 100])
    second.process(tail(T0 + 10 * MIN))
    assert out.late_events == []
    rows = [r for r in out.table_rows["srm_checks"] if r["window_start"] == T0 - T0 % (5 * MIN)]
    assert rows[0]["counts"] == {"a": 4 * 90, "b": 4 * 60}


def campaign_traffic(keyed: bool) -> list[RawMessage]:
    """Impressions and clicks of one campaign a producer wrote without keys, spread
    over partitions at random (librdkafka's default for keyless messages)."""
    msgs = []
    offsets = [0, 0, 0, 0]
    for i in range(40):
        body = {"impression_id": f"i{i}", "ts": T0 + i * 100, "campaign_id": "c", "user_id": "u"}
        part = i % 4
        key = b"c" if keyed else None
        msgs.append(RawMessage("impressions", part, offsets[part], key, orjson.dumps(body)))
        offsets[part] += 1
    for i in range(0, 40, 4):  # every fourth impression is clicked, in another partition
        body = {
            "click_id": f"k{i}",
            "impression_id": f"i{i}",
            "ts": T0 + i * 100 + 50,
            "campaign_id": "c",
            "user_id": "u",
        }
        part = (i + 1) % 4
        msgs.append(RawMessage("clicks", part, i, None, orjson.dumps(body)))
    return msgs


def ctr_tail() -> list[RawMessage]:
    out = []
    for p in range(4):
        imp = {"impression_id": f"t{p}", "ts": T0 + 30 * MIN, "campaign_id": "zz", "user_id": "u"}
        out.append(RawMessage("impressions", p, 1000 + p, None, orjson.dumps(imp)))
        clk = {"click_id": f"t{p}", **imp}
        out.append(RawMessage("clicks", p, 1000 + p, None, orjson.dumps(clk)))
    return out


def test_strict_keying_dead_letters_keyless_events() -> None:
    p, out = make(keying={"impressions": "strict", "clicks": "strict"})
    p.assign(range(4), {})
    p.process(campaign_traffic(keyed=False))
    assert out.rejects.count("empty_key") == 50
    assert "ctr_windows" not in out.table_rows


def test_repartition_keying_rekeys_and_joins() -> None:
    settings = load_settings(env={}, overrides={"keying": {"impressions": "repartition"}})
    with pytest.raises(ConfigError):
        load_settings(env={}, overrides={"keying": {"impressions": "sometimes"}})
    assert settings.keying["clicks"] == "strict"
    p, out = make(keying={"impressions": "repartition", "clicks": "repartition"})
    specs = {m.name: m for m in p.monitors.values()}
    assert specs["ctr"].topics == {
        "impressions": "streamwatch-impressions-repartition",
        "clicks": "streamwatch-clicks-repartition",
    }
    p.assign(range(4), {})
    p.process(campaign_traffic(keyed=False))
    p.process(ctr_tail())
    p.tick(10**12)
    assert out.rejects == []
    final = [r for r in out.table_rows["ctr_windows"] if r["campaign_id"] == "c" and r["final"]]
    pooled = [r for r in final if r["variant"] == ""]
    assert sum(r["impressions"] for r in pooled) == 40
    assert sum(r["clicks"] for r in pooled) == 10
    assert sum(r["orphan_clicks"] for r in pooled) == 0


class Forwarding(Recorder):
    """Outputs with a `forward`, as the worker's: records what would go to the broker."""

    def __init__(self) -> None:
        super().__init__()
        self.forwarded: list[tuple[str, int, bytes, bytes | None]] = []

    def forward(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        source: bytes,
        progress: bytes | None = None,
    ) -> None:
        self.forwarded.append((topic, partition, source, progress))


def test_a_forwarded_partition_with_unread_messages_stays_in_the_merge() -> None:
    """Under CPU load a source partition's fetched messages can wait in the consumer
    past `repartition_idle_s`: the forwarder sends its last progress again while the
    partition has unread messages, so the re-keyed streams wait for it rather than
    leave it out of their merge (its events would then be late; the demo at
    --speed 0 on a busy machine lost tens of thousands of experiment events so)."""
    clock = [1000.0]
    out = Forwarding()
    monitors = build_monitors(load_settings(env={}))
    p = Pipeline(monitors, out, LOGICAL, clock=lambda: clock[0], repartition_idle_s=30)
    p.assign(range(4), {})
    p.process([m for m in experiment_traffic() if m.partition() == 0][:50])
    sent = [f for f in out.forwarded if f[3] is not None and f[2].startswith(b"impressions:0:")]
    assert sent  # the progress of the records forwarded
    last = sent[-1][3]

    def progress_again() -> list[Any]:
        before = len(out.forwarded)
        p.tick()
        return [f for f in out.forwarded[before:] if f[3] is not None]

    clock[0] += 11  # over a third of the idle timeout since it was sent
    assert progress_again() == []  # nothing unread: no keep-alive
    p.fetched = (("impressions", 0, 50, 150),)  # 100 messages not read yet
    again = progress_again()
    assert again and {f[2].rsplit(b":", 1)[0] for f in again} == {b"impressions:0"}
    assert {f[3] for f in again} == {last}  # as it stood: the event time did not move
    assert {f[0] for f in again} == {f[0] for f in sent}
    assert progress_again() == []  # not again before another third has passed
    clock[0] += 11
    assert progress_again()
    clock[0] += 11
    p.fetched = ()  # the partition was given away (or nothing is assigned): no more
    assert progress_again() == [] and p.unread == frozenset()


def test_a_partition_not_forwarded_from_yet_holds_the_merge_while_it_has_messages() -> None:
    """The demo at --speed 0 on a busy machine: one input partition's forwarder had not
    sent a record when the others had forwarded minutes of event time; after
    `repartition_idle_s` the merge left it out and its events came late. While the
    consumer reports messages on it (position before the high watermark; none read
    since the assignment: where its tasks start), it says it is there, with no time."""
    clock = [1000.0]
    out = Forwarding()
    monitors = build_monitors(load_settings(env={}))
    p = Pipeline(monitors, out, LOGICAL, clock=lambda: clock[0], repartition_idle_s=30)
    p.assign(range(4), {})
    p.process([m for m in experiment_traffic() if m.partition() == 0][:50])
    # partition 1: 150 messages on the broker, none read yet; partition 2: nothing there
    p.fetched = (("impressions", 0, 50, 150), ("impressions", 1, -1001, 150))
    p.fetched += (("impressions", 2, -1001, 0),)
    before = len(out.forwarded)
    p.tick()
    assert p.unread == {("impressions", 0), ("impressions", 1)}
    beats = {(f[2].rsplit(b":", 1)[0], f[3]) for f in out.forwarded[before:] if f[3] is not None}
    assert (b"impressions:1", str(NO_WATERMARK).encode()) in beats
    assert not [b for b in beats if b[0] == b"impressions:2"]
    # downstream, a progress with no event time holds the merge of its re-keyed task
    clock_of = {"impressions:0": [T0, 1_000_000], "impressions:1": [NO_WATERMARK, 1_000_000]}
    assert merged_progress(clock_of, 1_001_000, 30_000) == NO_WATERMARK
