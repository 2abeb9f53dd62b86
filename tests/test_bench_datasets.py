"""What `tests.benchmarks.bench --set quality` relies on, checked without a broker.

The comparison reads the inference logs of the `quality` dataset (with labels)
against a `drift` dataset of the same event time: it is fair only if those are
the same logs, and if the drift + service contender runs without the quality
monitor (on by default since contract v2) while the quality contender runs it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson

from streams.cli.simulate import Simulator
from tests.benchmarks.contenders.common import Spec
from tests.benchmarks.contenders.streamwatch_pipeline import settings_for
from tests.benchmarks.dataset import Dataset, scenario


def messages(kind: str, events: int, duration_s: int | None = None) -> list[tuple[str, bytes]]:
    sc = scenario(kind, events, 4, duration_s=duration_s)
    stream = ((t, v) for t, _, v in Simulator(sc).messages() if t != "__tick__")
    return list(itertools.islice(stream, events))


def test_quality_data_is_the_drift_logs_with_their_labels() -> None:
    with_labels = messages("quality", 20_000)
    logs = [v for t, v in with_labels if t == "inference-logs"]
    labels = [orjson.loads(v) for t, v in with_labels if t == "labels"]
    duration = scenario("quality", 20_000, 4).duration_s
    without = messages("drift", len(logs), duration_s=duration)
    assert {t for t, _ in without} == {"inference-logs"}
    assert [v for _, v in without] == logs  # byte for byte
    # labels join logs of the run (no invented request ids), fewer than the logs
    ids = {orjson.loads(v)["request_id"] for v in logs}
    assert labels and len(labels) < len(logs)
    assert {label["request_id"] for label in labels} <= ids
    kinds = {i.kind for i in scenario("quality", 20_000, 4).incidents}
    assert "concept_drift" in kinds
    assert "concept_drift" not in {i.kind for i in scenario("drift", 20_000, 4).incidents}


def spec_for(kind: str, tmp_path: Path) -> Spec:
    topics = {"drift": {"inference-logs": "d-logs"}}.get(
        kind, {"inference-logs": "q-logs", "labels": "q-labels"}
    )
    data = Dataset(kind, topics, 4, 4, 100, 10, {t: {0: 1} for t in topics.values()})
    return Spec("x", "127.0.0.1:9092", "g", data, tmp_path, tmp_path / "r.json")


def test_only_the_quality_contender_runs_the_quality_monitor(tmp_path: Path) -> None:
    off = settings_for(spec_for("drift", tmp_path))
    on = settings_for(spec_for("quality", tmp_path))
    enabled = {name for name, m in off.monitors.items() if m.enabled}
    assert enabled == {"drift", "service"}
    assert {name for name, m in on.monitors.items() if m.enabled} == {
        "drift",
        "service",
        "quality",
    }
    assert on.topics.labels == "q-labels" and on.topics.inference_logs == "q-logs"
    assert off.topics.labels != "labels"  # not the default topic of a real deployment
    assert on.monitors["quality"].options["label_delay_ms"] == 600_000
