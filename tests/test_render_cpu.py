"""The pure-PyTorch tile rasterizer against closed forms, a brute-force twin and finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.avatar.gaussians import Gaussians
from backend.render import RenderOptions, render
from backend.render.camera import Camera, intrinsics_from_fov, look_at
from backend.render.cpu_rasterizer import project
from backend.render.reference import composite_reference
from backend.render.scenes import body_camera, body_scene

from .render_margins import assert_well_conditioned

# float32 decision margins, from the length of each chain in ulps (see test_render_gsplat_reference.py); the
# order of Gaussians is the projection's on both sides here, so it cannot differ (no margin needed)
MARGIN_F32 = {"order": -math.inf, "skip": 48 * 1.2e-7, "clamp": 48 * 1.2e-7, "stop": 128 * 1.2e-7}

TORCH = RenderOptions(backend="torch")


def random_scene(n: int, seed: int, dtype=torch.float64, opacity=(0.3, 0.9), scale=(0.05, 0.2)) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([1.2, 1.2, 0.8], dtype=dtype)
    lo, hi = opacity
    return Gaussians(
        means=means,  # (n, 3) around the origin
        rotations=torch.randn(n, 4, generator=g, dtype=dtype),
        log_scales=torch.log(scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=g, dtype=dtype)),
        opacity_logits=torch.logit(lo + (hi - lo) * torch.rand(n, generator=g, dtype=dtype)),
        sh=0.4 * torch.randn(n, 16, 3, generator=g, dtype=dtype),
    )


def front_camera(size: int = 32, fov: float = 60.0) -> Camera:
    return Camera(look_at((0.0, -2.5, 0.0), (0.0, 0.0, 0.0)), intrinsics_from_fov(fov, size, size), size, size)


def test_single_gaussian_matches_closed_form_footprint():
    cam = Camera(look_at((0.3, -3.0, 0.4), (0.0, 0.0, 0.0)), [[40.0, 0, 17.0], [0, 44.0, 15.0], [0, 0, 1]], 36, 30)
    mean = np.array([0.1, 0.2, -0.05])
    q = np.array([0.9, 0.2, -0.3, 0.1]) / np.linalg.norm([0.9, 0.2, -0.3, 0.1])
    scales, opacity = np.array([0.3, 0.1, 0.2]), 0.8
    g = Gaussians(torch.tensor(mean[None]), torch.tensor(q[None]), torch.tensor(np.log(scales)[None]),
                  torch.tensor([math.log(opacity / (1 - opacity))]), torch.zeros(1, 1, 3, dtype=torch.float64))
    alpha = render(g, cam, options=TORCH).alpha[0, ..., 0].numpy()  # (H, W)
    # closed form: EWA projection of the 3D covariance at the mean, + 0.3 px^2 dilation
    w, x, y, z = q
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    r, t = cam.world_to_camera[:3, :3], cam.world_to_camera[:3, 3]
    pc = r @ mean + t
    cov_c = r @ rot @ np.diag(scales ** 2) @ rot.T @ r.T
    fx, fy, cx, cy = cam.intrinsics[0, 0], cam.intrinsics[1, 1], cam.intrinsics[0, 2], cam.intrinsics[1, 2]
    jac = np.array([[fx / pc[2], 0, -fx * pc[0] / pc[2] ** 2], [0, fy / pc[2], -fy * pc[1] / pc[2] ** 2]])
    cov2d = jac @ cov_c @ jac.T + 0.3 * np.eye(2)
    mu = np.array([fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy])
    ys, xs = np.mgrid[0:30, 0:36] + 0.5
    d = np.stack([xs - mu[0], ys - mu[1]], -1)  # (H, W, 2)
    maha = np.einsum("hwi,ij,hwj->hw", d, np.linalg.inv(cov2d), d)
    expect = np.minimum(0.999, opacity * np.exp(-0.5 * maha))
    expect[expect < 1 / 255] = 0.0
    assert expect.max() > 0.7 and (expect > 0).sum() > 50
    np.testing.assert_allclose(alpha, expect, atol=1e-4)


def test_front_opaque_gaussian_hides_the_one_behind():
    def gauss(y: float, rgb: list[float]) -> Gaussians:
        sh = ((torch.tensor(rgb, dtype=torch.float64) - 0.5) / 0.28209479177387814).reshape(1, 1, 3)
        return Gaussians(torch.tensor([[0.0, y, 0.0]], dtype=torch.float64), torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
                         torch.full((1, 3), math.log(0.5), dtype=torch.float64), torch.tensor([20.0], dtype=torch.float64), sh)
    cam = front_camera(16)
    outs = [render(scene, cam, options=TORCH) for scene in (
        Gaussians.cat([gauss(0.0, [1, 0, 0]), gauss(1.0, [0, 0, 1])]),
        Gaussians.cat([gauss(1.0, [0, 0, 1]), gauss(0.0, [1, 0, 0])]))]  # input order must not matter
    torch.testing.assert_close(outs[0].rgb, outs[1].rgb, atol=1e-12, rtol=0)
    centre, alpha_front = outs[0].rgb[0, 8, 8], outs[0].alpha[0, 8, 8, 0]
    # the blue one behind only shows through what the red one leaves: (1 - a_front) at most
    assert centre[0] > 0.95 and float(centre[2]) <= float(1 - centre[0]) + 1e-9, centre
    assert abs(float(outs[0].depth[0, 8, 8, 0]) - 2.5) < 0.1


def test_background_fills_empty_pixels_and_blends():
    scene = random_scene(5, seed=1)
    bg = (0.2, 0.4, 0.9)
    out = render(scene, front_camera(24), options=RenderOptions(backend="torch", background=bg))
    far_away = render(scene.replace(means=scene.means + torch.tensor([0.0, 0.0, 50.0], dtype=torch.float64)),
                      front_camera(24), options=RenderOptions(backend="torch", background=bg))
    assert torch.allclose(far_away.rgb, torch.tensor(bg, dtype=torch.float64).expand_as(far_away.rgb))
    assert float(far_away.alpha.abs().max()) == 0.0
    black = render(scene, front_camera(24), options=TORCH)
    expect = black.rgb + (1 - black.alpha) * torch.tensor(bg, dtype=torch.float64)
    assert torch.allclose(out.rgb, expect, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(seed: int):
    scene = random_scene(60, seed=seed, dtype=torch.float32, opacity=(0.2, 0.99))
    cam = Camera(look_at((0.2, -2.0, 0.3), (0.0, 0.0, 0.0)), intrinsics_from_fov(55.0, 45, 38), 45, 38)
    out = render(scene, cam, options=RenderOptions(backend="torch", background=(0.1, 0.2, 0.3), tile_size=8))
    vm = torch.tensor(cam.world_to_camera, dtype=torch.float32)
    k = torch.tensor(cam.intrinsics, dtype=torch.float32)
    proj = project(scene.means, scene.rotations, scene.log_scales, scene.opacity_logits, scene.sh, vm, k, 45, 38,
                   sh_degree=3, near=0.01, far=1e10)
    rgb, alpha, depth = composite_reference(proj, 45, 38, torch.tensor([0.1, 0.2, 0.3]))
    assert float(alpha.max()) > 0.99  # some pixels saturate, so the stop rule is exercised
    # float32: no skip/clamp/stop decision within float32 round-off of its threshold (tests/render_margins.py),
    # so both sides take the same ones on any CPU; then they differ by round-off only (<= 60 terms a pixel)
    assert_well_conditioned({k: v.double() for k, v in proj.items() if k != "ids"}, cam, MARGIN_F32)
    torch.testing.assert_close(out.rgb[0], rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.depth[0], depth, atol=1e-4, rtol=1e-5)


def test_chunked_and_unchunked_give_the_same_image():
    scene = random_scene(300, seed=3, dtype=torch.float32, scale=(0.02, 0.08))
    cam = front_camera(64)
    small = render(scene, cam, options=RenderOptions(backend="torch", chunk_elements=8192))
    large = render(scene, cam, options=RenderOptions(backend="torch", chunk_elements=1 << 22))
    for a, b in ((small.rgb, large.rgb), (small.alpha, large.alpha), (small.depth, large.depth)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_tile_size_does_not_change_the_image():
    scene = random_scene(300, seed=6, dtype=torch.float32, scale=(0.02, 0.1), opacity=(0.5, 0.99))
    cam = Camera(look_at((0.0, -2.0, 0.1), (0, 0, 0)), intrinsics_from_fov(50, 70, 45), 70, 45)  # ragged tiles
    outs = [render(scene, cam, options=RenderOptions(backend="torch", tile_size=t)) for t in (8, 16, 32)]
    for other in outs[1:]:
        torch.testing.assert_close(other.rgb, outs[0].rgb, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(other.alpha, outs[0].alpha, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_body_scene_renders_and_gradients_flow():
    # how fast is the benchmark's business (benchmarks/render.py, docs/BENCHMARKS.md), not a test's: a
    # wall-clock limit here would fail on a slower or busier machine without anything being wrong
    scene, cam = body_scene(50_000), body_camera()
    with torch.no_grad():
        out = render(scene, cam)
    assert float(out.alpha.mean()) > 0.2
    leaves = [t.requires_grad_(True) for t in _leaves(scene)]
    render(scene, cam).rgb.sum().backward()
    assert all(t.grad is not None and bool(t.grad.abs().sum() > 0) for t in leaves)


def _leaves(scene: Gaussians) -> list[torch.Tensor]:
    return [scene.means, scene.rotations, scene.log_scales, scene.opacity_logits, scene.sh]


def _loss(scene: Gaussians, cam: Camera, weights: tuple[torch.Tensor, ...], reference: bool) -> torch.Tensor:
    if reference:
        vm, k = (torch.tensor(m, dtype=torch.float64) for m in (cam.world_to_camera, cam.intrinsics))
        proj = project(scene.means, scene.rotations, scene.log_scales, scene.opacity_logits, scene.sh, vm, k,
                       cam.width, cam.height, sh_degree=3, near=0.01, far=1e10)
        rgb, alpha, depth = composite_reference(proj, cam.width, cam.height, torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64))
    else:
        out = render(scene, cam, options=RenderOptions(backend="torch", background=(0.3, 0.5, 0.7), tile_size=8))
        rgb, alpha, depth = out.rgb[0], out.alpha[0], out.depth[0]
    return (rgb * weights[0]).sum() + (alpha * weights[1]).sum() + 0.1 * (depth * alpha * weights[2]).sum()


def _grad_setup(n: int = 4, seed: int = 5):
    scene = random_scene(n, seed=seed, opacity=(0.3, 0.7), scale=(0.1, 0.3))
    cam = Camera(look_at((0.1, -2.5, 0.2), (0.0, 0.0, 0.0)), intrinsics_from_fov(50.0, 16, 16), 16, 16)
    g = torch.Generator().manual_seed(7)
    weights = tuple(torch.rand(16, 16, c, generator=g, dtype=torch.float64) for c in (3, 1, 1))
    return scene, cam, weights


@pytest.mark.parametrize("saturated", [False, True])
def test_gradients_match_brute_force_autograd(saturated: bool):
    scene, cam, weights = _grad_setup(n=6)
    if saturated:  # many near-opaque layers: pixels hit gsplat's T < 1e-4 stop and alpha's 0.999 clamp
        scene = random_scene(40, seed=9, opacity=(0.9, 0.9999), scale=(0.2, 0.4))
        scene = scene.replace(means=0.2 * scene.means)
    grads = []
    for reference in (False, True):
        s = Gaussians(*[t.clone().requires_grad_(True) for t in _leaves(scene)])
        _loss(s, cam, weights, reference).backward()
        grads.append([t.grad for t in _leaves(s)])
        if saturated and not reference:
            out = render(s.detach(), cam, options=TORCH)
            assert float(out.alpha.max()) > 0.9998  # T reached ~1e-4: the stop rule is exercised
    for name, a, b in zip(("means", "rotations", "log_scales", "opacity_logits", "sh"), *grads):
        assert float(b.abs().max()) > 0, name
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7, msg=name)


def test_gradients_match_finite_differences():
    scene, cam, weights = _grad_setup()
    s = Gaussians(*[t.clone().requires_grad_(True) for t in _leaves(scene)])
    _loss(s, cam, weights, False).backward()
    eps = 1e-6
    for field, leaf in zip(("means", "rotations", "log_scales", "opacity_logits", "sh"), _leaves(s)):
        flat = leaf.grad.reshape(-1)
        picks = torch.linspace(0, flat.numel() - 1, min(12, flat.numel())).long()
        for i in picks.tolist():
            plus, minus = [t.detach().clone() for t in _leaves(scene)], [t.detach().clone() for t in _leaves(scene)]
            idx = ("means", "rotations", "log_scales", "opacity_logits", "sh").index(field)
            plus[idx].reshape(-1)[i] += eps
            minus[idx].reshape(-1)[i] -= eps
            fd = (_loss(Gaussians(*plus), cam, weights, False) - _loss(Gaussians(*minus), cam, weights, False)) / (2 * eps)
            got = float(flat[i])
            assert abs(got - float(fd)) <= 1e-3 * max(1.0, abs(float(fd))), (field, i, got, float(fd))


@pytest.mark.parametrize("change, message", [
    (lambda g: g.replace(means=torch.full_like(g.means, float("nan"))), "non-finite"),
    (lambda g: Gaussians(g.means[:, :2], g.rotations, g.log_scales, g.opacity_logits, g.sh), "means of shape"),
    (lambda g: Gaussians(g.means, g.rotations[:, :3], g.log_scales, g.opacity_logits, g.sh), "rotations"),
])
def test_bad_gaussians_raise_named_errors(change, message):
    with pytest.raises(ValueError, match=message):
        render(change(random_scene(3, seed=0)), front_camera(8), options=TORCH)


def test_bad_cameras_and_options_raise_named_errors():
    scene = random_scene(3, seed=0)
    with pytest.raises(ValueError, match="world_to_camera"):
        Camera(np.eye(3), np.eye(3), 8, 8)
    bad = np.eye(4)
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match="orthonormal"):
        Camera(bad, intrinsics_from_fov(40, 8, 8), 8, 8)
    with pytest.raises(ValueError, match="focal"):
        Camera(np.eye(4), np.diag([-1.0, 1.0, 1.0]), 8, 8)
    with pytest.raises(ValueError, match="image size"):
        render(scene, [front_camera(8), front_camera(16)], options=TORCH)
    with pytest.raises(ValueError, match="backend"):
        RenderOptions(backend="vulkan")
    with pytest.raises(ValueError, match="background"):
        RenderOptions(background=(1.0, 1.0))


def test_batch_of_cameras_and_auto_backend_on_cpu():
    scene = random_scene(20, seed=4, dtype=torch.float32)
    cams = [front_camera(16), Camera(look_at((2.5, 0.0, 0.0), (0, 0, 0)), intrinsics_from_fov(60, 16, 16), 16, 16)]
    out = render(scene, cams)
    assert out.rgb.shape == (2, 16, 16, 3) and out.alpha.shape == (2, 16, 16, 1) and out.depth.shape == (2, 16, 16, 1)
    one = render(scene, cams[1])
    torch.testing.assert_close(out.rgb[1], one.rgb[0])
