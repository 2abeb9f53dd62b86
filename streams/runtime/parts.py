"""What the worker's add-ons see of it: the parts `web`, `correlate` and `sql_rules` use.

The worker (`streams.runtime.worker`) builds these add-ons and hands itself to them; they
are typed against this Protocol, not against `Worker`, so they never import the module that
imports them (the web/worker import cycle of issue 12). `Worker` satisfies it structurally.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from streams.config import Settings
    from streams.runtime.cycle import Runtime
    from streams.runtime.faults import Faults
    from streams.runtime.pipeline import Pipeline
    from streams.runtime.sinks import Sinks


class WorkerParts(Protocol):
    """The attributes of a running `Worker` its pages, causes and SQL rules read."""

    settings: Settings
    app: Any  # the faust.App (pages, timers)
    pipeline: Pipeline
    runtime: Runtime
    sinks: Sinks
    faults: Faults
    producer: Any  # confluent_kafka.Producer, or its test-only faulty wrapper
    writer: Any  # streams.connectors.clickhouse.Writer, or its test-only faulty wrapper
