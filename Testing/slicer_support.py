"""Shared set-up for the Slicer module's tests (`test_slicer_*.py`): a real MRML scene from the
`slicer-core` package, oblique anisotropic volumes, and the module's logic on `sys.path`.

Not a test file itself; the tests import it (pytest puts this folder on `sys.path`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MaskSAMSegment"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from MaskSAMSegmentLib.geometry import LpsGrid  # noqa: E402

# The representation converters Slicer's Segmentations module registers at start-up.
_CONVERTER_RULES = (
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)

# A grid that catches every geometry mistake: a real rotation about all three axes, a
# different spacing on each axis, an origin far from zero, and a size different on each axis.
OBLIQUE_SPACING = (0.8, 1.1, 3.0)
OBLIQUE_ORIGIN = (-112.5, 87.25, -40.0)
OBLIQUE_ANGLES = (12.0, -20.0, 33.0)
OBLIQUE_SHAPE_ZYX = (7, 11, 13)


def oblique_direction(angles_deg: Sequence[float]) -> Tuple[float, ...]:
    """A proper rotation (row-major 3x3) from rotations about x, then y, then z (degrees): the
    direction of oblique test grids; its columns are orthonormal."""
    ax, ay, az = np.radians(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return tuple(float(v) for v in (rz @ ry @ rx).ravel())


def oblique_grid(shape_zyx: Sequence[int] = OBLIQUE_SHAPE_ZYX) -> LpsGrid:
    return LpsGrid(size=(shape_zyx[2], shape_zyx[1], shape_zyx[0]), spacing=OBLIQUE_SPACING,
                   origin=OBLIQUE_ORIGIN, direction=oblique_direction(OBLIQUE_ANGLES))


def distinct_voxel_values(shape_zyx: Sequence[int] = OBLIQUE_SHAPE_ZYX) -> np.ndarray:
    """int16 voxels that all differ, so any flip or transpose changes the array."""
    return (np.arange(int(np.prod(shape_zyx)), dtype=np.int16).reshape(shape_zyx) * 3 - 500).astype(np.int16)


def new_scene():
    """An empty MRML scene with the segmentation converters Slicer registers at start-up."""
    import slicer

    register_segmentation_converters()
    return slicer.vtkMRMLScene()


def register_segmentation_converters() -> None:
    """Register the converters Slicer's Segmentations module registers at start-up: the
    `slicer-core` package runs no modules, and without them a segmentation cannot make its
    closed surfaces. In Slicer every rule is present already (the module needs nothing of this)."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()   # the wrapped std::vector: a tuple or list
    present = {rule.GetClassName() for rule in (list(rules) if rules is not None else [])}
    for class_name in _CONVERTER_RULES:
        if class_name not in present and hasattr(slicer, class_name):
            factory.RegisterConverterRule(getattr(slicer, class_name)())


def add_scalar_volume(scene, array: np.ndarray, grid: LpsGrid, name: str = "CT"):
    """A vtkMRMLScalarVolumeNode (with display node) holding `array` on `grid`."""
    from MaskSAMSegmentLib.volume_nodes import image_data_from_array, set_volume_grid

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image_data_from_array(array))
    set_volume_grid(node, grid)
    node.CreateDefaultDisplayNodes()
    return node


def model_json_meta(labels: Dict[str, int], channel_names: Dict[str, str], preset_name: str = "tiny",
                    sam: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A model.json the command line accepts (`MaskSAMCore.model_json`: network, plan and formats
    included), for a model folder that never runs: the module's tests fake the segmenting program,
    but a folder the core would refuse must not pass for one the Segment tab lists."""
    from MaskSAMCore.model.config import preset
    from MaskSAMCore.model_json import NETWORK_FORMAT

    network = preset(preset_name, num_classes=len(labels), in_channels=len(channel_names))
    plan = {"transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "target_spacing": [1.0, 1.0, 1.0],
            "normalization": [{"channel": name, "scheme": "zscore"} for name in channel_names.values()],
            "anisotropic": False, "reorient_to_lps": True}
    return {"format": "masksam-model", "format_version": 1, "network_format": NETWORK_FORMAT, "labels": labels,
            "channel_names": channel_names, "network": network.to_dict(), "plan": plan,
            "sam": sam or {"model_type": None, "random_init": True}}


def chain_of_transforms(scene, node, *motions) -> None:
    """Put `node` under one linear transform per (translation, axis, degrees), each under the next."""
    import vtk

    child = node
    for translation, axis, degrees in motions:
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        motion = vtk.vtkTransform()
        motion.Translate(*translation)
        motion.RotateWXYZ(degrees, *axis)
        transform.SetMatrixTransformToParent(motion.GetMatrix())
        child.SetAndObserveTransformNodeID(transform.GetID())
        child = transform


def scene_node_ids(scene) -> list:
    """IDs of every node in the scene, in order (to compare a scene before and after)."""
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def core_has(module: str) -> bool:
    """True when a part of MaskSAMCore that other engineers are still writing has landed."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def subprocess_environment() -> dict:
    """Environment for CLI subprocesses: the repository first on PYTHONPATH, small thread pools."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def live_processes_in_group(pgid: int) -> list:
    """PIDs of processes (not zombies) in process group `pgid`, from /proc."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) "
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            alive.append(int(entry.name))
    return alive
