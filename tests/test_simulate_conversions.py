"""The simulator's conversions (v2) and its `cvr_drop` incident."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
import pytest

from schemas.decode import Decoder, Rejection
from schemas.events import KEY_FIELD
from streams.cli.simulate import Incident, Scenario, Simulator, check_incidents

START_MS = 1_767_225_600_000
DROP = Incident("cvr_drop", "exp-cmp-000/B", 300, 600, 0.3)
RUN_S = 4200
SEEN_S = RUN_S - 3300  # a click before this has its conversion inside the run


def _scenario(incidents: tuple[Incident, ...] = (), cvr: float = 0.1) -> Scenario:
    return Scenario(
        start_ms=START_MS,
        duration_s=RUN_S,
        campaigns=3,
        impressions_per_s=80.0,
        incidents=list(incidents),
        cvr=cvr,
        models=0,
        sensors=0,
        regressor_per_s=0,
        labels=False,
    )


@cache
def _messages(
    incidents: tuple[Incident, ...] = (), cvr: float = 0.1
) -> list[tuple[str, str, bytes]]:
    return [m for m in Simulator(_scenario(incidents, cvr)).messages() if m[0] != "__tick__"]


def _events(messages: list, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(v) for t, _, v in messages if t == topic]


def test_conversions_decode_join_their_clicks_and_are_realistic() -> None:
    messages = _messages()
    decoder = Decoder("conversions")
    for topic, key, value in messages:
        if topic == "conversions":
            event = decoder.decode(value, key.encode())
            assert not isinstance(event, Rejection), event
            assert getattr(event, KEY_FIELD["conversions"]) == key
    imps = {e["impression_id"]: e for e in _events(messages, "impressions")}
    clicks = {e["click_id"]: e for e in _events(messages, "clicks")}
    convs = _events(messages, "conversions")
    early = {
        c["impression_id"]
        for c in clicks.values()
        if c["impression_id"] in imps and c["ts"] < START_MS + SEEN_S * 1000
    }
    converted = {clicks[c["click_id"]]["impression_id"] for c in convs} & early
    assert len(converted) / len(early) == pytest.approx(0.1, rel=0.3)  # CVR about 10 %
    delays = []
    for c in convs:
        click = clicks[c["click_id"]]  # every conversion names a click of the stream
        delays.append((c["ts"] - click["ts"]) / 1000)
        assert c["campaign_id"] == click["campaign_id"] and c["value"] > 0
        assert c.get("experiment") == imps[click["impression_id"]].get("experiment")
    assert min(delays) >= 30 and max(delays) <= 3300  # inside the 3,600 s window
    assert sorted(delays)[len(delays) // 2] == pytest.approx(600, rel=0.35)
    values = sorted(c["value"] for c in convs)
    assert values[len(values) // 2] == pytest.approx(40, rel=0.2)


def test_conversions_leave_the_other_topics_unchanged() -> None:
    with_conv, without = _messages(), _messages(cvr=0.0)
    assert not [m for m in without if m[0] == "conversions"]
    assert [m for m in with_conv if m[0] != "conversions"] == without


def test_cvr_drop_lowers_that_arm_only_inside_the_incident() -> None:
    quiet, dropped = _messages(), _messages((DROP,))
    assert [m for m in quiet if m[0] != "conversions"] == [
        m for m in dropped if m[0] != "conversions"
    ]
    imps = {e["impression_id"]: e for e in _events(quiet, "impressions")}
    clicks = {e["click_id"]: e for e in _events(quiet, "clicks")}

    def rates(messages: list) -> dict[tuple[str, bool], float]:
        converted = {
            clicks[c["click_id"]]["impression_id"] for c in _events(messages, "conversions")
        }
        n: dict[tuple[str, bool], list[int]] = {}
        for c in clicks.values():
            if not c["click_id"].endswith("-0") or c["impression_id"] not in imps:
                continue
            i = imps[c["impression_id"]]
            if i.get("experiment") != "exp-cmp-000":
                continue
            inside = DROP.active((i["ts"] - START_MS) / 1000)
            if (c["ts"] - START_MS) / 1000 >= SEEN_S:
                continue  # its conversion may fall after the run's end
            cell = n.setdefault((i["variant"], inside), [0, 0])
            cell[0] += 1
            cell[1] += c["impression_id"] in converted
        return {k: v[1] / v[0] for k, v in n.items()}

    before, after = rates(quiet), rates(dropped)
    assert after[("A", True)] == before[("A", True)]  # the control untouched
    assert after[("B", False)] == before[("B", False)]  # outside the incident untouched
    assert after[("B", True)] == pytest.approx(0.3 * before[("B", True)], abs=0.03)


def test_cvr_drop_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="an experiment's arm"):
        check_incidents(_scenario((Incident("cvr_drop", "exp-cmp-000/C", 0, 10, 0.5),)))
    with pytest.raises(ValueError, match="an experiment's arm"):
        check_incidents(_scenario((DROP,), cvr=0.0))
