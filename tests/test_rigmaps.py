"""Rig name maps and numpy retargeting (the add-on's side: numpy + stdlib only)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bridge.rig import rigmaps
from backend.avatar.template import load_template

CMU_01_01 = ["Hips", "LHipJoint", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase", "RHipJoint", "RightUpLeg",
             "RightLeg", "RightFoot", "RightToeBase", "LowerBack", "Spine", "Spine1", "Neck", "Neck1", "Head",
             "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "LeftFingerBase", "LeftHandIndex1", "LThumb",
             "RightShoulder", "RightArm", "RightForeArm", "RightHand", "RightFingerBase", "RightHandIndex1", "RThumb"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return load_template("anny", cache_dir=tmp_path_factory.mktemp("cache"))


def test_imports_no_torch():
    code = "import sys, bridge.rig.rigmaps; bad = [m for m in ('torch', 'bpy', 'backend') if m in sys.modules]; print(bad)"
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


# ------------------------------------------------------------------ any rig: names, shape, checks
@pytest.mark.parametrize("name, side, core", [
    ("mixamorig:LeftArm", "L", "arm"), ("Bip01 L UpperArm", "L", "upperarm"), ("LHipJoint", "L", "hipjoint"),
    ("upperarm_l", "L", "upperarm"), ("DEF-upper_arm.L", "L", "upperarm"), ("Left Thumb Proximal", "L", "thumbproximal"),
    ("RightShoulder", "R", "shoulder"), ("HandLeft", "L", "hand"), ("spine_01", None, "spine01"), ("Hips", None, "hips"),
])
def test_split_side(name, side, core):
    assert rigmaps.split_side(name)[:2] == (side, core)


def test_split_side_marks_helpers_and_copies():
    assert rigmaps.split_side("DEF-upper_arm.L.001")[2] and rigmaps.split_side("HeadTop_End")[2]
    assert rigmaps.split_side("upperarm_twist_01_l")[2] and not rigmaps.split_side("LeftForeArm")[2]


ZXY = ["Hips", "Chest", "Neck", "Head", "LeftCollar", "LeftShoulder", "LeftElbow", "LeftWrist", "RightCollar",
       "RightShoulder", "RightElbow", "RightWrist", "LeftHip", "LeftKnee", "LeftAnkle", "RightHip", "RightKnee",
       "RightAnkle"]
ZXY_PARENTS = [-1, 0, 1, 2, 1, 4, 5, 6, 1, 8, 9, 10, 0, 12, 13, 0, 15, 16]
UNREAL = ["root", "pelvis", "spine_01", "spine_02", "spine_03", "neck_01", "head", "clavicle_l", "upperarm_l",
          "lowerarm_l", "hand_l", "clavicle_r", "upperarm_r", "lowerarm_r", "hand_r", "thigh_l", "calf_l", "foot_l",
          "ball_l", "thigh_r", "calf_r", "foot_r", "ball_r", "upperarm_twist_01_l"]
UNITY = ["Hips", "Spine", "Chest", "UpperChest", "Neck", "Head", "LeftShoulder", "LeftUpperArm", "LeftLowerArm",
         "LeftHand", "RightShoulder", "RightUpperArm", "RightLowerArm", "RightHand", "LeftUpperLeg", "LeftLowerLeg",
         "LeftFoot", "LeftToes", "RightUpperLeg", "RightLowerLeg", "RightFoot", "RightToes"]
BIPED = ["Bip01", "Bip01 Pelvis", "Bip01 Spine", "Bip01 Spine1", "Bip01 Neck", "Bip01 Head", "Bip01 L Clavicle",
         "Bip01 L UpperArm", "Bip01 L Forearm", "Bip01 L Hand", "Bip01 R Clavicle", "Bip01 R UpperArm",
         "Bip01 R Forearm", "Bip01 R Hand", "Bip01 L Thigh", "Bip01 L Calf", "Bip01 L Foot", "Bip01 L Toe0",
         "Bip01 R Thigh", "Bip01 R Calf", "Bip01 R Foot", "Bip01 R Toe0", "Bip01 L Finger0", "Bip01 L Finger01"]


@pytest.mark.parametrize("names, expect", [
    (ZXY, {"Hips": "root", "LeftCollar": "clavicle.L", "LeftShoulder": "upperarm01.L", "LeftElbow": "lowerarm01.L",
           "LeftWrist": "wrist.L", "RightHip": "upperleg01.R", "RightKnee": "lowerleg01.R", "RightAnkle": "foot.R",
           "Neck": "neck01", "Head": "head"}),
    (UNREAL, {"pelvis": "root", "clavicle_l": "clavicle.L", "upperarm_l": "upperarm01.L", "calf_r": "lowerleg01.R",
              "ball_l": "toe1-1.L", "spine_01": "spine05", "spine_03": "spine02"}),
    (UNITY, {"Hips": "root", "LeftShoulder": "clavicle.L", "LeftUpperArm": "upperarm01.L",
             "RightLowerLeg": "lowerleg01.R", "LeftToes": "toe1-1.L", "UpperChest": "spine02"}),
    (BIPED, {"Bip01 Pelvis": "root", "Bip01 L Clavicle": "clavicle.L", "Bip01 R Calf": "lowerleg01.R",
             "Bip01 L Finger0": "finger1-1.L", "Bip01 L Finger01": "finger1-2.L"}),
    (["mixamorig:" + n for n in ("Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "LeftShoulder", "LeftArm",
                                 "LeftForeArm", "LeftHand", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase")],
     {"mixamorig:LeftShoulder": "clavicle.L", "mixamorig:LeftArm": "upperarm01.L", "mixamorig:LeftLeg": "lowerleg01.L"}),
])
def test_propose_map_by_names(template, names, expect):
    how, m = rigmaps.propose_map(names, template_joints=template.joint_names)
    assert how in ("names", "mixamo")
    for s, t in expect.items():
        assert m[s] == t, s
    assert len(set(m.values())) == len(m)  # one bone per joint
    assert "upperarm_twist_01_l" not in m
    rigmaps.check_map(m, names, template.joint_names)


def _zxy_heads(renamed: bool = False):
    offsets = {"Hips": (0, 0, 0.95), "Chest": (0, 0, 0.12), "Neck": (0, 0, 0.32), "Head": (0, 0, 0.1),
               "LeftCollar": (0.03, 0, 0.27), "LeftShoulder": (0.14, 0, 0), "LeftElbow": (0.28, 0, 0),
               "LeftWrist": (0.24, 0, 0), "LeftHip": (0.09, 0, -0.05), "LeftKnee": (0, 0, -0.42),
               "LeftAnkle": (0, 0, -0.41)}
    heads = np.zeros((len(ZXY), 3))
    for i, (n, p) in enumerate(zip(ZXY, ZXY_PARENTS)):
        o = np.array(offsets[n.replace("Right", "Left")], float)
        if n.startswith("Right"):
            o[0] = -o[0]
        heads[i] = (heads[p] if p >= 0 else 0) + o
    tails = heads + np.array([0, 0, 0.1])
    feet = [ZXY.index("LeftAnkle"), ZXY.index("RightAnkle")]
    tails[feet] = heads[feet] + (0, -0.13, -0.07)  # the feet point forward (-Y)
    return heads, tails


def test_topology_matches_an_unnamed_skeleton(template):
    heads, tails = _zxy_heads()
    names = [f"b{i:02d}" for i in range(len(ZXY))]
    how, by_shape = rigmaps.propose_map(names, ZXY_PARENTS, heads, template.joint_names, tails=tails)
    _, by_name = rigmaps.propose_map(ZXY, ZXY_PARENTS, template_joints=template.joint_names)
    assert how == "topology"
    assert by_shape == {names[ZXY.index(s)]: t for s, t in by_name.items()}
    # a figure facing +Y: left and right swap with the feet's direction
    flipped = tails.copy()
    flipped[[14, 17]] = heads[[14, 17]] + (0, 0.13, -0.07)
    _, facing_back = rigmaps.propose_map(names, ZXY_PARENTS, heads, template.joint_names, tails=flipped)
    assert facing_back[names[ZXY.index("LeftWrist")]] == "wrist.R"
    with pytest.raises(ValueError, match="end bones"):
        rigmaps.match_by_topology([-1, 0, 1], np.zeros((3, 3)))


def test_check_map_names_every_mistake(template):
    with pytest.raises(ValueError) as err:
        rigmaps.check_map({"LeftElbw": "lowerarm01.L", "Hips": "rooot", "Neck": "head", "Head": "head"}, ZXY,
                          template.joint_names, "armature 'walk'")
    text = str(err.value)
    assert "armature 'walk' has no bone 'LeftElbw'" in text and "no joint 'rooot'" in text
    assert "'head' is driven by both 'Neck' and 'Head'" in text


def test_retarget_fit_lands_mapped_joints_and_unmapped_follow(template):
    """bridge.rig.retarget: a source that is the template scaled by 1.1, moved and posed; with fitting every
    mapped joint lands on its source bone's head and the unmapped ones keep their rest relation."""
    from bridge.rig import retarget

    rng = np.random.default_rng(3)
    parents = template.joint_parents.tolist()
    rest = template.rest_matrices.astype(np.float64)
    mapping = rigmaps.map_for("mixamo", template_joints=template.joint_names)
    joints = [template.joint_index(t) for t in mapping.values()]
    src_rest = rest[joints].copy()
    src_rest[:, :3, 3] *= 1.1
    index = {j: i for i, j in enumerate(joints)}
    src_parents = []
    for j in joints:
        p = parents[j]
        while p >= 0 and p not in index:
            p = parents[p]
        src_parents.append(index[p] if p >= 0 else -1)
    lengths = np.linalg.norm(template.joint_tails[joints] - rest[joints, :3, 3], axis=1) * 1.1
    plan = retarget.plan_retarget(rest, parents, template.joint_tails, src_rest, src_parents, lengths,
                                  {i: j for i, j in enumerate(joints)})
    local = np.tile([1.0, 0, 0, 0], (template.num_joints, 1))
    for j in joints:
        local[j] = _random_rotations(rng, 1)[0] * [4, 1, 1, 1]
    local /= np.linalg.norm(local, axis=1, keepdims=True)
    pose = np.empty_like(src_rest)  # FK of the scaled source
    world_rot = rigmaps.world_rotations(local, rest[:, :3, :3], parents)
    for i, j in enumerate(joints):
        pose[i] = np.eye(4)
        pose[i, :3, :3] = world_rot[j]
        p = src_parents[i]
        pose[i, :3, 3] = (src_rest[i, :3, 3] if p < 0 else
                          pose[p, :3, 3] + world_rot[joints[p]] @ rest[joints[p], :3, :3].T @ (src_rest[i, :3, 3] - src_rest[p, :3, 3]))
    out = retarget.solve(plan, pose, fit=True)
    for i, j in enumerate(joints):
        if plan.kind[j] != "fit":
            np.testing.assert_allclose(out[j, :3, 3], pose[i, :3, 3], atol=1e-9)
    loc, quat, scale = retarget.pose_basis(rest, parents, out)
    unmapped = [j for j in range(template.num_joints) if plan.source_of[j] < 0]
    np.testing.assert_allclose(loc[unmapped], 0.0, atol=1e-9)
    np.testing.assert_allclose(np.abs(quat[unmapped, 0]), 1.0, atol=1e-9)
    np.testing.assert_allclose(scale[unmapped], 1.0, atol=1e-9)
    kept = retarget.solve(plan, pose, fit=False)
    np.testing.assert_allclose(np.cbrt(np.linalg.det(kept[:, :3, :3])), 1.0, atol=1e-9)
