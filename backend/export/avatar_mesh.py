"""A generated avatar as a rigged, textured mesh for game engines (numpy only: no torch, no bpy).

`avatar_mesh(template, arrays, joint_names)` takes the body template (backend/avatar/template.py: a mesh
with UVs and dense skin weights) and the avatar's wire arrays (bridge.wire.protocol.AVATAR_ARRAYS: the
Gaussians and the skeleton) and makes a `gltf.SkinnedMesh`:

- geometry: the template's triangles, split where UVs are split; moved onto the avatar's skeleton (each
  vertex by the template skin, A_j = avatar rest_j · template rest_j⁻¹, when the two differ); then pushed
  out along its normal to the farthest point of the splats' outer surface there (`shell`: the union of the
  Gaussians' ellipsoids at the alpha level a render's silhouette shows; skirts, long hair, coats: the
  geometry beyond the body is carried as a displacement, not dropped; smoothed over the mesh's edges; at
  most MAX_DISPLACEMENT);
- colour: each vertex gets the Gaussians' colours (SH DC, sRGB) weighted by their density at its pushed-out
  position (the outermost Gaussians, the ones a camera sees; `shell.Shell.colours`), else the
  opacity-weighted mean of the Gaussians nearest to it, spread to vertices without any over the mesh's
  edges; the UV triangles are rasterised into a texture_size² image with those colours interpolated,
  dilated past the charts' borders (no seams under mipmaps), stored as PNG;
- skin: the template's top-4 weights, renormalised; joints renamed to the Mixamo / Unity-humanoid
  convention where the template has a counterpart (`bridge.rig.rigmaps.MIXAMO`: Hips, Spine, LeftArm, ..),
  the others keep their template names;
- space: Blender/template Z-up metres -> glTF +Y up metres (x, y, z) -> (x, z, -y), the avatar facing +Z;
- motion: `pose_matrices` (F, J, 4, 4) armature-space pose matrices at `fps` -> a glTF animation
  (`pose_matrices_from_wire` turns a render request's joint rotations into them).
"""
from __future__ import annotations

import numpy as np

from backend.export.gltf import Animation, SkinnedMesh, decompose, local_matrices, png_bytes
from backend.export.shell import Shell
from bridge.rig import rigmaps

Z_UP_TO_Y_UP = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])
SH_C0 = 0.28209479177387814
MAX_DISPLACEMENT = 0.5  # metres a vertex may move out to reach the avatar's Gaussians
INFLUENCES = 4  # JOINTS_0 / WEIGHTS_0
REGION_REACH = 0.03  # metres: a Gaussian further than this from its region's vertices looks at all of them
SHELL_SMOOTH = 3  # Laplacian steps over the offsets
SHELL_KEEP = 0.5  # ... never below this fraction of its own extent
_NEAREST_CHUNK = 4096


def float32_weights(weights: np.ndarray) -> np.ndarray:
    """(V, 4) weights as float32 whose float32 sum is 1 to the last bit the largest can carry (the glTF
    validator checks the sum in float32)."""
    w = np.asarray(weights, np.float32).copy()
    big = np.argmax(w, axis=1)
    rows = np.arange(len(w))
    w[rows, big] = 0.0
    w[rows, big] = np.float32(1.0) - w.sum(1, dtype=np.float32)
    return w


def standard_joint_names(names: list[str]) -> list[str]:
    """Template joint names -> Mixamo names where `bridge.rig.rigmaps.MIXAMO` maps one, else unchanged."""
    to_mixamo = {joint: bone for bone, joint in rigmaps.MIXAMO.items()}
    out = [to_mixamo.get(n, n) for n in names]
    if len(set(out)) != len(out):
        raise ValueError("standard joint names collide; keep the template's names")
    return out


def nearest_points(queries: np.ndarray, points: np.ndarray, chunk: int = _NEAREST_CHUNK) -> np.ndarray:
    """Index of the nearest of points (P, 3) for each of queries (Q, 3), by brute force in chunks
    (|q|² - 2 q·p + |p|², a matrix product per chunk)."""
    points = np.asarray(points, np.float32)
    queries = np.asarray(queries, np.float32)
    p2 = np.einsum("ij,ij->i", points, points)
    out = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        d = q @ (-2.0 * points.T)
        d += p2
        out[start:start + chunk] = np.argmin(d, axis=1)
    return out


def nearest_vertices_by_joint(means: np.ndarray, gaussian_joint: np.ndarray, vertices: np.ndarray,
                              vertex_skin: np.ndarray) -> np.ndarray:
    """For each Gaussian, the nearest template vertex among those whose two heaviest joints include the
    Gaussian's heaviest joint (the region it is skinned to); a Gaussian whose nearest such vertex is more
    than REGION_REACH away (a joint that many regions lean on a little, e.g. the root) and those of a joint
    no vertex leans on search all vertices. Brute force per joint: sum over joints of Gaussians x vertices
    there, ~100x less work than all pairs for a 104-joint template."""
    top2 = np.argsort(-vertex_skin, axis=1, kind="stable")[:, :2]  # (V, 2)
    out = np.empty(len(means), np.int64)
    order = np.argsort(gaussian_joint, kind="stable")
    bounds = np.flatnonzero(np.diff(gaussian_joint[order])) + 1
    for group in np.split(order, bounds):
        if not len(group):
            continue
        candidates = np.flatnonzero((top2 == gaussian_joint[group[0]]).any(1))
        if len(candidates) == 0:
            candidates = np.arange(len(vertices))
        out[group] = candidates[nearest_points(means[group], vertices[candidates])]
    far = np.flatnonzero(np.linalg.norm(vertices[out] - means, axis=1) > REGION_REACH)
    if len(far):
        out[far] = nearest_points(means[far], vertices)
    return out


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3)."""
    v = np.asarray(vertices, np.float64)
    face_n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    normals = np.zeros_like(v)
    for c in range(3):
        np.add.at(normals, faces[:, c], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(length > 1e-20, normals / np.maximum(length, 1e-20), (0.0, 0.0, 1.0))
    return normals


def _edges(faces: np.ndarray) -> np.ndarray:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def _spread(values: np.ndarray, known: np.ndarray, edges: np.ndarray, iterations: int = 64) -> np.ndarray:
    """Fill the rows of values (V, C) where `known` is False with the mean of known neighbours, repeatedly;
    what stays unknown gets the mean of the known rows."""
    values = values.copy()
    known = known.copy()
    for _ in range(iterations):
        if known.all():
            break
        total = np.zeros_like(values)
        count = np.zeros(len(values))
        for a, b in ((edges[:, 0], edges[:, 1]), (edges[:, 1], edges[:, 0])):
            use = known[a] & ~known[b]
            np.add.at(total, b[use], values[a[use]])
            np.add.at(count, b[use], 1.0)
        fill = count > 0
        values[fill] = total[fill] / count[fill, None]
        known = known | fill
    if not known.all():
        values[~known] = values[known].mean(0) if known.any() else 0.5
    return values


def _smooth(values: np.ndarray, edges: np.ndarray, iterations: int) -> np.ndarray:
    """Laplacian smoothing of per-vertex values (V,) over the mesh edges, each step half towards the mean
    of the neighbours."""
    for _ in range(iterations):
        total = np.zeros_like(values)
        count = np.zeros(len(values))
        for a, b in ((edges[:, 0], edges[:, 1]), (edges[:, 1], edges[:, 0])):
            np.add.at(total, b, values[a])
            np.add.at(count, b, 1.0)
        values = 0.5 * values + 0.5 * np.where(count > 0, total / np.maximum(count, 1.0), values)
    return values


def gaussian_colours(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) sRGB in [0, 1] from the SH DC term, and (N,) opacity."""
    rgb = np.clip(0.5 + SH_C0 * np.asarray(arrays["sh"][:, 0, :], np.float64), 0.0, 1.0)
    with np.errstate(over="ignore"):
        opacity = 1.0 / (1.0 + np.exp(-np.asarray(arrays["opacity_logits"], np.float64)))
    return rgb, opacity


def fit_to_skeleton(template, rest_matrices: np.ndarray) -> np.ndarray:
    """Template vertices (V, 3) moved by its skin from its rest skeleton onto `rest_matrices` (J, 4, 4)."""
    a = np.asarray(rest_matrices, np.float64) @ np.linalg.inv(np.asarray(template.rest_matrices, np.float64))
    if np.abs(a - np.eye(4)).max() < 1e-6:
        return np.asarray(template.vertices, np.float64)
    blended = np.einsum("vj,jab->vab", np.asarray(template.skin_weights, np.float64), a)
    v = np.c_[np.asarray(template.vertices, np.float64), np.ones(len(template.vertices))]
    return np.einsum("vab,vb->va", blended, v)[:, :3]


def shell_offset(extent: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(V,) how far each vertex moves out along its normal, from the splats' extent along it (V,)
    (`shell.Shell.extent`): smoothed over the edges (SHELL_SMOOTH steps), never below SHELL_KEEP of its own
    extent (smoothing must not pull the shell back inside the Gaussians), at most MAX_DISPLACEMENT."""
    smoothed = _smooth(extent, edges, SHELL_SMOOTH)
    return np.clip(np.maximum(smoothed, SHELL_KEEP * extent), 0.0, MAX_DISPLACEMENT)


def bake_texture(uvs: np.ndarray, colours: np.ndarray, faces: np.ndarray, size: int,
                 margin: int = 8) -> np.ndarray:
    """Rasterise per-vertex colours (V, 3) over the UV triangles faces (F, 3) (uvs (V, 2), v down) into an
    (size, size, 3) uint8 image: barycentric samples denser than the texels in every triangle, averaged
    per texel; then `margin` texels of dilation past the charts, the rest the mean colour."""
    uv = np.asarray(uvs, np.float64) * size
    corners = uv[faces]  # (F, 3, 2)
    extent = np.ptp(corners, axis=1).max(1)  # texels
    total = np.zeros((size * size, 3))
    count = np.zeros(size * size)
    # 1.5 samples per texel along an edge (a power of two per group of triangles), at most 128
    levels = np.minimum(np.exp2(np.ceil(np.log2(np.maximum(2.0, extent * 1.5)))), 128).astype(int)
    for level in np.unique(levels):
        which = np.flatnonzero(levels == level)
        i, j = np.meshgrid(np.arange(level + 1), np.arange(level + 1), indexing="ij")
        keep = i + j <= level
        bary = np.stack([i[keep], j[keep], level - i[keep] - j[keep]], 1) / level  # (S, 3)
        batch = max(1, 2_000_000 // len(bary))
        for start in range(0, len(which), batch):
            f = which[start:start + batch]
            pts = np.matmul(bary[None], corners[f])  # (f, S, 2)
            col = np.matmul(bary[None], colours[faces[f]])  # (f, S, 3)
            px = np.clip(pts.astype(int), 0, size - 1)
            flat = (px[..., 1] * size + px[..., 0]).ravel()
            count += np.bincount(flat, minlength=size * size)
            for c in range(3):
                total[:, c] += np.bincount(flat, weights=col[..., c].ravel(), minlength=size * size)
    filled = count > 0
    image = np.zeros((size * size, 3))
    image[filled] = total[filled] / count[filled, None]
    image = image.reshape(size, size, 3)
    filled = filled.reshape(size, size)
    for _ in range(margin):  # dilate: an empty texel takes the mean of its filled 4-neighbours
        acc = np.zeros_like(image)
        n = np.zeros((size, size))
        for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
            acc += np.roll(image * filled[..., None], shift, axis)
            n += np.roll(filled, shift, axis)
        grow = ~filled & (n > 0)
        image[grow] = acc[grow] / n[grow, None]
        filled = filled | grow
    image[~filled] = image[filled].mean(0) if filled.any() else 0.5
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def pose_matrices_from_wire(rest: np.ndarray, parents: np.ndarray, joint_rotations: np.ndarray,
                            root_translations: np.ndarray, joint_locations: np.ndarray | None = None,
                            joint_scales: np.ndarray | None = None) -> np.ndarray:
    """A render request's pose (bridge.wire.protocol RENDER_ARRAYS: joint_rotations (F, J, 4) wxyz relative to
    rest in each bone's rest frame, root_translations (F, 3); optional joint_locations (F, J, 3),
    joint_scales (F, J)) -> armature-space pose matrices (F, J, 4, 4), as the backend's forward kinematics:
    G_root = T(t) rest_root B_root, G_j = G_parent rest_parent⁻¹ rest_j B_j, B = T(location) R scale."""
    rest = np.asarray(rest, np.float64)
    q = np.asarray(joint_rotations, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    rot = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                    2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                    2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(*q.shape[:-1], 3, 3)
    basis = np.tile(np.eye(4), (*q.shape[:-1], 1, 1))
    if joint_scales is not None:
        rot = rot * np.asarray(joint_scales, np.float64)[..., None, None]
    basis[..., :3, :3] = rot
    if joint_locations is not None:
        basis[..., :3, 3] = joint_locations
    f_count, j_count = q.shape[:2]
    out = np.empty((f_count, j_count, 4, 4))
    inv_rest = np.linalg.inv(rest)
    for j, p in enumerate(np.asarray(parents)):
        if p < 0:
            frame = np.tile(rest[j], (f_count, 1, 1))
            frame[:, :3, 3] += np.asarray(root_translations, np.float64)
            out[:, j] = frame @ basis[:, j]
        else:
            out[:, j] = out[:, p] @ (inv_rest[p] @ rest[j]) @ basis[:, j]
    return out


def animation_from_poses(pose_matrices: np.ndarray, parents: np.ndarray, fps: float, name: str) -> Animation:
    """Armature-space (Z-up) pose matrices (F, J, 4, 4) -> per-joint local TRS in glTF space."""
    world = Z_UP_TO_Y_UP @ np.asarray(pose_matrices, np.float64)
    t, r, s = decompose(local_matrices(world, parents))
    # one hemisphere from frame to frame: linear keys between q and -q pass through zero
    flip = np.einsum("fjc,fjc->fj", r[1:], r[:-1]) < 0.0
    sign = np.concatenate([np.ones((1, r.shape[1])), np.where(np.cumsum(flip, axis=0) % 2 == 1, -1.0, 1.0)])
    return Animation(name=name, times=np.arange(len(world)) / float(fps), translations=t,
                     rotations=r * sign[..., None], scales=s)


def avatar_mesh(template, arrays: dict[str, np.ndarray], joint_names: list[str], name: str = "GenLCA avatar",
                texture_size: int = 1024, pose_matrices: np.ndarray | None = None, fps: float = 24.0,
                standard_names: bool = True, displace: bool = True, shell_colours: bool = True) -> SkinnedMesh:
    """The avatar as a `gltf.SkinnedMesh` (module docstring). template: a BodyTemplate with the avatar's
    joints; arrays: AVATAR_ARRAYS (numpy); pose_matrices: optional (F, J, 4, 4) armature-space motion;
    displace: push the mesh out to the splats' shell (False: the template's body); shell_colours: colours
    seen at the shell (False: the nearest Gaussians' mean, as before the shell existed)."""
    if list(joint_names) != list(template.joint_names):
        raise ValueError(f"the avatar's {len(joint_names)} joints are not template {template.name!r}'s "
                         f"{len(template.joint_names)} (first difference: "
                         f"{next(((a, b) for a, b in zip(joint_names, template.joint_names) if a != b), None)})")
    if texture_size < 16:
        raise ValueError(f"texture_size must be at least 16, got {texture_size}")
    rest = np.asarray(arrays["rest_matrices"], np.float64)
    parents = np.asarray(arrays["joint_parents"], np.int64)
    faces = np.asarray(template.faces, np.int64)
    vertices = fit_to_skeleton(template, rest)
    normals = vertex_normals(vertices, faces)
    edges = _edges(faces)
    means = np.asarray(arrays["means"], np.float64)
    rgb, opacity = gaussian_colours(arrays)
    skin = np.asarray(arrays["skin_indices"], np.int64)[np.arange(len(means)),
                                                      np.argmax(arrays["skin_weights"], axis=1)]
    nearest = nearest_vertices_by_joint(means, skin, vertices, np.asarray(template.skin_weights))
    if displace or shell_colours:
        shell = Shell(vertices, normals, nearest, means, arrays["rotations"], arrays["log_scales"], opacity)
    offset = np.zeros(len(vertices))
    if displace:
        offset = shell_offset(shell.extent(), edges)
        vertices = vertices + normals * offset[:, None]
        normals = vertex_normals(vertices, faces)
    weight = np.where(opacity > 0.05, opacity, 0.0)
    colour_sum = np.zeros((len(vertices), 3))
    for c in range(3):
        colour_sum[:, c] = np.bincount(nearest, weights=weight * rgb[:, c], minlength=len(vertices))
    weight_sum = np.bincount(nearest, weights=weight, minlength=len(vertices))
    known = weight_sum > 0
    colours = np.where(known[:, None], colour_sum / np.maximum(weight_sum, 1e-12)[:, None], 0.0)
    if shell_colours:
        seen, where = shell.colours(rgb, offset)
        colours[where], known = seen[where], known | where
    colours = _spread(colours, known, edges)
    # split the vertices where the UVs are split (glTF has one UV per vertex)
    corner_vertex = faces.ravel()
    corner_uv = np.asarray(template.uvs, np.float64).reshape(-1, 2)
    key = np.c_[corner_vertex, np.rint(corner_uv * 2 ** 20).astype(np.int64)]
    unique, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    source = unique[:, 0]
    uvs = corner_uv[first] * (1.0, -1.0) + (0.0, 1.0)  # OBJ v up -> glTF v down
    indices = inverse.reshape(-1, 3).astype(np.uint32)
    texture = bake_texture(uvs, colours[source], indices.astype(np.int64), texture_size)
    # skin: top-4 of the template's dense weights, renormalised
    dense = np.asarray(template.skin_weights, np.float64)
    top = np.argsort(-dense, axis=1, kind="stable")[:, :INFLUENCES]
    w = np.take_along_axis(dense, top, axis=1)
    w = np.where(w > 0, w, 0.0)
    w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
    top = np.where(w > 0, top, 0)
    to_gltf = Z_UP_TO_Y_UP
    positions = vertices @ to_gltf[:3, :3].T
    names = standard_joint_names(list(joint_names)) if standard_names else list(joint_names)
    animation = None
    if pose_matrices is not None:
        pose_matrices = np.asarray(pose_matrices, np.float64)
        if pose_matrices.ndim != 4 or pose_matrices.shape[1:] != (len(names), 4, 4):
            raise ValueError(f"expected pose matrices of shape (F, {len(names)}, 4, 4), got {pose_matrices.shape}")
        animation = animation_from_poses(pose_matrices, parents, fps, f"{name} motion")
    return SkinnedMesh(
        name=name, positions=positions[source].astype(np.float32),
        normals=(normals @ to_gltf[:3, :3].T)[source].astype(np.float32), uvs=uvs.astype(np.float32),
        indices=indices, joints=top[source], weights=float32_weights(w[source]),
        texture_png=png_bytes(texture), joint_names=names, joint_parents=parents,
        joint_world=to_gltf @ rest, animation=animation,
        extras={"genlca_template": template.name, "genlca_joint_names": list(joint_names)})
