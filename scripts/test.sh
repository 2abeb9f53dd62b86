#!/usr/bin/env bash
# Fresh machine to full test run: install, lint, then the whole suite. The suite
# starts what it needs itself (a Tansu broker on a free loopback port, chDB in
# temporary directories, Prometheus, headless Chromium) and stops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh
scripts/setup.sh "embedded,test"
.venv/bin/ruff check .
# Two pytest workers, a test file each at a time (pytest-xdist; each starts its own
# broker): run alone the suite waits on brokers, workers and receivers, the CPU ~60 %
# idle, and took 24-34 min of pytest on these 2-core machines; two take ~12.
.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=30 "$@"
