#!/usr/bin/env bash
# The main job, on a fresh machine: set up the environment (.venv), then run the whole MaskSAM path
# on synthetic data - phantoms, a few minutes of fine-tuning of the tiny preset from random weights,
# prediction of held-out phantoms, Dice, and a PNG of a slice with the prediction overlaid.
#
#   scripts/run-demo.sh                 # writes demo_output/ in the repository
#   scripts/run-demo.sh OUT --minutes 8 --device cpu   # OUT relative to the current folder
#
# Everything after the script name goes to `masksam demo` (see `masksam demo --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"   # sets repo and venv; makes or reuses the venv
if [ "$#" -eq 0 ]; then
    set -- "$repo/demo_output"
fi
exec "$venv/bin/python" -m MaskSAMCore demo "$@"
