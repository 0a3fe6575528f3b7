"""The row map between `ConeDims`' cone conventions (SCS's) and those of interior-point
solvers that, like Clarabel and Moreau, take only primal exponential and power cones and may
store a PSD block's triangle in another order.

An invertible block-diagonal T maps the rows of A and b once per cone layout: the solver
solves (TA, Tb) with s' = Ts ∈ K' and returns z' ∈ K'*, so s = T⁻¹s' and y = Tᵀz'.

- PSD: SCS stores the lower triangle by columns; a solver storing the upper triangle by
  columns (both with off-diagonals scaled by √2) needs a permutation of each PSD block.
- The dual exponential cone K*_exp is T⁻¹K_exp with T(u, v, w) = (u − v, −u, w) (from
  −u·e^{v/u} ≤ e·w, u < 0, with y = −u, x = −v − y).
- The dual power cone K*_α (negative exponent in `ConeDims.power`) is T⁻¹K_α with
  T = diag(1/α, 1/(1 − α), 1).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from declarative.cones import ConeDims

# T(u, v, w) = (u − v, −u, w) and its inverse (a, b, c) ↦ (−b, −b − a, c).
_EXP_DUAL = sp.csr_matrix(np.array([[1.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
_EXP_DUAL_INV = sp.csr_matrix(np.array([[0.0, -1.0, 0.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]))


@functools.lru_cache(maxsize=64)
def upper_psd_order(k: int) -> np.ndarray:
    """The upper-triangle-by-columns svec entry p of order k is SCS's entry order[p]."""
    a, b = np.triu_indices(k)       # SCS: lower triangle (b ≥ a) by column a, i.e. (a, b)
    scs_pos = {(int(i), int(j)): p for p, (i, j) in enumerate(zip(b, a, strict=True))}
    # upper triangle (i ≤ j) by column j, i.e. entry (i, j), i ≤ j, as SCS's (j, i)
    return np.array([scs_pos[(j, i)] for j in range(k) for i in range(j + 1)], dtype=np.int64)


@functools.lru_cache(maxsize=64)
def row_map(dims: ConeDims) -> RowMap:
    """`RowMap` of ``dims``, made once per cone layout."""
    return RowMap(dims)


class RowMap:
    """T (None where it is the identity), T⁻¹ and Tᵀ for a `ConeDims`, PSD blocks stored as
    the upper triangle by columns."""

    def __init__(self, dims: ConeDims) -> None:
        eye = sp.identity(3, format="csr")
        blocks: list[tuple[sp.spmatrix, sp.spmatrix]] = []
        plain = dims.zero + dims.nonneg + sum(dims.soc)
        blocks.append((sp.identity(plain, format="csr"),) * 2)
        identity = True
        for k in dims.psd:
            size = k * (k + 1) // 2
            order = upper_psd_order(k)
            perm = sp.csr_matrix((np.ones(size), (np.arange(size), order)), shape=(size, size))
            blocks.append((perm, perm.T.tocsr()))
            identity &= bool(np.all(order == np.arange(size)))
        blocks += [(eye, eye)] * dims.exp
        blocks += [(_EXP_DUAL, _EXP_DUAL_INV)] * dims.exp_dual
        identity &= dims.exp_dual == 0
        for a in dims.power:
            if a < 0:
                d = np.array([1.0 / -a, 1.0 / (1.0 + a), 1.0])
                blocks.append((sp.diags(d, format="csr"), sp.diags(1.0 / d, format="csr")))
                identity = False
            else:
                blocks.append((eye, eye))
        self.T: sp.csr_matrix | None = None
        self.T_inv: sp.csr_matrix | None = None
        self.T_t: sp.csr_matrix | None = None
        if not identity:
            self.T = sp.block_diag([t for t, _ in blocks], format="csr")
            self.T_inv = sp.block_diag([i for _, i in blocks], format="csr")
            self.T_t = self.T.T.tocsr()
