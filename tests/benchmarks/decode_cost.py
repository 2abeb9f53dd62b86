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

`--feed` (drift only) also feeds each decoded batch at once to the drift
pipeline's operators, as the worker does (decode a poll's messages of a partition,
then feed every monitor), advancing the watermark by `--lateness-ms` behind the
batch's first event, and reports each operator's CPU per message too: unlike
`tests.benchmarks.operator_cost`, which decodes the whole dataset first, the
operators here read events decoded just before (in the CPU caches, as in the worker).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from confluent_kafka import Message

from operators.base import Operator
from operators.drift import DriftOperator
from operators.service import ServiceOperator
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


def fed_pass(
    decoder: Decoder[Any], messages: list[Message], batch: int, lateness_ms: int
) -> dict[str, float]:
    """CPU seconds of decode_batch and of each operator over all batches, decode first."""
    operators: list[Operator] = [DriftOperator(), ServiceOperator()]
    spent = {"decode_batch": 0.0} | {type(op).__name__: 0.0 for op in operators}

    def reject(m: Any, r: Rejection) -> None:
        raise SystemExit(f"rejected: {r}")

    for i in range(0, len(messages), batch):
        started = time.process_time()
        events, _ = decoder.decode_batch(messages[i : i + batch], reject)
        spent["decode_batch"] += time.process_time() - started
        for op in operators:
            started = time.process_time()
            op.feed(decoder.topic, events)
            op.advance(events[0].ts - lateness_ms)
            op.collect()
            spent[type(op).__name__] += time.process_time() - started
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(DEFAULT_KEYS), default="drift")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=None, help="default: as the benchmark")
    parser.add_argument("--batch", type=int, default=1250, help="messages per decode_batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--feed", action="store_true", help="drift: feed the operators too")
    parser.add_argument("--lateness-ms", type=int, default=5_000)
    args = parser.parse_args()
    if args.feed and args.kind != "drift":
        raise SystemExit("--feed: only with --kind drift")
    keys = args.keys or DEFAULT_KEYS[args.kind]
    by_topic = messages_of(args.kind, args.events, keys)
    print(f"{args.kind}: {sum(map(len, by_topic.values())):,} messages, batches of {args.batch}")
    print(f"{'topic':<18} {'µs CPU / message, min of ' + str(args.repeats):>32}")
    if args.feed:
        messages = by_topic["inference-logs"]
        passes = [
            fed_pass(Decoder("inference-logs"), messages, args.batch, args.lateness_ms)
            for _ in range(args.repeats)
        ]
        for part in passes[0]:
            best = min(p[part] for p in passes)
            print(f"{part:<18} {best / len(messages) * 1e6:>32.3f}")
        return
    for topic, messages in by_topic.items():
        decoder: Decoder[Any] = Decoder(topic)
        best = min(one_pass(decoder, messages, args.batch) for _ in range(args.repeats))
        print(f"{topic:<18} {best / len(messages) * 1e6:>32.3f}")


if __name__ == "__main__":
    main()
