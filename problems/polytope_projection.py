r"""Euclidean projection onto a polytope (the polytope-learning layer).

Problem (parameters G ∈ ℝᵐˣᵈ, h ∈ ℝᵐ, y ∈ ℝᵈ; variable x ∈ ℝᵈ)::

    x* = argmin_x  ‖x − y‖²   s.t.  Gx <= h

Closed form on the active set 𝒜 (ℐ its complement; G_𝒜 full row rank)::

    M = G_𝒜 G_𝒜ᵀ,   μ = M⁻¹ (G_𝒜 y − h_𝒜),   x* = y − G_𝒜ᵀ μ,
    λ_𝒜 = 2μ > 0 (the multipliers of Gx <= h),   λ_ℐ = 0,   h_ℐ − G_ℐ x* > 0.

The active set is found by exact enumeration of all subsets of size <= d (the first whose
KKT point is optimal; a certified set is unique) — no numerical solver involved — when there
are at most ENUMERATION_LIMIT candidates (default sizes: 42), else proposed by a tight Clarabel
solve (as in ``qp``).  It is then certified (strict complementarity, LICQ), raising
``DegenerateInstanceError`` otherwise.  The last certified set for the same sizes is tried
first.

Jacobian, with P = I − G_𝒜ᵀ M⁻¹ G_𝒜 (projector onto null(G_𝒜)) and B = G_𝒜ᵀ M⁻¹::

    ∂x*/∂y     = P
    ∂x*/∂h_i   = B[:, k(i)]                       (i ∈ 𝒜, k(i) its position),   0 for i ∈ ℐ
    ∂x*/∂G_ij  = −μ_k(i) P[:, j] − B[:, k(i)] x*_j  (i ∈ 𝒜),                    0 for i ∈ ℐ

(the ∂G formula is the QP KKT differential of Amos & Kolter 2017 with Q = 2I, simplified using
y − G_𝒜ᵀμ = x* and BG_𝒜 = I − P).

Sampler: rows of G are random unit directions whose convex hull contains the ball of radius
δ = DEPTH_TIMES_D / d around the origin (so {Gx <= h} is bounded, inside the ball of radius
max(h)/δ; m >= 2d keeps the acceptance rate reasonable);
h ~ U[0.5, 1.5] (so the polytope contains the ball of radius 0.5); y = R·u with u a random unit
vector and R ~ U[1, 3].  Rejected unless 𝒜 ≠ ∅, λ_𝒜 and slack_ℐ >= MARGIN, and
σ_min(G_𝒜) >= MIN_SINGULAR.

Cone form: m nonneg rows and (``use_quad_obj=False``) one second-order cone.
"""

from __future__ import annotations

import functools

import cvxpy as cp
import numpy as np
from scipy.spatial import ConvexHull, QhullError

from ._activeset import (
    DegenerateInstanceError,
    KKTPoint,
    clarabel_active_set,
    enumerate_active_sets,
    full_row_rank,
    iter_active,
    num_subsets,
    resolve_active_set,
)
from ._common import as_array, rejection_sample, resolve_sizes

NAME = "polytope_projection"
REFERENCE = (
    "Euclidean projection onto {Gx <= h} via its KKT conditions on the active set "
    "(Nocedal & Wright, Numerical Optimization, Ch. 16 equality-constrained QP; differentials "
    "as in Amos & Kolter, 'OptNet', ICML 2017, Sec. 3)"
)
CONES = ("nonneg", "soc")
SIZES = {"d": 3, "m": 6}

DEPTH_TIMES_D = 0.5  # conv(rows of G) ⊇ ball(0, DEPTH_TIMES_D / d)
MARGIN = 0.05  # λ_𝒜 >= MARGIN and inactive slack >= MARGIN
MIN_SINGULAR = 0.1  # σ_min(G_𝒜)
# Enumerate active sets when there are at most this many candidates, else ask Clarabel.
ENUMERATION_LIMIT = 2000

_ACTIVE_CACHE: dict[tuple[int, int], np.ndarray] = {}


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    s = resolve_sizes(SIZES, sizes)
    d, m = s["d"], s["m"]
    G = cp.Parameter((m, d), name="G")
    h = cp.Parameter(m, name="h")
    y = cp.Parameter(d, name="y")
    x = cp.Variable(d, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [G @ x <= h])
    return problem, [G, h, y], [x]


def _hull_depth(G: np.ndarray) -> float:
    """Radius of the largest origin-centred ball inside conv(rows of G) (<= 0 if none)."""
    d = G.shape[1]
    if d == 1:
        return float(min(G.max(), -G.min()))
    try:
        hull = ConvexHull(G)
    except QhullError:
        return 0.0
    # facets: normal·p + offset <= 0 inside, unit normals, so the distance is −offset
    return float(-hull.equations[:, -1].max())


def _projection_point(
    G: np.ndarray, h: np.ndarray, y: np.ndarray, active: np.ndarray
) -> KKTPoint | None:
    active = np.asarray(active, dtype=bool)
    GA = G[active]
    if not full_row_rank(GA):
        return None
    mu = np.linalg.solve(GA @ GA.T, GA @ y - h[active]) if GA.shape[0] else np.zeros(0)
    x = y - GA.T @ mu
    lam = np.zeros(G.shape[0])
    lam[active] = 2.0 * mu
    slack = h - G @ x
    slack[active] = 0.0
    return KKTPoint(x=x, nu=np.zeros(0), lam=lam, slack=slack, active=active.copy())


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(params) != 3:
        raise TypeError(f"{NAME} takes 3 parameters (G, h, y), got {len(params)}")
    G = np.asarray(params[0], dtype=np.float64)
    if G.ndim != 2:
        raise ValueError(f"{NAME}: G must be a matrix, got shape {G.shape}")
    m, d = G.shape
    return as_array(G, (m, d), "G"), as_array(params[1], (m,), "h"), as_array(params[2], (d,), "y")


@functools.lru_cache(maxsize=16)
def _oracle_problem(d: int, m: int):
    return build(d=d, m=m)


def _oracle(G: np.ndarray, h: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Active set: exhaustive enumeration for small sizes, else a tight Clarabel solve."""
    m, d = G.shape
    if num_subsets(m, d) <= ENUMERATION_LIMIT:
        return enumerate_active_sets(m, d, lambda a: _projection_point(G, h, y, a))
    problem, params, (x,) = _oracle_problem(d, m)
    return clarabel_active_set(
        problem, params, [G, h, y], x, problem.constraints[0], lambda x: h - G @ x, NAME
    )


def _solve(params: tuple[np.ndarray, ...]) -> tuple[KKTPoint, np.ndarray, np.ndarray]:
    G, h, y = _check(params)
    m, d = G.shape
    point = resolve_active_set(
        attempt=lambda active: _projection_point(G, h, y, active),
        oracle=lambda: _oracle(G, h, y),
        cache=_ACTIVE_CACHE,
        key=(m, d),
        what=NAME,
    )
    return point, G, y


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    s = resolve_sizes(SIZES, sizes)
    d, m = s["d"], s["m"]
    if m <= d:
        raise ValueError(f"{NAME}: a bounded polytope needs m > d constraints, got m={m}, d={d}")

    def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
        v = rng.standard_normal((*shape, d))
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def draw(rng: np.random.Generator) -> list[np.ndarray]:
        G = unit(rng, m)
        h = rng.uniform(0.5, 1.5, m)
        y = rng.uniform(1.0, 3.0) * unit(rng)
        return [G, h, y]

    def accept(params: list[np.ndarray]) -> bool:
        G, h, y = params
        if _hull_depth(G) < DEPTH_TIMES_D / d:
            return False
        try:
            active = _oracle(G, h, y)
        except DegenerateInstanceError:
            return False
        point = _projection_point(G, h, y, active)
        if point is None or not active.any():
            return False
        return bool(
            point.margin() >= MARGIN
            and np.linalg.svd(G[active], compute_uv=False)[-1] >= MIN_SINGULAR
        )

    return rejection_sample(draw, accept, rng, NAME)


def solution(*params: np.ndarray) -> list[np.ndarray]:
    point, _, _ = _solve(params)
    return [point.x]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    point, G, _ = _solve(params)
    x, lam, active = point.x, point.lam, point.active
    m, d = G.shape
    GA = G[active]
    if GA.shape[0]:
        B = np.linalg.solve(GA @ GA.T, GA).T  # G_𝒜ᵀ M⁻¹  (M symmetric)
        P = np.eye(d) - B @ GA
    else:
        B = np.zeros((d, 0))
        P = np.eye(d)
    dG = np.zeros((d, m, d))
    dh = np.zeros((d, m))
    for k, i in iter_active(active):
        mu = 0.5 * lam[i]
        dG[:, i, :] = -mu * P - np.outer(B[:, k], x)
        dh[:, i] = B[:, k]
    return [[dG, dh, P]]
