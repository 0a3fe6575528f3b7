"""quad_form(x, Q) with Q a PSD parameter in the objective (SCS's quadratic objective ½xᵀPx
with P affine in Q): solution and Jacobian in Q against the OptNet closed form on the active
set, and torch/JAX derivatives against finite differences."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp
from declarative.problems._activeset import kkt_point

import declarative as dl
from declarative.errors import ParameterError, ProblemError
from tests.output_checks import check_derivatives, check_values

N, P_EQ, M_INEQ = 5, 1, 6


def _problem():
    Q = cp.Parameter((N, N), PSD=True, name="Q")
    q = cp.Parameter(N, name="q")
    A = cp.Parameter((P_EQ, N), name="A")
    b = cp.Parameter(P_EQ, name="b")
    G = cp.Parameter((M_INEQ, N), name="G")
    h = cp.Parameter(M_INEQ, name="h")
    x = cp.Variable(N, name="x")
    eq, ineq = A @ x == b, G @ x <= h
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x), [eq, ineq])
    return problem, [Q, q, A, b, G, h], [x, eq.dual_variables[0], ineq.dual_variables[0]]


def _planted(rng: np.random.Generator):
    """A QP instance with a planted KKT point: active set of 2, multipliers and slacks in
    [0.5, 2] (strict complementarity with a margin)."""
    B = rng.standard_normal((N, N)) / np.sqrt(N)
    Q = B @ B.T + 0.2 * np.eye(N)
    A, G = rng.standard_normal((P_EQ, N)), rng.standard_normal((M_INEQ, N))
    x, nu = rng.standard_normal(N), rng.standard_normal(P_EQ)
    active = np.zeros(M_INEQ, dtype=bool)
    active[:2] = True
    lam = np.where(active, rng.uniform(0.5, 2.0, M_INEQ), 0.0)
    slack = np.where(active, 0.0, rng.uniform(0.5, 2.0, M_INEQ))
    q = -(Q @ x + A.T @ nu + G.T @ lam)
    return [Q, q, A, A @ x, G, G @ x + slack], active


def _closed_form(values, active):
    """x, ν, λ from the KKT system on the active set, and ∂x/∂Q: dx = −M₁ dQ x with M₁ the
    first n rows and columns of K⁻¹ (Amos & Kolter 2017, Sec. 3). Q enters symmetrized
    ((dQ + dQᵀ)/2, the symmetric parameter's convention), so ∂x/∂Q_ij = −(M₁[:, i] x_j +
    M₁[:, j] x_i)/2."""
    Q, q, A, b, G, h = values
    point = kkt_point(Q, q, A, b, G, h, active, with_inverse=True)
    assert point is not None and point.certified()
    x, M1 = point.x, point.kinv_x[:, :N]
    dQ = -(M1[:, :, None] * x[None, None, :] + M1[:, None, :] * x[None, :, None]) / 2
    return point, dQ


@pytest.mark.parametrize("scale", [1e-12, 1e-9, 1e-6, 1e-3, 1.0, 1e3, 1e6, 1e9, 1e12])
def test_parametric_quad_form_closed_form(scale):
    """All data scaled by ``scale``."""
    problem, params, outputs = _problem()
    layer = dl.compile(problem, params, outputs)
    assert layer.template.quadratic and layer.template.H.nnz  # P depends on Q
    rng = np.random.default_rng(0)
    instances = [_planted(rng) for _ in range(3)]
    batch = [scale * np.stack([v[k] for v, _ in instances]) for k in range(6)]
    fwd = layer.forward(batch)
    for i, (values, active) in enumerate(instances):
        point, dQ = _closed_form(values, active)  # at scale 1: x, ν, λ the same, ∂x/∂Q ÷ scale
        dQ = dQ / scale
        x, nu, lam = (o[i] for o in fwd.outputs)
        assert np.max(np.abs(x - point.x)) <= 1e-8 * max(1, np.max(np.abs(point.x)))
        assert np.max(np.abs(nu - point.nu)) <= 1e-8 * max(1, np.max(np.abs(point.nu)))
        assert np.max(np.abs(lam - point.lam)) <= 1e-8 * max(1, np.max(point.lam))
        J = fwd.jacobian(i)[0][0]  # ∂x/∂Q, shape (n, n, n)
        assert np.max(np.abs(J - dQ)) <= 1e-7 / scale * max(1, np.max(np.abs(dQ * scale)))


def test_parametric_quad_form_derivatives_and_cvxpy():
    problem, params, outputs = _problem()
    layer = dl.compile(problem, params, outputs)
    rng = np.random.default_rng(1)
    instances = [_planted(rng) for _ in range(2)]
    batch = [np.stack([v[k] for v, _ in instances]) for k in range(6)]
    check_values(layer, problem, params, outputs, batch)
    tangent = [rng.standard_normal(v.shape) for v in batch]
    tangent[0] = tangent[0] + np.swapaxes(tangent[0], -1, -2)  # Q stays symmetric
    check_derivatives(layer, batch, tangent)


def test_parametric_quad_form_broadcast_Q():
    """One Q for a batch of q (OptNet's learned Q with per-sample linear terms)."""
    problem, params, outputs = _problem()
    layer = dl.compile(problem, params, outputs)
    rng = np.random.default_rng(2)
    values, active = _planted(rng)
    qs = np.stack([values[1], values[1] + 0.01 * rng.standard_normal(N)])
    fwd = layer.forward([values[0], qs, *values[2:]])
    point, _ = _closed_form(values, active)
    assert np.max(np.abs(fwd.outputs[0][0] - point.x)) <= 1e-8
    tangent = [rng.standard_normal((N, N)), rng.standard_normal((2, N)),
               *(np.zeros_like(v) for v in values[2:])]
    tangent[0] = tangent[0] + tangent[0].T
    check_derivatives(layer, [values[0], qs, *values[2:]], tangent)


def test_parametric_quad_form_errors():
    problem, params, outputs = _problem()
    layer = dl.compile(problem, params, outputs)
    values, _ = _planted(np.random.default_rng(3))
    with pytest.raises(ParameterError, match=r"'Q' has values that are not PSD"):
        layer.forward([-values[0], *values[1:]])
    x, Q = cp.Variable(2), cp.Parameter((2, 2), PSD=True)
    in_constraint = cp.Problem(cp.Minimize(cp.sum(x)), [cp.quad_form(x, Q) <= 1])
    with pytest.raises(ProblemError, match="not DPP.*objective only"):
        dl.compile(in_constraint, [Q], [x])


@pytest.mark.parametrize("atom", ["quad_form", "matrix_frac", "nsd", "sparse"])
@pytest.mark.parametrize("scale", [1e-12, 1e-6, 1.0, 1e6, 1e12])
def test_a_constant_quadratic_around_a_parameter_point(atom, scale):
    """quad_form(x − c, P₀) and matrix_frac(x − c, P₀) = (x − c)ᵀP₀⁻¹(x − c), P₀ constant
    (also maximized with −P₀, and given sparse) and c a parameter, under Σx = s: DPP by
    CVXPY's standard rules but not by its quadratic-objective ones, which accept them
    written quad_form(z, P₀) with z = x − c. With M = P₀⁻¹ (quad_form) or P₀ (matrix_frac),
    x = c + M1(s − 1ᵀc)/(1ᵀM1) and ∂x/∂c = I − M11ᵀ/(1ᵀM1), against the layer's values
    and Jacobian, with c and s scaled together (in the pure cone form, the quadratic through
    a second-order cone, 1e6 and beyond were not solved)."""
    n = 4
    rng = np.random.default_rng(7)
    B = rng.standard_normal((n, n))
    P0 = B @ B.T + np.eye(n)
    x, c, s = cp.Variable(n), cp.Parameter(n), cp.Parameter()
    objective = {"quad_form": cp.Minimize(cp.quad_form(x - c, P0)),
                 "matrix_frac": cp.Minimize(cp.matrix_frac(x - c, P0)),
                 "nsd": cp.Maximize(cp.quad_form(x - c, -P0)),
                 "sparse": cp.Minimize(cp.quad_form(x - c, sp.csr_matrix(P0)))}[atom]
    layer = dl.compile(cp.Problem(objective, [cp.sum(x) == s]), [c, s], [x])
    M = P0 if atom == "matrix_frac" else np.linalg.inv(P0)
    w = M @ np.ones(n) / (np.ones(n) @ M @ np.ones(n))
    cs = [rng.standard_normal(n) * scale for _ in range(3)]
    ss = [float(rng.standard_normal()) * scale for _ in range(3)]
    fwd = layer.forward([np.stack(cs), np.array(ss)])
    assert fwd.ok.all(), fwd.info.status
    for i, (cv, sv) in enumerate(zip(cs, ss, strict=True)):
        exact = cv + w * (sv - cv.sum())
        assert np.abs(fwd.outputs[0][i] - exact).max() <= 1e-8 * np.abs(exact).max()
        J = fwd.jacobian(i)[0]
        assert np.abs(J[0] - (np.eye(n) - np.outer(w, np.ones(n)))).max() <= 1e-8
        assert np.abs(J[1].reshape(n) - w).max() <= 1e-8


def test_a_parametric_and_a_shifted_quadratic_together():
    """quad_form(x, P) with a parameter P needs CVXPY's quadratic-objective rules, under
    which quad_form(x − c, P₀) is DPP once written as a sum of squares: min xᵀPx + ‖x − c‖²
    has x = (P + I)⁻¹c, against the layer's value."""
    x, P, c = cp.Variable(2), cp.Parameter((2, 2), PSD=True), cp.Parameter(2)
    both = cp.Problem(cp.Minimize(cp.quad_form(x, P) + cp.quad_form(x - c, np.eye(2))))
    layer = dl.compile(both, [P, c], [x])
    Pv, cv = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([1.0, -3.0])
    fwd = layer.forward([Pv, cv])
    exact = np.linalg.solve(Pv + np.eye(2), cv)
    assert np.abs(fwd.outputs[0][0] - exact).max() <= 1e-8 * np.abs(exact).max()


def test_a_shifted_quadratic_beside_a_parametric_one_in_a_constraint_is_refused_by_name():
    """quad_form(x, P) with a parameter P is DPP in the objective only: in a constraint the
    problem is refused, the rule named."""
    x, P, c = cp.Variable(2), cp.Parameter((2, 2), PSD=True), cp.Parameter(2)
    problem = cp.Problem(cp.Minimize(cp.quad_form(x - c, np.eye(2))),
                         [cp.quad_form(x, P) <= 1])
    with pytest.raises(ProblemError, match="not DPP.*objective only"):
        dl.compile(problem, [P, c], [x])


def test_a_shifted_sparse_quadratic_keeps_its_size():
    """quad_form(x − c, P₀) with P₀ sparse (tridiagonal, n = 200) compiles over an auxiliary
    z = x − c that the compile substitutes out: the cone program keeps n variables and the
    one row of Σx = 1 (a dense factor of P₀ made it 200 × 200), and x against the closed form
    x = c + P₀⁻¹1(1 − 1ᵀc)/(1ᵀP₀⁻¹1)."""
    n = 200
    P0 = sp.diags([np.full(n - 1, -1.0), np.full(n, 2.5), np.full(n - 1, -1.0)],
                  [-1, 0, 1]).tocsc()
    x, c = cp.Variable(n), cp.Parameter(n)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.quad_form(x - c, P0)), [cp.sum(x) == 1]),
                       [c], [x])
    assert (layer.template.n, layer.template.m) == (n, 1)
    cv = np.random.default_rng(0).standard_normal(n)
    w = np.linalg.solve(P0.toarray(), np.ones(n))
    exact = cv + w * (1 - cv.sum()) / w.sum()
    fwd = layer.forward([cv])
    assert np.abs(fwd.outputs[0][0] - exact).max() <= 1e-8 * np.abs(exact).max()
