"""What joining conversions costs: the CTR operator without and with its conversion join,
and the funnel guardrails on top, on the same ad traffic.

The traffic is the demo's (`streamwatch demo`: 60 impressions/s over 3 campaigns, the
experiments of streams/cli/demo.py, conversions at about 10 % of first clicks) for
`--duration` event-seconds, decoded once (untimed). Each configuration gets fresh
operators, fed in 5-s event-time batches with the watermark advanced after each
batch as the worker does; reported: CPU seconds per 100,000 input events (the
fastest of `--repeats` passes) and the largest checkpoint of the operators' state
(msgpack bytes, as the worker encodes checkpoints; sampled every five minutes of event
time): a proxy of the memory the join holds (clicks wait `conversion_ms` for their
conversions).

    PYTHONPATH=. python -m tests.benchmarks.conversions_cost
    PYTHONPATH=. python -m tests.benchmarks.conversions_cost --conversion-ms 600000
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from typing import Any

import msgspec

from operators.base import Operator
from operators.ctr import CtrConfig, CtrOperator
from operators.funnel import FunnelConfig, FunnelOperator
from schemas.decode import Decoder, Rejection
from streams.cli.demo import DEMO_CONVERSIONS, DEMO_EXPERIMENTS
from streams.cli.simulate import Scenario, Simulator

BATCH_MS = 5_000
SAMPLE_MS = 300_000
START_MS = 1_795_000_200_000


def events(duration_s: int, conversion_ms: int) -> list[tuple[int, list[tuple[str, Any]]]]:
    """The demo's ad traffic as decoded batches: [(batch end, [(topic, event)])];
    conversions as `streamwatch simulate` sends them (within 55 min of the click), or
    as the demo does (within 9 min) for a conversion window shorter than an hour."""
    conversions: dict[str, float] = (
        {"cvr": 0.1} if conversion_ms >= 3_600_000 else dict(DEMO_CONVERSIONS)
    )
    scenario = Scenario(
        start_ms=START_MS,
        duration_s=duration_s,
        campaigns=3,
        impressions_per_s=60.0,
        inference_per_s=0.0,
        regressor_per_s=0.0,
        sensors=0,
        labels=False,
        **conversions,
        **DEMO_EXPERIMENTS,
    )
    decoders: dict[str, Decoder] = {}
    batches: list[tuple[int, list[tuple[str, Any]]]] = []
    current: list[tuple[str, Any]] = []
    end = START_MS + BATCH_MS
    for topic, key, value in Simulator(scenario).messages():
        if topic not in ("impressions", "clicks", "conversions"):
            continue
        decoder = decoders.get(topic) or decoders.setdefault(topic, Decoder(topic))
        event = decoder.decode(value, key.encode())
        if event.__class__ is Rejection:
            raise RuntimeError(event)
        while event.ts >= end:
            batches.append((end, current))
            current, end = [], end + BATCH_MS
        current.append((topic, event))
    batches.append((end, current))
    return batches


def run(make: list[Any], batches: list[tuple[int, list[tuple[str, Any]]]]) -> tuple[float, int]:
    """CPU seconds and the largest (msgpack) checkpoint of fresh operators over the batches."""
    ops: list[Operator] = [m() for m in make]
    largest = 0
    sampled = 0.0  # CPU of the state samples, left out
    next_sample = START_MS + SAMPLE_MS
    # one clock read per sample, not per batch: a read costs ~0.1 ms here; the garbage
    # collector's passes over the decoded dataset are no operator's cost
    gc.collect()
    gc.disable()
    began = time.process_time()
    for end, batch in batches:
        for op in ops:
            by_topic: dict[str, list[Any]] = {}
            for topic, event in batch:
                if topic in op.sources:
                    by_topic.setdefault(topic, []).append(event)
            for topic, evs in by_topic.items():
                op.feed(topic, evs)
            op.advance(end - 10_000)  # the default lateness
            op.collect()
        if end >= next_sample:
            t = time.process_time()
            largest = max(largest, sum(len(msgspec.msgpack.encode(op.snapshot())) for op in ops))
            sampled += time.process_time() - t
            next_sample += SAMPLE_MS
    cpu = time.process_time() - began - sampled
    gc.enable()
    return cpu, largest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=3600, help="event-seconds of traffic")
    ap.add_argument("--conversion-ms", type=int, default=3_600_000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    batches = events(args.duration, args.conversion_ms)
    n = sum(len(b) for _, b in batches)
    by_topic: dict[str, int] = {}
    for _, b in batches:
        for topic, _ in b:
            by_topic[topic] = by_topic.get(topic, 0) + 1
    base = CtrConfig()
    joined = dataclasses.replace(base, conversions=True, conversion_ms=args.conversion_ms)
    funnel = FunnelConfig(conversion_ms=args.conversion_ms)
    configs = {
        "ctr (no conversions: the built-in default)": [lambda: CtrOperator(base)],
        "ctr with conversions": [lambda: CtrOperator(joined)],
        "ctr with conversions + funnel": [
            lambda: CtrOperator(joined),
            lambda: FunnelOperator(funnel),
        ],
    }
    print(
        f"{args.duration} event-seconds of the demo's ad traffic: {n:,} events ({by_topic}); "
        f"conversion window {args.conversion_ms / 1000:.0f} s"
    )
    print("| operators | CPU s per 100,000 input events | largest state (msgpack) |")
    print("|---|---|---|")
    for name, make in configs.items():
        runs = [run(make, batches) for _ in range(args.repeats)]
        cpu = min(r[0] for r in runs)
        print(f"| {name} | {100_000 * cpu / n:.2f} | {runs[0][1] / 1e6:.1f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
