"""Shared pytest fixtures (only fixtures here; each test file keeps its own helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CT dataset in nnU-Net raw format (3 training cases, 1 test case,
    .nii.gz, 40 x 36 x 12 voxels, oblique and anisotropic). Shared: copy it before changing it."""
    from MaskSAMCore.data.phantoms import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("phantoms") / "Dataset001_Phantoms", cases=3, seed=7,
                         test_cases=1, size=(40, 36, 12), progress=False)
