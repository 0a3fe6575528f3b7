"""solve: every instance of a batch with SCS, in parallel threads, with a status each.

SCS releases the GIL while it works, so a thread pool scales across cores.
A failure (an exception, infeasibility, ...) is recorded for its instance and
never stops the others. Ctrl-C does: it raises KeyboardInterrupt and no further
instance is started.
"""

from __future__ import annotations

import _thread
import contextlib
import enum
import importlib
import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
import scs
from threadpoolctl import ThreadpoolController

from declarative.cones import ConeDims, project
from declarative.errors import ProblemError

T = TypeVar("T")
R = TypeVar("R")


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


def _scs_constant(name: str, documented: int) -> int:
    """SCS's exported status constant ``scs.<name>``, else its documented value."""
    return int(getattr(scs, name, documented))


# SCS 3 status values (scs/include/glbopts.h), as the installed scs exports them.
SCS_SOLVED = _scs_constant("SOLVED", 1)
SCS_SOLVED_INACCURATE = _scs_constant("SOLVED_INACCURATE", 2)
SCS_UNBOUNDED = _scs_constant("UNBOUNDED", -1)
SCS_INFEASIBLE = _scs_constant("INFEASIBLE", -2)
SCS_SIGINT = _scs_constant("SIGINT", -5)
SCS_UNBOUNDED_INACCURATE = _scs_constant("UNBOUNDED_INACCURATE", -6)
SCS_INFEASIBLE_INACCURATE = _scs_constant("INFEASIBLE_INACCURATE", -7)

# SCS status_val → ours; any other value (failed, indeterminate, ...) is Status.FAILED.
_SCS_STATUS = {
    SCS_SOLVED: Status.SOLVED,
    SCS_SOLVED_INACCURATE: Status.INACCURATE,
    SCS_UNBOUNDED: Status.UNBOUNDED,
    SCS_INFEASIBLE: Status.INFEASIBLE,
}
# SCS's inaccurate certificates: ours only once `verify_certificate` accepts them.
_SCS_UNCERTAIN = {
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
# needs, and the best value depends on the problem even once it is equilibrated (8 instances
# at eps 1e-3: sparsemax n = 100 takes 200 iterations at 1 and 775 at 0.1; softmax n = 100
# 400 at 10 and 600 at 1; the OptNet QP 200 at 0.1 and 550 at 1). A layer calibrates it once
# (`calibrate_scale`) on an instance made from its template alone (Layer._calibrate), so the
# choice does not depend on the data of any call; 1 where that fails.
SCS_DEFAULTS = {"eps_abs": 1e-3, "eps_rel": 1e-3, "max_iters": 100_000, "verbose": False}
DEFAULT_SCALE = 1.0
# SCS ≥ 3.3's "auto" linear solver is MKL Pardiso where the wheel bundles it (x86-64 Linux).
# On our problems QDLDL, SCS's own sparse LDLᵀ, is faster at every size measured: per SCS
# solve, OptNet QP (n = 50) 1.5 → 0.7 ms, sparsemax n = 100 0.33 → 0.21 ms, n = 10,000
# 47 → 22 ms; and it makes the results independent of how the wheel was built.
if hasattr(scs, "LinearSolver"):
    SCS_DEFAULTS["linear_solver"] = "qdldl"




@dataclass
class SolveResult:
    """Solutions of a batch, in SCS's variables: x (B, n), y and s (B, m)."""

    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    status: list[Status]
    iterations: np.ndarray
    seconds: np.ndarray


_PREFIX = "declarative-worker"
_CPUS = os.cpu_count() or 1  # os.cpu_count() costs ~15 µs a call here
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_CPUS,
                                       thread_name_prefix=_PREFIX)
        return _pool


_blas_libs: list | None = None
_blas_saved: list = []
_blas_depth = 0  # open single_threaded_blas contexts, all threads together
_blas_lock = threading.Lock()
_blas_own = threading.local()  # .depth: those of this thread (what survives a fork)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """A context in which BLAS/LAPACK run on one thread.

    Our dense systems are small and many; we parallelize across instances instead.
    Multithreaded BLAS on small matrices is slower, and on a loaded machine
    catastrophically so (seen: one 304×304 LU 70× slower). Nested and concurrent uses
    share one limit (it is process-wide), which is lifted when the last one exits. The
    BLAS libraries are found once (threadpoolctl); each library's thread count is then read
    and set directly (threadpoolctl's own `limit` re-inspects every library: ~15 µs).
    """
    global _blas_libs, _blas_saved, _blas_depth
    entered = False
    try:
        with _blas_lock:
            if _blas_libs is None:
                _blas_libs = ThreadpoolController().select(user_api="blas").lib_controllers
            _blas_depth += 1
            _blas_own.depth = getattr(_blas_own, "depth", 0) + 1
            entered = True
            if _blas_depth == 1:
                _blas_saved = [(lib, lib.num_threads) for lib in _blas_libs]
                for lib, threads in _blas_saved:
                    if threads != 1:
                        lib.set_num_threads(1)
        yield
    finally:
        if entered:
            with _blas_lock:
                _blas_own.depth -= 1
                _blas_depth -= 1
                if _blas_depth == 0:
                    _restore_blas()


def _restore_blas() -> None:
    for lib, threads in _blas_saved:
        if threads != 1:
            lib.set_num_threads(threads)


def _reset_after_fork() -> None:
    """In a forked child (a DataLoader worker, multiprocessing's "fork"), only the forking
    thread exists: the pool's workers are gone (work submitted to the inherited pool would
    never run) and a lock another thread held stays held. Start a new pool on demand, make
    new locks, and keep only the forking thread's own single_threaded_blas contexts
    (lifting the limit now if the parent's were all in other threads)."""
    global _pool, _pool_lock, _blas_lock, _blas_depth
    _pool = None
    _pool_lock = threading.Lock()
    _blas_lock = threading.Lock()
    own = getattr(_blas_own, "depth", 0)
    if own == 0 and _blas_depth > 0:
        _restore_blas()
    _blas_depth = own


os.register_at_fork(after_in_child=_reset_after_fork)


def _wait(futures: list[Future]) -> BaseException | None:
    """Wait for every future; the first exception any raised, or None."""
    first = None
    for fut in futures:
        try:
            fut.result()
        except BaseException as exc:  # noqa: BLE001 - collected, re-raised by the caller
            first = first or exc
    return first


def parallel_map(f: Callable[[T], R], items: list[T]) -> list[R]:
    """``[f(x) for x in items]`` across the shared thread pool, BLAS single-threaded.

    For work that releases the GIL (SCS, LAPACK). Each worker, the calling thread
    included, pulls the next index from a shared counter: one task per worker rather
    than one future per item (a future costs ~35 µs of hand-offs, more than a small
    solve), with dynamic load balancing. Once ``f`` raises anywhere, or the calling
    thread is interrupted (KeyboardInterrupt), no further item is started; the call
    returns when the items already started are done, raising the caller's exception, else
    the first worker's. Do not call from inside the pool.
    """
    n = len(items)
    workers = min(_CPUS, n)
    with single_threaded_blas():
        if workers <= 1 or threading.current_thread().name.startswith(_PREFIX):
            return [f(x) for x in items]
        out: list = [None] * n
        counter = itertools.count()
        stop = threading.Event()

        def work() -> None:
            try:
                while not stop.is_set() and (i := next(counter)) < n:
                    out[i] = f(items[i])
            except BaseException:
                stop.set()
                raise

        pending: list[Future] = []
        try:
            for _ in range(workers - 1):
                pending.append(_executor().submit(work))
            work()
        except BaseException:
            stop.set()
            _wait(pending)  # the items already started: their exceptions yield to ours
            raise
        error = _wait(pending)
        if error is not None:
            raise error
        return out


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
    "solve_method": "nothing: declarative solves with SCS",
    "solver": "nothing: declarative solves with SCS",
    "n_jobs_forward": "nothing: instances run in parallel threads already",
    "n_jobs_backward": "nothing: instances run in parallel threads already",
    "warm_start": "nothing: declarative does not warm-start from earlier calls",
    "raise_on_error": "on_failure ('raise' or 'nan')",
}


def normalize_solver_args(solver_args: dict) -> dict:
    """The user's options with ``eps`` spelled as SCS 3 spells it.

    ``eps`` (the name cvxpylayers and diffcp users pass, from SCS 2) sets both of SCS 3's
    tolerances, eps_abs = eps_rel = eps; given with either of those it is ambiguous.
    """
    args = dict(solver_args)
    if "eps" in args:
        both = sorted({"eps_abs", "eps_rel"} & set(args))
        if both:
            raise ProblemError(
                f"solver options 'eps' and {both} both given: eps sets eps_abs = eps_rel; "
                "give either eps, or eps_abs and eps_rel."
            )
        eps = args.pop("eps")
        args["eps_abs"] = args["eps_rel"] = eps
    return args


def scs_settings(solver_args: dict, ours: tuple[str, ...] = ()) -> dict:
    """Our SCS defaults overridden by the user's; reject unknown keys by name."""
    solver_args = normalize_solver_args(solver_args)
    unknown = sorted(set(solver_args) - SCS_SETTINGS)
    if unknown:
        hints = "".join(f" Instead of {k!r}: {FOREIGN_OPTIONS[k]}." for k in unknown
                        if k in FOREIGN_OPTIONS)
        raise ProblemError(
            f"unsupported solver option(s) {unknown}; expected SCS settings "
            f"{sorted(SCS_SETTINGS | {'eps'})} or refinement options {sorted(ours)}.{hints}"
        )
    return {**SCS_DEFAULTS, **solver_args}


# SCS's C extension modules by linear solver, each usable without SCS's Python wrapper once
# it passed a self-test (see _native_scs).
_NATIVE_MODULES = {"qdldl": "_scs_direct", "cpu_dense": "_scs_dense"}
_native_ok: dict[str, object] = {}


def _native_scs(settings: dict):
    """SCS's C extension module for the settings' linear solver (QDLDL or dense Cholesky),
    to be called without SCS's Python wrapper, or None.

    The wrapper validates SciPy matrices and picks a linear solver on every construction:
    with the SciPy objects it needs, ~40 µs (more with cold caches) per instance, more than
    a small solve. Its C extensions take the CSC arrays directly, with the same arguments
    in every SCS 3 release; each is used after a self-test on a tiny LP, else the wrapper is.
    """
    ls = settings.get("linear_solver", "qdldl")
    name = _NATIVE_MODULES.get(getattr(ls, "value", ls))
    if name is None:
        return None
    if name not in _native_ok:
        try:  # min x s.t. x ≥ 1: x = 1
            module = importlib.import_module(f"scs.{name}")
            sol = module.SCS((1, 1), np.array([-1.0]), np.array([0], dtype=np.int32),
                             np.array([0, 1], dtype=np.int32), None, None, None,
                             np.array([-1.0]), np.array([1.0]), {"l": 1},
                             eps_abs=1e-9, eps_rel=1e-9, verbose=False).solve(True, None, None,
                                                                              None)
            ok = sol["info"]["status_val"] == 1 and abs(sol["x"][0] - 1.0) < 1e-6
            _native_ok[name] = module if ok else None
        except Exception:  # noqa: BLE001 - any mismatch: use the public wrapper
            _native_ok[name] = None
    return _native_ok[name]


def linear_solver(n: int, m: int, nnz: int) -> str:
    """SCS's linear solver for a problem with n variables, m constraints and nnz stored
    entries in A and P: dense Cholesky where SCS's KKT matrix (n + m)² is dense enough and
    small, else QDLDL. OptNet QP (n = 100, m = 110, 27% dense): SCS setup + solve 0.78 ->
    0.52 ms; sparsemax (0.8%): 0.30 ms with QDLDL, 0.96 ms dense."""
    N = n + m
    dense = (2 * nnz + N) >= DENSE_KKT_FILL * N * N and N <= DENSE_KKT_MAX
    return "cpu_dense" if dense and _native_scs({"linear_solver": "cpu_dense"}) else "qdldl"


# SCS's dense linear solver where its KKT matrix is at least this full, up to this size.
DENSE_KKT_FILL = 0.2
DENSE_KKT_MAX = 1000


def _scs_solver(A, b, c, cone: dict, settings: dict, P=None):
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
    is an `update` of b and c and a cold-started solve. Sparsemax n = 100: setup 0.10 ms,
    solve 0.08 ms per instance.

    Each solve is a deterministic function of the instance alone: the workspace is always
    built from the same (b₀, c₀) (SCS scales b and c by factors computed at setup), and
    solved with the `_STATELESS` settings. Each thread keeps the workspaces of its
    `WORKSPACES_PER_THREAD` most recently used settings (a workspace holds SCS's copy of the
    data and its factorization: ~1 MB for sparsemax n = 10,000, so a schedule of tolerances
    must not keep one per value). Kept with the layer; pickles without the workspaces.
    """

    WORKSPACES_PER_THREAD = 4

    def __init__(self, A, P, b0: np.ndarray, c0: np.ndarray, cone: dict) -> None:
        self.A, self.P, self.b0, self.c0, self.cone = A, P, b0, c0, cone
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @staticmethod
    def applies(settings: dict) -> bool:
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


def _solve_one(A, b, c, cone: dict, settings: dict, P=None, warm=None, shared=None):
    t0 = time.perf_counter()
    if shared is not None and warm is None:
        try:
            solver = shared.solver(settings)
            solver.update(b, c)
            sol = solver.solve(False, None, None, None)
        except Exception:  # noqa: BLE001 - solved afresh below, as without a workspace
            sol = None
        if sol is not None:
            _check_interrupt(sol["info"])
            if sol["info"]["status_val"] == SCS_SOLVED:
                return sol, Status.SOLVED, int(sol["info"]["iter"]), time.perf_counter() - t0
    try:
        solver = _scs_solver(A, b, c, cone, settings, P)
        if warm is not None and all(np.all(np.isfinite(w)) for w in warm):
            sol = solver.solve(True, warm[0], warm[1], warm[2])
        else:
            sol = solver.solve(True, None, None, None)
    except Exception:  # noqa: BLE001 - one broken instance must not lose the batch
        return None, Status.FAILED, 0, time.perf_counter() - t0
    info = sol["info"]
    _check_interrupt(info)
    status = _SCS_STATUS.get(info["status_val"], Status.FAILED)
    if info["status_val"] in _SCS_UNCERTAIN:
        dims = ConeDims.from_scs(cone)
        claim = _SCS_UNCERTAIN[info["status_val"]]
        if claim is Status.INFEASIBLE and infeasibility_certified(A, b, sol["y"], dims):
            status = claim
        elif claim is Status.UNBOUNDED and unboundedness_certified(A, c, sol["x"], dims, P):
            status = claim
        else:  # no usable certificate and no iterate (SCS returns NaN): start again from 0
            status = Status.INACCURATE
            sol = {**sol, "x": np.zeros_like(sol["x"]), "y": np.zeros_like(sol["y"]),
                   "s": np.zeros_like(sol["s"])}
    elif status is Status.INACCURATE and info["iter"] >= settings["max_iters"]:
        status = Status.ITERATION_LIMIT
    return sol, status, int(info["iter"]), time.perf_counter() - t0


# A certificate of infeasibility (unboundedness) is accepted where it proves that every feasible
# point (every dual feasible point) is at least 1/CERTIFICATE_TOL times the data's own scale.
CERTIFICATE_TOL = 1e-6


def _max_abs(M: Any) -> float:
    data = M.data if M is not None else np.zeros(0)
    return float(np.abs(data).max(initial=0.0))


def _scipy(M: Any) -> sp.csc_matrix:
    return M if sp.issparse(M) else M.scipy()


def infeasibility_certified(A: Any, b: np.ndarray, y: np.ndarray, dims: ConeDims,
                            tol: float = CERTIFICATE_TOL) -> bool:
    """Is ŷ = Π_{K*}(y) a certificate that Ax + s = b, s ∈ K has no solution?

    ŷ ∈ K* with bᵀŷ < 0 and Aᵀŷ = r (Farkas' lemma for cones; the certificate SCS returns,
    O'Donoghue et al. 2016, *Conic optimization via operator splitting and homogeneous
    self-dual embedding*) gives, for every feasible x, 0 ≤ ŷᵀs = bᵀŷ − rᵀx, so
    ‖x‖₁ ≥ −bᵀŷ/‖r‖∞. Accepted when that bound is at least ‖b‖∞/(tol·max|Aᵢⱼ|): invariant
    to scaling A, b and y, unlike a test of ‖r‖ alone.
    """
    if not np.all(np.isfinite(y)):
        return False
    y = project(y, dims, dual=True)
    bty = float(b @ y)
    if not bty < 0:
        return False
    r = np.abs(_scipy(A).T @ y).max(initial=0.0)
    return bool(r * np.abs(b).max() <= tol * -bty * _max_abs(A))


def unboundedness_certified(A: Any, c: np.ndarray, x: np.ndarray, dims: ConeDims,
                            P: Any = None, tol: float = CERTIFICATE_TOL) -> bool:
    """Is x a certificate that min ½xᵀPx + cᵀx s.t. Ax + s = b, s ∈ K has no dual solution
    (the primal is unbounded below where feasible)?

    With ŝ = Π_K(−Ax), r = Ax + ŝ and e = Px (O'Donoghue et al. 2016; with P, SCS 3's
    quadratic form): cᵀx < 0, and for every dual feasible (w, y), Pw + Aᵀy + c = 0, y ∈ K*,
    −cᵀx ≤ ‖w‖₁‖e‖∞ + ‖y‖₁‖r‖∞. Accepted when ‖r‖∞ ≤ tol·(−cᵀx)·max|Aᵢⱼ|/‖c‖∞ and
    ‖e‖∞ ≤ tol·(−cᵀx)·max|Pᵢⱼ|/‖c‖∞: invariant to scaling A, P, c and x. ``P`` is the upper
    triangle, as SCS takes it.
    """
    if not np.all(np.isfinite(x)):
        return False
    ctx = float(c @ x)
    if not ctx < 0:
        return False
    cmax = np.abs(c).max()
    Ax = _scipy(A) @ x
    r = np.abs(Ax + project(-Ax, dims)).max(initial=0.0)
    if r * cmax > tol * -ctx * _max_abs(A):
        return False
    if P is None:
        return True
    Pu = _scipy(P)
    e = np.abs(Pu @ x + Pu.T @ x - Pu.diagonal() * x).max(initial=0.0)
    return bool(e * cmax <= tol * -ctx * _max_abs(P))


def solve_batch(matrices: list, b: np.ndarray, c: np.ndarray, dims: ConeDims,
                settings: dict, quadratic: list | None = None,
                warm: tuple | None = None, shared: SharedData | None = None) -> SolveResult:
    """Solve min ½xᵀPx + cᵀx s.t. Ax + s = b, s ∈ K for every instance with SCS.

    ``matrices`` holds each instance's A and ``quadratic`` its P (upper triangle), or is None
    for P = 0, both CSC (SciPy matrices or `compile.CSC` arrays);
    ``warm`` optional starting points (x, y, s), each (B, ·); ``shared`` workspaces where
    every instance has the same A and P (an instance they do not solve is solved afresh).
    SCS's inaccurate infeasibility/unboundedness claims count only if their certificate
    verifies (`infeasibility_certified`, `unboundedness_certified`); else the instance is
    INACCURATE with the origin as its iterate. Ctrl-C, also while SCS runs, raises
    KeyboardInterrupt and starts no further instance.
    """
    B, m = b.shape
    n = c.shape[1]
    cone = dims.scs()
    if m == 0:  # unconstrained: SCS needs a cone, so give it one trivial row 0 = 0
        matrices = [sp.csc_matrix((1, n))] * B
        b, cone = np.zeros((B, 1)), {"z": 1}
        warm = None if warm is None else (warm[0], np.zeros((B, 1)), np.zeros((B, 1)))
        shared = None
    if shared is not None and not SharedData.applies(settings):
        shared = None
    jobs = [(matrices[i], b[i], c[i], cone, settings,
             None if quadratic is None else quadratic[i],
             None if warm is None else (warm[0][i], warm[1][i], warm[2][i]), shared)
            for i in range(B)]
    try:
        results = parallel_map(lambda j: _solve_one(*j), jobs)
    except KeyboardInterrupt:
        # SCS took the SIGINT that Python delivers to the main thread: pass it on there too
        if threading.current_thread() is not threading.main_thread():
            _thread.interrupt_main()
        raise
    x = np.full((B, n), np.nan)
    y = np.full((B, m), np.nan)
    s = np.full((B, m), np.nan)
    for i, (sol, _, _, _) in enumerate(results):
        if sol is not None:
            x[i], y[i], s[i] = sol["x"], sol["y"][:m], sol["s"][:m]
    return SolveResult(
        x=x, y=y, s=s,
        status=[r[1] for r in results],
        iterations=np.array([r[2] for r in results]),
        seconds=np.array([r[3] for r in results]),
    )


# The SCS scales `calibrate_scale` tries, nearest SCS's default (1) first: SCS counts
# iterations in steps of its convergence-check interval, so ties are common, and a tie goes
# to the scale tried first.
SCALE_CANDIDATES = (1.0, 0.3, 3.0, 0.1, 10.0)


def calibrate_scale(A: sp.csc_matrix, b: np.ndarray, c: np.ndarray, dims: ConeDims,
                    settings: dict, P: sp.csc_matrix | None = None) -> float | None:
    """The SCS `scale` in SCALE_CANDIDATES that solves this one instance in the fewest
    iterations (a deterministic count, not a timing), or None if it solves at none of them."""
    best, best_iters = None, np.inf
    for scale in SCALE_CANDIDATES:
        res = solve_batch([A], b[None], c[None], dims, {**settings, "scale": scale},
                          None if P is None else [P])
        if res.status[0] is Status.SOLVED and res.iterations[0] < best_iters:
            best, best_iters = scale, res.iterations[0]
    return best
