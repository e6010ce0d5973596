"""The first-use banner above both tabs: the Python packages MaskSAM needs that are not installed,
and the Install button.

Mixed into `MaskSAMSegmentWidget`; uses its `ui`, `updateButtons()` and, from the Segment tab,
`_startDeviceProbe()` (the devices are probed again once torch is installed).
"""

from typing import List

import slicer
from MaskSAMSegmentLib import requirements_check


class RequirementsBannerMixin:
    """The requirements label and Install button. No state of its own: what is missing is
    `requirements_check.STATUS`, scanned once and refreshed by an install."""

    def _checkRequirements(self) -> List[str]:
        missing = requirements_check.STATUS.missing()   # scanned once; refreshed by an install
        names = [requirement.name for requirement in missing]
        self.ui.requirementsLabel.text = f"MaskSAM needs Python packages that are not installed: {', '.join(names)}."
        self.ui.requirementsLabel.visible = self.ui.installRequirementsButton.visible = bool(missing)
        return names

    def onInstallRequirements(self) -> None:
        missing = requirements_check.STATUS.refresh()   # packages installed another way count too
        plan = requirements_check.install_plan(missing, requirements_check.is_installed("PyTorchUtils"))
        if plan.blockers:
            slicer.util.errorDisplay("\n".join(plan.blockers))
            return
        if plan.nothing_to_do:
            self.updateButtons()   # installed another way since the banner was drawn
            return
        if not slicer.util.confirmOkCancelDisplay(plan.question(), "Install Python packages"):
            return
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            requirements_check.install_in_slicer(plan)
        self._checkRequirements()
        self._startDeviceProbe()
        self.updateButtons()
