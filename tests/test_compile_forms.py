"""Problems that CVXPY's own SCS interface refuses as written, compiled all the same, with
their values and derivatives against closed forms."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl


def _chebyshev_vertex(A: np.ndarray, b: np.ndarray, x: np.ndarray, dA: np.ndarray,
                      db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min ‖Ax − b‖∞ at a generic instance is a vertex: n + 1 rows hold |aᵢᵀx − bᵢ| = t, so
    aᵢᵀx − σᵢt = bᵢ with σᵢ their residuals' signs. Those rows (found at ``x``) as a square
    system give the solution and, differentiated, its derivative along (dA, db):
    M [dx; dt] = db_act − dA_act x. That vertex is the optimum: its multipliers λ (Mᵀμ =
    (0, −1), λ = σ ∘ μ, Σλ = 1, Σλᵢσᵢaᵢ = 0) are asserted nonnegative."""
    r = A @ x - b
    act = np.argsort(-np.abs(r))[: A.shape[1] + 1]
    M = np.column_stack([A[act], -np.sign(r[act])])
    mu = np.linalg.solve(M.T, np.r_[np.zeros(A.shape[1]), -1.0])
    assert np.all(np.sign(r[act]) * mu > 0)
    xt = np.linalg.solve(M, b[act])
    d = np.linalg.solve(M, db[act] - dA[act] @ xt[:-1])
    return xt[:-1], d[:-1]


@pytest.mark.parametrize("objective", ["norm_inf", "norm"])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_chebyshev_regression_without_constraints(objective, scale):
    """min ‖Ax − b‖∞ with A and b parameters and no constraint: CVXPY 1.9 refuses SCS for a
    problem written without constraints before it canonicalizes (its canonical form has
    2m). Compiled, every instance is solved, within 1e-10 of the vertex's closed form in
    value and JVP (relative to each one's largest entry)."""
    m, n = 7, 3
    A, b, x = cp.Parameter((m, n)), cp.Parameter(m), cp.Variable(n)
    expr = cp.norm_inf(A @ x - b) if objective == "norm_inf" else cp.norm(A @ x - b, "inf")
    layer = dl.compile(cp.Problem(cp.Minimize(expr)), [A, b], [x])
    rng = np.random.default_rng(1)
    As, bs = scale * rng.standard_normal((6, m, n)), scale * rng.standard_normal((6, m))
    dA, db = scale * rng.standard_normal((6, m, n)), scale * rng.standard_normal((6, m))
    fwd = layer.forward([As, bs])
    assert fwd.ok.all(), fwd.info.status
    (dx,) = fwd.jvp([dA, db])
    for i in range(6):
        xr, dxr = _chebyshev_vertex(As[i], bs[i], fwd.outputs[0][i], dA[i], db[i])
        assert np.abs(fwd.outputs[0][i] - xr).max() <= 1e-10 * np.abs(xr).max()
        assert np.abs(dx[i] - dxr).max() <= 1e-10 * np.abs(dxr).max()
