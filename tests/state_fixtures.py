"""Checkpoints of every monitor as an older version wrote them, for the upgrade tests.

`python -m tests.state_fixtures DIR` drives each monitor of the registry over its
conformance case (tests/conformance_inputs.py) and writes, at batch 45 % of the way, the
task's checkpoint exactly as the worker encodes it (`streams.connectors.checkpoints.encode`) to
`DIR/<monitor>.msgpack`. Run at a release, the files are that release's state format;
`tests/test_state_upgrade.py` restores them into the current code, which must either
upgrade them (the run continues exactly as if uninterrupted) or refuse them with a
`StateFormatError` (the stated upgrade policy, `operators/state.py`).

`tests/artifacts/state_format1/` was written at commit adfee79, the last version whose
operators serialised their state by hand (state format 1); `tests/artifacts/state_f4ccd19/`
at f4ccd19, the last before the sensor monitor's state format 3 (its arrays packed).
"""

from __future__ import annotations

import sys
from pathlib import Path

from streams.connectors import checkpoints
from streams.runtime.monitors import OPERATORS
from tests.conformance import batches, task_factory
from tests.conformance_inputs import GENERATORS

SPLIT_FRACTION = 0.45


def split_batch(name: str) -> int:
    case = GENERATORS[name]()
    return max(1, int(len(batches(case.events, 50)) * SPLIT_FRACTION))


def checkpoint_at_split(name: str) -> bytes:
    """The encoded checkpoint of `name`'s task just before batch `split_batch(name)`."""
    case = GENERATORS[name]()
    task = task_factory(name, case)()
    split = split_batch(name)
    for i, (source, chunk) in enumerate(batches(case.events, 50)):
        if i == split:
            break
        task.feed(source, chunk, 1_000)
        task.tick(1_000)
        task.collect()
    return checkpoints.encode(checkpoints.Checkpoint({}, task.snapshot_encoded()))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(OPERATORS):
        blob = checkpoint_at_split(name)
        (out / f"{name}.msgpack").write_bytes(blob)
        print(f"{name}: {len(blob):,} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
