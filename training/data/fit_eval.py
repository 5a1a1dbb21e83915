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
from backend.perception.fitting import (FIT_JOINTS, BodyFitter, FitResult, landmark_anchors, render_silhouette,
                                        silhouette_iou)
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


# ------------------------------------------------------------------ held-out frames, known body shape
LEG_JOINTS = ("lowerleg01.L", "lowerleg01.R", "foot.L", "foot.R")  # knees and ankles


@dataclasses.dataclass
class MocapTruth:
    clip: GroundTruthClip     # viewmat (F, 4, 4): a moving camera
    shape: np.ndarray         # (6,) macro values of the body in the masks
    motion: str               # where the motion came from
    view: str                 # "full" | "crop-legs"


def _truth_shape(rng: np.random.Generator) -> np.ndarray:
    """Macro values within the ranges the synthetic people use (`vocabulary.sample_shape`), moderate."""
    g = rng.uniform(0.0, 0.3) if rng.random() < 0.5 else rng.uniform(0.7, 1.0)
    return np.array([g, rng.uniform(0.5, 0.8), *rng.uniform(0.3, 0.7, 4)], np.float32)


def mocap_clip(template, seed: int, view: str = "crop-legs", n_frames: int = 8, width: int = 256,
               height: int = 256, motion_source: str = "bvh") -> MocapTruth:
    """The template with a known body shape in known motion, rendered by a moving camera (mesh silhouettes;
    keypoints: the fitter's 33 landmarks projected, confidence 0 outside the frame).

    motion_source "bvh": a window of CMU 01_01.bvh from `pose_prior.HELD_OUT_FROM` on (frames the fitter's
    pose prior never saw); "walk": the MPFB2 walk cycle (which the prior did see). view "crop-legs" frames
    the body from 8 cm below the pelvis up, as the synthetic generator's crop-legs clips: knees and ankles
    are never in the picture; "full" frames all of it."""
    from backend.avatar.skinning import forward_kinematics
    from backend.perception.fitting import landmark_anchors
    from backend.render.camera import intrinsics_from_fov, look_at
    from training.data import motion
    from training.data.pose_prior import HELD_OUT_FROM
    from training.data.synthetic import default_bvh_path

    if view not in ("full", "crop-legs"):
        raise ValueError(f"expected view 'full' or 'crop-legs', got {view!r}")
    rng = np.random.default_rng([seed, 22])
    if motion_source == "bvh":
        src = motion.BvhSource(default_bvh_path(), template)
        stride = int(rng.integers(6, 16))
        start = int(rng.integers(HELD_OUT_FROM, src.num_frames - stride * n_frames))
        mot = src.window(start, n_frames, stride)
    elif motion_source == "walk":
        walk = motion.WalkCycle(motion.walkcycle_path(), template)
        mot = walk.window(float(rng.uniform(0, walk.period)), n_frames, float(rng.uniform(1.0, 3.0)))
    else:
        raise ValueError(f"expected motion_source 'bvh' or 'walk', got {motion_source!r}")
    shape = _truth_shape(rng)
    skel = Skeleton.from_template(template)
    g = forward_kinematics(skel, torch.from_numpy(mot.joint_rotations), torch.from_numpy(mot.root_translation)).numpy()
    z = {n: g[:, template.joint_index(n), :3, 3] for n in ("head", "root", "foot.L", "foot.R")}
    top = z["head"][:, 2] + 0.22
    bottom = z["root"][:, 2] - 0.08 if view == "crop-legs" else np.minimum(z["foot.L"][:, 2], z["foot.R"][:, 2]) - 0.09
    rest = template.rest_matrices[0].astype(np.float64)
    fwd = (g[:, 0, :3, :3] @ rest[:3, :3].T) @ np.array([0.0, -1.0, 0.0])
    fov = rng.uniform(35.0, 50.0)
    start_deg, sweep = rng.uniform(-70, 70), rng.uniform(20, 80) * rng.choice([-1, 1])
    extent = float(np.median(top - bottom)) * rng.uniform(1.0, 1.15)
    dist = 0.5 * extent / math.tan(math.radians(fov) / 2)
    elev = rng.uniform(-0.15, 0.35)
    kmat = intrinsics_from_fov(fov, width, height).astype(np.float32)
    viewmats = []
    for i in range(n_frames):
        a = math.radians(start_deg + sweep * i / max(n_frames - 1, 1))
        f2 = fwd[i, :2] / max(np.linalg.norm(fwd[i, :2]), 1e-6)
        d = np.array([f2[0] * math.cos(a) - f2[1] * math.sin(a), f2[0] * math.sin(a) + f2[1] * math.cos(a)])
        target = np.array([*(0.5 * (z["head"][i, :2] + z["root"][i, :2])), 0.5 * (top[i] + bottom[i])])
        viewmats.append(look_at(target + np.array([d[0] * dist, d[1] * dist, elev * dist * 0.5]), target))
    viewmats = np.stack(viewmats).astype(np.float32)
    bones, points, _ = landmark_anchors(template)
    a = skinning_matrices(skel, torch.from_numpy(mot.joint_rotations),
                          torch.from_numpy(mot.root_translation)).numpy().astype(np.float64)[:, bones]
    world = np.einsum("fnij,nj->fni", a[..., :3, :3], points) + a[..., :3, 3]
    pc = np.einsum("fij,fnj->fni", viewmats[:, :3, :3].astype(np.float64), world) + viewmats[:, None, :3, 3]
    uv = pc[..., :2] / np.maximum(pc[..., 2:3], 1e-6) * kmat[[0, 1], [0, 1]] + kmat[:2, 2]
    conf = (pc[..., 2] > 0.01) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    kp = np.concatenate([uv, conf[..., None]], -1).astype(np.float32)
    masks = np.stack([render_silhouette(template, mot.joint_rotations[f], mot.root_translation[f], viewmats[f], kmat,
                                        width, height, shape=shape) for f in range(n_frames)]).astype(np.uint8) * 255
    clip = GroundTruthClip(mot.joint_rotations, mot.root_translation, viewmats, kmat, kp, masks, width, height)
    return MocapTruth(clip, shape, mot.source, view)


def _subset(truth: GroundTruthClip, frames) -> GroundTruthClip:
    vm = truth.viewmat if np.asarray(truth.viewmat).ndim == 2 else truth.viewmat[frames]
    return dataclasses.replace(truth, joint_rotations=truth.joint_rotations[frames],
                               root_translation=truth.root_translation[frames], viewmat=vm,
                               keypoints=truth.keypoints[frames], masks=truth.masks[frames])


def joint_error_cm(template, truth: GroundTruthClip, fit: FitResult, names) -> float:
    """Pelvis-aligned mean joint error (cm, camera coordinates) over `names`."""
    skel = Skeleton.from_template(template)
    gt = camera_joints(skel, truth.joint_rotations, truth.root_translation, truth.viewmat, ("root",) + tuple(names))
    est = camera_joints(skel, fit.joint_rotations, fit.root_translation, fit.viewmat, ("root",) + tuple(names))
    return float(np.linalg.norm((gt[:, 1:] - gt[:, :1]) - (est[:, 1:] - est[:, :1]), axis=-1).mean() * 100)


def split_every(n_frames: int, every: int = 2) -> tuple[list[int], list[int]]:
    """Every `every`-th frame (from 0) as input, the frames in between held out."""
    if n_frames < 2:
        raise ValueError(f"a clip of {n_frames} frame(s) has nothing to hold out")
    idx_in = list(range(0, n_frames, every))
    return idx_in, [i for i in range(n_frames) if i not in idx_in]


@dataclasses.dataclass
class HeldOutFit:
    inputs: list[int]
    held_out: list[int]
    fit_inputs: FitResult       # pose of the input frames and the clip's body shape
    fit_held_out: FitResult     # pose of the held-out frames (their keypoints, the shape above)
    iou_inputs: list[float]
    iou_held_out: list[float]


def heldout_fit(template, fitter: BodyFitter, keypoints: np.ndarray, masks: np.ndarray, image_size: tuple[int, int],
                intrinsics: np.ndarray | None = None, every: int = 2) -> HeldOutFit:
    """Fit on every `every`-th frame (keypoints and silhouettes: pose and body shape), then the frames in
    between from their keypoints alone, the body shape held at the input fit's: their silhouettes are never
    seen by the fit. IoU of the fitted body's silhouette (mesh, with its shape) against each frame's mask."""
    idx_in, idx_out = split_every(len(keypoints), every)
    masks = np.asarray(masks)
    fit_in = fitter.fit(keypoints[idx_in], image_size, masks=masks[idx_in], intrinsics=intrinsics)
    fit_out = fitter.fit(keypoints[idx_out], image_size, masks=None, intrinsics=intrinsics, shape=fit_in.shape)
    w, h = image_size

    def iou(fit: FitResult, idx: list[int]) -> list[float]:
        thr = 128 if masks.dtype == np.uint8 else 0.5
        return [silhouette_iou(render_silhouette(template, fit.joint_rotations[k], fit.root_translation[k], fit.viewmat,
                                                 fit.intrinsics, w, h, shape=fit_in.shape), masks[f] >= thr)
                for k, f in enumerate(idx)]

    return HeldOutFit(idx_in, idx_out, fit_in, fit_out, iou(fit_in, idx_in), iou(fit_out, idx_out))


def heldout_scores(template, fitter: BodyFitter, truth: GroundTruthClip, true_shape: np.ndarray | None = None,
                   every: int = 2) -> dict[str, float]:
    """`heldout_fit` on a clip whose truth is known. Scores: silhouette IoU (input and held-out frames), MPJPE
    over SCORED_JOINTS and over the knees and ankles (LEG_JOINTS) on held-out and input frames, and with a
    known body the mean distance of the fitted body's vertices from the true body's (cm, rest pose)."""
    from backend.avatar.body_shape import DEFAULT_SHAPE, vertex_displacement

    h = heldout_fit(template, fitter, truth.keypoints, truth.masks, (truth.width, truth.height), truth.intrinsics,
                    every)
    t_in, t_out = _subset(truth, h.inputs), _subset(truth, h.held_out)
    out = {"iou_input": round(float(np.mean(h.iou_inputs)), 3), "iou_heldout": round(float(np.mean(h.iou_held_out)), 3),
           "mpjpe_heldout_cm": round(joint_error_cm(template, t_out, h.fit_held_out, SCORED_JOINTS), 2),
           "legs_heldout_cm": round(joint_error_cm(template, t_out, h.fit_held_out, LEG_JOINTS), 2),
           "mpjpe_input_cm": round(joint_error_cm(template, t_in, h.fit_inputs, SCORED_JOINTS), 2),
           "legs_input_cm": round(joint_error_cm(template, t_in, h.fit_inputs, LEG_JOINTS), 2)}
    if true_shape is not None:
        fitted = DEFAULT_SHAPE if h.fit_inputs.shape is None else h.fit_inputs.shape
        err = vertex_displacement(template, fitted) - vertex_displacement(template, true_shape)
        out["shape_vertex_cm"] = round(float(np.linalg.norm(err, axis=-1).mean() * 100), 2)
        out["fitted_shape"] = [round(float(v), 2) for v in fitted]
    return out
