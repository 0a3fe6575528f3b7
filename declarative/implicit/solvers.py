"""The forward solvers of declarative nodes and their certificate, on NumPy float64 vectors.

Every node is reduced to a root of an optimality condition G(z) = 0 (``system.residual``):

* ``root(F)``:            G(z) = F(z)
* ``fixed_point(f)``:     G(z) = z − f(z)
* ``argmin(obj)``:        G(y) = ∇obj(y)
* ``argmin(obj, eq=h)``:  G(y, λ) = (∇obj(y) + ∂h(y)ᵀλ, h(y))  (the KKT conditions)

The framework adapters (`declarative.implicit.torch`, `declarative.implicit.jax`) supply G, its
Jacobian-vector and vector-Jacobian products and its dense Jacobian ∂G/∂z as functions of flat
float64 vectors; nothing here knows which framework computed them.

The certificate
---------------
At the final point z the Newton correction δ = (∂G/∂z)⁻¹ G(z) is computed (dense LU up to
:data:`DENSE_MAX` unknowns, GMRES on Jacobian-vector products above). For a regular root δ
estimates z − z* to second order (Kantorovich), so the node is certified *converged* when

    ‖δ‖∞ ≤ tol · ‖z‖∞ + atol                                             (1)

and ∂G/∂z is well conditioned there: the condition number of its row- and column-equilibrated
dense Jacobian is at most ``max_condition`` (dense systems), or GMRES solved the correction to
its tolerance (matrix-free systems). The point returned is z − δ (one more Newton step, whose
error is O(‖δ‖²); for dense systems up to :data:`POLISH_STEPS` more Newton steps follow while
each still halves the correction, so the point is accurate to round-off). Criterion (1) is
invariant to scaling G and relative to the scale of z, so Kepler's equation with M = 1e8 and
a fixed point with data at 1e-8 are judged alike.
For ``argmin`` the KKT point must also be a strict local minimum: the Hessian of the
Lagrangian, reduced to the null space of ∂h, has to be positive definite (dense systems).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from declarative.errors import DeclarativeError, ParameterError

# Unknowns up to which ∂G/∂z is formed densely (one Jacobian costs n JVPs; LU is O(n³)).
DENSE_MAX = 400
# Largest condition number of the equilibrated ∂G/∂z accepted as nonsingular. The backward
# pass solves with ∂G/∂z, losing about log10(cond) of float64's 16 digits.
MAX_CONDITION = 1e12
# Armijo constant and the most halvings of the Newton step in the line search on ‖G‖₂.
ARMIJO = 1e-4
MAX_HALVINGS = 40
# Anderson acceleration: history length and Tikhonov regularization of its least squares.
ANDERSON_MEMORY = 6
ANDERSON_REG = 1e-12
# Newton steps at most after criterion (1) holds, taken while each still halves the correction.
POLISH_STEPS = 3
# GMRES relative tolerance for Newton–Krylov steps and matrix-free certificates.
GMRES_RTOL = 1e-10

# Status codes (an int so that JAX can carry them through jit).
CONVERGED, MAX_ITERS, SINGULAR, NOT_MINIMUM, NON_FINITE, STALLED = 0, 1, 2, 3, 4, 5
STATUS = ("converged", "max_iters", "singular", "not_minimum", "non_finite", "stalled")
EXPLAIN = {
    MAX_ITERS: "did not reach the tolerance within max_iters iterations (raise max_iters, "
               "loosen tol, or start closer to a solution)",
    SINGULAR: "the Jacobian of the optimality condition is singular or ill-conditioned at the "
              "solution, so the solution is not locally unique and has no derivative",
    NOT_MINIMUM: "the stationary point found is not a strict local minimum (the Hessian of the "
                 "Lagrangian on the constraints' null space is not positive definite)",
    NON_FINITE: "the residual became NaN or inf",
    STALLED: "the line search found no decrease of the residual along the Newton direction "
             "(a stationary point of the residual's norm that is not a root: start closer to a "
             "solution)",
}


class Info(NamedTuple):
    """What one call of a node certifies.

    ``residual`` is ‖G(z)‖∞ and ``step`` the relative Newton correction
    ‖δ‖∞ / max(‖z‖∞, tiny) at the final point (criterion (1) of the module docstring);
    ``condition`` the condition number of the equilibrated ∂G/∂z (NaN when matrix-free).
    In JAX the fields are arrays (a NamedTuple is a pytree), so ``info`` works under jit/vmap.
    """

    status_code: int
    iterations: int
    residual: float
    step: float
    condition: float

    @property
    def converged(self) -> bool:
        return int(self.status_code) == CONVERGED

    @property
    def status(self) -> str:
        return STATUS[int(self.status_code)]


class System(Protocol):
    """The optimality condition G of a node, as functions of flat float64 vectors."""

    size: int
    n_primal: int | None  # argmin: the number of primal unknowns y in z = (y, λ); else None
    kind: str             # "root", "fixed_point" or "argmin"

    def residual(self, z: np.ndarray) -> np.ndarray: ...
    def jvp(self, z: np.ndarray, v: np.ndarray) -> np.ndarray: ...
    def jacobian(self, z: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Options:
    """Per-call settings: criterion (1) uses ``tol`` and ``atol``."""

    tol: float
    atol: float = 0.0
    max_iters: int = 100
    method: str = "auto"  # "newton", "anderson" (fixed points) or "auto"
    max_condition: float = MAX_CONDITION
    dense_max: int = DENSE_MAX


def non_finite_input(node: object, i: int) -> ParameterError:
    """The error for a call of ``node`` whose input ``i`` (0: z0, then the parameters) has
    NaN or inf entries; both framework adapters raise it before any solve."""
    what = "z0" if i == 0 else f"params[{i - 1}]"
    return ParameterError(f"{node!r}: {what} has NaN or inf entries; expected finite values")


class NodeError(DeclarativeError, RuntimeError):
    """A declarative node did not produce a certified solution; ``info`` says why."""

    def __init__(self, kind: str, info: Info, hint: str = "") -> None:
        self.info = info
        msg = (f"implicit.{kind}: not solved, status {info.status!r}: "
               f"{EXPLAIN.get(int(info.status_code), '')} (iterations {int(info.iterations)}, "
               f"residual ‖G(z)‖∞ = {float(info.residual):.3g}, relative Newton step "
               f"{float(info.step):.3g}, condition {float(info.condition):.3g}). Pass "
               "on_failure='nan' to get NaN outputs (and zero gradients) instead")
        super().__init__(msg + (f"; {hint}" if hint else "") + ".")


def inf_norm(v: np.ndarray) -> float:
    return float(np.max(np.abs(v))) if v.size else 0.0


def equilibrated_condition(J: np.ndarray) -> float:
    """2-norm condition number of D_r J D_c, rows then columns scaled to unit ∞-norm."""
    if not np.all(np.isfinite(J)):
        return float("inf")
    r = np.max(np.abs(J), axis=1)
    if np.any(r == 0):
        return float("inf")
    Js = J / r[:, None]
    c = np.max(np.abs(Js), axis=0)
    if np.any(c == 0):
        return float("inf")
    s = np.linalg.svd(Js / c[None, :], compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else float("inf")


class _Linearization:
    """∂G/∂z at one point: dense LU or GMRES on JVPs; ``solve`` returns None when it fails."""

    def __init__(self, system: System, z: np.ndarray, opts: Options) -> None:
        self.system, self.z, self.opts = system, z, opts
        self.dense = system.size <= opts.dense_max
        self.J: np.ndarray | None = None
        if self.dense:
            self.J = system.jacobian(z)
            try:
                with warnings.catch_warnings():  # singular: reported through ``ok``
                    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
                    self.lu = scipy.linalg.lu_factor(self.J, check_finite=True)
                self.ok = bool(np.all(np.isfinite(self.lu[0])) and np.all(np.diag(self.lu[0]) != 0))
            except (ValueError, np.linalg.LinAlgError):
                self.ok = False

    def solve(self, r: np.ndarray) -> np.ndarray | None:
        if self.dense:
            if not self.ok:
                return None
            with np.errstate(all="ignore"):
                d = scipy.linalg.lu_solve(self.lu, r)
            return d if np.all(np.isfinite(d)) else None
        n = self.system.size
        op = spla.LinearOperator((n, n), matvec=lambda v: self.system.jvp(self.z, v), dtype=float)
        d, info = spla.gmres(op, r, rtol=GMRES_RTOL, atol=0.0, restart=min(n, 60),
                             maxiter=max(1, 4 * n // 60 + 10))
        return d if info == 0 and np.all(np.isfinite(d)) else None

    def condition(self) -> float:
        return equilibrated_condition(self.J) if self.J is not None else float("nan")


def _certified(delta: np.ndarray, z: np.ndarray, opts: Options) -> bool:
    return inf_norm(delta) <= opts.tol * inf_norm(z) + opts.atol


def _relative(delta: np.ndarray, z: np.ndarray) -> float:
    return inf_norm(delta) / max(inf_norm(z), np.finfo(float).tiny)


def _initial_multipliers(system: System, z: np.ndarray) -> np.ndarray:
    """λ₀ = argmin ‖∇obj(y₀) + ∂h(y₀)ᵀλ‖₂ (least squares), for a dense KKT system."""
    n = system.n_primal
    assert n is not None
    z = z.copy()
    z[n:] = 0.0
    if system.size > DENSE_MAX:
        return z
    grad = system.residual(z)[:n]
    A = system.jacobian(z)[n:, :n]
    lam, *_ = np.linalg.lstsq(A.T, -grad, rcond=None)
    z[n:] = lam
    return z


def _minimum_check(system: System, lin: _Linearization) -> bool:
    """Second-order sufficiency: the reduced Hessian ZᵀHZ is positive definite (dense only)."""
    if system.kind != "argmin" or lin.J is None:
        return True
    n = system.n_primal if system.n_primal is not None else system.size
    J = lin.J
    H = (J[:n, :n] + J[:n, :n].T) / 2
    if n < system.size:
        Z = scipy.linalg.null_space(J[n:, :n])
        H = Z.T @ H @ Z
    if H.size == 0:
        return True
    eig = np.linalg.eigvalsh(H)
    return bool(eig[0] > 10 * np.finfo(float).eps * float(np.max(np.abs(eig))))


def _finish(system: System, z: np.ndarray, iterations: int, opts: Options,
            lin: _Linearization | None = None, unmet: int = MAX_ITERS
            ) -> tuple[np.ndarray, Info]:
    """Certify z by criterion (1) and return z − δ with its Info; ``unmet`` is the status
    where the correction is still above criterion (1) (why the iteration stopped)."""
    r = system.residual(z)
    if not np.all(np.isfinite(r)) or not np.all(np.isfinite(z)):
        return z, Info(NON_FINITE, iterations, float("inf"), float("inf"), float("nan"))
    lin = lin if lin is not None and lin.z is z else _Linearization(system, z, opts)
    delta = lin.solve(r)
    cond = lin.condition()
    if delta is None:
        return z, Info(SINGULAR, iterations, inf_norm(r), float("inf"), cond)
    step = _relative(delta, z)
    if not _certified(delta, z, opts):
        return z, Info(unmet, iterations, inf_norm(r), step, cond)
    if cond > opts.max_condition:
        return z, Info(SINGULAR, iterations, inf_norm(r), step, cond)
    if not _minimum_check(system, lin):
        return z, Info(NOT_MINIMUM, iterations, inf_norm(r), step, cond)
    # Polish: Newton steps while they still shrink the correction (quadratic convergence),
    # so the returned point is accurate to round-off, not just to criterion (1).
    for _ in range(POLISH_STEPS):
        z_new = z - delta
        r_new = system.residual(z_new)
        if not np.all(np.isfinite(r_new)):
            break
        z, r = z_new, r_new
        if inf_norm(delta) == 0 or not lin.dense:  # matrix-free: one step (a GMRES solve each)
            break
        lin_new = _Linearization(system, z, opts)
        delta_new = lin_new.solve(r)
        if delta_new is None or inf_norm(delta_new) > inf_norm(delta) / 2:
            break
        delta = delta_new
    return z, Info(CONVERGED, iterations, inf_norm(r), step, cond)


def newton(system: System, z0: np.ndarray, opts: Options) -> tuple[np.ndarray, Info]:
    """Damped Newton on G(z) = 0 with a backtracking (Armijo) line search on ‖G‖₂.

    Dense LU steps for small systems, GMRES on JVPs (Newton–Krylov) for large ones. Stops
    as soon as the Newton correction satisfies criterion (1).
    """
    z = np.array(z0, dtype=float)
    if system.n_primal is not None and system.n_primal < system.size:
        z = _initial_multipliers(system, z)
    r = system.residual(z)
    for k in range(opts.max_iters):
        if not np.all(np.isfinite(r)):
            return z, Info(NON_FINITE, k, float("inf"), float("inf"), float("nan"))
        lin = _Linearization(system, z, opts)
        delta = lin.solve(r)
        if delta is None:
            return _finish(system, z, k, opts, lin)
        if _certified(delta, z, opts):
            return _finish(system, z, k, opts, lin)
        norm = float(np.linalg.norm(r))
        t = 1.0
        for _ in range(MAX_HALVINGS):
            z_try = z - t * delta
            r_try = system.residual(z_try)
            if np.all(np.isfinite(r_try)) and np.linalg.norm(r_try) <= (1 - ARMIJO * t) * norm:
                break
            t /= 2
        else:  # no decrease along the Newton direction: stationary point of ‖G‖², not a root
            return _finish(system, z, k, opts, lin, unmet=STALLED)
        z, r = z_try, r_try
    return _finish(system, z, opts.max_iters, opts)


def anderson(system: System, z0: np.ndarray, fixed_map: Callable[[np.ndarray], np.ndarray],
             opts: Options) -> tuple[np.ndarray, Info]:
    """Anderson acceleration (type II, Walker & Ni 2011) of z ← f(z), then criterion (1).

    Each step solves min_α ‖Σ αᵢ gᵢ‖₂ over Σαᵢ = 1 on the last :data:`ANDERSON_MEMORY`
    residuals gᵢ = f(zᵢ) − zᵢ (as an unconstrained least squares in the differences) and
    moves to Σ αᵢ f(zᵢ). Iterates until ‖f(z) − z‖∞ ≤ tol·‖z‖∞ + atol, then certifies z with
    a Newton correction on G(z) = z − f(z); where that correction is still above criterion (1)
    (it can exceed ‖f(z) − z‖ by ‖(I − ∂f/∂z)⁻¹‖), it iterates on to a 10× tighter target.
    """
    z = np.array(z0, dtype=float)
    Z_hist: list[np.ndarray] = []
    G_hist: list[np.ndarray] = []
    target = 1.0
    for k in range(opts.max_iters):
        fz = fixed_map(z)
        g = fz - z
        if not np.all(np.isfinite(g)):
            return z, Info(NON_FINITE, k, float("inf"), float("inf"), float("nan"))
        if inf_norm(g) <= target * (opts.tol * inf_norm(z) + opts.atol):
            z_out, info = _finish(system, z, k, opts)
            # ‖δ‖ ≤ ‖(I − ∂f/∂z)⁻¹‖‖g‖ may exceed ‖g‖: iterate on with a tighter target
            if info.status_code != MAX_ITERS or target < 1e-6:
                return z_out, info
            target /= 10
        Z_hist.append(fz)
        G_hist.append(g)
        if len(G_hist) > ANDERSON_MEMORY:
            Z_hist.pop(0)
            G_hist.pop(0)
        if len(G_hist) == 1:
            z = fz
            continue
        dG = np.stack([G_hist[i + 1] - G_hist[i] for i in range(len(G_hist) - 1)], axis=1)
        dF = np.stack([Z_hist[i + 1] - Z_hist[i] for i in range(len(Z_hist) - 1)], axis=1)
        gram = dG.T @ dG
        gram += ANDERSON_REG * max(float(np.trace(gram)), np.finfo(float).tiny) * np.eye(len(gram))
        gamma = np.linalg.solve(gram, dG.T @ g)
        z = fz - dF @ gamma
    return _finish(system, z, opts.max_iters, opts)


Solver = Callable[[Callable[[np.ndarray], np.ndarray], np.ndarray], np.ndarray]


def solve(system: System, z0: np.ndarray, opts: Options,
          fixed_map: Callable[[np.ndarray], np.ndarray] | None = None,
          solver: Solver | None = None) -> tuple[np.ndarray, Info]:
    """Run the forward solver a node asks for and certify its result by criterion (1).

    ``solver(residual, z0) -> z`` is a user's own forward solver on flat float64 vectors
    (``residual`` is G); its output is certified exactly like ours.
    """
    if solver is not None:
        z = np.asarray(solver(system.residual, np.array(z0, dtype=float)), dtype=float)
        if z.shape != (system.size,):
            raise ValueError(f"the user's solver returned shape {z.shape}; expected "
                             f"({system.size},), a flat vector like its z0")
        return _finish(system, z, 0, opts)
    method = opts.method
    if method == "auto":
        method = "anderson" if fixed_map is not None and system.size > opts.dense_max else "newton"
    if method == "anderson":
        if fixed_map is None:
            raise ValueError("method='anderson' is for fixed_point nodes; use 'newton'")
        return anderson(system, z0, fixed_map, opts)
    if method != "newton":
        raise ValueError(f"unknown method {method!r}; expected 'auto', 'newton' or 'anderson'")
    return newton(system, z0, opts)


def default_tol(dtype: np.dtype) -> float:
    """1e-10 in float64; 100 ulps of a lower precision the node's function is evaluated in."""
    return max(1e-10, 100 * float(np.finfo(dtype).eps))
