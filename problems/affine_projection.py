r"""Euclidean projection onto an affine subspace with parametrised data.

Problem (parameters A ∈ ℝᵖˣⁿ with full row rank p < n, b ∈ ℝᵖ, y ∈ ℝⁿ; variable x ∈ ℝⁿ)::

    x*(A, b, y) = argmin_x  ‖x − y‖²   s.t.  Ax = b

Closed form (Lagrange conditions 2(x − y) + Aᵀν = 0, Ax = b; ν = 2μ)::

    M = AAᵀ,   μ = M⁻¹(Ay − b),   x* = y − Aᵀμ

Jacobian, with P = I − AᵀM⁻¹A (orthogonal projector onto null(A)) and B = AᵀM⁻¹ (a right
inverse of A)::

    ∂x*/∂y    = P
    ∂x*/∂b    = B
    ∂x*/∂A_ij = −μ_i P[:, j] − B[:, i] x*_j

(derivation: dμ = M⁻¹(dA y + A dy − db − (dA Aᵀ + A dAᵀ)μ); with dA = e_i e_jᵀ and Aᵀμ = y − x*
this is M⁻¹(e_i x*_j − A[:, j] μ_i), and dx* = dy − dAᵀμ − Aᵀdμ).  The map is smooth (in fact
rational) wherever A has full row rank.

Sampler: A ~ N(0, 1/n) entrywise, rejected unless cond(A) <= MAX_COND = 10; b, y ~ N(0, I).

Cone form: p zero-cone rows and (``use_quad_obj=False``) one second-order cone.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes

NAME = "affine_projection"
REFERENCE = (
    "Projection onto {x : Ax = b}: x = y − Aᵀ(AAᵀ)⁻¹(Ay − b) (Boyd & Vandenberghe, 'Convex "
    "Optimization', 2004, Sec. 8.1 / Ex. 10.1 equality-constrained least norm)"
)
CONES = ("zero", "soc")
SIZES = {"n": 6, "p": 2}

MAX_COND = 10.0


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    s = resolve_sizes(SIZES, sizes)
    n, p = s["n"], s["p"]
    A = cp.Parameter((p, n), name="A")
    b = cp.Parameter(p, name="b")
    y = cp.Parameter(n, name="y")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [A @ x == b])
    return problem, [A, b, y], [x]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    s = resolve_sizes(SIZES, sizes)
    n, p = s["n"], s["p"]
    if p >= n:
        raise ValueError(f"{NAME}: need p < n for a non-trivial projection, got p={p}, n={n}")

    def draw(rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((p, n)) / np.sqrt(n)

    def accept(A: np.ndarray) -> bool:
        sv = np.linalg.svd(A, compute_uv=False)
        return bool(sv[-1] * MAX_COND >= sv[0])

    A = rejection_sample(draw, accept, rng, NAME)
    return [A, rng.standard_normal(p), rng.standard_normal(n)]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(params) != 3:
        raise TypeError(f"{NAME} takes 3 parameters (A, b, y), got {len(params)}")
    A = np.asarray(params[0], dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"{NAME}: A must be a matrix, got shape {A.shape}")
    p, n = A.shape
    return as_array(A, (p, n), "A"), as_array(params[1], (p,), "b"), as_array(params[2], (n,), "y")


def _parts(params: tuple[np.ndarray, ...]):
    A, b, y = _check(params)
    M = A @ A.T
    mu = np.linalg.solve(M, A @ y - b)
    x = y - A.T @ mu
    x = x - A.T @ np.linalg.solve(M, A @ x - b)  # one refinement step: Ax = b to rounding
    return A, y, mu, x, M


def solution(*params: np.ndarray) -> list[np.ndarray]:
    return [_parts(params)[3]]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    A, _, mu, x, M = _parts(params)
    p, n = A.shape
    B = np.linalg.solve(M, A).T  # AᵀM⁻¹ (M symmetric)
    P = np.eye(n) - B @ A
    dA = -mu[None, :, None] * P[:, None, :] - B[:, :, None] * x[None, None, :]
    return [[dA, B, P]]
