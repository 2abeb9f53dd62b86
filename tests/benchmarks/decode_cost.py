"""CPU per message of the typed decode (`Decoder.decode_batch`) on the simulator's messages.

    .venv/bin/python -m tests.benchmarks.decode_cost --kind drift --events 200000
    .venv/bin/python -m tests.benchmarks.decode_cost --kind ctr --batch 1250

Generates the messages of one benchmark dataset with the simulator
(`tests/benchmarks/dataset.py`: the product's real wire format), groups them by
topic in batches of `--batch` (one poll's messages of a topic, as the pipeline
hands them to the decoder), and times `decode_batch` over all of them; reports
the fastest of `--repeats` passes per topic (the least disturbed figure on a
shared machine) in µs of CPU per message. Nothing is rejected in this data: it
measures the common path, the valid message.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from confluent_kafka import Message

from schemas.decode import Decoder, Rejection
from streams.cli.simulate import Simulator
from tests.benchmarks.dataset import scenario

DEFAULT_KEYS = {"ctr": 100, "sensor": 100, "drift": 4}


def messages_of(kind: str, n: int, keys: int) -> dict[str, list[Message]]:
    """The simulator's first n messages of a dataset, per logical topic, in order, as
    confluent_kafka Messages (what the worker hands the decoder)."""
    out: dict[str, list[Message]] = {}
    count = 0
    for topic, key, value in Simulator(scenario(kind, n, keys)).messages():
        if topic == "__tick__":
            continue
        group = out.setdefault(topic, [])
        group.append(
            Message(topic=topic, partition=0, offset=len(group), key=key.encode(), value=value)
        )
        count += 1
        if count >= n:
            break
    return out


def one_pass(decoder: Decoder[Any], messages: list[Message], batch: int) -> float:
    rejected: list[Rejection] = []

    def reject(m: Any, r: Rejection) -> None:
        rejected.append(r)

    started = time.process_time()
    for i in range(0, len(messages), batch):
        decoder.decode_batch(messages[i : i + batch], reject)
    elapsed = time.process_time() - started
    if rejected:
        raise SystemExit(f"{len(rejected)} messages rejected, e.g. {rejected[0]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(DEFAULT_KEYS), default="drift")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=None, help="default: as the benchmark")
    parser.add_argument("--batch", type=int, default=1250, help="messages per decode_batch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    keys = args.keys or DEFAULT_KEYS[args.kind]
    by_topic = messages_of(args.kind, args.events, keys)
    print(f"{args.kind}: {sum(map(len, by_topic.values())):,} messages, batches of {args.batch}")
    print(f"{'topic':<18} {'µs CPU / message, min of ' + str(args.repeats):>32}")
    for topic, messages in by_topic.items():
        decoder: Decoder[Any] = Decoder(topic)
        best = min(one_pass(decoder, messages, args.batch) for _ in range(args.repeats))
        print(f"{topic:<18} {best / len(messages) * 1e6:>32.3f}")


if __name__ == "__main__":
    main()
