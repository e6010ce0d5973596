#!/usr/bin/env bash
# Run the whole test suite (CPU only). Creates/reuses .venv first. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"   # sets repo and venv; makes or reuses the venv
cd "$repo"
exec "$venv/bin/python" -m pytest Testing "$@"
