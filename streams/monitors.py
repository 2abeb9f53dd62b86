"""Which monitors run, on which topics: the list the worker wires up.

Each monitor is an operator from `operators/` plus the rules of its alert
kind; adding a monitor is adding an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from operators.ctr import CtrOperator
from operators.rules import RuleEngine
from operators.task import MonitorTask
from streams.config import Settings


@dataclass(frozen=True)
class MonitorSpec:
    name: str
    # Kafka topic for each of the operator's logical sources, in its order
    topics: dict[str, str]
    make_task: Callable[[], MonitorTask]


def build_monitors(settings: Settings) -> list[MonitorSpec]:
    idle_ms = round(settings.idle_timeout_s * 1000)

    def engine(kind: str) -> RuleEngine:
        return RuleEngine(r.rule() for r in settings.rules if r.kind == kind)

    ctr = settings.ctr
    return [
        MonitorSpec(
            name="ctr",
            topics={"impressions": settings.topics.impressions, "clicks": settings.topics.clicks},
            make_task=lambda: MonitorTask(
                CtrOperator(ctr.operator_config()),
                engine("ctr"),
                round(ctr.lateness_s * 1000),
                idle_ms,
            ),
        ),
    ]
