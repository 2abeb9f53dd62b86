"""Test-only fault injection: unexpected failures inside the real worker.

TEST ONLY. Nothing here is active unless the environment variable
`STREAMWATCH_TEST_FAULTS` is set when the worker starts (it is read once, at
start-up; no request, message or configuration file can arm a fault). Its
value is a comma-separated list of the faults that may be triggered:

    decode    the batch loop raises (an unexpected bug above per-message handling)
    sink      the ClickHouse writer raises something that is not a ClickHouse error
    producer  the Kafka producer raises a fatal KafkaException on its next send
    timer     the periodic tick raises
    stall     the polling thread blocks until the worker stops (a hung consumer:
              the worker stays up but polls no more; /health, /health/live and
              the poll-age metric must show it)
    hang      the polling thread blocks for good, even through a stop (a call
              into a client library that never returns): only the exit
              watchdog ends the process
    clickhouse  the /debug/clickhouse?fail=1|0 endpoint, which makes every
              ClickHouse insert fail (an outage; chDB cannot be stopped alone),
              also needs `debug_endpoints = true` in the configuration

Each other armed fault fires once, after a message whose header
`streamwatch-test-fault` names it has been consumed, so a test can first see
a healthy worker and then break it at a moment it chooses. Production
deployments never set the variable; `streamwatch run` logs a warning when it is.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("streamwatch.faults")

ENV = "STREAMWATCH_TEST_FAULTS"
HEADER = "streamwatch-test-fault"
KNOWN = frozenset({"decode", "sink", "producer", "timer", "stall", "hang", "clickhouse"})


class InjectedFault(RuntimeError):
    """An injected failure (what an unforeseen bug would raise)."""


class Faults:
    """The faults armed at start-up and those triggered since (each fires once)."""

    def __init__(self, armed: frozenset[str] = frozenset()) -> None:
        unknown = armed - KNOWN
        if unknown:
            raise ValueError(
                f"{ENV}: unknown fault(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(KNOWN))}"
            )
        self.armed = armed
        self._triggered: set[str] = set()
        self._lock = threading.Lock()  # the polling thread and the event loop both fire

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Faults:
        """The faults named by STREAMWATCH_TEST_FAULTS (none when it is unset).

        >>> Faults.from_env({}).armed
        frozenset()
        >>> sorted(Faults.from_env({"STREAMWATCH_TEST_FAULTS": "sink, timer"}).armed)
        ['sink', 'timer']
        >>> Faults.from_env({"STREAMWATCH_TEST_FAULTS": "everything"})
        Traceback (most recent call last):
        ...
        ValueError: STREAMWATCH_TEST_FAULTS: unknown fault(s) everything; known: ...
        """
        value = (os.environ if env is None else env).get(ENV, "")
        armed = frozenset(name.strip() for name in value.split(",") if name.strip())
        faults = cls(armed)
        if armed:
            log.warning("TEST-ONLY fault injection armed (%s=%s)", ENV, ",".join(sorted(armed)))
        return faults

    def scan(self, messages: Sequence[Any]) -> None:
        """Trigger the armed faults named by a message header (only called when armed)."""
        for message in messages:
            for key, value in message.headers() or ():
                if key == HEADER and value is not None:
                    name = value.decode(errors="replace")
                    if name in self.armed:
                        log.warning("TEST-ONLY fault %r triggered", name)
                        with self._lock:
                            self._triggered.add(name)

    def fire(self, name: str) -> bool:
        """True once after `name` was triggered."""
        if not self._triggered:
            return False
        with self._lock:
            if name in self._triggered:
                self._triggered.discard(name)
                return True
        return False


class FaultyWriter:
    """The ClickHouse writer, raising a non-ClickHouse error once `sink` fires."""

    def __init__(self, writer: Any, faults: Faults) -> None:
        self._writer = writer
        self._faults = faults

    def insert(self, table: str, rows: Any) -> float:
        if self._faults.fire("sink"):
            raise InjectedFault(f"injected sink failure writing {table}")
        return self._writer.insert(table, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:  # e.g. fail_writes, set by the outage tests' debug endpoint
            setattr(self._writer, name, value)


class FaultyProducer:
    """The Kafka producer, raising a fatal KafkaException once `producer` fires."""

    def __init__(self, producer: Any, faults: Faults) -> None:
        self._producer = producer
        self._faults = faults

    def produce(self, *args: Any, **kwargs: Any) -> None:
        if self._faults.fire("producer"):
            from confluent_kafka import KafkaError, KafkaException

            raise KafkaException(
                KafkaError(KafkaError._FATAL, "injected fatal producer error", fatal=True)
            )
        self._producer.produce(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)
