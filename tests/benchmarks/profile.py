"""Where a streamwatch pipeline's time goes: py-spy over the real worker, summarised.

    .venv/bin/python -m tests.benchmarks.profile --kind ctr --events 1000000

Loads one dataset into an embedded broker, runs the streamwatch contender
(`contenders/streamwatch_pipeline.py`, the real worker) under `py-spy record`
(100 samples/s, every thread), and prints the share of samples per function
(self time) and per file over the whole run, start-up included; samples of
threads waiting (a thread pool's queue, the event loop's select) are counted
apart, as they cost no CPU.
py-spy must be installed (`pip install py-spy`); it is not a dependency.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from streams.connectors.embedded import EmbeddedBroker
from tests.benchmarks import dataset as datasets
from tests.benchmarks.contenders.common import Spec

ROOT = Path(__file__).resolve().parents[2]
WAITING = ("(selectors.py", "(concurrent/futures/thread.py:81)", "(threading.py")


def summarise(raw: Path, top: int) -> list[str]:
    """Self-time shares per function and per file from py-spy's raw (collapsed) output."""
    by_function: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        leaf = frames[-1]
        if any(w in leaf for w in WAITING):
            waiting += n
            continue
        total += n
        by_function[leaf] += n
        where = leaf.rpartition("(")[2].split(":")[0]
        by_file[where.replace(str(ROOT) + "/", "").split("site-packages/")[-1]] += n
    lines = [
        f"{total} busy samples ({waiting} more of threads waiting)",
        "",
        "self time by function:",
    ]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in by_function.most_common(top)]
    lines += ["", "self time by file:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in by_file.most_common(top)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=datasets.KINDS, default="ctr")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=None, help="default: as tests.benchmarks.bench")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--workdir", default="/tmp/streamwatch-profile")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    keys = args.keys or {"ctr": 100, "sensor": 100, "drift": 4}[args.kind]
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        data = datasets.load(broker.bootstrap, args.kind, args.events, 4, keys, "profile")
        spec = Spec("streamwatch", broker.bootstrap, "profile", data, work, work / "result.json")
        (work / "spec.json").write_text(json.dumps(spec.to_json()))
        raw = work / "profile.raw"
        module = "tests.benchmarks.contenders.streamwatch_pipeline"
        worker = [sys.executable, "-m", module, str(work / "spec.json")]
        subprocess.run(
            [
                pyspy,
                "record",
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--",
                *worker,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
        )
    result = json.loads(spec.result.read_text())
    print(
        f"{args.kind}: {result['events']:,} events in {result['seconds']:.1f} s "
        f"({result['events'] / result['seconds']:,.0f}/s), "
        f"{result['cpu_seconds'] / result['events'] * 1e6:.1f} µs CPU per event (under py-spy)"
    )
    print("\n".join(summarise(raw, args.top)))


if __name__ == "__main__":
    main()
