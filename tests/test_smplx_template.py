"""The SMPL-X template adapter, run for real through `smplx.SMPLX` on synthetic model files that have the
structure of the licensed ones (tests/smplx_synthetic.py): template contract, UV layout, decode + pose +
render, and the errors for missing, damaged or mismatched files."""
from __future__ import annotations

import math
import shutil
import zipfile

import numpy as np
import pytest
import torch

from backend.avatar import body_parts
from backend.avatar.skinning import pose
from backend.avatar.smplx_template import GENDERS, load_smplx_template, part_of_joint
from backend.avatar.template import BodyTemplate
from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, decode, gaussian_texel_index, placeholder_tokens
from backend.avatar.uv_layout import build_layout, load_layout
from tests.smplx_synthetic import JOINT_NAMES, NUM_FACES, NUM_JOINTS, NUM_VERTS, PARENTS, write_obj, write_synthetic_smplx
from tests.surface_checks import (assert_rest_frames_are_blender_bones, assert_z_up_metres_facing_minus_y,
                                  max_anchor_distance)

Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smplx-models")
    write_synthetic_smplx(folder)
    return folder


@pytest.fixture(scope="module")
def arrays(model_dir) -> dict[str, np.ndarray]:
    with np.load(model_dir / "smplx" / "SMPLX_NEUTRAL.npz", allow_pickle=True) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("genlca-cache")


@pytest.fixture(scope="module")
def template(model_dir) -> BodyTemplate:
    return load_smplx_template(model_dir)


@pytest.fixture(scope="module")
def layout64(template, cache):
    return load_layout(template, 64, cache_dir_override=cache)


def to_template_space(points_y_up: np.ndarray, lift: float) -> np.ndarray:
    out = points_y_up @ Y_UP_TO_Z_UP.T
    out[:, 2] += lift
    return out


def copy_model(src, dst, drop: str | None = None, replace: dict | None = None, obj: str | None = None):
    """A copy of the synthetic model folder with one npz key dropped/replaced or another OBJ text."""
    (dst / "smplx").mkdir(parents=True, exist_ok=True)
    if drop is None and not replace:
        shutil.copyfile(src / "smplx" / "SMPLX_NEUTRAL.npz", dst / "smplx" / "SMPLX_NEUTRAL.npz")
    else:
        with np.load(src / "smplx" / "SMPLX_NEUTRAL.npz", allow_pickle=True) as data:
            arrs = {k: data[k] for k in data.files if k != drop}
        arrs.update(replace or {})
        np.savez_compressed(dst / "smplx" / "SMPLX_NEUTRAL.npz", **arrs)
    (dst / "smplx_uv.obj").write_text(obj if obj is not None else (src / "smplx_uv.obj").read_text())
    return dst


# ------------------------------------------------------------------ the synthetic files themselves
def test_synthetic_files_have_the_smplx_structure(model_dir, arrays):
    """smplx's own loader and forward pass accept them: lbs with 486 pose features, landmarks, vertex ids."""
    smplx = pytest.importorskip("smplx")
    from smplx.vertex_ids import vertex_ids

    assert arrays["v_template"].shape == (NUM_VERTS, 3) and arrays["f"].shape == (NUM_FACES, 3)
    assert arrays["J_regressor"].shape == (NUM_JOINTS, NUM_VERTS) and arrays["weights"].shape == (NUM_VERTS, NUM_JOINTS)
    assert arrays["posedirs"].shape == (NUM_VERTS, 3, 486) and arrays["kintree_table"].shape == (2, NUM_JOINTS)
    obj = (model_dir / "smplx_uv.obj").read_text().splitlines()
    counts = {tag: sum(1 for line in obj if line.startswith(tag + " ")) for tag in ("v", "vt", "f")}
    assert counts["v"] == NUM_VERTS and counts["f"] == NUM_FACES and counts["vt"] > NUM_VERTS  # seams

    model = smplx.SMPLX(str(model_dir / "smplx" / "SMPLX_NEUTRAL.npz"), use_pca=False, flat_hand_mean=True,
                        dtype=torch.float64)
    assert model.parents.tolist() == PARENTS
    with torch.no_grad():
        rest = model()
        v = rest.vertices[0].numpy()
        np.testing.assert_allclose(v, arrays["v_template"], atol=1e-12)
        np.testing.assert_allclose(rest.joints[0, :NUM_JOINTS].numpy(), arrays["J_regressor"] @ arrays["v_template"],
                                   atol=1e-8)
        # the extra keypoints smplx reads at vertex ids sit where their names say (Y-up, facing +Z)
        ids = vertex_ids["smplx"]
        head = v[v[:, 1] > v[:, 1].min() + 1.5]
        assert v[ids["nose"], 2] == pytest.approx(head[:, 2].max())
        assert v[ids["lear"], 0] > 0.06 and v[ids["rear"], 0] < -0.06
        assert v[ids["lthumb"], 0] > 0.75 and v[ids["rpinky"], 0] < -0.85
        assert v[ids["LBigToe"], 2] > 0.15 and v[ids["LHeel"], 2] < -0.05 and v[ids["RHeel"], 0] < 0
        assert rest.joints.shape == (1, 55 + 21 + 51, 3)  # joints, vertex keypoints, face landmarks
        # bend the left elbow (body_pose joint 18 - 1): the left hand moves, the right one does not
        body_pose = torch.zeros(1, 63, dtype=torch.float64)
        body_pose[0, 3 * 17 + 1] = math.pi / 2
        bent = model(body_pose=body_pose).vertices[0].numpy()
    moved = np.linalg.norm(bent - v, axis=1)
    assert moved[ids["lindex"]] > 0.2 and moved[ids["rindex"]] < 1e-9


# ------------------------------------------------------------------ the template contract (as for anny)
def test_template_shapes_units_and_axes(template, arrays):
    v, f, j = len(template.vertices), len(template.faces), template.num_joints
    assert (v, f, j) == (NUM_VERTS, NUM_FACES, NUM_JOINTS)
    assert template.name == "smplx-neutral" and len(template.source_hash) == 16
    assert template.uvs.shape == (f, 3, 2) and 0.0 <= template.uvs.min() and template.uvs.max() <= 1.0
    np.testing.assert_array_equal(template.faces, arrays["f"].astype(np.int64))
    assert_z_up_metres_facing_minus_y(template, left_wrist="left_wrist")
    nose = template.vertices[template.vertices[:, 2] > 1.45]
    assert template.vertices[9120, 1] == pytest.approx(nose[:, 1].min())  # SMPL-X's nose vertex id
    # exactly the model's data, rotated Y-up -> Z-up and lifted
    lift = -(arrays["v_template"] @ Y_UP_TO_Z_UP.T)[:, 2].min()
    np.testing.assert_allclose(template.vertices, to_template_space(arrays["v_template"], lift), atol=1e-6)
    np.testing.assert_allclose(template.joint_heads, to_template_space(arrays["J_regressor"] @ arrays["v_template"], lift),
                               atol=1e-6)
    np.testing.assert_allclose(template.skin_weights, arrays["weights"], atol=1e-6)


def test_rest_frames_are_blender_bones(template):
    rot = assert_rest_frames_are_blender_bones(template)
    assert template.joint_parents.tolist() == PARENTS and template.joint_names == JOINT_NAMES
    heads = template.joint_heads.astype(np.float64)
    for i, name in enumerate(template.joint_names):
        children = [c for c, p in enumerate(PARENTS) if p == i]
        if children:  # tails at the mean of the children's heads
            np.testing.assert_allclose(template.joint_tails[i], heads[children].mean(0), atol=1e-5, err_msg=name)
    elbow, wrist = template.joint_index("left_elbow"), template.joint_index("left_wrist")
    assert rot[elbow, 0, 1] > 0.99  # the left forearm's bone points along +X in the T-pose
    skeleton = template.skeleton()
    assert skeleton.num_joints == NUM_JOINTS and skeleton.index("left_wrist") == wrist


def test_body_parts_and_joint_names(template):
    expect = {"pelvis": "torso", "spine3": "torso", "left_collar": "torso", "neck": "neck", "head": "head",
              "jaw": "head", "left_eye_smplhf": "head", "right_eye_smplhf": "head", "left_shoulder": "upper_arm.L",
              "right_elbow": "lower_arm.R", "left_wrist": "hand.L", "right_pinky3": "hand.R", "left_thumb1": "hand.L",
              "left_hip": "upper_leg.L", "right_knee": "lower_leg.R", "left_ankle": "foot.L", "right_foot": "foot.R"}
    assert {n: part_of_joint(n) for n in expect} == expect
    assert all(part_of_joint(n) in body_parts.PART_IDS for n in template.joint_names)
    assert set(np.unique(template.vertex_parts)) == set(range(len(body_parts.PART_NAMES)))
    bone_part = np.array([body_parts.PART_IDS[part_of_joint(n)] for n in template.joint_names])
    np.testing.assert_array_equal(template.vertex_parts, bone_part[template.skin_weights.argmax(1)])


def test_uvs_come_from_the_obj_even_when_its_faces_are_shuffled(template, arrays, model_dir, tmp_path):
    vt, ft = arrays["vt"], arrays["ft"].astype(np.int64)
    np.testing.assert_allclose(template.uvs, vt[ft], atol=1e-6)  # OBJ written with 6 decimals
    rng = np.random.default_rng(3)
    perm = rng.permutation(NUM_FACES)
    roll = rng.integers(0, 3, NUM_FACES)
    corners = (np.arange(3)[None] + roll[:, None]) % 3  # rotate each face's corners (winding kept)
    f = np.take_along_axis(arrays["f"].astype(np.int64)[perm], corners[perm], 1)
    ft2 = np.take_along_axis(ft[perm], corners[perm], 1)
    other = copy_model(model_dir, tmp_path / "shuffled", obj="")
    write_obj(other / "smplx_uv.obj", arrays["v_template"], vt, f, ft2)
    again = load_smplx_template(other)
    np.testing.assert_array_equal(again.faces, template.faces)
    np.testing.assert_allclose(again.uvs, template.uvs, atol=1e-7)


# ------------------------------------------------------------------ the UV texel layout
def test_layout_anchors_lie_on_the_surface(template, layout64):
    pytest.importorskip("trimesh.triangles")
    assert max_anchor_distance(template, layout64) < 1e-5 * template.bbox_diagonal


def test_layout_skin_frames_regions_and_cache(template, layout64, cache):
    r = layout64.resolution
    assert layout64.template_name == "smplx-neutral" and layout64.anchors.shape == (r, r, 3)
    assert 0.5 < layout64.atlas_mask.float().mean() < 0.95  # nine rectangular charts fill ~85 %
    w = layout64.gather("skin_weights")
    assert torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)
    assert (w >= 0).all() and layout64.gather("skin_indices").max() < NUM_JOINTS
    fr = layout64.gather("frames").double()
    assert torch.allclose(fr.transpose(1, 2) @ fr, torch.eye(3, dtype=torch.float64).expand_as(fr), atol=1e-5)
    assert torch.allclose(torch.linalg.det(fr), torch.ones(len(fr), dtype=torch.float64), atol=1e-5)
    for name, m in layout64.region_masks().items():
        assert m.sum() > 20, f"region {name} has only {m.sum()} texels"
    assert set(layout64.part_ids[layout64.atlas_mask].unique().tolist()) == set(range(len(body_parts.PART_NAMES)))
    files = list(cache.glob(f"layout-smplx-neutral-{template.source_hash}-R64-*.safetensors"))
    assert len(files) == 1  # the source hash makes the layout cacheable
    again = load_layout(template, 64, cache_dir_override=cache)
    fresh = build_layout(template, 64)
    for name in ("anchors", "frames", "skin_weights", "valid_indices", "part_ids"):
        assert torch.equal(getattr(again, name), getattr(fresh, name)), name


def test_decode_pose_and_render(template, cache):
    from backend.render import RenderOptions, render
    from backend.render.camera import Camera, intrinsics_from_fov, look_at

    layout = load_layout(template, 32, cache_dir_override=cache)
    config = TokenDecoderConfig(token_channels=16, gaussians_per_texel=2, sh_degree=1, hidden_channels=32,
                                token_layout="latent")
    g = decode(placeholder_tokens(layout, 16, seed=1), layout, TokenDecoder(config, seed=0))
    assert len(g) == 2 * layout.num_valid
    g.validate(check_finite=True)
    skeleton = template.skeleton()
    rot = torch.zeros(NUM_JOINTS, 4)
    rot[:, 0] = 1.0
    elbow = skeleton.index("left_elbow")
    rot[elbow] = torch.tensor([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0])  # 90° about the bone's x
    posed = pose(g, skeleton, rot)
    posed.validate(check_finite=True)
    texel = gaussian_texel_index(layout, 2)
    hand = layout.region_mask("hands").reshape(-1)[texel] & (g.means[:, 0] > 0)  # the left hand
    legs = layout.region_mask("legs").reshape(-1)[texel]
    shift = (posed.means - g.means).norm(dim=1)
    assert shift[hand].min() > 0.1 and shift[legs].max() < 1e-5
    cam = Camera(look_at((0.0, -3.5, 0.9), (0.0, 0.0, 0.9)), intrinsics_from_fov(40, 48, 48), 48, 48)
    opts = RenderOptions(backend="torch", background=(1.0, 1.0, 1.0))
    rest_img, posed_img = render(g, cam, options=opts), render(posed, cam, options=opts)
    for out in (rest_img, posed_img):
        assert torch.isfinite(out.rgb).all()
        assert 0.05 < (out.alpha > 0.5).float().mean() < 0.6  # a figure, not an empty or full frame
    assert (rest_img.alpha - posed_img.alpha).abs().max() > 0.5  # the forearm moved on screen


# ------------------------------------------------------------------ file layouts and errors
def test_flat_folder_gender_and_v11_shape_space(tmp_path, template):
    write_synthetic_smplx(tmp_path / "flat", flat=True)  # <model_dir>/SMPLX_NEUTRAL.npz
    flat = load_smplx_template(tmp_path / "flat")
    np.testing.assert_array_equal(flat.vertices, template.vertices)
    assert flat.source_hash == template.source_hash
    write_synthetic_smplx(tmp_path / "v11", gender="female", shape_dims=400)  # 300 shape + 100 expression
    female = load_smplx_template(tmp_path / "v11", gender="female")
    assert female.name == "smplx-female" and female.source_hash != template.source_hash
    np.testing.assert_array_equal(female.vertices, template.vertices)
    with pytest.raises(FileNotFoundError, match="SMPLX_MALE.npz"):
        load_smplx_template(tmp_path / "v11", gender="male")
    with pytest.raises(ValueError, match=r"gender must be one of .*'kid'"):
        load_smplx_template(tmp_path / "v11", gender="kid")
    assert GENDERS == ("neutral", "male", "female")


def test_npz_missing_key_names_key_and_file(model_dir, tmp_path):
    bad = copy_model(model_dir, tmp_path, drop="hands_componentsl")
    with pytest.raises(ValueError) as err:
        load_smplx_template(bad)
    msg = str(err.value)
    assert "'hands_componentsl'" in msg and str(bad / "smplx" / "SMPLX_NEUTRAL.npz") in msg


def test_npz_wrong_shape_and_damaged_file(model_dir, arrays, tmp_path):
    bad = copy_model(model_dir, tmp_path / "shape", replace={"J_regressor": arrays["J_regressor"][:54]})
    with pytest.raises(ValueError, match=r"'J_regressor' has shape \(54, 10475\), expected \(55, 10475\)"):
        load_smplx_template(bad)
    npz = model_dir / "smplx" / "SMPLX_NEUTRAL.npz"
    damaged = copy_model(model_dir, tmp_path / "damaged")
    (damaged / "smplx" / "SMPLX_NEUTRAL.npz").write_bytes(npz.read_bytes()[:4096])  # truncated download
    with pytest.raises(ValueError, match="not a readable SMPL-X .npz") as err:
        load_smplx_template(damaged)
    assert str(damaged / "smplx" / "SMPLX_NEUTRAL.npz") in str(err.value)
    with zipfile.ZipFile(npz) as zf:
        assert "v_template.npy" in zf.namelist()  # the intact file is a zip of .npy arrays


def test_obj_without_uvs_or_from_another_mesh(model_dir, arrays, tmp_path):
    v, f = arrays["v_template"], arrays["f"].astype(np.int64) + 1
    plain = "\n".join([f"v {x} {y} {z}" for x, y, z in v.tolist()] + [f"f {a} {b} {c}" for a, b, c in f.tolist()])
    bad = copy_model(model_dir, tmp_path / "novt", obj=plain)
    with pytest.raises(ValueError, match="no 'vt' lines") as err:
        load_smplx_template(bad)
    assert str(bad / "smplx_uv.obj") in str(err.value)
    lines = (model_dir / "smplx_uv.obj").read_text().splitlines()
    first_f = next(i for i, line in enumerate(lines) if line.startswith("f "))
    no_index = lines[:first_f] + [lines[first_f].replace("/", "//", 1)] + lines[first_f + 1:]  # corner 'a//b'
    bad = copy_model(model_dir, tmp_path / "noindex", obj="\n".join(no_index))
    with pytest.raises(ValueError, match=rf"smplx_uv.obj:{first_f + 1}: cannot read 'f' line.*no texture coordinate"):
        load_smplx_template(bad)
    lines[first_f], lines[first_f + 1] = "f 1/1 2/2 3/3", "f 1/1 3/3 2/2"  # faces of another mesh
    bad = copy_model(model_dir, tmp_path / "other", obj="\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="not the UV map of this model") as err:
        load_smplx_template(bad)
    assert str(bad / "smplx_uv.obj") in str(err.value)
