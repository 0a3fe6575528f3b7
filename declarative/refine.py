"""refine: Newton steps on the residual map, from SCS's solution to machine precision.

Busseti, Moursi, Boyd 2019, *Solution refinement at regular points of conic
problems*: at a regular point the residual map is (strongly semi-)smooth with a
nonsingular derivative, so Newton's method on N(z) = 0 converges quadratically from
SCS's moderately accurate solution. We step on the gauge-fixed form (w = 1)

    F(u, v) = (Aᵀ Π_{K*}(v) + c,  −A u + b − Π_{K*}(v) + v),   S = ∂F/∂(u, v)

(see derivative.py, eq. 1), globalized by a watchdog line search on ‖F‖∞, and factor S
with the same code that the derivative uses, so the last factorization is the
derivative's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from declarative.cones import DProjection, dproject
from declarative.derivative import BatchOps, Linearization, project_dual, residual

# Stop refining an instance once ‖F‖∞ ≤ tol · (1 + ‖c‖∞ + ‖b‖∞).
REFINE_TOL = 1e-13
REFINE_MAX_ITERS = 20
# Non-monotone full Newton steps allowed in a row before backtracking from the best point.
WATCHDOG = 2
# Halvings of the backtracking line search.
LINE_SEARCH_STEPS = 30


@dataclass
class Refined:
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    residual_before: np.ndarray  # ‖F‖∞ at SCS's solution, per instance
    residual_after: np.ndarray   # ‖F‖∞ after refinement
    steps: np.ndarray            # Newton systems factored and solved, per instance
    scale: np.ndarray            # 1 + ‖c‖∞ + ‖b‖∞, the residual's natural scale
    factors: list                # the last Newton matrix factored, per instance (or None)
    v: np.ndarray                # v = y − s at the returned points, exactly
    D: DProjection               # DΠ_{K*} at the current iterates, which are at `v_D`
    v_D: np.ndarray              # (= v except where refinement ended on a watchdog step)


def _norm(F: np.ndarray) -> np.ndarray:
    r = np.abs(F).max(axis=1) if F.shape[1] else np.zeros(F.shape[0])
    return np.where(np.isfinite(r), r, np.inf)


def refine(ops: BatchOps, c: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray,
           s: np.ndarray, tol: float = REFINE_TOL, max_iters: int = REFINE_MAX_ITERS) -> Refined:
    """Refine every finite instance of the batch; instances with NaN are left alone.

    Globalized by a watchdog (Chamberlain, Powell, Lemaréchal, Pedersen 1982): the full
    Newton step is taken even when it does not decrease ‖F‖∞, up to WATCHDOG times in a
    row; if by then ‖F‖∞ has not fallen sufficiently below that of the best point so far
    (the anchor), refinement returns to the anchor and backtracks along the anchor's own
    Newton direction. Away from the solution a semismooth Newton step changes which side
    of the cone's kinks many coordinates are on, which can raise ‖F‖ once even though the
    next step is exact: sparsemax n = 10,000 from SCS at eps 1e-3 takes 2 full steps,
    where a monotone line search took 10.
    """
    t = ops.template
    dims = t.dims
    B = len(x)
    # the anchor: the best point so far (what is returned), and its Newton direction
    u, v = x.copy(), y - s
    # DΠ at the current iterates; its `point` is Π itself (one pass of the cone code for both)
    Dc = dproject(v, dims, dual=True)
    pv = Dc.point.copy()
    F = residual(ops, c, b, u, v, pv)
    res = _norm(F)
    res0 = res.copy()
    d_anchor = np.zeros_like(F)
    # the current iterate, ahead of the anchor by `watch` non-monotone full steps
    cu, cv, cF = u.copy(), v.copy(), F.copy()
    watch = np.zeros(B, dtype=int)
    scale = 1.0 + np.abs(c).max(axis=1, initial=0) + np.abs(b).max(axis=1, initial=0)
    steps = np.zeros(B, dtype=int)
    factors: list = [None] * B
    active = np.isfinite(res) & (res > tol * scale)
    for _ in range(max_iters):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        every = idx.size == B  # (then the batch's own arrays, not copies)
        sub = ops if every else ops.take(idx)
        lin = Linearization(sub, Dc if every else Dc.take(idx))
        # A singular S too large for a dense SVD gives no step (NaN): LSMR is costly, and
        # its least-squares step rarely helps (e.g. SCS's loose sparsemax solution with
        # every bound active, against Σx = 1); the instance goes back to its anchor, and if
        # that is where it is, stops, to be solved again by SCS at a tight tolerance.
        d = -lin.solve(cF[idx], iterative=False)
        steps[idx] += 1
        at_anchor = watch[idx] == 0
        d_anchor[idx[at_anchor]] = d[at_anchor]
        # the full step from the current iterate
        un, vn = cu[idx] + d[:, : t.n], cv[idx] + d[:, t.n :]
        Dn = dproject(vn, dims, dual=True)
        pvn = Dn.point
        Fn = residual(sub, c if every else c[idx], b if every else b[idx], un, vn, pvn)
        rn = _norm(Fn)
        good = rn <= (1 - 1e-4) * res[idx]
        ahead = ~good & np.isfinite(rn) & (watch[idx] < WATCHDOG)
        for j in np.flatnonzero(good | ahead):
            factors[idx[j]] = lin.factors[j] if good[j] else None
        gi, ai = idx[good], idx[ahead]
        u[gi], v[gi], pv[gi], F[gi], res[gi] = un[good], vn[good], pvn[good], Fn[good], rn[good]
        cu[idx], cv[idx] = un, vn
        cF[idx] = Fn
        Dc.put(idx, Dn)
        watch[gi] = 0
        watch[ai] += 1
        # the others go back to their anchor and backtrack along its Newton direction
        back = idx[~good & ~ahead]
        if back.size:
            moved = _backtrack(ops.take(back), c[back], b[back], u[back], v[back], pv[back],
                               F[back], res[back], d_anchor[back], t.n)
            ok, (ub, vb, pvb, Fb, rb) = moved
            bi = back[ok]
            u[bi], v[bi], pv[bi], F[bi], res[bi] = ub[ok], vb[ok], pvb[ok], Fb[ok], rb[ok]
            active[back[~ok]] = False  # no step decreases the residual: stagnation
            for i in back:
                factors[i] = None
            cu[back], cv[back], cF[back] = u[back], v[back], F[back]
            Dc.put(back, dproject(cv[back], dims, dual=True))
            watch[back] = 0
        active &= res > tol * scale
    return Refined(x=u, y=pv, s=pv - v, residual_before=res0, residual_after=res, steps=steps,
                   scale=scale, factors=factors, v=v, D=Dc, v_D=cv)


def _backtrack(ops: BatchOps, c: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray,
               pv: np.ndarray, F: np.ndarray, res: np.ndarray, d: np.ndarray, n: int):
    """Armijo backtracking on ‖F‖∞ from (u, v) along d, from step ½ (the full step failed).

    Returns (accepted (B,), (u, v, Π(v), F, ‖F‖∞) at the accepted points)."""
    u, v, pv, F, res = u.copy(), v.copy(), pv.copy(), F.copy(), res.copy()
    du, dv = d[:, :n], d[:, n:]
    step = np.full(len(u), 0.5)
    pending = np.all(np.isfinite(d), axis=1)
    for _ in range(LINE_SEARCH_STEPS):
        if not pending.any():
            break
        k = np.flatnonzero(pending)
        un = u[k] + step[k, None] * du[k]
        vn = v[k] + step[k, None] * dv[k]
        opk = ops.take(k)
        pvn = project_dual(vn, opk)
        Fn = residual(opk, c[k], b[k], un, vn, pvn)
        rn = _norm(Fn)
        ok = rn <= (1 - 1e-4 * step[k]) * res[k]
        acc = k[ok]
        u[acc], v[acc], pv[acc], F[acc], res[acc] = un[ok], vn[ok], pvn[ok], Fn[ok], rn[ok]
        pending[acc] = False
        step[k[~ok]] *= 0.5
    accepted = ~pending & np.all(np.isfinite(d), axis=1)
    return accepted, (u, v, pv, F, res)
