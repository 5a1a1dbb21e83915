"""A random rigged avatar (header, arrays per bridge.wire.protocol.AVATAR_ARRAYS) for tests and benchmarks.
numpy only: the Blender tests and benchmarks/blender_import.py import it from the repository."""
from __future__ import annotations

import numpy as np

_ANNY_NONZERO = np.array([2372, 1227, 1632, 1150, 1114, 1020, 1101, 614], np.float64)


def synthetic_avatar(n: int, joints: int = 104, k: int = 8, seed: int = 0,
                     skin: str = "dense") -> tuple[dict, dict[str, np.ndarray]]:
    """A random rigged avatar (header, arrays) per AVATAR_ARRAYS: a chain-and-branches skeleton standing on
    z=0 with Gaussians spread around its bones. For tests and benchmarks.

    skin="dense": all k skin weights nonzero, the joints spread over the skeleton, Gaussians in random
    order (the worst case for the import). skin="sparse": like the backend's avatars: Gaussians in runs
    of 10 (one UV texel) that share a skin row, texels grouped by body region (owner joint), 1-8 nonzero
    weights per row as often as in the anny layout (3.8 on average; zeros pad the row to k) on joints
    near the owner in the skeleton."""
    if skin not in ("dense", "sparse"):
        raise ValueError(f"skin must be 'dense' or 'sparse', got {skin!r}")
    rng = np.random.default_rng(seed)
    parents = np.array([-1] + [int(rng.integers(max(0, j - 4), j)) for j in range(1, joints)], np.int32)
    rest = np.tile(np.eye(4, dtype=np.float32), (joints, 1, 1))
    heads = np.zeros((joints, 3), np.float32)
    heads[0] = (0.0, 0.0, 1.0)
    for j in range(1, joints):
        heads[j] = heads[parents[j]] + rng.normal(0, 0.05, 3).astype(np.float32) + (0, 0, 0.02)
        rest[j, :3, 3] = heads[j]
    rest[0, :3, 3] = heads[0]
    # bone frames: +Y along the bone (up the body), X/Z horizontal; a per-joint yaw for a non-trivial roll
    for j in range(joints):
        a = rng.uniform(-np.pi, np.pi)
        y = np.array([0.0, 0.0, 1.0])
        x = np.array([np.cos(a), np.sin(a), 0.0])
        z = np.cross(x, y)
        rest[j, :3, :3] = np.stack([x, y, z], axis=1)
    tails = heads + rest[:, :3, 1] * 0.05
    owner = rng.integers(0, joints, n)
    means = (heads[owner] + rng.normal(0, 0.03, (n, 3))).astype(np.float32)
    patterns = np.stack([rng.choice(joints - 1, k - 1, replace=False) + 1 for _ in range(64)])  # (64, k-1)
    offsets = np.concatenate([np.zeros((n, 1), np.int64), patterns[rng.integers(0, 64, n)]], axis=1)
    idx = (owner[:, None] + offsets) % joints  # (n, k) distinct joints, the owner first
    w = rng.random((n, k)).astype(np.float32) + np.eye(k, dtype=np.float32)[0] * 2
    w /= w.sum(1, keepdims=True)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    if skin == "sparse":
        if k > joints:
            raise ValueError(f"skin='sparse' needs k <= joints, got k={k}, joints={joints}")
        rs = np.random.default_rng([seed, 1])
        per_texel = 10
        texels = -(-n // per_texel)
        texel_owner = np.sort(rs.integers(0, joints, texels))
        owner = np.repeat(texel_owner, per_texel)[:n]
        means = (heads[owner] + rs.normal(0, 0.03, (n, 3))).astype(np.float32)
        children: list[list[int]] = [[] for _ in range(joints)]
        for j in range(1, joints):
            children[parents[j]].append(j)
        near = np.empty((joints, k), np.int64)  # each joint and its nearest joints in the skeleton
        for j in range(joints):
            seen, frontier = [j], [j]
            while len(seen) < k:
                frontier = [m for f in frontier for m in ([parents[f]] if parents[f] >= 0 else []) + children[f]
                            if m not in seen]
                seen += frontier
            near[j] = seen[:k]
        nonzero = np.minimum(rs.choice(np.arange(1, 9), texels, p=_ANNY_NONZERO / _ANNY_NONZERO.sum()), k)
        tw = rs.gamma(1.0, size=(texels, k))
        tw[np.arange(k)[None, :] >= nonzero[:, None]] = 0.0
        tw = -np.sort(-tw, axis=1)
        tw /= tw.sum(1, keepdims=True)
        idx = np.repeat(near[texel_owner], per_texel, axis=0)[:n]
        w = np.repeat(tw.astype(np.float32), per_texel, axis=0)[:n]
    arrays = {
        "means": means, "rotations": q,
        "log_scales": np.log(rng.uniform(0.002, 0.02, (n, 3))).astype(np.float32),
        "opacity_logits": rng.normal(0, 2, n).astype(np.float32),
        "sh": rng.normal(0, 0.5, (n, 1, 3)).astype(np.float32),
        "skin_indices": idx.astype(np.uint16), "skin_weights": w,
        "joint_parents": parents, "rest_matrices": rest.astype(np.float32), "joint_tails": tails.astype(np.float32),
    }
    header = {"avatar_id": f"synthetic{seed}", "joint_names": [f"joint{j:03d}" for j in range(joints)],
              "meta": {"generator": "synthetic"}}
    return header, arrays
