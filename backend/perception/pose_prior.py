"""A Gaussian over the body fitter's joint rotations, learnt from motion capture.

The fitter moves K joints (`fitting.FIT_JOINTS`), each by an axis-angle vector in its bone's rest frame.
Stacked, one frame's pose is a vector p of 3K numbers; the prior is N(mean, cov + ridge I) over p, and the
fitter pays `(p - mean)^T precision (p - mean) / 3K`. A joint the frame gives no evidence for then goes to
the Gaussian's conditional mean given the joints it does see (legs cut off by the frame move with the
arms and the torso as they did in the capture), and joints it sees are pulled only weakly.

The shipped prior (`data/pose_prior.json`) is built by `python -m training.data.pose_prior` from the
motion the synthetic people are made with (CMU 01_01.bvh frames 0-1649 and the MPFB2 walk cycle); frames
1650 on of the BVH are held out for measuring it (`training/data/fit_eval.py`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "pose_prior.json"


@dataclasses.dataclass
class PosePrior:
    joints: tuple[str, ...]   # K joint names, the order of the pose vector (3 numbers each)
    mean: np.ndarray          # (3K,) axis-angle, radians
    precision: np.ndarray     # (3K, 3K) inverse of (covariance + ridge I)
    ridge: float              # radians^2 added to the covariance's diagonal
    frames: int               # motion frames it was learnt from
    source: str

    def __post_init__(self) -> None:
        d = 3 * len(self.joints)
        if self.mean.shape != (d,) or self.precision.shape != (d, d):
            raise ValueError(f"expected mean ({d},) and precision ({d}, {d}) for {len(self.joints)} joints, "
                             f"got {self.mean.shape} and {self.precision.shape}")

    def conditional_mean(self, seen: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The mean of the unseen entries given `values` at the seen ones: seen (3K,) bool, values (3K,) ->
        (3K,) with the seen entries kept (what the fitter's prior term converges to with no other evidence)."""
        p, mu = self.precision, self.mean
        u = ~seen
        out = np.array(values, np.float64)
        # Gaussian conditioning in precision form: mu_u - P_uu^-1 P_us (x_s - mu_s)
        out[u] = mu[u] - np.linalg.solve(p[np.ix_(u, u)], p[np.ix_(u, seen)] @ (out[seen] - mu[seen]))
        return out


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(..., 4) wxyz unit quaternions -> (..., 3) axis-angle (the rotation of the shorter way round)."""
    q = np.asarray(q, np.float64)
    q = np.where(q[..., :1] < 0, -q, q)
    s = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    return np.where(s > 1e-9, q[..., 1:] * angle / np.maximum(s, 1e-12), 2.0 * q[..., 1:])


def build_pose_prior(joint_rotations: np.ndarray, joint_names, joints, ridge: float = 0.01,
                     source: str = "") -> PosePrior:
    """joint_rotations (N, J, 4) local wxyz of N motion frames; joint_names: the template's J names;
    joints: the K names the prior is over."""
    idx = [list(joint_names).index(n) for n in joints]
    x = quat_to_axis_angle(np.asarray(joint_rotations)[:, idx]).reshape(len(joint_rotations), -1)  # (N, 3K)
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False) + ridge * np.eye(x.shape[1])
    return PosePrior(tuple(joints), mean, np.linalg.inv(cov), ridge, len(x), source)


def save_pose_prior(prior: PosePrior, path: str | Path) -> Path:
    from bridge.files.atomic import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": "genlca-pose-prior", "version": 1, "joints": list(prior.joints),
           "mean": [round(float(v), 6) for v in prior.mean],
           "precision": [[round(float(v), 5) for v in row] for row in prior.precision],
           "ridge": prior.ridge, "frames": prior.frames, "source": prior.source}
    write_atomic(path, (json.dumps(doc, separators=(",", ":")) + "\n").encode())
    return path


def load_pose_prior(path: str | Path = DEFAULT_PATH) -> PosePrior:
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != "genlca-pose-prior":
        raise ValueError(f"{path}: expected format 'genlca-pose-prior', got {doc.get('format')!r}")
    p = np.asarray(doc["precision"], np.float64)
    return PosePrior(tuple(doc["joints"]), np.asarray(doc["mean"], np.float64), 0.5 * (p + p.T),
                     float(doc["ridge"]), int(doc["frames"]), doc.get("source", ""))
