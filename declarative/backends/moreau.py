"""Moreau behind the solver seam: a batched solver, one call for the whole batch.

Moreau (Barratt, Nobel, Diamond; ``pip install moreau``) solves the program SCS and Clarabel
solve,

    min ½xᵀPx + qᵀx  s.t.  Ax + s = b,  s ∈ K,   dual z ∈ K*,  Px + q + Aᵀz = 0,

for a batch of instances sharing the sparsity of P and A, in compiled code: an
interior-point method (``method="ipm"``), or for programs with only zero and nonnegative
cones a dual active-set method (``method="active_set"``). Its cones come in SCS's order; its
PSD triangle order (the upper triangle by columns, as Clarabel's) and its lack of dual
exponential and power cones are bridged by a row map of A and b (`_rows.RowMap`). x, y = z
and s carry over.

It takes A and the full symmetric P in CSR form; the template's CSC values are permuted once
per pattern. Moreau's solver object is built from the patterns, the cones, the settings and
the batch size, and takes each call's values in `setup`: it is kept for the next call of the
same shape, within a budget for the workspaces kept (`_Compiled`; a solve does not depend on
the solves before it, which the tests check bitwise). A batch that Moreau rejects as a whole (an
exception) is solved again one instance at a time, so that one bad instance never loses the
others.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import moreau
import numpy as np
import scipy.sparse as sp

from declarative.backends._rows import row_map
from declarative.compile import CSCBatch
from declarative.cones import ConeDims
from declarative.errors import ProblemError
from declarative.solve import BatchOutcome, Outcome, Status, check_settings
from declarative.tuning import MOREAU_METHODS

# Moreau's statuses (its public `SolverStatus`) → ours. Its infeasibility and
# unboundedness claims, exact and "almost" alike, are verified by the seam (solve.py).
_STATUS: dict[Any, Status] = {
    moreau.SolverStatus.Solved: Status.SOLVED,
    moreau.SolverStatus.AlmostSolved: Status.INACCURATE,
    moreau.SolverStatus.PrimalInfeasible: Status.INFEASIBLE,
    moreau.SolverStatus.AlmostPrimalInfeasible: Status.INFEASIBLE,
    moreau.SolverStatus.DualInfeasible: Status.UNBOUNDED,
    moreau.SolverStatus.AlmostDualInfeasible: Status.UNBOUNDED,
    moreau.SolverStatus.MaxIterations: Status.ITERATION_LIMIT,
    moreau.SolverStatus.MaxTime: Status.INACCURATE,
    moreau.SolverStatus.InsufficientProgress: Status.INACCURATE,
    moreau.SolverStatus.NumericalError: Status.INACCURATE,
}

# Its methods, by the name our ``method`` setting takes.
METHODS = MOREAU_METHODS
# Settings a user may pass: ours (``method``), Moreau's top-level ones, and the fields of its
# `IPMSettings` and `ActiveSetSettings` (their names do not collide).
_TOP = ("max_iter", "time_limit")
_IPM = frozenset(moreau.IPMSettings.model_fields)
_ACTIVE = frozenset(moreau.ActiveSetSettings.model_fields)
MOREAU_SETTINGS = frozenset({"method", *_TOP}) | _IPM | _ACTIVE
# The stopping tolerances `tightened` lowers (the IPM's; the active-set method's are exact
# up to its pivoting tolerances).
_TOLERANCES = ("tol_gap_abs", "tol_gap_rel", "tol_feas")


# CSR patterns kept (one per layer and cone layout); beyond, the cache starts again.
PATTERNS_KEPT = 64
# Compiled solvers kept between calls (the most recently used), and the most their batch
# sizes times (n + m)² may add up to: a solver's workspace holds a factorization per instance
# (the OptNet QP, n + m = 210: 137 MB at batch 512, 22.6M such entries; 826 MB at 4096),
# which a kept solver holds between calls. Building one costs 0.4 ms (a 2-D polytope, batch
# 64) to 17 ms (the QP, batch 512), and its first `setup` writes into memory it does not have
# yet (the QP at batch 512: 141 ms, against 80 ms in a kept one).
COMPILED_KEPT = 4
COMPILED_ENTRIES_MAX = 32_000_000


class _Pattern:
    """A's and P's CSC patterns as Moreau's CSR ones: the CSR structure and, per pattern, the
    permutation taking CSC values to CSR order (P's from its stored upper triangle to the
    full symmetric matrix)."""

    def __init__(self, A: Any, P: Any) -> None:
        m, n = A.shape
        A = sp.csc_matrix((np.arange(1, A.data.size + 1, dtype=float), A.indices, A.indptr),
                          shape=(m, n))
        Acsr = A.tocsr()
        Acsr.sort_indices()
        self.A_indptr, self.A_indices = Acsr.indptr, Acsr.indices
        self.A_take = Acsr.data.astype(np.int64) - 1
        if P is None or P.data.size == 0:
            self.P_indptr, self.P_indices = np.zeros(n + 1, dtype=np.int64), np.zeros(0, int)
            self.P_take = np.zeros(0, dtype=np.int64)
        else:
            U = sp.csc_matrix((np.arange(1, P.data.size + 1, dtype=float), P.indices,
                               P.indptr), shape=(n, n))
            strict = sp.triu(U, 1)
            full = (U + strict.T).tocsr()
            full.sort_indices()
            self.P_indptr, self.P_indices = full.indptr, full.indices
            self.P_take = full.data.astype(np.int64) - 1


class _Compiled:
    """Moreau's compiled solvers kept for reuse, by (patterns, cones, settings, batch size):
    the COMPILED_KEPT most recently used, within COMPILED_ENTRIES_MAX of their sizes
    together. A solver is used by one call at a time: a call that finds it in use (another
    thread) builds its own for the call. One whose call raised is dropped. Before a fork the
    solvers not in use are freed (`_free_before_fork`); in the child the locks are new (one
    another thread held at the fork stays held there) and nothing kept is used."""

    def __init__(self) -> None:
        # key ↦ (lock, solver, size)
        self._kept: OrderedDict[tuple, tuple[threading.Lock, Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        _ALL_COMPILED.add(self)

    @contextlib.contextmanager
    def use(self, key: tuple | None, build: Callable[[], Any], size: int = 0) -> Iterator[Any]:
        """A solver for ``key`` (None, or a ``size`` over COMPILED_ENTRIES_MAX: not kept),
        built by ``build`` where none is kept."""
        if size > COMPILED_ENTRIES_MAX:
            key = None
        entry = None
        if key is not None:
            with self._lock:
                entry = self._kept.get(key)
                if entry is not None:
                    self._kept.move_to_end(key)
        if entry is None:
            entry = (threading.Lock(), build(), size)
            if key is not None:
                with self._lock:
                    self._kept[key] = entry
                    while len(self._kept) > COMPILED_KEPT or sum(
                            e[2] for e in self._kept.values()) > COMPILED_ENTRIES_MAX:
                        self._kept.popitem(last=False)
        lock, solver, _ = entry
        if not lock.acquire(blocking=False):
            yield build()
            return
        try:
            yield solver
        except BaseException:  # a solver that failed mid-call is not used again
            with self._lock:
                if key is not None and self._kept.get(key) is entry:
                    del self._kept[key]
            raise
        finally:
            lock.release()


_ALL_COMPILED: weakref.WeakSet[_Compiled] = weakref.WeakSet()
# Solvers that a forked child inherited in use by another thread of the parent: never used
# again, and never freed either (freeing one in the child waits on the parent's threads)
_INHERITED: list = []


def _free_before_fork() -> None:
    """A live Moreau solver owns worker threads, which a forked child does not get: a child
    that then solves (even with a solver of its own) waits on them forever. Free the kept
    solvers no call is using before the fork (the parent builds them again when needed). A
    solver in use by another thread at the fork is alive in the child as it would be without
    any kept."""
    for compiled in list(_ALL_COMPILED):
        if not compiled._lock.acquire(timeout=1.0):  # (held only for a dictionary's update)
            continue
        try:
            for key, (lock, _, _) in list(compiled._kept.items()):
                if lock.acquire(blocking=False):
                    del compiled._kept[key]
                    lock.release()
        finally:
            compiled._lock.release()


def _forget_after_fork() -> None:
    for compiled in list(_ALL_COMPILED):
        _INHERITED.extend(compiled._kept.values())
        compiled._lock = threading.Lock()
        compiled._kept = OrderedDict()


os.register_at_fork(before=_free_before_fork, after_in_child=_forget_after_fork)


def _settings_key(settings: Mapping[str, Any]) -> tuple | None:
    """The settings as a hashable key, or None where a value is not hashable."""
    key = tuple(sorted(settings.items()))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _key(M: Any) -> tuple:
    """A sparsity pattern's identity: its index arrays' contents."""
    return (M.shape, M.indptr.tobytes(), M.indices.tobytes())


class MoreauBackend:
    """Moreau behind the seam: every instance of a batch in one call."""

    name = "moreau"
    options = MOREAU_SETTINGS
    tunable: tuple[str, ...] = ("method",)
    foreign: Mapping[str, str] = {
        "eps": "tol_gap_abs, tol_gap_rel and tol_feas", "eps_abs": "tol_gap_abs",
        "eps_rel": "tol_gap_rel", "max_iters": "max_iter", "time_limit_secs": "time_limit",
        "solver": "the solver= argument, not a solver_args entry; Moreau's own algorithm is "
                  "method='ipm' or 'active_set'",
    }

    def __init__(self) -> None:
        self._patterns: dict[tuple, _Pattern] = {}
        self._compiled = _Compiled()

    def __reduce__(self) -> tuple:
        """Copied and pickled as a reference to the process's own backend: its compiled
        solvers and their locks are state of this process, not data (a layer whose resolved
        options hold it deep-copies and pickles)."""
        from declarative.backends import backend

        return (backend, (self.name,))

    def check_program(self, dims: ConeDims, settings: Mapping[str, Any]) -> None:
        """`ProblemError` where the active-set method is asked for on cones other than zero
        and nonnegative ones."""
        if settings.get("method") == "active_set" and not dims.polyhedral:
            raise ProblemError("Moreau's active-set method takes only zero and nonnegative "
                               f"cones; this program has {dims.kinds()}. Use method='ipm'.")

    def normalize(self, args: Mapping[str, Any]) -> dict:
        """Moreau's settings are taken by their own names only."""
        return dict(args)

    def settings(self, args: Mapping[str, Any]) -> dict:
        check_settings(self, args)
        method = args.get("method")
        if method is not None and method not in METHODS:
            raise ProblemError(f"Moreau's method must be one of {list(METHODS)}, got "
                               f"{method!r}.")
        return dict(args)

    def tightened(self, settings: dict, eps: float) -> dict:
        base = moreau.IPMSettings()
        return {**settings, "method": "ipm",
                **{k: min(settings.get(k, getattr(base, k)), eps) for k in _TOLERANCES}}

    def share(self, A: Any, P: Any, dims: ConeDims) -> None:
        return None

    def _moreau_settings(self, settings: dict, dims: ConeDims, batch: int) -> Any:
        method = settings.get("method") or "ipm"
        ipm = moreau.IPMSettings(**{k: v for k, v in settings.items() if k in _IPM})
        active = moreau.ActiveSetSettings(**{k: v for k, v in settings.items()
                                             if k in _ACTIVE})
        return moreau.Settings(device="cpu", solver=method, batch_size=batch,
                               ipm_settings=ipm, active_set_settings=active,
                               **{k: settings[k] for k in _TOP if k in settings})

    def _pattern(self, A: Any, P: Any, dims: ConeDims) -> tuple[_Pattern, tuple]:
        """The CSR patterns of A and P (as the program's cones order A's rows), and their
        key."""
        key = (_key(A), None if P is None else _key(P), dims)
        pat = self._patterns.get(key)
        if pat is None:
            if len(self._patterns) >= PATTERNS_KEPT:  # many layers in one process
                self._patterns.clear()
            rows = row_map(dims)
            if rows.T is not None:
                A = (rows.T @ _scipy(A)).tocsc()
            pat = self._patterns[key] = _Pattern(A, P)
        return pat, key

    def solve_many(self, matrices: Sequence[Any], b: np.ndarray, c: np.ndarray, dims: ConeDims,
                   settings: dict, quadratic: Sequence[Any] | None = None) -> BatchOutcome:
        """Every instance (A = ``matrices[i]``, b[i], c[i], P = ``quadratic[i]``) in one
        batched call; the instances share A's and P's sparsity (the template's)."""
        self.check_program(dims, settings)
        B, m = b.shape
        n = c.shape[1]
        rows = row_map(dims)
        P0 = None if quadratic is None else quadratic[0]
        pat, pat_key = self._pattern(matrices[0], P0, dims)
        if rows.T is not None:
            mats: Any = [(rows.T @ _scipy(M)).tocsc() for M in matrices]
            b = np.asarray(rows.T @ b.T).T
        else:
            mats = matrices
        A_vals = _values(mats)[:, pat.A_take]
        if pat.P_take.size:
            assert quadratic is not None
            P_vals = _values(quadratic)[:, pat.P_take]
        else:
            P_vals = np.zeros((B, 0))
        cones = moreau.Cones(num_zero_cones=dims.zero, num_nonneg_cones=dims.nonneg,
                             so_cone_dims=list(dims.soc),
                             num_exp_cones=dims.exp + dims.exp_dual,
                             power_alphas=[abs(a) for a in dims.power],
                             psd_dims=list(dims.psd))

        def build() -> Any:
            return moreau.CompiledSolver(
                n=n, m=m, P_row_offsets=pat.P_indptr, P_col_indices=pat.P_indices,
                A_row_offsets=pat.A_indptr, A_col_indices=pat.A_indices, cones=cones,
                settings=self._moreau_settings(settings, dims, B))

        skey = _settings_key(settings)
        with self._compiled.use(None if skey is None else (pat_key, skey, B), build,
                                B * (n + m) ** 2) as solver:
            solver.setup(P_vals, A_vals)
            sol = solver.solve(np.ascontiguousarray(c, dtype=float),
                               np.ascontiguousarray(b, dtype=float))
            info = solver.info
            statuses = [_STATUS.get(st, Status.FAILED) for st in info.status]
            iters = np.array(np.broadcast_to(np.asarray(info.iterations, dtype=int), (B,)))
            # copies, made before another call may use the solver
            x, y, s = (np.array(v, dtype=float).reshape(B, -1) for v in (sol.x, sol.z, sol.s))
        if rows.T is not None:
            assert rows.T_t is not None and rows.T_inv is not None
            y, s = np.array(rows.T_t @ y.T).T, np.array(rows.T_inv @ s.T).T
        return BatchOutcome(x, y, s, statuses, iters)

    def solve(self, A: Any, b: np.ndarray, c: np.ndarray, dims: ConeDims, settings: dict,
              P: Any = None, warm: tuple | None = None, shared: Any = None) -> Outcome:
        """One instance (a batch of one; ``warm`` is ignored)."""
        out = self.solve_many([A], b[None], c[None], dims, settings, None if P is None else [P])
        return Outcome(out.x[0], out.y[0], out.s[0], out.status[0], int(out.iterations[0]))


def _values(matrices: Any) -> np.ndarray:
    """The stored values of a batch of matrices with one pattern, stacked (B, nnz)."""
    if isinstance(matrices, CSCBatch):
        return np.asarray(matrices.data, dtype=float)
    return np.stack([np.asarray(M.data, dtype=float) for M in matrices])


def _scipy(M: Any) -> sp.csc_matrix:
    return M if sp.issparse(M) else M.scipy()


MOREAU = MoreauBackend()
