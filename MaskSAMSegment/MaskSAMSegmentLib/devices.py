"""Which devices a job can run on, found without importing torch into Slicer's GUI process.

Importing torch takes seconds and hundreds of MB, and a broken CUDA install can crash the
process that imports it; so a tiny background job (`probe_command`) imports torch and prints
one JSON line, and the widget fills the device list when it arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, List, Optional

PROBE_PREFIX = "@masksam-devices "

# Runs in the job's Python; prints one line PROBE_PREFIX + JSON whatever happens.
PROBE_CODE = """
import json
info = {"torch": None, "cuda": [], "error": None}
try:
    import torch
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["cuda"].append({"index": index, "name": props.name,
                                 "memory_gb": round(props.total_memory / 2 ** 30, 1)})
except Exception as exc:
    info["error"] = type(exc).__name__ + ": " + str(exc)
print(%r + json.dumps(info), flush=True)
""" % PROBE_PREFIX

# Below this much GPU memory the vit_b preset is likely to run out of memory (users of other
# extensions complain most about 8 GB cards); the label says so rather than failing later.
LOW_GPU_MEMORY_GB = 7.5


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the device list: what the user reads and what the job gets."""

    label: str
    device: str                 # the CLI's --device: auto / cpu / cuda
    gpu_index: Optional[int]    # made the only visible GPU (CUDA_VISIBLE_DEVICES) when set
    auto_is_cpu: bool = False   # "auto" where the probe found no CUDA GPU

    @property
    def runs_on_cpu(self) -> bool:
        return self.device == "cpu" or (self.device == "auto" and self.auto_is_cpu)


@dataclass(frozen=True)
class DeviceReport:
    torch_version: Optional[str]
    gpus: tuple                 # ((index, name, memory_gb), ...)
    error: Optional[str] = None


def probe_command(python: str) -> List[str]:
    return [python, "-c", PROBE_CODE]


def parse_probe_output(lines: Iterable[str]) -> Optional[DeviceReport]:
    """The report from the probe's output lines, or None if it printed none (it crashed)."""
    for line in lines:
        if line.startswith(PROBE_PREFIX):
            try:
                info = json.loads(line[len(PROBE_PREFIX):])
            except json.JSONDecodeError:
                return None
            gpus = tuple((int(g["index"]), str(g["name"]), float(g["memory_gb"])) for g in info.get("cuda", []))
            return DeviceReport(info.get("torch"), gpus, info.get("error"))
    return None


def device_choices(report: Optional[DeviceReport]) -> List[DeviceChoice]:
    """Auto first (it picks the first GPU when there is one), then each GPU, then CPU."""
    if report is None or not report.gpus:
        return [DeviceChoice("Auto (CPU: no CUDA GPU found)", "auto", None, auto_is_cpu=True),
                DeviceChoice("CPU", "cpu", None)]
    index, name, memory = report.gpus[0]
    choices = [DeviceChoice(f"Auto (GPU {index}: {name})", "auto", None)]
    for index, name, memory in report.gpus:
        note = " - may run out of memory with vit_b" if memory < LOW_GPU_MEMORY_GB else ""
        choices.append(DeviceChoice(f"GPU {index}: {name} ({memory:.0f} GB){note}", "cuda", index))
    choices.append(DeviceChoice("CPU (slow)", "cpu", None))
    return choices


def unprobed_choices() -> List[DeviceChoice]:
    """What the list shows until the probe answers."""
    return [DeviceChoice("Auto (looking for GPUs...)", "auto", None), DeviceChoice("CPU", "cpu", None)]


def same_device_index(choices: List[DeviceChoice], previous: Optional[DeviceChoice]) -> int:
    """Where `previous` is in a new list of `choices`, matched by what the job gets (device and
    GPU), not by label: the labels change when the probe answers ("CPU" becomes "CPU (slow)"),
    and a choice made before that must stay. 0 (Auto) when it is no longer offered."""
    if previous is not None:
        for index, choice in enumerate(choices):
            if (choice.device, choice.gpu_index) == (previous.device, previous.gpu_index):
                return index
    return 0
