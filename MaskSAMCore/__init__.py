"""MaskSAMCore: MaskSAM (auto-prompted, mask-classifying Segment Anything) for 3D medical images.

Pure PyTorch; nothing here imports Slicer, Qt, CTK or VTK. The command line is `masksam`
(also `python -m MaskSAMCore`), see `MaskSAMCore.cli`.
"""

import re

__version__ = "0.1.0"

# torch.get_autocast_dtype(device) and torch.compiler.is_compiling() are used (both PyTorch 2.4+).
MINIMUM_TORCH = (2, 4)


def version_tuple(version: str) -> tuple:
    """``"2.13.0+cu130" -> (2, 13)``; ``()`` when it does not start with two numbers."""
    match = re.match(r"(\d+)\.(\d+)", version.strip())
    return (int(match.group(1)), int(match.group(2))) if match else ()
