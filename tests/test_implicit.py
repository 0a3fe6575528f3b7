"""declarative.implicit on torch tensors, and the framework-independent parts (zoo, verify)."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.optimize
import torch
from declarative.problems.implicit_nodes import NODES

import declarative as dl
from declarative import implicit

T = torch.float64


def t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=float), dtype=T)


def max_abs(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


# Scales at which each zoo node is well posed in float64 (see the notes in the test below).
SCALES = {
    "kepler": [1e-8, 1.0, 1e4],
    "linear_fixed_point": [1e-8, 1.0, 1e8],
    "sphere_projection": [1e-4, 1.0, 1e8],
    "ridge": [1e-8, 1.0, 1e8],
    "welsch_pooling": [1e-8, 1.0, 1e8],
}
CASES = [(name, s) for name, scales in SCALES.items() for s in scales]


@pytest.mark.parametrize(("name", "scale"), CASES)
def test_zoo_against_closed_form_and_finite_differences(name, scale):
    """Solution and Jacobian (torch.func.jacrev: the IFT backward) within 1e-8 of the closed
    form, relative to its scale; central differences agree to 1e-6.

    Kepler's M is an angle: at M ~ 1e8 float64 resolves E only to an ulp of 1e8 (1.5e-8), so
    cos E, and with it any dE/dM (ours or the closed form), to ~1e-7; up to 1e4 here. A
    difference quotient in M with a step relative to M is meaningless above M ~ 1, so FD is
    skipped there. The sphere projection is ill posed as
    ‖x‖ → 0 (every unit vector is nearly optimal; J = (I − yyᵀ)/‖x‖): from 1e-4 up.
    """
    p = NODES[name]
    z0, params = p.sample(np.random.default_rng(3), scale)
    report = dl.verify(p.node("torch"), [t(z0), *map(t, params)], solution=p.solution,
                       jacobian=p.jacobian,
                       finite_differences=not (name == "kepler" and scale > 1))
    assert report.info.converged, report
    assert report.passed, report
    assert report.error("closed_form", "solution") <= 1e-8
    assert report.error("closed_form", "jacobian") <= 1e-8


def test_kepler_backward_jvp_and_jacfwd_match_the_closed_form():
    kepler = NODES["kepler"].node("torch")
    M = t([0.3, 1.0, 2.5, 4.0]).requires_grad_()
    e = t(0.7).requires_grad_()
    E = kepler(M.detach(), M, e)
    E_ref = t(NODES["kepler"].solution(M.detach().numpy(), 0.7))
    assert max_abs(E, E_ref) <= 1e-14
    w = t([1.0, -2.0, 0.5, 3.0])
    (E * w).sum().backward()
    d = 1 - 0.7 * torch.cos(E_ref)
    assert max_abs(M.grad, w / d) <= 1e-13
    assert max_abs(e.grad, (w * torch.sin(E_ref) / d).sum()) <= 1e-13
    Md = M.detach()
    _, tangent = torch.func.jvp(lambda m: kepler(Md, m, t(0.7)), (Md,), (w,))
    assert max_abs(tangent, w / d) <= 1e-13
    J = torch.func.jacfwd(lambda m: kepler(Md, m, t(0.7)))(Md)
    assert max_abs(J, torch.diag(1 / d)) <= 1e-13


def test_sphere_projection_jacobian_in_every_mode():
    node = NODES["sphere_projection"].node("torch")
    x = t([1.0, 2.0, -0.5, 0.3])
    y_ref = x / x.norm()
    J_ref = (torch.eye(4, dtype=T) - torch.outer(y_ref, y_ref)) / x.norm()
    y0 = t([0.5, 0.5, 0.0, 0.1])
    for J in (torch.func.jacrev(lambda x: node(y0, x))(x),
              torch.func.jacfwd(lambda x: node(y0, x))(x),
              torch.autograd.functional.jacobian(lambda x: node(y0, x), x)):
        assert max_abs(J, J_ref) <= 1e-13


def test_batched_z_equals_the_loop():
    """A batch is part of z: one call on a (batch, n) z equals one call per row."""
    kepler = NODES["kepler"].node("torch")
    M = t(np.random.default_rng(0).uniform(0, 6, size=(5, 3)))
    e = t(0.5)
    batched = kepler(M, M, e)
    looped = torch.stack([kepler(M[i], M[i], e) for i in range(5)])
    assert max_abs(batched, looped) <= 1e-14
    Mg = M.clone().requires_grad_()
    kepler(M, Mg, e).sum().backward()
    assert max_abs(Mg.grad, 1 / (1 - 0.5 * torch.cos(batched))) <= 1e-13


def test_coupled_batch_deq_with_closed_over_weights():
    """A DEQ layer z = tanh(Wz + Ux) whose weights are an nn.Module the function closes over:
    gradients reach them by the IFT and agree with central differences of the forward."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 6, bias=False).double()
    with torch.no_grad():
        lin.weight.mul_(0.6 / torch.linalg.matrix_norm(lin.weight, 2))
    U = torch.randn(6, 3, dtype=T)
    x = torch.randn(4, 3, dtype=T)
    node = implicit.fixed_point(lambda z, x: torch.tanh(lin(z) + x @ U.T))
    w = torch.randn(4, 6, dtype=T)

    def loss() -> torch.Tensor:
        return (node(torch.zeros(4, 6, dtype=T), x) * w).sum()

    loss().backward()
    grad = lin.weight.grad.clone()
    fd = torch.zeros_like(grad)
    h = 1e-6
    with torch.no_grad():
        for i in range(6):
            for j in range(6):
                lin.weight[i, j] += h
                up = loss()
                lin.weight[i, j] -= 2 * h
                down = loss()
                lin.weight[i, j] += h
                fd[i, j] = (up - down) / (2 * h)
    assert max_abs(grad, fd) <= 1e-7 * max(1.0, float(fd.abs().max()))


def test_matrix_free_path_matches_the_closed_form():
    """dense_max=0 forces Newton–Krylov forward and GMRES backward / jvp."""
    p = NODES["linear_fixed_point"]
    z0, (W, X) = p.sample(np.random.default_rng(2), 1.0)
    Wt, Xt = t(W), t(X).requires_grad_()
    for method in ("newton", "anderson"):
        Z, info = p.node("torch")(t(z0), Wt, Xt, dense_max=0, method=method, return_info=True)
        assert info.converged and np.isnan(info.condition)
        assert max_abs(Z, p.solution(W, X)) <= 1e-12
    G = torch.randn_like(Z)
    Xt.grad = None
    (Z * G).sum().backward()
    A = np.linalg.inv(np.eye(len(W)) - W)
    assert max_abs(Xt.grad, G.detach().numpy() @ A) <= 1e-10
    _, tangent = torch.func.jvp(lambda x: p.node("torch")(t(z0), Wt, x, dense_max=0),
                                (Xt.detach(),), (G.detach(),))
    assert max_abs(tangent, G.detach().numpy() @ A.T) <= 1e-10


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
def test_anderson_fixed_point_across_scales(scale):
    p = NODES["linear_fixed_point"]
    z0, (W, X) = p.sample(np.random.default_rng(4), scale)
    Xt = t(X).requires_grad_()
    Z, info = p.node("torch")(t(z0), t(W), Xt, method="anderson", return_info=True)
    assert info.converged and info.iterations > 1
    ref = p.solution(W, X)
    assert max_abs(Z, ref) <= 1e-12 * np.abs(ref).max()
    Z.sum().backward()
    A = np.linalg.inv(np.eye(len(W)) - W)
    assert max_abs(Xt.grad, np.ones_like(X) @ A) <= 1e-12


# -- failures: never returned as converged ------------------------------------------------
def test_not_converged_raises_or_gives_nan_and_zero_gradients():
    kepler = NODES["kepler"].node("torch")
    M = t([0.1, 2.0, 5.0]).requires_grad_()
    with pytest.raises(implicit.NodeError, match="max_iters") as err:
        kepler(M.detach() + 3, M, t(0.95), max_iters=1)
    assert err.value.info.status == "max_iters" and not err.value.info.converged
    E, info = kepler(M.detach() + 3, M, t(0.95), max_iters=1, on_failure="nan",
                     return_info=True)
    assert info.status == "max_iters" and torch.isnan(E).all()
    E.sum().backward()
    assert torch.equal(M.grad, torch.zeros(3, dtype=T))


def test_singular_jacobian_at_the_solution():
    """Kepler with e = 1 at M = 0: E = 0 is a root where dF/dE = 1 − cos 0 = 0."""
    kepler = NODES["kepler"].node("torch")
    with pytest.raises(implicit.NodeError, match="singular"):
        kepler(t([0.0]), t([0.0]), t(1.0))
    E, info = kepler(t([0.0]), t([0.0]), t(1.0), on_failure="nan", return_info=True)
    assert info.status == "singular" and torch.isnan(E).all()
    # a whole line of roots: F(z) = (z0 − θ, (z0 − θ)·z1), J singular at every root
    line = implicit.root(lambda z, th: torch.stack([z[0] - th, (z[0] - th) * z[1]]))
    with pytest.raises(implicit.NodeError, match="singular"):
        line(t([0.5, 2.0]), t(1.0))


def test_stationary_point_that_is_not_a_minimum_is_reported():
    node = implicit.argmin(lambda y, x: -((y - x) ** 2).sum())
    with pytest.raises(implicit.NodeError, match="not_minimum"):
        node(t([0.0, 0.0]), t([1.0, 2.0]))


def test_a_stalled_line_search_is_reported_as_stalled():
    """F(z) = z² + θ with θ > 0 has no real root: Newton's line search stops at the minimum of
    ‖F‖ (z = 0), which is not a root; reported as such, never as converged."""
    node = implicit.root(lambda z, th: z**2 + th)
    with pytest.raises(implicit.NodeError, match="stalled") as err:
        node(t([0.7]), t(1.0))
    assert not err.value.info.converged and err.value.info.status == "stalled"
    z, info = node(t([0.7]), t(1.0), on_failure="nan", return_info=True)
    assert info.status == "stalled" and torch.isnan(z).all()


def test_user_solver_is_certified():
    kepler = NODES["kepler"].node("torch")
    M = t([0.5, 1.5, 3.0])
    E = kepler(M, M, t(0.6), solver=lambda G, z0: scipy.optimize.fsolve(G, z0, xtol=1e-13))
    assert max_abs(E, NODES["kepler"].solution(M.numpy(), 0.6)) <= 1e-14
    with pytest.raises(implicit.NodeError, match="max_iters"):  # returns z0: not a root
        kepler(M, M, t(0.6), solver=lambda G, z0: z0)


# -- memory: independent of the number of forward iterations ------------------------------
def saved_tensors(fn) -> tuple[int, int]:
    """(count, bytes) of the tensors autograd saves for the backward pass of fn()."""
    count, nbytes = [0], [0]

    def pack(x):
        count[0] += 1
        nbytes[0] += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    assert out.requires_grad
    return count[0], nbytes[0]


def test_saved_tensors_do_not_depend_on_forward_iterations():
    """Anderson to tol 1e-4 vs 1e-12, and W scaled so the iteration contracts slowly: the
    autograd graph saved for backward is the same (one evaluation of f at z*, one LU)."""
    rng = np.random.default_rng(5)
    W = rng.standard_normal((8, 8))
    x = t(rng.standard_normal(8)).requires_grad_()
    node = implicit.fixed_point(lambda z, W, x: torch.tanh(W @ z + x))
    counts, iterations = [], []
    for rho, tol in [(0.3, 1e-4), (0.3, 1e-12), (0.95, 1e-12)]:
        Wt = t(W * rho / np.linalg.norm(W, 2))
        info = node(torch.zeros(8, dtype=T), Wt, x, method="anderson", tol=tol,
                    return_info=True)[1]
        iterations.append(info.iterations)
        counts.append(saved_tensors(lambda Wt=Wt, tol=tol: node(
            torch.zeros(8, dtype=T), Wt, x, method="anderson", tol=tol)))
    assert iterations[2] > iterations[0] + 5
    assert counts[0] == counts[1] == counts[2]

    def unrolled(K: int):
        z = torch.zeros(8, dtype=T)
        Wt = t(W * 0.95 / np.linalg.norm(W, 2))
        for _ in range(K):
            z = torch.tanh(Wt @ z + x)
        return z

    assert saved_tensors(lambda: unrolled(50))[0] > 10 * saved_tensors(lambda: unrolled(2))[0]


# -- input checks and API ----------------------------------------------------------------
def test_bad_input_is_named():
    kepler = NODES["kepler"].node("torch")
    with pytest.raises(dl.ParameterError, match=r"params\[0\] has NaN"):
        kepler(t([1.0]), t([np.nan]), t(0.5))
    with pytest.raises(dl.ParameterError, match=r"returned \(2,\); expected .* shape \(3,\)"):
        implicit.root(lambda z: z[:2])(t([1.0, 2.0, 3.0]))
    with pytest.raises(dl.ParameterError, match="objective"):
        implicit.argmin(lambda y: y ** 2)(t([1.0, 2.0]))
    with pytest.raises(TypeError, match="torch.Tensor or a jax.Array"):
        kepler(np.array([1.0]), np.array([1.0]), 0.5)
    with pytest.raises(TypeError, match="unknown option"):
        kepler(t([1.0]), t([1.0]), t(0.5), tolerance=1e-3)
    with pytest.raises(ValueError, match="anderson"):
        kepler(t([1.0]), t([1.0]), t(0.5), method="anderson")
    with pytest.raises(ValueError, match="on_failure"):
        implicit.root(lambda z: z, on_failure="ignore")
    with pytest.raises(NotImplementedError, match="vmap"):
        torch.func.vmap(lambda m: kepler(m, m, t(0.5)))(t([[1.0], [2.0]]))


def test_float32_in_float32_out():
    kepler = NODES["kepler"].node("torch")
    M = torch.tensor([0.5, 2.0], dtype=torch.float32, requires_grad=True)
    E, info = kepler(M.detach(), M, torch.tensor(0.3), return_info=True)
    assert E.dtype == torch.float32 and info.converged
    ref = NODES["kepler"].solution(M.detach().numpy().astype(float), 0.3)
    assert max_abs(E.double(), ref) <= 1e-6
    E.sum().backward()
    assert M.grad.dtype == torch.float32


def test_info_is_per_call_across_threads():
    kepler = NODES["kepler"].node("torch")
    results: dict[int, tuple] = {}

    def work(i: int) -> None:
        M = t(np.full(3, 0.5 + i))
        results[i] = kepler(M, M, t(0.1 * i), return_info=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == list(range(6))
    for i, (E, info) in results.items():
        assert info.converged
        assert max_abs(E, NODES["kepler"].solution(np.full(3, 0.5 + i), 0.1 * i)) <= 1e-14


def test_core_imports_no_framework():
    """declarative.implicit and its zoo import neither torch nor jax (cvxpy, which the core
    imports, may import jax or, through solver plugins such as moreau, torch on its own: only
    modules new after `import declarative` count)."""
    code = ("import sys, declarative; before = set(sys.modules); "
            "import declarative.implicit, problems.implicit_nodes; "
            "from declarative import implicit; implicit.root(lambda z: z); "
            "new = [m for m in set(sys.modules) - before if m.split('.')[0] in ('torch', 'jax')]; "
            "assert not new, new")
    subprocess.run([sys.executable, "-c", code], check=True)
