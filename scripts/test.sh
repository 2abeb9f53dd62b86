#!/usr/bin/env bash
# Fresh machine to full test run: install, lint, then the whole suite. The suite
# starts what it needs itself (a Tansu broker on a free loopback port, chDB in
# temporary directories, Prometheus, headless Chromium) and stops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh
scripts/setup.sh "embedded,test"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q --durations=30 "$@"
