r"""Weighted geometric-mean maximization on a budget (power cones).

Problem (parameters prices p ∈ ℝⁿ, p > 0, budget B > 0; variable x ∈ ℝⁿ; fixed weights
w_i = i, W = Σ w_i)::

    x*(p, B) = argmax_x  Π x_i^{w_i/W}   s.t.  pᵀx <= B

(a Cobb–Douglas utility maximized over a budget set).

Closed form: the objective is increasing in every x_i, so the budget binds, and the
stationarity conditions (w_i/W)/x_i = μ p_i with pᵀx = B give μ = 1/B and

    x*_i = (w_i / W) · B / p_i.

Jacobian::

    ∂x*_i/∂p_j = −δ_ij (w_i/W) B / p_i²,     ∂x*_i/∂B = (w_i/W) / p_i.

Sampler: p_i ~ U[0.5, 2], B ~ U[0.5, 2] (the solution is interior and the map smooth for
every p, B > 0).

Cone form: ``cp.geo_mean(x, w, approx=False)`` is canonicalized by CVXPY into a chain of
n − 1 three-dimensional power cones (the n-dimensional power cone split into 3-d ones), plus
the budget row.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, resolve_sizes

NAME = "geometric_mean_budget"
REFERENCE = (
    "Cobb-Douglas demand: argmax Π x_i^{w_i/W} s.t. pᵀx <= B is x_i = (w_i/W) B/p_i "
    "(Mas-Colell, Whinston & Green, 'Microeconomic Theory', 1995, Ex. 3.D.1)"
)
CONES = ("nonneg", "power")
SIZES = {"n": 4}


def _weights(n: int) -> np.ndarray:
    return np.arange(1.0, n + 1.0)


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    p = cp.Parameter(n, name="p", pos=True)
    B = cp.Parameter(name="B", pos=True)
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Maximize(cp.geo_mean(x, _weights(n), approx=False)), [p @ x <= B])
    return problem, [p, B], [x]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]
    return [rng.uniform(0.5, 2.0, n), np.array(rng.uniform(0.5, 2.0))]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, float]:
    if len(params) != 2:
        raise TypeError(f"{NAME} takes 2 parameters (p, B), got {len(params)}")
    p = np.asarray(params[0], dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"{NAME}: p must be a vector, got shape {p.shape}")
    p = as_array(p, p.shape, "p")
    B = float(as_array(params[1], (), "B"))
    if np.any(p <= 0) or B <= 0:
        raise ValueError(f"{NAME}: prices p and budget B must be positive, got p={p}, B={B}")
    return p, B


def solution(*params: np.ndarray) -> list[np.ndarray]:
    p, B = _check(params)
    w = _weights(p.size)
    return [(w / w.sum()) * B / p]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    p, B = _check(params)
    w = _weights(p.size) / _weights(p.size).sum()
    return [[np.diag(-w * B / p**2), w / p]]
