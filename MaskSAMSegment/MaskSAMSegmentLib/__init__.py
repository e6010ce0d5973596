"""Logic of the MaskSAMSegment Slicer module, without any Qt: node <-> image conversion,
installed models, running and cancelling MaskSAMCore jobs in the background, building
datasets from the scene. The widget (`MaskSAMSegment.py`) is a thin layer on top.

Sub-modules are imported where used; importing this package imports neither Slicer nor torch.
"""
