"""First use: which Python packages the jobs need are missing, and how to install them.

The decision is pure logic (testable without Slicer); the widget asks the user, then installs
torch through the PyTorch extension's `PyTorchUtils` (a plain ``pip install torch`` may pick a
build that does not match the GPU driver) and the rest with Slicer's pip helpers.
`importlib.util.find_spec` tells whether a package is installed without importing it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from MaskSAMCore import version_tuple


@dataclass(frozen=True)
class Requirement:
    name: str                 # what the user reads
    import_name: str          # top-level module to look for
    pip_spec: str             # requirement specifier (kept equal to pyproject.toml's)
    via_pytorch: bool = False  # install through the PyTorch extension, not pip
    training_only: bool = False   # segmenting (and downloading SAM weights) works without it


REQUIREMENTS = (
    Requirement("PyTorch", "torch", "torch>=2.4", via_pytorch=True),
    Requirement("Segment Anything", "segment_anything", "segment-anything>=1.0"),
    Requirement("NumPy", "numpy", "numpy>=1.23"),
    Requirement("SciPy", "scipy", "scipy>=1.9"),
    Requirement("SimpleITK", "SimpleITK", "SimpleITK>=2.2"),
    Requirement("pydicom", "pydicom", "pydicom>=2.4"),   # bundled with Slicer; enhanced DICOM input
    Requirement("Matplotlib", "matplotlib", "matplotlib>=3.6", training_only=True),   # training's progress.png
)


def is_installed(import_name: str) -> bool:
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ImportError, ValueError):
        return False


def installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_too_old(requirement: Requirement, version_of: Callable[[str], Optional[str]]) -> bool:
    """Whether the installed distribution is older than the ``>=`` bound of `requirement`."""
    distribution, _, minimum = requirement.pip_spec.partition(">=")
    found = version_tuple(version_of(distribution) or "")
    return bool(minimum and found) and found < version_tuple(minimum)


def missing_requirements(installed: Callable[[str], bool] = is_installed,
                         requirements: Sequence[Requirement] = REQUIREMENTS,
                         version_of: Callable[[str], Optional[str]] = installed_version) -> List[Requirement]:
    """The requirements that are not installed, or installed in a version older than needed."""
    return [requirement for requirement in requirements
            if not installed(requirement.import_name) or is_too_old(requirement, version_of)]


class RequirementsStatus:
    """`missing_requirements()` scanned once and remembered: the widget asks on every button
    update (each keystroke in a path field), and a scan reads the metadata of every installed
    distribution. Packages change only when installed, so `refresh()` after an install."""

    def __init__(self, scan: Callable[[], List[Requirement]] = missing_requirements) -> None:
        self._scan = scan
        self._missing: Optional[List[Requirement]] = None

    def missing(self) -> List[Requirement]:
        if self._missing is None:
            self._missing = self._scan()
        return list(self._missing)

    def refresh(self) -> List[Requirement]:
        """Scan again (after an install, or when the user asks to install)."""
        self._missing = None
        return self.missing()


STATUS = RequirementsStatus()   # one per Python session: installed packages are the session's


@dataclass
class InstallPlan:
    """What to install, and what cannot be installed from here."""

    torch_requirement: Optional[str] = None          # for PyTorchUtils' installTorch
    pip_requirements: List[str] = field(default_factory=list)
    blockers: List[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return self.torch_requirement is None and not self.pip_requirements and not self.blockers

    def question(self) -> str:
        """The text of the confirmation dialog."""
        items = ([f"PyTorch ({self.torch_requirement}, through the PyTorch extension)"] if self.torch_requirement else [])
        items += self.pip_requirements
        return ("MaskSAM needs these Python packages, which are missing or too old:\n  - "
                + "\n  - ".join(items)
                + "\n\nInstalling them downloads several hundred MB and can take a few minutes. Install now?")


def install_plan(missing: Sequence[Requirement], pytorch_extension_available: bool) -> InstallPlan:
    plan = InstallPlan()
    for requirement in missing:
        if requirement.via_pytorch:
            if pytorch_extension_available:
                plan.torch_requirement = requirement.pip_spec[len("torch"):]
            else:
                plan.blockers.append("PyTorch is not installed and the PyTorch extension is missing: "
                                     "install 'PyTorch' from the Extensions Manager and restart Slicer")
        else:
            plan.pip_requirements.append(requirement.pip_spec)
    return plan


def install_in_slicer(plan: InstallPlan) -> None:
    """Carry out `plan` inside Slicer: torch through the PyTorch extension, the rest with pip
    (with Slicer's progress dialog where this Slicer has one). Raises on failure."""
    try:
        _install(plan)
    finally:
        STATUS.refresh()   # a failed install may still have installed some of the packages


def _install(plan: InstallPlan) -> None:
    import slicer  # only available (and only called) inside Slicer

    if plan.torch_requirement:
        import PyTorchUtils

        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=plan.torch_requirement) is None:
            raise RuntimeError("PyTorch was not installed (see the PyTorch Utils module)")
    if plan.pip_requirements:
        try:
            import slicer.packaging  # Slicer >= 5.12: installs with a progress dialog
        except ImportError:
            slicer.util.pip_install(" ".join(plan.pip_requirements))
        else:
            slicer.packaging.pip_install(plan.pip_requirements, requester="MaskSAM")
