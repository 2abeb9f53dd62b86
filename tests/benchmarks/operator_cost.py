"""CPU per event of each monitor's operator alone: decoded events in, no broker, no ClickHouse.

    .venv/bin/python -m tests.benchmarks.operator_cost --kind sensor
    .venv/bin/python -m tests.benchmarks.operator_cost --kind ctr --keys 10000
    .venv/bin/python -m tests.benchmarks.operator_cost --kind quality   # drift data + labels
    .venv/bin/python -m tests.benchmarks.operator_cost --kind sensor --only SensorOperator

Generates one dataset with the benchmark's simulator (`tests/benchmarks/dataset.py`),
decodes it once (untimed), then feeds it to a fresh operator of each monitor of
that pipeline in batches, advancing the watermark after each batch as the worker
does (by `--lateness-ms` behind the batch's first event), and reports the
fastest of `--repeats` passes: on a shared machine the minimum is the figure
least disturbed by other work, which is what comparing two versions of an
operator needs. The end-to-end figures are `tests.benchmarks.bench`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from operators.autoencoder import AutoencoderOperator
from operators.base import Operator
from operators.cluster import ClusterOperator
from operators.ctr import CtrOperator
from operators.drift import DriftOperator
from operators.quality import QualityOperator
from operators.sensor import SensorOperator
from operators.service import ServiceOperator
from schemas.decode import Decoder, Rejection
from streams.cli.simulate import Simulator
from tests.benchmarks.dataset import scenario

OPERATORS: dict[str, tuple[type[Operator], ...]] = {
    "ctr": (CtrOperator,),
    # the autoencoder is on by default since issue 14's follow-up; its figure includes
    # each sensor's one-off warm-up training (~0.5 s) amortised over the run's readings
    "sensor": (SensorOperator, ClusterOperator, AutoencoderOperator),
    "drift": (DriftOperator, ServiceOperator),
    # the drift dataset with its labels (~0.9 per inference log): the quality monitor's
    # cost next to the drift and service monitors' on the same messages
    "quality": (DriftOperator, ServiceOperator, QualityOperator),
}
DEFAULT_KEYS = {"ctr": 100, "sensor": 100, "drift": 4, "quality": 4}


def events_of(kind: str, n: int, keys: int) -> list[tuple[str, Any]]:
    """(logical topic, decoded event) in the simulator's order, n messages."""
    decoders: dict[str, Decoder[Any]] = {}
    out: list[tuple[str, Any]] = []
    sc = scenario("drift" if kind == "quality" else kind, n, keys)
    if kind == "quality":
        sc = dataclasses.replace(sc, labels=True)
    for topic, key, value in Simulator(sc).messages():
        if topic == "__tick__":
            continue
        if topic not in decoders:
            decoders[topic] = Decoder(topic)
        event = decoders[topic].decode(value, key.encode())
        if isinstance(event, Rejection):
            raise SystemExit(f"the simulator produced a rejected {topic} event: {event.error}")
        out.append((topic, event))
        if len(out) >= n:
            break
    return out


def one_pass(
    operator_type: type[Operator], events: list[tuple[str, Any]], batch: int, lateness_ms: int
) -> float:
    op = operator_type()
    sources = set(operator_type.sources)
    started = time.process_time()
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        by_source: dict[str, list[Any]] = {}
        for topic, event in chunk:
            if topic in sources:
                by_source.setdefault(topic, []).append(event)
        for source, evs in by_source.items():
            op.feed(source, evs)
        op.advance(chunk[0][1].ts - lateness_ms)
        op.collect()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(OPERATORS), default="ctr")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=None, help="default: as the benchmark")
    parser.add_argument("--batch", type=int, default=1250, help="events per feed (per poll)")
    parser.add_argument("--lateness-ms", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--only", nargs="+", metavar="OPERATOR", help="these operators of the pipeline alone"
    )
    args = parser.parse_args()
    keys = args.keys or DEFAULT_KEYS[args.kind]
    events = events_of(args.kind, args.events, keys)
    print(f"{args.kind}: {len(events):,} messages, {keys} keys, batches of {args.batch}")
    print(f"{'operator':<18} {'µs CPU / message, min of ' + str(args.repeats):>32}")
    chosen = [o for o in OPERATORS[args.kind] if not args.only or o.__name__ in args.only]
    if not chosen:
        names = ", ".join(o.__name__ for o in OPERATORS[args.kind])
        raise SystemExit(f"--only: none of {args.only} in the {args.kind} pipeline ({names})")
    for operator_type in chosen:
        best = min(
            one_pass(operator_type, events, args.batch, args.lateness_ms)
            for _ in range(args.repeats)
        )
        print(f"{operator_type.__name__:<18} {best / len(events) * 1e6:>32.2f}")


if __name__ == "__main__":
    main()
