"""Export an avatar through the backend (`export` op: PLY or .safetensors) and write the file atomically."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from ._bridge import protocol


def safe_filename(name: str, fallback: str) -> str:
    """A file name without folders or odd characters (the backend suggests it; we do not trust it)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(name or "")).strip("._")
    return name or fallback


def write_atomic(path: str | os.PathLike, data: bytes | np.ndarray) -> Path:
    """Write to a temporary file next to `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.tobytes() if isinstance(data, np.ndarray) else data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export_avatar(session, avatar_id: str, fmt: str, out_dir: str | os.PathLike, *, scene_name: str = "",
                  on_done: Callable[[Path], None] | None = None,
                  on_error: Callable[[str, str], None] | None = None) -> str:
    """Send an Export request; the result's "file" array is written into `out_dir`. Returns the job id."""
    if fmt not in protocol.EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {protocol.EXPORT_FORMATS}, got {fmt!r}")

    def on_result(reply) -> None:
        data = reply.arrays.get("file")
        if data is None or data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError("the backend's export result has no uint8 'file' array")
        name = safe_filename(str(reply.header.get("filename", "")), f"genlca_{avatar_id[:8]}.{fmt}")
        path = write_atomic(Path(out_dir) / name, data)
        if on_done:
            on_done(path)

    return session.submit(protocol.Export(avatar_id=avatar_id, format=fmt), label=f"export {fmt}",
                          scene_name=scene_name, on_result=on_result, on_error=on_error)
