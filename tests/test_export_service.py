"""The backend's `export` op with format "glb": a generated avatar through a real server on loopback (the
`client` and `avatar` fixtures of tests/conftest.py: the session's tiny random model), read back as glTF: its
skeleton is the avatar's, the motion sent with the request becomes its animation, and bad motions get
structured errors."""
from __future__ import annotations

import numpy as np
import pytest

from backend.export import avatar_mesh, gltf
from bridge.wire import protocol
from bridge.wire.client import BridgeError


def _error(client, request, arrays=None) -> BridgeError:
    with pytest.raises(BridgeError) as info:
        client.call(request, arrays, timeout_s=30.0)
    return info.value


def test_export_glb_with_motion(client, avatar):
    avatar_id, got = avatar
    j = len(got.header["joint_names"])
    rng = np.random.default_rng(0)
    q = np.concatenate([np.ones((3, j, 1)), rng.normal(0, 0.2, (3, j, 3))], -1)
    motion = {"joint_rotations": (q / np.linalg.norm(q, axis=-1, keepdims=True)).astype(np.float32),
              "root_translations": rng.normal(0, 0.1, (3, 3)).astype(np.float32)}
    reply = client.call(protocol.Export(avatar_id=avatar_id, format="glb", fps=30.0), motion, timeout_s=300.0)
    assert reply.header["filename"] == f"genlca-{avatar_id}.glb"
    doc, blob = gltf.read_glb(reply.arrays["file"].tobytes())
    skin = doc["skins"][0]
    assert len(skin["joints"]) == j and doc["asset"]["extras"]["genlca_joint_names"] == got.header["joint_names"]
    names = [doc["nodes"][i]["name"] for i in skin["joints"]]
    assert names[0] == "Hips"
    # the last frame's root joint where the backend's forward kinematics of the motion puts it (Y-up)
    poses = avatar_mesh.pose_matrices_from_wire(got.arrays["rest_matrices"], got.arrays["joint_parents"], **motion)
    anim = doc["animations"][0]
    times = gltf.accessor_array(doc, blob, anim["samplers"][0]["input"])[:, 0]
    np.testing.assert_allclose(times, [0.0, 1 / 30, 2 / 30], atol=1e-6)
    root_t = next(anim["samplers"][c["sampler"]]["output"] for c in anim["channels"]
                  if c["target"] == {"node": 0, "path": "translation"})
    want = (avatar_mesh.Z_UP_TO_Y_UP @ poses[:, 0])[:, :3, 3]
    np.testing.assert_allclose(gltf.accessor_array(doc, blob, root_t), want, atol=1e-5)
    # no motion: a rest-pose mesh without animations
    still = client.call(protocol.Export(avatar_id=avatar_id, format="glb"), timeout_s=300.0)
    assert "animations" not in gltf.read_glb(still.arrays["file"].tobytes())[0]


@pytest.mark.parametrize("arrays, fmt, message", [
    ({"joint_rotations": np.ones((2, 104, 4), np.float32)}, "glb", "missing ['root_translations']"),
    ({"joint_rotations": np.ones((2, 5, 4), np.float32), "root_translations": np.zeros((2, 3), np.float32)},
     "glb", "expected joint_rotations of shape"),
    ({"joint_rotations": np.ones((1, 104, 4), np.float32), "root_translations": np.zeros((1, 3), np.float32)},
     "ply", "takes no arrays"),
])
def test_bad_export_motions_are_refused_by_name(client, avatar, arrays, fmt, message):
    avatar_id, _ = avatar
    err = _error(client, protocol.Export(avatar_id=avatar_id, format=fmt), arrays)
    assert message in str(err)
