"""quad_form(x, Q) with Q a PSD parameter in the objective (SCS's quadratic objective ½xᵀPx
with P affine in Q): solution and Jacobian in Q against the OptNet closed form on the active
set, and torch/JAX derivatives against finite differences."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
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
