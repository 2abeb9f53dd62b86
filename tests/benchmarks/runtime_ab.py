"""Before/after of the worker's runtime path (grouping, decoding, operators), in lockstep.

    .venv/bin/python -m tests.benchmarks.runtime_ab --before /work/wt/base --after . \
        --kind ctr --events 200000 --rounds 6

What `keys_ab` is for the operators, this is for `Pipeline.process` as the worker calls
it: the simulator's messages (`tests/benchmarks/dataset.py`) as librdkafka Messages,
keyed to 4 partitions by CRC-32 of the key, in polls of `--batch` messages handed over in
per-partition runs (as librdkafka does), each poll `by_partition` then `process`; the
monitors of the bench pipeline `--kind`, outputs dropped (rows and alerts counted). Each
side is a process of its own with its checkout on PYTHONPATH; after a warm-up pass the
driver asks each for one timed pass (a fresh pipeline, CPU time) in turn, swapping who
goes first every round. Prints µs of CPU per message of every pass and the medians; the
rows and alerts must be equal on both sides. No broker, no ClickHouse: the per-message
overhead outside the operators shows here, where the end-to-end bench drowns it in the
load of a shared machine (issue 18).
"""

from __future__ import annotations

import argparse
import statistics

from tests.benchmarks.lockstep import run_lockstep

#: one side, run with `python -c` (the before side's checkout may not have this file)
SERVE = """
import gc, sys, time, zlib
from confluent_kafka import Message
from streams.cli.simulate import Simulator
from streams.config import load_settings
from streams.runtime.monitors import OPERATORS, build_monitors
from streams.runtime.pipeline import Pipeline, by_partition
from tests.benchmarks.dataset import scenario

MONITORS = {"ctr": ("ctr",), "sensor": ("sensor", "cluster"), "drift": ("drift", "service")}
PARTITIONS = 4
kind, n, keys, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

class Outputs:
    def __init__(self):
        self.rows_written = self.alerts_raised = 0
    def rows(self, table, rows):
        self.rows_written += len(rows)
    def alerts(self, alerts):
        self.alerts_raised += len(alerts)
    def rejected(self, message, rejection):
        raise AssertionError(rejection)
    def late(self, *args):
        pass

raw = []
for topic, key, value in Simulator(scenario(kind, n, keys)).messages():
    if topic != "__tick__":
        raw.append((topic, zlib.crc32(key.encode()) % PARTITIONS, key.encode(), value))
    if len(raw) >= n:
        break

def polls():
    offsets, out = {}, []
    for i in range(0, len(raw), batch):
        messages = []
        for topic, p, key, value in sorted(raw[i : i + batch], key=lambda r: (r[1], r[0])):
            offset = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
            messages.append(Message(topic=topic, partition=p, offset=offset, key=key, value=value))
        out.append(messages)
    return out

def one_pass():
    overrides = {f"monitors.{name}.enabled": name in MONITORS[kind] for name in OPERATORS}
    topics = ("impressions", "clicks", "inference-logs", "sensor-readings", "labels")
    outputs = Outputs()
    pipeline = Pipeline(
        build_monitors(load_settings(env={}, overrides=overrides)),
        outputs,
        {t: t for t in topics},
        clock=lambda: 1.79e9,
    )
    pipeline.assign(range(PARTITIONS), {})
    messages = polls()
    gc.collect()
    started = time.process_time()
    for poll in messages:
        pipeline.process(by_partition(poll))
    pipeline.finish()
    cpu = time.process_time() - started
    return cpu, outputs.rows_written, outputs.alerts_raised

one_pass()  # first calls: numba, caches
print("ready", flush=True)
for _ in sys.stdin:
    cpu, rows, alerts = one_pass()
    print(f"{cpu / len(raw) * 1e6:.4f} {rows} {alerts}", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout of the before side")
    parser.add_argument("--after", required=True, help="checkout of the after side")
    parser.add_argument("--kind", choices=("ctr", "sensor", "drift"), default="ctr")
    parser.add_argument("--keys", type=int, default=None, help="default: as the benchmark")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1250, help="messages per poll")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    keys = args.keys or {"ctr": 100, "sensor": 100, "drift": 4}[args.kind]
    argv = [args.kind, str(args.events), str(keys), str(args.batch)]
    answers = run_lockstep(SERVE, argv, args.before, args.after, args.rounds)
    per_message = {name: [float(a[0]) for a in got] for name, got in answers.items()}
    outputs = {name: {(int(a[1]), int(a[2])) for a in got} for name, got in answers.items()}
    print(f"{args.kind}, {keys:,} keys, {args.events:,} messages, {args.rounds} rounds")
    for name, values in per_message.items():
        runs = " ".join(f"{v:.3f}" for v in values)
        print(f"{name:>6}: {runs}  median {statistics.median(values):.3f} µs/message")
        print(f"{'':>6}  (rows, alerts) {outputs[name]}")
    if outputs["before"] != outputs["after"]:
        raise SystemExit("the two sides wrote different rows or alerts")


if __name__ == "__main__":
    main()
