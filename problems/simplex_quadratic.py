r"""Diagonally weighted quadratic over the probability simplex (a "weighted sparsemax").

Problem (parameters θ ∈ ℝⁿ, d ∈ ℝⁿ with d > 0; variable x ∈ ℝⁿ)::

    x*(θ, d) = argmin_x  ½ Σ_i d_i x_i² − θᵀx   s.t.  1ᵀx = 1,  x >= 0

(d = 1 gives sparsemax(θ).  DPP: d is declared ``nonneg`` and enters as d ⊙ x², a nonnegative
parameter times a convex expression.)

Closed form (continuous quadratic knapsack; Brucker 1984, Pardalos & Kovoor 1990): KKT gives
x_i = max(θ_i − τ, 0) / d_i with the multiplier τ of 1ᵀx = 1.  With w = 1/d and θ sorted
decreasingly θ_(1) >= … >= θ_(n), the support is the top k, where k is the unique index with

    τ_k = (Σ_{j<=k} w_(j) θ_(j) − 1) / Σ_{j<=k} w_(j),      θ_(k) > τ_k >= θ_(k+1)  (θ_(n+1) = −∞),

and τ = τ_k, x*_i = w_i max(θ_i − τ, 0), S = {i : θ_i > τ}.

Jacobian, with s = 1_S, v = w ⊙ s and W = Σ_{i∈S} w_i (from Σ_{i∈S} w_i(θ_i − τ) = 1:
∂τ/∂θ_j = v_j / W and ∂τ/∂d_j = −v_j x*_j / W)::

    ∂x*/∂θ = diag(v) − v vᵀ / W,          ∂x*/∂d = v (v ⊙ x*)ᵀ / W − diag(v ⊙ x*)

The multiplier of x_i >= 0 is τ − θ_i off S; at ties θ_i = τ the map is not differentiable.

Sampler: d_i ~ U[0.5, 2], θ ~ N(0, THETA_SCALE²/n); rejected unless 2 <= |S| <= n − 1 and
min_i |θ_i − τ| >= MARGIN / n.

Cone form (``use_quad_obj=False``): one zero-cone row, n nonneg rows (x >= 0) and one 3-dim
second-order cone per square x_i².
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes

NAME = "simplex_quadratic"
REFERENCE = (
    "Continuous quadratic knapsack: Pardalos & Kovoor, 'An algorithm for a singly constrained "
    "class of quadratic programs subject to upper and lower bounds', Math. Prog. 1990"
)
CONES = ("zero", "nonneg", "soc")
SIZES = {"n": 6}

THETA_SCALE = 1.5
D_RANGE = (0.5, 2.0)
MARGIN = 0.1


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    theta = cp.Parameter(n, name="theta")
    d = cp.Parameter(n, nonneg=True, name="d")
    x = cp.Variable(n, name="x")
    objective = cp.Minimize(0.5 * cp.sum(cp.multiply(d, cp.square(x))) - theta @ x)
    problem = cp.Problem(objective, [cp.sum(x) == 1, x >= 0])
    return problem, [theta, d], [x]


def threshold(theta: np.ndarray, d: np.ndarray) -> float:
    """τ(θ, d) of the closed form."""
    order = np.argsort(-theta, kind="stable")
    z, w = theta[order], 1.0 / d[order]
    n = z.size
    for k in range(1, n + 1):
        tau = (np.dot(w[:k], z[:k]) - 1.0) / w[:k].sum()
        if z[k - 1] > tau and (k == n or tau >= z[k]):
            return float(tau)
    raise AssertionError("unreachable: Σ w_i max(θ_i − τ, 0) = 1 always has a root")


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]
    if n < 3:
        raise ValueError(f"{NAME}: the sampler needs n >= 3, got n={n}")

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return THETA_SCALE / np.sqrt(n) * rng.standard_normal(n), rng.uniform(*D_RANGE, n)

    def accept(candidate: tuple[np.ndarray, np.ndarray]) -> bool:
        theta, d = candidate
        tau = threshold(theta, d)
        support = int(np.sum(theta > tau))
        return bool(2 <= support <= n - 1 and np.abs(theta - tau).min() >= MARGIN / n)

    theta, d = rejection_sample(draw, accept, rng, NAME)
    return [theta, d]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    if len(params) != 2:
        raise TypeError(f"{NAME} takes 2 parameters (theta, d), got {len(params)}")
    theta = np.asarray(params[0], dtype=np.float64)
    if theta.ndim != 1:
        raise ValueError(f"{NAME}: theta must be a vector, got shape {theta.shape}")
    theta = as_array(theta, theta.shape, "theta")
    d = as_array(params[1], theta.shape, "d")
    if np.any(d <= 0):
        raise ValueError(f"{NAME}: weights d must be positive")
    return theta, d


def solution(*params: np.ndarray) -> list[np.ndarray]:
    theta, d = _check(params)
    return [np.maximum(theta - threshold(theta, d), 0.0) / d]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    theta, d = _check(params)
    tau = threshold(theta, d)
    x = np.maximum(theta - tau, 0.0) / d
    v = (theta > tau) / d
    W = v.sum()
    vx = v * x
    return [[np.diag(v) - np.outer(v, v) / W, np.outer(v, vx) / W - np.diag(vx)]]
