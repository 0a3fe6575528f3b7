"""Exact active-set machinery for the zoo's inequality-constrained QPs.

For a strictly convex QP

    minimize ½ xᵀQx + qᵀx   s.t.  Ax = b,  Gx <= h

the KKT conditions with multipliers ν (equalities) and λ >= 0 (inequalities) are

    Qx + q + Aᵀν + Gᵀλ = 0,   Ax = b,   Gx <= h,   λ >= 0,   λ ⊙ (h − Gx) = 0.

Given the active set 𝒜 = {i : λ_i > 0} they reduce to the linear system

    K [x; ν; λ_𝒜] = [−q; b; h_𝒜],      K = [[Q, Aᵀ, G_𝒜ᵀ], [A, 0, 0], [G_𝒜, 0, 0]],

which is solved exactly (LU, machine precision).  A candidate active set is *certified* when the
resulting point satisfies λ_𝒜 > 0 and h_ℐ − G_ℐ x > 0 (ℐ the complement) by a margin: the KKT
conditions are then sufficient, the solution is unique (Q ≻ 0), strict complementarity holds, and
with LICQ ([A; G_𝒜] full row rank) the solution map is differentiable (Amos & Kolter 2017).

Where the active set comes from does not matter for exactness — an oracle (a high-accuracy
interior-point solve, or exhaustive enumeration for tiny sizes) only proposes it, and the last
certified set for the same shapes is tried first, which makes finite differences cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import TypeVar

import cvxpy as cp
import numpy as np

Key = TypeVar("Key", bound=Hashable)  # a problem's cache key (its sizes)

# A candidate is certified when min(λ_𝒜, slack_ℐ) > CERTIFY_RTOL * (1 + scale of λ and slack).
CERTIFY_RTOL = 1e-9
# Tight Clarabel tolerances for the interior-point active-set oracle.
CLARABEL_OPTS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
# [A; G_𝒜] is treated as rank deficient below this ratio of extreme singular values.
RANK_RTOL = 1e-10


class DegenerateInstanceError(ValueError):
    """The instance violates LICQ or strict complementarity (solution map not differentiable)."""


@dataclass(frozen=True)
class KKTPoint:
    """Primal-dual point obtained from the equality-constrained KKT system on an active set."""

    x: np.ndarray  # (n,)
    nu: np.ndarray  # (p,) equality multipliers
    lam: np.ndarray  # (m,) inequality multipliers, exactly 0 off the active set
    slack: np.ndarray  # (m,) h − Gx, exactly 0 on the active set (by construction, up to rounding)
    active: np.ndarray  # (m,) bool
    kinv_x: np.ndarray | None = None  # first n rows of K⁻¹, shape (n, n + p + |𝒜|)

    def margin(self) -> float:
        """min over λ_𝒜 and slack_ℐ (+inf when both are empty)."""
        vals = np.concatenate([self.lam[self.active], self.slack[~self.active]])
        return float(vals.min()) if vals.size else float("inf")

    def tolerance(self) -> float:
        scale = 1.0 + max(np.abs(self.lam).max(initial=0.0), np.abs(self.slack).max(initial=0.0))
        return CERTIFY_RTOL * scale

    def certified(self) -> bool:
        return self.margin() > self.tolerance()

    def feasible(self) -> bool:
        """Non-strict KKT (λ >= 0, slack >= 0 up to the tolerance): the point is optimal."""
        return self.margin() >= -self.tolerance()


def full_row_rank(C: np.ndarray) -> bool:
    if C.shape[0] == 0:
        return True
    if C.shape[0] > C.shape[1]:
        return False
    s = np.linalg.svd(C, compute_uv=False)
    return bool(s[-1] > RANK_RTOL * max(s[0], 1.0))


def kkt_point(
    Q: np.ndarray,
    q: np.ndarray,
    A: np.ndarray,
    b: np.ndarray,
    G: np.ndarray,
    h: np.ndarray,
    active: np.ndarray,
    *,
    with_inverse: bool = False,
) -> KKTPoint | None:
    """Solve the KKT system on ``active``; None when [A; G_𝒜] is not full row rank."""
    n, p, m = Q.shape[0], A.shape[0], G.shape[0]
    active = np.asarray(active, dtype=bool)
    GA = G[active]
    C = np.vstack([A, GA])
    if not full_row_rank(C):
        return None
    k = C.shape[0]
    K = np.zeros((n + k, n + k))
    K[:n, :n] = Q
    K[:n, n:] = C.T
    K[n:, :n] = C
    rhs = np.concatenate([-q, b, h[active]])
    if with_inverse:
        Kinv = np.linalg.inv(K)
        z = Kinv @ rhs
        # one step of iterative refinement keeps x exact to ~cond(K)·eps even via the inverse
        z = z + Kinv @ (rhs - K @ z)
        kinv_x = Kinv[:n]
    else:
        z = np.linalg.solve(K, rhs)
        kinv_x = None
    x = z[:n]
    nu = z[n : n + p]
    lam = np.zeros(m)
    lam[active] = z[n + p :]
    slack = h - G @ x
    slack[active] = 0.0  # exact on the active set by construction
    return KKTPoint(x=x, nu=nu, lam=lam, slack=slack, active=active.copy(), kinv_x=kinv_x)


def enumerate_active_sets(
    m: int, max_size: int, attempt: Callable[[np.ndarray], KKTPoint | None]
) -> np.ndarray:
    """Exhaustive oracle: the first active set (by size) whose KKT point is optimal."""
    for size in range(min(m, max_size) + 1):
        for idx in combinations(range(m), size):
            active = np.zeros(m, dtype=bool)
            active[list(idx)] = True
            point = attempt(active)
            if point is not None and point.feasible():
                return active
    raise DegenerateInstanceError(
        f"no active set of size <= {max_size} satisfies the KKT conditions (infeasible "
        "problem, or LICQ fails at the solution)"
    )


def num_subsets(m: int, max_size: int) -> int:
    """Number of candidate active sets :func:`enumerate_active_sets` may visit."""
    return sum(comb(m, k) for k in range(min(m, max_size) + 1))


def clarabel_active_set(
    problem: cp.Problem,
    params: list[cp.Parameter],
    values: list[np.ndarray],
    variable: cp.Variable,
    constraint: cp.Constraint,
    slack: Callable[[np.ndarray], np.ndarray],
    what: str,
) -> np.ndarray:
    """Interior-point oracle: solve ``problem`` with Clarabel at tight tolerances and classify
    the inequality ``constraint`` row i as active when its dual exceeds its slack (interior-point
    iterates keep λ_i · slack_i ≈ μ → 0, so exactly one of the two is small)."""
    for par, val in zip(params, values, strict=True):
        par.value = val
    try:
        # warm_start=False: CVXPY's default (True) keeps Clarabel's solver from the previous
        # call and updates its data, with the scaling of the first; after instances at 1e6
        # scales, the solver on an O(1) instance then fails
        problem.solve(solver=cp.CLARABEL, warm_start=False, **CLARABEL_OPTS)
    except cp.SolverError as e:
        raise DegenerateInstanceError(f"{what}: active-set oracle (Clarabel) failed: {e}") from e
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise DegenerateInstanceError(f"{what}: active-set oracle status {problem.status!r}")
    lam = np.asarray(constraint.dual_value, dtype=np.float64).ravel()
    x = np.asarray(variable.value, dtype=np.float64)
    return lam > slack(x)


def resolve_active_set(
    attempt: Callable[[np.ndarray], KKTPoint | None],
    oracle: Callable[[], np.ndarray],
    cache: dict[Key, np.ndarray],
    key: Key,
    what: str,
) -> KKTPoint:
    """Certified KKT point: try the cached active set for ``key``, else ask ``oracle``.

    Raises DegenerateInstanceError when the oracle's active set cannot be certified (LICQ or
    strict complementarity violated, or the oracle was wrong).
    """
    guess = cache.get(key)
    if guess is not None:
        point = attempt(guess)
        if point is not None and point.certified():
            return point
    active = np.asarray(oracle(), dtype=bool)
    point = attempt(active)
    if point is None:
        raise DegenerateInstanceError(
            f"{what}: the active constraints {np.flatnonzero(active).tolist()} are linearly "
            "dependent (LICQ fails); the solution map is not differentiable here"
        )
    if not point.certified():
        lam_a = point.lam[active]
        slack_i = point.slack[~active]
        raise DegenerateInstanceError(
            f"{what}: active set {np.flatnonzero(active).tolist()} is not strictly "
            f"complementary: min λ_active = {lam_a.min(initial=np.inf):.3e}, "
            f"min slack_inactive = {slack_i.min(initial=np.inf):.3e} "
            f"(need > {point.tolerance():.1e}); degenerate instance or wrong oracle answer"
        )
    cache[key] = point.active.copy()
    return point


def iter_active(active: np.ndarray) -> Iterator[tuple[int, int]]:
    """(position in the active block, constraint index) pairs."""
    return enumerate(np.flatnonzero(active).tolist())
