"""Static checks of the Slicer extension: packaging configured with the real `cmake` against a
stand-in of Slicer's macros (every file installed, the installed tree importable), extension
metadata, widget names between code and .ui, and the import rules between the parts."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from slicer_support import REPO

MODULE = REPO / "MaskSAMSegment"
MODULE_FILE = MODULE / "MaskSAMSegment.py"
GUI = MODULE / "MaskSAMSegmentGui"     # the widget's tabs (mixins)
UI_FILE = MODULE / "Resources" / "UI" / "MaskSAMSegment.ui"
STUB = REPO / "Testing" / "cmake_stub"
SCRIPTED = "lib/Slicer-5.8/qt-scripted-modules"   # Slicer_QTSCRIPTEDMODULES_LIB_DIR of the stub
INDEX_CATEGORIES = {"Segmentation", "Quantification", "Registration", "Filtering", "IGT", "Informatics",
                    "Examples", "Utilities", "Sequences", "Diffusion", "Shape Analysis", "Training"}


def python_files(root: Path):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def needs_cmake():
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return pytest.mark.skipif(not (shutil.which("cmake") and compiler),
                              reason="needs cmake and a C compiler (project() enables C/C++)")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Configure the extension with the stub Slicer, install it, return (install root, record lines)."""
    build, prefix = tmp_path_factory.mktemp("build"), tmp_path_factory.mktemp("install")
    configure = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={STUB}",
                                "-DBUILD_TESTING=ON"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-3000:]
    install = subprocess.run(["cmake", "--install", str(build), "--prefix", str(prefix)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    record = (build / "slicer_stub_record.txt").read_text().splitlines()
    return prefix / SCRIPTED, [line.split("|", 2) for line in record]


@needs_cmake()
def test_every_module_and_core_file_is_installed_beside_the_module(installed):
    root, _ = installed
    wanted = [p.relative_to(MODULE) for p in python_files(MODULE) if "Testing" not in p.relative_to(MODULE).parts]
    wanted += [p.relative_to(MODULE) for p in (MODULE / "Resources").rglob("*") if p.is_file()]
    core = REPO / "MaskSAMCore"
    wanted += [p.relative_to(REPO) for p in core.rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and p.suffix != ".pyc"]
    missing = [str(path) for path in wanted if not (root / path).is_file()]
    assert missing == [], f"not installed: {missing}"
    assert (root / "MaskSAMSegment.py").read_bytes() == MODULE_FILE.read_bytes()


@needs_cmake()
def test_installed_tree_imports_its_own_core_and_finds_its_resources(installed):
    root, _ = installed
    code = ("import MaskSAMCore, MaskSAMCore.cli, MaskSAMSegmentLib.commands as c, MaskSAMSegmentLib.terminology as t;"
            "print(MaskSAMCore.__file__); print(c.core_parent_folder()); print(t.TERMINOLOGY_FILE);"
            "print(t.AnatomyTerminology().style('liver', 1).name)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(root))
    assert result.returncode == 0, result.stderr[-2000:]
    core_file, core_parent, terminology_file, liver = result.stdout.split("\n")[:4]
    assert Path(core_file).resolve().is_relative_to(root.resolve())
    assert Path(core_parent).resolve() == root.resolve()
    assert Path(terminology_file).resolve().is_relative_to(root.resolve()) and liver == "Liver"
    cli = subprocess.run([sys.executable, "-m", "MaskSAMCore", "--help"], capture_output=True, text=True, env=env,
                         cwd=str(root))
    assert cli.returncode == 0 and "predict" in cli.stdout


@needs_cmake()
def test_extension_metadata_is_complete_and_points_at_files_of_this_repository(installed):
    _, record = installed
    meta = {key: value for kind, key, value in record if kind == "META"}
    assert meta["PROJECT_NAME"] == "MaskSAM"
    assert meta["EXTENSION_CATEGORY"] in INDEX_CATEGORIES
    assert meta["EXTENSION_DEPENDS"] == "PyTorch"
    base = re.match(r"https://raw\.githubusercontent\.com/([\w.-]+/[\w.-]+)/[\w.-]+/", meta["EXTENSION_ICONURL"])
    assert base, meta["EXTENSION_ICONURL"]
    assert meta["EXTENSION_HOMEPAGE"].startswith(f"https://github.com/{base.group(1)}")
    for url in [meta["EXTENSION_ICONURL"], *meta["EXTENSION_SCREENSHOTURLS"].split()]:
        assert url.startswith(base.group(0)), url
        assert (REPO / url[len(base.group(0)):]).is_file(), f"{url} names no file of the repository"
    assert ("UNITTEST", "MaskSAMSegment.py") in {(kind, key) for kind, key, _ in record}
    assert any(kind == "CPACK" for kind, _, _ in record)
    text = (REPO / "CMakeLists.txt").read_text()
    assert text.count(base.group(1)) == 1, "the repository address must be written in one place only"


def ui_widget_names():
    tree = ElementTree.parse(UI_FILE)
    return {element.get("name") for element in tree.iter() if element.tag in ("widget", "layout")}


def test_every_ui_name_the_code_uses_exists_in_the_ui_file():
    names = ui_widget_names()
    used = set()
    for path in [MODULE_FILE, *python_files(GUI)]:
        used |= set(re.findall(r"self\.ui\.(\w+)", path.read_text()))
    lib = (MODULE / "MaskSAMSegmentLib" / "action_states.py").read_text()
    used |= set(re.findall(r'"(\w+Button)": ', lib))
    assert used and sorted(used - names) == []


WIDGET_CLASSES = {"MaskSAMSegmentWidget", "SegmentTabMixin", "TrainingTabMixin"}
SCRIPTED_WIDGET_MEMBERS = {"layout", "parent", "resourcePath", "addObserver", "removeObserver", "removeObservers"}


def test_every_member_the_widget_and_its_tabs_use_on_self_is_defined_by_one_of_them():
    """The widget is split over three classes in three files and cannot run outside Slicer: a
    handler or attribute left behind by a move would only show as an AttributeError on a click."""
    defined, used = set(SCRIPTED_WIDGET_MEMBERS), {}
    for path in [MODULE_FILE, *python_files(GUI)]:
        for cls in ast.parse(path.read_text()).body:
            if not (isinstance(cls, ast.ClassDef) and cls.name in WIDGET_CLASSES):
                continue
            defined |= {node.name for node in cls.body if isinstance(node, ast.FunctionDef)}
            for node in ast.walk(cls):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                    if isinstance(node.ctx, ast.Store):
                        defined.add(node.attr)
                    else:
                        used.setdefault(node.attr, f"{path.name}:{node.lineno}")
    assert len(defined) > 40
    assert {name: where for name, where in used.items() if name not in defined} == {}


def test_ui_parameter_names_are_fields_of_the_parameter_node():
    tree = ElementTree.parse(UI_FILE)
    bound = {prop.find("string").text for prop in tree.iter("property") if prop.get("name") == "SlicerParameterName"}
    module = ast.parse(MODULE_FILE.read_text())
    wrapper = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "MaskSAMSegmentParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert bound and bound <= fields
    custom = {c.find("class").text for c in tree.iter("customwidget")}
    used_classes = {w.get("class") for w in tree.iter("widget")}
    qt_classes = {c for c in used_classes if c.startswith("Q")}
    assert used_classes - qt_classes <= custom, "every non-Qt widget class needs a <customwidget> entry"


def imported_top_modules(path: Path) -> set:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_slicer_qt_ctk_or_vtk():
    forbidden = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt", "MaskSAMSegmentLib"}
    offenders = {str(p.relative_to(REPO)): sorted(imported_top_modules(p) & forbidden)
                 for p in python_files(REPO / "MaskSAMCore")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_module_logic_and_tabs_have_no_qt_and_never_import_torch():
    """qt and ctk are imported by the widget file only; nothing of the module imports torch."""
    offenders = {str(p.relative_to(REPO)): sorted(imported_top_modules(p) & {"qt", "ctk", "PythonQt", "torch"})
                 for p in python_files(MODULE / "MaskSAMSegmentLib") + python_files(GUI)}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert "torch" not in imported_top_modules(MODULE_FILE)


def test_icons_are_the_drawing_of_the_icon_script():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_icons
    finally:
        sys.path.remove(str(REPO / "scripts"))
    for path, size, detailed in [(REPO / "MaskSAM.png", 128, True),
                                 (MODULE / "Resources" / "Icons" / "MaskSAMSegment.png", 64, False)]:
        committed = plt.imread(path)
        assert committed.shape == (size, size, 4)
        np.testing.assert_allclose(committed, make_icons.draw(size, detailed), atol=1 / 255 + 1e-6)
        colours = np.unique((committed[..., :3] * 16).astype(int).reshape(-1, 3), axis=0)
        assert len(colours) > 40, "an icon is a picture, not a flat placeholder"


def test_license_is_the_complete_apache_text():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000


def test_importing_the_module_logic_loads_no_torch():
    """The GUI process must stay light: no module of the logic or of the tabs may pull torch in,
    even indirectly (through the parts of MaskSAMCore it uses)."""
    modules = sorted(f"{package.name}.{p.stem}" for package in (MODULE / "MaskSAMSegmentLib", GUI)
                     for p in package.glob("*.py") if p.stem != "__init__")
    code = (f"import sys; sys.path.insert(0, {str(MODULE)!r}); import importlib\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
