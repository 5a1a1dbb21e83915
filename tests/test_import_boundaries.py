"""Import boundaries (docs/DESIGN.md, docs/ARCHITECTURE.md), for every module of every package, found by walking
the folders (a module added tomorrow is checked without editing this file).

Two checks, because they catch different things:

* dynamic: each package's modules are imported one by one in a fresh interpreter, and after each import the
  forbidden packages must still be absent from sys.modules (the first module after which one appears is
  named). This sees transitive imports. bridge loads no torch, bpy or gsplat; backend and training load no
  bpy; backend loads no training (photo perception lives in backend/perception, training imports it);
  nothing in backend or training loads gsplat at import (it is imported lazily, on CUDA only; on this CPU
  machine `import backend.render` must not pull it in).
* static: every `import` statement in the source, also those inside functions (lazy imports the dynamic
  check never executes). The add-on never imports torch or gsplat; bridge never imports torch, bpy or
  gsplat; backend and training never import bpy; backend never imports training. The add-on's modules need
  bpy, so they are checked this way here (the add-on suite imports them all inside real Blender:
  tests/blender/test_install.py).

Tests themselves import neither benchmarks/ nor another test module (statically, also in the scripts they
hand to subprocesses): shared fixtures live in tests/conftest.py and in fixture modules (tests/*.py not named
test_*), measurement code in the library.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must never import (statically, anywhere in its source)
FORBIDDEN = {
    "bridge": ("torch", "bpy", "gsplat", "backend", "training", "blender_addon"),
    "backend": ("bpy", "blender_addon", "training"),  # training imports backend, never the other way
    "training": ("bpy", "blender_addon"),
    "blender_addon": ("torch", "gsplat", "backend", "training"),
}
# package -> modules that must not be in sys.modules after importing all of it (this machine has no CUDA)
NOT_LOADED = {
    "bridge": ("torch", "bpy", "gsplat"),
    "backend": ("bpy", "gsplat", "training"),
    "training": ("bpy", "gsplat"),
}


def modules_of(package: str) -> list[str]:
    """Every module of a package folder, as dotted names, packages before their modules."""
    root = ROOT / package
    names = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if "__pycache__" in parts:
            continue
        names.append(".".join(parts))
    return names


def imported_names(path: Path, root: Path = ROOT) -> set[str]:
    """Top-level names of every module the file imports (absolute and relative, at any depth of the code;
    also importlib.import_module / __import__ with a literal name). root: the folder packages live in."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).with_suffix("").parts
    here = rel[:-1]  # the package the file is in
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.add((node.module or "").split(".")[0])
            else:  # relative: resolve against the file's package; stays inside `package` or is an error
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join(base + tuple((node.module or "").split("."))).strip(".")
                out.add(target.split(".")[0] if base else "<outside>")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.add(str(node.args[0].value).split(".")[0])
    return out - {""}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_what_its_package_must_not(package: str):
    files = [p for p in sorted((ROOT / package).rglob("*.py")) if "__pycache__" not in p.parts]
    assert files, f"no modules found under {package}/"
    bad = {}
    for path in files:
        hit = sorted(imported_names(path) & set(FORBIDDEN[package] + ("<outside>",)))
        if hit:
            bad[str(path.relative_to(ROOT))] = hit
    assert bad == {}, f"{package} must never import {FORBIDDEN[package]}: {bad}"


# the backend's floors, top to bottom: a room imports only rooms below it (docs/ARCHITECTURE.md, "The house")
BACKEND_FLOORS = {
    "backend/pipelines": ("backend.service",),
    "backend/models": ("backend.service", "backend.pipelines"),
    "backend/sampling": ("backend.service", "backend.pipelines"),
    "backend/avatar": ("backend.service", "backend.pipelines"),
    "backend/render": ("backend.service", "backend.pipelines"),
}


def dotted_imports(path: Path) -> set[str]:
    """The dotted names of every absolute import in the file (at any depth of the code)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


@pytest.mark.parametrize("room", sorted(BACKEND_FLOORS))
def test_no_backend_room_imports_a_room_above_it(room: str):
    bad = {}
    for path in sorted((ROOT / room).rglob("*.py")):
        hit = sorted(name for name in dotted_imports(path)
                     if any(name == up or name.startswith(up + ".") for up in BACKEND_FLOORS[room]))
        if hit:
            bad[str(path.relative_to(ROOT))] = hit
    assert bad == {}, f"{room} must never import {BACKEND_FLOORS[room]}: {bad}"


def test_static_check_sees_lazy_and_relative_imports(tmp_path):
    """The AST walk finds an import inside a function and resolves relative ones (so the check can fail)."""
    (tmp_path / "blender_addon").mkdir()
    probe = tmp_path / "blender_addon" / "probe.py"
    probe.write_text("def f():\n    import torch.nn\n    from . import session\n    from .. import backend\n"
                     "    import importlib\n    importlib.import_module('gsplat')\n")
    names = imported_names(probe, tmp_path)
    assert {"torch", "blender_addon", "<outside>", "importlib", "gsplat"} <= names


def loaded_after_each(modules: list[str], watch: tuple[str, ...]) -> dict:
    """Import the modules in order in one fresh interpreter; returns {"first": {forbidden: module after which
    it appeared}, "failed": {module: error}}."""
    code = ("import importlib, json, sys, traceback\n"
            f"watch = {watch!r}\n"
            "first, failed = {}, {}\n"
            f"for name in {modules!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as exc:\n"
            "        failed[name] = f'{type(exc).__name__}: {exc}'\n"
            "    for m in watch:\n"
            "        if m in sys.modules and m not in first:\n"
            "            first[m] = name\n"
            "print(json.dumps({'first': first, 'failed': failed}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", sorted(NOT_LOADED))
def test_every_module_imports_without_loading_what_it_must_not(package: str):
    modules = modules_of(package)
    assert package in modules and len(modules) > 1, modules
    got = loaded_after_each(modules, NOT_LOADED[package])
    assert got["failed"] == {}, f"modules of {package} that do not import: {got['failed']}"
    assert got["first"] == {}, f"{package} loaded {got['first']} (forbidden -> the module that pulled it in)"


def test_backend_render_does_not_load_gsplat_on_cpu():
    code = ("import json, sys, torch\nimport backend.render\n"
            "print(json.dumps([torch.cuda.is_available(), 'gsplat' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cuda, gsplat_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert not gsplat_loaded or cuda


def test_discovery_finds_the_packages_modules():
    """The walk is what makes new modules checked: it must see nested packages and plain modules."""
    backend = modules_of("backend")
    assert {"backend.render", "backend.render.cpu_rasterizer", "backend.service.server",
            "backend.avatar.gaussians"} <= set(backend)
    assert "training.data" in modules_of("training")
    assert {"blender_addon.session", "blender_addon.panels"} <= set(modules_of("blender_addon"))


def test_static_check_refuses_backend_importing_training(tmp_path):
    """A lazy `from training...` inside a backend function is the case the old photo path had: it must fail."""
    (tmp_path / "backend").mkdir()
    probe = tmp_path / "backend" / "probe.py"
    probe.write_text("def observe():\n    from training.data.ingest import ingest_photo\n    return ingest_photo\n")
    assert imported_names(probe, tmp_path) & set(FORBIDDEN["backend"]) == {"training"}


SCRIPT_IMPORT = re.compile(r"^\s*(?:from|import)\s+((?:tests|benchmarks)\b[\w.]*)", re.MULTILINE)


def test_no_test_imports_benchmarks_or_another_test_module():
    """A test module imported by another runs its set-up twice and can be collected under two names; a test
    that imports benchmarks/ tests code the library does not ship. Lines of subprocess scripts count too."""
    files = [p for p in sorted((ROOT / "tests").rglob("*.py")) if "__pycache__" not in p.parts]
    bad = {}
    for path in files:
        names = dotted_imports(path) | set(SCRIPT_IMPORT.findall(path.read_text()))
        hit = sorted(n for n in names if n.split(".")[0] == "benchmarks"
                     or (n.split(".")[0] == "tests" and any(part.startswith("test_") for part in n.split(".")[1:])))
        if hit:
            bad[str(path.relative_to(ROOT))] = hit
    assert bad == {}, f"tests import benchmarks or test modules: {bad}"


def test_the_keys_command_does_not_load_torch(tmp_path):
    """`genlca-backend keys` needs only zmq: backend/service/cli.py imports the serving code (torch, the model)
    inside `main`, only for `serve`."""
    code = ("import sys; from backend.service.cli import main; "
            f"rc = main(['keys', '--keys-dir', {str(tmp_path / 'keys')!r}]); "
            "print(rc, sorted(m for m in ('torch', 'backend.pipelines', 'backend.service.serving') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "0 []"
