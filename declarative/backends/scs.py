"""SCS behind the solver seam (the default backend).

SCS (O'Donoghue, Chu, Parikh, Boyd 2016, *Conic optimization via operator splitting and
homogeneous self-dual embedding*; with P, SCS 3) is a first-order method: at our loose
default tolerance it lands in the basin of Newton refinement (refine.py), which takes the
solution to machine precision. `ConeDims` follows SCS's own cone order and conventions, so
the data go to SCS as they are.
"""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
import scs

from declarative.cones import ConeDims
from declarative.errors import ProblemError
from declarative.solve import Outcome, Status, check_settings

# SCS 3 status values (scs/include/glbopts.h), as the installed scs exports them.
SCS_SOLVED: int = scs.SOLVED
SCS_SOLVED_INACCURATE: int = scs.SOLVED_INACCURATE
SCS_UNBOUNDED: int = scs.UNBOUNDED
SCS_INFEASIBLE: int = scs.INFEASIBLE
SCS_SIGINT: int = scs.SIGINT
SCS_UNBOUNDED_INACCURATE: int = scs.UNBOUNDED_INACCURATE
SCS_INFEASIBLE_INACCURATE: int = scs.INFEASIBLE_INACCURATE

# SCS status_val → ours; any other value (failed, indeterminate, ...) is Status.FAILED.
# SCS's certificates, its inaccurate ones and its exact ones alike, are ours only once the
# seam verifies them (solve.py): SCS's own test reads the equilibrated program, where a
# strictly convex P can sit far below c (the projection onto a 20-D polytope, every parameter
# × 1e12: "unbounded" by SCS at eps_infeas 1e-9, though a projection never is).
_SCS_STATUS = {
    SCS_SOLVED: Status.SOLVED,
    SCS_SOLVED_INACCURATE: Status.INACCURATE,
    SCS_UNBOUNDED: Status.UNBOUNDED,
    SCS_INFEASIBLE: Status.INFEASIBLE,
    SCS_UNBOUNDED_INACCURATE: Status.UNBOUNDED,
    SCS_INFEASIBLE_INACCURATE: Status.INFEASIBLE,
}

# SCS settings a user may pass through solver_args (SCS 3.x documentation).
SCS_SETTINGS = frozenset({
    "max_iters", "eps_abs", "eps_rel", "eps_infeas", "alpha", "rho_x", "scale",
    "adaptive_scale", "normalize", "acceleration_lookback", "acceleration_interval",
    "time_limit_secs", "linear_solver", "verbose", "write_data_filename", "log_csv_filename",
})

# Our defaults: SCS only has to land in the basin of Newton refinement, which then
# takes the solution to machine precision (see refine.py).
# SCS's `scale` (the primal/dual balance its ADMM starts from) decides how many iterations it
# needs, and the best value depends on the problem even once it is equilibrated; a layer
# calibrates it once (`solve.calibrate_scale`, Layer._calibrate) and keeps it in its `Tuning`.
SCS_DEFAULTS: dict[str, Any] = {"eps_abs": 1e-3, "eps_rel": 1e-3, "max_iters": 100_000,
                                "verbose": False}
DEFAULT_SCALE = 1.0
# SCS ≥ 3.3's "auto" linear solver is MKL Pardiso where the wheel bundles it (x86-64 Linux).
# QDLDL, SCS's own sparse LDLᵀ, is faster on our problems (BENCHMARKS.md) and makes the
# results independent of how the wheel was built.
if hasattr(scs, "LinearSolver"):
    SCS_DEFAULTS["linear_solver"] = "qdldl"

# SCS's dense linear solver where its KKT matrix is at least this full, up to this size.
DENSE_KKT_FILL = 0.2
DENSE_KKT_MAX = 1000


def linear_solver(n: int, m: int, nnz: int) -> str:
    """SCS's linear solver for a problem with n variables, m constraints and nnz stored
    entries in A and P: dense Cholesky where SCS's KKT matrix (n + m)² is dense enough and
    small, else QDLDL (BENCHMARKS.md: the OptNet QP's KKT matrix is 27% dense)."""
    N = n + m
    dense = (2 * nnz + N) >= DENSE_KKT_FILL * N * N and N <= DENSE_KKT_MAX
    return "cpu_dense" if dense and _native_scs({"linear_solver": "cpu_dense"}) else "qdldl"


# SCS's C extension modules by linear solver, called without SCS's Python wrapper (see
# _native_scs) in the SCS releases whose extension signature this module was tested against.
_NATIVE_MODULES = {"qdldl": "_scs_direct", "cpu_dense": "_scs_dense"}
NATIVE_SCS_VERSIONS = ((3, 2), (3, 3))
_native_ok: dict[str, object] = {}


def _scs_version() -> tuple[int, int]:
    try:
        major, minor = str(scs.__version__).split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return (0, 0)


def _native_scs(settings: Mapping[str, Any]) -> Any:
    """SCS's C extension module for the settings' linear solver (QDLDL or dense Cholesky),
    to be called without SCS's Python wrapper, or None.

    The wrapper validates SciPy matrices and picks a linear solver on every construction,
    which costs as much as a small solve (BENCHMARKS.md). Its C extensions take
    the CSC arrays directly; they are private, so they are used only in the SCS releases
    listed in NATIVE_SCS_VERSIONS and after a self-test on a tiny LP, else the public
    `scs.SCS` is.
    """
    ls = settings.get("linear_solver", "qdldl")
    name = _NATIVE_MODULES.get(getattr(ls, "value", ls))
    if name is None or _scs_version() not in NATIVE_SCS_VERSIONS:
        return None
    if name not in _native_ok:
        try:  # min x s.t. x ≥ 1: x = 1
            module = importlib.import_module(f"scs.{name}")
            sol = module.SCS((1, 1), np.array([-1.0]), np.array([0], dtype=np.int32),
                             np.array([0, 1], dtype=np.int32), None, None, None,
                             np.array([-1.0]), np.array([1.0]), {"l": 1},
                             eps_abs=1e-9, eps_rel=1e-9, verbose=False).solve(True, None, None,
                                                                              None)
            ok = sol["info"]["status_val"] == SCS_SOLVED and abs(sol["x"][0] - 1.0) < 1e-6
            _native_ok[name] = module if ok else None
        except Exception:  # noqa: BLE001 - any mismatch: use the public wrapper
            _native_ok[name] = None
    return _native_ok[name]


def _scs_solver(A: Any, b: np.ndarray, c: np.ndarray, cone: dict, settings: dict,
                P: Any = None) -> Any:
    """An SCS solver for one instance; A and P are CSC (SciPy, or `compile.CSC` arrays)."""
    native = _native_scs(settings)
    if native is not None:
        kw = {k: v for k, v in settings.items() if k != "linear_solver"}
        Pargs = (None, None, None) if P is None else (P.data, P.indices, P.indptr)
        return native.SCS(tuple(A.shape), A.data, A.indices, A.indptr, *Pargs, b, c, cone,
                          **kw)
    data = {"A": A if sp.issparse(A) else A.scipy(), "b": b, "c": c}
    if P is not None:
        data["P"] = P if sp.issparse(P) else P.scipy()
    return scs.SCS(data, cone, **settings)


# Settings that make an SCS workspace's solves independent of the solves before it (see
# SharedData): Anderson acceleration keeps its memory across solves, and the adaptive scale
# its last value. At our loose tolerance neither changes the iteration counts of the zoo.
_STATELESS = {"acceleration_lookback": 0, "adaptive_scale": False}


class SharedData:
    """SCS workspaces for instances that share A and P (only b and c depend on the
    parameters, e.g. sparsemax, softmax): SCS's setup (data scaling and the sparse LDLᵀ
    factorization of its KKT matrix) is done once per thread and settings, and each instance
    is an `update` of b and c and a cold-started solve.

    Each solve is a deterministic function of the instance alone: the workspace is always
    built from the same (b₀, c₀) = (0, 0) (SCS scales b and c by factors computed at setup),
    and solved with the `_STATELESS` settings. Each thread keeps the workspaces of its
    `WORKSPACES_PER_THREAD` most recently used settings (a workspace holds SCS's copy of the
    data and its factorization: ~1 MB for sparsemax n = 10,000, so a schedule of tolerances
    must not keep one per value). Pickles without the workspaces.
    """

    WORKSPACES_PER_THREAD = 4

    def __init__(self, A: Any, P: Any, b0: np.ndarray, c0: np.ndarray, cone: dict) -> None:
        self.A, self.P, self.b0, self.c0, self.cone = A, P, b0, c0, cone
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @staticmethod
    def applies(settings: Mapping[str, Any]) -> bool:
        """Not when the user chose acceleration or scale adaptation, or asked for files."""
        return not ({*_STATELESS, "write_data_filename", "log_csv_filename"} & set(settings))

    def solver(self, settings: dict) -> Any:
        """This thread's workspace for ``settings`` (made on first use; the least recently
        used one is dropped beyond WORKSPACES_PER_THREAD)."""
        spaces = self.workspaces()
        key = tuple(sorted(settings.items(), key=lambda kv: kv[0]))
        solver = spaces.get(key)
        if solver is None:
            solver = _scs_solver(self.A, self.b0, self.c0, self.cone,
                                 {**settings, **_STATELESS}, self.P)
            spaces[key] = solver
            while len(spaces) > self.WORKSPACES_PER_THREAD:
                spaces.popitem(last=False)
        else:
            spaces.move_to_end(key)
        return solver

    def workspaces(self) -> OrderedDict:
        """This thread's workspaces by settings, least recently used first."""
        spaces = getattr(self._local, "spaces", None)
        if spaces is None:
            spaces = self._local.spaces = OrderedDict()
        return spaces


def _check_interrupt(info: dict) -> None:
    """SCS catches SIGINT itself while it solves (and returns SCS_SIGINT): raise
    KeyboardInterrupt as Python would have."""
    if info["status_val"] == SCS_SIGINT:
        raise KeyboardInterrupt("SCS was interrupted (SIGINT)")


def _outcome(sol: dict, status: Status) -> Outcome:
    return Outcome(sol["x"], sol["y"], sol["s"], status, int(sol["info"]["iter"]))


# Spellings users bring from cvxpylayers, diffcp, SCS 2 and other solvers, each with what it
# is called here (or why it has no counterpart).
FOREIGN_OPTIONS = {
    "tol": "eps_abs and eps_rel (or eps for both)",
    "abstol": "eps_abs", "reltol": "eps_rel", "feastol": "eps_abs",
    "tol_gap_abs": "eps_abs", "tol_gap_rel": "eps_rel", "tol_feas": "eps_abs",
    "max_iter": "max_iters", "maxiter": "max_iters", "maxiters": "max_iters",
    "max_iterations": "max_iters",
    "use_indirect": "linear_solver (SCS 3's name for SCS 2's use_indirect)",
    "mode": "nothing: diffcp's derivative mode; declarative picks dense or iterative "
            "solves itself",
    "solve_method": "the solver= argument ('scs' or 'clarabel')",
    "solver": "the solver= argument ('scs' or 'clarabel'), not a solver_args entry",
    "n_jobs_forward": "nothing: instances run in parallel threads already",
    "n_jobs_backward": "nothing: instances run in parallel threads already",
    "warm_start": "nothing: declarative does not warm-start from earlier calls",
    "raise_on_error": "on_failure ('raise' or 'nan')",
}


class ScsBackend:
    """SCS behind the seam: `ConeDims` is SCS's own layout, so nothing is converted."""

    name = "scs"
    options = SCS_SETTINGS
    #: takes the `scale` and `linear_solver` that a layer's `Tuning` decides
    tunable: tuple[str, ...] = ("scale", "linear_solver")
    foreign: Mapping[str, str] = FOREIGN_OPTIONS

    def normalize(self, args: Mapping[str, Any]) -> dict:
        """``eps`` (the name cvxpylayers and diffcp users pass, from SCS 2) sets both of
        SCS 3's tolerances, eps_abs = eps_rel = eps; given with either of those it is
        ambiguous."""
        out = dict(args)
        if "eps" in out:
            both = sorted({"eps_abs", "eps_rel"} & set(out))
            if both:
                raise ProblemError(
                    f"solver options 'eps' and {both} both given: eps sets eps_abs = eps_rel; "
                    "give either eps, or eps_abs and eps_rel."
                )
            eps = out.pop("eps")
            out["eps_abs"] = out["eps_rel"] = eps
        return out

    def settings(self, args: Mapping[str, Any]) -> dict:
        check_settings(self, args)
        return {**SCS_DEFAULTS, **args}

    def tightened(self, settings: dict, eps: float) -> dict:
        return {**settings, "eps_abs": min(settings["eps_abs"], eps),
                "eps_rel": min(settings["eps_rel"], eps)}

    def share(self, A: Any, P: Any, dims: ConeDims) -> SharedData:
        m, n = A.shape
        data = A._replace(data=A.data.copy()) if hasattr(A, "_replace") else A.copy()
        return SharedData(data, P, np.zeros(m), np.zeros(n), dims.scs())

    def solve(self, A: Any, b: np.ndarray, c: np.ndarray, dims: ConeDims, settings: dict,
              P: Any = None, warm: tuple | None = None, shared: Any = None) -> Outcome:
        if shared is not None and warm is None and SharedData.applies(settings):
            try:
                solver = shared.solver(settings)
                solver.update(b, c)
                sol = solver.solve(False, None, None, None)
            except Exception:  # noqa: BLE001 - solved afresh below, as without a workspace
                sol = None
            if sol is not None:
                _check_interrupt(sol["info"])
                if sol["info"]["status_val"] == SCS_SOLVED:
                    return _outcome(sol, Status.SOLVED)
        solver = _scs_solver(A, b, c, dims.scs(), settings, P)
        if warm is not None and all(np.all(np.isfinite(w)) for w in warm):
            sol = solver.solve(True, warm[0], warm[1], warm[2])
        else:
            sol = solver.solve(True, None, None, None)
        info = sol["info"]
        _check_interrupt(info)
        status = _SCS_STATUS.get(info["status_val"], Status.FAILED)
        if status is Status.INACCURATE and info["iter"] >= settings["max_iters"]:
            status = Status.ITERATION_LIMIT
        return _outcome(sol, status)


SCS = ScsBackend()
