r"""Euclidean projection onto a 3-norm ball of parametrised radius (power cones).

Problem (parameters y ∈ ℝⁿ, r > 0; variable x ∈ ℝⁿ)::

    x*(y, r) = argmin_x  ‖x − y‖²   s.t.  ‖x‖₃ <= r

Closed form (one-dimensional root). Inside (‖y‖₃ <= r) x* = y. Outside, the KKT conditions of
the equivalent constraint Σ|x_i|³ <= r³ with multiplier ν > 0 give x_i = sign(y_i)·u_i with

    u_i + 3ν·u_i² = |y_i|,   i.e.   u_i(ν) = 2|y_i| / (1 + √(1 + 12ν|y_i|)),
    Σ u_i(ν)³ = r³,

and Σ u_i(ν)³ decreases strictly from ‖y‖₃³ > r³ (ν = 0) to 0, so ν is its unique root
(Brent's method to full precision).

Jacobian (implicit differentiation of those n + 1 equations): with d_i = 1 + 6ν·u_i,
s_i = 3u_i²/d_i, Q = Σ 3u_i²·s_i and S = diag(sign y)::

    ∂x*/∂y = S (diag(1/d) − s sᵀ/Q) S,     ∂x*/∂r = 3r²·S s / Q.

Inside, ∂x*/∂y = I and ∂x*/∂r = 0; ‖y‖₃ = r is the non-differentiable boundary.

Sampler: r ~ U[0.5, 1.5], y = ρ·ŷ with ŷ a random direction of unit 3-norm and, with
probability INSIDE_PROB = 1/3, ρ/r ~ U[0.2, 0.7] (inside), else ρ/r ~ U[1.5, 3] (outside).

Cone form: ``cp.pnorm(x, 3, approx=False)`` is canonicalized by CVXPY with one 3-d power cone
per entry (|x_i| <= t^{2/3} s_i^{1/3}, Σ s_i = t); (``use_quad_obj=False``) the objective adds a
second-order cone.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
from scipy.optimize import brentq

from ._common import resolve_sizes, vector_and_radius

NAME = "pnorm_ball_projection"
REFERENCE = (
    "Projection onto the 3-norm ball: KKT conditions u_i + 3ν u_i² = |y_i|, Σ u_i³ = r³, "
    "one root in ν; Jacobian by the implicit function theorem"
)
CONES = ("zero", "nonneg", "soc", "power")
SIZES = {"n": 5}
P = 3

INSIDE_PROB = 1.0 / 3.0
INSIDE_RATIO = (0.2, 0.7)  # ‖y‖₃ / r when inside
OUTSIDE_RATIO = (1.5, 3.0)  # ‖y‖₃ / r when outside


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    y = cp.Parameter(n, name="y")
    r = cp.Parameter(name="r")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)),
                         [cp.pnorm(x, P, approx=False) <= r])
    return problem, [y, r], [x]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]
    r = rng.uniform(0.5, 1.5)
    direction = rng.standard_normal(n)
    direction /= np.linalg.norm(direction, P)
    ratio = rng.uniform(*(INSIDE_RATIO if rng.uniform() < INSIDE_PROB else OUTSIDE_RATIO))
    return [ratio * r * direction, np.array(r)]


def _u(a: np.ndarray, nu: float) -> np.ndarray:
    """The root u >= 0 of u + 3ν·u² = a (a >= 0), without cancellation."""
    return 2.0 * a / (1.0 + np.sqrt(1.0 + 12.0 * nu * a))


def _root(y: np.ndarray, r: float) -> tuple[np.ndarray, float] | None:
    """(u, ν) outside the ball, None inside."""
    a = np.abs(y)
    if np.sum(a**P) <= r**P:
        return None
    f = lambda nu: np.sum(_u(a, nu) ** P) - r**P  # noqa: E731
    hi = 1.0
    while f(hi) > 0:
        hi *= 2.0
    nu = brentq(f, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    return _u(a, nu), nu


def solution(*params: np.ndarray) -> list[np.ndarray]:
    y, r = vector_and_radius(params, NAME)
    root = _root(y, r)
    if root is None:
        return [y.copy()]
    return [np.sign(y) * root[0]]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    y, r = vector_and_radius(params, NAME)
    root = _root(y, r)
    n = y.size
    if root is None:
        return [[np.eye(n), np.zeros(n)]]
    u, nu = root
    d = 1.0 + 6.0 * nu * u
    s = 3.0 * u**2 / d
    Q = np.sum(3.0 * u**2 * s)
    sg = np.sign(y)
    Ju = np.diag(1.0 / d) - np.outer(s, s) / Q
    return [[sg[:, None] * Ju * sg[None, :], 3.0 * r**2 * sg * s / Q]]
