"""solve: the solver seam. Every instance of a batch solved by a backend, in parallel
threads, with a status each.

A backend (`Backend`: one module per solver in ``declarative/backends``) sets up the state it
shares across instances of a template, solves one cone program

    min ½xᵀPx + cᵀx  s.t.  Ax + s = b,  s ∈ K,

and maps its own statuses to `Status`. Everything else is the same for every backend:
the thread pool, the verification of every infeasibility/unboundedness claim, and (in
layer.py) refinement, the certificate and the derivative. A failure (an exception,
infeasibility, ...) is recorded for its instance and never stops the others. Ctrl-C does:
it raises KeyboardInterrupt and no further instance is started.
"""

from __future__ import annotations

import _thread
import enum
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from declarative.compile import pick
from declarative.cones import ConeDims, project
from declarative.errors import ProblemError
from declarative.parallel import parallel_map


class Status(str, enum.Enum):
    """Outcome of one instance. Only ``SOLVED`` instances have outputs and gradients."""

    SOLVED = "solved"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    INACCURATE = "inaccurate"
    ITERATION_LIMIT = "iteration_limit"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass
class Outcome:
    """One backend solve: the point (x, y, s) in the cone program's own variables and the
    backend's status in our terms. An infeasibility or unboundedness claim is the backend's
    word until the seam verifies its certificate (`infeasibility_certified`,
    `unboundedness_certified`): a solver judges its own (scaled) program by its own
    tolerances."""

    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    status: Status
    iterations: int


@dataclass
class BatchOutcome:
    """A batched backend's solves of a whole batch (`Outcome`'s fields stacked): x (B, n),
    y and s (B, m), and per instance its status and iterations."""

    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    status: list[Status]
    iterations: np.ndarray


class Backend(Protocol):
    """A cone-program solver behind the seam.

    ``settings`` holds the backend's own settings (its defaults under the user's
    ``solver_args``; `Backend.settings` makes them and rejects names the solver does not
    take). A and P are CSC (SciPy matrices or `compile.CSC` arrays), P the upper triangle or
    None for P = 0; the rows of A, b, y and s follow `ConeDims`' order and conventions (SCS's).
    """

    name: str
    options: frozenset[str]   # the settings a user may pass in solver_args
    tunable: tuple[str, ...]  # the `Tuning` fields it takes as settings of the same name
    # names users bring from other solvers and tools, each with what to pass here instead
    foreign: Mapping[str, str]

    def normalize(self, args: Mapping[str, Any]) -> dict:
        """``args`` with the aliases this backend accepts spelled as its own settings
        (`ProblemError` where an alias and the setting it stands for are both given)."""
        ...

    def settings(self, args: Mapping[str, Any]) -> dict:
        """The backend's defaults overridden by ``args``; `ProblemError` naming the valid
        settings for any name the solver does not take."""
        ...

    def tightened(self, settings: dict, eps: float) -> dict:
        """``settings`` with the stopping tolerances at most ``eps``."""
        ...

    def share(self, A: Any, P: Any, dims: ConeDims) -> Any:
        """State shared by instances that all have this A and P (only b and c vary), or
        None where the backend has nothing to share."""
        ...

    def solve(self, A: Any, b: np.ndarray, c: np.ndarray, dims: ConeDims, settings: dict,
              P: Any = None, warm: tuple | None = None, shared: Any = None) -> Outcome:
        """Solve one instance; ``warm`` is a starting point (x, y, s) where the solver takes
        one. Raises KeyboardInterrupt where the solver caught Ctrl-C."""
        ...

    # A backend that cannot solve every program (a cone kind it does not take, a method for
    # some cones only) also has ``check_program(dims, settings)``, raising `ProblemError`
    # before any solve.
    # A batched solver also has ``solve_many(matrices, b, c, dims, settings, quadratic)``
    # (b, c: (B, ·); ``matrices`` and ``quadratic`` (None or the P of each instance) lists
    # or `compile.CSCBatch`) returning a `BatchOutcome`: `solve_batch` then makes one call
    # for the batch instead of one per instance in threads, and ``warm`` and ``shared``
    # are not used.


def check_settings(backend: Backend, args: Mapping[str, Any], ours: Any = ()) -> None:
    """`ProblemError` naming every entry of ``args`` that is neither one of ``backend``'s
    settings nor in ``ours`` (the refinement options), the valid names, and what to pass
    instead where the name is one users bring from another tool."""
    unknown = sorted(set(args) - backend.options - set(ours))
    if not unknown:
        check_values(args)
        return
    hints = "".join(f" Instead of {k!r}: {backend.foreign[k]}." for k in unknown
                    if k in backend.foreign)
    also = f" or refinement options {sorted(ours)}" if ours else ""
    raise ProblemError(
        f"unsupported solver option(s) {unknown} for solver {backend.name!r}; expected "
        f"{backend.name} settings {sorted(backend.options)}{also}.{hints}"
    )


def _finite(v: Any) -> bool:
    """Is the number v finite as a float (a Python int beyond float's range is not)?"""
    try:
        return math.isfinite(float(v))
    except (OverflowError, TypeError, ValueError):
        return False


# SCS's numeric settings beyond tolerances and iteration limits: (test, what it must be)
_NUMBERS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "scale": (lambda v: v > 0, "a finite positive number"),
    "rho_x": (lambda v: v > 0, "a finite positive number"),
    "alpha": (lambda v: 0 < v < 2, "a number in (0, 2)"),
    "time_limit_secs": (lambda v: v >= 0, "a finite nonnegative number"),
}
_WHOLE = {"acceleration_lookback": 0, "acceleration_interval": 1}


def check_values(args: Mapping[str, Any]) -> None:
    """`ProblemError` naming a setting whose value is of the wrong kind: a tolerance (a name
    starting with ``eps`` or ``tol``, or ``refine_tol``) must be a finite number, positive
    for ``refine_tol`` and nonnegative otherwise; an iteration limit (``max_iter``,
    ``max_iters``, ``refine_max_iters``) a whole number, at least 1 (0 for
    ``refine_max_iters``); ``refine`` true or false; SCS's ``scale`` and ``rho_x`` finite
    positive numbers, ``alpha`` one in (0, 2), ``time_limit_secs`` a finite nonnegative one,
    ``acceleration_lookback`` a whole number of at least 0 and ``acceleration_interval`` one
    of at least 1 (SCS fails on others, and a second backend would serve the call without
    them)."""
    for k, v in args.items():
        number = isinstance(v, (int, float, np.integer, np.floating)) \
            and not isinstance(v, (bool, np.bool_)) and _finite(v)
        whole = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        if k in _NUMBERS and not (number and _NUMBERS[k][0](v)):
            raise ProblemError(f"solver option {k!r} must be {_NUMBERS[k][1]}, got {v!r}.")
        if k in _WHOLE and not (whole and v >= _WHOLE[k]):
            raise ProblemError(f"solver option {k!r} must be a whole number of at least "
                               f"{_WHOLE[k]}, got {v!r}.")
        if k == "refine":
            if not isinstance(v, (bool, np.bool_)):
                raise ProblemError(f"solver option 'refine' must be True or False, got {v!r}.")
        elif k.startswith(("eps", "tol")) or k == "refine_tol":
            ok = number and (v > 0 if k == "refine_tol" else v >= 0)
            if not ok:
                kind = "positive" if k == "refine_tol" else "nonnegative"
                raise ProblemError(f"solver option {k!r} must be a finite {kind} number, "
                                   f"got {v!r}.")
        elif k in ("max_iter", "max_iters", "refine_max_iters"):
            least = 0 if k == "refine_max_iters" else 1
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                    and v >= least):
                raise ProblemError(f"solver option {k!r} must be a whole number of at least "
                                   f"{least}, got {v!r}.")


@dataclass
class SolveResult:
    """Solutions of a batch, in the cone program's variables: x (B, n), y and s (B, m)."""

    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    status: list[Status]
    iterations: np.ndarray
    seconds: np.ndarray

    def take(self, sel: slice) -> SolveResult:
        """The instances ``sel`` (views)."""
        return SolveResult(self.x[sel], self.y[sel], self.s[sel], self.status[sel],
                           self.iterations[sel], self.seconds[sel])

    @staticmethod
    def join(parts: list[SolveResult]) -> SolveResult:
        """The batches ``parts`` one after another."""
        x, y, s = (np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "y", "s"))
        return SolveResult(x, y, s, [st for p in parts for st in p.status],
                           np.concatenate([p.iterations for p in parts]),
                           np.concatenate([p.seconds for p in parts]))


# A certificate of infeasibility or unboundedness must be exact to rounding: each entry of its
# linear residual (Aᵀŷ; Ax + Π_K(−Ax) and Px) at most CERTIFICATE_ROUND (16 ulps) times the
# magnitudes it is computed from (|A|ᵀ|ŷ|, |A||x|, |P||x|), and its objective (bᵀŷ; cᵀx) negative
# by at least CERTIFICATE_TOL of its own magnitudes. An approximate certificate proves only that
# every (dual) feasible point is large, which an ill-conditioned or badly scaled bounded program
# is too: SCS's near-ray for max Σ entr(x) + c·x (x = exp(c − 1) = 1.8e8 at c = 20) proved a
# dual beyond 4e6 times the data; min ½xᵀPx + qᵀx with P's eigenvalues 1 and 1e12, rotated,
# has |Px| ~ 1e-12 max|P| |x| along its smallest eigenvector (at 1e14, 45 ulps). A solver's
# certificate is tested as it is, with its entries below CERTIFICATE_SNAP of its largest set
# to 0, and moved (least squares onto the linear part, then the cone, CERTIFICATE_POLISH times)
# within CERTIFICATE_SNAP of itself: an interior-point method's is exact only to its tolerance
# (Moreau and Clarabel on a box with lo > hi: Aᵀy ~ 1e-8, exact once moved).
CERTIFICATE_ROUND = 16 * np.finfo(float).eps
CERTIFICATE_TOL = 1e-9
CERTIFICATE_SNAP = 1e-6
# Rounds of `_followed`: the cones a chain of them (x^(1/4), x^(1/8)) passes a move through.
CERTIFICATE_CHAIN = 8
CERTIFICATE_POLISH = 3
# The supports a certificate is also polished on (`infeasibility_certified`): its entries
# above these fractions of its largest, the rest 0; the polish may then move no entry by
# more than that fraction of the largest (a ray found to SCS's tolerance, not another one).
CERTIFICATE_SUPPORT_SNAPS = (1e-4, 1e-2)


def _scipy(M: Any) -> sp.csc_matrix:
    return M if sp.issparse(M) else M.scipy()


def _exact(value: np.ndarray, magnitude: np.ndarray) -> bool:
    """Every entry of a residual within CERTIFICATE_ROUND of the magnitudes it is made of."""
    return bool(np.all(np.abs(value) <= CERTIFICATE_ROUND * magnitude))


def _followers(absM: sp.spmatrix, moves: np.ndarray) -> np.ndarray:
    """Per column j of M (entrywise |M|, ``absM``): the largest ``moves``ᵢ / |Mᵢⱼ| among the
    rows that hold it (how far its entry may move where each row i may move by movesᵢ); 0
    where none does."""
    coo = absM.tocoo()
    reach = np.zeros(absM.shape[1])
    keep = coo.data > 0
    np.maximum.at(reach, coo.col[keep], moves[coo.row[keep]] / coo.data[keep])
    return reach


def _known_to(absM: sp.spmatrix, magnitude: np.ndarray) -> np.ndarray:
    """Per column j of M (entrywise |M|, ``absM``): how far its entry of a certificate may
    move inside the rounding `_exact` allows its rows, CERTIFICATE_ROUND × the largest
    magnitude (|M||v|)ᵢ over |Mᵢⱼ| among the rows that hold it; 0 where none does."""
    return CERTIFICATE_ROUND * _followers(absM, magnitude)


def _followed(dims: ConeDims, values: np.ndarray, base: np.ndarray,
              spread: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A certificate's cone point ``values`` (a Farkas certificate ŷ, or a ray's −Ax) with
    ``base``, how far each entry may move inside the rounding the exactness test allows, and
    what its second-order cones' curvature lets move on top of that, and what that moves in
    turn (``spread``: the entries that the curvature's moves ``curv`` move, through the
    linear part), to a fixed point (at most CERTIFICATE_CHAIN rounds). A cone (t, z) whose
    t − ‖z‖ is known to δ near its axis ray (t ≈ ‖z‖ ≈ h) lets its transverse entries
    (|zᵢ| <= τ) be anything up to τ = √(2hδ): a point within δ of the boundary near its
    axis ray may hold a transverse part that large, which is not rounding of that part but
    of the block. Where the entries moved in turn are another cone's axis entries, its δ
    grows by their move.

    max w·Σ√x − cᵀx (w = 1e12, c = 1e3) had a ray (x, t) = (6e7, 0.61) whose cone (x/4,
    x/4, t/2) missed by 3e-9, inside the rounding of 1.5e7, and whose objective came from t
    alone: `unbounded`. The same of a Farkas certificate: min cᵀx s.t. inv_pos(x) <= d at
    d ~ 5e-7 … 1e-12 (x = 1/d) came back `infeasible` at 8 (c, d) of a sweep.
    min cᵀx s.t. sqrt(x) >= d at d ~ 5e8 (x·1 >= t² with the 1 below the rounding of
    x ~ 2e17) had ŷ on that cone's axis ray to rounding, its transverse entry −3.9 tied
    through t's column to the constraint's multiplier, whose b made bᵀŷ = −9.3:
    `infeasible`, where x = d². With x^(1/4) (two cones in a chain: the second's transverse
    entry tied through u's column to the first's axis entries) the same at d ~ 1e8 … 1e12.
    A ray of max x^(2/3) − cx held its second cone's transverse entry (w times a
    coefficient 1.4e-14) at the rounding of the axis, w free to be 0, which leaves the
    first cone (x + w, x − w, t) no room for the t that made its objective negative."""
    sizes = np.asarray(dims.soc, dtype=int)
    if not np.any(sizes > 1):
        return base
    starts = dims.zero + dims.nonneg + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    first = starts[sizes > 1]  # each cone's t, then its z's entries with their cone's index
    lengths = sizes[sizes > 1] - 1
    block = np.repeat(np.arange(first.size), lengths)
    seg = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.repeat(first + 1 - seg, lengths) + np.arange(lengths.sum())
    h = np.abs(values[first])
    rest = np.abs(values[rows])
    lin = base
    width = np.zeros(first.size)  # each cone's τ in the round before
    curv = np.zeros_like(base)
    for _ in range(CERTIFICATE_CHAIN):
        axis = rest > width[block]  # (the transverse entries' own moves left out)
        delta = np.maximum(lin[first], np.maximum.reduceat(np.where(axis, lin[rows], 0.0), seg))
        margin = h - np.sqrt(np.add.reduceat(np.where(axis, rest, 0.0) ** 2, seg))
        near = margin <= 2.0 * delta  # (else off its boundary beyond what the moves reach)
        width = np.where(near, np.sqrt(2.0 * h * (np.maximum(margin, 0.0) + 2.0 * delta)), 0.0)
        curv = np.zeros_like(base)
        curv[rows] = np.where(near[block] & (rest <= width[block]), width[block], 0.0)
        new = np.maximum(base, spread(curv))
        if np.array_equal(new, lin):
            break
        lin = new
    return np.maximum(lin, curv)


def _objective_clear(value: float, weights: np.ndarray, cand: np.ndarray, reach: np.ndarray,
                     tol: float) -> bool:
    """Is a certificate's objective (``value``, weightsᵀcand) negative by at least ``tol``
    of its terms beyond what its entries' rounding (``reach``, `_known_to`) can move it?
    max Σ 1/xᵢ's ray held x₁ = −3e-16 beside t₁ = 0.5 in one cone, exact to rounding there,
    and c₁ ~ 9e15 made that rounding the objective's −2.7: `unbounded`, where x = 1/√c."""
    aw = np.abs(weights)
    return value < 0 and -value >= tol * float(aw @ np.abs(cand)) + float(aw @ reach)


def infeasibility_certified(A: Any, b: np.ndarray, y: np.ndarray, dims: ConeDims,
                            tol: float = CERTIFICATE_TOL) -> bool:
    """Is ŷ = Π_{K*}(y) a certificate that Ax + s = b, s ∈ K has no solution?

    ŷ ∈ K* with Aᵀŷ = 0 and bᵀŷ < 0 (Farkas' lemma for cones; the certificate SCS returns,
    O'Donoghue et al. 2016, *Conic optimization via operator splitting and homogeneous
    self-dual embedding*): every feasible x would give 0 <= ŷᵀs = bᵀŷ < 0. Accepted where
    Aᵀŷ = 0 to rounding (each entry within CERTIFICATE_ROUND of |A|ᵀ|ŷ|) and −bᵀŷ is at least
    ``tol`` times |b|ᵀ|ŷ| beyond what that rounding lets ŷ's entries move it
    (`_objective_clear`): invariant to scaling A, b and y; for ŷ as given, snapped,
    polished (see CERTIFICATE_ROUND), or polished on the support of its large entries
    (CERTIFICATE_SUPPORT_SNAPS).
    """
    if not np.all(np.isfinite(y)):
        return False
    M = _scipy(A)
    absA = abs(M)

    def holds(cand: np.ndarray) -> bool:
        bty = float(b @ cand)
        if not (bty < 0 and -bty >= tol * float(np.abs(b) @ np.abs(cand))):
            return False
        scale = absA.T @ np.abs(cand)
        if not _exact(M.T @ cand, scale):
            return False
        # (each entry of ŷ to what Aᵀŷ's rounding lets it move, its second-order cones'
        # transverse entries to what that lets the curvature move them, and the other
        # entries of their columns with them: Aᵀŷ = 0 ties them)
        reach = _followed(dims, cand, _known_to(absA.T, scale),
                          lambda curv: _followers(absA.T, absA.T @ curv))
        return _objective_clear(bty, b, cand, reach, tol)

    y = project(y, dims, dual=True)
    if holds(y) or holds(project(_snapped(y), dims, dual=True)):
        return True
    # polished: onto Aᵀy = 0, then K*
    if _polished(y, lambda cand: project(cand - M @ _lstsq(M, cand), dims, dual=True),
                 holds):
        return True
    # polished on its support: SCS's ray at eps 1e-3 can carry noise of 1e-4 … 1e-3 of its
    # largest entry on every other row (two opposite rows of an OptNet QP with its data
    # × 1e9: 50 of 63 entries nonzero), which no polish within CERTIFICATE_SNAP removes
    ymax = np.abs(y).max(initial=0.0)
    rows = sp.csr_matrix(M)
    for snap in CERTIFICATE_SUPPORT_SNAPS:
        keep = np.abs(y) > snap * ymax
        if keep.all() or not keep.any():
            continue
        Ms = rows[keep]
        cand = np.zeros_like(y)
        cand[keep] = y[keep] - Ms @ _lstsq(Ms, y[keep])
        moved = _near(y, project(cand, dims, dual=True), snap)
        if moved is not None and holds(moved):
            return True
    return False


def _snapped(v: np.ndarray) -> np.ndarray:
    """v with its entries of at most CERTIFICATE_SNAP times its largest set to 0."""
    return np.where(np.abs(v) <= CERTIFICATE_SNAP * np.abs(v).max(initial=0.0), 0.0, v)


def unboundedness_certified(A: Any, c: np.ndarray, x: np.ndarray, dims: ConeDims,
                            P: Any = None, tol: float = CERTIFICATE_TOL) -> bool:
    """Is x a certificate that min ½xᵀPx + cᵀx s.t. Ax + s = b, s ∈ K has no dual solution
    (the primal is unbounded below where feasible)?

    A ray: Ax ∈ −K (r = Ax + Π_K(−Ax) = 0), Px = 0 and cᵀx < 0 (O'Donoghue et al. 2016; with
    P, SCS 3's quadratic form): a dual feasible (w, y), Pw + Aᵀy + c = 0, y ∈ K*, would give
    0 > cᵀx = −xᵀPw − (Ax)ᵀy >= 0. Accepted where r and Px are 0 to rounding (each entry within
    CERTIFICATE_ROUND of |A||x|, |P||x|) and −cᵀx is at least ``tol`` times |c|ᵀ|x| beyond
    what that rounding lets x's entries move it (`_objective_clear`); for x as given,
    snapped, or polished (see CERTIFICATE_ROUND). ``P`` is the upper triangle, as SCS takes
    it.
    """
    if not np.all(np.isfinite(x)):
        return False
    M = _scipy(A)
    absA = abs(M)
    Pf = None if P is None else _scipy(P)
    if Pf is not None:
        Pf = (Pf + Pf.T - sp.diags(Pf.diagonal())).tocsc()

    def holds(cand: np.ndarray) -> bool:
        ctx = float(c @ cand)
        if not (ctx < 0 and -ctx >= tol * float(np.abs(c) @ np.abs(cand))):
            return False
        Ax = M @ cand
        scale = absA @ np.abs(cand)
        if not _exact(Ax + project(-Ax, dims), scale):
            return False
        # (the rows' moves as far as x's entries follow them, and the rows those move)
        rows = _followed(dims, -Ax, CERTIFICATE_ROUND * scale,
                         lambda curv: absA @ _followers(absA, curv))
        reach = _followers(absA, rows)
        if Pf is not None:
            absP = abs(Pf)
            p_scale = absP @ np.abs(cand)
            if not _exact(Pf @ cand, p_scale):
                return False
            reach = np.maximum(reach, _known_to(absP, p_scale))
        if not _objective_clear(ctx, c, cand, reach, tol):
            return False
        return not _no_ray_exactly(M, Pf, np.abs(Ax) <= CERTIFICATE_ROUND * scale, dims)

    if holds(x) or holds(_snapped(x)):
        return True
    # polished: the least-squares x' with Ax' = −Π_K(−Ax) (and Px' = 0), which makes
    # Ax' + Π_K(−Ax') = 0 where the projection keeps its face
    stack = M if Pf is None else sp.vstack([M, Pf]).tocsc()

    def step(cand: np.ndarray) -> np.ndarray:
        target = -project(-(M @ cand), dims)
        rhs = target if Pf is None else np.concatenate([target, np.zeros(Pf.shape[0])])
        return cand + _lstsq(stack, rhs - stack @ cand)

    return _polished(x, step, holds)


def _no_ray_exactly(A: Any, P: Any, tight: np.ndarray, dims: ConeDims) -> bool:
    """Does exact arithmetic show that no ray has the pattern of a certificate found to
    rounding: no x ≠ 0 with Px = 0 and (Ax)ᵢ = 0 on the ``tight`` rows (the zero cone's and
    the nonnegative ones the certificate meets to rounding)? The rows it leaves strictly
    negative stay so near it, so an exact ray of that pattern would be a null vector of P
    stacked on A's tight rows; their exact rank (`derivative.ranks_exactly`, the data's
    floats taken as rationals) full rules it out. A ray that leaves some of those rows
    strictly negative (one the certificate meets only to rounding) is not looked for: where
    only such a ray exists, the claim is refused (the status inaccurate), not made wrong.
    Asked of programs with zero and nonnegative cones alone, up to EXACT_RANK_MAX variables
    (False elsewhere). A QP whose P (PSD exactly) has eigenvalues 1e-14 … 258 under Ax = b
    had a ray to 16 ulps along P's small eigenvectors and was called unbounded: its
    minimizer is ~1e16 out, but there."""
    from declarative.derivative import EXACT_RANK_MAX, ranks_exactly  # (claims are rare)

    n = A.shape[1]
    if A.shape[0] != dims.zero + dims.nonneg or n > EXACT_RANK_MAX or n == 0:
        return False
    rows = np.zeros(A.shape[0], dtype=bool)
    rows[: dims.zero] = True
    rows |= tight
    parts = [] if P is None else [P.toarray()]
    parts.append(sp.csr_matrix(A)[rows].toarray())
    stack = np.vstack(parts)
    if not np.all(np.isfinite(stack)) or stack.shape[0] < n:
        return False
    return bool(ranks_exactly(stack)[-1] == n)


def _polished(v: np.ndarray, step: Callable[[np.ndarray], np.ndarray],
              holds: Callable[[np.ndarray], bool]) -> bool:
    """Whether a certificate ``holds`` after one of CERTIFICATE_POLISH successive ``step``s
    from v, each within CERTIFICATE_SNAP of v (`_near`)."""
    cand = v
    for _ in range(CERTIFICATE_POLISH):
        moved = _near(v, step(cand))
        if moved is None:
            return False
        cand = moved
        if holds(cand):
            return True
    return False


def _near(v: np.ndarray, moved: np.ndarray, within: float = CERTIFICATE_SNAP
          ) -> np.ndarray | None:
    """``moved`` where it is within ``within`` of v (max norms, relative): a polish of a
    solver's certificate to within its tolerance, not another certificate."""
    if np.abs(moved - v).max(initial=0.0) <= within * np.abs(v).max(initial=0.0):
        return moved
    return None


def _lstsq(A: Any, r: np.ndarray) -> np.ndarray:
    """argmin ‖A z − r‖₂ (LSQR to near double precision: a certificate's polish)."""
    return spla.lsqr(_scipy(A), r, atol=1e-15, btol=1e-15, iter_lim=20 * max(A.shape))[0]


def solver_failure(exc: BaseException) -> bool:
    """Is ``exc``, raised by a backend's solve, the solver's failure on the instance (recorded
    as its status, the batch going on) rather than the caller's interrupt or exit? Every
    Exception is, and so is a panic of a solver written in Rust (Clarabel, Moreau): PyO3
    raises those as ``pyo3_runtime.PanicException``, which derives from BaseException, not
    Exception. Clarabel panics on some data (an index out of bounds, on a log-det program
    with entries ~1e-6 beside a bound ~1e6)."""
    kind = type(exc)
    return isinstance(exc, Exception) or (kind.__name__ == "PanicException"
                                          and kind.__module__ == "pyo3_runtime")


def _solve_one(backend: Backend, A: Any, b: np.ndarray, c: np.ndarray, dims: ConeDims,
               settings: dict, P: Any = None, warm: tuple | None = None,
               shared: Any = None) -> tuple[Outcome | None, Status, int, float]:
    t0 = time.perf_counter()
    try:
        out = backend.solve(A, b, c, dims, settings, P=P, warm=warm, shared=shared)
    except BaseException as exc:  # noqa: BLE001 - one broken instance must not lose the batch
        if not solver_failure(exc):
            raise
        return None, Status.FAILED, 0, time.perf_counter() - t0
    return _checked(out, A, b, c, dims, P, time.perf_counter() - t0, backend, settings)


def _checked(out: Outcome, A: Any, b: np.ndarray, c: np.ndarray, dims: ConeDims, P: Any,
             seconds: float, backend: Backend, settings: dict
             ) -> tuple[Outcome, Status, int, float]:
    """The backend's outcome with an infeasibility or unboundedness claim kept only where its
    certificate verifies. A ray proves only that the dual is infeasible: the primal is then
    unbounded if it is feasible, and infeasible if not (both programs can be), so an
    unboundedness claim also needs the primal's feasibility (`_primal_feasibility`): where
    the primal is certified infeasible the status is INFEASIBLE, with that certificate."""
    status = out.status
    if status is Status.INFEASIBLE and not infeasibility_certified(A, b, out.y, dims) \
            or status is Status.UNBOUNDED and not unboundedness_certified(A, c, out.x, dims, P):
        status = Status.INACCURATE
    elif status is Status.UNBOUNDED:
        feasible, y = _primal_feasibility(backend, A, b, dims, settings)
        if feasible is Status.INFEASIBLE:
            assert y is not None
            status = Status.INFEASIBLE
            out = Outcome(np.full_like(out.x, np.nan), y, np.full_like(out.s, np.nan),
                          status, out.iterations)
        elif feasible is not Status.SOLVED:
            status = Status.INACCURATE
    if status is Status.INACCURATE and out.status is not Status.INACCURATE:
        # a claim not shown, and no iterate (SCS returns NaN): start again from 0
        out = Outcome(np.zeros_like(out.x), np.zeros_like(out.y), np.zeros_like(out.s),
                      status, out.iterations)
    return out, status, out.iterations, seconds


# A primal point is feasible for an unboundedness claim where b − Ax is within FEASIBLE_TOL of
# K (max norm, relative to the largest of |A||x| and |b|).
FEASIBLE_TOL = 1e-6


def _primal_feasibility(backend: Backend, A: Any, b: np.ndarray, dims: ConeDims,
                        settings: dict) -> tuple[Status, np.ndarray | None]:
    """Whether Ax + s = b, s ∈ K has a solution: the backend solves it with the objective 0.
    SOLVED where its point x leaves b − Ax within FEASIBLE_TOL of K, INFEASIBLE (with the
    certificate ŷ) where `infeasibility_certified`, INACCURATE where neither is shown."""
    n = A.shape[1]
    try:
        out = backend.solve(A, b, np.zeros(n), dims, settings)
    except BaseException as exc:  # noqa: BLE001 - nothing shown
        if not solver_failure(exc):
            raise
        return Status.INACCURATE, None
    if out.status is Status.INFEASIBLE and infeasibility_certified(A, b, out.y, dims):
        return Status.INFEASIBLE, out.y
    if out.status is Status.SOLVED and np.all(np.isfinite(out.x)):
        M = _scipy(A)
        r = b - M @ out.x
        gap = np.abs(r - project(r, dims)).max(initial=0.0)
        size = max(float((abs(M) @ np.abs(out.x)).max(initial=0.0)),
                   float(np.abs(b).max(initial=0.0)))
        if gap <= FEASIBLE_TOL * size:
            return Status.SOLVED, None
    return Status.INACCURATE, None


def _solve_many(backend: Any, matrices: Sequence[Any], b: np.ndarray, c: np.ndarray,
                dims: ConeDims, settings: dict, quadratic: Sequence[Any] | None
                ) -> SolveResult:
    """The batch in one call of a batched backend's ``solve_many``; where that call fails as
    a whole, one instance at a time, so that one bad instance never loses the others. Each
    instance's seconds are the batch's share."""
    B = b.shape[0]
    t0 = time.perf_counter()
    try:
        out = backend.solve_many(matrices, b, c, dims, settings, quadratic)
    except BaseException as exc:  # noqa: BLE001 - retried instance by instance below
        if not solver_failure(exc):
            raise
        if B == 1:
            return SolveResult(np.full((1, c.shape[1]), np.nan), np.full_like(b, np.nan),
                               np.full_like(b, np.nan), [Status.FAILED], np.zeros(1, int),
                               np.array([time.perf_counter() - t0]))
        return SolveResult.join([
            _solve_many(backend, pick(matrices, np.array([i])), b[i : i + 1], c[i : i + 1],
                        dims, settings, None if quadratic is None
                        else pick(quadratic, np.array([i])))
            for i in range(B)])
    share = (time.perf_counter() - t0) / B
    status = list(out.status)
    x, y, s = out.x, out.y, out.s
    for i in range(B):  # infeasibility/unboundedness claims, verified
        if status[i] in (Status.INFEASIBLE, Status.UNBOUNDED):
            o, status[i], _, _ = _checked(
                Outcome(x[i], y[i], s[i], status[i], int(out.iterations[i])),
                matrices[i], b[i], c[i], dims, None if quadratic is None else quadratic[i],
                share, backend, settings)
            x[i], y[i], s[i] = o.x, o.y, o.s
    return SolveResult(x, y, s, status, np.asarray(out.iterations, dtype=int),
                       np.full(B, share))


def solve_batch(backend: Backend, matrices: Sequence[Any], b: np.ndarray, c: np.ndarray,
                dims: ConeDims, settings: dict, quadratic: Sequence[Any] | None = None,
                warm: tuple | None = None, shared: Any = None) -> SolveResult:
    """Solve min ½xᵀPx + cᵀx s.t. Ax + s = b, s ∈ K for every instance with ``backend``.

    ``matrices`` holds each instance's A and ``quadratic`` its P (upper triangle), or is None
    for P = 0, both CSC (SciPy matrices or `compile.CSC` arrays);
    ``warm`` optional starting points (x, y, s), each (B, ·); ``shared`` the backend's state
    where every instance has the same A and P (`Backend.share`).
    Infeasibility/unboundedness claims count only if their certificate verifies
    (`infeasibility_certified`, `unboundedness_certified`); else the instance is
    INACCURATE with the origin as its iterate. Ctrl-C, also while the solver runs, raises
    KeyboardInterrupt and starts no further instance.
    """
    B, m = b.shape
    n = c.shape[1]
    if m == 0:  # unconstrained: give the solver one trivial row 0 = 0 (SCS needs a cone)
        matrices = [sp.csc_matrix((1, n))] * B
        b, dims = np.zeros((B, 1)), ConeDims(zero=1)
        warm = None if warm is None else (warm[0], np.zeros((B, 1)), np.zeros((B, 1)))
        shared = None
    try:
        if hasattr(backend, "solve_many"):  # a batched solver: one call for the batch
            res = _solve_many(backend, matrices, b, c, dims, settings, quadratic)
            res.y, res.s = res.y[:, :m], res.s[:, :m]
            return res
        jobs = [(backend, matrices[i], b[i], c[i], dims, settings,
                 None if quadratic is None else quadratic[i],
                 None if warm is None else (warm[0][i], warm[1][i], warm[2][i]), shared)
                for i in range(B)]
        results = parallel_map(lambda j: _solve_one(*j), jobs)
    except KeyboardInterrupt:
        # the solver took the SIGINT that Python delivers to the main thread: pass it on
        if threading.current_thread() is not threading.main_thread():
            _thread.interrupt_main()
        raise
    x = np.full((B, n), np.nan)
    y = np.full((B, m), np.nan)
    s = np.full((B, m), np.nan)
    got = [(i, r[0]) for i, r in enumerate(results) if r[0] is not None]
    if got:  # (one copy per array, not three per instance)
        at = [i for i, _ in got]
        x[at] = np.stack([o.x for _, o in got])
        y[at] = np.stack([o.y[:m] for _, o in got])
        s[at] = np.stack([o.s[:m] for _, o in got])
    return SolveResult(
        x=x, y=y, s=s,
        status=[r[1] for r in results],
        iterations=np.array([r[2] for r in results]),
        seconds=np.array([r[3] for r in results]),
    )


# The SCS scales `calibrate_scale` tries.
SCALE_CANDIDATES = (1.0, 0.3, 3.0, 0.1, 10.0)


class ScaleCheck(NamedTuple):
    """More instances for `calibrate_scale` to check its ranking on: A (``matrices``), b, c
    (B, ·), P (``Ps``), and ``refines`` (their solver's results → (B,) bool: does refinement
    converge from each point)."""

    matrices: Sequence[Any]
    b: np.ndarray
    c: np.ndarray
    Ps: Sequence[Any] | None
    refines: Callable[[SolveResult], np.ndarray]


def calibrate_scale(backend: Backend, matrices: Sequence[Any], b: np.ndarray, c: np.ndarray,
                    dims: ConeDims, settings: dict, Ps: Sequence[Any] | None = None,
                    share: bool = False,
                    refines: Callable[[SolveResult], np.ndarray] | None = None,
                    check: ScaleCheck | None = None) -> float | None:
    """The SCS `scale` in SCALE_CANDIDATES that solves every instance of the batch
    (A = ``matrices``, b and c (B, ·), P = ``Ps``) in the fewest iterations in all (a
    deterministic count, not a timing), or None if it solves them all at none of them.
    Candidates are tried nearest SCS's default (1) first, and a tie goes to the one tried
    first: SCS counts iterations in steps of its convergence-check interval, so ties are
    common. With ``share`` (the instances share A and P, and a call shares the solver's
    workspaces: `Backend.share`) they are solved as such a call solves them: SCS's shared
    workspaces run without Anderson acceleration, which alone ranked the scales otherwise
    (softmax n = 1,000: 75 iterations at every candidate with it; without, 275 at 1 and 150
    at 10, the scale a call then runs at).

    With ``refines`` (the solver's results → (B,) bool: does refinement converge from each
    point), a scale from which refinement converges on every instance ranks above every one
    from which it does not: SCS's stopping test is normwise, and its point at the fewest
    iterations can be one Newton's method does not converge from, which then costs a futile
    refinement and a tight solve. With ``check`` too, the scales so ranked are checked in
    turn on its instances, and the first that solves them all with refinement converging is
    taken (where none does, the first ranked): one instance's ranking can rest on a margin
    that others lack (the geometric-mean budget at n = 100: scale 1 solves in the fewest
    iterations, refinement stalled from it on every instance, 390 ms an instance; scale 3
    ranked first on the calibration's instance and stalled on 3 of 8 others, 140 ms; scale
    10, 10 ms)."""
    shared = backend.share(matrices[0], None if Ps is None else Ps[0], dims) if share else None
    ranked: list[tuple[tuple[bool, int], float]] = []
    for scale in SCALE_CANDIDATES:
        res = solve_batch(backend, matrices, b, c, dims, {**settings, "scale": scale}, Ps,
                          shared=shared)
        if all(st is Status.SOLVED for st in res.status):
            stalls = refines is not None and not bool(np.all(refines(res)))
            ranked.append(((stalls, int(res.iterations.sum())), scale))
    ranked.sort(key=lambda entry: entry[0])  # (stable: a tie keeps the order tried)
    if check is not None:
        for (stalls, _), scale in ranked:
            if stalls:
                break
            res = solve_batch(backend, check.matrices, check.b, check.c, dims,
                              {**settings, "scale": scale}, check.Ps, shared=shared)
            if all(st is Status.SOLVED for st in res.status) and bool(np.all(check.refines(res))):
                return scale
    return ranked[0][1] if ranked else None
