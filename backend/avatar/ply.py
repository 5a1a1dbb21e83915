"""The standard 3DGS PLY (binary little endian), as written by the original gaussian-splatting code.

Vertex properties, all float32, in this order (62):
    x y z, nx ny nz (zeros), f_dc_0..2, f_rest_0..44, opacity (logit), scale_0..2 (log), rot_0..3 (w x y z)
f_dc is sh[:, 0]; f_rest is channel-major: the 15 higher-order coefficients of R, then of G, then of B.
The file always carries degree-3 room: degree < 3 is zero-padded on export; `load_ply` always reads the 45
f_rest values and keeps `sh_degree` of them (default 3), because zeros cannot tell an absent band from a
band that happens to be zero. Skin weights and skeletons are not part of this format (see avatar_file).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from backend.avatar.gaussians import Gaussians, sh_coeff_count

PROPERTIES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
              + [f"f_rest_{i}" for i in range(45)]
              + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
VERTEX_DTYPE = np.dtype([(name, "<f4") for name in PROPERTIES])


def _header(n: int) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in PROPERTIES] + ["end_header"]
    return ("\n".join(lines) + "\n").encode("ascii")


def gaussians_to_vertices(gaussians: Gaussians) -> np.ndarray:
    """Gaussians -> structured array (N,) of VERTEX_DTYPE."""
    g = gaussians.with_sh_degree(3).detach().to("cpu", torch.float32)
    n = len(g)
    flat = np.zeros((n, len(PROPERTIES)), dtype="<f4")  # (N, 62)
    flat[:, 0:3] = g.means.numpy()
    sh = g.sh.numpy()  # (N, 16, 3)
    flat[:, 6:9] = sh[:, 0]
    flat[:, 9:54] = sh[:, 1:].transpose(0, 2, 1).reshape(n, 45)  # channel-major
    flat[:, 54] = g.opacity_logits.numpy()
    flat[:, 55:58] = g.log_scales.numpy()
    flat[:, 58:62] = g.rotations.numpy()
    return flat.view(VERTEX_DTYPE).reshape(n)


def save_ply(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write atomically (a temporary file in the same folder, then os.replace)."""
    path = Path(path)
    gaussians.validate(check_finite=True)
    vertices = gaussians_to_vertices(gaussians)  # (N,)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_header(len(vertices)))
            f.write(vertices.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _parse_header(data: bytes, path: Path) -> tuple[int, list[str], int]:
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file (no 'ply' magic or no end_header)")
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        fmt = next((ln for ln in lines if ln.startswith("format")), "no format line")
        raise ValueError(f"{path}: expected 'format binary_little_endian 1.0', got {fmt!r}")
    count, names, element = None, [], None
    for ln in lines:
        parts = ln.split()
        if parts[:1] == ["element"]:
            element = parts[1]
            if element == "vertex":
                count = int(parts[2])
            elif count is not None:
                raise ValueError(f"{path}: unexpected element {element!r} after vertex (not a 3DGS PLY)")
        elif parts[:1] == ["property"] and element == "vertex":
            if parts[1] not in ("float", "float32"):
                raise ValueError(f"{path}: vertex property {parts[-1]!r} has type {parts[1]!r}, expected float")
            names.append(parts[-1])
    if count is None:
        raise ValueError(f"{path}: no vertex element")
    return count, names, end + len(b"end_header\n")


def load_ply(path: str | os.PathLike, sh_degree: int = 3) -> Gaussians:
    """Read a 3DGS PLY (any extra float properties are ignored) into float32 Gaussians of `sh_degree`."""
    path = Path(path)
    data = path.read_bytes()
    count, names, offset = _parse_header(data, path)
    missing = [p for p in PROPERTIES if p not in names and not p.startswith("n")]
    if missing:
        raise ValueError(f"{path}: missing 3DGS properties {missing[:6]}{'...' if len(missing) > 6 else ''}")
    dtype = np.dtype([(name, "<f4") for name in names])
    expect = count * dtype.itemsize
    if len(data) - offset < expect:
        raise ValueError(f"{path} is truncated: {count} vertices need {expect} bytes, found {len(data) - offset}")
    v = np.frombuffer(data, dtype=dtype, count=count, offset=offset)  # (N,)

    def cols(keys: list[str]) -> np.ndarray:
        return np.stack([v[k] for k in keys], -1).astype(np.float32)  # (N, len(keys))

    sh = np.zeros((count, 16, 3), dtype=np.float32)  # (N, 16, 3)
    sh[:, 0] = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    sh[:, 1:] = cols([f"f_rest_{i}" for i in range(45)]).reshape(count, 3, 15).transpose(0, 2, 1)
    s = sh_coeff_count(sh_degree)
    return Gaussians(
        means=torch.from_numpy(cols(["x", "y", "z"])),
        rotations=torch.from_numpy(cols(["rot_0", "rot_1", "rot_2", "rot_3"])),
        log_scales=torch.from_numpy(cols(["scale_0", "scale_1", "scale_2"])),
        opacity_logits=torch.from_numpy(np.ascontiguousarray(v["opacity"], dtype=np.float32)),
        sh=torch.from_numpy(np.ascontiguousarray(sh[:, :s])),
    )
