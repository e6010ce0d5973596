#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install what it needs.
# Run by the other scripts; safe to run again: it only reinstalls when pyproject.toml changed.
#
#   MASKSAM_TORCH   pip requirement for PyTorch (default "torch==2.13.0"). On a GPU machine use a
#                   CUDA build, e.g. MASKSAM_TORCH="torch==2.13.0" with PIP_EXTRA_INDEX_URL set to
#                   the PyTorch wheel index for your CUDA version (see pytorch.org, "Get started").
#   MASKSAM_VENV    where the environment lives (default: .venv in the repository).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MASKSAM_VENV:-$repo/.venv}"
# A relative MASKSAM_VENV is relative to the caller's folder, once: the other scripts cd into
# the repository afterwards and must find the same environment.
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
torch_req="${MASKSAM_TORCH:-torch==2.13.0}"
extras="${1:-test}"
python="${PYTHON:-python3}"

# The default torch has wheels for Python 3.10 and newer only. Say so in one line, before a venv
# is made, instead of pip's "No matching distribution found for torch==2.13.0".
interpreter="$python"
[ -x "$venv/bin/python" ] && interpreter="$venv/bin/python"
if [ "$interpreter" = "$python" ] && ! command -v "$python" >/dev/null 2>&1; then
    echo "[setup] error: no Python interpreter $python: install Python 3.10+ or set PYTHON to one" \
        "(e.g. PYTHON=python3.11 or a full path)" >&2
    exit 1
fi
version="$("$interpreter" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$version" in 2.* | 3.[0-9]) too_old=1 ;; *) too_old=0 ;; esac
if [ -z "${MASKSAM_TORCH:-}" ] && [ "$too_old" = 1 ]; then
    if [ "$interpreter" = "$python" ]; then
        fix="set PYTHON to a Python 3.10+ (e.g. PYTHON=python3.11)"
    else
        fix="remove $venv and set PYTHON to a Python 3.10+ (e.g. PYTHON=python3.11)"
    fi
    echo "[setup] error: $interpreter is Python $version; $torch_req needs Python 3.10 or newer: $fix," \
        "or set MASKSAM_TORCH to a PyTorch (2.4+) for Python $version" >&2
    exit 1
fi

stamp="$venv/.masksam-installed"
# (macOS before 13 has no sha256sum, only shasum)
want="$( (sha256sum 2>/dev/null || shasum -a 256) < "$repo/pyproject.toml" | cut -c1-16) $torch_req [$extras]"
if [ ! -x "$venv/bin/python" ]; then
    # A new [test] environment takes about 2.3 GB (torch 0.75, VTK of slicer-core 0.65, SimpleITK
    # 0.26); a full disk otherwise ends in pip's "OSError: [Errno 28]" half-way through. (Updating an
    # existing one needs far less, so it is not checked.)
    free_mb="$(df -Pm "$(dirname "$venv")" 2>/dev/null | awk 'NR == 2 {print $4}')"
    if [ -n "$free_mb" ] && [ "$free_mb" -lt 2000 ]; then
        echo "[setup] error: only $free_mb MB free on the disk of $venv; the environment needs about 2.3 GB:" \
            "free some space or set MASKSAM_VENV to a folder on a larger disk" >&2
        exit 1
    fi
    echo "[setup] creating virtual environment $venv" >&2
    "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # A venv whose creation was cut short (Ctrl-C while `venv` installed pip) has a python but no pip.
    if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "[setup] $venv has no pip (its creation was interrupted?): installing it with ensurepip" >&2
        if ! out="$("$venv/bin/python" -m ensurepip --upgrade 2>&1)"; then
            echo "[setup] error: $venv has no pip and ensurepip could not install it" \
                "($(echo "$out" | tail -n 1)): delete $venv and run again" >&2
            exit 1
        fi
    fi
    echo "[setup] installing $torch_req and MaskSAMCore[$extras] into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    # torch first and alone, so that the dependency resolver keeps this build.
    "$venv/bin/python" -m pip install --quiet "$torch_req" >&2
    "$venv/bin/python" -m pip install --quiet -e "$repo[$extras]" >&2
    echo "$want" > "$stamp"
fi
