"""Build the installable Blender extension: dist/genlca-<version>.zip (standard library only).

The zip holds blender_addon/* at its root, a copy of the repository's bridge/ (its sub-packages included) as the
subpackage `bridge` (its absolute `bridge.` imports rewritten to relative ones; without BRIDGE_REPO_ONLY), and the wheels of pyzmq and
msgpack for every supported platform and Python (3.11: Blender 4.2-5.0; 3.13: Blender 5.1+), fetched
with `pip download --only-binary=:all:` and cached in build/wheels. The manifest in the zip lists them
(`wheels = [...]`) and the platforms they cover.

    python3 build_addon.py                     # all platforms (needs PyPI once; cached after)
    python3 build_addon.py --platform current  # only this machine's wheels (fast; for tests)
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "blender_addon"
BRIDGE = ROOT / "bridge"
WHEEL_CACHE = ROOT / "build" / "wheels"
PACKAGES = ("pyzmq==27.3.0", "msgpack==1.2.4")
PYTHONS = ("3.11", "3.13")
# Blender platform name -> pip --platform tags (pip takes the first wheel matching any of them)
PLATFORMS = {
    "linux-x64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64", "macosx_12_0_arm64", "macosx_14_0_arm64"),
    "macos-x64": ("macosx_10_9_x86_64", "macosx_10_15_x86_64", "macosx_11_0_x86_64", "macosx_13_0_x86_64"),
}
_EXCLUDE = re.compile(r"(__pycache__|\.pyc$|\.pyo$|^\.)")
# bridge modules for the repository's scripts and tests only: the add-on connects to a backend, never starts one
BRIDGE_REPO_ONLY = frozenset({"local_backend.py"})


def host_platform() -> str:
    system, machine = platform.system(), platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x64"
    name = {"Linux": "linux", "Windows": "windows", "Darwin": "macos"}.get(system, system.lower())
    return f"{name}-{arch}"


def manifest_version(text: str) -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise SystemExit("blender_addon/blender_manifest.toml has no version")
    return m.group(1)


def download_wheels(blender_platform: str | None, python: str, pip: list[str]) -> list[Path]:
    """Wheels of PACKAGES for one platform (None: the host) and Python version, cached in build/wheels."""
    folder = WHEEL_CACHE / f"{blender_platform or 'host-' + host_platform()}-cp{python.replace('.', '')}"
    stamp = folder / ".complete"
    if not (stamp.exists() and stamp.read_text() == "\n".join(PACKAGES)):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        abi = "cp" + python.replace(".", "")
        cmd = [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python,
               "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", "--dest", str(folder)]
        for tag in PLATFORMS[blender_platform] if blender_platform else ():
            cmd += ["--platform", tag]
        cmd += list(PACKAGES)
        print("[build_addon]", " ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"pip download failed for {blender_platform or 'this machine'} / Python {python}")
        stamp.write_text("\n".join(PACKAGES))
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != len(PACKAGES):
        raise SystemExit(f"expected {len(PACKAGES)} wheels in {folder}, found {[w.name for w in wheels]}")
    return wheels


def vendored_bridge_source(text: str, name: str) -> str:
    """Turn the bridge's absolute self-imports into relative ones (it becomes genlca.bridge). `name` is the
    module's path inside bridge/ (e.g. "wire/codec.py"): its depth sets the number of leading dots."""
    dots = "." * name.count("/") + "."
    text = re.sub(r"^(\s*)from bridge\.([\w.]+) import ", lambda m: f"{m.group(1)}from {dots}{m.group(2)} import ",
                  text, flags=re.M)
    text = re.sub(r"^(\s*)from bridge import ", rf"\1from {dots} import ", text, flags=re.M)
    text = re.sub(r"^(\s*)import bridge\.([\w.]+)\.(\w+) as (\w+)", rf"\1from {dots}\2 import \3 as \4", text,
                  flags=re.M)
    text = re.sub(r"^(\s*)import bridge\.(\w+) as (\w+)", rf"\1from {dots} import \2 as \3", text, flags=re.M)
    left = re.findall(r"^\s*(?:import bridge|from bridge)\b.*$", text, flags=re.M)
    if left:
        raise SystemExit(f"bridge/{name} has imports build_addon.py cannot make relative: {left}")
    return text


def bridge_modules() -> list[Path]:
    """The bridge's modules that go into the extension (sub-packages included), as paths inside bridge/."""
    return sorted(p.relative_to(BRIDGE) for p in BRIDGE.rglob("*.py")
                  if "__pycache__" not in p.parts and p.relative_to(BRIDGE).as_posix() not in BRIDGE_REPO_ONLY)


def build(platforms: list[str] | None, out_dir: Path, pip: list[str]) -> Path:
    manifest = (ADDON / "blender_manifest.toml").read_text()
    version = manifest_version(manifest)
    wheels: list[Path] = []
    for python in PYTHONS:  # one zip serves Blender 4.2-5.0 (Python 3.11) and 5.1+ (Python 3.13)
        for plat in platforms or [None]:
            wheels += [w for w in download_wheels(plat, python, pip) if w.name not in {x.name for x in wheels}]
    listed = ", ".join(f'"./wheels/{w.name}"' for w in wheels)
    manifest, n = re.subn(r"^wheels\s*=\s*\[[^\]]*\]", f"wheels = [{listed}]", manifest, flags=re.M)
    if n != 1:
        raise SystemExit("blender_addon/blender_manifest.toml needs one `wheels = [...]` line")
    plats = platforms or [host_platform()]
    manifest = manifest.replace("\n[permissions]", "platforms = [" + ", ".join(f'"{p}"' for p in plats)
                                + "]\n\n[permissions]", 1)

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"genlca-{version}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(ADDON.rglob("*")):
            rel = path.relative_to(ADDON)
            if path.is_dir() or any(_EXCLUDE.search(part) for part in rel.parts):
                continue
            if rel.parts[0] in ("bridge", "wheels"):
                raise SystemExit(f"blender_addon/{rel} clashes with what build_addon.py adds")
            if rel.as_posix() == "blender_manifest.toml":
                zf.writestr("blender_manifest.toml", manifest)
            else:
                zf.write(path, rel.as_posix())
        for rel in bridge_modules():
            zf.writestr(f"bridge/{rel.as_posix()}", vendored_bridge_source((BRIDGE / rel).read_text(), rel.as_posix()))
        for wheel in wheels:
            zf.write(wheel, f"wheels/{wheel.name}")
    os.replace(tmp, target)
    print(f"[build_addon] {target} ({target.stat().st_size / 1e6:.1f} MB, {len(wheels)} wheels, "
          f"platforms {', '.join(plats)})")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--platform", action="append", default=None,
                    help=f"'current' (this machine only) or one of {sorted(PLATFORMS)}; repeatable; default: all")
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    ap.add_argument("--pip", default=None, help="the pip to run (default: this Python's `-m pip`)")
    args = ap.parse_args(argv)
    pip = args.pip.split() if args.pip else [sys.executable, "-m", "pip"]
    if args.platform == ["current"]:
        platforms = None
    else:
        platforms = args.platform or list(PLATFORMS)
        unknown = sorted(set(platforms) - set(PLATFORMS))
        if unknown:
            raise SystemExit(f"unknown platforms {unknown}; expected 'current' or {sorted(PLATFORMS)}")
    build(platforms, args.out, pip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
