"""`streams.connectors.threads`: a thread's await ends whatever the call raises.

confluent-kafka's `Consumer.close()` can raise a `KafkaError` object during a rebalance,
which is not an exception class: `asyncio.to_thread` then never returns (the pool's
thread dies; reproduced by hand with the same raise: the test process then hangs at
exit on the dead thread, so it is not a test here). The raise is made as the C extension
makes it, with CPython's own `PyErr_SetObject`."""

from __future__ import annotations

import asyncio
import ctypes
import logging
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.connectors.threads import guarded, in_thread

_set_error = ctypes.pythonapi.PyErr_SetObject
_set_error.argtypes = [ctypes.py_object, ctypes.py_object]
_set_error.restype = None


def raise_kafka_error_object() -> None:
    """Raise what confluent-kafka's close() raised in CI: a KafkaError, not an exception."""
    _set_error(KafkaError, KafkaError(KafkaError._DESTROY))


def test_in_thread_ends_with_a_kafka_exception() -> None:
    async def main() -> None:
        await asyncio.wait_for(in_thread(raise_kafka_error_object), 5.0)

    with pytest.raises(KafkaException) as raised:
        asyncio.run(main())
    error = raised.value.args[0]
    assert isinstance(error, KafkaError) and error.code() == KafkaError._DESTROY


def test_guarded_passes_results_and_real_exceptions_through() -> None:
    assert guarded(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        guarded(divmod, 1, 0)
    assert asyncio.run(in_thread(divmod, 9, 4)) == (2, 1)


def test_the_source_closes_its_consumer_through_such_a_raise(caplog: Any) -> None:
    """`KafkaSource._close`: the close's odd raise is logged, and the stop goes on."""
    from streams.runtime.source import KafkaSource

    class Closing:
        def commit(self, *args: Any, **kwargs: Any) -> None: ...

        def close(self) -> None:
            raise_kafka_error_object()

    source = KafkaSource.__new__(KafkaSource)
    source.consumer = Closing()
    source.pending_commit = {}
    with caplog.at_level(logging.WARNING, logger="streamwatch.source"):
        asyncio.run(in_thread(source._close))
    assert "closing the consumer" in caplog.text


def test_a_cancelled_await_of_in_thread_to_end_waits_for_the_call_and_its_lock() -> None:
    """`in_thread_to_end`: cancelled while its call runs, the caller's cancellation goes
    on only after the call ended, so a lock held around it is not released early (with
    `in_thread` the lock would be taken 0.5 s before the call ends: checked)."""
    import threading
    import time

    from streams.connectors.threads import in_thread_to_end

    ended: list[float] = []
    started = threading.Event()

    def slow() -> int:
        started.set()
        time.sleep(0.6)
        ended.append(time.monotonic())
        return 1

    async def main() -> tuple[float, bool]:
        lock = asyncio.Lock()

        async def holder() -> None:
            async with lock:
                await in_thread_to_end(slow)

        task = asyncio.create_task(holder())
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        async with lock:
            taken = time.monotonic()
        cancelled = False
        try:
            await task
        except asyncio.CancelledError:
            cancelled = True
        return taken, cancelled

    taken, cancelled = asyncio.run(main())
    assert cancelled and ended and taken >= ended[0]
    assert asyncio.run(in_thread_to_end(divmod, 9, 4)) == (2, 1)
