"""Which images make up which case, and where each case's label map goes.

`masksam predict` accepts an image file (one case, one channel) or a folder. In a folder, files
named ``CASE_0000<ending>``, ``CASE_0001<ending>``, ... are the channels of case ``CASE`` (the
nnU-Net convention); a file without such a suffix is a one-channel case of its own name. For a
one-channel model, numbered scans without a ``_0000`` file among them (``amos_0001.nii.gz``,
``amos_0002.nii.gz``, as the AMOS release names them) are cases of their own names too: nnU-Net
channel files always start at ``_0000``, so they cannot be channels of one case ``amos``.
Prediction file names (``CASE<ending>``) follow nnU-Net, so `masksam evaluate` can pair them with
``labelsTs/CASE<ending>`` by name.

A folder of DICOM files (a series as a scanner or PACS exports it) is one case named after the
folder, like a single image file; its label map is ``.nii.gz`` unless the output says otherwise.
When the folder holds several image series, ``--series`` names the one to segment (in every
folder of a cohort). A folder whose subfolders hold DICOM files (a cohort exported one folder
per patient or scan) is one case per such subfolder, named after it, written into the output
folder. Only DICOM cases can be written as a DICOM SEG (``.dcm``, `dicom_seg`): a SEG refers to
the slices it segments.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

from MaskSAMCore.data.dicom_headers import dicom_files, folders_with_dicom_files, is_dicom_file
from MaskSAMCore.data.dicom_series import DicomSeries, every_volume, find_series
from MaskSAMCore.data.pydicom_reading import pydicom_warnings_off, read_dataset
from MaskSAMCore.data.slicer_segmentation import SEGMENTATION_ENDING, is_segmentation_file
from MaskSAMCore.errors import InputError, describe_path, list_some, raise_all
from MaskSAMCore.inference.channel_files import CHANNEL_SUFFIX, channel_groups
from MaskSAMCore.inference.dicom_seg import SEG_ENDING, is_seg_output
from MaskSAMCore.progress import print_warning

# Longest first, so that ".nii.gz" wins over ".gz".
IMAGE_ENDINGS = (".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".tif", ".tiff")
DICOM_OUTPUT_ENDING = ".nii.gz"
TILTED_OUTPUT_ENDING = ".nrrd"   # a gantry tilt's sheared grid, which NIfTI cannot store
EXPORT_DEPTH = 8   # --all-series: folder levels searched (a CD's DICOM/PAT/ST/SE, a PACS tree, with room)


@dataclass(frozen=True)
class Case:
    """One image to segment: its channels in channel order (image files, or one DICOM series),
    and where its labels go."""

    name: str
    channel_files: Tuple[Union[Path, DicomSeries], ...]
    output_file: Path

    @property
    def input_files(self) -> List[Path]:
        """Every file the case reads (each slice of a DICOM series)."""
        return [f for c in self.channel_files for f in (c.distinct_files if isinstance(c, DicomSeries) else (c,))]


def split_ending(path: "os.PathLike[str] | str") -> Tuple[str, str]:
    """(name without ending, ending) for a known image ending, else (name, ""). The ending is
    given in lower case whatever the name's case: outputs get it, since ITK writes NIfTI and
    MetaImage files only under lower-case endings (it reads NIfTI under either)."""
    name = Path(path).name
    for ending in IMAGE_ENDINGS:
        if name.lower().endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], ending
    return name, ""


def split_label_ending(path: "os.PathLike[str] | str") -> Tuple[str, str]:
    """`split_ending` for a label map, which may also be a Slicer segmentation (``.seg.nrrd``)."""
    name = Path(path).name
    if is_segmentation_file(name) and len(name) > len(SEGMENTATION_ENDING):
        return name[: -len(SEGMENTATION_ENDING)], SEGMENTATION_ENDING
    return split_ending(path)


def split_output_ending(path: "os.PathLike[str] | str") -> Tuple[str, str]:
    """`split_label_ending` for an output file name, which may also ask for a DICOM SEG (``.dcm``;
    its case is kept, as pydicom writes any name)."""
    name = Path(path).name
    if is_seg_output(name) and len(name) > len(SEG_ENDING):
        return name[: -len(SEG_ENDING)], name[-len(SEG_ENDING):]
    return split_label_ending(path)


def case_name(path: "os.PathLike[str] | str") -> str:
    """The case of a one-channel image file: ``liver_007`` for ``liver_007_0000.nii.gz`` and for
    ``liver_007.nii.gz``; ``amos_0001`` for ``amos_0001.nii.gz`` (not channel 0, so not a suffix)."""
    stem, _ = split_ending(path)
    match = CHANNEL_SUFFIX.match(stem)
    return match.group("case") if match and int(match.group("channel")) == 0 else stem


def find_cases(input_path: "os.PathLike[str] | str", output_path: "os.PathLike[str] | str",
               num_channels: int, output_ending: Optional[str] = None,
               series: Optional[str] = None) -> List[Case]:
    """The cases to predict, with their output files; `InputError` for anything unusable.

    A single file, or a folder of DICOM files (`series`: which of its series), is one case with
    one channel; its label map is written to `output_path` (or inside it, named after the case,
    when `output_path` is an existing folder or ends in a slash). A folder of image files gives
    one case per ``CASE_XXXX`` group (or suffix-less file), written into the output folder.
    """
    source = Path(input_path)
    target = Path(output_path)
    if not source.exists():
        raise InputError(f"{describe_path(source)}: no such file or folder")
    output_ending = _checked_ending(output_ending)
    images = _image_files(source) if source.is_dir() else []
    dicom = dicom_files(source) if source.is_dir() else []
    if images and dicom:
        raise InputError(f"{describe_path(source)}: holds both image files ({images[0][0].name}, ...) and "
                         f"DICOM files ({dicom[0].name}, ...); put them in separate folders")
    cohort = _dicom_subfolders(source) if source.is_dir() and not (images or dicom) else []
    if series is not None and not (dicom or cohort):
        raise InputError(f"--series is for a folder of DICOM files; {describe_path(source)} is not one")
    if not (dicom or cohort) and _asks_for_seg(target, output_path, output_ending):
        raise InputError(f"{describe_path(source)}: a DICOM SEG ({SEG_ENDING}) refers to the DICOM slices it "
                         "segments, so INPUT must be a folder of DICOM slices; write .nii.gz, .nrrd or .mha "
                         "for this input")
    if dicom:
        return [_dicom_case(source, target, output_path, num_channels, output_ending, series)]
    if cohort:
        _check_output_folder(source, target, "a folder of DICOM folders")
        _check_one_channel(source, num_channels, "each DICOM series")
        if any(target.resolve() == folder.resolve() for folder in cohort):
            raise InputError(f"{describe_path(target)}: the label maps would be written into a DICOM folder "
                             "they segment; write them elsewhere")
        return _cohort_cases(source, cohort, target, output_ending, series)
    if source.is_file():
        if is_segmentation_file(source):
            raise InputError(f"{describe_path(source)}: is a 3D Slicer segmentation, not an image; give the image "
                             "it segments")
        _check_one_channel(source, num_channels, "a file")
        name, ending = case_name(source), split_ending(source)[1]
        if not ending:
            hint = "; it is a DICOM file: give the folder holding its series" if is_dicom_file(source) else ""
            raise InputError(f"{describe_path(source)}: not an image file (known endings: "
                             f"{', '.join(IMAGE_ENDINGS)}){hint}")
        return [Case(name, (source,), _single_output(target, output_path, name, ending, output_ending))]
    below = _subfolders_with_images(source, besides=target)
    if not images:
        hint = (f"; image files lie in its subfolder(s) {list_some(below)}: give one of them as the input, or "
                "put the scans in one folder" if below else _dicom_subfolders_hint(source) or _dicomdir_hint(source))
        # Neither kind: a DICOM user must not read this as "DICOM is not accepted".
        raise InputError(f"{describe_path(source)}: no image files and no DICOM files found in it (known image "
                         f"endings: {', '.join(IMAGE_ENDINGS)}; DICOM: a folder of a series' slices){hint}")
    if below:
        print_warning(f"{describe_path(source)}: its subfolder(s) {list_some(below)} hold image files too, which "
                      "are not segmented (only the files in the folder itself are)")
    _check_output_folder(source, target, "a folder")
    return _cases_in_folder(images, source, target, num_channels, output_ending)


def modality_mismatch(series: DicomSeries, model_modality: str) -> Optional[str]:
    """Why a CT model should not segment this series (an MR, a PET), or another model a CT
    series; None when they agree or a modality is unknown. Only CT is told apart: other
    models name their channels freely ("T2", "MRI")."""
    if not series.modality or model_modality in ("", "unknown"):
        return None
    series_ct, model_ct = series.modality.upper() == "CT", model_modality.strip().upper() == "CT"
    if series_ct == model_ct:
        return None
    return f"a {series.modality} series, and the model is for {model_modality}"


def find_all_series(input_path: "os.PathLike[str] | str", output_path: "os.PathLike[str] | str",
                    num_channels: int, output_ending: Optional[str] = None,
                    model_modality: str = "unknown") -> Tuple[List[Case], List[str]]:
    """``--all-series``: every DICOM image series forming a volume in the folder `input_path` or
    below it (a PACS or CD export: patient, study and series folders, or a study in one folder),
    one case each, written to ``OUTPUT/<its folder>/series_<number><ending>``. Returns the cases
    and the series left out, each named with its folder and why: those forming no volume
    (scouts, dose pages) and those of another modality than `model_modality` (the PET of a
    PET/CT study). In an export those are expected, so they are reported, not refused."""
    source, target = Path(input_path), Path(output_path)
    if not source.is_dir():
        raise InputError(f"{describe_path(source)}: --all-series needs a folder holding DICOM series "
                         "(in it or in its subfolders)")
    _check_one_channel(source, num_channels, "each DICOM series")
    output_ending = _checked_ending(output_ending)
    _check_output_folder(source, target, "a folder of DICOM series")
    folders = ([source] if dicom_files(source) else []) + folders_with_dicom_files(source, EXPORT_DEPTH, limit=None)
    if any(target.resolve() == folder.resolve() for folder in folders):
        raise InputError(f"{describe_path(target)}: the label maps would be written into a DICOM folder "
                         "they segment; write them elsewhere")
    cases: List[Case] = []
    left_out: List[str] = []
    for folder in folders:
        where = folder.relative_to(source)
        volumes, others = every_volume(folder)
        left_out += [f"{where.as_posix()}: {other}" for other in others]
        numbers = [volume.number for volume in volumes]
        for volume in volumes:
            mismatch = modality_mismatch(volume, model_modality)
            if mismatch:
                left_out.append(f"{where.as_posix()}: {volume.label}: {mismatch}")
                continue
            # Series numbers name the outputs; a missing or repeated one gets its UID's last part.
            unique = volume.number and numbers.count(volume.number) == 1
            label = volume.number if unique else f"{volume.number or 'x'}_{volume.uid.split('.')[-1]}"
            name = f"series_{label}"
            output = target / where / f"{name}{output_ending or _default_ending(volume)}"
            cases.append(Case((where / name).as_posix(), (volume,), output))
    if not cases:
        found = f": {list_some(left_out)}" if left_out else ""
        raise InputError(f"{describe_path(source)}: no DICOM series forming a volume in it or its subfolders{found}")
    return cases, left_out


def _checked_ending(output_ending: Optional[str]) -> Optional[str]:
    """--output-ending with its dot, lower case (ITK writes NIfTI and MetaImage under no other),
    or `InputError` for an ending that is no image format."""
    if output_ending is None:
        return None
    given = output_ending
    if not output_ending.startswith("."):
        output_ending = "." + output_ending
    if output_ending.lower() not in (*IMAGE_ENDINGS, SEGMENTATION_ENDING, SEG_ENDING):
        # What the user typed, quoted as a shell would need it: an empty one shows as '' rather than ".".
        raise InputError(f"--output-ending {shlex.quote(given)} is not an image file ending "
                         f"(known endings: {', '.join(IMAGE_ENDINGS)}; {SEGMENTATION_ENDING} for a 3D Slicer "
                         f"segmentation; {SEG_ENDING} for DICOM SEG)")
    return output_ending.lower()


def _check_output_folder(source: Path, target: Path, given: str) -> None:
    """Refuse an output that is not a folder, or is the input folder itself, for a folder input."""
    if target.exists() and not target.is_dir():
        raise InputError(f"{describe_path(target)}: the input is {given}, so the output must be a folder too")
    if not target.exists() and split_output_ending(target)[1]:
        # Not a folder named labels.nii.gz holding the label maps where a file was meant.
        raise InputError(f"{describe_path(target)}: the input is {given}, so the output must be a folder too, "
                         f"not a file name ending in {split_output_ending(target)[1]}")
    if target.exists() and target.resolve() == source.resolve():
        # CASE.nii.gz beside CASE_0000.nii.gz: the next run would take the label maps for images.
        raise InputError(f"{describe_path(target)}: the label maps would be written among the images they "
                         "segment; write them to another folder")


def _cohort_cases(source: Path, cohort: List[Path], target: Path, output_ending: Optional[str],
                  series: Optional[str]) -> List[Case]:
    """One case per subfolder; every subfolder's series is checked before any fails the run, so
    all unusable ones (perhaps a study's scout exported on its own) are named at once."""
    cases, errors = [], []
    for folder in cohort:
        try:
            found = find_series(folder, series)
            output = target / f"{folder.name}{output_ending or _default_ending(found)}"
            cases.append(Case(folder.name, (found,), output))
        except InputError as error:
            errors.append(error)
    several = len(errors) > 1
    raise_all(errors, len(cohort), f"DICOM subfolders of {describe_path(source)} cannot be segmented",
              f"each subfolder of {describe_path(source)} holding DICOM files is segmented as a case of its own: "
              f"move {'these' if several else 'this one'} out, or give one subfolder as INPUT")
    return cases


def _dicom_subfolders(folder: Path) -> List[Path]:
    """The subfolders of `folder` that directly hold DICOM files (one folder per patient or scan)."""
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".") and dicom_files(p)]


def _check_one_channel(source: Path, num_channels: int, given: str) -> None:
    if num_channels != 1:
        raise InputError(
            f"{describe_path(source)}: the model needs {num_channels} channels and {given} is one channel; give "
            f"a folder with {case_name(source)}_0000, ..._{num_channels - 1:04d} image files")


def _dicom_case(source: Path, target: Path, output_path: "os.PathLike[str] | str", num_channels: int,
                output_ending: Optional[str], series: Optional[str]) -> Case:
    """The one case of a folder of DICOM files, named after the folder."""
    _check_one_channel(source, num_channels, "a DICOM series")
    name = source.resolve().name or "dicom"
    found = find_series(source, series)
    output = _single_output(target, output_path, name, _default_ending(found), output_ending)
    if output.parent.resolve() == source.resolve():
        # The next run would find a label map among the slices and refuse the folder.
        raise InputError(f"{describe_path(output)}: would be written into the DICOM folder it segments; "
                         "write it elsewhere")
    return Case(name, (found,), output)


def _default_ending(series: DicomSeries) -> str:
    return TILTED_OUTPUT_ENDING if series.tilt_degrees else DICOM_OUTPUT_ENDING


def _asks_for_seg(target: Path, output_path: "os.PathLike[str] | str", output_ending: Optional[str]) -> bool:
    if output_ending == SEG_ENDING:
        return True
    return is_seg_output(output_path) and not target.is_dir()


def _dicom_subfolders_hint(folder: Path, shown: int = 3) -> str:
    """Where DICOM series lie further down (a study exported as one folder per series, a CD's
    DICOM/ST*/SE* folders)."""
    below = folders_with_dicom_files(folder, limit=shown + 1)
    if not below:
        return ""
    names = list_some((p.relative_to(folder) for p in below), shown)
    return (f"; DICOM series lie in its subfolder(s) {names}: give one of them as the input, or add "
            "--all-series to segment every series below it")


def _dicomdir_hint(folder: Path) -> str:
    """For a folder holding a DICOMDIR without the files it indexes (copied alone from a CD or an
    export): where those files should be, from its first record naming a file."""
    index = next((p for p in folder.iterdir() if p.name.lower() == "dicomdir" and p.is_file()), None)
    if index is None:
        return ""
    hint = f"; its {index.name} is the index of a CD or export, whose image files lie elsewhere"
    try:
        with pydicom_warnings_off():
            records = read_dataset(index, stop_before_pixels=True).get("DirectoryRecordSequence", [])
            named = next((r.ReferencedFileID for r in records if "ReferencedFileID" in r), None)
    except Exception:   # a damaged index: the hint without where
        named = None
    if named is None:
        return f"{hint}: give the folder holding them"
    parts = [named] if isinstance(named, str) else list(named)
    return f"{hint} (it names {'/'.join(parts[:-1]) or '.'}/{parts[-1]}, ...): copy them along, or give their folder"


def _single_output(target: Path, output_path: "os.PathLike[str] | str", name: str, default_ending: str,
                   output_ending: Optional[str]) -> Path:
    """The label map of a one-case input: `target` itself, or ``target/name<ending>`` for a
    folder (`output_ending`, else `default_ending`)."""
    # "out/" names a folder even before it exists (Path drops the slash, so look at the text)
    if target.is_dir() or str(output_path).endswith(("/", os.sep)):
        return target / f"{name}{output_ending or default_ending}"
    stem, ending = split_output_ending(target)
    if output_ending and ending and output_ending.lower() != ending.lower():
        raise InputError(f"{describe_path(target)}: OUTPUT names the file, so --output-ending {output_ending} "
                         "does not apply; give one of them")
    if not ending:
        raise InputError(f"{describe_path(target)}: the output needs an image file ending such as .nii.gz "
                         f"(or end it with / to write into that folder)")
    if not target.name.endswith(ending):
        raise InputError(f"{describe_path(target)}: ITK writes this format only under a lower-case file "
                         f"ending; name the output {stem}{ending}")
    return target


def _subfolders_with_images(folder: Path, besides: Path) -> List[str]:
    """The names of `folder`'s subfolders holding image files (one folder per patient: a layout
    `masksam predict` does not walk for image files, unlike DICOM), but the output folder
    `besides` (an earlier run's label maps)."""
    output = besides.resolve() if besides.exists() else None
    return [sub.name for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".")
            and sub.resolve() != output and _image_files(sub)]


def _image_files(folder: Path) -> List[Tuple[Path, str, str]]:
    """(path, name without ending, ending) of the image files directly inside `folder` (not the
    Slicer segmentations a user may keep beside the scans)."""
    images = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or is_segmentation_file(path):
            continue
        stem, ending = split_ending(path)
        if ending:
            images.append((path, stem, ending))
    return images


def _cases_in_folder(images: List[Tuple[Path, str, str]], folder: Path, target: Path, num_channels: int,
                     output_ending: Optional[str]) -> List[Case]:
    return [Case(name, files, target / f"{name}{output_ending or ending}")
            for name, files, ending in channel_groups(images, folder, num_channels)]
