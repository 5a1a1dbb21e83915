"""backend/sampling: the time convention, solver orders on an ODE with a known answer, CFG algebra,
editing (strength, inversion, inpainting), progress and cancellation."""
from __future__ import annotations

import math

import pytest
import torch

from backend.sampling import editing
from backend.sampling.guidance import GuidedVelocity
from backend.sampling.path import FlowPath, sample_logit_normal, shift_time, time_grid
from backend.sampling.solvers import SamplingCancelled, solve_ode


def test_path_convention_t1_is_noise_and_velocity_is_noise_minus_data():
    x, n = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4)
    xt, v = FlowPath().sample(x, n, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(xt[0], x[0]) and torch.equal(xt[2], n[2])
    assert torch.allclose(xt[1], 0.5 * x[1] + 0.5 * n[1])
    assert torch.equal(v, n - x)
    t = torch.full((3,), 0.3)
    assert torch.allclose(FlowPath.data_from_velocity(FlowPath.interpolate(x, n, t), v, t), x, atol=1e-6)
    assert torch.allclose(FlowPath.noise_from_velocity(FlowPath.interpolate(x, n, t), v, t), n, atol=1e-6)


def test_logit_normal_and_shift():
    t = sample_logit_normal(20000, generator=torch.Generator().manual_seed(1))
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert abs(float(t.median()) - 0.5) < 0.02  # sigmoid(N(0, 1)) has median 0.5
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_time(u, 1.0), u)
    s = shift_time(u, 3.0)
    assert s[0] == 0 and s[-1] == 1 and bool((s >= u).all())  # shift > 1 moves time towards noise
    g = time_grid(10, shift=3.0)
    assert g[0] == 1.0 and g[-1] == 0.0 and bool((g[1:] < g[:-1]).all())
    g2 = time_grid(4, t_start=0.6)
    assert torch.allclose(g2, torch.tensor([0.6, 0.45, 0.3, 0.15, 0.0], dtype=torch.float64))


def _known_ode():
    # dx/dt = x cos(t)  =>  x(t) = x(1) exp(sin t - sin 1); integrate from t = 1 to t = 0
    def velocity(x, t):
        return x * torch.cos(t)[:, None]
    x1 = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    exact = x1 * math.exp(math.sin(0.0) - math.sin(1.0))
    return velocity, x1, exact


@pytest.mark.parametrize("method,order", [("euler", 1.0), ("heun", 2.0)])
def test_solver_convergence_order(method, order):
    velocity, x1, exact = _known_ode()
    errors = []
    for steps in (16, 32, 64):
        out = solve_ode(velocity, x1, time_grid(steps), method)
        errors.append(float((out - exact).abs().max()))
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.15 for r in rates), (method, errors, rates)


def test_solver_progress_cancel_and_validation():
    velocity, x1, _ = _known_ode()
    seen = []
    solve_ode(velocity, x1, time_grid(5), "heun", progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(1, 6)]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(SamplingCancelled, match="step 3 of 5"):
        solve_ode(velocity, x1, time_grid(5), "euler", cancel=cancel)
    with pytest.raises(ValueError, match="unknown solver"):
        solve_ode(velocity, x1, time_grid(5), "rk4")


class _LinearModel:
    """v = 2 x + 3 text + 5 image + t: known responses to each condition."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, text, image):
        self.batches.append(x.shape[0])
        return 2 * x + 3 * text + 5 * image + t[:, None]


def test_cfg_wrapper_algebra():
    x, t = torch.randn(2, 4), torch.full((2,), 0.3)
    text, image = torch.randn(2, 4), torch.randn(2, 4)
    zero = torch.zeros(2, 4)
    cond, no_text, null = dict(text=text, image=image), dict(text=zero, image=image), dict(text=zero, image=zero)
    model = _LinearModel()
    v_full, v_img, v_null = model(x, t, **cond), model(x, t, **no_text), model(x, t, **null)
    model.batches.clear()
    g = GuidedVelocity(model, cond, no_text, null, text_scale=4.0, image_scale=2.0)
    out = g(x, t)
    assert model.batches == [6]  # one batched forward for three conditions
    assert torch.allclose(out, v_null + 2.0 * (v_img - v_null) + 4.0 * (v_full - v_img), atol=1e-5)
    # on this linear model: text term scaled by 4, image term by 2
    assert torch.allclose(out, 2 * x + 12 * text + 10 * image + t[:, None], atol=1e-5)
    assert torch.equal(GuidedVelocity(model, cond)(x, t), v_full)  # scales 1: the conditional model alone
    assert torch.allclose(GuidedVelocity(model, cond, no_text, text_scale=0.0)(x, t), v_img)
    with pytest.raises(ValueError, match="cond_no_text"):
        GuidedVelocity(model, cond, text_scale=3.0)


def _field(x, t):
    return -0.5 * x + torch.sin(3 * t).reshape(-1, *[1] * (x.ndim - 1))


def test_inpaint_keeps_source_bit_identical():
    gen = torch.Generator().manual_seed(3)
    src = torch.randn(2, 4, 8, 8, generator=gen)
    keep = torch.rand(2, 1, 8, 8, generator=gen) > 0.5
    for method in ("euler", "heun"):
        out = editing.inpaint(_field, src, keep, steps=7, seed=5, method=method, shift=2.0)
        k = keep.expand_as(src)
        assert torch.equal(out[k], src[k])
        assert not torch.allclose(out[~k], src[~k])  # the rest was regenerated


def test_strength_edit_and_inversion():
    src = torch.randn(2, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(editing.edit_from_strength(_field, src, 0.0, steps=4), src)
    a = editing.edit_from_strength(_field, src, 0.5, steps=8, seed=1)
    b = editing.edit_from_strength(_field, src, 0.5, steps=8, seed=1)
    assert torch.equal(a, b)  # seeded
    noise = editing.invert(_field, src, steps=200, method="heun")
    back = editing.sample(_field, noise, steps=200, method="heun")
    assert torch.allclose(back, src, atol=1e-5)
