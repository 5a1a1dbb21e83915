"""The exported .glb in three.js's GLTFLoader, in Debian's chromium headless (tests/gltf_three.py): one
skinned mesh with the avatar's joints and texture, and its animation plays (the left hand moves between the
rest pose and 0.5 s into the clip). Skipped, with the reason, without chromium or the npm packages."""
from __future__ import annotations

import numpy as np
import pytest

from backend.avatar.template import load_template
from backend.export import avatar_mesh, gltf
from tests import gltf_three
from tests.export_avatars import template_avatar


def test_three_gltf_loader_plays_the_avatar(tmp_path):
    reason = gltf_three.missing()
    if reason:
        pytest.skip(reason)
    template = load_template("anny")
    header, arrays = template_avatar(template, "dress", n=20_000)
    j = len(header["joint_names"])
    rng = np.random.default_rng(4)
    q = np.concatenate([np.ones((31, j, 1)), rng.normal(0, 0.3, (31, j, 3))], -1)
    poses = avatar_mesh.pose_matrices_from_wire(arrays["rest_matrices"], arrays["joint_parents"],
                                                q / np.linalg.norm(q, axis=-1, keepdims=True), np.zeros((31, 3)))
    path = gltf.write_glb(tmp_path / "dress.glb", avatar_mesh.avatar_mesh(template, arrays, header["joint_names"],
                                                                          pose_matrices=poses, fps=30.0))
    report = gltf_three.run(path, size=(160, 120))
    print(report)
    assert report["ok"], report.get("error")
    assert report["skinnedMeshes"] == 1 and report["bones"] == j and report["textures"] == 1
    assert report["animations"] == 1 and report["clipDuration"] == pytest.approx(1.0, abs=1e-6)
    assert 1.5 < report["height"] < 2.0  # metres, +Y up
    # at 0.5 s the clip's pose: the hand where the file's own keys put it, and not at rest
    moved = np.linalg.norm(np.subtract(report["posed"]["wrist"], report["rest"]["wrist"]))
    want = (avatar_mesh.Z_UP_TO_Y_UP @ poses[15])[header["joint_names"].index("wrist.L"), :3, 3]
    assert moved > 0.05 and np.allclose(report["posed"]["wrist"], want, atol=1e-3)
