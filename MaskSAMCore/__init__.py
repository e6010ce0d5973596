"""MaskSAMCore: MaskSAM (auto-prompted, mask-classifying Segment Anything) for 3D medical images.

Pure PyTorch; nothing here imports Slicer, Qt, CTK or VTK. The command line is `masksam`
(also `python -m MaskSAMCore`), see `MaskSAMCore.cli`.
"""

__version__ = "0.1.0"
