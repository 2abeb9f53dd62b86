#!/usr/bin/env bash
# Fresh machine to running demo: install, then `streamwatch demo` (everything embedded).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh embedded
exec .venv/bin/streamwatch demo "$@"
