"""Blocking client calls run in a thread, with an await that always ends.

`in_thread(fn, *args)` is `asyncio.to_thread(fn, *args)`, except for one failure of
confluent-kafka (2.16.1 here): its `Consumer.close()`, called while a rebalance is in
progress, can raise a `KafkaError` *object* ("Failed to get assignment: Local: Broker
handle destroyed for termination"). `KafkaError` is not an exception class, so the
executor's `except BaseException` misses it, the pool's thread dies with a traceback on
stderr, and the future that `to_thread` awaits never completes: a worker stopping while
the other member of its group left hung until its stop budget ran out (54 s, seen in
CI on tests/test_scaleout.py). Here whatever the call raises ends the await: a
non-exception is re-raised as `KafkaException` carrying it, which the callers handle
like any client error.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaException

T = TypeVar("T")


def guarded(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args); a raised object that is not an exception becomes `KafkaException`."""
    try:
        return fn(*args)
    except BaseException:
        raise
    except:  # noqa: E722 - on purpose: only a bare except matches a non-exception
        raise KafkaException(sys.exc_info()[1]) from None


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`asyncio.to_thread(fn, *args)` whose await ends whatever fn raises (`guarded`)."""
    return await asyncio.to_thread(guarded, fn, *args)


async def in_thread_to_end(fn: Callable[..., T], *args: Any) -> T:
    """`in_thread(fn, *args)`, whose caller, when cancelled, still waits for fn to end
    before the cancellation goes on.

    For a caller that holds a lock over the state fn reads or writes: a checkpoint's
    snapshots and write run in threads under the runtime's lock (streams/runtime/
    cycle.py), and a cancelled await would otherwise release the lock while the thread
    still reads the tasks, so input would be processed beside it (a CTR snapshot even
    fills in the live windows' impression times for the dump's length)."""
    call = asyncio.ensure_future(in_thread(fn, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        while not call.done():  # fn's own outcome is nobody's now; its end is
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([call])
        raise
