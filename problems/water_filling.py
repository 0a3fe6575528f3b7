r"""Water-filling: power allocation over parallel channels (log-utility resource allocation).

Problem (parameters α ∈ ℝⁿ with α > 0 (channel noise levels), P > 0 (total budget); variable
x ∈ ℝⁿ)::

    x*(α, P) = argmax_x  Σ_i log(α_i + x_i)   s.t.  x >= 0,  1ᵀx = P

Closed form (Boyd & Vandenberghe 2004, Example 5.2): KKT gives x_i = max(0, L − α_i) with the
water level L = 1/ν fixed by the budget.  With α sorted increasingly α_(1) <= … <= α_(n),

    k = max{ k : α_(k) < (P + Σ_{j<=k} α_(j)) / k },      L = (P + Σ_{j<=k} α_(j)) / k,
    x*_i = max(L − α_i, 0),                                S = {i : α_i < L} = supp(x*), |S| = k.

Jacobian (on S, x*_i = L − α_i and kL = P + Σ_{j∈S} α_j; off S, x*_i = 0 locally), s = 1_S::

    ∂x*/∂α = s sᵀ / k − diag(s),          ∂x*/∂P = s / k

The multiplier of x_i >= 0 is 1/L − 1/α_i > 0 off S; at ties α_i = L the map is not
differentiable (the formula then returns one element of the Clarke generalised Jacobian).

Sampler: α_i ~ U[0.5, 2], P ~ U[0.5, 2]; rejected unless 2 <= |S| <= n − 1 and
min_i |α_i − L| >= MARGIN = 0.05.

Cone form: each log is one exponential cone (n in all), x >= 0 gives n nonneg rows and the
budget one zero-cone row.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes

NAME = "water_filling"
REFERENCE = (
    "Boyd & Vandenberghe, 'Convex Optimization', Cambridge 2004, Example 5.2 (water-filling: "
    "x_i = max(0, 1/ν − α_i))"
)
CONES = ("zero", "nonneg", "exp")
SIZES = {"n": 6}

ALPHA_RANGE = (0.5, 2.0)
BUDGET_RANGE = (0.5, 2.0)
MARGIN = 0.05


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    alpha = cp.Parameter(n, name="alpha")
    budget = cp.Parameter(nonneg=True, name="P")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Maximize(cp.sum(cp.log(alpha + x))), [x >= 0, cp.sum(x) == budget])
    return problem, [alpha, budget], [x]


def water_level(alpha: np.ndarray, budget: float) -> float:
    """L(α, P) of the closed form (sort-based)."""
    z = np.sort(np.asarray(alpha, dtype=np.float64))
    ks = np.arange(1, z.size + 1)
    k = int(ks[z * ks < budget + np.cumsum(z)][-1])
    return float((budget + np.sum(z[:k])) / k)


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]
    if n < 3:
        raise ValueError(f"{NAME}: the sampler needs n >= 3, got n={n}")

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return rng.uniform(*ALPHA_RANGE, n), np.array(rng.uniform(*BUDGET_RANGE))

    def accept(candidate: tuple[np.ndarray, np.ndarray]) -> bool:
        alpha, budget = candidate
        level = water_level(alpha, float(budget))
        support = int(np.sum(alpha < level))
        return bool(2 <= support <= n - 1 and np.abs(alpha - level).min() >= MARGIN)

    alpha, budget = rejection_sample(draw, accept, rng, NAME)
    return [alpha, budget]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, float]:
    if len(params) != 2:
        raise TypeError(f"{NAME} takes 2 parameters (alpha, P), got {len(params)}")
    alpha = np.asarray(params[0], dtype=np.float64)
    if alpha.ndim != 1:
        raise ValueError(f"{NAME}: alpha must be a vector, got shape {alpha.shape}")
    alpha = as_array(alpha, alpha.shape, "alpha")
    budget = float(as_array(params[1], (), "P"))
    if budget <= 0 or np.any(alpha <= 0):
        raise ValueError(f"{NAME}: need α > 0 and P > 0")
    return alpha, budget


def solution(*params: np.ndarray) -> list[np.ndarray]:
    alpha, budget = _check(params)
    return [np.maximum(water_level(alpha, budget) - alpha, 0.0)]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    alpha, budget = _check(params)
    s = (alpha < water_level(alpha, budget)).astype(np.float64)
    k = s.sum()
    return [[np.outer(s, s) / k - np.diag(s), s / k]]
