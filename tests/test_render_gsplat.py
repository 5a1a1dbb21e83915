"""gsplat (CUDA) against the pure-PyTorch twin: images and gradients. Skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

from backend.avatar.gaussians import Gaussians
from backend.render import RenderOptions, render
from backend.render.camera import orbit_cameras

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat parity needs CUDA")]


def scene(n: int = 2000, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    means = d / d.norm(dim=-1, keepdim=True) * torch.tensor([0.25, 0.15, 0.8]) + torch.tensor([0.0, 0.0, 1.0])
    return Gaussians(means, torch.randn(n, 4, generator=g), torch.log(0.01 + 0.02 * torch.rand(n, 3, generator=g)),
                     torch.logit(0.3 + 0.6 * torch.rand(n, generator=g)), 0.3 * torch.randn(n, 16, 3, generator=g))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-20)))


def test_gsplat_matches_the_torch_twin_forward_and_backward():
    cams = orbit_cameras(2, radius=2.5, height=1.0, target=(0, 0, 1), fov=45, width=128, height_px=128)
    outs, grads = {}, {}
    for backend, device in (("gsplat", "cuda"), ("torch", "cpu")):
        g = scene().to(device)
        leaves = [g.means, g.rotations, g.log_scales, g.opacity_logits, g.sh]
        for t in leaves:
            t.requires_grad_(True)
        out = render(g, cams, options=RenderOptions(backend=backend, background=(0.2, 0.3, 0.4)))
        (out.rgb.sum() + out.alpha.sum()).backward()
        outs[backend] = out
        grads[backend] = [t.grad.detach().cpu() for t in leaves]
    ref, got = outs["torch"], outs["gsplat"]
    assert psnr(got.rgb.detach().cpu(), ref.rgb.detach()) > 40 or \
        float((got.rgb.detach().cpu() - ref.rgb.detach()).abs().max()) < 1e-2
    assert float((got.alpha.detach().cpu() - ref.alpha.detach()).abs().max()) < 1e-2
    for name, a, b in zip(("means", "rotations", "log_scales", "opacity_logits", "sh"), grads["gsplat"], grads["torch"]):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))
