"""The two tabs of the MaskSAMSegment widget and its first-use requirements banner, split out of
`MaskSAMSegment.py` so that each file stays short enough to read in one go.

Each is a mixin of `MaskSAMSegmentWidget` (the pattern of Slicer's `VTKObservationMixin`): its
methods use the widget's `ui`, timer and shared helpers, and the widget connects the buttons to them.
This is GUI code, thin like the widget: the work itself is in MaskSAMSegmentLib. Like everything but
the widget file, it imports neither qt nor ctk, and never torch.
"""
