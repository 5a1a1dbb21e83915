"""Figures of the synthetic-people data for the docs, each made by one command.

    python -m training.data.figures synth-sheet   # docs/images/synthetic_people.png: 24 people, captions
    python -m training.data.figures vis-atlas     # docs/images/synthetic_visibility.png: visibility on the atlas

Both generate their people with the real generator (`synthetic.generate_one` / `make_clip`), seed fixed.
Captions are drawn with Pillow's built-in bitmap font (text only; PNGs are written by bridge/files/png.py).
"""
from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from backend.avatar.gaussians import SH_C0
from bridge.files.png import write_png
from training.data import synthetic

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"


def _text_block(lines: list[str], width: int, height: int, colour=(20, 20, 20),
                last_colour=None) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    y = 2
    for i, line in enumerate(lines):
        last = i == len(lines) - 1 and last_colour is not None
        draw.text((3, y), line, fill=last_colour if last else colour, font=font)
        y += 12
    return np.array(img)


def synth_sheet(out: Path, seed: int = 7, people: int = 24, cols: int = 4) -> Path:
    torch.set_num_threads(2)
    ctx = synthetic.Context(synthetic.SynthConfig(seed=seed))
    cells = []
    stats = {"long hair": 0, "skirt/dress": 0, "partial view": 0, "occluded": 0}
    for i in range(people):
        rec = synthetic.generate_one(ctx, i)
        a, cam = rec.meta["attributes"], rec.meta["camera"]
        stats["long hair"] += a["hair_style"] == "long"
        stats["skirt/dress"] += a["lower"] in ("skirt", "dress")
        stats["partial view"] += cam["view"] != "orbit"
        stats["occluded"] += bool(rec.meta["occluders"])
        frames = np.concatenate([rec.frames[0], rec.frames[rec.num_frames // 2], rec.frames[-1]], axis=1)
        w = frames.shape[1]
        caption = textwrap.wrap(rec.captions[0], width=w // 6)[:3]
        tag = f"{cam['view']}{' + occluder' if rec.meta['occluders'] else ''} | {rec.meta['motion'].split('[')[0]} | {rec.meta['split']}"
        text = _text_block(caption + [tag], w, 52, last_colour=(40, 90, 160))
        cells.append(np.concatenate([frames, text], axis=0))
    h, w = cells[0].shape[:2]
    rows = (len(cells) + cols - 1) // cols
    pad = 6
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        sheet[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = cell
    write_png(out, sheet)
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]}): {stats}")
    return out


def _atlas_rgb(tokens: np.ndarray, atlas: np.ndarray) -> np.ndarray:
    rgb = np.clip(tokens[:3].transpose(1, 2, 0) * SH_C0 + 0.5, 0, 1)
    return np.where(atlas[..., None], rgb, 1.0)


def _visibility_rgb(vis: np.ndarray, atlas: np.ndarray) -> np.ndarray:
    """0 (never seen) dark red .. 1 (every frame) bright green; outside the atlas white."""
    lo, hi = np.array([0.35, 0.05, 0.08]), np.array([0.2, 0.85, 0.3])
    seen = vis > 0
    rgb = np.where(seen[..., None], lo + (hi - lo) * (0.3 + 0.7 * vis[..., None]), np.array([0.25, 0.25, 0.28]))
    return np.where(atlas[..., None], rgb, 1.0)


def vis_atlas(out: Path, seed: int = 7) -> Path:
    torch.set_num_threads(2)
    ctx = synthetic.Context(synthetic.SynthConfig(seed=seed))
    atlas = ctx.layout.atlas_mask.numpy()
    scale = 3
    rows = []
    plans = [("orbit", False, "bvh"), ("front-only", False, "walk"), ("crop-legs", False, "bvh"),
             ("crop-head", True, "walk")]
    for j, (view, occ, motion) in enumerate(plans):
        person = synthetic.make_person(ctx, j, synthetic.person_rng(seed, j))
        rec = synthetic.make_clip(ctx, person, synthetic.person_rng(seed, 50_000 + j), view=view, occlude=occ,
                                  motion_source=motion)
        vis = rec.extras["visibility"]
        big = lambda img: np.kron(img, np.ones((scale, scale, 1)))  # noqa: E731 (nearest-neighbour upscale)
        a = (big(_atlas_rgb(rec.extras["gt_tokens"], atlas)) * 255).astype(np.uint8)
        v = (big(_visibility_rgb(vis, atlas)) * 255).astype(np.uint8)
        frames = np.concatenate(list(rec.frames[::2]), axis=1)  # (128, 4 * 128, 3)
        frames = frames[:, :, :]
        tile = np.concatenate([a, v, frames[:a.shape[0]]], axis=1) if frames.shape[0] >= a.shape[0] else None
        if tile is None:
            padded = np.full((a.shape[0], frames.shape[1], 3), 255, np.uint8)
            padded[:frames.shape[0]] = frames
            tile = np.concatenate([a, v, padded], axis=1)
        label = (f"{view}{' + occluders' if rec.meta['occluders'] else ''}, {rec.meta['motion'].split('[')[0]}: "
                 f"{100 * float((vis > 0)[atlas].mean()):.0f}% of atlas texels seen in >= 1 of {rec.num_frames} frames"
                 f" | left: ground-truth colour on the UV atlas, middle: visibility (green: fraction of frames, "
                 f"grey: never seen)")
        rows.append(np.concatenate([_text_block([label], tile.shape[1], 16), tile], axis=0))
    sheet = np.concatenate(rows, axis=0)
    write_png(out, sheet)
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.figures", description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=["synth-sheet", "vis-atlas"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.figure == "synth-sheet":
        synth_sheet(Path(args.out or DOCS / "synthetic_people.png"), seed=args.seed)
    else:
        vis_atlas(Path(args.out or DOCS / "synthetic_visibility.png"), seed=args.seed)
    print(f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
