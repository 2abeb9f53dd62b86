"""One receiver's queue: its pending jobs, one sender, retries with backoff.

Each receiver has its own queue and task, so a receiver that is down or slow
delays only its own alerts. A failed attempt is retried after
    delay(n) = min(retry_max_s, retry_initial_s * 2**(n-1)) * U(0.5, 1)
("equal jitter": exponential, bounded, and spread so that workers retrying
the same receiver do not hit it in step); the oldest job is tried first.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from streams.delivery import metrics
from streams.delivery.http import DeliveryError

log = logging.getLogger("streamwatch.delivery")

Job = dict[str, Any]


def backoff(failures: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait after the n-th failure in a row: in [base/2, base], base =
    1, 2, 4, 8, 8, 8 here (capped).

    >>> rng = random.Random(1)
    >>> [round(backoff(n, 1, 8, rng), 2) for n in (1, 2, 3, 4, 5, 6)]
    [0.57, 1.85, 3.53, 5.02, 5.98, 5.8]
    """
    base = min(max_s, initial_s * 2 ** max(0, failures - 1))
    return base * rng.uniform(0.5, 1.0)


class ReceiverQueue:
    def __init__(
        self,
        name: str,
        send: Callable[[Job], Awaitable[None]],
        finished: Callable[[Job], Awaitable[None]],
        retry_initial_s: float,
        retry_max_s: float,
    ) -> None:
        self.name = name
        self.send = send
        self.finished = finished  # called once a job is delivered (or dropped): mark it done
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.pending: dict[bytes, Job] = {}  # insertion order = queue order
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()  # held while talking to the receiver
        self.failures = 0  # in a row
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.rng = random.Random()
        # read at scrape time: always the queue's present state
        metrics.PENDING.labels(name).set_function(lambda: len(self.pending))
        metrics.OLDEST.labels(name).set_function(self.oldest_age_s)

    def add(self, key: bytes, job: Job) -> None:
        if key not in self.pending:
            self.pending[key] = job
            self.wake.set()

    def drop_partition(self, partition: int) -> None:
        """The partition went to another worker, which replays its jobs."""
        for key in [k for k, j in self.pending.items() if j["partition"] == partition]:
            del self.pending[key]

    def oldest_age_s(self) -> float:
        if not self.pending:
            return 0.0
        oldest = min(job["queued_at"] for job in self.pending.values())
        return max(0.0, time.time() - oldest / 1000)

    def status(self) -> dict[str, Any]:
        return {
            "state": "failing" if self.failures else "ok",
            "pending": len(self.pending),
            "oldest_pending_s": round(self.oldest_age_s(), 3),
            "failures_in_a_row": self.failures,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        while True:
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
                continue
            key, job = next(iter(self.pending.items()))
            try:
                async with self.lock:
                    await self.send(job)
            except (DeliveryError, ValueError) as exc:
                self.failures += 1
                self.last_error = str(exc)
                metrics.FAILURES.labels(self.name).inc()
                delay = backoff(self.failures, self.retry_initial_s, self.retry_max_s, self.rng)
                log.warning(
                    "delivery to %s failed (%d in a row, %d pending), retry in %.1f s: %s",
                    self.name,
                    self.failures,
                    len(self.pending),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                continue
            except Exception:
                # not the receiver's failure: this job cannot be sent (a bug, or data no
                # format can render); retrying cannot help and must not block the others
                log.exception("delivery to %s: dropping job %r", self.name, key)
                metrics.DROPPED.labels(self.name).inc()
            else:
                self.failures, self.last_error, self.last_success = 0, None, time.time()
                metrics.DELIVERED.labels(self.name).inc()
            self.pending.pop(key, None)
            await self.finished(job)
