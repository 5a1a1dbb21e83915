"""Renders of an avatar fitted to another armature's proportions: the optional render arrays
joint_locations and joint_scales (bridge.wire.protocol.RENDER_POSE_ARRAYS, Blender's pose-bone location and
uniform scale), through a real server on 127.0.0.1: forward kinematics puts the joints where the fitted
skeleton has them, a render with the arrays differs from one without and equals the CPU render of the
Gaussians posed with them; bad arrays are refused with named errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.avatar.gaussians import Gaussians
from backend.avatar.skinning import Skeleton, forward_kinematics, pose
from backend.service.handlers import default_handlers
from backend.service.config import ServiceConfig
from backend.render import RenderOptions, render
from backend.render.camera import Camera
from backend.service.server import BackendServer
from bridge.wire import protocol
from bridge.wire.client import BridgeClient, BridgeError
from bridge.rig.retarget import pose_basis

CONFIG = ServiceConfig(device="cpu")  # the model: $GENLCA_MODEL, a tiny random package (tests/conftest.py)
SIZE = 48


@pytest.fixture(scope="module")
def served():
    server = BackendServer("tcp://127.0.0.1:*", default_handlers(config=CONFIG), admission=CONFIG.check_request)
    server.serve_in_thread()
    client = BridgeClient(server.address, timeout_s=600)  # only stops a hung test (the machine may be loaded)
    avatar_id = client.call(protocol.Generate(prompt="fitted", seed=3, steps=2), timeout_s=600).header["avatar_id"]
    avatar = client.call(protocol.GetAvatar(avatar_id=avatar_id))
    yield client, avatar_id, avatar
    client.close()
    server.stop()


def fitted_pose(rest: np.ndarray, parents: np.ndarray, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A fitted skeleton's pose: target armature-space matrices (J, 4, 4) (joints moved from the rest by up
    to ~4 cm plus a 10% taller body, a turn and a uniform scale of 0.85-1.2 per bone) and the pose channels
    that reach it (bridge.rig.retarget.pose_basis, as the add-on computes them) for one frame."""
    rng = np.random.default_rng(seed)
    j = len(rest)
    target = np.tile(np.eye(4), (j, 1, 1))
    heads = rest[:, :3, 3] * np.array([1.0, 1.0, 1.1]) + rng.normal(0, 0.02, (j, 3))
    angles = rng.normal(0, 0.15, (j, 3))
    for i in range(j):
        cx, cy, cz = np.cos(angles[i])
        sx, sy, sz = np.sin(angles[i])
        turn = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
        target[i, :3, :3] = rng.uniform(0.85, 1.2) * turn @ rest[i, :3, :3]
    target[:, :3, 3] = heads
    location, rotation, scale = pose_basis(rest, parents, target)
    root = parents < 0
    translation = target[root, :3, 3][0] - rest[root, :3, 3][0]
    location[root] = 0.0  # the root moves by root_translations
    channels = {"joint_rotations": rotation[None].astype(np.float32),
                "root_translations": translation[None].astype(np.float32),
                "joint_locations": location[None].astype(np.float32), "joint_scales": scale[None].astype(np.float32)}
    return target, channels


def cameras() -> dict[str, np.ndarray]:
    w2c = np.array([[1, 0, 0, 0], [0, 0, -1, 1.0], [0, 1, 0, 3.2], [0, 0, 0, 1]], np.float32)  # in front, level
    k = np.array([[SIZE * 1.1, 0, SIZE / 2], [0, SIZE * 1.1, SIZE / 2], [0, 0, 1]], np.float32)
    return {"world_to_camera": w2c[None], "intrinsics": k[None]}


def skeleton_and_gaussians(avatar) -> tuple[Skeleton, Gaussians]:
    a = {k: torch.from_numpy(np.array(v)) for k, v in avatar.arrays.items()}
    skeleton = Skeleton(list(avatar.header["joint_names"]), a["joint_parents"].long(), a["rest_matrices"])
    gaussians = Gaussians(means=a["means"], rotations=a["rotations"], log_scales=a["log_scales"],
                          opacity_logits=a["opacity_logits"], sh=a["sh"], skin_indices=a["skin_indices"].long(),
                          skin_weights=a["skin_weights"])
    return skeleton, gaussians


def rendered(client, avatar_id: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    frames = []
    reply = client.call(protocol.Render(avatar_id=avatar_id, width=SIZE, height=SIZE), arrays, timeout_s=600,
                        on_progress=lambda r: frames.append(r.arrays["rgba"]))
    assert reply.header["frames"] == 1 and len(frames) == 1
    return frames[0].astype(np.int16)


def test_fitted_channels_put_the_joints_on_the_fitted_skeleton(served):
    _, _, avatar = served
    rest = avatar.arrays["rest_matrices"].astype(np.float64)
    parents = avatar.arrays["joint_parents"].astype(np.int64)
    target, channels = fitted_pose(rest, parents)
    skeleton, _ = skeleton_and_gaussians(avatar)
    g = forward_kinematics(skeleton, torch.from_numpy(channels["joint_rotations"][0]),
                           torch.from_numpy(channels["root_translations"][0]),
                           joint_locations=torch.from_numpy(channels["joint_locations"][0]),
                           joint_scales=torch.from_numpy(channels["joint_scales"][0])).double().numpy()
    # float32 channels and frames on chains of ~20 bones: far below a millimetre
    np.testing.assert_allclose(g[:, :3, 3], target[:, :3, 3], atol=1e-4)
    np.testing.assert_allclose(g[:, :3, :3], target[:, :3, :3], atol=1e-4)
    plain = forward_kinematics(skeleton, torch.from_numpy(channels["joint_rotations"][0]),
                               torch.from_numpy(channels["root_translations"][0])).double().numpy()
    assert np.linalg.norm(plain[:, :3, 3] - target[:, :3, 3], axis=1).max() > 0.05  # rotations alone miss it


def test_a_fitted_render_differs_and_matches_the_posed_gaussians(served):
    client, avatar_id, avatar = served
    rest = avatar.arrays["rest_matrices"].astype(np.float64)
    parents = avatar.arrays["joint_parents"].astype(np.int64)
    _, channels = fitted_pose(rest, parents, seed=1)
    fitted = rendered(client, avatar_id, {**channels, **cameras()})
    plain = rendered(client, avatar_id, {**{k: channels[k] for k in ("joint_rotations", "root_translations")},
                                         **cameras()})
    assert fitted[..., 3].max() > 0  # the avatar is in view
    changed = np.abs(fitted - plain).max(-1) > 8
    assert changed.mean() > 0.02, f"only {changed.mean():.3%} of the pixels changed"
    # the same Gaussians posed here with the same channels and rendered by the same CPU renderer
    skeleton, gaussians = skeleton_and_gaussians(avatar)
    posed = pose(gaussians, skeleton, torch.from_numpy(channels["joint_rotations"][0]),
                 torch.from_numpy(channels["root_translations"][0]),
                 joint_locations=torch.from_numpy(channels["joint_locations"][0]),
                 joint_scales=torch.from_numpy(channels["joint_scales"][0]))
    cams = cameras()
    camera = Camera(world_to_camera=torch.from_numpy(cams["world_to_camera"][0]),
                    intrinsics=torch.from_numpy(cams["intrinsics"][0]), width=SIZE, height=SIZE)
    with torch.no_grad():
        out = render(posed, camera, options=RenderOptions())
    want = (torch.cat([out.rgb[0], out.alpha[0]], -1).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    assert np.abs(fitted - want.astype(np.int16)).max() <= 1  # one rounding step of uint8
    # and the posed centres sit on the fitted skeleton: each Gaussian moved with its bones
    moved = np.linalg.norm(posed.means.numpy() - gaussians.means.numpy(), axis=1)
    assert moved.max() > 0.05


@pytest.mark.parametrize("change, code, words", [
    (lambda a: a.pop("joint_scales"), None, None),  # either array alone is fine
    (lambda a: a.update(joint_scales=np.zeros_like(a["joint_scales"])), protocol.E_INVALID, "joint_scales[0, 0]"),
    (lambda a: a["joint_locations"].__setitem__((0, 3, 1), np.nan), protocol.E_BAD_ARRAY, "joint_locations"),
    (lambda a: a.update(joint_scales=a["joint_scales"][:, :-1].copy()), protocol.E_BAD_ARRAY, "joint_scales"),
    (lambda a: a.update(joint_locations=a["joint_locations"].astype(np.float64)), protocol.E_BAD_ARRAY,
     "joint_locations"),
])
def test_bad_fitted_arrays_are_refused_with_named_errors(served, change, code, words):
    client, avatar_id, avatar = served
    rest = avatar.arrays["rest_matrices"].astype(np.float64)
    _, channels = fitted_pose(rest, avatar.arrays["joint_parents"].astype(np.int64), seed=2)
    arrays = {**channels, **cameras()}
    change(arrays)
    if code is None:
        assert rendered(client, avatar_id, arrays)[..., 3].max() > 0
        return
    with pytest.raises(BridgeError) as e:
        client.call(protocol.Render(avatar_id=avatar_id, width=SIZE, height=SIZE), arrays, timeout_s=600)
    assert e.value.code == code and words in e.value.message, (e.value.code, e.value.message)
