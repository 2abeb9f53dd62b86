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
    (backpressure) and that retry loop still turns, or it is taking a checkpoint
    (input waits for it, in a thread: streams/runtime/cycle.py) that began less
    than `health_stall_s` ago. A large state's checkpoint may take longer than the
    poll age allows (tens of seconds at tens of thousands of sensors a worker:
    docs/operations.md, "Checkpoint size"); one past `health_stall_s` is stuck.

Details that are not a 503: `unjudgeable` lists, per monitor, the series whose
configured window can never hold the readings a detector needs (issue 14: e.g.
5-minute readings in a 300 s window with min_points 30, adapt_window off). That
is a configuration to fix, not a worker to take out of rotation or restart:
every other series and monitor works, and a restart would change nothing. It is
also a metric (`streamwatch_unjudgeable_series`, alerted on in
deploy/prometheus/alerts.yml) and a warning in the log, once per series.

"Input waits" comes from the broker's high watermarks (streams/runtime/source.py);
Tansu reports them too low, so there a short tail of waiting input may go
unseen; the other members come from the broker's group description, which
Tansu leaves empty (so there only waiting input counts). The poll age does
not depend on the broker's figures.
"""

from __future__ import annotations

import time
from typing import Any

# series named per monitor in /health (the count is always whole)
UNJUDGEABLE_SHOWN = 50


def unjudgeable_series(pipeline: Any) -> dict[str, set[str]]:
    """Per monitor whose operator reports them (`unjudgeable`, the sensor monitor),
    the series it cannot judge, over the partitions this worker owns."""
    out: dict[str, set[str]] = {}
    for (monitor, _), task in list(pipeline.tasks.items()):
        series = getattr(task.operator, "unjudgeable", None)
        if series is not None:
            out.setdefault(monitor, set()).update(series)
    return out


def _unjudgeable_detail(pipeline: Any) -> dict[str, Any]:
    return {
        monitor: {"count": len(series), "series": sorted(series)[:UNJUDGEABLE_SHOWN]}
        for monitor, series in sorted(unjudgeable_series(pipeline).items())
        if series
    }


def last_poll_age(worker: Any, now: float | None = None) -> float:
    now = time.monotonic() if now is None else now
    return max(0.0, now - worker.source.last_poll)


def _paused_and_turning(worker: Any, now: float) -> bool:
    runtime = worker.runtime
    bound = worker.settings.health_poll_age_s
    return runtime.paused_since is not None and now - runtime.paused_beat < bound


def _checkpointing(worker: Any, now: float) -> float | None:
    """Seconds the checkpoint being taken has run, when it began less than
    `health_stall_s` ago; else None."""
    since = worker.runtime.checkpointing_since
    if since is None or now - since >= worker.settings.health_stall_s:
        return None
    return now - since


def _waits_on_purpose(worker: Any, now: float) -> bool:
    """Whether the poll waits on purpose: backpressure whose loop turns, or a checkpoint
    in progress."""
    return _paused_and_turning(worker, now) or _checkpointing(worker, now) is not None


def readiness(worker: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /health."""
    now = time.monotonic()
    runtime, source, s = worker.runtime, worker.source, worker.settings
    partitions = sorted(worker.pipeline.owned_partitions())
    age = last_poll_age(worker, now)
    problems: list[str] = []
    if age > s.health_poll_age_s and not _waits_on_purpose(worker, now):
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
    checkpointing = _checkpointing(worker, now)
    body = {
        "status": status,
        "sink_error": runtime.last_error,
        "problems": problems,
        "buffered_rows": worker.sinks.buffered,
        "partitions": partitions,
        "watermarks": runtime.pipeline.watermarks(),
        "last_poll_age_s": round(age, 3),
        "checkpointing_s": None if checkpointing is None else round(checkpointing, 3),
        "input_waiting": waiting,
        "members_elsewhere": source.members_elsewhere,
        "unjudgeable": _unjudgeable_detail(runtime.pipeline),
    }
    return (200 if status == "ok" else 503), body


def liveness(worker: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /health/live."""
    now = time.monotonic()
    age = last_poll_age(worker, now)
    runtime = worker.runtime
    if runtime.failure is not None:
        return 503, {"status": "failed", "error": runtime.last_error, "last_poll_age_s": age}
    if age > worker.settings.health_poll_age_s and not _waits_on_purpose(worker, now):
        return 503, {"status": "stalled", "last_poll_age_s": round(age, 3)}
    body: dict[str, Any] = {"status": "ok", "last_poll_age_s": round(age, 3)}
    checkpointing = _checkpointing(worker, now)
    if checkpointing is not None:
        body["checkpointing_s"] = round(checkpointing, 3)
    return 200, body
