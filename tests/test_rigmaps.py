"""Rig name maps and numpy retargeting (the add-on's side: numpy + stdlib only)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bridge import rigmaps
from backend.avatar.template import load_template

CMU_01_01 = ["Hips", "LHipJoint", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase", "RHipJoint", "RightUpLeg",
             "RightLeg", "RightFoot", "RightToeBase", "LowerBack", "Spine", "Spine1", "Neck", "Neck1", "Head",
             "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "LeftFingerBase", "LeftHandIndex1", "LThumb",
             "RightShoulder", "RightArm", "RightForeArm", "RightHand", "RightFingerBase", "RightHandIndex1", "RThumb"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return load_template("anny", cache_dir=tmp_path_factory.mktemp("cache"))


def test_imports_no_torch():
    code = "import sys, bridge.rigmaps; bad = [m for m in ('torch', 'bpy', 'backend') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_detect_rig():
    assert rigmaps.detect_rig(["mixamorig:Hips", "mixamorig:Spine", "mixamorig:Spine2", "mixamorig:LeftForeArm"]) == "mixamo"
    assert rigmaps.detect_rig(["Hips", "Spine", "Spine1", "Spine2", "LeftArm", "LeftForeArm", "LeftHandIndex1"]) == "mixamo"
    assert rigmaps.detect_rig(CMU_01_01) == "cmu"
    assert rigmaps.detect_rig(["root", "DEF-spine", "DEF-thigh.L", "DEF-upper_arm.L", "ORG-spine"]) == "rigify"
    assert rigmaps.detect_rig(["ORG-spine", "ORG-thigh.L", "ORG-hand.L"]) == "rigify_org"
    assert rigmaps.detect_rig(["root", "spine05", "neck01", "wrist.L"]) == "genlca"
    with pytest.raises(ValueError, match="could not recognise the rig"):
        rigmaps.detect_rig(["Bone", "Bone.001"])


@pytest.mark.parametrize("rig", ["mixamo", "rigify", "rigify_org", "cmu"])
def test_maps_target_real_template_joints(template, rig):
    m = rigmaps.map_for(rig, template_joints=template.joint_names)
    assert len(m) >= 25 and len(set(m.values())) == len(m)  # one source per template joint


def test_map_prefix_presence_and_overrides(template):
    names = ["mixamorig1:Hips", "mixamorig1:Spine", "mixamorig1:LeftArm"]
    m = rigmaps.map_for("mixamo", bone_names=names)
    assert m == {"mixamorig1:Hips": "root", "mixamorig1:Spine": "spine05", "mixamorig1:LeftArm": "upperarm01.L"}
    m = rigmaps.map_for("cmu", bone_names=CMU_01_01, overrides={"LeftFingerBase": "metacarpal2.L", "Hips": None})
    assert m["LeftFingerBase"] == "metacarpal2.L" and "Hips" not in m
    with pytest.raises(KeyError, match="unknown template joints"):
        rigmaps.map_for("cmu", overrides={"Head": "skull"}, template_joints=template.joint_names)
    with pytest.raises(ValueError, match="unknown rig 'maya'"):
        rigmaps.map_for("maya")


def _random_rotations(rng, n):
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_retarget_round_trip_through_renamed_skeleton(template):
    """Pose the template, express it on a Mixamo-named skeleton whose bones have other axis
    conventions (a random constant rotation per bone), retarget back: same local pose (1e-5)."""
    rng = np.random.default_rng(0)
    rest = template.rest_matrices[:, :3, :3].astype(np.float64)
    parents = template.joint_parents.tolist()
    mapping = rigmaps.map_for("mixamo", template_joints=template.joint_names)
    mapped = {template.joint_index(t) for t in mapping.values()}
    local = np.tile([1.0, 0, 0, 0], (template.num_joints, 1))
    for j in mapped:
        local[j] = _random_rotations(rng, 1)[0]
    world = rigmaps.world_rotations(local, rest, parents)
    source_names = list(mapping)
    tj = [template.joint_index(mapping[s]) for s in source_names]
    offsets = rigmaps.quat_to_matrix(_random_rotations(rng, len(source_names)))  # per-bone axis convention
    src_rest = rest[tj] @ offsets
    src_pose = world[tj] @ offsets
    back = rigmaps.retarget_pose(src_rest, src_pose, rest, mapping, parents, source_names=source_names,
                                 template_names=template.joint_names, align_rest=False)
    expect = rigmaps.matrix_to_quat(rigmaps.quat_to_matrix(local))
    sign = np.sign((back * expect).sum(1, keepdims=True))
    np.testing.assert_allclose(back * sign, expect, atol=1e-5)


def test_retarget_index_mapping_and_errors(template):
    rest = template.rest_matrices[:, :3, :3].astype(np.float64)
    parents = template.joint_parents.tolist()
    src = np.tile(np.eye(3), (2, 1, 1))
    out = rigmaps.retarget_pose(src, src, rest, {0: 0, 1: template.joint_index("head")}, parents, align_rest=False)
    np.testing.assert_allclose(out, np.tile([1.0, 0, 0, 0], (template.num_joints, 1)), atol=1e-9)
    with pytest.raises(ValueError, match=r"source_pose_world of shape \(2, 3, 3\)"):
        rigmaps.retarget_pose(src, np.zeros((3, 3, 3)), rest, {}, parents)
    with pytest.raises(ValueError, match="NaN"):
        rigmaps.retarget_pose(src, src * np.nan, rest, {}, parents)
    with pytest.raises(KeyError, match="'mixamorig:Tail'"):
        rigmaps.retarget_pose(src, src, rest, {"mixamorig:Tail": "head"}, parents,
                              source_names=["mixamorig:Hips", "x"], template_names=template.joint_names)


def test_retarget_aligns_a_t_pose_source_to_the_template(template):
    """A source rig whose rest pose is a T-pose (arms raised to horizontal) drives the A-pose template:
    with rest alignment the template's mapped bones point where the source's bones point, at rest and
    posed (1e-6); without it the template stays in its own rest pose when the source is at rest."""
    rest = template.rest_matrices[:, :3, :3].astype(np.float64)
    parents = template.joint_parents.tolist()
    names = template.joint_names
    identity = np.tile([1.0, 0, 0, 0], (len(names), 1))
    t_pose = identity.copy()
    for side, sign in (("L", 1.0), ("R", -1.0)):  # raise each upper arm by 40 degrees about the body's Y
        half = np.deg2rad(40.0) / 2
        axis_world = np.array([0.0, sign, 0.0])
        j = template.joint_index(f"upperarm01.{side}")
        axis_local = rest[j].T @ axis_world
        t_pose[j] = [np.cos(half), *(np.sin(half) * axis_local)]
    src_rest = rigmaps.world_rotations(t_pose, rest, parents)
    mapping = {n: n for n in names}
    bend = t_pose.copy()
    k = template.joint_index("lowerarm01.L")
    bend[k] = [np.cos(np.pi / 8), np.sin(np.pi / 8), 0.0, 0.0]
    src_bent = rigmaps.world_rotations(bend, rest, parents)
    for src_pose in (src_rest, src_bent):
        local = rigmaps.retarget_pose(src_rest, src_pose, rest, mapping, parents,
                                      source_names=names, template_names=names)
        world = rigmaps.world_rotations(local, rest, parents)
        np.testing.assert_allclose(world[:, :, 1], src_pose[:, :, 1], atol=1e-6)
    unaligned = rigmaps.retarget_pose(src_rest, src_rest, rest, mapping, parents, source_names=names,
                                      template_names=names, align_rest=False)
    np.testing.assert_allclose(np.abs(unaligned[:, 0]), 1.0, atol=1e-9)
