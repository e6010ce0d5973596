"""Shared by the DICOM tests: oblique CT-like volumes written as DICOM series, slice by slice,
as a scanner or PACS exports them. Modules that write series use conftest's `dicom_locale_kept`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

Tags = Dict[str, str]


def oblique_volume(size=(20, 18, 9), spacing=(0.9, 0.8, 3.0), angle=0.35) -> sitk.Image:
    """An oblique, anisotropic CT-like volume in HU (a bright ellipsoid in soft tissue)."""
    z, y, x = np.mgrid[:size[2], :size[1], :size[0]]
    blob = ((x - 9) / 6.0) ** 2 + ((y - 8) / 5.0) ** 2 + ((z - 4) / 3.0) ** 2 < 1
    hu = np.where(blob, 180, 40) + np.random.default_rng(3).integers(-20, 20, blob.shape)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-31.5, 12.25, 104.0))
    image.SetDirection(sitk.VersorTransform((0.3, -1.0, 0.6), angle).GetMatrix())
    return image


def write_series(folder: Path, image: sitk.Image, uid: str = "1.2.826.0.1.3680043.2.1125.7.1",
                 number: str = "3", description: str = "AX ABD", names: Optional[List[str]] = None,
                 edit: Optional[Callable[[int, Tags], Optional[Tags]]] = None) -> Path:
    """One single-frame file per slice, as a scanner writes them; `edit(index, tags)` may change
    a slice's tags or drop the slice (return None)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")   # file names without an ending, as PACS exports write them
    for k in range(image.GetDepth()):
        tags: Tags = {
            "0008|0060": "CT", "0020|000e": uid, "0020|0011": number, "0008|103e": description,
            "0020|000d": f"{uid}.1", "0020|0052": f"{uid}.2",   # study and frame of reference
            "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1), "0028|1052": "-1024", "0028|1053": "1",
        }
        if edit is not None:
            tags = edit(k, tags)
            if tags is None:
                continue
        slice_image = image[:, :, k]
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / (names[k] if names else f"IM{k:04d}.dcm")))
        writer.Execute(slice_image)
    return folder


def shuffled_names(count: int) -> List[str]:
    """File names whose sorted order is not the slice order (PACS exports use UIDs)."""
    order = np.random.default_rng(0).permutation(count)
    return [f"1.3.6.1.4.1.{int(o) * 7919 % 1000:03d}.{k}" for k, o in enumerate(order)]
