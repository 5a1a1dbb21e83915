"""Render an exported GLB's mesh as a game engine shows it unlit: a z-buffered rasteriser of its triangles
with its base-colour texture, from the backend's pinhole cameras (backend/render/camera.py, OpenCV axes),
in numpy. The mesh-vs-splat fidelity benchmark (benchmarks/mesh_fidelity.py) holds these frames against
the splat renderer's frames from the same cameras.

    mesh = read_textured_mesh(glb_bytes)                 # Z-up positions, faces, uvs, texture, joints
    frame = rasterize(mesh, camera)                      # frame.rgb (H, W, 3), frame.covered, frame.face

What a frame is: a pixel is covered when its centre falls inside a triangle (the rule GPUs use, no
anti-aliasing); its colour is the texture at the perspective-correct UV of the nearest triangle there,
bilinear (the GLB's LINEAR sampler; mipmaps are not modelled, so minified texels alias). Triangles are
two-sided (the GLB's material is doubleSided). Work: every triangle's bounding box of pixel centres is
tested at once in groups of equal box size, and the fragments are resolved by one sort on (pixel, depth).
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from backend.export import gltf
from backend.export.avatar_mesh import Z_UP_TO_Y_UP


@dataclasses.dataclass
class TexturedMesh:
    """positions (V, 3) Z-up metres, faces (F, 3), uvs (V, 2) glTF (v down), texture (H, W, 3) uint8 sRGB,
    joints (V, 4) and weights (V, 4) (the skin, for region labels)."""

    positions: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray
    joints: np.ndarray
    weights: np.ndarray
    joint_names: list[str]


@dataclasses.dataclass
class MeshFrame:
    """rgb (H, W, 3) sRGB in [0, 1] (0 where not covered), covered (H, W) bool, face (H, W) the visible
    triangle (-1 where not covered)."""

    rgb: np.ndarray
    covered: np.ndarray
    face: np.ndarray


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB/RGBA non-interlaced PNG -> (H, W, C) uint8 (all five row filters)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    w, h = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlace = header[8], header[9], header[12]
    if depth != 8 or colour not in (2, 6) or interlace != 0:
        raise ValueError(f"expected an 8-bit RGB/RGBA non-interlaced PNG, got depth {depth}, colour type {colour}, "
                         f"interlace {interlace}")
    c = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(bytes(idat)), np.uint8).reshape(h, 1 + w * c)
    filters, rows = raw[:, 0], raw[:, 1:].astype(np.int32)
    out = np.zeros((h, w * c), np.int32)
    for y in range(h):
        line, up = rows[y], out[y - 1] if y else np.zeros(w * c, np.int32)
        f = filters[y]
        if f == 0:
            out[y] = line
        elif f == 2:
            out[y] = (line + up) & 255
        else:  # 1 sub, 3 average, 4 Paeth: each byte depends on the one c before it
            row = np.zeros(w * c + c, np.int32)
            upc = np.r_[np.zeros(c, np.int32), up]
            for x in range(w * c):
                a, b, d = row[x], upc[x + c], upc[x]
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) >> 1
                else:
                    p = a + b - d
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - d)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else d)
                row[x + c] = (line[x] + pred) & 255
            out[y] = row[c:]
    return out.astype(np.uint8).reshape(h, w, c)


def read_textured_mesh(glb: bytes) -> TexturedMesh:
    """The first primitive of a GLB written by backend/export/gltf.py, back in Z-up metres."""
    doc, blob = gltf.read_glb(glb)
    prim = doc["meshes"][0]["primitives"][0]
    attr = prim["attributes"]

    def get(i: int) -> np.ndarray:
        return gltf.accessor_array(doc, blob, i)

    positions = get(attr["POSITION"]).astype(np.float64) @ Z_UP_TO_Y_UP[:3, :3]  # y-up -> z-up
    image = doc["images"][doc["textures"][prim_texture(doc, prim)]["source"]]
    view = doc["bufferViews"][image["bufferView"]]
    png = blob[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
    skin = doc["skins"][0]
    return TexturedMesh(positions=positions, faces=get(prim["indices"]).reshape(-1, 3).astype(np.int64),
                        uvs=get(attr["TEXCOORD_0"]).astype(np.float64), texture=decode_png(png)[..., :3],
                        joints=get(attr["JOINTS_0"]).astype(np.int64),
                        weights=get(attr["WEIGHTS_0"]).astype(np.float64),
                        joint_names=[doc["nodes"][j]["name"] for j in skin["joints"]])


def prim_texture(doc: dict, prim: dict) -> int:
    return doc["materials"][prim["material"]]["pbrMetallicRoughness"]["baseColorTexture"]["index"]


def sample_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """texture (H, W, 3) uint8 at glTF uvs (N, 2) (texel centres at (i + 0.5) / W, clamped) -> (N, 3) in [0, 1]."""
    h, w = texture.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip(uv[:, 1] * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = texture.astype(np.float64) / 255.0
    return ((t[y0, x0] * (1 - fx) + t[y0, x1] * fx) * (1 - fy) + (t[y1, x0] * (1 - fx) + t[y1, x1] * fx) * fy)


def rasterize(mesh: TexturedMesh, camera) -> MeshFrame:
    """One frame of the mesh from `camera` (backend.render.camera.Camera). Triangles with a corner behind
    the near plane are skipped (the benchmark's cameras see the whole body)."""
    w, h = camera.width, camera.height
    uv_px, z = camera.project(mesh.positions)  # (V, 2), (V,)
    tri = uv_px[mesh.faces]  # (F, 3, 2)
    tz = z[mesh.faces]  # (F, 3)
    ok = (tz > camera.near).all(1)
    lo = np.floor(tri.min(1) - 0.5).astype(np.int64) + 1  # first pixel whose centre x + 0.5 >= min
    hi = np.floor(tri.max(1) - 0.5).astype(np.int64)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, (w - 1, h - 1))
    size = hi - lo + 1
    ok &= (size > 0).all(1)
    frag_pix, frag_depth, frag_face, frag_bary = [], [], [], []
    box = np.maximum(size[:, 0], size[:, 1])
    for side in np.unique(box[ok]):
        which = np.flatnonzero(ok & (box == side))
        gy, gx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        offsets = np.stack([gx.ravel(), gy.ravel()], 1)  # (S, 2)
        batch = max(1, 4_000_000 // len(offsets))
        for start in range(0, len(which), batch):
            f = which[start:start + batch]
            px = lo[f, None, :] + offsets[None]  # (f, S, 2)
            centre = px + 0.5
            a, b, c = tri[f, 0, None], tri[f, 1, None], tri[f, 2, None]  # (f, 1, 2)
            area = _edge(a, b, c)  # (f, 1)
            w0, w1, w2 = _edge(b, c, centre), _edge(c, a, centre), _edge(a, b, centre)  # (f, S)
            safe = np.where(np.abs(area) > 1e-12, area, 1.0)
            bary = np.stack([w0, w1, w2], -1) / safe[..., None]  # (f, S, 3)
            inside = (bary >= 0).all(-1) & (np.abs(area) > 1e-12) & (px[..., 0] <= hi[f, None, 0]) \
                & (px[..., 1] <= hi[f, None, 1])
            # perspective-correct: screen barycentrics weight 1/z
            persp = bary / tz[f, None, :]
            depth = 1.0 / persp.sum(-1)  # (f, S)
            persp = persp * depth[..., None]
            sel = np.nonzero(inside)
            frag_pix.append(px[sel][:, 1] * w + px[sel][:, 0])
            frag_depth.append(depth[sel])
            frag_face.append(f[sel[0]])
            frag_bary.append(persp[sel])
    face = np.full(w * h, -1, np.int64)
    rgb = np.zeros((w * h, 3))
    if frag_pix:
        pix, depth = np.concatenate(frag_pix), np.concatenate(frag_depth)
        faces, bary = np.concatenate(frag_face), np.concatenate(frag_bary)
        order = np.lexsort((depth, pix))
        first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]]  # the nearest fragment of each pixel
        face[pix[first]] = faces[first]
        uv = np.einsum("nk,nkc->nc", bary[first], mesh.uvs[mesh.faces[faces[first]]])
        rgb[pix[first]] = sample_bilinear(mesh.texture, uv)
    return MeshFrame(rgb=rgb.reshape(h, w, 3), covered=(face >= 0).reshape(h, w), face=face.reshape(h, w))


def _edge(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Twice the signed area of (a, b, p) over the last axis (..., 2) -> (...)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])
