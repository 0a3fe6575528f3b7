"""cvxpylayers' test problems (tests/test_torch.py, tests/test_jax.py) and the independent
references our ports check them against: closed forms, KKT systems solved by Newton's
method or a one-dimensional root, shared by the torch and JAX ports."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
from scipy.optimize import brentq


def l1_regression(m=3, n=2):
    x, A, b = cp.Variable(n), cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(0.5 * cp.pnorm(A @ x - b, p=1)), [x >= 0])
    return problem, [A, b], [x]


def ridge(m, n):
    """min ‖Ax − b‖² + ‖x‖²: x* = (AᵀA + I)⁻¹Aᵀb."""
    A, b, x = cp.Parameter((m, n)), cp.Parameter(m), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + cp.sum_squares(x)))
    return problem, [A, b], [x]


def ball_qp(P_sqrt, q, a, b):
    """min ½‖P_sqrt x‖² + qᵀx s.t. a x = b, ‖x‖ ≤ 1, from its KKT conditions: (H + μI) x + q
    + aᵀν = 0, a x = b, with μ = 0 if that x is in the ball, else the root of ‖x(μ)‖ = 1
    (a trust-region subproblem with an equality; ‖x(μ)‖ decreases in μ)."""
    n, m = P_sqrt.shape[1], a.shape[0]
    H = P_sqrt.T @ P_sqrt

    def x_of(mu):
        K = np.block([[H + mu * np.eye(n), a.T], [a, np.zeros((m, m))]])
        return np.linalg.solve(K, np.concatenate([-q.ravel(), b.ravel()]))[:n]

    if np.linalg.norm(x_of(0.0)) <= 1:
        return x_of(0.0).reshape(-1, 1)
    hi = 1.0
    while np.linalg.norm(x_of(hi)) > 1:
        hi *= 2
    mu = brentq(lambda t: np.linalg.norm(x_of(t)) - 1, 0.0, hi, xtol=1e-15, rtol=1e-15)
    return x_of(mu).reshape(-1, 1)


def entropy_problem():
    n, m, p = 5, 3, 2
    x = cp.Variable(n)
    A, b, F, g = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter((p, n)), cp.Parameter(p)
    problem = cp.Problem(cp.Maximize(cp.sum(cp.entr(x)) - 0.01 * cp.sum_squares(x)),
                         [A @ x == b, F @ x <= g])
    return problem, [A, b, F, g], x


def entropy_newton(values, start):
    """Polish CVXPY's solution (Clarabel, within ~1e-6 on exponential cones) by Newton's
    method on the KKT system of min Σ x log x + 0.01‖x‖² s.t. Ax = b and the active rows of
    Fx ≤ g, with the active set checked afterwards (multipliers > 0, slacks > 0)."""
    A, b, F, g = values
    x = np.maximum(start, 1e-12)
    active = g - F @ x < 1e-5
    E, e = np.vstack([A, F[active]]), np.concatenate([b, g[active]])
    k = E.shape[0]
    for _ in range(30):
        grad = np.log(x) + 1 + 0.02 * x
        K = np.block([[np.diag(1 / x + 0.02), E.T], [E, np.zeros((k, k))]])
        step = np.linalg.solve(K, np.concatenate([-grad, e - E @ x]))
        x, mult = x + step[:x.size], step[x.size:]
    assert np.all(x > 0) and np.all(g[~active] - F[~active] @ x > 1e-6)
    assert np.all(mult[A.shape[0]:] > 0)  # ∇f + Eᵀλ = 0 with λ > 0 on the active rows
    return x


def lml_closed_form(x, k):
    """y = σ(x + ν) with Σy = k (stationarity: logit(y_i) = x_i + ν), and its Jacobian
    D − ddᵀ/Σd, d = y(1 − y) (Amos, Koltun, Kolter 2019, *The limited multi-label
    projection layer*)."""
    def y_of(nu):
        return 1 / (1 + np.exp(-(x + nu)))

    nu = brentq(lambda t: y_of(t).sum() - k, -50, 50, xtol=1e-15, rtol=1e-15)
    y = y_of(nu)
    d = y * (1 - y)
    return y, np.diag(d) - np.outer(d, d) / d.sum()


def logistic_newton(X, y, lam):
    """The ridge-regularized logistic regression minimizer, by Newton's method on the
    smooth objective −Σ[y·Xa − log(1 + e^{Xa})] + λ‖a‖², and its Hessian there (so that
    da/dλ = −H⁻¹ 2a by the implicit function theorem)."""
    a = np.zeros(X.shape[1])
    for _ in range(50):
        s = 1 / (1 + np.exp(-(X @ a)))
        grad = -X.T @ (y.ravel() - s) + 2 * lam * a
        H = X.T @ (X * (s * (1 - s))[:, None]) + 2 * lam * np.eye(X.shape[1])
        a = a - np.linalg.solve(H, grad)
    return a.reshape(-1, 1), H


def gp(named=False):
    x, y, z = (cp.Variable(pos=True, name=s) for s in "xyz")
    a = cp.Parameter(pos=True, name="a" if named else None)
    b = cp.Parameter(pos=True, name="b" if named else None)
    c = cp.Parameter(name="c" if named else None)
    problem = cp.Problem(cp.Minimize(1 / (x * y * z)),
                         [a * (x * y + x * z + y * z) <= b, x >= y**c])
    return problem, [a, b, c], [x, y, z]


def gp_reference(a, b, c):
    """max xyz s.t. a(xy + xz + yz) ≤ b, x ≥ y^c, for c ∈ (0, 1) and b/(3a) < 1 (then the
    symmetric AM–GM point x = y = z = √(b/3a) violates x ≥ y^c and both constraints are
    active): x = y^c, z = (k − y^(c+1))/(y^c + y) with k = b/a, and y maximizes
    log(y^(c+1) z(y)), the root of (c+1)/y + N'/N − D'/D for N = k − y^(c+1), D = y^c + y."""
    k = b / a
    assert 0 < c < 1 and k / 3 < 1

    def slope(y):
        N, D = k - y ** (c + 1), y**c + y
        return (c + 1) / y - (c + 1) * y**c / N - (c * y ** (c - 1) + 1) / D

    y = brentq(slope, 1e-12, k ** (1 / (c + 1)) * (1 - 1e-14), xtol=1e-16, rtol=1e-15)
    return np.array([y**c, y, (k - y ** (c + 1)) / (y**c + y)])


def gp_reference_grad(a, b, c, h=1e-6):
    """∂x/∂(a, b, c) by central differences of `gp_reference` (itself exact to ~1e-15, so
    these are within ~1e-10)."""
    base = np.array([a, b, c], dtype=float)
    cols = []
    for j in range(3):
        e = np.zeros(3)
        e[j] = h * max(1.0, abs(base[j]))
        cols.append((gp_reference(*(base + e))[0] - gp_reference(*(base - e))[0]) / (2 * e[j]))
    return np.array(cols)
