"""`masksam predict MODEL_DIR INPUT OUTPUT`: segment an image or a folder of images.

While the network works on one case, a background thread reads and preprocesses the next
(SimpleITK, NumPy and SciPy release the GIL, so this overlaps on a multi-core machine). While
a case whose score array alone takes more than `READ_AHEAD_LIMIT_BYTES` is predicted, the next
one is read only afterwards, so two large CTs are never held in memory at once.

Every input header is read before any work, so a corrupt or non-3D file, channels on different
grids or a spacing in the wrong unit stop the run at once.
A case whose voxels turn out unusable (NaN, a constant image) is reported in one line and
skipped; the other cases of the folder are segmented and the exit status is 1.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from MaskSAMCore.atomic import remove_stale_temporaries
from MaskSAMCore.data.dicom_headers import describe_not_images
from MaskSAMCore.data.dicom_series import DicomSeries
from MaskSAMCore.data.image_io import check_channels_share_grid, read_geometry, unreadable_file_problem
from MaskSAMCore.data.image_writing import check_format_keeps
from MaskSAMCore.data.nifti_transforms import placement_warning
from MaskSAMCore.data.nifti_values import is_nifti
from MaskSAMCore.errors import InputError, MaskSAMError, describe_path, first_line, list_some, raise_all
from MaskSAMCore.failure_lines import out_of_memory_line
from MaskSAMCore.inference.cases import Case, find_all_series, find_cases, modality_mismatch
from MaskSAMCore.inference.dicom_seg import check_seg_sources, check_seg_writer, is_seg_output
from MaskSAMCore.inference import devices
from MaskSAMCore.inference.arguments import BenchmarkArguments, PredictArguments
from MaskSAMCore.inference.export import probabilities_path
from MaskSAMCore.inference.input_checks import check_fits_host_memory
from MaskSAMCore.inference.predictor import (PredictionResult, PredictOptions, Predictor, PreparedCase, describe_case,
                                             describe_settings)
from MaskSAMCore.model_folder import ModelFolder
from MaskSAMCore.paths import check_output_file
from MaskSAMCore.progress import EVENT_CASE, EVENT_CASE_ERROR, EVENT_DONE, EVENT_STAGE, emit, print_note, print_warning

READ_AHEAD_LIMIT_BYTES = 2 * 2 ** 30


def options_from_args(args: Union[PredictArguments, BenchmarkArguments]) -> PredictOptions:
    """--fast means no mirroring and step 1.0 unless --step was given explicitly (--step None:
    not given; predict and benchmark share this)."""
    step = float(args.step) if args.step is not None else (1.0 if args.fast else 0.5)
    mirror = False if args.fast else bool(args.mirror)
    return PredictOptions(step=step, mirror=mirror, window_batch=args.window_batch)


def describe_mirroring(predictor: Predictor) -> str:
    axes = "".join("THW"[a] for a in predictor.mirror_axes)
    return f"mirroring over {axes or 'no'} axes ({2 ** len(predictor.mirror_axes)} flips)"


def cpu_speed_note(predictor: Predictor) -> Optional[str]:
    """A word before a run that would take hours: a SAM-sized network mirrored on the CPU
    (benchmarks/README.md (b): vit_b on 256 x 256 x 128 takes 1.1 h mirrored, 4.5 min with --fast on 2 cores)."""
    if predictor.device.type != "cpu" or not predictor.options.mirror or predictor.config.backbone.sam_type == "none":
        return None
    flips = 2 ** len(predictor.mirror_axes)
    return (f"on the CPU a {predictor.config.backbone.sam_type} network takes tens of seconds per forward and "
            f"mirroring makes {flips} forwards of every window: a CT takes hours; --fast (one forward per "
            "window, step 1.0) takes minutes")


def check_headers(cases: List[Case], plan: Dict[str, Any], channels: int, probabilities: bool = False,
                  classes: int = 1) -> None:
    """Read every input header before any work: a corrupt or non-3D file fails in seconds, and
    so do channels on different grids, a spacing the model's `plan` cannot use (micrometres read
    as millimetres, or the reverse) and an output format that cannot store the input's grid
    (TIFF, NIfTI for a tilted scan). Every case is checked, so all the unusable ones of a folder
    are named at once, before the first is segmented. `probabilities`: --probabilities, for a
    model of `classes` classes, whose npz needs memory too."""
    if any(is_seg_output(case.output_file) for case in cases):
        check_seg_writer()   # highdicom installed: one answer for all cases
    available = devices.available_host_bytes()   # once: the cases are segmented one after another
    errors: List[InputError] = []
    for case in cases:
        try:
            _check_case_headers(case, plan, channels, available, probabilities, classes)
        except InputError as error:
            errors.append(error)
    raise_all(errors, len(cases), "cases cannot be segmented")


def _check_case_headers(case: Case, plan: Dict[str, Any], channels: int, available: Optional[int],
                        probabilities: bool, classes: int) -> None:
    geometries = [read_geometry(path) for path in case.channel_files]
    # The rules preprocessing applies again to the voxels, here from the headers alone.
    check_channels_share_grid(case.channel_files, geometries)
    check_fits_host_memory(geometries[0], plan, channels, describe_case(case.channel_files, case.name), available,
                           probabilities, classes)
    if is_seg_output(case.output_file):
        # A SEG keeps the series' grid (its frames are the series' slices), if it can refer to them.
        check_seg_sources(case.channel_files[0])
        return
    try:
        check_format_keeps(geometries[0], case.output_file)
    except InputError:
        source = case.channel_files[0]
        if isinstance(source, DicomSeries) and source.tilt_degrees:
            raise InputError(f"{describe_path(case.output_file)}: this format cannot store the sheared grid of "
                             f"{source} (gantry tilt of {source.tilt_degrees:.1f} degrees); write .nrrd, .mha or "
                             "a DICOM SEG (.dcm)") from None
        raise
    warning = placement_warning(case.channel_files[0], geometries[0])
    if warning:
        kept = ("the label map gets the image's qform and sform as they are" if is_nifti(case.output_file)
                else "the label map stores that placement only")
        print_warning(f"{describe_path(case.channel_files[0])}: {warning}; {kept}")


WARNING = "warning: "   # a line of the series report that is a warning


def report_dicom_series(cases: List[Case], model_modality: str = "unknown") -> None:
    """Say which DICOM series is segmented, on which grid, and which files were left out."""
    for case in cases:
        for series in case.channel_files:
            if isinstance(series, DicomSeries):
                for line in _series_report(series, model_modality):
                    if line.startswith(WARNING):
                        print_warning(line[len(WARNING):])
                    else:
                        print(f"masksam: {line}", file=sys.stderr)


def _series_report(series: DicomSeries, model_modality: str) -> List[str]:
    lines = [f"{series}: {series.modality or 'modality not given'}, {series.slices_described}, "
             f"{read_geometry(series).describe()}"]
    mismatch = modality_mismatch(series, model_modality)
    if mismatch:   # the user chose this series: segmented, but said
        lines.append(f"{WARNING}{series}: {mismatch}; its labels may be meaningless")
    if series.tilt_degrees:
        lines.append(f"{series}: gantry tilt of {series.tilt_degrees:.1f} degrees: segmented on its own sheared "
                     "grid, which the label map keeps")
    if series.localizers:
        lines.append(f"{len(series.localizers)} image(s) of the series lie in another orientation (localizers) "
                     f"and were left out: {list_some(series.localizers)}")
    if series.other_series:
        lines.append("the only series of the folder forming a volume was chosen; left out: "
                     + "; ".join(series.other_series))
    if series.not_images:
        lines.append(f"{len(series.not_images)} file(s) in the folder are no images and were left out "
                     f"({describe_not_images(series.not_images)})")
    if series.left_out:
        lines.append(f"{WARNING}{len(series.left_out)} file(s) in the folder cannot be read as DICOM images and "
                     f"were left out ({list_some(p.name for p in series.left_out)})")
    return lines


def _cases(args: PredictArguments, channels: int, model_modality: str) -> Tuple[List[Case], List[str]]:
    """The cases to segment, and (with --all-series) the series left out, each named with why."""
    if not args.all_series:
        return find_cases(args.input, args.output, channels, args.output_ending, args.series), []
    if args.series is not None:
        raise InputError("--all-series segments every series and --series picks one; give one of them")
    return find_all_series(args.input, args.output, channels, args.output_ending, model_modality)


def split_finished(cases: List[Case], probabilities: bool, model_file: Path
                   ) -> Tuple[List[Case], List[Case], List[Case], List[Case], List[Case]]:
    """The cases still to segment, those an earlier run has segmented, and three kinds among the
    first: those whose label map an earlier run left but which cannot be read (cut short, or not
    an image: copied in by hand, or damaged since; judged from its header and size), those whose
    outputs are older than the case's image files or the model's checkpoint MODEL_FILE (as `make`
    judges: a scan exported again, a model trained further since), and, with `probabilities`,
    those whose probabilities file is older than its label map (a later run replaced the label map
    alone: the two are not one run's). A case is segmented when its label map (and, with
    `probabilities`, its probabilities file) exists and reads; outputs are written atomically, so
    one of ours that exists is whole. Which model wrote it is not known."""
    def outputs(case: Case) -> List[Path]:
        return [case.output_file, *([probabilities_path(case.output_file)] if probabilities else [])]

    def up_to_date(case: Case) -> bool:
        sources = [model_file, *case.input_files]
        return min(p.stat().st_mtime for p in outputs(case)) >= max(p.stat().st_mtime for p in sources)

    def unpaired(case: Case) -> bool:
        # write_probabilities dates the npz after the label map it writes with it
        labels, scores = outputs(case)
        return scores.stat().st_mtime < labels.stat().st_mtime

    def unreadable(case: Case) -> bool:
        # A DICOM SEG is no image ITK reads; those are written by this program only.
        return not is_seg_output(case.output_file) and unreadable_file_problem(case.output_file) is not None

    present = [c for c in cases if all(p.is_file() for p in outputs(c))]
    damaged = [c for c in present if unreadable(c)]
    written = [c for c in present if c not in damaged]
    outdated = [c for c in written if not up_to_date(c)]
    mismatched = [c for c in written if probabilities and c not in outdated and unpaired(c)]
    finished = [c for c in written if c not in outdated and c not in mismatched]
    return [c for c in cases if c not in finished], finished, damaged, outdated, mismatched


def _score_bytes(case: PreparedCase, num_classes: int) -> int:
    voxels = 1
    for n in case.properties["shape_after_resampling"]:
        voxels *= int(n)
    return 2 * num_classes * voxels


def _fits_read_ahead(case: PreparedCase, num_classes: int) -> bool:
    """Whether the next case may be read while this one is predicted (its score array is small)."""
    return _score_bytes(case, num_classes) <= READ_AHEAD_LIMIT_BYTES


def run_predict(args: PredictArguments) -> int:
    args.check_values()
    options = options_from_args(args)
    predictor = Predictor.from_model_folder(args.model_dir, device=args.device, checkpoint=args.checkpoint,
                                            sam_checkpoint=args.sam_checkpoint, options=options)
    cases, series_left_out = _cases(args, predictor.config.in_channels, predictor.modality)
    if args.continue_run:
        cases = _skip_finished(args, cases)
        if not cases:
            emit(EVENT_DONE, cases=0, failed=[], seconds=0.0, outputs=[])
            return 0
    check_headers(cases, predictor.plan, predictor.config.in_channels, args.probabilities,
                  predictor.config.num_classes)
    _check_outputs(cases, args.probabilities)
    _announce(predictor, options, cases, series_left_out)
    emit(EVENT_STAGE, stage="cases", total=len(cases))
    started = time.perf_counter()
    written, failed = _predict_cases(predictor, cases, args.probabilities)
    emit(EVENT_DONE, cases=len(written), failed=failed, seconds=round(time.perf_counter() - started, 2),
         outputs=written)
    if failed:
        print(f"masksam: {len(written)} of {len(cases)} case(s) segmented; not segmented (see above): "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _skip_finished(args: PredictArguments, cases: List[Case]) -> List[Case]:
    """--continue: the cases still to segment (`split_finished`), saying which are skipped and
    which are segmented again although an earlier run wrote their outputs."""
    model_file = ModelFolder.load(args.model_dir).checkpoint_path(args.checkpoint)
    remaining, finished, damaged, outdated, mismatched = split_finished(cases, args.probabilities, model_file)
    if finished:
        print(f"masksam: --continue: {len(finished)} of {len(cases)} case(s) have their output already and "
              f"are skipped ({list_some([case.name for case in finished])})", file=sys.stderr)
    if damaged:
        print(f"masksam: --continue: {len(damaged)} case(s) have an output label map that cannot be read (cut "
              f"short, or not an image) and are segmented again ({list_some([c.name for c in damaged])})",
              file=sys.stderr)
    if outdated:
        print(f"masksam: --continue: {len(outdated)} case(s) have an output older than their image or the "
              f"model's {model_file.name} and are segmented again ({list_some([c.name for c in outdated])})",
              file=sys.stderr)
    if mismatched:
        print(f"masksam: --continue: {len(mismatched)} case(s) have a probabilities file older than their label "
              f"map (another run's) and are segmented again ({list_some([c.name for c in mismatched])})",
              file=sys.stderr)
    return remaining


def _check_outputs(cases: List[Case], probabilities: bool) -> None:
    """Before any work: no output file (label map, with `probabilities` its probabilities file)
    may overwrite an input or be unwritable; temporaries an interrupted run left in the output
    folders are removed."""
    inputs = [path for case in cases for path in case.input_files]
    for case in cases:
        check_output_file(case.output_file, inputs)
        if probabilities:
            check_output_file(probabilities_path(case.output_file), inputs, "probabilities file")
    for folder in {case.output_file.parent for case in cases}:
        remove_stale_temporaries(folder)


def _announce(predictor: Predictor, options: PredictOptions, cases: List[Case], series_left_out: List[str]) -> None:
    """Say on stderr what the run segments (DICOM series, the series --all-series left out) and
    how: the network, device, number of cases, mirroring and step, and a note on a slow CPU run."""
    report_dicom_series(cases, predictor.modality)
    if series_left_out:
        more = "; ..." if len(series_left_out) > 5 else ""
        print(f"masksam: {len(series_left_out)} series were left out: "
              f"{'; '.join(series_left_out[:5])}{more}", file=sys.stderr)
    print(f"masksam: {predictor.name} on {predictor.device}: {len(cases)} case(s), "
          f"{describe_mirroring(predictor) if options.mirror else 'no mirroring'}, step {options.step:g}",
          file=sys.stderr)
    note = cpu_speed_note(predictor)
    if note:
        print_note(note)


def _predict_cases(predictor: Predictor, cases: List[Case], probabilities: bool) -> Tuple[List[str], List[str]]:
    """Segment `cases` in order, reading the next one on a background thread while the network
    works on this one (after it instead, when this one's scores take over `READ_AHEAD_LIMIT_BYTES`).
    Returns the output files written and the names of the cases that failed (reported already)."""
    written: List[str] = []
    failed: List[str] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="masksam-reader")
    pending: Optional[Future] = _read(pool, predictor, cases[0], probabilities)
    try:
        for index, case in enumerate(cases):
            assert pending is not None
            following = cases[index + 1] if index + 1 < len(cases) else None
            with _out_of_memory_named(case):
                prepared = _take_prepared(pending, case, index, len(cases))
            # A failed case is not predicted: the next is read at once, as before a small case's prediction.
            read_now = prepared is None or _fits_read_ahead(prepared, predictor.config.num_classes)
            pending = _read(pool, predictor, following, probabilities) if following is not None and read_now else None
            if prepared is None:
                failed.append(case.name)
                continue
            with _out_of_memory_named(case):
                result = predictor.predict_prepared(prepared, case.output_file, probabilities=probabilities)
            if following is not None and pending is None:
                pending = _read(pool, predictor, following, probabilities)
            written.append(str(case.output_file))
            _report_case(case, result, index, len(cases))
    finally:
        if pending is not None:
            pending.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
    return written, failed


@contextmanager
def _out_of_memory_named(case: Case) -> Iterator[None]:
    """An allocation that fails while `case` is read or segmented, as one error line naming the
    case (in a folder, which one was too large) with what predict's user can change."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        line = out_of_memory_line(exc, "predict")
        if line is None:
            raise
        raise MaskSAMError(f"{case.name}: {line}") from None


def _read(pool: ThreadPoolExecutor, predictor: Predictor, case: Case, probabilities: bool) -> Future:
    """Start reading and preprocessing `case` on the pool's thread; the future gives its PreparedCase."""
    return pool.submit(predictor.prepare_files, case.channel_files, case.name, probabilities)


def _take_prepared(pending: Future, case: Case, index: int, total: int) -> Optional[PreparedCase]:
    """The case `pending` read, its warnings said; None when its voxels are unusable (NaN, a
    constant image): in a folder one bad scan costs only its own case, so the error is reported
    and the run goes on. A single case's error is raised."""
    try:
        prepared = pending.result()
    except InputError as exc:
        if total == 1:
            raise
        message = first_line(exc)
        print(f"masksam: error: {message}", file=sys.stderr)
        emit(EVENT_CASE_ERROR, case=case.name, message=message, index=index + 1, total=total)
        return None
    for warning in prepared.warnings:
        print_warning(warning)
    return prepared


def _report_case(case: Case, result: PredictionResult, index: int, total: int) -> None:
    """Say on stderr and in the progress events which output a case got and how long each step took."""
    timing = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in result.timings.items())
    print(f"masksam: {case.name} -> {case.output_file} ({timing}; {describe_settings(result.settings)})",
          file=sys.stderr)
    emit(EVENT_CASE, case=case.name, output=str(case.output_file), index=index + 1, total=total,
         **{k: round(v, 3) for k, v in result.timings.items()})
