r"""Ridge regression (Tikhonov-regularised least squares) with a learnable penalty.

Problem (parameters X ∈ ℝᵐˣⁿ, t ∈ ℝᵐ, λ > 0; variable w ∈ ℝⁿ)::

    w*(X, t, λ) = argmin_w  ‖Xw − t‖² + λ‖w‖²

(DPP: Xw is parameter × variable, and λ·sum_squares(w) is a nonnegative parameter times a
convex expression.)

Closed form (normal equations)::

    H = XᵀX + λI,      w* = H⁻¹Xᵀt

Jacobian, with the residual ρ = t − Xw* (from dH w* + H dw* = dXᵀ t, dH = dXᵀX + XᵀdX + dλ I)::

    ∂w*/∂t    = H⁻¹Xᵀ
    ∂w*/∂λ    = −H⁻¹w*
    ∂w*/∂X_ij = ρ_i H⁻¹[:, j] − w*_j H⁻¹X[i, :]ᵀ

Smooth for every λ > 0 (H ≻ 0).

Sampler: X ~ N(0, 1/m) entrywise, t ~ N(0, I), λ ~ U[0.1, 1].

Cone form (``use_quad_obj=False``): each sum of squares is one second-order cone (dimensions
m + 2 and n + 2); no other rows.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, resolve_sizes

NAME = "ridge"
REFERENCE = (
    "Hoerl & Kennard, 'Ridge Regression: Biased Estimation for Nonorthogonal Problems', "
    "Technometrics 1970 (w = (XᵀX + λI)⁻¹Xᵀt); derivatives by differentiating the normal equations"
)
CONES = ("soc",)
SIZES = {"m": 8, "n": 4}

LAMBDA_RANGE = (0.1, 1.0)


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    s = resolve_sizes(SIZES, sizes)
    m, n = s["m"], s["n"]
    X = cp.Parameter((m, n), name="X")
    t = cp.Parameter(m, name="t")
    lam = cp.Parameter(nonneg=True, name="lam")
    w = cp.Variable(n, name="w")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X @ w - t) + lam * cp.sum_squares(w)))
    return problem, [X, t, lam], [w]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    s = resolve_sizes(SIZES, sizes)
    m, n = s["m"], s["n"]
    X = rng.standard_normal((m, n)) / np.sqrt(m)
    t = rng.standard_normal(m)
    lam = np.array(rng.uniform(*LAMBDA_RANGE))
    return [X, t, lam]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    if len(params) != 3:
        raise TypeError(f"{NAME} takes 3 parameters (X, t, lam), got {len(params)}")
    X = np.asarray(params[0], dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{NAME}: X must be a matrix, got shape {X.shape}")
    m, n = X.shape
    lam = float(as_array(params[2], (), "lam"))
    if lam <= 0:
        raise ValueError(f"{NAME}: λ must be positive, got {lam}")
    return as_array(X, (m, n), "X"), as_array(params[1], (m,), "t"), lam


def _parts(params: tuple[np.ndarray, ...]):
    X, t, lam = _check(params)
    H = X.T @ X + lam * np.eye(X.shape[1])
    w = np.linalg.solve(H, X.T @ t)
    return X, t, H, w


def solution(*params: np.ndarray) -> list[np.ndarray]:
    return [_parts(params)[3]]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    X, t, H, w = _parts(params)
    Hinv = np.linalg.inv(H)
    rho = t - X @ w
    HX = Hinv @ X.T  # (n, m): H⁻¹Xᵀ, column i is H⁻¹X[i, :]ᵀ
    dX = rho[None, :, None] * Hinv[:, None, :] - HX[:, :, None] * w[None, None, :]
    return [[dX, HX, -Hinv @ w]]
