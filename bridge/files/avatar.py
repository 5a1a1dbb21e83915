"""Avatar files without torch: the GenLCA avatar `.safetensors` and the standard 3DGS `.ply`, in numpy.

The Blender add-on opens and re-exports avatars with no backend running (a file from a colleague, a splat
from another tool), and cannot import torch or the `safetensors` package, so both formats are read and
written here with numpy alone. The backend (`backend/avatar/avatar_file.py`, `backend/avatar/ply.py`)
writes the same bytes; tests hold the two sides against each other.

    avatar = read_avatar_file(path)        # .safetensors (rigged) or .ply (splats, unrigged)
    avatar.arrays                          # the bridge.wire.protocol.AVATAR_ARRAYS names (skin/skeleton only if rigged)
    write_ply(path, avatar.arrays, y_up=True)   # for viewers that expect Y-up

Axes: GenLCA is metres, right-handed, Z-up (Blender's world). The PLY header says so in a comment
(`comment genlca axes=z-up units=m`); `y_up=True` rotates the splats into the Y-up convention of most
splat viewers (x, y, z) -> (x, z, -y), turning the orientations and every SH band with them, and the
header then says `axes=y-up`. Reading a PLY whose header says `axes=y-up` turns it back.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from bridge.files.atomic import write_atomic

AVATAR_FORMAT = "genlca-avatar"
AVATAR_VERSION = 1
PLY_PROPERTIES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                  + [f"f_rest_{i}" for i in range(45)]
                  + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
PLY_AXES_COMMENT = "comment genlca axes={axes} units=m"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
GAUSSIAN_KEYS = ("means", "rotations", "log_scales", "opacity_logits", "sh", "skin_indices", "skin_weights")
SKELETON_KEYS = ("joint_parents", "rest_matrices", "joint_tails")
# Z-up (Blender, GenLCA) -> Y-up (most splat viewers, glTF): x stays, y <- z, z <- -y.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

_ST_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
_ST_NAMES = {np.dtype(v).str: k for k, v in _ST_DTYPES.items()}


class AvatarFileError(ValueError):
    """A file that cannot be used as an avatar; the message names the file and the problem."""


@dataclasses.dataclass
class AvatarFile:
    arrays: dict[str, np.ndarray]   # AVATAR_ARRAYS names; skin_* and skeleton only when rigged
    joint_names: list[str]
    meta: dict[str, Any]

    @property
    def rigged(self) -> bool:
        return "skin_indices" in self.arrays and "rest_matrices" in self.arrays

    @property
    def count(self) -> int:
        return int(self.arrays["means"].shape[0])


# ------------------------------------------------------------------ safetensors (the format, in numpy)
def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file, checked against the file's size."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AvatarFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) < 8:
        raise AvatarFileError(f"{path}: not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise AvatarFileError(f"{path}: not a safetensors file or truncated (header of {n} bytes)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AvatarFileError(f"{path}: damaged safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise AvatarFileError(f"{path}: damaged safetensors header (not an object)")
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + n:]
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise AvatarFileError(f"{path}: tensor {name!r} has an unreadable or unsupported entry {info!r}") from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if min(shape, default=0) < 0 or not 0 <= start <= end <= len(body) or end - start != count * dtype.itemsize:
            raise AvatarFileError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) does not fit the file "
                                  f"(offsets {start}..{end} of {len(body)} bytes): truncated or damaged")
        arrays[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape)
    return arrays, {str(k): str(v) for k, v in metadata.items()}


def write_safetensors(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (exclusive temporary file in the target folder, then rename)."""
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        if a.dtype.str not in _ST_NAMES:
            raise AvatarFileError(f"array {name!r}: dtype {a.dtype} cannot be stored in safetensors")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _ST_NAMES[a.dtype.str], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return write_atomic(path, [struct.pack("<Q", len(raw)), raw, *blobs])


# ------------------------------------------------------------------ the GenLCA avatar
def read_avatar(path: str | os.PathLike) -> AvatarFile:
    """A GenLCA avatar `.safetensors` (rigged Gaussians + skeleton + meta), checked like wire arrays."""
    from bridge.wire import protocol
    from bridge.wire.codec import ProtocolError, check_arrays

    path = Path(path)
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != AVATAR_FORMAT:
        raise AvatarFileError(f"{path}: not a GenLCA avatar (format {metadata.get('format')!r})")
    if not metadata.get("version", "").isdigit() or int(metadata["version"]) > AVATAR_VERSION:
        raise AvatarFileError(f"{path}: avatar version {metadata.get('version')!r}; this code reads up to "
                              f"{AVATAR_VERSION}")
    try:
        joint_names = json.loads(metadata.get("joint_names", "[]"))
        meta = json.loads(metadata.get("meta", "{}"))
    except json.JSONDecodeError as exc:
        raise AvatarFileError(f"{path}: damaged metadata ({exc})") from None
    arrays: dict[str, np.ndarray] = {}
    for key in GAUSSIAN_KEYS:
        if f"gaussians.{key}" in tensors:
            arrays[key] = tensors[f"gaussians.{key}"]
    for key in SKELETON_KEYS:
        if f"skeleton.{key}" in tensors:
            arrays[key] = tensors[f"skeleton.{key}"]
    contract = protocol.AVATAR_ARRAYS
    arrays = {k: _as_wire_dtype(path, k, v, contract[k][0]) for k, v in arrays.items()}
    try:
        dims = check_arrays(arrays, contract)
    except ProtocolError as exc:
        raise AvatarFileError(f"{path}: {exc}") from None
    check_avatar_values(path, arrays, dims, joint_names)
    return AvatarFile(arrays, [str(n) for n in joint_names], meta if isinstance(meta, dict) else {})


def _as_wire_dtype(path: Path, name: str, a: np.ndarray, dtype: str) -> np.ndarray:
    want = np.dtype(dtype)
    if a.dtype == want:
        return a
    if want.kind == "f" and a.dtype.kind == "f":
        return a.astype(want)
    if want.kind in "iu" and a.dtype.kind in "iu":
        info = np.iinfo(want)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise AvatarFileError(f"{path}: {name} has values outside {want} ({a.min()}..{a.max()})")
        return a.astype(want)
    raise AvatarFileError(f"{path}: {name} has dtype {a.dtype}, expected {want}")


def check_avatar_values(path: Any, arrays: dict[str, np.ndarray], dims: dict[str, int], joint_names: list) -> None:
    """Values a renderer or Blender relies on: finite floats, skin indices inside the skeleton, parents
    before children, one name per joint."""
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise AvatarFileError(f"{path}: {name} contains NaN or inf")
    if "rest_matrices" not in arrays:
        return
    j = dims["J"]
    if len(joint_names) != j or not all(isinstance(n, str) and n for n in joint_names):
        raise AvatarFileError(f"{path}: expected {j} joint names, got {len(joint_names)}")
    parents = arrays["joint_parents"]
    if (parents >= np.arange(j)).any() or (parents < -1).any():
        raise AvatarFileError(f"{path}: joint_parents must name an earlier joint or -1")
    if "skin_indices" in arrays and arrays["skin_indices"].size and int(arrays["skin_indices"].max()) >= j:
        raise AvatarFileError(f"{path}: skin_indices reach joint {int(arrays['skin_indices'].max())}, "
                              f"the skeleton has {j}")


def write_avatar(path: str | os.PathLike, avatar: AvatarFile) -> Path:
    """Write a GenLCA avatar `.safetensors` (the layout `backend/avatar/avatar_file.py` reads)."""
    tensors = {f"gaussians.{k}": avatar.arrays[k] for k in GAUSSIAN_KEYS if k in avatar.arrays}
    if "gaussians.skin_indices" in tensors:  # the backend's files hold int64 (torch's index type)
        tensors["gaussians.skin_indices"] = tensors["gaussians.skin_indices"].astype(np.int64)
    tensors.update({f"skeleton.{k}": avatar.arrays[k] for k in SKELETON_KEYS if k in avatar.arrays})
    metadata = {"format": AVATAR_FORMAT, "version": str(AVATAR_VERSION),
                "joint_names": json.dumps(list(avatar.joint_names)), "meta": json.dumps(avatar.meta)}
    return write_safetensors(path, tensors, metadata)


# ------------------------------------------------------------------ the 3DGS PLY
def ply_vertices(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The 62 float properties per Gaussian (N, 62); SH padded to degree 3, f_rest channel-major."""
    means = arrays["means"]
    n = means.shape[0]
    sh = arrays["sh"]
    flat = np.zeros((n, len(PLY_PROPERTIES)), dtype="<f4")
    flat[:, 0:3] = means
    flat[:, 6:9] = sh[:, 0]
    rest = np.zeros((n, 15, 3), np.float32)
    rest[:, :sh.shape[1] - 1] = sh[:, 1:16]
    flat[:, 9:54] = rest.transpose(0, 2, 1).reshape(n, 45)
    flat[:, 54] = arrays["opacity_logits"]
    flat[:, 55:58] = arrays["log_scales"]
    flat[:, 58:62] = arrays["rotations"]
    return flat


def ply_header(n: int, axes: str = "z-up") -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", PLY_AXES_COMMENT.format(axes=axes), f"element vertex {n}"]
    lines += [f"property float {name}" for name in PLY_PROPERTIES] + ["end_header"]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_ply(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, y_up: bool = False) -> Path:
    """The standard 3DGS PLY any splat viewer opens; `y_up` rotates into the Y-up convention."""
    if y_up:
        arrays = rotate_splats(arrays, Z_UP_TO_Y_UP)
    flat = ply_vertices(arrays)
    return write_atomic(path, [ply_header(len(flat), "y-up" if y_up else "z-up"), flat.tobytes()])


def read_ply(path: str | os.PathLike) -> AvatarFile:
    """A 3DGS PLY (binary little endian; extra float properties ignored) as unrigged splats in Z-up."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AvatarFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    end = data.find(b"end_header\n", 0, 1 << 20)
    if not data.startswith(b"ply\n") or end < 0:
        raise AvatarFileError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise AvatarFileError(f"{path}: expected 'format binary_little_endian 1.0' (3DGS PLY)")
    count, names, element, axes = None, [], None, "z-up"
    sizes = {"float": 4, "float32": 4, "double": 8, "float64": 8, "uchar": 1, "uint8": 1, "char": 1, "int8": 1,
             "short": 2, "int16": 2, "ushort": 2, "uint16": 2, "int": 4, "int32": 4, "uint": 4, "uint32": 4}
    kinds = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
             "char": "i1", "int8": "i1", "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2",
             "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4"}
    fields: list[tuple[str, str]] = []
    for ln in lines:
        parts = ln.split()
        if parts[:2] == ["comment", "genlca"] and "axes=y-up" in parts:
            axes = "y-up"
        if parts[:1] == ["element"] and len(parts) == 3:
            element = parts[1]
            if element == "vertex":
                count = int(parts[2]) if parts[2].isdigit() else None
            elif count is not None:
                raise AvatarFileError(f"{path}: element {element!r} after the vertices (not a 3DGS PLY)")
        elif parts[:1] == ["property"] and element == "vertex":
            if len(parts) != 3 or parts[1] not in sizes:
                raise AvatarFileError(f"{path}: unsupported vertex property {' '.join(parts[1:])!r}")
            fields.append((parts[2], kinds[parts[1]]))
            names.append(parts[2])
    if count is None:
        raise AvatarFileError(f"{path}: no vertex element")
    needed = [p for p in PLY_PROPERTIES if not p.startswith("n") and not p.startswith("f_rest")]
    missing = [p for p in needed if p not in names]
    if missing:
        raise AvatarFileError(f"{path}: missing 3DGS properties {missing[:6]} (is it a Gaussian splat PLY?)")
    dtype = np.dtype(fields)
    offset = end + len(b"end_header\n")
    if len(data) - offset < count * dtype.itemsize:
        raise AvatarFileError(f"{path}: truncated: {count} splats need {count * dtype.itemsize} bytes, "
                              f"found {len(data) - offset}")
    v = np.frombuffer(data, dtype=dtype, count=count, offset=offset)

    def cols(keys: list[str]) -> np.ndarray:
        return np.stack([v[k].astype(np.float32) for k in keys], -1)

    rest_names = [f"f_rest_{i}" for i in range(45)]
    have_rest = sum(1 for k in rest_names if k in names)
    degree = {0: 0, 9: 1, 24: 2, 45: 3}.get(have_rest)
    if degree is None:
        raise AvatarFileError(f"{path}: {have_rest} f_rest properties; expected 0, 9, 24 or 45")
    s = (degree + 1) ** 2
    sh = np.zeros((count, s, 3), np.float32)
    sh[:, 0] = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    if degree:
        sh[:, 1:] = cols(rest_names[:3 * (s - 1)]).reshape(count, 3, s - 1).transpose(0, 2, 1)
    arrays = {"means": cols(["x", "y", "z"]), "rotations": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
              "log_scales": cols(["scale_0", "scale_1", "scale_2"]),
              "opacity_logits": np.ascontiguousarray(v["opacity"], dtype=np.float32), "sh": sh}
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            raise AvatarFileError(f"{path}: {name} contains NaN or inf")
    if count and np.linalg.norm(arrays["rotations"], axis=1).min() < 1e-12:  # kept as stored, not normalised
        raise AvatarFileError(f"{path}: a splat has a zero rotation quaternion")
    if axes == "y-up":
        arrays = rotate_splats(arrays, Z_UP_TO_Y_UP.T)
    return AvatarFile(arrays, [], {"source_file": path.name, "axes_in_file": axes})


def read_avatar_file(path: str | os.PathLike) -> AvatarFile:
    """`.safetensors` -> rigged GenLCA avatar; `.ply` -> splats. Anything else is refused by name."""
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        return read_avatar(path)
    if suffix == ".ply":
        return read_ply(path)
    raise AvatarFileError(f"{path}: expected a .safetensors avatar or a .ply splat file, got {suffix or 'no suffix'!r}")


# ------------------------------------------------------------------ rotating splats (and their SH)
def _matrix_to_quat(m: np.ndarray) -> np.ndarray:
    t = np.trace(m)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k]) * 2
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def _quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (4,) x (N, 4) -> (N, 4), wxyz
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b.T
    return np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], -1)


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Real SH basis of 3DGS/gsplat (same order and signs as the renderer) at unit dirs (M, 3) -> (M, S)."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    out = [np.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        c1 = 0.4886025119029199
        out += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        c = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
        out += [c[0] * x * y, c[1] * y * z, c[2] * (2 * z * z - x * x - y * y), c[3] * x * z, c[4] * (x * x - y * y)]
    if degree >= 3:
        c = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
             -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
        xx, yy, zz = x * x, y * y, z * z
        out += [c[0] * y * (3 * xx - yy), c[1] * x * y * z, c[2] * y * (4 * zz - xx - yy),
                c[3] * z * (2 * zz - 3 * xx - 3 * yy), c[4] * x * (4 * zz - xx - yy), c[5] * z * (xx - yy),
                c[6] * x * (xx - 3 * yy)]
    return np.stack(out, -1)


def sh_rotation(rotation: np.ndarray, degree: int) -> np.ndarray:
    """(S, S) matrix D with sh_new = D @ sh_old for splats turned by `rotation` (3x3), so that the colour
    seen from the turned direction is unchanged: sum_i new_i Y_i(R d) = sum_i old_i Y_i(d). Each band is
    closed under rotation, so a least-squares solve over enough directions is exact to round-off.
    (Y(R d) @ D = Y(d) for all d, hence Y(R d) @ (D @ old) = Y(d) @ old.)"""
    i = np.arange(64) + 0.5
    phi = np.arccos(1 - 2 * i / 64)
    theta = np.pi * (1 + 5 ** 0.5) * i
    dirs = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], -1)  # (64, 3)
    b_old = sh_basis(dirs, degree)  # Y(d)
    b_new = sh_basis(dirs @ rotation.T, degree)  # Y(R d)
    return np.linalg.lstsq(b_new, b_old, rcond=None)[0]  # b_new @ D = b_old


def rotate_splats(arrays: dict[str, np.ndarray], rotation: np.ndarray) -> dict[str, np.ndarray]:
    """Splats turned rigidly about the origin by a 3x3 rotation: means, orientations and SH colour."""
    out = dict(arrays)
    rot = np.asarray(rotation, dtype=np.float64)
    out["means"] = (arrays["means"].astype(np.float64) @ rot.T).astype(np.float32)
    out["rotations"] = _quat_multiply(_matrix_to_quat(rot), arrays["rotations"].astype(np.float64)).astype(np.float32)
    sh = arrays["sh"]
    degree = int(round(np.sqrt(sh.shape[1]))) - 1
    if degree > 0:
        d = sh_rotation(rot, degree)
        out["sh"] = np.einsum("ij,njc->nic", d, sh.astype(np.float64)).astype(np.float32)
    return out
