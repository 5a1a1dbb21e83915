"""`genlca-train tokenize-video`: tokenize a real video of a person and score it against the video itself.

A video (ingested on the spot with `training.data.ingest.ingest_file`) or clip records already ingested:
per clip (= tracked person), every frame is cropped to a square around the person's mask (the tokenizer is
trained on frames the person fills, `person_crop`), `input_frames` frames spread evenly over the clip are
the inputs and the others are held out. Each method makes one token map from the input frames only;
it is decoded, posed by each frame's fitted body pose and rendered by the project's renderer with the
frame's fitted camera, and scored per frame:

    silhouette IoU   rendered alpha > 0.5 against the segmentation mask >= 0.5 (the crop's pixels)
    PSNR person      colour PSNR over the mask's pixels, render and frame both premultiplied on black

Methods: `mean` (the clip's mean person colour on surface-hugging Gaussians: the fitted template's own
silhouette, as Gaussians), `fit` (per-clip optimisation of the token map, `training.fit_clip`, for
`fit_steps` steps), `tokenizer` (one forward pass of a trained checkpoint). The record also carries the
ingest's mesh-silhouette IoU of the fitted template (full frame), reported beside them.

    genlca-train tokenize-video VIDEO|RECORD|FOLDER --checkpoint outputs/tokenizer_tiny/last.safetensors \
        --out outputs/tokenize_g1 [--figure docs/images/tokenize_g1.png --figure-clip g1_avi-p2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.avatar.skinning import pose
from backend.avatar.template import load_template
from backend.avatar.tokens import decode
from backend.models.tokenizer import load_tokenizer
from backend.perception.fitting import render_silhouette
from backend.render import RenderOptions, render
from backend.render.camera import Camera
from bridge.files.atomic import write_atomic
from training.data.ingest import IngestConfig, ingest_file
from training.data.records import ClipRecord, SUFFIX, iter_record_paths, load_record, save_record
from training.fit_clip import fit_clip, mean_colour_tokens
from training.train_tokenizer import clip_inputs, clip_views

METHODS = ("mean", "fit", "tokenizer")


class VideoTokenizeError(ValueError):
    """A clip or argument this command cannot use; the message names it."""


@dataclasses.dataclass
class VideoTokenizeConfig:
    input_frames: int = 4      # K frames spread over the clip; the rest are held out
    crop_size: int = 128       # side of the square person crop (the tiny tokenizer's image_size)
    crop_fill: float = 0.8     # the person's longer bbox side as a fraction of the crop side
    fit_steps: int = 100       # per-clip optimisation steps (0: no `fit` row)
    fit_geometry_l2: float = 0.0  # the per-clip fit's pull of non-colour channels to their start (fit_clip)
    novel_degrees: float = 90.0  # the figure's novel view: camera orbited about the person's vertical axis
    crop: bool = True          # False: the full frames, as `backend.perception.observation.tokenize_views` feeds them
    seed: int = 0

    def __post_init__(self) -> None:
        if self.input_frames < 1:
            raise VideoTokenizeError(f"input_frames must be >= 1, got {self.input_frames}")
        if self.crop_size < 16:
            raise VideoTokenizeError(f"crop_size must be >= 16, got {self.crop_size}")
        if not 0.1 <= self.crop_fill <= 1.0:
            raise VideoTokenizeError(f"crop_fill must be in [0.1, 1], got {self.crop_fill}")
        if self.fit_steps < 0:
            raise VideoTokenizeError(f"fit_steps must be >= 0, got {self.fit_steps}")


def split_frames(num_frames: int, k: int) -> tuple[list[int], list[int]]:
    """K input frames spread evenly over the clip (first and last included) and the held-out rest.
    A clip needs at least K + 1 frames, so that something is held out."""
    if num_frames < k + 1:
        raise VideoTokenizeError(f"a clip of {num_frames} frames cannot give {k} input frames and hold one out")
    idx_in = sorted(set(np.linspace(0, num_frames - 1, k).round().astype(int).tolist()))
    return idx_in, [i for i in range(num_frames) if i not in idx_in]


def crop_box(mask: np.ndarray, fill: float) -> tuple[int, int, int]:
    """(x0, y0, side) of a square around the mask's >= 50 % pixels, the bbox's longer side `fill` of it,
    moved (not shrunk) to lie inside the image; shrunk only when the image is smaller than the square."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask >= 128)
    if not len(xs):
        raise VideoTokenizeError("a frame's person mask is empty: cannot crop to the person")
    side = int(math.ceil(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / fill))
    side = min(side, w, h)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return x0, y0, side


def person_crop(record: ClipRecord, size: int, fill: float = 0.8) -> ClipRecord:
    """The record with every frame cut to a square around its person and resampled to size x size;
    intrinsics and keypoints follow the crop (u' = (u - x0) * size / side), poses and cameras' extrinsics
    stay. meta["crop_boxes"] keeps each frame's (x0, y0, side) in the original pixels."""
    frames, masks, ks, kps, boxes = [], [], [], [], []
    for f in range(record.num_frames):
        x0, y0, side = crop_box(record.masks[f], fill)
        s = size / side
        img = torch.from_numpy(record.frames[f, y0:y0 + side, x0:x0 + side]).permute(2, 0, 1)[None].float()
        msk = torch.from_numpy(record.masks[f, y0:y0 + side, x0:x0 + side])[None, None].float()
        mode = "area" if side > size else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        frames.append(F.interpolate(img, size=(size, size), mode=mode, **kw)[0].permute(1, 2, 0))
        masks.append(F.interpolate(msk, size=(size, size), mode=mode, **kw)[0, 0])
        k = record.intrinsics[f].astype(np.float64).copy()
        k[0, 2] -= x0
        k[1, 2] -= y0
        k[:2] *= s
        ks.append(k)
        kp = record.keypoints[f].copy()
        kp[:, 0] = (kp[:, 0] - x0) * s
        kp[:, 1] = (kp[:, 1] - y0) * s
        kps.append(kp)
        boxes.append([x0, y0, side])
    to_u8 = lambda t: (torch.stack(t).clamp(0, 255) + 0.5).to(torch.uint8).numpy()  # noqa: E731
    meta = {**record.meta, "crop_boxes": boxes, "crop_size": size}
    return dataclasses.replace(record, frames=to_u8(frames), masks=to_u8(masks), intrinsics=np.stack(ks),
                               keypoints=np.stack(kps), meta=meta, extras={})


def orbit_camera(camera: Camera, centre: np.ndarray, degrees: float) -> Camera:
    """The camera moved `degrees` around the vertical (world z) axis through `centre`; `centre` stays on
    the same pixel, so the same crop frames the person from the side."""
    a = math.radians(degrees)
    m = np.eye(4)
    m[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    shift, back = np.eye(4), np.eye(4)
    shift[:3, 3], back[:3, 3] = -np.asarray(centre, np.float64), np.asarray(centre, np.float64)
    move = back @ m @ shift  # world -> world: the orbit
    return dataclasses.replace(camera, world_to_camera=camera.world_to_camera @ np.linalg.inv(move))


# ------------------------------------------------------------------ rendering and scores
def render_frames(tokens: torch.Tensor, model, views, novel_degrees: float | None = None):
    """tokens (C, R, R) -> rgb (V, h, w, 3) premultiplied, alpha (V, h, w), posed by each view's body pose,
    seen by its camera, or by that camera orbited `novel_degrees` about the posed body's centre."""
    g = decode(tokens.float(), model.layout, model.decoder)
    rgbs, alphas = [], []
    for v, cam in enumerate(views.cameras):
        posed = pose(g, model.visibility.skeleton, views.joint_rotations[v], views.root_translation[v])
        if novel_degrees is not None:
            cam = orbit_camera(cam, posed.means.detach().double().mean(0).numpy(), novel_degrees)
        out = render(posed, cam, options=RenderOptions(background=(0.0, 0.0, 0.0)))
        rgbs.append(out.rgb[0])
        alphas.append(out.alpha[0, ..., 0])
    return torch.stack(rgbs), torch.stack(alphas)


def silhouette_iou(alpha: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per frame: IoU of alpha > 0.5 and mask >= 0.5, (V, h, w) each; 1.0 where both are empty."""
    a, b = alpha > 0.5, mask >= 0.5
    inter, union = (a & b).sum((1, 2)).double(), (a | b).sum((1, 2)).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).tolist()


def person_psnr(rgb: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per frame: PSNR (dB) of rgb against target (V, h, w, 3) in [0, 1] over the pixels mask >= 0.5."""
    out = []
    for v in range(rgb.shape[0]):
        sel = mask[v] >= 0.5
        mse = float(((rgb[v] - target[v]) ** 2)[sel].mean()) if bool(sel.any()) else float("nan")
        out.append(10.0 * math.log10(1.0 / max(mse, 1e-10)) if mse == mse else float("nan"))
    return out


def method_tokens(method: str, model, record: ClipRecord, idx_in: list[int], cfg: VideoTokenizeConfig) -> torch.Tensor:
    """One method's token map (C, R, R) from the input frames of a cropped record."""
    if method == "mean":
        return mean_colour_tokens(model, record, idx_in)
    if method == "fit":
        tokens, _ = fit_clip(model, model.visibility.skeleton, record, idx_in, steps=cfg.fit_steps,
                             render_size=cfg.crop_size, seed=cfg.seed, geometry_l2=cfg.fit_geometry_l2)
        return tokens
    if method == "tokenizer":
        with torch.no_grad():
            return model(clip_inputs(model, record, idx_in))[0]
    raise VideoTokenizeError(f"unknown method {method!r}; expected one of {METHODS}")


def score_clip(model, record: ClipRecord, cfg: VideoTokenizeConfig, methods=METHODS) -> tuple[list[dict], dict]:
    """All methods on one (uncropped) clip record -> rows (one per method and frame set) and the token
    maps by method. Rows: clip_id, method, frames ("input" / "heldout"), iou, psnr_person (means) and the
    per-frame lists, seconds and cpu_seconds (to make the tokens)."""
    crop = person_crop(record, cfg.crop_size, cfg.crop_fill) if cfg.crop else record
    idx_in, idx_out = split_frames(crop.num_frames, cfg.input_frames)
    template_iou = record.meta.get("fit", {}).get("silhouette_iou")
    rows, maps = [], {}
    for method in methods:
        if method == "fit" and cfg.fit_steps == 0:
            continue
        torch.manual_seed(cfg.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        tokens = method_tokens(method, model, crop, idx_in, cfg)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        maps[method] = tokens
        for name, idx in (("input", idx_in), ("heldout", idx_out)):
            views = clip_views(crop, idx, None)
            with torch.no_grad():
                rgb, alpha = render_frames(tokens, model, views)
            iou, ps = silhouette_iou(alpha, views.mask), person_psnr(rgb, views.rgb, views.mask)
            row = {"clip_id": record.clip_id, "method": method, "frames": name, "indices": idx,
                   "iou": float(np.mean(iou)), "psnr_person": float(np.nanmean(ps)), "iou_per_frame": iou,
                   "psnr_per_frame": ps, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
                   "crop": cfg.crop}
            if template_iou is not None:
                row["template_mesh_iou"] = float(np.mean([template_iou[i] for i in idx]))
            rows.append(row)
    return rows, maps


# ------------------------------------------------------------------ figure
def save_figure(model, record: ClipRecord, maps: dict[str, torch.Tensor], cfg: VideoTokenizeConfig,
                path: str | Path, scale: int = 2) -> Path:
    """PNG, one row per shown frame (the first input frame and the middle held-out frame): frame | mask |
    fitted template over the frame | tokenizer render (this view) | tokenizer, novel view | the same two
    for per-clip fit when it ran. Renders over grey; crops at `crop_size`, upscaled by `scale`. Atomic."""
    import os

    from PIL import Image, ImageDraw, ImageFont


    crop = person_crop(record, cfg.crop_size, cfg.crop_fill)
    idx_in, idx_out = split_frames(crop.num_frames, cfg.input_frames)
    shown = [("input", idx_in[0]), ("held out", idx_out[len(idx_out) // 2])]
    views = clip_views(crop, [f for _, f in shown], None)
    grey = 0.5
    cols: list[tuple[str, torch.Tensor]] = [("frame", views.rgb.new_tensor(crop.frames[[f for _, f in shown]]) / 255.0),
                                            ("mask", views.mask[..., None].expand(-1, -1, -1, 3)),
                                            ("fitted template", _template_overlay(crop, [f for _, f in shown]))]
    for method, label in (("tokenizer", "tokenizer"), ("fit", f"fit {cfg.fit_steps} steps")):
        if method not in maps:
            continue
        for novel, suffix in ((None, ""), (cfg.novel_degrees, f", {cfg.novel_degrees:g} deg")):
            with torch.no_grad():
                rgb, alpha = render_frames(maps[method], model, views, novel)
            cols.append((label + suffix, rgb + (1 - alpha[..., None]) * grey))
    s = cfg.crop_size
    head = 14
    canvas = np.full((head + len(shown) * (s + 2), len(cols) * (s + 2), 3), 255, np.uint8)
    for c, (_, imgs) in enumerate(cols):
        for r in range(len(shown)):
            canvas[head + r * (s + 2):head + r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = \
                (imgs[r].clamp(0, 1) * 255 + 0.5).byte().numpy()
    image = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=9 * scale)
    for c, (label, _) in enumerate(cols):
        draw.text((c * (s + 2) * scale + 4, 2), label, fill=(0, 0, 0), font=font)
    for r, (kind, f) in enumerate(shown):
        draw.text((4, (head + r * (s + 2)) * scale + 4), f"{kind} #{f}", fill=(255, 255, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _template_overlay(crop: ClipRecord, frames: list[int]) -> torch.Tensor:
    """(V, s, s, 3): the fitted template's mesh silhouette (ingest's own) tinted over the cropped frames."""
    template = load_template(crop.meta.get("template", "anny"))
    out = []
    for f in frames:
        sil = render_silhouette(template, crop.joint_rotations[f], crop.root_translation[f], crop.viewmats[f],
                                crop.intrinsics[f], crop.image_size[0], crop.image_size[1])
        img = crop.frames[f].astype(np.float32)
        img[sil] = 0.45 * img[sil] + 0.55 * np.array([255, 140, 30])
        out.append(torch.from_numpy(img / 255.0))
    return torch.stack(out).float()


# ------------------------------------------------------------------ inputs, table, command line
def load_clips(source: str | Path, records_out: str | Path | None = None, max_frames: int = 32) -> list[ClipRecord]:
    """A video or photo file (ingested now; records saved to `records_out` when given), one clip record,
    or a folder of clip records."""
    source = Path(source)
    if source.is_dir():
        records = [load_record(p) for p in iter_record_paths(source)]
    elif source.name.endswith(SUFFIX):
        records = [load_record(source)]
    elif source.is_file():
        records = ingest_file(source, IngestConfig(max_frames=max_frames))
        for r in records if records_out else []:
            save_record(r, records_out)
    else:
        raise VideoTokenizeError(f"{source}: not found (expected a video, a clip record or a folder of them)")
    if not records:
        raise VideoTokenizeError(f"{source}: no clip records")
    return records


def markdown_table(rows: list[dict]) -> str:
    """Per clip and method: held-out and input means; with several clips, a mean over clips per method."""
    names = {"mean": "(a) mean colour (template surface)", "fit": "(b) per-clip fit", "tokenizer": "(c) tokenizer"}
    lines = ["| clip | method | IoU held-out | IoU input | PSNR person held-out | PSNR person input | "
             "template mesh IoU held-out | CPU s / clip |", "|---|---|---|---|---|---|---|---|"]
    keys = ("iou", "psnr_person", "template_mesh_iou", "cpu_seconds")
    by: dict[tuple, dict] = {}
    for r in rows:
        by[(r["clip_id"], r["method"], r["crop"], r["frames"])] = r
    clips = list(dict.fromkeys(r["clip_id"] for r in rows))
    methods = list(dict.fromkeys((r["method"], r["crop"]) for r in rows))
    groups = [(c, m, crop) for c in clips for m, crop in methods if (c, m, crop, "heldout") in by]
    if len(clips) > 1:
        for m, crop in methods:
            sel = [(c, m, crop) for c in clips if (c, m, crop, "heldout") in by]
            for frames in ("heldout", "input"):
                by[(f"mean of {len(sel)} clips", m, crop, frames)] = {
                    k: float(np.nanmean([by[g + (frames,)].get(k, float("nan")) for g in sel])) for k in keys}
            groups.append((f"mean of {len(sel)} clips", m, crop))
    for clip, method, crop in groups:
        h, i = by[(clip, method, crop, "heldout")], by[(clip, method, crop, "input")]
        name = names.get(method, method) + ("" if crop else ", full frame")
        lines.append(f"| {clip} | {name} | {h['iou']:.3f} | {i['iou']:.3f} | {h['psnr_person']:.2f} | "
                     f"{i['psnr_person']:.2f} | {h.get('template_mesh_iou', float('nan')):.3f} | {h['cpu_seconds']:.2f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = VideoTokenizeConfig(input_frames=args.input_frames, crop_size=args.crop_size, fit_steps=args.fit_steps,
                              fit_geometry_l2=args.fit_geometry_l2,
                              novel_degrees=args.novel_degrees, crop=not args.full_frame)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        records = load_clips(args.source, out / "records", args.max_frames)
    except VideoTokenizeError as exc:
        print(f"genlca-train tokenize-video: {exc}", file=sys.stderr)
        return 2
    model = load_tokenizer(args.checkpoint)
    rows, figure_maps = [], None
    for record in records:
        if args.clips and record.clip_id not in args.clips:
            continue
        if record.num_frames < cfg.input_frames + 1:
            print(f"skipped {record.clip_id}: {record.num_frames} frames", file=sys.stderr)
            continue
        clip_rows, maps = score_clip(model, record, cfg, args.methods)
        rows.extend(clip_rows)
        for r in clip_rows:
            print(json.dumps({k: v for k, v in r.items() if not k.endswith("per_frame")}), flush=True)
        if args.figure and record.clip_id == (args.figure_clip or records[0].clip_id):
            figure_maps = (record, maps)
    if not rows:
        print("genlca-train tokenize-video: no clip had enough frames", file=sys.stderr)
        return 2
    table = markdown_table(rows)
    print(table)
    write_atomic(out / "scores.json", json.dumps({"config": dataclasses.asdict(cfg),
                                                        "checkpoint": args.checkpoint, "rows": rows}, indent=1))
    write_atomic(out / "table.md", table + "\n")
    if figure_maps is not None and cfg.crop:
        print(save_figure(model, figure_maps[0], figure_maps[1], cfg, args.figure))
    elif args.figure:
        print(f"no figure written: it shows person crops (not with --full-frame) of clip "
              f"{args.figure_clip or records[0].clip_id!r}", file=sys.stderr)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = VideoTokenizeConfig()
    parser.add_argument("source", help="a video (ingested now), a clip record, or a folder of clip records")
    parser.add_argument("--checkpoint", required=True, help="tokenizer checkpoint (its EMA weights are used)")
    parser.add_argument("--out", required=True, help="folder for scores.json, table.md and the ingested records")
    parser.add_argument("--input-frames", type=int, default=d.input_frames, help="input frames per clip")
    parser.add_argument("--crop-size", type=int, default=d.crop_size, help="side of the person crop in pixels")
    parser.add_argument("--fit-steps", type=int, default=d.fit_steps, help="per-clip fit steps (0: no fit)")
    parser.add_argument("--fit-geometry-l2", type=float, default=d.fit_geometry_l2,
                        help="per-clip fit: weight of the pull of non-colour channels to their start")
    parser.add_argument("--novel-degrees", type=float, default=d.novel_degrees, help="the figure's novel view")
    parser.add_argument("--full-frame", action="store_true", help="no person crop: the tokenizer sees whole frames")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--clips", nargs="*", help="only these clip ids")
    parser.add_argument("--max-frames", type=int, default=32, help="frames decoded from a video")
    parser.add_argument("--figure", help="write the PNG here")
    parser.add_argument("--figure-clip", help="the clip the figure shows (default: the first)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
