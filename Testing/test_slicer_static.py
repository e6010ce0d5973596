"""Static checks of the Slicer extension: packaging configured with the real `cmake` against a
stand-in of Slicer's macros (every file installed, the installed tree importable), extension
metadata, widget names, signals and parameter bindings between code and .ui, and the import rules
between the parts."""

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
GUI = MODULE / "MaskSAMSegmentGui"     # the widget's tabs and requirements banner (mixins)
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
    code = ("import MaskSAMCore, MaskSAMCore.cli, MaskSAMSegmentLib.commands as c, MaskSAMCore.terminology as t;"
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


WIDGET_CLASSES = {"MaskSAMSegmentWidget", "RequirementsBannerMixin", "SegmentTabMixin", "TrainingTabMixin"}
SCRIPTED_WIDGET_MEMBERS = {"layout", "parent", "resourcePath", "addObserver", "removeObserver", "removeObservers"}


def test_every_member_the_widget_and_its_tabs_use_on_self_is_defined_by_one_of_them():
    """The widget is split over four classes in four files and cannot run outside Slicer: a
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


def ui_widget_classes():
    return {w.get("name"): w.get("class") for w in ElementTree.parse(UI_FILE).iter("widget")}


# Signals (PythonQt's normalised signatures) of the classes the widget connects to, from Qt's
# QAbstractButton/QComboBox/QListWidget/QTimer, CTK's Libs/Widgets/ctkPathLineEdit.h and Slicer's
# Libs/MRML/Widgets/qMRMLNodeComboBox.h. A misspelt signature only fails at run time, in Slicer.
_BUTTON = {"clicked(bool)", "clicked()", "toggled(bool)", "pressed()", "released()"}
SIGNALS = {
    "QPushButton": _BUTTON, "QToolButton": _BUTTON, "QRadioButton": _BUTTON, "QCheckBox": _BUTTON | {"stateChanged(int)"},
    "QComboBox": {"currentIndexChanged(int)", "currentTextChanged(QString)", "activated(int)"},
    "QListWidget": {"currentRowChanged(int)", "itemSelectionChanged()"},
    "ctkPathLineEdit": {"currentPathChanged(QString)", "validInputChanged(bool)"},
    "qMRMLNodeComboBox": {"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)", "currentNodeIDChanged(QString)"},
    "QTimer": {"timeout()"},
}


def _ui_names_in(node) -> list:
    """`self.ui.NAME` attributes inside `node`, in order."""
    return [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"]


def connections_by_class(path: Path):
    """(receiver class, signal, line) of every `X.connect("signal", ...)` in `path`. X is resolved
    when it is `self.ui.NAME`, a loop variable over self.ui widgets (or over the values of a dict
    of them), `self.<attr>` or a local assigned `qt.QTimer()` / `slicer.qMRMLNodeComboBox()`."""
    classes = ui_widget_classes()
    tree = ast.parse(path.read_text())
    variables, dicts = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Attribute):
                    dicts[target.attr] = [classes[name] for name in _ui_names_in(node.value)]
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            made = ast.unparse(node.value.func).rsplit(".", 1)[-1]
            for target in node.targets:
                key = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
                if made in SIGNALS and key:
                    variables[key] = [made]
    for node in ast.walk(tree):
        if isinstance(node, ast.For):
            targets = [node.target] if isinstance(node.target, ast.Name) else list(getattr(node.target, "elts", []))
            iterated = ast.unparse(node.iter)
            widget_classes = [classes[name] for name in _ui_names_in(node.iter)]
            for attr, dict_classes in dicts.items():
                if iterated == f"self.{attr}.items()":
                    widget_classes = dict_classes
            if widget_classes:
                variables[targets[-1].id] = widget_classes
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            continue
        receiver = node.func.value
        if _ui_names_in(receiver) and isinstance(receiver, ast.Attribute):
            receiver_classes = [classes[receiver.attr]]
        else:
            key = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", None)
            receiver_classes = variables.get(key, [f"unresolved receiver {ast.unparse(receiver)}"])
        found += [(cls, node.args[0].value, f"{path.name}:{node.lineno}") for cls in receiver_classes]
    return found


def test_every_signal_the_widget_connects_to_exists_on_its_widget_class():
    found = [c for path in [MODULE_FILE, *python_files(GUI)] for c in connections_by_class(path)]
    assert len(found) > 20
    wrong = [(cls, signal, where) for cls, signal, where in found if signal not in SIGNALS.get(cls, ())]
    assert wrong == []


# What Slicer's parameterNodeWrapper/guiConnectors.py can bind (canRepresent of each connector):
# a widget class that cannot represent its field makes connectGui raise, and the module never shows.
BINDABLE = {"QSpinBox": "int", "QSlider": "int", "QCheckBox": "bool", "QLineEdit": "str", "QComboBox": "Choice",
            "qMRMLNodeComboBox": "node", "QDoubleSpinBox": "float", "ctkPathLineEdit": "pathlib"}


def test_parameter_bound_widgets_can_represent_their_fields():
    module = ast.parse(MODULE_FILE.read_text())
    wrapper = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "MaskSAMSegmentParameterNode")
    fields = {n.target.id: ast.unparse(n.annotation) for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    tree = ElementTree.parse(UI_FILE)
    bound = {}
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget.get("name")] = (widget.get("class"), fields[prop.find("string").text])
    assert len(bound) >= 6
    for name, (cls, annotation) in bound.items():
        kind = BINDABLE.get(cls)
        if kind == "Choice":
            assert "Choice(" in annotation, f"{name}: a QComboBox needs a Choice(...) annotation, not {annotation}"
        elif kind == "node":
            assert annotation.startswith("vtkMRML"), f"{name}: {annotation}"
        else:
            assert kind is not None and re.match(rf"(Annotated\[)?{kind}\b", annotation), f"{name} ({cls}): {annotation}"


def test_every_node_selector_of_the_ui_has_node_types_and_gets_the_scene():
    tree = ElementTree.parse(UI_FILE)
    top = tree.find("widget")
    scene_receivers = {c.findtext("receiver") for c in tree.iter("connection")
                       if c.findtext("sender") == top.get("name") and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                       and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = [w for w in tree.iter("widget") if w.get("class") == "qMRMLNodeComboBox"]
    assert len(selectors) >= 4 and top.get("class") == "qMRMLWidget"
    for selector in selectors:
        types = [s.text for p in selector.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
        assert types and all(t.startswith("vtkMRML") for t in types), selector.get("name")
        assert selector.get("name") in scene_receivers, f"{selector.get('name')} never gets the scene: an empty list"
