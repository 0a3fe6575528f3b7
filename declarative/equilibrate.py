"""equilibrate: a diagonal rescaling of each cone program that makes its data O(1).

Refinement, the certificate of `solved` and the derivative all work on the equilibrated
program, so none of them depends on the units the user chose: a 1e9 penalty among O(1)
entries, or data scaled by 1e-12, gives the same relative accuracy as O(1) data.

For  min ½xᵀPx + cᵀx  s.t.  Ax + s = b, s ∈ K  and positive diagonal D (m), E (n) and
scalars ρ, σ > 0, the program

    min ½x̂ᵀP̂x̂ + ĉᵀx̂  s.t.  Âx̂ + ŝ = b̂, ŝ ∈ K,
    Â = D A E,  P̂ = (σ/ρ) E P E,  b̂ = ρ D b,  ĉ = σ E c                              (1)

has the solutions  x̂ = ρ E⁻¹ x,  ŝ = ρ D s,  ŷ = σ D⁻¹ y  (its KKT conditions are those of
the original times diagonal factors), provided D maps every cone block onto itself
(D K = K, and then D⁻¹ K* = K*): any positive D on the half-lines of the zero and
nonnegative cones; one factor per block on the others, and, at a solution (`at_solution`),
the cones' diagonal automorphisms beyond it: (f_x, f_y, f_x^α f_y^(1−α)) on a power cone
(`_power_shape`), λᵢλⱼ on a PSD cone's svec entry (i, j), the congruence by diag(λ)
(`_psd_shape`). D and E come from Ruiz's iteration (Ruiz 2001, *A scaling algorithm to
equilibrate both rows and columns norms in matrices*) on the symmetric matrix
[[P, Aᵀ], [A, 0]], as SCS and OSQP scale their KKT matrices; they depend on A and P only,
so a program whose A and P do not depend on the parameters keeps one Â and P̂ for the
whole batch. One scalar ρ = σ then brings max(‖b̂‖∞, ‖ĉ‖∞) to 1 (two different ones
would scale P̂ by σ/ρ, which undoes the equilibration of P when b and c differ in scale).
Where that leaves an instance unsolved and its data far apart in scale, the layer solves it
once more with ρ and σ apart (`rebalance`; P̂ then scales by σ/ρ), with both moved so that
the median entry of ĉ and b̂ is 1 (`recentred`), or with its objective rescaled before
equilibrating (`objective_scale`).

Every factor is a power of two (`binary`; a power cone's rows at a solution excepted, whose
factors must keep the cone's shape), so (1) is exact in floating point: the program that
refinement and the certificate judge is the user's, not a rounding of it, which a solution
at condition 1e11 would carry as 1e-5 of its own.

The scaling is a fixed linear change of variables for each instance: the solution map of
(1) composed with it is the original solution map, so derivatives pass through it with
the same factors (`data`, `data_adjoint`, `solution`, `solution_adjoint`).

A diagonal D keeps an exponential cone only with one factor for its three rows, which
cannot balance entr(x) at x ~ 1e8: CVXPY's (t, x, 1) ∈ K_exp holds t ~ −2e9 beside the
constant 1. The cone's other automorphisms, (x, y, z) ↦ (x + c·y, y, e^c·z), can: c = log x
brings that point to (0, x, x). The scaling at a solution (`at_solution`) mixes each primal
exponential cone's rows that way (`Equilibration.mix`); the template stores the entries
this needs (`compile.with_exp_mixing`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import overload

import numpy as np

from declarative.compile import ConeTemplate, exp_rows
from declarative.cones import ConeDims, cone_layout, svec_index

# Ruiz sweeps: each takes the square root of every row and column norm's distance from 1,
# so 15 sweeps bring norms spread over 1e±300 to within a factor 2 of 1.
RUIZ_SWEEPS = 15
# A sweep stops for an instance once every row and column norm is within this factor of 1.
BALANCED = 2.0
# Geometric-mean sweeps before Ruiz's: each row and column divided by √(max·min) of its
# nonzero entries (as LP codes scale before equilibrating). Ruiz's max-norm balance leaves a
# variable that appears beside 1e9 entries in one row and alone in another at 1e-5 in the
# first (CVaR's pos(−Rw − t) with R ~ 1e9); the geometric mean balances it.
GEOMETRIC_SWEEPS = 4
# ... which run only for instances with a row or column whose nonzero entries span more than
# this (random O(1) data reach 1e6: a normal sample has entries near 0; the sweeps cost more
# than they change there).
SPREAD = 1e7
# Row and column norms all within this factor of each other: one scalar balances them.
UNIFORM = 16.0


def _segments(dims: ConeDims) -> np.ndarray:
    """Start index of every block on which D must be constant: each row of the zero and
    nonnegative cones alone, each other cone as one block."""
    sizes = [1] * (dims.zero + dims.nonneg)
    sizes += list(dims.soc) + [k * (k + 1) // 2 for k in dims.psd]
    sizes += [3] * (dims.exp + dims.exp_dual + len(dims.power))
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp) if sizes else \
        np.zeros(0, dtype=np.intp)


@dataclass(frozen=True)
class _Pattern:
    """Index arrays to take max-norms over rows and columns of A and P for a whole batch."""

    rows: np.ndarray
    cols: np.ndarray
    by_row: np.ndarray        # A's entries sorted by row
    row_starts: np.ndarray    # segment starts in that order, rows with entries
    row_ids: np.ndarray       # which row each segment is
    col_starts: np.ndarray    # A is stored by column (CSC): segment starts
    col_ids: np.ndarray
    P_rows: np.ndarray
    P_cols: np.ndarray
    P_order: np.ndarray       # P's entries sorted by column
    P_starts: np.ndarray
    P_ids: np.ndarray
    blocks: np.ndarray        # segment starts of the cone blocks (`_segments`)
    block_sizes: np.ndarray
    exp_first: np.ndarray     # first row of each primal exponential cone
    exp_mixable: np.ndarray   # (its cones,) bool: the first row stores every column the
                              # second does (`compile.with_exp_mixing`)
    mix_to: np.ndarray        # A's entries of those cones' first rows ...
    mix_from: np.ndarray      # ... the second row's entry in the same column
    mix_cone: np.ndarray      # ... and which cone
    boost_rows: np.ndarray    # (2, k): first row and axis row of each boostable second-order
                              # cone (`_boostable`)
    boost_r: np.ndarray       # A's entries of those cones' first rows ...
    boost_q: np.ndarray       # ... the axis row's entry in the same column
    boost_cone: np.ndarray    # ... and which cone
    boost_bounds: np.ndarray  # (2k,): each boostable cone's first row and the row after it

    def block_max(self, u: np.ndarray) -> np.ndarray:
        """``u`` (B, m) with each entry replaced by its cone block's largest."""
        if not self.blocks.size:
            return u
        return np.repeat(np.maximum.reduceat(u, self.blocks, axis=1), self.block_sizes, axis=1)


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted keys: start of each run of equal keys, and the key of the run."""
    if keys.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return starts, keys[starts]


def pattern(t: ConeTemplate) -> _Pattern:
    """The template's `_Pattern`, built once and kept with it."""
    cached = t.derived.get("equilibration_pattern")
    if cached is None:
        rows, cols = t.rows_cols()
        by_row = np.argsort(rows, kind="stable")
        row_starts, row_ids = _runs(rows[by_row])
        col_starts, col_ids = _runs(cols)
        P_order = np.argsort(t.P_cols, kind="stable")
        P_starts, P_ids = _runs(t.P_cols[P_order])
        blocks = _segments(t.dims)
        sizes = np.diff(np.concatenate([blocks, [t.m]])).astype(np.intp)
        first = exp_rows(t.dims)
        keys = cols * t.m + rows  # sorted (CSC order)
        src = np.flatnonzero(np.isin(rows, first + 1))
        dst = np.searchsorted(keys, keys[src] - 1)
        found = keys[np.minimum(dst, keys.size - 1)] == keys[src] - 1 if keys.size else dst
        cone = np.searchsorted(first, rows[src] - 1)
        mixable = np.ones(first.size, dtype=bool)
        mixable[cone[~found]] = False
        keep = found & mixable[cone]
        boost_rows, boost_r, boost_q, boost_cone, bounds = _boostable(t.dims, rows, cols)
        cached = _Pattern(rows, cols, by_row, row_starts, row_ids, col_starts, col_ids,
                          t.P_rows, t.P_cols, P_order, P_starts, P_ids, blocks, sizes,
                          first, mixable, dst[keep], src[keep], cone[keep], boost_rows,
                          boost_r, boost_q, boost_cone, bounds)
        t.derived["equilibration_pattern"] = cached
    return cached


def _boostable(dims: ConeDims, rows: np.ndarray, cols: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The second-order cones a scaling may boost (`Equilibration.boost`): those whose second
    row stores entries in exactly the columns the first row does (CVXPY writes x·t >= w², of
    inv_pos, sqrt, power, quad_over_lin and geo_mean, as ‖(x − t, 2w)‖ <= x + t: rows x + t
    and x − t), and whose columns in those two rows no other block holds in rows that a boost
    or one factor per block sets apart: any row of the cones past the second-order ones, a
    second-order cone's first two. A boost scales its cone's columns apart, which a column
    scaling follows only where no other such row holds them: pnorm(x, 3)'s cones share its
    bound t in those rows, and boosts set apart by 2^11 on them left S's rcond at 5e-26 and a
    Jacobian entry 0 where it is 1e-3. A chain's links hold each other's columns in an axis
    row, which a boost leaves and the block's factor scales whole: power(x, 3) as x² <= w·1,
    w² <= t·x (at x ~ 1e4, entries 1e12 beside 1e4 and 1, none solved unboosted).
    Returns their first rows and axis rows (2, k); the pairs of A's stored entries (first
    row's, axis row's) in one column, with the cone of each (the boost then changes values
    alone); and each cone's first row and the row after it, in turn (2k,)."""
    lo = dims.zero + dims.nonneg
    order = np.lexsort((cols, rows))  # entries by row, then column
    srows, scols = rows[order], cols[order]
    starts = np.searchsorted(srows, np.arange(dims.size + 1))
    empty = np.zeros(0, dtype=np.intp)
    none = (np.zeros((2, 0), dtype=np.intp), empty, empty, empty, empty)
    sizes = np.asarray(dims.soc, dtype=np.intp)
    if sizes.size == 0:
        return none
    first = lo + np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.intp)
    soc_end = lo + sizes.sum()

    def boosted(r: np.ndarray) -> np.ndarray:  # a second-order cone's first two rows
        k = np.clip(np.searchsorted(first, r, side="right") - 1, 0, sizes.size - 1)
        return (r >= lo) & (r < soc_end) & (r - first[k] < 2)

    # how many cone blocks hold each column in rows that a boost or one factor per block sets
    # apart from the block's others: every row of the cones past the second-order ones, and
    # a second-order cone's first two (its axis entries past them move with the block)
    blocks = _segments(dims)
    held = (rows >= soc_end) | boosted(rows)
    pairs = np.unique(np.stack([cols[held], np.searchsorted(blocks, rows[held], side="right")
                                - 1]), axis=1)
    holders = np.bincount(pairs[0], minlength=int(cols.max(initial=-1)) + 1)
    # a cone is private where no other block holds a column of its first two rows so
    at = np.flatnonzero(boosted(srows))
    owner = np.searchsorted(first, srows[at], side="right") - 1
    shared = np.bincount(owner, weights=holders[scols[at]] != 1, minlength=sizes.size) > 0
    two = sizes >= 2
    n0 = starts[first + 1] - starts[first]
    n1 = np.where(two, starts[np.minimum(first + 2, dims.size)] - starts[first + 1], -1)
    cand = np.flatnonzero(two & ~shared & (n0 > 0) & (n0 == n1))
    if cand.size == 0:
        return none
    lens = n0[cand]
    offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    i0 = np.repeat(starts[first[cand]], lens) + offs
    i1 = np.repeat(starts[first[cand] + 1], lens) + offs
    which = np.repeat(np.arange(cand.size), lens)
    same = np.bincount(which, weights=scols[i0] != scols[i1], minlength=cand.size) == 0
    if not same.any():
        return none
    kept = cand[same]
    on = same[which]
    renumber = np.cumsum(same) - 1
    bounds = np.stack([first[kept], first[kept] + sizes[kept]], axis=1).ravel()
    return (np.stack([first[kept], first[kept] + 1]).astype(np.intp),
            order[i0[on]].astype(np.intp), order[i1[on]].astype(np.intp),
            renumber[which[on]].astype(np.intp), bounds.astype(np.intp))


def _rows_taken(mine: np.ndarray | None, theirs: np.ndarray | None, B: int, idx: np.ndarray,
                js: np.ndarray) -> np.ndarray | None:
    """A scaling's per-instance parameters (``mine`` (B, k), None for none) with the
    instances ``idx`` taken from ``theirs``' instances ``js`` (0 where ``theirs`` is None)."""
    if mine is None:
        if theirs is None:
            return None
        out = np.zeros((B, theirs.shape[1]))
    else:
        out = mine.copy()
    out[idx] = 0.0 if theirs is None else theirs[js]
    return out


def _boosted(u: np.ndarray, kappa: np.ndarray, r: np.ndarray, q: np.ndarray,
             absolute: bool = False) -> np.ndarray:
    """``u`` (B, ·) with its entries ``r`` and ``q`` (pairs: a first row's and its axis
    row's, per cone or per stored entry) boosted by 2^κ (``kappa``, (B, len(r))):
    p = u_r + u_q and q = u_r − u_q become 2^κ p and 2^−κ q, so that u_r and u_q become
    ch·u_r + sh·u_q and sh·u_r + ch·u_q (ch, sh = (2^κ ± 2^−κ)/2), formed through p and q,
    whose scalings are exact. With ``absolute``, |N| applied instead: ch·u_r + |sh|·u_q
    and |sh|·u_r + ch·u_q."""
    out = np.array(u)
    ur, uq = u[:, r], u[:, q]
    k = kappa.astype(np.int64)
    on = k != 0  # (κ = 0 leaves the entries exactly as they are, inf included)
    if absolute:
        up, dn = np.ldexp(1.0, k), np.ldexp(1.0, -k)
        ch, sh = 0.5 * (up + dn), 0.5 * np.abs(up - dn)
        out[:, r] = np.where(on, ch * ur + sh * uq, ur)
        out[:, q] = np.where(on, sh * ur + ch * uq, uq)
        return out
    p, m = np.ldexp(ur + uq, k), np.ldexp(ur - uq, -k)
    out[:, r], out[:, q] = np.where(on, 0.5 * (p + m), ur), np.where(on, 0.5 * (p - m), uq)
    return out


def _segment_max(values: np.ndarray, starts: np.ndarray, ids: np.ndarray,
                 size: int) -> np.ndarray:
    """(B, k) values in runs starting at ``starts`` → (B, size) max per id (0 if none)."""
    out = np.zeros((values.shape[0], size))
    if starts.size:
        out[:, ids] = np.maximum.reduceat(values, starts, axis=1)
    return out


def _segment_min(values: np.ndarray, starts: np.ndarray, ids: np.ndarray,
                 size: int) -> np.ndarray:
    """(B, k) values in runs → (B, size) min per id (inf if none)."""
    out = np.full((values.shape[0], size), np.inf)
    if starts.size:
        out[:, ids] = np.minimum.reduceat(values, starts, axis=1)
    return out


def binary(f: np.ndarray, down: bool = False) -> np.ndarray:
    """Positive finite factors rounded to the nearest power of two (in log scale; within
    √2 of each), or with ``down`` to the largest at most each (within 2), others unchanged.
    A scaling by powers of two is exact in floating point: the program the certificate
    judges is the user's, not a rounding of it, whose error a solution at condition 1e11
    (quad_form with P's eigenvalues 1 … 1e-11) would carry as 1e-5 of its own."""
    f = np.asarray(f, dtype=float)
    m, ex = np.frexp(f)  # f = m·2^ex, m in [1/2, 1)
    cut = 1.0 if down else np.sqrt(0.5)
    with np.errstate(over="ignore"):
        p = np.ldexp(1.0, ex - (m < cut))
    return np.where(np.isfinite(f) & (f > 0) & np.isfinite(p), p, f)


def _inv_sqrt(norm: np.ndarray) -> np.ndarray:
    """1/√norm, and 1 where the norm is 0 (an empty row or column stays as it is)."""
    return np.where(norm > 0, 1.0 / np.sqrt(np.where(norm > 0, norm, 1.0)), 1.0)


@dataclass(frozen=True)
class Equilibration:
    """The scaling (1) of a batch: D (B, m), E (B, n), ρ (B,), σ (B,), and optionally a mixing
    of rows on the primal exponential cones (`mix`).

    ``entries`` optionally holds D_ij E_jk for A's stored entries and E_ij E_ik for P's, each
    (B, ·) or (1, ·) where every instance has the same (A and P fixed), or (B, 1) where D
    and E are one scalar per instance: what `data` multiplies by, found without gathering
    D and E per entry.

    ``mix`` (B, number of primal exponential cones), where not None: the rows of each such
    cone (x, y, z) are first mapped by N = I + c·e_x e_yᵀ (x += c·y), then by D, whose
    factors on the block are (δ, δ, δ·e^c), so that D N is δ times the cone's automorphism
    (x, y, z) ↦ (x + c·y, y, e^c·z) (`at_solution`). Then Â = D N A E, b̂ = ρ D N b,
    ŝ = ρ D N s, ŷ = σ D⁻¹ N⁻ᵀ y, and the KKT conditions and the cones are kept as in (1).

    ``boost`` (B, number of boostable second-order cones, `_boostable`), where not None:
    integers κ; the first row and the axis row of each such cone (``boost_rows``, (2, k))
    are mapped by the Lorentz boost N = [[ch, sh], [sh, ch]], ch, sh = (2^κ ± 2^−κ)/2,
    which maps the cone onto itself (it keeps u₀² − u_j², and u₀ + u_j >= 0): the sum
    of the two rows times 2^κ, their difference times 2^−κ. N is symmetric and
    N⁻¹ = N⁻ᵀ is the boost by −κ; D is constant on the block, so D N = N D there.
    """

    d: np.ndarray
    e: np.ndarray
    rho: np.ndarray
    sigma: np.ndarray
    entries: tuple[np.ndarray, np.ndarray] | None = None
    mix: np.ndarray | None = None
    mix_rows: np.ndarray | None = None  # the cones' first rows (`compile.exp_rows`)
    boost: np.ndarray | None = None
    boost_rows: np.ndarray | None = None  # (2, k): `_Pattern.boost_rows`

    @property
    def _rows(self) -> np.ndarray:
        assert self.mix_rows is not None  # (set with mix)
        return self.mix_rows

    def take(self, idx: np.ndarray) -> Equilibration:
        ent = None
        if self.entries is not None:
            wa, wp = self.entries
            ent = (wa if wa.shape[0] == 1 else wa[idx], wp if wp.shape[0] == 1 else wp[idx])
        return Equilibration(self.d[idx], self.e[idx], self.rho[idx], self.sigma[idx], ent,
                             None if self.mix is None else self.mix[idx], self.mix_rows,
                             None if self.boost is None else self.boost[idx], self.boost_rows)

    @property
    def _pairs(self) -> np.ndarray:
        assert self.boost_rows is not None  # (set with boost)
        return self.boost_rows

    def _boost_rows(self, u: np.ndarray, sign: float = 1.0, absolute: bool = False
                    ) -> np.ndarray:
        """``u`` (B, m) with the boosts by sign·κ applied on its rows (``u`` where none)."""
        if self.boost is None:
            return u
        r, q = self._pairs
        return _boosted(u, sign * self.boost, r, q, absolute)

    def rounding(self, t: ConeTemplate, a: np.ndarray, b: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        """Bounds on the rounding this scaling leaves in the programs it makes (Â values
        ``a``, b̂ ``b``, (B, ·)), beyond the data's own, where its factors are not powers of
        two; None where they all are. Each bound is twice the first-order one:

        - a boosted pair of entries, 2ε·max(|â_r|, |â_q|): the sum p and the difference q
          each round once, relative to themselves, 2^±κ is exact, and (2^κ p ± 2^−κ q)/2
          rounds once more, |2^κ p| + |2^−κ q| being 2·max(|â_r|, |â_q|);
        - an exponential cone's mixed first row, 2ε(|â_x| + |c|·|â_y|): c·a_y and the sum
          each round once (D is one factor on the cone's first two rows);
        - a row whose factor in D is not a power of two (a mixed cone's third, e^c; a power
          cone's, `_power_shape`), 2ε|â| on its entries and on b̂."""
        boosted = self.boost is not None and bool(np.any(self.boost != 0))
        mixed = self.mix is not None and bool(np.any(self.mix != 0))
        inexact = np.frexp(self.d)[0] != 0.5
        if not (boosted or mixed or inexact.any()):
            return None
        p = pattern(t)
        eps = 2 * np.finfo(float).eps
        da = np.where(inexact[:, p.rows], eps * np.abs(a), 0.0)
        db = np.where(inexact, eps * np.abs(b), 0.0)
        if boosted:
            assert self.boost is not None
            live = self.boost != 0
            ar, aq = np.abs(a[:, p.boost_r]), np.abs(a[:, p.boost_q])
            on = np.where(live[:, p.boost_cone], eps * np.maximum(ar, aq), 0.0)
            da[:, p.boost_r] += on
            da[:, p.boost_q] += on
            r, q = self._pairs
            on = np.where(live, eps * np.maximum(np.abs(b[:, r]), np.abs(b[:, q])), 0.0)
            db[:, r] += on
            db[:, q] += on
        if mixed:
            assert self.mix is not None
            c = np.abs(self.mix)
            da[:, p.mix_to] += eps * (np.abs(a[:, p.mix_to])
                                      + c[:, p.mix_cone] * np.abs(a[:, p.mix_from]))
            first = self._rows
            db[:, first] += eps * (np.abs(b[:, first]) + c * np.abs(b[:, first + 1]))
        return da, db

    def unmixed(self, y: np.ndarray) -> np.ndarray:
        """Multipliers ŷ (m,) or (m, k) of this one instance's program (B = 1) with the
        mixing and the boosts undone, Nᵀŷ: the outputs' multipliers in the equilibrated
        units (D being constant on a boosted block, (δ, δ, δ·e^c) on a mixed one); ``y``
        itself where there are none."""
        if self.mix is None and self.boost is None:
            return y
        out = np.array(y)
        if self.mix is not None:
            rows = self._rows
            out[rows + 1] += self.mix[0].reshape((-1,) + (1,) * (y.ndim - 1)) * y[rows]
        if self.boost is not None:
            cols = out.reshape(out.shape[0], -1).T
            r, q = self._pairs
            kappa = np.broadcast_to(self.boost[0], (cols.shape[0], r.size))
            out = _boosted(cols, kappa, r, q).T.reshape(out.shape)
        return out

    def merged(self, idx: np.ndarray, other: Equilibration, js: np.ndarray) -> Equilibration:
        """This scaling with instances ``idx`` taken from ``other``'s instances ``js``;
        ``entries`` kept where ``other`` shares D and E with it."""
        rho, sigma = self.rho.copy(), self.sigma.copy()
        rho[idx], sigma[idx] = other.rho[js], other.sigma[js]
        mix = _rows_taken(self.mix, other.mix, len(rho), idx, js)
        rows = self.mix_rows if other.mix is None else other.mix_rows
        boost = _rows_taken(self.boost, other.boost, len(rho), idx, js)
        pairs = self.boost_rows if other.boost is None else other.boost_rows
        if other.d is self.d and other.e is self.e and mix is None and boost is None:
            return Equilibration(self.d, self.e, rho, sigma, self.entries)
        d, e = np.array(self.d), np.array(self.e)
        d[idx], e[idx] = other.d[js], other.e[js]
        return Equilibration(d, e, rho, sigma, mix=mix, mix_rows=rows, boost=boost,
                             boost_rows=pairs)

    def composed(self, then: Equilibration) -> Equilibration:
        """This scaling followed by ``then`` (a scaling of the programs this one makes): one
        scaling (1), its factors the products of the two's. (D₂N₂D₁N₁ = D₂D₁·N(c₁ + c₂δ),
        δ = D₁'s second row over its first on the block; boosts by κ₁ and κ₂ compose to one
        by κ₁ + κ₂, D₁ being constant on their blocks.)"""
        mix, rows = self.mix, self.mix_rows
        if then.mix is not None:
            rows = then._rows
            ratio = then.mix * self.d[:, rows + 1] / self.d[:, rows]
            mix = ratio if mix is None else mix + ratio
        boost, pairs = self.boost, self.boost_rows
        if then.boost is not None:
            pairs = then.boost_rows
            boost = then.boost if boost is None else boost + then.boost
        return Equilibration(self.d * then.d, self.e * then.e, self.rho * then.rho,
                             self.sigma * then.sigma, mix=mix, mix_rows=rows, boost=boost,
                             boost_rows=pairs)

    # -- data ------------------------------------------------------------------------------
    @overload
    def data(self, t: ConeTemplate, c: np.ndarray, a: np.ndarray, b: np.ndarray,
             h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...

    @overload
    def data(self, t: ConeTemplate, c: np.ndarray, a: np.ndarray, b: np.ndarray,
             h: None) -> tuple[np.ndarray, np.ndarray, np.ndarray, None]: ...

    def data(self, t: ConeTemplate, c: np.ndarray, a: np.ndarray, b: np.ndarray,
             h: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(c, A values, b, P values) ↦ (ĉ, Â, b̂, P̂) of (1); linear, so also for tangents."""
        a, b = self._rows_mapped(t, a, b)
        return self._diagonal(t, c, a, b, h)

    def undone(self, t: ConeTemplate, c: np.ndarray, a: np.ndarray, b: np.ndarray,
               h: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """`data`'s inverse: (ĉ, Â, b̂, P̂) ↦ (c, A values, b, P values), its diagonal
        factors undone, then the boosts (by −κ), then the mixing."""
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        wa, wp = self._weights(t)
        c, a, b = c / (sigma * self.e), a / wa(), b / (rho * self.d)
        h = None if h is None else h * rho / (sigma * wp())
        if self.boost is not None:
            p = pattern(t)
            a = _boosted(a, -self.boost[:, p.boost_cone], p.boost_r, p.boost_q)
            b = self._boost_rows(b, -1.0)
        if self.mix is not None:
            p = pattern(t)
            a, b = np.array(a), np.array(b)
            a[:, p.mix_to] -= self.mix[:, p.mix_cone] * a[:, p.mix_from]
            b[:, p.exp_first] -= self.mix * b[:, p.exp_first + 1]
        return c, a, b, h

    @overload
    def _rows_mapped(self, t: ConeTemplate, a: np.ndarray, b: np.ndarray,
                     absolute: bool = False) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def _rows_mapped(self, t: ConeTemplate, a: None, b: np.ndarray,
                     absolute: bool = False) -> tuple[None, np.ndarray]: ...

    def _rows_mapped(self, t: ConeTemplate, a: np.ndarray | None, b: np.ndarray,
                     absolute: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
        """A's values ``a`` (None for none) and b with the rows mapped by N, the mixing and
        the boosts (by |N| with ``absolute``); themselves where there are none."""
        if self.mix is not None:
            p = pattern(t)
            mix = np.abs(self.mix) if absolute else self.mix
            if a is not None:
                a = np.array(a)
                a[:, p.mix_to] += mix[:, p.mix_cone] * a[:, p.mix_from]
            b = np.array(b)
            b[:, p.exp_first] += mix * b[:, p.exp_first + 1]
        if self.boost is not None:
            p = pattern(t)
            if a is not None:
                a = _boosted(a, self.boost[:, p.boost_cone], p.boost_r, p.boost_q, absolute)
            b = self._boost_rows(b, absolute=absolute)
        return a, b

    def _diagonal(self, t: ConeTemplate, c: np.ndarray, a: np.ndarray, b: np.ndarray,
                  h: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """`data` without the mixing: (1)'s diagonal factors."""
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        wa, wp = self._weights(t)
        return (sigma * self.e * c, a * wa(), rho * self.d * b,
                None if h is None else (sigma / rho) * wp() * h)

    def _weights(self, t: ConeTemplate
                 ) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
        """D_ij E_jk for A's stored entries and E_ij E_ik for P's (``entries``, else gathered
        from D and E when called)."""
        if self.entries is not None:
            wa, wp = self.entries
            return (lambda: wa), (lambda: wp)
        p = pattern(t)
        return (lambda: self.d[:, p.rows] * self.e[:, p.cols],
                lambda: self.e[:, p.P_rows] * self.e[:, p.P_cols])

    def magnitudes(self, t: ConeTemplate, c: np.ndarray | None, a: np.ndarray | None,
                   b: np.ndarray | None, h: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """`data` of magnitudes (errors, >= 0) of c, A's values, b and P's values, each
        (B, ·) or None for 0 (c and b then come back as 0, A and P as None): the mixing of
        exponential cones' rows and the boosts taken in absolute value, since their errors
        add whatever the signs."""
        B = self.rho.shape[0]
        c = np.zeros((B, t.n)) if c is None else c
        b = np.zeros((B, t.m)) if b is None else b
        a, b = self._rows_mapped(t, a, b, absolute=True)
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        wa, wp = self._weights(t)
        return (sigma * self.e * c, None if a is None else a * wa(), rho * self.d * b,
                None if h is None else (sigma / rho) * wp() * h)

    def data_adjoint(self, t: ConeTemplate, gc: np.ndarray, ga: np.ndarray, gb: np.ndarray,
                     gh: np.ndarray | None):
        """Adjoint of `data`: cotangents of (ĉ, Â, b̂, P̂) ↦ those of (c, A, b, P)."""
        gc, ga, gb, gh = self._diagonal(t, gc, ga, gb, gh)  # diagonal, hence self-adjoint
        if self.mix is not None:
            p = pattern(t)
            ga[:, p.mix_from] += self.mix[:, p.mix_cone] * ga[:, p.mix_to]
            gb[:, p.exp_first + 1] += self.mix * gb[:, p.exp_first]
        if self.boost is not None:  # (N symmetric)
            p = pattern(t)
            ga = _boosted(ga, self.boost[:, p.boost_cone], p.boost_r, p.boost_q)
            gb = self._boost_rows(gb)
        return gc, ga, gb, gh

    # -- solutions -------------------------------------------------------------------------
    def scaled(self, x: np.ndarray, y: np.ndarray, s: np.ndarray):
        """(x, y, s) ↦ (x̂, ŷ, ŝ) = (ρ E⁻¹ x, σ D⁻¹ N⁻ᵀ y, ρ D N s)."""
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        if self.mix is not None:
            first = self._rows
            y, s = np.array(y), np.array(s)
            y[:, first + 1] -= self.mix * y[:, first]
            s[:, first] += self.mix * s[:, first + 1]
        y, s = self._boost_rows(y, -1.0), self._boost_rows(s)
        return rho * x / self.e, sigma * y / self.d, rho * self.d * s

    def solution(self, xh: np.ndarray, yh: np.ndarray, sh: np.ndarray | None = None):
        """(x̂, ŷ[, ŝ]) ↦ (x, y[, s]); linear, so also for tangents (dx̂, dŷ) ↦ (dx, dy)."""
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        x, y = self.e * xh / rho, self.d * yh / sigma
        s = None if sh is None else sh / (rho * self.d)
        y = self._boost_rows(y)
        s = None if s is None else self._boost_rows(s, -1.0)
        if self.mix is not None:
            first = self._rows
            y[:, first + 1] += self.mix * y[:, first]
            if s is not None:
                s[:, first] -= self.mix * s[:, first + 1]
        return (x, y) if s is None else (x, y, s)

    def solution_bound(self, ax: np.ndarray, ay: np.ndarray):
        """Bounds on |dx|, |dy| from bounds ``ax``, ``ay`` on |dx̂|, |dŷ| (`solution` in
        absolute values)."""
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        x, y = self.e * ax / rho, self.d * ay / sigma
        with np.errstate(invalid="ignore"):  # (an unbounded error's inf times c = 0)
            y = self._boost_rows(y, absolute=True)
            if self.mix is not None:
                first = self._rows
                y[:, first + 1] += np.abs(self.mix) * y[:, first]
        return x, y

    def bound_adjoint(self, gx: np.ndarray, gy: np.ndarray):
        """Adjoint of `solution_bound` (a nonnegative linear map): weights on the bounds of
        (|dx|, |dy|) ↦ those on the bounds of (|dx̂|, |dŷ|)."""
        if self.mix is not None:
            first = self._rows
            gy = np.array(gy)
            gy[:, first] += np.abs(self.mix) * gy[:, first + 1]
        gy = self._boost_rows(gy, absolute=True)
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        return self.e * gx / rho, self.d * gy / sigma

    def solution_adjoint(self, gx: np.ndarray, gy: np.ndarray):
        """Adjoint of `solution` on (x̂, ŷ): cotangents of (x, y) ↦ those of (x̂, ŷ)."""
        if self.mix is not None:
            first = self._rows
            gy = np.array(gy)
            gy[:, first] += self.mix * gy[:, first + 1]
        gy = self._boost_rows(gy)
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        return self.e * gx / rho, self.d * gy / sigma


def _norms(p: _Pattern, t: ConeTemplate, A: np.ndarray, P: np.ndarray | None,
           d: np.ndarray | None, e: np.ndarray | None, lows: bool):
    """Max (and, if ``lows``, min nonzero) magnitude of every row and column of
    [[P, Aᵀ], [A, 0]] scaled by (d, e) (None: unscaled): (row_hi, row_lo, col_hi, col_lo),
    rows taken over whole cone blocks where the cone is not a product of half-lines."""
    Ah = A if d is None or e is None else d[:, p.rows] * A * e[:, p.cols]
    col_hi = _segment_max(Ah, p.col_starts, p.col_ids, t.n)
    row_hi = _segment_max(Ah[:, p.by_row], p.row_starts, p.row_ids, t.m)
    col_lo = row_lo = None
    if lows:
        Az = np.where(Ah > 0, Ah, np.inf)  # stored zeros do not count in a minimum
        col_lo = _segment_min(Az, p.col_starts, p.col_ids, t.n)
        row_lo = _segment_min(Az[:, p.by_row], p.row_starts, p.row_ids, t.m)
    if P is not None:
        Ph = (P if e is None else e[:, p.P_rows] * P * e[:, p.P_cols])[:, p.P_order]
        col_hi = np.maximum(col_hi, _segment_max(Ph, p.P_starts, p.P_ids, t.n))
        if lows:
            Pz = np.where(Ph > 0, Ph, np.inf)
            assert col_lo is not None  # set above when lows
            col_lo = np.minimum(col_lo, _segment_min(Pz, p.P_starts, p.P_ids, t.n))
    if p.blocks.size and p.block_sizes.max(initial=1) > 1:
        row_hi = p.block_max(row_hi)
        if lows:
            assert row_lo is not None  # set above when lows
            row_lo = np.repeat(np.minimum.reduceat(row_lo, p.blocks, axis=1), p.block_sizes,
                               axis=1)
    return row_hi, row_lo, col_hi, col_lo


def spread(x: np.ndarray) -> np.ndarray:
    """Per instance, the largest factor by which a positive entry of x is away from 1
    (entries that are 0 or inf, empty rows or columns, do not count)."""
    ok = (x > 0) & np.isfinite(x)
    return np.exp(np.abs(np.log(np.where(ok, x, 1.0))).max(axis=1, initial=0.0))


def _balance(t: ConeTemplate, A: np.ndarray, P: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column factors (d (B, m), e (B, n)) that balance |A| and |P| per instance,
    and which instances got one scalar for both (B,).

    Where every row and column norm is within UNIFORM of every other, one scalar does:
    d = e = 1/√(largest entry). Elsewhere, geometric-mean sweeps where a row or column
    spans more than SPREAD, then Ruiz's until every norm is within BALANCED of 1 (or the
    sweeps stop moving). Every test is the instance's own, so its factors do not depend on
    the rest of the batch.
    """
    p = pattern(t)
    row_hi, _, col_hi, _ = _norms(p, t, A, P, None, None, False)
    top = np.maximum(row_hi.max(axis=1, initial=0.0), col_hi.max(axis=1, initial=0.0))
    s0 = _inv_sqrt(top)[:, None]
    d, e = np.repeat(s0, t.m, axis=1), np.repeat(s0, t.n, axis=1)
    nonuniform = np.maximum(spread(row_hi * s0 * s0), spread(col_hi * s0 * s0)) > UNIFORM
    work = np.flatnonzero(nonuniform)
    if work.size == 0:
        return binary(d), binary(e), ~nonuniform
    Aw, Pw = A[work], None if P is None else P[work]
    dw, ew = np.ones((work.size, t.m)), np.ones((work.size, t.n))
    row_hi, row_lo, col_hi, col_lo = _norms(p, t, Aw, Pw, None, None, True)
    wide = np.maximum(spread(np.where(np.isfinite(row_lo), row_hi / row_lo, 1.0)),
                      spread(np.where(np.isfinite(col_lo), col_hi / col_lo, 1.0)))
    g = np.flatnonzero(wide > SPREAD)
    if g.size:
        live = g
        for _ in range(GEOMETRIC_SWEEPS):  # √(max·min): the geometric mean of the extremes
            Pl = None if Pw is None else Pw[live]
            dl, el = dw[live], ew[live]
            rh, rl, _, _ = _norms(p, t, Aw[live], Pl, dl, el, True)
            step_d = _inv_sqrt(np.where(np.isfinite(rl), rh * rl, 0.0))
            dl = dl * step_d
            _, _, ch, cl = _norms(p, t, Aw[live], Pl, dl, el, True)
            step_e = _inv_sqrt(np.where(np.isfinite(cl), ch * cl, 0.0))
            dw[live], ew[live] = dl, el * step_e
            # converged: the sweep moved no factor by more than BALANCED
            live = live[np.maximum(spread(step_d), spread(step_e)) > BALANCED]
            if live.size == 0:
                break
        rh, _, ch, _ = _norms(p, t, Aw[g], None if Pw is None else Pw[g], dw[g], ew[g], False)
        row_hi[g], col_hi[g] = rh, ch
    live = np.arange(work.size)
    for sweep in range(RUIZ_SWEEPS):
        done = np.maximum(spread(row_hi), spread(col_hi)) <= BALANCED
        live, row_hi, col_hi = live[~done], row_hi[~done], col_hi[~done]
        if live.size == 0 or sweep == RUIZ_SWEEPS - 1:
            break
        dw[live] *= _inv_sqrt(row_hi)
        ew[live] *= _inv_sqrt(col_hi)
        row_hi, _, col_hi, _ = _norms(p, t, Aw[live], None if Pw is None else Pw[live],
                                      dw[live], ew[live], False)
    d[work], e[work] = dw, ew
    return binary(d), binary(e), ~nonuniform


def equilibrate(t: ConeTemplate, c: np.ndarray, a: np.ndarray, b: np.ndarray,
                h: np.ndarray | None) -> Equilibration:
    """The scaling (1) of every instance: D and E balance [[P, Aᵀ], [A, 0]] (`_balance`;
    computed once per template where A and P do not depend on the parameters), then one
    scalar ρ = σ brings max(‖b̂‖∞, ‖ĉ‖∞) to 1.

    Deterministic and per instance: an instance's scaling does not depend on the rest of
    the batch.
    """
    B = c.shape[0]
    P = None if h is None or not t.quadratic else np.abs(h)
    p = pattern(t)
    if t.fixed_data:
        cached = t.derived.get("fixed_balance")
        if cached is None:
            d0, e0, _ = _balance(t, np.abs(t.f0)[None],
                                 None if P is None else np.abs(t.h0)[None])
            ent = (d0[:, p.rows] * e0[:, p.cols], e0[:, p.P_rows] * e0[:, p.P_cols])
            cached = (d0, e0, ent)
            t.derived["fixed_balance"] = cached
        d = np.broadcast_to(cached[0], (B, t.m))
        e = np.broadcast_to(cached[1], (B, t.n))
        entries = cached[2]
    else:
        d, e, uniform = _balance(t, np.abs(a), P)
        # one scalar s for an instance: D_ij E_jk = E_ij E_ik = s², whatever the rest of the
        # batch (each instance's factors are computed the same way in any batch)
        s2 = e[:, :1] * e[:, :1] if t.n else np.ones((B, 1))
        if uniform.all():
            entries = (s2, s2)
        else:
            entries = (np.where(uniform[:, None], s2, d[:, p.rows] * e[:, p.cols]),
                       np.where(uniform[:, None], s2, e[:, p.P_rows] * e[:, p.P_cols]))
    scale = np.maximum(np.abs(e * c).max(axis=1, initial=0.0),
                       np.abs(d * b).max(axis=1, initial=0.0))
    # (down: the largest entry of b̂ and ĉ in (1/2, 1], no larger than unrounded)
    gamma = binary(np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 1.0), down=True)
    return Equilibration(d, e, gamma, gamma.copy(), entries)


def rebalance(eq: Equilibration, c: np.ndarray, b: np.ndarray
              ) -> tuple[np.ndarray, Equilibration, np.ndarray, np.ndarray]:
    """The equilibrated programs (ĉ = ``c``, b̂ = ``b``, of the scaling ``eq``) whose ĉ and
    b̂ differ in max-norm by more than UNIFORM, with ρ and σ of (1) taken apart, each
    bringing its own vector to unit max-norm: the instances (bool, (B,)), their scaling and
    their ĉ and b̂ (the rest unchanged). Â is unchanged; P̂ = (σ/ρ) E P E, which the caller
    scales by the change of σ/ρ.

    One scalar ρ = σ leaves the smaller of the two vectors small (a positively homogeneous
    program whose b is scaled by 1e6: ĉ ~ 1e-6), which can cost SCS its accuracy and leave
    the objective's terms below the rounding of the dual rows. With a quadratic term the
    two scalars move P̂ away from its balance with Â: the program at the scale its data
    set, where the one whose vector is small is no longer resolved at ρ = σ."""
    cmax = np.abs(c).max(axis=1, initial=0.0)
    bmax = np.abs(b).max(axis=1, initial=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        apart = (cmax > 0) & (bmax > 0) & (np.maximum(cmax / bmax, bmax / cmax) > UNIFORM)
        # (each the least power of two at least it: max-norms in (1/2, 1])
        cmax, bmax = 1.0 / binary(1.0 / cmax, down=True), 1.0 / binary(1.0 / bmax, down=True)
    rho, sigma = eq.rho.copy(), eq.sigma.copy()
    c, b = c.copy(), b.copy()
    rho[apart] /= bmax[apart]
    sigma[apart] /= cmax[apart]
    b[apart] /= bmax[apart, None]
    c[apart] /= cmax[apart, None]
    return apart, replace(eq, rho=rho, sigma=sigma), c, b


def recentred(eq: Equilibration, c: np.ndarray, b: np.ndarray
              ) -> tuple[np.ndarray, Equilibration, np.ndarray, np.ndarray]:
    """The equilibrated programs (ĉ = ``c``, b̂ = ``b``, of the scaling ``eq``) whose nonzero
    entries of ĉ and b̂ have a median magnitude below 1/UNIFORM, with ρ and σ of (1) both
    multiplied by the factor that brings that median to 1: the instances (bool, (B,)), their
    scaling and their ĉ and b̂ (the rest unchanged). σ/ρ is unchanged, so Â and P̂ are.

    ρ = σ from the max-norms lets one far entry set the scale of the rest: a ball of radius
    1 beside a bound x <= 1e9 that is never reached left every entry that matters at 1e-9,
    where SCS's tolerances no longer resolve them."""
    mags = np.abs(np.concatenate([c, b], axis=1))
    nonzero = np.where(mags > 0, mags, np.inf)
    count = (mags > 0).sum(axis=1)
    ordered = np.sort(nonzero, axis=1)
    med = np.where(count > 0, ordered[np.arange(len(c)), np.maximum(count - 1, 0) // 2], 1.0)
    apart = (count > 0) & (med < 1.0 / UNIFORM)
    k = binary(np.where(apart, 1.0 / med, 1.0))
    return (apart, replace(eq, rho=eq.rho * k, sigma=eq.sigma * k),
            c * k[:, None], b * k[:, None])


def objective_scale(c: np.ndarray, a: np.ndarray, b: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per instance (B,): τ = max(|A|, |b|) / max(|P|, |c|) over the stored entries of the
    program's data (c, A values ``a``, b, P values ``h``), the factor that brings its
    objective to the scale of its constraints; 1 where either is 0."""
    obj = np.maximum(np.abs(c).max(axis=1, initial=0.0), np.abs(h).max(axis=1, initial=0.0))
    con = np.maximum(np.abs(a).max(axis=1, initial=0.0), np.abs(b).max(axis=1, initial=0.0))
    ok = (obj > 0) & (con > 0)
    return binary(np.where(ok, con / np.where(ok, obj, 1.0), 1.0))


# An entry of the point below this fraction of the largest of its kind (|x̂|, |ŷ|, |ŝ|) is
# taken for zero by `at_solution`: its factor comes from balancing, not from its magnitude.
NEGLIGIBLE = 1e-10


def _geometric_fill(f: np.ndarray) -> np.ndarray:
    """NaN entries of ``f`` (B, k) replaced by the geometric mean of the row's others (1
    where a row has none)."""
    known = np.isfinite(f)
    logs = np.where(known, np.log(np.where(known, f, 1.0)), 0.0)
    mean = np.exp(logs.sum(axis=1) / np.maximum(known.sum(axis=1), 1))
    return np.where(known, f, mean[:, None])


def _power_shape(t: ConeTemplate, ay: np.ndarray, az: np.ndarray, T: np.ndarray
                 ) -> np.ndarray:
    """Row factors (B, m), 1 outside the power cones, that bring each power cone's first two
    entries of the solution to one magnitude: (f_x, f_y, f_x^α f_y^(1−α)) on a block, which
    maps K_α (and its dual) onto itself, as (a, b, a^α b^(1−α)) does for any a, b > 0:
    (a x)^α (b y)^(1−α) = a^α b^(1−α) x^α y^(1−α). f = g/u with u the slack's entry where the
    multiplier's vanish, 1/multiplier where the slack's do, √(slack/multiplier) where both
    are there, and g = √(u_x u_y); 1 where neither (|ŷ|, |ŝ| of ``ay``, ``az``).

    A constant factor per block, all that other cones allow, leaves x^1.5 <= t written as
    (t, 1, x) ∈ K_(2/3) with x ~ 1e4 at t ~ 1e6 beside the 1.

    Whether an entry is there is judged against the largest of its vector, which the cone's
    own entries outrun at extreme scales: x³ <= t as (t, 1, x) ∈ K_(1/3) at x ~ 1e6 holds
    t ~ 1e18 beside the constant 1, and at x ~ 1e-6 its t ~ 1e-26 of the program's unit is
    lost to rounding. There the cone's complementarity supplies the missing entry: on its
    smooth boundary s_x y_x = α P and s_y y_y = (1 − α) P with P = |s_z y_z| (the slack is
    ∝ the boundary's normal at the multiplier, and the other way round), so where P is one
    of the Lagrangian's terms (above NEGLIGIBLE of the largest, ``T`` (B,)), each pair takes
    the entry that stands higher in its own vector and the complementary value for the
    other."""
    k = len(t.dims.power)
    lo = t.m - 3 * k  # (the power cones are the last blocks)
    alpha = np.abs(np.asarray(t.dims.power, dtype=float))
    sx, sy, yx, yy = az[:, lo::3], az[:, lo + 1 :: 3], ay[:, lo::3], ay[:, lo + 1 :: 3]
    smax = az.max(axis=1, initial=0.0)[:, None]
    ymax = ay.max(axis=1, initial=0.0)[:, None]
    s_ok = np.minimum(sx, sy) > NEGLIGIBLE * smax
    y_ok = np.minimum(yx, yy) > NEGLIGIBLE * ymax
    P = az[:, lo + 2 :: 3] * ay[:, lo + 2 :: 3]
    filled = ~(s_ok & y_ok) & (P > NEGLIGIBLE * T[:, None]) & np.isfinite(P)
    if filled.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            keep_x, keep_y = sx / smax >= yx / ymax, sy / smax >= yy / ymax
        filled &= (np.where(keep_x, sx, yx) > 0) & (np.where(keep_y, sy, yy) > 0)
        sx, yx = _complementary(sx, yx, alpha * P, keep_x, filled)
        sy, yy = _complementary(sy, yy, (1 - alpha) * P, keep_y, filled)
        s_ok, y_ok = s_ok | filled, y_ok | filled
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = np.where(s_ok & y_ok, np.sqrt(sx / yx), np.where(s_ok, sx, np.where(y_ok, 1 / yx, 1)))
        uy = np.where(s_ok & y_ok, np.sqrt(sy / yy), np.where(s_ok, sy, np.where(y_ok, 1 / yy, 1)))
    g = np.sqrt(ux * uy)
    fx, fy = g / ux, g / uy
    out = np.ones_like(az)
    out[:, lo::3], out[:, lo + 1 :: 3] = fx, fy
    out[:, lo + 2 :: 3] = fx**alpha * fy ** (1 - alpha)
    return out


def _psd_shape(t: ConeTemplate, ay: np.ndarray, az: np.ndarray) -> np.ndarray:
    """Row factors (B, m), 1 outside the PSD cones, that bring the diagonals of each PSD
    cone's slack S and multiplier Y to one magnitude: λᵢλⱼ on its svec entry (i, j), the
    congruence W ↦ ΛWΛ with Λ = diag(λ), which maps the cone onto itself (and Y ↦ Λ⁻¹YΛ⁻¹
    its dual) and keeps tr(SY); λᵢ⁴ = Yᵢᵢ/Sᵢᵢ over their geometric mean on the block, each
    λᵢ a power of two, so that the factors are too. Then ΛSΛ and Λ⁻¹YΛ⁻¹ both have
    diagonal √(SᵢᵢYᵢᵢ) (up to those roundings).

    Only on a block whose positive diagonal products SᵢᵢYᵢᵢ (at least two; λᵢ = 1 at the
    others) are within PSD_BALANCED of each other, as complementarity makes them where a
    block couples entries of different scales through constants: tr_inv(X) as
    [X, eᵢ; eᵢᵀ, uᵢ] ⪰ 0, uᵢ ~ 1/X, or matrix_frac's
    [P, x; xᵀ, t], t ~ 1/P (at X ~ 1e3, entries 1e3, 1 and 1e-3 in one block, which one
    factor per block cannot balance). Elsewhere the diagonals tell nothing of the matrices'
    shapes: a projection onto the spectraplex of data ~1e12 holds its solution's diagonal
    at 1e-16 … 1e-3 beside a dense multiplier with a uniform diagonal, which a congruence
    set by that diagonal would spread by 2^26."""
    out = np.ones_like(az)
    for k, rows in cone_layout(t.dims).psd:  # rows: (blocks of order k, k(k+1)/2)
        I, J, _, _ = svec_index(k)
        diag = rows[:, I == J]  # (blocks, k), in order of i
        S, Y = az[:, diag], ay[:, diag]  # (B, blocks, k)
        product = S * Y
        known = (S > 0) & (Y > 0) & np.isfinite(product)
        count = known.sum(axis=2)
        ok = (count >= 2) & (np.where(known, product, np.inf).min(axis=2)
                             >= PSD_BALANCED * np.where(known, product, 0.0).max(axis=2))
        with np.errstate(divide="ignore", invalid="ignore"):
            quarter = np.where(known & ok[..., None], 0.25 * np.log2(Y / S), 0.0)
        mean = quarter.sum(axis=2, keepdims=True) / np.maximum(count, 1)[..., None]
        a = np.where(known, np.rint(quarter - mean), 0.0)  # log₂ λᵢ (0 where unknown)
        out[:, rows] = np.exp2(a[:, :, I] + a[:, :, J])
    return out


def _complementary(s: np.ndarray, y: np.ndarray, product: np.ndarray, keep_s: np.ndarray,
                   where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, y) of a power cone's row, where ``where``: s kept and y = ``product``/s where
    ``keep_s``, else y kept and s = ``product``/y (`_power_shape`); as given elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.where(where & ~keep_s, product / y, s),
                np.where(where & keep_s, product / s, y))


# `_psd_shape` congruence-scales a PSD block only where its diagonal products SᵢᵢYᵢᵢ are all
# within this factor of each other.
PSD_BALANCED = 1e-6

# The largest mixing `at_solution` gives a primal exponential cone: e^c stays far from
# overflow (|c| = |log x| of entr's x, 30 beyond 1e±13).
MIX_MAX = 30.0


def _exp_mix(p: _Pattern, y: np.ndarray, s: np.ndarray, where: np.ndarray
             ) -> np.ndarray | None:
    """Per primal exponential cone (B, k), the c of (x, y, z) ↦ (x + c·y, y, e^c·z) that
    brings the point to the ray of (0, 1, 1) (its slack: c = log(s_y/s_z), then
    s ∝ (0, 1, 1) on the cone's boundary, y e^(x/y) = z; c = −s_x/s_y where s_z vanishes) or
    of (−1, −1, 1) (its multiplier, where the slack's y vanishes: c = y_y/y_x − 1); these
    agree at a complementary pair on the boundary. The slack's y and z, unlike its x (an
    epigraph variable, entr's t), are set by the constraints and the data, and are close
    at an unconverged point. A cone the point says nothing about takes the mean of the
    instance's others (the cones of one atom, entr(x) of a vector, share a scale); 0 where
    none says anything, the cone's rows cannot be mixed (`_Pattern.exp_mixable`) or the
    instance is not among ``where`` (B,), within ±MIX_MAX. None where every c is 0."""
    first = p.exp_first
    sx, sy, sz = s[:, first], s[:, first + 1], s[:, first + 2]
    yx, yy = y[:, first], y[:, first + 1]
    small_s = NEGLIGIBLE * np.abs(s).max(axis=1, initial=0.0)[:, None]
    small_y = NEGLIGIBLE * np.abs(y).max(axis=1, initial=0.0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = np.where((sy > small_s) & (sz > small_s), np.log(sy / sz),
                     np.where(sy > small_s, -sx / sy,
                              np.where(yx < -small_y, yy / yx - 1.0, np.nan)))
    c[:, ~p.exp_mixable] = 0.0
    known = np.isfinite(c)
    mean = np.where(known, c, 0.0).sum(axis=1) / np.maximum(known.sum(axis=1), 1)
    c = np.clip(np.where(known, c, mean[:, None]), -MIX_MAX, MIX_MAX)
    c[:, ~p.exp_mixable] = 0.0
    c[~where] = 0.0
    return c if np.any(c != 0) else None


# The largest boost `at_solution` gives a second-order cone, 2^±κ: far from overflow, and
# beyond the 1e±12 of an inv_pos(x) at x ~ 1e-6 (its cone's rows x + t and x − t, t ~ 1e6).
BOOST_MAX = 60
# A boost smaller than 2^±BOOST_MIN is not applied (κ = 0): the point is balanced enough.
BOOST_MIN = 2
# Where the sum or the difference of a cone's two rows is taken for known: above this many
# roundings of the rows' magnitudes (an affine slack's rounding, not its value).
BOOST_NOISE = 64 * np.finfo(float).eps


def boost_cone_sums(p: _Pattern, u: np.ndarray, rest: bool = False) -> np.ndarray:
    """Per boostable second-order cone (B, k): the sum of ``u``'s entries (B, m) over its
    rows, or with ``rest`` over its rows past its first and axis rows."""
    padded = np.concatenate([u, np.zeros((u.shape[0], 1))], axis=1)
    if rest:
        r, q = p.boost_rows
        keep = np.ones(padded.shape[1], dtype=bool)
        keep[r] = keep[q] = False
        keep[-1] = False
        padded = padded * keep
    return np.add.reduceat(padded, p.boost_bounds, axis=1)[:, ::2]


def _boost_of(p: _Pattern, y: np.ndarray, s: np.ndarray, where: np.ndarray
              ) -> np.ndarray | None:
    """Per boostable second-order cone (B, k), the κ of the boost (`Equilibration.boost`)
    that brings the sum p and the difference q of its first and axis rows to one magnitude:
    2^(2κ) = q/p of its slack (the boost maps p, q to 2^κ p, 2^−κ q; on the cone's boundary
    both become √(pq), the norm of its other entries; where the multiplier vanishes and the
    smaller of p, q is lost to the larger's rounding, as if the cone bound: ‖rest‖²/(the
    larger)), else p/q of its multiplier (mapped by the boost by −κ); these agree at a
    complementary pair on the boundary. x·t >= 1 of
    inv_pos(x) at x ~ 1e-6 is (x + t, x − t, 2) with t ~ 1e6: q/p = t/x = 1e12, and the boost
    brings the point to (2, 0, 2). A cone the point says nothing about takes the mean of
    the instance's others (the cones of one atom share a scale); 0 where none says anything,
    the boost is within 2^±BOOST_MIN of 1, or the instance is not among ``where`` (B,);
    within ±BOOST_MAX. None where every κ is 0."""
    r, q = p.boost_rows

    def block_norm(u: np.ndarray, rest: bool) -> np.ndarray:
        return boost_cone_sums(p, u * u, rest)

    def log_ratio(u: np.ndarray, other: np.ndarray, sign: float) -> np.ndarray:
        # on the cone's boundary (where the other of the pair is nonzero) the smaller of
        # p and q is ‖rest‖²/(the larger): the difference itself cancels to rounding where
        # it is 1e-12 of the sum
        ur, uq = u[:, r], u[:, q]
        plus, minus = ur + uq, ur - uq
        big = np.maximum(plus, minus)
        on = block_norm(other, False) > NEGLIGIBLE ** 2 * (other * other).max(
            axis=1, initial=0.0)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            by_rest = block_norm(u, True) / big
            least = np.minimum(plus, minus)
            # (where the other vanishes and the difference is lost to rounding, the smaller
            # entry is taken as ‖rest‖²/(the larger), its value were the cone to bind: the
            # least it can be at a feasible point. sum_squares(x) <= r at r ~ 1e-18, as
            # (1 + t, 1 − t, 2x), y = 0 at x = a. Where the cone does not bind this boosts
            # too far: Σ x³ (approx) <= r at r ~ 3e-14, κ −54 where −4 solved it)
            lost = ~on & (least <= BOOST_NOISE * (np.abs(ur) + np.abs(uq)))
            small = np.where(on | lost, by_rest, least)
            known = (big > 0) & (small > 0)
            ratio = np.where(plus >= minus, small / big, big / small)
            return np.where(known, sign * np.log2(np.where(known, ratio, 1.0)), np.nan)

    two_k = log_ratio(s, y, 1.0)
    two_k = np.where(np.isfinite(two_k), two_k, log_ratio(y, s, -1.0))
    known = np.isfinite(two_k)
    mean = np.where(known, two_k, 0.0).sum(axis=1) / np.maximum(known.sum(axis=1), 1)
    kappa = np.rint(0.5 * np.where(known, two_k, mean[:, None]))
    kappa = np.clip(kappa, -BOOST_MAX, BOOST_MAX)
    kappa[np.abs(kappa) < BOOST_MIN] = 0.0
    kappa[~where] = 0.0
    return kappa if np.any(kappa != 0) else None


def at_solution(t: ConeTemplate, a: np.ndarray, h: np.ndarray, x: np.ndarray, y: np.ndarray,
                s: np.ndarray, affine: np.ndarray | None = None,
                mixing: np.ndarray | None = None, boosting: np.ndarray | None = None
                ) -> Equilibration:
    """A further scaling (1) of programs (Â values ``a``, P̂ values ``h``) whose solution
    (x̂, ŷ, ŝ) is known, that brings that solution to 1: x̂' = 1, and on every cone block
    whichever of ŷ' and ŝ' is nonzero to 1 (both, at their geometric mean, where both are),
    so that Â''s entries are the Lagrangian's terms ŷᵢÂᵢⱼx̂ⱼ over the largest of them, T.

    E = |x̂|/√T, D = |ŷ|/√T on a block whose slack vanishes (an active constraint, an
    equality), √T/|ŝ| on one whose multiplier does, √(|ŷ|/|ŝ|) where neither does (the
    boundary of a second-order cone), ρ = σ = 1/√T, on a power cone's block a further
    factor per row that keeps the cone (`_power_shape`), on a PSD cone's a congruence by a
    diagonal where its diagonal products are balanced (`_psd_shape`), and on a primal
    exponential cone its rows mixed first, so that its slack is on the ray of (0, 1, 1)
    (`_exp_mix`; the factors there are (δ, δ, δ·e^c)), and a second-order cone boosted where
    `_boostable` allows it, so that the sum and the difference of those rows of its point
    come to one magnitude (`_boost_of`), on the instances ``mixing`` and
    ``boosting`` (B,) bool mark (none where None). ``affine`` (the slack b̂ − Âx̂ where
    given) sets that mixing and boost instead of ``s``: at an unconverged point it holds
    the cone's entries that the constraints and the data set (softmax's Σx = r at r = 1e6:
    SCS's slack put the constant 1 at 0 after 300,000 iterations). Entries that vanish (a
    variable at 0, a weakly active constraint; NEGLIGIBLE) take the factor that brings
    their row's or column's largest entry among the others to 1; Ruiz's balance
    (`_balance`) of the matrix that gives follows.

    D and E from A and P alone (`equilibrate`) balance the matrix, not the solution: the
    lasso sum_squares(A x − b) + λ‖x‖₁ with A, b ~ 1e-5 and λ ~ 1e-10 has every row and
    column of [[P, Aᵀ], [A, 0]] at max-norm 1 already, while its solution sits at x ~ 1,
    A x − b ~ 1e-5 and multipliers ~ 1e-10: the derivative's system is 1e11 from singular
    in that scaling and 1e3 … 1e7 in this one.

    Returns the scaling of the given programs (compose it with theirs,
    `Equilibration.composed`); 1 throughout for a program whose terms all vanish."""
    p = pattern(t)
    B = x.shape[0]
    mix = boost = None
    if mixing is not None and mixing.any() and p.exp_first.size:
        mix = _exp_mix(p, y, s if affine is None else affine, mixing)
    if boosting is not None and boosting.any() and p.boost_r.size:
        boost = _boost_of(p, y, s if affine is None else affine, boosting)
    w = np.ones((B, t.m))
    if mix is not None or boost is not None:
        # the point and the matrix in the mixed and boosted rows: M s, M⁻ᵀ y, M A
        if mix is not None:
            w[:, p.exp_first + 2] = np.exp(mix)
        ones = np.ones(B)
        M = Equilibration(w, np.ones((B, t.n)), ones, ones, mix=mix, mix_rows=p.exp_first,
                          boost=boost, boost_rows=p.boost_rows)
        _, a, _, _ = M.data(t, np.zeros((B, t.n)), a, np.zeros((B, t.m)), None)
        _, y, s = M.scaled(x, y, s)
    ax, ay, az = np.abs(x), np.abs(y), np.abs(s)
    terms = np.abs(a) * np.take(ay, p.rows, axis=1) * np.take(ax, p.cols, axis=1)
    T = terms.max(axis=1, initial=0.0)
    if p.P_rows.size:
        T = np.maximum(T, (np.abs(h) * np.take(ax, p.P_rows, axis=1)
                           * np.take(ax, p.P_cols, axis=1)).max(axis=1, initial=0.0))
    live = (T > 0) & np.isfinite(T)
    r = np.sqrt(np.where(live, T, 1.0))[:, None]
    small_x = NEGLIGIBLE * ax.max(axis=1, initial=0.0)[:, None]
    e = np.where(ax > small_x, ax / r, np.nan)
    if p.blocks.size:
        yb = np.maximum.reduceat(ay, p.blocks, axis=1)
        sb = np.maximum.reduceat(az, p.blocks, axis=1)
    else:
        yb = sb = np.zeros((B, 0))
    has_y = yb > NEGLIGIBLE * ay.max(axis=1, initial=0.0)[:, None]
    has_s = sb > NEGLIGIBLE * az.max(axis=1, initial=0.0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        db = np.where(has_y & has_s, np.sqrt(yb / sb),
                      np.where(has_y, yb / r, np.where(has_s, r / sb, np.nan)))
    d = np.repeat(db, p.block_sizes, axis=1) if p.blocks.size else np.zeros((B, 0))
    if t.dims.power:
        d = d * _power_shape(t, ay, az, np.where(live, T, 0.0))
    if t.dims.psd:
        d = d * _psd_shape(t, ay, az)
    A = np.abs(a)
    # the vanishing columns from the rows already scaled, then the vanishing rows from all
    # columns (a block's rows together)
    if np.isnan(e).any():
        col = _segment_max(A * np.nan_to_num(np.take(d, p.rows, axis=1)), p.col_starts,
                           p.col_ids, t.n)
        if p.P_rows.size:
            # (P's entries grouped by column: the row's factor is the other one)
            Ph = (np.abs(h) * np.nan_to_num(np.take(e, p.P_rows, axis=1)))[:, p.P_order]
            col = np.maximum(col, _segment_max(Ph, p.P_starts, p.P_ids, t.n))
        with np.errstate(divide="ignore"):
            e = np.where(np.isnan(e) & (col > 0), 1.0 / col, e)
        e = _geometric_fill(e)
    if np.isnan(d).any():
        row = _segment_max((A * np.take(e, p.cols, axis=1))[:, p.by_row], p.row_starts,
                           p.row_ids, t.m)
        row = p.block_max(row)
        with np.errstate(divide="ignore"):
            d = np.where(np.isnan(d) & (row > 0), 1.0 / row, d)
        d = _geometric_fill(d)
    e = binary(np.where(live[:, None], e, 1.0))
    d = np.where(live[:, None], d, 1.0)
    # (a power cone's factors keep their shape: rounded, they would not map the cone onto
    # itself)
    lo = t.m - 3 * len(t.dims.power)
    d[:, :lo] = binary(d[:, :lo])
    scale = binary(np.where(live, 1.0 / r[:, 0], 1.0))
    # then Ruiz's balance of the matrix that leaves (a variable brought to 1 from a value
    # 1e-3 of the others' has its column 1e-3 of theirs)
    a2 = A * np.take(d, p.rows, axis=1) * np.take(e, p.cols, axis=1)
    h2 = np.abs(h) * np.take(e, p.P_rows, axis=1) * np.take(e, p.P_cols, axis=1)
    d3, e3, _ = _balance(t, a2, h2 if p.P_rows.size else None)
    if mix is None and boost is None:
        return Equilibration(d * d3, e * e3, scale, scale.copy())
    return Equilibration(d * d3 * w, e * e3, scale, scale.copy(), mix=mix,
                         mix_rows=p.exp_first, boost=boost, boost_rows=p.boost_rows)


def psd_met(t: ConeTemplate, eq: Equilibration, x: np.ndarray, y: np.ndarray, s: np.ndarray
            ) -> Equilibration:
    """``eq`` with D on each PSD block whose multiplier and slack at the point (x, y, s) are
    both there (above NEGLIGIBLE of the largest of their kind) multiplied by the power of two
    that brings max|ŷ| and max|ŝ| on it, the point in ``eq``'s scaling, to one magnitude:
    their geometric mean.

    `at_solution` sets such a block there, and the balance of the matrix after it (and the
    caller's ρ/σ) move the block's factor as its rows of A ask. Then ŷ and ŝ can lie far
    apart: DΠ at v = ŷ − ŝ keeps ŷ's eigenvalues only to ŝ's rounding, and with them its
    mixed divided differences λᵢ⁺/(λᵢ − λⱼ), which carry the rotation of the multiplier's
    range with the data (min λ_max(A + X) + ‖X‖²_F with A's top eigenvalue 1e6 times the
    others: ŷ ~ 1e-6 beside ŝ ~ 1e5 on the block, the Jacobian 2.5e-3 off; 1e-10 with this
    factor). A factor constant on the block maps the cone onto itself; it moves the block's
    rows of S against the others, which the caller judges (`Forward._rescaled` keeps a
    scaling only where S's conditioning gains). The retried refinement does not take it:
    there it cost two of 30 such instances their certificate."""
    if not t.dims.psd:
        return eq
    _, y2, s2 = eq.scaled(x, y, s)
    ay, az, ay2, az2 = np.abs(y), np.abs(s), np.abs(y2), np.abs(s2)
    y_there = NEGLIGIBLE * ay.max(axis=1, initial=0.0)
    s_there = NEGLIGIBLE * az.max(axis=1, initial=0.0)
    d = np.array(eq.d, dtype=float)
    for _, rows in cone_layout(t.dims).psd:  # rows: (blocks, k(k+1)/2)
        yb, sb = ay2[:, rows].max(axis=2), az2[:, rows].max(axis=2)
        both = (ay[:, rows].max(axis=2) > y_there[:, None]) \
            & (az[:, rows].max(axis=2) > s_there[:, None]) & (yb > 0) & (sb > 0) \
            & np.isfinite(yb) & np.isfinite(sb)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = binary(np.where(both, np.sqrt(yb / np.where(both, sb, 1.0)), 1.0))
        d[:, rows] *= f[:, :, None]
    return replace(eq, d=d, entries=None)
