"""scripts/setup-venv.sh, the first thing the README's two commands run on a fresh machine.

The interpreter is a stand-in shell script that reports a Python version and, asked to make a
virtual environment, makes one whose pip fails as pip does when no torch wheel fits; so nothing
is installed and no network is needed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup-venv.sh"


def fake_python(folder: Path, version: str, venv_python: Optional[str] = None) -> Path:
    """An executable answering `-c ...` with `version` and `-m venv DIR` with a venv whose python
    is `venv_python` (a shell script), by default one reporting the same version whose pip finds
    no torch."""
    if venv_python is None:
        venv_python = f'#!/bin/sh\nif [ "$1" = "-c" ]; then echo {version}; exit 0; fi\n' \
                      'echo "ERROR: No matching distribution found for torch==2.13.0" >&2\nexit 1\n'
    script = folder / f"python{version}"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then echo {version}; exit 0; fi\n'
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  mkdir -p "$3/bin"\n'
        f"  cat > \"$3/bin/python\" <<'EOF'\n{venv_python}EOF\n"
        '  chmod +x "$3/bin/python"; exit 0\n'
        "fi\n"
        "exit 3\n"
    )
    script.chmod(0o755)
    return script


def run_setup(python: Path, venv: Path, torch: Optional[str] = None) -> subprocess.CompletedProcess:
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if k != "MASKSAM_TORCH"}
    env.update(PYTHON=str(python), MASKSAM_VENV=str(venv))
    if torch is not None:
        env["MASKSAM_TORCH"] = torch
    return subprocess.run(["bash", str(SETUP), "test"], env=env, capture_output=True, text=True, timeout=60)


def test_a_python_too_old_for_the_default_torch_is_refused_in_one_line_before_any_venv(tmp_path):
    venv = tmp_path / "venv"
    result = run_setup(fake_python(tmp_path, "3.9"), venv)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Python 3.9" in lines[0] and "torch==2.13.0 needs Python 3.10 or newer" in lines[0]
    assert "PYTHON=" in lines[0] and "MASKSAM_TORCH" in lines[0]
    assert not venv.exists()   # nothing half-made for the next run to trip over


def test_an_existing_venv_of_an_old_python_is_named_as_what_to_remove(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    old = fake_python(tmp_path, "3.9")
    (venv / "bin" / "python").write_bytes(old.read_bytes())
    (venv / "bin" / "python").chmod(0o755)

    result = run_setup(fake_python(tmp_path, "3.12"), venv)

    assert result.returncode != 0
    assert f"remove {venv}" in result.stderr and "Python 3.9" in result.stderr


def test_a_new_enough_python_or_a_chosen_torch_goes_on_to_install(tmp_path):
    for version, torch in (("3.10", None), ("3.9", "torch==2.5.1")):
        venv = tmp_path / f"venv{version}"
        result = run_setup(fake_python(tmp_path, version), venv, torch)
        # Past the check: the venv is made and pip is asked (the stand-in's pip then fails).
        assert "creating virtual environment" in result.stderr, result.stderr
        assert "needs Python 3.10" not in result.stderr
        assert (venv / "bin" / "python").is_file()


def test_a_disk_too_full_for_the_environment_is_refused_in_one_line_before_any_venv(tmp_path):
    """A CI host once ran out of disk in pip's torch install; say so before anything is made."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    df = bin_dir / "df"   # a stand-in reporting 512 MB free, in POSIX `df -Pm` form
    df.write_text("#!/bin/sh\necho 'Filesystem 1048576-blocks Used Available Capacity Mounted on'\n"
                  "echo '/dev/vda 1000 488 512 49% /'\n")
    df.chmod(0o755)
    venv = tmp_path / "venv"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.update(PYTHON=str(fake_python(tmp_path, "3.11")), MASKSAM_VENV=str(venv))

    result = subprocess.run(["bash", str(SETUP), "test"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "only 512 MB free" in lines[0] and str(venv) in lines[0] and "MASKSAM_VENV" in lines[0]
    assert not venv.exists()


def working_python(folder: Path, log: Path) -> Path:
    """A stand-in Python 3.11 whose venvs' python succeeds at everything (pip included) and
    writes each command it is given, with its folder, to `log`."""
    venv_python = f'#!/bin/sh\nif [ "$1" = "-c" ]; then echo 3.11; exit 0; fi\necho "$PWD: $0 $*" >> "{log}"\n'
    return fake_python(folder, "3.11", venv_python)


@pytest.mark.parametrize("script, runs", [("run-tests.sh", "-m pytest Testing --durations=15 -k nothing"),
                                          ("run-demo.sh", "-m MaskSAMCore demo -k nothing")])
def test_a_relative_venv_is_found_after_the_scripts_change_folder(tmp_path, script, runs):
    """MASKSAM_VENV="my venv" is made in the caller's folder, and used from there once the
    script has moved into the repository."""
    here = tmp_path / "sp ace"
    here.mkdir()
    log = tmp_path / "commands.log"
    env = {k: v for k, v in os.environ.items() if k != "MASKSAM_TORCH"}
    env.update(PYTHON=str(working_python(tmp_path, log)), MASKSAM_VENV="my venv")

    result = subprocess.run(["bash", str(REPO / "scripts" / script), "-k", "nothing"], cwd=here, env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert f"creating virtual environment {here}/my venv" in result.stderr
    assert log.read_text().splitlines()[-1].endswith(f"{here}/my venv/bin/python {runs}")


def test_a_python_that_does_not_exist_is_one_setup_line(tmp_path):
    result = run_setup(tmp_path / "no-such-python3.11", tmp_path / "venv")

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[setup] error: no Python interpreter "), result.stderr
    assert "no-such-python3.11" in lines[0] and "PYTHON" in lines[0]
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("ensurepip_works", [True, False])
def test_a_venv_left_without_pip_is_repaired_or_named_for_deletion(tmp_path, ensurepip_works):
    """Ctrl-C while `python -m venv` installed pip leaves bin/python without pip, which every
    later run would trip over in pip's 'No module named pip'."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "commands.log"
    repair = 'touch "$(dirname "$0")/pip-ok"; exit 0' if ensurepip_works else 'echo "ensurepip is disabled" >&2; exit 1'
    (venv / "bin" / "python").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-c" ]; then echo 3.11; exit 0; fi\n'
        'if [ "$2" = "pip" ] && [ ! -f "$(dirname "$0")/pip-ok" ]; then echo "No module named pip" >&2; exit 1; fi\n'
        f'if [ "$2" = "ensurepip" ]; then {repair}; fi\n'
        f'echo "$*" >> "{log}"\n')
    (venv / "bin" / "python").chmod(0o755)

    result = run_setup(working_python(tmp_path, log), venv)

    if ensurepip_works:
        assert result.returncode == 0, result.stderr
        assert "has no pip (its creation was interrupted?): installing it with ensurepip" in result.stderr
        assert "-m pip install --quiet -e" in log.read_text()
    else:
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last == (f"[setup] error: {venv} has no pip and ensurepip could not install it (ensurepip is "
                        f"disabled): delete {venv} and run again")
        assert "No module named pip" not in result.stderr
