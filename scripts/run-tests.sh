#!/usr/bin/env bash
# Run the whole test suite (CPU only). Creates/reuses .venv first. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MASKSAM_VENV:-$repo/.venv}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac   # relative to this folder, as setup-venv.sh takes it
export MASKSAM_VENV="$venv"
"$repo/scripts/setup-venv.sh" test
cd "$repo"
exec "$venv/bin/python" -m pytest Testing "$@"
