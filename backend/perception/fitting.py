"""Fit the body template to a person seen in 2D: keypoints and a silhouette per frame -> pose and camera.

What is fitted (per frame, all frames of a clip in one batch):
    global orientation  (3,)   axis-angle in world space, applied about the template's root joint
    root translation    (3,)   metres, world space
    body pose           (K, 3) axis-angle, local to each bone's rest frame, for the K joints in `FIT_JOINTS`
                               (wrists and feet included: the hand and foot orientation); every other joint
                               (fingers, toes, twist bones, eyes) stays at rest
and per clip, with `FitConfig.fit_shape`:
    body shape          (6,)   the template's MakeHuman macro values (`training/data/body_shape.py`: gender,
                               age, muscle, weight, height, proportions), moving the mesh, not the skeleton
                               (as the synthetic people are made), with a Gaussian prior about the default
The camera is one fixed pinhole per clip: intrinsics from a focal guess (`FitConfig.fov_deg`, or given),
placed in front of the body (on -Y, looking +Y, Z up: the template faces -Y, so frame 0 starts as a front
view). A moving camera is absorbed by the body's global orientation and translation; that is exact for a
single rigid view per frame, which is all a clip record needs (one world-to-camera per frame). With
`FitConfig.fit_focal` (off by default) and no intrinsics given, stage 2 also fits the focal length, with
the guess as a log-normal prior (`focal_sigma`).

Losses (all lengths in metres at the body: pixel residuals are divided by the pixels per metre at the
estimated depth, so weights do not depend on the image size):
    keypoints    confidence-weighted Huber on the reprojection of the 33 MediaPipe landmarks, each mapped
                 to a point that rides rigidly on one template bone (`landmark_anchors`, the map below)
    silhouette   (a) projected template vertices that fall outside the person mask pay the mask's outside
                 distance transform, truncated at 5 cm (occluded limbs follow their keypoints); (b) mask pixels pay their distance to the nearest projected vertex
                 (a one-sided chamfer, so the body fills the mask). Vertices outside the image pay nothing:
                 a head-and-shoulders photo says nothing about the legs.
    pose prior   small rotations, little twist about the bone axis, elbows and knees as one-way hinges, and
                 (`FitConfig.pose_prior`) a Gaussian over all K joints learnt from motion capture
                 (`pose_prior.py`): a joint the frame does not show goes to its mean given the joints it
                 does show (legs cut off by the frame follow the arms and the torso, not the rest pose)
    shape prior  (u / shape_sigma)^2 per macro value, u its distance from the default
    temporal     squared differences of all parameters between neighbouring frames (videos only)
Optimisation: Adam in two stages. Stage 1 fits only orientation and translation to the torso and face
landmarks from four starting yaws (0, 90, 180, 270 degrees) per frame and keeps the best; stage 2 fits
everything from there.

The landmark map (MediaPipe pose-33 name -> template anchor; left/right are the person's own, and the
template's ".L" side is the body's left, at +X):
    nose, mouth_left/right, left/right_ear   surface vertices of the head nearest to a guess built from the
                                             eye joints (tip of the nose; mouth corners; outer ears), bone head
    left/right_eye(_inner/_outer)            eye.L / eye.R joint heads (inner/outer 1.5 cm to either side)
    left/right_shoulder                      upperarm01.L/R head
    left/right_elbow                         lowerarm01.L/R head
    left/right_wrist                         wrist.L/R head
    left/right_pinky, _index, _thumb         finger5-1, finger2-1, finger1-2 heads (hands are not fitted:
                                             these only steady the forearm; low weight)
    left/right_hip                           upperleg01.L/R head
    left/right_knee                          lowerleg01.L/R head
    left/right_ankle                         foot.L/R head
    left/right_heel                          surface vertex behind the foot joint, bone foot
    left/right_foot_index                    toe2-1.L/R head
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from backend.avatar.skinning import Skeleton, pose_vertices, skinning_matrices
from backend.render.camera import look_at
from bridge.geometry.rotations import matrix_to_quat, quat_multiply, quat_to_matrix

MEDIAPIPE_POSE_33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
KEYPOINT_FORMAT = "mediapipe-pose-33"

# The reduced set of joints that the fit moves (the rest of the 104 stay at rest). spine05 and the pelvis
# bones are in because motion retargeted from mocap (CMU hips) moves the hip joints through them.
FIT_JOINTS = ("spine05", "spine04", "spine02", "neck01", "head", "pelvis.L", "pelvis.R",
              "upperarm01.L", "upperarm01.R", "lowerarm01.L", "lowerarm01.R",
              "upperleg01.L", "upperleg01.R", "lowerleg01.L", "lowerleg01.R",
              "wrist.L", "wrist.R", "foot.L", "foot.R")
# hands and feet: seen only through 3 landmarks each (pinky/index/thumb; heel/foot index), so held closer to rest
EXTREMITIES = ("wrist.L", "wrist.R", "foot.L", "foot.R")
HINGES = {  # joint -> (child whose head the bend moves, direction it moves at the start of a bend, world)
    "lowerarm01.L": ("wrist.L", (0.0, -1.0, 0.0)), "lowerarm01.R": ("wrist.R", (0.0, -1.0, 0.0)),
    "lowerleg01.L": ("foot.L", (0.0, 1.0, 0.0)), "lowerleg01.R": ("foot.R", (0.0, 1.0, 0.0)),
}
# landmarks that fix the global orientation in stage 1 (rigid torso and head)
_TORSO = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_hip", "right_hip")


@dataclasses.dataclass
class FitConfig:
    fov_deg: float = 55.0            # horizontal field of view guessed when no intrinsics are given
    iters_global: int = 60
    iters_pose: int = 400
    lr: float = 0.05
    huber_m: float = 0.05            # keypoint Huber threshold, metres at the body
    min_confidence: float = 0.3      # keypoints below this confidence are ignored
    w_keypoints: float = 1.0
    w_silhouette: float = 0.3
    w_pose: float = 0.002            # w_pose, w_twist: only without the motion-capture prior (it replaces them)
    w_twist: float = 0.05
    w_hinge: float = 1.0
    w_temporal: float = 0.5
    silhouette_cap_m: float = 0.05   # outside-the-mask distance stops growing here (occluders, loose masks)
    vertex_samples: int = 700        # template vertices projected for the silhouette terms
    mask_samples: int = 256          # mask pixels per frame for the coverage term
    seed: int = 0
    fit_focal: bool = False          # fit the focal length too (only when no intrinsics are given)
    w_focal: float = 0.01            # its prior: log(focal / guess) ~ N(0, focal_sigma)
    focal_sigma: float = 0.3
    fit_shape: bool = True           # fit the body shape (per clip) as well
    w_shape: float = 0.002           # its prior: sum (u / shape_sigma)^2, u = macro value - 0.5
    shape_sigma: float = 0.15
    w_extremity: float = 0.02        # extra |pose|^2 on wrists and feet (3 weak landmarks each); no prior only
    pose_prior: bool = True          # the motion-capture Gaussian over FIT_JOINTS (pose_prior.py), if shipped
    w_prior: float = 0.03            # its weight: w_prior * Mahalanobis^2 / (3 K)


@dataclasses.dataclass
class FitResult:
    """All arrays numpy float32; F frames, J template joints."""

    joint_rotations: np.ndarray      # (F, J, 4) wxyz, local, relative to the rest pose
    root_translation: np.ndarray     # (F, 3) metres
    viewmat: np.ndarray              # (4, 4) world-to-camera (OpenCV), the same for every frame
    intrinsics: np.ndarray           # (3, 3) pixels
    projected_keypoints: np.ndarray  # (F, 33, 2) where the fitted landmarks land, pixels
    reprojection_px: np.ndarray      # (F,) mean keypoint error over landmarks above min_confidence, pixels
    loss: float
    shape: np.ndarray | None = None  # (6,) macro values (body_shape.SHAPE_NAMES) of the clip; None: the default


# ------------------------------------------------------------------ the landmark map
def landmark_anchors(template) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The map of the module docstring: bone index (33,), rest point (33, 3) and weight (33,)."""
    heads = np.asarray(template.joint_heads, np.float64)
    verts = np.asarray(template.vertices, np.float64)
    j = template.joint_index

    def nearest(guess) -> np.ndarray:
        return verts[np.argmin(((verts - np.asarray(guess)) ** 2).sum(1))]

    bones = np.zeros(33, np.int64)
    points = np.zeros((33, 3))
    weights = np.ones(33)
    eye_l, eye_r = heads[j("eye.L")], heads[j("eye.R")]
    eye_z, eye_y = eye_l[2], eye_l[1]
    for side, s, sgn in (("left", "L", 1.0), ("right", "R", -1.0)):
        n = MEDIAPIPE_POSE_33.index
        eye = eye_l if s == "L" else eye_r
        for name, dx, w in ((f"{side}_eye_inner", -0.015, 0.3), (f"{side}_eye", 0.0, 0.5), (f"{side}_eye_outer", 0.015, 0.3)):
            bones[n(name)], points[n(name)], weights[n(name)] = j("head"), eye + [sgn * dx, 0, 0], w
        bones[n(f"{side}_ear")], points[n(f"{side}_ear")], weights[n(f"{side}_ear")] = \
            j("head"), nearest([sgn * 0.25, eye_y + 0.1, eye_z - 0.02]), 0.5
        bones[n(f"mouth_{side}")], points[n(f"mouth_{side}")], weights[n(f"mouth_{side}")] = \
            j("head"), nearest([sgn * 0.025, eye_y - 0.03, eye_z - 0.075]), 0.3
        for name, joint, w in (("shoulder", "upperarm01", 1.0), ("elbow", "lowerarm01", 1.0), ("wrist", "wrist", 1.0),
                               ("pinky", "finger5-1", 0.2), ("index", "finger2-1", 0.2), ("thumb", "finger1-2", 0.2),
                               ("hip", "upperleg01", 1.0), ("knee", "lowerleg01", 1.0), ("ankle", "foot", 1.0),
                               ("foot_index", "toe2-1", 0.5)):
            i = n(f"{side}_{name}")
            bones[i], points[i], weights[i] = j(f"{joint}.{s}"), heads[j(f"{joint}.{s}")], w
        foot = heads[j(f"foot.{s}")]
        i = n(f"{side}_heel")
        bones[i], points[i], weights[i] = j(f"foot.{s}"), nearest([foot[0], foot[1] + 0.15, 0.02]), 0.5
    i = MEDIAPIPE_POSE_33.index("nose")
    bones[i], points[i], weights[i] = j("head"), nearest([0.0, eye_y - 0.2, eye_z - 0.035]), 1.0
    return bones, points, weights


# ------------------------------------------------------------------ rotations
def axis_angle_to_quat(v: torch.Tensor) -> torch.Tensor:  # (..., 3) -> (..., 4) wxyz, smooth at 0
    theta = torch.sqrt((v * v).sum(-1, keepdim=True) + 1e-12)
    return torch.cat([torch.cos(theta / 2), v * (torch.sin(theta / 2) / theta)], dim=-1)


def front_camera(distance: float, height: float = 1.0) -> np.ndarray:
    """world-to-camera (4, 4) of a camera `distance` m in front of the template (on -Y) looking at +Y."""
    return look_at((0.0, -distance, height), (0.0, 0.0, height)).astype(np.float32)


# ------------------------------------------------------------------ the fitter
class BodyFitter:
    """Holds the template-derived constants; `fit` runs one clip (frames of one person)."""

    def __init__(self, template, config: FitConfig | None = None):
        self.template = template
        self.config = config or FitConfig()
        self.skeleton = Skeleton.from_template(template)
        self.num_joints = self.skeleton.num_joints
        bones, points, weights = landmark_anchors(template)
        self.lm_bones = torch.from_numpy(bones)
        self.lm_points = torch.from_numpy(points).float()
        self.lm_weights = torch.from_numpy(weights).float()
        self.torso = torch.tensor([MEDIAPIPE_POSE_33.index(n) for n in _TORSO])
        self.fit_idx = torch.tensor([template.joint_index(n) for n in FIT_JOINTS])
        rng = np.random.default_rng(self.config.seed)
        topi, topw = template.topk_skin(4)
        sel = np.sort(rng.choice(len(template.vertices), size=min(self.config.vertex_samples, len(template.vertices)),
                                 replace=False))
        self.v_points = torch.from_numpy(template.vertices[sel]).float()
        self.v_idx = torch.from_numpy(topi[sel])
        self.v_w = torch.from_numpy(topw[sel]).float()
        self._reduced_kinematics(template)
        root_rest = torch.as_tensor(np.asarray(template.rest_matrices[0, :3, :3], np.float64))
        self.root_rest_q = matrix_to_quat(root_rest).float()  # R_root as a quaternion
        twist = torch.zeros(len(FIT_JOINTS), 3)
        twist[:, 1] = 1.0  # local Y is the bone axis (Blender bone convention): twist is unobservable
        self.twist_mask = twist
        self.hinge_axes = self._hinge_axes()
        self.extremity = torch.tensor([n in EXTREMITIES for n in FIT_JOINTS], dtype=torch.float32)  # (K,)
        self.prior = None
        if self.config.pose_prior:
            from backend.perception.pose_prior import DEFAULT_PATH, load_pose_prior

            if DEFAULT_PATH.exists():
                prior = load_pose_prior(DEFAULT_PATH)
                if prior.joints != FIT_JOINTS:
                    raise ValueError(f"{DEFAULT_PATH}: a prior over {prior.joints}, the fitter moves {FIT_JOINTS}")
                self.prior = (torch.from_numpy(prior.mean).float().view(len(FIT_JOINTS), 3),
                              torch.from_numpy(prior.precision).float())
        self.shape_basis = None  # (T, V, 3) for the sampled vertices, loaded on the first shape fit
        self._sel = sel

    def _shape_basis(self) -> torch.Tensor:
        if self.shape_basis is None:
            from backend.avatar.body_shape import load_vertex_basis

            self.shape_basis = torch.from_numpy(np.ascontiguousarray(load_vertex_basis(self.template)[:, self._sel]))
        return self.shape_basis

    def shape_displacement(self, shape: torch.Tensor) -> torch.Tensor:
        """Macro values (6,) -> (V, 3) displacement of the sampled vertices from the default body."""
        from backend.avatar.body_shape import DEFAULT_SHAPE, target_weights_torch

        w = target_weights_torch(shape) - target_weights_torch(torch.from_numpy(DEFAULT_SHAPE))
        return torch.tensordot(w.float(), self._shape_basis(), dims=1)

    def _hinge_axes(self) -> torch.Tensor:
        """(K, 3) unit local axis of each hinge joint whose positive rotation bends it (zeros: ball joint).
        Found numerically: the local axis (+-X, +-Z) that moves the child head most along HINGES' direction."""
        axes = torch.zeros(len(FIT_JOINTS), 3)
        heads = torch.as_tensor(np.asarray(self.template.joint_heads))
        for k, name in enumerate(FIT_JOINTS):
            if name not in HINGES:
                continue
            child, direction = HINGES[name]
            c = self.template.joint_index(child)
            best, best_gain = None, -1e9
            for axis in (torch.tensor([1.0, 0, 0]), torch.tensor([-1.0, 0, 0]), torch.tensor([0, 0, 1.0]), torch.tensor([0, 0, -1.0])):
                q = torch.zeros(self.num_joints, 4)
                q[:, 0] = 1
                q[self.template.joint_index(name)] = axis_angle_to_quat(0.3 * axis)
                a = skinning_matrices(self.skeleton, q)
                moved = a[c, :3, :3].double() @ heads[c].double() + a[c, :3, 3].double()
                gain = float((moved - heads[c].double()) @ torch.tensor(direction, dtype=torch.float64))
                if gain > best_gain:
                    best, best_gain = axis, gain
            axes[k] = best
        return axes

    def _reduced_kinematics(self, template) -> None:
        """Forward kinematics over the moving joints only (the root and FIT_JOINTS).

        A joint whose own rotation and those of its ancestors up to the nearest moving ancestor a are the
        identity has the skinning matrix of a: G_j = G_a (R_a^-1 R_j), so A_j = G_j R_j^-1 = G_a R_a^-1 = A_a.
        So 16 chained 4x4 products (root + FIT_JOINTS) give all 104 skinning matrices; `test_ingest` holds this against
        `skinning.skinning_matrices`."""
        parents = [int(p) for p in np.asarray(template.joint_parents)]
        moving = sorted({0, *self.fit_idx.tolist()})
        slot = {j: i for i, j in enumerate(moving)}
        owner = []  # joint -> slot of its nearest moving ancestor (itself when it moves)
        for j, p in enumerate(parents):
            owner.append(slot[j] if j in slot else owner[p])
        rest = torch.as_tensor(np.asarray(template.rest_matrices, np.float64))
        rest_inv = torch.linalg.inv(rest)
        self.moving = torch.tensor(moving)
        self.moving_parent = [-1 if j == 0 else owner[parents[j]] for j in moving]
        self.moving_local = torch.stack([rest[j] if j == 0 else rest_inv[moving[owner[parents[j]]]] @ rest[j]
                                         for j in moving]).float()  # (M, 4, 4)
        self.moving_rest_inv = rest_inv[moving].float()
        self.owner = torch.tensor(owner)
        self.fit_slots = torch.tensor([slot[j] for j in self.fit_idx.tolist()])

    def _skinning(self, orient: torch.Tensor, pose: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """-> (B, J, 4, 4) skinning matrices, equal to skinning.skinning_matrices(skeleton, _quats(...), trans)."""
        q = self._quats(orient, pose)[:, self.moving]  # (B, M, 4)
        rot = quat_to_matrix(q)  # (B, M, 3, 3)
        b = rot.shape[0]
        p = torch.cat([torch.cat([rot, torch.zeros(b, rot.shape[1], 3, 1)], -1),
                       torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(b, rot.shape[1], 1, 4)], -2)  # (B, M, 4, 4)
        g: list[torch.Tensor] = []
        for i, parent in enumerate(self.moving_parent):
            local = self.moving_local[i]
            if parent < 0:
                shift = torch.zeros(b, 4, 4)
                shift[:, :3, 3] = trans
                g.append((local + shift) @ p[:, i])
            else:
                g.append(g[parent] @ local @ p[:, i])
        a = torch.stack(g, 1) @ self.moving_rest_inv  # (B, M, 4, 4)
        return a[:, self.owner]

    # -------------------------------------------------------------- model
    def _quats(self, orient: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """orient (B, 3) world axis-angle, pose (B, K, 3) local -> (B, J, 4) local joint quaternions."""
        b = orient.shape[0]
        q = torch.zeros(b, self.num_joints, 4)
        q[..., 0] = 1.0
        q = q.clone()
        q[:, self.fit_idx] = axis_angle_to_quat(pose)
        # the root's local rotation P_root = R_root^-1 W R_root turns the body by W about the root head
        rr = self.root_rest_q.expand(b, 4)
        rr_inv = rr * torch.tensor([1.0, -1.0, -1.0, -1.0])
        q[:, 0] = quat_multiply(quat_multiply(rr_inv, axis_angle_to_quat(orient)), rr)
        return q

    def _posed(self, orient, pose, trans, displacement=None):
        """-> landmarks (B, 33, 3) and sampled vertices (B, V, 3), world; displacement (V, 3): body shape."""
        a = self._skinning(orient, pose, trans)  # (B, J, 4, 4)
        la = a[:, self.lm_bones]  # (B, 33, 4, 4)
        lms = (la[..., :3, :3] @ self.lm_points[:, :, None]).squeeze(-1) + la[..., :3, 3]
        m = (a[:, self.v_idx, :3, :] * self.v_w[None, :, :, None, None]).sum(2)  # (B, V, 3, 4)
        rest = self.v_points if displacement is None else self.v_points + displacement  # (V, 3)
        verts = (m[..., :3] @ rest[:, :, None]).squeeze(-1) + m[..., 3]
        return lms, verts

    @staticmethod
    def _project(points, viewmat, k):  # (B, N, 3) -> (B, N, 2) pixels, (B, N) depth
        pc = points @ viewmat[:3, :3].T + viewmat[:3, 3]
        z = pc[..., 2].clamp(min=1e-3)
        uv = pc[..., :2] / z[..., None] * torch.stack([k[0, 0], k[1, 1]]) + torch.stack([k[0, 2], k[1, 2]])
        return uv, z

    # -------------------------------------------------------------- fit
    def fit(self, keypoints: np.ndarray, image_size: tuple[int, int], masks: np.ndarray | None = None,
            intrinsics: np.ndarray | None = None, temporal: bool = True, shape: np.ndarray | None = None) -> FitResult:
        """keypoints (F, 33, 3) x, y pixels + confidence; image_size (width, height); masks (F, H, W) in
        [0, 1] or uint8 0..255, optional; intrinsics (3, 3) optional (else from `FitConfig.fov_deg`);
        shape (6,) macro values held fixed (else fitted when `FitConfig.fit_shape` and masks are given).

        Runs on one torch thread: the tensors are tiny (a few frames x 16 joints), and intra-op threads only
        add synchronisation (a 3-frame fit took 58 CPU-s on 2 threads of a busy machine, 7 on one)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fit(keypoints, image_size, masks, intrinsics, temporal, shape)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, keypoints, image_size, masks, intrinsics, temporal, shape=None) -> FitResult:
        cfg = self.config
        kp = np.asarray(keypoints, np.float32)
        if kp.ndim != 3 or kp.shape[1:] != (33, 3):
            raise ValueError(f"expected keypoints of shape (F, 33, 3) ({KEYPOINT_FORMAT}), got {kp.shape}")
        n_frames = kp.shape[0]
        width, height = image_size
        given_intrinsics = intrinsics is not None
        if intrinsics is None:
            f = 0.5 * width / math.tan(math.radians(cfg.fov_deg) / 2)
            intrinsics = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float32)
        k = torch.as_tensor(np.asarray(intrinsics, np.float32))
        focal = float(k[0, 0])
        conf = torch.from_numpy(kp[..., 2]).clone()
        inside = (kp[..., 0] >= 0) & (kp[..., 0] < width) & (kp[..., 1] >= 0) & (kp[..., 1] < height)
        conf[~torch.from_numpy(inside)] = 0.0
        conf[conf < cfg.min_confidence] = 0.0
        if not bool((conf > 0).any(1).all()):
            bad = torch.nonzero(~(conf > 0).any(1)).flatten().tolist()
            raise ValueError(f"frames {bad[:8]} have no keypoint above confidence {cfg.min_confidence}")
        weight = conf * self.lm_weights  # (F, 33)
        target = torch.from_numpy(kp[..., :2])

        # depth from the vertical spread of the visible landmarks (yaw does not change it)
        depth = self._initial_depth(kp, conf.numpy(), focal)
        viewmat = torch.from_numpy(front_camera(depth))
        ppm = focal / depth  # pixels per metre at the body
        trans0 = self._initial_translation(kp, conf.numpy(), viewmat.numpy(), k.numpy(), depth)

        # stage 1: orientation and translation from 4 yaws, torso and face landmarks only
        yaws = torch.tensor([0.0, 0.5, 1.0, 1.5]) * math.pi
        h = len(yaws)
        orient = torch.zeros(n_frames * h, 3)
        orient[:, 2] = yaws.repeat(n_frames)
        orient.requires_grad_(True)
        trans = torch.from_numpy(np.repeat(trans0, h, axis=0)).float().requires_grad_(True)
        pose0 = torch.zeros(n_frames * h, len(FIT_JOINTS), 3)
        tw = torch.zeros_like(weight)
        tw[:, self.torso] = weight[:, self.torso]
        tw_h = tw.repeat_interleave(h, 0)
        target_h = target.repeat_interleave(h, 0)
        opt = torch.optim.Adam([orient, trans], lr=cfg.lr * 2)
        for _ in range(cfg.iters_global):
            opt.zero_grad()
            lms, _ = self._posed(orient, pose0, trans)
            per = self._keypoint_loss(lms, target_h, tw_h, viewmat, k, ppm, reduce=False)  # (F*h,)
            per.sum().backward()
            opt.step()
        with torch.no_grad():
            lms, _ = self._posed(orient, pose0, trans)
            per = self._keypoint_loss(lms, target_h, tw_h, viewmat, k, ppm, reduce=False).view(n_frames, h)
            best = per.argmin(1) + torch.arange(n_frames) * h
            orient = orient[best].clone().requires_grad_(True)
            trans = trans[best].clone().requires_grad_(True)

        # stage 2: everything (and the focal length, when asked for and not given; the shape, when asked
        # for, not given and there are silhouettes to see it in). Unseen joints start at the prior's mean.
        start = self.prior[0] if self.prior is not None else torch.zeros(len(FIT_JOINTS), 3)
        pose = start.expand(n_frames, -1, -1).clone().requires_grad_(True)
        sil = self._silhouette_targets(masks, n_frames, width, height, ppm) if masks is not None else None
        fit_focal = cfg.fit_focal and not given_intrinsics
        log_f = torch.zeros((), requires_grad=fit_focal)  # log(focal / guessed focal)
        k0 = k
        fit_shape = cfg.fit_shape and shape is None and sil is not None
        # macro values - 0.5, started just off 0.5: the weights have a kink there, where relu's gradient is 0
        shape_u = torch.full((len(SHAPE_LOW),), 0.01, requires_grad=fit_shape)
        fixed = None if shape is None else torch.as_tensor(np.asarray(shape, np.float32))
        if fixed is not None and fixed.shape != (len(SHAPE_LOW),):
            raise ValueError(f"expected shape of shape ({len(SHAPE_LOW)},) macro values, got {tuple(fixed.shape)}")

        def k_now() -> torch.Tensor:
            return _focal_scaled(k0, torch.exp(log_f)) if fit_focal else k0

        def shape_now() -> torch.Tensor | None:
            if fixed is not None:
                return fixed
            return torch.minimum(torch.maximum(0.5 + shape_u, SHAPE_LOW), SHAPE_HIGH) if fit_shape else None

        def displacement():
            s = shape_now()
            return None if s is None else self.shape_displacement(s)

        params = [orient, trans, pose] + ([log_f] if fit_focal else []) + ([shape_u] if fit_shape else [])
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iters_pose, eta_min=cfg.lr * 0.05)
        for _ in range(cfg.iters_pose):
            opt.zero_grad()
            loss = self._total_loss(orient, pose, trans, target, weight, viewmat, k_now(), ppm, sil,
                                    temporal and n_frames > 1, displacement())
            if fit_focal:  # the prior: the guess, give or take a factor exp(focal_sigma)
                loss = loss + cfg.w_focal * (log_f / cfg.focal_sigma) ** 2
            if fit_shape:  # the prior: the default body, each macro value give or take its sigma
                loss = loss + cfg.w_shape * ((shape_u / (cfg.shape_sigma * SHAPE_SIGMA_SCALE)) ** 2).sum()
            loss.backward()
            opt.step()
            sched.step()
        k = k_now().detach()

        with torch.no_grad():
            disp = displacement()
            loss = float(self._total_loss(orient, pose, trans, target, weight, viewmat, k, ppm, sil,
                                          temporal and n_frames > 1, disp))
            quats = self._quats(orient, pose)
            fitted_shape = shape_now()
            lms, _ = self._posed(orient, pose, trans)
            uv, _ = self._project(lms, viewmat, k)
            err = (uv - target).norm(dim=-1)
            vis = (conf > 0).float()
            reproj = ((err * vis).sum(1) / vis.sum(1).clamp(min=1)).numpy()
            # put the body near the world origin: move the camera instead (exact, translation commutes)
            shift = trans.mean(0).numpy().astype(np.float64)
            shift[2] = 0.0
            vm = viewmat.numpy().astype(np.float64) @ _translation(shift)
        return FitResult(joint_rotations=quats.numpy().astype(np.float32),
                         root_translation=(trans.detach().numpy() - shift).astype(np.float32),
                         viewmat=vm.astype(np.float32), intrinsics=k.numpy(),
                         projected_keypoints=uv.numpy().astype(np.float32),
                         reprojection_px=reproj.astype(np.float32), loss=loss,
                         shape=None if fitted_shape is None else fitted_shape.numpy().astype(np.float32))

    # -------------------------------------------------------------- pieces
    def _initial_depth(self, kp, conf, focal) -> float:
        depths = []
        rest = self.lm_points.numpy()
        for f in range(kp.shape[0]):
            seen = conf[f] > 0
            if seen.sum() < 2:
                continue
            spread_px = kp[f, seen, 1].std()
            spread_m = rest[seen, 2].std()
            if spread_px < 2 or spread_m < 0.02:  # a flat row of landmarks: use the full 2D spread instead
                spread_px = np.linalg.norm(kp[f, seen, :2].std(0))
                spread_m = np.linalg.norm(rest[seen][:, [0, 2]].std(0))
            if spread_px > 1 and spread_m > 0.01:
                depths.append(focal * spread_m / spread_px)
        return float(np.clip(np.median(depths), 0.3, 200.0)) if depths else 3.0

    def _initial_translation(self, kp, conf, viewmat, k, depth) -> np.ndarray:
        out = np.zeros((kp.shape[0], 3), np.float32)
        rest = self.lm_points.numpy()
        cam_to_world = np.linalg.inv(viewmat.astype(np.float64))
        for f in range(kp.shape[0]):
            seen = conf[f] > 0
            u, v = kp[f, seen, :2].mean(0)
            pc = np.array([(u - k[0, 2]) / k[0, 0] * depth, (v - k[1, 2]) / k[1, 1] * depth, depth, 1.0])
            out[f] = (cam_to_world @ pc)[:3] - rest[seen].mean(0)
        return out

    def _keypoint_loss(self, lms, target, weight, viewmat, k, ppm, reduce=True):
        uv, _ = self._project(lms, viewmat, k)
        r = (uv - target).norm(dim=-1) / ppm  # (B, 33) metres at the body
        d = self.config.huber_m
        hub = torch.where(r < d, 0.5 * r * r, d * (r - 0.5 * d)) / (d * d)
        per = (hub * weight).sum(1) / weight.sum(1).clamp(min=1e-6)
        return per.mean() if reduce else per

    def _silhouette_targets(self, masks, n_frames, width, height, ppm):
        import cv2

        m = np.asarray(masks)
        m = m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else m.astype(np.float32)
        if m.shape != (n_frames, height, width):
            raise ValueError(f"expected masks of shape ({n_frames}, {height}, {width}), got {m.shape}")
        rng = np.random.default_rng(self.config.seed)
        dist, samples, has = [], [], []
        for f in range(n_frames):
            fg = m[f] >= 0.5
            outside = cv2.distanceTransform((~fg).astype(np.uint8), cv2.DIST_L2, 5) / ppm  # metres
            # truncated: a limb hidden by an occluder lies deep outside the mask, and its keypoint should win
            outside = np.minimum(outside, self.config.silhouette_cap_m)
            dist.append(outside)
            ys, xs = np.nonzero(fg)
            has.append(len(xs) > 0)
            if len(xs) == 0:
                ys, xs = np.zeros(1, np.int64), np.zeros(1, np.int64)
            pick = rng.choice(len(xs), size=self.config.mask_samples, replace=len(xs) < self.config.mask_samples)
            samples.append(np.stack([xs[pick] + 0.5, ys[pick] + 0.5], -1))
        return (torch.from_numpy(np.stack(dist))[:, None], torch.from_numpy(np.stack(samples)).float(),
                torch.tensor(has, dtype=torch.float32))

    def _silhouette_loss(self, verts, viewmat, k, ppm, sil, width, height):
        dist, samples, has = sil  # (F, 1, H, W), (F, S, 2), (F,)
        uv, _ = self._project(verts, viewmat, k)  # (F, V, 2)
        grid = torch.stack([uv[..., 0] / width * 2 - 1, uv[..., 1] / height * 2 - 1], -1)[:, None]  # (F, 1, V, 2)
        outside = torch.nn.functional.grid_sample(dist, grid, align_corners=False, padding_mode="zeros")  # (F,1,1,V)
        out_term = outside.flatten(1).mean(1)
        cover = torch.cdist(samples, uv).min(-1).values / ppm  # (F, S) metres
        return ((out_term + cover.mean(1)) * has).mean()

    def _total_loss(self, orient, pose, trans, target, weight, viewmat, k, ppm, sil, temporal, displacement=None):
        cfg = self.config
        lms, verts = self._posed(orient, pose, trans, displacement)
        loss = cfg.w_keypoints * self._keypoint_loss(lms, target, weight, viewmat, k, ppm)
        if sil is not None:
            h, w = sil[0].shape[-2:]
            loss = loss + cfg.w_silhouette * self._silhouette_loss(verts, viewmat, k, ppm, sil, w, h)
        if self.prior is not None:  # it knows how far each joint turns and twists, and with which others
            mean, precision = self.prior
            d = (pose - mean).flatten(1)  # (F, 3K)
            loss = loss + cfg.w_prior * ((d @ precision) * d).sum(1).mean() / d.shape[1]
        else:  # without it: towards the rest pose, little twist, hands and feet held closer still
            loss = loss + cfg.w_pose * (pose ** 2).sum((1, 2)).mean()
            loss = loss + cfg.w_twist * ((pose * self.twist_mask) ** 2).sum((1, 2)).mean()
            loss = loss + cfg.w_extremity * ((pose ** 2).sum(-1) * self.extremity).sum(1).mean()
        hinge = self.hinge_axes  # (K, 3)
        is_hinge = hinge.abs().sum(1) > 0
        bend = (pose * hinge).sum(-1)  # (F, K) rotation about the hinge axis
        off_axis = pose - bend[..., None] * hinge
        # mocap and real elbows/knees leave the ideal hinge axis by some degrees: off-axis is cheaper than reverse
        loss = loss + cfg.w_hinge * ((torch.relu(-bend) ** 2 + 0.1 * (off_axis ** 2).sum(-1)) * is_hinge).sum(1).mean()
        if temporal:
            # orientation compared as rotation matrices: axis-angle jumps by 2 pi between equal turns
            rot = quat_to_matrix(axis_angle_to_quat(orient))  # (F, 3, 3)
            loss = loss + cfg.w_temporal * (((pose[1:] - pose[:-1]) ** 2).sum((1, 2)).mean()
                                             + 0.5 * ((rot[1:] - rot[:-1]) ** 2).sum((1, 2)).mean()
                                             + ((trans[1:] - trans[:-1]) ** 2).sum(1).mean())
        return loss


# the macro values' box and the prior's width per value, relative to FitConfig.shape_sigma: gender is
# bimodal (about 0.15 or 0.85), so wide; age below 0.5 means a child, whose skeleton is not the template's
SHAPE_LOW = torch.tensor([0.0, 0.5, 0.2, 0.2, 0.2, 0.2])
SHAPE_HIGH = torch.tensor([1.0, 1.0, 0.8, 0.8, 0.8, 0.8])
SHAPE_SIGMA_SCALE = torch.tensor([2.5, 1.0, 1.0, 1.0, 1.0, 1.0])


def _focal_scaled(k: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Intrinsics (3, 3) with fx and fy times s (a scalar tensor; differentiable), principal point kept."""
    return torch.stack([torch.stack([k[0, 0] * s, k[0, 1], k[0, 2]]), torch.stack([k[1, 0], k[1, 1] * s, k[1, 2]]),
                        k[2]])


def _translation(t) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


# ------------------------------------------------------------------ evaluation helpers
def render_silhouette(template, joint_rotations: np.ndarray, root_translation: np.ndarray, viewmat: np.ndarray,
                      intrinsics: np.ndarray, width: int, height: int, shape: np.ndarray | None = None) -> np.ndarray:
    """The posed template's silhouette, (H, W) bool, for one frame (front-facing triangles filled); shape:
    (6,) macro values of the body (None: the default body)."""
    import cv2


    skel = Skeleton.from_template(template)
    idx, w = template.topk_skin(8)
    rest = template.vertices
    if shape is not None:
        from backend.avatar.body_shape import vertex_displacement

        rest = rest + vertex_displacement(template, shape, _vertex_basis(template))
    verts = pose_vertices(torch.from_numpy(np.asarray(rest, np.float32)), torch.from_numpy(idx), torch.from_numpy(w), skel,
                          torch.from_numpy(np.asarray(joint_rotations, np.float32)),
                          torch.from_numpy(np.asarray(root_translation, np.float32))).numpy().astype(np.float64)
    vm = np.asarray(viewmat, np.float64)
    pc = verts @ vm[:3, :3].T + vm[:3, 3]
    k = np.asarray(intrinsics, np.float64)
    z = np.maximum(pc[:, 2], 1e-6)
    uv = pc[:, :2] / z[:, None] * [k[0, 0], k[1, 1]] + k[:2, 2]
    tri = uv[template.faces]  # (T, 3, 2)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    # every non-degenerate triangle in front of the camera: their union is the silhouette
    drawn = (np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) > 1e-9) & (pc[template.faces, 2] > 1e-3).all(1)
    out = np.zeros((height, width), np.uint8)
    fixed = np.round((tri[drawn] - 0.5) * 16).astype(np.int32)  # 4 fractional bits; pixel centres at +0.5
    for t in fixed:
        cv2.fillConvexPoly(out, t, 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


_BASES: dict[str, np.ndarray] = {}


def _vertex_basis(template) -> np.ndarray:
    from backend.avatar.body_shape import load_vertex_basis

    key = f"{template.name}-{template.source_hash}"
    if key not in _BASES:
        _BASES[key] = load_vertex_basis(template)
    return _BASES[key]


def silhouette_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")
