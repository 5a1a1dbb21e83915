"""The standard 3DGS PLY (binary little endian), as written by the original gaussian-splatting code.

Vertex properties, all float32, in this order (62):
    x y z, nx ny nz (zeros), f_dc_0..2, f_rest_0..44, opacity (logit), scale_0..2 (log), rot_0..3 (w x y z)
f_dc is sh[:, 0]; f_rest is channel-major: the 15 higher-order coefficients of R, then of G, then of B.
The file always carries degree-3 room: degree < 3 is zero-padded on export; `load_ply` keeps `sh_degree`
bands (default 3), because zeros cannot tell an absent band from a band that happens to be zero. Skin
weights and skeletons are not part of this format (see avatar_file).

The bytes are written and read by `bridge/files/avatar.py` (numpy only, shared with the Blender add-on,
which opens PLY files without a backend); this module converts to and from `Gaussians`. The header
carries `comment genlca axes=z-up units=m`; `y_up=True` writes the Y-up convention of most viewers.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from backend.avatar.gaussians import Gaussians, sh_coeff_count
from bridge.files.avatar import PLY_PROPERTIES, AvatarFileError, read_ply, write_ply

PROPERTIES = PLY_PROPERTIES


def save_ply(path: str | os.PathLike, gaussians: Gaussians, *, y_up: bool = False) -> None:
    """Write atomically (an exclusive temporary file in the same folder, then os.replace)."""
    gaussians.validate(check_finite=True)
    g = gaussians.detach().to("cpu", torch.float32)
    arrays = {name: getattr(g, name).numpy() for name in ("means", "rotations", "log_scales", "opacity_logits", "sh")}
    write_ply(path, arrays, y_up=y_up)


def load_ply(path: str | os.PathLike, sh_degree: int = 3) -> Gaussians:
    """Read a 3DGS PLY (extra float properties are ignored) into float32 Gaussians of `sh_degree`, Z-up."""
    try:
        arrays = read_ply(path).arrays
    except AvatarFileError as exc:
        raise ValueError(str(exc)) from None
    s = sh_coeff_count(sh_degree)
    sh = np.zeros((arrays["sh"].shape[0], s, 3), np.float32)
    keep = min(s, arrays["sh"].shape[1])
    sh[:, :keep] = arrays["sh"][:, :keep]
    return Gaussians(means=torch.from_numpy(arrays["means"]), rotations=torch.from_numpy(arrays["rotations"]),
                     log_scales=torch.from_numpy(arrays["log_scales"]),
                     opacity_logits=torch.from_numpy(arrays["opacity_logits"]), sh=torch.from_numpy(sh))
