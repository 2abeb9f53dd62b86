"""Two workers in one group share the delivery agents' partitions: pending jobs move with
their partitions when a worker joins and when one leaves, and every alert reaches the
receiver once. Real broker, real worker processes, a real HTTP receiver."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streams.connectors.embedded import EmbeddedBroker
from tests.delivery_services import DeliveryDeployment, Webhooks, alert_event, publish
from tests.harness import WorkerProcess

pytestmark = pytest.mark.integration

TOML = """
[delivery]
retry_initial_s = 0.3
retry_max_s = 1

[[delivery.receivers]]
name = "archive"
type = "generic"
url = "${ARCHIVE_URL}"

[[delivery.routes]]
receivers = ["archive"]
"""


def wait(check: Any, timeout: float, what: str, workers: list[WorkerProcess]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            w._check_alive()
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(w.log() for w in workers))


def partitions(worker: WorkerProcess) -> list[int]:
    return worker.wait_http("/health", 10)["delivery"]["partitions"]


def test_jobs_follow_their_partitions(broker: EmbeddedBroker, tmp_path: Path) -> None:
    hooks = Webhooks()
    env = {"ARCHIVE_URL": hooks.url("/archive")}
    started: list[WorkerProcess] = []

    def delivered() -> Counter[str]:
        return Counter(b["alert_id"] for b in hooks.bodies("/archive"))

    try:
        a = DeliveryDeployment(tmp_path, broker.bootstrap, "dlv-so", delivery_toml=TOML, env=env)
        b = DeliveryDeployment(
            tmp_path, broker.bootstrap, "dlv-so-b", shared=a, delivery_toml=TOML, env=env
        )
        wa = WorkerProcess(a)
        started.append(wa)
        wa.start()
        first = [alert_event(i, f"cmp-{i}") for i in range(8)]
        publish(a, first)
        wait(lambda: len(delivered()) == 8, 60, "the first alerts", [wa])
        assert partitions(wa) == [0, 1, 2, 3]

        # the receiver goes down; alerts wait in A; B joins and takes half the partitions
        hooks.down = {"/archive"}
        second = [alert_event(i, f"cmp-{i}") for i in range(8, 16)]
        publish(a, second)
        wait(
            lambda: (
                partitions(wa) == [0, 1, 2, 3]
                and wa.wait_http("/health", 10)["delivery"]["receivers"]["archive"]["pending"] == 8
            ),
            60,
            "eight pending at A",
            [wa],
        )
        wb = WorkerProcess(b)
        started.append(wb)
        wb.start()
        wait(
            lambda: (
                sorted(partitions(wa) + partitions(wb)) == [0, 1, 2, 3]
                and partitions(wa) != []
                and partitions(wb) != []
            ),
            90,
            "the partitions split between A and B",
            [wa, wb],
        )
        pending = [
            w.wait_http("/health", 10)["delivery"]["receivers"]["archive"]["pending"]
            for w in (wa, wb)
        ]
        assert sum(pending) == 8 and all(pending), pending  # the jobs moved with partitions
        hooks.down = set()
        wait(lambda: len(delivered()) == 16, 60, "the waiting alerts", [wa, wb])

        # A leaves; B takes everything over
        assert wa.stop() == 0
        wait(lambda: partitions(wb) == [0, 1, 2, 3], 90, "B owning every partition", [wb])
        third = [alert_event(i, f"cmp-{i}") for i in range(16, 24)]
        publish(a, third)
        wait(lambda: len(delivered()) == 24, 60, "the alerts after A left", [wb])
        time.sleep(3)  # time for any duplicate to show up
        assert delivered() == Counter(x["alert_id"] for x in first + second + third)
        assert wb.stop() == 0
    finally:
        for w in started:
            w.kill()
        hooks.close()
