"""derivative: the residual map of the cone program and its linearization, batched.

For the cone program  min cᵀx s.t. Ax + s = b, s ∈ K  with dual y ∈ K*, write
z = (u, v, w) and Q = [[0, Aᵀ, c], [−A, 0, b], [−cᵀ, −bᵀ, 0]]. The normalized
residual map of the homogeneous self-dual embedding is

    N(z, Q) = ((Q − I) Π + I)(z / |w|),   Π = Π_{ℝⁿ × K* × ℝ₊}            (ABBBM 2019, eq. 7)

and a solution is z = (x, y − s, 1). N is invariant to scaling z, so its Jacobian
M = ((Q − I) DΠ(z) + I)/w always has z in its null space (M z = N(z) = 0); the
derivative is defined up to that direction, which leaves (dx, dy, ds) unchanged.
We fix the gauge w = 1 (dw = 0) and drop the w-row, which is implied by the other
rows at a solution (cᵀx + bᵀy = yᵀs = 0). What remains is the square system

    F(u, v) = (P u + Aᵀ Π(v) + c,  −A u + b − Π(v) + v) = 0,
    S = ∂F/∂(u, v) = [[P, Aᵀ DΠ(v)], [−A, I − DΠ(v)]],                       (1)

with Π = Π_{K*}. S is nonsingular exactly where the solution map is differentiable
(regular points), is the Newton matrix of refinement (refine.py), and gives

    JVP:  S (du, dv) = −(dP x + dAᵀ y + dc,  −dA x + db),   dx = du, dy = DΠ dv, ds = dy − dv
    VJP:  r = −S⁻ᵀ (gx, DΠ gy),  ∂/∂c = r₁,  ∂/∂b = r₂,  ∂/∂A = y r₁ᵀ − r₂ xᵀ,  ∂/∂P = r₁ xᵀ  (2)

(ABBBM 2019, *Differentiating through a cone program*, §3, specialised to w = 1). With a
quadratic objective ½xᵀPx (SCS's P) F is the KKT system of the quadratic cone program and
the same formulas hold with the P terms (Healey, Nobel, Boyd, *diffqcp*).
Small systems are solved dense and batched; large ones with a sparse LU per instance, or,
where S is many small blocks and a narrow border, for the whole batch at once (`arrow`).
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import connected_components

from declarative.arrow import BATCH_MIN as ARROW_BATCH_MIN
from declarative.arrow import ORDER_ALONE as ARROW_ORDER_ALONE
from declarative.arrow import Arrow, ArrowFactors, ArrowLU
from declarative.compile import ConeTemplate, times_t
from declarative.cones import (
    KINK_TOL,
    KINK_TOL_EXTENDED,
    DProjection,
    block_pattern,
    cone_groups,
    curved_limits,
    dproject,
    group_entries,
    project,
    release_kinks,
    snap_kinks,
)
from declarative.equilibrate import Equilibration, pattern
from declarative.parallel import (
    cached_property,
    fork_safe_lock,
    on_a_lasting_thread,
    parallel_map,
    send_home,
    workers,
)

# S (size N = n + m) is factored dense (LAPACK) or sparse (SuperLU), whichever the cost
# model says is cheaper: dense ≈ DENSE_COST·N³, sparse ≈ SPARSE_COST + SPARSE_FILL_COST·fill
# (µs; fill = nnz(L + U) of a probe factorization of S's pattern, made once per template;
# the coefficients are fitted to timings of both on the zoo). Always dense up to DENSE_ALWAYS,
# never above DENSE_MAX nor where sparse is the cheaper at any fill (nnz(L + U) <= N(N + 1):
# from N = 650, unprobed). A singular dense S is solved by its truncated SVD (`TruncatedSVD`), a
# singular sparse one by its pseudo-inverse from a sparse LU (`SparsePinv`); where that fails,
# by a dense truncated SVD up to SVD_MAX, and by LSMR above.
DENSE_ALWAYS = 64
DENSE_MAX = 2000
DENSE_COST = 2.5e-5
SPARSE_COST = 70.0
SPARSE_FILL_COST = 0.016
SVD_MAX = 3000
# From this many dense LU solves on, `Linearization.solve` and `newton_correction` run them in
# the thread pool (`_lapack_solves`).
LAPACK_SOLVES_MIN = 8
# Iterations of the 1-norm estimate of S⁻¹ (`norm1_estimate`; onenormest's default).
NORM1_ITERATIONS = 5
# Where the PSD blocks of DΠ are 0 or I up to a low-rank term (rank ρ = r(r+1)/2 + r(k − r)
# when r eigenvalues of the block's point are positive, or negative: `psd_columns`),
# S = S₀ + U Vᵀ with S₀ sparse (those blocks 0 or I) is kept as such (`LowRankS`), never
# with its dense kk×kk blocks, and solved by Woodbury's formula from S₀'s LU (`Woodbury`) or,
# where S₀ is unusable, the sparse LU of the bordered matrix (`BorderedLU`): used where
# ρ <= LOW_RANK_MAX·Σ kk and Σ kk >= LOW_RANK_MIN. PSD projection with a trace constraint,
# forward and backward, batch 8: k = 30 5.5× faster than SuperLU on S; break-even near k = 17
# (kk = 153), k = 25 2.7× faster, k = 10 1.5× slower.
LOW_RANK_MAX = 1 / 3
LOW_RANK_MIN = 150
# From this many entries of U's nonzero rows on, S = S₀ + U Vᵀ keeps U as G Q diag(h)
# (`LowRankS.form`) for its products: below it, the sparse product with G costs more than
# reading U. Per Woodbury product (U z and Vᵀ y), measured: k = 30 (U 930 × 114) 24 µs
# dense against 20 µs factored, (930 × 59) 11 against 15, k = 50 (2550 × 200) 186 against
# 92; forward and backward, batch 8, k = 50: 127 → 120 ms, batch 16, k = 30 slower.
FACTORED_U_MIN = 250_000
# A second-order cone block of DΠ is base·I plus a term of rank <= 2 (`cones._soc_low_rank`);
# from this size on S keeps it so (`low_rank_groups`), not as a dense k × k block. l2-ball
# projection, forward and backward, batch 16, against the dense block: n = 60 120 against
# 98 ms, n = 80 127 against 150 ms, n = 200 145 against 716 ms.
SOC_LOW_RANK_MIN = 80
# S₀ of the low-rank form (`Woodbury`) is used only where its LU's pivot ratio exceeds
# S0_RCOND_MIN (else the bordered LU, which needs no S₀⁻¹); the LUs of the last LU0_KEPT distinct
# S₀ are kept with the template.
S0_RCOND_MIN = 1e-12
LU0_KEPT = 8
# Woodbury's capacitance C = I + Vᵀ S₀⁻¹ U reads S₀⁻¹ only in U's rows (columns) and V's rows.
# That block is very sparse (S₀ is S with the low-rank blocks at base 0 or I: PSD projection
# with a trace constraint at k = 30, 2,670 nonzeros in 465 × 930, against 11,882 in S₀'s LU),
# so where S₀ can take only a few values, the block is formed by as many transposed solves as
# V has rows, on first use, and kept (`SharedLU`): C is then a sparse product, not a solve with
# ρ columns (k = 30: 0.35 against 4.1 ms, k = 50: 1.7 against 28 ms; formed once in 7.9 and
# 86 ms). That is where A and P do not depend on the parameters and the program holds only
# zero cones and at most COUPLING_PSD_MAX PSD cones (S₀ then depends only on which of 0 and
# I each block sits at); elsewhere S₀ may differ in every instance, and C is always solved.
# The choice depends on the template alone, so no result depends on the calls before. The
# block is formed this many columns at a time, and given up (for good: C by solves) as soon
# as it holds more than COUPLING_FILL times the LU's entries, where the product would cost as
# much as the solves (dense coupling through A) and the block's memory would grow with
# |V| |U|.
COUPLING_BLOCK = 256
COUPLING_FILL = 4.0
COUPLING_PSD_MAX = 2
# Up to this order N, a block of dense S is inverted as one stack (LAPACK's getrf/getri in one
# NumPy call, no Python per instance) and solves are batched products with S⁻¹; the 1-norm
# condition number is then exact. Per instance, LAPACK at these sizes costs less than the
# Python around it (OptNet-style projection onto a 2-D polytope, N = 11, batch 512:
# factor and solve 65 → 4 ms).
STACK_INVERSE_MAX = 64
# From this order on, a stack's inversions are split across the thread pool (NumPy's batched
# inverse releases the GIL): 512 instances at N = 60 take 48 ms in one thread and 27 ms in
# two; at N = 10 the hand-off costs more than it saves (0.95 against 1.2 ms).
STACK_THREADS_MIN = 24
# From this order on, a stack of a polyhedral program's S is inverted through the smaller
# system of its active rows (`_invert_reduced`); below, the gathers cost more than they save.
REDUCE_MIN = 24
# Dense S is built and factored as many instances at a time as hold DENSE_BLOCK_ENTRIES
# entries of S in all (32 MB): the batch's temporaries (S, A and DΠA, each (B, ·, ·)) are a
# block's, and each block's S is freed once factored where it is not kept (see `Factor`).
# Small systems go in one block: each block costs Python per step (2-D polytope, N = 10,
# batch 512: 8 blocks of 64 cost 1.4 ms more than one).
DENSE_BLOCK_ENTRIES = 1 << 22
# Sparse S likewise, as many instances at a time as hold this many entries of S in all (the
# assembly's sources and the bordered path's S₀, U, V are a block's: PSD projection with a trace
# constraint at k = 50 holds 3.3M entries per instance).
SPARSE_BLOCK_ENTRIES = 1 << 24
# `SparsePinv`: its bordered LU up to a null space of PINV_BORDER_MAX dimensions, above at
# most PINV_STEPS iterated-Tikhonov steps per solve (then the bordered LU); its null space
# from a block of PINV_BLOCK vectors more than its guessed dimension (pivots of S + δI's LU
# below PINV_PIVOT·δ), doubled while all come out null, PINV_POWER_STEPS to PINV_POWER_MAX
# inverse iterations (`SparsePinv._iterate`).
PINV_STEPS = 12
PINV_BORDER_MAX = 32
# a Newton step's least-squares solve (`SparsePinv.regularized`): iterated Tikhonov steps
PINV_NEWTON_STEPS = 3
PINV_BLOCK = 4
PINV_POWER_STEPS = 2
PINV_POWER_MAX = 30
PINV_PIVOT = 1e3
# Where that guess is above this fraction of S's order (S badly scaled rather than singular
# along a few auxiliary variables), S up to SVD_MAX goes to its dense SVD instead
# (`_factor_sparse_one`): the block iteration's solves and Ritz SVDs on hundreds of columns
# cost several such SVDs (λ_max(A + X) + ‖X‖²_F, 20 × 20, A's top eigenvalue × 1e6, in a
# retry's scaling: N = 1,221, a guess of 821, 2.7-5.8 s per pseudo-inverse against 0.9 s).
PINV_GUESS_MAX = 0.25
# LSMR on singular systems whose pseudo-inverse is not at hand: its stopping tolerances (near
# double precision) and iteration limit (a multiple of the system's size).
LSMR_TOL = 1e-14
LSMR_ITERS_PER_ROW = 10
# A system whose reciprocal condition estimate is below this is treated as singular and
# solved by its truncated SVD (pseudo-inverse), singular values below PINV_RTOL·σ_max dropped.
RCOND_MIN = 1e-11
PINV_RTOL = 1e-11
# Ulps of margin on the error bound of a dense SVD's null vectors (`TruncatedSVD.null_error`).
NULL_SLACK = 64
# A factorization is reused for a changed S (iterative refinement, see _refined_solve) if no
# entry moved by more than NEAR_RATE·rcond relative to S's largest, so that the error contracts
# by about NEAR_RATE per step (refinement's last Newton step moves S by 1e-7 … 1e-5 on PSD
# cones, where DΠ is not piecewise constant); refinement stops at a residual of
# REFINE_SOLVE_TOL·(‖S‖‖x‖ + ‖rhs‖) (max norms), or after REFINE_SOLVE_STEPS steps.
NEAR_RATE = 1e-2
# That bound, ‖S₀⁻¹‖‖S − S₀‖, overstates the contraction ‖S₀⁻¹(S − S₀)‖ where S moved in a
# few directions only (a PSD block's DΠ: ~1000× on the PSD projection with a trace
# constraint; the 3 × 3 blocks of exponential and power cones: ~50-100×); where it fails,
# the contraction is measured on the probe z instead, ‖S₀⁻¹(S − S₀) z‖∞ (one solve with the
# old factorization, against the new factorization it may save), and the factorization is
# reused where that is at most NEAR_CONTRACTION: refined solves then take about 5 steps.
NEAR_CONTRACTION = 1e-3
REFINE_SOLVE_TOL = 4 * np.finfo(float).eps
# The derivative's solves (`ConeSolution.jvp`, `adjoint`, `jacobian_one`) lose about
# log10(1/rcond) digits in float64: the OptNet QP with every parameter × 1e6 (rcond ~1e-11)
# gets Jacobians 1e-6 off from them. Where S's reciprocal condition is below
# EXTENDED_SOLVE_RCOND (S regular, or taken for singular while its SVD drops nothing), the
# solution is refined against S with its residual evaluated in long double, up to
# EXTENDED_SOLVE_STEPS corrections: iterative refinement in extended precision, whose
# forward error is of the working precision's order while rcond stays well above the
# extended precision's (Higham, *Accuracy and Stability of Numerical Algorithms*, §12.1);
# that QP's Jacobians are then within 1e-12. Where long double is double (HAS_LONG_DOUBLE
# false) there is nothing to gain and the solves are left as they are.
EXTENDED_SOLVE_RCOND = 1e-7
EXTENDED_SOLVE_STEPS = 3
LONG_DOUBLE_EPS = float(np.finfo(np.longdouble).eps)
HAS_LONG_DOUBLE = bool(LONG_DOUBLE_EPS <= np.finfo(float).eps / 1024)
# A Newton step of refinement (`Linearization.solve` with ``tol``) needs no more than this:
# its error leaves F at the step's end at about this fraction of F before it, far below the
# quadratic term, and most nearby factorizations reach it in one solve where REFINE_SOLVE_TOL
# takes two or three; so does `Woodbury`'s formula, whose first application is off by about
# ε‖S⁻¹‖, ε = √u·max|S₀| its shift (PSD projection with a trace constraint, k = 30: 12
# applications of it per batch of 8 against 23).
NEWTON_SOLVE_TOL = 1e-8
# Stagnation above REFINE_SOLVE_TOL is the rounding floor of r = rhs − S x (rows with many
# entries), and accepted, up to this relative residual.
REFINE_STALL_TOL = 1e-13
REFINE_SOLVE_STEPS = 10
# A null vector N of S moves an output (row r of the recovery map R) if
# |(R Ñ)_r| > AMBIGUITY_TOL·‖R_r‖₁·‖Ñ‖∞, Ñ = (N_u, DΠ N_v) its (x, y) part: relative to the
# output's own scale (R's row), so neither the data's scale nor the outputs' units matter. The
# SVD's null vectors carry ~1e-15 of rounding in every coordinate; a genuine non-uniqueness
# moves an output by O(1) of that.
AMBIGUITY_TOL = 1e-7
# At a kink the one-sided derivatives (weakly active constraints held active / released) give
# different output derivatives if, along some parameter direction, the difference Δ of the two
# output JVPs exceeds KINK_RTOL·max(‖J₊ dθ‖∞, ‖J₋ dθ‖∞) and KINK_FLOOR·‖R‖∞‖(du, dv)‖∞ (the
# rounding level of the two solves). Measured: Δ/‖(du, dv)‖ ≈ 2e-15 where only CVXPY's auxiliary
# variables are at a kink (dotsort, sum_largest), O(1) at a sparsemax tie.
KINK_RTOL = 1e-6
KINK_FLOOR = 1e-9
# A singular S whose range misses the data perturbation of a parameter direction by more than
# this (relative residual of the least-squares solve, ‖(I − UUᵀ) rhs‖∞ / ‖rhs‖∞) has no
# linearization along it: a tie that the perturbation breaks, e.g. cp.maximum(a, b) at a = b
# (measured 0.5), as opposed to a non-unique auxiliary variable that stays non-unique (1e-15).
TIE_RTOL = 1e-6


class NonDifferentiableWarning(UserWarning):
    """The solution map is not differentiable (or badly conditioned) at some instance."""


class BatchOps:
    """Products with the batch of matrices A (shared pattern, values a (B, nnz)) and P (values
    h (B, nnz(P)); h=None, a linear objective, stores zeros).

    ``rounding``, where given, holds the rounding errors of the instances' data as the
    template's affine maps formed it from the parameters (`ConeTemplate.rounding`: c, A's
    values, b, P's values, before equilibration; None for a map whose entries are all
    exact), carried along with the instances (`take`) for the certificate
    (`Layer._data_rounding`)."""

    def __init__(self, template: ConeTemplate, a: np.ndarray, h: np.ndarray | None = None,
                 rounding: tuple[np.ndarray | None, ...] | None = None) -> None:
        self.template = template
        self.a = a
        self.h: np.ndarray = np.zeros((a.shape[0], template.P_rows.size)) if h is None else h
        self.rounding = rounding
        self.rows, self.cols, self._Er, self._Ec, self._Ep = _scatter(template)
        self._magnitude: BatchOps | None = None
        self._blocks: dict[str, list] = {}  # `_block_matrices` of A and P, made on first use

    def take(self, idx: np.ndarray) -> BatchOps:
        """The same operators for a subset of the batch (views of the batch's values where
        ``idx`` is a run of consecutive instances: they are never written to)."""
        at = _run(idx, self.a.shape[0])
        sub = BatchOps(self.template, self.a[at], self.h[at], self.rounding_of(at))
        if self._magnitude is not None:
            sub._magnitude = self._magnitude.take(idx)
        return sub

    def rounding_of(self, idx: np.ndarray | slice) -> tuple[np.ndarray | None, ...] | None:
        """``rounding`` for the instances ``idx``."""
        if self.rounding is None:
            return None
        return tuple(None if r is None else r[idx] for r in self.rounding)

    @property
    def magnitude(self) -> BatchOps:
        """The operators of |A| and |P| (entrywise), made on first use."""
        if self._magnitude is None:
            self._magnitude = BatchOps(self.template, np.abs(self.a), np.abs(self.h))
        return self._magnitude

    def _by_blocks(self, key: str, u: np.ndarray) -> list | None:
        """The block-diagonal matrices of A (``key`` "A") or P ("P") over the batch
        (`_block_matrices`), where the batch is large enough for them and u is float64."""
        values = self.a if key == "A" else self.h
        if values.size < BLOCK_PRODUCT_ENTRIES or u.dtype != np.float64 \
                or values.dtype != np.float64:
            return None
        got = self._blocks.get(key)
        if got is None:
            t = self.template
            if key == "A":
                got = _block_matrices(values, self.cols, self.rows, t.n, t.m)
            else:
                got = _block_matrices(values, t.P_cols, t.P_rows, t.n, t.n)
            self._blocks[key] = got  # (two threads may both make it: the same matrices)
        return got

    def P(self, u: np.ndarray) -> np.ndarray:
        """P u for each instance: (B, n) → (B, n)."""
        t = self.template
        blocks = self._by_blocks("P", u)
        if blocks is not None:
            return _block_products(blocks, u, t.n, transpose=False)
        return _products(self.h, u, t.P_cols, t.P_rows, t.n)

    def A(self, u: np.ndarray) -> np.ndarray:
        """A u for each instance: (B, n) → (B, m)."""
        blocks = self._by_blocks("A", u)
        if blocks is not None:
            return _block_products(blocks, u, self.template.m, transpose=False)
        return _products(self.a, u, self.cols, self.rows, self.template.m)

    def AT(self, y: np.ndarray) -> np.ndarray:
        """Aᵀ y for each instance: (B, m) → (B, n)."""
        blocks = self._by_blocks("A", y)
        if blocks is not None:
            return _block_products(blocks, y, self.template.n, transpose=True)
        return _products(self.a, y, self.rows, self.cols, self.template.n)

    def dense(self) -> np.ndarray:
        """A as dense (B, m, n)."""
        out = np.zeros((self.a.shape[0], self.template.m, self.template.n))
        out[:, self.rows, self.cols] = self.a
        return out

    def dense_P(self) -> np.ndarray:
        """P as dense (B, n, n)."""
        t = self.template
        out = np.zeros((self.a.shape[0], t.n, t.n))
        # numpy's stubs type ufunc.at's indices as integer arrays only; a tuple index works
        np.add.at(out, (slice(None), t.P_rows, t.P_cols), self.h)  # type: ignore[arg-type]
        return out


def _run(idx: np.ndarray, size: int) -> np.ndarray | slice:
    """``idx`` as a slice where it is a run of consecutive ascending indices within 0 …
    size − 1 (indexing with it then gives views, not copies), else itself (negative or out
    of range indices keep their meaning, or their error)."""
    idx = np.asarray(idx)
    if idx.ndim == 1 and idx.size > 1 and idx.dtype.kind in "iu" and idx[0] >= 0 \
            and idx[-1] < size and idx[-1] - idx[0] == idx.size - 1 \
            and np.all(idx[1:] > idx[:-1]):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


# `BatchOps` forms a product over a batch whose matrices hold at least this many stored
# entries together as a sparse product with the block-diagonal matrix of the instances'
# matrices (`_block_matrices`: SciPy's compiled CSR/CSC kernels, OptNet QP at batch 256, 1.4M
# entries: 0.7-1.6 against 5.7 ms for `_products`' gather and `np.bincount`); below it, making
# that matrix costs more than it saves. Either way each entry of the result is the sum of
# its terms in their stored order, so the two agree bitwise (where SciPy's kernels do not
# fuse a multiply and an add, as its x86-64 builds do not; elsewhere to rounding).
BLOCK_PRODUCT_ENTRIES = 1 << 14
# ... in matrices of at most this many stored entries, rows and columns each (their index
# arrays, kept while the template's live, are at most that size)
BLOCK_MATRIX_ENTRIES = 1 << 20


def _block_matrices(values: np.ndarray, index: np.ndarray, into: np.ndarray, n_index: int,
                    n_into: int) -> list[tuple[int, int, sp.spmatrix, sp.spmatrix]]:
    """The products Σ_k values[b, k] u[b, index[k]] summed into entry into[k] of instance b's
    result (`_products`) as sparse matrices, each block-diagonal over up to
    BLOCK_MATRIX_ENTRIES / max(nnz, n_index, n_into) instances: [(first instance, end,
    matrix, its transpose)], the matrix (n_into·k × n_index·k) multiplying those k instances'
    u raveled. Its transpose sums into ``index`` instead (Aᵀ y from A's).

    Each entry of a product sums its terms in their stored order from 0, as `np.bincount`
    does, so the two agree bitwise (see BLOCK_PRODUCT_ENTRIES): where ``into`` is sorted the
    matrix is CSR, whose product sums each line's terms in order; where ``index`` is (A's
    CSC order), CSC, whose product scatters the terms in their stored order. Their
    transposes read the same arrays the other way round, and keep the order too. Otherwise
    the matrix is CSR over the stored order stably sorted by ``into`` (its transpose then
    sums in another order)."""
    B, nnz = values.shape
    step = max(1, BLOCK_MATRIX_ENTRIES // max(1, nnz, n_index, n_into))
    pattern = _block_pattern(index, into, n_index, n_into, min(B, step))
    csr, perm, indices, indptr = pattern
    kind = sp.csr_matrix if csr else sp.csc_matrix
    out = []
    for lo in range(0, B, step):
        part = values[lo : lo + step]
        k = part.shape[0]
        data = np.ascontiguousarray(part if perm is None else part[:, perm]).ravel()
        lines = k * (n_into if csr else n_index)
        M = kind((data, indices[: k * nnz], indptr[: lines + 1]),
                 shape=(k * n_into, k * n_index), copy=False)
        out.append((lo, lo + k, M, M.T))
    return out


def _block_products(blocks: list[tuple[int, int, sp.spmatrix, sp.spmatrix]], u: np.ndarray,
                    size: int, transpose: bool) -> np.ndarray:
    """`_block_matrices`' products with u (B, ·), or with their transposes: (B, size)."""
    if len(blocks) == 1:
        _, hi, M, MT = blocks[0]
        return ((MT if transpose else M) @ np.ascontiguousarray(u).ravel()).reshape(hi, size)
    out = np.empty((u.shape[0], size))
    for lo, hi, M, MT in blocks:
        prod = (MT if transpose else M) @ np.ascontiguousarray(u[lo:hi]).ravel()
        out[lo:hi] = prod.reshape(hi - lo, size)
    return out


def _block_pattern(index: np.ndarray, into: np.ndarray, n_index: int, n_into: int, k: int
                   ) -> tuple[bool, np.ndarray | None, np.ndarray, np.ndarray]:
    """(CSR?, the stored order's permutation or None, indices, index pointer) of the
    block-diagonal matrix of `_block_matrices` for at least k instances (slices of it serve
    fewer), kept while ``index`` and ``into`` live (`_kept_for`)."""

    def make() -> tuple[int, tuple[bool, np.ndarray | None, np.ndarray, np.ndarray]]:
        nnz = into.size
        perm = None
        if nnz and np.all(into[1:] >= into[:-1]):
            csr, lines, inner, line_of = True, n_into, index, into
        elif nnz and np.all(index[1:] >= index[:-1]):
            csr, lines, inner, line_of = False, n_index, into, index
        else:
            perm = np.argsort(into, kind="stable")
            csr, lines, inner, line_of = True, n_into, index[perm], into[perm]
        wide = np.int64 if k * max(nnz, lines, n_index, n_into) >= np.iinfo(np.int32).max \
            else np.int32
        offsets = np.arange(k, dtype=wide)[:, None]
        indices = (inner[None, :].astype(wide)
                   + (n_into if not csr else n_index) * offsets).ravel()
        starts = np.concatenate([[0], np.cumsum(np.bincount(line_of, minlength=lines))])
        indptr = np.concatenate([(starts[None, :-1].astype(wide) + nnz * offsets).ravel(),
                                 np.array([k * nnz], dtype=wide)])
        return k, (csr, perm, indices, indptr)

    return _kept_for((index, into), ("block", n_index, n_into), k, make)


# `_products` forms and sums its (B, nnz) products of stored entries at most this many
# entries at a time: the first touch of a large temporary costs more than the arithmetic
# (OptNet QP at batch 512, 2.8M entries: 20 ms a product whole), and the offset bins
# (`_offset_bins`, kept) stay that small.
PRODUCT_BLOCK_ENTRIES = 1 << 15


def _products(values: np.ndarray, u: np.ndarray, index: np.ndarray, into: np.ndarray,
              size: int) -> np.ndarray:
    """Σ_k values[:, k] u[:, index[k]], summed into entry into[k] of each instance's result:
    (B, nnz), (B, ·) → (B, size), in blocks of instances (PRODUCT_BLOCK_ENTRIES).

    A block's sums are one `np.bincount`, each instance's bins offset by ``size``
    (`_offset_bins`): the terms are added in their order, as a sparse product with the 0/1
    summing matrix adds them, without its copies of the terms to the transposed order and
    back (5,550 entries into 110 rows, the whole product: batch 512 14.7 against 35.6 ms,
    batch 64 1.6 against 4.7 ms)."""
    B, nnz = values.shape
    step = max(1, PRODUCT_BLOCK_ENTRIES // max(1, nnz))
    out = np.empty((B, size), dtype=np.result_type(values, u))
    for lo in range(0, B, step):
        terms = values[lo : lo + step] * np.take(u[lo : lo + step], index, axis=1)
        k = terms.shape[0]
        bins = _offset_bins(into, size, k, step)
        if terms.dtype == np.float64:
            sums = np.bincount(bins, weights=terms.ravel(), minlength=k * size)
        else:  # (bincount sums in float64: refinement's long-double products, in order)
            sums = np.zeros(k * size, dtype=terms.dtype)
            np.add.at(sums, bins, terms.ravel())
        out[lo : lo + k] = sums.reshape(k, size)
    return out


# Arrays made from a template's index arrays (`_offset_bins`, `_block_pattern`), by those
# arrays' ids and a tag, while they live: (weak references to them, how many instances the
# value serves, the value)
_kept: dict[tuple, tuple[list[weakref.ref], int, Any]] = {}


def _kept_for(sources: tuple[np.ndarray, ...], tag: tuple, need: int,
              make: Callable[[], tuple[int, Any]]) -> Any:
    """The value kept for ``sources`` and ``tag`` where it serves at least ``need``
    instances; else the one of ``make()`` (how many instances it serves, the value), kept in
    its place while every source lives."""
    key = (*map(id, sources), *tag)
    entry = _kept.get(key)
    if entry is not None and entry[1] >= need \
            and all(ref() is a for ref, a in zip(entry[0], sources, strict=True)):
        return entry[2]
    served, value = make()

    def forget(_: weakref.ref, key: tuple = key) -> None:
        _kept.pop(key, None)

    _kept[key] = ([weakref.ref(a, forget) for a in sources], served, value)
    return value


def _offset_bins(into: np.ndarray, size: int, k: int, most: int) -> np.ndarray:
    """into + size·b for instances b = 0 … k − 1, flattened (k·nnz): the bins of `_products`'
    sums. Made once for up to ``most`` instances and sliced (`_kept_for`)."""
    if k == 1:
        return into
    count = max(k, most)
    made = _kept_for((into,), ("bins", size), k, lambda: (
        count, (into[None, :] + size * np.arange(count)[:, None]).ravel()))
    return made[: k * into.size]


def _scatter(t: ConeTemplate):
    """A's rows and columns, and the 0/1 matrices that sum products of stored entries of A
    (and P) into rows/columns (Er: (m, nnz), Ec: (n, nnz), Ep: (n, nnz(P))): built once per
    template, kept with it."""
    cached = t.derived.get("scatter")
    if cached is None:
        rows, cols = t.rows_cols()
        k = np.arange(t.nnz)
        Er = sp.csr_matrix((np.ones(t.nnz), (rows, k)), shape=(t.m, t.nnz))
        Ec = sp.csr_matrix((np.ones(t.nnz), (cols, k)), shape=(t.n, t.nnz))
        kp = np.arange(t.P_rows.size)
        Ep = sp.csr_matrix((np.ones(kp.size), (t.P_rows, kp)), shape=(t.n, kp.size))
        cached = (rows, cols, Er, Ec, Ep)
        t.derived["scatter"] = cached
    return cached


def residual(ops: BatchOps, c: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray,
             pv: np.ndarray) -> np.ndarray:
    """F(u, v) of (1), with pv = Π_{K*}(v) precomputed: (B, n + m)."""
    # v − Π(v) = −s first: exact on zero and nonnegative rows, so their residual carries no
    # rounding of y (see refine.backward_error)
    return np.concatenate([ops.P(u) + ops.AT(pv) + c, -ops.A(u) + b + (v - pv)], axis=1)


def s_products(ops: BatchOps, D: DProjection, X: np.ndarray, transpose: bool = False
               ) -> np.ndarray:
    """S X (or Sᵀ X) of (1) per instance, X (B, N) or (B, N, K), from products with A, P and
    DΠ (no S formed): S (x_u, x_v) = (P x_u + Aᵀ DΠ x_v, −A x_u + x_v − DΠ x_v) and, P and DΠ
    being symmetric, Sᵀ (a, b) = (P a − Aᵀ b, DΠ (A a − b) + b)."""
    if X.ndim == 3:
        return np.stack([s_products(ops, D, X[:, :, k], transpose)
                         for k in range(X.shape[2])], axis=2)
    n = ops.template.n
    xu, xv = X[:, :n], X[:, n:]
    if transpose:
        return np.concatenate([ops.P(xu) - ops.AT(xv), D.matvec(ops.A(xu) - xv) + xv], axis=1)
    Dv = D.matvec(xv)
    return np.concatenate([ops.P(xu) + ops.AT(Dv), xv - Dv - ops.A(xu)], axis=1)


class SparseLayout:
    """The fixed sparsity pattern of S for a template, and a map filling its values.

    S's pattern depends only on the template (the patterns of P and A, and the
    block-diagonal structure of DΠ). Every entry of S is a sum of "sources": an entry
    of P, a product DΠ_ik A_kj (of the block Aᵀ DΠ), an entry of −A, of −DΠ, or the
    identity. ``assemble`` sums the sources into S's CSC data, for a whole batch at once.
    """

    def __init__(self, t: ConeTemplate, low_rank: bool = False) -> None:
        n, m = t.n, t.m
        N = n + m
        Ar, Ac = t.rows_cols()
        Dr, Dc = block_pattern(t.dims)
        if low_rank:  # S₀ of `LowRankS`: DΠ's blocks of `low_rank_groups` reduced to their
            # diagonals (base·I), after the other entries (the order of ``DProjection.values``
            # skipping those groups)
            inside = group_entries(t.dims, low_rank_groups(t))
            diagonal = inside & (Dr == Dc)
            Dr = np.concatenate([Dr[~inside], Dr[diagonal]])
            Dc = np.concatenate([Dc[~inside], Dc[diagonal]])
        # The products DΠ_ik A_kj: for each entry d = (i, k) of DΠ, every entry e of A in row k.
        by_row = np.argsort(Ar, kind="stable")
        counts = np.bincount(Ar, minlength=m)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        cnt = counts[Dc]
        self.d_idx = np.repeat(np.arange(Dr.size), cnt)
        within = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        self.e_idx = by_row[np.repeat(starts[Dc], cnt) + within]
        diag = np.arange(n, N)
        rows = np.concatenate([t.P_rows, Ac[self.e_idx], n + Ar, n + Dr, diag])
        cols = np.concatenate([t.P_cols, n + Dr[self.d_idx], Ac, n + Dc, diag])
        keys, where = np.unique(cols * N + rows, return_inverse=True)  # CSC order
        self.indices = (keys % N).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(keys // N, minlength=N))])
        self.indptr = self.indptr.astype(np.int32)
        self.shape = (N, N)
        self._fill: float | None = None
        self.ordering: str | None = None  # SuperLU's column ordering, chosen on first use
        self.ordering_low_rank: str | None = None  # the bordered matrix's (LOW_RANK_MAX)
        self.supernodes = True  # SuperLU's supernodes (off where the factors are very sparse)
        self.timed = False  # orderings chosen by timing (`Layer.tune`), else by fill
        self._rows, self._m = Ar, m
        self._lus: OrderedDict[bytes, SharedLU | None] = OrderedDict()  # see `lu0`
        self._lock = fork_safe_lock(self)
        d = t.dims
        # S₀ takes a few values only (see COUPLING_PSD_MAX): its LUs keep their coupling blocks
        self.few_S0 = bool(t.fixed_data and not (d.nonneg or d.soc or d.exp or d.exp_dual
                                                 or d.power)
                           and len(d.psd) <= COUPLING_PSD_MAX)
        # (nnz(S), sources): sums the sources into S's entries
        self.assemble = sp.csr_matrix(
            (np.ones(rows.size), (where, np.arange(rows.size))), shape=(keys.size, rows.size))

    def __getstate__(self) -> dict:  # pickled with its template: without the LUs of `lu0`
        return {k: v for k, v in self.__dict__.items() if k not in ("_lus", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("timed", False)
        self._lus = OrderedDict()
        self._lock = fork_safe_lock(self)

    def decide(self, S: sp.csc_matrix, bordered: bool = False) -> str:
        """SuperLU's ordering for this layout's S (with ``bordered``, for the bordered
        matrix of its low-rank S, `ordering_low_rank`): decided once, on a real instance's
        ``S`` (`_best_ordering`, timed where ``timed``), and with it whether to use
        supernodes; concurrent callers (a batch's parts) wait and factor with it."""
        if bordered and self.ordering_low_rank is not None:
            return self.ordering_low_rank
        if not bordered and self.ordering is not None:
            return self.ordering
        with self._lock:
            if bordered:
                if self.ordering_low_rank is None:
                    self.ordering_low_rank = _best_ordering(S, timed=self.timed)[0]
                return self.ordering_low_rank
            if self.ordering is None:
                ordering, fill = _best_ordering(S, timed=self.timed)
                self.supernodes = not fill <= THIN_FILL * S.shape[0]
                self.ordering = ordering
            return self.ordering

    @property
    def nnz(self) -> int:
        return self.indices.size

    @property
    def arrow(self) -> Arrow | None:
        """S's bordered block-diagonal structure (`arrow.Arrow`), found once; None where it
        has none."""
        if not hasattr(self, "_arrow"):
            self._arrow = Arrow.of(self.indices, self.indptr, self.shape[0])
        return self._arrow

    @property
    def fill(self) -> float:
        """nnz(L) + nnz(U) of a probe factorization of S's pattern with generic values (inf if
        it failed): depends only on the template. Used by `use_dense` up to DENSE_MAX only:
        on large systems random values make SuperLU pivot off the diagonal and the probe's
        fill explodes (sparsemax n = 10,000: seconds)."""
        if self._fill is None:
            values = np.random.default_rng(0).uniform(0.5, 1.5, self.nnz)
            self._fill = _best_ordering(self.matrix(values))[1]
        return self._fill

    def values(self, ops: BatchOps, dvals: np.ndarray) -> np.ndarray:
        """S's CSC data for the batch (B, nnz), from P, A and DΠ's values."""
        B = ops.a.shape[0]
        src = np.concatenate([ops.h, dvals[:, self.d_idx] * ops.a[:, self.e_idx], -ops.a,
                              -dvals, np.ones((B, ops.template.m))], axis=1)
        return times_t(src, self.assemble)  # rows become CSC data arrays

    def matrix(self, data: np.ndarray) -> sp.csc_matrix:
        return sp.csc_matrix((data, self.indices, self.indptr), shape=self.shape)

    def rows_of_A(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored entries of A in ``rows`` (indices into A's values), and each one's
        position within ``rows``."""
        position = np.full(self._m, -1)
        position[rows] = np.arange(rows.size)
        where = np.flatnonzero(position[self._rows] >= 0)
        return where, position[self._rows[where]]

    def lu0(self, S: LowRankS) -> SharedLU | None:
        """SuperLU of S's S₀, shifted where it has zero rows (`LowRankS.shifted`, `Woodbury`),
        or None where its pivot ratio is at most S0_RCOND_MIN: made once for each distinct S₀
        (by its bytes and those rows) among the last LU0_KEPT, since S₀ is shared by every
        instance and Newton step with the same A, P and DΠ outside the PSD blocks."""
        S0 = S.S0
        key = hashlib.blake2b(S0.data.tobytes() + S0.indices.tobytes() + S0.indptr.tobytes()
                              + S.zero_rows.tobytes(), digest_size=20).digest()
        with self._lock:
            if key in self._lus:
                self._lus.move_to_end(key)
                return self._lus[key]
        lu: SharedLU | None = None
        try:
            superlu = splu(S.shifted(), permc_spec=self.ordering or "COLAMD",
                           **({} if self.supernodes else _NO_SUPERNODES))
            if _pivot_ratio(superlu) > S0_RCOND_MIN:
                lu = SharedLU(superlu, np.asarray(abs(S0).sum(axis=0)).ravel(),
                              self.few_S0)
        except RuntimeError:  # exactly singular
            pass
        with self._lock:
            self._lus[key] = lu
            while len(self._lus) > LU0_KEPT:
                self._lus.popitem(last=False)
        return lu


class SharedLU:
    """SuperLU of an S₀ shared by many `LowRankS` (`SparseLayout.lu0`, `Woodbury`), solving as
    SuperLU does, and the product Vᵀ S₀⁻¹ U of Woodbury's capacitance (`capacitance`).

    That product reads S₀⁻¹ only in the block W = S₀⁻¹[V's rows, U's rows], the same for every
    S sharing S₀ (the rows are the low-rank blocks' and the columns of A they reach). With
    ``keep_blocks`` (S₀ takes few values: `SparseLayout.few_S0`), W is formed on first use, by
    transposed solves with V's rows of the identity, and kept sparse (explicit zeros dropped:
    no entry is approximated), unless it turns out denser than COUPLING_FILL times the LU;
    otherwise the product is solved with U's ρ columns every time. Either way the product is
    computed the same way on every call (a thread that finds W being formed waits for it)."""

    __slots__ = ("lu", "shape", "columns", "keep_blocks", "_blocks", "_lock", "__weakref__")

    def __init__(self, lu: SuperLU | DenseLU, columns: np.ndarray, keep_blocks: bool = False
                 ) -> None:
        self.lu = lu
        self.shape = lu.shape
        self.columns = columns  # the column sums of |S₀| (unshifted: `LowRankS.norm1`)
        self.keep_blocks = keep_blocks
        # W by (U's, V's rows); False where it was given up (too dense)
        self._blocks: dict[bytes, sp.csr_matrix | bool] = {}
        self._lock = fork_safe_lock(self)  # (the layout's cache of these survives a fork)

    def solve(self, rhs: np.ndarray, trans: str = "N") -> np.ndarray:
        return self.lu.solve(rhs, trans=trans)

    def capacitance(self, S: LowRankS) -> np.ndarray:
        """Vᵀ S₀⁻¹ U (ρ × ρ) for S = S₀ + U Vᵀ with this S₀."""
        W: sp.csr_matrix | bool = False
        if self.keep_blocks:
            key = S.Ur.tobytes() + b"|" + S.Vr.tobytes()
            with self._lock:  # (formed once, under the lock: the others wait for it)
                got = self._blocks.get(key)
                if got is None:
                    made = self._block(S.Ur, S.Vr)
                    got = self._blocks[key] = False if made is None else made
            W = got
        if isinstance(W, sp.csr_matrix):
            return S.Vb.T @ (W @ S.Ub)
        U = np.zeros((S.shape[0], S.rank))
        U[S.Ur] = S.Ub
        return S.Vb.T @ self.lu.solve(U)[S.Vr]

    def _block(self, Ur: np.ndarray, Vr: np.ndarray) -> sp.csr_matrix | None:
        """S₀⁻¹[Vr, Ur], sparse (column j of S₀⁻ᵀ e_{Vr[j]} holds row Vr[j] of S₀⁻¹); None as
        soon as it holds more than COUPLING_FILL times the LU's entries."""
        N = self.shape[0]
        limit = COUPLING_FILL * (self.lu.L.nnz + self.lu.U.nnz)
        parts, held = [], 0
        for lo in range(0, Vr.size, COUPLING_BLOCK):
            rows = Vr[lo : lo + COUPLING_BLOCK]
            E = np.zeros((N, rows.size))
            E[rows, np.arange(rows.size)] = 1.0
            parts.append(sp.csr_matrix(self.lu.solve(E, trans="T")[Ur].T))
            held += parts[-1].nnz
            if held > limit:
                return None
        return sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]


def sparse_layout(t: ConeTemplate, low_rank: bool = False) -> SparseLayout:
    """The template's `SparseLayout` (with ``low_rank``: of S₀, see `LowRankS`), built once and
    kept with the template."""
    key = "sparse_layout_low_rank" if low_rank else "sparse_layout"
    layout = t.derived.get(key)
    if layout is None:
        layout = SparseLayout(t, low_rank)
        given = None if low_rank else t.derived.get("sparse_ordering")
        if given is not None:
            layout.ordering, layout.supernodes = given
        t.derived[key] = layout
    return layout


def set_ordering(t: ConeTemplate, ordering: str, supernodes: bool) -> None:
    """SuperLU's ordering (and supernodes) for factoring S (`sparse_layout`), as a layer's
    tuning gives it: set on S's layout where it is made, and kept for it where it is not yet
    (made on first need: a program whose S is factored only in low-rank form never needs it,
    and at a 50 × 50 PSD block its pattern alone costs a second)."""
    t.derived["sparse_ordering"] = (ordering, supernodes)
    layout = made_layout(t)
    if layout is not None:
        layout.ordering, layout.supernodes = ordering, supernodes


@contextmanager
def orderings_undecided(t: ConeTemplate) -> Iterator[None]:
    """Within it, factorizations of S decide no SuperLU ordering for the template's layouts
    (`SparseLayout.decide`): those decided before are kept, those decided inside are undone.
    The orderings are then decided by a call's first system, not by a trial solve on other
    data (the scale's calibration refines pseudo-random instances: their S chose another
    ordering for the geometric-mean budget at n = 70, whose rounding took one instance from
    9 Newton steps to 17)."""
    keys = ("sparse_layout", "sparse_layout_low_rank")
    before = {key: (lay.ordering, lay.ordering_low_rank, lay.supernodes)
              for key in keys if (lay := t.derived.get(key)) is not None}
    try:
        yield
    finally:
        given = t.derived.get("sparse_ordering")
        for key in keys:
            lay = t.derived.get(key)
            if lay is None:
                continue
            if key in before:
                lay.ordering, lay.ordering_low_rank, lay.supernodes = before[key]
            else:
                lay.ordering_low_rank = None
                lay.ordering, lay.supernodes = (given if given is not None and key == keys[0]
                                                else (None, True))


def made_layout(t: ConeTemplate) -> SparseLayout | None:
    """S's layout (`sparse_layout`) where it has been made, else None."""
    return t.derived.get("sparse_layout")


def use_dense(t: ConeTemplate) -> bool:
    """Dense LU where the cost model above says it is cheaper than SuperLU."""
    N = t.n + t.m
    if N <= DENSE_ALWAYS:
        return True
    if N > DENSE_MAX or DENSE_COST * N**3 >= SPARSE_COST + SPARSE_FILL_COST * N * (N + 1):
        return False  # (sparse the cheaper at any fill: nnz(L + U) <= N(N + 1))
    return DENSE_COST * N**3 < SPARSE_COST + SPARSE_FILL_COST * sparse_layout(t).fill


class Inverse:
    """S⁻¹ of a small dense S (`STACK_INVERSE_MAX`), solving like SuperLU's factorizations:
    entry ``j`` of a stack of inverses (k, N, N), so that a batch's inverses, taken in their
    order, are the stack itself (`_inverses`)."""

    __slots__ = ("stack", "j")

    def __init__(self, stack: np.ndarray, j: int) -> None:
        self.stack, self.j = stack, j

    @property
    def inv(self) -> np.ndarray:
        return self.stack[self.j]

    def solve(self, rhs: np.ndarray, trans: str = "N") -> np.ndarray:
        return (self.inv.T if trans == "T" else self.inv) @ rhs


@dataclass
class Factor:
    """One instance's S, factored: LU (dense (lu, piv) or SuperLU), condition estimate, and
    where S is (nearly) singular its pseudo-inverse: `TruncatedSVD` (dense S) or
    `SparsePinv` (sparse S), both giving S⁺ solves, S's null space and range tests.

    With ``near`` set, ``lu`` factors not S but a nearby matrix (``near.S``): solves then
    run iterative refinement on S with that LU as preconditioner (see `_refined_solve`).

    ``S`` is None where nothing will read it (`Linearization` drops it): in ``near`` (only its
    LU is used), and in a regular factorization, without ``near``, of a polyhedral program's
    S. Such an S is read only to
    compare a later S of the same instance with it, and there the later S equals it exactly
    where DΠ's values do (compared on ``dvals``), and differs by at least 1 (an entry of
    I − DΠ) elsewhere, never nearly.
    """

    S: np.ndarray | sp.csc_matrix | LowRankS | OperatorS | None
    # LAPACK (lu, piv), S⁻¹ (`Inverse`), SuperLU or a batch's bordered block-diagonal
    # factorization (`ArrowLU`), and for a `LowRankS`: `Woodbury` or SuperLU
    # of S's bordered form (`BorderedLU`); or None
    lu: tuple[np.ndarray, np.ndarray] | Inverse | SuperLU | DenseLU | ArrowLU | BorderedLU \
        | Woodbury | None
    rcond: float
    pinv: TruncatedSVD | SparsePinv | None = None
    near: Factor | None = None
    ordering: str | None = None  # SuperLU's column ordering (sparse path)
    dvals: np.ndarray | None = None  # DΠ's values S was built with (A and P: the instance's)
    _exact: Factor | None = None

    def _values(self, S: np.ndarray | sp.csc_matrix) -> tuple[np.ndarray, np.ndarray] | None:
        """(S's values, self.S's values) if the two share a shape and sparsity pattern."""
        mine = self.S
        if mine is None or S.shape != mine.shape or isinstance(S, (LowRankS, OperatorS)) \
                or isinstance(mine, (LowRankS, OperatorS)):
            return None
        if isinstance(S, np.ndarray) or isinstance(mine, np.ndarray):
            if isinstance(S, np.ndarray) and isinstance(mine, np.ndarray):
                return S, mine
            return None
        if not (np.array_equal(S.indptr, mine.indptr)
                and np.array_equal(S.indices, mine.indices)):
            return None
        return S.data, mine.data

    def same_matrix(self, S: np.ndarray | sp.csc_matrix | LowRankS) -> bool:
        if isinstance(S, LowRankS):
            return isinstance(self.S, LowRankS) and S.equals(self.S)
        vals = self._values(S)
        return vals is not None and np.array_equal(*vals)

    def near_matrix(self, S: np.ndarray | sp.csc_matrix) -> bool:
        """S differs from this factorization's S by at most NEAR_RATE·rcond (relative, max
        norm), or else the LU contracts their difference on the probe (`_contracts`), and the
        LU is regular: a good preconditioner for S. Where this one is itself
        near (its LU a nearby matrix's, whose S is not kept), the distances add up over a chain
        of refinement's steps, which shrink quadratically; a preconditioner that drifted too
        far shows as stagnation in `_refined_solve`, which then factors S itself."""
        if isinstance(S, LowRankS):
            return self._near_low_rank(S)
        move = self.near_move(S)
        return move if isinstance(move, bool) else self._contracts(move)

    def near_move(self, S: np.ndarray | sp.csc_matrix) -> bool | np.ndarray:
        """`near_matrix`'s first test: True (within NEAR_RATE·rcond), False (not comparable,
        or this LU not regular), or else the probe's move (S − self.S) z that the LU must
        contract (`_contracts`)."""
        vals = self._values(S)
        if vals is None or not self.rcond > RCOND_MIN:
            return False
        new, old = vals
        if np.abs(new - old).max(initial=0.0) <= NEAR_RATE * self.rcond * np.abs(old).max(
                initial=0.0):
            return True
        z = sign_probe(S.shape[0])
        return S @ z - self.S @ z

    def _near_low_rank(self, S: LowRankS) -> bool:
        """`near_matrix` for S = S₀ + U Vᵀ, whose entries are not at hand: ‖S − self.S‖∞
        estimated from below by ‖(S − self.S) z‖∞ on a ±1 probe z, against max|S|, or the
        contraction measured on z (`_near_probe`; an underestimate shows as slow refinement,
        which then factors S itself)."""
        mine = self.S
        if not isinstance(mine, (LowRankS, OperatorS)) or mine.shape != S.shape \
                or not self.rcond > RCOND_MIN:
            return False
        return self._near_probe(S @ sign_probe(S.shape[0]))

    def _near_probe(self, Sz: np.ndarray) -> bool:
        """`_near_low_rank`'s test given S z, z = `sign_probe` (this S a `LowRankS` or
        `OperatorS`, regular): ‖(S − self.S) z‖∞ within NEAR_RATE·rcond·max|S|, or else, where
        this LU is of self.S itself (not of a matrix before it, which is not kept),
        ‖LU⁻¹ (S − self.S) z‖∞ at most NEAR_CONTRACTION. False where not finite."""
        assert isinstance(self.S, (LowRankS, OperatorS))
        d = Sz - self.S @ sign_probe(Sz.shape[0])
        if np.abs(d).max(initial=0.0) <= NEAR_RATE * self.rcond * self.S.abs_max():
            return True
        return self._contracts(d)

    def _contracts(self, d: np.ndarray) -> bool:
        """Whether this LU, of self.S itself (not of a matrix before it, which is not kept),
        contracts the probe's move d = (S − self.S) z: ‖LU⁻¹ d‖∞ <= NEAR_CONTRACTION
        (‖z‖∞ = 1). False where d is not finite."""
        if self.near is not None or not np.all(np.isfinite(d)):
            return False
        with np.errstate(all="ignore"):
            moved = _near_solve(self, False)(d)
        return bool(np.abs(moved).max(initial=0.0) <= NEAR_CONTRACTION)

    def exact(self) -> Factor:
        """A factorization of S itself (made once, when iterative refinement fails)."""
        if self._exact is None:
            S = self.S
            assert S is not None  # kept where ``near`` is set
            ordering = self.near.ordering if self.near is not None else None
            self._exact = _factor_one(S) if isinstance(S, np.ndarray) else \
                _factor_low_rank(S) if isinstance(S, LowRankS) else \
                _factor_low_rank(S.low_rank()) if isinstance(S, OperatorS) else \
                _factor_sparse_one(S, ordering or "COLAMD")
        return self._exact


class Linearization:
    """S of (1) at a batch of points, factored once, solved for any number of right-hand sides.

    ``reuse`` (one `Factor` or None per instance) skips factoring where S is exactly the
    matrix already factored, e.g. refinement's last Newton matrix: with polyhedral cones
    the final step leaves DΠ unchanged, so the derivative costs no new factorization.
    With ``bordered`` (the derivatives' linearizations), a singular dense S is solved through
    its `TruncatedSVD`'s bordered LU, right entry by entry, not only normwise as a Newton
    step needs. With ``newton`` (refinement's), a singular sparse S whose null space is not
    known gives a regularized least-squares step (`SparsePinv.regularized`) in place of the
    minimum-norm one, which needs that null space.
    """

    def __init__(self, ops: BatchOps, D: DProjection, dense: bool | None = None,
                 reuse: list[Factor | None] | None = None, bordered: bool = False,
                 newton: bool = False) -> None:
        t = ops.template
        self.n, self.m = t.n, t.m
        self.bordered = bordered
        self.newton = newton
        self.D = D
        self._ops = ops
        self.dense = use_dense(t) if dense is None else dense
        B = D.batch_size
        # instances whose S is kept as S₀ + U Vᵀ (`LowRankS`): DΠ's dense PSD blocks never built
        low, rank = (np.zeros(B, dtype=bool), 0) if self.dense else low_rank_mask(t, D)
        full = np.flatnonzero(~low)
        values = D.values() if full.size == B else \
            D.take(full).values() if full.size else np.zeros((0, 0))
        dvals: list[np.ndarray | None] = [None] * B  # DΠ's values S is built with, by instance
        for j, i in enumerate(full.tolist()):
            dvals[i] = values[j]
        factors: list[Factor | None] = [None] * B
        if reuse is not None:
            # S depends on the instance's A and P (those of `ops`) and on DΠ: where DΠ's
            # values are those a factorization was made with, it is S's, without building S
            # (compared in one operation: every instance's DΠ has the same number of values)
            cand = [(i, f.dvals, d) for i, (f, d) in enumerate(zip(reuse, dvals, strict=True))
                    if f is not None and f.dvals is not None and d is not None
                    and f.dvals.shape == d.shape]
            if cand:
                same = (np.stack([m for _, m, _ in cand])
                        == np.stack([d for _, _, d in cand])).all(axis=1)
                for (i, _, _), hit in zip(cand, same.tolist(), strict=True):
                    if hit:
                        factors[i] = reuse[i]
        build = np.array([i for i, f in enumerate(factors) if f is None], dtype=int)
        made = 0
        if self.dense:  # S built and factored a block at a time: no (B, N, N) temporaries
            step = max(1, DENSE_BLOCK_ENTRIES // (t.n + t.m) ** 2)
            for lo in range(0, build.size, step):
                part = build[lo : lo + step]
                whole = part.size == B
                S = _dense_S(ops if whole else ops.take(part), D if whole else D.take(part))
                made += self._factor(factors, dict(zip(part.tolist(), S, strict=True)), reuse,
                                     dvals, None, stack=S)
                del S
        else:  # likewise, SPARSE_BLOCK_ENTRIES entries of S (or of S₀ and U, V) at a time
            for sub_build, reduced in ((build[~low[build]], False), (build[low[build]], True)):
                if not sub_build.size:
                    continue
                layout = sparse_layout(t, reduced)
                # U and V: at most n + 2m rows of ρ values
                size = layout.nnz + rank * (t.n + 2 * t.m) if reduced else layout.nnz
                step = max(1, SPARSE_BLOCK_ENTRIES // max(1, size))
                for lo in range(0, sub_build.size, step):
                    part = sub_build[lo : lo + step]
                    if reduced and reuse is not None:
                        part, probed = self._near_operators(factors, part, ops, D, reuse,
                                                            layout)
                        if probed:  # (failed the test: not tried again on S = S₀ + U Vᵀ)
                            reuse = [None if i in probed else f for i, f in enumerate(reuse)]
                        if not part.size:
                            continue
                    whole = part.size == B
                    sub = ops if whole else ops.take(part)
                    if not reduced:
                        data = layout.values(sub, np.stack([dvals[i] for i in part.tolist()]))
                        mats: dict = {i: layout.matrix(data[j])
                                      for j, i in enumerate(part.tolist())}
                    else:
                        data = None
                        mats = dict(zip(part.tolist(), _low_rank_parts(
                            sub, D if whole else D.take(part), layout), strict=True))
                    made += self._factor(factors, mats, reuse, dvals, layout, data=data)
                    del mats, data
        self.factors: list[Factor] = factors  # type: ignore[assignment]  # every one set
        self.reused = B - made
        self.rcond = np.array([f.rcond for f in self.factors])
        self.singular = ~(self.rcond > RCOND_MIN)

    def _near_operators(self, factors: list, part: np.ndarray, ops: BatchOps,
                        D: DProjection, reuse: list[Factor | None],
                        layout: SparseLayout) -> tuple[np.ndarray, set[int]]:
        """Among the low-rank instances ``part``, those whose ``reuse`` factorization (regular,
        of S₀ + U Vᵀ) is near S (`Factor.near_matrix`'s test, with S's products taken from A,
        P and DΠ for the whole part at once) get it as a nearby matrix's, with S kept as its
        products (`OperatorS`): neither U and V nor a new LU are made. Returns the others,
        and those of them that were tested."""
        cand = [i for i in part.tolist() if (f := reuse[i]) is not None and f.lu is not None
                and isinstance(f.S, (LowRankS, OperatorS)) and f.rcond > RCOND_MIN]
        if not cand:
            return part, set()
        at = np.array(cand)
        ops_c, D_c = ops.take(at), D.take(at)
        z = sign_probe(self.n + self.m)
        with np.errstate(all="ignore"):
            Sz = s_products(ops_c, D_c, np.broadcast_to(z, (at.size, z.size)))
        near = set()
        for j, i in enumerate(cand):
            f = reuse[i]
            assert f is not None
            if f._near_probe(Sz[j]):
                factors[i] = Factor(OperatorS(ops_c, D_c, j, layout), f.lu, f.rcond,
                                    near=replace(f.near or f, S=None, pinv=None))
                near.add(i)
        return np.array([i for i in part.tolist() if i not in near], dtype=int), \
            set(cand) - near

    def _factor(self, factors: list, mats: dict[int, Any],
                reuse: list[Factor | None] | None, dvals: list[np.ndarray | None],
                layout: SparseLayout | None, stack: np.ndarray | None = None,
                data: np.ndarray | None = None) -> int:
        """Factor S of every instance i in ``mats`` (i ↦ S_i: dense, sparse, or `LowRankS`)
        into ``factors[i]`` (in parallel threads, except SuperLU's factorizations of sparse S,
        which hold the GIL: on two threads they only contend, softmax's 64 S (N = 501) 46-51
        against 70-78 ms), except where ``reuse`` has S's factorization (or
        a nearby matrix's, refined iteratively when solving). Returns how many were
        factored. ``stack``: dense S's stacked, (len(mats), N, N), the values of ``mats`` in
        order (then not stacked again where every one is factored). ``data``: sparse S's
        values (len(mats), nnz), in ``mats``' order, for the bordered block-diagonal
        factorization (`arrow`) where S has that structure."""
        if reuse is not None:
            # the contraction probes of a batch's `ArrowLU`s, solved together
            probes: list[tuple[int, ArrowLU]] = []
            moves: dict[int, np.ndarray] = {}
            for i, S in mats.items():
                f = reuse[i]
                if f is None:
                    continue
                if f.same_matrix(S):
                    factors[i] = f
                    continue
                if type(f.lu) is ArrowLU and f.near is None and not isinstance(S, LowRankS):
                    move = f.near_move(S)
                    if isinstance(move, np.ndarray):
                        if np.all(np.isfinite(move)):
                            probes.append((i, f.lu))
                            moves[i] = move
                        continue
                    near = move
                else:
                    near = f.near_matrix(S)
                if near:  # refinement's last step moved S a little
                    # (of the nearby matrix only its LU is used: its S is not kept)
                    factors[i] = Factor(S, f.lu, f.rcond,
                                        near=replace(f.near or f, S=None, pinv=None))
            for fa, at, js in _by_arrow(probes):
                with np.errstate(all="ignore"):
                    moved = np.abs(fa.solve(js, np.stack([moves[i] for i in at.tolist()]),
                                            False)).max(axis=1)
                for i, contracts in zip(at.tolist(), (moved <= NEAR_CONTRACTION).tolist(),
                                        strict=True):
                    if contracts:
                        f = reuse[i]
                        assert f is not None
                        factors[i] = Factor(mats[i], f.lu, f.rcond,
                                            near=replace(f, S=None, pinv=None))
        todo = [i for i in mats if factors[i] is None]
        fn: Callable[[Any], Factor] | None = _factor_one
        pooled = True  # (not SuperLU's, which hold the GIL: see above)
        if layout is None:
            if todo and self.n + self.m <= STACK_INVERSE_MAX:
                fn = None
        elif todo:
            first = mats[todo[0]]
            ordering = layout.decide(first.S0 if isinstance(first, LowRankS) else first)
            if isinstance(first, LowRankS):
                fn = _factor_low_rank
            else:
                fn = functools.partial(_factor_sparse_one, ordering=ordering,
                                       supernodes=layout.supernodes)
                pooled = False
        # a polyhedral program's regular S is not read again (see `Factor`): only its LU kept
        polyhedral = self.D.dims.polyhedral
        if fn is None:
            if stack is None or len(todo) < len(mats):
                stack = np.stack([mats[i] for i in todo])
            parts = min(workers(), len(todo) // 8) if self.n + self.m >= STACK_THREADS_MIN \
                else 1  # (at least 8 instances a part)
            invert = functools.partial(_factor_stack, n=self.n if polyhedral else None)
            if parts > 1:
                made = [f for part in parallel_map(invert, np.array_split(stack, parts))
                        for f in part]
            else:
                made = invert(stack)
        elif data is not None and todo and (len(todo) >= ARROW_BATCH_MIN
                                            or self.n + self.m >= ARROW_ORDER_ALONE) \
                and layout is not None and layout.arrow is not None:
            # every instance at once; SuperLU for one the blocks do not factor well
            where = {i: j for j, i in enumerate(mats)}
            fa, rcond, good = layout.arrow.factor(data[[where[i] for i in todo]],
                                                  sign_probe(self.n + self.m))
            made = [Factor(mats[i], ArrowLU(fa, j), rc, ordering=layout.ordering)
                    if ok and rc > RCOND_MIN else fn(mats[i])
                    for j, (i, rc, ok) in enumerate(zip(todo, rcond.tolist(), good.tolist(),
                                                         strict=True))]
        elif pooled:
            made = parallel_map(fn, [mats[i] for i in todo])
        else:
            made = [fn(mats[i]) for i in todo]
        for i, f in zip(todo, made, strict=True):
            f.dvals = dvals[i]
            if polyhedral and f.rcond > RCOND_MIN:
                f.S = None
            factors[i] = f
        return len(todo)

    def null_space(self, i: int) -> np.ndarray | None:
        """Right null space of a singular S_i, (N, k); None if S_i is regular or its
        pseudo-inverse is not at hand."""
        pinv = self.factors[i].pinv
        return None if pinv is None else pinv.null

    # -- solves --------------------------------------------------------------------
    def solve(self, rhs: np.ndarray, transpose: bool = False, iterative: bool = True,
              tol: float = REFINE_SOLVE_TOL) -> np.ndarray:
        """S⁻¹ rhs (or S⁻ᵀ rhs) per instance; least squares where S is singular.

        ``rhs`` is (B, N) or (B, N, K) for K right-hand sides per instance. With
        ``iterative=False``, a singular S without a pseudo-inverse gives NaN instead of an
        (expensive) LSMR solution. ``tol``: the relative residual at which a solve refined
        against a nearby matrix's factorization stops (`_refine`).
        """
        out = np.empty_like(rhs)
        stacked, inv = _inverses(self.factors, ~self.singular)
        if stacked.size:
            out[stacked] = _times_inverse(inv, rhs[stacked], transpose)
        rest = np.ones(rhs.shape[0], dtype=bool)
        rest[stacked] = False
        lapack = _lapack_solves(self.factors, rest & ~self.singular, rhs, out, transpose)
        rest &= ~lapack
        rest &= ~_arrow_solves(self.factors, rest & ~self.singular, rhs, out, transpose)
        rest &= ~_refined_solves(self.factors, rest & ~self.singular, rhs, out, transpose, tol,
                                 self._ops, self.D)
        for i in np.flatnonzero(rest):
            out[i] = self.solve_one(int(i), rhs[i], transpose, iterative, tol)
        return out

    def solve_one(self, i: int, rhs: np.ndarray, transpose: bool = False,
                  iterative: bool = True, tol: float = REFINE_SOLVE_TOL) -> np.ndarray:
        """S_i⁻¹ rhs (or S_i⁻ᵀ rhs) for instance i; rhs is (N,) or (N, K)."""
        if not np.all(np.isfinite(rhs)):
            return np.full_like(rhs, np.nan)
        f = self.factors[i]
        if self.singular[i]:
            if f.pinv is None and not iterative:
                return np.full_like(rhs, np.nan)
            if self.newton and isinstance(f.pinv, SparsePinv) and not f.pinv.null_known:
                return f.pinv.regularized(rhs, transpose)
            return _lstsq(f, rhs, transpose, self.bordered)
        if f.near is not None:
            return _refined_solve(f, rhs, transpose, tol)
        return _lu_solve(f, rhs, transpose, tol)


def newton_correction(factors: list[Factor], F: np.ndarray) -> np.ndarray:
    """−S⁻¹F per instance (F: (B, N) or (B, N, K)), with each instance's factorization of S
    (least squares where S is singular, NaN where that is not available): the Newton step,
    which near a regular solution estimates the error of the point F was evaluated at."""
    return -solves(factors, F)


def solves(factors: list[Factor], rhs: np.ndarray, transpose: bool = False) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) per instance (rhs: (B, N) or (B, N, K)), with each instance's
    factorization of S: least squares where S is singular, NaN where that is not available
    or rhs is not finite."""
    out = np.empty_like(rhs)
    regular = np.array([f.rcond > RCOND_MIN for f in factors], dtype=bool)
    stacked, inv = _inverses(factors, regular)
    if stacked.size:
        out[stacked] = _times_inverse(inv, rhs[stacked], transpose)
    rest = np.ones(rhs.shape[0], dtype=bool)
    rest[stacked] = False
    done = _lapack_solves(factors, rest & regular, rhs, out, transpose)
    done |= _arrow_solves(factors, rest & regular & ~done, rhs, out, transpose)
    done |= _refined_solves(factors, rest & regular & ~done, rhs, out, transpose,
                            REFINE_SOLVE_TOL)
    for i in np.flatnonzero(rest & ~done):
        f = factors[i]
        if not np.all(np.isfinite(rhs[i])) or f.lu is None and f.pinv is None:
            out[i] = np.nan
        elif f.rcond > RCOND_MIN:
            out[i] = (_refined_solve(f, rhs[i], transpose) if f.near is not None
                      else _lu_solve(f, rhs[i], transpose))
        elif f.pinv is not None:
            out[i] = f.pinv.solve(rhs[i], transpose)
        else:
            out[i] = np.nan
    return out


def abs_inverse_times(factors: list[Factor], g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|S⁻¹| g exactly for the instances whose S⁻¹ is at hand (a regular `Inverse` of S
    itself), and |S⁺| g for those whose S is singular with a dense `TruncatedSVD` of order
    up to STACK_INVERSE_MAX (S⁺ = V diag(1/σ) Uᵀ formed), g (B, N) nonnegative: (those
    instances, (k, N) values)."""
    regular = np.array([f.rcond > RCOND_MIN for f in factors], dtype=bool)
    idx, inv = _inverses(factors, regular)
    out = (np.abs(inv) @ g[idx][..., None])[..., 0] if idx.size else np.zeros((0, g.shape[1]))
    svd, rows = [], []
    for i, f in enumerate(factors) if g.shape[1] <= STACK_INVERSE_MAX else ():
        if not regular[i] and isinstance(f.pinv, TruncatedSVD):
            svd.append(i)
            rows.append(np.abs((f.pinv.Vt.T / f.pinv.sv) @ f.pinv.U.T) @ g[i])
    if not svd:
        return idx, out
    order = np.argsort(np.concatenate([idx, svd]), kind="stable")
    return (np.concatenate([idx, np.array(svd, dtype=idx.dtype)])[order],
            np.concatenate([out, np.array(rows)])[order])


def abs_rows_estimate(factors: list[Factor], g: np.ndarray,
                      L: Callable[[np.ndarray], np.ndarray],
                      Lt: Callable[[np.ndarray], np.ndarray],
                      blocks: list[tuple[int, int]]) -> np.ndarray:
    """Per instance and block of L's rows (B, K): an estimate of the largest
    Σ_j |(L S⁻¹)_ij| g_j over the block's rows i, with g (B, N) nonnegative and each
    instance's factorization of S (regular): the worst first-order change of L's rows under
    perturbations of F within g.

    ``L`` maps (B, N, K') to (B, R, K'), ``Lt`` is its transpose, ``blocks`` the K
    (start, size) ranges of the R rows. The estimate is the first two steps of Hager's
    method (Hager, *SIAM J. Sci. Stat. Comput.* 5, 1984; Higham, *Accuracy and Stability of
    Numerical Algorithms*, §15.3), for every instance and block at once, with Higham's
    alternating-sign vector beside the first: from the block's average row, signs ξ, then
    the exact sum of the row that L S⁻¹ (g ⊙ ξ) finds largest. It is some rows' exact sums
    or weighted averages of them: a lower bound, in practice the largest or within a small
    factor of it, which a single ±1 probe is not (its terms cancel where a few dominate a
    row with opposite signs). Cost: two solves with Sᵀ, one with S, each with the
    factorization as it is (a nearby matrix's LU without refinement on S: `rough_solves`)."""
    B, K = g.shape[0], len(blocks)
    R = sum(size for _, size in blocks)
    if B == 0 or K == 0:
        return np.zeros((B, K))
    inside = np.zeros((R, K), dtype=bool)
    X = np.zeros((B, R, 2 * K))
    for k, (lo, size) in enumerate(blocks):
        inside[lo : lo + size, k] = True
        i = np.arange(size)
        X[:, lo : lo + size, k] = 1.0 / size
        X[:, lo : lo + size, K + k] = (-1.0) ** i * (1 + i / max(size - 1, 1)) * 2 / (3 * size)

    as_is = [f if f.near is None else Factor(None, f.near.lu, f.near.rcond) for f in factors]

    def rows(X: np.ndarray) -> np.ndarray:  # g ⊙ S⁻ᵀ Lᵀ X: its column sums weigh L S⁻¹'s rows
        return g[..., None] * rough_solves(as_is, Lt(X), transpose=True)

    Y = rows(X)
    est = np.abs(Y).sum(axis=1).reshape(B, 2, K).max(axis=1)
    Z = L(rough_solves(as_is, g[..., None] * np.where(Y[:, :, :K] >= 0, 1.0, -1.0)))
    j = np.where(inside[None], np.abs(Z), -1.0).argmax(axis=1)  # (B, K): the largest row
    X = np.zeros((B, R, K))
    X[np.arange(B)[:, None], j, np.arange(K)[None, :]] = 1.0
    return np.maximum(est, np.abs(rows(X)).sum(axis=1))


def rough_solves(factors: list[Factor], rhs: np.ndarray, transpose: bool = False
                 ) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) per instance for estimates, with each factorization as it is:
    regular factors without ``near`` (a nearby matrix's LU taken as S's own: within
    NEAR_RATE of S, results move by about that much), `Woodbury`'s formula without its own
    refinement."""
    plain, out = [], np.empty_like(rhs)
    for i, f in enumerate(factors):
        if isinstance(f.lu, Woodbury):
            out[i] = f.lu.apply(rhs[i], trans="T" if transpose else "N")
        else:
            plain.append(i)
    if plain:
        out[plain] = solves([factors[i] for i in plain], rhs[plain], transpose)
    return out


def _refined_solves(factors: list[Factor], which: np.ndarray, rhs: np.ndarray,
                    out: np.ndarray, transpose: bool, tol: float, ops: BatchOps | None = None,
                    D: DProjection | None = None) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) into ``out`` for the instances among ``which`` (regular) beside a
    nearby matrix's factorization (``near``) whose S is kept as its products (`OperatorS`;
    only given ``ops``) or is sparse with a nearby `ArrowLU`, and whose rhs is finite:
    `_refined_solve`'s iterative refinement, with its steps and tests (to ``tol``), for all
    of them at once. S's products: with ``ops`` and ``D`` (the batch's, S of (1) made with
    them) for all in one `s_products`, else each S's own; the solves of one batch's
    `ArrowFactors` in one call.
    One whose refinement fails is solved with a factorization of S itself (`Factor.exact`).
    Returns those instances (B,) bool.

    (A `Woodbury` factorization's own solves are left to it: refined one instance at a
    time, its formula and S's products read the same U and V while they are in cache.)"""
    done = np.zeros(len(factors), dtype=bool)
    idx = []
    for i in np.flatnonzero(which).tolist():
        f = factors[i]
        if f.near is None or f._exact is not None:
            continue
        if isinstance(f.S, OperatorS) and ops is not None \
                or type(f.near.lu) is ArrowLU and isinstance(f.S, sp.csc_matrix):
            idx.append(i)
    if idx:
        finite = np.atleast_1d(np.isfinite(rhs[idx].reshape(len(idx), -1)).all(axis=1))
        idx = [i for i, keep in zip(idx, finite.tolist(), strict=True) if keep]
    if not idx:
        return done
    at = np.array(idx)
    near = [factors[i].near for i in idx]
    # the solves with the nearby factorizations: a batch's `ArrowLU`s together
    arrow_sets = _by_arrow([(g, nf.lu) for g, nf in enumerate(near)
                            if nf is not None and type(nf.lu) is ArrowLU])
    alone = [g for g, nf in enumerate(near) if nf is None or type(nf.lu) is not ArrowLU]

    def solve(live: np.ndarray, R: np.ndarray) -> np.ndarray:
        """The nearby factorizations' solves for positions ``live`` (of idx), R (len, …)."""
        X = np.empty_like(R)
        where = np.full(len(idx), -1)
        where[live] = np.arange(live.size)
        for fa, gs, js in arrow_sets:
            sel = where[gs] >= 0
            if sel.any():
                X[where[gs[sel]]] = fa.solve(js[sel], R[where[gs[sel]]], transpose)
        for g in alone:
            if where[g] >= 0:
                X[where[g]] = _near_solve(near[g], transpose)(R[where[g]])
        return X

    b = rhs[at]
    k = at.size
    x = solve(np.arange(k), b)
    scale = np.array([abs_max(factors[i].S) for i in idx])
    # max norms per instance and per right-hand side (K of them: (k, K); (k, 1) for one)
    cols = b.shape[2] if b.ndim == 3 else 1

    def norms(a: np.ndarray, rows: int) -> np.ndarray:
        return np.abs(a).reshape(rows, -1, cols).max(axis=1, initial=0.0)

    size_b = norms(b, k)
    last = np.full((k, cols), np.inf)
    ok = np.zeros(k, dtype=bool)
    live = np.arange(k)
    if ops is not None and D is not None:
        ops, D = ops.take(at), D.take(at)
    for _ in range(REFINE_SOLVE_STEPS):
        if not live.size:
            break
        with np.errstate(all="ignore"):
            if ops is not None and D is not None:
                r = b[live] - s_products(ops, D, x[live], transpose)
            else:
                r = b[live] - np.stack([(factors[idx[g]].S.T if transpose else
                                         factors[idx[g]].S) @ x[g] for g in live.tolist()])
        err = norms(r, live.size)
        size = scale[live, None] * norms(x[live], live.size) + size_b[live]
        stop, good = _refine_verdict(err, size, last[live], tol)
        stop, good = stop.all(axis=1), good.all(axis=1)
        ok[live[good]] = True
        go = ~stop
        last[live[go]] = err[go]
        if go.any():
            x[live[go]] += solve(live[go], r[go])
        if not go.all():
            live = live[go]
            if ops is not None and D is not None:
                ops, D = ops.take(go), D.take(go)
    # (instances still live ran out of steps: not ok)
    for g, i in enumerate(idx):
        out[i] = x[g] if ok[g] else _solve_factored(factors[i].exact(), rhs[i], transpose)
    done[at] = True
    return done


def _lapack_solves(factors: list[Factor], which: np.ndarray, rhs: np.ndarray,
                   out: np.ndarray, transpose: bool) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) into ``out`` for the instances among ``which`` (regular) whose
    factorization is S's own dense LU (LAPACK's, not of a nearby matrix) and whose rhs is
    finite, in the thread pool where there are LAPACK_SOLVES_MIN of them (getrs releases the
    GIL, unlike SuperLU's solves). Returns those instances (B,) bool."""
    done = np.zeros(len(factors), dtype=bool)
    idx = [i for i in np.flatnonzero(which).tolist()
           if factors[i].near is None and isinstance(factors[i].lu, tuple)]
    if len(idx) < LAPACK_SOLVES_MIN:
        return done
    finite = np.flatnonzero(np.isfinite(rhs[idx].reshape(len(idx), -1)).all(axis=1))
    idx = [idx[j] for j in finite.tolist()]
    for i, x in zip(idx, parallel_map(lambda i: _lu_solve(factors[i], rhs[i], transpose), idx),
                    strict=True):
        out[i] = x
    done[idx] = True
    return done


def _by_arrow(lus: list[tuple[int, ArrowLU]]
              ) -> list[tuple[ArrowFactors, np.ndarray, np.ndarray]]:
    """(position, `ArrowLU`) pairs grouped by the batch factorization they belong to: for
    each, its `ArrowFactors`, the positions, and their instances in it (for one batched
    solve)."""
    groups: dict[int, tuple[ArrowFactors, list[int], list[int]]] = {}
    for pos, lu in lus:
        g = groups.setdefault(id(lu.factors), (lu.factors, [], []))
        g[1].append(pos)
        g[2].append(lu.j)
    return [(fa, np.array(at), np.array(js)) for fa, at, js in groups.values()]


def _arrow_solves(factors: list[Factor], which: np.ndarray, rhs: np.ndarray,
                  out: np.ndarray, transpose: bool) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) into ``out`` for the instances among ``which`` (regular) whose
    factorization is S's own `ArrowLU` and whose rhs is finite, those of one batch's
    factorization (`ArrowFactors`) in one batched solve. Returns those instances (B,) bool."""
    done = np.zeros(len(factors), dtype=bool)
    lus = [(i, f.lu) for i in np.flatnonzero(which).tolist()
           if (f := factors[i]).near is None and type(f.lu) is ArrowLU]
    for fa, at, js in _by_arrow(lus):
        finite = np.isfinite(rhs[at].reshape(at.size, -1)).all(axis=1)
        at = at[finite]
        if at.size:
            out[at] = fa.solve(js[finite], rhs[at], transpose)
            done[at] = True
    return done


def _inverses(factors: list[Factor], regular: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The instances whose S⁻¹ is at hand (a regular `Inverse` factorization of S itself, not
    of a nearby matrix) and those inverses stacked, (k, N, N)."""
    lus = [(i, f.lu) for i, f in enumerate(factors)
           if regular[i] and f.near is None and type(f.lu) is Inverse]
    idx = np.array([i for i, _ in lus], dtype=int)
    if not idx.size:
        return idx, np.zeros((0, 0, 0))
    whole = lus[0][1].stack  # the one stack they all are, in order: no copy
    if whole.shape[0] == len(lus) and all(lu.stack is whole and lu.j == k
                                          for k, (_, lu) in enumerate(lus)):
        return idx, whole
    return idx, np.stack([lu.inv for _, lu in lus])


def _times_inverse(inv: np.ndarray, rhs: np.ndarray, transpose: bool) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) per instance, rhs (k, N) or (k, N, K); NaN where rhs is not
    finite (as `Linearization.solve_one`)."""
    M = np.swapaxes(inv, 1, 2) if transpose else inv
    out = (M @ rhs[..., None])[..., 0] if rhs.ndim == 2 else M @ rhs
    bad = ~np.isfinite(rhs.reshape(rhs.shape[0], -1)).all(axis=1)
    out[bad] = np.nan
    return out


def _lu_solve(f: Factor | None, rhs: np.ndarray, transpose: bool,
              tol: float = REFINE_SOLVE_TOL) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) with f's LU (f has one: its rcond passed RCOND_MIN); ``tol``: the
    relative residual at which a `Woodbury` solve's own refinement stops."""
    assert f is not None and f.lu is not None
    if isinstance(f.lu, tuple):
        x, _ = _getrs(*f.lu, rhs, trans=1 if transpose else 0)  # LAPACK, no wrappers
        return x
    if isinstance(f.lu, Woodbury):
        return f.lu.solve(rhs, "T" if transpose else "N", tol)
    return f.lu.solve(rhs, trans="T" if transpose else "N")


def _refined_solve(f: Factor, rhs: np.ndarray, transpose: bool,
                   tol: float = REFINE_SOLVE_TOL) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) by iterative refinement (`_refine`, to ``tol``) preconditioned
    with the LU of a nearby matrix S₀ (f.near): the error contracts by ‖I − S₀⁻¹S‖ per step,
    ~1e-8 after refinement's last Newton step, so two or three steps reach a backward error
    of a few ulps; stagnation or too many steps fall back on factoring S itself."""
    assert f.S is not None and f.near is not None  # kept where ``near`` is set
    if f._exact is None:
        x = _refine(f.S.T if transpose else f.S, _near_solve(f.near, transpose), rhs,
                    abs_max(f.S), tol)
        if x is not None:
            return x
    return _solve_factored(f.exact(), rhs, transpose)


def _near_solve(near: Factor, transpose: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Solves with a nearby matrix's factorization, the preconditioner of refined solves: a
    `Woodbury` formula alone (its own refinement is on its S), else the LU's solve."""
    if isinstance(near.lu, Woodbury):
        return functools.partial(near.lu.apply, trans="T" if transpose else "N")
    return functools.partial(_lu_solve, near, transpose=transpose)


def _solve_factored(f: Factor, rhs: np.ndarray, transpose: bool) -> np.ndarray:
    """S⁻¹ rhs (or S⁻ᵀ rhs) with a fresh factorization f of S: its LU where regular, least
    squares where S turned out singular, NaN where neither is available."""
    if f.rcond > RCOND_MIN:
        return _lu_solve(f, rhs, transpose)
    if f.pinv is not None or f.S is not None:
        return _lstsq(f, rhs, transpose)
    return np.full_like(rhs, np.nan)


def _refine(M: Any, solve: Callable[[np.ndarray], np.ndarray], rhs: np.ndarray,
            scale: float, tol: float = REFINE_SOLVE_TOL) -> np.ndarray | None:
    """M⁻¹ rhs by iterative refinement with an approximate inverse ``solve`` (Wilkinson; e.g.
    Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 12): x ← x + solve(rhs − M x)
    until the residual is at most tol·(scale‖x‖ + ‖rhs‖) (max norms, of each column of a
    (N, K) rhs; scale ≈ M's largest entry); None where one stagnates above max(tol,
    REFINE_STALL_TOL) or takes more than REFINE_SOLVE_STEPS steps."""
    x = solve(rhs)
    last: Any = np.inf
    for _ in range(REFINE_SOLVE_STEPS):
        r = rhs - M @ x
        # per column of a (N, K) rhs: a column 1e-12 the size of another is held to its own
        # scale (a Jacobian's columns for parameters of different magnitudes)
        err = np.abs(r).max(axis=0, initial=0.0)
        size = scale * np.abs(x).max(axis=0, initial=0.0) + np.abs(rhs).max(axis=0, initial=0.0)
        stop, good = _refine_verdict(err, size, last, tol)
        if np.all(stop):
            return x if np.all(good) else None
        last = err
        x = x + solve(r)
    return None


def _refine_verdict(err: Any, size: Any, last: Any, tol: float) -> tuple[Any, Any]:
    """Iterative refinement's tests on a residual ``err`` (max norm) against tol·``size``
    after one of ``last`` (elementwise for arrays): (stop, and the point is good). It stops
    converged (good), or stagnating: not halving the residual, at the rounding floor (good
    where at most max(tol, REFINE_STALL_TOL)·size) or not converging; NaN stagnates."""
    converged = err <= tol * size
    stalled = ~converged & ~(err < 0.5 * last)
    return converged | stalled, converged | stalled & (err <= max(tol, REFINE_STALL_TOL) * size)


@functools.lru_cache(maxsize=32)
def sign_probe(N: int) -> np.ndarray:
    """A fixed vector of random signs ±1 (N,), read-only: the same for every call, so that
    results are deterministic."""
    z = np.where(np.random.default_rng(N).random(N) < 0.5, -1.0, 1.0)
    z.flags.writeable = False
    return z


def abs_max(S: np.ndarray | sp.spmatrix | LowRankS | OperatorS) -> float:
    """S's largest entry in absolute value (for `LowRankS` and `OperatorS`, an upper
    bound)."""
    if isinstance(S, np.ndarray):
        return float(np.abs(S).max(initial=0.0))
    if isinstance(S, (LowRankS, OperatorS)):
        return S.abs_max()
    return float(np.abs(S.data).max(initial=0.0))


# The prime of `ranks_exactly`: below 2³¹, so that a product of two residues fits in an
# int64.
RANK_PRIME = 2_147_483_647


# Up to this order, a matrix of exact entries is eliminated in exact arithmetic
# (`ranks_exactly`): a singular S (`Layer._no_face_exactly`, order n + m) and a ray's
# equations (`solve._no_ray_exactly`, n variables). One elimination takes 30 ms at 200.
EXACT_RANK_MAX = 200


def ranks_exactly(M: np.ndarray) -> np.ndarray:
    """The ranks of M's leading columns, M[:, :j + 1] for every j, M's finite floating-point
    entries taken as exact rationals, computed modulo RANK_PRIME: at most the ranks over
    the rationals, and equal to them unless the prime divides every maximal nonzero minor
    (for data not built to that prime, a chance of about order/RANK_PRIME). Each row is
    scaled by a power of two that makes its entries integers (which keeps the ranks),
    reduced modulo the prime and eliminated there, column by column."""
    k, n = M.shape
    m, e = np.frexp(M)
    mant = (m * 2.0**53).astype(np.int64)  # M = mant·2^(e − 53), exactly
    nz = mant != 0
    e = np.where(nz, e.astype(np.int64) - 53, np.iinfo(np.int64).max)
    shift = (e - e.min(axis=1, initial=np.iinfo(np.int64).max)[:, None])[nz]
    powers, at = np.unique(shift, return_inverse=True)
    two = np.array([pow(2, int(p), RANK_PRIME) for p in powers], dtype=np.int64)
    R = np.zeros((k, n), dtype=np.int64)
    R[nz] = mant[nz] % RANK_PRIME * two[at] % RANK_PRIME  # mant·2^shift mod p
    ranks = np.zeros(n, dtype=int)
    rank = 0
    for c in range(n):
        rows = np.flatnonzero(R[rank:, c]) + rank
        if rows.size:
            r = rows[0]
            if r != rank:
                R[[rank, r]] = R[[r, rank]]
            R[rank] = R[rank] * pow(int(R[rank, c]), RANK_PRIME - 2, RANK_PRIME) % RANK_PRIME
            below = rows[1:] if r == rank else np.flatnonzero(R[rank + 1 :, c]) + rank + 1
            R[below] = (R[below] - R[below, c : c + 1] * R[rank]) % RANK_PRIME
            rank += 1
        ranks[c] = rank
        if rank == k:
            ranks[c:] = k
            break
    return ranks


def _lstsq(f: Factor, r: np.ndarray, transpose: bool, bordered: bool = False) -> np.ndarray:
    """Minimum-norm least-squares solution S⁺ r (or S⁺ᵀ r) for singular S (a dense one's
    through its bordered LU with ``bordered``, see `TruncatedSVD`).

    Where the null space of S is invisible in the outputs (an auxiliary variable CVXPY
    introduced is not unique, e.g. the epigraph variable of an inactive norm constraint)
    this is the exact, unique derivative, and the transposed solve is exactly its adjoint,
    since (S⁺)ᵀ = (Sᵀ)⁺.
    """
    if isinstance(f.pinv, TruncatedSVD):
        return f.pinv.solve(r, transpose, bordered)
    if f.pinv is not None:
        return f.pinv.solve(r, transpose)
    S = f.S.tocsc() if isinstance(f.S, LowRankS) else \
        f.S.low_rank().tocsc() if isinstance(f.S, OperatorS) else f.S
    assert S is not None  # kept where S is singular
    if isinstance(S, np.ndarray) or not np.all(np.isfinite(S.data)):  # nothing to solve
        return np.full_like(r, np.nan)
    M = S.T if transpose else S
    cols = r.reshape(r.shape[0], -1)
    out = np.column_stack([
        spla.lsmr(M, cols[:, k], atol=LSMR_TOL, btol=LSMR_TOL,
                  maxiter=LSMR_ITERS_PER_ROW * S.shape[0])[0]
        for k in range(cols.shape[1])
    ])
    return out.reshape(r.shape)


# LAPACK routines looked up once (get_lapack_funcs costs as much as a small solve)
_getrs, _gecon = sla.get_lapack_funcs(("getrs", "gecon"), (np.zeros(1),))


def _dense_S(ops: BatchOps, D: DProjection) -> np.ndarray:
    """S of (1), dense, for each instance of ``ops`` with DΠ = ``D``: (B, N, N).

    Where the cones are polyhedral DΠ is diagonal (d), and A's stored entries are scattered
    straight into their blocks (Aᵀ DΠ's entries A_kj·d_k, −A's, and I − diag(d)), without
    the dense A, DΠ A and DΠ of the general case."""
    t = ops.template
    if D.dims.polyhedral:
        B, N = ops.a.shape[0], t.n + t.m
        top, bottom, diagonal, p_at, p_unique = _dense_positions(t)
        S = np.zeros((B, N, N))
        flat = S.reshape(B, N * N)  # (a view: positions are flat indices into each S)
        if t.quadratic:
            if p_unique:  # (0 + h: bitwise ufunc.at's sums)
                flat[:, p_at] += ops.h
            else:
                # numpy's stubs type ufunc.at's indices as integer arrays only; a tuple works
                np.add.at(flat, (slice(None), p_at), ops.h)  # type: ignore[arg-type]
        d = D.values()  # (DΠ's diagonal: with these cones `block_pattern` is its rows')
        flat[:, top] = ops.a * np.take(d, ops.rows, axis=1)
        flat[:, bottom] = -ops.a
        flat[:, diagonal] = 1.0 - d
        return S
    A = ops.dense()
    DA = D.matvec(A)  # (B, m, n)
    S = np.zeros((A.shape[0], t.n + t.m, t.n + t.m))
    if t.quadratic:
        S[:, : t.n, : t.n] = ops.dense_P()
    S[:, : t.n, t.n :] = np.swapaxes(DA, 1, 2)
    S[:, t.n :, : t.n] = -A
    S[:, t.n :, t.n :] = -D.dense()
    idx = np.arange(t.n, t.n + t.m)
    S[:, idx, idx] += 1.0
    return S


def _dense_positions(t: ConeTemplate
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Where a polyhedral program's dense S (N × N, flattened) holds Aᵀ DΠ's entries, −A's,
    I − DΠ's diagonal and P's (in the order of their stored entries), and whether P's
    positions are distinct: made once per template, kept with it (`_dense_S`)."""
    cached = t.derived.get("dense_positions")
    if cached is None:
        rows, cols = _scatter(t)[:2]
        n, N = t.n, t.n + t.m
        v = np.arange(n, N)
        p_at = t.P_rows * N + t.P_cols
        cached = (cols * N + n + rows, (n + rows) * N + cols, v * N + v, p_at,
                  np.unique(p_at).size == p_at.size)
        t.derived["dense_positions"] = cached
    return cached


def _factor_one(S: np.ndarray) -> Factor:
    """LU of one dense S (LAPACK getrf), and its truncated SVD if singular."""
    with np.errstate(over="ignore", invalid="ignore"):
        anorm = np.abs(S).sum(axis=0).max(initial=0.0)  # (not finite wherever S is not)
    if not np.isfinite(anorm) and not np.all(np.isfinite(S)):
        return Factor(S, None, 0.0)
    # getrf directly: it reports an exactly singular S in `info` instead of warning
    # (warnings filters are not thread-safe, and this runs in worker threads).
    lu, piv, info = sla.lapack.dgetrf(S)
    rc = _rcond_lu(lu, S, anorm) if info == 0 else 0.0
    return Factor(S, (lu, piv), rc, None if rc > RCOND_MIN else TruncatedSVD.of(S))


class TruncatedSVD:
    """S⁺ of a dense, singular S by its SVD, singular values below PINV_RTOL·σ_max dropped:
    S = U diag(σ) Vᵀ over the kept ones, ``null`` an orthonormal basis of the rest (N, k).

    ``solve`` with ``bordered`` (the derivatives') runs through the LU of the bordered matrix
    B = [[S, L], [Rᵀ, 0]] (R = ``null``, L the left null space's basis), as `SparsePinv`
    does: B [x; μ] = [r; 0] gives x = S⁺r.
    Through the SVD itself, V diag(1/σ) Uᵀ r, every entry of x carries rounding of the
    order of u·‖x‖/σ_r, which the LU, pivoting on S's own entries, keeps from entries far
    smaller than the largest: the derivative of min ‖x − a‖² + λ·log_sum_exp(x) at x ~ 1e-12
    beside an inactive ball (whose epigraph variable makes S singular) has ∂x/∂λ at 3e-8 of
    the multipliers' ∂y/∂λ, and came back 1e-4 off by the SVD, 1e-12 off by B's LU. (A
    Newton step needs S⁺F only normwise, and refinement keeps the SVD's.)"""

    def __init__(self, U: np.ndarray, sv: np.ndarray, Vt: np.ndarray,
                 S: np.ndarray | None = None) -> None:
        r = int(np.count_nonzero(sv > PINV_RTOL * sv[0])) if sv.size else 0
        self.U, self.sv, self.Vt, self.null = U[:, :r], sv[:r], Vt[:r], Vt[r:].T
        self.left = U[:, r:]
        # (its own copy: B is made on first use, after the caller's arrays may have changed)
        self.S = None if S is None else np.array(S)
        # B's LU (see the class), made on first use; None where it is refused
        self._border: DenseLU | None | Literal[False] = False

    @staticmethod
    def of(S: np.ndarray) -> TruncatedSVD | None:
        """S's truncated SVD: LAPACK's divide-and-conquer SVD (gesdd), where that does not
        converge (it can fail on a finite, badly scaled S: a 20-D polytope's with every
        parameter × 1e12) the QR-iteration one (gesvd); None where neither does (S then has
        no pseudo-inverse at hand, and what needs it is not certified)."""
        try:
            U, sv, Vt = np.linalg.svd(S)
            return TruncatedSVD(U, sv, Vt, S)
        except np.linalg.LinAlgError:
            pass
        try:
            U, sv, Vt = sla.svd(S, lapack_driver="gesvd")
            return TruncatedSVD(U, sv, Vt, S)
        except (np.linalg.LinAlgError, ValueError):
            return None

    def _bordered(self) -> DenseLU | None:
        """B's LU (see the class), or None where S is not kept, the two null spaces'
        dimensions differ or B's pivot ratio is at most RCOND_MIN; made once."""
        if self._border is False:
            lu = None
            S, R, L = self.S, self.null, self.left
            if S is not None and R.shape[1] == L.shape[1]:
                k = R.shape[1]
                f, piv, info = sla.lapack.dgetrf(np.block([[S, L], [R.T, np.zeros((k, k))]]))
                if info == 0:
                    lu = DenseLU(f, piv)
                    if not _pivot_ratio(lu) > RCOND_MIN:
                        lu = None
            self._border = lu
        return self._border

    def solve(self, rhs: np.ndarray, transpose: bool = False, bordered: bool = False
              ) -> np.ndarray:
        """S⁺ rhs (S⁺ᵀ rhs), rhs (N,) or (N, K): with ``bordered`` by B's LU (see the class)
        where it is not refused, else by the SVD."""
        lu = self._bordered() if bordered else None
        if lu is not None:
            N = self.U.shape[0]
            pad = np.zeros((lu.shape[0] - N, *rhs.shape[1:]))
            return lu.solve(np.concatenate([rhs, pad]), trans="T" if transpose else "N")[:N]
        sv = self.sv if rhs.ndim == 1 else self.sv[:, None]
        if transpose:
            return self.U @ ((self.Vt @ rhs) / sv)
        return self.Vt.T @ ((self.U.T @ rhs) / sv)

    def range_miss(self, rhs: np.ndarray) -> np.ndarray:
        """rhs − S S⁺ rhs: the part of rhs (N, K) outside S's range."""
        return rhs - self.U @ (self.U.T @ rhs)

    @property
    def null_error(self) -> float:
        """A bound on the 2-norm error of ``null``'s vectors (each of unit norm): a backward
        stable SVD is exact for S + E, ‖E‖ ≈ u·σ₁, and moves the singular subspace of the
        dropped values by an angle up to ‖E‖ over the gap to the smallest kept one σ_r
        (Wedin, *BIT* 12, 1972): u·σ₁/σ_r, with NULL_SLACK ulps' margin."""
        if not self.sv.size:
            return np.inf
        return NULL_SLACK * float(np.finfo(float).eps * self.sv[0] / self.sv[-1])


def _factor_stack(S: np.ndarray, n: int | None = None) -> list[Factor]:
    """`_factor_one` for a stack of small dense S (k, N, N) at once: S⁻¹ by batched LAPACK
    calls (`Inverse`), rcond = 1/(‖S‖₁‖S⁻¹‖₁). An S that is not finite, singular or
    ill-conditioned (rcond <= RCOND_MIN) goes through `_factor_one` (its SVD).

    With ``n`` (the number of variables; only for a polyhedral program, whose DΠ is a
    diagonal of 0s and 1s) from order REDUCE_MIN on, each S⁻¹ is made from the inverse of
    the smaller system of its active rows (`_invert_reduced`)."""
    inv = np.zeros(S.shape)
    ok = np.isfinite(S).all(axis=(1, 2))
    if n is not None and S.shape[1] >= REDUCE_MIN:
        _invert_reduced(S, inv, ok, n)
    else:
        _invert(S, inv, ok, np.flatnonzero(ok))
    inv[~ok] = np.nan  # (not read: such an S goes through `_factor_one`)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        norms = np.abs(S).sum(axis=1).max(axis=1) * np.abs(inv).sum(axis=1).max(axis=1)
        rcond = np.where(ok & (norms > 0), 1.0 / norms, 0.0)
    return [Factor(S[j], Inverse(inv, j), float(rc)) if rc > RCOND_MIN
            else _factor_one(S[j]) for j, rc in enumerate(rcond.tolist())]


def _invert(S: np.ndarray, inv: np.ndarray, ok: np.ndarray, which: np.ndarray) -> None:
    """inv[j] = S[j]⁻¹ for j in ``which`` (one batched call); ok[j] = False where S[j] is
    exactly singular."""
    if not which.size:
        return
    try:
        inv[which] = np.linalg.inv(S[which])
    except np.linalg.LinAlgError:  # an exactly singular S in the stack: one at a time
        for j in which:
            try:
                inv[j] = np.linalg.inv(S[j])
            except np.linalg.LinAlgError:
                ok[j] = False


def _invert_reduced(S: np.ndarray, inv: np.ndarray, ok: np.ndarray, n: int) -> None:
    """`_invert` of every finite S of a polyhedral program by its reduced system, into an
    ``inv`` of zeros (only S⁻¹'s nonzero blocks are written).

    There DΠ = diag(d), d ∈ {0, 1}, and with Z the rows where d = 1 (zero cones, active
    inequalities) and O those where d = 0, S = [[P, A_Zᵀ, 0], [−A_Z, 0, 0], [−A_O, 0, I]]
    in the order (u, v_Z, v_O): v_O enters no other row, so with K = [[P, A_Zᵀ], [−A_Z, 0]]

        S⁻¹ = [[K⁻¹, 0], [A_O K⁻¹_u, I]]   (K⁻¹_u: K⁻¹'s first n rows),

    and S is singular exactly where K is. K is n + |Z| square against N = n + m: the OptNet
    QP's at 60 of 110 constraints active is 3/5 of S's order, a 20-D polytope's with 5 of
    40 faces active 2/5 (1/16 of the flops). Instances are inverted in groups of equal |Z|;
    one whose v-block diagonal is not all 0s and 1s is inverted whole."""
    m = S.shape[1] - n
    diag = np.diagonal(S[:, n:, n:], axis1=1, axis2=2)
    # O: I − DΠ = 1, and nothing else in the column: its u rows (DΠ Aᵀ's) are 0 there (the
    # v-block is I − DΠ, diagonal)
    free = (diag == 1.0) & ~S[:, :n, n:].any(axis=1)
    regular = ok & (free | (diag == 0.0)).all(axis=1)
    _invert(S, inv, ok, np.flatnonzero(ok & ~regular))
    counts = free.sum(axis=1)
    for c in np.unique(counts[regular]).tolist():
        js = np.flatnonzero(regular & (counts == c))
        if c == 0:
            _invert(S, inv, ok, js)
            continue
        order = np.argsort(free[js], axis=1, kind="stable")  # Z rows first, each ascending
        rows_o = n + order[:, m - c :]
        keep = np.concatenate([np.broadcast_to(np.arange(n), (js.size, n)),
                               n + order[:, : m - c]], axis=1)
        # gathered from S and scattered into inv directly (no copies of whole S's)
        g = js[:, None, None]
        try:
            Kinv = np.linalg.inv(S[g, keep[:, :, None], keep[:, None, :]])
        except np.linalg.LinAlgError:  # one is singular: the group one at a time, whole
            _invert(S, inv, ok, js)
            continue
        inv[g, keep[:, :, None], keep[:, None, :]] = Kinv
        # v_O = r_O + A_O u, and S's v_O rows hold −A_O
        inv[g, rows_o[:, :, None], keep[:, None, :]] = \
            -S[g, rows_o[:, :, None], np.arange(n)] @ Kinv[:, :n, :]
        inv[g[:, :, 0], rows_o, rows_o] = 1.0  # (the rest of that block is 0)


# Column orderings SuperLU offers that suit S. S is structurally symmetric, which minimum
# degree on Aᵀ + A exploits (for sparsemax, 100× less fill than COLAMD); COLAMD can be better
# on small systems; with dense blocks (the DΠ of PSD cones, which CVXPY's cone order puts
# last) the natural order keeps them as one trailing supernode: on the PSD projection with a
# trace constraint at k = 30 it factors 5× faster than minimum degree, at about the same flops.
ORDERINGS = ("MMD_AT_PLUS_A", "COLAMD", "NATURAL")
# SuperLU's time is not its fill. With the natural order dense blocks fall into large
# supernodes, which it factors several times faster per entry; and each factorization
# computes its ordering again, which for minimum degree costs more than COLAMD, most where
# the factors are sparse. Fill and time, min of 5 on this machine:
#
#   S                               MMD_AT_PLUS_A     COLAMD            NATURAL
#   PSD trace projection, k = 30    442k, 117 ms      436k, 14 ms       435k, 11 ms
#   OptNet QP                       19.6k, 1.21 ms    23.9k, 1.03 ms    25.3k, 0.81 ms
#   box least squares, dense A      29.6k, 1.59 ms    34.2k, 2.26 ms    51.5k, 1.14 ms
#   random sparse, n = 500, 1%      55.6k, 4.9 ms     86.7k, 4.5 ms     97.9k, 3.6 ms
#   sparsemax, n = 1,000            7.0k, 0.77 ms     9.9k, 0.23 ms     (not probed)
#   sparsemax, n = 100              702, 50 µs        1.9k, 128 µs      (not probed)
#   softmax, n = 1,000              524k, 11.2 ms     526k, 15.1 ms     (not probed)
#
# So the natural order where its fill is within NATURAL_SLACK of the least, else the first
# of COLAMD and minimum degree within FILL_SLACK of it (`_best_ordering`); of these rows
# only softmax at n = 1,000 then factors slower than its fastest ordering (1.35×).
ORDERING_PREFERENCE = ("COLAMD", "MMD_AT_PLUS_A")
NATURAL_SLACK = 2.0
FILL_SLACK = 1.5
# Probe factorizations per ordering where the choice is timed (the fastest counts).
TIMED_PROBES = 3
# The natural order is probed only where its fill cannot run away: the envelope of S's
# symmetric pattern below the diagonal (twice which holds L + U without pivoting) at most
# ENVELOPE_RATIO times the least fill of the other orderings.
ENVELOPE_RATIO = 4.0
# Where L + U has at most THIN_FILL entries per column, SuperLU's supernodes (panels,
# relaxed supernodes) only cost setup (about 10–20% slower on sparsemax's thin factors).
THIN_FILL = 8
_NO_SUPERNODES = {"panel_size": 1, "relax": 1}
# A sparse matrix of order DENSE_LU_MIN … DENSE_LU_MAX with at least DENSE_LU_FILL of its
# entries stored is factored by LAPACK's dense LU (`splu`, `DenseLU`), not SuperLU.
DENSE_LU_FILL = 0.1
DENSE_LU_MIN = 200
DENSE_LU_MAX = 5000


class _Triangle:
    """A dense LU's triangle, as far as this module reads a SuperLU's L and U: its stored
    entries' count and its diagonal."""

    __slots__ = ("nnz", "_diagonal")

    def __init__(self, nnz: int, diagonal: np.ndarray) -> None:
        self.nnz, self._diagonal = nnz, diagonal

    def diagonal(self) -> np.ndarray:
        return self._diagonal


class DenseLU:
    """LAPACK's LU with partial pivoting (getrf) of a sparse matrix made dense, with the parts
    of SciPy's `SuperLU` that this module uses: ``shape``, ``solve(rhs, trans)`` (getrs),
    and ``L``, ``U`` for their entries' counts and U's diagonal."""

    __slots__ = ("lu", "piv", "shape", "L", "U")

    def __init__(self, lu: np.ndarray, piv: np.ndarray) -> None:
        self.lu, self.piv, self.shape = lu, piv, lu.shape
        n = lu.shape[0]
        self.L = _Triangle(n * (n + 1) // 2, np.ones(n))
        self.U = _Triangle(n * (n + 1) // 2, np.diagonal(lu).copy())

    def solve(self, rhs: np.ndarray, trans: str = "N") -> np.ndarray:
        x, _ = _getrs(self.lu, self.piv, rhs, trans=0 if trans == "N" else 1)
        return x


class SuperLU:
    """SciPy's `SuperLU` factorization, freed on the thread that made it.

    SciPy records SuperLU's allocations in a table of the thread that made them and frees
    them only from that table: a factorization made on a pool worker and dropped on the
    caller's thread (with the layer's result) would never be freed (softmax at n = 2,000,
    batch 16: 320 MB a call). Dropped elsewhere, it is sent home (`parallel.send_home`) and
    freed at that thread's next task or factorization; made only on threads that last
    (`parallel.on_a_lasting_thread`: one that ends takes its table with it). Solves, ``L``,
    ``U`` and ``shape`` as SciPy's."""

    __slots__ = ("_lu", "_home", "shape", "solve")

    def __init__(self, lu: spla.SuperLU) -> None:
        self._lu, self._home, self.shape = lu, threading.current_thread(), lu.shape
        self.solve: Callable[..., np.ndarray] = lu.solve  # (rhs, trans="N"): SciPy's own

    @property
    def L(self) -> sp.csc_matrix:
        return self._lu.L

    @property
    def U(self) -> sp.csc_matrix:
        return self._lu.U

    def __del__(self) -> None:
        send_home(self._lu, self._home)


def splu(M: sp.csc_matrix, permc_spec: str = "COLAMD", **options: Any
         ) -> SuperLU | DenseLU:
    """SuperLU of M (SciPy's ``splu``), or where M is of order DENSE_LU_MIN … DENSE_LU_MAX and
    at least DENSE_LU_FILL full, LAPACK's LU of it made dense (`DenseLU`); either raises
    RuntimeError where M is exactly singular.

    There the dense LU is the faster (a 20 × 15 nuclear norm's systems, single-threaded:
    N = 1,260 at 50%, 0.30 against 0.14 s; N = 1,496 at 62%, 0.58 against 0.05 s; its
    bordered systems, N = 1,455 at 17%, 0.10 against 0.05 s), and SuperLU is not safe: in
    a process that had factored such systems, exactly singular ones among them, SuperLU
    crashed the interpreter (SIGSEGV, after BLAS reported illegal arguments to DTRSV from
    its triangular solves; the same matrices factored afresh in order did not). The cost
    model's probe of SuperLU's fill (`_best_ordering`) calls SuperLU itself."""
    N = M.shape[0]
    if DENSE_LU_MIN <= N <= DENSE_LU_MAX and M.shape[1] == N \
            and M.nnz >= DENSE_LU_FILL * N * N:
        lu, piv, info = sla.lapack.dgetrf(M.toarray())
        if info > 0:
            raise RuntimeError("Factor is exactly singular")
        return DenseLU(lu, piv)
    return on_a_lasting_thread(
        lambda: SuperLU(spla.splu(M, permc_spec=permc_spec, **options)))


def _best_ordering(S: sp.csc_matrix, timed: bool = False) -> tuple[str, float]:
    """The ordering to factor S with, and its fill nnz(L + U) (inf if S is singular under
    every ordering): the natural order where its fill is within NATURAL_SLACK of the least,
    else the first of ORDERING_PREFERENCE whose fill is within FILL_SLACK of it (one probe
    factorization each; the natural order probed only where its envelope cannot run away).
    A function of S alone: the fastest ordering by a timed probe flipped from one process
    to the next where two tie (softmax's S: COLAMD and minimum degree at 183 and 189 µs, the
    other one in 1 process of 10), and with it the last bits of every later solve.

    With ``timed`` (`Layer.tune`, which times its choices on the user's sample and keeps
    them in the tuning), the fastest of the orderings that factor S instead, each timed
    TIMED_PROBES times: fill alone misleads where orderings of about equal fill differ by
    how SuperLU's supernodes fall (up to 1.75× on a box-constrained least squares with a
    dense 100 × 60 matrix)."""
    fill: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for spec in ORDERINGS:
        if spec == "NATURAL":
            least = min(fill.values(), default=np.inf)
            if not _envelope(S) <= ENVELOPE_RATIO * least:
                continue
        for _ in range(TIMED_PROBES if timed else 1):
            t0 = time.perf_counter()
            try:
                lu = spla.splu(S, permc_spec=spec)
                fill[spec] = float(lu.L.nnz + lu.U.nnz)
            except RuntimeError:  # singular: no information
                fill[spec] = np.inf
                break
            seconds[spec] = min(seconds.get(spec, np.inf), time.perf_counter() - t0)
    least = min(fill.values())
    if not np.isfinite(least):
        return ORDERINGS[0], np.inf
    if timed:
        best = min((spec for spec in fill if np.isfinite(fill[spec])),
                   key=lambda spec: seconds[spec])
    elif fill.get("NATURAL", np.inf) <= NATURAL_SLACK * least:
        best = "NATURAL"
    else:
        best = next(spec for spec in ORDERING_PREFERENCE
                    if spec in fill and fill[spec] <= FILL_SLACK * least)
    return best, fill[best]


def _envelope(S: sp.csc_matrix) -> int:
    """Entries of the envelope (profile) of S + Sᵀ's pattern below the diagonal: per column j,
    j minus its first row (Σ over columns), the room LU without pivoting fills."""
    C = (abs(S) + abs(S.T)).tocsc()
    C.sort_indices()
    n = C.shape[0]
    first = np.full(n, n, dtype=np.int64)
    nonempty = np.diff(C.indptr) > 0
    first[nonempty] = C.indices[C.indptr[:-1][nonempty]]
    cols = np.arange(n)
    return int(np.maximum(cols - first, 0).sum())


def _factor_sparse_one(S: sp.csc_matrix, ordering: str = "COLAMD",
                       supernodes: bool = True) -> Factor:
    """SuperLU of one sparse S (`splu`; pivot-ratio condition estimate), and where it is
    singular its pseudo-inverse: `SparsePinv`, or a truncated SVD where S is small enough to
    densify (SVD_MAX) and is at least DENSE_LU_FILL full, or `SparsePinv` fails or guesses a
    null space above PINV_GUESS_MAX of S's order."""
    if not np.all(np.isfinite(S.data)):
        return Factor(S, None, 0.0)
    try:
        lu = splu(S, permc_spec=ordering, **({} if supernodes else _NO_SUPERNODES))
        rc = _pivot_ratio(lu)
    except RuntimeError:  # exactly singular
        lu, rc = None, 0.0
    if rc > RCOND_MIN:
        return Factor(S, lu, rc, ordering=ordering)
    N = S.shape[0]
    full = N <= SVD_MAX and S.nnz >= DENSE_LU_FILL * N * N  # (its dense SVD is the cheaper)
    sparse = None if full else SparsePinv.factor(S, ordering)
    pinv: SparsePinv | TruncatedSVD | None = sparse
    if N <= SVD_MAX and (sparse is None or sparse.guess > PINV_GUESS_MAX * N):
        pinv = TruncatedSVD.of(S.toarray())
    return Factor(S, lu, rc, pinv, ordering=ordering)


class SparsePinv:
    """S⁺ of a singular sparse S, without densifying it: one sparse LU of the augmented matrix

        K = [[δI, S], [Sᵀ, −δI]],   δ = √u·σ̂,  σ̂ = √(‖S‖₁‖S‖∞) >= σ_max(S),

    regular (its eigenvalues are ±√(σᵢ² + δ²), its condition about σ̂/δ = u^(-1/2)). Its solves
    give Tikhonov's regularized least-squares solutions

        K [p; q] = [r; 0]:  q = (SᵀS + δ²I)⁻¹ Sᵀ r,      K [p; q] = [0; r]:  p = (SSᵀ + δ²I)⁻¹ S r.

    ``null`` (``left``): an orthonormal basis of S's right (left) null space, by subspace
    (inverse) iteration with (SᵀS + δ²I)⁻¹ (K [p; q] = [0; −z/δ] gives q; (SSᵀ + δ²I)⁻¹:
    K [p; q] = [z/δ; 0] gives p) from a fixed random block, which amplifies the null space by
    1/δ² against 1/(σ² + δ²) elsewhere, then Rayleigh–Ritz (the SVD of S Z, Z orthonormal):
    the Ritz vectors whose values are at most PINV_RTOL·σ̂. The block doubles while every one
    of its vectors comes out null.

    ``solve``: with R and L orthonormal bases of the right and left null spaces, the bordered
    matrix B = [[S, L], [Rᵀ, 0]] is regular, and B [x; λ] = [r; 0] gives Rᵀx = 0 and
    S x = r − L Lᵀ r, i.e. x = S⁺r; Bᵀ likewise gives S⁺ᵀr (one sparse LU of B, made on first
    use: exact to rounding, like the SVD). Where B's LU is refused (pivot ratio at most
    RCOND_MIN, or the two null spaces' dimensions disagree: singular values of S near δ, which
    the inverse iteration cannot tell from 0), S up to SVD_MAX is made dense for its
    `TruncatedSVD`, which then answers ``null`` and ``solve``; above, iterated Tikhonov
    regularization,
    x ← x + T(r − S x) (Engl, Hanke and Neubauer, *Regularization of Inverse Problems*,
    §5.1), each iterate projected off the null space (for Sᵀ, the left one): it converges at
    the rate δ²/(σ² + δ²) in the direction of each singular value σ (slowly where σ is near
    δ), and the projection removes what rounding in T leaves along the null space, amplified
    by 1/δ² where r is not in S's range."""

    def __init__(self, S: sp.csc_matrix, lu: SuperLU | DenseLU, delta: float, scale: float,
                 guess: int, ordering: str | None = None) -> None:
        self.S, self.lu, self.delta, self.scale = S, lu, delta, scale
        self._null: dict[bool, np.ndarray] = {}
        self._guess = guess  # the null space's dimension, estimated (see `factor`)
        self._ordering = ordering
        # B's LU; False: not made yet
        self._border: SuperLU | DenseLU | None | Literal[False] = False
        self._dense: TruncatedSVD | None = None  # where B's LU is refused, S up to SVD_MAX

    @classmethod
    def factor(cls, S: sp.csc_matrix, ordering: str | None = None) -> SparsePinv | None:
        """K's LU, or None where S is not finite or K's LU fails."""
        if not np.all(np.isfinite(S.data)):
            return None
        absS = abs(S)
        scale = float(np.sqrt(np.asarray(absS.sum(axis=0)).max(initial=0.0)
                              * np.asarray(absS.sum(axis=1)).max(initial=0.0)))
        if not scale > 0:
            return None
        delta = np.sqrt(np.finfo(float).eps) * scale
        eye = sp.identity(S.shape[0], format="csc")
        K = sp.bmat([[delta * eye, S], [S.T, -delta * eye]], format="csc")
        try:
            lu = splu(K, permc_spec=ordering or "COLAMD")
        except RuntimeError:
            return None
        # the null space's dimension, guessed as the number of pivots of S + δI's LU at most
        # PINV_PIVOT·δ (the subspace iteration starts with a block that size, and grows it
        # where it proves too small)
        try:
            d = np.abs(splu((S + delta * eye).tocsc(), permc_spec=ordering or "COLAMD"
                            ).U.diagonal())
            guess = int(np.count_nonzero(d <= PINV_PIVOT * delta))
        except RuntimeError:
            guess = 0
        return cls(S, lu, delta, scale, guess, ordering)

    @property
    def guess(self) -> int:
        """The null space's dimension as guessed from S + δI's pivots (see `factor`)."""
        return self._guess

    @property
    def null_known(self) -> bool:
        """Whether S's right null space has been computed (`null`)."""
        return False in self._null

    def regularized(self, rhs: np.ndarray, transpose: bool = False) -> np.ndarray:
        """A least-squares solution of S x = rhs (Sᵀ x = rhs) for a Newton step, without the
        null space: PINV_NEWTON_STEPS iterated-Tikhonov steps x ← x + T(rhs − S x) from 0 (see
        the class), stopped where a step changes x by at most 4u of its max-norm. Along a
        singular value σ >> δ each step leaves a factor δ²/(σ² + δ²) of the error: the
        minimum-norm solution there to rounding. Along σ << δ, where the minimum-norm
        solution takes 1/σ (or 0 within PINV_RTOL of S's scale), it takes at most
        PINV_NEWTON_STEPS·σ/δ²: a step damped along S's (near-)null directions (Levenberg–
        Marquardt's with μ = δ²), which move no residual to first order. T's output lies in
        S's row space up to its solves' rounding, which K's conditioning (u^(-1/2)) amplifies
        along the null space (by up to about 1% of the step where r lies outside S's
        range): that moves the point along directions that change no residual either."""
        M = self.S.T if transpose else self.S
        x = self._tikhonov(rhs, transpose)
        for _ in range(PINV_NEWTON_STEPS - 1):
            dx = self._tikhonov(rhs - M @ x, transpose)
            x = x + dx
            if np.abs(dx).max(initial=0.0) <= 4 * np.finfo(float).eps * np.abs(x).max(
                    initial=0.0):
                break
        return x

    def _tikhonov(self, r: np.ndarray, transpose: bool) -> np.ndarray:
        N = self.S.shape[0]
        zero = np.zeros_like(r)
        sol = self.lu.solve(np.concatenate([zero, r] if transpose else [r, zero]))
        return sol[:N] if transpose else sol[N:]

    def _bordered(self) -> SuperLU | DenseLU | None:
        """B's LU (see the class), or None where it is refused; made once."""
        if self._border is False:
            R, L = self._null_space(False), self._null_space(True)
            lu = None
            if R.shape[1] == L.shape[1]:
                k = R.shape[1]
                B = sp.bmat([[self.S, sp.csc_matrix(L)], [sp.csc_matrix(R.T), None]],
                            format="csc") if k else self.S
                try:
                    lu = splu(B, permc_spec=self._ordering or "COLAMD")
                    if not _pivot_ratio(lu) > RCOND_MIN:
                        lu = None
                except RuntimeError:
                    lu = None
            if lu is None and self.S.shape[0] <= SVD_MAX:
                self._dense = TruncatedSVD.of(self.S.toarray())
            self._border = lu
        return self._border

    def _exact(self, rhs: np.ndarray, transpose: bool) -> np.ndarray | None:
        """S⁺ rhs by B's LU, or by the dense SVD where that is refused; None where neither."""
        lu = self._bordered()
        if lu is not None:
            pad = np.zeros((lu.shape[0] - self.S.shape[0], *rhs.shape[1:]))
            return lu.solve(np.concatenate([rhs, pad]),
                            trans="T" if transpose else "N")[: self.S.shape[0]]
        return None if self._dense is None else self._dense.solve(rhs, transpose)

    def solve(self, rhs: np.ndarray, transpose: bool = False) -> np.ndarray:
        """S⁺ rhs (S⁺ᵀ rhs), rhs (N,) or (N, K). With a null space of at most PINV_BORDER_MAX
        dimensions, by B's LU (`_exact`); with a larger one (B's dense border would dominate
        its LU), by iterated Tikhonov, until a step changes x by at most 4u of its max-norm,
        and by `_exact` where that takes more than PINV_STEPS steps."""
        if self._null_space(False).shape[1] <= PINV_BORDER_MAX or self._border is not False:
            x = self._exact(rhs, transpose)
            if x is not None:
                return x
        M = self.S.T if transpose else self.S
        Z = self._null_space(transpose)
        x = np.zeros_like(rhs)
        for _ in range(PINV_STEPS):
            dx = self._tikhonov(rhs - M @ x, transpose)
            dx -= Z @ (Z.T @ dx)
            x = x + dx
            if np.abs(dx).max(initial=0.0) <= 4 * np.finfo(float).eps * np.abs(x).max(
                    initial=0.0):
                return x
        if self._border is False:  # not converged: the exact solve after all
            exact = self._exact(rhs, transpose)
            if exact is not None:
                return exact
        return x

    def range_miss(self, rhs: np.ndarray) -> np.ndarray:
        """rhs − S S⁺ rhs: the part of rhs (N, K) outside S's range."""
        return rhs - self.S @ self.solve(rhs)

    @property
    def null_error(self) -> float:
        """`TruncatedSVD.null_error` where ``null`` is the dense SVD's; inf for the inverse
        iteration's Ritz vectors (no bound on their error is at hand)."""
        return np.inf if self._dense is None else self._dense.null_error

    @property
    def null(self) -> np.ndarray:
        """Orthonormal basis of S's right null space, (N, k); computed on first use (the dense
        SVD's where B's LU is refused, see the class)."""
        R = self._null_space(False)
        if R.shape[1] <= PINV_BORDER_MAX:
            self._bordered()
        return R if self._dense is None else self._dense.null

    def _null_space(self, left: bool) -> np.ndarray:
        """S's right (``left``: left) null space, computed once (the left one starts from the
        right one's dimension, the two being equal)."""
        Z = self._null.get(left)
        if Z is None:
            other = self._null.get(not left)
            Z = self._null[left] = self._iterate(left, self._guess if other is None
                                                 else other.shape[1])
        return Z

    def _iterate(self, left: bool, guess: int) -> np.ndarray:
        """Subspace iteration (see the class) until the null vectors' span stops moving: by
        at most 1e-13 (sine of the largest angle), or by more than half its last move (the
        rounding floor), after at least PINV_POWER_STEPS and at most PINV_POWER_MAX steps.
        Each step gains a factor δ²/(σ² + δ²), σ the smallest nonzero singular value: two
        steps suffice where σ >> δ, where σ is within 10δ it takes several."""
        N = self.S.shape[0]
        M = self.S.T if left else self.S
        rng = np.random.default_rng(0)
        k = min(N, guess + PINV_BLOCK)
        Z = np.zeros((N, 0))
        while True:
            Z = np.linalg.qr(np.concatenate([Z, rng.standard_normal((N, k - Z.shape[1]))],
                                            axis=1))[0]
            zero = np.zeros((N, k))
            null = np.zeros(k, dtype=bool)
            prev: np.ndarray | None = None
            last = np.inf
            for step in range(PINV_POWER_MAX):
                if left:
                    Z = self.lu.solve(np.concatenate([Z / self.delta, zero]))[:N]
                else:
                    Z = self.lu.solve(np.concatenate([zero, -Z / self.delta]))[N:]
                Z = np.linalg.qr(Z)[0]
                if step + 1 < PINV_POWER_STEPS:
                    continue
                _, sv, Wt = np.linalg.svd(M @ Z, full_matrices=False)
                null = sv <= PINV_RTOL * self.scale
                W = Z @ Wt[null].T
                if prev is not None and prev.shape == W.shape:
                    move = np.abs(W - prev @ (prev.T @ W)).max(initial=0.0)
                    if move <= 1e-13 or move > 0.5 * last:
                        break
                    last = move
                prev = W
            if not null.all() or k >= N:
                return Z @ Wt[null].T
            k = min(N, 2 * k)  # (Z, iterated, kept: the new columns start random)


def low_rank_groups(t: ConeTemplate) -> frozenset:
    """The cone groups (see `cones.group_entries`) whose blocks of DΠ S may keep as base·I plus
    a low-rank term (`LowRankS`): every PSD cone where Σ kk >= LOW_RANK_MIN, and second-order
    cones of size >= SOC_LOW_RANK_MIN. Depends on the template alone."""
    groups = cone_groups(t.dims)
    psd = sum(count * k * (k + 1) // 2 for kind, k, count in groups if kind == "psd")
    return frozenset((kind, k) for kind, k, _ in groups
                     if (kind == "psd" and psd >= LOW_RANK_MIN)
                     or (kind == "soc" and k >= SOC_LOW_RANK_MIN))


def low_rank_mask(t: ConeTemplate, D: DProjection) -> tuple[np.ndarray, int]:
    """(B,) bool: the instances whose S is kept as `LowRankS`, those whose blocks of
    `low_rank_groups` are base·I up to a term of rank ρ <= LOW_RANK_MAX·Σ kk (Σ over those
    blocks' sizes); and the largest ρ among them."""
    groups = low_rank_groups(t)
    if not groups:
        return np.zeros(D.batch_size, dtype=bool), 0
    total = sum(count * (k if kind == "soc" else k * (k + 1) // 2)
                for kind, k, count in cone_groups(t.dims) if (kind, k) in groups)
    rank = D.low_rank(groups)
    low = rank <= LOW_RANK_MAX * total
    return low, int(rank[low].max(initial=0))


def _low_rank_parts(ops: BatchOps, D: DProjection, layout: SparseLayout) -> list[LowRankS]:
    """S = S₀ + U Vᵀ (`LowRankS`) for each instance of ``ops``: DΠ_K = base·I + Q diag(h) Qᵀ
    on each block K of `low_rank_groups` (`DProjection.low_rank_columns`), so S₀ is S at
    DΠ_K = base·I (sparse, ``layout``'s pattern, explicit zeros dropped),
    U = [Aᵀ_K; −E_K] Q diag(h) and V = E_K Q (E_K: the block's rows of the v-block)."""
    t = ops.template
    n = t.n
    B = D.batch_size
    groups = low_rank_groups(t)
    parts = [D.low_rank_columns(j, groups) for j in range(B)]
    dvals0 = np.concatenate([
        D.values(skip=groups),
        np.array([np.concatenate([np.full(idx.size, b) for idx, b, _, _ in cones])
                  for cones in parts]).reshape(B, -1)], axis=1)
    data0 = layout.values(ops, dvals0)
    del dvals0
    # A's pattern in each block's rows, the same for every instance: its stored entries,
    # their positions within the block, and the columns of u they reach
    # (and Aᵀ_K's CSR structure: the entries `where` in CSR order, its indices and pointers)
    blocks = []
    for idx, _, _, _ in parts[0] if parts else ():
        where, local = layout.rows_of_A(idx)
        touched, col = np.unique(ops.cols[where], return_inverse=True)
        order = np.lexsort((local, col))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=touched.size))])
        # Aᵀ_K's pattern, made once: each instance sets its values (``data``) and multiplies
        AKt = sp.csr_matrix((np.zeros(order.size), local[order], indptr),
                            shape=(touched.size, idx.size))
        blocks.append((where[order], AKt, touched))
    coupling = _coupling_pattern(n, [idx for idx, _, _, _ in parts[0]] if parts else [], blocks)
    out = []
    last: tuple[np.ndarray, sp.csc_matrix] | None = None
    for j, cones in enumerate(parts):
        if last is not None and np.array_equal(last[0], data0[j]):
            S0 = last[1]  # the same S₀ (fixed A and P): one object, never written to
        else:
            S0 = layout.matrix(data0[j]).copy()  # (the layout's own index arrays stay intact)
            S0.eliminate_zeros()
            last = (data0[j], S0)
        Us, Vs, shift = [], [], []
        shared = all(base in (0.0, 1.0) for _, base, _, _ in cones)
        for (idx, base, Q, h), (where, AKt, touched) in zip(cones, blocks, strict=True):
            if base == 1.0:  # the block's rows of S₀'s v-block are 0 (see `Woodbury`)
                shift.append(n + idx)
            # U's rows: Aᵀ_K Q diag(h) (from the stored entries of A in the block's rows) over
            # −Q diag(h), written in place
            U = np.empty((touched.size + idx.size, Q.shape[1]))
            low = np.multiply(Q, -h, out=U[touched.size :])
            AKt.data = ops.a[j, where]
            np.negative(AKt @ low, out=U[: touched.size])
            Us.append((np.concatenate([touched, n + idx]), U))
            Vs.append((n + idx, Q))
        Uall, Vall = _stack_columns(Us), _stack_columns(Vs)
        form = None
        if coupling is not None and cones and Uall[1].size >= FACTORED_U_MIN:
            G = coupling.at(ops.a[j])
            form = LowRankForm(G, G.T, Vall[1], np.concatenate([h for _, _, _, h in cones]), True)
        out.append(LowRankS(S0, Uall, Vall,
                            np.concatenate(shift) if shift else np.zeros(0, dtype=int), layout,
                            shared, form))
    return out


class _Coupling:
    """The pattern of G (`LowRankS.form`) for the blocks of `_low_rank_parts`: the same for
    every instance (A's pattern and the blocks' rows are the template's), so made once a
    call; ``at`` sets an instance's values. ``source``: each stored entry's index into A's
    values, −1 for the −I of the blocks' own rows."""

    __slots__ = ("indices", "indptr", "source", "shape")

    def __init__(self, indices: np.ndarray, indptr: np.ndarray, source: np.ndarray,
                 shape: tuple[int, int]) -> None:
        self.indices, self.indptr, self.source, self.shape = indices, indptr, source, shape

    def at(self, a: np.ndarray) -> sp.csr_matrix:
        data = np.where(self.source >= 0, a[np.maximum(self.source, 0)], -1.0)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=self.shape)


def _coupling_pattern(n: int, rows: list[np.ndarray],
                      blocks: list[tuple[np.ndarray, sp.csr_matrix, np.ndarray]]
                      ) -> _Coupling | None:
    """G's pattern (`_Coupling`) from the blocks' rows of the v-block (``rows``, as `idx` in
    `_low_rank_parts`) and their Aᵀ_K patterns (``blocks``), over the row unions that
    `_stack_columns` makes of U's and V's rows. None without blocks."""
    if not rows:
        return None
    urows = [np.concatenate([touched, n + idx]) for idx, (_, _, touched) in zip(rows, blocks,
                                                                               strict=True)]
    Ur = urows[0] if len(urows) == 1 else np.unique(np.concatenate(urows))
    Vr = n + rows[0] if len(rows) == 1 else np.unique(np.concatenate([n + i for i in rows]))
    R, C, src = [], [], []
    for idx, (where, AKt, touched) in zip(rows, blocks, strict=True):
        col = np.searchsorted(Vr, n + idx)
        local_rows = np.repeat(np.arange(touched.size), np.diff(AKt.indptr))
        R += [np.searchsorted(Ur, touched[local_rows]), np.searchsorted(Ur, n + idx)]
        C += [col[AKt.indices], col]
        src += [where, np.full(idx.size, -1)]
    R_, C_, src_ = np.concatenate(R), np.concatenate(C), np.concatenate(src)
    order = np.lexsort((C_, R_))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(R_, minlength=Ur.size))])
    return _Coupling(C_[order].astype(np.int32), indptr.astype(np.int32), src_[order],
                     (Ur.size, Vr.size))


def _stack_columns(blocks: list[tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """[M₁ M₂ …] side by side, each Mᵢ given as (its nonzero rows, their values (|rows|, ρᵢ)):
    returned the same way, over the union of the rows (ascending)."""
    if len(blocks) == 1:
        return blocks[0]
    rows = np.unique(np.concatenate([r for r, _ in blocks]))
    out = np.zeros((rows.size, sum(M.shape[1] for _, M in blocks)))
    lo = 0
    for r, M in blocks:
        out[np.searchsorted(rows, r), lo : lo + M.shape[1]] = M
        lo += M.shape[1]
    return rows, out


class LowRankForm(NamedTuple):
    """U Vᵀ of a `LowRankS` in factored form: U = G Q diag(h) and V = Q on their rows where
    ``side`` (S itself), U = Q and V = G Q diag(h) where not (Sᵀ); G = [Aᵀ_K; −I] sparse,
    Gt = Gᵀ."""

    G: sp.spmatrix
    Gt: sp.spmatrix
    Q: np.ndarray
    h: np.ndarray
    side: bool


class LowRankS:
    """S = S₀ + U Vᵀ, with S₀ sparse and U, V (N × ρ) given by their nonzero rows
    (``U[Ur] = Ub``, ``V[Vr] = Vb``): S where DΠ's PSD blocks are 0 or I up to a low-rank term
    (`_low_rank_parts`), without S's dense kk × kk blocks. Products with S and Sᵀ (``T``) cost
    nnz(S₀) + (|Ur| + |Vr|)ρ.

    ``form`` (`LowRankForm`), where at hand, is U Vᵀ's factored form from DΠ's blocks:
    U = G Q diag(h) and V = Q on their rows (``side`` True; False for Sᵀ, whose U and V are
    those swapped), with G = [Aᵀ_K; −I] sparse (|Ur| × |Vr|). Products with U and Vᵀ
    (`u_times`, `vt_times`) then read Q alone, not also U, which is twice its size: half the
    memory traffic of every Woodbury solve and product with S, which at a 50 × 50 PSD block
    (ρ = 200) is most of their time."""

    __slots__ = ("S0", "Ur", "Ub", "Vr", "Vb", "shape", "zero_rows", "layout", "shared",
                 "form", "_abs_max")

    def __init__(self, S0: sp.spmatrix, U: tuple[np.ndarray, np.ndarray],
                 V: tuple[np.ndarray, np.ndarray], zero_rows: np.ndarray,
                 layout: SparseLayout, shared: bool = True, form: LowRankForm | None = None
                 ) -> None:
        self.S0 = S0
        self.form = form
        self.layout = layout  # S₀'s (`sparse_layout(t, low_rank=True)`): its LUs and orderings
        self.Ur, self.Ub = U
        self.Vr, self.Vb = V
        self.shape = S0.shape
        # the block rows of the v-block where S₀'s diagonal is 0 (the blocks at base I)
        self.zero_rows = zero_rows
        # whether every block sits at base 0 or I, so that S₀ depends on A, P and DΠ outside
        # the blocks only and other instances and Newton steps may share its LU (`Woodbury`);
        # a second-order cone between the cone and its polar has its own base
        self.shared = shared
        self._abs_max: float | None = None  # (S is not modified once made)

    @property
    def rank(self) -> int:
        return self.Ub.shape[1]

    @property
    def T(self) -> LowRankS:
        f = self.form
        return LowRankS(self.S0.T, (self.Vr, self.Vb), (self.Ur, self.Ub), self.zero_rows,
                        self.layout, self.shared,
                        None if f is None else f._replace(side=not f.side))

    def u_times(self, z: np.ndarray) -> np.ndarray:
        """U z on U's rows (``Ur``), z (ρ,) or (ρ, K)."""
        if self.form is None:
            return self.Ub @ z
        f = self.form
        if f.side:
            return f.G @ (f.Q @ (f.h * z if z.ndim == 1 else f.h[:, None] * z))
        return f.Q @ z

    def vt_times(self, x: np.ndarray) -> np.ndarray:
        """Vᵀ x, x given on V's rows (``Vr``)."""
        if self.form is None:
            return self.Vb.T @ x
        f = self.form
        if f.side:
            return f.Q.T @ x
        z = f.Q.T @ (f.Gt @ x)
        return f.h * z if z.ndim == 1 else f.h[:, None] * z

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        out = self.S0 @ x
        out[self.Ur] += self.u_times(self.vt_times(x[self.Vr]))
        return out

    def shifted(self) -> sp.csc_matrix:
        """S₀ + ε Σ eᵢeᵢᵀ over ``zero_rows``, ε = √u·max|S₀| (`Woodbury`)."""
        if not self.zero_rows.size:
            return self.S0
        eps = np.sqrt(np.finfo(float).eps) * np.abs(self.S0.data).max(initial=1.0)
        r = self.zero_rows
        return (self.S0 + sp.csc_matrix((np.full(r.size, eps), (r, r)), shape=self.shape)
                ).tocsc()

    def equals(self, other: LowRankS) -> bool:
        """Whether ``other`` holds the same S₀, U and V, exactly. (U's and V's first rows are
        compared first: where DΠ's blocks moved they differ, and the whole arrays, ρ columns
        each, are not read.)"""
        if self.Ub.shape != other.Ub.shape or self.Vb.shape != other.Vb.shape \
                or not (np.array_equal(self.Vb[:1], other.Vb[:1])
                        and np.array_equal(self.Ub[:1], other.Ub[:1])):
            return False
        a, b = self.S0, other.S0
        return (a is b or a.shape == b.shape and np.array_equal(a.indptr, b.indptr)
                and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data)) \
            and all(np.array_equal(x, y) for x, y in (
                (self.Ur, other.Ur), (self.Ub, other.Ub), (self.Vr, other.Vr),
                (self.Vb, other.Vb)))

    def abs_max(self) -> float:
        """An upper bound of S's largest entry: |S₀|'s plus max ‖U_i‖₂ · max ‖V_j‖₂ (read by
        every refined solve: computed once)."""
        if self._abs_max is None:
            low = (np.sqrt(np.square(self.Ub).sum(axis=1).max(initial=0.0))
                   * np.sqrt(np.square(self.Vb).sum(axis=1).max(initial=0.0)))
            self._abs_max = float(np.abs(self.S0.data).max(initial=0.0) + low)
        return self._abs_max

    def norm1(self, columns: np.ndarray | None = None) -> float:
        """An upper bound of ‖S‖₁: the column sums of |S₀| (``columns`` where at hand) plus
        those of |U| |V|ᵀ."""
        col = np.asarray(abs(self.S0).sum(axis=0)).ravel() if columns is None \
            else columns.copy()
        col[self.Vr] += np.abs(self.Vb) @ np.abs(self.Ub).sum(axis=0)
        return float(col.max(initial=0.0))

    def U(self) -> sp.csc_matrix:
        return _rows_matrix(self.Ur, self.Ub, self.shape[0])

    def V(self) -> sp.csc_matrix:
        return _rows_matrix(self.Vr, self.Vb, self.shape[0])

    def tocsc(self) -> sp.csc_matrix:
        """S itself, sparse (with its dense blocks)."""
        return (self.S0 + self.U() @ self.V().T).tocsc()

    def toarray(self) -> np.ndarray:
        return self.tocsc().toarray()


class OperatorS:
    """One instance's S of (1) given by its products alone (`s_products`): instance ``j`` of
    the batch (``ops``, ``D``). Where a nearby matrix's factorization serves S (solves
    refined on S, `Linearization.solve`), S's low-rank form (`LowRankS`), whose U and V are
    N × ρ, is not made: only where S itself has to be factored (`low_rank`).

    ``abs_max`` bounds S's entries: DΠ of a projection onto a convex set is symmetric with
    eigenvalues in [0, 1], so |(I − DΠ)_kl| <= 1 and |(Aᵀ DΠ)_il| <= ‖A's column i‖₂."""

    __slots__ = ("ops", "D", "j", "layout", "shape", "transposed", "_one", "_abs_max",
                 "_low_rank")

    def __init__(self, ops: BatchOps, D: DProjection, j: int, layout: SparseLayout,
                 transposed: bool = False) -> None:
        self.ops, self.D, self.j, self.layout = ops, D, j, layout
        N = ops.template.n + ops.template.m
        self.shape = (N, N)
        self.transposed = transposed
        self._one: tuple[BatchOps, DProjection] | None = None  # (instance j alone)
        self._abs_max: float | None = None
        self._low_rank: LowRankS | None = None

    def _instance(self) -> tuple[BatchOps, DProjection]:
        if self._one is None:
            at = np.array([self.j])
            self._one = (self.ops.take(at), self.D.take(at))
        return self._one

    @property
    def T(self) -> OperatorS:
        out = OperatorS(self.ops, self.D, self.j, self.layout, not self.transposed)
        out._one, out._abs_max, out._low_rank = self._one, self._abs_max, self._low_rank
        return out

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        ops, D = self._instance()
        return s_products(ops, D, x[None], self.transposed)[0]

    def abs_max(self) -> float:
        if self._abs_max is None:
            a, h = self.ops.a[self.j], self.ops.h[self.j]
            columns = np.sqrt(times_t((a * a)[None], self.ops._Ec)[0])
            self._abs_max = float(max(np.abs(a).max(initial=0.0), np.abs(h).max(initial=0.0),
                                      columns.max(initial=0.0), 1.0))
        return self._abs_max

    def low_rank(self) -> LowRankS:
        """S = S₀ + U Vᵀ (`_low_rank_parts`), made on first use."""
        if self._low_rank is None:
            ops, D = self._instance()
            self._low_rank = _low_rank_parts(ops, D, self.layout)[0]
        return self._low_rank.T if self.transposed else self._low_rank

    def tocsc(self) -> sp.csc_matrix:
        """S itself, sparse (with its dense blocks)."""
        return self.low_rank().tocsc()


def _rows_matrix(rows: np.ndarray, M: np.ndarray, N: int) -> sp.csc_matrix:
    """The N × ρ sparse matrix whose rows ``rows`` are M (and the others zero)."""
    C = sp.coo_matrix(M)
    return sp.csc_matrix((C.data, (rows[C.row], C.col)), shape=(N, M.shape[1]))


class BorderedLU:
    """Solves with S = S₀ + U Vᵀ (`LowRankS`) through the sparse LU of the bordered matrix

        [[S₀, U], [Vᵀ, −I]],   whose Schur complement on the border is S₀ + U Vᵀ = S,

    so S⁻¹r (S⁻ᵀr) is the first N entries of its solve with (r, 0). Unlike Woodbury's
    formula (`Woodbury`) it needs no inverse of S₀, which is singular where DΠ's PSD blocks at
    their base overdetermine the program (e.g. X = I − W with a trace constraint). Same
    ``solve(rhs, trans)`` as SuperLU."""

    def __init__(self, lu: SuperLU | DenseLU, N: int) -> None:
        self.lu, self.N = lu, N

    def solve(self, rhs: np.ndarray, trans: str = "N") -> np.ndarray:
        pad = np.zeros((self.lu.shape[0] - self.N, *rhs.shape[1:]))
        return self.lu.solve(np.concatenate([rhs, pad]), trans=trans)[: self.N]


def bordered(S: LowRankS) -> sp.csc_matrix:
    """The bordered matrix [[S₀, U], [Vᵀ, −I]] of `BorderedLU`, sparse."""
    return sp.bmat([[S.S0, S.U()], [S.V().T, -sp.identity(S.rank)]], format="csc")


class Woodbury:
    """Solves with S = S₀ + U Vᵀ (`LowRankS`) from an LU of S₀ (SuperLU) and of the ρ × ρ
    capacitance C = I + Vᵀ S₀⁻¹ U (LAPACK), by the Sherman–Morrison–Woodbury formula

        S⁻¹ r = S₀⁻¹ (r − U C⁻¹ Vᵀ S₀⁻¹ r),      S⁻ᵀ r = S₀⁻ᵀ (r − V C⁻ᵀ Uᵀ S₀⁻ᵀ r)

    (Golub & Van Loan, *Matrix Computations*, §2.1.4): two sparse triangular solves with S₀
    and O(|U| ρ) per right-hand side, and nothing dense of size N. S₀ depends only on A, P and
    DΠ outside the PSD blocks, so one LU of it serves every instance and Newton step that
    share those (`SparseLayout.lu0`).

    Where a PSD block is at base I, S₀ holds its rows as equalities (its v-block rows are 0),
    and is singular wherever another constraint is implied by them (a trace constraint): there
    S₀ is shifted by ε = √u·max|S₀| on those diagonal entries (`LowRankS.shifted`), and the
    formula solves S + εE instead of S. Every solve is iteratively refined on S itself
    (`_refine`, to the caller's tolerance), which removes that shift's error (a contraction
    of about ε‖S⁻¹‖ per step) and the formula's rounding (which grows with the conditioning
    of S₀ and C); should it not converge, the solve goes through the bordered LU
    (`_factor_bordered`) instead, made then."""

    def __init__(self, S: LowRankS, lu0: SharedLU, C: tuple[np.ndarray, np.ndarray]
                 ) -> None:
        self.S, self.lu0, self.C = S, lu0, C
        self._T: LowRankS | None = None  # S.T, made on first use
        self._fallback: Factor | None = None  # `_factor_bordered`, made where refinement fails

    def _matrix(self, trans: str) -> LowRankS:
        if trans == "N":
            return self.S
        if self._T is None:
            self._T = self.S.T
        return self._T

    def apply(self, rhs: np.ndarray, trans: str = "N") -> np.ndarray:
        """The formula, unrefined (for Sᵀ, the same formula with Sᵀ = S₀ᵀ + V Uᵀ)."""
        M, lu0 = self._matrix(trans), self.lu0
        y = lu0.solve(rhs, trans=trans)
        if not M.rank:  # S = S₀
            return y
        z, _ = _getrs(*self.C, M.vt_times(y[M.Vr]), trans=0 if trans == "N" else 1)
        r = rhs.copy()
        r[M.Ur] -= M.u_times(z)
        return lu0.solve(r, trans=trans)

    def solve(self, rhs: np.ndarray, trans: str = "N", tol: float = REFINE_SOLVE_TOL
              ) -> np.ndarray:
        M = self._matrix(trans)
        x = _refine(M, lambda r: self.apply(r, trans), rhs, self.S.abs_max(), tol)
        if x is not None:
            return x
        if self._fallback is None:
            self._fallback = _factor_bordered(self.S)
        return _solve_factored(self._fallback, rhs, trans == "T")


def _factor_low_rank(S: LowRankS) -> Factor:
    """Factor S = S₀ + U Vᵀ: by `Woodbury` where S₀ may be shared (`LowRankS.shared`), its
    (shifted) LU is regular (pivot ratio above S0_RCOND_MIN) and so is C, with
    rcond = 1/(‖S‖₁ ‖S⁻¹‖₁) from the bound `LowRankS.norm1` and Hager and Higham's estimate of
    ‖S⁻¹‖₁ (`norm1_estimate`); otherwise by `_factor_bordered`.
    An S₀ of its own would be factored for this S alone: there the bordered matrix's one LU
    costs less than S₀'s LU, C and the estimate's products, and solves with one triangular
    pair instead of Woodbury's two (l2-ball projection, forward + backward per instance at
    batch 8: n = 1,000 8.7-10.7 against 10.4-11.3 ms, n = 3,000 37 against 48 ms)."""
    layout = S.layout
    if not (np.all(np.isfinite(S.S0.data)) and np.all(np.isfinite(S.Ub))
            and np.all(np.isfinite(S.Vb))):
        return Factor(S, None, 0.0)
    if not S.shared:
        return _factor_bordered(S)
    lu0 = layout.lu0(S)
    if lu0 is not None:
        C = np.eye(S.rank) + lu0.capacitance(S)
        lu, piv, info = sla.lapack.dgetrf(C) if S.rank else (C, np.zeros(0, np.int32), 0)
        if info == 0 and (not S.rank or _rcond_lu(lu, C) > RCOND_MIN):
            wood = Woodbury(S, lu0, (lu, piv))
            with np.errstate(all="ignore"):
                rc = 1.0 / (S.norm1(lu0.columns)
                            * norm1_estimate(wood.apply, lambda r: wood.apply(r, "T"),
                                             S.shape[0]))
            if rc > RCOND_MIN:
                return Factor(S, wood, rc, ordering=layout.ordering)
    return _factor_bordered(S)


def _factor_bordered(S: LowRankS) -> Factor:
    """The LU of S's bordered matrix (`BorderedLU`, pivot ratio as rcond); where that is
    singular, S made sparse and factored as such (`_factor_sparse_one`: its pseudo-inverse)."""
    layout = S.layout
    K = bordered(S)
    ordering = layout.decide(K, bordered=True)
    try:
        lub = splu(K, permc_spec=ordering)
        rc = _pivot_ratio(lub)
    except RuntimeError:  # exactly singular
        rc = 0.0
    if rc > RCOND_MIN:
        return Factor(S, BorderedLU(lub, S.shape[0]), rc, ordering=layout.ordering)
    # (S kept in its low-rank form: a later S is compared with it, `Factor.same_matrix`)
    return replace(_factor_sparse_one(S.tocsc(), layout.ordering or "COLAMD",
                                      layout.supernodes), S=S)


def norm1_estimate(apply: Callable[[np.ndarray], np.ndarray],
                   rapply: Callable[[np.ndarray], np.ndarray], n: int,
                   itmax: int = NORM1_ITERATIONS) -> float:
    """A lower bound of ‖M‖₁, usually within a small factor of it, from products with M
    (``apply``) and Mᵀ (``rapply``) of one vector at a time: Higham and Tisseur's block
    algorithm (*SIAM J. Matrix Anal. Appl.* 21, 2000, Alg. 2.4) with one column, which is
    Hager's method (1984) with Higham's stopping tests (1988). Typically four products.

    The algorithm of ``scipy.sparse.linalg.onenormest(M, t=1)`` (the same estimate, up to
    which of two equal entries is taken), without its `LinearOperator` and block
    bookkeeping, which on a `Woodbury` solve cost several times the products themselves."""
    if n <= 4:  # (as onenormest: exactly, column by column)
        return float(np.abs(apply(np.eye(n))).sum(axis=0).max(initial=0.0))
    x = np.full(n, 1.0 / n)
    est_old = 0.0
    sign_old: np.ndarray | None = None
    seen: set[int] = set()
    at = -1  # the unit vector x is, after the first product
    for k in range(1, itmax + 2):
        y = apply(x)
        est = float(np.abs(y).sum())
        if not np.isfinite(est):  # M is not finite (S⁻¹ of a singular S): no bound
            return np.inf
        if k >= 2 and not est > est_old:
            return est_old
        est_old = est
        if k > itmax:
            break
        sign = np.where(y >= 0, 1.0, -1.0)
        if sign_old is not None and abs(float(sign @ sign_old)) == n:  # parallel: converged
            break
        sign_old = sign
        h = np.abs(rapply(sign))
        j = int(np.argmax(h))
        if k >= 2 and h[j] == h[at] or j in seen:
            break
        seen.add(j)
        at = j
        x = np.zeros(n)
        x[j] = 1.0
    return est_old


def _pivot_ratio(lu: SuperLU | DenseLU) -> float:
    """min |U_ii| / max |U_ii| of a SuperLU factorization: its condition estimate."""
    d = np.abs(lu.U.diagonal())
    return float(d.min() / d.max()) if d.size and d.max() > 0 else 0.0


def _rcond_lu(lu: np.ndarray, S: np.ndarray, anorm: float | None = None) -> float:
    """Reciprocal 1-norm condition estimate from an LU factorization (LAPACK gecon);
    ``anorm``: ‖S‖₁ where already at hand."""
    if anorm is None:
        anorm = np.abs(S).sum(axis=0).max()
    if anorm == 0:
        return 0.0
    rc, info = _gecon(lu, anorm, norm="1")
    return float(rc) if info == 0 else 0.0


def _components(t: ConeTemplate) -> tuple[np.ndarray, np.ndarray, int]:
    """Connected components of the program's coupling graph, whose nodes are its variables and
    rows, joined by A's and P's stored entries and by membership of one cone block: (the
    component of each variable (n,), of each row (m,), their number). Computed once per
    template."""
    cached = t.derived.get("components")
    if cached is None:
        p = pattern(t)
        n, m = t.n, t.m
        first = np.repeat(p.blocks, p.block_sizes)  # each row's block's first row
        i = np.concatenate([p.cols, p.P_rows, n + np.arange(m)])
        j = np.concatenate([n + p.rows, p.P_cols, n + first])
        graph = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(n + m, n + m))
        k, labels = connected_components(graph, directed=False)
        cached = (labels[:n], labels[n:], int(k))
        t.derived["components"] = cached
    return cached


def row_scales(ops: BatchOps, x: np.ndarray, y: np.ndarray, s: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """The primal and dual magnitude of each row (B, m) each: (|A|·1) times the largest |x_j|
    over the row's component (`_components`), the size of the row's terms with its variables
    at the scale of those coupled to it, which bounds |A||x| and, where the slack vanishes,
    |b| (b = Ax + s); and the largest entry of |A|ᵀ|y| and |P||x| over the component, which
    bounds |c| there (c = −Px − Aᵀy): the scales a slack's and a multiplier's rounding are
    relative to (`snap_kinks`). Per row, so that a bound that is never reached (its slack 1e9
    beside variables of 1e-3) sets no other row's scale; over the row's variables' component,
    so that a row whose own terms vanish (x_i >= 0 at a sparsemax tie, x_i and its slack
    both rounding) is still judged at the scale its rounding comes from, and one uncoupled
    from the rest (each coordinate of max cᵀx s.t. −b <= x <= b alone, at scales 1e-12 …
    1e16 apart) at its own."""
    mag = ops.magnitude
    var, row, k = _components(ops.template)
    ax = np.abs(x)
    B = len(x)
    at = (np.arange(B)[:, None], var[None, :])
    top = np.zeros((B, k))
    np.maximum.at(top, at, ax)
    rows = mag.A(np.ones_like(ax)) * top[:, row]
    dual = np.zeros((B, k))
    np.maximum.at(dual, at, np.maximum(mag.AT(np.abs(y)), mag.P(ax)))
    return rows, dual[:, row]


class Solves(Protocol):
    """What `ConeSolution` asks of S's factorizations at its points: a `Linearization`, or
    `polyhedral.ActiveSets` where every point is the exact solution of its active set."""

    rcond: np.ndarray
    singular: np.ndarray
    factors: list
    dense: bool

    def solve(self, rhs: np.ndarray, transpose: bool = False, iterative: bool = True,
              tol: float = REFINE_SOLVE_TOL) -> np.ndarray: ...

    def solve_one(self, i: int, rhs: np.ndarray, transpose: bool = False,
                  iterative: bool = True, tol: float = REFINE_SOLVE_TOL) -> np.ndarray: ...


@dataclass
class ConeSolution:
    """A batch of (refined) primal-dual solutions, and the derivative machinery at them."""

    ops: BatchOps
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    v: np.ndarray
    D: DProjection
    lin: Solves
    kink_mask: np.ndarray  # (B, m) coordinates of v on a kink of Π_{K*} (see snap_kinks)
    # The program is the user's scaled by this (equilibrate.py), or None: the diagnostics
    # take data directions and report output changes in the user's units through it
    scaling: Equilibration | None = None
    # (B,) bool: where `imprecise` was found true, once asked (None: not asked yet)
    loose: np.ndarray | None = None

    @property
    def kinks(self) -> np.ndarray:
        """(B,) strict complementarity fails somewhere (only one-sided derivatives exist)."""
        return np.any(self.kink_mask, axis=1)

    @classmethod
    def at(cls, ops: BatchOps, x: np.ndarray, y: np.ndarray, s: np.ndarray,
           dense: bool | None = None, reuse: list[Factor | None] | None = None,
           v: np.ndarray | None = None, known: tuple[DProjection, np.ndarray] | None = None,
           scaling: Equilibration | None = None, extended: np.ndarray | None = None,
           strict: np.ndarray | None = None) -> ConeSolution:
        """Linearize at (x, y, s) and v = y − s (or ``v`` as given, e.g. refinement's exact
        iterate); ``reuse`` factorizations where S is unchanged (or nearly), and ``known``
        = (DΠ, the points it was taken at): its rows where they equal v exactly.
        ``extended`` (bool per instance): the points refinement took to extended precision
        (`refine.refine`), whose kinks are snapped within KINK_TOL_EXTENDED instead of
        KINK_TOL (a second-order cone's dual at 1e-13 of its slack is resolved there, not a
        kink), and whose DΠ is evaluated in long double where it is made here. ``strict``
        (bool per instance): points certified strictly complementary with room (an active
        set's exact solution: `Layer._vertex_points`, for the fast path of a few instances
        and for the instances it settles after refinement), where no kink is looked for."""
        dims = ops.template.dims
        v = y - s if v is None else v
        wide = np.zeros(len(v), dtype=bool) if extended is None else np.asarray(extended)
        tol = np.where(wide, KINK_TOL_EXTENDED, KINK_TOL)
        if strict is not None:
            tol = np.where(strict, 0.0, tol)
        sides = (row_scales(ops, x, y, s)
                 if dims.nonneg or dims.soc or dims.exp or dims.exp_dual or dims.power else None)
        v0 = v
        v, mask = snap_kinks(v0, dims, tol, sides)

        def derivative(at: np.ndarray, wide: np.ndarray) -> DProjection:
            return dproject(at.astype(np.longdouble) if wide.any() else at, dims, dual=True)

        if known is None:
            D = derivative(v, wide)
        else:
            D, at_v = known
            same = np.all(v == at_v, axis=1)
            if not same.all():
                D = D.take(np.arange(len(v)))  # a copy, to patch
                other = np.flatnonzero(~same)
                D.put(other, derivative(v[other], wide[other]))
        if (dims.exp or dims.exp_dual or dims.power) and mask.any():
            # exponential and power cones' held limits that no point attains (curved_limits;
            # where they change DΠ, Linearization sees its values differ from those a reused
            # factorization was made with)
            D = D.take(np.arange(len(v))) if known is not None else D
            curved_limits(D, v, mask, dims)
        lin = Linearization(ops, D, dense=dense, reuse=reuse, bordered=True)
        # A kink whose held branch leaves S singular, at a point that lies beyond a few ulps
        # of it (KINK_TOL_EXTENDED, which a point refined in extended precision is judged
        # at): the data keep the solution off that branch, and the point's own side is
        # taken where S is regular there. The projection of b onto a ball ‖x − a‖ <= r with
        # r at 1e-12 of |b − a|: its slack within KINK_TOL of the multiplier's scale was held
        # at 0, which the active bound t <= r (r, data) rules out; S singular, the outputs'
        # derivative reported not unique and its Jacobian 0 where it is the ball's, O(1).
        redo = np.flatnonzero(mask.any(axis=1) & ~(lin.rcond > RCOND_MIN)
                              & (tol > KINK_TOL_EXTENDED))
        if redo.size:
            v2, mask2 = snap_kinks(v0[redo], dims, KINK_TOL_EXTENDED,
                                   None if sides is None else (sides[0][redo], sides[1][redo]))
            D2 = derivative(v2, wide[redo])
            curved_limits(D2, v2, mask2, dims)
            lin2 = Linearization(ops.take(redo), D2, dense=dense, bordered=True)
            good = np.flatnonzero(lin2.rcond > RCOND_MIN)
            if good.size:
                took = redo[good]
                v, mask = v.copy(), mask.copy()
                v[took], mask[took] = v2[good], mask2[good]
                D = D.take(np.arange(len(v)))  # a copy, to patch
                D.put(took, D2.take(good))
                factors: list[Factor | None] = list(lin.factors)
                for i, j in zip(took.tolist(), good.tolist(), strict=True):
                    factors[i] = lin2.factors[j]
                lin = Linearization(ops, D, dense=dense, reuse=factors, bordered=True)
        return cls(ops=ops, x=x, y=y, s=s, v=v, D=D, lin=lin, kink_mask=mask, scaling=scaling)

    def ambiguous(self, recover: sp.spmatrix, directions: tuple | None = None) -> np.ndarray:
        """Instances whose derivative is not unique *in the outputs* (B,) bool.

        S is singular where the cone program's solution is not unique. That is harmless
        when the non-unique directions (the null space N of S, mapped to Ñ = (N_u, DΠ N_v)
        in (x, y) and then to the outputs by ``recover`` = R) do not move any output, and the
        perturbed data stay in S's range; otherwise the solution map is genuinely not
        differentiable there. An output r moves if |(R Ñ)_r| > AMBIGUITY_TOL·‖R_r‖₁·‖Ñ‖∞
        (scale-free, see AMBIGUITY_TOL). With ``directions`` = (dc, da, db, dh) (p data
        directions, as for `kinks_matter`), an instance is also ambiguous where the right-hand
        side of eq. (2) along one of them leaves S's range (relative residual > TIE_RTOL): a
        tie between constraints that the perturbation breaks, whose multipliers share a
        non-unique split (e.g. cp.maximum(a, b) at a = b).
        """
        n = self.ops.template.n
        out = np.zeros(len(self.x), dtype=bool)
        singular = np.flatnonzero(self.lin.singular).tolist()
        if not singular:
            return out
        R = sp.csr_matrix(recover)
        row_norm = np.asarray(abs(R).sum(axis=1)).ravel()
        for i in singular:
            pinv = self.lin.factors[i].pinv
            if pinv is None:  # no pseudo-inverse (S not finite): cannot tell, so say so
                out[i] = True
                continue
            N = pinv.null
            if N.shape[1]:
                # in the (equilibrated) program's coordinates, where every variable is O(1):
                # R's rows weighted by what one unit there is in the user's units
                Ns = np.concatenate([N[:n], self.D.take([i]).matvec(N[None, n:])[0]], axis=0)
                moved = np.abs(R @ self._user(i, Ns[:n], Ns[n:]))
                unit = self._user(i, np.ones((n, 1)), np.ones((len(Ns) - n, 1)), bound=True)
                weight = np.abs(R) @ unit[:, 0] if self.scaling is not None else row_norm
                bound = AMBIGUITY_TOL * weight[:, None] * np.abs(Ns).max(axis=0)[None, :]
                out[i] = bool((moved > bound).any())
            if not out[i] and directions is not None:
                rhs = self._rhs(i, *directions)
                miss = np.abs(pinv.range_miss(rhs)).max(axis=0, initial=0.0)
                out[i] = bool(np.any(miss > TIE_RTOL * np.abs(rhs).max(axis=0, initial=0.0)))
        return out

    def kinks_matter(self, recover: sp.spmatrix, dc: np.ndarray, da: np.ndarray,
                     db: np.ndarray, dh: np.ndarray, where: np.ndarray | None = None
                     ) -> np.ndarray:
        """Instances where a kink changes the outputs' derivative (B,) bool.

        At a weakly active constraint the solution map has two one-sided derivatives: J₊
        with the constraint held active (DΠ as `snap_kinks` leaves it) and J₋ with it
        released (DΠ at `release_kinks`'s point, S rebuilt and factored, for the kinked
        instances only). Their output parts R·(dx, dy) are compared along the p data
        directions dc (n, p), da (nnz, p), db (m, p), dh (nnz(P), p), shared by the batch
        (e.g. images of random parameter directions): where they agree, as when only an
        auxiliary epigraph variable of CVXPY's sits at a kink, the outputs are differentiable.
        Only instances with a kink (and in ``where``, if given) are examined. All kinks of an
        instance are released together, so two kinks whose effects on the outputs cancel
        exactly are not reported.
        """
        out = np.zeros(len(self.x), dtype=bool)
        idx = np.flatnonzero(self.kinks if where is None else self.kinks & where)
        if idx.size == 0:
            return out
        t = self.ops.template
        n = t.n
        R, R_norm = _recover_rows(t, recover)
        released = release_kinks(self.v[idx], self.kink_mask[idx], t.dims,
                                 D=self.D.take(idx))
        D0 = dproject(released, t.dims, dual=True)
        curved_limits(D0, released, self.kink_mask[idx], t.dims, released=True)
        lin0 = Linearization(self.ops.take(idx), D0, dense=self.lin.dense, bordered=True)
        for j, i in enumerate(idx.tolist()):
            rhs = self._rhs(i, dc, da, db, dh)
            d1 = self.lin.solve_one(i, rhs)
            d0 = lin0.solve_one(j, rhs)
            o1 = R @ self._user(i, d1[:n], self.D.take([i]).matvec(d1[None, n:])[0])
            o0 = R @ self._user(i, d0[:n], D0.take([j]).matvec(d0[None, n:])[0])
            diff = np.abs(o1 - o0).max(axis=0, initial=0.0)
            size = np.maximum(np.abs(o1).max(axis=0, initial=0.0),
                              np.abs(o0).max(axis=0, initial=0.0))
            floor = KINK_FLOOR * R_norm * np.abs(self._user(i, d1[:n], d1[n:])).max(
                axis=0, initial=0.0)
            out[i] = bool(np.any((diff > KINK_RTOL * size) & (diff > floor)))
        return out

    def _user(self, k: int, dx: np.ndarray, dy: np.ndarray, bound: bool = False) -> np.ndarray:
        """(dx (n, p), dy (m, p)) of instance k in the user's units, stacked (n + m, p); with
        ``bound``, of magnitudes (`Equilibration.solution_bound`)."""
        if self.scaling is not None:
            e = self.scaling.take(np.array([k]))
            ux, uy = (e.solution_bound if bound else e.solution)(dx.T, dy.T)
            dx, dy = ux.T, uy.T
        return np.concatenate([dx, dy], axis=0)

    def _rhs(self, k: int, dc: np.ndarray, da: np.ndarray, db: np.ndarray,
             dh: np.ndarray) -> np.ndarray:
        """−(dP x + dAᵀ y + dc, −dA x + db) of eq. (2) for instance k, p directions at once:
        dc (n, p), da (nnz, p), db (m, p), dh (nnz(P), p) → (n + m, p). The directions are
        the user's data; they are scaled like the program."""
        ops, t = self.ops, self.ops.template
        if self.scaling is not None:
            scaled = self.scaling.take(np.array([k])).data(t, dc.T, da.T, db.T, dh.T)
            dc, da, db, dh = (M.T for M in scaled)
        rows, cols = ops.rows, ops.cols
        du = ops._Ec @ (da * self.y[k, rows, None]) + dc          # dAᵀ y + dc
        du = du + ops._Ep @ (dh * self.x[k, t.P_cols, None])      # + dP x
        dv = -(ops._Er @ (da * self.x[k, cols, None])) + db        # −dA x + db
        return -np.concatenate([du, dv], axis=0)

    @cached_property
    def _inactive(self) -> np.ndarray:
        """(B, m) bool: the rows where DΠ's row is 0 (a nonnegative row with v < 0: an
        inactive constraint), where S is regular. Their v enters S through its identity
        column alone, so the rest of the solution of S d = rhs does not depend on rhs
        there, and Sᵀ r = g gives r there equal to g there: exactly, where a factorization
        gives rounding that the equilibration can scale up (a constraint row scaled by
        1e12: ∂x/∂h 3e-4 where it is 0). `jvp` and `jacobian_one` zero the right-hand side
        there, `adjoint` sets r."""
        out = self.D.zero_rows()
        out[self.lin.singular] = False
        return out

    def _extended(self, rhs: np.ndarray, x: np.ndarray, idx: np.ndarray,
                  transpose: bool = False) -> np.ndarray:
        """``x`` = S⁻¹ rhs (or S⁻ᵀ rhs) of the instances ``idx`` (rhs and x: (k, N) or
        (k, N, K), rows as ``idx``), refined where S is regular and its reciprocal condition
        below EXTENDED_SOLVE_RCOND (or taken for singular where its SVD dropped nothing):
        up to EXTENDED_SOLVE_STEPS corrections, each the solve of the residual rhs − S x
        evaluated in long double (`s_products`), each taken only where it exceeds what that
        residual's own rounding (long double's ε·|S||x|) can make through S, and kept only
        where it lowers the residual, until one moves x by no more than u of its own size.
        ``x`` is updated in place and returned."""
        if not HAS_LONG_DOUBLE:
            return x
        lin = self.lin
        ill = (lin.rcond[idx] < EXTENDED_SOLVE_RCOND) & ~lin.singular[idx]
        # (and where S was taken for singular, its rcond estimate below RCOND_MIN, but its
        # SVD dropped no singular value: regular after all, its pseudo-inverse its inverse)
        null = getattr(lin, "null_space", None)
        if null is not None:
            for j in np.flatnonzero(lin.singular[idx]).tolist():
                basis = null(int(idx[j]))
                ill[j] = basis is not None and basis.shape[1] == 0
        ill &= np.isfinite(x.reshape(len(idx), -1)).all(axis=1)
        ill &= np.isfinite(rhs.reshape(len(idx), -1)).all(axis=1)
        live = np.flatnonzero(ill)
        if not live.size:
            return x
        wide = np.longdouble

        def residual(js: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            at = idx[js]
            r = rhs[js].astype(wide) - s_products(self.ops.take(at), self.D.take(at),
                                                  z.astype(wide), transpose)
            return r.astype(np.float64), np.abs(r).reshape(js.size, -1).max(axis=1)

        r, size_r = residual(live, x[live])
        for _ in range(EXTENDED_SOLVE_STEPS):
            d = np.stack([lin.solve_one(int(i), ri, transpose)
                          for i, ri in zip(idx[live].tolist(), r, strict=True)])
            moved = np.abs(d).reshape(live.size, -1).max(axis=1, initial=0.0)
            size_x = np.abs(x[live]).reshape(live.size, -1).max(axis=1, initial=0.0)
            # a correction no larger than what the residual's own rounding, solved with S
            # (normwise: ε·‖x‖/rcond), can make is that rounding, not x's error: taken, it
            # moved a float64 solve 1e-15 off to 7e-13 off (rcond 1e-9)
            with np.errstate(divide="ignore", invalid="ignore"):
                noise = LONG_DOUBLE_EPS * size_x / lin.rcond[idx[live]]
            real = np.isfinite(moved) & (moved > noise)
            if not real.any():
                break
            live, d, r, size_r, moved = live[real], d[real], r[real], size_r[real], moved[real]
            z = x[live] + d
            r_new, size_new = residual(live, z)
            better = size_new < size_r
            x[live[better]] = z[better]
            size_z = np.abs(z).reshape(live.size, -1).max(axis=1, initial=0.0)
            go = better & (moved > np.finfo(float).eps * size_z)
            live, r, size_r = live[go], r_new[go], size_new[go]
            if not live.size:
                break
        return x

    def jvp(self, dc: np.ndarray, da: np.ndarray, db: np.ndarray,
            dh: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(dc, dA values, db, dP values) ↦ (dx, dy), eq. (2)."""
        rhs = self._data_rhs(dc, da, db, dh)
        d = self._extended(rhs, self.lin.solve(rhs), np.arange(len(rhs)))
        n = self.ops.template.n
        return d[:, :n], self.D.matvec(d[:, n:])

    def _data_rhs(self, dc: np.ndarray, da: np.ndarray, db: np.ndarray,
                  dh: np.ndarray | None) -> np.ndarray:
        """−(dP x + dAᵀ y + dc, −dA x + db) of eq. (2) per instance, the data directions
        (B, ·) in the program's units, zero on the rows of `_inactive` (DΠ dv is 0 there
        whatever dv is)."""
        t = self.ops.template
        dA = BatchOps(t, da, dh)
        rhs = -np.concatenate([dA.P(self.x) + dA.AT(self.y) + dc, -dA.A(self.x) + db], axis=1)
        rhs[:, t.n :][self._inactive] = 0.0
        return rhs

    def vjp(self, gx: np.ndarray, gy: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(gx, gy) ↦ (∂/∂c, ∂/∂A values, ∂/∂b, ∂/∂P values), eq. (2); ∂/∂P_ij = r₁ᵢ xⱼ."""
        return self.data_gradient(self.adjoint(gx, gy), slice(None))

    def adjoint(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        """(gx, gy) ↦ r = −S⁻ᵀ (gx, DΠᵀ gy) (B, n + m): `vjp`'s solve."""
        g = np.concatenate([gx, self.D.matvec(gy)], axis=1)
        r = -self._extended(g, self.lin.solve(g, transpose=True), np.arange(len(g)),
                            transpose=True)
        n = self.ops.template.n
        r[:, n:][self._inactive] = -g[:, n:][self._inactive]
        return r

    def data_gradient(self, r: np.ndarray, which: slice
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`vjp`'s data cotangents from its solve ``r`` (`adjoint`), for the instances
        ``which`` of the batch: ∂/∂c = r₁, ∂/∂A_ij = yᵢ r₁ⱼ − r₂ᵢ xⱼ, ∂/∂b = r₂,
        ∂/∂P_ij = r₁ᵢ xⱼ."""
        t = self.ops.template
        r1, r2 = r[which, : t.n], r[which, t.n :]
        x, y = self.x[which], self.y[which]
        rows, cols = self.ops.rows, self.ops.cols
        da = np.take(y, rows, axis=1)
        da *= np.take(r1, cols, axis=1)
        other = np.take(r2, rows, axis=1)
        other *= np.take(x, cols, axis=1)
        da -= other
        dh = np.take(r1, t.P_rows, axis=1)
        dh *= np.take(x, t.P_cols, axis=1)
        return r1, da, r2, dh


    def imprecise(self, recover: sp.spmatrix, dc: np.ndarray, da: np.ndarray, db: np.ndarray,
                  dh: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """Instances whose outputs' derivative float64 does not resolve (B,) bool: along the
        p data directions dc (n, p), da (nnz, p), db (m, p), dh (nnz(P), p), the change of
        the outputs R·(dx, dy) that DΠ's own rounding makes exceeds DERIVATIVE_RTOL of the
        largest change (in the user's units); where that largest change is itself below
        KINK_FLOOR of any variable's (outputs that do not move: a saturated softmax, an apex
        held), it must also exceed that floor, so that they are not judged by rounding
        alone. (The floor over every variable, applied everywhere, hid errors up to 0.11:
        geo_mean(x) >= t at t = 1e-14, whose auxiliary variables move far more than x.)

        DΠ of an exponential or power cone is computed (root finding, closed forms), not
        given: its entries carry rounding of their own size, and S's solves pass that on
        amplified by S's conditioning and then by the scaling back to the user's units, in
        which an output and a parameter far apart in scale (a multiplier ~1 beside a radius
        t ~ 1e-8) make the entry ∂λ/∂t ~ λ/t in natural units: min cᵀx s.t. ‖x‖₃ <= t had
        ∂λ/∂t at 1.3e-5 (t = 1e-8) and 9e-3 (t = 1e-12) where it is 0. The effect is
        estimated statistically (Kenney and Laub, *Small-sample statistical condition
        estimates*, 1994): each entry of those blocks of DΠ perturbed by DERIVATIVE_ROUNDING
        of itself with random signs, and per direction two solves with S's factorization
        (the derivative along it, then the perturbation's effect), and the outputs' change
        compared. Zero and nonnegative cones' DΠ (0 and 1) is exact; second-order and PSD
        cones' blocks are not perturbed (perturbed, entry by entry or by each block's norm,
        min cᵀx s.t. ‖x‖₂ <= t was reported at t = 1e-8, whose Jacobian is right to 1e-9,
        and its rescaled derivative at t = 1e-12 was worse than its own), and a program
        without exponential or power cones is not examined. Only regular instances (and in
        ``where``, if given) are."""
        t = self.ops.template
        n, B = t.n, len(self.x)
        out = np.zeros(B, dtype=bool)
        if not (t.dims.exp or t.dims.exp_dual or t.dims.power):
            return out
        live = ~self.lin.singular & np.isfinite(self.lin.rcond)
        if where is not None:
            live &= where
        if not live.any():
            return out
        R, R_norm = _recover_rows(t, recover)
        # the same signs for every instance: an instance's estimate does not depend on its batch
        signs = np.random.default_rng(0).choice((-1.0, 1.0), size=(dc.shape[1], t.m))
        err, size, top = np.zeros(B), np.zeros(B), np.zeros(B)

        def outputs(d: np.ndarray, extra: np.ndarray | float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray]:
            full = self._users(d[:, :n], self.D.matvec(d[:, n:]) + extra)
            return full, np.asarray(R @ full.T).T

        for j in range(dc.shape[1]):
            rhs = self._rhs_all(dc[:, j], da[:, j], db[:, j], dh[:, j])
            rhs[~live] = 0.0
            # (magnitudes only: a factorization of a nearby S, from refinement, is taken
            # without iterative refinement to REFINE_SOLVE_TOL)
            d = self.lin.solve(rhs, iterative=False, tol=ESTIMATE_SOLVE_TOL)
            full, o = outputs(d)
            # each entry of DΠ's exponential and power blocks off by DERIVATIVE_ROUNDING of
            # itself, with random signs: δDΠ·dv
            q = self.D.curved_magnitudes(np.abs(d[:, n:]))
            q *= DERIVATIVE_ROUNDING * signs[j]
            e = self.lin.solve(np.concatenate([-self.ops.AT(q), q], axis=1), iterative=False,
                               tol=ESTIMATE_SOLVE_TOL)
            _, oe = outputs(e, q)
            err = np.fmax(err, np.abs(oe).max(axis=1, initial=0.0))
            size = np.fmax(size, np.abs(o).max(axis=1, initial=0.0))
            top = np.fmax(top, np.abs(full).max(axis=1, initial=0.0))
        # outputs whose derivative is itself at the solve's rounding beside the variables'
        # (KINK_FLOOR of their largest change: a saturated softmax, an apex held) are judged
        # against that rounding, not against their own size
        # (and nothing below the solves' own rounding of the variables' largest change is
        # taken for the estimate's: a softmax whose logits are 170 apart, ∂x/∂a ~ 3e-8 right
        # to 2e-16, had its estimate at 6.9e-16)
        floor = KINK_FLOOR * R_norm * top
        rounding = ESTIMATE_ROUNDING * R_norm * top
        return live & (err > DERIVATIVE_RTOL * size) & (err > rounding) \
            & ((size > floor) | (err > floor))

    def _users(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """(dx (B, n), dy (B, m)) of the batch in the user's units, stacked (B, n + m)."""
        if self.scaling is not None:
            dx, dy = self.scaling.solution(dx, dy)
        return np.concatenate([dx, dy], axis=1)

    def _rhs_all(self, dc: np.ndarray, da: np.ndarray, db: np.ndarray, dh: np.ndarray
                 ) -> np.ndarray:
        """`_rhs` for the whole batch along one data direction: dc (n,), da (nnz,), db (m,),
        dh (nnz(P),) → (B, n + m), zero on the rows of `_inactive`."""
        B = len(self.x)
        dc, da, db, dh = (np.tile(a, (B, 1)) for a in (dc, da, db, dh))
        if self.scaling is not None:
            dc, da, db, dh = self.scaling.data(self.ops.template, dc, da, db, dh)
        return self._data_rhs(dc, da, db, dh)

    def jacobian_one(self, k: int, dc: np.ndarray, da: np.ndarray, db: np.ndarray,
                     dh: np.ndarray):
        """(dx, dy) of instance k for p directions at once: dc (n, p), da (nnz, p), db (m, p),
        dh (nnz(P), p); both sides in the user's units (through ``scaling``)."""
        n = self.ops.template.n
        rhs = self._rhs(k, dc, da, db, dh)
        rhs[n:][self._inactive[k]] = 0.0  # (see `_inactive`)
        d = self._extended(rhs[None], self.lin.solve_one(k, rhs)[None], np.array([k]))[0]
        out = self._user(k, d[:n], self.D.take([k]).matvec(d[None, n:])[0])
        return out[:n], out[n:]


# `ConeSolution.imprecise`: the entries of DΠ's exponential and power cone blocks taken as off
# by DERIVATIVE_ROUNDING of themselves, and the outputs' derivative along a parameter direction
# unresolved where that moves it by more than DERIVATIVE_RTOL of its largest entry. Measured
# on min cᵀx s.t. ‖x‖_p <= t and geo_mean(x) >= t, 40 random c each at t = 1e-7 … 1e-9,
# against closed forms: at 4ε none more than 1e-8 off went unreported but one (1.9e-7 off,
# ‖x‖₁.₅ <= 1e-9, missed at every rounding tried), and 9 … 29 of 40 right to 1e-10 were
# reported at t = 1e-7 (31 … 38 at 8ε); at 2ε the dual form of the 3/2-norm at t = 1e-8 went
# unreported 5.6e-8 off. The estimate stays at most 2e-11 of the derivative on weighted logs
# over sixteen decades.
DERIVATIVE_ROUNDING = 4 * float(np.finfo(float).eps)
DERIVATIVE_RTOL = 1e-8
# ... and nothing below this fraction of the largest change of any variable is an error the
# estimate can tell from the solves' own rounding
ESTIMATE_ROUNDING = 64 * float(np.finfo(float).eps)
# ... whose solves need only their magnitude: iterative refinement on a nearby factorization
# stops at this relative residual
ESTIMATE_SOLVE_TOL = 1e-2
# Random directions per parameter along which `kinks_matter` compares the one-sided derivatives.
KINK_DIRECTIONS = 2


def _recover_rows(t: ConeTemplate, recover: sp.spmatrix) -> tuple[sp.csr_matrix, float]:
    """``recover`` as CSR and its largest row sum of magnitudes, made once per template for
    the template's own ``recover``."""
    if recover is not t.recover:
        R = sp.csr_matrix(recover)
        return R, float(np.asarray(abs(R).sum(axis=1)).max(initial=0.0))
    made = t.derived.get("recover rows")
    if made is None:
        R = sp.csr_matrix(recover)
        made = t.derived["recover rows"] = (R, float(np.asarray(abs(R).sum(axis=1)).max(
            initial=0.0)))
    return made


def parameter_directions(t: ConeTemplate, blocks: list[tuple[int, int]],
                         per_block: int = KINK_DIRECTIONS, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random directions dθ, ``per_block`` supported on each parameter's block (offset, size) of
    θ, mapped to the cone data: (dc (n, p), da (nnz, p), db (m, p), dh (nnz(P), p)) = (C, F, G,
    H) dθ. One parameter at a time, so a parameter much larger than another cannot hide the
    other's effect in `kinks_matter`'s relative comparison; fixed seed, so the same input gives
    the same answer. Made once per template (read-only arrays)."""
    key = f"parameter_directions {blocks} {per_block} {seed}"
    made = t.derived.get(key)
    if made is None:
        made = t.derived[key] = _parameter_directions(t, blocks, per_block, seed)
    return made


def _parameter_directions(t: ConeTemplate, blocks: list[tuple[int, int]], per_block: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = []
    for lo, size in blocks:
        for _ in range(per_block):
            d = np.zeros(t.num_params)
            d[lo : lo + size] = rng.standard_normal(size)
            cols.append(d)
    dtheta = np.array(cols).T if cols else np.zeros((t.num_params, 0))
    out = tuple(np.asarray(M @ dtheta) for M in (t.C, t.F, t.G, t.H))
    for a in out:
        a.setflags(write=False)
    return out  # type: ignore[return-value]


def diagnose(sol: ConeSolution, recover: sp.spmatrix, blocks: list[tuple[int, int]]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Where the outputs' derivative is not defined, (B,) bool each: ``non_unique`` (a null
    vector of S moves an output, or a parameter direction leaves S's range: a broken tie;
    `ConeSolution.ambiguous`) and ``weakly_active`` (elsewhere, a
    kink whose one-sided derivatives differ in the outputs, `ConeSolution.kinks_matter`, along
    `parameter_directions` for the parameter ``blocks``).

    Cheap where S is regular and no kink is detected: S's factorization is the one the
    derivative uses (refinement's last, where DΠ did not change), and only singular
    instances (their SVD, made when factoring) or kinked ones (one more factorization each)
    cost anything beyond it.
    """
    directions = parameter_directions(sol.ops.template, blocks)
    non_unique = sol.ambiguous(recover, directions)
    loose = sol.loose if sol.loose is not None \
        else sol.imprecise(recover, *directions, where=~non_unique)
    non_unique |= loose
    weakly_active = np.zeros_like(non_unique)
    check = sol.kinks & ~non_unique
    if check.any():
        weakly_active = sol.kinks_matter(recover, *directions, where=check)
    return non_unique, weakly_active


def project_dual(v: np.ndarray, ops: BatchOps) -> np.ndarray:
    """Π_{K*}(v) for the batch."""
    return project(v, ops.template.dims, dual=True)
