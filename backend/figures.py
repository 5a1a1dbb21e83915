"""Figures for the docs, each made by one command.

    python -m backend.figures turntable   # docs/images/turntable_parts.png: body-part coloured avatar, 8 views
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch


def turntable_parts(out: Path, resolution: int = 128, per_texel: int = 2, views: int = 8, size: int = 320) -> Path:
    from backend.avatar.template import load_template
    from backend.avatar.tokens import part_colored_gaussians
    from backend.avatar.uv_layout import load_layout
    from backend.render import RenderOptions, render
    from backend.render.camera import Camera, intrinsics_from_fov, look_at
    from bridge.png import write_png

    layout = load_layout(load_template("anny"), resolution)
    gaussians = part_colored_gaussians(layout, k=per_texel)
    target = np.array([0.0, 0.0, 0.85])
    tiles = []
    for i in range(views):
        a = -math.pi / 2 + 2 * math.pi * i / views  # view 0 is the front (the body faces -Y)
        eye = target + np.array([3.0 * math.cos(a), 3.0 * math.sin(a), 0.3])
        cam = Camera(look_at(eye, target), intrinsics_from_fov(38.0, size, size), size, size)
        with torch.no_grad():
            rgb = render(gaussians, cam, options=RenderOptions(background=(1.0, 1.0, 1.0))).rgb[0]
        tiles.append((rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    cols = min(views, 4)
    rows = math.ceil(views / cols)
    sheet = np.full((rows * size, cols * size, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = tile
    return write_png(out, sheet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make the docs' figures")
    parser.add_argument("figure", choices=["turntable"])
    parser.add_argument("--out", type=Path, default=Path("docs/images/turntable_parts.png"))
    args = parser.parse_args(argv)
    t = time.perf_counter()
    path = turntable_parts(args.out)
    print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
