"""The clip record: one person seen in a short clip, the unit every training stage reads.

Both sources write it: the synthetic-people generator (`training/data/synthetic.py`, exact ground truth)
and real video/photo ingest (`training/data/ingest.py`, fitted body). One file per clip,
`<clip_id>.clip.safetensors`, written atomically (temporary file, then rename).

Conventions (docs/ARCHITECTURE.md): metres, right-handed Z-up world = the template's canonical space;
cameras in the OpenCV convention of `backend/render/camera.py` (world-to-camera 4x4, intrinsics 3x3 in
pixels); body pose per frame as local joint rotations relative to the rest pose (wxyz, the template's
joint order, exactly what `backend.avatar.skinning.forward_kinematics` takes) plus a root translation.

Arrays (F frames of H x W, J template joints, P keypoints, S shape parameters):

    frames            (F, H, W, 3) uint8   sRGB
    masks             (F, H, W)    uint8   person coverage, 0 background .. 255 person
    viewmats          (F, 4, 4)    float32 world-to-camera (OpenCV: x right, y down, z forward)
    intrinsics        (F, 3, 3)    float32 pixels
    joint_rotations   (F, J, 4)    float32 wxyz, unit, local rotation relative to the rest pose
    root_translation  (F, 3)       float32 metres
    keypoints         (F, P, 3)    float32 x, y in pixels and a confidence in [0, 1] (0: not seen)
    shape             (S,)         float32 body shape parameters, names in meta["shape_names"]

Optional named extras (`extras`), e.g. from the synthetic generator:

    visibility        (R, R)       float32 fraction of frames in which each texel's anchor was seen
    appearance        (A, R, R)    float32 ground-truth texel map (channel names in meta["appearance_channels"])

Metadata (`meta`, JSON): captions (list[str], may be empty), source ("synthetic", "video", "photo"),
licence, template ("anny"), keypoint_format (e.g. "template-joints", "mediapipe-pose-33"), shape_names,
fps, person_id, split ("train", "val", "test", "heldout-combo", ...), attributes (dict, synthetic only).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

FORMAT = "genlca-clip"
VERSION = 1
SUFFIX = ".clip.safetensors"

_CORE = ("frames", "masks", "viewmats", "intrinsics", "joint_rotations", "root_translation", "keypoints", "shape")
_DTYPES = {"frames": np.uint8, "masks": np.uint8, "viewmats": np.float32, "intrinsics": np.float32,
           "joint_rotations": np.float32, "root_translation": np.float32, "keypoints": np.float32,
           "shape": np.float32}


class RecordError(ValueError):
    """A clip record that cannot be used; the message names the file (when known) and the field."""


@dataclasses.dataclass
class ClipRecord:
    clip_id: str
    frames: np.ndarray
    masks: np.ndarray
    viewmats: np.ndarray
    intrinsics: np.ndarray
    joint_rotations: np.ndarray
    root_translation: np.ndarray
    keypoints: np.ndarray
    shape: np.ndarray
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _CORE:
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=_DTYPES[name]))
        self.extras = {k: np.ascontiguousarray(v) for k, v in self.extras.items()}
        self.validate()

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:  # (width, height)
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    @property
    def captions(self) -> list[str]:
        return list(self.meta.get("captions", []))

    def validate(self, where: str = "") -> None:
        """Shapes consistent, values finite, quaternions unit; raises RecordError naming the field."""
        at = f"{where}: " if where else ""
        if not self.clip_id or "/" in self.clip_id or self.clip_id.startswith("."):
            raise RecordError(f"{at}clip_id must be a plain non-empty name, got {self.clip_id!r}")
        f = self.frames.shape[0] if self.frames.ndim == 4 else -1
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or f < 1:
            raise RecordError(f"{at}frames: expected (F>=1, H, W, 3) uint8, got {self.frames.shape}")
        h, w = self.frames.shape[1:3]
        j = self.joint_rotations.shape[1] if self.joint_rotations.ndim == 3 else -1
        p = self.keypoints.shape[1] if self.keypoints.ndim == 3 else -1
        want = {"masks": (f, h, w), "viewmats": (f, 4, 4), "intrinsics": (f, 3, 3), "joint_rotations": (f, j, 4),
                "root_translation": (f, 3), "keypoints": (f, p, 3)}
        for name, shape in want.items():
            if getattr(self, name).shape != shape or -1 in shape:
                raise RecordError(f"{at}{name}: expected shape {shape} for {f} frames of {w}x{h}, "
                                  f"got {getattr(self, name).shape}")
        if self.shape.ndim != 1:
            raise RecordError(f"{at}shape: expected (S,), got {self.shape.shape}")
        for name in _CORE[2:]:
            if not np.isfinite(getattr(self, name)).all():
                raise RecordError(f"{at}{name}: contains NaN or inf")
        norms = np.linalg.norm(self.joint_rotations, axis=-1)
        if np.abs(norms - 1.0).max(initial=0.0) > 1e-3:
            raise RecordError(f"{at}joint_rotations: quaternions must be unit (norms {norms.min():.4g}..{norms.max():.4g})")
        if np.abs(self.viewmats[:, 3] - np.array([0, 0, 0, 1], np.float32)).max() > 1e-5:
            raise RecordError(f"{at}viewmats: last row must be (0, 0, 0, 1)")
        conf = self.keypoints[..., 2]
        if conf.size and (conf.min() < 0 or conf.max() > 1):
            raise RecordError(f"{at}keypoints: confidence must be in [0, 1]")
        for name, arr in self.extras.items():
            if name in _CORE or not name.replace("_", "").isalnum():
                raise RecordError(f"{at}extras: bad name {name!r}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise RecordError(f"{at}extras.{name}: contains NaN or inf")
        try:
            json.dumps(self.meta)
        except TypeError as exc:
            raise RecordError(f"{at}meta must be JSON-serialisable: {exc}") from None


def record_path(folder: str | os.PathLike, clip_id: str) -> Path:
    return Path(folder) / f"{clip_id}{SUFFIX}"


def save_record(record: ClipRecord, folder: str | os.PathLike) -> Path:
    """Write `<folder>/<clip_id>.clip.safetensors` atomically; returns the path."""
    from backend.avatar.template import save_safetensors_atomic

    record.validate()
    path = record_path(folder, record.clip_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(record, name) for name in _CORE}
    arrays.update({f"extras.{k}": v for k, v in record.extras.items()})
    metadata = {"format": FORMAT, "version": str(VERSION), "clip_id": record.clip_id, "meta": json.dumps(record.meta)}
    save_safetensors_atomic(arrays, path, metadata)
    return path


def load_record(path: str | os.PathLike, *, frames: bool = True) -> ClipRecord:
    """Read and check a clip record. `frames=False` skips the images (frames and masks come back with
    zero height and width) for the stages that need only poses, cameras and metadata."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise RecordError(f"{path}: not a clip record (format {header.get('format')!r}, expected {FORMAT!r})")
            if header.get("version") != str(VERSION):
                raise RecordError(f"{path}: clip record version {header.get('version')!r}, this code reads {VERSION}")
            keys = set(f.keys())
            missing = [k for k in _CORE if k not in keys]
            if missing:
                raise RecordError(f"{path}: missing arrays {missing}")
            arrays = {k: f.get_tensor(k) for k in _CORE if frames or k not in ("frames", "masks")}
            extras = {k[len("extras."):]: f.get_tensor(k) for k in keys if k.startswith("extras.")}
    except RecordError:
        raise
    except Exception as exc:  # safetensors raises its own types for truncated or foreign files
        raise RecordError(f"{path}: cannot read the clip record ({exc})") from None
    if not frames:
        n = arrays["viewmats"].shape[0]
        arrays["frames"] = np.zeros((n, 0, 0, 3), np.uint8)
        arrays["masks"] = np.zeros((n, 0, 0), np.uint8)
    try:
        meta = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: meta is not valid JSON ({exc})") from None
    try:
        return ClipRecord(clip_id=header.get("clip_id", ""), meta=meta, extras=extras, **arrays)
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None


def iter_record_paths(folder: str | os.PathLike) -> Iterator[Path]:
    """The clip records in a folder (recursively), in sorted order; temporary files are skipped."""
    yield from sorted(p for p in Path(folder).rglob(f"*{SUFFIX}") if p.is_file())
