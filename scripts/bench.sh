#!/usr/bin/env bash
# The side-by-side benchmark (issue 5): set up, then run every contender on one
# embedded broker and write the tables into BENCHMARKS.md.
#   scripts/bench.sh                       # 1 M events per dataset, 3 runs (~30 min)
#   scripts/bench.sh --events 200000 --runs 1 --skip scaling,memory   # a quick look
# Quix Streams pins an older confluent-kafka than streamwatch, so it gets a venv
# of its own (.venv-quix); nothing of it is installed into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh embedded,test,bench
if [ ! -x .venv-quix/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-quix
  .venv-quix/bin/python -m pip install --quiet --upgrade pip
  .venv-quix/bin/python -m pip install --quiet -r tests/benchmarks/requirements-quix.txt
fi
exec .venv/bin/python -m tests.benchmarks.bench --write BENCHMARKS.md "$@"
