"""Synthetic traffic with switchable incidents, on synthetic event time.

The generator walks event time one second at a time and yields
`(topic, key, value)` messages in (nearly) time order: impressions of many
campaigns and users, each campaign with its own base CTR, A/B variants for
the experiment campaigns, clicks that follow their impression after a random
delay (a few duplicates and orphans, as real click trackers produce).

Incidents carry ground truth (`Incident.start_s` .. `end_s`) so tests and the
demo can check what should fire:

    ctr_drop   the campaign's CTR is multiplied by `factor` during the incident
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

Message = tuple[str, str, bytes]  # topic, key, value


@dataclass(frozen=True)
class Incident:
    kind: str  # ctr_drop
    target: str  # campaign id
    start_s: float  # seconds after the simulation start
    duration_s: float
    factor: float = 0.3

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass
class Scenario:
    start_ms: int
    duration_s: int = 2400
    campaigns: int = 10
    users: int = 20_000
    impressions_per_s: float = 60.0
    experiment_campaigns: int = 2  # the first N campaigns run an A/B experiment
    click_delay_mean_s: float = 20.0
    duplicate_click_rate: float = 0.02
    orphan_click_rate: float = 0.002
    seed: int = 42
    incidents: list[Incident] = field(default_factory=list)

    def campaign_ids(self) -> list[str]:
        return [f"cmp-{i:03d}" for i in range(self.campaigns)]


class Simulator:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.rng = random.Random(scenario.seed)
        ids = scenario.campaign_ids()
        self.base_ctr = {c: self.rng.uniform(0.02, 0.06) for c in ids}
        weights = [self.rng.uniform(0.5, 1.5) for _ in ids]
        total = sum(weights)
        self.campaigns = ids
        self.cum_weights = [sum(weights[: i + 1]) / total for i in range(len(ids))]
        self.counts: dict[str, int] = {}

    def messages(self) -> Iterator[Message]:
        s, rng = self.s, self.rng
        pending: list[tuple[int, int, bytes, str]] = []  # (ts, seq, value, key) of clicks
        seq = 0
        for second in range(s.duration_s):
            base = s.start_ms + second * 1000
            n = _poisson(rng, s.impressions_per_s)
            batch: list[tuple[int, Message]] = []
            for _ in range(n):
                ts = base + rng.randrange(1000)
                campaign = rng.choices(self.campaigns, cum_weights=self.cum_weights)[0]
                seq += 1
                imp_id = f"imp-{s.seed}-{seq}"
                user = f"user-{rng.randrange(s.users)}"
                imp: dict[str, Any] = {
                    "impression_id": imp_id,
                    "ts": ts,
                    "campaign_id": campaign,
                    "user_id": user,
                    "ad_id": f"ad-{rng.randrange(5)}",
                }
                if self.campaigns.index(campaign) < s.experiment_campaigns:
                    imp["experiment"] = f"exp-{campaign}"
                    imp["variant"] = "A" if rng.random() < 0.5 else "B"
                batch.append((ts, ("impressions", campaign, orjson.dumps(imp))))
                if rng.random() < self._ctr(campaign, second):
                    delay = min(int(rng.expovariate(1 / s.click_delay_mean_s) * 1000), 590_000)
                    clicks = 2 if rng.random() < s.duplicate_click_rate else 1
                    for c in range(clicks):
                        click = {
                            "click_id": f"clk-{s.seed}-{seq}-{c}",
                            "impression_id": imp_id,
                            "ts": ts + delay + c * 1500,
                            "campaign_id": campaign,
                            "user_id": user,
                        }
                        heapq.heappush(
                            pending, (click["ts"], seq * 4 + c, orjson.dumps(click), campaign)
                        )
                if rng.random() < s.orphan_click_rate:
                    orphan = {
                        "click_id": f"orphan-{s.seed}-{seq}",
                        "impression_id": f"unknown-{seq}",
                        "ts": ts,
                        "campaign_id": campaign,
                        "user_id": user,
                    }
                    batch.append((ts, ("clicks", campaign, orjson.dumps(orphan))))
            horizon = base + 1000
            while pending and pending[0][0] < horizon:
                ts, _, value, key = heapq.heappop(pending)
                batch.append((ts, ("clicks", key, value)))
            batch.sort(key=lambda item: item[0])
            for _, message in batch:
                self.counts[message[0]] = self.counts.get(message[0], 0) + 1
                yield message
            yield ("__tick__", "", str(horizon).encode())

    def _ctr(self, campaign: str, second: int) -> float:
        ctr = self.base_ctr[campaign]
        for incident in self.s.incidents:
            if (
                incident.kind == "ctr_drop"
                and incident.target == campaign
                and incident.active(second)
            ):
                ctr *= incident.factor
        return ctr


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method is slow for large lambda; a rounded normal is close enough there
    if lam > 30:
        return max(0, round(rng.gauss(lam, lam**0.5)))
    threshold, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


def publish(
    producer: Any,
    simulator: Simulator,
    speed: float | None,
    progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """Produce the simulator's messages; `speed` event-seconds per wall second (None: max)."""
    started = time.monotonic()
    sim_start = simulator.s.start_ms
    sent = 0
    for topic, key, value in simulator.messages():
        if topic == "__tick__":
            horizon = int(value)
            elapsed_s = (horizon - sim_start) / 1000
            if progress:
                progress(int(elapsed_s), simulator.s.duration_s)
            if stop and stop():
                break
            if speed:
                delay = elapsed_s / speed - (time.monotonic() - started)
                if delay > 0:
                    producer.poll(0)
                    time.sleep(delay)
            continue
        while True:
            try:
                producer.produce(topic, value, key=key.encode())
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)
    return dict(simulator.counts)
