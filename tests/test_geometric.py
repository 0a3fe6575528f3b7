"""Geometric programs (gp=True): values against the closed form and CVXPY, derivatives through
the log/exp change of variables against the closed form, finite differences and cvxpylayers
(gp=True), in torch and JAX, batched and broadcast; input errors."""

from __future__ import annotations

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from declarative.problems import box_volume

import declarative as dl
from declarative.errors import ParameterError, ProblemError
from tests.output_checks import check_derivatives, check_values


def _box(n: int = 3):
    problem, params, variables = box_volume.build(n=n)
    return problem, params, variables, dl.compile(problem, params, variables, gp=True)


def _instances(B: int, n: int = 3, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    draws = [box_volume.sample(rng, n=n) for _ in range(B)]
    return [scale * np.stack([d[j] for d in draws]) for j in range(2)]


@pytest.mark.parametrize("scale", [1e-12, 1e-6, 1.0, 1e6, 1e12])
def test_closed_form_across_scales(scale):
    """Areas scaled by s: lengths by √s; ∂x/∂F by 1/√s (the closed form's own scaling)."""
    *_, layer = _box()
    A, F = _instances(4, scale=scale)
    fwd = layer.forward([A, F])
    for i in range(4):
        sol = box_volume.solution(A[i], F[i])
        J = box_volume.jacobian(A[i], F[i])
        for out, ref in zip(fwd.outputs, sol, strict=True):
            assert np.max(np.abs(out[i] - ref) / ref) <= 1e-9  # relative: x = exp(u)
        ours = fwd.jacobian(i)
        for Ji, Jr in zip(ours, J, strict=True):
            row_scale = max(np.max(np.abs(b)) for b in Jr)  # ∂x/∂A = 0: the row's scale
            for a, b in zip(Ji, Jr, strict=True):
                assert np.max(np.abs(a - b)) <= 1e-8 * row_scale


def test_against_cvxpy_and_finite_differences():
    problem, params, variables, layer = _box()
    batch = _instances(3, seed=1)
    # Clarabel through CVXPY is accurate to ~1e-5 here (exp cones); ours to 1e-15 (closed form)
    check_values(layer, problem, params, variables, batch, gp=True, tol=3e-5)
    rng = np.random.default_rng(2)
    check_derivatives(layer, batch, [rng.standard_normal(v.shape) for v in batch])


def test_torch_and_jax_against_cvxpylayers():
    """Gradients of ⟨g, (x, y, z)⟩ in torch and JAX (jit, vmap) against cvxpylayers' gp=True
    layer (diffcp), and against the closed form."""
    from cvxpylayers.torch import CvxpyLayer

    problem, params, variables, layer = _box()
    A, F = _instances(3, seed=3)
    rng = np.random.default_rng(4)
    g = [rng.standard_normal(A.shape) for _ in range(3)]

    def torch_grad(module, **kwargs):
        At, Ft = (torch.tensor(v, requires_grad=True) for v in (A, F))
        outs = module(At, Ft, **kwargs)
        loss = sum((o * torch.tensor(gi)).sum() for o, gi in zip(outs, g, strict=True))
        loss.backward()
        return [o.detach().numpy() for o in outs], [At.grad.numpy(), Ft.grad.numpy()]

    ours_x, ours_g = torch_grad(layer.torch())
    peer = CvxpyLayer(problem, parameters=params, variables=variables, gp=True)
    peer_x, peer_g = torch_grad(peer, solver_args={"eps": 1e-10})
    for a, b in zip(ours_x, peer_x, strict=True):
        assert np.max(np.abs(a - b) / b) <= 1e-6
    for a, b in zip(ours_g, peer_g, strict=True):
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))
    closed = [np.zeros_like(A), np.zeros_like(F)]
    for i in range(3):
        J = box_volume.jacobian(A[i], F[i])
        for k in range(3):
            for j in range(2):
                closed[j][i] += g[k][i] @ J[k][j]
    for a, b in zip(ours_g, closed, strict=True):
        assert np.max(np.abs(a - b)) <= 1e-8 * np.max(np.abs(b))

    with jax.enable_x64(True):
        f = layer.jax()

        def loss(a, fl):
            return sum(jnp.sum(o * gi) for o, gi in zip(f(a, fl), g, strict=True))

        ga = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(A), jnp.asarray(F))
        for a, b in zip(ga, closed, strict=True):
            assert np.max(np.abs(np.asarray(a) - b)) <= 1e-8 * np.max(np.abs(b))
        xs = jax.vmap(f)(jnp.asarray(A), jnp.asarray(F))
        for a, b in zip(xs, ours_x, strict=True):
            assert np.max(np.abs(np.asarray(a) - b)) <= 1e-12 * np.max(b)


def test_broadcast_parameter():
    """One F for a batch of A: F's gradient sums over the batch."""
    *_, layer = _box(n=2)
    A = np.array([[12.0, 30.0], [18.0, 24.0]])
    F = np.array([1.0, 2.0])
    At, Ft = torch.tensor(A, requires_grad=True), torch.tensor(F, requires_grad=True)
    x, y, z = layer.torch()(At, Ft)
    z.sum().backward()
    dz_dF = -1 / (4 * np.sqrt(F)) - A / (8 * F * np.sqrt(F))
    assert np.max(np.abs(Ft.grad.numpy() - dz_dF.sum(axis=0))) <= 1e-9
    assert np.max(np.abs(At.grad.numpy() - 1 / (4 * np.sqrt(F)))) <= 1e-9
    _, jv = torch.func.jvp(lambda a, f: layer.torch()(a, f)[2], (At.detach(), Ft.detach()),
                           (torch.zeros_like(At), torch.ones_like(Ft)))
    assert np.max(np.abs(jv.numpy() - dz_dF)) <= 1e-9


def test_nonpositive_parameters_are_named():
    *_, layer = _box(n=2)
    A = np.array([[12.0, 30.0], [18.0, -1.0]])
    F = np.array([1.0, 2.0])
    with pytest.raises(ParameterError, match=r"parameter 'A' has values that are not pos "
                                             r".*batch index \[1\]"):
        layer.torch()(torch.tensor(A), torch.tensor(F))
    with pytest.raises(ParameterError, match=r"parameter 'F' has values that are not pos"):
        layer.jax()(jnp.asarray(A[0]), jnp.asarray([0.0, 1.0]))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"'A' has values that are not pos"):
        np.asarray(jax.jit(layer.jax())(jnp.asarray(A), jnp.asarray(F))[0])


def test_gp_errors():
    x, a = cp.Variable(pos=True), cp.Parameter(pos=True)
    dcp_only = cp.Problem(cp.Minimize(cp.square(x - a)))
    with pytest.raises(ProblemError, match="gp=True: the problem is not DGP"):
        dl.compile(dcp_only, [a], [x], gp=True)
    gp = cp.Problem(cp.Minimize(a / x + x), [x <= 2])
    with pytest.raises(ProblemError, match="not DCP"):
        dl.compile(gp, [a], [x])  # a DGP problem without gp=True
    n = cp.Variable(pos=True, integer=True, name="n")
    with pytest.raises(ProblemError, match=r"\['n'\] are integer or boolean"):
        dl.compile(cp.Problem(cp.Minimize(a / n + n)), [a], [n], gp=True)
    p = cp.Parameter(pos=True, name="p")
    both = cp.Problem(cp.Minimize(p * x ** p + 1 / x))  # p as a factor and as an exponent
    with pytest.raises(ProblemError, match="parameter p enters the problem both"):
        dl.compile(both, [p], [x], gp=True)


def test_closed_form_dual_variable():
    """min a/x + x s.t. x ≤ 2, a > 4: x = 2, and the constraint's dual is that of its convex
    form u ≤ log 2 (u = log x), as CVXPY reports it: stationarity of log(a e^(−u) + e^u) + λu
    gives λ = (a − 4)/(a + 4), so dλ/da = 8/(a + 4)² and dx/da = 0."""
    import torch

    x, a = cp.Variable(pos=True), cp.Parameter(pos=True)
    con = x <= 2
    problem = cp.Problem(cp.Minimize(a / x + x), [con])
    layer = dl.compile(problem, [a], [x, con.dual_variables[0]], gp=True)
    av = np.array([5.0, 9.0, 100.0])
    a_t = torch.tensor(av, requires_grad=True)
    xs, lam = layer.torch()(a_t)
    assert np.max(np.abs(xs.detach().numpy() - 2.0)) <= 1e-8
    assert np.max(np.abs(lam.detach().numpy() - (av - 4) / (av + 4))) <= 1e-8
    (g,) = torch.autograd.grad(lam.sum(), a_t)
    assert np.max(np.abs(g.numpy() - 8 / (av + 4) ** 2)) <= 1e-8
    (gx,) = torch.autograd.grad(layer.torch()(a_t)[0].sum(), a_t)
    assert np.max(np.abs(gx.numpy())) <= 1e-8
    a.value = 9.0
    problem.solve(solver=cp.CLARABEL, gp=True)
    assert abs(float(con.dual_value) - 5 / 13) <= 1e-4  # CVXPY's convention (Clarabel default)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_closed_form_exponent_parameter(framework):
    """min x^p + 1/x (p > 0): p x^(p−1) = 1/x², so x = p^(−1/(p+1)) and
    d log x/dp = log p/(p+1)² − 1/(p(p+1)). The exponent enters the convex form as itself
    (p · log x), not through its logarithm."""
    x, p = cp.Variable(pos=True), cp.Parameter(pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(x ** p + 1 / x)), [p], [x], gp=True)
    pv = np.array([0.3, 1.0, 2.5, 7.0])
    x_ref = pv ** (-1 / (pv + 1))
    dx_ref = x_ref * (np.log(pv) / (pv + 1) ** 2 - 1 / (pv * (pv + 1)))
    if framework == "torch":
        import torch

        p_t = torch.tensor(pv, requires_grad=True)
        (x_t,) = layer.torch()(p_t)
        x_t.sum().backward()
        xs, dx = x_t.detach().numpy(), p_t.grad.numpy()
    else:
        import jax

        with jax.enable_x64(True):
            f = layer.jax()
            xs = np.asarray(f(jax.numpy.asarray(pv))[0])
            dx = np.asarray(jax.grad(lambda t: f(t)[0].sum())(jax.numpy.asarray(pv)))
    assert np.max(np.abs(xs - x_ref)) <= 1e-8
    assert np.max(np.abs(dx - dx_ref)) <= 1e-8


def test_closed_form_min_a_over_x_plus_x():
    """min a/x + x (a > 0): x = √a, dx/da = 1/(2√a); solved as a GP."""
    x, a = cp.Variable(pos=True), cp.Parameter(pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(a / x + x)), [a], [x], gp=True)
    avals = np.array([1e-8, 0.3, 4.0, 1e8])
    fwd = layer.forward([avals])
    assert np.max(np.abs(fwd.outputs[0] / np.sqrt(avals) - 1)) <= 1e-9
    at = torch.tensor(avals, requires_grad=True)
    layer.torch()(at)[0].sum().backward()
    assert np.max(np.abs(at.grad.numpy() * 2 * np.sqrt(avals) - 1)) <= 1e-8


def test_outputs_near_one_are_solved_to_their_relative_accuracy():
    """max h·w s.t. h + w <= a, h <= b·w (b = 3): h = w = a/2. The convex form computes
    u = log h, whose absolute error is h's relative one; held to a relative accuracy of its
    own, u ~ 5e-7 at a = 2 + 1e-6 was never certified (inaccurate, for a within 4e-5 of 2).
    Solved at every a, h within 1e-8 of a/2 relatively, and ∂h/∂a = 1/2."""
    a, b = cp.Parameter(pos=True), cp.Parameter(pos=True)
    h, w = cp.Variable(pos=True), cp.Variable(pos=True)
    layer = dl.compile(cp.Problem(cp.Maximize(h * w), [h + w <= a, h <= b * w]), [a, b],
                       [h, w], gp=True)
    A = np.array([2.0, 2 + 1e-9, 2 + 1e-6, 2 - 1e-6, 2 + 1e-3, 2e-6, 2e6, 7.3])
    fwd = layer.forward([A, np.full(len(A), 3.0)])
    assert fwd.ok.all(), fwd.info.status
    for out in fwd.outputs:
        assert np.abs(out / (A / 2) - 1).max() <= 1e-8
    for i in range(len(A)):
        assert abs(fwd.jacobian(i)[0][0].item() - 0.5) <= 1e-8


def test_a_parameter_changed_in_place_after_the_forward_leaves_the_gradient():
    """The derivative of a geometric layer divides by θ: it is the forward's θ, not the
    tensor's memory after an in-place update (an optimizer step between forward and
    backward made ∂h/∂a 0.267 instead of 0.5)."""
    a, b = cp.Parameter(pos=True), cp.Parameter(pos=True)
    h, w = cp.Variable(pos=True), cp.Variable(pos=True)
    module = dl.compile(cp.Problem(cp.Maximize(h * w), [h + w <= a, h <= b * w]), [a, b],
                        [h, w], gp=True).torch()
    at = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(3.0, dtype=torch.float64)
    hv, _ = module(at, bt)
    with torch.no_grad():
        at.mul_(10.0)
    hv.backward()
    assert abs(at.grad.item() - 0.5) <= 1e-8
