"""training/train_diffusion.py: visibility modes and the loss, exact resume, DDP gradients under torchrun,
the `genlca-train diffusion` command. Tiny preset, R = 32, token shards from region colours (tests/diffusion_shards.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.diffusion_shards import make_shards, tiny_config, training_setup
from training import runtime
from training import train_diffusion as td

REPO = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


@pytest.mark.parametrize("mode,invariant", [("aware", True), ("loss_mask", False), ("naive", False)])
def test_loss_ignores_invalid_texels(shards, mode, invariant):
    """Changing invalid texels' tokens: aware ignores them entirely (input of fully invalid patches is
    the MASK token, loss excludes them); loss_mask sees them as input only; naive also in the loss."""
    cfg, ds, bank, model = training_setup(shards, mode)
    ctx = runtime.DistributedContext()
    model.train()
    x, noise, t, cond, mask, pv = td.make_batch(0, ds, cfg, bank, model, ctx)
    base = td.flow_loss(model, x, noise, t, cond, mask, pv)
    vis = ds.visibility[runtime.global_batch_indices(0, len(ds), 4, cfg.train.seed)]
    # change texels of invalid patches only (texels of valid patches that were unseen stay as they are)
    g = model.config.grid
    p = model.config.patch_size
    pv_all = td.patch_validity(vis, ds.atlas_mask, p)
    invalid_texels = (~pv_all).reshape(-1, g, g).repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]
    assert bool(invalid_texels.any())
    change = invalid_texels & ~(vis & ds.atlas_mask)[:, None]  # unseen texels of invalid patches
    x2 = torch.where(change, x + 3.0 * torch.randn_like(x), x)
    noise2 = torch.where(change, torch.randn_like(noise), noise)
    changed = td.flow_loss(model, x2, noise2, t, cond, mask, pv)
    if invariant:
        assert torch.equal(changed, base)
    else:
        assert not torch.allclose(changed, base)
    if mode == "loss_mask":  # texels outside the loss mask do not enter the loss directly
        assert bool((~mask).any())


def test_loss_mask_mode_excludes_unseen_targets(shards):
    """With the network's input fixed, loss_mask's loss is independent of the targets of unseen texels."""
    cfg, ds, bank, model = training_setup(shards, "loss_mask")
    x, noise, t, cond, mask, pv = td.make_batch(0, ds, cfg, bank, model, runtime.DistributedContext())
    x_t, _ = td.FlowPath().sample(x, noise, t)
    v = model(x_t, t, **cond)
    m = mask[:, None].float()
    target = noise - x
    target2 = torch.where(mask[:, None], target, target + 5.0)
    l1 = (((v - target) ** 2) * m).sum() / m.sum()
    l2 = (((v - target2) ** 2) * m).sum() / m.sum()
    assert torch.equal(l1, l2)


def test_libraries_join_by_comma_and_other_atlases_are_refused(shards, tmp_path):
    other = make_shards(tmp_path / "other", n=6, seed=1)
    one, joined = td.load_dataset(shards, ["train"]), td.load_dataset(f"{shards},{other}", ["train"])
    assert len(joined) == len(one) + 6 and torch.equal(joined.tokens[: len(one)], one.tokens)
    assert joined.captions[len(one):] == td.load_dataset(other, ["train"]).captions
    coarse = make_shards(tmp_path / "coarse", n=2, r=64)
    with pytest.raises(ValueError, match="different atlases"):
        td.load_dataset(f"{shards},{coarse}", ["train"])


def test_patch_validity_and_unseen_fill(shards):
    from backend.models.dit import patch_validity

    atlas = torch.zeros(8, 8, dtype=torch.bool)
    atlas[:4] = True  # patch row 0 in the atlas, patch row 1 outside it
    vis = torch.zeros(1, 8, 8, dtype=torch.bool)
    vis[0, :2, :4] = True  # patch (0, 0): 8 of 16 atlas texels seen -> valid (threshold 0.5)
    vis[0, 2, 4:6] = True  # patch (0, 1): 2 of 16 -> invalid
    vis[0, 6, 6] = True    # outside the atlas: ignored
    assert patch_validity(vis, atlas, 4).tolist() == [[True, False, True, True]]  # no-atlas patches are valid
    assert patch_validity(vis, atlas, 4, threshold=0.6).tolist() == [[False, False, True, True]]
    ds = td.load_dataset(shards, ["train"])
    mean, _ = td.token_statistics(ds.tokens, ds.visibility, ds.atlas_mask)
    filled = td.fill_unseen(ds, mean, "transparent_mean")
    unseen = ~ds.visibility & ds.atlas_mask
    assert torch.equal(filled.tokens[:, :, ~ds.atlas_mask], ds.tokens[:, :, ~ds.atlas_mask])
    assert torch.equal(filled.tokens.permute(0, 2, 3, 1)[ds.visibility], ds.tokens.permute(0, 2, 3, 1)[ds.visibility])
    opacity = torch.sigmoid(filled.tokens[:, 6][unseen] + np.log(0.95 / 0.05))
    assert torch.allclose(opacity, torch.full_like(opacity, 0.1), atol=1e-4)


def test_exact_resume_next_20_losses(shards, tmp_path):
    full = td.train(tiny_config(shards, tmp_path / "a", steps=40))
    td.train(tiny_config(shards, tmp_path / "b", steps=40), stop_at=20)  # "killed" after step 20
    resumed = td.train(tiny_config(shards, tmp_path / "b", steps=40))
    assert len(full) == 40 and len(resumed) == 20
    assert resumed == full[20:]  # bit-equal floats
    assert full[-1] < full[0]


def test_torchrun_two_ranks_same_gradients_as_one_process(shards, tmp_path):
    script = tmp_path / "grads.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from training import runtime
        from tests.diffusion_shards import training_setup
        from pathlib import Path
        ctx = runtime.init_distributed("cpu")
        torch.manual_seed(0)  # the same initial weights on every rank (train() seeds the same way)
        cfg, ds, bank, model = training_setup(Path({str(shards)!r}), "aware")
        model.train()
        from training.train_diffusion import flow_loss, make_batch
        x, noise, t, cond, mask, pv = make_batch(3, ds, cfg, bank, model, ctx)
        loss = flow_loss(model, x, noise, t, cond, mask, pv)
        loss.backward()
        params = [p for p in model.parameters()]
        runtime.allreduce_gradients(params, ctx)
        if ctx.rank == 0:
            torch.save(torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in params]),
                       sys.argv[1])
        runtime.shutdown_distributed()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "two.pt")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    g1, g2 = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert g1.abs().max() > 0
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-7), float((g1 - g2).abs().max())


def test_cli_diffusion_with_config_and_overrides(shards, tmp_path):
    from training.cli import main

    cfg_file = REPO / "training" / "configs" / "diffusion_tiny.yaml"
    out = tmp_path / "run"
    rc = main(["diffusion", "--config", str(cfg_file), "--set", f"data.shards={shards}", "--set", "train.steps=3",
               "--set", "train.global_batch=2", "--set", f"train.out_dir={out}", "--set", "condition.text_encoder=hashing",
               "--set", "model.hidden_size=64", "--set", "model.depth=1", "--set", "train.ckpt_every=2",
               "--set", "train.device=cpu"])
    assert rc == 0
    from backend.models.checkpoint import load_checkpoint
    from backend.models.dit import dit_from_checkpoint

    ckpt = load_checkpoint(out / "last.safetensors", "dit")
    assert ckpt.train["step"] == 3 and ckpt.config["visibility_mode"] == "aware"
    model = dit_from_checkpoint(ckpt)
    assert model.config.resolution == 32 and not model.training
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_init_fine_tunes_from_a_checkpoint_and_refuses_another_architecture(shards, tmp_path):
    base = tiny_config(shards, tmp_path / "base", steps=6, ckpt_every=6)
    td.train(base)
    from backend.models.checkpoint import CheckpointError, load_checkpoint

    start = load_checkpoint(tmp_path / "base" / "last.safetensors", "dit", training_state=False).model
    # the first loss of a fine-tune equals the loss of the base weights at that step: the weights were loaded
    tuned = tiny_config(shards, tmp_path / "tuned", steps=2, init=str(tmp_path / "base" / "last.safetensors"))
    cfg, ds, bank, model = training_setup(shards, "aware")
    model.load_state_dict(start)
    model.train()
    ctx = runtime.init_distributed("cpu")
    torch.manual_seed(tuned.train.seed)
    with torch.no_grad():
        expected = float(td.flow_loss(model, *td.make_batch(0, ds, tuned, bank, model, ctx)))
    losses = td.train(tuned)
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    wider = tiny_config(shards, tmp_path / "wider", steps=1, init=str(tmp_path / "base" / "last.safetensors"))
    wider.model.hidden_size = 96
    with pytest.raises(CheckpointError, match="hidden_size"):
        td.train(wider)


def test_region_weighting_gives_every_body_region_the_same_total_weight(shards):
    from backend.avatar.template import load_template
    from backend.avatar.uv_layout import load_layout

    layout = load_layout(load_template("anny"), 32)
    w = td.region_weights("anny", 32)
    atlas = layout.atlas_mask
    assert torch.allclose(w[atlas].mean(), torch.tensor(1.0), atol=1e-5) and float(w[~atlas].abs().max()) == 0.0
    totals = [float(w[torch.from_numpy(m) & atlas].sum()) for m in layout.region_masks().values() if m.any()]
    assert max(totals) == pytest.approx(min(totals), rel=1e-5)
    # with weights that are all one on the atlas the loss is the unweighted one; with region weights it differs
    cfg, ds, bank, model = training_setup(shards, "aware")
    batch = td.make_batch(0, ds, cfg, bank, model, runtime.init_distributed("cpu"))
    with torch.no_grad():
        plain = td.flow_loss(model, *batch)
        ones = td.flow_loss(model, *batch, texel_weights=atlas.float())
        weighted = td.flow_loss(model, *batch, texel_weights=w)
    assert float(ones) == pytest.approx(float(plain), rel=1e-6) and float(weighted) != pytest.approx(float(plain), rel=1e-3)
    flat = tiny_config(shards, Path("/nonexistent"), region_weighting=True)
    flat.data.template = ""
    with pytest.raises(ValueError, match="data.template"):
        td.train(flat)
