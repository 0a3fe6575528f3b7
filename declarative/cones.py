"""Euclidean projections onto the cones SCS uses, and their derivatives, batched.

A vector ``v`` of length ``m = dims.size`` is the concatenation, in SCS 3.x order, of blocks
for: the zero cone, the nonnegative orthant, second-order cones ``(t, x)`` (``||x||_2 <= t``,
``t`` first), PSD cones stored in SCS's ``svec`` (lower triangle column by column, off-diagonal
entries scaled by ``sqrt(2)``), primal exponential cones ``(r, s, t)`` with
``s*exp(r/s) <= t`` (closure) and dual exponential cones ``(u, v, w)`` with
``-u*exp(v/u) <= e*w``, ``u < 0`` (closure), and 3-d power cones ``(x, y, z)`` with
``x**a * y**(1-a) >= |z|``, ``x, y >= 0`` for an exponent ``0 < a < 1``, or their duals
``(x/a)**a * (y/(1-a))**(1-a) >= |z|``, ``x, y >= 0`` (SCS's ``p`` entry ``-a``).

Every function works on a batch ``(B, m)`` at once: all cones of one kind (and, for SOC and PSD,
one size) are handled by a single vectorized numpy computation over cones and batch.

The derivative ``DΠ(v)`` is what implicit differentiation through the residual map of the
homogeneous self-dual embedding needs (Agrawal et al. 2019, "Differentiating through a cone
program"). At the measure-zero set of points where the projection is not differentiable, one
consistent element of the Clarke generalized Jacobian is used: a point on the boundary of a cone
``K`` is treated as lying in ``K`` (derivative of the ``K`` side). In particular
``d max(x, 0)/dx = 1`` at ``x = 0`` (diffcp uses ``1/2`` there), a PSD eigenvalue ``0`` counts as
nonnegative, an SOC point with ``||x|| == t`` gets the identity and one with ``||x|| == -t != 0``
gets zero, an exponential- or power-cone point on the boundary of K gets the identity (one on
the boundary of the polar gets zero). NaN in a cone block gives NaN in that block only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

__all__ = ["ConeDims", "DProjection", "block_pattern", "curved_limits", "dproject", "project",
           "release_kinks", "snap_kinks"]

_SQRT2 = math.sqrt(2.0)
_EPS = np.finfo(np.float64).eps
_KIND_ORDER = ("zero", "nonneg", "soc", "psd", "exp", "exp_dual", "power")


# ----------------------------------------------------------------------------------------------
# Cone dimensions
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConeDims:
    """Sizes of a product of cones, laid out in SCS 3.x order.

    ``zero``/``nonneg``: lengths of the zero cone and the nonnegative orthant; ``soc``: sizes of
    the second-order cones (each counts ``t``); ``psd``: orders ``k`` of the PSD cones (each takes
    ``k(k+1)/2`` entries); ``exp``/``exp_dual``: numbers of primal/dual exponential cones (3
    entries each); ``power``: exponents ``alpha`` of 3-d power cones (negative = dual, as in SCS).
    Lists are accepted and stored as tuples, so instances are hashable.
    """

    zero: int = 0
    nonneg: int = 0
    soc: tuple[int, ...] = ()
    psd: tuple[int, ...] = ()
    exp: int = 0
    exp_dual: int = 0
    power: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("zero", "nonneg", "exp", "exp_dual"):
            val = getattr(self, name)
            if isinstance(val, bool) or int(val) != val or val < 0:
                raise ValueError(f"ConeDims.{name} must be a nonnegative integer, got {val!r}")
            object.__setattr__(self, name, int(val))
        for name in ("soc", "psd"):
            vals = tuple(getattr(self, name))
            for k in vals:
                if isinstance(k, bool) or int(k) != k or k < 1:
                    raise ValueError(
                        f"ConeDims.{name} must hold positive integers (cone sizes), got {vals!r}"
                    )
            object.__setattr__(self, name, tuple(int(k) for k in vals))
        alphas = tuple(float(a) for a in self.power)
        for a in alphas:
            if not 0.0 < abs(a) < 1.0:
                raise ValueError(
                    "ConeDims.power exponents must lie in (-1, 0) or (0, 1) (alpha of a power "
                    f"cone, negative for its dual), got {alphas!r}"
                )
        object.__setattr__(self, "power", alphas)

    @property
    def size(self) -> int:
        """Total length ``m`` of a vector in the product cone."""
        return (
            self.zero
            + self.nonneg
            + sum(self.soc)
            + sum(k * (k + 1) // 2 for k in self.psd)
            + 3 * (self.exp + self.exp_dual + len(self.power))
        )

    @property
    def polyhedral(self) -> bool:
        """Only zero and nonnegative cones (DΠ piecewise constant, an active-set method
        applies)."""
        return self.zero + self.nonneg == self.size

    def scs(self) -> dict:
        """The SCS cone dictionary (``z, l, q, s, ep, ed, p``), empty entries omitted."""
        out: dict = {}
        if self.zero:
            out["z"] = self.zero
        if self.nonneg:
            out["l"] = self.nonneg
        if self.soc:
            out["q"] = list(self.soc)
        if self.psd:
            out["s"] = list(self.psd)
        if self.exp:
            out["ep"] = self.exp
        if self.exp_dual:
            out["ed"] = self.exp_dual
        if self.power:
            out["p"] = list(self.power)
        return out

    @classmethod
    def from_scs(cls, cone: dict) -> ConeDims:
        """Inverse of :meth:`scs` (``"f"`` is accepted as the old name of ``"z"``)."""
        known = {"z", "f", "l", "q", "s", "ep", "ed", "p"}
        unknown = set(cone) - known
        if unknown:
            raise ValueError(
                f"unsupported SCS cone keys {sorted(unknown)}; supported: {sorted(known)}"
            )
        as_tuple = lambda x: tuple(x) if isinstance(x, (list, tuple, np.ndarray)) else (x,)  # noqa: E731
        return cls(
            zero=int(cone.get("z", 0)) + int(cone.get("f", 0)),
            nonneg=int(cone.get("l", 0)),
            soc=as_tuple(cone.get("q", ())),
            psd=as_tuple(cone.get("s", ())),
            exp=int(cone.get("ep", 0)),
            exp_dual=int(cone.get("ed", 0)),
            power=as_tuple(cone.get("p", ())),
        )

    def kinds(self) -> tuple[str, ...]:
        """Names of the cone kinds present, in SCS order (subset of ``zero, nonneg, soc, psd,
        exp, exp_dual, power``)."""
        present = {
            "zero": self.zero > 0,
            "nonneg": self.nonneg > 0,
            "soc": len(self.soc) > 0,
            "psd": len(self.psd) > 0,
            "exp": self.exp > 0,
            "exp_dual": self.exp_dual > 0,
            "power": len(self.power) > 0,
        }
        return tuple(k for k in _KIND_ORDER if present[k])


@dataclass(frozen=True)
class ConeLayout:
    """Index arrays of every cone kind inside a vector of length m."""

    m: int
    zero: slice
    nonneg: slice
    soc: tuple[tuple[int, np.ndarray], ...]  # (size k, idx (ncones, k)) per distinct size
    psd: tuple[tuple[int, np.ndarray], ...]  # (order k, idx (ncones, k(k+1)/2)) per order
    exp: np.ndarray  # (n_exp + n_exp_dual, 3), primal exp cones first
    n_exp: int
    pow: np.ndarray  # (n_power, 3)
    alpha: np.ndarray  # (n_power,) signed exponents (negative: dual cone)


@functools.lru_cache(maxsize=256)
def cone_layout(dims: ConeDims) -> ConeLayout:
    """Where each cone kind's entries sit in a vector of length dims.size (cached per dims)."""
    off = 0
    zero = slice(off, off + dims.zero)
    off += dims.zero
    nonneg = slice(off, off + dims.nonneg)
    off += dims.nonneg
    soc_groups: dict[int, list[np.ndarray]] = {}
    for k in dims.soc:
        soc_groups.setdefault(k, []).append(np.arange(off, off + k))
        off += k
    psd_groups: dict[int, list[np.ndarray]] = {}
    for k in dims.psd:
        kk = k * (k + 1) // 2
        psd_groups.setdefault(k, []).append(np.arange(off, off + kk))
        off += kk
    n3 = dims.exp + dims.exp_dual
    exp = np.arange(off, off + 3 * n3).reshape(n3, 3)
    off += 3 * n3
    n_pow = len(dims.power)
    pw = np.arange(off, off + 3 * n_pow).reshape(n_pow, 3)
    off += 3 * n_pow
    assert off == dims.size
    soc = tuple((k, np.stack(g)) for k, g in sorted(soc_groups.items()))
    psd = tuple((k, np.stack(g)) for k, g in sorted(psd_groups.items()))
    return ConeLayout(dims.size, zero, nonneg, soc, psd, exp, dims.exp, pw,
                   np.asarray(dims.power, dtype=np.float64))


def _as_batch(v: np.ndarray, dims: ConeDims) -> tuple[np.ndarray, bool]:
    v = np.asarray(v)
    if v.dtype != np.longdouble:  # (kept for the zero, nonnegative and second-order cones'
        v = v.astype(np.float64, copy=False)  # projections in extended precision: refine.py)
    if v.ndim not in (1, 2) or v.shape[-1] != dims.size:
        raise ValueError(
            f"expected v of shape (m,) or (B, m) with m = dims.size = {dims.size}, got {v.shape}"
        )
    return (v[None, :], True) if v.ndim == 1 else (v, False)


# ----------------------------------------------------------------------------------------------
# svec helpers (SCS convention)
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def svec_index(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows I, cols J, unvec scale, svec weight) for svec of order k: lower triangle by column."""
    a, b = np.triu_indices(k)  # a <= b, sorted by a then b
    I, J = b, a  # lower triangle (I >= J), column by column
    diag = I == J
    unscale = np.where(diag, 1.0, 1.0 / _SQRT2)
    weight = np.where(diag, 0.5, 1.0 / _SQRT2)  # svec(M)_p = (M_IJ + M_JI) * weight
    return I, J, unscale, weight


def _unvec(s: np.ndarray, k: int) -> np.ndarray:
    """(..., k(k+1)/2) svec -> (..., k, k) symmetric matrices."""
    I, J, unscale, _ = svec_index(k)
    M = np.zeros(s.shape[:-1] + (k, k))
    vals = s * unscale
    M[..., I, J] = vals
    M[..., J, I] = vals
    return M


def _svec(M: np.ndarray, k: int) -> np.ndarray:
    """(..., k, k) -> (..., k(k+1)/2), symmetrizing M."""
    I, J, _, weight = svec_index(k)
    return (M[..., I, J] + M[..., J, I]) * weight


# ----------------------------------------------------------------------------------------------
# Second-order cone
# ----------------------------------------------------------------------------------------------
def _soc(V: np.ndarray, want_deriv: bool):
    """Projection onto {(t, x): ||x|| <= t} of V (..., k) (Parikh & Boyd, Proximal Algorithms
    §6.3.2): V if ||x|| <= t; 0 if ||x|| <= -t; else ((||x|| + t)/2) (1, x/||x||).

    Derivative (Ali, Wong & Kolter 2017), in the third case
    ``[[1/2, x̂ᵀ/2], [x̂/2, (n+t)/(2n) I − t/(2n) x̂x̂ᵀ]]`` with n = ||x||, x̂ = x/n; stored as
    coefficients (a, b, c, d) of ``[[a, b x̂ᵀ], [b x̂, c I + d x̂x̂ᵀ]]``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return _soc_impl(V, want_deriv)


def _soc_impl(V: np.ndarray, want_deriv: bool):
    t = V[..., 0]
    x = V[..., 1:]
    n = np.linalg.norm(x, axis=-1)
    inside = n <= t
    polar = ~inside & (n <= -t)
    mid = ~inside & ~polar
    nsafe = np.where(mid, n, 1.0)
    alpha = np.where(mid, 0.5 * (1.0 + t / nsafe), 0.0)
    P = np.empty_like(V)
    P[..., 0] = np.where(inside, t, alpha * n)
    P[..., 1:] = np.where(inside[..., None], x, alpha[..., None] * x)
    if not want_deriv:
        return P, None
    xh = np.where(mid[..., None], x / nsafe[..., None], 0.0)
    one = inside.astype(np.float64)
    bad = np.isnan(t) | np.isnan(n)
    a = np.where(bad, np.nan, np.where(mid, 0.5, one))
    b = np.where(bad, np.nan, np.where(mid, 0.5, 0.0))
    c = np.where(bad, np.nan, np.where(mid, alpha, one))  # (n + t) / (2n)
    d = np.where(bad, np.nan, np.where(mid, -0.5 * t / nsafe, 0.0))
    return P, (a, b, c, d, xh)


def _soc_matvec(coef, X: np.ndarray) -> np.ndarray:
    """X: (B, nc, k, K) -> same."""
    a, b, c, d, xh = coef
    dt = X[:, :, 0, :]
    dx = X[:, :, 1:, :]
    xd = np.einsum("bnj,bnjk->bnk", xh, dx)
    out = np.empty_like(X)
    out[:, :, 0, :] = a[..., None] * dt + b[..., None] * xd
    out[:, :, 1:, :] = (
        xh[..., None] * (b[..., None] * dt + d[..., None] * xd)[:, :, None, :]
        + c[..., None, None] * dx
    )
    return out


def _soc_blocks(coef) -> np.ndarray:
    a, b, c, d, xh = coef
    k = xh.shape[-1] + 1
    blk = np.empty(a.shape + (k, k))
    blk[..., 0, 0] = a
    blk[..., 0, 1:] = b[..., None] * xh
    blk[..., 1:, 0] = b[..., None] * xh
    blk[..., 1:, 1:] = d[..., None, None] * xh[..., :, None] * xh[..., None, :]
    idx = np.arange(1, k)
    blk[..., idx, idx] += c[..., None]
    return blk


def _soc_low_rank(coef) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each second-order cone block of DΠ as base·I + Q diag(h) Qᵀ with Q's columns in the span
    of e₀ and (0, x̂): (base (…,), R (…, 2, 2), h (…, 2)), Q = [e₀, (0, x̂)] R. With the
    coefficients of `_soc` the block minus c·I is [[a − c, b x̂ᵀ], [b x̂, d x̂x̂ᵀ]], which is
    W = [[a − c, b], [b, d]] in that orthonormal pair: base = c and (h, R) W's eigenpairs. Inside
    the cone (DΠ = I) and in its polar (DΠ = 0) W = 0; in between its rank is 2."""
    a, b, c, d, _ = coef
    W = np.empty(a.shape + (2, 2))
    W[..., 0, 0] = a - c
    W[..., 0, 1] = W[..., 1, 0] = b
    W[..., 1, 1] = d
    bad = ~np.asarray(np.isfinite(W).all(axis=(-1, -2)))
    h, R = np.linalg.eigh(np.where(bad[..., None, None], 0.0, W))
    h[bad] = np.nan
    return c, R, h


# ----------------------------------------------------------------------------------------------
# PSD cone
# ----------------------------------------------------------------------------------------------
def _psd(S: np.ndarray, k: int, want_deriv: bool):
    """Projection onto the PSD cone in svec coordinates: Π(X) = U max(Λ, 0) Uᵀ.

    Derivative by the Daleckii–Krein formula DΠ(X)[H] = U (Γ ∘ (Uᵀ H U)) Uᵀ with
    Γ_ij = (λi⁺ − λj⁺)/(λi − λj) (1 if λi, λj >= 0, 0 if both < 0); svec is an isometry, so the
    operator is symmetric in svec coordinates too.
    """
    bad = ~np.all(np.isfinite(S), axis=-1)  # non-finite blocks: NaN out, LAPACK kept out of it
    X = _unvec(np.where(bad[..., None], 0.0, S), k)
    lam, U = np.linalg.eigh(X)
    lam[bad] = np.nan
    lp = np.maximum(lam, 0.0)
    P = _svec((U * lp[..., None, :]) @ np.swapaxes(U, -1, -2), k)
    if not want_deriv:
        return P, None
    pos = lam >= 0.0
    pi, pj = pos[..., :, None], pos[..., None, :]
    mixed = pi != pj
    num = lp[..., :, None] - lp[..., None, :]
    den = lam[..., :, None] - lam[..., None, :]
    G = np.where(mixed, num / np.where(mixed, den, 1.0), (pi & pj).astype(np.float64))
    G[bad] = np.nan
    return P, (U, G)


def _psd_matvec(data, X: np.ndarray, k: int) -> np.ndarray:
    """X: (B, nc, kk, K) -> same."""
    U, G = data
    H = _unvec(np.moveaxis(X, -1, 1), k)  # (B, K, nc, k, k)
    Ub = U[:, None]
    Ut = np.swapaxes(Ub, -1, -2)
    M = Ub @ (G[:, None] * (Ut @ H @ Ub)) @ Ut
    return np.moveaxis(_svec(M, k), 1, -1)


def _psd_ranks(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ranks of DΠ − 0·I and DΠ − I on PSD blocks from their divided differences in svec
    order g (…, kk): the entries of Γ not 0, not 1 (`_psd_columns` takes the smaller)."""
    return np.count_nonzero(g, axis=-1), np.count_nonzero(g - 1.0, axis=-1)


def _psd_columns(U: np.ndarray, G: np.ndarray, k: int
                 ) -> tuple[float, np.ndarray, np.ndarray]:
    """For one PSD cone of order k (U, G: (k, k)): DΠ − base·I = Q diag(h) Qᵀ with only the
    columns of Q where h = Γ − base ≠ 0, as (base, Q (kk, ρ), h (ρ,)), base 0 or 1, whichever
    leaves fewer columns. Qᵀ is the orthogonal matrix of
    svec(H) ↦ svec(UᵀHU): Q[(i,j), (a,b)] = c_ij c_ab (U_ia U_jb + U_ja U_ib) / 2, c = 1 on the
    diagonal and sqrt(2) off it. Γ = 0 for pairs of eigenvalues both negative and 1 for pairs
    both positive, so with base 0 (or 1) ρ is the number of pairs with one eigenvalue
    positive (negative): r(r+1)/2 + r(k−r) at r of them."""
    I, J, _, _ = svec_index(k)
    c = np.where(I == J, 1.0, _SQRT2)
    g = G[I, J]
    on_zero, on_one = _psd_ranks(g)
    base = 0.0 if on_zero <= on_one else 1.0
    h = g - base
    nz = np.flatnonzero(h)  # NaN (a non-finite block) included: it stays NaN
    a, b = I[nz], J[nz]
    # the columns U_.a, U_.b (k × ρ) first, then their rows i, j of every svec entry (i, j):
    # gathers from k × ρ arrays, not k² × k (5× faster at k = 50)
    Ua, Ub = U[:, a], U[:, b]
    Q = Ua[I] * Ub[J]
    Q += Ua[J] * Ub[I]
    Q *= (0.5 * c[:, None]) * c[None, nz]
    return base, Q, h[nz]


def _psd_blocks(data, k: int) -> np.ndarray:
    """Dense (…, kk, kk) blocks DΠ = base·I + Q diag(h) Qᵀ (`_psd_columns`, the base leaving
    fewer columns), one block at a time: O(kk² ρ) each."""
    U, G = data
    kk = k * (k + 1) // 2
    lead = U.shape[:-2]
    Uf, Gf = U.reshape(-1, k, k), G.reshape(-1, k, k)
    out = np.empty((Uf.shape[0], kk, kk))
    diag = np.arange(kk)
    for b in range(Uf.shape[0]):
        base, Q, h = _psd_columns(Uf[b], Gf[b], k)
        blk = (Q * h) @ Q.T
        out[b] = 0.5 * (blk + blk.T)
        out[b, diag, diag] += base
    return out.reshape(*lead, kk, kk)


# ----------------------------------------------------------------------------------------------
# Exponential cone (Friberg 2021)
# ----------------------------------------------------------------------------------------------
def _exp_h(rho, r0, s0, t0):
    """Friberg's h(ρ) = ((ρ−1)r0 + s0)e^ρ − (r0 − ρ s0)e^{−ρ} − (ρ² − ρ + 1)t0 and h'(ρ)."""
    ep = np.exp(rho)
    en = np.exp(-rho)
    f = ((rho - 1.0) * r0 + s0) * ep - (r0 - rho * s0) * en - (rho * (rho - 1.0) + 1.0) * t0
    df = (rho * r0 + s0) * ep + (r0 - (rho - 1.0) * s0) * en - (2.0 * rho - 1.0) * t0
    return f, df


def _mid(lo, hi):
    """Bisection point in asinh scale: the arithmetic midpoint for |ρ| ≲ 1, the geometric one for
    large |ρ| (brackets like [−1e200, 0] take ~60 halvings instead of ~700)."""
    m = np.sinh(0.5 * (np.arcsinh(lo) + np.arcsinh(hi)))
    return np.where((m > lo) & (m < hi), m, 0.5 * (lo + hi))


NEWTON_FLOOR = 1e-10


def _bracketed_newton(fn, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, active: np.ndarray,
                      rising: bool, iters: int, mid) -> np.ndarray:
    """The roots of a batch of monotone scalar functions by safeguarded Newton: ``fn(x, i)``
    gives (f, f') at the points x of the problems i; each root lies in its bracket
    [lo, hi], which every evaluation narrows (f < 0 left of the root where ``rising``, f > 0
    where not). A Newton point outside the bracket, or a step not at most half the one before
    last, is replaced by ``mid(lo, hi)``. Updates ``x`` (and the brackets) in place where
    ``active`` and returns it."""
    dx_old = hi - lo
    dx = dx_old.copy()
    n = x.shape[0]
    for _ in range(iters):
        if active.size == 0:
            break
        # every problem still active (``active`` is then 0 … n − 1): views, not gathers
        at = slice(None) if active.size == n else active
        xa = x[at]
        f, df = fn(xa, at)
        right = f < 0 if rising else f > 0  # the root is right of xa
        l = np.where(right, xa, lo[at])
        h = np.where(right, hi[at], xa)
        lo[at], hi[at] = l, h
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = f / df
        new = xa - step
        ok = (
            np.isfinite(new)
            & (new > l)
            & (new < h)
            & (np.abs(2.0 * step) <= np.abs(dx_old[at]))
        )
        bad = ~ok
        if bad.any():  # (the midpoint costs transcendentals: only where Newton is refused)
            new[bad] = mid(l[bad], h[bad])
        dx_old[at] = dx[at]
        dx[at] = np.where(ok, step, h - l)
        scale = np.maximum(1.0, np.abs(xa))
        # A Newton step so small that it is rounding noise yet refused by the safeguard (it did
        # not halve) means Newton has converged as far as float64 allows: stop there, rather
        # than bisect the rest of the bracket (softmax's cones: 55 evaluations instead of 7).
        floor = ~ok & (np.abs(step) <= NEWTON_FLOOR * scale)
        stop = (f == 0) | floor
        done = stop | (np.abs(new - xa) <= 2 * _EPS * scale) | (h - l <= 2 * _EPS * scale)
        x[at] = np.where(stop, xa, new)  # (xa read before: it may be a view of x)
        active = active[~done]
    return x


def _exp_root(r0, s0, t0, start: np.ndarray | None = None) -> np.ndarray:
    """Root of h on the bracket where s(ρ) = ((ρ−1)r0+s0)/q > 0 and m(ρ) = (r0−ρs0)/q > 0.

    Requires r0 > 0 or s0 > 0 (and v0 outside K and its polar). The finite bracket ends are
    1 − s0/r0 (r0 > 0) and r0/s0 (s0 > 0); a missing end is found by doubling steps. Then
    safeguarded Newton (bisection fallback), all cones at once, to full float64 accuracy,
    from ``start`` where it is finite and inside the bracket (a root of a nearby point), else
    from the bracket's midpoint.
    """
    lo = np.where(r0 > 0, 1.0 - s0 / np.where(r0 > 0, r0, 1.0), -np.inf)
    hi = np.where(s0 > 0, r0 / np.where(s0 > 0, s0, 1.0), np.inf)
    # Expand the missing ends (h -> -inf as ρ -> -inf when r0 <= 0 < s0; h -> +inf as ρ -> +inf
    # when s0 <= 0 < r0).
    for side in ("lo", "hi"):
        miss = np.flatnonzero(np.isinf(lo) if side == "lo" else np.isinf(hi))
        step = 1.0
        for _ in range(64):
            if miss.size == 0:
                break
            if side == "lo":
                cand = hi[miss] - step
            else:
                cand = lo[miss] + step
            f, _ = _exp_h(cand, r0[miss], s0[miss], t0[miss])
            neg = f < 0
            if side == "lo":
                lo[miss[neg]] = cand[neg]
                hi[miss[~neg]] = cand[~neg]
                miss = miss[~neg]
            else:
                hi[miss[~neg]] = cand[~neg]
                lo[miss[neg]] = cand[neg]
                miss = miss[neg]
            step *= 2.0
    # Newton with bisection whenever the Newton point leaves the bracket or the step is not at
    # most half the one before last (far from the root h behaves like an exponential, where
    # plain Newton advances by O(1) per step).
    if start is None:
        rho = _mid(lo, hi)
    else:
        inside = (start > lo) & (start < hi)  # (NaN: not inside)
        if inside.all():
            rho = start.astype(np.result_type(start, lo))  # (a copy: Newton updates it)
        else:
            rho = np.where(inside, start, _mid(lo, hi))
    return _bracketed_newton(
        lambda x, i: _exp_h(x, r0[i], s0[i], t0[i]), rho, lo, hi,
        np.flatnonzero(np.isfinite(rho)), rising=True, iters=300, mid=_mid)


def _exp_primal_deriv(rho, sp, m, complement=None) -> np.ndarray:
    """DΠ_K at v0 = vp + vq, vp = sp·a(ρ) on the smooth boundary, a = (ρ, 1, e^ρ), vq = m·e^{−ρ}·b.

    The boundary is ruled: DΠ = u1u1ᵀ + u2u2ᵀ/(1 + d κ), u1 = a/|a|, u2 ⟂ a and the normal
    b = (e^ρ, (1−ρ)e^ρ, −1), i.e. u2 ∝ c = a × b; d κ = (m/sp)(w·u2)² with w = (1, −ρ, 0) from
    ∇²(s e^{r/s} − t) = (e^{r/s}/s) w wᵀ (κ the normal curvature along u2, d = |vq|).

    Where ``complement`` (a mask over the cones) is set, I − DΠ_K instead, the derivative of
    the projection onto the polar cone. With u3 = b/|b| and g = 1 − f = dκ/(1 + dκ), the two
    are u1u1ᵀ + f·u2u2ᵀ and u3u3ᵀ + g·u2u2ᵀ, each diagonal entry a sum of nonnegative terms;
    an off-diagonal entry of either is minus the other's, and is taken from the form whose
    terms are smaller there (their sum cancels least). I − DΠ in floating point would keep
    the small entries only to rounding of 1: where the polar part is small beside the
    primal one (m ≪ sp: a multiplier of 1e-11 beside a slack of 1) they are 1e-20 … 1e-7,
    and a weighted log's Jacobian came out up to 3.7e-7 off with them.
    """
    pos = rho >= 0
    E = np.exp(-np.abs(rho))
    E2 = E * E
    rE = rho * E
    one = np.ones_like(rho)
    # a, c = a×b and b, rescaled by e^{−ρ}, e^{−2ρ} and e^{−ρ} when ρ >= 0 (no overflow
    # either way; the products are grouped so that |ρ| up to ~1e300 stays finite); kept as
    # their three components, each (…,): products of (…, 3) arrays would loop over 3
    # entries at a time
    a = (np.where(pos, rE, rho), np.where(pos, E, one), np.where(pos, one, E))
    c = (
        np.where(pos, -E2 - (1.0 - rho), -1.0 - (1.0 - rho) * E2),
        np.where(pos, 1.0 + rE * E, E2 + rho),
        -(rE * (rho - 1.0) + E),  # −q e^{−|ρ|}
    )
    b = (np.where(pos, one, E), np.where(pos, 1.0 - rho, (1.0 - rho) * E),
         -np.where(pos, E, one))
    nc = np.sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2])
    na = np.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])
    nb = np.sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2])
    u1 = [x / na for x in a]
    u2 = [x / nc for x in c]
    u3 = [x / nb for x in b]
    # w·u2 in closed form (c_r − ρ c_s cancels badly for large |ρ|)
    wu = -np.where(pos, (1.0 + E2 + rE * rE) / nc, (1.0 + E2) / nc + rho * (rho / nc))
    mw = np.where(m > 0, m * (wu * wu), 0.0)
    den = sp + mw
    f = np.where(den > 0, sp / np.where(den > 0, den, 1.0), 0.0)
    g = np.where(den > 0, mw / np.where(den > 0, den, 1.0), 1.0)
    # u1 u1ᵀ + f·u2 u2ᵀ, entry by entry as u1_i·u1_j + f·(u2_i·u2_j): symmetric to the bit
    U1, U2 = np.stack(u1, -1), np.stack(u2, -1)
    D = (U1[..., :, None] * U1[..., None, :]
         + f[..., None, None] * (U2[..., :, None] * U2[..., None, :]))
    # the off-diagonal entries whose terms are smaller in the complement's form, from it
    for i, j in ((0, 1), (0, 2), (1, 2)):
        w2, p1, p3 = u2[i] * u2[j], u1[i] * u1[j], u3[i] * u3[j]
        by_c = np.abs(p3) + g * np.abs(w2) < np.abs(p1) + f * np.abs(w2)
        if by_c.any():
            D[..., i, j] = D[..., j, i] = np.where(by_c, -(p3 + g * w2), D[..., i, j])
    if complement is None or not np.any(complement):
        return D
    C = -D
    for i in range(3):
        C[..., i, i] = u3[i] * u3[i] + g * (u2[i] * u2[i])
    return np.where(np.asarray(complement)[..., None, None], C, D)


# Where both root candidates are finite, |ρ| is at most RHO_PLAIN and both parts' factors s(ρ)
# and m(ρ) of v/‖v‖∞ are at least PART_PLAIN, the root's candidates are the projections to
# float64 accuracy and Friberg's heuristic points are not formed (`_exp`). Measured: of
# 1,200,000 random cones at scales 1e±300, and 580,000 at factors 1e-18 … 1 and |ρ| <= 45,
# a heuristic point was the nearer only at |ρ| >= 136 or min(s, m) <= 5e-11.
RHO_PLAIN = 40.0
PART_PLAIN = 1e-6


def _exp_heuristics(r, s, t, p_root, d_root, p_ok, d_ok):
    """Friberg's fallbacks beside the root's candidates for points v = (r, s, t) (each (k,)):
    primal, the face s = 0 and t raised onto the boundary; dual, likewise. Returns the index of
    the nearest primal and dual candidate (0: the root's, 1: the face, 2: the raised point),
    each (k,), and the candidates as (root, face, raised), each by components (r, s, t).
    Distances see the root's errors only to second order, so a heuristic wins only where the
    root's candidate is unusable or clearly farther (e^ρ out of float range)."""
    zero = np.zeros_like(r)
    p_face = (np.minimum(r, 0.0), zero, np.maximum(t, 0.0))
    s_pos = s > 0
    p_int = (r, s, np.maximum(t, s * np.exp(r / np.where(s_pos, s, 1.0))))
    d_face = (zero, np.minimum(s, 0.0), np.minimum(t, 0.0))
    r_pos = r > 0
    d_int = (r, s, np.minimum(t, -r * np.exp(s / np.where(r_pos, r, 1.0) - 1.0)))

    def dist(p):  # ‖p − v‖₂
        e = [x - y for x, y in zip(p, (r, s, t), strict=True)]
        return np.sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2])

    margin = 64 * _EPS
    pd = np.stack([np.where(p_ok, dist(p_root), np.inf) - margin, dist(p_face),
                   np.where(s_pos & np.isfinite(p_int[2]), dist(p_int), np.inf)])
    dd = np.stack([np.where(d_ok, dist(d_root), np.inf) - margin, dist(d_face),
                   np.where(r_pos & np.isfinite(d_int[2]), dist(d_int), np.inf)])
    return (np.argmin(pd, axis=0), np.argmin(dd, axis=0), (p_root, p_face, p_int),
            (d_root, d_face, d_int))


def _exp(V: np.ndarray, want_deriv: bool, start: np.ndarray | None = None,
         complement: np.ndarray | None = None):
    """Projection of V (..., 3) = (r0, s0, t0) onto K_exp and onto its polar K° = −K*_exp.

    Friberg 2021, "Projection onto the exponential cone: a univariate root-finding problem"
    (Optim. Methods Softw.): (1) v0 ∈ K: vp = v0; (2) v0 ∈ K°: vp = 0; (3) r0 <= 0, s0 <= 0:
    vp = (r0, 0, max(t0, 0)); (4) otherwise vp = s(ρ)(ρ, 1, e^ρ), vd = m(ρ)(1, 1−ρ, −e^{−ρ})
    with ρ the root of h, falling back (as Friberg) on feasible heuristic points only where they
    are clearly closer (|ρ| beyond float range). Case 4 works on v0/‖v0‖∞ (homogeneity).
    Observed accuracy vs 50-digit mpmath: ~1e-15 relative to ‖v0‖, also at 1e±300 scales.

    Derivative: I in case 1, 0 in case 2, diag(1, 0, [t0 >= 0]) in case 3, and in case 4 the
    rank-2 formula of `_exp_primal_deriv`; on the boundary of K (the kink) it is I.

    ``start`` (V.shape[:-1]) holds roots ρ found for nearby points (NaN: none), where Newton
    starts instead of the bracket's midpoint (ρ is scale-invariant; a start outside the
    bracket is ignored): a refinement step moves its cones little, and the root then takes
    about half the evaluations.

    ``complement`` (V.shape[:-1], bool): where set, D is I − DΠ_K(v0), the derivative of the
    projection onto the polar cone, formed without the cancellation of I − D
    (`_exp_primal_deriv`).

    Returns (vp, vd, D, ρ) with v0 = vp + vd (up to rounding), D = DΠ_K(v0) (or None) and ρ
    (V.shape[:-1]) the root where case 4 found one (NaN elsewhere).
    """
    shape = V.shape[:-1]
    V = V.reshape(-1, 3)
    r0, s0, t0 = V[:, 0], V[:, 1], V[:, 2]
    N = V.shape[0]
    vp: np.ndarray = np.zeros((N, 3))
    vd: np.ndarray = np.zeros((N, 3))
    D: np.ndarray = np.zeros((N, 3, 3))  # filled and returned only when want_deriv
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        finite = np.isfinite(r0) & np.isfinite(s0) & np.isfinite(t0)
        inK = ((s0 > 0) & (s0 * np.exp(r0 / s0) <= t0)) | ((s0 == 0) & (r0 <= 0) & (t0 >= 0))
        inP = (
            ((r0 > 0) & (r0 * np.exp(s0 / r0 - 1.0) <= -t0))
            | ((r0 == 0) & (s0 <= 0) & (t0 <= 0))
        ) & ~inK
        c3 = ~inK & ~inP & (r0 <= 0) & (s0 <= 0)
        c4 = finite & ~inK & ~inP & ~c3
        roots = np.full(N, np.nan)
        idx = np.flatnonzero(c4)
        if idx.size < N:  # (cases 1-3 and non-finite points: none, often)
            bad = ~finite
            vp[inK] = V[inK]
            vd[inP] = V[inP]
            vp[c3, 0] = r0[c3]
            vp[c3, 2] = np.maximum(t0[c3], 0.0)
            vd[c3, 1] = s0[c3]
            vd[c3, 2] = np.minimum(t0[c3], 0.0)
            vp[bad] = np.nan
            vd[bad] = np.nan
            if want_deriv:
                D[inK] = np.eye(3)
                D[c3, 0, 0] = 1.0
                D[c3, 2, 2] = (t0[c3] >= 0).astype(np.float64)
                D[bad] = np.nan
        if idx.size:
            # the projection is positively homogeneous: work on v0/|v0|_inf (no over/underflow)
            Vi = V[idx]
            scale = np.maximum(np.maximum(np.abs(Vi[:, 0]), np.abs(Vi[:, 1])), np.abs(Vi[:, 2]))
            r, s, t = (Vi[:, i] / scale for i in range(3))
            rho = _exp_root(r, s, t, None if start is None else start.reshape(-1)[idx])
            roots[idx] = rho
            q = rho * (rho - 1.0) + 1.0
            # s(ρ) = L/q >= 0 and m(ρ) = M/q >= 0 on the bracket; clip rounding noise
            L = np.maximum((rho - 1.0) * r + s, 0.0)
            M = np.maximum(r - rho * s, 0.0)
            ep, en = np.exp(rho), np.exp(-rho)
            # At the root v0 = sp·(ρ, 1, e^ρ) + m·(1, 1−ρ, −e^{−ρ}) with sp = L/q, m = M/q, so
            # t0 = tp + td. The product sp·e^ρ (m·e^{−ρ}) amplifies the rounding error of L (of M)
            # by e^ρ (e^{−ρ}); where that error bound exceeds the one of t0 − td (t0 − tp), take
            # the latter, and recover sp = tp·e^{−ρ} (m = −td·e^ρ) from it: this keeps sp and m
            # (and the derivative below) accurate when ρ is far out and L (M) is all cancellation.
            sp_a, m_a = L / q, M / q
            tp_a, td_a = sp_a * ep, -m_a * en
            err_p = (np.abs(rho * r) + np.abs(r) + np.abs(s)) * ep / q
            err_d = (np.abs(r) + np.abs(rho * s)) * en / q
            a_p = err_p <= np.abs(t) + err_d
            a_d = err_d <= np.abs(t) + err_p
            tp = np.where(a_p, tp_a, np.maximum(t - td_a, 0.0))
            td = np.where(a_d, td_a, np.minimum(t - tp_a, 0.0))
            sp = np.where(a_p, sp_a, tp * en)
            m = np.where(a_d, m_a, -td * ep)
            # the candidates by their components (r, s, t), each (k,): arithmetic on (k, 3)
            # arrays would loop over 3 entries at a time
            p_root = (sp * rho, sp, tp)
            d_root = (m, m * (1.0 - rho), td)
            p_ok = np.isfinite(p_root[0]) & np.isfinite(p_root[1]) & np.isfinite(p_root[2])
            d_ok = np.isfinite(d_root[0]) & np.isfinite(d_root[1]) & np.isfinite(d_root[2])
            # Friberg's heuristic feasible points (`_exp_heuristics`) can only be closer where a
            # root candidate is unusable, e^ρ nears float range, or v is so near K or K° that
            # the root is ill-determined: elsewhere they are not formed
            pbest = np.zeros(idx.size, dtype=np.intp)  # (the primal's choice: the derivative's)
            vp[idx] = np.stack(p_root, -1) * scale[:, None]
            vd[idx] = np.stack(d_root, -1) * scale[:, None]
            hard = np.flatnonzero(~(p_ok & d_ok & (np.abs(rho) <= RHO_PLAIN)
                                     & (np.minimum(sp, m) >= PART_PLAIN)))
            if hard.size:
                pb, db, p_cands, d_cands = _exp_heuristics(
                    r[hard], s[hard], t[hard], tuple(x[hard] for x in p_root),
                    tuple(x[hard] for x in d_root), p_ok[hard], d_ok[hard])
                pbest[hard] = pb
                for out, best, cands in ((vp, pb, p_cands), (vd, db, d_cands)):
                    out[idx[hard]] = np.stack([np.choose(best, [c[i] for c in cands])
                                               * scale[hard] for i in range(3)], -1)
            if want_deriv:
                # the interior heuristic is the boundary point with ρ = r0/s0 (m = 0)
                use_int = pbest == 2
                comp = None if complement is None else complement.reshape(-1)[idx]
                if use_int.any():
                    rho_d = np.where(use_int, r / np.where(s > 0, s, 1.0), rho)
                    Dc = _exp_primal_deriv(rho_d, np.where(use_int, 1.0, sp),
                                           np.where(use_int, 0.0, m), comp)
                else:
                    Dc = _exp_primal_deriv(rho, sp, m, comp)
                face = (pbest == 1) | ~np.isfinite(Dc).all(axis=(1, 2))  # (|ρ| past float range)
                if face.any():
                    Df = np.zeros((idx.size, 3, 3))
                    Df[:, 0, 0] = (r < 0).astype(np.float64)
                    Df[:, 2, 2] = (t >= 0).astype(np.float64)
                    if comp is not None:
                        Df = np.where(comp[:, None, None], np.eye(3) - Df, Df)
                    Dc[face] = Df[face]
                D[idx] = Dc
        if want_deriv and complement is not None:  # cases 1-3: entries 0 and 1, exact
            plain = complement.reshape(-1) & ~c4
            D[plain] = np.eye(3) - D[plain]
    vp = vp.reshape(shape + (3,))
    vd = vd.reshape(shape + (3,))
    return vp, vd, (D.reshape(shape + (3, 3)) if want_deriv else None), roots.reshape(shape)


def _exp_all(X: np.ndarray, n_exp: int, dual: bool, want_deriv: bool,
             start: np.ndarray | None = None):
    """Project X (B, n, 3) (primal exp cones first, then dual ones) onto K_exp or K*_exp.

    Π_{K*}(v) = v + Π_K(−v) = −Π_{K°}(−v) (Moreau), computed as −vd(−v) (no cancellation);
    DΠ_{K*}(v) = I − DΠ_K(−v), formed without cancellation either (`_exp`'s ``complement``).
    ``start``: (B, n) roots to start from (`_exp`). Returns (P, D, roots (B, n)).
    """
    flip = np.zeros(X.shape[1], dtype=bool)
    flip[n_exp:] = True
    if dual:
        flip = ~flip
    W = np.where(flip[None, :, None], -X, X)
    vp, vd, D, roots = _exp(W, want_deriv, start,
                            np.broadcast_to(flip, X.shape[:2]) if want_deriv else None)
    P = np.where(flip[None, :, None], -vd, vp)
    return P, D, roots


# ----------------------------------------------------------------------------------------------
# Power cone (Hien 2015)
# ----------------------------------------------------------------------------------------------
def _pow_xy(x0, a, r, lam):
    """x(r) = (x0 + √(x0² + 4a·r·λ))/2, the positive root of x² − x0·x − a·r·λ = 0, and
    S = √(x0² + 4a·r·λ) = 2x − x0; written as 2a·r·λ/(S − x0) where x0 < 0 (no cancellation)."""
    q = 4.0 * a * r * lam
    S = np.sqrt(x0 * x0 + q)
    x = np.where(x0 >= 0, 0.5 * (x0 + S), 0.5 * q / np.where(x0 < 0, S - x0, 1.0))
    return x, S


def _pow_rl(t, az):
    """r = |z0|/(1 + e^{−t}) and λ = |z0| − r = |z0|/(1 + e^{t}), each to full relative
    accuracy (the root may lie within rounding of either end of (0, |z0|)), and ln r."""
    e = np.exp(-np.abs(t))
    q = az / (1.0 + e)
    pos = t >= 0
    r = np.where(pos, q, q * e)
    lam = np.where(pos, q * e, q)
    ln_r = np.log(az) + np.minimum(t, 0.0) - np.log1p(e)
    return r, lam, ln_r


def _pow_psi(t, x0, y0, az, a):
    """ψ = a·log x(r) + (1−a)·log y(r) − log r at r(t) (`_pow_rl`), and dψ/dt."""
    r, lam, ln_r = _pow_rl(t, az)
    x, Sx = _pow_xy(x0, a, r, lam)
    y, Sy = _pow_xy(y0, 1.0 - a, r, lam)
    f = a * np.log(x) + (1.0 - a) * np.log(y) - ln_r
    # x'(r) = a(λ − r)/S_x (from d(rλ)/dr = λ − r), likewise y'; dr/dt = r·λ/|z0|
    df = (r * (lam - r) * (a * a / (Sx * x) + (1.0 - a) ** 2 / (Sy * y)) - 1.0) * (lam / az)
    return f, df


# The root is searched for in t ∈ [−T, T]: beyond, r (or λ) is below ~1e-304 |z0|, and the
# projection is the face point (or (x0⁺, y0⁺, z0)) to rounding.
_POW_T = 700.0


def _pow_root(x0, y0, az, a) -> np.ndarray:
    """t with ψ(t) = 0, r(t) ∈ (0, |z0|) (ψ > 0 left of the root, < 0 right of it, as
    Hien 2015 shows); −inf where r is below float range, T where λ is. Bracket by doubling steps
    from t = 0, then safeguarded Newton with bisection fallback, all cones at once."""
    f, _ = _pow_psi(np.zeros_like(az), x0, y0, az, a)
    pos = f > 0
    lo = np.where(pos, 0.0, -np.inf)
    hi = np.where(pos, np.inf, 0.0)
    for side in ("lo", "hi"):
        miss = np.flatnonzero(np.isinf(lo) if side == "lo" else np.isinf(hi))
        step = 1.0
        while miss.size:
            if side == "lo":
                cand = np.maximum(hi[miss] - step, -_POW_T)
            else:
                cand = np.minimum(lo[miss] + step, _POW_T)
            f, _ = _pow_psi(cand, x0[miss], y0[miss], az[miss], a[miss])
            pos = f > 0
            lo[miss[pos]] = cand[pos]
            hi[miss[~pos]] = cand[~pos]
            keep = (~pos if side == "lo" else pos) & (np.abs(cand) < _POW_T)
            miss = miss[keep]
            step *= 2.0
    t = np.where(np.isinf(lo), -np.inf, np.where(np.isinf(hi), _POW_T, 0.5 * (lo + hi)))
    return _bracketed_newton(
        lambda x, i: _pow_psi(x, x0[i], y0[i], az[i], a[i]), t, lo, hi,
        np.flatnonzero(np.isfinite(lo) & np.isfinite(hi)), rising=False, iters=200,
        mid=lambda l, h: 0.5 * (l + h))


def _pow(V: np.ndarray, alpha: np.ndarray, want_deriv: bool,
         complement: np.ndarray | None = None):
    """Projection of V (N, 3) = (x0, y0, z0) onto K_a = {x^a y^(1−a) >= |z|, x, y >= 0} (one
    a per row, 0 < a < 1) and onto its polar K° = −K*_a.

    Hien 2015, "Differential properties of Euclidean projection onto power cone" (Math. Methods
    Oper. Res.): (1) v0 ∈ K: vp = v0; (2) v0 ∈ K°: vp = 0; (3) z0 = 0:
    vp = (x0⁺, y0⁺, 0); (4) otherwise vp = (x(r), y(r), sign(z0)·r), with x(r), y(r) the
    positive roots of x² − x0·x = a·r·λ, y² − y0·y = (1−a)·r·λ, λ = |z0| − r, and r ∈ (0, |z0|)
    the root of x(r)^a y(r)^(1−a) = r (found as ψ(ln r) = 0, `_pow_root`). These are the KKT
    conditions of min ½‖p − v0‖² s.t. g(p) = |z| − x^a y^(1−a) <= 0, p + λ∇g(p) = v0, with
    multiplier λ. Case 4 works on v0/‖v0‖∞ (homogeneity); vd = v0 − vp = −λ∇g(p) is computed
    from λ directly (no cancellation).

    Derivative: I in case 1 (also on the boundary of K), 0 in case 2. In case 4, from the
    implicit function theorem on those conditions, with N = (I + λ∇²g)⁻¹ and g = ∇g(p):
    DΠ = N − (Ng)(Ng)ᵀ / (gᵀNg); ∇²g = a(1−a)·r·wwᵀ, w = (1/x, −1/y, 0), has rank one, so
    N = I − κ/(1+κ)·ŵŵᵀ with κ = λ·a(1−a)·r·‖w‖² (`_pow_deriv`). In case 3 (x0 < 0 < y0,
    say) it is the limit of case 4 as z0 → 0: diag(0, 1, γ) with γ = 1 for a < 1/2, 0 for
    a > 1/2 and y0/(2|x0| + y0) for a = 1/2 (r ~ |z0|^{a/(1−a)} on that face); symmetrically
    for y0 < 0.

    ``complement`` (N,) bool: where set, D is I − DΠ_K(v0), the derivative of the projection
    onto the polar cone, formed without the cancellation of I − D (`_pow_deriv`).

    Returns (vp, vd, D) with v0 = vp + vd and D = DΠ_K(v0) (or None).
    """
    N = V.shape[0]
    a = np.broadcast_to(alpha, (N,)).astype(np.float64)
    b = 1.0 - a
    vp: np.ndarray = np.zeros((N, 3))
    vd: np.ndarray = np.zeros((N, 3))
    D: np.ndarray = np.zeros((N, 3, 3))  # filled and returned only when want_deriv
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        finite = np.all(np.isfinite(V), axis=1)
        scale = np.max(np.abs(V), axis=1)
        v = V / np.where(scale > 0, scale, 1.0)[:, None]  # homogeneity: ‖v‖∞ = 1
        x0, y0, z0 = v[:, 0], v[:, 1], v[:, 2]
        az = np.abs(z0)
        inK = (x0 >= 0) & (y0 >= 0) & (x0**a * y0**b >= az)
        inP = (x0 <= 0) & (y0 <= 0) & ((-x0 / a) ** a * (-y0 / b) ** b >= az) & ~inK
        rest = finite & ~inK & ~inP
        bad = ~finite
        vp[inK] = V[inK]
        vd[inP] = V[inP]
        vp[bad] = np.nan
        vd[bad] = np.nan
        if want_deriv:
            D[inK] = np.eye(3)
            D[bad] = np.nan

        idx = np.flatnonzero(rest)
        if idx.size:
            xs, ys, zs, azs, aa, bb = x0[idx], y0[idx], z0[idx], az[idx], a[idx], b[idx]
            face = azs == 0
            t = np.full(idx.size, -np.inf)
            c4 = np.flatnonzero(~face)
            t[c4] = _pow_root(xs[c4], ys[c4], azs[c4], aa[c4])
            face |= ~np.isfinite(t)  # r below float range: the face point to rounding
            r, lam, _ = _pow_rl(np.where(face, 0.0, t), np.where(face, 1.0, azs))
            r = np.where(face, 0.0, r)
            lam = np.where(face, azs, lam)
            x, _ = _pow_xy(xs, aa, r, lam)
            y, _ = _pow_xy(ys, bb, r, lam)
            sg = np.sign(zs)
            # vd = v0 − vp = −λ∇g(p) = (−λ·a·r/x, −λ·(1−a)·r/y, sign(z0)·λ): the difference
            # where it does not cancel (x0 <= x/2, which covers x below float range), else
            # the product; on the face, (x0⁻, y0⁻, z0)
            xd = np.where(xs <= 0.5 * x, xs - x, -lam * aa * (r / np.where(x > 0, x, 1.0)))
            yd = np.where(ys <= 0.5 * y, ys - y, -lam * bb * (r / np.where(y > 0, y, 1.0)))
            xd = np.where(face, np.minimum(xs, 0.0), xd)
            yd = np.where(face, np.minimum(ys, 0.0), yd)
            x = np.where(face, np.maximum(xs, 0.0), x)
            y = np.where(face, np.maximum(ys, 0.0), y)
            sc = scale[idx][:, None]
            vp[idx] = np.stack([x, y, sg * r], -1) * sc
            vd[idx] = np.stack([xd, yd, np.where(face, zs, sg * lam)], -1) * sc
            if want_deriv:
                D[idx] = _pow_deriv(x, y, r, lam, sg, aa, xs, ys, face,
                                    None if complement is None else complement[idx])
        if want_deriv and complement is not None:  # cases 1 and 2: I and 0, exact
            plain = complement & ~rest
            D[plain] = np.eye(3) - D[plain]
    return vp, vd, (D if want_deriv else None)


def _pow_deriv(x, y, r, lam, sg, a, x0, y0, face, complement=None) -> np.ndarray:
    """DΠ_K in cases 3 and 4 of `_pow` (formulas there), (n, 3, 3); where ``complement`` (n,)
    is set, I − DΠ_K, the derivative of the projection onto the polar cone.

    In case 4, with ŵ = (y, −x, 0)/‖(x, y)‖, k = κ/(1 + κ) and h = N∇g, DΠ = N − hhᵀ/γ and
    I − DΠ = k·ŵŵᵀ + hhᵀ/γ, γ = ∇gᵀN∇g: every entry is formed from terms that cancel at most
    between two of them (h = −(a·r·x·(y² + λ(1−a)r), (1−a)·r·y·(x² + λa·r), ·)/((xy)² +
    λa(1−a)·r·‖(x, y)‖²) in closed form, γ − 1 likewise), the off-diagonal entries of DΠ as
    minus the complement's. I − DΠ subtracted in floating point keeps the small entries
    only to rounding of 1: where the polar part is small beside the primal one they are
    1e-21 … 1e-9, and came out up to 100% off against 60-digit differences.
    """
    b = 1.0 - a
    n = x.size
    Dc = np.zeros((n, 3, 3))
    comp = np.zeros(n, dtype=bool) if complement is None else np.asarray(complement)
    sm = np.flatnonzero(~face)
    if sm.size:
        x, y, r, lam, s, aa, bb = x[sm], y[sm], r[sm], lam[sm], sg[sm], a[sm], b[sm]
        # N = I − k·ŵŵᵀ; everything over (xy)² + λab·r·n² (no overflow as x or y → 0)
        n2 = x * x + y * y
        nn = np.sqrt(n2)
        xy2 = (x * y) ** 2
        lk = lam * aa * bb * r * n2
        den = xy2 + lk
        den = np.where(den > 0, den, 1.0)
        k, keep = lk / den, xy2 / den       # k = 1 − keep
        c = bb * x * x - aa * y * y
        gm1 = (r * c / nn) ** 2 / den + (r / nn) ** 2  # γ − 1
        gam = gm1 + 1.0
        h = (-aa * r * x * (y * y + lam * bb * r) / den,
             -bb * r * y * (x * x + lam * aa * r) / den, s)
        w = (y / nn, -x / nn)
        C = np.empty((sm.size, 3, 3))
        for i in range(3):
            for j in range(i, 3):
                hh = h[i] * h[j] / gam
                C[:, i, j] = C[:, j, i] = hh + k * w[i] * w[j] if j < 2 else hh
        D = -C
        D[:, 0, 0] = (x * x + keep * y * y) / n2 - h[0] * h[0] / gam
        D[:, 1, 1] = (y * y + keep * x * x) / n2 - h[1] * h[1] / gam
        D[:, 2, 2] = gm1 / gam
        Dc[sm] = np.where(comp[sm, None, None], C, D)
    fc = np.flatnonzero(face)
    if fc.size:
        aa, xx, yy = a[fc], x0[fc], y0[fc]
        xneg = xx < 0  # x0 < 0 < y0: projected onto the face x = 0, else onto y = 0
        e = np.where(xneg, aa, 1.0 - aa)  # the exponent of the coordinate that vanishes
        other = np.where(xneg, yy, xx)
        gone = np.abs(np.where(xneg, xx, yy))
        with np.errstate(divide="ignore", invalid="ignore"):
            half = other / (2.0 * gone + other)
            rest = 2.0 * gone / (2.0 * gone + other)  # 1 − half
        gam = np.where(e < 0.5, 1.0, np.where(e > 0.5, 0.0, half))
        left = np.where(e < 0.5, 0.0, np.where(e > 0.5, 1.0, rest))
        cf = comp[fc]
        Dc[fc, 0, 0] = np.where(xneg != cf, 0.0, 1.0)
        Dc[fc, 1, 1] = np.where(xneg != cf, 1.0, 0.0)
        Dc[fc, 2, 2] = np.where(cf, left, gam)
    return Dc


def _pow_all(X: np.ndarray, alpha: np.ndarray, dual: bool, want_deriv: bool):
    """Project X (B, n, 3) onto power cones K_a (alpha > 0) or their duals K*_a (alpha = −a),
    or onto the duals of those (``dual``): K_a and K*_a are each other's dual.

    Π_{K*}(v) = v + Π_K(−v) = −Π_{K°}(−v) (Moreau), computed as −vd(−v) (no cancellation);
    DΠ_{K*}(v) = I − DΠ_K(−v), formed without cancellation either (`_pow`'s ``complement``).
    """
    B, n, _ = X.shape
    flip = alpha < 0
    if dual:
        flip = ~flip
    W = np.where(flip[None, :, None], -X, X).reshape(B * n, 3)
    vp, vd, D = _pow(W, np.tile(np.abs(alpha), B), want_deriv,
                     np.tile(flip, B) if want_deriv else None)
    P = np.where(flip[None, :, None], -vd.reshape(B, n, 3), vp.reshape(B, n, 3))
    if want_deriv:
        D = D.reshape(B, n, 3, 3)
    return P, D


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def project(v: np.ndarray, dims: ConeDims, dual: bool = False) -> np.ndarray:
    """Euclidean projection Π_K(v) (or Π_{K*}(v) if ``dual``) onto the product cone ``dims``.

    ``v`` has shape (m,) or (B, m); the result has the same shape. The dual of the zero cone is
    the free space (identity); nonneg, SOC and PSD are self-dual; K_exp and K*_exp are each
    other's dual, as are a power cone and its dual, Π_{K*}(v) = v + Π_K(−v) (Moreau). See
    Agrawal et al. 2019, "Differentiating through a cone program", §2, Friberg 2021 for the
    exponential cone and Hien 2015 for the power cone.
    """
    V, squeeze = _as_batch(v, dims)
    lay = cone_layout(dims)
    P = np.empty_like(V)
    P[:, lay.zero] = V[:, lay.zero] if dual else 0.0
    P[:, lay.nonneg] = np.maximum(V[:, lay.nonneg], 0.0)
    for _, idx in lay.soc:
        P[:, idx] = _soc(V[:, idx], False)[0]
    for k, idx in lay.psd:
        P[:, idx] = _psd(V[:, idx], k, False)[0]
    if lay.exp.size:
        P[:, lay.exp] = _exp_all(V[:, lay.exp], lay.n_exp, dual, False)[0]
    if lay.pow.size:
        P[:, lay.pow] = _pow_all(V[:, lay.pow], lay.alpha, dual, False)[0]
    return P[0] if squeeze else P


def interior_depth(s: np.ndarray, dims: ConeDims) -> np.ndarray:
    """Per entry of each cone block (B, m): an upper bound on the distance from the block of
    ``s`` (B, m), a point of K, to K's boundary; 0 on the zero and nonnegative rows, which
    have no block.

    Second-order cone (t, x): (t − ‖x‖)/√2, exact. PSD (svec, an isometry): the least
    eigenvalue, exact. The 3-d cones are {ψ <= 0} on a domain, ψ convex: exponential
    ψ = y e^{x/y} − z (y > 0), its dual ψ = −u e^{v/u} − e·w (u < 0), power
    ψ = |z| − x^a y^(1−a) and its dual ψ = |z| − (x/a)^a (y/(1−a))^(1−a) (x, y > 0). Their
    bound is the smaller of the distance to the domain's face (y, −u, min(x, y)) and
    g/‖∇ψ‖ with g = −ψ(s), the step along ψ's gradient after which ψ >= 0 (ψ grows at least
    linearly along it).

    Where the depth exceeds the error of s, the multiplier y = Π_{K*}(y − s) = 0 is exact:
    a perturbation of v = y − s smaller than the depth keeps v in −K."""
    S, squeeze = _as_batch(s, dims)
    S = S.astype(np.float64, copy=False)
    lay = cone_layout(dims)
    out = np.zeros_like(S)
    for _, idx in lay.soc:
        blk = S[:, idx]
        gap = (blk[..., 0] - np.linalg.norm(blk[..., 1:], axis=-1)) / np.sqrt(2.0)
        out[:, idx] = np.maximum(gap, 0.0)[..., None]
    for k, idx in lay.psd:
        lam = np.linalg.eigvalsh(_unvec(S[:, idx], k))[..., 0]
        out[:, idx] = np.maximum(lam, 0.0)[..., None]
    if lay.exp.size or lay.pow.size:
        rows = np.concatenate([lay.exp, lay.pow])
        out[:, rows] = _curved_depth(S[:, rows], _curved_kinds(lay, dual=False))[..., None]
    return out[0] if squeeze else out


def _curved_kinds(lay: ConeLayout, dual: bool) -> np.ndarray:
    """Per 3-d block of ``lay`` (exponential cones, then power cones), the cone that block's
    entries of s lie in (``dual``: of y, its dual): 0 for K_exp, −1 for K*_exp, and the
    signed exponent of a power cone (a > 0: K_a, a < 0: K*_|a|)."""
    exp = np.where(np.arange(lay.exp.shape[0]) < lay.n_exp, 0.0, -1.0)
    if dual:
        exp = -1.0 - exp
    return np.concatenate([exp, -lay.alpha if dual else lay.alpha])


def _curved_depth(blk: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """`interior_depth` of 3-d blocks ``blk`` (B, n, 3), each of the cone ``kinds`` (n,)
    names (`_curved_kinds`): (B, n), the smaller of the distance along ψ's gradient and to
    the face where the cone's domain ends, 0 where the point is not inside the domain or
    either is not finite."""
    gap = _curved_margin(blk, kinds)
    return np.where(np.isfinite(gap), np.maximum(gap, 0.0), 0.0)


def _curved_margin(blk: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Signed distance estimates (B, n) of 3-d blocks ``blk`` (B, n, 3) to the boundary of the
    cones ``kinds`` (n,) names (`_curved_kinds`), positive inside: the smaller of the
    distance to the face where the cone's domain ends and g/‖∇ψ‖, g = −ψ (`interior_depth`),
    which is the signed distance to ∂K to first order near it; NaN outside the domain or
    where either is not finite."""
    out = np.full(blk.shape[:2], np.nan)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        for kind in (0.0, -1.0, None):
            cols = np.flatnonzero(((kinds > -1.0) & (kinds != 0.0)) if kind is None
                                  else kinds == kind)
            if not cols.size:
                continue
            x, y, z = (blk[:, cols, i] for i in range(3))
            if kind == 0.0:  # K_exp (x, y, z): y e^{x/y} <= z
                e = np.exp(x / y)
                grad = np.sqrt(e * e + (e * (1 - x / y)) ** 2 + 1.0)
                out[:, cols] = _margin(y > 0, z - y * e, grad, y)
            elif kind == -1.0:  # K*_exp (u, v, w): −u e^{v/u} <= e·w
                e = np.exp(y / x)
                grad = np.sqrt((e * (1 - y / x)) ** 2 + e * e + np.e**2)
                out[:, cols] = _margin(x < 0, np.e * z + x * e, grad, -x)
            else:
                # K_a: x^a y^(1−a) >= |z|; its dual K*_a (kind −a): (x/a)^a (y/(1−a))^(1−a)
                # >= |z|
                a = np.abs(kinds[cols])
                p = np.where(kinds[cols] > 0, x**a * y ** (1 - a),
                             (x / a) ** a * (y / (1 - a)) ** (1 - a))
                grad = np.sqrt((a * p / x) ** 2 + ((1 - a) * p / y) ** 2 + 1.0)
                out[:, cols] = _margin((x > 0) & (y > 0), p - np.abs(z), grad,
                                       np.minimum(x, y))
    return out


def _domain_gap(blk: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """How far each 3-d block of ``blk`` (B, n, 3) lies outside the domain of
    `_curved_margin`'s ψ for the cones ``kinds`` (n,) (0 inside it): K_exp −y, K*_exp x,
    power cones −min(x, y) — a lower bound on its distance to the cone."""
    x, y = blk[..., 0], blk[..., 1]
    gap = np.where(kinds == 0.0, -y, np.where(kinds == -1.0, x, -np.minimum(x, y)))
    return np.maximum(gap, 0.0)


def _margin(inside: np.ndarray, g: np.ndarray, grad: np.ndarray, face: np.ndarray
            ) -> np.ndarray:
    """`_curved_margin` of one cone kind: the smaller of the distance g/‖∇ψ‖ along ψ's
    gradient (``grad`` its norm) and to the face where the cone's domain ends (``face``);
    NaN where the point is not inside the domain or either is not finite. ‖∇ψ‖ beyond float
    range (e^{x/y} past 1e154 on the exponential cone, whose square overflows) is NaN too,
    not g/∞ = ±0: a point far outside K read as on its boundary."""
    gap = np.minimum(g / grad, face)
    return np.where(inside & np.isfinite(gap) & np.isfinite(grad), gap, np.nan)


def dproject(v: np.ndarray, dims: ConeDims, dual: bool = False,
             near: DProjection | None = None, start: np.ndarray | None = None
             ) -> DProjection:
    """Derivative DΠ_K(v) (or DΠ_{K*}(v) if ``dual``) as a symmetric linear operator.

    ``v`` has shape (B, m) or (m,); for (m,) the operator is unbatched (``matvec`` takes (m,) or
    (m, k), ``dense`` returns (m, m)). Block diagonal over cones; per kind: zero 0 (dual: I),
    nonneg 1[v >= 0], SOC (Ali et al. 2017), PSD (Daleckii–Krein), exp 3×3 (implicit, ruled
    boundary), power 3×3 (implicit, Hien 2015). Used by the residual-map derivative of
    Agrawal et al. 2019, eq. (8).

    ``near``: the operator at nearby points of the same batch (same cones, ``dual`` and batch
    size), e.g. the previous Newton iterate: the exponential cones' root-finding starts from
    its roots. ``start`` (B, exponential cones), where ``near`` gives none: roots to start
    from, e.g. `exp_roots_at` a solver's point (NaN: none). The result is the same to rounding
    either way.
    """
    V, squeeze = _as_batch(v, dims)
    return DProjection(V, dims, dual, batched=not squeeze, near=near, start=start)


def exp_roots_at(s: np.ndarray, y: np.ndarray, dims: ConeDims) -> np.ndarray | None:
    """Starts (B, exponential cones) for the roots of Π_{K*} at v = y − s, read off a point
    (s, y) (B, m) near complementarity; None without exponential cones.

    At v = y − s the part of a primal exponential cone in K_exp is its slack s = s(ρ)·(ρ, 1,
    e^ρ), and of a dual one its multiplier y (`_exp_all` flips the primal ones): ρ is that
    part's first entry over its second (scale-free; NaN where the second is not positive).
    A splitting method's point at tolerance 1e-3 gives ρ to about that, where Newton from the
    bracket's midpoint (softmax's cones: 8 evaluations of h) then takes 3-4."""
    lay = cone_layout(dims)
    if not lay.exp.size:
        return None
    B = s.shape[0]
    S = s[:, lay.exp].reshape(B, -1, 3)
    Y = y[:, lay.exp].reshape(B, -1, 3)
    part = np.where((np.arange(S.shape[1]) < lay.n_exp)[None, :, None], S, Y)
    first, second = part[..., 0], part[..., 1]
    with np.errstate(all="ignore"):
        return np.where(second > 0, first / np.where(second > 0, second, 1.0), np.nan)


# v within KINK_TOL·‖v‖∞ of a kink of Π_{K*} counts as on it (see snap_kinks). Relative to v's
# own scale, with no absolute floor, so that which points count as kinks does not change when
# all the problem data are scaled (v = y − s scales with them). Where the two sides' scales
# are known (`snap_kinks`'s ``sides``), a slack is judged against its row's primal scale and
# a multiplier against the dual one: one scalar of the equilibration can leave them 1e12
# apart (a box of half-width 1e-3 about a point 1e9 away), and a bound never reached can
# dwarf every other row, and a slack measured against either was a kink. Refinement leaves
# v at a
# kink within rounding of it (~1e-16 relative), so the tolerance can be tight: a coordinate
# 1e-9 of ‖v‖∞ away from its kink is a real, if small, slack or multiplier (a θ entry of 1
# beside one of 1e9), whose derivative is the ordinary one.
KINK_TOL = 1e-12
# The same for a point refined with its residual in extended precision (refine.py): v is then
# known to about float64's rounding of ‖v‖∞, and a few ulps of it is a kink.
KINK_TOL_EXTENDED = 64 * float(np.finfo(float).eps)


def snap_kinks(v: np.ndarray, dims: ConeDims, tol: float | np.ndarray = KINK_TOL,
               sides: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Find where strict complementarity fails, and make the derivative's branch deterministic.

    v = y − s sits on a kink of Π_{K*} exactly where a constraint is weakly active (its slack
    and its multiplier both vanish): there the solution map has only one-sided derivatives.
    Within ``tol · ‖v‖∞`` (``tol`` a scalar, or one per instance) of such a point we move v
    onto it, so the derivative is the one
    `dproject` assigns on the boundary (the constraint held active) instead of a branch
    picked by rounding noise; beside the boundary of −K, where that is DΠ = 0 (the
    constraint released), just inside the region between K* and −K instead, where DΠ's
    limit keeps the slack on the boundary of K. Nonnegative and second-order cones (boundary
    and apex) are snapped; PSD eigenvalues near zero are detected only; exponential and
    power cones' kinks (the slack 0 with the multiplier on ∂K*, the multiplier 0 with the
    slack on ∂K, the apex) are detected and held as `_curved_kinks` says, with
    `curved_limits` setting the DΠ no point attains. Returns (v, mask (B, m) bool): the
    coordinates of v in a kinked cone block (a single coordinate for the nonnegative cone,
    the whole block for the others); ``mask.any(axis=1)`` are the instances with a kink.

    With ``sides`` = (primal and dual magnitudes per row, (B, m) each),
    `derivative.row_scales`, the scale is that of the side each value is rounded on: on the
    nonnegative cone a slack (v < 0) within ``tol`` of its row's primal magnitude and a
    multiplier (v > 0) within ``tol`` of its row's dual magnitude; on a second-order cone,
    within ``tol`` of the larger of its own rows' primal and dual magnitudes (a
    bound x <= 1e15 that is never reached put ‖v‖∞ at 1e15 times an active ball's, and
    the ball counted as a kink); on an exponential or power cone, a slack within ``tol`` of
    its block's largest primal magnitude and a multiplier within ``tol`` of its dual one.
    """
    v = v.copy()
    mask = np.zeros(v.shape, dtype=bool)
    scale = tol * np.abs(v).max(axis=1, initial=0.0)
    rel = np.broadcast_to(np.asarray(tol, dtype=float), scale.shape)
    off = dims.zero
    if dims.nonneg:
        block = v[:, off : off + dims.nonneg]
        if sides is None:
            near = np.abs(block) <= scale[:, None]
        else:
            rows = sides[0][:, off : off + dims.nonneg]
            primal = np.where((rows > 0) & np.isfinite(rows), rel[:, None] * rows,
                              scale[:, None])
            duals = sides[1][:, off : off + dims.nonneg]
            dual = np.where((duals > 0) & np.isfinite(duals), rel[:, None] * duals,
                            scale[:, None])
            near = np.abs(block) <= np.where(block < 0, primal, dual)
        mask[:, off : off + dims.nonneg] = near
        block[near] = 0.0
    off += dims.nonneg
    for k in dims.soc:
        t, xb = v[:, off], v[:, off + 1 : off + k]
        nx = np.linalg.norm(xb, axis=1)
        at = scale
        if sides is not None:
            own = np.maximum(sides[0][:, off : off + k].max(axis=1, initial=0.0),
                             sides[1][:, off : off + k].max(axis=1, initial=0.0))
            at = np.where((own > 0) & np.isfinite(own), rel * own, scale)
        near = (np.abs(nx - np.abs(t)) <= at) & (nx > at)
        # held active: on the boundary of K* (DΠ = I), or, beside the boundary of −K (a
        # slack on the boundary of K with a vanishing multiplier), just inside the region
        # between them, where DΠ is the rank-one limit that keeps the slack on the
        # boundary (on −K's boundary itself DΠ = 0: the constraint released)
        inner = np.where(t < 0, 1.0 - rel, 1.0)
        v[near, off] = np.sign(t[near]) * nx[near] * inner[near]
        apex = (nx <= at) & (np.abs(t) <= at) & (k > 1)
        v[apex, off : off + k] = 0.0  # DΠ_{K*}(0) = I: held active, as on the boundary
        mask[:, off : off + k] = (near | apex)[:, None]
        off += k
    for k in dims.psd:
        d = k * (k + 1) // 2
        lam = np.linalg.eigvalsh(_unvec(v[:, off : off + d], k))
        mask[:, off : off + d] = (np.abs(lam) <= scale[:, None]).any(axis=1)[:, None]
        off += d
    if dims.exp or dims.exp_dual or dims.power:
        _curved_kinks(v, mask, dims, scale, rel, sides)
    return v, mask


# The exponential cone's projection near the boundary of −K_exp: Π_{K*}(v) there was up to
# 1.1e-10 of ‖v‖ where it is 0 (1% of random boundary points above 3.5e-15); within this of
# ‖v‖ a block's signed distance to the boundary decides whether it is at a kink
# (`_curved_kinks`), beyond it the projection.
CURVED_PROJECTION_ERROR = 1e-8
# How far `snap_kinks` and `release_kinks` move an exponential or power cone block of v off
# its kink, relative to the block: beyond the rounding of a point refinement leaves there. The
# size does not enter DΠ: the sides moved to are inside K* or −K (DΠ = I or 0 exactly) or
# get their limit in closed form (`curved_limits`). Where it does not reach the side intended
# (the projection's own error near the boundary of −K_exp, ~1e-10 relative in 1% of random
# points), the step grows by CURVED_GROWTH until it does, CURVED_TRIES times at most.
CURVED_PUSH = 1e-8
CURVED_GROWTH = 8.0
CURVED_TRIES = 16
# A direction interior to both K and K* of each 3-d cone: K_exp and K*_exp both hold
# (−1, 1, 1) inside (e^{−1} < 1 < e), K_a and K*_a both (1, 1, 0).
_EXP_INSIDE = np.array([-1.0, 1.0, 1.0]) / np.sqrt(3.0)
_POW_INSIDE = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
# Which side of a kink `_curved_pushed` moves a block to: inside K* (DΠ = I), between K*
# and −K (Π_{K*} neither the point nor 0), inside −K (DΠ = 0).
_IN_DUAL, _BETWEEN, _IN_POLAR = 0, 1, 2
# The least step off an apex with no scale of its own: ‖η·c‖'s squares do not underflow.
_CURVED_FLOOR = float(np.sqrt(np.finfo(float).tiny))


@functools.lru_cache(maxsize=256)
def _curved_blocks(dims: ConeDims) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows (n, 3), inside (n, 3), kinds (n,)): the exponential and power cone blocks of
    ``dims``, a direction interior to both K and K* per block, and the cone of its slack
    (`_curved_kinds`). Cached per dims (read-only arrays)."""
    lay = cone_layout(dims)
    rows = np.concatenate([lay.exp, lay.pow])
    inside = np.concatenate([np.broadcast_to(_EXP_INSIDE, lay.exp.shape),
                             np.broadcast_to(_POW_INSIDE, lay.pow.shape)])
    out = (rows, inside, _curved_kinds(lay, dual=False))
    for a in out:
        a.setflags(write=False)
    return out


def _curved_dual_projection(V: np.ndarray, dims: ConeDims) -> tuple[np.ndarray, np.ndarray]:
    """(Π_{K*}, the side of each block (B, n): _IN_DUAL, _BETWEEN or _IN_POLAR) of the 3-d
    blocks V (B, n, 3) in `_curved_blocks`' order. The side is DΠ's (I, 0, or neither), not
    the projection's: between K* and −K a multiplier that rounds to 0 projects to 0 with
    the rank-one DΠ of that region."""
    lay = cone_layout(dims)
    ne = lay.exp.shape[0]
    Y = np.empty_like(V)
    D = np.empty(V.shape + (3,))
    if ne:
        Y[:, :ne], D[:, :ne] = _exp_all(V[:, :ne], lay.n_exp, True, True)[:2]
    if V.shape[1] > ne:
        Y[:, ne:], D[:, ne:] = _pow_all(V[:, ne:], lay.alpha, True, True)
    return Y, _curved_sides(D)


def _curved_sides(D: np.ndarray) -> np.ndarray:
    """The side (B, n) of each 3-d block's point from its DΠ_{K*} blocks D (B, n, 3, 3):
    _IN_DUAL where DΠ = I, _IN_POLAR where DΠ = 0, _BETWEEN elsewhere."""
    eye = np.all(D == np.eye(3), axis=(2, 3))
    zero = np.all(D == 0, axis=(2, 3))
    return np.where(eye, _IN_DUAL, np.where(zero, _IN_POLAR, _BETWEEN))


def _curved_pushed(base: np.ndarray, step: np.ndarray, want: np.ndarray, which: np.ndarray,
                   dims: ConeDims) -> tuple[np.ndarray, np.ndarray]:
    """(moved (B, n, 3), reached (B, n)): base + k·step for the 3-d blocks ``which`` (B, n),
    k = 1, CURVED_GROWTH, CURVED_GROWTH², … (CURVED_TRIES times at most) until the block lies
    on the side ``want`` (B, n) names (_IN_DUAL, _BETWEEN, _IN_POLAR); others as ``base``."""
    moved = base.copy()
    reached = np.zeros(which.shape, dtype=bool)
    k = 1.0
    for _ in range(CURVED_TRIES):
        todo = which & ~reached
        if not todo.any():
            break
        trial = np.where(todo[..., None], base + k * step, moved)
        side = _curved_dual_projection(trial, dims)[1]
        ok = todo & (side == want)
        moved[ok] = trial[ok]
        reached |= ok
        k *= CURVED_GROWTH
    return moved, reached


def _curved_kinks(v: np.ndarray, mask: np.ndarray, dims: ConeDims, scale: np.ndarray,
                  rel: np.ndarray, sides: tuple[np.ndarray, np.ndarray] | None) -> None:
    """`snap_kinks` on the exponential and power cones, in place: their kinks set in ``mask``
    (whole blocks), ``v`` moved to the held side where that side's DΠ is exact.

    With y = Π_{K*}(v) and s = y − v (Moreau) a 3-d block is at a kink where its slack is 0
    and its multiplier on ∂K*, where its multiplier is 0 and its slack on ∂K, or at the
    apex (both 0). The first: ‖s‖ within the primal tolerance and y's depth in K* within
    the dual one, or, with ‖s‖ below CURVED_PROJECTION_ERROR of ‖v‖, v within those of
    ∂K* (its signed distance, `_curved_margin`: inside K*, the dual tolerance; outside,
    the primal); the second likewise with −v, ∂K and ‖y‖; the apex, ‖s‖ and ‖y‖ both
    within theirs. Both tests, because near ∂(−K_exp) the projection's y can be ~1e-10 of
    ‖v‖ where it is 0; the margins only within that band, because a first-order distance
    is none far from the boundary or where ψ's gradient is huge. The tolerances are
    ``rel`` times the block's own primal and dual magnitudes from ``sides`` (or ``scale``,
    ``rel``·‖v‖∞, without them), as for a second-order cone.

    Held active, the first kind and the apex move inside K* (v + η·c, the apex η·c, c
    interior to K and K*, η = CURVED_PUSH·‖v‖, grown until inside: `_curved_pushed`),
    where DΠ = I exactly (the slack held at 0, the multiplier free). The second kind stays
    where it is: its held DΠ is the limit on the multiplier's side, the projector onto the
    multiplier's ray, which `curved_limits` sets in closed form. A point moved to that side
    instead (a multiplier 1e-10 of the slack) carries DΠ's distance from its limit, and
    the projection's error in the multiplier's direction, into the derivative: where the
    kink's sides agree in the outputs (an auxiliary variable of CVXPY's, free inside an
    inactive constraint, whose cones sit weakly active wherever the solver left them) that
    lost four digits of it (the 3-norm ball's projection inside it, 1e-16 → 3.6e-11)."""
    rows, inside, kinds = _curved_blocks(dims)
    live = np.flatnonzero(rel > 0)
    if not live.size:
        return
    V = v[live][:, rows]
    B, n, _ = V.shape
    lay = cone_layout(dims)
    own = np.broadcast_to(scale[live][:, None], (B, n))
    primal = dual = own
    if sides is not None:
        r = rel[live][:, None]
        top = [part[live][:, rows].max(axis=2) for part in sides]
        primal, dual = (np.where((t > 0) & np.isfinite(t), r * t, own) for t in top)
    m_dual = _curved_margin(V, _curved_kinds(lay, dual=True))  # v to ∂K*
    m_polar = _curved_margin(-V, kinds)                        # −v to ∂K
    with np.errstate(invalid="ignore"):
        at_dual = np.where(m_dual >= 0, m_dual <= dual, -m_dual <= primal)
        at_polar = np.where(m_polar >= 0, m_polar <= primal, -m_polar <= dual)
    # A slack within its tolerance beside a multiplier on ∂K* puts v within it of ∂K* (the
    # margin is a lower bound on the distance, ψ being convex), a multiplier likewise of
    # ∂(−K): only blocks near either boundary, small, or outside a margin's domain by less
    # than the tolerance (near a face of ∂K there) need the projection
    tol = np.maximum(primal, dual)
    near = at_dual | at_polar | (np.linalg.norm(V, axis=2) <= tol) | (
        np.isnan(m_dual) & (_domain_gap(V, _curved_kinds(lay, dual=True)) <= tol)) | (
        np.isnan(m_polar) & (_domain_gap(-V, kinds) <= tol))
    keep = np.flatnonzero(near.any(axis=1))
    if not keep.size:
        return
    live, V, B = live[keep], V[keep], keep.size
    primal, dual = primal[keep], dual[keep]
    at_dual, at_polar = at_dual[keep], at_polar[keep]
    Y, side = _curved_dual_projection(V, dims)
    S = Y - V
    ny, ns = np.linalg.norm(Y, axis=2), np.linalg.norm(S, axis=2)
    small_s, small_y = ns <= primal, ny <= dual
    # the margins decide only within the projection's own error: a first-order distance
    # is no distance far from the boundary, nor where ψ's gradient is huge (an edge of K)
    band = CURVED_PROJECTION_ERROR * np.linalg.norm(V, axis=2)
    at_dual &= ns <= band
    at_polar &= ny <= band
    with np.errstate(invalid="ignore"):
        y_on = _curved_margin(Y, _curved_kinds(lay, dual=True)) <= dual
        s_on = _curved_margin(S, kinds) <= primal
    held_y = ~small_y & ((small_s & y_on) | at_dual)
    held_s = ~small_s & ((small_y & s_on) | at_polar)
    apex = small_s & small_y
    kink = apex | held_y | held_s
    if not kink.any():
        return
    flags = mask[np.ix_(live, rows.ravel())].reshape(B, n, 3) | kink[..., None]
    mask[np.ix_(live, rows.ravel())] = flags.reshape(B, -1)
    # held: the slack at 0 (and the apex) inside K*, where DΠ = I exactly; the multiplier at
    # 0 stays where it is, its DΠ set to the limit by `curved_limits`
    inward = (apex | (held_y & ~held_s)) & (side != _IN_DUAL)
    if inward.any():
        eta = np.where(apex, np.maximum(np.maximum(primal, dual), _CURVED_FLOOR),
                       np.maximum(CURVED_PUSH * np.linalg.norm(V, axis=2), _CURVED_FLOOR))
        base = np.where(apex[..., None], 0.0, V)
        moved, reached = _curved_pushed(base, eta[..., None] * inside[None],
                                        np.full(inward.shape, _IN_DUAL), inward, dims)
        block = np.where(reached[..., None], moved, V)
        v[np.ix_(live, rows.ravel())] = block.reshape(B, -1)


def flip_near_kinks(v: np.ndarray, dims: ConeDims, tol: float | np.ndarray,
                    nonneg: bool = True) -> np.ndarray:
    """v with each coordinate that lies within ``tol · ‖v‖∞`` of a kink of Π_{K*} (``tol``
    a number, or one per instance; nonnegative coordinates only with ``nonneg``), but not on
    it, mirrored to the kink's other side: a small multiplier becomes a slack of the same
    size and a small slack a multiplier. A nonnegative coordinate changes sign; a
    second-order cone point near the boundary ‖x‖ = |t| has |t| reflected across ‖x‖, one
    near the apex changes sign whole; a PSD block's eigenvalues that are small change sign.
    Exponential and power cones are left as they are.

    Newton's method on the residual map takes the structure of its point as given: started
    where a constraint holds a multiplier of 1e-9 that the solution does not have (a PSD
    eigenvalue weakly active to that level beside a second-order cone at its apex), its
    steps are least-squares steps between two structures that cannot both hold, and it
    converges only linearly; from the mirrored point it converges at once."""
    v = v.copy()
    scale = tol * np.abs(v).max(axis=1, initial=0.0)
    off = dims.zero
    if dims.nonneg and nonneg:
        block = v[:, off : off + dims.nonneg]
        near = (np.abs(block) <= scale[:, None]) & (block != 0)
        block[near] = -block[near]
    off += dims.nonneg
    for k in dims.soc:
        t, xb = v[:, off], v[:, off + 1 : off + k]
        nx = np.linalg.norm(xb, axis=1)
        apex = (nx <= scale) & (np.abs(t) <= scale) & ((nx > 0) | (t != 0))
        edge = ~apex & (np.abs(nx - np.abs(t)) <= scale) & (nx != np.abs(t))
        v[edge, off] = np.sign(t[edge]) * (2 * nx[edge] - np.abs(t[edge]))
        v[apex, off : off + k] = -v[apex, off : off + k]
        off += k
    for k in dims.psd:
        d = k * (k + 1) // 2
        lam, U = np.linalg.eigh(_unvec(v[:, off : off + d], k))
        near = (np.abs(lam) <= scale[:, None]) & (lam != 0)
        for i in np.flatnonzero(near.any(axis=1)):
            li = np.where(near[i], -lam[i], lam[i])
            v[i, off : off + d] = _svec((U[i] * li) @ U[i].T, k)
        off += d
    return v


def power_apexes_released(y: np.ndarray, s: np.ndarray, b: np.ndarray, empty: np.ndarray,
                          dims: ConeDims) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, s, moved (B,)): the point (y, s) (B, m) with each power cone block K_a (a > 0)
    whose slack is 0 while exactly one of its rows k holds only data (``empty`` (B, m):
    rows A leaves empty; b_k ≠ 0 there) moved to the face that row asks for.

    Such a row's s_k = b_k is met by no point of the apex, and y_k enters no other row, so
    Newton's method on the residual map, whose DΠ is 0 on that block, cannot leave it (a
    power (t, 1, x) with x ~ 1e-15 of the instance's largest, whose 1 the equilibration put
    at 1e-13: the residual of 1e-13 judged at the instance's floor). y_k is set where y
    lies on ∂K*_a, (u/a)^a (v/(1 − a))^(1−a) = |w| (w's sign opposite b_k's for k = 2),
    and s to the ray of ∂K_a complementary to it, (a|w|/u, (1 − a)|w|/v, −sign w), scaled
    to s_k = b_k. Blocks where that is not defined (an entry of y that must be positive is
    not, or s_k would need the wrong sign) are left as they are."""
    lay = cone_layout(dims)
    y, s = y.copy(), s.copy()
    moved = np.zeros(y.shape[0], dtype=bool)
    for rows, a in zip(lay.pow, lay.alpha, strict=True):
        if a <= 0:
            continue
        yb, sb, bb = y[:, rows], s[:, rows], b[:, rows]
        lone = empty[:, rows] & (bb != 0)
        pick = np.all(sb == 0, axis=1) & (lone.sum(axis=1) == 1)
        for i in np.flatnonzero(pick):
            k = int(np.flatnonzero(lone[i])[0])
            u, v, w = yb[i]
            with np.errstate(all="ignore"):
                if k == 0:
                    u = a * (abs(w) / (v / (1 - a)) ** (1 - a)) ** (1 / a)
                elif k == 1:
                    v = (1 - a) * (abs(w) / (u / a) ** a) ** (1 / (1 - a))
                else:
                    w = -np.sign(bb[i, 2]) * (u / a) ** a * (v / (1 - a)) ** (1 - a)
                ray = np.array([a * abs(w) / u, (1 - a) * abs(w) / v, -np.sign(w)])
                lam = bb[i, k] / ray[k]
            if not (u > 0 and v > 0 and w != 0 and lam > 0 and np.all(np.isfinite(lam * ray))):
                continue
            y[i, rows] = (u, v, w)
            s[i, rows] = lam * ray
            moved[i] = True
    return y, s, moved


def inactive_cones_held(y: np.ndarray, s: np.ndarray, dims: ConeDims, hold: np.ndarray,
                        size: float = 1e-8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, s, moved (B,)): the point (y, s) (B, m) with each cone block (second-order, PSD,
    exponential, power) among the rows ``hold`` (B, m) whose multiplier is exactly 0 and whose
    slack lies strictly inside K held active: the slack moved onto K's boundary and the
    multiplier set on the ray of ∂K* complementary to it, at ``size`` times the block's
    largest |s|; and each nonnegative row among them whose multiplier is 0 and slack
    positive (slack 0, multiplier ``size`` times the instance's largest |s|).

    A block's multiplier that the solution sets far below the data (the weight λ of a
    regularizer λ‖x‖₂ at 1e-10 of ‖a‖ in min ‖x − a‖² + λ‖x‖₂) is lost to the solver's
    tolerance: its point holds the slack inside K with the multiplier 0, where DΠ = 0 on
    the block and the variable the slack bounds is free, so S is singular and Newton's
    method cannot leave (the step that would move the multiplier enters no row). From the
    held point it takes the structure's multiplier in a step; the size of the one set here
    is immaterial to that. A block whose constraint is truly inactive is released again by
    the steps, or the point is not taken: the caller chooses the blocks, and holding one
    whose slack is free (an inactive constraint's epigraph variable, anywhere between the
    constraint's value and its bound) lands at a point that is no solution's structure.

    The boundary point: a second-order cone (t, x) → (‖x‖, x), the apex where x = 0; a PSD
    block's least eigenvalue set to 0; an exponential (r, q, p) → (r, q, q e^{r/q}); a power
    cone K_a (a > 0, x^a y^(1−a) >= |z|) → (x, y, sign z · x^a y^(1−a)), left as it is where
    z = 0. The complementary rays: (1, −x/‖x‖) (e at the apex), q qᵀ for the eigenvector
    q, (−1, ρ − 1, e^{−ρ}) at ρ = r/q, (a|z|/x, (1 − a)|z|/y, −sign z). Exponential duals
    and dual power cones are left as they are."""
    lay = cone_layout(dims)
    y, s = y.copy(), s.copy()
    moved = np.zeros(y.shape[0], dtype=bool)
    depth = interior_depth(s, dims)

    def free(rows: np.ndarray) -> np.ndarray:
        return hold[:, rows[0]] & np.all(y[:, rows] == 0, axis=1) & (depth[:, rows[0]] > 0)

    yb, sb = y[:, lay.nonneg], s[:, lay.nonneg]
    rows = hold[:, lay.nonneg] & (yb == 0) & (sb > 0)
    top = np.abs(s).max(axis=1, initial=0.0)[:, None]
    yb[rows] = (size * np.broadcast_to(top, yb.shape))[rows]
    sb[rows] = 0.0
    moved |= rows.any(axis=1)
    for _, blocks in lay.soc:
        for rows in blocks:
            for i in np.flatnonzero(free(rows)):
                t, xb = s[i, rows[0]], s[i, rows[1:]]
                nx = float(np.linalg.norm(xb))
                ray = np.concatenate([[1.0], -xb / nx]) if nx > 0 else np.eye(len(rows))[0]
                s[i, rows[0]] = nx
                if nx == 0:
                    s[i, rows] = 0.0
                y[i, rows] = size * max(abs(t), nx) * ray
                moved[i] = True
    for k, blocks in lay.psd:
        for rows in blocks:
            for i in np.flatnonzero(free(rows)):
                lam, U = np.linalg.eigh(_unvec(s[i, rows], k))
                q = U[:, :1]
                s[i, rows] = _svec(_unvec(s[i, rows], k) - lam[0] * (q @ q.T), k)
                y[i, rows] = _svec(size * np.abs(lam).max() * (q @ q.T), k)
                moved[i] = True
    with np.errstate(all="ignore"):
        for rows in lay.exp[: lay.n_exp]:
            for i in np.flatnonzero(free(rows)):
                r, q, p = s[i, rows]
                rho = r / q
                ray = np.array([-1.0, rho - 1.0, np.exp(-rho)])
                edge = q * np.exp(rho)
                if not np.all(np.isfinite(ray)) or not np.isfinite(edge):
                    continue
                s[i, rows[2]] = edge
                y[i, rows] = size * max(abs(r), q, p) * ray / np.linalg.norm(ray)
                moved[i] = True
        for rows, a in zip(lay.pow, lay.alpha, strict=True):
            if a <= 0:
                continue
            for i in np.flatnonzero(free(rows)):
                x, w, z = s[i, rows]
                edge = x**a * w ** (1 - a)
                if z == 0 or not np.isfinite(edge):
                    continue
                z = np.sign(z) * edge
                ray = np.array([a * abs(z) / x, (1 - a) * abs(z) / w, -np.sign(z)])
                if not np.all(np.isfinite(ray)):
                    continue
                s[i, rows[2]] = z
                y[i, rows] = size * max(x, w, abs(z)) * ray / np.linalg.norm(ray)
                moved[i] = True
    return y, s, moved


def release_kinks(v: np.ndarray, mask: np.ndarray, dims: ConeDims, tol: float = KINK_TOL,
                  D: DProjection | None = None) -> np.ndarray:
    """v moved off its kinks to the other side: DΠ_{K*} there is the other one-sided
    derivative (the weakly active constraints released instead of held active).

    ``v`` and ``mask`` as `snap_kinks` returns them. Per kinked cone block: a nonnegative
    coordinate at 0 (DΠ = 1) goes just below 0 (DΠ = 0); a second-order cone point on the
    boundary of K* (DΠ = I) moves a relative ``tol`` into the region between K* and −K (the
    rank-two formula of Ali et al. 2017, at its limit on the boundary), one held just inside
    that region beside −K's boundary (the rank-one limit there) onto −K (DΠ = 0), and the
    apex to the polar side (DΠ = 0); a PSD block's eigenvalues within ``tol · ‖v‖∞``
    of 0 change sign (Daleckii–Krein's Γ switches between its branches).
    """
    v = v.copy()
    scale = tol * np.abs(v).max(axis=1, initial=0.0)
    tiny = np.finfo(float).tiny
    off = dims.zero
    if dims.nonneg:
        block = v[:, off : off + dims.nonneg]
        block[mask[:, off : off + dims.nonneg]] = -tiny
    off += dims.nonneg
    for k in dims.soc:
        rows = np.flatnonzero(mask[:, off])
        t = v[rows, off]
        nx = np.linalg.norm(v[rows, off + 1 : off + k], axis=1)
        apex = nx <= scale[rows]
        # the boundary of K* into the region between (the rank-two formula at its limit); a
        # point held just inside that region beside −K's boundary onto −K (DΠ = 0)
        v[rows, off] = np.where(apex, -np.maximum(scale[rows], tiny),
                                np.where(t < 0, -(1.0 + tol) * nx, t - tol * nx))
        off += k
    for k in dims.psd:
        d = k * (k + 1) // 2
        for i in np.flatnonzero(mask[:, off]):
            lam, U = np.linalg.eigh(_unvec(v[i, off : off + d], k))
            near = np.abs(lam) <= scale[i]
            lam[near] = np.where(lam[near] >= 0, -1.0, 1.0) * np.maximum(scale[i], tiny)
            v[i, off : off + d] = _svec((U * lam) @ U.T, k)
        off += d
    if dims.exp or dims.exp_dual or dims.power:
        rows, inside, kinds = _curved_blocks(dims)
        blk = v[:, rows]
        kinked = mask[:, rows[:, 0]]
        if kinked.any():
            state = None if D is None else _curved_state(D, np.arange(len(v)), dims)
            v[:, rows] = _curved_released(blk, kinked, inside, kinds, dims, state)
    return v


def _complementary_ray(P: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """The unit ray of the dual cone complementary to each point of ∂K in P (B, n, 3), K the
    cone ``kinds`` (n,) names (`_curved_kinds`): K_exp (r, q, p), q > 0: (−1, ρ − 1, e^{−ρ})
    at ρ = r/q; K*_exp (u, v, w), u < 0: (ρ, 1, e^ρ) at ρ = 1 − v/u; K_a (x, y, z), z ≠ 0:
    (a|z|/x, (1 − a)|z|/y, −sign z); K*_a (u, v, w), w ≠ 0: (a/u, (1 − a)/v, −sign w/|w|).
    NaN where the point is on a face of ∂K (its normal cone not a ray) or out of range."""
    x, y, z = P[..., 0], P[..., 1], P[..., 2]
    out = np.full(P.shape, np.nan)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        rho = x / y
        e = np.stack([-np.ones_like(x), rho - 1.0, np.exp(-rho)], axis=-1)
        out = np.where(((kinds == 0.0) & (y > 0))[..., None], e, out)
        rho = 1.0 - y / x
        e = np.stack([rho, np.ones_like(x), np.exp(rho)], axis=-1)
        out = np.where(((kinds == -1.0) & (x < 0))[..., None], e, out)
        power = (kinds > -1.0) & (kinds != 0.0)
        a = np.where(power, np.abs(kinds), 0.5)
        az = np.abs(z)
        prim = np.stack([a * az / x, (1 - a) * az / y, -np.sign(z)], axis=-1)
        dual = np.stack([a / x, (1 - a) / y, -np.sign(z) / az], axis=-1)
        ok = power & (x > 0) & (y > 0) & (z != 0)
        out = np.where((ok & (kinds > 0))[..., None], prim, out)
        out = np.where((ok & (kinds < 0))[..., None], dual, out)
        out = out / np.linalg.norm(out, axis=-1, keepdims=True)
    return np.where(np.isfinite(out).all(axis=-1, keepdims=True), out, np.nan)


def _curved_state(D: DProjection, at: np.ndarray, dims: ConeDims
                  ) -> tuple[np.ndarray, np.ndarray]:
    """`_curved_dual_projection` of the instances ``at`` of the point ``D`` (DΠ_{K*}) was
    made at, from its projection and its blocks (no projection made again)."""
    rows, _, _ = _curved_blocks(dims)
    blocks = [b[at] for b in (D._exp, D._pow) if b is not None]
    Dc = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    return np.asarray(D.point[at][:, rows], dtype=np.float64), _curved_sides(Dc)


def curved_limits(D: DProjection, v: np.ndarray, mask: np.ndarray, dims: ConeDims,
                  released: bool = False) -> None:
    """Set, in place on ``D`` (DΠ_{K*} at ``v``, as `snap_kinks` or `release_kinks` leaves
    it, with its ``mask``), the exponential and power cone blocks at a kink whose side's DΠ
    is a limit no point attains exactly, in closed form: held (``released`` False), a
    multiplier at 0 beside a slack on ∂K gets the projector ŷŷᵀ onto the multiplier's ray
    (`_complementary_ray` of the slack); released, a slack at 0 beside a multiplier on ∂K*
    gets I − ŝŝᵀ, the projector onto ∂K*'s tangent plane there (ŝ the slack's ray, its
    normal). Blocks on a face of ∂K, where the ray is not unique, are left as they are."""
    if not (dims.exp or dims.exp_dual or dims.power) or D._exp is None and D._pow is None \
            or not D.dual:
        return
    rows, _, kinds = _curved_blocks(dims)
    kinked = mask[:, rows[:, 0]]
    if not kinked.any():
        return
    lay = cone_layout(dims)
    at = np.flatnonzero(kinked.any(axis=1))
    blk = np.asarray(v[at][:, rows], dtype=np.float64)
    Y, side = _curved_state(D, at, dims)
    S = Y - blk
    multiplier_smaller = np.linalg.norm(Y, axis=2) < np.linalg.norm(S, axis=2)
    if released:  # the slack the smaller part, the multiplier on ∂K*
        which = kinked[at] & (side == _BETWEEN) & ~multiplier_smaller
        ray = _complementary_ray(Y, _curved_kinds(lay, dual=True))
        limit = np.eye(3) - ray[..., :, None] * ray[..., None, :]
    else:  # the multiplier the smaller part (0, or between and below the slack)
        which = kinked[at] & ((side == _IN_POLAR) | ((side == _BETWEEN) & multiplier_smaller))
        ray = _complementary_ray(S, kinds)
        limit = ray[..., :, None] * ray[..., None, :]
    which &= np.isfinite(ray).all(axis=2)
    ne = lay.exp.shape[0]
    for i, j in zip(*np.nonzero(which), strict=True):
        blocks = D._exp if j < ne else D._pow
        assert blocks is not None  # (a block of that kind is kinked)
        blocks[at[i], j if j < ne else j - ne] = limit[i, j]


def _curved_released(blk: np.ndarray, kinked: np.ndarray, inside: np.ndarray,
                     kinds: np.ndarray, dims: ConeDims,
                     state: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`release_kinks` on the 3-d blocks ``blk`` (B, n, 3) (`_curved_blocks`' order) where
    ``kinked`` (B, n), from where `snap_kinks` holds them: a block inside K* on ∂K* (its
    distance to it within 1e-6 of its size: the slack 0, the multiplier on ∂K*) moves just
    outside (its DΠ the tangent plane's projector, set by `curved_limits`), one at the apex
    into −K (DΠ = 0), and a multiplier between K* and −K smaller than its slack into −K.
    Steps of CURVED_PUSH·‖block‖ (‖block‖ at the apex) along −c, grown until the side is
    reached. The rest (the multiplier already 0 inside −K) are where released."""
    lay = cone_layout(dims)
    Y, side = _curved_dual_projection(blk, dims) if state is None else state
    size = np.linalg.norm(blk, axis=2)
    in_dual = side == _IN_DUAL
    with np.errstate(invalid="ignore"):
        on_dual = _curved_margin(blk, _curved_kinds(lay, dual=True)) <= 1e-6 * size
    multiplier_smaller = np.linalg.norm(Y, axis=2) < np.linalg.norm(Y - blk, axis=2)
    move = kinked & (in_dual | ((side == _BETWEEN) & multiplier_smaller))
    want = np.where(in_dual & on_dual, _BETWEEN, _IN_POLAR)
    apex = in_dual & ~on_dual
    eta = np.maximum(np.where(apex, size, 2.0 * CURVED_PUSH * size), _CURVED_FLOOR)
    moved, _ = _curved_pushed(blk, -eta[..., None] * inside[None], want, move, dims)
    return moved


def block_pattern(dims: ConeDims) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every entry DΠ can have (its block-diagonal structure), in the order
    of `DProjection.values`: zero and nonnegative diagonals, then each SOC, PSD and
    exponential- and power-cone block, row-major within a block."""
    lay = cone_layout(dims)
    z = np.arange(lay.zero.start, lay.zero.stop)
    nn = np.arange(lay.nonneg.start, lay.nonneg.stop)
    rows, cols = [z, nn], [z, nn]
    groups = [idx for _, idx in lay.soc] + [idx for _, idx in lay.psd]
    if lay.exp.size:
        groups.append(lay.exp)
    if lay.pow.size:
        groups.append(lay.pow)
    for idx in groups:
        nc, k = idx.shape
        rows.append(np.broadcast_to(idx[:, :, None], (nc, k, k)).ravel())
        cols.append(np.broadcast_to(idx[:, None, :], (nc, k, k)).ravel())
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def group_entries(dims: ConeDims, groups: frozenset) -> np.ndarray:
    """(nnz,) bool over `block_pattern`'s entries: those inside the blocks of ``groups``, a set
    of ("soc", k) and ("psd", k) naming every second-order cone of size k or every PSD cone of
    order k."""
    lay = cone_layout(dims)
    sizes = [lay.zero.stop - lay.zero.start, lay.nonneg.stop - lay.nonneg.start]
    kinds = [False, False]
    for kind, group in (("soc", lay.soc), ("psd", lay.psd)):
        for k, idx in group:
            sizes.append(idx.size * idx.shape[1])
            kinds.append((kind, k) in groups)
    sizes.append(lay.exp.size * lay.exp.shape[1] if lay.exp.size else 0)
    sizes.append(lay.pow.size * lay.pow.shape[1] if lay.pow.size else 0)
    kinds += [False, False]
    return np.repeat(np.array(kinds), sizes)


def cone_groups(dims: ConeDims) -> tuple[tuple[str, int, int], ...]:
    """("soc", k, count) and ("psd", k, count) for each size (order) of second-order (PSD)
    cone in ``dims``, in `block_pattern`'s order."""
    lay = cone_layout(dims)
    return tuple((kind, k, idx.shape[0]) for kind, group in (("soc", lay.soc), ("psd", lay.psd))
                 for k, idx in group)


class DProjection:
    """DΠ(v) for a batch: per-kind derivative data; ``rmatvec`` is ``matvec`` (symmetric).

    Shapes (batched): ``matvec`` (B, m) -> (B, m) and (B, m, k) -> (B, m, k); ``dense`` (B, m, m);
    ``sparse(i)`` a scipy CSR (m, m) matrix for instance i. Unbatched (from v of shape (m,)):
    the leading B axis is dropped everywhere.
    """

    def __init__(self, V: np.ndarray, dims: ConeDims, dual: bool, batched: bool = True,
                 near: DProjection | None = None, start: np.ndarray | None = None) -> None:
        self.dims = dims
        self.dual = bool(dual)
        self.batched = batched
        self.batch_size, self.m = V.shape
        lay = cone_layout(dims)
        self._lay = lay
        vn = V[:, lay.nonneg]
        self._nonneg = np.where(np.isnan(vn), np.nan, (vn >= 0).astype(np.float64))
        # Π(V) comes out of the same computations (as in `project`, bitwise): kept as `point`
        P = np.empty_like(V)
        P[:, lay.zero] = V[:, lay.zero] if dual else 0.0
        P[:, lay.nonneg] = np.maximum(vn, 0.0)
        self._soc, self._psd, self._exp, self._pow = [], [], None, None
        self._exp_roots: np.ndarray | None = None  # (B, cones): where a later one starts
        for _, idx in lay.soc:
            P[:, idx], coef = _soc(V[:, idx], True)
            if V.dtype != np.float64:  # (long double: rounded once, as refine.py does Π)
                coef = tuple(np.asarray(x, dtype=np.float64) for x in coef)
            self._soc.append((idx, coef))
        for k, idx in lay.psd:
            P[:, idx], data = _psd(V[:, idx], k, True)
            self._psd.append((k, idx, data))
        if lay.exp.size:
            if near is not None and near._exp_roots is not None and near.dual == self.dual \
                    and near._exp_roots.shape == (self.batch_size, lay.exp.shape[0]):
                start = near._exp_roots
            P[:, lay.exp], self._exp, self._exp_roots = _exp_all(
                V[:, lay.exp], lay.n_exp, dual, True, start)
        if lay.pow.size:
            P[:, lay.pow], self._pow = _pow_all(V[:, lay.pow], lay.alpha, dual, True)
        P = P.astype(np.float64, copy=False)
        self.point = P if batched else P[0]

    def _arrays(self):
        """Every per-instance array (leading batch axis), in a fixed order."""
        yield self._nonneg
        for _, coef in self._soc:
            yield from coef
        for _, _, data in self._psd:
            yield from data
        if self._exp is not None:
            yield self._exp
            assert self._exp_roots is not None  # (made with it)
            yield self._exp_roots
        if self._pow is not None:
            yield self._pow
        yield self.point

    def low_rank_columns(self, i: int, groups: frozenset
                         ) -> list[tuple[np.ndarray, float, np.ndarray, np.ndarray]]:
        """Instance i's blocks of ``groups`` (see `group_entries`) as (rows (kk,), base,
        Q (kk, ρ), h (ρ,)), one per cone, in `block_pattern`'s order: DΠ restricted to the
        block = base·I + Q diag(h) Qᵀ (`_soc_low_rank`: base between 0 and 1, ρ <= 2;
        `_psd_columns`: base 0 or 1)."""
        out = []
        for idx, coef in self._soc:
            k = idx.shape[1]
            if ("soc", k) not in groups:
                continue
            base, R, h = _soc_low_rank(tuple(x[i] for x in coef))
            xh = coef[4][i]
            for c in range(idx.shape[0]):
                keep = np.flatnonzero(h[c] != 0)  # NaN (a non-finite block) included
                Q = np.zeros((k, keep.size))
                Q[0] = R[c, 0, keep]
                Q[1:] = xh[c][:, None] * R[c, 1, keep]
                out.append((idx[c], float(base[c]), Q, h[c, keep]))
        for k, idx, (U, G) in self._psd:
            if ("psd", k) in groups:
                out += [(idx[c], *_psd_columns(U[i, c], G[i, c], k))
                        for c in range(idx.shape[0])]
        return out

    def low_rank(self, groups: frozenset) -> np.ndarray:
        """(B,) Σ over the blocks of ``groups`` of the rank ρ of DΠ − base·I (see
        `low_rank_columns`)."""
        out = np.zeros(self.batch_size, dtype=int)
        for idx, coef in self._soc:
            if ("soc", idx.shape[1]) in groups:
                out += np.count_nonzero(_soc_low_rank(coef)[2], axis=(-1, -2))
        for k, _, (_, G) in self._psd:
            if ("psd", k) in groups:
                I, J, _, _ = svec_index(k)
                out += np.minimum(*_psd_ranks(G[..., I, J])).sum(axis=-1)
        return out

    def take(self, sel) -> DProjection:
        """The operator for batch rows ``sel`` (an index array): copies."""
        new = object.__new__(DProjection)
        new.__dict__.update(self.__dict__)
        new._nonneg = self._nonneg[sel]
        new._soc = [(idx, tuple(x[sel] for x in coef)) for idx, coef in self._soc]
        new._psd = [(k, idx, tuple(x[sel] for x in data)) for k, idx, data in self._psd]
        new._exp = None if self._exp is None else self._exp[sel]
        new._exp_roots = None if self._exp_roots is None else self._exp_roots[sel]
        new._pow = None if self._pow is None else self._pow[sel]
        new.point = self.point[sel]
        new.batch_size = new.point.shape[0]
        return new

    def instance(self, i: int) -> DProjection:
        """Batch row ``i`` alone, unbatched (as from its v of shape (m,)): copies."""
        new = self.take(np.array([i]))
        new.batched = False
        return new

    @staticmethod
    def join(parts: list[DProjection]) -> DProjection:
        """The batches ``parts`` (of the same cones) one after another: copies."""
        sizes = [p.batch_size for p in parts]
        new = parts[0].take(np.zeros(sum(sizes), dtype=int))  # (its arrays, sized for all)
        at = 0
        for part, k in zip(parts, sizes, strict=True):
            new.put(slice(at, at + k), part)
            at += k
        return new

    def put(self, sel, other: DProjection) -> None:
        """Overwrite batch rows ``sel`` with ``other``'s (same cones, len(sel) rows)."""
        for mine, theirs in zip(self._arrays(), other._arrays(), strict=True):
            mine[sel] = theirs

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch_size, self.m, self.m) if self.batched else (self.m, self.m)

    def zero_rows(self) -> np.ndarray:
        """(B, m) bool (unbatched: (m,)): the rows where DΠ's row is exactly 0, the zero
        cone's of DΠ_K (not of DΠ_{K*}, which is I there) and the nonnegative cone's where
        v < 0."""
        lay = self._lay
        out = np.zeros((self.batch_size, self.m), dtype=bool)
        if not self.dual:
            out[:, lay.zero] = True
        out[:, lay.nonneg] = self._nonneg == 0
        return out if self.batched else out[0]

    def matvec(self, dv: np.ndarray) -> np.ndarray:
        """DΠ(v) dv, dv of shape (B, m) or (B, m, k) (k vectors at once); same shape back, in
        float64, or in long double where dv is (the derivative's extended residuals,
        `derivative.ConeSolution._extended`)."""
        dv = np.asarray(dv)
        if dv.dtype != np.longdouble:
            dv = dv.astype(np.float64, copy=False)
        nd = 2 if self.batched else 1
        if dv.ndim not in (nd, nd + 1) or dv.shape[nd - 1] != self.m or (
            self.batched and dv.shape[0] != self.batch_size
        ):
            want = f"({self.batch_size}, {self.m})" if self.batched else f"({self.m},)"
            raise ValueError(
                f"expected dv of shape {want} or that plus a trailing k, got {dv.shape}"
            )
        X = dv if self.batched else dv[None]
        vec = X.ndim == 2
        if vec:
            X = X[..., None]
        lay = self._lay
        out = np.empty_like(X)
        out[:, lay.zero] = X[:, lay.zero] if self.dual else 0.0
        out[:, lay.nonneg] = self._nonneg[..., None] * X[:, lay.nonneg]
        for idx, coef in self._soc:
            out[:, idx] = _soc_matvec(coef, X[:, idx])
        for k, idx, data in self._psd:
            out[:, idx] = _psd_matvec(data, X[:, idx], k)
        if self._exp is not None:
            out[:, lay.exp] = self._exp @ X[:, lay.exp]
        if self._pow is not None:
            out[:, lay.pow] = self._pow @ X[:, lay.pow]
        if vec:
            out = out[..., 0]
        return out if self.batched else out[0]

    rmatvec = matvec

    def curved_magnitudes(self, dv: np.ndarray) -> np.ndarray:
        """|DΠ| dv on the exponential and power cones' rows, 0 on the others; dv (B, m)."""
        out = np.zeros_like(dv)
        lay = self._lay
        for rows, blocks in ((lay.exp, self._exp), (lay.pow, self._pow)):
            if blocks is not None and rows.size:
                out[:, rows] = (np.abs(blocks) @ dv[:, rows][..., None])[..., 0]
        return out

    def _blocks(self, sel, skip: frozenset = frozenset()):
        """(idx (nc, k), blocks (b, nc, k, k)) per cone group, for batch rows ``sel``, except
        the groups in ``skip`` (see `group_entries`)."""
        for idx, coef in self._soc:
            if ("soc", idx.shape[1]) not in skip:
                yield idx, _soc_blocks(tuple(x[sel] for x in coef))
        for k, idx, (U, G) in self._psd:
            if ("psd", k) not in skip:
                yield idx, _psd_blocks((U[sel], G[sel]), k)
        if self._exp is not None:
            yield self._lay.exp, self._exp[sel]
        if self._pow is not None:
            yield self._lay.pow, self._pow[sel]

    def dense(self) -> np.ndarray:
        """Dense block-diagonal matrix, (B, m, m) (or (m, m) if unbatched)."""
        B, m = self.batch_size, self.m
        lay = self._lay
        out = np.zeros((B, m, m))
        if self.dual:
            z = np.arange(lay.zero.start, lay.zero.stop)
            out[:, z, z] = 1.0
        nn = np.arange(lay.nonneg.start, lay.nonneg.stop)
        out[:, nn, nn] = self._nonneg
        for idx, blk in self._blocks(slice(None)):
            out[:, idx[:, :, None], idx[:, None, :]] = blk
        return out if self.batched else out[0]

    def values(self, skip: frozenset = frozenset()) -> np.ndarray:
        """The entries of DΠ on `block_pattern` (same order), for the batch: (B, nnz); only
        those outside the blocks of ``skip`` (`group_entries` false), without building those
        blocks."""
        lay = self._lay
        B = self.batch_size
        parts = [np.full((B, lay.zero.stop - lay.zero.start), 1.0 if self.dual else 0.0),
                 self._nonneg]
        parts += [blk.reshape(B, -1) for _, blk in self._blocks(slice(None), skip)]
        return np.concatenate(parts, axis=1)

    def sparse(self, i: int = 0) -> sp.csr_matrix:
        """Instance ``i`` as a scipy CSR (m, m) matrix (block diagonal)."""
        lay = self._lay
        rows, cols, vals = [], [], []
        if self.dual:
            z = np.arange(lay.zero.start, lay.zero.stop)
            rows.append(z)
            cols.append(z)
            vals.append(np.ones(z.size))
        nn = np.arange(lay.nonneg.start, lay.nonneg.stop)
        rows.append(nn)
        cols.append(nn)
        vals.append(self._nonneg[i])
        for idx, blk in self._blocks(slice(i, i + 1)):
            nc, k = idx.shape
            rows.append(np.broadcast_to(idx[:, :, None], (nc, k, k)).ravel())
            cols.append(np.broadcast_to(idx[:, None, :], (nc, k, k)).ravel())
            vals.append(blk[0].ravel())
        r, c, x = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        keep = x != 0
        return sp.csr_matrix((x[keep], (r[keep], c[keep])), shape=(self.m, self.m))
