r"""Box of maximal volume: a geometric program (compiled with ``gp=True``).

Problem (parameters A ∈ ℝⁿ, F ∈ ℝⁿ, both > 0; variables x, y, z ∈ ℝⁿ, all > 0), n independent
boxes with floor sides x_i, y_i and height z_i::

    maximize  Π_i x_i y_i z_i   s.t.  2(x_i y_i + x_i z_i + y_i z_i) <= A_i   (surface),
                                        x_i y_i <= F_i                          (floor area)

a log-log convex program: monomial objective, posynomial and monomial constraints (Boyd, Kim,
Vandenberghe, Hassibi 2007, Sec. 2.2, the box design example).

Closed form, for F_i < A_i/6 (without the floor constraint the optimum is the cube with floor
area A_i/6, so the floor constraint is active): with x_i y_i = F_i, the surface constraint is
active and gives z_i = (A_i − 2F_i) / (2(x_i + y_i)), so the volume F_i z_i is largest where
x_i + y_i is least under x_i y_i = F_i, at x_i = y_i::

    x_i = y_i = √F_i,      z_i = (A_i − 2F_i) / (4√F_i).

Jacobian (diagonal blocks)::

    ∂x_i/∂A_i = 0,   ∂x_i/∂F_i = 1/(2√F_i),
    ∂z_i/∂A_i = 1/(4√F_i),   ∂z_i/∂F_i = −1/(4√F_i) − A_i/(8 F_i^{3/2}).

Both constraints' multipliers are positive for F_i < A_i/6 (strict complementarity), and the
solution is unique (x + y is strictly convex in log coordinates on xy = F).

Sampler: A_i ~ U[6, 60], F_i = (A_i/6)·U[0.2, 0.8].

Cone form (of the convex problem in log coordinates, Dgp2Dcp): each two- or three-term
posynomial is a log-sum-exp (exponential cones and a nonnegative row), the monomial
constraints are nonnegative rows.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, resolve_sizes

NAME = "box_volume"
REFERENCE = (
    "Boyd, Kim, Vandenberghe & Hassibi, 'A tutorial on geometric programming', Optim. Eng. "
    "2007, Sec. 2.2 (box design); optimum x = y = sqrt(F), z = (A - 2F)/(4 sqrt(F))"
)
CONES = ("nonneg", "exp")
SIZES = {"n": 3}
GP = True  # a geometric program: dl.compile(..., gp=True), problem.solve(gp=True)

AREA_RANGE = (6.0, 60.0)
FLOOR_FRACTION = (0.2, 0.8)  # F / (A/6)


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    A = cp.Parameter(n, pos=True, name="A")
    F = cp.Parameter(n, pos=True, name="F")
    x = cp.Variable(n, pos=True, name="x")
    y = cp.Variable(n, pos=True, name="y")
    z = cp.Variable(n, pos=True, name="z")
    xy, xz, yz = cp.multiply(x, y), cp.multiply(x, z), cp.multiply(y, z)
    problem = cp.Problem(cp.Maximize(cp.prod(cp.multiply(xy, z))),
                         [2 * (xy + xz + yz) <= A, xy <= F])
    return problem, [A, F], [x, y, z]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]
    A = rng.uniform(*AREA_RANGE, n)
    F = A / 6 * rng.uniform(*FLOOR_FRACTION, n)
    return [A, F]


def _check(params: tuple) -> tuple[np.ndarray, np.ndarray]:
    if len(params) != 2:
        raise TypeError(f"{NAME} takes 2 parameters (A, F), got {len(params)}")
    A = np.asarray(params[0], dtype=np.float64)
    if A.ndim != 1:
        raise ValueError(f"{NAME}: A must be a vector, got shape {A.shape}")
    A, F = as_array(A, A.shape, "A"), as_array(params[1], A.shape, "F")
    if np.any(A <= 0) or np.any(F <= 0):
        raise ValueError(f"{NAME}: A and F must be positive")
    if np.any(F >= A / 6):
        raise ValueError(f"{NAME}: the closed form needs F < A/6 (an active floor constraint)")
    return A, F


def solution(*params: np.ndarray) -> list[np.ndarray]:
    A, F = _check(params)
    r = np.sqrt(F)
    return [r, r.copy(), (A - 2 * F) / (4 * r)]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    A, F = _check(params)
    r = np.sqrt(F)
    zero = np.zeros((A.size, A.size))
    dx_dF = np.diag(1 / (2 * r))
    dz_dA = np.diag(1 / (4 * r))
    dz_dF = np.diag(-1 / (4 * r) - A / (8 * F * r))
    return [[zero, dx_dF], [zero.copy(), dx_dF.copy()], [dz_dA, dz_dF]]
