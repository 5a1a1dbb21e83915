"""Import boundaries (DESIGN.md): each package in a fresh interpreter, checking what lands in sys.modules.

bridge never loads torch, bpy or gsplat; backend.server never loads bpy; the add-on's modules that do not
import bpy never load torch.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(imports: list[str], watch: tuple[str, ...]) -> list[str]:
    code = (f"import importlib, json, sys\n"
            f"for name in {imports!r}: importlib.import_module(name)\n"
            f"print(json.dumps([m for m in {watch!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bridge_loads_no_torch_bpy_or_gsplat():
    modules = ["bridge", "bridge.client", "bridge.codec", "bridge.protocol"]
    modules += [f"bridge.{p.stem}" for p in sorted((ROOT / "bridge").glob("*.py")) if p.stem != "__init__"]
    assert loaded_after(sorted(set(modules)), ("torch", "bpy", "gsplat")) == []


def test_backend_server_and_cli_load_no_bpy():
    assert loaded_after(["backend.server", "backend.jobs", "backend.cli", "backend.pipelines.placeholder",
                         "backend.pipelines.store"], ("bpy",)) == []


def test_blender_addon_modules_without_bpy_load_no_torch():
    """Every add-on module whose source has no `import bpy` imports outside Blender without torch. The
    package's __init__ (which registers the bpy modules) is replaced by an empty package for this."""
    folder = ROOT / "blender_addon"
    modules = [p.stem for p in sorted(folder.glob("*.py"))
               if p.stem != "__init__" and "import bpy" not in p.read_text()]
    if not modules:
        pytest.skip("no bpy-free modules in blender_addon/ yet")
    code = ("import importlib, json, sys, types\n"
            f"pkg = types.ModuleType('blender_addon'); pkg.__path__ = [{str(folder)!r}]\n"
            "sys.modules['blender_addon'] = pkg\n"
            f"for name in {modules!r}: importlib.import_module('blender_addon.' + name)\n"
            "print(json.dumps([m for m in ('torch', 'gsplat', 'bpy') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
