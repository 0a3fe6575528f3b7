"""Clarabel behind the solver seam.

Clarabel (Goulart, Chen 2024, *Clarabel: An interior-point solver for conic programs with
quadratic objectives*) solves the same program as SCS,

    min ½xᵀPx + qᵀx  s.t.  Ax + s = b,  s ∈ K,   dual z ∈ K*,  Px + q + Aᵀz = 0,

with the same signs, so x, y = z and s carry over. Its PSD triangle order and its lack of dual
exponential and power cones are bridged by a row map of A and b (`_rows.RowMap`).

Interior-point iterates cannot be warm-started, so ``warm`` is ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import clarabel
import numpy as np
import scipy.sparse as sp

from declarative.backends._rows import RowMap
from declarative.cones import ConeDims
from declarative.errors import ProblemError
from declarative.solve import Outcome, Status, check_settings

# Clarabel's statuses (its public `SolverStatus`) → ours. Its infeasibility and
# unboundedness claims, exact and "almost" alike, are verified by the seam (solve.py); its
# almost-solved and stalled points go to refinement (INACCURATE), which certifies them or
# not.
_STATUS: dict[Any, Status] = {
    clarabel.SolverStatus.Solved: Status.SOLVED,
    clarabel.SolverStatus.AlmostSolved: Status.INACCURATE,
    clarabel.SolverStatus.PrimalInfeasible: Status.INFEASIBLE,
    clarabel.SolverStatus.AlmostPrimalInfeasible: Status.INFEASIBLE,
    clarabel.SolverStatus.DualInfeasible: Status.UNBOUNDED,
    clarabel.SolverStatus.AlmostDualInfeasible: Status.UNBOUNDED,
    clarabel.SolverStatus.MaxIterations: Status.ITERATION_LIMIT,
    clarabel.SolverStatus.MaxTime: Status.INACCURATE,
    clarabel.SolverStatus.InsufficientProgress: Status.INACCURATE,
}

# Clarabel's settings (attributes of `clarabel.DefaultSettings`) a user may pass.
CLARABEL_SETTINGS = frozenset(
    name for name in dir(clarabel.DefaultSettings())
    if not name.startswith("_") and not callable(getattr(clarabel.DefaultSettings(), name))
)
# Ours over Clarabel's own defaults (its 1e-8 tolerances: refinement finishes the job).
# One thread per solve: the layer already spreads a batch over the cores, and Clarabel's own
# worker pool (used for PSD cones) does not survive a fork, so a forked child (a DataLoader
# worker) whose parent had solved an SDP would block in its first solve.
CLARABEL_DEFAULTS: dict[str, Any] = {"verbose": False, "max_threads": 1}
# The stopping tolerances `tightened` lowers.
_TOLERANCES = ("tol_gap_abs", "tol_gap_rel", "tol_feas")


class _Layout(RowMap):
    """Clarabel's cones for a `ConeDims`, and the row map T (`RowMap`)."""

    def __init__(self, dims: ConeDims) -> None:
        super().__init__(dims)
        cones: list[Any] = []
        if dims.zero:
            cones.append(clarabel.ZeroConeT(dims.zero))
        if dims.nonneg:
            cones.append(clarabel.NonnegativeConeT(dims.nonneg))
        cones += [clarabel.SecondOrderConeT(q) for q in dims.soc]
        cones += [clarabel.PSDTriangleConeT(k) for k in dims.psd]
        cones += [clarabel.ExponentialConeT() for _ in range(dims.exp + dims.exp_dual)]
        cones += [clarabel.PowerConeT(abs(a)) for a in dims.power]
        self.cones = cones


@functools.lru_cache(maxsize=64)
def _layout(dims: ConeDims) -> _Layout:
    for a in dims.power:
        if abs(a) in (0.0, 1.0):
            raise ProblemError(f"Clarabel takes power cones with exponent in (0, 1); got {a}.")
    return _Layout(dims)


def _scipy(M: Any) -> sp.csc_matrix:
    return M if sp.issparse(M) else M.scipy()


class ClarabelBackend:
    """Clarabel behind the seam: an interior-point method, to 1e-8 in tens of iterations."""

    name = "clarabel"
    options = CLARABEL_SETTINGS
    tunable: tuple[str, ...] = ()
    foreign: Mapping[str, str] = {
        "eps": "tol_gap_abs, tol_gap_rel and tol_feas", "eps_abs": "tol_gap_abs",
        "eps_rel": "tol_gap_rel", "eps_infeas": "tol_infeas_abs and tol_infeas_rel",
        "max_iters": "max_iter", "time_limit_secs": "time_limit",
        "solver": "the solver= argument ('scs' or 'clarabel'), not a solver_args entry",
    }

    def normalize(self, args: Mapping[str, Any]) -> dict:
        """Clarabel's settings are taken by their own names only."""
        if args.get("max_threads", 1) != 1:
            raise ProblemError(
                f"solver option max_threads={args['max_threads']!r} for solver 'clarabel': "
                "expected 1 (the default here), or leave it out. The layer spreads a batch "
                "over the cores itself, and Clarabel's own worker pool does not survive a "
                "fork: a forked child (a DataLoader worker) would block in its first solve.")
        return dict(args)

    def settings(self, args: Mapping[str, Any]) -> dict:
        check_settings(self, args)
        return {**CLARABEL_DEFAULTS, **args}

    def tightened(self, settings: dict, eps: float) -> dict:
        base = clarabel.DefaultSettings()
        return {**settings, **{k: min(settings.get(k, getattr(base, k)), eps)
                               for k in _TOLERANCES}}

    def share(self, A: Any, P: Any, dims: ConeDims) -> None:
        return None

    def solve(self, A: Any, b: np.ndarray, c: np.ndarray, dims: ConeDims, settings: dict,
              P: Any = None, warm: tuple | None = None, shared: Any = None) -> Outcome:
        layout = _layout(dims)
        A = _scipy(A)
        n = A.shape[1]
        P = sp.csc_matrix((n, n)) if P is None else _scipy(P)
        if layout.T is not None:
            A, b = (layout.T @ A).tocsc(), layout.T @ b
        options = clarabel.DefaultSettings()
        for key, value in settings.items():
            setattr(options, key, value)
        solver = clarabel.DefaultSolver(P.tocsc(), np.asarray(c, dtype=float), A.tocsc(),
                                        np.asarray(b, dtype=float), layout.cones, options)
        sol = solver.solve()
        x, y, s = (np.asarray(v, dtype=float) for v in (sol.x, sol.z, sol.s))
        if layout.T is not None:
            y, s = layout.T_t @ y, layout.T_inv @ s
        return Outcome(x, y, s, _STATUS.get(sol.status, Status.FAILED), int(sol.iterations))


CLARABEL = ClarabelBackend()
