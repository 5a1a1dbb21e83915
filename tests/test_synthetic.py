"""Synthetic people (`training/data/synthetic.py`): records, determinism, splits, geometry, visibility.

Small sizes throughout (48-64 px frames, 2-3 frames); a person costs well under a second here.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from training.data import synthetic, vocabulary
from training.data.appearance import LABELS
from training.data.records import load_record, record_path, save_record

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: restores torch's thread count


@pytest.fixture(scope="module")
def ctx():
    return synthetic.Context(synthetic.SynthConfig(seed=3, frames=3, width=64, height=64))


def _find(ctx, predicate, limit=400):
    """First person index (seed 3) whose attributes satisfy predicate, and the person."""
    for i in range(limit):
        p = synthetic.make_person(ctx, i, synthetic.person_rng(ctx.config.seed, i))
        if predicate(p.attributes):
            return i, p
    raise AssertionError("no such person in the first few hundred")


def test_record_round_trip(ctx, tmp_path):
    rec = synthetic.generate_one(ctx, 0)
    path = save_record(rec, tmp_path)
    back = load_record(path)
    assert back.frames.shape == (3, 64, 64, 3) and back.masks.shape == (3, 64, 64)
    assert back.joint_rotations.shape == (3, len(ctx.template.joint_names), 4)
    assert back.keypoints.shape == (3, len(synthetic.KEYPOINT_JOINTS), 3)
    assert back.extras["gt_tokens"].shape == (12, 64, 64) and back.extras["gt_tokens"].dtype == np.float32
    assert not back.extras["gt_tokens"][10:].any()  # latent channels stay zero
    vis = back.extras["visibility"]
    assert vis.shape == (64, 64) and 0 <= vis.min() and vis.max() <= 1 and vis.max() > 0
    assert not vis[~ctx.layout.atlas_mask.numpy()].any()
    meta = back.meta
    assert meta["source"] == "synthetic" and meta["keypoint_format"] == "template-joints"
    assert meta["shape_names"] == ["gender", "age", "muscle", "weight", "height", "proportions"]
    assert meta["decoder_config"]["token_layout"] == "explicit" and len(meta["captions"]) >= 3
    assert meta["split"] in ("train", "val", "test", "heldout-combo")
    np.testing.assert_array_equal(back.extras["gt_tokens"], rec.extras["gt_tokens"])
    # the frames were rendered from the decoded ground truth: the person covers part of every frame
    assert all((m > 128).mean() > 0.01 for m in back.masks)


def test_same_seed_bit_identical_across_workers(tmp_path):
    config = synthetic.SynthConfig(seed=11, frames=2, width=48, height=48)
    a = synthetic.generate(config, 2, tmp_path / "a", workers=1, progress=False)
    b = synthetic.generate(config, 2, tmp_path / "b", workers=2, progress=False)
    assert a["generated"] == b["generated"] == 2
    for i in range(2):
        name = record_path(".", synthetic.clip_id(11, i)).name
        ra, rb = load_record(tmp_path / "a" / name), load_record(tmp_path / "b" / name)
        # every array bit for bit, and the metadata (the file bytes differ only in the order safetensors'
        # Rust writer gives the header's metadata keys, which varies between processes)
        for field in ("frames", "masks", "viewmats", "intrinsics", "joint_rotations", "root_translation",
                      "keypoints", "shape"):
            assert getattr(ra, field).tobytes() == getattr(rb, field).tobytes(), field
        assert ra.extras.keys() == rb.extras.keys()
        assert all(ra.extras[k].tobytes() == rb.extras[k].tobytes() for k in ra.extras)
        assert json.dumps(ra.meta, sort_keys=True) == json.dumps(rb.meta, sort_keys=True)
    again = synthetic.generate(config, 2, tmp_path / "a", workers=1, progress=False)
    assert again["generated"] == 0 and again["skipped"] == 2  # resumable
    other = synthetic.generate(synthetic.SynthConfig(seed=12, frames=2, width=48, height=48), 1,
                               tmp_path / "c", progress=False)
    assert other["generated"] == 1
    ta = load_record(tmp_path / "a" / name.replace("000001", "000000")).extras["gt_tokens"]
    tc = load_record(next((tmp_path / "c").glob("*.safetensors"))).extras["gt_tokens"]
    assert not np.array_equal(ta, tc)


def test_heldout_combinations_never_in_train():
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(4000):
        attrs = vocabulary.sample_attributes(rng)
        split = vocabulary.assign_split(attrs, rng)
        counts[split] = counts.get(split, 0) + 1
        combos = vocabulary.heldout_combinations_in(attrs)
        assert (split == "heldout-combo") == bool(combos), (split, combos)
    assert counts["heldout-combo"] > 20 and counts["train"] > 3000
    # every value of every held-out pair is still seen in training on its own
    rng = np.random.default_rng(1)
    train = [a for a in (vocabulary.sample_attributes(rng) for _ in range(3000))
             if not vocabulary.heldout_combinations_in(a)]
    for (ka, va), (kb, vb) in vocabulary.HELDOUT_COMBINATIONS:
        assert any(a[ka] == va for a in train) and any(a[kb] == vb for a in train)


def test_generated_split_matches_attributes(ctx):
    i, person = _find(ctx, lambda a: bool(vocabulary.heldout_combinations_in(a)))
    assert person.split == "heldout-combo"


def _nearest_vertex_distance(points: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.cdist(chunk, vertices).min(1).values for chunk in points.split(2048)])


@pytest.mark.parametrize("kind", ["long hair", "skirt", "dress"])
def test_loose_geometry_lies_beyond_the_body(ctx, kind):
    pred = {"long hair": lambda a: a["hair_style"] == "long", "skirt": lambda a: a["lower"] == "skirt",
            "dress": lambda a: a["lower"] == "dress"}[kind]
    _, person = _find(ctx, pred)
    g = synthetic.gaussians_of(ctx, person.tokens)
    k = ctx.cfg.gaussians_per_texel
    label = LABELS.index("hair" if kind == "long hair" else "lower")
    texel_labels = person.labels.reshape(-1)[ctx.valid]  # (M,)
    sel = torch.from_numpy(np.repeat(texel_labels == label, k))
    verts = torch.from_numpy(ctx.template.vertices).float()
    dist = _nearest_vertex_distance(g.means[sel], verts)
    far = int((dist > 0.10).sum())
    assert far >= 40, f"{kind}: only {far} of {int(sel.sum())} Gaussians are more than 10 cm from the body"
    # ... and without the loose garment the same texels would stay on the body
    if kind != "long hair":
        assert float(dist.max()) < 0.40


def test_front_only_clip_never_sees_the_back(ctx):
    from backend.avatar.body_parts import PART_IDS

    i, person = _find(ctx, lambda a: a["hair_style"] in ("bald", "short") and a["upper"] != "hoodie")
    rng = synthetic.person_rng(ctx.config.seed, 10_000 + i)
    rec = synthetic.make_clip(ctx, person, rng, view="front-only", occlude=False, motion_source="walk")
    vis = rec.extras["visibility"]
    normal_y = ctx.layout.frames.numpy()[..., 1, 2]
    torso = ctx.layout.part_ids.numpy() == PART_IDS["torso"]
    back, front = torso & (normal_y > 0.7), torso & (normal_y < -0.7)
    assert back.sum() > 20 and front.sum() > 20
    assert vis[back].max() == 0.0
    assert (vis[front] > 0).mean() > 0.5
    assert rec.meta["camera"]["view"] == "front-only"


def test_occluders_hide_keypoints_and_mask(ctx):
    _, person = _find(ctx, lambda a: True)
    rec = synthetic.make_clip(ctx, person, synthetic.person_rng(3, 777), occlude=True)
    assert rec.meta["occluders"]
    x0, y0, x1, y1 = rec.meta["occluders"][0]
    assert not rec.masks[:, y0:y1, x0:x1].any()
    kp = rec.keypoints
    inside = (kp[..., 0] >= x0) & (kp[..., 0] < x1) & (kp[..., 1] >= y0) & (kp[..., 1] < y1)
    assert not kp[..., 2][inside].any()


def test_cli_writes_records_and_shards(tmp_path):
    from training.data.shards import iter_shards
    from training.data.visibility import shard_mask

    parser = argparse.ArgumentParser()
    synthetic.add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--people", "2", "--out", str(tmp_path / "rec"), "--shards",
                              str(tmp_path / "sh"), "--frames", "2", "--size", "48", "40", "--seed", "5",
                              "--no-progress"])
    assert args.run(args) == 0
    shards = list(iter_shards(tmp_path / "sh", verify=True))
    assert len(shards) == 1 and shards[0].tokens.shape == (2, 12, 64, 64)
    rec = load_record(record_path(tmp_path / "rec", shards[0].clip_ids[0]))
    assert rec.frames.shape == (2, 40, 48, 3)
    np.testing.assert_array_equal(shards[0].visibility[0], shard_mask(rec.extras["visibility"], 2))
    np.testing.assert_allclose(shards[0].tokens[0].astype(np.float32), rec.extras["gt_tokens"], atol=1e-2, rtol=1e-3)
    assert shards[0].captions[0] == rec.captions and json.dumps(shards[0].metas[0])
    from training.data.shards import reference_crop

    assert shards[0].ref_crops.shape == (2, 64, 64, 3)  # the image condition, as tokenize writes it
    np.testing.assert_array_equal(shards[0].ref_crops[0], reference_crop(rec))
    assert args.run(args) == 0  # a rerun adds nothing
    assert sum(len(s) for s in iter_shards(tmp_path / "sh")) == 2


def test_shape_stays_within_reach(ctx):
    from training.data import body_shape

    rng = np.random.default_rng(4)
    for _ in range(10):
        shape, _ = vocabulary.sample_shape(rng)
        fitted = body_shape.fit_to_reach(ctx.basis, shape, ctx.shape_limits)
        norm = np.linalg.norm(ctx.basis.displacement(fitted), axis=-1)
        for mask, limit in ctx.shape_limits.values():
            assert norm[mask].max() <= limit + 1e-6
        assert np.all(np.abs(fitted - 0.5) <= np.abs(shape - 0.5) + 1e-6)


def test_missing_bvh_falls_back_to_the_walk_cycle_and_says_so(tmp_path):
    ctx = synthetic.Context(synthetic.SynthConfig(seed=2, frames=2, width=48, height=48,
                                                  bvh=str(tmp_path / "absent.bvh")))
    rec = synthetic.generate_one(ctx, 0)
    assert rec.meta["motion"].startswith("walkcycle:") and "absent.bvh" in rec.meta["motion_note"]


def test_bvh_parser_and_retarget():
    from training.data import motion

    path = synthetic.default_bvh_path()
    if not path.exists():
        pytest.skip(f"{path} missing (make testdata)")
    from backend.avatar.template import load_template

    src = motion.BvhSource(path, load_template("anny"))
    assert len(src.bvh.names) == 31 and src.num_frames == 2752
    m = src.window(0, 3, 100)
    assert m.joint_rotations.shape == (3, 104, 4)
    np.testing.assert_allclose(np.linalg.norm(m.joint_rotations, axis=-1), 1.0, atol=1e-5)
    assert 0.05 < src.scale < 0.07  # template leg / CMU leg length in BVH units
