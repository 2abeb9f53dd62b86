"""What /health and /health/live answer: is this worker doing its job?

/health (readiness; 503 takes the worker out of rotation, Prometheus alerts):
    failed     an unhandled failure: the worker is exiting to be restarted
    degraded   sink writes fail (retried with backoff; consumption pauses at the bound)
    stalled    no poll of the broker for `health_poll_age_s`; or input waits while
               the watermark has not moved for `health_stall_s`; or this worker
               has had no partition for `health_stall_s` while input waits or
               other members of its group hold partitions (a replica beyond the
               partition count is not ready: it would do nothing)
/health/live (liveness; 503 makes Kubernetes restart the pod):
    503 after a failure, or when the polling loop has not come back for
    `health_poll_age_s`, unless it is pausing on purpose for ClickHouse
    (backpressure) and that retry loop still turns.

"Input waits" comes from the broker's high watermarks (streams/source.py);
Tansu reports them too low, so there a short tail of waiting input may go
unseen; the other members come from the broker's group description, which
Tansu leaves empty (so there only waiting input counts). The poll age does
not depend on the broker's figures.
"""

from __future__ import annotations

import time
from typing import Any


def last_poll_age(worker: Any, now: float | None = None) -> float:
    now = time.monotonic() if now is None else now
    return max(0.0, now - worker.source.last_poll)


def _paused_and_turning(worker: Any, now: float) -> bool:
    runtime = worker.runtime
    bound = worker.settings.health_poll_age_s
    return runtime.paused_since is not None and now - runtime.paused_beat < bound


def readiness(worker: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /health."""
    now = time.monotonic()
    runtime, source, s = worker.runtime, worker.source, worker.settings
    partitions = sorted(worker.pipeline.owned_partitions())
    age = last_poll_age(worker, now)
    problems: list[str] = []
    if age > s.health_poll_age_s and not _paused_and_turning(worker, now):
        problems.append(f"no poll of the broker for {age:.0f} s")
    waiting = source.waiting
    if waiting and partitions and now - runtime.watermark_moved > s.health_stall_s:
        problems.append(
            f"{waiting} messages wait but the watermark has not moved for "
            f"{now - runtime.watermark_moved:.0f} s"
        )
    unassigned = source.unassigned_since
    idle_for = now - unassigned if unassigned is not None else 0.0
    if not partitions and idle_for > s.health_stall_s:
        if waiting:
            problems.append(
                f"no partition assigned for {idle_for:.0f} s while {waiting} messages wait"
            )
        elif source.members_elsewhere:
            problems.append(
                f"no partition assigned for {idle_for:.0f} s while {source.members_elsewhere} "
                "other members of the group consume"
            )
    if runtime.failure is not None:
        status = "failed"
    elif not runtime.healthy:
        status = "degraded"
    elif problems:
        status = "stalled"
    else:
        status = "ok"
    body = {
        "status": status,
        "sink_error": runtime.last_error,
        "problems": problems,
        "buffered_rows": worker.sinks.buffered,
        "partitions": partitions,
        "watermarks": runtime.pipeline.watermarks(),
        "last_poll_age_s": round(age, 3),
        "input_waiting": waiting,
        "members_elsewhere": source.members_elsewhere,
    }
    return (200 if status == "ok" else 503), body


def liveness(worker: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /health/live."""
    now = time.monotonic()
    age = last_poll_age(worker, now)
    runtime = worker.runtime
    if runtime.failure is not None:
        return 503, {"status": "failed", "error": runtime.last_error, "last_poll_age_s": age}
    if age > worker.settings.health_poll_age_s and not _paused_and_turning(worker, now):
        return 503, {"status": "stalled", "last_poll_age_s": round(age, 3)}
    return 200, {"status": "ok", "last_poll_age_s": round(age, 3)}
