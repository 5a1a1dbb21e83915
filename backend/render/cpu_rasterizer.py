"""Pure-PyTorch, differentiable, tile-based 3D Gaussian rasterizer: the CPU twin of gsplat's CUDA path.

It follows gsplat 1.5's kernels (ProjectionEWA3DGSFused.cu, IntersectTile.cu, RasterizeToPixels3DGSFwd.cu):

* projection: EWA Jacobian with gsplat's clamped tan-fov limits, 2D covariance + eps2d on the diagonal,
  conic = inverse; opacity-aware screen radius ceil(min(3.33, sqrt(2 ln(255 opacity))) * sqrt(cov_ii));
  culled when z outside (near, far), det <= 0, opacity < 1/255 or the box misses the image;
* colour: SH of degree 0..3 at the normalised direction camera centre -> mean, + 0.5, clamped at 0;
* compositing, per pixel centre (x + 0.5, y + 0.5), front to back in depth order:
  alpha = min(0.999, opacity * exp(-0.5 d^T conic d)), skipped when alpha < 1/255; the pixel stops
  before the Gaussian that would bring its transmittance T to <= 1e-4 (gsplat's "exclusive" stop).

The stop rule is exact in closed form: with P_i the running product of (1 - alpha) over all Gaussians
up to and including i, Gaussian i contributes iff P_i > 1e-4, and its weight is alpha_i * P_{i-1}.
So compositing is a masked cumulative product, evaluated in chunks of Gaussians per tile (8x8 pixels by
default) with P carried between chunks, and a tile drops out once every pixel in it has P <= 1e-4 (exact,
no top-M truncation). Projection and SH run under autograd; compositing is a custom autograd Function whose
backward re-sweeps the tiles front to back (nothing per pixel-Gaussian pair is stored) and gets the
"everything behind me" sum of gsplat's back-to-front pass as (pixel total) - (prefix so far), the total
being read off the forward's output. `backend.render.reference` is the brute-force autograd twin the
tests hold it to (forward and gradients).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD
T_STOP = 1e-4  # gsplat's transmittance stop
MAX_ALPHA = 0.999
EXTEND = 3.33  # gsplat's radius in standard deviations

_SH_C0_T = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), any norm -> (N, 3, 3) rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (N, 4)
    w, x, y, z = q.unbind(-1)  # (N,) each
    r = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)  # (N, 9)
    return r.reshape(-1, 3, 3)


def sh_to_rgb(sh: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Evaluate real SH (3DGS / gsplat basis and signs). sh (N, S, 3), dirs (N, 3) -> colour (N, 3), no offset."""
    out = _SH_C0_T * sh[:, 0]  # (N, 3)
    if degree == 0:
        return out
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (N, 3)
    x, y, z = (d[:, i:i + 1] for i in range(3))  # (N, 1) each
    out = out - _SH_C1 * y * sh[:, 1] + _SH_C1 * z * sh[:, 2] - _SH_C1 * x * sh[:, 3]  # (N, 3)
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z  # (N, 1) each
    c = _SH_C2
    out = (out + c[0] * xy * sh[:, 4] + c[1] * yz * sh[:, 5] + c[2] * (2 * zz - xx - yy) * sh[:, 6]
           + c[3] * xz * sh[:, 7] + c[4] * (xx - yy) * sh[:, 8])  # (N, 3)
    if degree == 2:
        return out
    c = _SH_C3
    return (out + c[0] * y * (3 * xx - yy) * sh[:, 9] + c[1] * xy * z * sh[:, 10]
            + c[2] * y * (4 * zz - xx - yy) * sh[:, 11] + c[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
            + c[4] * x * (4 * zz - xx - yy) * sh[:, 13] + c[5] * z * (xx - yy) * sh[:, 14]
            + c[6] * x * (xx - 3 * yy) * sh[:, 15])  # (N, 3)


def project(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor, opacity_logits: torch.Tensor,
            sh: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int, *,
            sh_degree: int, near: float, far: float, eps2d: float = 0.3, antialias: bool = False,
            ) -> dict[str, torch.Tensor]:
    """Project N Gaussians into one camera; returns the visible ones (M of them), front to back.

    means (N, 3), quats (N, 4) wxyz, log_scales (N, 3), opacity_logits (N,), sh (N, S, 3),
    viewmat (4, 4) world-to-camera (OpenCV), K (3, 3). Returns ids (M,) long, means2d (M, 2),
    conics (M, 3) = (a, b, c) of [[a, b], [b, c]], opacities (M,), colors (M, 3), depths (M,), radii (M, 2).
    """
    rot_v, t_v = viewmat[:3, :3], viewmat[:3, 3]  # (3, 3), (3,)
    mean_c = means @ rot_v.T + t_v  # (N, 3)
    m = rot_v @ quat_to_rotmat(quats) * log_scales.exp()[:, None, :]  # (N, 3, 3) camera-space R S
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x, y, z = mean_c.unbind(-1)  # (N,) each
    with torch.no_grad():
        lim_x = ((width - cx) / fx + 0.15 * width / fx, cx / fx + 0.15 * width / fx)
        lim_y = ((height - cy) / fy + 0.15 * height / fy, cy / fy + 0.15 * height / fy)
    # the Jacobian uses the direction clamped to 1.3x the field of view, as gsplat does
    zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))  # (N,) avoid 0/0 on culled points
    rz = 1.0 / zs  # (N,)
    tx = zs * torch.minimum(torch.maximum(x * rz, -lim_x[1]), lim_x[0])  # (N,)
    ty = zs * torch.minimum(torch.maximum(y * rz, -lim_y[1]), lim_y[0])  # (N,)
    zero = torch.zeros_like(z)  # (N,)
    jac = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], -1).reshape(-1, 2, 3)
    jm = jac @ m  # (N, 2, 3)
    cov2d = jm @ jm.transpose(1, 2)  # (N, 2, 2)
    a0, b, c0 = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]  # (N,) each
    a, c = a0 + eps2d, c0 + eps2d  # (N,) each
    det = a * c - b * b  # (N,)
    opacities = torch.sigmoid(opacity_logits)  # (N,)
    if antialias:
        opacities = opacities * torch.sqrt(((a0 * c0 - b * b) / det.clamp_min(1e-12)).clamp_min(0.0))  # (N,)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)  # (N, 2)
    with torch.no_grad():
        extend = torch.sqrt(2.0 * torch.log((opacities / ALPHA_THRESHOLD).clamp_min(1.0))).clamp_max(EXTEND)
        radii = torch.ceil(extend[:, None] * torch.stack([a, c], -1).clamp_min(0).sqrt())  # (N, 2)
        visible = ((z > near) & (z < far) & (det > 0) & (opacities >= ALPHA_THRESHOLD) & (radii > 0).any(-1)
                   & (means2d[:, 0] + radii[:, 0] > 0) & (means2d[:, 0] - radii[:, 0] < width)
                   & (means2d[:, 1] + radii[:, 1] > 0) & (means2d[:, 1] - radii[:, 1] < height))
        ids = visible.nonzero().squeeze(1)  # (M,)
        ids = ids[torch.argsort(z[ids], stable=True)]  # (M,) front to back
    det_v = _take(det, ids)  # (M,)
    conics = torch.stack([_take(c, ids) / det_v, -_take(b, ids) / det_v, _take(a, ids) / det_v], -1)  # (M, 3)
    campos = -rot_v.T @ t_v  # (3,)
    degree = min(sh_degree, int(round(math.sqrt(sh.shape[1]))) - 1)
    colors = (sh_to_rgb(_take(sh, ids), _take(means, ids) - campos, degree) + 0.5).clamp_min(0.0)  # (M, 3)
    return {"ids": ids, "means2d": _take(means2d, ids), "conics": conics, "opacities": _take(opacities, ids),
            "colors": colors, "depths": _take(z, ids), "radii": _take(radii, ids)}


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[index] along dim 0 for an index of any shape (index_select is much faster than t[index] on CPU)."""
    return t.index_select(0, index.reshape(-1)).reshape(*index.shape, *t.shape[1:])


def tile_bounds(means2d: torch.Tensor, radii: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each Gaussian's box of tiles, clamped to the image: x0, x1, y0, y1 (M,) int32, inclusive.

    The bounds are clamped before the cast to int32, so a Gaussian projected far off screen (a camera a few
    centimetres from a shrunken body) stays on the image's edge tiles instead of wrapping around."""
    with torch.no_grad():
        lo = torch.floor((means2d - radii) / tile_size)  # (M, 2)
        hi = torch.floor((means2d + radii) / tile_size)  # (M, 2)
        limit = torch.tensor([tiles_x - 1, tiles_y - 1], dtype=lo.dtype, device=lo.device)  # (2,)
        lo = torch.minimum(lo.clamp_min(0), limit).to(torch.int32)  # (M, 2)
        hi = torch.minimum(hi.clamp_min(0), limit).to(torch.int32)  # (M, 2)
    return lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]


def tile_pair_counts(means2d: torch.Tensor, radii: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int,
                     ) -> torch.Tensor:
    """(tiles_y, tiles_x) int64: how many Gaussians each tile's list holds, without listing them.

    A 2D difference array over the Gaussians' tile boxes (O(M + tiles) memory and time): the renderer's cost
    in its own unit, Gaussian-tile pairs, known before any pair is made. Its sum is `bin_tiles`'s P."""
    x0, x1, y0, y1 = (t.long() for t in tile_bounds(means2d, radii, tile_size, tiles_x, tiles_y))  # (M,) each
    diff = torch.zeros((tiles_y + 1) * (tiles_x + 1), dtype=torch.int64, device=means2d.device)
    ones = torch.ones_like(x0)
    w = tiles_x + 1
    for ys, xs, sign in ((y0, x0, 1), (y0, x1 + 1, -1), (y1 + 1, x0, -1), (y1 + 1, x1 + 1, 1)):
        diff.index_add_(0, ys * w + xs, ones * sign)
    grid = diff.reshape(tiles_y + 1, tiles_x + 1).cumsum(0).cumsum(1)  # (tiles_y + 1, tiles_x + 1)
    return grid[:tiles_y, :tiles_x]


def split_tiles(counts: torch.Tensor, max_pairs: int) -> list[tuple[int, int, int, int]]:
    """Cover the tile grid with rectangles (tx0, ty0, tx1, ty1), ends exclusive, of at most `max_pairs`
    Gaussian-tile pairs each (or one tile, when a single tile holds more): bands of whole tile rows, a row
    above the budget cut into runs of tiles. counts (tiles_y, tiles_x) from `tile_pair_counts`."""
    tiles_y, tiles_x = counts.shape
    rows = counts.sum(1).tolist()  # pairs per tile row
    rects: list[tuple[int, int, int, int]] = []
    y = 0
    while y < tiles_y:
        if rows[y] > max_pairs:  # one row is too much: runs of tiles along it
            cols = counts[y].tolist()
            x = 0
            while x < tiles_x:
                end, total = x + 1, cols[x]
                while end < tiles_x and total + cols[end] <= max_pairs:
                    total += cols[end]
                    end += 1
                rects.append((x, y, end, y + 1))
                x = end
            y += 1
            continue
        end, total = y + 1, rows[y]
        while end < tiles_y and rows[end] <= max_pairs and total + rows[end] <= max_pairs:
            total += rows[end]
            end += 1
        rects.append((0, y, tiles_x, end))
        y = end
    return rects


def bin_tiles(means2d: torch.Tensor, radii: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int,
              rect: tuple[int, int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Gaussian, tile) pairs, grouped by tile and kept in depth order inside each tile.

    means2d (M, 2), radii (M, 2) of Gaussians already sorted front to back. Returns gauss (P,) indices
    into the M Gaussians, tile_start (T,) and tile_count (T,) with T = tiles_x * tiles_y. With `rect`
    (tx0, ty0, tx1, ty1), ends exclusive, only the pairs of those tiles, numbered row-major inside the
    rectangle (T = its tile count); the pairs of the whole image are the union over rectangles.
    """
    tx0, ty0, tx1, ty1 = rect if rect is not None else (0, 0, tiles_x, tiles_y)
    rx, ry = tx1 - tx0, ty1 - ty0
    with torch.no_grad():
        i32 = torch.int32  # pairs stay int32 (half the memory of int64); the sort key as narrow as fits
        x0, x1, y0, y1 = tile_bounds(means2d, radii, tile_size, tiles_x, tiles_y)  # (M,) each
        dev = means2d.device
        members = None
        if rect is not None:  # the Gaussians that touch the rectangle, their boxes cut to it
            keep = (x1 >= tx0) & (x0 < tx1) & (y1 >= ty0) & (y0 < ty1)  # (M,)
            members = keep.nonzero().squeeze(1).to(i32)  # (Mr,) ascending: depth order kept
            x0, x1, y0, y1 = (t.index_select(0, members) for t in (x0, x1, y0, y1))
            x0, x1 = x0.clamp_min(tx0).sub_(tx0), x1.clamp_max(tx1 - 1).sub_(tx0)
            y0, y1 = y0.clamp_min(ty0).sub_(ty0), y1.clamp_max(ty1 - 1).sub_(ty0)
        nx = x1 - x0 + 1  # (M,)
        counts = (nx * (y1 - y0 + 1)).long()  # (M,)
        ends = torch.cumsum(counts, 0)  # (M,)
        total = int(ends[-1]) if len(ends) else 0
        if total >= 2 ** 31:
            raise ValueError(f"{total} Gaussian-tile pairs overflow int32; use a larger tile_size or fewer Gaussians")
        gauss = torch.repeat_interleave(torch.arange(len(counts), dtype=i32, device=dev), counts)  # (P,)
        # index_select is several times faster than advanced indexing for these long gathers
        local = torch.arange(total, dtype=i32, device=dev).sub_((ends - counts).to(i32).index_select(0, gauss))  # (P,)
        nx_g = nx.index_select(0, gauss)  # (P,)
        tile = torch.div(local, nx_g, rounding_mode="floor").add_(y0.index_select(0, gauss)).mul_(rx)
        tile.add_(local.remainder_(nx_g)).add_(x0.index_select(0, gauss))  # (P,) tile id of each pair
        del local, nx_g
        key = tile.to(torch.int16) if rx * ry < 2 ** 15 else tile  # int16 sorts ~2x faster
        tile_count = torch.bincount(tile, minlength=rx * ry)  # (T,)
        del tile
        order = torch.sort(key, stable=True)[1]  # (P,) stable: keeps depth order inside a tile
        del key
        gauss = gauss.index_select(0, order)  # (P,)
        del order
        if members is not None:
            gauss = members.index_select(0, gauss)  # (P,) back to indices into the M Gaussians
        tile_start = torch.cumsum(tile_count, 0) - tile_count  # (T,)
    return gauss, tile_start, tile_count


class _Tiles:
    """Tile geometry and per-tile depth-sorted Gaussian lists for one image."""

    def __init__(self, means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int, tile_size: int,
                 rect: tuple[int, int, int, int] | None = None):
        """rect (tx0, ty0, tx1, ty1), ends exclusive: only those tiles of the image (one block of `composite`)."""
        dev, dt = means2d.device, means2d.dtype
        self.size, self.width, self.height = tile_size, width, height
        full_x, full_y = -(-width // tile_size), -(-height // tile_size)
        tx0, ty0, tx1, ty1 = rect if rect is not None else (0, 0, full_x, full_y)
        self.rect = (tx0, ty0, tx1, ty1)
        self.tiles_x, self.tiles_y = tx1 - tx0, ty1 - ty0
        self.n_tiles, self.n_pix = self.tiles_x * self.tiles_y, tile_size * tile_size
        gauss, self.start, self.count = bin_tiles(means2d, radii, tile_size, full_x, full_y, rect)
        self.pad = len(means2d)  # index of a dummy Gaussian with opacity 0 that fills ragged lists
        self.gauss = torch.cat([gauss, gauss.new_full((1,), self.pad)])  # (P + 1,)
        ar = torch.arange(tile_size, device=dev, dtype=dt) + 0.5  # (ts,) pixel centres inside a tile
        self.pix_x = ar.repeat(tile_size)  # (n_pix,) row-major inside the tile
        self.pix_y = ar.repeat_interleave(tile_size)  # (n_pix,)
        ids = torch.arange(self.n_tiles, device=dev)  # (T,)
        self.origin = torch.stack([(ids % self.tiles_x + tx0) * tile_size,
                                   (ids // self.tiles_x + ty0) * tile_size], -1).to(dt)  # (T, 2) image pixels
        # pixels outside the image (ragged last tiles) start "done" so they never hold a tile open
        self.inside = ((self.origin[:, None, 0] + self.pix_x < width)
                       & (self.origin[:, None, 1] + self.pix_y < height))  # (T, n_pix)

    def sweep(self, chunk_elements: int):
        """Yield (tiles (Tb,), slots (Tb, K) into `gauss`) front to back; the caller updates `self.trans`.

        A tile leaves once its list is exhausted or every pixel's running transmittance is <= T_STOP.
        """
        self.trans = self.inside.to(self.origin.dtype)  # (T, n_pix) running product of (1 - alpha)
        dev = self.count.device
        active = torch.arange(self.n_tiles, device=dev)[self.count > 0]  # (Ta,)
        k0 = 0
        while active.numel() > 0:
            kc = max(8, min(256, chunk_elements // (len(active) * self.n_pix)))
            tb = max(1, chunk_elements // (kc * self.n_pix))
            k = k0 + torch.arange(kc, device=dev)  # (kc,)
            for s in range(0, len(active), tb):
                tiles = active[s:s + tb]  # (Tb,)
                valid = k < self.count[tiles, None]  # (Tb, kc)
                yield tiles, torch.where(valid, self.start[tiles, None] + k, len(self.gauss) - 1)  # (Tb, kc)
            k0 += kc
            keep = (self.count[active] > k0) & (self.trans[active].amax(-1) > T_STOP)  # (Ta,)
            active = active[keep]

    def to_image(self, per_tile: torch.Tensor) -> torch.Tensor:
        """(T, n_pix, C) -> (h, w, C): the image (or this block's part of it, cut at the image's edge)."""
        ts, c = self.size, per_tile.shape[-1]
        img = per_tile.reshape(self.tiles_y, self.tiles_x, ts, ts, c).permute(0, 2, 1, 3, 4)
        tx0, ty0 = self.rect[:2]
        return img.reshape(self.tiles_y * ts, self.tiles_x * ts, c)[:self.height - ty0 * ts, :self.width - tx0 * ts]


def _alpha_block(g: torch.Tensor, origin: torch.Tensor, tiles: "_Tiles", need_live: bool = True,
                 ) -> tuple[torch.Tensor, ...]:
    """g (Tb, K, 6) = mean x, mean y, conic a b c, opacity; origin (Tb, 2) -> dx, dy, alpha (Tb, P, K).

    alpha is 0 where gsplat skips (alpha < 1/255 or sigma < 0); `live` marks where d alpha / d params != 0.
    """
    dx = tiles.pix_x[None, :, None] - (g[:, None, :, 0] - origin[:, None, None, 0])  # (Tb, P, K)
    dy = tiles.pix_y[None, :, None] - (g[:, None, :, 1] - origin[:, None, None, 1])  # (Tb, P, K)
    sigma = dx * dy  # (Tb, P, K)
    sigma.mul_(g[:, None, :, 3])
    sq = torch.mul(dx, dx)  # (Tb, P, K)
    sigma.addcmul_(sq, 0.5 * g[:, None, :, 2])
    torch.mul(dy, dy, out=sq)
    sigma.addcmul_(sq, 0.5 * g[:, None, :, 4])
    neg = sigma < 0  # (Tb, P, K)
    alpha = sigma.neg_().exp_().mul_(g[:, None, :, 5])  # (Tb, P, K) reuses sigma
    live = alpha <= MAX_ALPHA if need_live else None  # (Tb, P, K) clamped alphas carry no gradient (as gsplat)
    alpha.clamp_max_(MAX_ALPHA).masked_fill_(neg | (alpha < ALPHA_THRESHOLD), 0.0)
    return dx, dy, alpha, live


def _weights(alpha: torch.Tensor, t_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha (Tb, P, K), t_in (Tb, P) -> w (Tb, P, K) masked by gsplat's stop, p_excl (Tb, P, K), t_out (Tb, P)."""
    p_incl = torch.cumprod(1.0 - alpha, -1).mul_(t_in[:, :, None])  # (Tb, P, K)
    p_excl = torch.cat([t_in[:, :, None], p_incl[:, :, :-1]], -1)  # (Tb, P, K)
    w = (alpha * p_excl).masked_fill_(p_incl <= T_STOP, 0.0)  # (Tb, P, K)
    return w, p_excl, p_incl[:, :, -1]


class _Composite(torch.autograd.Function):
    """params (M+1, 6), feats (M+1, 4) -> per-tile accumulation (T, n_pix, 5): sum w f (4) and sum w (1)."""

    @staticmethod
    def forward(ctx, params: torch.Tensor, feats: torch.Tensor, tiles: _Tiles, chunk_elements: int):
        accum = params.new_zeros(tiles.n_tiles, tiles.n_pix, 5)  # (T, n_pix, 5)
        feats = torch.cat([feats, feats.new_ones(len(feats), 1)], -1)  # (M+1, 5): a ones column sums w
        for tb, slots in tiles.sweep(chunk_elements):
            gid = _take(tiles.gauss, slots)  # (Tb, K)
            _, _, alpha, _ = _alpha_block(_take(params, gid), tiles.origin[tb], tiles, need_live=False)  # (Tb, P, K)
            w, _, t_out = _weights(alpha, tiles.trans[tb])  # (Tb, P, K), _, (Tb, P)
            contrib = torch.bmm(w, _take(feats, gid))  # (Tb, P, 5)
            accum.index_add_(0, tb, contrib)
            tiles.trans.index_copy_(0, tb, t_out)
        ctx.save_for_backward(params, feats, accum)  # feats (M+1, 5) with the ones column
        ctx.tiles, ctx.chunk_elements = tiles, chunk_elements
        return accum

    @staticmethod
    def backward(ctx, grad_accum: torch.Tensor):  # grad_accum (T, n_pix, 5)
        params, feats, accum = ctx.saved_tensors
        tiles: _Tiles = ctx.tiles
        grad_accum = grad_accum.contiguous()
        # sum_j w_j u_j over a pixel's whole list, with u_j = dL/dw_j = grad . (f_j, 1)
        total = (grad_accum * accum).sum(-1)  # (T, n_pix)
        done = torch.zeros_like(total)  # (T, n_pix) prefix of w u over the chunks already swept
        grad_params = torch.zeros_like(params)  # (M+1, 6)
        grad_feats = feats.new_zeros(len(feats), 4)  # (M+1, 4)
        for tb, slots in tiles.sweep(ctx.chunk_elements):
            gid = _take(tiles.gauss, slots)  # (Tb, K)
            g, f, gf = _take(params, gid), _take(feats, gid), grad_accum[tb]  # (Tb, K, 6), (Tb, K, 5), (Tb, P, 5)
            dx, dy, alpha, live = _alpha_block(g, tiles.origin[tb], tiles)  # (Tb, P, K) each
            w, p_excl, t_out = _weights(alpha, tiles.trans[tb])  # (Tb, P, K), (Tb, P, K), (Tb, P)
            tiles.trans.index_copy_(0, tb, t_out)
            u = torch.bmm(gf, f.transpose(1, 2))  # (Tb, P, K) dL/dw
            wu = w * u  # (Tb, P, K)
            later = (total[tb] - done[tb])[:, :, None] - torch.cumsum(wu, -1)  # (Tb, P, K) sum_{j>k} w_j u_j
            done.index_add_(0, tb, wu.sum(-1))
            # dL/dalpha_k = P_{k-1} u_k - later_k / (1 - alpha_k), zero once the pixel has stopped
            g_a = (p_excl * u).sub_(later / (1.0 - alpha)).mul_((w > 0) & live)  # (Tb, P, K)
            g_o = (g_a * alpha / g[:, None, :, 5].clamp_min(1e-30)).sum(1)  # (Tb, K) alpha = o exp(-sigma)
            g_s = g_a.mul_(alpha).neg_()  # (Tb, P, K) dL/dsigma = -alpha dL/dalpha
            gsx, gsy = g_s * dx, g_s * dy  # (Tb, P, K) each
            ga_ = 0.5 * (gsx * dx).sum(1)  # (Tb, K) dL/dconic_a
            gb_ = (gsx * dy).sum(1)  # (Tb, K)
            gc_ = 0.5 * (gsy * dy).sum(1)  # (Tb, K)
            sx, sy = gsx.sum(1), gsy.sum(1)  # (Tb, K) each
            gmx = -(g[..., 2] * sx + g[..., 3] * sy)  # (Tb, K) dsigma/dmx = -(a dx + b dy)
            gmy = -(g[..., 3] * sx + g[..., 4] * sy)  # (Tb, K)
            gp = torch.stack([gmx, gmy, ga_, gb_, gc_, g_o], -1)  # (Tb, K, 6)
            grad_params.index_add_(0, gid.reshape(-1), gp.reshape(-1, 6))
            grad_feats.index_add_(0, gid.reshape(-1), torch.bmm(w.transpose(1, 2), gf)[..., :4].reshape(-1, 4))
        return grad_params, grad_feats, None, None


class RenderCostError(ValueError):
    """A frame above its cost limit, counted in Gaussian-tile pairs before any pair is made."""

    def __init__(self, pairs: int, limit: int, tile_size: int, where: str = "the frame") -> None:
        super().__init__(f"{where} makes {pairs} Gaussian-tile pairs ({tile_size}-pixel tiles), the limit is "
                         f"{limit}; move the camera back, render smaller, or keep bone scales near 1")
        self.pairs, self.limit, self.tile_size = pairs, limit, tile_size


def composite(proj: dict[str, torch.Tensor], width: int, height: int, background: torch.Tensor,
              tile_size: int = 8, chunk_elements: int = 1 << 20, block_pairs: int = 1 << 22,
              max_pairs: int | None = None, between_blocks: Callable[[], None] | None = None,
              ) -> tuple[torch.Tensor, ...]:
    """Alpha-composite projected Gaussians (from `project`) into one image.

    background (3,). Returns rgb (H, W, 3), alpha (H, W, 1), depth (H, W, 1) (expected depth).
    chunk_elements bounds the (tiles x pixels x Gaussians) block evaluated at once (~40 bytes each).
    block_pairs bounds the Gaussian-tile pairs listed at once (~32 bytes each while they are sorted): the
    pairs are counted per tile first (`tile_pair_counts`), and an image above the budget is composited in
    rectangles of tiles of at most block_pairs pairs each (`split_tiles`; every pixel sums the same list in
    the same order, so the image equals the one-block image up to float rounding, as for chunk_elements,
    ~1e-6). max_pairs: refuse the frame (RenderCostError) above that many pairs.
    between_blocks is called before each block (e.g. a job's cancel check).
    """
    means2d, conics, opac = proj["means2d"], proj["conics"], proj["opacities"]  # (M, 2), (M, 3), (M,)
    if block_pairs < 1:
        raise ValueError(f"block_pairs must be positive, got {block_pairs}")
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    counts = tile_pair_counts(means2d.detach(), proj["radii"], tile_size, tiles_x, tiles_y)  # (ty, tx)
    pairs = int(counts.sum())
    if max_pairs is not None and pairs > max_pairs:
        raise RenderCostError(pairs, max_pairs, tile_size)
    rects = [None] if pairs <= block_pairs else split_tiles(counts, block_pairs)
    del counts
    params = torch.cat([means2d, conics, opac[:, None]], -1)  # (M, 6)
    params = torch.cat([params, params.new_zeros(1, 6)], 0)  # (M + 1, 6) last row: padding, opacity 0
    feats = torch.cat([proj["colors"], proj["depths"][:, None]], -1)  # (M, 4) rgb + depth
    feats = torch.cat([feats, feats.new_zeros(1, 4)], 0)  # (M + 1, 4)
    if rects == [None]:
        if between_blocks is not None:
            between_blocks()
        tiles = _Tiles(means2d.detach(), proj["radii"], width, height, tile_size)
        img = tiles.to_image(_Composite.apply(params, feats, tiles, chunk_elements))  # (H, W, 5)
    else:
        img = params.new_zeros(height, width, 5)  # (H, W, 5)
        for rect in rects:
            if between_blocks is not None:
                between_blocks()
            tiles = _Tiles(means2d.detach(), proj["radii"], width, height, tile_size, rect)
            block = tiles.to_image(_Composite.apply(params, feats, tiles, chunk_elements))  # (h, w, 5)
            x, y = rect[0] * tile_size, rect[1] * tile_size
            img[y:y + block.shape[0], x:x + block.shape[1]] = block
            del tiles, block
    alpha = img[..., 4:5]  # (H, W, 1)
    rgb = img[..., :3] + (1.0 - alpha) * background  # (H, W, 3)
    depth = img[..., 3:4] / alpha.clamp_min(1e-10)  # (H, W, 1)
    return rgb, alpha, depth
