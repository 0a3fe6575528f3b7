r"""Euclidean projection onto a Euclidean ball of parametrised radius.

Problem (parameters y ∈ ℝⁿ, r > 0; variable x ∈ ℝⁿ)::

    x*(y, r) = argmin_x  ‖x − y‖²   s.t.  ‖x‖₂ <= r

Closed form (radial scaling)::

    x* = y · min(1, r / ‖y‖)

Jacobian, with ρ = ‖y‖ and ŷ = y / ρ::

    outside (ρ > r):   ∂x*/∂y = (r/ρ)(I − ŷŷᵀ),   ∂x*/∂r = ŷ
    inside  (ρ < r):   ∂x*/∂y = I,                ∂x*/∂r = 0

(The multiplier of ‖x‖ <= r is 2(ρ − r) outside; ρ = r is the non-differentiable boundary.)

Sampler: r ~ U[0.5, 1.5], y = ρ·ŷ with ŷ a uniform random unit vector and, with probability
INSIDE_PROB = 1/3, ρ/r ~ U[0.2, 0.7] (inside), else ρ/r ~ U[1.5, 3] (outside) — never within
a factor 0.7 … 1.5 of the boundary.

Cone form: the norm constraint is an epigraph t <= r (one nonneg row) plus a second-order cone
of dimension n + 1; (``use_quad_obj=False``) the objective adds one second-order cone.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import resolve_sizes, vector_and_radius

NAME = "l2_ball_projection"
REFERENCE = (
    "Projection onto the Euclidean ball: x = y·min(1, r/‖y‖) (Parikh & Boyd, 'Proximal "
    "Algorithms', Found. Trends Optim. 2014, Sec. 6.5.1)"
)
CONES = ("nonneg", "soc")
SIZES = {"n": 5}

INSIDE_PROB = 1.0 / 3.0
INSIDE_RATIO = (0.2, 0.7)  # ‖y‖ / r when inside
OUTSIDE_RATIO = (1.5, 3.0)  # ‖y‖ / r when outside


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    y = cp.Parameter(n, name="y")
    r = cp.Parameter(name="r")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.norm(x, 2) <= r])
    return problem, [y, r], [x]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]
    r = rng.uniform(0.5, 1.5)
    direction = rng.standard_normal(n)
    direction /= np.linalg.norm(direction)
    ratio = rng.uniform(*(INSIDE_RATIO if rng.uniform() < INSIDE_PROB else OUTSIDE_RATIO))
    return [ratio * r * direction, np.array(r)]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, float]:
    return vector_and_radius(params, NAME)


def solution(*params: np.ndarray) -> list[np.ndarray]:
    y, r = _check(params)
    rho = np.linalg.norm(y)
    return [y * (r / rho) if rho > r else y.copy()]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    y, r = _check(params)
    n = y.size
    rho = np.linalg.norm(y)
    if rho > r:
        u = y / rho
        return [[(r / rho) * (np.eye(n) - np.outer(u, u)), u]]
    return [[np.eye(n), np.zeros(n)]]
