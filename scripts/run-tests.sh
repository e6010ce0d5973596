#!/usr/bin/env bash
# Run the whole test suite (CPU only). Creates/reuses .venv first. Extra arguments go to pytest
# (after --durations=15, which lists the slowest tests at the end, so that CI logs show them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"   # sets repo and venv; makes or reuses the venv
cd "$repo"
exec "$venv/bin/python" -m pytest Testing --durations=15 "$@"
