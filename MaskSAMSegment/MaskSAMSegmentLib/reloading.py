"""What the module's developer Reload must do beyond Slicer's own.

`slicer.util.reloadScriptedModule` executes MaskSAMSegment.py again and nothing else: the
packages it imports (this one, the tabs, the in-process parts of MaskSAMCore) stay cached in
`sys.modules`, so an edit to them would not take effect. The widget forgets them first. The old
widget's `cleanup()` then stops every background job, so Reload asks before ending one.
"""

from __future__ import annotations

from typing import Iterable, List, Optional

from MaskSAMSegmentLib.action_states import Activity

RELOADED_PACKAGES = ("MaskSAMSegmentLib", "MaskSAMSegmentGui", "MaskSAMCore")


def modules_to_forget(loaded: Iterable[str]) -> List[str]:
    """The names among `loaded` (sys.modules) of the packages Reload must import afresh."""
    return sorted(name for name in loaded if name.split(".", 1)[0] in RELOADED_PACKAGES)


def reload_question(activity: Activity) -> Optional[str]:
    """The confirmation to ask before a Reload stops running work; None when nothing runs."""
    running = [what for what, busy in (("a training (the last finished epoch can be resumed)", activity.training),
                                       ("a segmentation", activity.segmenting),
                                       ("a SAM download (it goes on where it stopped next time)", activity.downloading),
                                       ("a dataset build (nothing of it is kept)", activity.building_dataset))
               if busy]
    if not running:
        return None
    return f"Reloading the module stops {' and '.join(running)}. Reload anyway?"
