"""The smoke command of a fresh install: `masksam info`."""

import subprocess
import sys


def test_info_prints_parameter_table_and_runs_forward():
    result = subprocess.run([sys.executable, "-m", "MaskSAMCore", "info", "--preset", "tiny", "--forward",
                             "--classes", "4"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "prompt generator" in result.stdout and "total" in result.stdout
    assert "-> class scores (1, 4, 4, 64, 64)" in result.stdout


def test_unknown_preset_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "MaskSAMCore", "info", "--preset", "vit_x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_too_old_pytorch_is_one_line_before_any_work(monkeypatch, capsys):
    import importlib.metadata

    from MaskSAMCore.cli import main

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.3.1" if name == "torch" else "1.0")
    assert main(["info", "--preset", "tiny"]) == 1
    assert capsys.readouterr().err.strip() == "masksam: error: PyTorch 2.3.1 is too old; MaskSAM needs 2.4 or newer"
