"""Fitting measured where the truth is known: a posed template, its keypoints and silhouettes rendered with a
known camera, fitted back, scored by MPJPE (cm) and 2D reprojection error (px).

`ground_truth_clip` poses the anny template with a known smooth motion of the fitted joints (the same reduced
set the fitter moves) and a known global turn, and renders the 33 landmarks (through the fitter's own
landmark map, `fitting.landmark_anchors`) and the silhouette (`fitting.render_silhouette`) with a known
camera. MediaPipe is not in this loop (it may not detect a flat-shaded render), so this measures the fitter,
not the keypoint detector. When the synthetic-people generator (`training/data/synthetic.py`) exists, the
same scores apply to its clips (their poses are full template poses, so the fit error there also counts the
joints the fitter keeps at rest).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from backend.avatar.skinning import Skeleton, skinning_matrices
from backend.perception.fitting import BodyFitter, FIT_JOINTS, FitResult, landmark_anchors, render_silhouette
from backend.render.camera import intrinsics_from_fov, look_at

# joints scored by MPJPE: what the fit moves and what hangs off it
SCORED_JOINTS = ("spine02", "neck01", "head", "upperarm01.L", "upperarm01.R", "lowerarm01.L", "lowerarm01.R",
                 "wrist.L", "wrist.R", "upperleg01.L", "upperleg01.R", "lowerleg01.L", "lowerleg01.R",
                 "foot.L", "foot.R")


@dataclasses.dataclass
class GroundTruthClip:
    joint_rotations: np.ndarray   # (F, J, 4)
    root_translation: np.ndarray  # (F, 3)
    viewmat: np.ndarray           # (4, 4), or (F, 4, 4) for a moving camera
    intrinsics: np.ndarray        # (3, 3)
    keypoints: np.ndarray         # (F, 33, 3)
    masks: np.ndarray             # (F, H, W) uint8 0/255
    width: int
    height: int


def ground_truth_clip(template, n_frames: int = 4, seed: int = 0, width: int = 384, height: int = 512,
                      yaw_deg: float = 25.0) -> GroundTruthClip:
    """A known pose sequence: random bends within everyday ranges, varying smoothly over the frames."""
    rng = np.random.default_rng(seed)
    fitter = BodyFitter(template)
    k = len(FIT_JOINTS)
    start = rng.normal(0.0, 0.25, (k, 3))
    end = start + rng.normal(0.0, 0.15, (k, 3))
    start[:, 1] *= 0.2  # little twist: it is unobservable from keypoints, so the fit leaves it at 0
    end[:, 1] *= 0.2
    # hinges bend one way only, around their own axis
    axes = fitter.hinge_axes.numpy()
    for i in np.nonzero(np.abs(axes).sum(1))[0]:
        start[i] = axes[i] * rng.uniform(0.2, 1.0)
        end[i] = axes[i] * rng.uniform(0.2, 1.0)
    s = np.linspace(0.0, 1.0, n_frames)[:, None, None]
    pose = torch.from_numpy((1 - s) * start + s * end).float()  # (F, K, 3)
    orient = torch.zeros(n_frames, 3)
    orient[:, 2] = torch.from_numpy(np.linspace(math.radians(yaw_deg), math.radians(yaw_deg) + 0.2, n_frames)).float()
    trans = torch.zeros(n_frames, 3)
    trans[:, 0] = torch.linspace(0.0, 0.15, n_frames)
    with torch.no_grad():
        quats = fitter._quats(orient, pose)
    viewmat = look_at((0.8, -3.6, 1.3), (0.0, 0.0, 0.95)).astype(np.float32)
    kmat = intrinsics_from_fov(45.0, width, height).astype(np.float32)
    with torch.no_grad():
        lms, _ = fitter._posed(orient, pose, trans)
        uv, _ = fitter._project(lms, torch.from_numpy(viewmat), torch.from_numpy(kmat))
    kp = np.concatenate([uv.numpy(), np.ones((n_frames, 33, 1), np.float32)], -1)
    masks = np.stack([render_silhouette(template, quats[f].numpy(), trans[f].numpy(), viewmat, kmat, width, height)
                      for f in range(n_frames)]).astype(np.uint8) * 255
    return GroundTruthClip(quats.numpy(), trans.numpy(), viewmat, kmat, kp.astype(np.float32), masks, width, height)


def camera_joints(skeleton: Skeleton, joint_rotations, root_translation, viewmat, names) -> np.ndarray:
    """(F, len(names), 3) joint heads in camera coordinates, metres; viewmat (4, 4) or per frame (F, 4, 4)."""
    a = skinning_matrices(skeleton, torch.as_tensor(joint_rotations), torch.as_tensor(root_translation)).double()
    heads = skeleton.rest_matrices[:, :3, 3].double()
    world = (a[..., :3, :3] @ heads[:, :, None]).squeeze(-1) + a[..., :3, 3]  # (F, J, 3)
    vm = torch.as_tensor(np.asarray(viewmat, np.float64)).expand(world.shape[0], 4, 4)
    cam = world @ vm[:, :3, :3].transpose(1, 2) + vm[:, None, :3, 3]
    return cam[:, [skeleton.index(n) for n in names]].numpy()


def truth_from_record(template, record) -> GroundTruthClip:
    """A synthetic clip record (exact pose, cameras, masks) as fitting truth: its 33 landmarks projected with
    its own cameras (confidence 0 outside the frame or behind the camera; no self-occlusion test)."""
    bones, points, _ = landmark_anchors(template)
    a = skinning_matrices(Skeleton.from_template(template), torch.from_numpy(record.joint_rotations),
                          torch.from_numpy(record.root_translation)).numpy().astype(np.float64)[:, bones]
    world = np.einsum("fnij,nj->fni", a[..., :3, :3], points) + a[..., :3, 3]
    vm, k = record.viewmats.astype(np.float64), record.intrinsics.astype(np.float64)
    pc = np.einsum("fij,fnj->fni", vm[:, :3, :3], world) + vm[:, None, :3, 3]
    z = pc[..., 2:3]
    uv = pc[..., :2] / np.maximum(z, 1e-6) * np.stack([k[:, 0, 0], k[:, 1, 1]], -1)[:, None] + k[:, None, :2, 2]
    w, h = record.image_size
    conf = ((z[..., 0] > 0.01) & (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h))
    kp = np.concatenate([uv, conf[..., None].astype(np.float64)], -1).astype(np.float32)
    return GroundTruthClip(record.joint_rotations, record.root_translation, record.viewmats, record.intrinsics[0],
                           kp, record.masks, w, h)


def score_fit(template, truth: GroundTruthClip, fit: FitResult) -> dict[str, float]:
    """MPJPE (cm; camera coordinates, pelvis-aligned) over SCORED_JOINTS and the mean reprojection error (px)."""
    skel = Skeleton.from_template(template)
    names = ("root",) + SCORED_JOINTS
    gt = camera_joints(skel, truth.joint_rotations, truth.root_translation, truth.viewmat, names)
    est = camera_joints(skel, fit.joint_rotations, fit.root_translation, fit.viewmat, names)
    gt_rel, est_rel = gt[:, 1:] - gt[:, :1], est[:, 1:] - est[:, :1]
    mpjpe = float(np.linalg.norm(gt_rel - est_rel, axis=-1).mean() * 100)
    abs_err = float(np.linalg.norm(gt - est, axis=-1).mean() * 100)
    return {"mpjpe_cm": round(mpjpe, 2), "absolute_joint_error_cm": round(abs_err, 2),
            "reprojection_px": round(float(np.nanmean(fit.reprojection_px)), 2)}
