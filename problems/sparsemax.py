r"""Sparsemax: Euclidean projection onto the probability simplex.

Problem (θ ∈ ℝⁿ the parameter, x ∈ ℝⁿ the variable)::

    x*(θ) = argmin_x  ‖x − θ‖²   s.t.  1ᵀx = 1,  x >= 0

Closed form (Martins & Astudillo 2016, Prop. 1; Held, Wolfe & Crowder 1974): with
θ_(1) >= … >= θ_(n) sorted decreasingly,

    k(θ) = max{ k : 1 + k θ_(k) > Σ_{j<=k} θ_(j) },     τ(θ) = (Σ_{j<=k(θ)} θ_(j) − 1) / k(θ),
    x*(θ) = max(θ − τ(θ), 0),                            S = {i : θ_i > τ} = supp(x*).

Jacobian (Martins & Astudillo 2016, Sec. 2.5), valid whenever no θ_i equals τ::

    ∂x*/∂θ = diag(s) − s sᵀ / |S|,        s = 1_S ∈ {0, 1}ⁿ.

At ties θ_i = τ the map is not differentiable and the formula returns one element of the Clarke
generalised Jacobian.  The sampler therefore rejects θ with any |θ_i − τ| < MARGIN / n
(the KKT multiplier of x_i >= 0 is 2(τ − θ_i), the solution entries are θ_i − τ), and requires
3 <= |S| <= n − 1 (several support elements and at least one zero, for n >= 4).

Cone form: the equality gives one zero-cone row, x >= 0 n nonneg rows, and the quadratic
objective (with ``use_quad_obj=False``) one second-order cone of dimension n + 2.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes

NAME = "sparsemax"
REFERENCE = (
    "Martins & Astudillo, 'From Softmax to Sparsemax: A Sparse Model of Attention and "
    "Multi-Label Classification', ICML 2016 (Prop. 1 threshold τ; Jacobian Sec. 2.5)"
)
CONES = ("zero", "nonneg", "soc")
SIZES = {"n": 8}

# θ ~ THETA_SCALE/√n · N(0, I); reject unless min_i |θ_i − τ| >= MARGIN / n and 3 <= |S| <= n−1.
THETA_SCALE = 1.5
MARGIN = 0.1


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    theta = cp.Parameter(n, name="theta")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [cp.sum(x) == 1, x >= 0])
    return problem, [theta], [x]


def threshold(theta: np.ndarray) -> float:
    """τ(θ) of the closed form (sort-based, O(n log n))."""
    z = np.sort(theta)[::-1]
    cumsum = np.cumsum(z)
    ks = np.arange(1, z.size + 1)
    k = int(ks[1.0 + ks * z > cumsum][-1])
    # recompute the sum over the support directly (not via the long cumsum) for exactness
    return float((np.sum(z[:k]) - 1.0) / k)


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]
    min_support = min(3, n)
    max_support = n - 1 if n >= 4 else n

    def draw(rng: np.random.Generator) -> np.ndarray:
        return THETA_SCALE / np.sqrt(n) * rng.standard_normal(n)

    def accept(theta: np.ndarray) -> bool:
        tau = threshold(theta)
        support = int(np.sum(theta > tau))
        return bool(
            min_support <= support <= max_support and np.abs(theta - tau).min() >= MARGIN / n
        )

    return [rejection_sample(draw, accept, rng, NAME)]


def _check(theta: np.ndarray) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 1:
        raise ValueError(f"parameter 'theta' must be a vector, got shape {theta.shape}")
    return as_array(theta, theta.shape, "theta")


def solution(theta: np.ndarray) -> list[np.ndarray]:
    theta = _check(theta)
    return [np.maximum(theta - threshold(theta), 0.0)]


def jacobian(theta: np.ndarray) -> list[list[np.ndarray]]:
    theta = _check(theta)
    s = (theta > threshold(theta)).astype(np.float64)
    return [[np.diag(s) - np.outer(s, s) / s.sum()]]
