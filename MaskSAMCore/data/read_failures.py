"""Why SimpleITK could not read or write a file, in words a user can act on; ITK's own
multi-line warnings kept off the console (`itk_warnings_off`).

ITK's messages are multi-line and sometimes misleading: a MetaImage file cut short, or a ``.mhd``
whose data file was not copied along, both end in "Reason: No such file or directory" (a stale
errno), although the file given exists.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator, Optional

import SimpleITK as sitk

from MaskSAMCore.data.nifti_values import is_nifti, nifti_version

_CUT_SHORT_RAW = re.compile(r"fread got only .*?\(([\d.]+)% of expected\)")       # NRRD, raw
_CUT_SHORT_GZIP = re.compile(r"expected (\d+) bytes but received (\d+)")              # NRRD, gzip
_METAIMAGE_ENDINGS = (".mha", ".mhd")
_ITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_HEADER_BYTES = 64 * 1024


def sitk_reason(exc: BaseException) -> str:
    """The informative last part of SimpleITK's multi-line exception text, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    if reason.startswith("sitk::ERROR:"):
        reason = reason[len("sitk::ERROR:"):].strip()
    return reason[:200]


def unreadable_image_reason(path: Path, exc: BaseException) -> str:
    """Why reading the existing file `path` failed."""
    text = str(exc)
    raw, gzipped = _CUT_SHORT_RAW.search(text), _CUT_SHORT_GZIP.search(text)
    if raw or gzipped:
        percent = float(raw.group(1)) if raw else 100.0 * int(gzipped.group(2)) / max(int(gzipped.group(1)), 1)
        return f"the file is cut short: only {percent:.4g}% of its voxel data is there; copy or download it again"
    reason = sitk_reason(exc)
    ending = next((e for e in _ITK_ENDINGS if path.name.lower().endswith(e)), None)
    if ending and not path.name.endswith(ending) and "Unable to determine ImageIO reader" in reason:
        return f"ITK recognises this format only by a lower-case file ending; rename it to end in {ending}"
    if "orthonormal direction cosines" in reason:
        return ("its header places the voxels on a sheared grid (a gantry tilt?), which ITK cannot "
                "represent; resample it to an orthogonal grid first")
    if is_nifti(path) and nifti_version(path) == 2:
        return "it is a NIfTI-2 file, which the ITK reader MaskSAM uses cannot read; save it as NIfTI-1"
    if path.name.lower().endswith(_METAIMAGE_ENDINGS) and "No such file or directory" in reason:
        return _metaimage_problem(path) or reason
    return reason


def _metaimage_problem(path: Path) -> Optional[str]:
    data_file = _metaimage_data_file(path)
    if data_file is None:
        return None
    if data_file != "LOCAL" and not (path.parent / data_file).is_file():
        return f"its data file {data_file} is missing (it must lie beside the header)"
    return "its voxel data is damaged or cut short; copy or download it again"


def _metaimage_data_file(path: Path) -> Optional[str]:
    """The ``ElementDataFile`` of a MetaImage header (the last header field), if readable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES).decode("latin-1")
    except OSError:
        return None
    for line in head.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            return value.strip()
    return None


@contextlib.contextmanager
def itk_warnings_off() -> Iterator[None]:
    """ITK's warnings are several lines on stderr each (a NIfTI sform with "unexpected scales",
    a field a format cannot store); MaskSAM says what matters itself, in one line."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
