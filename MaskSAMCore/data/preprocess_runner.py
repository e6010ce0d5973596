"""Preprocessing a whole dataset into a folder, in parallel worker processes, resumably.

Each case is written as ``NAME.npy``, ``NAME_seg.npy``, ``NAME_locations.npy`` and then ``NAME.json`` (see
`MaskSAMCore.data.store`), each atomically. A case whose JSON carries the same plan hash and the
same raw-file sizes and modification times is up to date and skipped, so an interrupted run
(Ctrl-C, SIGTERM, a crash) continues where it stopped; temporaries a killed run left behind are
removed first.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from MaskSAMCore.atomic import remove_stale_temporaries
from MaskSAMCore.data.dataset import RawCase, RawDataset
from MaskSAMCore.data.image_io import read_case
from MaskSAMCore.data.regions import RegionScheme
from MaskSAMCore.data.preprocessing import plan_hash, preprocess_case
from MaskSAMCore.data.processes import abort_pool, ignore_interrupts, signals_deferred, worker_context
from MaskSAMCore.data.store import case_paths, save_case
from MaskSAMCore.data.slicer_segmentation import dataset_label_names, read_dataset_label
from MaskSAMCore.errors import MaskSAMError, describe_path
from MaskSAMCore.progress import Progress

MAX_LOCATIONS_PER_CLASS = 1000


def preprocess_dataset(dataset: RawDataset, plan: Dict[str, Any], out_dir: "os.PathLike[str] | str",
                       num_workers: int = 2, progress: bool = True) -> Dict[str, Any]:
    """Preprocess the training cases of `dataset` into `out_dir`.

    num_workers: worker processes (0: in this process). Returns a summary:
    ``{"out_dir", "plan_hash", "cases": all names, "preprocessed": names done now,
    "up_to_date": names skipped}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    digest = plan_hash(plan)
    todo = [case for case in dataset.training_cases if not case_up_to_date(out, case, digest)]
    done_before = [case.name for case in dataset.training_cases if case not in todo]
    bar = Progress("preprocess", total=len(todo), unit="case", enabled=progress and bool(todo))
    if todo and (num_workers <= 0 or len(todo) == 1):
        for case in todo:
            preprocess_one(case.name, case.image_files, case.label_file, plan, digest, str(out))
            bar.advance()
    elif todo:
        _run_in_pool(todo, plan, digest, out, min(num_workers, len(todo)), bar)
    bar.close()
    return {
        "out_dir": str(out),
        "plan_hash": digest,
        "cases": [case.name for case in dataset.training_cases],
        "preprocessed": [case.name for case in todo],
        "up_to_date": done_before,
    }


def _run_in_pool(cases: Sequence[RawCase], plan: Dict[str, Any], digest: str, out: Path, workers: int,
                 bar: Progress) -> None:
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(), initializer=ignore_interrupts)
    names = {}
    try:
        try:
            with signals_deferred():   # submit() starts the workers
                for case in cases:
                    names[executor.submit(preprocess_one, case.name, case.image_files, case.label_file, plan,
                                          digest, str(out))] = case.name
            pending = set(names)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                for future in finished:
                    future.result()  # re-raises a worker's error (e.g. an InputError) here
                    bar.advance()
        except BrokenProcessPool:  # from result(), or from submit() once a worker has died
            written = {n for f, n in names.items() if f.done() and not f.cancelled() and f.exception() is None}
            unfinished = [case.name for case in cases if case.name not in written]
            raise _killed_worker_error(out, unfinished, workers) from None
    except BaseException:
        abort_pool(executor)  # Ctrl-C, SIGTERM or a broken case: stop everything now
        remove_stale_temporaries(out)  # a worker terminated in the middle of writing a file
        raise
    executor.shutdown(wait=True)


def _killed_worker_error(out: Path, unfinished: Sequence[str], workers: int) -> MaskSAMError:
    """A worker process died without a Python error: the out-of-memory killer, most likely (a
    large case resampled to a finer spacing needs several copies of it in memory at once)."""
    shown = ", ".join(unfinished[:3]) + (f" and {len(unfinished) - 3} more" if len(unfinished) > 3 else "")
    fewer = f" or use fewer worker processes (--num-workers {workers - 1})" if workers > 1 else ""
    return MaskSAMError(f"{describe_path(out)}: a preprocessing worker process was killed (out of memory?) "
                        f"with case(s) {shown} unfinished; free memory{fewer}")


def case_up_to_date(out: Path, case: RawCase, digest: str) -> bool:
    """Whether `out` holds this case preprocessed with the same plan from the same raw files."""
    paths = case_paths(out, case.name)
    if not all(path.is_file() for path in paths):
        return False
    json_path = paths[-1]
    try:
        properties = json.loads(json_path.read_text(encoding="utf-8"))
        for array_path in paths[:-1]:
            np.load(array_path, mmap_mode="r")   # the header only: a file cut short (a copy broken off) fails
    except (OSError, ValueError):
        return False
    return properties.get("plan_hash") == digest and properties.get("sources") == source_stamps(case)


def source_stamps(case: RawCase) -> List[Dict[str, Any]]:
    """Name, size and modification time of the raw files: a changed file means redo the case."""
    stamps = []
    for path in list(case.image_files) + ([case.label_file] if case.label_file else []):
        stat = Path(path).stat()
        stamps.append({"file": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return stamps


def preprocess_one(name: str, image_files: Sequence[Path], label_file: Any, plan: Dict[str, Any], digest: str,
                   out_dir: str) -> str:
    """Read, preprocess and write one case (runs in a worker process)."""
    image, geometry = read_case(image_files)
    names = dataset_label_names(plan.get("labels", {}), plan.get("ignore_label"), bool(plan.get("regions")))
    label = read_dataset_label(label_file, names)[0] if label_file is not None else None
    if label is not None and plan.get("regions"):
        label = RegionScheme.from_dict(plan["regions"]).to_classes(label)
    data, seg, properties = preprocess_case(image, geometry, plan, label)
    del image, label
    if seg is None:
        seg = np.zeros(data.shape[1:], dtype=np.int16)
    properties["case"] = name
    properties["plan_hash"] = digest
    properties["sources"] = source_stamps(RawCase(name, tuple(Path(p) for p in image_files),
                                                  Path(label_file) if label_file else None))
    locations = class_locations(seg, seed=zlib.crc32(name.encode("utf-8")),
                                ignore_label=plan.get("ignore_label"))
    save_case(out_dir, name, data, seg, locations, properties)
    return name


def class_locations(seg: np.ndarray, seed: int, limit: int = MAX_LOCATIONS_PER_CLASS,
                    ignore_label: Optional[int] = None) -> np.ndarray:
    """Up to `limit` random voxels of each foreground class in `seg` (T, H, W), as rows
    (class, t, h, w) of an (M, 4) int32 array. Unannotated voxels (`ignore_label`) are not a
    class: foreground oversampling centres patches on structures only."""
    rng = np.random.default_rng(seed)
    flat = seg.ravel()
    rows = [np.zeros((0, 4), dtype=np.int32)]
    for value in np.unique(flat):
        if value <= 0 or value == ignore_label:
            continue
        index = np.flatnonzero(flat == value)
        if index.size > limit:
            index = np.sort(rng.choice(index, size=limit, replace=False))
        coords = np.stack(np.unravel_index(index, seg.shape), axis=1)
        rows.append(np.concatenate([np.full((index.size, 1), value), coords], axis=1).astype(np.int32))
    return np.concatenate(rows, axis=0)
