"""The ceiling: a bare confluent-kafka consumer that decodes every message and nothing else.

Batch `consume(5000)`, `orjson.loads` of every value (the fastest general
decoder here: ~0.9 µs for a 240-byte message; msgspec's untyped decode is
no faster), no processing, no output. No Python consumer of these topics on
this machine can be faster than this loop; every other contender is read
against it.
"""

from __future__ import annotations

import orjson
from confluent_kafka import Consumer

from tests.benchmarks.contenders.common import Clock, Spec, consumer_config, write_result


def main() -> None:
    spec = Spec.from_argv()
    consumer = Consumer(consumer_config(spec))
    loads = orjson.loads
    clock = Clock()
    consumer.subscribe(list(spec.dataset.topics.values()))
    events = 0
    total = spec.dataset.events  # a fresh group reads each message once: counting is exact
    decoded_bytes = 0
    while events < total:
        batch = consumer.consume(5000, 0.5)
        if batch and not clock.started:
            clock.start()
        for message in batch:
            value = message.value()
            loads(value)
            decoded_bytes += len(value)
        events += len(batch)
    clock.stop()
    consumer.close()
    write_result(spec, clock, events, bytes=decoded_bytes)


if __name__ == "__main__":
    main()
