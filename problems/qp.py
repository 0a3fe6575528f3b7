r"""OptNet quadratic program: dense strictly convex QP with equality and inequality constraints.

Problem (parameters L ∈ ℝⁿˣⁿ, q ∈ ℝⁿ, A ∈ ℝᵖˣⁿ, b ∈ ℝᵖ, G ∈ ℝᵐˣⁿ, h ∈ ℝᵐ; variable x ∈ ℝⁿ)::

    x* = argmin_x  ½ xᵀQx + qᵀx   s.t.  Ax = b,  Gx <= h,        Q = LLᵀ + εI,  ε = EPS,

written DPP-compliantly as ½‖Lᵀx‖² + (ε/2)‖x‖² + qᵀx.

Closed form on the active set 𝒜 = {i : λ_i > 0} (ℐ its complement), with multipliers ν, λ::

    K [x*; ν; λ_𝒜] = [−q; b; h_𝒜],      K = [[Q, Aᵀ, G_𝒜ᵀ], [A, 0, 0], [G_𝒜, 0, 0]],
    λ_ℐ = 0,   certified by  λ_𝒜 > 0  and  h_ℐ − G_ℐ x* > 0  (strict complementarity).

The active set is proposed by an oracle — a tight-tolerance Clarabel solve of this very problem
through CVXPY (classifying i as active when λ_i > h_i − G_i x) — and the point is then recomputed
exactly from the linear system and certified; a ``DegenerateInstanceError`` is raised when LICQ
or strict complementarity fails.  The last certified active set for the same sizes is tried
first (certification makes the oracle unnecessary then).

Jacobian (Amos & Kolter 2017, Sec. 3: differentials of the KKT conditions)::

    K [dx; dν; dλ_𝒜] = −[dQ x + dq + dAᵀν + dG_𝒜ᵀλ_𝒜;  dA x − db;  dG_𝒜 x − dh_𝒜],

so with [M₁ M₂ M₃] the first n rows of K⁻¹ (blocks of width n, p, |𝒜|) and w = Lᵀx*::

    ∂x/∂q      = −M₁
    ∂x/∂b      =  M₂
    ∂x/∂h_i    =  M₃[:, k(i)]  (i ∈ 𝒜, k(i) its position),   0 for i ∈ ℐ
    ∂x/∂A_ij   = −M₁[:, j] ν_i − M₂[:, i] x_j
    ∂x/∂G_ij   = −M₁[:, j] λ_i − M₃[:, k(i)] x_j  (i ∈ 𝒜),   0 for i ∈ ℐ
    ∂x/∂L_ij   = −M₁[:, i] w_j − (M₁L)[:, j] x_i        (from dQ = dL Lᵀ + L dLᵀ)

Sampler: a planted KKT point — L, A, G, x*, ν Gaussian (L scaled by 1/√n), an active set of
random size 1..max(1, min(m−1, n−p−1)) (non-empty, never all m rows, and x* not pinned to a
vertex when n−p >= 2), λ_𝒜 ~ U[0.5, 2], slacks ~ U[0.5, 2], b = Ax*, h = Gx* + slack,
q = −(Qx* + Aᵀν + Gᵀλ) — rejecting draws with [A; G_𝒜] near rank deficiency (σ_min < 0.1) or
cond(K) > MAX_COND = 1e4.

Cone form: p zero-cone rows, m nonneg rows and (``use_quad_obj=False``) two second-order cones
from the two sum-of-squares terms.
"""

from __future__ import annotations

import functools

import cvxpy as cp
import numpy as np

from ._activeset import (
    KKTPoint,
    clarabel_active_set,
    iter_active,
    kkt_point,
    resolve_active_set,
)
from ._common import as_array, rejection_sample, resolve_sizes

NAME = "qp"
REFERENCE = (
    "Amos & Kolter, 'OptNet: Differentiable Optimization as a Layer in Neural Networks', "
    "ICML 2017 (Sec. 3, differentials of the KKT conditions on the active set)"
)
CONES = ("zero", "nonneg", "soc")
SIZES = {"n": 6, "p": 2, "m": 8}

EPS = 0.1  # Q = LLᵀ + EPS·I
MARGIN_LO, MARGIN_HI = 0.5, 2.0  # planted λ_𝒜 and inactive slacks ~ U[MARGIN_LO, MARGIN_HI]
MIN_SINGULAR = 0.1  # σ_min([A; G_𝒜]) lower bound in the sampler
MAX_COND = 1e4  # cond(K) upper bound in the sampler

_ACTIVE_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    s = resolve_sizes(SIZES, sizes)
    n, p, m = s["n"], s["p"], s["m"]
    L = cp.Parameter((n, n), name="L")
    q = cp.Parameter(n, name="q")
    A = cp.Parameter((p, n), name="A")
    b = cp.Parameter(p, name="b")
    G = cp.Parameter((m, n), name="G")
    h = cp.Parameter(m, name="h")
    x = cp.Variable(n, name="x")
    objective = 0.5 * cp.sum_squares(L.T @ x) + (EPS / 2) * cp.sum_squares(x) + q @ x
    problem = cp.Problem(cp.Minimize(objective), [A @ x == b, G @ x <= h])
    return problem, [L, q, A, b, G, h], [x]


def _Q(L: np.ndarray) -> np.ndarray:
    return L @ L.T + EPS * np.eye(L.shape[0])


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    s = resolve_sizes(SIZES, sizes)
    n, p, m = s["n"], s["p"], s["m"]
    if p >= n:
        raise ValueError(f"{NAME}: need p < n equality constraints, got p={p}, n={n}")
    max_active = max(1, min(m - 1, n - p - 1))  # <= n − p since p < n

    def draw(rng: np.random.Generator):
        L = rng.standard_normal((n, n)) / np.sqrt(n)
        A = rng.standard_normal((p, n))
        G = rng.standard_normal((m, n))
        x = rng.standard_normal(n)
        nu = rng.standard_normal(p)
        k = int(rng.integers(1, max_active + 1))
        active = np.zeros(m, dtype=bool)
        active[rng.choice(m, size=k, replace=False)] = True
        lam = np.where(active, rng.uniform(MARGIN_LO, MARGIN_HI, m), 0.0)
        slack = np.where(active, 0.0, rng.uniform(MARGIN_LO, MARGIN_HI, m))
        b = A @ x
        h = G @ x + slack
        q = -(_Q(L) @ x + A.T @ nu + G.T @ lam)
        return [L, q, A, b, G, h], active

    def accept(candidate) -> bool:
        (L, q, A, b, G, h), active = candidate
        C = np.vstack([A, G[active]])
        if np.linalg.svd(C, compute_uv=False)[-1] < MIN_SINGULAR:
            return False
        point = kkt_point(_Q(L), q, A, b, G, h, active, with_inverse=True)
        if point is None or not point.certified():
            return False
        K_cond = np.linalg.cond(np.block([[_Q(L), C.T], [C, np.zeros((C.shape[0], C.shape[0]))]]))
        return bool(K_cond <= MAX_COND and point.margin() >= 0.5 * MARGIN_LO)

    params, _ = rejection_sample(draw, accept, rng, NAME)
    return params


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    if len(params) != 6:
        raise TypeError(f"{NAME} takes 6 parameters (L, q, A, b, G, h), got {len(params)}")
    L = np.asarray(params[0], dtype=np.float64)
    A = np.asarray(params[2], dtype=np.float64)
    G = np.asarray(params[4], dtype=np.float64)
    if L.ndim != 2 or A.ndim != 2 or G.ndim != 2:
        raise ValueError(f"{NAME}: L, A, G must be matrices")
    n, p, m = L.shape[0], A.shape[0], G.shape[0]
    shapes = {"L": (n, n), "q": (n,), "A": (p, n), "b": (p,), "G": (m, n), "h": (m,)}
    return tuple(
        as_array(v, shape, k) for v, (k, shape) in zip(params, shapes.items(), strict=True)
    )


@functools.lru_cache(maxsize=16)
def _oracle_problem(n: int, p: int, m: int):
    return build(n=n, p=p, m=m)


def _clarabel_active_set(L, q, A, b, G, h) -> np.ndarray:
    problem, params, (x,) = _oracle_problem(L.shape[0], A.shape[0], G.shape[0])
    return clarabel_active_set(
        problem, params, [L, q, A, b, G, h], x, problem.constraints[1], lambda x: h - G @ x, NAME
    )


def _solve(params: tuple[np.ndarray, ...], with_inverse: bool) -> tuple[KKTPoint, np.ndarray]:
    L, q, A, b, G, h = _check(params)
    Q = _Q(L)
    point = resolve_active_set(
        attempt=lambda active: kkt_point(Q, q, A, b, G, h, active, with_inverse=with_inverse),
        oracle=lambda: _clarabel_active_set(L, q, A, b, G, h),
        cache=_ACTIVE_CACHE,
        key=(L.shape[0], A.shape[0], G.shape[0]),
        what=NAME,
    )
    return point, L


def solution(*params: np.ndarray) -> list[np.ndarray]:
    point, _ = _solve(params, with_inverse=False)
    return [point.x]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    point, L = _solve(params, with_inverse=True)
    x, nu, lam = point.x, point.nu, point.lam
    n, p, m = x.size, nu.size, lam.size
    M = point.kinv_x
    assert M is not None  # asked for with_inverse
    M1, M2, M3 = M[:, :n], M[:, n : n + p], M[:, n + p :]
    w = L.T @ x
    M1L = M1 @ L

    dL = -(M1[:, :, None] * w[None, None, :]) - (x[None, :, None] * M1L[:, None, :])
    dq = -M1
    dA = -(M1[:, None, :] * nu[None, :, None]) - (M2[:, :, None] * x[None, None, :])
    db = M2.copy()
    dG = np.zeros((n, m, n))
    dh = np.zeros((n, m))
    for k, i in iter_active(point.active):
        dG[:, i, :] = -M1 * lam[i] - np.outer(M3[:, k], x)
        dh[:, i] = M3[:, k]
    return [[dL, dq, dA, db, dG, dh]]
