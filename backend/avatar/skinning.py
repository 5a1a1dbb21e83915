"""Forward kinematics and skinning of rigged Gaussians.

Pose convention (Blender's `PoseBone.rotation_quaternion`): joint j carries a LOCAL rotation P_j
relative to its rest pose, expressed in its own rest frame R_j (a 4×4 in template space). Then

    G_root = T(root_translation) · R_root · P_root
    G_j    = G_parent(j) · (R_parent(j)⁻¹ · R_j) · P_j
    A_j    = G_j · R_j⁻¹          (skinning matrix: rest template space -> posed space)

Identity rotations and zero translation give A_j = I. Quaternions are (w, x, y, z). Optionally P_j
carries a location L_j and a uniform scale s_j as well, as Blender's pose bones do:
P_j = T(L_j) · rot_j · s_j (an avatar whose skeleton was fitted to another armature's proportions);
orientations then turn by the rotation part alone, and the Gaussians keep their sizes (as in Blender).

LBS moves means by the weight-blended A_j; orientations are rotated by the weight-blended joint
rotation (sign-aligned quaternion average, normalised). `dual_quaternion=True` blends unit dual
quaternions instead (no candy-wrapper collapse at twisted joints). Skin weights are top-k per
Gaussian, so the cost is O(N k), never a dense N × J product.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import torch

from backend.avatar.gaussians import Gaussians
from bridge.geometry.rotations import matrix_to_quat, quat_multiply, quat_to_matrix


# ------------------------------------------------------------------ skeleton
@dataclasses.dataclass
class Skeleton:
    """joint_names (J), joint_parents (J,) with parents first, rest_matrices (J, 4, 4) template space."""

    joint_names: list[str]
    joint_parents: torch.Tensor
    rest_matrices: torch.Tensor

    def __post_init__(self) -> None:
        j = len(self.joint_names)
        if tuple(self.rest_matrices.shape) != (j, 4, 4):
            raise ValueError(f"expected rest_matrices of shape ({j}, 4, 4), got {tuple(self.rest_matrices.shape)}")
        if tuple(self.joint_parents.shape) != (j,):
            raise ValueError(f"expected joint_parents of shape ({j},), got {tuple(self.joint_parents.shape)}")
        for i, p in enumerate(self.joint_parents.tolist()):
            if not -1 <= p < i:
                raise ValueError(f"joint {self.joint_names[i]!r} has parent {p}; expected -1 <= parent < {i}")
        self._parents = self.joint_parents.tolist()
        # R_parent⁻¹ · R_j (the root's is R_root itself), precomputed once
        rest = self.rest_matrices.double()
        rest_inv = torch.linalg.inv(rest)
        local = rest.clone()
        for i, p in enumerate(self._parents):
            if p >= 0:
                local[i] = rest_inv[p] @ rest[i]
        self._local_rest = local
        self._rest_inv = rest_inv

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @classmethod
    def from_template(cls, template) -> "Skeleton":
        return cls(list(template.joint_names), torch.as_tensor(np.asarray(template.joint_parents), dtype=torch.long),
                   torch.as_tensor(np.asarray(template.rest_matrices), dtype=torch.float32))

    def index(self, name: str) -> int:
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise KeyError(f"unknown joint name {name!r}; the skeleton has {self.num_joints} joints "
                           f"({', '.join(self.joint_names[:6])}, ...)") from None

    def rotations_from_dict(self, rotations: Mapping[str, Sequence[float] | torch.Tensor]) -> torch.Tensor:
        """{joint name: quaternion wxyz} -> (J, 4), identity for joints not named."""
        unknown = [n for n in rotations if n not in self.joint_names]
        if unknown:
            raise KeyError(f"unknown joint names {unknown}; expected names of this skeleton, e.g. {self.joint_names[:4]}")
        q = torch.zeros(self.num_joints, 4)
        q[:, 0] = 1
        for name, rot in rotations.items():
            q[self.index(name)] = torch.as_tensor(rot, dtype=torch.float32).reshape(4)
        return q


def _as_rotation_matrices(rotations: torch.Tensor | np.ndarray | Mapping, skeleton: Skeleton) -> torch.Tensor:
    """Accepts (..., J, 4) wxyz, (..., J, 3, 3) or a {name: wxyz} dict -> (..., J, 3, 3) float64."""
    if isinstance(rotations, Mapping):
        rotations = skeleton.rotations_from_dict(rotations)
    r = torch.as_tensor(rotations)
    j = skeleton.num_joints
    if r.ndim >= 2 and r.shape[-2:] == (j, 4):
        if not bool(torch.isfinite(r).all()):
            raise ValueError(f"joint rotations contain NaN or inf at joints {torch.nonzero(~torch.isfinite(r).all(-1)).flatten().tolist()[:8]}")
        norms = r.norm(dim=-1)
        if bool((norms < 1e-8).any()):
            raise ValueError("joint rotation quaternions must be non-zero (got a zero quaternion)")
        return quat_to_matrix(r.double())
    if r.ndim >= 3 and r.shape[-3:] == (j, 3, 3):
        if not bool(torch.isfinite(r).all()):
            raise ValueError("joint rotation matrices contain NaN or inf")
        return r.double()
    raise ValueError(f"expected joint rotations of shape (J, 4) wxyz or (J, 3, 3) with J = {j}, "
                     f"optionally with leading frame dims, got {tuple(r.shape)}")


def _pose_channel(values, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """An optional per-joint pose channel (joint_locations, joint_scales) as float64, checked."""
    v = torch.as_tensor(values).double()
    if tuple(v.shape) != shape:
        raise ValueError(f"expected {name} of shape {shape}, got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return v


def forward_kinematics(skeleton: Skeleton, joint_rotations, root_translation=None, joint_locations=None,
                       joint_scales=None) -> torch.Tensor:
    """Posed joint frames G (..., J, 4, 4) in template space (float32). See the module docstring.
    joint_locations (..., J, 3) and joint_scales (..., J) > 0: the optional L_j and s_j of P_j."""
    rot = _as_rotation_matrices(joint_rotations, skeleton)  # (..., J, 3, 3)
    batch = rot.shape[:-3]
    t = torch.zeros(batch + (3,), dtype=torch.float64) if root_translation is None else torch.as_tensor(root_translation).double()
    if tuple(t.shape) != tuple(batch) + (3,):
        raise ValueError(f"expected root_translation of shape {tuple(batch) + (3,)}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"root_translation contains NaN or inf: {t}")
    pose = torch.zeros(batch + (skeleton.num_joints, 4, 4), dtype=torch.float64)
    pose[..., :3, :3] = rot
    pose[..., 3, 3] = 1.0
    if joint_scales is not None:
        s = _pose_channel(joint_scales, "joint_scales", tuple(batch) + (skeleton.num_joints,))
        if bool((s <= 0).any()):
            raise ValueError(f"joint_scales must be positive, got {float(s.min())}")
        pose[..., :3, :3] *= s[..., None, None]
    if joint_locations is not None:
        pose[..., :3, 3] = _pose_channel(joint_locations, "joint_locations", tuple(batch) + (skeleton.num_joints, 3))
    local = skeleton._local_rest.to(rot.device)
    g: list[torch.Tensor] = []
    for i, p in enumerate(skeleton._parents):
        if p < 0:
            root = local[i].expand(batch + (4, 4)).clone()
            root[..., :3, 3] += t
            g.append(root @ pose[..., i, :, :])
        else:
            g.append(g[p] @ local[i] @ pose[..., i, :, :])
    return torch.stack(g, dim=-3).float()


def skinning_matrices(skeleton: Skeleton, joint_rotations, root_translation=None, joint_locations=None,
                      joint_scales=None) -> torch.Tensor:
    """A_j = G_j · R_j⁻¹: (..., J, 4, 4), maps rest template space to posed space."""
    g = forward_kinematics(skeleton, joint_rotations, root_translation, joint_locations, joint_scales).double()
    return (g @ skeleton._rest_inv).float()


def _check_rigged(gaussians: Gaussians, skeleton: Skeleton) -> tuple[torch.Tensor, torch.Tensor]:
    if not gaussians.is_rigged:
        raise ValueError("pose() needs rigged Gaussians (skin_indices and skin_weights set)")
    idx, w = gaussians.skin_indices, gaussians.skin_weights
    assert idx is not None and w is not None
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= skeleton.num_joints):
        raise ValueError(f"skin_indices must lie in [0, {skeleton.num_joints}), got {int(idx.min())}..{int(idx.max())}")
    return idx.long(), w


def _dq_from_matrices(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, 4, 4) rigid -> real (J, 4) and dual (J, 4) quaternion parts."""
    qr = matrix_to_quat(a[:, :3, :3])
    tq = torch.cat([torch.zeros_like(a[:, :1, 3]), a[:, :3, 3]], dim=-1)
    return qr, 0.5 * quat_multiply(tq, qr)


def pose(gaussians: Gaussians, skeleton: Skeleton, joint_rotations, root_translation=None,
         dual_quaternion: bool = False, joint_locations=None, joint_scales=None) -> Gaussians:
    """Pose rigged Gaussians from template space. joint_rotations: (J, 4) wxyz, (J, 3, 3) or {name: wxyz};
    joint_locations (J, 3), joint_scales (J,): optional pose-bone locations and scales (LBS only)."""
    idx, w = _check_rigged(gaussians, skeleton)  # (N, k)
    if dual_quaternion and joint_scales is not None:
        raise ValueError("dual-quaternion skinning blends rigid bones: pose with joint_scales needs LBS")
    a = skinning_matrices(skeleton, joint_rotations, root_translation, joint_locations, joint_scales)  # (J, 4, 4)
    if a.ndim != 3:
        raise ValueError(f"pose() takes one frame; for (F, J, ...) rotations use pose_frames(), got {tuple(a.shape)}")
    dtype = gaussians.means.dtype
    a = a.to(gaussians.device, dtype)
    rot = a[:, :3, :3] / a[:, :3, :3].norm(dim=-2, keepdim=True)  # the rotation part: a bone's scale divided out
    jq = matrix_to_quat(rot)  # (J, 4)
    w = w.to(dtype)
    if dual_quaternion:
        qr, qd = _dq_from_matrices(a)
        pivot = qr[idx[:, 0]]  # (N, 4) align signs with the dominant joint
        br = torch.zeros_like(gaussians.rotations)
        bd = torch.zeros_like(gaussians.rotations)
        for k in range(idx.shape[1]):
            r_k, d_k = qr[idx[:, k]], qd[idx[:, k]]
            s = torch.where((r_k * pivot).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(dtype)
            br = br + (w[:, k:k + 1] * s) * r_k
            bd = bd + (w[:, k:k + 1] * s) * d_k
        n = br.norm(dim=-1, keepdim=True)
        br, bd = br / n, bd / n
        conj = br * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=dtype, device=br.device)
        trans = 2.0 * quat_multiply(bd, conj)[:, 1:]  # (N, 3)
        rot = quat_to_matrix(br)
        means = (rot @ gaussians.means[:, :, None]).squeeze(-1) + trans
        blend_q = br
    else:
        m = torch.zeros(len(gaussians), 3, 4, dtype=dtype, device=gaussians.device)  # (N, 3, 4)
        blend_q = torch.zeros_like(gaussians.rotations)
        pivot = jq[idx[:, 0]]
        for k in range(idx.shape[1]):  # k gathers of (N, 3, 4): no (N, k, 4, 4) temporary
            m = m + w[:, k, None, None] * a[idx[:, k], :3, :]
            q_k = jq[idx[:, k]]
            s = torch.where((q_k * pivot).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(dtype)
            blend_q = blend_q + (w[:, k:k + 1] * s) * q_k
        means = (m[:, :, :3] @ gaussians.means[:, :, None]).squeeze(-1) + m[:, :, 3]
        blend_q = blend_q / blend_q.norm(dim=-1, keepdim=True)
    rotations = quat_multiply(blend_q, gaussians.rotations)
    rotations = rotations / rotations.norm(dim=-1, keepdim=True)
    return gaussians.replace(means=means, rotations=rotations)


def pose_frames(gaussians: Gaussians, skeleton: Skeleton, joint_rotations, root_translation=None,
                dual_quaternion: bool = False) -> list[Gaussians]:
    """joint_rotations (F, J, 4) or (F, J, 3, 3), root_translation (F, 3) -> F posed Gaussians."""
    rot = torch.as_tensor(joint_rotations)
    if rot.ndim not in (3, 4):
        raise ValueError(f"expected per-frame rotations of shape (F, J, 4) or (F, J, 3, 3), got {tuple(rot.shape)}")
    f = rot.shape[0]
    t = torch.zeros(f, 3) if root_translation is None else torch.as_tensor(root_translation)
    if tuple(t.shape) != (f, 3):
        raise ValueError(f"expected root_translation of shape ({f}, 3), got {tuple(t.shape)}")
    return [pose(gaussians, skeleton, rot[i], t[i], dual_quaternion=dual_quaternion) for i in range(f)]


def pose_vertices(vertices: torch.Tensor, skin_indices: torch.Tensor, skin_weights: torch.Tensor,
                  skeleton: Skeleton, joint_rotations, root_translation=None) -> torch.Tensor:
    """LBS of plain points (V, 3) with top-k skin weights (V, k): for meshes and anchors."""
    a = skinning_matrices(skeleton, joint_rotations, root_translation).to(vertices.dtype)  # (J, 4, 4)
    m = torch.zeros(len(vertices), 3, 4, dtype=vertices.dtype)
    for k in range(skin_indices.shape[1]):
        m = m + skin_weights[:, k, None, None].to(vertices.dtype) * a[skin_indices[:, k].long(), :3, :]
    return (m[:, :, :3] @ vertices[:, :, None]).squeeze(-1) + m[:, :, 3]
