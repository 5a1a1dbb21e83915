"""One way to write a file so that no reader ever sees half of it: `write_atomic`.

The data goes to a fresh temporary file beside the target, created exclusively under an unpredictable name
(`tempfile.mkstemp`: O_CREAT | O_EXCL, so nothing planted there, a symlink included, is followed or
overwritten), and is renamed over the target (a rename replaces a symlink at the target itself, never the
file it points to). A failed write leaves no temporary file. Standard library only: the backend, the
training commands, the benchmarks and the Blender add-on all write through it.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str | Iterable[bytes], *, mode: int = 0o644,
                 durable: bool = False) -> Path:
    """Write `data` (bytes, text as UTF-8, or byte chunks) to `path` with permissions `mode`; `durable`:
    fsync before the rename (key files). Creates the parent folder. Returns `path`."""
    path = Path(path)
    chunks = [data.encode()] if isinstance(data, str) else [data] if isinstance(data, (bytes, bytearray)) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
