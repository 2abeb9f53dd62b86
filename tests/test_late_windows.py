"""Each operator says which window a late event would have counted in (`late_window`),
and the pipeline writes that into the `late_events` row (issue 12: the window used to be
guessed from a `config.window_ms`, wrong for the sensor monitor's sliding window, whose
rows are per aggregate window, and for joins whose window is the joined event's)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from operators.ctr import CtrConfig, CtrOperator
from operators.quality import QualityConfig, QualityOperator
from schemas.events import (
    Click,
    Conversion,
    Impression,
    InferenceLog,
    LabelEvent,
    SensorReading,
)
from schemas.rows import Row
from streams.config import load_settings
from streams.runtime.monitors import OPERATORS, build_monitors
from streams.runtime.pipeline import Pipeline, RawMessage

T0 = 1_795_000_200_000  # a 5-minute boundary
MIN = 60_000
LOGICAL = {n: n for n in ("impressions", "clicks", "inference-logs", "sensor-readings", "labels")}


class LateRecorder:
    """The pipeline's Outputs, keeping the late events' rows."""

    def __init__(self) -> None:
        self.late_rows: list[tuple[str, int, int]] = []  # (monitor, event ts, window start)

    def rows(self, table: str, rows: list[Row]) -> None: ...

    def alerts(self, alerts: list[Any]) -> None: ...

    def rejected(self, message: RawMessage, rejection: Any) -> None:
        raise AssertionError(rejection)

    def late(
        self, monitor: str, message: RawMessage, event_ts: int, watermark: int, window_start: int
    ) -> None:
        assert event_ts < watermark
        self.late_rows.append((monitor, event_ts, window_start))


def reading(ts: int, offset: int) -> RawMessage:
    body = {"sensor_id": "s", "ts": ts, "values": {"t": 20.0 + offset % 3}}
    return RawMessage("sensor-readings", 0, offset, b"s", orjson.dumps(body))


def test_pipeline_writes_each_monitors_own_window_of_a_late_reading() -> None:
    """A late sensor reading: the sensor monitor's window is its one-minute aggregate
    (not the five-minute sliding window it is judged against), the cluster and
    autoencoder monitors' is the reading itself (they have no windows)."""
    overrides = {"monitors.autoencoder.enabled": True, "monitors.sensor.lateness_s": 10}
    settings = load_settings(env={}, overrides=overrides)
    out = LateRecorder()
    p = Pipeline(build_monitors(settings), out, LOGICAL, clock=lambda: 1000.0)
    p.assign([0], {})
    p.process([reading(T0 + i * 1000, i) for i in range(600)])  # ten minutes
    late_ts = T0 + 7 * MIN + 30_500  # behind every watermark (lateness <= 10 s)
    p.process([reading(late_ts, 600)])
    got = {monitor: start for monitor, ts, start in out.late_rows if ts == late_ts}
    assert got == {
        "sensor": T0 + 7 * MIN,
        "cluster": late_ts,
        "autoencoder": late_ts,
    }


def test_a_late_click_counts_in_its_impressions_window() -> None:
    op = CtrOperator()
    imp = Impression(impression_id="i1", ts=T0 + 59_000, campaign_id="c", user_id="u")
    op.feed("impressions", [imp])
    held = Click(click_id="k1", impression_id="i1", ts=T0 + 61_000, campaign_id="c", user_id="u")
    orphan = Click(click_id="k2", impression_id="i?", ts=T0 + 61_000, campaign_id="c", user_id="u")
    assert op.late_window("impressions", imp) == T0
    assert op.late_window("clicks", held) == T0  # its impression's minute
    assert op.late_window("clicks", orphan) == T0 + MIN  # where an orphan counts


def test_a_late_conversion_counts_in_its_clicks_impressions_window() -> None:
    """A conversion's window is that of the impression its click counted for, also
    after the window's final row (its counted clicks are held until the conversions
    are final); a conversion of a click never counted goes where an orphan counts."""
    op = CtrOperator(CtrConfig(conversions=True, attribution_ms=MIN))
    imp = Impression(impression_id="i1", ts=T0 + 59_000, campaign_id="c", user_id="u")
    op.feed("impressions", [imp])
    click = Click(click_id="k1", impression_id="i1", ts=T0 + 61_000, campaign_id="c", user_id="u")
    op.feed("clicks", [click])

    def conversion(click_id: str) -> Conversion:
        ts = T0 + 3 * MIN + 1_000
        return Conversion(conversion_id="v", click_id=click_id, ts=ts, campaign_id="c", user_id="u")

    assert op.late_window("conversions", conversion("k1")) == T0
    op.advance(T0 + 3 * MIN)  # the window's final row: its impressions are forgotten
    assert not op.impressions and "k1" in op.clicks
    assert op.late_window("conversions", conversion("k1")) == T0
    assert op.late_window("conversions", conversion("k?")) == T0 + 3 * MIN


def test_a_late_label_counts_in_its_predictions_window() -> None:
    op = QualityOperator(QualityConfig(label_delay_ms=10 * MIN))
    log = InferenceLog(
        request_id="r1",
        ts=T0 + 4 * MIN,
        model_id="m",
        model_version="v",
        features={},
        prediction=0.9,
        latency_ms=1.0,
        status="ok",
    )
    op.feed("inference-logs", [log])
    label = LabelEvent(request_id="r1", ts=T0 + 6 * MIN, model_id="m", label=1.0)
    unknown = LabelEvent(request_id="r?", ts=T0 + 6 * MIN, model_id="m", label=1.0)
    assert op.late_window("inference-logs", log) == T0
    assert op.late_window("labels", label) == T0  # the prediction's five minutes
    assert op.late_window("labels", unknown) == T0 + 5 * MIN


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_monitor_maps_a_late_event_to_a_time_at_or_before_it(name: str) -> None:
    """Every operator of the registry answers for every source it reads: a window
    start at or before the event (a window that contains it)."""
    operator_type, config_type = OPERATORS[name]
    op = operator_type(config_type())
    events = {
        "impressions": Impression(impression_id="i", ts=T0 + 61_234, campaign_id="c", user_id="u"),
        "clicks": Click(
            click_id="k", impression_id="i", ts=T0 + 61_234, campaign_id="c", user_id="u"
        ),
        "inference-logs": InferenceLog(
            request_id="r",
            ts=T0 + 61_234,
            model_id="m",
            model_version="v",
            features={},
            prediction=1.0,
            latency_ms=1.0,
            status="ok",
        ),
        "sensor-readings": SensorReading(ts=T0 + 61_234, sensor_id="s", values={"t": 1.0}),
        "labels": LabelEvent(request_id="r", ts=T0 + 61_234, model_id="m", label=1.0),
        "conversions": Conversion(
            conversion_id="v", click_id="k", ts=T0 + 61_234, campaign_id="c", user_id="u"
        ),
    }
    for source in operator_type.sources_for(config_type()):
        start = op.late_window(source, events[source])
        assert isinstance(start, int)
        assert T0 <= start <= T0 + 61_234, (name, source, start)
