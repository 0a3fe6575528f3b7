"""refine: Newton steps on the residual map, from SCS's solution to machine precision.

Busseti, Moursi, Boyd 2019, *Solution refinement at regular points of conic
problems*: at a regular point the residual map is (strongly semi-)smooth with a
nonsingular derivative, so Newton's method on N(z) = 0 converges quadratically from
SCS's moderately accurate solution. We step on the gauge-fixed form (w = 1)

    F(u, v) = (Aᵀ Π_{K*}(v) + c,  −A u + b − Π_{K*}(v) + v),   S = ∂F/∂(u, v)

(see derivative.py, eq. 1) with a backtracking line search on ‖F‖, and factor S
with the same code that the derivative uses, so the last factorization is the
derivative's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from declarative.cones import dproject
from declarative.derivative import BatchOps, Linearization, project_dual, residual

# Stop refining an instance once ‖F‖∞ ≤ tol · (1 + ‖c‖∞ + ‖b‖∞).
REFINE_TOL = 1e-13
REFINE_MAX_ITERS = 20


@dataclass
class Refined:
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    residual_before: np.ndarray  # ‖F‖∞ at SCS's solution, per instance
    residual_after: np.ndarray   # ‖F‖∞ after refinement
    steps: np.ndarray            # Newton steps taken, per instance
    scale: np.ndarray            # 1 + ‖c‖∞ + ‖b‖∞, the residual's natural scale
    factors: list                # the last Newton matrix factored, per instance (or None)


def _norm(F: np.ndarray) -> np.ndarray:
    r = np.abs(F).max(axis=1) if F.shape[1] else np.zeros(F.shape[0])
    return np.where(np.isfinite(r), r, np.inf)


def refine(ops: BatchOps, c: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray,
           s: np.ndarray, tol: float = REFINE_TOL, max_iters: int = REFINE_MAX_ITERS) -> Refined:
    """Refine every finite instance of the batch; instances with NaN are left alone."""
    t = ops.template
    dims = t.dims
    u, v = x.copy(), y - s
    pv = project_dual(v, ops)
    F = residual(ops, c, b, u, v, pv)
    res = _norm(F)
    res0 = res.copy()
    scale = 1.0 + np.abs(c).max(axis=1, initial=0) + np.abs(b).max(axis=1, initial=0)
    steps = np.zeros(len(u), dtype=int)
    factors: list = [None] * len(u)
    active = np.isfinite(res) & (res > tol * scale)
    for _ in range(max_iters):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        sub = ops.take(idx)
        lin = Linearization(sub, dproject(v[idx], dims, dual=True))
        d = -lin.solve(F[idx])
        du, dv = d[:, : t.n], d[:, t.n :]
        step = np.ones(idx.size)
        best_F, best_res = F[idx], res[idx]
        best_u, best_v, best_pv = u[idx], v[idx], pv[idx]
        pending = np.all(np.isfinite(d), axis=1)
        for _ls in range(30):  # backtracking: accept a sufficient decrease of ‖F‖∞
            if not pending.any():
                break
            k = np.flatnonzero(pending)
            un = best_u[k] + step[k, None] * du[k]
            vn = best_v[k] + step[k, None] * dv[k]
            opk = sub.take(k)
            pvn = project_dual(vn, opk)
            Fn = residual(opk, c[idx[k]], b[idx[k]], un, vn, pvn)
            rn = _norm(Fn)
            ok = rn <= (1 - 1e-4 * step[k]) * best_res[k]
            acc = k[ok]
            best_u[acc], best_v[acc], best_pv[acc] = un[ok], vn[ok], pvn[ok]
            best_F[acc], best_res[acc] = Fn[ok], rn[ok]
            pending[acc] = False
            step[k[~ok]] *= 0.5
        improved = ~pending & np.all(np.isfinite(d), axis=1)
        gi = idx[improved]
        for j in np.flatnonzero(improved):
            factors[idx[j]] = lin.factors[j]
        u[gi], v[gi], pv[gi] = best_u[improved], best_v[improved], best_pv[improved]
        F[gi], res[gi] = best_F[improved], best_res[improved]
        steps[gi] += 1
        # Stop where converged, or where no step decreased the residual (stagnation).
        active[idx[~improved]] = False
        active &= res > tol * scale
    return Refined(x=u, y=pv, s=pv - v, residual_before=res0, residual_after=res, steps=steps,
                   scale=scale, factors=factors)
