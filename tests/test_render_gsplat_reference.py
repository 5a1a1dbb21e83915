"""The CPU twin against gsplat's own pure-PyTorch reference math (runs without CUDA).

tests/test_render_gsplat.py holds the twin to gsplat's CUDA kernels but is skipped without a GPU. Here the
twin's pieces are held, on CPU, against the functions gsplat ships in `gsplat.cuda._torch_impl` (the
reference twin of its kernels, used by gsplat's own `_rasterization`):

* `_quat_to_rotmat`, `_quat_scale_to_covar_preci`, `_world_to_cam`: 3D covariance (unnormalised wxyz quats,
  scales = exp(log_scales)) and its camera-space form;
* `_persp_proj`, `_fully_fused_projection`: 2D means, 2D covariance + eps2d, conics, depths, near/far and
  off-image culling, antialiasing compensation;
* `_spherical_harmonics` (`_eval_sh_bases_fast`): SH colour of degree 0..3, with `rasterization`'s
  `clamp_min(colors + 0.5, 0)`;
* a compact per-pixel compositor written here with the rules of RasterizeToPixels3DGSFwd.cu (pixel centres
  at +0.5, alpha = min(0.999, o exp(-sigma)), skip alpha < 1/255, stop before T <= 1e-4) fed by the above:
  images and, by autograd, gradients.

One deliberate difference: `_fully_fused_projection` is gsplat's "minimal" torch version and uses a plain
3.33-sigma radius without opacity culling, while the CUDA kernel (ProjectionEWA3DGSFused.cu) the twin follows
culls opacity < 1/255 and uses the opacity-aware extend min(3.33, sqrt(2 ln(255 o))). The radii and the culled
set are therefore compared with the CUDA rule evaluated on gsplat's torch outputs; the reference images keep
every Gaussian the torch version keeps, which checks that the tighter culling drops nothing visible.
Everything runs in float64 so disagreements are at round-off level; one case repeats the image in float32.

Conditioning. The comparison is continuous in the inputs except at a few decisions: the depth order of two
Gaussians that meet on a pixel, alpha against 1/255 (skip), raw alpha against 0.999 (clamp, and no gradient
through a clamped alpha), and the running transmittance against 1e-4 (stop). Twin and reference evaluate the
same arithmetic in different orders (and torch's kernels differ per CPU: vector width, MKL path, thread
split), so each quantity may differ by a few ulps between them. Where a decision sits within those ulps of its
threshold, one side may take it the other way, and the difference is no longer round-off: two Gaussians pinned
at the same depth 1.5 that meet on a few pixels swapped order on an Intel Xeon and moved the `means` gradient
by 7e-6 relative (the sum alpha_1 alpha_2 (f_1 - f_2) at the shared pixels). So the scenes keep every decision
away from its threshold, and `decision_margins` proves it: the smallest relative distance of any decision
from its threshold must exceed MARGIN_F64 (1e-9), about 1e4 times the round-off of the quantities compared
(a product of <= 250 factors, each correct to an ulp: < 250 * 2.2e-16 = 6e-14). Within those margins the
two sides agree up to arithmetic round-off, and the tolerances below are that round-off bound.
"""
from __future__ import annotations

import math

import pytest
import torch

# gsplat is a dependency (pyproject.toml), and these functions are pure torch: a missing one fails, not skips
import gsplat.cuda._torch_impl as gs  # noqa: E402

from backend.avatar.gaussians import Gaussians  # noqa: E402
from backend.render import RenderOptions, render  # noqa: E402
from backend.render.camera import Camera, look_at  # noqa: E402
from backend.render.cpu_rasterizer import project, quat_to_rotmat, sh_to_rgb  # noqa: E402

from .render_margins import assert_well_conditioned, decision_margins  # noqa: E402,F401

F64 = torch.float64
W, H = 48, 40  # non-square
ALPHA_MIN, ALPHA_MAX, T_STOP = 1.0 / 255.0, 0.999, 1e-4  # gsplat's rasterizer constants
EPS64 = torch.finfo(F64).eps  # 2.2e-16
EPS32 = torch.finfo(torch.float32).eps  # 1.2e-7
# the smallest relative distance of a discrete decision from its threshold (see the module docstring):
# float64: 1e4 x the round-off of a product of 250 factors. float32 (one image test), per decision, from the
# length of each chain in float32 ulps: the depth is a 3-term dot product with some cancellation (16 ulps);
# alpha = o exp(-sigma) with sigma <= 5.5 at the thresholds, sigma from ~20 roundings (projection, 2x2
# inverse) -> 5.5 x 8 ulps ~ 48; the transmittance is a product of the <= ~100 alphas in front (128 ulps)
MARGIN_F64 = 1e-9
MARGIN_F32 = {"order": 16 * EPS32, "skip": 48 * EPS32, "clamp": 48 * EPS32, "stop": 128 * EPS32}


def _k(fx: float, fy: float, cx: float, cy: float) -> list[list[float]]:
    return [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]


CAMERAS = {
    # fx != fy, principal point off centre, near plane through a group of small Gaussians
    "front": Camera(look_at((0.3, -2.5, 0.4), (0.0, 0.0, 0.05)), _k(52.0, 47.0, 23.5, 21.0), W, H, near=0.3),
    # principal point far off centre; the near plane cuts through the cloud
    "oblique": Camera(look_at((-1.6, -1.7, 0.9), (0.1, 0.0, 0.0)), _k(38.0, 61.0, 12.0, 30.5), W, H, near=1.9),
    # wide angle close to the cloud: many Gaussians off-screen beyond gsplat's 1.3x-fov Jacobian clamp
    "wide": Camera(look_at((1.2, -0.9, -0.6), (0.0, 0.2, 0.0)), _k(21.0, 19.0, 26.0, 18.0), W, H, near=0.05),
}


def _to_world(cam: Camera, pc: torch.Tensor) -> torch.Tensor:
    """Camera-space points (n, 3) -> world."""
    r = torch.as_tensor(cam.world_to_camera[:3, :3], dtype=F64)
    t = torch.as_tensor(cam.world_to_camera[:3, 3], dtype=F64)
    return (pc - t) @ r


def pinned(cam: Camera, uv: list[tuple[float, float]], z: float) -> torch.Tensor:
    """World points at camera depth z that project exactly onto the pixel coordinates uv."""
    (fx, _, cx), (_, fy, cy) = cam.intrinsics[0], cam.intrinsics[1]
    pc = torch.tensor([[(u - cx) / fx * z, (v - cy) / fy * z, z] for u, v in uv], dtype=F64)
    return _to_world(cam, pc)


def make_scene(seed: int = 0, n_cloud: int = 150) -> Gaussians:
    """229 Gaussians: a cloud, big near-opaque ones (T stop), some below 1/255 opacity, some straddling the
    front camera's near plane, some off-screen for the front camera, three per camera centred on pixel centres
    (0.999 clamp). Unnormalised quats."""
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=F64)

    means, log_scales, opac = [], [], []
    means.append((torch.rand(n_cloud, 3, generator=g, dtype=F64) - 0.5) * torch.tensor([1.6, 1.2, 1.2], dtype=F64))
    log_scales.append(torch.log(u(0.02, 0.15, n_cloud, 3)))
    o = u(0.05, 0.95, n_cloud)
    o[:8] = u(0.0005, 0.0035, 8)  # below gsplat's 1/255: culled, never visible
    opac.append(o)
    # big, nearly opaque: pixels reach the T <= 1e-4 stop
    means.append((torch.rand(20, 3, generator=g, dtype=F64) - 0.5) * torch.tensor([1.2, 0.8, 0.8], dtype=F64))
    log_scales.append(torch.log(u(0.12, 0.35, 20, 3)))
    opac.append(u(0.998, 0.999999, 20))
    # straddling the front camera's near plane (z in 0.22..0.40, near 0.3)
    front = CAMERAS["front"]
    z = u(0.22, 0.40, 20)
    pc = torch.stack([u(-0.4, 0.4, 20) * z, u(-0.4, 0.4, 20) * z, z], -1)
    means.append(_to_world(front, pc))
    log_scales.append(torch.log(u(0.004, 0.02, 20, 3)))
    opac.append(u(0.3, 0.95, 20))
    # off-screen for the front camera, some reaching into the image, some beyond the Jacobian clamp
    z = u(1.5, 3.0, 30)
    sx = torch.where(torch.rand(30, generator=g) < 0.5, -1.0, 1.0).to(F64)
    pc = torch.stack([sx * u(0.5, 1.2, 30) * z, u(-0.6, 0.6, 30) * z, z], -1)
    means.append(_to_world(front, pc))
    log_scales.append(torch.log(u(0.05, 0.35, 30, 3)))
    opac.append(u(0.3, 0.95, 30))

    # nearly opaque, small, in front, centred exactly on pixel centres: alpha there is clamped to 0.999
    # (one depth per Gaussian: equal depths are an order decided by round-off, see the module docstring)
    for cam, z0 in ((front, 1.0), (CAMERAS["oblique"], 2.0), (CAMERAS["wide"], 0.3)):
        for (px, py), dz in zip([(10.5, 12.5), (30.5, 25.5), (40.5, 8.5)], (0.0, 0.01, 0.02)):
            means.append(pinned(cam, [(px, py)], z0 * (1.0 + dz)))
        log_scales.append(torch.log(torch.full((3, 3), 0.05 * z0, dtype=F64)))
        opac.append(torch.full((3,), 1 - 1e-6, dtype=F64))

    means_t = torch.cat(means)
    n = len(means_t)
    quats = torch.randn(n, 4, generator=g, dtype=F64) * u(0.3, 3.0, n, 1)  # any norm: both sides normalise
    sh = 0.4 * torch.randn(n, 16, 3, generator=g, dtype=F64)
    return Gaussians(means=means_t, rotations=quats, log_scales=torch.cat(log_scales),
                     opacity_logits=torch.logit(torch.cat(opac)), sh=sh)


SCENE = make_scene()


# ---------------------------------------------------------------------------------------- gsplat reference
def gsplat_reference(g: Gaussians, cam: Camera, *, sh_degree: int, antialias: bool = False, eps2d: float = 0.3,
                     ) -> dict[str, torch.Tensor]:
    """gsplat's `_rasterization` front end, for one camera, built only from gsplat's torch functions."""
    dt = g.means.dtype
    viewmats = torch.as_tensor(cam.world_to_camera, dtype=dt)[None]  # (1, 4, 4)
    ks = torch.as_tensor(cam.intrinsics, dtype=dt)[None]  # (1, 3, 3)
    covars, _ = gs._quat_scale_to_covar_preci(g.rotations, g.log_scales.exp(), True, False, triu=False)  # (N, 3, 3)
    radii, means2d, depths, conics, comp = gs._fully_fused_projection(
        g.means, covars, viewmats, ks, cam.width, cam.height, eps2d=eps2d, near_plane=cam.near,
        far_plane=cam.far, calc_compensations=antialias)
    with torch.no_grad():  # the dilated 2D covariance, as _fully_fused_projection forms it internally
        means_c, covars_c = gs._world_to_cam(g.means, covars, viewmats)
        _, cov2d = gs._persp_proj(means_c, covars_c, ks, cam.width, cam.height)
        cov2d = cov2d[0] + eps2d * torch.eye(2, dtype=dt)  # (N, 2, 2)
    opacities = torch.sigmoid(g.opacity_logits)
    if antialias:
        opacities = opacities * comp[0]
    campos = torch.inverse(viewmats)[0, :3, 3]  # (3,) as rasterization() does
    raw_sh = gs._spherical_harmonics(sh_degree, g.means - campos, g.sh)  # (N, 3)
    colors = torch.clamp_min(raw_sh + 0.5, 0.0)  # (N, 3) as rasterization() does
    return {"radii": radii[0], "valid": (radii[0] > 0).all(-1), "means2d": means2d[0], "depths": depths[0],
            "conics": conics[0], "cov2d": cov2d, "opacities": opacities, "colors": colors, "raw_sh": raw_sh}


def cuda_radii(ref: dict[str, torch.Tensor], cam: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """ProjectionEWA3DGSFused.cu's radius and culling on gsplat's torch values: radii (N, 2), visible (N,)."""
    o = ref["opacities"].detach()
    extend = torch.sqrt(2.0 * torch.log((o / ALPHA_MIN).clamp_min(1.0))).clamp_max(3.33)
    cov = ref["cov2d"]
    radii = torch.ceil(extend[:, None] * torch.stack([cov[:, 0, 0], cov[:, 1, 1]], -1).sqrt())
    m, z = ref["means2d"].detach(), ref["depths"].detach()
    visible = ((z > cam.near) & (z < cam.far) & (o >= ALPHA_MIN) & (radii > 0).any(-1)
               & (m[:, 0] + radii[:, 0] > 0) & (m[:, 0] - radii[:, 0] < cam.width)
               & (m[:, 1] + radii[:, 1] > 0) & (m[:, 1] - radii[:, 1] < cam.height))
    return radii, visible


def composite_per_pixel(ref: dict[str, torch.Tensor], cam: Camera, background: torch.Tensor,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]:
    """Every Gaussian gsplat's torch projection keeps, against every pixel centre, front to back.

    RasterizeToPixels3DGSFwd.cu per pixel: sigma = 1/2 d^T conic d, alpha = min(0.999, o exp(-sigma));
    skip if sigma < 0 or alpha < 1/255; next_T = T (1 - alpha); if next_T <= 1e-4 stop (this one excluded);
    else add alpha T (rgb, depth) and T = next_T. Returns rgb (H, W, 3), alpha (H, W, 1), expected depth
    (H, W, 1) and counts of how often the clamp / stop rules fired.
    """
    dt = ref["means2d"].dtype
    ids = ref["valid"].nonzero().squeeze(1)
    ids = ids[torch.argsort(ref["depths"].detach()[ids], stable=True)]
    ys, xs = torch.meshgrid(torch.arange(cam.height, dtype=dt) + 0.5, torch.arange(cam.width, dtype=dt) + 0.5,
                            indexing="ij")  # (H, W)
    trans = torch.ones(cam.height, cam.width, dtype=dt)
    done = torch.zeros(cam.height, cam.width, dtype=torch.bool)
    acc = torch.zeros(cam.height, cam.width, 4, dtype=dt)
    feats = torch.cat([ref["colors"], ref["depths"][:, None]], -1)  # (N, 4)
    stats = {"clamped": 0, "stopped": 0}
    for i in ids.tolist():
        (mx, my), (a, b, c), o = ref["means2d"][i], ref["conics"][i], ref["opacities"][i]
        dx, dy = xs - mx, ys - my
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        raw = o * torch.exp(-sigma)
        alpha = torch.clamp_max(raw, ALPHA_MAX)
        skip = done | (sigma < 0) | (alpha < ALPHA_MIN)
        next_t = trans * (1.0 - alpha)
        stop = ~skip & (next_t <= T_STOP)
        use = ~skip & ~stop
        stats["clamped"] += int((use & (raw > ALPHA_MAX)).sum())
        stats["stopped"] += int(stop.sum())
        done = done | stop
        acc = acc + torch.where(use, alpha * trans, 0.0)[..., None] * feats[i]
        trans = torch.where(use, next_t, trans)
    alpha_img = (1.0 - trans)[..., None]
    rgb = acc[..., :3] + (1.0 - alpha_img) * background
    depth = acc[..., 3:4] / alpha_img.clamp_min(1e-10)
    return rgb, alpha_img, depth, stats


def twin_project(g: Gaussians, cam: Camera, *, sh_degree: int, antialias: bool = False) -> dict[str, torch.Tensor]:
    dt = g.means.dtype
    return project(g.means, g.rotations, g.log_scales, g.opacity_logits, g.sh,
                   torch.as_tensor(cam.world_to_camera, dtype=dt), torch.as_tensor(cam.intrinsics, dtype=dt),
                   cam.width, cam.height, sh_degree=sh_degree, near=cam.near, far=cam.far, eps2d=0.3,
                   antialias=antialias)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


# ------------------------------------------------------------------------------------------ 1. covariance
def test_rotation_and_covariance_match_gsplat():
    g = SCENE
    r_twin, r_gs = quat_to_rotmat(g.rotations), gs._quat_to_rotmat(g.rotations)
    assert max_err(r_twin, r_gs) < 1e-13
    # how `project` forms the 3D covariance: (R diag(exp(log_scales)))(R diag(exp(log_scales)))^T
    m = quat_to_rotmat(g.rotations) * g.log_scales.exp()[:, None, :]
    cov_twin = m @ m.transpose(1, 2)
    cov_gs, prec_gs = gs._quat_scale_to_covar_preci(g.rotations, g.log_scales.exp())
    torch.testing.assert_close(cov_twin, cov_gs, rtol=1e-12, atol=1e-15)
    eye = torch.eye(3, dtype=F64).expand_as(cov_twin)
    torch.testing.assert_close(cov_twin @ prec_gs, eye, rtol=0, atol=1e-9)
    # quaternion norm and sign do not matter
    for q in (2.5 * g.rotations, -g.rotations):
        assert max_err(quat_to_rotmat(q), r_gs) < 1e-13
    # camera-space covariance as `project` forms it (rot_v R S) vs gsplat's _world_to_cam
    for cam in CAMERAS.values():
        vm = torch.as_tensor(cam.world_to_camera, dtype=F64)
        mc = vm[:3, :3] @ m
        means_c, covars_c = gs._world_to_cam(g.means, cov_gs, vm[None])
        torch.testing.assert_close(mc @ mc.transpose(1, 2), covars_c[0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(g.means @ vm[:3, :3].T + vm[:3, 3], means_c[0], rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------------------------------- 2. projection
@pytest.mark.parametrize("antialias", [False, True], ids=["classic", "antialiased"])
@pytest.mark.parametrize("name", list(CAMERAS))
def test_projection_matches_gsplat(name: str, antialias: bool):
    cam, g = CAMERAS[name], SCENE
    ref = gsplat_reference(g, cam, sh_degree=3, antialias=antialias)
    tw = twin_project(g, cam, sh_degree=3, antialias=antialias)
    ids = tw["ids"]
    radii_cuda, visible_cuda = cuda_radii(ref, cam)

    # the culled set: exactly the CUDA kernel's rule, a subset of what the 3.33-sigma torch version keeps
    assert ids.tolist() == sorted(ids.tolist(), key=lambda i: (float(ref["depths"][i]), i))  # front to back
    assert set(ids.tolist()) == set(visible_cuda.nonzero().squeeze(1).tolist())
    assert set(ids.tolist()) <= set(ref["valid"].nonzero().squeeze(1).tolist())
    # every value of the visible ones
    torch.testing.assert_close(tw["means2d"], ref["means2d"][ids], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(tw["depths"], ref["depths"][ids], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(tw["conics"], ref["conics"][ids], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(tw["opacities"], ref["opacities"][ids], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(tw["colors"], ref["colors"][ids], rtol=1e-12, atol=1e-13)
    assert torch.equal(tw["radii"], radii_cuda[ids])
    assert (tw["radii"] <= ref["radii"][ids]).all()  # opacity-aware radius <= gsplat torch's 3.33 sigma
    # the conic is the inverse of gsplat's dilated 2D covariance
    a, b, c = tw["conics"].unbind(-1)
    inv = torch.stack([torch.stack([c, -b], -1), torch.stack([-b, a], -1)], -2) / (a * c - b * b)[:, None, None]
    torch.testing.assert_close(inv, ref["cov2d"][ids], rtol=1e-9, atol=1e-10)

    # the scene exercises what it claims to
    z = ref["depths"]
    m = ref["means2d"]
    off = (m[:, 0] < 0) | (m[:, 0] >= cam.width) | (m[:, 1] < 0) | (m[:, 1] >= cam.height)
    assert len(ids) >= 40
    if name == "front":
        assert int(((z > 0) & (z <= cam.near)).sum()) >= 5  # culled by the near plane
        assert int((visible_cuda & (z < 0.45)).sum()) >= 5  # visible just beyond it
    if name == "oblique":
        assert int(((z > 0) & (z <= cam.near)).sum()) >= 30
    assert int((visible_cuda & off).sum()) >= 3  # centre off-screen, footprint in the image
    assert int((ref["valid"] & (ref["opacities"] < ALPHA_MIN)).sum()) >= 1  # kept by torch, culled by opacity
    if name == "oblique":  # kept by the torch version's 3.33 sigma box, off-image for the opacity-aware one
        assert int((ref["valid"] & off & ~visible_cuda & (ref["opacities"] >= ALPHA_MIN)).sum()) >= 1
    fx, cx = cam.intrinsics[0, 0], cam.intrinsics[0, 2]
    lim_pos, lim_neg = (W - cx) / fx + 0.15 * W / fx, cx / fx + 0.15 * W / fx
    mc = g.means @ torch.as_tensor(cam.world_to_camera[:3, :3]).T + torch.as_tensor(cam.world_to_camera[:3, 3])
    clamped = visible_cuda & ((mc[:, 0] / mc[:, 2] > lim_pos) | (mc[:, 0] / mc[:, 2] < -lim_neg))
    if name in ("front", "wide"):
        assert int(clamped.sum()) >= 1  # visible ones with the Jacobian's tan-fov clamp in play
    assert int((ref["raw_sh"][ids] + 0.5 < 0).sum()) >= 3  # the clamp at 0 is in play
    if antialias:
        comp = ref["opacities"][ids] / torch.sigmoid(g.opacity_logits[ids])
        assert float(comp.max()) < 1.0 and float(comp.min()) < 0.8  # the compensation is in play


# ------------------------------------------------------------------------------------------- 3. SH colour
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree: int):
    g = torch.Generator().manual_seed(degree + 10)
    n = 500
    dirs = torch.randn(n, 3, generator=g, dtype=F64) * (0.01 + 10 * torch.rand(n, 1, generator=g, dtype=F64))
    dirs[:6] = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=F64)
    coeffs = torch.randn(n, 16, 3, generator=g, dtype=F64)
    s = (degree + 1) ** 2
    ref = gs._spherical_harmonics(degree, dirs, coeffs)  # uses the first s of 16 coefficients
    assert max_err(sh_to_rgb(coeffs[:, :s], dirs, degree), ref) < 1e-13
    assert max_err(sh_to_rgb(coeffs, dirs, degree), ref) < 1e-13  # extra bands ignored
    # each basis function on its own (sign and ordering of every coefficient)
    for k in range(s):
        one = torch.zeros(n, 16, 3, dtype=F64)
        one[:, k] = 1.0
        assert max_err(sh_to_rgb(one, dirs, degree), gs._spherical_harmonics(degree, dirs, one)) < 1e-13, k


def test_render_colour_offset_and_clamp_match_rasterization():
    """`project` applies rasterization()'s clamp_min(sh + 0.5, 0) with the direction camera centre -> mean,
    also when the render asks for fewer bands than the Gaussians carry."""
    cam = CAMERAS["oblique"]
    for degree in range(4):
        ref = gsplat_reference(SCENE, cam, sh_degree=degree)
        tw = twin_project(SCENE, cam, sh_degree=degree)
        assert max_err(tw["colors"], ref["colors"][tw["ids"]]) < 1e-13
        if degree == 0:
            assert max_err(tw["colors"], (0.5 + 0.28209479177387814 * SCENE.sh[tw["ids"], 0]).clamp_min(0)) < 1e-15


# ------------------------------------------------------------------------------------------- 4. full image
def _render_twin(g: Gaussians, cam: Camera, bg, **kw):
    return render(g, cam, options=RenderOptions(backend="torch", background=bg, **kw))


CASES = [  # camera, antialias, sh_degree option, tile size, chunk_elements (8192: the smallest, many chunks)
    ("front", False, None, 8, 1 << 20),
    ("front", True, None, 16, 8192),
    ("oblique", False, 2, 8, 8192),
    ("oblique", True, 1, 32, 1 << 20),
    ("wide", False, None, 16, 1 << 20),
    ("wide", True, 0, 8, 8192),
]


@pytest.mark.parametrize("name,antialias,sh_degree,tile,chunk", CASES,
                         ids=[f"{c[0]}-{'aa' if c[1] else 'classic'}-sh{c[2]}-t{c[3]}-c{c[4]}" for c in CASES])
def test_image_matches_per_pixel_gsplat_compositing(name, antialias, sh_degree, tile, chunk):
    cam, bg = CAMERAS[name], (0.2, 0.5, 0.9)
    ref = gsplat_reference(SCENE, cam, sh_degree=3 if sh_degree is None else sh_degree, antialias=antialias)
    assert_well_conditioned(ref, cam, MARGIN_F64)
    rgb, alpha, depth, stats = composite_per_pixel(ref, cam, torch.tensor(bg, dtype=F64))
    out = _render_twin(SCENE, cam, bg, antialias=antialias, sh_degree=sh_degree, tile_size=tile, chunk_elements=chunk)
    # a pixel sums <= N terms of size <= max colour (or depth), each product correct to a few ulps; the depth is
    # then divided by alpha, which can be small (>= 1/255 where anything counted): x 255
    n = len(SCENE.means)
    feat = float(torch.cat([ref["colors"], ref["depths"][:, None]], -1).abs().max())
    tol = 8 * n * EPS64 * max(1.0, feat)  # ~2e-12
    assert max_err(out.rgb[0], rgb) < tol
    assert max_err(out.alpha[0], alpha) < tol
    assert max_err(out.depth[0], depth) < 255 * tol
    # non-trivial image: coverage, the 0.999 clamp and the transmittance stop all happen
    assert float((alpha > 0.5).float().mean()) > 0.2 and float((alpha < 0.05).float().mean()) > 0.01
    assert stats["stopped"] > 100
    if not antialias:  # the compensation (< 1) keeps every alpha below 0.999 in the antialiased mode
        assert stats["clamped"] == 3


def test_float32_image_matches_per_pixel_gsplat_compositing():
    cam, bg = CAMERAS["front"], (1.0, 1.0, 1.0)
    g32 = SCENE.to(dtype=torch.float32)
    for antialias in (False, True):
        # the decisions are taken in float32 here: keep them beyond float32 round-off from their thresholds,
        # measured on the float64 scene (the float32 values differ from those by round-off only)
        assert_well_conditioned(gsplat_reference(SCENE, cam, sh_degree=3, antialias=antialias), cam, MARGIN_F32)
        ref = gsplat_reference(g32, cam, sh_degree=3, antialias=antialias)
        rgb, alpha, _, _ = composite_per_pixel(ref, cam, torch.tensor(bg))
        out = _render_twin(g32, cam, bg, antialias=antialias)
        assert out.rgb.dtype == torch.float32
        # <= N terms per pixel, colours <= ~3 (SH sums), each term correct to a few float32 ulps
        n, feat = len(SCENE.means), float(ref["colors"].abs().max())
        tol = 4 * n * EPS32 * max(1.0, feat)  # ~3e-4
        assert max_err(out.rgb[0], rgb) < tol
        assert max_err(out.alpha[0], alpha) < tol


# -------------------------------------------------------------------------------------------- gradients
def _grad_scene() -> Gaussians:
    """42 Gaussians in front of the front camera, some saturating (0.999 clamp, T stop)."""
    g = torch.Generator().manual_seed(3)
    n = 40
    cam = CAMERAS["front"]
    z = 2.0 + torch.rand(n, generator=g, dtype=F64)
    pc = torch.stack([(torch.rand(n, generator=g, dtype=F64) - 0.5) * 0.9 * z,
                      (torch.rand(n, generator=g, dtype=F64) - 0.5) * 0.9 * z, z], -1)
    opac = 0.2 + 0.75 * torch.rand(n, generator=g, dtype=F64)
    log_scales = torch.log(0.04 + 0.15 * torch.rand(n, 3, generator=g, dtype=F64))
    # six big near-opaque ones overlapping around the image centre: pixels reach the T <= 1e-4 stop
    opac[:6] = 0.99 + 0.0099 * torch.rand(6, generator=g, dtype=F64)
    pc[:6, :2] *= 0.25
    log_scales[:6] = torch.log(0.2 + 0.1 * torch.rand(6, 3, generator=g, dtype=F64))
    # two clamped at 0.999 on their centre pixel (classic mode), in front of the rest; at two depths, as they
    # share a few pixels (at one depth their order was round-off's: the Xeon failure of the module docstring)
    means = torch.cat([pinned(cam, [(20.5, 15.5)], 1.5), pinned(cam, [(33.5, 27.5)], 1.6), _to_world(cam, pc)])
    log_scales = torch.cat([torch.full((2, 3), math.log(0.08), dtype=F64), log_scales])
    opac = torch.cat([torch.full((2,), 1 - 1e-6, dtype=F64), opac])
    return Gaussians(means, torch.randn(n + 2, 4, generator=g, dtype=F64), log_scales, torch.logit(opac),
                     0.4 * torch.randn(n + 2, 16, 3, generator=g, dtype=F64))


@pytest.mark.parametrize("antialias", [False, True], ids=["classic", "antialiased"])
def test_gradients_match_autograd_through_gsplat_reference(antialias: bool):
    cam, bg = CAMERAS["front"], (0.3, 0.1, 0.6)
    base = _grad_scene()
    gen = torch.Generator().manual_seed(7)
    w_rgb = torch.randn(H, W, 3, generator=gen, dtype=F64)
    w_a = torch.randn(H, W, 1, generator=gen, dtype=F64)
    w_d = 0.1 * torch.randn(H, W, 1, generator=gen, dtype=F64)
    names = ("means", "rotations", "log_scales", "opacity_logits", "sh")
    grads, stats = {}, None
    for side in ("twin", "gsplat"):
        leaves = {k: getattr(base, k).clone().requires_grad_(True) for k in names}
        g = Gaussians(**leaves)
        if side == "twin":
            out = _render_twin(g, cam, bg, antialias=antialias, chunk_elements=8192)
            rgb, alpha, depth = out.rgb[0], out.alpha[0], out.depth[0]
        else:
            ref = gsplat_reference(g, cam, sh_degree=3, antialias=antialias)
            assert_well_conditioned(ref, cam, MARGIN_F64)
            rgb, alpha, depth, stats = composite_per_pixel(ref, cam, torch.tensor(bg, dtype=F64))
        loss = (rgb * w_rgb).sum() + (alpha * w_a).sum() + (depth * w_d).sum()
        loss.backward()
        grads[side] = {k: leaves[k].grad for k in names}
    assert stats["stopped"] > 0 and (antialias or stats["clamped"] == 2)
    # Round-off bound: the twin's backward takes "everything behind me" as (pixel total) - (prefix), which
    # loses up to eps * sum_j |w_j u_j| <= eps * N * max|w u| to cancellation, and divides it by 1 - alpha
    # >= 1 - 0.999 (clamped alphas carry no gradient); the rest are sums of <= N terms, a few ulps each.
    # Relative to the largest gradient: 8 eps N / (1 - 0.999) = 8 * 2.2e-16 * 42 * 1e3 = 7.5e-11 (measured:
    # ~1e-14). An order or threshold decision taken differently would show as ~1e-6 (see the docstring).
    rtol = 8 * EPS64 * len(base.means) / (1.0 - ALPHA_MAX)
    for k in names:
        a, b = grads["twin"][k], grads["gsplat"][k]
        scale = float(b.abs().max())
        assert scale > 0, k
        assert max_err(a, b) <= rtol * scale, (k, max_err(a, b), scale)
