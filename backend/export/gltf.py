"""A glTF 2.0 binary (.glb) writer for one skinned, textured mesh with an optional skeletal animation,
in numpy + json + struct (no bpy, no torch).

Written by hand rather than with a library: what we write is one fixed structure (nodes per joint, one
skin, one primitive, one PNG, one animation), about 150 lines; pygltflib would add a dependency to the
backend and still leave us the buffer packing, the matrix decomposition and the PNG. The file is checked
by the Khronos validator in the tests (tests/test_gltf_export.py) and re-imported by Blender's own glTF
importer (tests/blender/test_glb_import.py).

glTF conventions kept here: metres, +Y up, a right-handed frame, matrices column-major in the buffer,
quaternions (x, y, z, w), texture v down (row 0 of the image is v = 0), JOINTS_0 / WEIGHTS_0 with four
influences summing to 1, inverse bind matrices per joint, animated joints in TRS (never `matrix`).
"""
from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path

import numpy as np

FLOAT, UNSIGNED_INT, UNSIGNED_SHORT, UNSIGNED_BYTE = 5126, 5125, 5123, 5121
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_COMPONENT = {np.dtype(np.float32): FLOAT, np.dtype(np.uint32): UNSIGNED_INT, np.dtype(np.uint16): UNSIGNED_SHORT,
              np.dtype(np.uint8): UNSIGNED_BYTE}
GLB_MAGIC, GLB_VERSION, CHUNK_JSON, CHUNK_BIN = 0x46546C67, 2, 0x4E4F534A, 0x004E4942


@dataclasses.dataclass
class Animation:
    """Per-joint local TRS over time: times (T,) seconds, translations (T, J, 3), rotations (T, J, 4) xyzw,
    scales (T, J, 3)."""

    name: str
    times: np.ndarray
    translations: np.ndarray
    rotations: np.ndarray
    scales: np.ndarray


@dataclasses.dataclass
class SkinnedMesh:
    """One skinned mesh in glTF space (metres, +Y up).

    positions (V, 3) f32, normals (V, 3) f32 unit, uvs (V, 2) f32 (v down), indices (F, 3) u32,
    joints (V, 4) joint indices, weights (V, 4) f32 summing to 1, texture_png: PNG bytes of the base colour,
    joint_names (J,), joint_parents (J,) (parents first, -1 for a root), joint_world (J, 4, 4) rest
    joint-to-world matrices (rotation and translation; the inverse bind matrices are their inverses).
    """

    name: str
    positions: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray
    indices: np.ndarray
    joints: np.ndarray
    weights: np.ndarray
    texture_png: bytes
    joint_names: list[str]
    joint_parents: np.ndarray
    joint_world: np.ndarray
    animation: Animation | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        v, j = len(self.positions), len(self.joint_names)
        shapes = {"positions": (v, 3), "normals": (v, 3), "uvs": (v, 2), "joints": (v, 4), "weights": (v, 4),
                  "joint_parents": (j,), "joint_world": (j, 4, 4)}
        for name, want in shapes.items():
            got = tuple(np.shape(getattr(self, name)))
            if got != want:
                raise ValueError(f"SkinnedMesh.{name}: expected shape {want}, got {got}")
        if np.ndim(self.indices) != 2 or np.shape(self.indices)[1] != 3:
            raise ValueError(f"SkinnedMesh.indices: expected shape (F, 3), got {np.shape(self.indices)}")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= v):
            raise ValueError(f"SkinnedMesh.indices: outside [0, {v})")
        parents = np.asarray(self.joint_parents)
        if ((parents >= np.arange(j)) | (parents < -1)).any():
            raise ValueError("SkinnedMesh.joint_parents must list each parent before its child (-1 for a root)")
        if self.animation is not None:
            a = self.animation
            t = len(a.times)
            for name, want in (("translations", (t, j, 3)), ("rotations", (t, j, 4)), ("scales", (t, j, 3))):
                if np.shape(getattr(a, name)) != want:
                    raise ValueError(f"Animation.{name}: expected shape {want}, got {np.shape(getattr(a, name))}")
            if t == 0 or (np.diff(a.times) <= 0).any():
                raise ValueError("Animation.times must be at least one strictly increasing time")


# ------------------------------------------------------------------ matrices
def matrix_to_quat_xyzw(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) xyzw, w >= 0 (Shepperd's method)."""
    m = np.asarray(m, np.float64)
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = np.stack([
        np.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1], 1 + tr], -1),
        np.stack([1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0],
                  m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] - m[..., 1, 2]], -1),
        np.stack([m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                  m[..., 1, 2] + m[..., 2, 1], m[..., 0, 2] - m[..., 2, 0]], -1),
        np.stack([m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                  1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2], m[..., 1, 0] - m[..., 0, 1]], -1),
    ], -2)  # (..., 4, 4): four scaled versions of the same quaternion; the largest is the best conditioned
    diag = np.stack([1 + tr, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = np.argmax(diag, axis=-1)
    q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def decompose(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine matrices (..., 4, 4) without shear -> translation (..., 3), rotation xyzw (..., 4), scale (..., 3)."""
    m = np.asarray(m, np.float64)
    lin = m[..., :3, :3]
    scale = np.linalg.norm(lin, axis=-2)  # column norms
    rot = lin / np.maximum(scale[..., None, :], 1e-12)
    return m[..., :3, 3], matrix_to_quat_xyzw(rot), scale


def local_matrices(world: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """World matrices (..., J, 4, 4) -> each joint's matrix relative to its parent (a root: its world)."""
    world = np.asarray(world, np.float64)
    parents = np.asarray(parents)
    has = parents >= 0
    parent_world = np.where(has[:, None, None], world[..., np.where(has, parents, 0), :, :], np.eye(4))
    return np.linalg.inv(parent_world) @ world


# ------------------------------------------------------------------ PNG
def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit RGB or RGBA image (H, W, 3|4), row 0 at the top, as PNG bytes (zlib, filter 0)."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected a uint8 image (H, W, 3|4), got {image.dtype} {image.shape}")
    h, w, c = image.shape
    raw = np.zeros((h, 1 + w * c), np.uint8)
    raw[:, 1:] = image.reshape(h, w * c)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


# ------------------------------------------------------------------ the file
class _Buffers:
    """One binary buffer of 4-byte aligned views, and the accessors over them."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        self.blob.extend(b"\0" * (-len(self.blob) % 4))
        view = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.blob.extend(data)
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, target: int | None = None, bounds: bool = False,
                 normalized: bool = False) -> int:
        array = np.ascontiguousarray(array)
        width = 1 if array.ndim == 1 else int(np.prod(array.shape[1:]))
        acc = {"bufferView": self.view(array.tobytes(), target), "componentType": _COMPONENT[array.dtype],
               "count": int(array.shape[0]), "type": _TYPES[width]}
        if normalized:
            acc["normalized"] = True
        if bounds:
            flat = array.reshape(len(array), width)
            acc["min"], acc["max"] = flat.min(0).tolist(), flat.max(0).tolist()
        self.accessors.append(acc)
        return len(self.accessors) - 1


def _joint_type(count: int) -> type:
    return np.uint8 if count <= 256 else np.uint16


def gltf_document(mesh: SkinnedMesh) -> tuple[dict, bytes]:
    """The glTF JSON and its binary buffer."""
    buf = _Buffers()
    j_count = len(mesh.joint_names)
    parents = np.asarray(mesh.joint_parents)
    translation, rotation, scale = decompose(local_matrices(mesh.joint_world, parents))
    nodes: list[dict] = []
    for j, name in enumerate(mesh.joint_names):
        node = {"name": name, "translation": translation[j].tolist(), "rotation": rotation[j].tolist()}
        if not np.allclose(scale[j], 1.0, atol=1e-6):
            node["scale"] = scale[j].tolist()
        children = np.flatnonzero(parents == j).tolist()
        if children:
            node["children"] = children
        nodes.append(node)
    primitive = {
        "attributes": {
            "POSITION": buf.accessor(mesh.positions.astype(np.float32), ARRAY_BUFFER, bounds=True),
            "NORMAL": buf.accessor(mesh.normals.astype(np.float32), ARRAY_BUFFER),
            "TEXCOORD_0": buf.accessor(mesh.uvs.astype(np.float32), ARRAY_BUFFER),
            "JOINTS_0": buf.accessor(mesh.joints.astype(_joint_type(j_count)), ARRAY_BUFFER),
            "WEIGHTS_0": buf.accessor(mesh.weights.astype(np.float32), ARRAY_BUFFER),
        },
        "indices": buf.accessor(mesh.indices.astype(np.uint32).ravel(), ELEMENT_ARRAY_BUFFER),
        "material": 0,
        "mode": 4,
    }
    inverse_bind = np.linalg.inv(np.asarray(mesh.joint_world, np.float64))
    inverse_bind[:, 3, :] = (0.0, 0.0, 0.0, 1.0)  # exactly affine, as the validator wants
    skin = {"joints": list(range(j_count)), "name": f"{mesh.name} skeleton",
            "inverseBindMatrices": buf.accessor(np.swapaxes(inverse_bind, 1, 2).astype(np.float32).reshape(j_count, 16))}
    roots = np.flatnonzero(parents < 0).tolist()
    if len(roots) == 1:
        skin["skeleton"] = roots[0]
    nodes.append({"name": mesh.name, "mesh": 0, "skin": 0})
    doc = {
        "asset": {"version": "2.0", "generator": "GenLCA backend/export/gltf.py"},
        "scene": 0,
        "scenes": [{"name": mesh.name, "nodes": roots + [len(nodes) - 1]}],
        "nodes": nodes,
        "meshes": [{"name": mesh.name, "primitives": [primitive]}],
        "skins": [skin],
        "materials": [{"name": f"{mesh.name} colours", "doubleSided": True,
                       "pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0}}],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"name": f"{mesh.name} colours", "mimeType": "image/png",
                    "bufferView": buf.view(bytes(mesh.texture_png))}],
    }
    if mesh.animation is not None:
        a = mesh.animation
        times = buf.accessor(np.asarray(a.times, np.float32), bounds=True)
        samplers, channels = [], []
        for j in range(j_count):
            for path, values in (("translation", a.translations), ("rotation", a.rotations), ("scale", a.scales)):
                samplers.append({"input": times, "interpolation": "LINEAR",
                                 "output": buf.accessor(np.asarray(values[:, j], np.float32))})
                channels.append({"sampler": len(samplers) - 1, "target": {"node": j, "path": path}})
        doc["animations"] = [{"name": a.name, "samplers": samplers, "channels": channels}]
    if mesh.extras:
        doc["asset"]["extras"] = mesh.extras
    doc["accessors"], doc["bufferViews"] = buf.accessors, buf.views
    doc["buffers"] = [{"byteLength": len(buf.blob)}]
    return doc, bytes(buf.blob)


def glb_bytes(mesh: SkinnedMesh) -> bytes:
    doc, blob = gltf_document(mesh)
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    blob += b"\0" * (-len(blob) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return (struct.pack("<III", GLB_MAGIC, GLB_VERSION, total) + struct.pack("<II", len(text), CHUNK_JSON) + text
            + struct.pack("<II", len(blob), CHUNK_BIN) + blob)


def write_glb(path: str | Path, mesh: SkinnedMesh) -> Path:
    """Write the .glb atomically (a temporary file beside it, then rename)."""
    path = Path(path)
    data = glb_bytes(mesh)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def read_glb(path_or_bytes: str | Path | bytes) -> tuple[dict, bytes]:
    """(JSON, BIN chunk) of a .glb; ValueError naming what is wrong."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    if len(data) < 20:
        raise ValueError(f"not a GLB: {len(data)} bytes")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or total != len(data):
        raise ValueError(f"not a glTF 2.0 binary (magic {magic:#x}, version {version}, length {total}/{len(data)})")
    length, kind = struct.unpack_from("<II", data, 12)
    if kind != CHUNK_JSON:
        raise ValueError("the first GLB chunk is not JSON")
    doc = json.loads(data[20:20 + length])
    rest = 20 + length
    blob = b""
    if rest < len(data):
        blen, bkind = struct.unpack_from("<II", data, rest)
        if bkind != CHUNK_BIN:
            raise ValueError("the second GLB chunk is not BIN")
        blob = data[rest + 8:rest + 8 + blen]
    return doc, blob


def accessor_array(doc: dict, blob: bytes, index: int) -> np.ndarray:
    """An accessor's data as a numpy array (count, components) (tests and tools)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {v: k for k, v in _COMPONENT.items()}[acc["componentType"]]
    width = {v: k for k, v in _TYPES.items()}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(blob, dtype, acc["count"] * width, start).reshape(acc["count"], width)
