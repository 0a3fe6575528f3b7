r"""Euclidean projection onto an ℓ₁ ball of parametrised radius.

Problem (parameters y ∈ ℝⁿ, r > 0; variable x ∈ ℝⁿ)::

    x*(y, r) = argmin_x  ‖x − y‖²   s.t.  ‖x‖₁ <= r

Closed form (Duchi, Shalev-Shwartz, Singer & Chandra 2008, Fig. 1 / Alg. for the ℓ₁ ball):
if ‖y‖₁ <= r then x* = y; otherwise, with z = |y| sorted decreasingly z_(1) >= … >= z_(n),

    k = max{ k : z_(k) > (Σ_{j<=k} z_(j) − r) / k },      θ = (Σ_{j<=k} z_(j) − r) / k > 0,
    x*_i = sign(y_i) · max(|y_i| − θ, 0)                  (soft thresholding at θ),

so x* is the sparsemax-type projection of |y| onto the scaled simplex {‖·‖₁ = r} with the signs
of y restored.  S = {i : |y_i| > θ} = supp(x*), |S| = k, s = sign(y) ⊙ 1_S ∈ {−1, 0, 1}ⁿ.

Jacobian (derivation: on S, x*_i = s_i(|y_i| − θ) and Σ_{j∈S} s_j y_j − kθ = r, so
∂θ/∂y_j = s_j / k and ∂θ/∂r = −1/k; off S, x*_i = 0 locally)::

    outside (θ > 0):   ∂x*/∂y = diag(|s|) − s sᵀ / k,      ∂x*/∂r = s / k
    inside:            ∂x*/∂y = I,                          ∂x*/∂r = 0

Non-differentiable where some |y_i| = θ (or ‖y‖₁ = r); the formula then returns one element of
the Clarke generalised Jacobian.

Sampler: r ~ U[0.5, 1.5], y ~ N(0, I) rescaled so that ‖y‖₁ / r ~ U[1.5, 3] (outside the ball);
rejected unless min_i ||y_i| − θ| >= MARGIN·r/n (strict complementarity; the multiplier of
|x_i| <= t_i off S is 2(θ − |y_i|)), 2 <= |S| <= n − 1, and the |y_i| are pairwise separated by
MARGIN·r/n (no ties).

Cone form: CVXPY writes ‖x‖₁ <= r as −t <= x <= t, 1ᵀt <= r (2n + 1 nonneg rows); the
objective (``use_quad_obj=False``) is one second-order cone.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import rejection_sample, resolve_sizes, vector_and_radius

NAME = "l1_ball_projection"
REFERENCE = (
    "Duchi, Shalev-Shwartz, Singer & Chandra, 'Efficient Projections onto the l1-Ball for "
    "Learning in High Dimensions', ICML 2008 (sort-based threshold θ, soft thresholding)"
)
CONES = ("nonneg", "soc")
SIZES = {"n": 8}

MARGIN = 0.1  # min ||y_i| − θ| and min pairwise gap of |y| are >= MARGIN·r/n
NORM_RATIO = (1.5, 3.0)  # ‖y‖₁ / r


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    y = cp.Parameter(n, name="y")
    r = cp.Parameter(name="r")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.norm1(x) <= r])
    return problem, [y, r], [x]


def threshold(y: np.ndarray, r: float) -> float:
    """θ(y, r) of the closed form (0 when ‖y‖₁ <= r)."""
    y = np.asarray(y, dtype=np.float64)
    if np.abs(y).sum() <= r:
        return 0.0
    z = np.sort(np.abs(y))[::-1]
    cumsum = np.cumsum(z)
    ks = np.arange(1, z.size + 1)
    k = int(ks[z * ks > cumsum - r][-1])
    return float((np.sum(z[:k]) - r) / k)


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]
    if n < 3:
        raise ValueError(f"{NAME}: the sampler needs n >= 3, got n={n}")

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        r = rng.uniform(0.5, 1.5)
        y = rng.standard_normal(n)
        y *= rng.uniform(*NORM_RATIO) * r / np.abs(y).sum()
        return y, np.array(r)

    def accept(candidate: tuple[np.ndarray, np.ndarray]) -> bool:
        y, r = candidate
        theta = threshold(y, float(r))
        gap = MARGIN * float(r) / n
        support = int(np.sum(np.abs(y) > theta))
        return bool(
            2 <= support <= n - 1
            and np.abs(np.abs(y) - theta).min() >= gap
            and np.diff(np.sort(np.abs(y))).min() >= gap
        )

    y, r = rejection_sample(draw, accept, rng, NAME)
    return [y, r]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, float]:
    return vector_and_radius(params, NAME)


def solution(*params: np.ndarray) -> list[np.ndarray]:
    y, r = _check(params)
    theta = threshold(y, r)
    return [np.sign(y) * np.maximum(np.abs(y) - theta, 0.0)]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    y, r = _check(params)
    n = y.size
    theta = threshold(y, r)
    if theta == 0.0:
        return [[np.eye(n), np.zeros(n)]]
    s = np.sign(y) * (np.abs(y) > theta)
    k = float(np.abs(s).sum())
    return [[np.diag(np.abs(s)) - np.outer(s, s) / k, s / k]]
