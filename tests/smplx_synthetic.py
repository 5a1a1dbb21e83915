"""Synthetic SMPL-X model files with the structure of the licensed ones, for tests (no licensed data).

`write_synthetic_smplx(folder)` writes

    folder/smplx/SMPLX_<GENDER>.npz   what `smplx.SMPLX` loads (keys, shapes and index ranges of the real file)
    folder/smplx_uv.obj               v / vt / f v/vt lines, like the SMPL-X UV map

Structure (what the `smplx` package and our adapter read, see smplx/body_models.py):

    v_template               (10475, 3)      float64  metres, Y-up, facing +Z, character's left on +X
    f                        (20908, 3)      uint32
    J_regressor              (55, 10475)     float64  dense, rows are convex combinations of vertices
    kintree_table            (2, 55)         int64    row 0: SMPL-X parents (root 4294967295), row 1: 0..54
    weights                  (10475, 55)     float64  rows sum to 1, <= 4 bones per vertex
    shapedirs                (10475, 3, S)   float32  S = 20 (v1.0: 10 shape + 10 expression) or 400 (v1.1)
    posedirs                 (10475, 3, 486) float32  zeros (486 = 54 joints x 9)
    hands_componentsl/r      (45, 45)        float64  random orthonormal "PCA" bases
    hands_meanl/r            (45,)           float64  small mean hand poses
    hands_coeffsl/r          (16, 45)        float64  not read by smplx
    lmk_faces_idx            (51,)           int64    faces on the face; lmk_bary_coords (51, 3)
    dynamic_lmk_faces_idx    (79, 17)        int64    dynamic_lmk_bary_coords (79, 17, 3)
    vt, ft                   (T, 2), (20908, 3)       the UV map, as in the OBJ
    joint2num, part2num      pickled dicts (why smplx loads with allow_pickle=True)

The body is nine capsule-like tubes (torso with neck and head, legs, feet, arms in T-pose, paddle
hands), each a closed surface (rings + two poles); six hidden faces at the crotch pole are left out so
that V = 10,475 and F = 20,908 come out exactly (2V - F = 42, as in SMPL-X). The head has a nose bump
facing +Z. Joints lie inside the tubes at human-like places on SMPL-X's kinematic tree; the joint
regressor reproduces each from ring vertices exactly. Vertices are numbered so that the vertex ids
`smplx.vertex_ids['smplx']` (nose, eyes, ears, finger tips, toes, heels) land on those places. Each tube
gets its own UV chart (a cylindrical unwrap with a seam: vertices on the seam and the poles get several
UV coordinates, so there are more vt than v lines). Deterministic for a given seed; ~0.5 s to write.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

NUM_VERTS, NUM_FACES, NUM_JOINTS = 10475, 20908, 55
SOLE_Y = -1.2  # height of the soles in the written files (SMPL-X's origin is near the pelvis)

# SMPL-X joints 0..54 (smplx.joint_names.JOINT_NAMES[:55]) and their parents
JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "jaw", "left_eye_smplhf",
    "right_eye_smplhf",
] + [f"{side}_{finger}{k}" for side in ("left", "right")
     for finger in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)]
PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
           20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
           21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]

# Design positions (metres, soles at y = 0; the file is shifted by SOLE_Y). Left side only: right = x -> -x.
_CENTRE = {"pelvis": (0, 0.97, 0), "spine1": (0, 1.08, -0.01), "spine2": (0, 1.21, -0.01),
           "spine3": (0, 1.33, -0.01), "neck": (0, 1.49, -0.01), "head": (0, 1.57, 0), "jaw": (0, 1.55, 0.03)}
_LEFT = {"hip": (0.09, 0.90, 0), "knee": (0.09, 0.50, 0), "ankle": (0.09, 0.08, -0.01), "foot": (0.10, 0.03, 0.11),
         "collar": (0.07, 1.42, -0.01), "shoulder": (0.18, 1.43, -0.01), "elbow": (0.45, 1.43, -0.01),
         "wrist": (0.71, 1.43, -0.01), "eye_smplhf": (0.032, 1.63, 0.07)}
_FINGER_Z = {"index": 0.025, "middle": 0.005, "ring": -0.015, "pinky": -0.033}
_THUMB = [(0.725, 1.43, 0.028), (0.755, 1.43, 0.031), (0.785, 1.43, 0.033)]


def _design_joints() -> dict[str, np.ndarray]:
    out = {k: np.array(v, dtype=np.float64) for k, v in _CENTRE.items()}
    left = dict(_LEFT)
    for finger, z in _FINGER_Z.items():
        for k, x in enumerate((0.79, 0.825, 0.855)):
            left[f"{finger}{k + 1}"] = (x, 1.43, z)
    for k, p in enumerate(_THUMB):
        left[f"thumb{k + 1}"] = p
    for name, p in left.items():
        out[f"left_{name}"] = np.array(p, dtype=np.float64)
        out[f"right_{name}"] = np.array(p, dtype=np.float64) * [-1, 1, 1]
    assert set(out) == set(JOINT_NAMES)
    return out


def _bone_tips(j: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Where each bone ends, for skinning distances (children, or a point beyond a leaf)."""
    tips = {"pelvis": j["spine1"], "spine1": j["spine2"], "spine2": j["spine3"], "spine3": j["neck"],
            "neck": j["head"], "head": np.array([0, 1.72, 0.0]), "jaw": np.array([0, 1.52, 0.08])}
    for s, sx in (("left", 1.0), ("right", -1.0)):
        tips.update({f"{s}_hip": j[f"{s}_knee"], f"{s}_knee": j[f"{s}_ankle"], f"{s}_ankle": j[f"{s}_foot"],
                     f"{s}_foot": np.array([0.10 * sx, 0.02, 0.19]), f"{s}_collar": j[f"{s}_shoulder"],
                     f"{s}_shoulder": j[f"{s}_elbow"], f"{s}_elbow": j[f"{s}_wrist"],
                     f"{s}_wrist": j[f"{s}_middle1"], f"{s}_eye_smplhf": j[f"{s}_eye_smplhf"] + [0, 0, 0.02]})
        for finger in ("index", "middle", "pinky", "ring", "thumb"):
            for k in (1, 2):
                tips[f"{s}_{finger}{k}"] = j[f"{s}_{finger}{k + 1}"]
            tips[f"{s}_{finger}3"] = j[f"{s}_{finger}3"] + [0.035 * sx, 0, 0]
    return tips


@dataclasses.dataclass
class _Tube:
    """A closed tube around the straight axis start -> end: m rings of n vertices, then 2 poles.

    Ring i sits at s_i = L (i + 1) / (m + 1) along the axis; vertex k at angle theta0 + 2 pi k / n:
    centre + a cos(theta) e1 + b sin(theta) e2, with e1 x e2 = axis direction (faces wind outwards).
    `profile` rows are (s metres from start, a, b); the ends are rounded over `caps` metres.
    """

    name: str
    start: tuple
    end: tuple
    e1: tuple
    e2: tuple
    n: int
    m: int
    profile: list
    caps: tuple
    theta0: float
    bones: list
    uv_rect: tuple

    def mirrored(self, name: str, uv_rect: tuple) -> "_Tube":
        mx = np.array([-1.0, 1.0, 1.0])
        return dataclasses.replace(
            self, name=name, start=tuple(np.multiply(self.start, mx)), end=tuple(np.multiply(self.end, mx)),
            e1=tuple(np.multiply(self.e1, mx)), e2=tuple(-np.multiply(self.e2, mx)), theta0=-self.theta0,
            bones=[b.replace("left_", "right_") for b in self.bones], uv_rect=uv_rect)

    # geometry -----------------------------------------------------------------
    @property
    def axis(self) -> np.ndarray:
        d = np.subtract(self.end, self.start).astype(np.float64)
        return d / np.linalg.norm(d)

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.subtract(self.end, self.start)))

    @property
    def ring_s(self) -> np.ndarray:
        return self.length * np.arange(1, self.m + 1) / (self.m + 1)

    @property
    def thetas(self) -> np.ndarray:
        return self.theta0 + 2 * np.pi * np.arange(self.n) / self.n

    def radii(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.ring_s
        prof = np.asarray(self.profile, dtype=np.float64)
        a, b = np.interp(s, prof[:, 0], prof[:, 1]), np.interp(s, prof[:, 0], prof[:, 2])
        for dist, cap in ((s, self.caps[0]), (self.length - s, self.caps[1])):
            x = np.clip(dist / cap, 0.0, 1.0)
            f = np.sqrt(1.0 - (1.0 - x) ** 2)
            a, b = a * f, b * f
        return a, b

    def vertices(self) -> np.ndarray:  # (n m + 2, 3)
        a, b = self.radii()
        e1, e2 = np.asarray(self.e1, dtype=np.float64), np.asarray(self.e2, dtype=np.float64)
        c = np.asarray(self.start, dtype=np.float64) + self.ring_s[:, None] * self.axis  # (m, 3)
        th = self.thetas
        ring = (a[:, None, None] * np.cos(th)[None, :, None] * e1 + b[:, None, None] * np.sin(th)[None, :, None] * e2)
        rings = (c[:, None, :] + ring).reshape(-1, 3)
        return np.concatenate([rings, [self.start, self.end]]).astype(np.float64)

    def faces_and_uvs(self, base: int, vt_base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Triangles (vertex ids), their corners' vt ids, and the vt coordinates of this tube."""
        n, m = self.n, self.m
        u0, v0, u1, v1 = self.uv_rect
        i, k = np.meshgrid(np.arange(m - 1), np.arange(n), indexing="ij")
        i, k = i.ravel(), k.ravel()
        vid = lambda r, c: base + r * n + c % n  # noqa: E731
        tid = lambda r, c: vt_base + r * (n + 1) + c  # noqa: E731  (n + 1 columns: the seam is split)
        quads_v = [np.stack([vid(i, k), vid(i, k + 1), vid(i + 1, k + 1)], 1),
                   np.stack([vid(i, k), vid(i + 1, k + 1), vid(i + 1, k)], 1)]
        quads_t = [np.stack([tid(i, k), tid(i, k + 1), tid(i + 1, k + 1)], 1),
                   np.stack([tid(i, k), tid(i + 1, k + 1), tid(i + 1, k)], 1)]
        k = np.arange(n)
        p0, p1 = base + n * m, base + n * m + 1
        pole_t0, pole_t1 = vt_base + m * (n + 1) + k, vt_base + m * (n + 1) + n + k
        cap_v = [np.stack([np.full(n, p0), vid(0, k + 1), vid(0, k)], 1),
                 np.stack([np.full(n, p1), vid(m - 1, k), vid(m - 1, k + 1)], 1)]
        cap_t = [np.stack([pole_t0, tid(0, k + 1), tid(0, k)], 1),
                 np.stack([pole_t1, tid(m - 1, k), tid(m - 1, k + 1)], 1)]
        faces = np.concatenate(cap_v[:1] + quads_v + cap_v[1:])
        ft = np.concatenate(cap_t[:1] + quads_t + cap_t[1:])
        # vt: ring grid (m rows x n + 1 columns), then n start-pole and n end-pole coordinates
        rr, cc = np.meshgrid(np.arange(m), np.arange(n + 1), indexing="ij")
        grid = np.stack([u0 + (u1 - u0) * cc / n, v0 + (v1 - v0) * (rr + 1) / (m + 1)], -1).reshape(-1, 2)
        mid = u0 + (u1 - u0) * (np.arange(n) + 0.5) / n
        poles = np.concatenate([np.stack([mid, np.full(n, v0)], 1), np.stack([mid, np.full(n, v1)], 1)])
        return faces, ft, np.concatenate([grid, poles])

    def regress(self, p: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
        """Convex weights over ring vertices whose weighted mean is exactly p (p inside the tube)."""
        rel = p - np.asarray(self.start, dtype=np.float64)
        s = float(rel @ self.axis)
        rs = self.ring_s
        i = int(np.clip(np.searchsorted(rs, s) - 1, 0, self.m - 2))
        alpha = (s - rs[i]) / (rs[i + 1] - rs[i])
        assert 0.0 <= alpha <= 1.0, (self.name, p)
        uw = np.array([rel @ np.asarray(self.e1), rel @ np.asarray(self.e2)])
        a, b = self.radii()
        idx, w = [], []
        for ring, share in ((i, 1.0 - alpha), (i + 1, alpha)):
            poly = np.stack([a[ring] * np.cos(self.thetas), b[ring] * np.sin(self.thetas)], 1)  # (n, 2)
            wr = np.full(self.n, 1.0 / self.n)
            if np.linalg.norm(uw) > 1e-12:
                edge = np.roll(poly, -1, 0) - poly
                # poly_k + beta edge_k = tau uw  ->  [edge_k, -uw] (beta, tau) = -poly_k
                mat = np.stack([edge, np.broadcast_to(-uw, edge.shape)], -1)  # (n, 2, 2)
                det = np.linalg.det(mat)
                sol = np.linalg.solve(np.where(np.abs(det)[:, None, None] > 1e-15, mat, np.eye(2)), -poly[..., None])[..., 0]
                beta, tau = sol[:, 0], sol[:, 1]
                ok = (np.abs(det) > 1e-15) & (beta >= -1e-12) & (beta <= 1 + 1e-12) & (tau > 0)
                kk = int(np.flatnonzero(ok)[np.argmin(tau[ok])]) if ok.any() else -1
                lam = 1.0 / tau[kk]
                assert kk >= 0 and lam <= 1.0, (self.name, p, lam)  # p lies inside the ring polygon
                wr *= 1.0 - lam
                wr[kk] += lam * (1.0 - beta[kk])
                wr[(kk + 1) % self.n] += lam * beta[kk]
            idx.append(base + ring * self.n + np.arange(self.n))
            w.append(share * wr)
        return np.concatenate(idx), np.concatenate(w)


def _tubes() -> list[_Tube]:
    X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    nY = (0.0, -1.0, 0.0)
    # profiles: (s from start, a along e1, b along e2)
    torso = _Tube("torso", (0, 0.78, 0), (0, 1.77, 0), Z, X, 59, 59, [  # a: depth (z), b: half width (x)
        (0.00, 0.10, 0.15), (0.14, 0.11, 0.17), (0.27, 0.10, 0.15), (0.42, 0.11, 0.16), (0.57, 0.11, 0.18),
        (0.65, 0.09, 0.19), (0.70, 0.06, 0.06), (0.75, 0.06, 0.055), (0.80, 0.09, 0.075), (0.87, 0.10, 0.08),
        (0.94, 0.085, 0.07), (0.99, 0.08, 0.06)], (0.05, 0.06), np.pi,  # seam at the back (-Z)
        ["pelvis", "spine1", "spine2", "spine3", "neck", "head", "jaw", "left_eye_smplhf", "right_eye_smplhf",
         "left_collar", "right_collar"], (0.01, 0.01, 0.40, 0.70))
    leg = _Tube("leg.L", (0.09, 1.00, 0), (0.09, 0.03, 0), X, Z, 24, 56, [
        (0.0, 0.085, 0.085), (0.25, 0.075, 0.075), (0.50, 0.055, 0.055), (0.65, 0.06, 0.06), (0.97, 0.04, 0.04)],
        (0.05, 0.03), -np.pi / 2, ["pelvis", "left_hip", "left_knee", "left_ankle"], (0.41, 0.01, 0.58, 0.70))
    foot = _Tube("foot.L", (0.10, 0.04, -0.08), (0.10, 0.04, 0.20), X, Y, 16, 20, [
        (0.0, 0.04, 0.04), (0.15, 0.05, 0.04), (0.28, 0.045, 0.02)], (0.04, 0.03), -np.pi / 2,
        ["left_ankle", "left_foot"], (0.41, 0.72, 0.62, 0.99))
    arm = _Tube("arm.L", (0.10, 1.43, -0.01), (0.74, 1.43, -0.01), Y, Z, 20, 48, [
        (0.0, 0.05, 0.05), (0.35, 0.038, 0.038), (0.64, 0.03, 0.03)], (0.04, 0.02), np.pi,
        ["left_collar", "left_shoulder", "left_elbow", "left_wrist"], (0.77, 0.01, 0.875, 0.70))
    hand = _Tube("hand.L", (0.66, 1.43, -0.005), (0.93, 1.43, -0.005), Z, nY, 24, 36, [  # a: width, b: thickness
        (0.0, 0.04, 0.013), (0.10, 0.05, 0.014), (0.27, 0.05, 0.011)], (0.05, 0.04), np.pi,
        ["left_wrist"] + [f"left_{f}{k}" for f in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)],
        (0.01, 0.72, 0.20, 0.99))
    return [torso, leg, leg.mirrored("leg.R", (0.59, 0.01, 0.76, 0.70)), foot,
            foot.mirrored("foot.R", (0.63, 0.72, 0.84, 0.99)), arm, arm.mirrored("arm.R", (0.885, 0.01, 0.99, 0.70)),
            hand, hand.mirrored("hand.R", (0.21, 0.72, 0.40, 0.99))]


# which tube regresses each joint
_JOINT_TUBE = {"pelvis": "torso", "spine1": "torso", "spine2": "torso", "spine3": "torso", "neck": "torso",
               "head": "torso", "jaw": "torso"}
for _s, _t in (("left", "L"), ("right", "R")):
    _JOINT_TUBE.update({f"{_s}_eye_smplhf": "torso", f"{_s}_collar": "torso", f"{_s}_hip": f"leg.{_t}",
                        f"{_s}_knee": f"leg.{_t}", f"{_s}_ankle": f"leg.{_t}", f"{_s}_foot": f"foot.{_t}",
                        f"{_s}_shoulder": f"arm.{_t}", f"{_s}_elbow": f"arm.{_t}", f"{_s}_wrist": f"arm.{_t}"})
    _JOINT_TUBE.update({n: f"hand.{_t}" for n in JOINT_NAMES if n.startswith(_s) and n[len(_s) + 1:-1] in
                        ("index", "middle", "pinky", "ring", "thumb")})


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (N, 3), (B, 3), (B, 3) -> (N, B)
    ab = b - a
    t = np.clip(((p[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)[None], 0, 1)
    return np.linalg.norm(p[:, None] - (a[None] + t[..., None] * ab[None]), axis=-1)


def build_synthetic_smplx(seed: int = 0, shape_dims: int = 20) -> dict[str, np.ndarray]:
    """The arrays of a synthetic SMPLX_<GENDER>.npz (with the UV map as 'vt'/'ft'), soles at y = SOLE_Y."""
    rng = np.random.default_rng(seed)
    tubes = _tubes()
    joints_design = _design_joints()
    tips = _bone_tips(joints_design)
    verts, faces, ft, vts, base_of, owner = [], [], [], [], {}, []
    base = vt_base = 0
    for ti, t in enumerate(tubes):
        v = t.vertices()
        f, tf, uv = t.faces_and_uvs(base, vt_base)
        base_of[t.name] = base
        verts.append(v)
        faces.append(f)
        ft.append(tf)
        vts.append(uv)
        owner.append(np.full(len(v), ti))
        base += len(v)
        vt_base += len(uv)
    v = np.concatenate(verts)
    f = np.concatenate(faces)
    ft = np.concatenate(ft)
    vt = np.concatenate(vts)
    owner = np.concatenate(owner)
    assert len(v) == NUM_VERTS, len(v)

    # nose: push the head's front out around y = 1.615 (vertices only: the regressor below uses ring ids)
    torso = tubes[0]
    tv = slice(0, torso.n * torso.m)
    ang = np.arctan2(v[tv, 0], v[tv, 2])  # 0 at +Z
    bump = 0.025 * np.exp(-((v[tv, 1] - 1.615) / 0.015) ** 2) * np.exp(-(ang / 0.2) ** 2)
    v[tv, 2] += bump

    # six hidden faces of the torso's bottom pole fan (inside the legs): F = 20,908 as in SMPL-X
    drop = np.arange(0, 60, 10)
    keep = np.ones(len(f), dtype=bool)
    keep[drop] = False  # the torso's faces come first, starting with its start-pole fan
    f, ft = f[keep], ft[keep]
    assert len(f) == NUM_FACES, len(f)
    assert np.isin(np.arange(NUM_VERTS), f).all()

    # joint regressor: exact convex combinations of ring vertices
    jreg = np.zeros((NUM_JOINTS, NUM_VERTS))
    by_name = {t.name: t for t in tubes}
    for j, name in enumerate(JOINT_NAMES):
        tube = by_name[_JOINT_TUBE[name]]
        idx, w = tube.regress(joints_design[name], base_of[tube.name])
        np.add.at(jreg[j], idx, w)

    # skin weights: soft-min of the distance to each bone segment of the vertex's tube, top 4
    weights = np.zeros((NUM_VERTS, NUM_JOINTS))
    for ti, t in enumerate(tubes):
        sel = np.flatnonzero(owner == ti)
        bones = [JOINT_NAMES.index(b) for b in t.bones]
        heads = np.stack([joints_design[JOINT_NAMES[b]] for b in bones])
        ends = np.stack([tips[JOINT_NAMES[b]] for b in bones])
        d = _segment_distance(v[sel], heads, ends)  # (N, B)
        w = np.exp(-(d - d.min(1, keepdims=True)) / 0.012)
        if w.shape[1] > 4:  # keep the 4 largest
            np.put_along_axis(w, np.argsort(-w, axis=1)[:, 4:], 0.0, axis=1)
        w[w < 1e-3] = 0.0
        weights[np.ix_(sel, bones)] = w / w.sum(1, keepdims=True)

    # vertex ids that smplx reads (smplx.vertex_ids['smplx']): put them where their names say
    from smplx.vertex_ids import vertex_ids

    ids = vertex_ids["smplx"]
    j = joints_design
    targets: dict[str, tuple[str, np.ndarray]] = {
        "nose": ("torso", np.array([0.0, 1.615, 0.2])),
        "leye": ("torso", j["left_eye_smplhf"] + [0, 0, 0.04]), "reye": ("torso", j["right_eye_smplhf"] + [0, 0, 0.04]),
        "lear": ("torso", np.array([0.1, 1.61, 0.0])), "rear": ("torso", np.array([-0.1, 1.61, 0.0])),
    }
    for s, t, sx in (("l", "L", 1.0), ("r", "R", -1.0)):
        side = "left" if s == "l" else "right"
        for finger in ("index", "middle", "ring", "pinky"):
            targets[s + finger] = (f"hand.{t}", j[f"{side}_{finger}3"] + [0.08 * sx, 0, 0])
        targets[s + "thumb"] = (f"hand.{t}", j[f"{side}_thumb3"] + [0.03 * sx, 0, 0.03])
        targets[t + "BigToe"] = (f"foot.{t}", np.array([0.06 * sx, 0.02, 0.22]))
        targets[t + "SmallToe"] = (f"foot.{t}", np.array([0.14 * sx, 0.02, 0.19]))
        targets[t + "Heel"] = (f"foot.{t}", np.array([0.10 * sx, 0.0, -0.10]))
    assert set(targets) == set(ids)
    tube_index = {t.name: i for i, t in enumerate(tubes)}
    order = np.arange(NUM_VERTS)  # order[new] = old
    pos = np.arange(NUM_VERTS)  # pos[old] = new
    used: set[int] = set()
    for key in sorted(targets):
        tube_name, p = targets[key]
        cand = np.flatnonzero(owner == tube_index[tube_name])
        dist = np.linalg.norm(v[cand] - p, axis=1)
        dist[np.isin(cand, list(used))] = np.inf
        old = int(cand[np.argmin(dist)])
        used.add(old)
        new = ids[key]
        other = order[new]  # swap `old` into slot `new`
        order[new], order[pos[old]] = old, other
        pos[other], pos[old] = pos[old], new
    assert (order[pos] == np.arange(NUM_VERTS)).all()
    v, weights, jreg = v[order], weights[order], jreg[:, order]
    f = pos[f]

    v = v + [0.0, SOLE_Y, 0.0]
    shapedirs = np.zeros((NUM_VERTS, 3, shape_dims), dtype=np.float32)
    # smooth small shape / expression directions: scale about the pelvis, widen, lengthen, ...
    centred = (v - v.mean(0)).astype(np.float32)
    expr0 = 10 if shape_dims < 400 else 300
    for c in range(10):
        shapedirs[:, :, c] = 0.01 * centred * rng.normal(size=3).astype(np.float32)
        face = (v[:, 1] - SOLE_Y > 1.5).astype(np.float32)[:, None]
        shapedirs[:, :, expr0 + c] = 0.002 * face * rng.normal(size=3).astype(np.float32)
    posedirs = np.zeros((NUM_VERTS, 3, (NUM_JOINTS - 1) * 9), dtype=np.float32)

    def orthonormal(n: int) -> np.ndarray:
        q, r = np.linalg.qr(rng.normal(size=(n, n)))
        return q * np.sign(np.diag(r))

    centroids = v[f].mean(1)
    front_face = np.flatnonzero((centroids[:, 1] - SOLE_Y > 1.52) & (centroids[:, 2] > 0.04))
    assert len(front_face) > 51

    def bary(*shape: int) -> np.ndarray:
        return rng.dirichlet(np.ones(3), size=shape)

    kintree = np.stack([np.array(PARENTS, dtype=np.int64), np.arange(NUM_JOINTS, dtype=np.int64)])
    kintree[0, 0] = 4294967295  # as in the SMPL family's files (an unsigned -1)
    return {
        "v_template": v.astype(np.float64), "f": f.astype(np.uint32), "J_regressor": jreg,
        "kintree_table": kintree, "weights": weights, "shapedirs": shapedirs, "posedirs": posedirs,
        "hands_componentsl": orthonormal(45), "hands_componentsr": orthonormal(45),
        "hands_meanl": 0.1 * rng.normal(size=45), "hands_meanr": 0.1 * rng.normal(size=45),
        "hands_coeffsl": 0.3 * rng.normal(size=(16, 45)), "hands_coeffsr": 0.3 * rng.normal(size=(16, 45)),
        "lmk_faces_idx": rng.choice(front_face, 51, replace=False).astype(np.int64),
        "lmk_bary_coords": bary(51),
        "dynamic_lmk_faces_idx": rng.choice(front_face, (79, 17)).astype(np.int64),
        "dynamic_lmk_bary_coords": bary(79, 17),
        "vt": vt.astype(np.float64), "ft": ft.astype(np.uint32),
        "joint2num": np.array({n: i for i, n in enumerate(JOINT_NAMES)}, dtype=object),
        "part2num": np.array({"global": 0, "head": 1, "leftEye": 2, "rightEye": 3, "body": 4}, dtype=object),
    }


def write_obj(path: Path, v: np.ndarray, vt: np.ndarray, f: np.ndarray, ft: np.ndarray) -> None:
    lines = ["# synthetic SMPL-X UV map (tests/smplx_synthetic.py)"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in v.tolist()]
    lines += [f"vt {u:.6f} {w:.6f}" for u, w in vt.tolist()]
    lines += [f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
              for (a, b, c), (ta, tb, tc) in zip(f.tolist(), ft.tolist())]
    Path(path).write_text("\n".join(lines) + "\n")


def write_synthetic_smplx(folder, gender: str = "neutral", seed: int = 0, shape_dims: int = 20,
                          flat: bool = False) -> tuple[Path, Path]:
    """Write SMPLX_<GENDER>.npz (under folder/smplx/, or in folder itself when `flat`) and folder/smplx_uv.obj.

    shape_dims: 20 (SMPL-X v1.0: 10 shape + 10 expression components) or 400 (v1.1: 300 + 100).
    Returns (npz path, obj path).
    """
    if shape_dims not in (20, 400):
        raise ValueError(f"shape_dims must be 20 or 400, got {shape_dims}")
    folder = Path(folder)
    model_dir = folder if flat else folder / "smplx"
    model_dir.mkdir(parents=True, exist_ok=True)
    arrays = build_synthetic_smplx(seed, shape_dims)
    npz = model_dir / f"SMPLX_{gender.upper()}.npz"
    np.savez_compressed(npz, **arrays)
    obj = folder / "smplx_uv.obj"
    write_obj(obj, arrays["v_template"], arrays["vt"], arrays["f"].astype(np.int64), arrays["ft"].astype(np.int64))
    return npz, obj
