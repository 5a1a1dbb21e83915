"""Bone maps for rigs the add-on has no table for: a BVH written here in the
Hips/Chest/Collar/Shoulder/Elbow/Wrist/Hip/Knee/Ankle naming with ZXY channels (matched by its names),
the same rig with meaningless names (matched by its shape), a map edited through the panel's
properties and operators, and maps that name bones that do not exist (refused, with the names)."""
from __future__ import annotations

import bpy
import numpy as np
import pytest

from .conftest import addon_module
from .test_binding import angle, heads, import_anny, import_bvh, update

# name, parent, offset (cm, BVH's Y up, the figure facing +Z), end site offset or None
SKELETON = [
    ("Hips", None, (0, 0, 0), None), ("Chest", "Hips", (0, 12, 0), None), ("Neck", "Chest", (0, 32, 0), None),
    ("Head", "Neck", (0, 10, 0), (0, 18, 0)),
    ("LeftCollar", "Chest", (3, 27, 0), None), ("LeftShoulder", "LeftCollar", (14, 1, 0), None),
    ("LeftElbow", "LeftShoulder", (28, 0, 0), None), ("LeftWrist", "LeftElbow", (24, 0, 0), (16, 0, 0)),
    ("RightCollar", "Chest", (-3, 27, 0), None), ("RightShoulder", "RightCollar", (-14, 1, 0), None),
    ("RightElbow", "RightShoulder", (-28, 0, 0), None), ("RightWrist", "RightElbow", (-24, 0, 0), (-16, 0, 0)),
    ("LeftHip", "Hips", (9, -5, 0), None), ("LeftKnee", "LeftHip", (0, -42, 1), None),
    ("LeftAnkle", "LeftKnee", (0, -41, -1), (0, -7, 13)),
    ("RightHip", "Hips", (-9, -5, 0), None), ("RightKnee", "RightHip", (0, -42, 1), None),
    ("RightAnkle", "RightKnee", (0, -41, -1), (0, -7, 13)),
]
# a known motion: per frame, {joint: (z, x, y) degrees}, the root's position (cm)
MOTION = [
    ({}, (0, 95, 0)),
    ({"LeftElbow": (0, 0, -90), "RightShoulder": (-60, 0, 0)}, (0, 95, 5)),
    ({"RightKnee": (0, 60, 0), "RightHip": (0, -45, 0), "LeftWrist": (30, 0, 0)}, (2, 92, 10)),
    ({"Hips": (0, 0, 90), "Chest": (20, 0, 0), "Neck": (0, 20, 10)}, (5, 95, 15)),
    ({"Hips": (0, 10, -30), "LeftShoulder": (0, 30, 40), "LeftKnee": (0, 50, 0), "Head": (10, -10, 30)},
     (10, 90, 20)),
]
CHECKED = {"LeftWrist": "wrist.L", "RightWrist": "wrist.R", "LeftAnkle": "foot.L", "RightAnkle": "foot.R",
           "LeftKnee": "lowerleg01.L", "RightKnee": "lowerleg01.R", "LeftElbow": "lowerarm01.L",
           "RightElbow": "lowerarm01.R", "Head": "head"}


def write_bvh(path) -> None:
    lines = ["HIERARCHY"]
    children = {n: [c for c, p, _, _ in SKELETON if p == n] for n, *_ in SKELETON}
    spec = {n: (o, e) for n, _, o, e in SKELETON}

    def joint(name: str, depth: int) -> None:
        pad = "  " * depth
        offset, end = spec[name]
        lines.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {name}")
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {offset[0]:.4f} {offset[1]:.4f} {offset[2]:.4f}")
        channels = "Zrotation Xrotation Yrotation"
        lines.append(f"{pad}  CHANNELS {'6 Xposition Yposition Zposition ' if depth == 0 else '3 '}{channels}")
        for c in children[name]:
            joint(c, depth + 1)
        if end is not None:
            lines.extend([f"{pad}  End Site", pad + "  {", f"{pad}    OFFSET {end[0]} {end[1]} {end[2]}", pad + "  }"])
        lines.append(pad + "}")

    joint("Hips", 0)
    order: list[str] = []

    def walk(name: str) -> None:
        order.append(name)
        for c in children[name]:
            walk(c)

    walk("Hips")
    lines += ["MOTION", f"Frames: {len(MOTION)}", "Frame Time: 0.0333333"]
    for rotations, root in MOTION:
        values = list(root)
        for name in order:
            values += list(rotations.get(name, (0, 0, 0)))
        lines.append(" ".join(f"{v:.4f}" for v in values))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def zxy_rig(scene, tmp_path):
    path = tmp_path / "zxy_walk.bvh"
    write_bvh(path)
    source = import_bvh(path, scale=0.01)
    avatar, mesh = import_anny(scene)
    bpy.context.view_layer.objects.active = source
    return source, avatar


def check_joints(scene, source, avatar, names: dict[str, str] | None = None) -> None:
    """Every checked joint within 3 cm of its source bone on every frame, hands within 10 degrees."""
    names = names or {n: n for n in CHECKED}
    for frame in range(1, len(MOTION) + 1):
        update(scene, frame)
        src, av = heads(source), heads(avatar)
        for bone, joint in CHECKED.items():
            error = np.linalg.norm(av[joint] - src[names[bone]])
            assert error < 0.03, f"frame {frame}: {joint} is {error * 100:.1f} cm off {names[bone]}"
        world = np.array(source.matrix_world)
        for side in "LR":
            wrist = source.pose.bones[names[f"{'Left' if side == 'L' else 'Right'}Wrist"]]
            hand = (world[:3, :3] @ np.array(wrist.tail)) - (world[:3, :3] @ np.array(wrist.head))
            err = angle(av[f"finger3-1.{side}"] - av[f"wrist.{side}"], hand)
            assert err < 10.0, f"frame {frame}: hand {side} points {err:.1f} degrees off"


def test_zxy_bvh_binds_from_the_operator_with_no_map(zxy_rig, scene):
    source, avatar = zxy_rig
    assert bpy.ops.genlca.bind_armature() == {"FINISHED"}
    mapping = addon_module("binding").bone_map(avatar)
    assert avatar.genlca.rig == "names" and avatar.genlca.source_armature == source
    assert mapping["LeftCollar"] == "clavicle.L" and mapping["LeftShoulder"] == "upperarm01.L"
    assert mapping["LeftHip"] == "upperleg01.L" and mapping["Hips"] == "root"
    assert (scene.frame_start, scene.frame_end) == (1, len(MOTION))
    check_joints(scene, source, avatar)


def test_unknown_names_are_matched_by_topology(zxy_rig, scene):
    source, avatar = zxy_rig
    binding = addon_module("binding")
    _, by_names = binding.propose_map(avatar, source)
    renamed = {}
    for i, bone in enumerate(list(source.data.bones)):
        renamed[bone.name] = f"bone_{i:02d}"
        bone.name = renamed[bone.name]
    how, proposal = binding.propose_map(avatar, source)
    assert how == "topology"
    expected = {renamed[s]: t for s, t in by_names.items()}
    for bone in ("LeftShoulder", "LeftElbow", "LeftWrist", "RightHip", "RightKnee", "RightAnkle", "Head", "Hips"):
        assert proposal.get(renamed[bone]) == expected[renamed[bone]], bone
    assert bpy.ops.genlca.bind_armature() == {"FINISHED"}
    check_joints(scene, source, avatar, renamed)


def test_hand_edited_map_through_the_panel_binds(zxy_rig, scene):
    source, avatar = zxy_rig
    binding = addon_module("binding")
    assert bpy.ops.genlca.propose_bone_map() == {"FINISHED"}
    ap = avatar.genlca
    assert ap.map_armature == source and len(ap.bone_map) >= 15
    # the user drives spine02 (not spine04) from the chest, unmaps the head and maps it again by hand
    next(i for i in ap.bone_map if i.source == "Chest").target = "spine02"
    ap.bone_map_index = next(k for k, i in enumerate(ap.bone_map) if i.source == "Head")
    assert bpy.ops.genlca.bone_map_edit(action="REMOVE") == {"FINISHED"}
    assert "Head" not in binding.bone_map(avatar)
    assert bpy.ops.genlca.bone_map_edit(action="ADD") == {"FINISHED"}
    row = ap.bone_map[ap.bone_map_index]
    row.source, row.target = "Head", "head"
    assert bpy.ops.genlca.bind_armature() == {"FINISHED"}
    mapping = binding.bone_map(avatar)
    assert mapping["Chest"] == "spine02" and mapping["Head"] == "head"
    update(scene, 4)  # the chest turns: spine02 takes it, spine04 (unmapped now) follows its parent
    spine04, spine02 = avatar.pose.bones["spine04"], avatar.pose.bones["spine02"]
    np.testing.assert_allclose(list(spine04.rotation_quaternion) + list(spine04.location), [1, 0, 0, 0, 0, 0, 0],
                               atol=1e-6)
    assert abs(spine02.rotation_quaternion[0]) < 0.999
    check_joints(scene, source, avatar)
    # clearing empties the map; a bind then proposes one again
    assert bpy.ops.genlca.bone_map_edit(action="CLEAR") == {"FINISHED"}
    assert len(ap.bone_map) == 0


def test_maps_naming_missing_bones_are_refused_with_the_names(zxy_rig, scene):
    source, avatar = zxy_rig
    binding = addon_module("binding")
    assert bpy.ops.genlca.propose_bone_map() == {"FINISHED"}
    next(i for i in avatar.genlca.bone_map if i.source == "LeftElbow").source = "LeftElbw"
    with pytest.raises(RuntimeError, match="'LeftElbw'"):
        bpy.ops.genlca.bind_armature()
    assert avatar.genlca.source_armature is None
    with pytest.raises(ValueError, match="no joint 'lowerarm1.L'"):
        binding.bind(avatar, source, {"Hips": "root", "LeftElbow": "lowerarm1.L"})
    with pytest.raises(ValueError, match="no bone 'Spine9'"):
        binding.bind(avatar, source, {"Spine9": "root"})
