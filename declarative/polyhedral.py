"""polyhedral: a polyhedral program's solution from its active set, and the derivative there.

For a program whose cones are all zero and nonnegative ones (LPs and QPs), the optimality
conditions at a strictly complementary solution are linear once it is known which
inequalities hold with equality (the active set 𝒜: every zero-cone row, and the nonnegative
rows whose multiplier is positive):

    P x + Aᵀ_𝒜 y_𝒜 = −c,   A_𝒜 x = b_𝒜,   y_i = 0 and s_i = b_i − A_i x > 0 off 𝒜.

This is the residual map's Newton system (derivative.py, eq. (1)) where DΠ is 0 or 1 on
every row: its rows for the inactive constraints only give their v from x, and what is left
is the square matrix

    M = [[P, A_𝒜ᵀ], [−A_𝒜, 0]]

(Nocedal & Wright, *Numerical Optimization*, §16.1; OptNet's KKT system, Amos & Kolter 2017).
One dense factorization of M (its LU, or where P is diagonal and positive its inverse from
the range-space method) gives the solution for the active set guessed from an approximate
point (a solver's), the Newton correction that estimates its error, and the derivative: the
residual map's S restricted to 𝒜, so the same solves the general path makes, without its
machinery for every other kind of cone, which at one small instance is most of the time.

Nothing here decides whether the point is certified: `ActiveSet.at` returns None where the
guessed active set does not give a solution with the right signs, or M is singular, and
the caller (layer.py) judges the point as it judges any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la

from declarative.compile import ConeTemplate
from declarative.derivative import REFINE_SOLVE_TOL, BatchOps, use_dense

# The largest n + m whose dense M the active-set path factors and inverts (`ActiveSet.bound`),
# where the general path factors S densely too (`derivative.use_dense`): elsewhere its sparse
# factorizations are the right tool (a dense LU of M at 185 rows, sparsemax with n = 100,
# whose S SuperLU factors: 0.5 ms, as much as all the rest of the path, and its inverse as
# much again).
KKT_MAX_SIZE = 256
# A row whose part orthogonal to the rows kept before it is at most this fraction of its
# norm is dependent on them (`independent_rows`): √u, where M's condition estimate would
# pass the fast path's own bound (ACTIVE_SET_RCOND, layer.py) only by chance.
INDEPENDENT_TOL = float(np.sqrt(np.finfo(float).eps))
# Where P is diagonal and positive (a separable strictly convex objective: CVXPY's
# canonicalization of sums of squares puts every parameter-dependent quadratic on auxiliary
# variables with a diagonal P), M's inverse is formed from the QR factorization of
# D^-1/2 A_𝒜ᵀ (`_range_space_inverse`) instead of M's LU: about a quarter of the
# arithmetic (the OptNet QP's M, 186 rows: 0.33 ms against 0.72 for LU, its condition
# estimate and the inverse), from RANGE_SPACE_MIN rows of M on (below, the LU's fewer
# calls are faster), and only while P's diagonal spreads over at most RANGE_SPACE_SPREAD
# (the spread the tests check the inverse's accuracy against the LU's at; beyond it, the LU).
RANGE_SPACE_MIN = 64
RANGE_SPACE_SPREAD = 1e4


def small_polyhedral(t: ConeTemplate) -> bool:
    """Are all of the template's cones zero and nonnegative ones, and is it small and dense
    enough for a dense M (KKT_MAX_SIZE)?"""
    d = t.dims
    return d.zero + d.nonneg == t.m and t.n + t.m <= KKT_MAX_SIZE and use_dense(t)


@dataclass
class ActiveSet:
    """One instance's active set and the LU of its M, at the point it solves exactly."""

    n: int
    m: int
    rows: np.ndarray                         # the active rows 𝒜 (zero rows first, sorted)
    A: np.ndarray                            # the instance's dense A (m, n)
    P: np.ndarray | None                     # and P (n, n), or None (a linear objective)
    c: np.ndarray
    b: np.ndarray
    # M factored: LAPACK's getrf (``lu``), or its inverse (``inv``, `_range_space_inverse`)
    # where P is diagonal and positive, kept with M itself (``M``: `solve` refines against
    # it); the others are None
    lu: tuple[np.ndarray, np.ndarray] | None
    inv: np.ndarray | None
    M: np.ndarray | None
    rcond: float                             # M's reciprocal condition in the 1-norm
    x: np.ndarray                            # (estimated from the LU, exact from inv)
    y: np.ndarray
    s: np.ndarray

    @classmethod
    def at(cls, ops: BatchOps, c: np.ndarray, b: np.ndarray, y: np.ndarray,
           s: np.ndarray) -> ActiveSet | None:
        """The active set of the one instance of ``ops`` (with c (n,), b (m,)) guessed from an
        approximate solution's multipliers ``y`` and slacks ``s`` (a nonnegative row is active
        where y_i > s_i), and the exact solution for it: None where M is singular (to working
        precision) or that solution's multipliers or slacks have the wrong sign (the guess
        was wrong).

        Where M is singular because the guessed inequalities are linearly dependent (two
        nearly coincident parallel bounds, 1 <= x <= 1 + 1e-7, at a point whose multipliers
        are both ~800 and nearly equal: the dual drifts along the rows' near-dependence), the
        guess is pruned to a maximal independent subset (`independent_rows`), the rows most
        clearly active (largest y_i − s_i) kept first, and solved for again. A pruned row
        must then be strictly inactive (positive slack) like any other: there the active
        constraints are independent and the multipliers unique. Dependent equality rows
        are not pruned (their multipliers are not unique: the general path's to judge).
        Where the pruned guess is still singular (too few independent rows for a vertex:
        an LP's point whose multipliers and slacks are both small on some rows), it is
        completed to n rows with the inactive rows nearest to active that are independent
        of those kept; for a QP that may over-constrain the point, and then the signs
        refuse it."""
        t = ops.template
        n, m, zero = t.n, t.m, t.dims.zero
        A = ops.dense()[0]
        P = ops.dense_P()[0] if t.quadratic else None
        active = np.ones(m, dtype=bool)
        active[zero:] = y[zero:] > s[zero:]
        rows = np.flatnonzero(active)
        got = cls._for_rows(n, m, zero, A, P, c, b, rows)
        if not isinstance(got, bool):
            return got
        if not got:  # (M regular, the guess wrong)
            return None
        gap = y - s
        ineq = np.arange(zero, m)
        first = np.concatenate([np.arange(zero), ineq[active[zero:]][np.argsort(
            -gap[zero:][active[zero:]], kind="stable")]])
        kept = independent_rows(A, first, zero)
        if kept is None:
            return None
        if kept.size < rows.size:
            got = cls._for_rows(n, m, zero, A, P, c, b, kept)
            if not isinstance(got, bool) or not got:
                return got or None
        # still singular: too few independent rows for a vertex (an LP's point whose
        # multipliers and slacks are both small on some rows), completed with the inactive
        # rows nearest to active (largest y_i − s_i) that are independent of those kept
        rest = ineq[~active[zero:]][np.argsort(-gap[zero:][~active[zero:]], kind="stable")]
        basis = independent_rows(A, np.concatenate([first, rest]), zero, limit=n)
        if basis is None or basis.size <= kept.size:
            return None
        got = cls._for_rows(n, m, zero, A, P, c, b, basis)
        return None if isinstance(got, bool) else got

    @classmethod
    def _for_rows(cls, n: int, m: int, zero: int, A: np.ndarray, P: np.ndarray | None,
                  c: np.ndarray, b: np.ndarray, rows: np.ndarray) -> ActiveSet | bool:
        """`at` for the active rows ``rows`` (sorted): the `ActiveSet`, else whether M was
        singular (True) or the solution's signs wrong (False)."""
        active = np.zeros(m, dtype=bool)
        active[rows] = True
        k = rows.size
        Aa = A[rows]
        M = np.zeros((n + k, n + k))
        if P is not None:
            M[:n, :n] = P
        M[:n, n:] = Aa.T
        M[n:, :n] = -Aa
        anorm = np.abs(M).sum(axis=0).max(initial=0.0)
        if not np.isfinite(anorm) or anorm == 0:
            return False
        rhs = np.concatenate([-c, -b[rows]])
        lu: tuple[np.ndarray, np.ndarray] | None = None
        inv: np.ndarray | None = None
        d = _separable(P) if n + k >= RANGE_SPACE_MIN else None
        if d is not None:
            inv = _range_space_inverse(d, Aa)
            if inv is None:
                return True
            rcond = 1.0 / (anorm * np.abs(inv).sum(axis=0).max(initial=0.0))
            if not rcond > np.finfo(float).eps:
                return True
            z = _inverse_solve(inv, M, rhs)
        else:
            f, piv, info = la.lapack.dgetrf(M)
            if info != 0:
                return True
            rcond, info = la.lapack.dgecon(f, anorm, norm="1")
            if info != 0 or not rcond > np.finfo(float).eps:
                return True
            lu = (f, piv)
            z, info = la.lapack.dgetrs(f, piv, rhs)
            # one step of iterative refinement: componentwise backward stable (Skeel 1980;
            # Higham, *Accuracy and Stability of Numerical Algorithms*, §12.2), where the
            # solve alone leaves an active bound x_j >= 0 at x_j ~ 1e-16 beside its own
            # terms ~0
            dz, again = la.lapack.dgetrs(f, piv, rhs - M @ z)
            z = z + dz
            if info != 0 or again != 0:
                return False
        if not np.all(np.isfinite(z)):
            return False
        x = z[:n]
        yy = np.zeros(m)
        yy[rows] = z[n:]
        ss = b - A @ x
        ss[rows] = 0.0
        if np.any(yy[zero:][active[zero:]] <= 0) or np.any(ss[~active] <= 0):
            return False
        return cls(n=n, m=m, rows=rows, A=A, P=P, c=c, b=b, lu=lu, inv=inv,
                   M=None if inv is None else M, rcond=float(rcond), x=x, y=yy, s=ss)

    def bound(self, r: np.ndarray) -> np.ndarray:
        """|S⁻¹| r (n + m,) for r >= 0 (n + m,): entry by entry, the most that perturbations of
        the rows of F within r move each entry of (u, v) to first order (Skeel's componentwise
        bound; Higham, *Accuracy and Stability of Numerical Algorithms*, §7.2), from M's
        explicit inverse. Exact where an estimate with one sign vector can cancel: sparsemax
        whose equality multiplier, ~1e-12, is the difference of two rows' O(1) terms, each
        rounded, which one ±1 probe summed to 1e-26."""
        n, rows = self.n, self.rows
        inv = self.inv
        if inv is None:
            assert self.lu is not None
            inv, info = la.lapack.dgetri(*self.lu)
            if info != 0:
                return np.full(n + self.m, np.inf)
        top = np.abs(inv) @ np.concatenate([r[:n], r[n:][rows]])
        out = np.empty(n + self.m)
        out[:n] = top[:n]
        out[n:] = r[n:] + np.abs(self.A) @ top[:n]
        out[n:][rows] = top[n:]
        return out

    def terms(self, x: np.ndarray, y: np.ndarray, s: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """The residual F (`derivative.residual`) at (x, y, s), with y = Π(y − s) (zero and
        nonnegative rows), and its rows' terms (`refine.row_terms`), (n + m,) each."""
        aA, ax = np.abs(self.A), np.abs(x)
        Fx, dx = self.A.T @ y + self.c, aA.T @ np.abs(y) + np.abs(self.c)
        if self.P is not None:
            Fx += self.P @ x
            dx += np.abs(self.P) @ ax
        return (np.concatenate([Fx, self.b - self.A @ x - s]),
                np.concatenate([dx, aA @ ax + np.abs(self.b) + np.abs(s)]))

    def gradient(self) -> np.ndarray:
        """|P||x| + |c| at the point (n,)."""
        g = np.abs(self.c)
        return g if self.P is None else g + np.abs(self.P) @ np.abs(self.x)

    def solve(self, r: np.ndarray, transpose: bool = False) -> np.ndarray:
        """S⁻¹ r (or S⁻ᵀ r) at this point, r (n + m,) or (n + m, K).

        S (u, v) = (P u + A_𝒜ᵀ v_𝒜, −A_𝒜 u on 𝒜, −A_i u + v_i off it): M's solve gives u and
        v_𝒜, and then v_i = r_i + A_i u. Sᵀ (a, w) = (P a − Aᵀ w, A_𝒜 a on 𝒜, w_i off it):
        w_i = r_i, and Mᵀ's solve, with A_iᵀ r_i moved to the right, gives a and w_𝒜."""
        n, rows = self.n, self.rows
        inactive = np.ones(self.m, dtype=bool)
        inactive[rows] = False
        rx, rv = r[:n], r[n:]
        if transpose:
            top = np.concatenate([rx + self.A[inactive].T @ rv[inactive], rv[rows]])
        else:
            top = np.concatenate([rx, rv[rows]])
        if self.inv is not None:
            assert self.M is not None  # (kept with inv)
            inv, M = (self.inv.T, self.M.T) if transpose else (self.inv, self.M)
            z = _inverse_solve(inv, M, top)
        else:
            assert self.lu is not None
            z, _ = la.lapack.dgetrs(*self.lu, top, trans=int(transpose))
        out = np.empty(r.shape)
        out[:n] = z[:n]
        out[n:] = rv if transpose else rv + self.A @ z[:n]
        out[n:][rows] = z[n:]
        return out


def _inverse_solve(inv: np.ndarray, M: np.ndarray, r: np.ndarray) -> np.ndarray:
    """M⁻¹ r from M's explicit inverse ``inv``, with one step of iterative refinement against
    M itself, as the LU's solves in `ActiveSet._for_rows` (componentwise backward stable:
    Higham, *Accuracy and Stability of Numerical Algorithms*, §12.2)."""
    z = inv @ r
    return z + inv @ (r - M @ z)


def _separable(P: np.ndarray | None) -> np.ndarray | None:
    """P's diagonal D where P is diagonal with every entry positive and within
    RANGE_SPACE_SPREAD of the largest; else None."""
    if P is None:
        return None
    d = np.diagonal(P)
    if d.size == 0:
        return None
    low = d.min()
    if not (low > 0 and d.max() <= RANGE_SPACE_SPREAD * low
            and np.count_nonzero(P) == d.size):
        return None
    return d


def _range_space_inverse(d: np.ndarray, Aa: np.ndarray) -> np.ndarray | None:
    """The inverse of M = [[D, Aᵀ], [−A, 0]] (D = diag(d) positive, A = ``Aa`` (k, n)), from the
    QR factorization D^-1/2 Aᵀ = QR (Q (n, k), R (k, k)): with C = A D⁻¹ Aᵀ = RᵀR,

        M⁻¹ = [[D⁻¹ − D⁻¹AᵀC⁻¹AD⁻¹, −D⁻¹AᵀC⁻¹], [C⁻¹AD⁻¹, C⁻¹]]
            = [[D^-1/2 (I − QQᵀ) D^-1/2, −D^-1/2 Q R⁻ᵀ], [R⁻¹Qᵀ D^-1/2, R⁻¹R⁻ᵀ]]

    (the range-space method: Nocedal & Wright, *Numerical Optimization*, §16.2; with R from
    an orthogonal factorization rather than C's Cholesky, whose forming squares A's
    condition). None where R is singular (A's rows dependent)."""
    n, k = d.size, Aa.shape[0]
    h = 1.0 / np.sqrt(d)
    inv = np.empty((n + k, n + k))
    if k == 0:
        inv[:] = np.diag(h * h)
        return inv
    if k > n:  # (the rows are dependent)
        return None
    f, tau, _, info = la.lapack.dgeqrf(Aa.T * h[:, None])
    if info != 0:
        return None
    Q, _, info = la.lapack.dorgqr(f, tau)
    Ri, bad = la.lapack.dtrtri(np.triu(f[:k]))
    if info != 0 or bad != 0 or not np.all(np.isfinite(Ri)):
        return None
    Qh = Q.T * h                          # Qᵀ D^-1/2 (k, n)
    top = Qh.T @ -Qh
    top.flat[:: n + 1] += h * h
    inv[:n, :n] = top
    inv[n:, :n] = Ri @ Qh
    inv[:n, n:] = -inv[n:, :n].T
    inv[n:, n:] = Ri @ Ri.T
    return inv


def lp_vertex(ops: BatchOps, c: np.ndarray, b: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A vertex solution (x, y, s) of the one instance of ``ops``, a linear program (c (n,),
    b (m,): min cᵀx s.t. Ax + s = b, s zero on the zero rows and nonnegative elsewhere), from
    HiGHS's dual simplex (`scipy.optimize.linprog`, Huangfu & Hall, *Math. Prog. Comp.* 10,
    2018): a guess of the active set (`ActiveSet.at`) where the solver's point gives none,
    its rows and multipliers spread over many decades. The guess alone decides nothing:
    the active set's exact solution is certified as any other. None where HiGHS reports no
    optimum."""
    from scipy.optimize import linprog

    t = ops.template
    n, zero = t.n, t.dims.zero
    A = ops.dense()[0]
    with np.errstate(all="ignore"):
        res = linprog(c, A_ub=A[zero:] if t.m > zero else None,
                      b_ub=b[zero:] if t.m > zero else None, A_eq=A[:zero] if zero else None,
                      b_eq=b[:zero] if zero else None, bounds=[(None, None)] * n,
                      method="highs-ds")
    if res.status != 0 or not np.all(np.isfinite(res.x)):
        return None
    y = np.zeros(t.m)
    if zero:
        y[:zero] = -res.eqlin.marginals
    if t.m > zero:
        y[zero:] = -res.ineqlin.marginals
    s = np.where(y > 0, 0.0, np.maximum(b - A @ res.x, 0.0))
    s[:zero] = 0.0
    return res.x, y, s


def independent_rows(A: np.ndarray, order: np.ndarray, zero: int, limit: int | None = None
                     ) -> np.ndarray | None:
    """A linearly independent subset of A's rows ``order``, taken in that order (returned
    sorted): each kept where its part orthogonal to those kept before it exceeds
    INDEPENDENT_TOL of its norm (Gram–Schmidt, twice: Giraud et al., *Numer. Math.* 101,
    2005), until ``limit`` are kept. None where an equality row (below ``zero``) is
    dependent on those before it."""
    basis = np.zeros((0, A.shape[1]))
    kept: list[int] = []
    for i in order.tolist():
        if limit is not None and len(kept) >= limit:
            break
        a = A[i]
        size = float(np.linalg.norm(a))
        r = a - basis.T @ (basis @ a)
        r -= basis.T @ (basis @ r)
        left = float(np.linalg.norm(r))
        if size > 0 and left > INDEPENDENT_TOL * size:
            basis = np.vstack([basis, r / left])
            kept.append(i)
        elif i < zero:
            return None
    return np.sort(np.array(kept, dtype=int))


class ActiveSets:
    """A batch of `ActiveSet`s in the role of `derivative.Linearization` (the solves that
    `derivative.ConeSolution` makes with S): every S regular, each solved by its M."""

    dense = True

    def __init__(self, sets: list[ActiveSet]) -> None:
        self.factors = sets
        self.rcond = np.array([a.rcond for a in sets])
        self.singular = np.zeros(len(sets), dtype=bool)

    def solve(self, rhs: np.ndarray, transpose: bool = False, iterative: bool = True,
              tol: float = REFINE_SOLVE_TOL) -> np.ndarray:
        """S⁻¹ rhs (or S⁻ᵀ rhs) per instance, rhs (B, N) or (B, N, K)."""
        return np.stack([a.solve(r, transpose) for a, r in zip(self.factors, rhs, strict=True)])

    def solve_one(self, i: int, rhs: np.ndarray, transpose: bool = False,
                  iterative: bool = True, tol: float = REFINE_SOLVE_TOL) -> np.ndarray:
        """S_i⁻¹ rhs (or S_i⁻ᵀ rhs) for instance i; rhs (N,) or (N, K)."""
        if not np.all(np.isfinite(rhs)):
            return np.full_like(rhs, np.nan)
        return self.factors[i].solve(rhs, transpose)
