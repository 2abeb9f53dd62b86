"""Before/after of `keys_scaling`'s whole-task pass, the two checkouts' passes run in lockstep.

    .venv/bin/python -m tests.benchmarks.keys_ab --before /work/main --after . --keys 100000
    .venv/bin/python -m tests.benchmarks.keys_ab --before /work/main --after . \
        --kind sensor+cluster --keys 100 --events 300000

On a machine shared with other work, separate `keys_scaling` runs of the two sides
minutes apart differ by 20-30 % with the load alone. Here each side is a process of its
own (its checkout on PYTHONPATH), which decodes the events once and runs a warm-up pass;
then the driver asks each for one timed pass (`keys_scaling.one_pass`: fresh tasks,
the worker's garbage-collector settings, CPU time) in turn, swapping who goes first
every round, so both sides see the same load within a few seconds. Prints every pass's
µs CPU per event and the medians; the rows written must be equal on both sides.
"""

from __future__ import annotations

import argparse
import statistics

from tests.benchmarks.lockstep import run_lockstep

#: one side, run with `python -c` (the before side's checkout may not have this file):
#: decode once, warm up, then one timed pass per line read from stdin
SERVE = """
import sys
from tests.benchmarks import keys_scaling
from tests.benchmarks.operator_cost import events_of

keys, events, batch = map(int, sys.argv[1:4])
kind = sys.argv[4] if len(sys.argv) > 4 else "ctr"
decoded = events_of(kind.split("+")[0], events, keys)  # (sensor+cluster: sensor readings)
make = keys_scaling.make_tasks(kind)
keys_scaling.one_pass(make, decoded, batch)  # first calls: numba, scipy, caches
print("ready", flush=True)
for _ in sys.stdin:
    cpu, rows, _alerts = keys_scaling.one_pass(make, decoded, batch)
    print(f"{cpu / len(decoded) * 1e6:.4f} {rows}", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout of the before side")
    parser.add_argument("--after", required=True, help="checkout of the after side")
    parser.add_argument("--kind", choices=("ctr", "sensor", "sensor+cluster"), default="ctr")
    parser.add_argument("--keys", type=int, default=100_000, help="campaigns (or sensors)")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1250, help="events per poll")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    argv = [str(args.keys), str(args.events), str(args.batch), args.kind]
    answers = run_lockstep(SERVE, argv, args.before, args.after, args.rounds)
    per_event = {name: [float(a[0]) for a in got] for name, got in answers.items()}
    rows = {name: {int(a[1]) for a in got} for name, got in answers.items()}
    print(f"{args.kind}, {args.keys:,} keys, {args.events:,} events, {args.rounds} rounds")
    for name, values in per_event.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:>6}: {runs}  median {statistics.median(values):.2f}  rows {rows[name]}")
    if rows["before"] != rows["after"]:
        raise SystemExit("the two sides wrote different numbers of rows")


if __name__ == "__main__":
    main()
