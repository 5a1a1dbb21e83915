"""Export an avatar through the backend (`export` op: PLY, .safetensors or GLB with the scene's motion) and
write the file atomically.

Every file the add-on writes (exports here, rendered frames in render.py) goes through `write_atomic`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from ._bridge import files, protocol


AVATAR_EXTENSIONS = {"ply": ".ply", "safetensors": ".safetensors", "glb": ".glb"}  # the only names the add-on writes for avatars
MAX_NAME = 128


def safe_filename(name: str, fallback: str, fmt: str) -> str:
    """The name to save an exported avatar under, from the name the backend suggests (not trusted): its last
    path component only, letters, digits and ._- only, no leading dot, and always ending in the extension
    of `fmt` (".ply", ".safetensors" or ".glb"; another avatar suffix is replaced, any other suffix stays part
    of the name: "x.sh" -> "x.sh.ply")."""
    if fmt not in AVATAR_EXTENSIONS:
        raise ValueError(f"format must be one of {sorted(AVATAR_EXTENSIONS)}, got {fmt!r}")
    ext = AVATAR_EXTENSIONS[fmt]
    base = re.split(r"[\\/]", name or "")[-1]  # a Windows separator is a separator too
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    stem = base
    for known in AVATAR_EXTENSIONS.values():
        if stem.lower().endswith(known):
            stem = stem[:-len(known)].rstrip("._")
            break
    stem = stem[:MAX_NAME - len(ext)]
    if not stem:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", fallback).strip("._")[:MAX_NAME - len(ext)] or "genlca"
    return stem + ext


def write_atomic(path: str | os.PathLike, data: bytes | np.ndarray) -> Path:
    """`data` (bytes or an array's raw bytes) to `path` through bridge.files.atomic.write_atomic: an exclusively
    created temporary file renamed into place (no planted symlink is followed)."""
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    elif not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"write_atomic takes bytes or an array, not {type(data).__name__}")
    return files.write_atomic(path, data)


def export_avatar(session, avatar_id: str, fmt: str, out_dir: str | os.PathLike, *, scene_name: str = "",
                  on_done: Callable[[Path], None] | None = None,
                  on_error: Callable[[str, str], None] | None = None,
                  motion: tuple[dict[str, np.ndarray], float] | None = None, filepath: str | None = None) -> str:
    """Send an Export request; the result's "file" array is written into `out_dir` (or to `filepath`, a
    path the user picked). motion: (pose arrays, fps) of a "glb" export's animation. Returns the job id."""
    if fmt not in protocol.EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {protocol.EXPORT_FORMATS}, got {fmt!r}")

    def on_result(reply) -> None:
        data = reply.arrays.get("file")
        if data is None or data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError("the backend's export result has no uint8 'file' array")
        if filepath:
            path = write_atomic(filepath, data)
        else:
            name = safe_filename(str(reply.header.get("filename", "")), f"genlca_{avatar_id[:8]}", fmt)
            path = write_atomic(Path(out_dir) / name, data)
        if on_done:
            on_done(path)

    if motion is None:
        return session.submit(protocol.Export(avatar_id=avatar_id, format=fmt), label=f"export {fmt}",
                              scene_name=scene_name, on_result=on_result, on_error=on_error)
    arrays, fps = motion
    return session.submit(protocol.Export(avatar_id=avatar_id, format=fmt, fps=float(fps)), arrays,
                          label=f"export {fmt}", scene_name=scene_name, on_result=on_result, on_error=on_error)
