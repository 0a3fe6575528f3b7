"""compile: a parametrized CVXPY problem → a `ConeTemplate`, once.

CVXPY's DPP canonicalization (``problem.get_problem_data(cp.SCS)``) yields a
parametrized cone program: sparse tensors mapping the parameter vector θ̃ = (θ, 1)
to the SCS problem data

    minimize ½xᵀPx + cᵀx  subject to  Ax + s = b,  s ∈ K,

with (P, c, A, b) affine in θ. We keep those maps as three sparse matrices over the
*user's* parameter vector θ (each parameter flattened in column-major order, in the
order the user listed them), so applying a whole batch is one sparse product.

Quadratic objectives stay quadratic (SCS's ½xᵀPx, CVXPY's ``use_quad_obj``), with P
affine in θ too: fewer variables and cones than a second-order-cone reformulation.

The maps back from SCS's (x, y) to the user's variables (primal, or a constraint's
dual variable) are linear. Rather than re-implementing CVXPY's conventions (symmetric
variables, PSD duals in scaled-triangle form, exponential-cone ordering, ...), we
read them off CVXPY's own ``chain.invert`` by probing, once, at compile time.
"""

from __future__ import annotations

import math
import reprlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, overload

import cvxpy as cp
import numpy as np
import scipy.sparse as sp
from cvxpy.reductions.cvx_attr2constr import (
    CvxAttr2Constr,
    lower_value,
    recover_value_for_leaf,
)
from cvxpy.reductions.solution import Solution

from declarative.cones import ConeDims
from declarative.errors import ParameterError, ProblemError
from declarative.parallel import cached_property

ON_FAILURE = ("raise", "nan")


@dataclass(frozen=True)
class ParameterSpec:
    """One user parameter: where it sits in θ (flattened column-major)."""

    name: str
    shape: tuple[int, ...]
    offset: int
    domain: tuple[str, ...] = ()  # sign/structure attributes its values must respect
    log: bool = False  # gp=True: the convex form takes log θ (else θ itself, e.g. an exponent)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def shapes(self) -> str:
        """The shapes a value may have, as text: ``(3,) or (batch, 3)``."""
        batched = ", ".join(("batch", *map(str, self.shape)))
        return f"{self.shape} or ({batched}{',' if not self.shape else ''})"

    def not_real(self, value: Any, kind: str = "array", dtype: Any = None) -> ParameterError:
        """The error for a value that is not a real number or array: names this parameter,
        what was expected (a real ``kind`` of one of `shapes`) and what came; for a complex
        value (``dtype``, else the value's own dtype), what to do instead."""
        dtype = getattr(value, "dtype", None) if dtype is None else dtype
        if value is None:
            got = "None"
        elif hasattr(value, "dtype"):
            got = f"{type(value).__name__} with dtype {value.dtype}"
        else:
            got = f"{type(value).__name__} {reprlib.repr(value)}"
        hint = (" Complex values are not supported: split the parameter into its real and "
                "imaginary parts (two real parameters) and write the problem in those."
                if "complex" in str(dtype) or isinstance(value, complex) else "")
        return ParameterError(
            f"parameter {self.name!r}: expected a real {kind} (floating-point, integer or bool "
            f"dtype) of shape {self.shapes}, got {got}.{hint}"
        )


# Parameter attributes whose violation would make the compiled problem wrong (e.g. a
# nonneg parameter multiplying a convex atom); values are checked against them.
DOMAIN_ATTRIBUTES = ("nonneg", "nonpos", "pos", "neg", "symmetric", "PSD", "NSD")


@dataclass(frozen=True)
class OutputSpec:
    """One requested output (a primal variable, or a constraint's dual variable)."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "primal" | "dual"
    # a geometric program's primal output, computed as u = log x: x's relative error is u's
    # absolute one, so u is held to an absolute accuracy
    log: bool = False

    @property
    def size(self) -> int:
        return math.prod(self.shape)


# Products X Mᵀ with the template's fixed sparse matrices are many and small. Where M is
# small (at most DENSE_PRODUCT_SIZE entries as a dense array) and the product too (B·r·k at
# most DENSE_PRODUCT_WORK), one BLAS call on a cached dense copy beats SciPy's sparse
# product, whose dozen Python-level checks cost several times the matmul.
DENSE_PRODUCT_SIZE = 1 << 13
DENSE_PRODUCT_WORK = 1 << 13
# From this many columns of M on, `times_t` multiplies row by row.
ROW_PRODUCT_MIN = 1 << 14


# `ConeTemplate.rounding` measures the data's rounding in long double up to this many terms
# in the rows that round (≈ 0.1 ms a call at batch 1), and bounds it beyond.
ROUNDING_MEASURED_TERMS = 50_000


def _rounding_rows(M: sp.spmatrix, m0: np.ndarray) -> np.ndarray:
    """The rows of θ ↦ M θ + m₀ whose value may round: all but those holding a constant
    alone, or one power-of-two coefficient and no constant."""
    M = sp.csr_matrix(M, copy=True)
    M.eliminate_zeros()
    count = np.diff(M.indptr)
    one = np.flatnonzero((count == 1) & (m0 == 0))
    mantissa, _ = np.frexp(np.abs(M.data[M.indptr[one]]))
    exact = count == 0
    exact[one] = mantissa == 0.5
    return np.flatnonzero(~exact)


def times_t(X: np.ndarray, M: sp.spmatrix, contiguous: bool = True) -> np.ndarray:
    """X Mᵀ for a dense batch X (B, k) and a sparse M (r, k), C-contiguous (or, with
    ``contiguous=False``, possibly a transposed view).

    Dense (cached Mᵀ) where that is cheap, see above. Where each row of M holds at most one
    stored entry (most of a DPP program's maps: each entry of c, A or b is one parameter's
    entry times a constant, and the outputs are entries of x), X Mᵀ picks columns of X and
    scales them: a gather, without SciPy (OptNet QP, batch 512, θ ↦ A's 5,500 values: 13
    against 52 ms). Otherwise as (M Xᵀ)ᵀ, since SciPy evaluates dense @ sparse by
    transposing the sparse matrix on every call (more than the product itself at our sizes)
    and sparse @ dense does not.
    """
    plan = _plan(M)
    if plan.dense is not None and X.shape[0] * plan.dense.size <= DENSE_PRODUCT_WORK:
        return X @ plan.dense
    if plan.columns is not None:
        out = np.take(X, plan.columns, axis=1)
        if plan.scale is not None:
            out *= plan.scale
        if plan.empty is not None:
            out[:, plan.empty] = 0.0  # (not 0 · X's entry, which is NaN where that is not finite)
        return out
    if M.shape[1] >= ROW_PRODUCT_MIN and X.flags.c_contiguous:
        # long rows: one sparse matvec per row beats transposing X and the result
        # (SciPy copies X.T to C order: memory-bound, 18 ms for 8 × 440,000)
        out = np.empty((X.shape[0], M.shape[0]))
        for i in range(X.shape[0]):
            out[i] = M @ X[i]
        return out
    out = np.asarray(M @ X.T).T
    return np.ascontiguousarray(out) if contiguous else out


class _ProductPlan(NamedTuple):
    """How `times_t` multiplies by one matrix M (r, k): ``dense``, Mᵀ as a dense array where
    M is small; ``columns`` (r,), where each row of M holds at most one stored entry, the
    column of X each row of X Mᵀ reads, with ``scale`` (r,) its factor (None where every one
    is 1) and ``empty`` the rows without an entry (None where there are none)."""

    dense: np.ndarray | None
    columns: np.ndarray | None
    scale: np.ndarray | None
    empty: np.ndarray | None


# `_ProductPlan`s by id(M), for the matrices `times_t` has seen; an entry goes when its matrix
# does (our matrices are never modified after they are built).
_plans: dict[int, tuple[weakref.ref, _ProductPlan]] = {}


def _plan(M: sp.spmatrix) -> _ProductPlan:
    """M's `_ProductPlan`, made once per matrix."""
    key = id(M)
    entry = _plans.get(key)
    if entry is None or entry[0]() is not M:
        r, k = M.shape
        dense = np.ascontiguousarray(M.T.toarray()) if r * k <= DENSE_PRODUCT_SIZE else None
        columns = scale = empty = None
        R = M.tocsr()
        counts = np.diff(R.indptr)
        if k and counts.max(initial=0) <= 1:
            has = counts > 0
            first = R.indptr[:-1][has]
            columns = np.zeros(r, dtype=np.intp)
            columns[has] = R.indices[first]
            values = np.zeros(r)
            values[has] = R.data[first]
            scale = None if np.all(values[has] == 1.0) else values
            empty = None if has.all() else np.flatnonzero(~has)

        def forget(_: weakref.ref, key: int = key) -> None:
            _plans.pop(key, None)

        ref = weakref.ref(M, forget)
        entry = _plans[key] = (ref, _ProductPlan(dense, columns, scale, empty))
    return entry[1]


class CSC(NamedTuple):
    """A sparse matrix as its compressed-column arrays, without a SciPy object (whose
    construction checks cost more than a small SCS solve)."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]

    def scipy(self) -> sp.csc_matrix:
        """The same matrix as a SciPy CSC matrix (sharing the arrays)."""
        return sp.csc_matrix((self.data, self.indices, self.indptr), shape=self.shape)


class CSCBatch(Sequence[CSC]):
    """One CSC matrix per instance of a batch, every one with the same pattern: the values
    stacked (B, nnz), each instance's `CSC` made when indexed. A batched backend reads the
    stacked values (``data``) without a Python object per instance."""

    __slots__ = ("data", "indices", "indptr", "shape")

    def __init__(self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                 shape: tuple[int, int]) -> None:
        self.data, self.indices, self.indptr, self.shape = data, indices, indptr, shape

    def __len__(self) -> int:
        return self.data.shape[0]

    @overload
    def __getitem__(self, i: int) -> CSC: ...

    @overload
    def __getitem__(self, i: slice) -> CSCBatch: ...

    def __getitem__(self, i: int | slice) -> CSC | CSCBatch:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        return CSC(self.data[i], self.indices, self.indptr, self.shape)

    def __iter__(self) -> Iterator[CSC]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: np.ndarray) -> CSCBatch:
        """The instances ``idx`` (the whole batch itself where that is every one, in order)."""
        if len(idx) == len(self) and np.array_equal(idx, np.arange(len(self))):
            return self
        return CSCBatch(self.data[idx], self.indices, self.indptr, self.shape)


def pick(matrices: Sequence[Any], idx: np.ndarray) -> Sequence[Any]:
    """The entries ``idx`` of a list of matrices or of a `CSCBatch` (then a `CSCBatch`)."""
    if isinstance(matrices, CSCBatch):
        return matrices.take(idx)
    return [matrices[i] for i in idx]


@dataclass(frozen=True)
class ConeTemplate:
    """The compiled problem: affine maps θ ↦ (c, A, b) and the cone K.

    ``A`` has a fixed sparsity pattern (CSC ``indices``/``indptr``); only its
    ``nnz`` values depend on θ:  c = C θ + c0,  A.data = F θ + f0,  b = G θ + g0.
    ``recover`` maps the stacked solver solution (x, y) to the stacked outputs,
    each flattened column-major.
    """

    n: int
    m: int
    dims: ConeDims
    C: sp.csr_matrix
    c0: np.ndarray
    F: sp.csr_matrix
    f0: np.ndarray
    G: sp.csr_matrix
    g0: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    recover: sp.csr_matrix
    # Quadratic objective ½xᵀPx (SCS's P): stored entries (both triangles) at
    # (P_rows, P_cols) with values H θ + h0. Empty for a linear objective.
    P_rows: np.ndarray
    P_cols: np.ndarray
    H: sp.csr_matrix
    h0: np.ndarray
    # Structures later stages derive from the template alone (equilibration pattern, scatter
    # matrices, sparse layout), each made on first use by its stage and kept here; not part
    # of the template's value (not compared, not shown)
    derived: dict[str, Any] = field(default_factory=dict, init=False, compare=False,
                                    repr=False)

    @property
    def num_params(self) -> int:
        return self.C.shape[1]

    @property
    def nnz(self) -> int:
        return self.indices.size

    def apply(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch θ (B, p) ↦ c (B, n), A values (B, nnz), b (B, m): three sparse products."""
        return (times_t(theta, self.C) + self.c0, times_t(theta, self.F) + self.f0,
                times_t(theta, self.G) + self.g0)

    def apply_P(self, theta: np.ndarray) -> np.ndarray:
        """A batch θ (B, p) ↦ the stored values of P (B, nnz(P))."""
        return times_t(theta, self.H) + self.h0

    def rounding(self, theta: np.ndarray, data: tuple[np.ndarray, ...]
                 ) -> tuple[np.ndarray | None, ...] | None:
        """The rounding errors that `apply` and `apply_P` committed at θ (B, p) on the entries
        of ``data`` (their c, A's values, b and P's values): each a (B, ·) array, 0 on the
        entries formed exactly (a constant alone, or one parameter's entry times a power of
        two, barring underflow), or None where all of that map's are. None where every
        entry is formed exactly, as in most DPP programs (each entry of c, A, b and P one
        parameter's entry or a constant); not so where an entry sums several (c = −2Aᵀb of
        ‖Ax − b‖² with a parameter b).

        Measured, |fl(d) − d| with d summed again in long double, where long double is wider
        than double (x86's 64-bit significand: its own rounding is 2¹¹ times smaller) and
        the rows that round hold at most ROUNDING_MEASURED_TERMS terms (the sums in long
        double run at a tenth of float64's speed: a constant 1,500 × 300 A in ‖Ax − b‖²
        would add a fifth to the call); bounded otherwise, by γ_k (|M||θ| + |m₀|) over an
        entry's k terms (γ_k = k·u; Higham, *Accuracy and Stability of Numerical Algorithms*,
        §3.1), which can only certify less."""
        maps = self._rounding_maps
        if maps is None:
            return None
        measured = self._rounding_measured
        wide = theta.astype(np.longdouble) if measured else None
        magnitude = None if measured else np.abs(theta)
        out: list[np.ndarray | None] = []
        for (rows, M, m0, bound, bound0), d in zip(maps, data, strict=True):
            if not rows.size:
                out.append(None)
                continue
            err = np.zeros(d.shape)
            if wide is not None:
                err[:, rows] = np.abs(d[:, rows] - ((M @ wide.T).T + m0))  # (few rows)
            else:
                assert magnitude is not None
                err[:, rows] = (bound @ magnitude.T).T + bound0
            out.append(err)
        return tuple(out)

    @cached_property
    def _rounding_maps(self) -> list[tuple[np.ndarray, sp.csr_matrix, np.ndarray,
                                           sp.csr_matrix, np.ndarray]] | None:
        """For (C, c0), (F, f0), (G, g0) and (H, h0): the rows whose sums may round
        (`_rounding_rows`), those rows of the map and its constant in long double, and
        γ_k|M| and γ_k|m₀| on them (`rounding`'s bound); None where no row may."""
        u = np.finfo(float).eps / 2
        out = []
        for M, m0 in ((self.C, self.c0), (self.F, self.f0), (self.G, self.g0),
                      (self.H, self.h0)):
            rows = _rounding_rows(M, m0)
            R = sp.csr_matrix(M)[rows]
            gamma = u * (np.diff(R.indptr) + (m0[rows] != 0))
            out.append((rows, R.astype(np.longdouble), m0[rows].astype(np.longdouble),
                        sp.diags(gamma) @ abs(R), gamma * np.abs(m0[rows])))
        return None if all(rows.size == 0 for rows, *_ in out) else out

    @cached_property
    def _rounding_measured(self) -> bool:
        """Does `rounding` measure (long double wider than double, and few enough terms)?"""
        maps = self._rounding_maps
        return bool(np.finfo(np.longdouble).eps <= np.finfo(float).eps / 1024 and maps
                    and sum(M.nnz for _, M, *_ in maps) <= ROUNDING_MEASURED_TERMS)

    def apply_adjoint(self, dc: np.ndarray, da: np.ndarray, db: np.ndarray,
                      dh: np.ndarray | None = None) -> np.ndarray:
        """Adjoint of the linear part of θ ↦ (c, A, b, P): (dc, dA, db, dP values) ↦ dθ (B, p)."""
        T = self.transposed
        # summed before the one copy to C order: each copy of a (B, p) product costs about
        # as much as the product (OptNet QP, 5,610 parameters, batch 512: 25 ms)
        out = times_t(dc, T["C"], contiguous=False) + times_t(da, T["F"], contiguous=False) \
            + times_t(db, T["G"], contiguous=False)
        if dh is not None and self.H.shape[0]:
            out = out + times_t(dh, T["H"], contiguous=False)
        return np.ascontiguousarray(out)

    @cached_property
    def transposed(self) -> dict[str, sp.csr_matrix]:
        """Cᵀ, Fᵀ, Gᵀ, Hᵀ and recoverᵀ as CSR, for products with the transposed maps."""
        return {"C": self.C.T.tocsr(), "F": self.F.T.tocsr(), "G": self.G.T.tocsr(),
                "H": self.H.T.tocsr(), "recover": self.recover.T.tocsr()}

    @property
    def quadratic(self) -> bool:
        return self.P_rows.size > 0

    @property
    def fixed_data(self) -> bool:
        """A and P are the same for every parameter value (only b and c vary)."""
        return self.F.nnz == 0 and self.H.nnz == 0

    def matrix(self, a: np.ndarray) -> sp.csc_matrix:
        """The CSC matrix A of one instance from its values, with arrays of its own (SciPy's
        in-place methods, ``eliminate_zeros``, leave the template's pattern alone)."""
        m = self.csc(a)
        return sp.csc_matrix((np.array(m.data), np.array(m.indices), np.array(m.indptr)),
                             shape=m.shape)

    def csc(self, a: np.ndarray) -> CSC:
        """A of one instance as bare CSC arrays (no SciPy object: for SCS), without the
        stored entries that are 0 for every θ where they are 0 here (`csc_batch`)."""
        return self.csc_batch(np.asarray(a)[None])[0]

    def csc_batch(self, a: np.ndarray) -> CSCBatch:
        """A of every instance (values ``a``, (B, nnz)) as a `CSCBatch`, for a solver: without
        the stored entries that are 0 for every θ (`with_exp_mixing`'s) where they are 0 in
        every instance, so that they cost the solver nothing."""
        kept = self._kept_entries
        if kept is not None and not np.any(np.delete(a, kept[0], axis=1)):
            return CSCBatch(np.ascontiguousarray(a[:, kept[0]]), kept[1], kept[2],
                            (self.m, self.n))
        return CSCBatch(a, self.indices, self.indptr, (self.m, self.n))

    @cached_property
    def _kept_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The stored entries of A that some θ makes nonzero, their rows and column pointers;
        None where every one is."""
        live = (np.diff(self.F.indptr) > 0) | (self.f0 != 0)
        if live.all():
            return None
        keep = np.flatnonzero(live)
        cols = np.repeat(np.arange(self.n), np.diff(self.indptr))[keep]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=self.n))])
        return keep, self.indices[keep], indptr.astype(self.indptr.dtype)

    def P_csc_batch(self, h: np.ndarray) -> CSCBatch:
        """The upper triangle of P of every instance (values ``h``, (B, ·)) as a
        `CSCBatch`."""
        take, indices, indptr = self._upper_pattern
        return CSCBatch(h[:, take], indices, indptr, (self.n, self.n))

    def P_csc(self, h: np.ndarray) -> CSC:
        """The upper triangle of P of one instance as bare CSC arrays (for SCS)."""
        take, indices, indptr = self._upper_pattern
        return CSC(np.ascontiguousarray(h[take]), indices, indptr, (self.n, self.n))

    def P_matrix(self, h: np.ndarray, upper: bool = False) -> sp.csc_matrix:
        """The symmetric matrix P of one instance (its upper triangle for SCS if ``upper``)."""
        if not upper:
            return sp.csc_matrix((h, (self.P_rows, self.P_cols)), shape=(self.n, self.n))
        return self.P_csc(h).scipy()

    @cached_property
    def _upper_pattern(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P's upper triangle in CSC order: which stored entries, their rows, column pointers."""
        upper = np.flatnonzero(self.P_rows <= self.P_cols)
        take = upper[np.lexsort((self.P_rows[upper], self.P_cols[upper]))]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(self.P_cols[take],
                                                            minlength=self.n))])
        return take, self.P_rows[take].astype(np.int32), indptr.astype(np.int32)

    def rows_cols(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column index of each stored entry of A (CSC order)."""
        cols = np.repeat(np.arange(self.n), np.diff(self.indptr))
        return self.indices, cols


def check_problem(problem: Any, quad_obj: bool = True) -> tuple[cp.Problem, bool]:
    """Raise `ProblemError` unless ``problem`` is DCP and DPP, naming the culprit; return the
    problem to canonicalize (``problem``, or its `_squares`) and whether its objective stays
    quadratic (SCS's ½xᵀPx).

    With ``quad_obj``, ``quad_form(x, P)`` with a parameter P is DPP in the objective: P
    enters the program's P affinely (CVXPY's ``is_dpp(quad_form_dpp="qp")``). In a
    constraint it is not (CVXPY factors P there). CVXPY's quadratic-objective rules refuse
    ``quad_form(x − c, P₀)`` (and ``matrix_frac``) with a constant P₀ and a parameter c,
    which its standard DPP rules accept: written over an auxiliary variable z = x − c
    (`_squares`) they keep the quadratic objective; an objective that only the standard
    rules accept compiles to the pure cone form (False), its quadratics through
    second-order cones.
    """
    from cvxpy.utilities import scopes
    from cvxpy.utilities.debug_tools import build_non_disciplined_error_msg

    if not isinstance(problem, cp.Problem):
        raise ProblemError(f"expected a cvxpy.Problem, got {type(problem).__name__}.")
    _check_real(problem)
    _check_continuous(problem)
    if not problem.is_dcp():
        detail = build_non_disciplined_error_msg(problem, "DCP")
        raise ProblemError(
            "the problem is not DCP (disciplined convex), so it cannot be a convex layer. "
            + detail
        )
    # CVXPY's compute_once decorator annotates these methods as taking no argument.
    if quad_obj and problem.is_dpp("dcp", quad_form_dpp="qp"):  # type: ignore[call-arg]
        return problem, True
    squares = _squares(problem) if quad_obj else problem
    if squares is not problem:
        return squares, True
    if problem.is_dcp(dpp=True):  # type: ignore[call-arg]
        return problem, False
    with scopes.dpp_scope():
        # (CVXPY's message, made under DPP rules, says "DCP" where it means DPP)
        detail = build_non_disciplined_error_msg(problem, "DCP").replace(" DCP", " DPP")
    raise ProblemError(
        "the problem is DCP but not DPP: parameters must enter affinely (a product of two "
        "parameter-dependent expressions, or a parameter inside a nonlinear atom, is not DPP; "
        "quad_form(x, P) with a parameter P is DPP in the objective only; "
        "see https://www.cvxpy.org/tutorial/dpp). " + detail
    )


def _check_continuous(problem: cp.Problem) -> None:
    """Raise `ProblemError` if ``problem`` has integer or boolean variables, naming them."""
    if problem.is_mixed_integer():
        names = [v.name() for v in problem.variables()
                 if v.attributes.get("integer") or v.attributes.get("boolean")]
        raise ProblemError(
            f"variable(s) {names} are integer or boolean: a mixed-integer problem's solution "
            "is piecewise constant in its parameters, with no useful derivative. declarative "
            "differentiates continuous convex problems; drop the integrality (a relaxation)."
        )


def _check_real(problem: cp.Problem) -> None:
    """Raise `ProblemError` if any variable, parameter or expression of ``problem`` is complex
    (complex, imag or hermitian leaves, complex constants), naming them."""
    culprits = [f"{kind} {leaf.name()!r}"
                for kind, leaves in (("variable", problem.variables()),
                                     ("parameter", problem.parameters()))
                for leaf in leaves if leaf.is_complex()]
    if not culprits:  # only complex constants: name the outermost complex expressions
        stack = [problem.objective.expr, *(a for c in problem.constraints for a in c.args)]
        while stack and len(culprits) < 3:
            expr = stack.pop(0)
            if expr.is_complex():
                culprits.append(f"expression {_short(expr, 60)!r}")
            else:
                stack.extend(expr.args)
    if culprits:
        raise ProblemError(
            f"{', '.join(culprits)} {'is' if len(culprits) == 1 else 'are'} complex: declarative "
            "differentiates real problems only, complex ones are not supported. Split each complex "
            "quantity into its real and imaginary parts (z = x + 1j*y with real x and y, a "
            "complex parameter as two real parameters) and write the problem in those."
        )


def _members(items: Any, kind: type) -> list:
    """The user's ``parameters`` or ``variables`` as a list: one Parameter (Variable) alone is
    a list of one; anything else but a list or tuple is refused (iterating a CVXPY
    expression gives its entries)."""
    if isinstance(items, kind):
        return [items]
    if not isinstance(items, list | tuple):
        name = "parameters" if kind is cp.Parameter else "variables"
        raise ProblemError(f"{name} must be a list of cvxpy {kind.__name__}s, got "
                           f"{type(items).__name__}.")
    return list(items)


def _check_members(problem: cp.Problem, parameters, variables
                   ) -> list[tuple[cp.Constraint, int] | None]:
    """Check the user's lists (`_members`) against the problem; return each variable's
    constraint (or None)."""
    if len(variables) == 0:
        raise ProblemError("variables is empty: name at least one variable to output.")
    own_params = {p.id for p in problem.parameters()}
    for p in parameters:
        if not isinstance(p, cp.Parameter):
            raise ProblemError(f"parameters must hold cvxpy Parameters, got {type(p).__name__}.")
        if p.id not in own_params:
            raise ProblemError(f"parameter {p.name()} does not appear in the problem.")
    listed = {p.id for p in parameters}
    if len(listed) != len(parameters):
        raise ProblemError("a parameter is listed twice in parameters.")
    missing = [p.name() for p in problem.parameters() if p.id not in listed]
    if missing:
        raise ProblemError(
            f"the problem has parameter(s) {missing} that are not in parameters: list every "
            "parameter of the problem (a fixed one can be made a cp.Constant)."
        )
    own_vars = {v.id for v in problem.variables()}
    dual_of = {d.id: (c, k) for c in problem.constraints
               for k, d in enumerate(c.dual_variables)}
    owners: list[tuple[cp.Constraint, int] | None] = []
    for v in variables:
        if not isinstance(v, cp.Variable):
            raise ProblemError(f"variables must hold cvxpy Variables, got {type(v).__name__}.")
        if v.size == 0:
            raise ProblemError(
                f"variable {v.name()} has no entries (shape {v.shape}): an output must have at "
                "least one; leave it out of variables."
            )
        if v.id in own_vars:
            owners.append(None)
        elif v.id in dual_of:
            owners.append(dual_of[v.id])
        else:
            raise ProblemError(
                f"variable {v.name()} is neither a variable of the problem nor a dual variable "
                "(an entry of constraint.dual_variables) of one of its constraints."
            )
    return owners


def _cone_dims(cd: Any) -> ConeDims:
    dims = ConeDims(
        zero=int(cd.zero),
        nonneg=int(cd.nonneg),
        soc=tuple(int(k) for k in cd.soc),
        psd=tuple(int(k) for k in cd.psd),
        exp=int(cd.exp),
        power=tuple(float(a) for a in cd.p3d),
    )
    if getattr(cd, "pnd", None):  # pragma: no cover - CVXPY lowers these to 3-d power cones
        raise ProblemError(
            "the problem uses n-dimensional power cones (cp.PowConeND), which SCS does not "
            "take; write them as 3-d power cones (cp.PowCone3D)."
        )
    return dims


def _parameter_lowering(chain, pp, parameters) -> sp.csr_matrix:
    """The linear map θ (user parameters, stacked) ↦ CVXPY's parameter vector without its 1.

    Usually a permutation; parameters with dimension-reducing attributes (symmetric, diag,
    sparsity) appear in CVXPY's vector by their reduced representation.
    """
    reduced = {}
    for r in chain.reductions:
        if isinstance(r, CvxAttr2Constr):
            reduced.update({new.id: orig for orig, new in r._parameters.items()})
    offsets, o = {}, 0
    for p in parameters:
        offsets[p.id] = o
        o += p.size
    rows, cols, vals = [], [], []
    for pid, col in pp.param_id_to_col.items():
        if pid == -1:  # the constant 1
            continue
        size = pp.param_id_to_size[pid]
        if pid in offsets:
            rows.append(col + np.arange(size))
            cols.append(offsets[pid] + np.arange(size))
            vals.append(np.ones(size))
        elif pid in reduced:
            orig = reduced[pid]
            symmetric = any(orig.attributes.get(a) for a in ("symmetric", "PSD", "NSD"))
            for j in range(orig.size):  # lower_value is linear: probe it on a basis
                e = np.zeros(orig.size)
                e[j] = 1.0
                E = e.reshape(orig.shape, order="F")
                # A symmetric parameter enters through (S + Sᵀ)/2: the same for symmetric
                # values, and its gradient is symmetric, so gradient steps keep it symmetric.
                E = (E + E.T) / 2 if symmetric else E
                col_j = np.ravel(lower_value(orig, E), order="F")
                nz = np.flatnonzero(col_j)
                rows.append(col + nz)
                cols.append(np.full(nz.size, offsets[orig.id] + j))
                vals.append(col_j[nz])
        else:  # pragma: no cover - CVXPY added a parameter we do not know
            raise ProblemError(f"CVXPY introduced an unknown parameter (id {pid}).")
    p_cvx = pp.total_param_size
    cat = np.concatenate
    return sp.csr_matrix(
        (cat(vals), (cat(rows), cat(cols))) if rows else ([], ([], [])), shape=(p_cvx, o)
    )


def _rows(T: sp.coo_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (sorted, unique) of a tall COO tensor, without forming its CSR: CVXPY's
    tensors have m·n (or n·n) rows, mostly empty, and a CSR would store a pointer for each."""
    pos = np.searchsorted(rows, T.row)
    hit = (pos < rows.size) & (rows[np.minimum(pos, rows.size - 1)] == T.row)
    return sp.csr_matrix((T.data[hit], (pos[hit], T.col[hit])), shape=(rows.size, T.shape[1]))


def _affine(T: sp.spmatrix, lowering: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Split a CVXPY tensor (rows × (p_cvx + 1)) into a map over θ and its constant column."""
    T = sp.csc_matrix(T)
    p_cvx = lowering.shape[0]
    return sp.csr_matrix(T[:, :p_cvx] @ lowering), np.asarray(T[:, p_cvx].todense()).ravel()


class _Inverter:
    """Calls CVXPY's own ``chain.invert`` on a solver solution (x, y) and reads each output
    the way CVXPY itself would: a primal variable from the inverted primal values (dense,
    also for structured variables that CVXPY returns as sparse matrices), a dual variable
    through its constraint's own ``save_dual_value`` (which splits a cone's dual among its
    ``dual_variables``: SOC (t, X), ExpCone and PowCone3D (x, y, z), ...)."""

    def __init__(self, chain, inverse_data, n: int, m: int, variables,
                 owners: list[tuple[cp.Constraint, int] | None]) -> None:
        self.chain, self.inverse_data, self.n, self.m = chain, inverse_data, n, m
        self.owners = list(owners)
        self.variables = list(variables)
        self.shapes = [v.shape for v in variables]

    def __call__(self, xy: np.ndarray) -> list[np.ndarray]:
        sol = {
            "x": xy[: self.n],
            "y": xy[self.n :],
            "s": np.zeros(self.m),
            "info": {"status_val": 1, "solve_time": 0.0, "setup_time": 0.0, "iter": 0,
                     "pobj": 0.0},
        }
        res = _invert(self.chain, sol, self.inverse_data)
        out = []
        for v, owner, shape in zip(self.variables, self.owners, self.shapes, strict=True):
            if owner is None:
                val = res.primal_vars.get(v.id)
            else:
                constraint, k = owner
                val = _dual_value(constraint, k, res.dual_vars.get(constraint.id))
            if val is None:
                val = np.zeros(shape)
            elif sp.issparse(val):
                val = val.toarray()
            val = np.asarray(val, dtype=float)
            if val.size == 1:  # a scalar for a (promoted) shape: the same value everywhere
                val = np.broadcast_to(val.reshape(()), shape)
            if val.size != math.prod(shape):  # pragma: no cover - a CVXPY convention we miss
                raise ProblemError(
                    f"cannot read {v.name()} (shape {shape}) from CVXPY's solution: it "
                    f"returned a value of shape {val.shape}."
                )
            out.append(np.ravel(np.reshape(val, shape, order="F"), order="F"))
        return out


def _invert(chain, raw: dict[str, Any], inverse_data) -> Solution:
    """``chain.invert`` of the solver's ``raw`` result, except that variables with sign or bound
    attributes come back as the solver's values rather than projected onto their sets (CVXPY's
    ``CvxAttr2Constr`` projects them, which is not linear, and the solution is feasible for them
    already). The chain's last reduction is the solver: it turns ``raw`` into a Solution."""
    steps = list(zip(chain.reductions, inverse_data, strict=True))
    solver, solver_data = steps[-1]
    solution: Solution = solver.invert(raw, solver_data)
    for r, data in reversed(steps[:-1]):
        before = solution
        solution = r.invert(solution, data)
        if isinstance(r, CvxAttr2Constr) and data:
            id2new_var, id2old_var, _ = data
            for vid, var in id2old_var.items():
                new = id2new_var[vid]
                if new.id in before.primal_vars:
                    solution.primal_vars[vid] = recover_value_for_leaf(
                        var, before.primal_vars[new.id], project=False)
    return solution


def _dual_value(constraint, k: int, value: Any) -> Any:
    """``constraint.dual_variables[k]``'s value for the constraint's stacked dual ``value``,
    by the constraint's own ``save_dual_value``; the user's dual values are left as they were."""
    if value is None:
        return None
    duals = constraint.dual_variables
    before = [d.value for d in duals]
    try:
        constraint.save_dual_value(value)
        return duals[k].value
    finally:
        for d, old in zip(duals, before, strict=True):
            d.save_value(old)


def _recovery_map(inv: _Inverter, blocks: list[tuple[int, int]]) -> sp.csr_matrix:
    """The linear map (x, y) ↦ stacked outputs, read off ``chain.invert``.

    For each input block (a reduced variable, or one constraint's dual slice) a NaN
    probe tells which outputs depend on it; a random probe tells whether the
    dependence is a selection (a slice, reshape or permutation, possibly negated),
    which it almost always is; otherwise the block is probed on its basis.
    """
    N = inv.n + inv.m
    sizes = [int(np.prod(s, dtype=int)) for s in inv.shapes]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rng = np.random.default_rng(0)
    rows, cols, vals = [], [], []
    for lo, hi in blocks:
        probe = np.zeros(N)
        probe[lo:hi] = np.nan
        touched = [k for k, o in enumerate(inv(probe)) if np.isnan(o).any()]
        if not touched:
            continue
        r = np.zeros(N)
        r[lo:hi] = rng.uniform(1.0, 2.0, hi - lo)
        outs = inv(r)
        for k in touched:
            o = outs[k]
            sel = _as_selection(o, r[lo:hi])
            if sel is not None:
                idx, sign = sel
                nz = np.flatnonzero(sign)
                rows.append(starts[k] + nz)
                cols.append(lo + idx[nz])
                vals.append(sign[nz])
                continue
            for j in range(lo, hi):
                e = np.zeros(N)
                e[j] = 1.0
                col = inv(e)[k]
                nz = np.flatnonzero(col)
                rows.append(starts[k] + nz)
                cols.append(np.full(nz.size, j))
                vals.append(col[nz])
    cat = np.concatenate
    shape = (int(starts[-1]), N)
    if not rows:
        return sp.csr_matrix(shape)
    return sp.csr_matrix((cat(vals), (cat(rows), cat(cols))), shape=shape)


def _as_selection(out: np.ndarray, probe: np.ndarray):
    """If ``out`` is ±(entries of ``probe``) or 0 entrywise, return (indices, signs)."""
    order = np.argsort(probe)
    sorted_probe = probe[order]
    mag = np.abs(out)
    pos = np.clip(np.searchsorted(sorted_probe, mag), 0, probe.size - 1)
    found = sorted_probe[pos] == mag
    zero = out == 0
    if not np.all(found | zero):
        return None
    return order[pos], np.where(zero, 0.0, np.sign(out))


def _dual_name(constraint, k: int) -> str:
    """How an output that is ``constraint.dual_variables[k]`` is named in messages."""
    if len(constraint.dual_variables) == 1:
        return f"dual of {_short(constraint)}"
    return f"dual_variables[{k}] of {_short(constraint)}"


def _short(constraint, limit: int = 40) -> str:
    text = str(constraint)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def eliminate_defined(t: ConeTemplate) -> ConeTemplate:
    """The same program without the auxiliary variables that equality rows define.

    CVXPY's quadratic canonicalization gives ``sum_squares(x − y)`` a variable u with its own
    equality row  a·u + Σⱼ A_rj xⱼ = b_r  (u = x − y), which doubles the system the refinement
    and the derivative factor (the PSD projection of a k × k matrix: N = 2,731 at k = 30
    instead of 931). Where u's column has that row as its only entry, every entry of the row,
    and every entry of P in u's row and column, is constant in θ, and no output reads u or the
    row's dual, u = M x + d with M = −A_r,·/a constant and d = b_r/a affine in θ. Substituting
    it keeps (c, A, b, P) affine in θ:

        P' = P_xx + P_xu M + Mᵀ P_ux + Mᵀ P_uu M,   c' = c_x + Mᵀ c_u + (P_xu + Mᵀ P_uu) d,

    A and b lose the row and the column. The two programs have the same solutions in x and the
    same duals for the other rows (the eliminated row's dual is a function of them). Returns
    ``t`` itself where nothing qualifies.
    """
    n, m = t.n, t.m
    zero = t.dims.zero
    if not zero or not t.quadratic:
        return t
    const_entry = np.diff(t.F.indptr) == 0
    col_count = np.diff(t.indptr)
    entry_col = np.repeat(np.arange(n), col_count)
    rows = t.indices
    # rows every entry of which is constant and nonzero
    row_const = np.ones(m, dtype=bool)
    np.logical_and.at(row_const, rows, const_entry & (t.f0 != 0))
    rec = t.recover.tocsc()
    read = np.diff(rec.indptr) > 0  # (n + m,): which x and y entries an output reads
    P_const = np.diff(t.H.indptr) == 0
    P_touch_var = np.zeros(n, dtype=bool)  # a θ-dependent P entry in the column's row/col
    np.logical_or.at(P_touch_var, t.P_rows, ~P_const)
    np.logical_or.at(P_touch_var, t.P_cols, ~P_const)
    single = np.flatnonzero(col_count == 1)
    k = t.indptr[single]
    r = rows[k]
    ok = (r < zero) & row_const[r] & ~read[single] & ~read[n + r] & ~P_touch_var[single]
    single, r = single[ok], r[ok]
    if not single.size:
        return t
    r, first = np.unique(r, return_index=True)  # one variable per defining row
    U = single[first]
    if r.size >= m:  # keep one row: the stages after compile expect a constraint
        U, r = U[1:], r[1:]
        if not U.size:
            return t
    keep_x = np.ones(n, dtype=bool)
    keep_x[U] = False
    keep_y = np.ones(m, dtype=bool)
    keep_y[r] = False
    xi = np.flatnonzero(keep_x)
    x_new = np.full(n, -1)
    x_new[xi] = np.arange(xi.size)
    y_new = np.full(m, -1)
    y_new[keep_y] = np.arange(int(keep_y.sum()))
    nu, nx = U.size, xi.size
    A = sp.csc_matrix((t.f0, t.indices, t.indptr), shape=(m, n)).tocsr()
    # A_r,· over the kept columns, and a (the coefficient of u in its row)
    Ar = A[r]
    a = np.asarray(Ar[np.arange(nu), U]).ravel()
    M = -sp.diags(1.0 / a) @ Ar[:, xi]  # (nu, nx)
    M = sp.csr_matrix(M)
    # d = b_r / a = (G_r θ + g0_r) / a
    Dg = sp.diags(1.0 / a) @ t.G[r]
    d0 = t.g0[r] / a
    # P's constant blocks in u's rows/columns
    touch = ~keep_x[t.P_rows] | ~keep_x[t.P_cols]
    Pc = sp.csr_matrix((t.h0[touch], (t.P_rows[touch], t.P_cols[touch])), shape=(n, n))
    P_xu = Pc[xi][:, U]
    P_uu = Pc[U][:, U]
    K = P_xu @ M
    K = sp.csr_matrix(K + K.T + M.T @ P_uu @ M)
    W = sp.csr_matrix(P_xu + M.T @ P_uu)  # (nx, nu)
    C = sp.csr_matrix(t.C[xi] + M.T @ t.C[U] + W @ Dg)
    c0 = t.c0[xi] + M.T @ t.c0[U] + W @ d0
    # P' = P_xx(θ) + K: the union of P_xx's stored pattern and K's
    inner = ~touch
    K = K.tocoo()
    pr = np.concatenate([x_new[t.P_rows[inner]], K.row])
    pc = np.concatenate([x_new[t.P_cols[inner]], K.col])
    pattern = sp.csr_matrix((np.ones(pr.size), (pr, pc)), shape=(nx, nx))
    pattern.sum_duplicates()
    pattern = pattern.tocoo()
    order = np.lexsort((pattern.row, pattern.col))  # column-major, as CVXPY's P
    P_rows, P_cols = pattern.row[order].astype(np.int64), pattern.col[order].astype(np.int64)
    keys = P_cols * nx + P_rows  # sorted: the stored entries' column-major positions
    ni = int(inner.sum())
    where_inner = np.searchsorted(keys, pc[:ni] * nx + pr[:ni])
    H = sp.csr_matrix(sp.csr_matrix((np.ones(ni), (where_inner, np.arange(ni))),
                                    shape=(P_rows.size, ni)) @ t.H[np.flatnonzero(inner)])
    h0 = np.zeros(P_rows.size)
    np.add.at(h0, where_inner, t.h0[inner])
    np.add.at(h0, np.searchsorted(keys, K.col.astype(np.int64) * nx + K.row), K.data)
    # A and b without the rows and columns
    keep_entry = keep_y[rows] & keep_x[entry_col]
    new_cols = x_new[entry_col[keep_entry]]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(new_cols, minlength=nx))])
    recover = rec[:, np.concatenate([keep_x, keep_y])].tocsr()
    return ConeTemplate(
        n=nx, m=int(keep_y.sum()), dims=replace(t.dims, zero=zero - r.size),
        C=C, c0=np.asarray(c0, dtype=float), F=t.F[np.flatnonzero(keep_entry)],
        f0=t.f0[keep_entry], G=t.G[np.flatnonzero(keep_y)], g0=t.g0[keep_y],
        indices=y_new[rows[keep_entry]].astype(np.int64), indptr=indptr.astype(np.int64),
        recover=recover, P_rows=P_rows, P_cols=P_cols, H=H, h0=h0)


def exp_rows(dims: ConeDims) -> np.ndarray:
    """The first row of every primal exponential cone (x of (x, y, z), y e^(x/y) <= z)."""
    lo = dims.size - 3 * (dims.exp + dims.exp_dual + len(dims.power))
    return lo + 3 * np.arange(dims.exp, dtype=np.int64)


def with_exp_mixing(t: ConeTemplate) -> ConeTemplate:
    """The same program with every primal exponential cone's first row storing an entry
    (0 where the program has none) in every column where its second row does, so that a
    scaling may add a multiple of the second row to the first by changing values alone.

    (x, y, z) ↦ (x + c·y, y, e^c·z) maps the exponential cone onto itself for any c
    (y e^((x + cy)/y) = e^c · y e^(x/y)), where a diagonal scaling keeps it only with one
    factor for the block: entr(x) at x ~ 1e8 is (t, x, 1) with t ~ −2e9, which c = log x
    brings to (0, x, x) (`equilibrate.at_solution`). Returns ``t`` where nothing is added."""
    first = exp_rows(t.dims)
    if not first.size:
        return t
    rows, cols = t.rows_cols()
    m = t.m
    second = np.isin(rows, first + 1)
    have = cols * m + rows  # column-major keys, sorted: CSC order
    want = np.setdiff1d(cols[second] * m + rows[second] - 1, have)
    if not want.size:
        return t
    keys = np.union1d(have, want)
    at = np.searchsorted(keys, have)
    put = sp.csr_matrix((np.ones(have.size), (at, np.arange(have.size))),
                        shape=(keys.size, have.size))
    new_cols = keys // m
    indptr = np.concatenate([[0], np.cumsum(np.bincount(new_cols, minlength=t.n))])
    return replace(t, F=sp.csr_matrix(put @ t.F), f0=put @ t.f0,
                   indices=(keys % m).astype(np.int64), indptr=indptr.astype(np.int64))


def _squares(problem: cp.Problem) -> cp.Problem:
    """``problem`` with each ``quad_form(e, P₀)`` of its objective whose P₀ is constant and
    whose e holds a parameter written ``quad_form(z, P₀)`` beside a new constraint z = e,
    where CVXPY's quadratic-objective rules refuse the first (they take quad_form's first
    argument free of parameters) and accept the second: the objective then stays SCS's
    ½xᵀPx, with P₀ exactly as given (sparse where it is), and z is an auxiliary variable
    that compiling substitutes out where it can. ``problem`` itself where that does not
    make it DPP by those rules. Its constraints (and their dual variables) are kept."""
    from cvxpy.atoms.quad_form import QuadForm

    links: list[Any] = []

    def rewrite(expr: Any) -> Any:
        if isinstance(expr, QuadForm):
            e, P = expr.args
            if P.is_constant() and not P.parameters() and e.parameters():
                z = cp.Variable(e.shape)
                links.append(z == e)
                return cp.quad_form(z, P)
        if not expr.args:
            return expr
        new = [rewrite(a) for a in expr.args]
        if all(a is b for a, b in zip(new, expr.args, strict=True)):
            return expr
        return expr.copy(new)

    expr = rewrite(problem.objective.expr)
    if expr is problem.objective.expr:
        return problem
    out = cp.Problem(type(problem.objective)(expr), [*problem.constraints, *links])
    if not out.is_dpp("dcp", quad_form_dpp="qp"):  # type: ignore[call-arg]
        return problem
    return out


class _UnconstrainedSCS(cp.reductions.solvers.conic_solvers.scs_conif.SCS):
    """CVXPY's SCS interface for a problem written without constraints. CVXPY 1.9 decides
    that SCS needs constraints before canonicalizing, and refuses min ‖Ax − b‖∞, whose
    canonical form has them; a program without any is given its trivial row later
    (`solve.solve_batch`)."""

    REQUIRES_CONSTR = False

    def name(self) -> str:  # (CVXPY wants a custom solver's name its own)
        return "DECLARATIVE_SCS"


class _ConeOnlySCS(_UnconstrainedSCS):
    """CVXPY's SCS interface taking no quadratic objective: CVXPY then judges DPP by its
    standard rules and canonicalizes to the pure cone form (for SCS itself it applies its
    quadratic-objective rules, and evaluates the parameters of a problem they refuse)."""

    def name(self) -> str:
        return "DECLARATIVE_CONE_SCS"

    def supports_quad_obj(self) -> bool:
        return False


def _problem_data(problem: cp.Problem, quad_obj: bool) -> tuple:
    """CVXPY's ``get_problem_data`` for SCS (with ``quad_obj``, its quadratic objective
    kept as P; else `_ConeOnlySCS`), through `_UnconstrainedSCS` where CVXPY refuses SCS for a
    problem written without constraints."""
    opts = {"use_quad_obj": quad_obj}
    try:
        return problem.get_problem_data(solver=cp.SCS if quad_obj else _ConeOnlySCS(),
                                        solver_opts=opts)
    except cp.error.SolverError:
        if problem.constraints or not quad_obj:  # (`_ConeOnlySCS` takes those already)
            raise
        return problem.get_problem_data(solver=_UnconstrainedSCS(), solver_opts=opts)


def compile_template(problem: cp.Problem, parameters, variables, quad_obj: bool = True):
    """Canonicalize once; return the template, parameter specs and output specs.

    ``quad_obj=False`` gives the pure cone form (quadratic objectives through
    second-order cones), as diffcp needs for comparisons.
    """
    problem, quad_obj = check_problem(problem, quad_obj)
    parameters, variables = _members(parameters, cp.Parameter), _members(variables, cp.Variable)
    owners = _check_members(problem, parameters, variables)
    try:  # keep quadratic objectives as SCS's P: fewer cones and rows than an SOC form
        data, chain, inverse_data = _problem_data(problem, quad_obj)
    except cp.error.SolverError as e:  # CVXPY reports unsupported atoms here
        raise ProblemError(f"CVXPY could not canonicalize the problem for SCS: {e}") from e
    pp = data[cp.settings.PARAM_PROB]
    dims = _cone_dims(pp.cone_dims)
    n = pp.x.size
    m = dims.size
    lowering = _parameter_lowering(chain, pp, parameters)

    # c: rows 0..n-1 of q (row n is the objective offset, irrelevant for the argmin).
    C, c0 = _affine(sp.csr_matrix(pp.q)[:n], lowering)
    # [A_cvx | b] flattened column-major in rows of pp.A; SCS's A is -A_cvx.
    nA = m * n
    TA = pp.A.tocoo()
    active = np.unique(TA.row[(TA.row < nA) & (TA.data != 0)])  # entries of A ever nonzero
    F, f0 = _affine(-_rows(TA, active), lowering)
    G, g0 = _affine(_rows(TA, nA + np.arange(m)), lowering)
    rows, cols = active % m, active // m  # already sorted column-major = CSC order
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))])
    if pp.P is not None and pp.P.nnz:
        TP = pp.P.tocoo()  # (n·n) × (p_cvx + 1), column-major, both triangles
        activeP = np.unique(TP.row[TP.data != 0])
        H, h0 = _affine(_rows(TP, activeP), lowering)
        P_rows, P_cols = activeP % n, activeP // n
    else:
        H, h0 = sp.csr_matrix((0, lowering.shape[1])), np.zeros(0)
        P_rows = P_cols = np.zeros(0, dtype=np.int64)

    blocks = []
    for vid, col in sorted(pp.var_id_to_col.items(), key=lambda kv: kv[1]):
        blocks.append((col, col + pp.id_to_var[vid].size))
    off = n
    for con in pp.constraints:
        blocks.append((off, off + con.size))
        off += con.size
    inv = _Inverter(chain, inverse_data, n, m, variables, owners)
    recover = _recovery_map(inv, blocks)

    template = ConeTemplate(
        n=n, m=m, dims=dims, C=C, c0=c0, F=F, f0=f0, G=G, g0=g0,
        indices=rows.astype(np.int64), indptr=indptr.astype(np.int64), recover=recover,
        P_rows=P_rows.astype(np.int64), P_cols=P_cols.astype(np.int64), H=H, h0=h0,
    )
    template = with_exp_mixing(eliminate_defined(template))
    param_specs, o = [], 0
    for p in parameters:
        domain = tuple(a for a in DOMAIN_ATTRIBUTES if p.attributes.get(a))
        param_specs.append(ParameterSpec(p.name(), tuple(p.shape), o, domain))
        o += p.size
    output_specs = [
        OutputSpec(v.name() if own is None else _dual_name(*own), tuple(v.shape),
                   "dual" if own is not None else "primal")
        for v, own in zip(variables, owners, strict=True)
    ]
    return template, tuple(param_specs), tuple(output_specs)



def compile_gp_template(problem: cp.Problem, parameters, variables):
    """A log-log convex (DGP) problem → the template of its convex form, once.

    CVXPY's ``Dgp2Dcp`` reduction substitutes u = log x for every variable and log θ for every
    parameter, which turns monomials into affine and posynomials into log-sum-exp functions
    (Boyd, Kim, Vandenberghe, Hassibi 2007, *A tutorial on geometric programming*, Sec. 2.5;
    Agrawal, Diamond, Boyd 2019, *Disciplined geometric programming*). The template maps
    log θ to the convex program and its outputs are u; the layer (`declarative.geometric`)
    takes θ and returns x = exp(u); dual variables are the convex form's, as CVXPY reports
    them for a DGP problem.
    """
    from cvxpy.reductions.dgp2dcp.dgp2dcp import Dgp2Dcp
    from cvxpy.utilities.debug_tools import build_non_disciplined_error_msg

    if not isinstance(problem, cp.Problem):
        raise ProblemError(f"expected a cvxpy.Problem, got {type(problem).__name__}.")
    _check_real(problem)
    _check_continuous(problem)
    if not problem.is_dgp():
        raise ProblemError(
            "gp=True: the problem is not DGP (log-log convex), so it is not a geometric "
            "program. " + build_non_disciplined_error_msg(problem, "DGP")
        )
    if not problem.is_dgp(dpp=True):  # type: ignore[call-arg]  # compute_once's annotation
        raise ProblemError(
            "gp=True: the problem is DGP but not DPP: parameters must enter as monomial "
            "coefficients or factors, so that their logarithms enter the convex form "
            "affinely (see https://www.cvxpy.org/tutorial/dpp)."
        )
    parameters, variables = _members(parameters, cp.Parameter), _members(variables, cp.Variable)
    owners = _check_members(problem, parameters, variables)
    reduction = Dgp2Dcp()
    convex, inverse = reduction.apply(problem)
    new_params = {p.id: p for p in convex.parameters()}
    new_vars = {v.id: v for v in convex.variables()}
    convex_params, logs = [], []
    for p in parameters:
        ids = [i for i in reduction.param_id_map.get(p.id, ()) if i in new_params]
        direct = p.id in new_params
        if direct and ids:
            raise ProblemError(
                f"gp=True: parameter {p.name()} enters the problem both as a monomial "
                "coefficient or factor (through its logarithm) and as itself (e.g. as an "
                "exponent); use two parameters, one for each role."
            )
        if not direct and not ids:
            raise ProblemError(f"parameter {p.name()} does not appear in the problem.")
        # A monomial coefficient or factor θ enters the convex form as log θ; an exponent
        # (x ** c in log-log coordinates is c · log x) enters as itself.
        convex_params.append(p if direct else new_params[ids[0]])
        logs.append(not direct)
    # A primal output is u = log x; a dual one is the dual of the constraint's convex form
    # (what CVXPY reports for a DGP problem: Dgp2Dcp passes duals through unchanged).
    convex_cons = {c.id: c for c in convex.constraints}
    log_vars = [new_vars[reduction.var_id_map[v.id][0]] if own is None
                else convex_cons[inverse.cons_id_map[own[0].id]].dual_variables[own[1]]
                for v, own in zip(variables, owners, strict=True)]
    template, specs, outputs = compile_template(convex, convex_params, log_vars)
    specs = tuple(ParameterSpec(p.name(), s.shape, s.offset, ("pos",) if log else s.domain, log)
                  for p, s, log in zip(parameters, specs, logs, strict=True))
    outputs = tuple(OutputSpec(v.name(), o.shape, o.kind, log=o.kind == "primal")
                    for v, o in zip(variables, outputs, strict=True))
    return template, specs, outputs
