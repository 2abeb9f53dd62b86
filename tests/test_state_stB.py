"""Typed, versioned state of the sensor, cluster and autoencoder operators (issue 12, point 3).

Per operator: the snapshot is `{"format": N, "state": ...}` of plain data (no pickles, no
"\\x1f"-joined keys: composite keys are tuples), a format this code does not know is
refused with a `StateFormatError` naming the monitor, a checkpoint that does not fit the
state type is refused the same way (never half-restored), and format 1 is upgraded,
including its own older fallbacks (the conformance suite and tests/test_state_upgrade.py
check the round trip and the upgrade of the current format-1 layout).
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from operators.autoencoder import AutoencoderConfig, AutoencoderOperator
from operators.base import Operator
from operators.cluster import ClusterConfig, ClusterOperator
from operators.sensor import SensorConfig, SensorOperator
from operators.state import StateFormatError
from schemas.events import SensorReading

T0 = 1_795_000_020_000
SRC = "sensor-readings"
ARTIFACTS = Path(__file__).parent / "artifacts"


def reading(ts: int, sensor: str = "s1", site: str | None = None, **values: float):
    return SensorReading(sensor_id=sensor, ts=ts, values=values, site=site)


def readings(n: int, seed: int = 0, sensors: tuple[str, ...] = ("s1", "s2")) -> list[Any]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        for k, sid in enumerate(sensors):
            site = "plant" if k % 2 == 0 else None
            x = 20.0 + rng.gauss(0, 1) + (15.0 if i == n - 40 else 0.0)
            out.append(reading(T0 + i * 1000, sid, site, temp=x, hum=50.0 + rng.gauss(0, 2)))
    return out


def run(op: Operator, events: list[Any], until: int) -> tuple[list[Any], list[Any]]:
    op.feed(SRC, events)
    op.advance(until)
    out = op.collect()
    return sorted(map(repr, out.rows.items())), list(map(repr, out.observations))


def through_msgpack(snapshot: Any) -> Any:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot))


OPERATORS: dict[str, Callable[[], Operator]] = {
    "sensor": lambda: SensorOperator(SensorConfig(min_points=5, min_score_history=20)),
    "cluster": lambda: ClusterOperator(ClusterConfig(warmup=20, group_by="site")),
    "autoencoder": lambda: AutoencoderOperator(
        AutoencoderConfig(warmup=30, epochs=2, min_history=20, short=1, quiet=2, alpha=1e-3)
    ),
}
FIELDS = {
    "sensor": {"pending", "series", "aggregates", "unjudgeable", "metrics"},
    "cluster": {"pending", "models", "skipped", "out_of_range"},
    "autoencoder": {"pending", "models", "skipped", "out_of_range"},
}


def mid_stream(name: str) -> Operator:
    """An operator with judged series, open windows and pending readings."""
    op = OPERATORS[name]()
    op.feed(SRC, readings(120))
    op.advance(T0 + 100_000)
    op.collect()
    return op


def plain_types(value: Any) -> set[type]:
    if isinstance(value, dict):
        return {dict}.union(*(plain_types(k) | plain_types(v) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return {type(value)}.union(*map(plain_types, value))
    return {type(value)}


FORMATS = {"sensor": 3, "cluster": 3, "autoencoder": 2}
# bytes a state may hold: numeric arrays packed by `operators.state` (float64 or int64,
# 8 bytes a value), under these field names only
PACKED = {
    "sensor": {"times", "values", "head"},
    "cluster": {"times", "values"},
    "autoencoder": set(),
}


def packed_fields(value: Any, name: str = "") -> list[tuple[str, bytes]]:
    """Every bytes value of plain data, with the name of the field that holds it."""
    if isinstance(value, bytes):
        return [(name, value)]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in packed_fields(v, str(k))]
    if isinstance(value, list | tuple):
        return [p for v in value for p in packed_fields(v, name)]
    return []


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_the_snapshot_is_versioned_plain_data(name: str) -> None:
    snapshot = mid_stream(name).snapshot()
    assert set(snapshot) == {"format", "state"} and snapshot["format"] == FORMATS[name]
    assert set(snapshot["state"]) == FIELDS[name]
    # plain data only: no pickled bytes, no numpy; bytes only as packed arrays
    plain = {dict, list, tuple, str, int, float, bool, type(None)}
    assert plain_types(snapshot) <= plain | ({bytes} if PACKED[name] else set())
    packed = packed_fields(snapshot)
    assert {field for field, _ in packed} <= PACKED[name]
    assert all(len(b) % 8 == 0 for _, b in packed)
    if PACKED[name]:
        assert packed  # (the judged series' windows are in it)
    assert through_msgpack(snapshot) == through_msgpack(through_msgpack(snapshot))


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_a_snapshot_round_trip_continues_exactly(name: str) -> None:
    op = mid_stream(name)
    restored = OPERATORS[name]()
    restored.restore(through_msgpack(op.snapshot()))
    assert through_msgpack(restored.snapshot()) == through_msgpack(op.snapshot())
    more = [e for e in readings(200) if e.ts >= T0 + 120_000]
    want = run(op, more, T0 + 400_000)
    assert want[0] and want[1], "the continuation must find something to compare"
    assert run(restored, more, T0 + 400_000) == want


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_an_unknown_format_is_refused_naming_the_monitor(name: str) -> None:
    snapshot = through_msgpack(mid_stream(name).snapshot())
    for bumped in (FORMATS[name] + 1, 0):
        with pytest.raises(StateFormatError, match=rf"^{name}: a checkpoint in state format"):
            OPERATORS[name]().restore({**snapshot, "format": bumped})


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_a_checkpoint_that_does_not_fit_is_refused(name: str) -> None:
    snapshot = through_msgpack(mid_stream(name).snapshot())
    field = sorted(FIELDS[name])[0]
    state = {k: v for k, v in snapshot["state"].items() if k != field}
    op = OPERATORS[name]()
    with pytest.raises(StateFormatError, match=rf"^{name}: .*does not fit.*{field}"):
        op.restore({"format": FORMATS[name], "state": state})
    if FORMATS[name] > 2:  # an older format's upgrade meets it: refused the same way
        with pytest.raises(
            StateFormatError, match=rf"^{name}: a checkpoint in state format \d that does not fit"
        ):
            OPERATORS[name]().restore({"format": 2, "state": state})


def test_sensor_keys_are_tuples() -> None:
    state = mid_stream("sensor").snapshot()["state"]
    assert set(state["series"]) == {(s, m) for s in ("s1", "s2") for m in ("hum", "temp")}
    (bucket,) = state["aggregates"].values()
    assert set(bucket) == set(state["series"])
    assert set(state["series"][("s1", "temp")]["episodes"]) == {"zscore", "iqr"}


def test_cluster_entities_are_tuples_and_river_state_is_named() -> None:
    state = mid_stream("cluster").snapshot()["state"]
    assert set(state["models"]) == {("site", "plant"), ("sensor", "s2")}
    model = state["models"][("site", "plant")]
    assert set(model["scaler"]) == {"counts", "means", "vars"}
    assert model["scaler"]["counts"] == {"hum": 100, "temp": 100}  # s1's judged readings
    assert len(model["kmeans"]["centers"]) == 4
    assert all(set(c) == {"hum", "temp"} for c in model["kmeans"]["centers"])


def _cluster_format_1(op: ClusterOperator) -> dict[str, Any]:
    """The checkpoint the code before typed state wrote (`EntityModel.snapshot` with the
    river objects pickled, "site\\x1f"-joined entities, the entity in each pending entry)."""

    def entity(key: tuple[str, str]) -> str:
        return f"site\x1f{key[1]}" if key[0] == "site" else key[1]

    models = {}
    for key, m in op.models.items():
        models[entity(key)] = {
            "features": list(m.features),
            "river": pickle.dumps(
                (m.detector.scaler, m.detector.model), protocol=pickle.HIGHEST_PROTOCOL
            ),
            "recent": {"times": list(m.recent.times), "values": list(m.recent.values)},
            "seen": m.seen,
            "learn": [m.learn_batch, m.learnt],
            "active": dict(m.active),
            "held": [list(h) for h in m.held],
            "long_run": m.long_run,
        }
    by_site = op.config.group_by == "site"
    pending = [
        [ts, f"site\x1f{site}" if by_site and site else sid, sid, [list(kv) for kv in items], site]
        for ts, sid, items, site in op.pending.entries
    ]
    return {"pending": pending, "models": models, "skipped": op.skipped}


def test_a_cluster_format1_checkpoint_of_site_models_is_upgraded() -> None:
    """Site entities ("site\\x1fplant"), pickled river objects and a checkpoint from
    before `out_of_range` was counted: upgraded, and the run goes on exactly."""
    op = mid_stream("cluster")
    restored = OPERATORS["cluster"]()
    restored.restore(through_msgpack(_cluster_format_1(op)))
    assert set(restored.models) == {("site", "plant"), ("sensor", "s2")}
    assert restored.out_of_range == 0
    assert through_msgpack(restored.snapshot()) == through_msgpack(op.snapshot())
    more = [e for e in readings(200) if e.ts >= T0 + 120_000]
    assert run(restored, more, T0 + 400_000) == run(op, more, T0 + 400_000)


def test_a_sensor_format1_series_from_before_episodes_and_the_rise_test_is_upgraded() -> None:
    """Format 1's own fallbacks: a series without "episodes" (its flags are the open
    episodes), "mk" (no rise test begun), "gaps" and "window_ms", and aggregates keyed
    by "sensor\\x1fmetric"."""
    op = OPERATORS["sensor"]()
    old = {
        "pending": [[T0 + 5_000, "s1", "temp", 21.0]],
        "series": [
            [
                "s1",
                "temp",
                {
                    "stats": {
                        "times": [T0, T0 + 1000, T0 + 2000],
                        "values": [20.0, 22.0, 21.0],
                        "sums": [21.0, 0.0, 2.0, 3],
                    },
                    "staged": [20.5],
                    "last_ts": T0 + 3000,
                    "rise": [20.5, 1, T0 + 3000, 20.5],
                    "flags": [False, True, False],
                },
            ]
        ],
        "aggregates": [[T0, "s1\x1ftemp", [20.0, 22.0, 21.0, 20.5]]],
    }
    op.restore(through_msgpack(old))
    s = op.series[("s1", "temp")]
    assert s.episodes["zscore"].active and not s.episodes["iqr"].active
    assert s.gaps == [] and s.window_ms == op.config.window_ms and s.bucket_ms == 0
    assert s.stats.values == [20.0, 22.0, 21.0] and s.staged == [20.5]
    assert op.aggregates.state() == {T0: {("s1", "temp"): [20.0, 22.0, 21.0, 20.5]}}
    assert op.pending.entries == [(T0 + 5_000, "s1", "temp", 21.0, 0)]
    op.advance(T0 + 60_000)
    (row,) = op.collect().rows["sensor_windows"]
    assert (row.sensor_id, row.metric, row.n) == ("s1", "temp", 5)


def test_a_sensor_format2_snapshot_with_fits_in_use_restores_as_the_same_state() -> None:
    """`mid_stream("sensor").snapshot()` as f4ccd19 wrote it (format 2: the window and the
    score histories as lists; tests/artifacts/sensor_mid_stream_format2.msgpack), with
    tails whose fit is in use: upgraded to format 3 it is the current code's own snapshot
    of the same stream, bit for bit, and the run goes on exactly."""
    old = msgspec.msgpack.decode((ARTIFACTS / "sensor_mid_stream_format2.msgpack").read_bytes())
    assert old["format"] == 2
    fits = [t["fit"] for s in old["state"]["series"].values() for t in s["tails"].values()]
    assert any(fits) and not all(fits), "the fixture has tails with and without a fit"
    restored = OPERATORS["sensor"]()
    restored.restore(old)
    op = mid_stream("sensor")
    assert msgspec.msgpack.encode(restored.snapshot()) == msgspec.msgpack.encode(op.snapshot())
    more = [e for e in readings(200) if e.ts >= T0 + 120_000]
    want = run(op, more, T0 + 400_000)
    assert want[0] and want[1], "the continuation must find something to compare"
    assert run(restored, more, T0 + 400_000) == want


def test_a_cluster_snapshot_inside_an_anomalous_run_continues_exactly() -> None:
    """Taken just after the spike: its distance is held aside (`held`), not yet in the
    recent distances; the restored model must hold it too."""
    events = readings(200)
    op = OPERATORS["cluster"]()
    op.feed(SRC, [e for e in events if e.ts <= T0 + 160_000])
    op.advance(T0 + 160_001)  # the spike (reading 160) judged, nothing after it
    assert op.collect().rows["sensor_anomalies"]
    assert op.models[("site", "plant")].held, "the run must be open at the snapshot"
    restored = OPERATORS["cluster"]()
    restored.restore(through_msgpack(op.snapshot()))
    assert through_msgpack(restored.snapshot()) == through_msgpack(op.snapshot())
    more = [e for e in events if e.ts > T0 + 160_000]
    assert run(restored, more, T0 + 400_000) == run(op, more, T0 + 400_000)


def test_an_autoencoder_format1_checkpoint_from_before_leak_and_levels_is_upgraded() -> None:
    """Format 1's own fallbacks: a network without "leak" (0, plain tanh, as it was
    written), an episode of four fields before levels (an open one at level 1), a tail
    without a fit in use; positional "learn" and "episode"."""
    op = mid_stream("autoencoder")
    sid, m = next(iter(op.models.items()))
    ae = m.ae.snapshot()
    old_model = {
        "features": list(m.features),
        "warm": m.warm,
        "warm_ts": m.warm_ts,
        "alpha": m.alpha,
        "mean": m.mean.tolist(),
        "scale": m.scale.tolist(),
        "ae": {
            "lr": ae.lr,
            "steps": ae.steps,
            **{k: msgspec.to_builtins(getattr(ae, k)) for k in ("p", "m", "v")},
        },
        "recent": list(m.recent),
        "tail": {"values": list(m.tail.values), "since_fit": 3},
        "episode": [True, 1, 0, 4, T0 + 7_000],
        "learn": [m.learn_hour, m.learnt],
    }
    old = {"pending": [[T0 + 1, sid, [["hum", 50.0], ["temp", 20.0]]]], "models": {sid: old_model}}
    restored = OPERATORS["autoencoder"]()
    restored.restore(through_msgpack({**old, "skipped": 2}))
    got = restored.models[sid]
    assert got.ae.leak == 0.0 and got.ae.steps == ae.steps
    assert (got.episode.active, got.episode.level, got.episode.length) == (True, 1, 4)
    assert got.episode_start == T0 + 7_000 and got.episode.quiet == 2
    assert len(got.tail) == len(m.tail) and got.tail.since_fit == got.tail.refit
    assert restored.pending.entries == [(T0 + 1, sid, (("hum", 50.0), ("temp", 20.0)))]
    assert (restored.skipped, restored.out_of_range) == (2, 0)
