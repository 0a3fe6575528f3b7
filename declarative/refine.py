"""refine: Newton steps on the residual map, from SCS's solution to machine precision.

Busseti, Moursi, Boyd 2019, *Solution refinement at regular points of conic
problems*: at a regular point the residual map is (strongly semi-)smooth with a
nonsingular derivative, so Newton's method on N(z) = 0 converges quadratically from
SCS's moderately accurate solution. We step on the gauge-fixed form (w = 1)

    F(u, v) = (Aᵀ Π_{K*}(v) + c,  −A u + b − Π_{K*}(v) + v),   S = ∂F/∂(u, v)

(see derivative.py, eq. 1), globalized by a watchdog line search on the componentwise
backward error ω (`backward_error`), and factor S with the same code that the derivative
uses, so the last factorization is the derivative's. The program is the equilibrated one
(equilibrate.py); ω, the merit and the stopping test, does not depend on its scaling.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from declarative.compile import ConeTemplate
from declarative.cones import (
    DProjection,
    dproject,
    exp_roots_at,
    flip_near_kinks,
    interior_depth,
    project,
)
from declarative.derivative import (
    HAS_LONG_DOUBLE,
    LONG_DOUBLE_EPS,
    NEWTON_SOLVE_TOL,
    BatchOps,
    Linearization,
    project_dual,
    residual,
)
from declarative.equilibrate import pattern

# Stop refining an instance once its componentwise backward error (`backward_error`) is at
# most this.
REFINE_TOL = 1e-13
# Rows whose terms are all below SCALE_FLOOR of the instance's largest are judged at that
# level: the componentwise test would otherwise demand that rounding left in directions where
# the solution is not unique (auxiliary variables of sum_largest or dotsort at 1e-20, where
# the exact ones are 0; SCS's subnormals) vanish, which a least-squares Newton step only
# does linearly. Rows above it, one entry of 1e-9 beside one of 1, are judged on their own;
# outputs below it are still checked by the forward-error estimate (layer.py).
SCALE_FLOOR = 1e-9
REFINE_MAX_ITERS = 20
# Below SLOW_OMEGA, a step that reduces ω by less than LINEAR_RATE ends refinement (see refine).
SLOW_OMEGA = 1e-10
LINEAR_RATE = 8.0
# Non-monotone full Newton steps allowed in a row before backtracking from the best point.
WATCHDOG = 2
# Halvings of the backtracking line search.
LINE_SEARCH_STEPS = 30
# A step t is accepted if it decreases the merit to at most (1 − SUFFICIENT_DECREASE·t) of its
# value (Armijo's condition, with the customary small fraction).
SUFFICIENT_DECREASE = 1e-4
# Refinement that ended short of its tolerance with ω at most FLIP_OMEGA starts once more,
# for at most FLIP_ITERS steps, from its point with the coordinates within FLIP_TOL·‖v‖∞ of
# a kink mirrored to the other side (`cones.flip_near_kinks`); the result is taken where it
# converges. Newton converges quadratically from the right structure, so a few steps tell.
FLIP_OMEGA = 1e-6
FLIP_TOL = 1e-6
# ... and one that stalled with FLIP_CONE_FROM < ω <= FLIP_CONE_OMEGA, from its point with
# its second-order and PSD cones mirrored where within max(FLIP_TOL, FLIP_SPREAD·ω)·‖v‖∞ of
# a kink, then where within each of FLIP_WIDE·‖v‖∞, in turn. An interior-point solver's
# multiplier lies inside its cone by ~√μ at its last μ, which can exceed the slack it pairs
# with: v = y − s then loses s, S is singular and Newton stalls (min c·x s.t. ‖x − a‖ <= r
# at r = 1e-6|a|: Clarabel's y 2.9e-5 and 5.5e-5 inside, s 2.5e-7, ω 3e-5 and 7.4e-7). A
# nonnegative coordinate's side is left to the active set (`polyhedral`): mirrored this far
# it can converge to a degenerate vertex that the problem does not have. Below FLIP_CONE_FROM
# the point's structure is taken as it is: there a mirrored cone converged to points that no
# certificate takes (square(‖x − a‖) <= q at q = 1e-30, ω 1e-10 → 1e-18), in place of ones
# that refinement in extended precision then certifies.
FLIP_CONE_FROM = 1e-8
FLIP_CONE_OMEGA = 1e-3
FLIP_SPREAD = 10.0
FLIP_WIDE = (1e-4, 1e-3)
FLIP_ITERS = 4


# Extended precision for the residual (`refine` with ``extended``): numpy's long double, the
# x87 80-bit format on x86-64 Linux (ε = 1.1e-19). Newton's corrections are still solved in
# float64: with the residual in a precision u² beside the working precision u, iterative
# refinement takes the error down to about u whatever the conditioning, as long as cond·u < 1
# (Higham, *Accuracy and Stability of Numerical Algorithms*, §12.1), where with the residual
# in u it stalls at cond·u. Where long double is float64 (Windows, ARM64 macOS) there is none.
# (The derivative's solves are refined the same way: `derivative.EXTENDED_SOLVE_RCOND`.)
EXTENDED = np.longdouble
EXTENDED_EPS = LONG_DOUBLE_EPS
HAS_EXTENDED = HAS_LONG_DOUBLE
# The cones whose projection is evaluated in long double (closed forms: no LAPACK, no root
# finding tuned to float64).
EXTENDED_CONES = frozenset({"zero", "nonneg", "soc"})
# In extended precision refinement goes on below its tolerance, to this ω, while it progresses.
EXTENDED_TOL = 1e-18


def extended_ok(template: ConeTemplate) -> bool:
    """Can refinement evaluate this program's residual in extended precision?"""
    return HAS_EXTENDED and set(template.dims.kinds()) <= EXTENDED_CONES


def _evaluate(ops: BatchOps, c: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray,
              pv: np.ndarray | None, extended: bool) -> tuple[np.ndarray, np.ndarray]:
    """(Π(v), F(u, v)) for the batch, from ``pv`` = Π(v) where given; with ``extended``,
    both evaluated in long double from the float64 point and rounded to float64 once, at
    the end (``pv`` is then not used)."""
    if extended:
        ve = v.astype(EXTENDED)
        pve = project(ve, ops.template.dims, dual=True)
        F = residual(ops, c, b, u.astype(EXTENDED), ve, pve)
        return pve.astype(np.float64), F.astype(np.float64)
    if pv is None:
        pv = project_dual(v, ops)
    return pv, residual(ops, c, b, u, v, pv)


@dataclass
class Refined:
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    steps: np.ndarray            # Newton systems factored and solved, per instance
    omega_before: np.ndarray     # componentwise backward error at SCS's solution
    omega: np.ndarray            # componentwise backward error after refinement
    den: np.ndarray              # its rows' terms (backward_error) at the returned points
    F: np.ndarray                # F(u, v) at the returned points
    factors: list                # the last Newton matrix factored, per instance (or None)
    v: np.ndarray                # v = y − s at the returned points, exactly
    D: DProjection               # DΠ_{K*} at the current iterates, which are at `v_D`
    v_D: np.ndarray              # (= v except where refinement ended on a watchdog step)
    converged: np.ndarray        # ω reached ``tol`` (else Newton stalled, or ran out of steps)
    D_factored: DProjection      # DΠ_{K*} that each instance's kept factorization was made at

    def take(self, idx: np.ndarray) -> Refined:
        """The instances ``idx`` (repeats allowed), in that order."""
        def rows(value: Any) -> Any:
            return [value[i] for i in idx.tolist()] if isinstance(value, list) \
                else value[idx] if isinstance(value, np.ndarray) else value.take(idx)

        return Refined(**{f.name: rows(getattr(self, f.name)) for f in fields(self)})


def row_terms(ops: BatchOps, c: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray,
              pv: np.ndarray, blockwise: bool = True, deep: float | None = None
              ) -> np.ndarray:
    """The magnitudes of F(u, v)'s terms per row (B, n + m): (|P||u| + |A|ᵀ|y| + |c|) over
    the first n rows, (|A||u| + |b| + |s|) over the last m, with y = Π(v), s = Π(v) − v.

    With ``blockwise``, on a cone that is not a product of half-lines (second-order, PSD,
    exponential, power) |y| and |s| stand for the block's largest |Π(v)| + |v|, and the
    second sum is its maximum over the block: Π mixes a block's entries, so its rounding
    is relative to the block, not to each entry (`backward_error`). Without, every entry is
    taken as it is: the scale of the terms themselves. With ``blockwise`` and ``deep``, a
    block whose s lies deeper inside K than ``deep`` times that largest |Π(v)| + |v|
    (`cones.interior_depth`) has Π(v) = 0 exactly, not to rounding (a perturbation of v
    smaller than the depth keeps it in −K): its |y| is taken as it is in the first n rows."""
    t = ops.template
    p = pattern(t)
    mag = ops.magnitude
    au, apv = np.abs(u), np.abs(pv)
    # Π(v) and s = Π(v) − v are exact on zero and nonnegative rows (one of y, s is 0 there);
    # elsewhere Π mixes the block, so both are known to rounding relative to the block's
    # largest |Π(v)| + |v|
    sep = t.dims.zero + t.dims.nonneg
    den_pv, den_s = apv.copy(), np.abs(pv - v)
    blocks = blockwise and sep < t.m
    if blocks:
        block = p.block_max(apv + np.abs(v))[:, sep:]
        den_pv[:, sep:] = block if deep is None else np.where(
            interior_depth(pv - v, t.dims)[:, sep:] > deep * block, apv[:, sep:], block)
        den_s[:, sep:] = block
    den_x = mag.P(au) + mag.AT(den_pv) + np.abs(c)
    den_y = mag.A(au) + np.abs(b) + den_s
    if blocks:
        den_y = p.block_max(den_y)
    return np.concatenate([den_x, den_y], axis=1)


def backward_error(ops: BatchOps, c: np.ndarray, b: np.ndarray, u: np.ndarray,
                   v: np.ndarray, pv: np.ndarray, F: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Componentwise relative backward error of F(u, v) = 0, per instance (B,):

        ω = max_i |F_i| / (|P||u| + |A|ᵀ|y| + |c|)_i  over the first n rows,
            max_i |F_i| / (|A||u| + |b| + |s|)_i    over the last m,

    with y = Π(v) and s = Π(v) − v, which on a cone that is not a product of half-lines
    (second-order, PSD, exponential, power) are known to rounding relative to the block's
    largest |Π(v)| + |v| (Π mixes a block's entries): there that stands in for |y| and |s|,
    and the second denominator is its maximum over the block. Returns ω and the
    denominators (B, n + m).

    ω is the smallest relative change of the data, entry by entry, that makes (u, v)
    exact (Oettli & Prager 1964; Higham, *Accuracy and Stability of Numerical
    Algorithms*, §7.2), so it is invariant to any diagonal scaling of rows and columns: a
    1e9 entry judges only its own row. A row whose terms are all (nearly) zero is judged
    at SCALE_FLOOR of the instance's largest row scale; the denominators returned are the
    terms themselves, without that floor (the size of each row's rounding).
    """
    den = row_terms(ops, c, b, u, v, pv)
    return omega(F, den), den


def omega(F: np.ndarray, den: np.ndarray) -> np.ndarray:
    """`backward_error`'s ω from the residual F and its rows' terms ``den`` (B, n + m) each."""
    # rows whose terms are all below SCALE_FLOOR of the largest are judged at that level
    # (SCS leaves values such as 1e-320 where the exact ones are 0)
    floored = np.maximum(den, SCALE_FLOOR * den.max(axis=-1, initial=0.0)[..., None])
    aF = np.abs(F)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(aF == 0, 0.0, aF / floored)
    out = ratio.max(axis=-1, initial=0.0)
    return np.where(np.isnan(out), np.inf, out)


def _merit(ops: BatchOps, c: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray,
           pv: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refinement's merit (B,): ω (`backward_error`) where ω < ½, else 1 + η with
    η = ‖F‖∞ / max_i den_i, the normwise backward error; and ω and den themselves.

    Near a solution ω measures what the certificate asks for; far from one it saturates
    at ~1 (a row whose one nonzero term is wrong has ω_i = 1 however wrong it is) and
    cannot tell better points from worse, which η can. Every point with ω < ½ ranks above
    every point without, so a decrease of the merit is progress in both regimes."""
    omega, den = backward_error(ops, c, b, u, v, pv, F)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.abs(F).max(axis=1, initial=0.0) / den.max(axis=1, initial=0.0)
    eta = np.where(np.isfinite(eta), eta, np.inf)
    return np.where(omega < 0.5, omega, 1.0 + np.minimum(eta, 1.0) + (eta > 1.0) * eta), \
        omega, den


def refine(ops: BatchOps, c: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray,
           s: np.ndarray, tol: float = REFINE_TOL, max_iters: int = REFINE_MAX_ITERS,
           extended: bool = False, flip: bool = True) -> Refined:
    """Refine every finite instance of the batch; instances with NaN are left alone.

    With ``extended`` (where `extended_ok`), the residual F and Π(v) are evaluated in long
    double (`EXTENDED`), and steps go on past ``tol`` to EXTENDED_TOL while they decrease
    ω; ``converged`` is still ω <= ``tol``.

    Globalized by a watchdog (Chamberlain, Powell, Lemaréchal, Pedersen 1982): the full
    Newton step is taken even when it does not decrease ω, up to WATCHDOG times in a
    row; if by then ω has not fallen sufficiently below that of the best point so far
    (the anchor), refinement returns to the anchor and backtracks along the anchor's own
    Newton direction. Away from the solution a semismooth Newton step changes which side
    of the cone's kinks many coordinates are on, which can raise ω once even though the
    next step is exact: sparsemax n = 10,000 from SCS at eps 1e-3 takes 2 full steps,
    where a monotone line search took 10.

    With ``flip``, an instance that ends short of ``tol`` with ω <= FLIP_OMEGA is refined
    once more from its point with its near-kink coordinates mirrored (FLIP_TOL), and with
    FLIP_CONE_FROM < ω <= FLIP_CONE_OMEGA from its point with its second-order and PSD cones
    mirrored in wider tiers (FLIP_SPREAD, FLIP_WIDE), and takes the first result that converges: a
    least-squares Newton step between two structures that cannot both hold converges only
    linearly (`cones.flip_near_kinks`).
    """
    t = ops.template
    dims = t.dims
    B = len(x)
    # the anchor: the best point so far (what is returned), and its Newton direction
    u, v = x.copy(), y - s
    # DΠ at the current iterates; its `point` is Π itself (one pass of the cone code for both)
    # (in extended precision DΠ too: a second-order cone's small eigenvalue ½(1 + t/‖x‖) at
    # v = y − s with |y| ~ 1e-13 |s| is all cancellation in float64)
    wide = EXTENDED if extended else np.float64
    Dc = dproject(v.astype(wide, copy=False), dims, dual=True, start=exp_roots_at(s, y, dims))
    pv, F = _evaluate(ops, c, b, u, v, Dc.point.copy(), extended)
    res, omega, den = _merit(ops, c, b, u, v, pv, F)  # (at the anchors)
    target = min(tol, EXTENDED_TOL) if extended else tol
    omega0 = omega.copy()
    d_anchor = np.zeros_like(F)
    # the current iterate, ahead of the anchor by `watch` non-monotone full steps
    cu, cv, cF = u.copy(), v.copy(), F.copy()
    watch = np.zeros(B, dtype=int)
    steps = np.zeros(B, dtype=int)
    factors: list = [None] * B
    D_factored = Dc.take(np.arange(B))  # (a copy)
    active = np.isfinite(res) & (res > target)
    for _ in range(max_iters):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        every = idx.size == B  # (then the batch's own arrays, not copies)
        sub = ops if every else ops.take(idx)
        # a later step reuses the previous step's factorization where S moved little (the
        # solve is then refined iteratively against the new S: still an exact Newton step);
        # the list is the only other holder, so each is freed once replaced
        previous = [factors[i] for i in idx.tolist()]
        for i in idx:
            factors[i] = None
        Dsub = Dc if every else Dc.take(idx)
        lin = Linearization(sub, Dsub, reuse=previous, newton=True)
        del previous
        # A singular S gives the least-squares step (its pseudo-inverse: `TruncatedSVD`,
        # `SparsePinv`); one whose pseudo-inverse is not at hand gives no step (NaN: LSMR is
        # costly): the instance goes back to its anchor, and if that is where it is, stops,
        # to be solved again by SCS at a tight tolerance.
        d = -lin.solve(cF[idx], iterative=False, tol=NEWTON_SOLVE_TOL)
        steps[idx] += 1
        at_anchor = watch[idx] == 0
        d_anchor[idx[at_anchor]] = d[at_anchor]
        # the full step from the current iterate
        un, vn = cu[idx] + d[:, : t.n], cv[idx] + d[:, t.n :]
        Dn = dproject(vn.astype(wide, copy=False), dims, dual=True, near=Dsub)
        pvn, Fn = _evaluate(sub, c if every else c[idx], b if every else b[idx], un, vn,
                            Dn.point, extended)
        rn, omn, denn = _merit(sub, c if every else c[idx], b if every else b[idx], un, vn,
                               pvn, Fn)
        good = rn <= (1 - SUFFICIENT_DECREASE) * res[idx]
        ahead = ~good & np.isfinite(rn) & (watch[idx] < WATCHDOG)
        for j in np.flatnonzero(good | ahead):
            factors[idx[j]] = lin.factors[j] if good[j] else None
        gi, ai = idx[good], idx[ahead]
        # Newton converges quadratically at a regular solution; an instance whose ω, already
        # small, fell by less than LINEAR_RATE in a step is converging linearly (a
        # degenerate point: a least-squares step on a singular S) and stops where it is
        slow = good & (rn <= SLOW_OMEGA) & (rn > res[idx] / LINEAR_RATE)
        active[idx[slow]] = False
        u[gi], v[gi], pv[gi], F[gi], res[gi] = un[good], vn[good], pvn[good], Fn[good], rn[good]
        omega[gi], den[gi] = omn[good], denn[good]
        cu[idx], cv[idx] = un, vn
        cF[idx] = Fn
        if gi.size:
            D_factored.put(gi, Dc.take(gi))
        Dc.put(idx, Dn)
        watch[gi] = 0
        watch[ai] += 1
        # the others go back to their anchor and backtrack along its Newton direction
        back = idx[~good & ~ahead]
        if back.size:
            moved = _backtrack(ops.take(back), c[back], b[back], u[back], v[back], pv[back],
                               F[back], res[back], d_anchor[back], t.n, extended)
            ok, (ub, vb, pvb, Fb, rb, ob, db) = moved
            bi = back[ok]
            u[bi], v[bi], pv[bi], F[bi], res[bi] = ub[ok], vb[ok], pvb[ok], Fb[ok], rb[ok]
            omega[bi], den[bi] = ob[ok], db[ok]
            active[back[~ok]] = False  # no step decreases the residual: stagnation
            for i in back:
                factors[i] = None
            cu[back], cv[back], cF[back] = u[back], v[back], F[back]
            Dc.put(back, dproject(cv[back].astype(wide, copy=False), dims, dual=True))
            watch[back] = 0
        active &= res > target
    stalled = np.isfinite(res) & (res > target) if flip and max_iters > 0 \
        else np.zeros(B, dtype=bool)
    tiers: list = [(stalled & (omega <= FLIP_OMEGA), FLIP_TOL, True)]
    cones = stalled & (omega > FLIP_CONE_FROM) & (omega <= FLIP_CONE_OMEGA)
    if (dims.soc or dims.psd) and cones.any():
        tiers.append((cones, np.maximum(FLIP_TOL, FLIP_SPREAD * omega), False))
        tiers += [(cones, wide, False) for wide in FLIP_WIDE]
    tried = v.copy() if stalled.any() else v  # each instance's last mirrored point
    for which, wide, nonneg in tiers:
        idx = np.flatnonzero(which & (res > target))
        if not idx.size:
            continue
        vf = flip_near_kinks(v[idx], dims, wide[idx] if np.ndim(wide) else wide, nonneg)
        changed = np.any((vf != v[idx]) & (vf != tried[idx]), axis=1)
        moved, vf = idx[changed], vf[changed]
        if not moved.size:
            continue
        tried[moved] = vf
        sub = ops.take(moved)
        yf = project_dual(vf, sub)
        again = refine(sub, c[moved], b[moved], u[moved], yf, yf - vf, tol=tol,
                       max_iters=FLIP_ITERS, extended=extended, flip=False)
        steps[moved] += again.steps
        won = again.converged & (again.omega < omega[moved])
        wi, js = moved[won], np.flatnonzero(won)
        u[wi], v[wi], pv[wi], F[wi] = again.x[js], again.v[js], again.y[js], again.F[js]
        omega[wi], den[wi], res[wi] = again.omega[js], again.den[js], again.omega[js]
        cv[wi] = again.v_D[js]
        if wi.size:
            Dc.put(wi, again.D.take(js))
            D_factored.put(wi, again.D_factored.take(js))
        for i, j in zip(wi.tolist(), js.tolist(), strict=True):
            factors[i] = again.factors[j]
    return Refined(x=u, y=pv, s=pv - v, omega_before=omega0, omega=omega, den=den,
                   steps=steps, F=F, factors=factors, v=v, D=Dc, v_D=cv, converged=res <= tol,
                   D_factored=D_factored)


def _backtrack(ops: BatchOps, c: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray,
               pv: np.ndarray, F: np.ndarray, res: np.ndarray, d: np.ndarray, n: int,
               extended: bool = False):
    """Armijo backtracking on ω (`backward_error`) from (u, v) along d, from step ½ (the
    full step failed).

    Returns (accepted (B,), (u, v, Π(v), F, merit, ω, den) at the accepted points)."""
    u, v, pv, F, res = u.copy(), v.copy(), pv.copy(), F.copy(), res.copy()
    omega, den = np.zeros(len(u)), np.zeros_like(F)
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
        pvn, Fn = _evaluate(opk, c[k], b[k], un, vn, None, extended)
        rn, omn, denn = _merit(opk, c[k], b[k], un, vn, pvn, Fn)
        ok = rn <= (1 - SUFFICIENT_DECREASE * step[k]) * res[k]
        acc = k[ok]
        u[acc], v[acc], pv[acc], F[acc], res[acc] = un[ok], vn[ok], pvn[ok], Fn[ok], rn[ok]
        omega[acc], den[acc] = omn[ok], denn[ok]
        pending[acc] = False
        step[k[~ok]] *= 0.5
    accepted = ~pending & np.all(np.isfinite(d), axis=1)
    return accepted, (u, v, pv, F, res, omega, den)
