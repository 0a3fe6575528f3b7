r"""Euclidean projection onto a box with parametrised bounds (clipping).

Problem (parameters y, l, u ∈ ℝⁿ with l < u; variable x ∈ ℝⁿ)::

    x*(y, l, u) = argmin_x  ‖x − y‖²   s.t.  l <= x <= u

Closed form (the problem separates per coordinate)::

    x*_i = clip(y_i, l_i, u_i) = min(max(y_i, l_i), u_i)

Jacobian, with the index sets  B = {i : y_i < l_i} (at the lower bound),
I = {i : l_i < y_i < u_i} (interior),  U = {i : y_i > u_i} (at the upper bound)::

    ∂x*/∂y = diag(1_I),      ∂x*/∂l = diag(1_B),      ∂x*/∂u = diag(1_U).

The KKT multipliers of x >= l and x <= u are 2(l_i − y_i) on B and 2(y_i − u_i) on U, and the
inactive slacks are |y_i − l_i|, |u_i − y_i|; at a tie y_i = l_i or y_i = u_i the map is not
differentiable (the formula then returns one element of the Clarke generalised Jacobian).

Sampler: l_i ~ −U[0.5, 1.5], u_i ~ U[0.5, 1.5]; each coordinate is independently below, inside
or above its interval (every case present when n >= 3), at distance U[MARGIN, 1] outside the
box or at the relative position U[0.1, 0.9] of [l_i, u_i] inside (so every multiplier and
every inactive slack is >= MARGIN = 0.1).

Cone form: 2n nonneg rows (x >= l, x <= u) and (``use_quad_obj=False``) one second-order cone.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes

NAME = "box_projection"
REFERENCE = (
    "Separable projection onto a box = coordinatewise clipping (Parikh & Boyd, 'Proximal "
    "Algorithms', Found. Trends Optim. 2014, Sec. 6.2.1)"
)
CONES = ("nonneg", "soc")
SIZES = {"n": 6}

MARGIN = 0.1  # distance of y_i from both bounds


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    y = cp.Parameter(n, name="y")
    lower = cp.Parameter(n, name="l")
    upper = cp.Parameter(n, name="u")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= lower, x <= upper])
    return problem, [y, lower, upper], [x]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        lower = -rng.uniform(0.5, 1.5, n)
        upper = rng.uniform(0.5, 1.5, n)
        case = rng.integers(0, 3, n)  # 0 below, 1 inside, 2 above
        offset = rng.uniform(MARGIN, 1.0, n)
        position = rng.uniform(0.1, 0.9, n)
        y = np.where(
            case == 0,
            lower - offset,
            np.where(case == 2, upper + offset, lower + position * (upper - lower)),
        )
        return y, lower, upper, case

    def accept(candidate: tuple[np.ndarray, ...]) -> bool:
        return len(set(candidate[3].tolist())) == min(3, n)

    y, lower, upper, _ = rejection_sample(draw, accept, rng, NAME)
    return [y, lower, upper]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(params) != 3:
        raise TypeError(f"{NAME} takes 3 parameters (y, l, u), got {len(params)}")
    y = np.asarray(params[0], dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"{NAME}: y must be a vector, got shape {y.shape}")
    shape = y.shape
    y = as_array(y, shape, "y")
    lower, upper = as_array(params[1], shape, "l"), as_array(params[2], shape, "u")
    if np.any(lower > upper):
        raise ValueError(f"{NAME}: empty box (some l_i > u_i)")
    return y, lower, upper


def solution(*params: np.ndarray) -> list[np.ndarray]:
    y, lower, upper = _check(params)
    return [np.minimum(np.maximum(y, lower), upper)]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    y, lower, upper = _check(params)
    below = (y < lower).astype(np.float64)
    above = (y > upper).astype(np.float64)
    inside = 1.0 - below - above
    return [[np.diag(inside), np.diag(below), np.diag(above)]]
