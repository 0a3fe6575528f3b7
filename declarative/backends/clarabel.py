"""Clarabel behind the solver seam.

Clarabel (Goulart, Chen 2024, *Clarabel: An interior-point solver for conic programs with
quadratic objectives*) solves the same program as SCS,

    min ½xᵀPx + qᵀx  s.t.  Ax + s = b,  s ∈ K,   dual z ∈ K*,  Px + q + Aᵀz = 0,

with the same signs, so x, y = z and s carry over. Two conventions differ from SCS's
(`ConeDims`' layout), and the rows of A and b are mapped, once per cone layout, by an
invertible block-diagonal T: Clarabel solves (TA, Tb) with s' = Ts ∈ K' and returns
z' ∈ K'*, so s = T⁻¹s' and y = Tᵀz'.

- PSD: SCS stores the lower triangle by columns, Clarabel the upper triangle by columns
  (both with off-diagonals scaled by √2): T permutes the rows of each PSD block.
- Dual cones Clarabel lacks: the dual exponential cone K*_exp is T⁻¹K_exp with
  T(u, v, w) = (u − v, −u, w) (from −u·e^{v/u} ≤ e·w, u < 0, with y = −u, x = −v − y);
  the dual power cone K*_α (negative exponent in `ConeDims.power`) is T⁻¹K_α with
  T = diag(1/α, 1/(1 − α), 1).

Interior-point iterates cannot be warm-started, so ``warm`` is ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import clarabel
import numpy as np
import scipy.sparse as sp

from declarative.cones import ConeDims
from declarative.errors import ProblemError
from declarative.solve import Outcome, Status, check_settings

# Clarabel's statuses (its public `SolverStatus`) → ours, and whether an infeasibility or
# unboundedness claim is exact. Its "almost" claims are verified by the seam like SCS's
# inaccurate ones; its almost-solved and stalled points go to refinement (INACCURATE), which
# certifies them or not.
_STATUS: dict[Any, tuple[Status, bool]] = {
    clarabel.SolverStatus.Solved: (Status.SOLVED, True),
    clarabel.SolverStatus.AlmostSolved: (Status.INACCURATE, True),
    clarabel.SolverStatus.PrimalInfeasible: (Status.INFEASIBLE, True),
    clarabel.SolverStatus.AlmostPrimalInfeasible: (Status.INFEASIBLE, False),
    clarabel.SolverStatus.DualInfeasible: (Status.UNBOUNDED, True),
    clarabel.SolverStatus.AlmostDualInfeasible: (Status.UNBOUNDED, False),
    clarabel.SolverStatus.MaxIterations: (Status.ITERATION_LIMIT, True),
    clarabel.SolverStatus.MaxTime: (Status.INACCURATE, True),
    clarabel.SolverStatus.InsufficientProgress: (Status.INACCURATE, True),
}

# Clarabel's settings (attributes of `clarabel.DefaultSettings`) a user may pass.
CLARABEL_SETTINGS = frozenset(
    name for name in dir(clarabel.DefaultSettings())
    if not name.startswith("_") and not callable(getattr(clarabel.DefaultSettings(), name))
)
# Ours over Clarabel's own defaults (its 1e-8 tolerances: refinement finishes the job).
CLARABEL_DEFAULTS: dict[str, Any] = {"verbose": False}
# The stopping tolerances `tightened` lowers.
_TOLERANCES = ("tol_gap_abs", "tol_gap_rel", "tol_feas")


@functools.lru_cache(maxsize=64)
def _psd_order(k: int) -> np.ndarray:
    """Clarabel's svec entry p of order k is SCS's entry order[p]."""
    a, b = np.triu_indices(k)       # SCS: lower triangle (b ≥ a) by column a, i.e. (a, b)
    scs_pos = {(int(i), int(j)): p for p, (i, j) in enumerate(zip(b, a, strict=True))}
    # Clarabel: upper triangle (i ≤ j) by column j, i.e. entry (i, j), i ≤ j, as SCS's (j, i)
    return np.array([scs_pos[(j, i)] for j in range(k) for i in range(j + 1)], dtype=np.int64)


class _Layout:
    """Clarabel's cones for a `ConeDims`, and the row map T (None where it is the identity)
    with T⁻¹ and Tᵀ."""

    def __init__(self, dims: ConeDims) -> None:
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
        # (T, T⁻¹) per block, in `ConeDims`' order
        eye = sp.identity(3, format="csr")
        blocks: list[tuple[sp.spmatrix, sp.spmatrix]] = []
        plain = dims.zero + dims.nonneg + sum(dims.soc)
        blocks.append((sp.identity(plain, format="csr"),) * 2)
        identity = True
        for k in dims.psd:
            size = k * (k + 1) // 2
            order = _psd_order(k)
            perm = sp.csr_matrix((np.ones(size), (np.arange(size), order)), shape=(size, size))
            blocks.append((perm, perm.T.tocsr()))
            identity &= bool(np.all(order == np.arange(size)))
        blocks += [(eye, eye)] * dims.exp
        blocks += [(_EXP_DUAL, _EXP_DUAL_INV)] * dims.exp_dual
        identity &= dims.exp_dual == 0
        for a in dims.power:
            if a < 0:
                d = np.array([1.0 / -a, 1.0 / (1.0 + a), 1.0])
                blocks.append((sp.diags(d, format="csr"), sp.diags(1.0 / d, format="csr")))
                identity = False
            else:
                blocks.append((eye, eye))
        self.T: sp.csr_matrix | None = None
        self.T_inv: sp.csr_matrix | None = None
        self.T_t: sp.csr_matrix | None = None
        if not identity:
            self.T = sp.block_diag([t for t, _ in blocks], format="csr")
            self.T_inv = sp.block_diag([i for _, i in blocks], format="csr")
            self.T_t = self.T.T.tocsr()


# T(u, v, w) = (u − v, −u, w) and its inverse (a, b, c) ↦ (−b, −b − a, c).
_EXP_DUAL = sp.csr_matrix(np.array([[1.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
_EXP_DUAL_INV = sp.csr_matrix(np.array([[0.0, -1.0, 0.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]))


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
        status, certain = _STATUS.get(sol.status, (Status.FAILED, True))
        return Outcome(x, y, s, status, int(sol.iterations), certain)


CLARABEL = ClarabelBackend()
