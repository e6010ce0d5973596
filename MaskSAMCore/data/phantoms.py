"""Synthetic labelled abdominal CT datasets in nnU-Net v2 raw format (``masksam make-phantoms``).

Each case (see `MaskSAMCore.data.phantom_anatomy`) gets its own size, anisotropic spacing
(in-plane about 1.2-2.0 mm, slices about 2.5-5 mm), an oblique direction (a rotation of 2-8
degrees about a random axis, determinant +1) and a random origin, so every geometry path of the
project is exercised. The whole dataset is a pure function of the seed: case ``i`` is the same
whatever the number of cases asked for. The folder appears complete or not at all: it is built in
a hidden temporary sibling and renamed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore.argument_types import PHANTOM_MIN_SIZE
from MaskSAMCore.atomic import TEMP_MARKER, folders_made, write_json
from MaskSAMCore.data.dataset_json import IGNORE_LABEL
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.image_writing import write_image, write_label
from MaskSAMCore.data.phantom_anatomy import (MISSING_ORGAN_PROBABILITY, OPTIONAL_ORGANS, PHANTOM_LABELS,
                                              synthesize_case)
from MaskSAMCore.errors import InputError, describe_path
from MaskSAMCore.host_memory import available_host_bytes, gib
from MaskSAMCore.paths import check_can_create
from MaskSAMCore.progress import Progress

IGNORE_VALUE = len(PHANTOM_LABELS)   # nnU-Net's rule: one above the last class

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
DEFAULT_IN_PLANE_VOXELS = (64, 96)      # inclusive range for x; y is at most x (a body is wider than deep)
DEFAULT_SLICES = (24, 40)
IN_PLANE_FIELD_OF_VIEW_MM = (118.0, 128.0)
SLAB_HEIGHT_MM = (100.0, 125.0)
MIN_SIZE = PHANTOM_MIN_SIZE             # x, y, z: below this the organs vanish
# Peak host memory of synthesising one case, per voxel (float64 coordinate and distance fields;
# measured with tracemalloc: 39 bytes at 128 x 128 x 64 and at 256 x 256 x 100), rounded up.
PEAK_BYTES_PER_VOXEL = 40


def make_phantoms(out_dir: "os.PathLike[str] | str", cases: int, seed: int = 0, test_cases: int = 0,
                  size: Optional[Sequence[int]] = None, file_ending: str = ".nii.gz",
                  progress: bool = True, annotate_every: int = 1) -> Path:
    """Write a phantom dataset to `out_dir` (which must not exist or be empty); returns its path.

    size: voxels (x, y, z) for every case; by default each case draws its own small size.
    annotate_every: N > 1 makes the training labels sparse, as `sparse_slices` says (dataset.json
    then declares nnU-Net's ``ignore`` label); test labels stay complete, to evaluate against."""
    out = Path(out_dir).resolve()   # "new/../existing/ds" names existing/ds (the OS cannot walk it)
    _check_arguments(out, cases, test_cases, size, file_ending, annotate_every)
    with folders_made(out.parent):   # a cancelled first run leaves no empty folders
        _write_dataset(out, cases, seed, test_cases, size, file_ending, progress, annotate_every)
    return out


def sparse_slices(labels: np.ndarray, every: int) -> np.ndarray:
    """`labels` (z, y, x) with only the axial slices z = every // 2, every // 2 + every, ...
    annotated; the others are all `IGNORE_VALUE` (unannotated). A case too thin to reach slice
    every // 2 keeps its middle slice annotated (every phantom slice shows organs): a case, or a
    whole dataset, without a single annotated voxel teaches nothing."""
    first = min(every // 2, labels.shape[0] // 2)
    sparse = np.full_like(labels, IGNORE_VALUE)
    sparse[first::every] = labels[first::every]
    return sparse


def _write_dataset(out: Path, cases: int, seed: int, test_cases: int, size: Optional[Sequence[int]],
                   file_ending: str, progress: bool, annotate_every: int) -> None:
    """Every case into a staging folder beside `out`, then the folder moved into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{TEMP_MARKER}", dir=out.parent))
    try:
        _give_default_permissions(staging)
        bar = Progress("make phantoms", total=cases + test_cases, unit="case", enabled=progress)
        for split, count, images, labels in (("train", cases, "imagesTr", "labelsTr"),
                                             ("test", test_cases, "imagesTs", "labelsTs")):
            for index in range(count):
                name = case_name(split, index)
                image, label, geometry = phantom_case(seed, split, index, size)
                if split == "train" and annotate_every > 1:
                    label = sparse_slices(label, annotate_every)
                write_image(image, geometry, staging / images / f"{name}_0000{file_ending}")
                write_label(label, geometry, staging / labels / f"{name}{file_ending}")
                bar.advance()
        bar.close()
        write_json(staging / "dataset.json", dataset_json(cases, test_cases, seed, file_ending,
                                                          sparse=annotate_every > 1))
        _move_into_place(staging, out)
    except OSError as exc:   # a full disk: name the file as the user knows it, not the hidden staging one
        shutil.rmtree(staging, ignore_errors=True)
        if exc.filename and os.fspath(exc.filename).startswith(str(staging) + os.sep):
            inside = os.path.relpath(os.fspath(exc.filename), staging)
            raise OSError(exc.errno, exc.strerror, str(out / inside)) from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def case_name(split: str, index: int) -> str:
    return f"phantom_{index:03d}" if split == "train" else f"phantom_test_{index:03d}"


def phantom_case(seed: int, split: str, index: int, size: Optional[Sequence[int]] = None
                 ) -> Tuple[np.ndarray, np.ndarray, ImageGeometry]:
    """(image (z, y, x) int16 HU, labels (z, y, x) uint8, geometry) of one case; a pure function
    of its arguments."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    if size is None:
        nx = int(rng.integers(DEFAULT_IN_PLANE_VOXELS[0], DEFAULT_IN_PLANE_VOXELS[1] + 1))
        ny = int(rng.integers(DEFAULT_IN_PLANE_VOXELS[0], nx + 1))
        nz = int(rng.integers(DEFAULT_SLICES[0], DEFAULT_SLICES[1] + 1))
    else:
        nx, ny, nz = (int(v) for v in size)
    in_plane = rng.uniform(*IN_PLANE_FIELD_OF_VIEW_MM) / nx
    slice_spacing = rng.uniform(*SLAB_HEIGHT_MM) / nz
    missing = None
    if rng.random() < MISSING_ORGAN_PROBABILITY:
        missing = OPTIONAL_ORGANS[int(rng.integers(len(OPTIONAL_ORGANS)))]
    geometry = ImageGeometry(
        size=(nx, ny, nz),
        spacing=(in_plane, in_plane, slice_spacing),
        origin=tuple(rng.uniform(-300.0, 300.0, size=3)),
        direction=tuple(random_rotation(rng, 2.0, 8.0).ravel()),
    )
    image, labels = synthesize_case(rng, geometry.shape_zyx, geometry.spacing_zyx, missing=missing)
    return image, labels, geometry


def random_rotation(rng: np.random.Generator, min_degrees: float, max_degrees: float) -> np.ndarray:
    """A proper rotation matrix (3, 3), det +1, by a random angle about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(min_degrees, max_degrees))
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross  # Rodrigues


def dataset_json(cases: int, test_cases: int, seed: int, file_ending: str, sparse: bool = False) -> dict:
    return {
        "name": "MaskSAM abdominal CT phantoms",
        "description": f"Synthetic abdominal CT with five labelled organs (masksam make-phantoms, seed {seed})",
        "reference": "synthetic", "licence": "CC0",
        "channel_names": {"0": "CT"},
        "labels": {**PHANTOM_LABELS, **({IGNORE_LABEL: IGNORE_VALUE} if sparse else {})},
        "numTraining": cases,
        "numTest": test_cases,
        "file_ending": file_ending,
    }


def run_make_phantoms(args: argparse.Namespace) -> int:
    """`masksam make-phantoms OUT --cases N [--seed S] [--test-cases M] [--size X Y Z] [--file-ending E]
    [--annotate-every N]`."""
    out = make_phantoms(args.output, args.cases, seed=args.seed, test_cases=args.test_cases,
                        size=args.size, file_ending=args.file_ending, annotate_every=args.annotate_every)
    extra = f" and {args.test_cases} test case(s)" if args.test_cases else ""
    print(f"wrote {args.cases} training case(s){extra} to {describe_path(out)}")
    return 0


def _check_arguments(out: Path, cases: int, test_cases: int, size: Optional[Sequence[int]], ending: str,
                     annotate_every: int) -> None:
    if cases < 1:
        raise InputError(f"--cases must be at least 1, not {cases}")
    if annotate_every < 1:
        raise InputError(f"--annotate-every must be at least 1, not {annotate_every}")
    if test_cases < 0:
        raise InputError(f"--test-cases must be 0 or more, not {test_cases}")
    if size is not None and (len(size) != 3 or any(int(n) < m for n, m in zip(size, MIN_SIZE))):
        raise InputError(f"--size must be 3 numbers X Y Z of at least {MIN_SIZE[0]} {MIN_SIZE[1]} {MIN_SIZE[2]}, "
                         f"not {' '.join(map(str, size))}")
    if ending not in SUPPORTED_ENDINGS:
        raise InputError(f"file ending {ending!r} is not one of {', '.join(SUPPORTED_ENDINGS)}")
    if size is not None:
        _check_fits_memory(size, available_host_bytes())
    _refuse_existing(out)


def _check_fits_memory(size: Sequence[int], available: Optional[int]) -> None:
    """Refuse, before any work, a --size whose cases this machine cannot synthesise (`available`
    bytes; None: unknown, no check): otherwise a huge size is tried until the allocation fails.
    An InputError (exit 1) rather than a usage error (exit 2): the size is a valid one, which
    another machine could make."""
    needed = PEAK_BYTES_PER_VOXEL * math.prod(int(n) for n in size)   # Python integers: no overflow
    if available is not None and needed > available:
        raise InputError(f"--size {' '.join(str(int(n)) for n in size)} needs about {gib(needed)} of memory per "
                         f"case ({gib(available)} available); choose a smaller --size")


def _refuse_existing(out: Path) -> None:
    check_can_create(out, "dataset folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"{describe_path(out)}: is a file, not a folder; choose a new folder "
                         "(nothing was overwritten)")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{describe_path(out)}: already exists and is not empty; choose a new folder "
                         "(nothing was overwritten)")


def _give_default_permissions(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; the dataset should get the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        folder.chmod(0o777 & ~umask)


def _move_into_place(staging: Path, out: Path) -> None:
    _refuse_existing(out)  # again: someone may have written there meanwhile
    if out.is_dir():
        with contextlib.suppress(OSError):
            out.rmdir()  # an empty folder the user made for us
    os.replace(staging, out)
