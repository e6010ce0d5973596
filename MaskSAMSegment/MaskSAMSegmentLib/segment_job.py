"""The Segment tab's work: volume node(s) -> ``masksam predict`` in the background -> segmentation node.

Nothing in the scene changes until the prediction has finished and its label map has been read
and checked: the input is written to a private temporary folder, the core runs there, and only
then are the segments created (or an existing segmentation's segments replaced). Cancelling or
a failure therefore leaves the scene exactly as it was; the temporary folder is always removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

from MaskSAMCore.errors import InputError, MaskSAMError, describe_path
from MaskSAMCore.folder_layout import FINAL_CHECKPOINT
from MaskSAMCore.model.sam_checkpoints import find_cached_by_hash, official_checkpoint
from MaskSAMSegmentLib.background_job import BackgroundJob
from MaskSAMSegmentLib.channels import channel_grid_problems, repeated_volume_problems
from MaskSAMSegmentLib.commands import QUALITY_FULL, job_environment, masksam_command, predict_arguments
from MaskSAMSegmentLib.devices import DeviceChoice
from MaskSAMSegmentLib.image_files import read_array_image, write_array_image
from MaskSAMSegmentLib.job_folders import JobFolder
from MaskSAMSegmentLib.job_runner import JobRunner, JobState
from MaskSAMSegmentLib.models import ModelInfo
from MaskSAMSegmentLib.result_fingerprint import edit_warning, record_fingerprint
from MaskSAMSegmentLib.segmentations import (LABEL_VALUE_TAG, MODEL_FOLDER_ATTRIBUTE, MODEL_NAME_ATTRIBUTE,
                                             MODEL_VERSION_ATTRIBUTE, REGION_VALUES_TAG, file_beside,
                                             import_label_map, segment_tag)

QUALITY_ATTRIBUTE = "MaskSAM.Quality"
INPUT_ENDING = ".nrrd"  # uncompressed: written and read fastest; only lives in the temp folder
AUTO_DEVICE = DeviceChoice("Auto", "auto", None)


@dataclass
class SegmentRequest:
    """Everything the Segment button needs.

    input_volumes:       one scalar volume node per model channel, in channel order
    output_segmentation: a segmentation node whose segments are replaced, or None for a new node
    """

    input_volumes: List
    model: Optional[ModelInfo]
    device: DeviceChoice = AUTO_DEVICE
    quality: str = QUALITY_FULL
    output_segmentation: Optional[object] = None
    sam_checkpoint: Optional[str] = None
    extra_attributes: Mapping[str, str] = field(default_factory=dict)


def _placement_problem(volume) -> Optional[str]:
    """A volume whose geometry places no volume in space (parallel axes in its IJK to RAS matrix)."""
    from MaskSAMSegmentLib.volume_nodes import volume_grid  # needs VTK; keep module import light

    try:
        volume_grid(volume)
    except InputError as exc:
        sentence = str(exc)   # "volume 'CT' cannot be placed in space: ..."
        return f"{sentence[:1].upper()}{sentence[1:]}; fix its geometry in the Volumes module."
    return None


def needs_sam_file(model: Optional[ModelInfo]) -> bool:
    """Whether `model` needs SAM weights the core cannot find itself: its frozen backbone is not
    in the model folder (only its adapters are), and neither the official download in the cache
    nor a checkpoint file used before on this computer (a fine-tuned SAM it was trained on, still
    unchanged where it was) has the SHA-256 recorded in its model.json."""
    return model is not None and not model.random_init and find_cached_by_hash(model.sam_sha256 or "") is None


def _sam_weights_problem(request: SegmentRequest) -> List[str]:
    """Found now, not seconds into a job whose failure would advise a command line (``masksam
    download-sam``, ``--sam-checkpoint``) the Slicer user does not have."""
    model = request.model
    if not needs_sam_file(model):
        return []
    if request.sam_checkpoint:
        if Path(request.sam_checkpoint).is_file():
            return []   # the core checks its SHA-256 and names a wrong file in one line
        chosen = describe_path(request.sam_checkpoint)
        return [f"The SAM checkpoint chosen in the Training tab does not exist: {chosen}."]
    official = official_checkpoint(model.sam_sha256)
    if official is not None:
        return [f"Model '{model.display_name}' needs the official SAM {official.model_type} weights it was trained "
                f"on: in the Training tab choose preset {official.model_type} and click Download (once), or choose "
                f"the {official.filename} you have in its SAM checkpoint field."]
    return [f"Model '{model.display_name}' was trained on a SAM checkpoint of its own (SHA-256 "
            f"{(model.sam_sha256 or '?')[:12]}...): choose that file in the Training tab's SAM checkpoint field "
            "(once: it is remembered)."]


def _voxel_count(image) -> int:
    x, y, z = image.GetDimensions()
    return x * y * z


def _stored_values(image) -> int:
    scalars = image.GetPointData().GetScalars()
    return 0 if scalars is None else scalars.GetNumberOfTuples()


def _volume_problem(volume) -> Optional[str]:
    """Why `volume` cannot be segmented (the first reason found), or None."""
    image = volume.GetImageData()
    name = volume.GetName()
    if image is None or 0 in image.GetDimensions():
        return f"Volume '{name}' has no image data."
    if image.GetNumberOfScalarComponents() != 1:
        return f"Volume '{name}' is a colour/vector volume; select a scalar volume."
    if volume.IsA("vtkMRMLLabelMapVolumeNode"):
        # A labelmap is a scalar volume too, but the model would segment label values, not anatomy.
        return f"Volume '{name}' is a labelmap; select the CT or MRI image."
    if min(image.GetDimensions()) < 2:
        size = " x ".join(str(n) for n in image.GetDimensions())
        return f"Volume '{name}' is a single slice ({size} voxels); MaskSAM segments 3D volumes."
    if _stored_values(image) != _voxel_count(image):
        # a script or filter that left the array shorter (or longer) than the declared size
        return (f"Volume '{name}' holds {_stored_values(image)} voxel values for its {_voxel_count(image)} voxels: "
                "its image data is damaged.")
    return _placement_problem(volume)


def segment_problems(request: SegmentRequest) -> List[str]:
    """Why the Segment button cannot run yet, one short sentence each (empty when it can)."""
    problems: List[str] = []
    volumes = [v for v in request.input_volumes if v is not None]
    if not volumes:
        problems.append("Select an input volume.")
    if request.model is None:
        problems.append("Select a model (or import one with 'Import model folder...').")
    else:
        if not request.model.has_final_checkpoint:
            problems.append(f"Model '{request.model.display_name}' has no {FINAL_CHECKPOINT}: is its training finished?")
        problems.extend(_sam_weights_problem(request))
        channels = len(request.model.channel_names)
        names = [request.model.channel_names[k] for k in sorted(request.model.channel_names, key=int)]
        if volumes and (len(volumes) != channels or len(request.input_volumes) != channels):
            problems.append(f"Model '{request.model.name}' needs {channels} input volume(s): {', '.join(names)}.")
        problems.extend(repeated_volume_problems(request.input_volumes, names))
    volume_problems = [problem for problem in map(_volume_problem, volumes) if problem is not None]
    problems.extend(volume_problems)
    if not volume_problems and len(volumes) > 1 and len(volumes) == len(request.input_volumes):
        # In the button's tooltip, not in an error after the click: the core's rule (`channels`).
        problems.extend(channel_grid_problems(volumes))
    # Found now, not when the result is imported after a run that may take an hour.
    for node, what in [(v, "Volume") for v in volumes] + [(request.output_segmentation, "Segmentation")]:
        transform = node.GetParentTransformNode() if node is not None else None
        if transform is not None and not transform.IsTransformToWorldLinear():
            problems.append(f"{what} '{node.GetName()}' is under the non-linear transform '{transform.GetName()}'; "
                            "harden the transform (Data module) first.")
    return problems


def cpu_speed_note(request: SegmentRequest) -> Optional[str]:
    """A word of warning before a segmentation that would take hours: full quality (every window
    predicted up to 8 times, mirrored) on the CPU with a SAM-sized model. The README's CPU row: `vit_b`
    on a 256 x 256 x 128 volume takes about 1.1 hours at full quality and 4.5 minutes at fast (2 cores)."""
    model = request.model
    if not request.device.runs_on_cpu or request.quality != QUALITY_FULL or model is None or model.preset == "tiny":
        return None
    return (f"On the CPU, Full quality predicts every window up to 8 times (mirrored): with a {model.preset or 'SAM'} "
            "model a whole CT takes hours. Fast takes minutes.")


def empty_segment_names(segmentation_node, labels) -> List[str]:
    """The names of the segments of a result made from `labels` that hold no voxel: every label
    of the model gets a segment, also one the model did not find."""
    present = set(np.flatnonzero(np.bincount(labels.ravel(), minlength=1)).tolist())   # no negative labels
    segmentation = segmentation_node.GetSegmentation()
    names = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        held = segment_tag(segment, REGION_VALUES_TAG) or segment_tag(segment, LABEL_VALUE_TAG)
        values = {int(v) for v in held.split(",") if v.strip().isdigit()}
        if values and not values & present:
            names.append(segment.GetName())
    return names


def not_found_line(names: List[str]) -> str:
    """The log line naming the structures not found."""
    return f"Not found (empty): {', '.join(names)}."


class SegmentJob(BackgroundJob):
    """One prediction: `start()`, then `poll()` until `finished`; `cancel()` at any time.

    scene:    the MRML scene the result goes into
    python:   interpreter for the job (default: `commands.python_interpreter()`)
    base_env: environment to start from (in Slicer: the start-up environment)
    work_dir: parent of the private temporary folder (default: the system's)
    keep_files: keep that folder (input and the core's label map) after success, for debugging;
              `label_file` then names the label map the core wrote
    """

    def __init__(self, scene, request: SegmentRequest, python: Optional[str] = None,
                 base_env: Optional[Mapping[str, str]] = None, work_dir: Optional[str] = None,
                 on_log: Optional[Callable[[str], None]] = None,
                 on_event: Optional[Callable[[dict], None]] = None, keep_files: bool = False) -> None:
        super().__init__(on_log)
        self.scene = scene
        self.request = request
        self.python = python
        self.base_env = base_env
        self.work_dir = work_dir
        self.on_event = on_event
        self.keep_files = keep_files
        self.label_file: Optional[Path] = None
        self.result_node = None
        self.not_found: List[str] = []   # the result's empty segments: structures the model did not find
        self._job_folder: Optional[JobFolder] = None
        self._folder: Optional[Path] = None
        self._output: Optional[Path] = None
        self._input_grid = None
        self._private_names: Dict[Path, str] = {}   # the private files -> what they are in the scene

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Write the input and start ``masksam predict``; `InputError` if the request cannot run."""
        problems = segment_problems(self.request)
        if problems:
            raise InputError(" ".join(problems))
        from MaskSAMSegmentLib.volume_nodes import volume_to_array  # needs VTK; keep module import light

        self._job_folder = JobFolder(self.work_dir)
        self._folder = self._job_folder.path
        try:
            input_path, self._output = self._write_inputs(volume_to_array)
            model = self.request.model
            arguments = predict_arguments(str(model.folder), str(input_path), str(self._output),
                                          device=self.request.device.device, quality=self.request.quality,
                                          sam_checkpoint=self.request.sam_checkpoint)
            if input_path.is_dir():
                arguments += ["--output-ending", INPUT_ENDING]
            self._run(JobRunner(masksam_command(arguments, self.python),
                                env=job_environment(self.base_env, self.request.device.gpu_index),
                                on_event=self.on_event, on_log=self._log if self.on_log is not None else None))
        except BaseException:
            self._cleanup()
            raise

    def _write_inputs(self, volume_to_array):
        """One file for a single-channel model; a folder of CASE_000c files otherwise."""
        volumes = self.request.input_volumes
        arrays = [volume_to_array(volume) for volume in volumes]
        self._input_grid = arrays[0][1]   # the other channels' grids passed `segment_problems`
        if len(arrays) == 1:
            path = write_array_image(arrays[0][0], arrays[0][1], self._folder / f"input{INPUT_ENDING}", compress=False)
            self._private_names[path] = f"volume '{volumes[0].GetName()}'"
            output = self._folder / f"labels{INPUT_ENDING}"
            self._private_names[output] = "the segmentation"
            return path, output
        folder = self._folder / "input"
        for channel, (volume, (array, _)) in enumerate(zip(volumes, arrays)):
            # Every channel with channel 0's grid: the others are on it within the core's tolerance,
            # and identical headers leave the core no rounding of its own to judge.
            path = write_array_image(array, self._input_grid, folder / f"case_{channel:04d}{INPUT_ENDING}",
                                     compress=False)
            self._private_names[path] = f"volume '{volume.GetName()}'"
        self._private_names[self._folder / "output" / f"case{INPUT_ENDING}"] = "the segmentation"
        return folder, self._folder / "output"

    def _log(self, line: str) -> None:
        self.on_log(self._reworded(line))

    def _reworded(self, message: str) -> str:
        """A message of the core with the private files named as what they are in the scene."""
        for path, name in self._private_names.items():
            for spelling in (describe_path(path), str(path)):
                message = message.replace(spelling, name)
        return message

    def _succeeded(self) -> JobState:
        """Import the result into the scene; the temporary folder goes, unless kept for debugging."""
        state = JobState.FAILED
        try:
            self.result_node = self._import_result()
            state = JobState.SUCCEEDED
        except Exception as exc:   # noqa: BLE001 - poll() runs from a timer: report, never raise
            # The status shows one line; anything but the user's problem (MaskSAMError) is a bug,
            # whose traceback goes to Slicer's log so that it can be found.
            if isinstance(exc, MaskSAMError):
                self._failure = str(exc)
            else:
                self._failure = f"could not import the result: {type(exc).__name__}: {exc}"
                logging.exception("MaskSAM: %s", self._failure)
        finally:
            if self.keep_files and state is JobState.SUCCEEDED:
                self._job_folder.keep()
            else:
                self._cleanup()
        return state

    def _ended(self) -> None:
        self._cleanup()

    # -- internals ----------------------------------------------------------------------------
    def _result_file(self) -> Path:
        if self._output.is_file():
            return self._output
        files = sorted(p for p in self._output.glob("*") if p.is_file()) if self._output.is_dir() else []
        if len(files) != 1:
            raise InputError(f"the prediction wrote no single label map in {self._output}")
        return files[0]

    def _import_result(self):
        self.label_file = self._result_file()
        labels, grid = read_array_image(self.label_file)
        if not grid.same_as(self._input_grid):
            # The core promises the input's own grid; if not, the world position still puts
            # every voxel in the right place, so import anyway and say so in the log.
            self.warnings.append(f"label map is on {grid.describe()}, the input on {self._input_grid.describe()}")
        model = self.request.model
        volume = self.request.input_volumes[0]
        volume_name = volume.GetName()
        attributes = {MODEL_NAME_ATTRIBUTE: model.name, MODEL_VERSION_ATTRIBUTE: model.version,
                      MODEL_FOLDER_ATTRIBUTE: str(model.folder), QUALITY_ATTRIBUTE: self.request.quality,
                      **self.request.extra_attributes}
        if volume.GetScene() is not self.scene:
            # Keep the result (an hour of CPU work), on the grid the volume had; a reference to
            # a node no longer in the scene would dangle.
            self.warnings.append(f"volume '{volume_name}' was removed during the run; its segmentation "
                                 "is added where the volume was, without a reference volume")
            volume = None
        replaced = self._output_node(volume)
        # A unique name only for a new node: generating one uses up its number ("CT model_1").
        node_name = replaced.GetName() if replaced is not None else self.scene.GenerateUniqueName(
            f"{volume_name} {model.name}")
        result = import_label_map(self.scene, labels, grid, model.names_by_value,
                                  segmentation_node=replaced, reference_volume=volume, node_name=node_name,
                                  attributes=attributes,
                                  regions=model.region_values)
        record_fingerprint(result)   # the next run replaces it only while nobody has edited it
        self._warn_of_transform(volume, result)
        self.not_found = empty_segment_names(result, labels)
        if self.not_found and self.on_log is not None:
            self.on_log(not_found_line(self.not_found))
        if replaced is None and volume is not None:
            file_beside(self.scene, result, volume)   # a replaced one stays where the user keeps it
        return result

    def _warn_of_transform(self, volume, result) -> None:
        """The result lies in the world where the volume is now; under another transform than the
        volume's (a new result is under none), later changes of the volume's transform (a refined
        registration) move the volume away from it."""
        transform = volume.GetParentTransformNode() if volume is not None else None
        if transform is not None and result.GetParentTransformNode() is not transform:
            self.warnings.append(f"volume '{volume.GetName()}' is under transform '{transform.GetName()}': the "
                                 "segmentation lies where the volume is now, and does not follow later changes "
                                 "of that transform")

    def _output_node(self, volume):
        """The segmentation to replace, or None for a new one. A chosen node is not replaced when
        it has left the scene during the run, or when it was made for another volume or by another
        model: the widget selects the last result as the output, and segmenting the next CT, or
        the same CT with another model, must not overwrite that result. Nor is one replaced whose
        segments someone made or corrected by hand: a MaskSAM result edited since (its content
        fingerprint changed), or a segmentation with segments that MaskSAM did not make."""
        node = self.request.output_segmentation
        if node is None:
            return None
        if node.GetScene() is not self.scene:
            self.warnings.append(f"segmentation '{node.GetName()}' was removed during the run; "
                                 "the result is a new segmentation")
            return None
        reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
        if reference is not None and reference is not volume:
            same_name = volume is not None and reference.GetName() == volume.GetName()
            other = "another volume named" if same_name else "volume"
            self.warnings.append(f"segmentation '{node.GetName()}' belongs to {other} '{reference.GetName()}'; "
                                 "the result is a new segmentation")
            return None
        made_by = node.GetAttribute(MODEL_NAME_ATTRIBUTE)
        if made_by and made_by != self.request.model.name:
            self.warnings.append(f"segmentation '{node.GetName()}' holds the result of model '{made_by}'; "
                                 "the result is a new segmentation")
            return None
        return node if self._nothing_to_lose(node, made_by) else None

    def _nothing_to_lose(self, node, made_by: Optional[str]) -> bool:
        """Whether replacing `node`'s segments loses no one's work (said in `warnings` when it would)."""
        if not made_by:
            if node.GetSegmentation().GetNumberOfSegments() == 0:
                return True   # an empty segmentation made to receive the result
            self.warnings.append(f"segmentation '{node.GetName()}' was not made by MaskSAM; the new result is a "
                                 "new segmentation, its segments are kept")
            return False
        edited = edit_warning(node)
        if edited:
            self.warnings.append(edited)
        return edited is None

    def _cleanup(self) -> None:
        if self._job_folder is not None:
            self._job_folder.remove()
            self._job_folder = self._folder = None
