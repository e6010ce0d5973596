"""A training whose checkpoint cannot be written (a quota, a file-size limit, an NFS I/O error,
a full disk) ends with one line naming the file, the cause and how to go on; what it saved
before stays usable."""

import contextlib
import resource
from pathlib import Path
from typing import Iterator

import pytest

from MaskSAMCore.cli import main
from MaskSAMCore.data.phantoms import make_phantoms
from MaskSAMCore.model_folder import load_checkpoint


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return make_phantoms(tmp_path_factory.mktemp("data") / "ds", cases=3, seed=5, size=(32, 32, 10),
                         progress=False)


def _train_arguments(dataset: Path, model_dir: Path, *extra: str) -> list:
    return ["train", str(dataset), str(model_dir), "--preset", "tiny", "--random-init", "--iters-per-epoch", "2",
            "--fold", "all", "--num-workers", "0", "--device", "cpu", *extra]


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes beyond `limit` bytes fail with EFBIG (as a quota or an NFS error would fail them;
    Python ignores the SIGXFSZ that comes with it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_checkpoint_the_system_refuses_is_one_line_and_the_previous_one_stays(phantoms, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert main(_train_arguments(phantoms, model_dir, "--epochs", "1")) == 0
    latest = model_dir / "checkpoint_latest.pt"
    before = latest.read_bytes()
    capsys.readouterr()

    with _file_size_limit(len(before) // 2):   # the next checkpoint's write fails half-way
        status = main(_train_arguments(phantoms, model_dir, "--epochs", "2", "--resume"))

    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"masksam: error: {model_dir}/checkpoint_") and ".pt: File too large;" in last, last
    assert "checkpoint_latest.pt is intact" in last and "continue with --resume" in last, last
    assert latest.read_bytes() == before and load_checkpoint(latest)["epoch"] == 1
    assert not [p for p in model_dir.iterdir() if ".partial-" in p.name]
