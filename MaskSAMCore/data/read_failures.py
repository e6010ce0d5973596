"""Why SimpleITK could not read or write a file, in words a user can act on; ITK's own
multi-line warnings kept off the console (`itk_warnings_off`).

ITK's messages are multi-line and sometimes misleading: a MetaImage file cut short, or a ``.mhd``
whose data file was not copied along, both end in "Reason: No such file or directory" (a stale
errno), although the file given exists. A MetaImage file cut short is found from its header before
ITK reads it (`metaimage_data_problem`), because MetaIO also prints lines of its own.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from MaskSAMCore.data.nifti_values import is_nifti, nifti_version
from MaskSAMCore.errors import last_line

_CUT_SHORT_RAW = re.compile(r"fread got only .*?\(([\d.]+)% of expected\)")       # NRRD, raw
_CUT_SHORT_GZIP = re.compile(r"expected (\d+) bytes but received (\d+)")              # NRRD, gzip
_NRRD_DATA_FILE = re.compile(r'couldn\'t open "([^"]+)"(?: \(data file (\d+) of (\d+)\))?')  # .nhdr
_GZIP_MAGIC = b"\x1f\x8b"
METAIMAGE_ENDINGS = (".mha", ".mhd")
_ITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_HEADER_BYTES = 64 * 1024
_LIST_BYTES = 16 * 1024 * 1024   # a list of slice files: thousands of lines at most
_MOST_SLICE_FILES = 100_000


def sitk_reason(exc: BaseException) -> str:
    """The informative last part of SimpleITK's multi-line exception text, on one line."""
    reason = last_line(exc)
    if reason.startswith("sitk::ERROR:"):
        reason = reason[len("sitk::ERROR:"):].strip()
    return reason[:200]


def unreadable_image_reason(path: Path, exc: BaseException) -> str:
    """Why reading the existing file `path` failed."""
    try:
        if path.stat().st_size == 0:   # an interrupted copy, a `touch`: ITK says it knows no reader
            return "the file is empty (0 bytes); copy or write it again"
    except OSError:
        pass
    text = str(exc)
    raw, gzipped = _CUT_SHORT_RAW.search(text), _CUT_SHORT_GZIP.search(text)
    if raw or gzipped:
        percent = float(raw.group(1)) if raw else 100.0 * int(gzipped.group(2)) / max(int(gzipped.group(1)), 1)
        return f"the file is cut short: only {percent:.4g}% of its voxel data is there; copy or download it again"
    reason = sitk_reason(exc)
    ending = next((e for e in _ITK_ENDINGS if path.name.lower().endswith(e)), None)
    if ending and not path.name.endswith(ending) and "Unable to determine ImageIO reader" in reason:
        return f"ITK recognises this format only by a lower-case file ending; rename it to end in {ending}"
    unopened = _NRRD_DATA_FILE.search(text) if path.name.lower().endswith(".nhdr") else None
    if unopened:
        return _nrrd_data_file_problem(path, unopened) or reason
    if "orthonormal direction cosines" in reason:
        return ("its header places the voxels on a sheared grid (a gantry tilt?), which ITK cannot "
                "represent; resample it to an orthogonal grid first")
    if is_nifti(path) and nifti_version(path) == 2:
        return "it is a NIfTI-2 file, which the ITK reader MaskSAM uses cannot read; save it as NIfTI-1"
    if is_nifti(path) and "Unable to determine ImageIO reader" in reason:
        return _nifti_content_problem(path) or reason
    if path.name.lower().endswith(METAIMAGE_ENDINGS) and "No such file or directory" in reason:
        return _metaimage_problem(path) or reason
    return reason


def _nifti_content_problem(path: Path) -> Optional[str]:
    """What a file named .nii or .nii.gz that ITK found no reader for holds instead (ITK picks the
    NIfTI reader by the name, then finds no NIfTI header in the bytes, and names no reason)."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(2)
    except OSError:
        return None
    named_gzip = path.name.lower().endswith(".gz")
    if start == _GZIP_MAGIC:
        return None if named_gzip else "it is gzip-compressed, which a .nii file is not; rename it to end in .nii.gz"
    if nifti_version(path) is not None:
        return None
    if named_gzip:
        return ("it is neither gzip-compressed, as a .nii.gz file is, nor a NIfTI image; "
                "another kind of file saved under this name?")
    return "it has no NIfTI header at its start, so it is no NIfTI image; another kind of file saved under this name?"


def _nrrd_data_file_problem(path: Path, found: "re.Match[str]") -> Optional[str]:
    """For a detached NRRD header (.nhdr) whose data file teem could not open: which one is
    missing. Teem's message shortens a long path in its middle, so the name is the header's own
    'data file' field where that names one file, else the last part of teem's."""
    shown = Path(found.group(1)).name
    field = _nrrd_data_file_field(path)
    if field and field != "LIST" and " " not in field:   # one file (not a list, not a pattern)
        if (path.parent / field).exists():   # (an absolute field stays itself)
            return None   # there but unreadable (permissions): teem's words say that
        shown = field
    which = f"its data file {shown}"
    if found.group(3) and found.group(3) != "1":
        which = f"its data file {shown} ({found.group(2)} of {found.group(3)})"
    return f"{which} is missing: it must lie where the header's 'data file' field says"


def _nrrd_data_file_field(path: Path) -> Optional[str]:
    """The value of a NRRD header's 'data file' field (its header ends at the first blank line)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES).decode("latin-1")
    except OSError:
        return None
    for line in head.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("data file", "datafile"):
            return value.strip()
    return None


def _metaimage_problem(path: Path) -> Optional[str]:
    if not _metaimage_header(path).get("ElementDataFile"):
        return None
    return metaimage_data_problem(path) or "its voxel data is damaged or cut short; copy or download it again"


def metaimage_data_problem(path: Path) -> Optional[str]:
    """Why the MetaImage `path` (.mha, or .mhd and its data files) cannot hold all the voxel data
    its header announces - a data file missing, or less data than announced - else None.
    Checked before ITK reads the voxels: MetaIO prints its own "data not read completely" lines
    straight to stderr, which no setting silences."""
    fields = _metaimage_header(path)
    files = _metaimage_data_files(path, fields)
    if not files:
        return None
    for number, (name, data_path, _) in enumerate(files, start=1):
        if not data_path.is_file():
            which = f"its data file {name}" if len(files) == 1 else f"its slice file {name} ({number} of {len(files)})"
            return f"{which} is missing (it must lie beside the header)"
    expected = _metaimage_data_bytes(fields)
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if expected is None or (compressed and len(files) > 1) or any(offset is None for _, _, offset in files):
        return None   # the header does not say how many bytes to expect, or not per file
    held = [max(data_path.stat().st_size - offset, 0) for _, data_path, offset in files]
    if len(files) > 1 and expected % len(files) == 0:   # one slice (or block of slices) per file: name it
        parts = [(f"its slice file {name} ({number} of {len(files)})", present, expected // len(files))
                 for number, ((name, _, _), present) in enumerate(zip(files, held), start=1)]
    else:
        parts = [("the file", sum(held), expected)]
    for which, present, needed in parts:
        if present < needed:
            return (f"{which} is cut short: only {100.0 * present / needed:.4g}% of its voxel data is there; "
                    "copy or download it again")
    return None


def _metaimage_data_files(path: Path, fields: Dict[str, str]) -> List[Tuple[str, Path, Optional[int]]]:
    """(name as the header gives it, path, byte offset of the voxel data or None if unknown) of
    each file holding the voxel data: the header file itself (LOCAL), one data file, the files
    listed after ``ElementDataFile = LIST``, or those of a pattern (``slice%03d.raw 1 40 1``)."""
    value = fields.get("ElementDataFile", "")
    if not value:
        return []
    if value == "LOCAL":
        return [(path.name, path, int(fields["_data_offset"]))]
    header_size = _whole_number(fields.get("HeaderSize", "0"))
    offset = header_size if header_size is not None and header_size >= 0 else None   # -1: the last bytes
    tokens = value.split()
    if tokens[0] == "LIST":
        names = _listed_files(path, int(fields["_data_offset"]))
    elif len(tokens) in (3, 4) and "%" in tokens[0] and None not in [_whole_number(t) for t in tokens[1:]]:
        first, last, step = [int(t) for t in tokens[1:]] + [1] * (4 - len(tokens))   # step 1 if not given
        try:
            numbers = range(first, last + 1, step)
            if len(numbers) > _MOST_SLICE_FILES:
                return []
            names = [tokens[0] % number for number in numbers]
        except (TypeError, ValueError):   # a step of 0, a pattern that is not one for numbers
            return []
    else:
        names = [value]
    return [(name, path.parent / name, offset) for name in names]


# bytes per value of each MetaImage element type
_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                  "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                  "MET_DOUBLE": 8}


def _metaimage_data_bytes(fields: Dict[str, str]) -> Optional[int]:
    """Bytes of voxel data (compressed, if it is) the header announces; None if it does not say."""
    if fields.get("CompressedData", "False").lower() == "true":
        return _whole_number(fields.get("CompressedDataSize", ""))
    sizes = [_whole_number(value) for value in fields.get("DimSize", "").split()]
    channels = _whole_number(fields.get("ElementNumberOfChannels", "1"))
    value_bytes = _ELEMENT_BYTES.get(fields.get("ElementType", ""))
    if not sizes or None in sizes or channels is None or value_bytes is None:
        return None
    return int(np.prod(sizes, dtype=np.int64)) * channels * value_bytes


def _listed_files(path: Path, offset: int) -> List[str]:
    """The file names, one per line, after ``ElementDataFile = LIST`` (the header's last line)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read(_LIST_BYTES).decode("latin-1")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def _whole_number(text: str) -> Optional[int]:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _metaimage_header(path: Path) -> Dict[str, str]:
    """The fields of a MetaImage header up to ``ElementDataFile`` (its last field), and under
    ``_data_offset`` where the voxel data of a LOCAL file start; empty if unreadable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES)
    except OSError:
        return {}
    fields: Dict[str, str] = {}
    start = 0
    while start < len(head):
        end = head.find(b"\n", start)
        if end < 0:
            break
        key, _, value = head[start:end].decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        start = end + 1
        if key.strip() == "ElementDataFile":
            fields["_data_offset"] = str(start)
            break
    return fields


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
