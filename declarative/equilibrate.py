"""equilibrate: a diagonal rescaling of each cone program that makes its data O(1).

Refinement, the certificate of `solved` and the derivative all work on the equilibrated
program, so none of them depends on the units the user chose: a 1e9 penalty among O(1)
entries, or data scaled by 1e-12, gives the same relative accuracy as O(1) data.

For  min ½xᵀPx + cᵀx  s.t.  Ax + s = b, s ∈ K  and positive diagonal D (m), E (n) and
scalars ρ, σ > 0, the program

    min ½x̂ᵀP̂x̂ + ĉᵀx̂  s.t.  Âx̂ + ŝ = b̂, ŝ ∈ K,
    Â = D A E,  P̂ = (σ/ρ) E P E,  b̂ = ρ D b,  ĉ = σ E c                              (1)

has the solutions  x̂ = ρ E⁻¹ x,  ŝ = ρ D s,  ŷ = σ D⁻¹ y  (its KKT conditions are those of
the original times diagonal factors), provided D is constant on every cone block that is
not a product of half-lines (second-order, PSD, exponential, power), so that D K = K and
D⁻¹ K* = K*. D and E come from Ruiz's iteration (Ruiz 2001, *A scaling algorithm to
equilibrate both rows and columns norms in matrices*) on the symmetric matrix
[[P, Aᵀ], [A, 0]], as SCS and OSQP scale their KKT matrices; they depend on A and P only,
so a program whose A and P do not depend on the parameters keeps one Â and P̂ for the
whole batch. One scalar ρ = σ then brings max(‖b̂‖∞, ‖ĉ‖∞) to 1 (two different ones
would scale P̂ by σ/ρ, which undoes the equilibration of P when b and c differ in scale).

The scaling is a fixed linear change of variables for each instance: the solution map of
(1) composed with it is the original solution map, so derivatives pass through it with
the same factors (`data`, `data_adjoint`, `solution`, `solution_adjoint`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from declarative.compile import ConeTemplate
from declarative.cones import ConeDims

# Ruiz sweeps: each takes the square root of every row and column norm's distance from 1,
# so 15 sweeps bring norms spread over 1e±300 to within a factor 2 of 1.
RUIZ_SWEEPS = 15
# Geometric-mean sweeps before Ruiz's: each row and column divided by √(max·min) of its
# nonzero entries (as LP codes scale before equilibrating). Ruiz's max-norm balance leaves a
# variable that appears beside 1e9 entries in one row and alone in another at 1e-5 in the
# first (CVaR's pos(−Rw − t) with R ~ 1e9); the geometric mean balances it.
GEOMETRIC_SWEEPS = 4


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


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted keys: start of each run of equal keys, and the key of the run."""
    if keys.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return starts, keys[starts]


def pattern(t: ConeTemplate) -> _Pattern:
    """The template's `_Pattern`, built once and kept with it."""
    cached = t.__dict__.get("_equilibration_pattern")
    if cached is None:
        rows, cols = t.rows_cols()
        by_row = np.argsort(rows, kind="stable")
        row_starts, row_ids = _runs(rows[by_row])
        col_starts, col_ids = _runs(cols)
        P_order = np.argsort(t.P_cols, kind="stable")
        P_starts, P_ids = _runs(t.P_cols[P_order])
        blocks = _segments(t.dims)
        sizes = np.diff(np.concatenate([blocks, [t.m]])).astype(np.intp)
        cached = _Pattern(rows, cols, by_row, row_starts, row_ids, col_starts, col_ids,
                          t.P_rows, t.P_cols, P_order, P_starts, P_ids, blocks, sizes)
        object.__setattr__(t, "_equilibration_pattern", cached)
    return cached


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


def _inv_sqrt(norm: np.ndarray) -> np.ndarray:
    """1/√norm, and 1 where the norm is 0 (an empty row or column stays as it is)."""
    return np.where(norm > 0, 1.0 / np.sqrt(np.where(norm > 0, norm, 1.0)), 1.0)


@dataclass(frozen=True)
class Equilibration:
    """The scaling (1) of a batch: D (B, m), E (B, n), ρ (B,), σ (B,)."""

    d: np.ndarray
    e: np.ndarray
    rho: np.ndarray
    sigma: np.ndarray

    def take(self, idx: np.ndarray) -> Equilibration:
        return Equilibration(self.d[idx], self.e[idx], self.rho[idx], self.sigma[idx])

    # -- data ------------------------------------------------------------------------------
    def data(self, t: ConeTemplate, c: np.ndarray, a: np.ndarray, b: np.ndarray,
             h: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(c, A values, b, P values) ↦ (ĉ, Â, b̂, P̂) of (1); linear, so also for tangents."""
        p = pattern(t)
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        ch = sigma * self.e * c
        ah = self.d[:, p.rows] * a * self.e[:, p.cols]
        bh = rho * self.d * b
        hh = None if h is None else (sigma / rho) * self.e[:, p.P_rows] * h * self.e[:, p.P_cols]
        return ch, ah, bh, hh

    def data_adjoint(self, t: ConeTemplate, gc: np.ndarray, ga: np.ndarray, gb: np.ndarray,
                     gh: np.ndarray | None):
        """Adjoint of `data`: cotangents of (ĉ, Â, b̂, P̂) ↦ those of (c, A, b, P)."""
        return self.data(t, gc, ga, gb, gh)  # diagonal, hence self-adjoint

    # -- solutions -------------------------------------------------------------------------
    def scaled(self, x: np.ndarray, y: np.ndarray, s: np.ndarray):
        """(x, y, s) ↦ (x̂, ŷ, ŝ) = (ρ E⁻¹ x, σ D⁻¹ y, ρ D s)."""
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        return rho * x / self.e, sigma * y / self.d, rho * self.d * s

    def solution(self, xh: np.ndarray, yh: np.ndarray, sh: np.ndarray | None = None):
        """(x̂, ŷ[, ŝ]) ↦ (x, y[, s]); linear, so also for tangents (dx̂, dŷ) ↦ (dx, dy)."""
        rho, sigma = self.rho[:, None], self.sigma[:, None]
        x, y = self.e * xh / rho, self.d * yh / sigma
        return (x, y) if sh is None else (x, y, sh / (rho * self.d))

    def solution_adjoint(self, gx: np.ndarray, gy: np.ndarray):
        """Adjoint of `solution` on (x̂, ŷ): cotangents of (x, y) ↦ those of (x̂, ŷ)."""
        return self.solution(gx, gy)  # diagonal, hence self-adjoint


def equilibrate(t: ConeTemplate, c: np.ndarray, a: np.ndarray, b: np.ndarray,
                h: np.ndarray | None, sweeps: int = RUIZ_SWEEPS) -> Equilibration:
    """Geometric-mean then Ruiz scaling of [[P, Aᵀ], [A, 0]] per instance, D constant on
    cone blocks, then ρ = σ.

    Deterministic and per instance: an instance's scaling does not depend on the rest of
    the batch.
    """
    p = pattern(t)
    B = c.shape[0]
    d, e = np.ones((B, t.m)), np.ones((B, t.n))
    A = np.abs(a)
    P = None if h is None or not t.quadratic else np.abs(h)
    for _ in range(GEOMETRIC_SWEEPS):
        Ah = d[:, p.rows] * A * e[:, p.cols]
        Az = np.where(Ah > 0, Ah, np.inf)  # stored zeros do not count in a minimum
        col_hi = _segment_max(Ah, p.col_starts, p.col_ids, t.n)
        col_lo = _segment_min(Az, p.col_starts, p.col_ids, t.n)
        row_hi = _segment_max(Ah[:, p.by_row], p.row_starts, p.row_ids, t.m)
        row_lo = _segment_min(Az[:, p.by_row], p.row_starts, p.row_ids, t.m)
        if P is not None:
            Ph = e[:, p.P_rows] * P * e[:, p.P_cols]
            Pz = np.where(Ph > 0, Ph, np.inf)[:, p.P_order]
            col_hi = np.maximum(col_hi, _segment_max(Ph[:, p.P_order], p.P_starts, p.P_ids,
                                                     t.n))
            col_lo = np.minimum(col_lo, _segment_min(Pz, p.P_starts, p.P_ids, t.n))
        if p.blocks.size:
            row_hi = np.repeat(np.maximum.reduceat(row_hi, p.blocks, axis=1), p.block_sizes,
                               axis=1)
            row_lo = np.repeat(np.minimum.reduceat(row_lo, p.blocks, axis=1), p.block_sizes,
                               axis=1)
        d *= _inv_sqrt(np.where(np.isfinite(row_lo), row_hi * row_lo, 0.0))
        Ah = d[:, p.rows] * A * e[:, p.cols]
        Az = np.where(Ah > 0, Ah, np.inf)
        col_hi = _segment_max(Ah, p.col_starts, p.col_ids, t.n)
        col_lo = _segment_min(Az, p.col_starts, p.col_ids, t.n)
        if P is not None:
            Ph = e[:, p.P_rows] * P * e[:, p.P_cols]
            Pz = np.where(Ph > 0, Ph, np.inf)[:, p.P_order]
            col_hi = np.maximum(col_hi, _segment_max(Ph[:, p.P_order], p.P_starts, p.P_ids,
                                                     t.n))
            col_lo = np.minimum(col_lo, _segment_min(Pz, p.P_starts, p.P_ids, t.n))
        e *= _inv_sqrt(np.where(np.isfinite(col_lo), col_hi * col_lo, 0.0))
    for _ in range(sweeps):
        Ah = d[:, p.rows] * A * e[:, p.cols]
        col = _segment_max(Ah, p.col_starts, p.col_ids, t.n)
        row = _segment_max(Ah[:, p.by_row], p.row_starts, p.row_ids, t.m)
        if P is not None:
            Ph = e[:, p.P_rows] * P * e[:, p.P_cols]
            col = np.maximum(col, _segment_max(Ph[:, p.P_order], p.P_starts, p.P_ids, t.n))
        if p.blocks.size:  # one value per cone block
            row = np.repeat(np.maximum.reduceat(row, p.blocks, axis=1), p.block_sizes, axis=1)
        e *= _inv_sqrt(col)
        d *= _inv_sqrt(row)
    scale = np.maximum(np.abs(e * c).max(axis=1, initial=0.0),
                       np.abs(d * b).max(axis=1, initial=0.0))
    gamma = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 1.0)
    return Equilibration(d, e, gamma, gamma.copy())
