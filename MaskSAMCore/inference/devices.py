"""Device choice, mixed precision, memory readings and the automatic window batch.

The GPU memory budget (``MASKSAM_GPU_MEMORY_GB``, default 8) caps what the automatic window
batch may plan for, so that the default settings run on an 8 GB card and leave a large card's
memory to others: one window with its 8 flips is already 8 x T slices (64 ViT images for vit_b),
enough to keep a GPU busy, so larger batches buy little speed.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Optional, Tuple

import torch

from MaskSAMCore import host_memory
from MaskSAMCore.errors import MaskSAMError
from MaskSAMCore.paths import environment_number

GPU_BUDGET_ENV = "MASKSAM_GPU_MEMORY_GB"
DEFAULT_GPU_BUDGET_GB = 8.0
MAX_AUTO_WINDOW_BATCH = 32
SAFETY = 0.85  # fraction of the budget the estimate may fill (fragmentation, workspace)

# The host's readings live in the torch-free `host_memory` (make-phantoms needs them without
# torch); prediction looks them up here, so a test replacing one here reaches every check.
available_host_bytes = host_memory.available_host_bytes
peak_host_rss_bytes = host_memory.peak_host_rss_bytes


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> the first CUDA GPU if there is one, else the CPU; "cuda" without a GPU is an error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MaskSAMError("--device cuda was given but PyTorch sees no CUDA GPU (is this a CPU-only "
                           "PyTorch build?); use --device cpu or auto")
    return device


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """bf16 on CUDA GPUs with bf16 hardware (compute capability 8.0 on, Ampere and later), fp16
    on older ones (T4, V100, GTX 10xx); None (float32) on the CPU.

    Not `torch.cuda.is_bf16_supported()`: by default it also says yes where bf16 is only
    emulated (no bf16 tensor cores: several times slower than fp16 there), and it asks about the
    *current* device, not `device`.
    """
    if device.type != "cuda":
        return None
    if torch.version.hip:
        return torch.bfloat16  # every ROCm GPU PyTorch supports computes in bf16
    if not torch.cuda.is_available():
        return torch.float16  # a CUDA device named where there is none: nothing to ask, it fails later
    major, _minor = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


# What running out of GPU memory looks like besides torch.OutOfMemoryError (the caching
# allocator): cuBLAS and cuDNN allocate their handles and workspaces themselves, and report a
# full GPU as a RuntimeError ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling
# `cublasCreate(handle)`"), as does a raw cudaMalloc ("CUDA error: out of memory").
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")


def is_out_of_memory(error: BaseException) -> bool:
    """True for the errors of a GPU that ran out of memory (worth retrying with less)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(text in message for text in _OUT_OF_MEMORY_MESSAGES)


def gpu_budget_gb() -> float:
    """``MASKSAM_GPU_MEMORY_GB`` in GiB (unset or empty: 8); anything but a number above 0 is a
    `MaskSAMError` naming the variable."""
    return environment_number(GPU_BUDGET_ENV, DEFAULT_GPU_BUDGET_GB, "a GPU memory budget in GiB")


def gpu_budget_bytes(device: torch.device) -> int:
    """Bytes the automatic settings may plan to use on `device` (budget and free memory)."""
    budget = gpu_budget_gb() * 2 ** 30
    free, _total = torch.cuda.mem_get_info(device)
    reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    in_use = torch.cuda.memory_allocated(device)
    return int(max(0.0, min(budget - in_use, free + reusable)))


def measure_forward_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak extra GPU memory of one call of `run` (also serves as the warm-up)."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return max(1, torch.cuda.max_memory_allocated(device) - base)


def plan_window_batch(per_flip_bytes: float, slab_bytes_per_window: int, budget: int,
                      flips: int) -> Tuple[int, Optional[int]]:
    """(window batch, flips per forward or None for all) that fit `budget` bytes.

    per_flip_bytes: measured peak of one forward divided by the flips (images) it held.
    slab_bytes_per_window: accumulation slab growth per extra window in a batch.
    """
    usable = budget * SAFETY
    cost = per_flip_bytes * flips + slab_bytes_per_window
    if cost <= usable:
        batch = int(usable // cost)
        return max(1, min(batch, MAX_AUTO_WINDOW_BATCH)), None
    per_forward = flips
    while per_forward > 1 and per_flip_bytes * per_forward > usable:
        per_forward //= 2
    return 1, per_forward


def describe_bytes(value: int) -> str:
    return f"{value / 2 ** 30:.2f} GiB"
