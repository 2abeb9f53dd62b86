"""The relation table at the scale the project names (issue 18: 50 k sensors on one
partition): with the defaults, every sensor's alert is hinted with its site, as the
alert is hinted when it is made (`RelationLearner.hints`, operators/task.py). With a
bound below the live sensors, the least recently seen lose theirs (the documented
trade, docs/causes.md)."""

from __future__ import annotations

from operators.causes import RELATION_MAX_KEYS, RelationLearner
from streams.config import CausesSettings
from tests.test_relations_fast import RELS, event

SITE = RELS[1]
SENSORS = 50_000


def readings(round_: int) -> list[object]:
    """One reading per sensor, sensors in a fixed order, one second a round."""
    return [
        event(SITE, f"s{k}", f"site-{k % 97}", round_ * 1_000 + k // 1_000) for k in range(SENSORS)
    ]


def test_defaults_keep_every_sensor_of_a_50k_fleet() -> None:
    assert CausesSettings().relation_max_keys == RELATION_MAX_KEYS
    learner = RelationLearner(relations=RELS)
    for round_ in range(2):
        learner.observe(SITE.source, readings(round_))
    at = 2_000
    assert all(learner.hints(f"s{k}", at) == {"site": f"site-{k % 97}"} for k in range(SENSORS))


def test_a_bound_below_the_fleet_drops_the_least_recently_seen() -> None:
    learner = RelationLearner(max_keys=100, relations=RELS)
    learner.observe(SITE.source, [event(SITE, f"s{k}", "a", k) for k in range(150)])
    assert learner.hints("s49", 200) == {}  # dropped: seen before the last 100
    assert learner.hints("s50", 200) == {"site": "a"}
    assert len(learner.seen[SITE.hint]) == 100
