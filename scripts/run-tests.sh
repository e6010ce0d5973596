#!/usr/bin/env bash
# Run the whole test suite (CPU only). Creates/reuses .venv first. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/setup-venv.sh" test
cd "$repo"
exec "${MASKSAM_VENV:-$repo/.venv}/bin/python" -m pytest Testing "$@"
