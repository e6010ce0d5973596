# Sourced (not run) by run-demo.sh and run-tests.sh before their own command: sets `repo` (this
# repository) and `venv` (MASKSAM_VENV or .venv, made absolute), exports MASKSAM_VENV, and creates
# or reuses the environment with setup-venv.sh. The caller has `set -euo pipefail`.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MASKSAM_VENV:-$repo/.venv}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac   # relative to this folder, as setup-venv.sh takes it
export MASKSAM_VENV="$venv"
"$repo/scripts/setup-venv.sh" test
