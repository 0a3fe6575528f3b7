r"""Entropy-regularised optimal transport (the Sinkhorn layer) with a learnable cost matrix.

Problem (parameter C ∈ ℝᵐˣⁿ; variable P ∈ ℝᵐˣⁿ; fixed marginals a ∈ Δₘ, b ∈ Δₙ and a fixed
regularisation ε = EPS > 0)::

    P*(C) = argmin_P  ⟨C, P⟩ − ε H(P)   s.t.  P1 = a,  Pᵀ1 = b,        H(P) = Σ_ij entr(P_ij)

(P >= 0 is implicit in the domain of ``entr``.)  The marginals are the deterministic, mildly
non-uniform a_i ∝ m + i, b_j ∝ n + j (i, j zero-based), see :func:`marginals`.

Closed form as a fixed point (Cuturi 2013): stationarity C_ij + ε(log P_ij + 1) = f_i + g_j
(f, g the multipliers of the row / column constraints) gives

    P*_ij = exp((f_i + g_j − C_ij)/ε − 1) = u_i K_ij v_j,       K = exp(−C/ε),

with the scalings u, v fixed by the marginals; they are computed by Sinkhorn's iteration
u ← a / (Kv), v ← b / (Kᵀu), run until the row marginals match to ~1e-16 (column marginals are
exact after each v-update), followed by Newton polishing on the dual (see :func:`sinkhorn`).

Jacobian (implicit differentiation of the marginal constraints): dP_ij = P_ij (df_i + dg_j −
dC_ij)/ε, and P1 = a, Pᵀ1 = b constant give the linear system

    a_i df_i + Σ_j P_ij dg_j = Σ_j P_ij dC_ij,        Σ_i P_ij df_i + b_j dg_j = Σ_i P_ij dC_ij,

whose matrix [[diag(a), P], [Pᵀ, diag(b)]] is singular only along the gauge (f, g) → (f + c,
g − c); fixing dg_n = 0 (and dropping the redundant last column equation) leaves a positive
definite principal submatrix.  For dC = e_k e_lᵀ:

    ∂P*_ij / ∂C_kl = P*_ij (df_i + dg_j − δ_ik δ_jl) / ε.

Every row and column of ∂P*/∂C_kl sums to 0 (the marginals are fixed).

Sampler: C_ij ~ U[0, 1]; with EPS = 0.5 every entry of P* lies within a factor e² of a_i b_j
(P* is never tiny).

Cone form: m + n zero-cone rows (one of them redundant — CVXPY keeps both marginal constraints)
and m·n exponential cones.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, resolve_sizes

NAME = "entropic_ot"
REFERENCE = (
    "Cuturi, 'Sinkhorn Distances: Lightspeed Computation of Optimal Transport', NeurIPS 2013 "
    "(P = diag(u) exp(−C/ε) diag(v)); Jacobian by implicit differentiation of the marginals"
)
CONES = ("zero", "exp")
SIZES = {"m": 3, "n": 4}

EPS = 0.5
COST_RANGE = (0.0, 1.0)
SINKHORN_MAX_ITER = 100_000
SINKHORN_TOL = 1e-16
NEWTON_STEPS = 3
FAR_NEWTON_STEPS = 200  # from the LP's potentials, damped (see `sinkhorn`)


def marginals(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed marginals a ∝ m + i, b ∝ n + j (zero-based i, j), each summing to 1."""
    a = m + np.arange(m, dtype=np.float64)
    b = n + np.arange(n, dtype=np.float64)
    return a / a.sum(), b / b.sum()


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    s = resolve_sizes(SIZES, sizes)
    m, n = s["m"], s["n"]
    a, b = marginals(m, n)
    C = cp.Parameter((m, n), name="C")
    P = cp.Variable((m, n), name="P")
    objective = cp.Minimize(cp.sum(cp.multiply(C, P)) - EPS * cp.sum(cp.entr(P)))
    problem = cp.Problem(objective, [cp.sum(P, axis=1) == a, cp.sum(P, axis=0) == b])
    return problem, [C], [P]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    s = resolve_sizes(SIZES, sizes)
    return [rng.uniform(*COST_RANGE, (s["m"], s["n"]))]


def _check(params: tuple[np.ndarray, ...]) -> np.ndarray:
    if len(params) != 1:
        raise TypeError(f"{NAME} takes 1 parameter (C), got {len(params)}")
    C = np.asarray(params[0], dtype=np.float64)
    if C.ndim != 2:
        raise ValueError(f"{NAME}: C must be a matrix, got shape {C.shape}")
    return as_array(C, C.shape, "C")


def _gauge_system(P: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[[diag(a), P], [Pᵀ, diag(b)]] without its last row and column (gauge dg_n = 0)."""
    m, n = P.shape
    M = np.zeros((m + n - 1, m + n - 1))
    M[:m, :m] = np.diag(a)
    M[:m, m:] = P[:, : n - 1]
    M[m:, :m] = P[:, : n - 1].T
    M[m:, m:] = np.diag(b[: n - 1])
    return M


def _plan(f: np.ndarray, g: np.ndarray, C: np.ndarray) -> np.ndarray:
    return np.exp((f[:, None] + g[None, :] - C) / EPS)


def _lp_potentials(C: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Potentials of the unregularised transport LP (HiGHS): the entropic dual's maximiser
    is within O(ε log(mn)) of them."""
    from scipy.optimize import linprog

    m, n = C.shape
    A_eq = np.vstack([np.kron(np.eye(m), np.ones(n)), np.kron(np.ones(m), np.eye(n))])
    res = linprog(C.ravel(), A_eq=A_eq, b_eq=np.concatenate([a, b]), bounds=(0, None),
                  method="highs")
    if res.status != 0:
        raise RuntimeError(f"{NAME}: the transport LP failed ({res.message})")
    duals = np.asarray(res.eqlin.marginals)
    return duals[:m], duals[m:]


def sinkhorn(C: np.ndarray) -> np.ndarray:
    """The optimal plan P* for cost C (Sinkhorn to convergence, then Newton on the dual).

    Where exp(−C/ε) underflows (C spread over more than ~700 ε: the plan is then the
    transport LP's vertex in all but entries below float64's range), Newton starts from the
    LP's potentials instead, its steps halved until they reduce the marginal residual, and
    stops where that no longer falls (at C ~ 1e6 the plan's entries carry |C|·u/ε ~ 1e-10
    of rounding, which no method in float64 removes)."""
    m, n = C.shape
    a, b = marginals(m, n)
    C = C - C.min()  # the plan is invariant to constant shifts of C
    with np.errstate(under="ignore"):
        K = np.exp(-C / EPS)
    u, v = np.ones(m), np.ones(n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(SINKHORN_MAX_ITER):
            u = a / (K @ v)
            v = b / (K.T @ u)
            if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
                break
            if np.abs(u * (K @ v) - a).max() <= SINKHORN_TOL:
                break
    # Newton on the dual potentials f = ε log u, g = ε log v (gauge g_n fixed) drives the
    # marginal residual quadratically to rounding level.
    far = not (np.all(np.isfinite(u)) and np.all(np.isfinite(v)) and np.all(u > 0)
               and np.all(v > 0))
    f, g = _lp_potentials(C, a, b) if far else (EPS * np.log(u), EPS * np.log(v))

    def residual(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(under="ignore", over="ignore"):
            P = _plan(f, g, C)
        return P, np.concatenate([P.sum(axis=1) - a, (P.sum(axis=0) - b)[: n - 1]])

    P, r = residual(f, g)
    for _ in range(FAR_NEWTON_STEPS if far else NEWTON_STEPS):
        step = np.linalg.solve(_gauge_system(P, P.sum(axis=1), P.sum(axis=0)), r)
        t = 1.0
        while True:  # damped where the full step does not reduce the marginal residual
            f2, g2 = f - t * EPS * step[:m], g.copy()
            g2[: n - 1] -= t * EPS * step[m:]
            P2, r2 = residual(f2, g2)
            if not far or np.abs(r2).max() < np.abs(r).max() or t < 1e-6:
                break
            t /= 2
        if far and not np.abs(r2).max() < np.abs(r).max():
            break  # rounding level
        f, g, P, r = f2, g2, P2, r2
    return P


def solution(*params: np.ndarray) -> list[np.ndarray]:
    return [sinkhorn(_check(params))]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    C = _check(params)
    m, n = C.shape
    a, b = marginals(m, n)
    P = sinkhorn(C)
    # right-hand sides for dC = e_k e_lᵀ, columns indexed by (k, l) in C order
    rhs = np.zeros((m + n - 1, m * n))
    kl = np.arange(m * n)
    k, col = np.divmod(kl, n)
    rhs[k, kl] = P.ravel()
    keep = col < n - 1
    rhs[m + col[keep], kl[keep]] = P.ravel()[keep]
    z = np.linalg.solve(_gauge_system(P, a, b), rhs)
    df = z[:m]  # (m, mn)
    dg = np.vstack([z[m:], np.zeros((1, m * n))])  # (n, mn)
    delta = np.eye(m * n).reshape(m, n, m * n)
    J = P[:, :, None] * (df[:, None, :] + dg[None, :, :] - delta) / EPS
    return [[J.reshape(m, n, m, n)]]
