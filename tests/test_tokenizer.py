"""The tokenizer (tiny preset, R = 32), its visibility, training loop and per-clip fitting, on toy
ground-truth clips rendered by the project's renderer (fixed seeds, CPU)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.avatar.gaussians import SH_C0
from backend.avatar.tokens import TokenDecoder, decode, encode_explicit, gaussian_texel_index
from backend.avatar.visibility import TexelVisibility, seen_texels
from backend.config import from_dict, load_config
from backend.models.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, tokenizer_models
from backend.render.camera import Camera, intrinsics_from_fov, look_at
from training.eval_tokenizer import mask_iou, psnr, render_gt, toy_clip, toy_tokens
from training.fit_clip import fit_clip
from training.train_tokenizer import (LossWeights, TrainConfig, DataSource, clip_inputs, clip_views,
                                      photometric_losses, render_tokens, ssim, total_loss, train)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(one_thread) -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer.build(tokenizer_models["tiny"]())


@pytest.fixture(scope="module")
def clip(model):
    return toy_clip(model.template, model.layout, model.config.decoder_config(), seed=1, frames=6, front_frames=3,
                    size=64)


def rest_pose(model, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    rot = torch.zeros(frames, model.visibility.skeleton.num_joints, 4)
    rot[..., 0] = 1.0
    return rot, torch.zeros(frames, 3)


def camera_at(eye, size: int = 96) -> Camera:
    return Camera(look_at(eye, (0.0, 0.0, 0.9)), intrinsics_from_fov(40.0, size, size), size, size)


def test_forward_shapes_and_fresh_model_predicts_observed_colour(model, clip):
    inputs = clip_inputs(model, clip, [0, 1, 2])
    assert inputs.frames.shape == (1, 3, 3, 64, 64) and inputs.masks.shape == (1, 3, 1, 64, 64)
    m = model.layout.num_valid
    assert inputs.grid.shape == (1, 3, m, 2) and inputs.weight.shape == (1, 3, m)
    with torch.no_grad():
        tokens = model(inputs)
    assert tokens.shape == (1, 12, 32, 32)
    assert torch.all(tokens[0][:, ~model.layout.atlas_mask] == 0)
    # the head starts at zero: seen texels carry the colour the frames show there (within 0.1 of the
    # ground truth's colour on average, which a texel's bilinear footprint blurs), offsets are zero
    seen = (inputs.weight[0] > 0.5).any(0)
    rgb = (tokens[0, :3].reshape(3, -1)[:, model.valid_indices] * SH_C0 + 0.5)[:, seen]
    gt = torch.from_numpy(clip.extras["gt_tokens"])[:3].reshape(3, -1)[:, model.valid_indices][:, seen] * SH_C0 + 0.5
    assert seen.float().mean() > 0.3
    assert (rgb - gt).abs().mean() < 0.1
    assert torch.all(tokens[0, 3:10] == 0)
    batched = model(type(inputs)(frames=inputs.frames.repeat(2, 1, 1, 1, 1), masks=inputs.masks.repeat(2, 1, 1, 1, 1),
                                 grid=inputs.grid.repeat(2, 1, 1, 1), weight=inputs.weight.repeat(2, 1, 1)))
    assert batched.shape == (2, 12, 32, 32) and torch.allclose(batched[1], tokens[0], atol=1e-5)


def test_visibility_is_zero_behind_the_body(model):
    vis = TexelVisibility(model.template, model.layout)
    rot, trans = rest_pose(model, 2)
    cams = [camera_at((0.0, -3.0, 0.9)), camera_at((3.0, 0.0, 1.45))]  # front; right side at arm height
    view = vis(rot, trans, np.stack([c.world_to_camera for c in cams]), np.stack([c.intrinsics for c in cams]), 96, 96)
    normals = model.layout.gather("frames")[..., 2]
    anchors = model.layout.gather("anchors")
    # front camera: the back (normals towards +y) is never seen, most of the front is
    back, front = normals[:, 1] > 0.5, normals[:, 1] < -0.7
    assert view.weight[0][back].max() == 0
    assert (view.weight[0][front] > 0.5).float().mean() > 0.9
    # side camera in the T-pose: the far arm's (x < -0.3) surfaces that face the camera are hidden
    # behind the near arm and the torso (facing alone would call them visible); the near arm's are seen
    facing = normals[:, 0] > 0.5
    far_arm = facing & (anchors[:, 0] < -0.3)
    near_arm = facing & (anchors[:, 0] > 0.3)
    assert far_arm.sum() > 5 and near_arm.sum() > 5
    assert view.weight[1][far_arm].max() == 0
    assert (view.weight[1][near_arm] > 0.5).float().mean() > 0.8
    assert seen_texels(view).sum() > 0


def test_mask_gates_visibility(model):
    vis = TexelVisibility(model.template, model.layout)
    rot, trans = rest_pose(model, 1)
    cam = camera_at((0.0, -3.0, 0.9))
    args = (rot, trans, cam.world_to_camera[None], cam.intrinsics[None], 96, 96)
    assert vis(*args, masks=torch.zeros(1, 96, 96)).weight.max() == 0
    assert torch.equal(vis(*args, masks=torch.ones(1, 96, 96)).weight, vis(*args).weight)


def _fixed_clip_loss(model, clip, weights=LossWeights()) -> torch.Tensor:
    inputs = clip_inputs(model, clip, [0, 1, 2])
    tokens = model(inputs)[0]
    views = clip_views(clip, [3, 4], 48)
    rgb, alpha = render_tokens(tokens, model, model.visibility.skeleton, views)
    return total_loss(photometric_losses(rgb, alpha, views), weights)


def test_training_steps_reduce_the_loss_on_a_fixed_clip(clip):
    torch.manual_seed(0)
    model = Tokenizer.build(tokenizer_models["tiny"]())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        loss = _fixed_clip_loss(model, clip)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(_fixed_clip_loss(model, clip))
    assert last < 0.85 * first, (first, last)


def test_region_reach_lets_offsets_leave_the_body(model):
    """Long hair and skirts: the explicit layout's per-region reach (head 0.45 m, legs 0.40 m) lets a
    texel's Gaussians sit tens of centimetres off the surface; fingers stay within a few centimetres."""
    cfg = model.config.decoder_config()
    layout = model.layout
    offset = torch.zeros(3, 32, 32)
    offset[2] = 0.3  # 30 cm along every texel's normal
    tokens = encode_explicit(layout, cfg, torch.full((3, 32, 32), 0.5), offset=offset)
    g = decode(tokens, layout, TokenDecoder(cfg))
    k = cfg.gaussians_per_texel
    texel = gaussian_texel_index(layout, k)
    dist = (g.means - layout.anchors.reshape(-1, 3)[texel]).norm(dim=1)
    for region, lo, hi in (("head", 0.29, 0.32), ("legs", 0.29, 0.32), ("hands", 0.0, 0.035)):
        sel = layout.region_mask(region).reshape(-1)[texel]
        assert lo <= float(dist[sel].median()) <= hi, (region, float(dist[sel].median()))


def test_per_clip_fit_reconstructs_a_skirt_beyond_the_body(model):
    """Fitting a clip of a person in a flared skirt (offsets up to 25 cm off the legs) through the decoder
    and renderer covers the skirt's pixels: the surface-hugging start cannot."""
    cfg = model.config.decoder_config()
    rec = toy_clip(model.template, model.layout, cfg, seed=2, frames=4, front_frames=4, size=40, skirt=True)
    skeleton = model.visibility.skeleton
    views = clip_views(rec, [0, 1, 2, 3], None)
    body = toy_tokens(model.layout, cfg, 2, skirt=False)
    _, body_alpha = render_gt(body, model.layout, TokenDecoder(cfg), skeleton, views.joint_rotations,
                              views.root_translation, views.cameras)
    skirt_px = (views.mask > 0.5) & (body_alpha < 0.5)  # pixels only the skirt covers
    assert skirt_px.sum() > 50

    def skirt_iou(tokens):
        with torch.no_grad():
            _, alpha = render_tokens(tokens, model, skeleton, views)
        return float(((alpha > 0.5) & skirt_px).sum()) / float(skirt_px.sum())

    from training.fit_clip import mean_colour_tokens

    before = skirt_iou(mean_colour_tokens(model, rec, range(4)))
    tokens, history = fit_clip(model, skeleton, rec, range(4), steps=40, lr=0.08, render_size=None,
                               views_per_step=1, seed=0)
    after = skirt_iou(tokens)
    assert before < 0.2 and after > 0.6, (before, after)
    assert np.mean(history[-5:]) < np.mean(history[:5])


def test_metrics_known_values():
    a = torch.zeros(2, 16, 16, 3)
    b = torch.full((2, 16, 16, 3), 0.1)
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-4)
    assert float(ssim(b, b)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(a, torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0)))) < 0.1
    m = torch.zeros(4, 4)
    m[:2] = 1
    n = torch.zeros(4, 4)
    n[1:3] = 1
    assert mask_iou(m, n) == pytest.approx(4 / 12)


def test_presets_and_yaml_configs_agree():
    for name in ("tiny", "small"):
        cfg = load_config(ROOT / f"training/configs/tokenizer_{name}.yaml", TrainConfig)
        assert cfg.model == tokenizer_models[name](), name
    for name, make in tokenizer_models.items():
        assert isinstance(make(), TokenizerConfig)
    with pytest.raises(ValueError):
        TokenizerConfig(token_channels=8)


def test_training_resumes_exactly_and_checkpoint_carries_the_config(tmp_path, clip):
    from training.data.records import save_record

    lib = tmp_path / "lib"
    save_record(clip, lib)
    base = dict(model=tokenizer_models["tiny"](), data=[DataSource(str(lib), 1.0, "")], steps=4, batch_clips=1,
                input_frames=3, heldout_frames=1, render_size=32, ckpt_every=2, log_every=1, warmup=2)
    straight = TrainConfig(out_dir=str(tmp_path / "a"), **base)
    train(straight, progress=False)
    broken = TrainConfig(out_dir=str(tmp_path / "b"), **base)
    train(broken, progress=False, stop_after=2)  # "killed" after the step-2 checkpoint
    train(broken, progress=False)
    a = load_tokenizer(tmp_path / "a" / "last.safetensors", use_ema=False).state_dict()
    b = load_tokenizer(tmp_path / "b" / "last.safetensors", use_ema=False).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    from backend.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "a" / "last.safetensors", "tokenizer")
    assert from_dict(ckpt.config["model"], TokenizerConfig) == tokenizer_models["tiny"]()
    assert ckpt.train["step"] == 4 and ckpt.optimizer is not None and ckpt.ema is not None
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(math.isfinite(float(__import__("json").loads(x)["loss"])) for x in lines)


def test_training_under_torchrun_keeps_the_ranks_in_step(tmp_path, clip):
    """Two gloo ranks through training/runtime.py: each draws its own clips, one all-reduce of the gradients
    per step, so both ranks hold the same weights after every step; rank 0 writes the checkpoint."""
    from training.data.records import save_record

    lib = tmp_path / "lib"
    save_record(clip, lib)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from backend.models.tokenizer import tokenizer_models
        from training import train_tokenizer as tt
        cfg = tt.TrainConfig(model=tokenizer_models["tiny"](), data=[tt.DataSource({str(lib)!r}, 1.0, "")], steps=2,
                             batch_clips=1, input_frames=3, heldout_frames=1, render_size=32, ckpt_every=2,
                             log_every=1, warmup=1, device="cpu", out_dir={str(tmp_path / "out")!r})
        seen = {{}}
        real_update = tt.runtime.EMA.update
        def update(self, model):      # after opt.step(): this rank's weights
            seen["weights"] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            real_update(self, model)
        tt.runtime.EMA.update = update
        tt.train(cfg, progress=False)
        ctx = tt.runtime.init_distributed("cpu")
        torch.save(seen["weights"], {str(tmp_path)!r} + f"/rank{{ctx.rank}}.pt")
        tt.runtime.shutdown_distributed()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt"))
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert load_tokenizer(tmp_path / "out" / "last.safetensors") is not None
