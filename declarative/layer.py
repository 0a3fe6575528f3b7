"""The compiled layer: apply → solve → refine → recover, and its VJP/JVP, in NumPy.

`Layer` is what `declarative.compile` returns. It holds only arrays (no CVXPY
objects), so it pickles, deep-copies, and can be called from several threads at
once. The framework adapters (`Layer.torch()`, `Layer.jax()`) are thin wrappers
around `Layer.forward`, `Forward.vjp` and `Forward.jvp`.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from declarative.allocator import hold_freed_memory
from declarative.backends import DEFAULT_SOLVER
from declarative.backends import backend as get_backend
from declarative.backends.scs import DEFAULT_SCALE, linear_solver
from declarative.compile import (
    ON_FAILURE,
    ConeTemplate,
    CSCBatch,
    OutputSpec,
    ParameterSpec,
    pick,
    times_t,
)
from declarative.cones import (
    KINK_TOL,
    DProjection,
    cone_layout,
    dproject,
    inactive_cones_held,
    power_apexes_released,
)
from declarative.derivative import (
    EXACT_RANK_MAX,
    RCOND_MIN,
    BatchOps,
    ConeSolution,
    Factor,
    Linearization,
    NonDifferentiableWarning,
    TruncatedSVD,
    abs_inverse_times,
    abs_max,
    abs_rows_estimate,
    diagnose,
    low_rank_groups,
    low_rank_mask,
    made_layout,
    newton_correction,
    orderings_undecided,
    parameter_directions,
    project_dual,
    ranks_exactly,
    residual,
    row_scales,
    set_ordering,
    sign_probe,
    sparse_layout,
    use_dense,
)
from declarative.equilibrate import (
    UNIFORM,
    Equilibration,
    at_solution,
    binary,
    boost_cone_sums,
    equilibrate,
    objective_scale,
    pattern,
    psd_met,
    rebalance,
    recentred,
    spread,
)
from declarative.errors import ParameterError, ProblemError, SolverError, describe_indices
from declarative.parallel import (
    cached_property,
    fork_safe_lock,
    parallel_map,
    pipelined,
    single_threaded_blas,
    workers,
)
from declarative.polyhedral import ActiveSet, ActiveSets, lp_vertex, small_polyhedral
from declarative.promise import ACCURACY
from declarative.refine import (
    EXTENDED_EPS,
    REFINE_MAX_ITERS,
    REFINE_TOL,
    SCALE_FLOOR,
    backward_error,
    extended_ok,
    omega,
    refine,
    row_terms,
)
from declarative.solve import (
    Backend,
    ScaleCheck,
    SolveResult,
    Status,
    calibrate_scale,
    check_settings,
    check_values,
    solve_batch,
)
from declarative.tuning import Tuning

# Options that are ours rather than the solver's, with their defaults.
OUR_OPTIONS = {"refine": True, "refine_tol": REFINE_TOL, "refine_max_iters": REFINE_MAX_ITERS}
# A refined instance counts as solved when, in the equilibrated program (equilibrate.py),
# its componentwise backward error is at most ACCEPT_BACKWARD (refine.backward_error) and
# the estimated error of every output (Layer._forward_error_ok: the Newton correction S⁻¹F,
# the error itself to first order, plus the effect of rounding) is at most ACCEPT_FORWARD of
# that output's max-norm. The second bounds the forward error, not only the residual: an
# ill-conditioned instance with a tiny residual is not certified. Both sit a factor 10
# inside the ACCURACY the layer promises, for the estimate's first-order slack.
ACCEPT_BACKWARD = ACCURACY / 10
ACCEPT_FORWARD = ACCURACY / 10
# Relative rounding of the residual's terms assumed by the forward-error estimate: a few
# units in the last place (one per operation along a row, in practice).
ROUNDING = 8 * np.finfo(float).eps
# A point scaled for the derivative gives back its own multiplier and slack through v = y − s
# to this fraction of each entry, or is not taken (`_pair_held`).
REPRESENTED = 1e-6
# The same, for a residual evaluated in extended precision (`Layer._extended`).
ROUNDING_EXTENDED = 8 * EXTENDED_EPS
# A boostable second-order cone (x·t >= w² as ‖(x − t, 2w)‖ <= x + t, `equilibrate`'s
# boosts) whose rows' sum or difference, at a point, is below FACTOR_LOST of the two rows'
# terms holds that factor only as the rounding of its rows: in that scaling the program is
# another one, and a point whose duality gap rests on that factor is not certified
# (`Layer._factors_lost`; the boosted rounds resolve the factor). square(‖x − a‖) <= q with
# q ~ 1e-12|a|²: its cone's rows 1 ± t held t at 1e-18 of 1, and SCS's point x = a, off by
# the whole radius (4.8e-7 of x), with a gap 8 times the objective's terms in that factor,
# was certified as a face of non-unique auxiliaries. A factor above a few ulps is resolved,
# to the rounding the certificate's estimate already allows for (power(x, 4)'s chain at
# x ~ 1e-9 holds factors at 1e-13 of its rows, and its points are right to 1e-14).
FACTOR_LOST = 4 * np.finfo(float).eps
# A point refinement left uncertified at a backward error at most this is refined again with
# the residual in extended precision (`Layer._extended`), where the program's cones allow.
EXTENDED_FROM = 1e-6
# A point refinement left uncertified at a backward error at most this, or certified with S
# singular, where a variable with a cost and no curvature enters only inactive rows
# (`_free_priced`), is refined once more with the cone blocks it enters held active
# (`Layer._inactive_held`): a multiplier far below the data, lost to the solver's tolerance.
HELD_OMEGA = 1e-6
# A null vector's entry above this fraction of its largest moves its variable
# (`_cost_along_null`; null vectors carry rounding ~1e-15 in every entry).
NULL_COST = 1e-8
# A dual row that a cost alone places its variable by (`_costs_unresolved`) and that the
# point misses by more than this fraction of its own terms is exact for a program whose cost
# there differs by as much: its structure, not its rounding (−geo_mean's hypograph variable
# at λ = 1e-14‖a‖, its chain released: 0.17; a huber split at the wrong piece: ~1). Rounding
# leaves less where the multipliers are above ~1e-13 of their cone block (an exponential
# cone's at 1e-9 of its slack: 7e-7).
COST_MISS = 1e-3
# Such a cost within this many times its row's rounding is not resolved: the multipliers
# that answer it are at the rounding of their blocks, where a released block (y = 0) and an
# active one cannot be told apart (−geo_mean's at λ = 1.5e-15‖a‖: the cost 1.1 times the
# rounding, its row met, the chain released, ∂x/∂λ 0). Resolved ones measured 32 times
# (an exponential cone's multiplier at 1e-13 of its slack, its derivative right).
COST_ROUNDED = 16.0
# The scale's calibration (`Layer._calibrate`) checks its ranking on this many more
# pseudo-random instances.
SCALE_CHECKS = 2
# An output that is zero (a projection onto a cone landing at its apex) has no relative
# accuracy: its computed entries are rounding, a few ulps of its unit (what one unit of the
# equilibrated program is in the output's units) times the conditioning. An output whose
# max-norm and estimated error are both at most ZERO_FLOOR of its unit (about 500 ulps) is
# certified as that zero. (Not the error alone: where the data are large and the output
# small, as for X ⪰ 0, tr X = 1 projecting a Y ~ 1e6, the unit is the data's scale.)
ZERO_FLOOR = 1e-13
# ... except for its entries that the program's small data set: entries of b and c (the
# equilibrated program's, whose largest is 1) of at most SMALL_DATA are carried exactly, so
# an output they set (X ⪰ 0, tr X = 1 beside a Y ~ 1e12: X's size comes from the 1, far
# below the unit of Y's rounding) has a size the user expects to the promised relative
# accuracy, not a zero's. Outputs are positively homogeneous of degree 1 in (b, c), so
# their first-order response to the small entries alone is one solve with S; an entry
# whose response exceeds DRIVEN times that solve's estimated rounding is set by them
# (`Layer._small_data_drive`) and must meet the relative test. (The margin errs towards
# "set": at 100, min c·x − Σ log x at c ~ 1e12, whose x = 1/c responds to the log's constant
# 1 at 12 times the rounding, passed as a zero of its unit 1e12 and came back negative.)
SMALL_DATA = 1e-6
DRIVEN = 2.0
# A cone block whose s lies deeper inside K than DEEP of the block's largest |y| + |v|
# (`cones.interior_depth`) has y = Π(v) = 0 exactly, not to rounding: the certificate's
# test of the rows that one data entry dominates (Layer._data_rows_met) takes it so
# (`refine.row_terms`' ``deep``).
DEEP = ACCEPT_FORWARD
# Below this max-norm in the equilibrated program (whose data have unit max-norm), an output
# that a singular S leaves undetermined is not resolved (see Layer._forward_error_ok).
RESOLVED = ACCURACY
# A null vector n of S is one to rounding where ‖S n‖∞ <= NULL_EXACT·max|S|·‖n‖₁ (64 ulps);
# a smaller singular value that is not rounding marks an ill-conditioned S, not a singular one.
NULL_EXACT = 64 * np.finfo(float).eps
# An output that S's null space moves by less than this, relative to the rounding of the same
# product (`Layer._null_space_moves`), is unmoved: null vectors (a dense SVD's, or
# `SparsePinv`'s Rayleigh–Ritz vectors) are accurate to about ε·‖S‖ over the smallest nonzero
# singular value.
NULL_RTOL = 1e-12
# Up to this order a sparse singular S's null space is taken from its dense SVD when judging
# whether it moves an output (`Layer._null_space_moves`; the 3-norm ball projection at n = 60,
# N = 361: 30 ms, only where S is singular).
NULL_SVD_MAX = 1000
# The objective's P on the variables it touches is nonsingular where its smallest eigenvalue
# exceeds this, relative to its largest, times their number: eigvalsh's error is about ε·‖P‖,
# so the exact P is nonsingular too (`Layer._strictly_convex`).
P_DEFINITE = 64 * np.finfo(float).eps
# A whole optimal face is flat: along it the cones' projections are linear. Where a direction of
# S's null space that moves an output passes, with more than FACE_TOL of its norm, through a
# block of a curved cone (second-order, exponential, power, PSD) whose DΠ is neither 0 nor I
# (to CURVED, squared and relative), it is taken for a direction of small curvature along
# which the solution is unique and S's singular value below rounding, not for a face: the
# point found is not known along it (`Layer._null_space_curved`). Σ inv_pos(x) + cᵀx with
# c ~ 1e-12 (94% off), ½‖x − y‖² + quad_over_lin(x, t) + a t with a ~ 1e-12 (t 77% off).
CURVED = 1e-24
FACE_TOL = 1e-6
# Refinement's last factorization is of S at the previous iterate; where DΠ has moved by more
# than this times that factorization's rcond (relative, `Layer._stale`) since, S is factored
# again at the refined point.
STALE = 0.1
# the most ends of faces of solutions (`Layer._face_ends`) certified in one call, each its own
# instance, and of one instance in one round (`Layer._face_ends_certified`)
FACE_ENDS_AT_ONCE = 16
# Where S's null space moves an output, the point is taken for one of a face of solutions,
# each as good as another, and F's part outside S's range must be within FACE_GAP of each
# row's own terms (`Layer._forward_error_ok`), the rounding of the residual and of the Newton
# correction (a few thousand ulps), not ACCEPT_BACKWARD: a backward error says the point
# solves a program that close to the user's, but a face does not survive such a change.
# A P whose eigenvalues along it are 1e-15 of its largest is singular to rounding in S, and
# its program has one solution, or none, however close it is to one with a face: a trust
# region with P's eigenvalues 5e-16, 1.5e-15 and 0.27 and a ball of radius 1.9e12 had its
# point inside the ball, 2P̂x̂ + ĉ = ĉ ~ 2e-12 beside |P̂||x̂| ~ 2e-3 on the rows along P's
# near-null space (passing at 1e-9), and was 100% off (the solution is on the sphere).
FACE_GAP = 1e-12
# A computed null vector passes through the equality rows' duals where its entries there
# reach this fraction of its largest (`Layer._null_space_in_equalities`).
NULL_EQUALITY = 1e-6
# A PSD (NSD) parameter value passes if its smallest (largest) eigenvalue is at least
# −DEFINITE_RTOL·(1 + max |entry|) (at most +): the rounding of a matrix built definite.
DEFINITE_RTOL = 1e-9


# SCS tolerance of the retry for instances refinement could not certify.
RETRY_EPS = 1e-9
# SCS's retry at RETRY_EPS first runs at most RETRY_ITERS_FACTOR times the iterations its
# loose attempt took (at least RETRY_ITERS_MIN): a point for refinement to start from, not a
# solution, is what it is for, and on an ill-conditioned instance the tight tolerance can
# take SCS's whole max_iters (100,000 iterations, 250 ms for six variables) where the
# fallbacks after it (the rebalanced scaling, an interior-point second opinion) settle the
# instance in a few milliseconds. What none of them settles is then given the rest of
# max_iters, warm-started where the capped run stopped.
RETRY_ITERS_FACTOR = 20
RETRY_ITERS_MIN = 2_000
# Refinement, the certificate and the derivatives of a batch run in parts, one per worker,
# where the batch holds at least SETTLE_PARALLEL_FROM unknowns (instances × (n + m)) and each
# part at least SETTLE_PART_MIN instances: their batched NumPy arithmetic releases the GIL,
# their Python does not, so a part must be large for the overlap to pay (BENCHMARKS.md:
# softmax n = 100 at batch 512, 256,000 unknowns, 20% less wall time; polytope-20d,
# sparsemax n = 100 and PSD k = 10 at batch 64, 3,800-13,000 unknowns, 12-27% more)
SETTLE_PARALLEL_FROM = 50_000
SETTLE_PART_MIN = 2
# Where a batch is cut so, its solver is called per instance (SCS, Clarabel) and the program
# holds PSD or exponential cones (whose projections make each solver call long), it is cut
# into PIPELINE_PARTS parts of at least PIPELINE_PART_MIN instances instead, whose solves and
# refinement overlap (`parallel.pipelined`): the solver's calls run outside the GIL beside a
# part's refinement, which holds it (solving every part first and then refining the parts
# concurrently leaves every core but one idle). Forward + backward, medians of alternated
# runs (BENCHMARKS.md): PSD projection with a trace constraint, k = 30, batch 64, 334 → 307
# and 356 → 341 ms; softmax n = 100 at batch 512, 666 → 654 ms. The solver's calls need the
# GIL between instances, which a refinement holding it gives up only every switch interval:
# the overlap is partial. Where the solves are short it does not pay, each part costing its
# refinement's fixed overhead: sparsemax n = 100 at batch 256 (nonnegative cones) in eight
# parts 49.7 → 68.4 ms, in four 53.5; PSD k = 30 at batch 8 (below SETTLE_PARALLEL_FROM) in
# four parts 46 → 56 ms.
PIPELINE_PARTS = 8
PIPELINE_PART_MIN = 4
# A PSD block of order k costs about k³ a step beyond its k(k + 1)/2 unknowns (its
# eigendecomposition, and the low-rank products and capacitance of `derivative.Woodbury`,
# whose rank grows with k), which LAPACK and BLAS run outside the GIL: it counts as
# PSD_WORK·k³ unknowns towards SETTLE_PARALLEL_FROM (`_work`). In parts, forward + backward
# of the trace-constrained PSD projection (BENCHMARKS.md): k = 30 at batch 16 4% slower and
# at 32 3% faster, k = 40 at 8 3% and at 16 13% faster, k = 50 at 4 7% and at 8 17% faster;
# at 0.05 the cut falls at batch 22, 11 and 6.
PSD_WORK = 0.05
# Where the user did not choose the solver, an instance that neither the chosen solver nor SCS
# at RETRY_EPS settled (solved and certified, or certified infeasible or unbounded) is solved
# once more by this interior-point backend, whose central point refinement often takes where
# it stalled at SCS's (see `Layer.forward`).
SECOND_OPINION = "clarabel"
# `Forward.vjp` maps its solve to the parameters this many instances at a time.
VJP_BLOCK = 64
# A solved instance whose S has a reciprocal condition estimate below this is linearized
# once more in the program scaled at its solution (`equilibrate.at_solution`), and kept so
# where that estimate is more than RESCALE_GAIN times better: the derivative's solves lose
# about log10(1/rcond) digits, so an S this close to singular leaves ~1e-9 of a Jacobian's
# largest entry, while its conditioning can be the matrix scaling's and not the problem's.
RESCALE_RCOND = 1e-7
RESCALE_GAIN = 4.0
# ... but not where it is below this: singular to working precision in any scaling the
# solution allows (the lasso above reaches it with its data 1e-9 apart, where the forward is
# not solved), as where CVXPY's auxiliary variables are not unique (rcond 0 … 1e-35: an
# inactive ball's epigraph variable, entropic OT's exponential cones), which a second
# linearization would only make slower (BENCHMARKS.md, nineteenth session).
RESCALE_FLOOR = 1e-20
# ... and so is one whose point is this far from balance, max(|x̂|, |ŷ|) over min of the two
# (max-norms) in the equilibrated program, kept there unless S is RESCALE_GAIN times worse
# conditioned: the derivative's right-hand sides carry terms of both sizes, and a solve
# leaves the small side an error of ε times the large (an OptNet QP whose linear term is
# 1e12: x̂ ~ 1e-6, ŷ ~ 1e6 at rcond 1.5e-3, its Jacobian 1e-4 off; 1e-10 … 1e-15 in the
# program scaled at its solution, rcond 3e-3 … 5e-3).
IMBALANCE = 1e4
# Rounds of the retry in the program scaled at the best point found (`_solution_rescaled`):
# each from the best point the round before reached, where its backward error is within
# ACCEPT_BACKWARD or below that of the round's start. A
# scaling set from a poor point can leave the program badly scaled in another way (softmax
# with (z, τ, r) × 1e12: Clarabel's point had the simplex's mass on one entry, the scaling
# it gave S's rcond 8e-14), and the point that round reaches then sets a good one.
SOLUTION_ROUNDS = 2
# Rounds of the same with second-order cones boosted (`Layer._rounds`), each after the
# first scaling the program the one before solved. Σ inv_pos(x) + c·x s.t. x <= u at
# c ~ 1e12 (x ~ 1e-6 beside its cones' t ~ 1e6), 24 instances: two rounds certified 14,
# three 22, four all 24, against the closed form (the first point holds x as rounding: its
# cones' boosts come out right, x's scale does not).
BOOSTED_ROUNDS = 4
# A call with at most ACTIVE_SET_BATCH instances of a small polyhedral program
# (`polyhedral.small_polyhedral`) takes each solver point to the exact solution of its active
# set (`polyhedral.ActiveSet`) in place of refinement, and is certified there
# (`Layer._vertices`) where every instance's M has a reciprocal condition of at least
# ACTIVE_SET_RCOND (at least RESCALE_RCOND: none is linearized again) and every multiplier and
# slack of an inequality exceeds ACTIVE_SET_MARGIN of its row's own scale on its side
# (`derivative.row_scales`, which the general path's kinks are judged on: ten times
# KINK_TOL, so that no point taken is one the general path counts as a kink; such a point
# is never judged for kinks again, `ConeSolution.at`'s ``strict``) and its own estimated
# error: the slack of a box 5e-10 of its bound wide, 1e5 times its own error, is taken.
# The same solves as refinement's last Newton step, the certificate's and the
# derivative's, without their code for every other cone: at one
# instance most of the time (projection onto a 20-D polytope with 40 faces: 2,400 Python
# calls a call). Above a few instances the general path's batched arithmetic is faster.
ACTIVE_SET_BATCH = 4
# In a batch of any size, an instance of a small polyhedral program that refinement and the
# certificate leave unsettled is tried at its active set too (`Layer._vertex_points`), before
# any retry, and for a linear program at the vertex HiGHS finds (`polyhedral.lp_vertex`):
# Newton stalls on a wrong branch where two parallel bounds nearly coincide (1 <= x <= 1 +
# 1e-7, SCS's multipliers both ~800), and the retries' SCS runs take up to 200,000
# iterations without settling it; LPs whose entries each sit at their own scale (10^±6)
# give SCS points with no usable active set.
ACTIVE_SET_RESCUE = True
ACTIVE_SET_RCOND = 1e-7
ACTIVE_SET_MARGIN = 10 * KINK_TOL
# Where the tuning leaves the solver open, a layer decides it from its template
# (`Layer._default_solver`): Moreau's active-set method for programs with only zero and
# nonnegative cones, at most ACTIVE_SET_MAX_ROWS inequalities and n + m up to
# ACTIVE_SET_MAX_SIZE, from DEFAULT_BATCH_FROM instances on (SCS below: Moreau's one call per
# batch has a fixed cost). Measured, forward + backward against SCS: projection onto a 2-D
# polytope (8 faces) at batch 512 103 → 38 ms, the OptNet QP (50 inequalities) 1.94 → 1.56 s;
# single instances 1.5-3× slower than SCS, the crossover at 12-14 instances; sparsemax
# (100 inequalities, half active) 4× slower (the active set grows one row an iteration).
ACTIVE_SET_MAX_ROWS = 64
ACTIVE_SET_MAX_SIZE = 512
DEFAULT_BATCH_FROM = 16
# `Layer.tune` times each candidate solver on up to PROBE_BATCH of its sample's instances,
# fewer (down to PROBE_MIN_BATCH) in proportion above n + m = PROBE_FULL_SIZE; programs with
# n + m above PROBE_MAX_SIZE are not probed (SCS: the probe would cost many seconds).
PROBE_BATCH = 64
PROBE_MIN_BATCH = 4
PROBE_FULL_SIZE = 500
PROBE_MAX_SIZE = 4000
# Timed runs per candidate after one to warm up (`Layer._timed`).
PROBE_RUNS = 2


def _solver_settings(solver_args: dict | None) -> bool:
    """Do ``solver_args`` hold a solver's settings (beyond our refinement options)? Given
    without a solver name, those are SCS's."""
    if not isinstance(solver_args, Mapping):  # (None; anything else `check_options` names)
        return False
    return bool(set(solver_args) - set(OUR_OPTIONS))


def vec(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(B, *shape) → (B, size), each instance flattened column-major (CVXPY's order)."""
    B = value.shape[0]
    if value.ndim > 2:
        value = np.transpose(value, (0, *range(value.ndim - 1, 0, -1)))
    return value.reshape(B, math.prod(shape))


def unvec(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `vec`: (B, size) → (B, *shape)."""
    B = flat.shape[0]
    arr = flat.reshape((B, *shape[::-1]))
    return np.transpose(arr, (0, *range(arr.ndim - 1, 0, -1))) if arr.ndim > 2 else arr


def _blas_single(method):
    """Run ``method`` with BLAS single-threaded, set once for the whole call (parallel.py)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return method(*args, **kwargs)
    return wrapper


# `SolveInfo.nondifferentiable_reason` values: a null vector of the residual map's derivative
# moves an output (the solution is not unique), or a weakly active constraint's one-sided
# derivatives differ in the outputs.
NON_UNIQUE = "non-unique"
WEAKLY_ACTIVE = "weakly-active"


@dataclass
class SolveInfo:
    """Per-instance diagnostics of one call (arrays of length batch).

    ``scs_status`` / ``scs_iterations``: the solver's own status (mapped to `Status`) and
    iteration count, whichever backend solved (SCS by default, hence the names).
    ``residual_before`` / ``residual_after``: the componentwise relative backward error ω
    of the optimality conditions (`refine.backward_error`) at the solver's solution and after
    refinement: the largest relative change of any one entry of the data that would make
    the point exact (NaN without refinement).
    """

    status: list[Status]
    scs_status: list[Status]
    scs_iterations: np.ndarray
    residual_before: np.ndarray
    residual_after: np.ndarray
    refine_steps: np.ndarray
    solve_seconds: np.ndarray
    total_seconds: float
    # The reciprocal condition estimate of S at each solved instance (filled with the
    # linearization); of M, at an active set's exact solution (`Layer._vertices`)
    rcond: np.ndarray | None = None
    # Where the requested outputs' derivative is not defined (filled with the linearization,
    # see `Forward.nondifferentiable`): "" where it is, NON_UNIQUE or WEAKLY_ACTIVE where not.
    nondifferentiable: np.ndarray | None = None  # (B,) bool
    nondifferentiable_reason: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every field, as plain Python values (lists, str, float; None where not computed)."""
        def plain(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, list):
                return [str(s) for s in v]
            return v
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}


class _Diagnosis:
    """Where a `Forward`'s outputs are not differentiable, gathered over its linearizations
    (one, or one per chunk) into its ``info``, and warned about once, with batch indices."""

    def __init__(self, fwd: Forward) -> None:
        self.fwd = fwd
        self.ambiguous: list[np.ndarray] = []
        self.kinks: list[np.ndarray] = []

    def examine(self, sol: ConeSolution) -> tuple[np.ndarray, np.ndarray]:
        """`derivative.diagnose` of the linearization ``sol`` (records nothing: safe to run
        concurrently)."""
        layer = self.fwd.layer
        blocks = [(p.offset, p.size) for p in layer.parameters]
        return diagnose(sol, layer.template.recover, blocks)

    def see(self, idx: np.ndarray, sol: ConeSolution,
            examined: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Record the diagnosis (``examined``, or `examine` now) of the linearization ``sol``
        at the instances ``idx``."""
        info = self.fwd.info
        assert info.rcond is not None and info.nondifferentiable is not None
        assert info.nondifferentiable_reason is not None
        info.rcond[idx] = sol.lin.rcond
        non_unique, weakly_active = self.examine(sol) if examined is None else examined
        unresolved = self.fwd._refined.unresolved
        if unresolved is not None:
            # (a cost the point does not resolve places a variable the derivative rests on)
            non_unique = non_unique | unresolved[idx]
            weakly_active = weakly_active & ~non_unique
        for where, reason, found in ((idx[non_unique], NON_UNIQUE, self.ambiguous),
                                     (idx[weakly_active], WEAKLY_ACTIVE, self.kinks)):
            for i in where:
                info.nondifferentiable_reason[i] = reason
            info.nondifferentiable[where] = True
            found.append(where)

    def report(self) -> None:
        """One `NonDifferentiableWarning` naming every instance seen not differentiable."""
        ambiguous = np.concatenate([np.zeros(0, dtype=int), *self.ambiguous])
        kinks = np.concatenate([np.zeros(0, dtype=int), *self.kinks])
        what = []
        if ambiguous.size:
            what.append(
                f"at batch index [{describe_indices(ambiguous.tolist())}] the solution is not "
                "unique, or constraints are tied, or a term far below the others is not "
                "resolved in float64 at the point (the residual-map derivative is singular in "
                "directions that move the outputs, or that the parameters' perturbations "
                "excite): returning the minimum-norm least-squares derivative"
            )
        if kinks.size:
            what.append(
                f"at batch index [{describe_indices(kinks.tolist())}] strict complementarity "
                "fails (a constraint is weakly active: its slack and its multiplier are both "
                "zero, e.g. a tie at a sparsemax support boundary) and the outputs' one-sided "
                "derivatives differ: returning the one with those constraints held active"
            )
        if what:
            warnings.warn("the solution map is not differentiable; " + "; ".join(what) + ".",
                          NonDifferentiableWarning, stacklevel=4)


class _Lock:
    """A lock of its own (``_lock``), renewed in a forked child (`fork_safe_lock`)."""

    def __init__(self) -> None:
        self._lock = fork_safe_lock(self)


@dataclass
class Forward:
    """The result of one call: outputs, diagnostics, and what VJP/JVP need."""

    layer: Layer
    outputs: list[np.ndarray]   # each (B, *shape)
    batched: bool
    input_batched: list[bool]
    info: SolveInfo
    ok: np.ndarray              # (B,) solved instances
    _ops: BatchOps = field(repr=False)                           # equilibrated program
    _scaling: Equilibration = field(repr=False)                  # its scaling of the user's
    _refined: Any = field(default=None, repr=False)              # its solution
    # Set by a framework adapter (torch.py): the dtype and device of each parameter and
    # output, and how a vmapped call was folded into this one batched solve (or None).
    meta: Any = field(default=None, repr=False)
    fold: Any = field(default=None, repr=False)
    # The low-memory mode's chunk (`Tuning.chunk_size`): derivatives factor this many
    # instances at a time and keep nothing; None: one linearization of the batch, kept.
    chunk: int | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return len(self.ok)

    def __getstate__(self) -> dict:  # pickled and copied without `_linearized`'s lock
        return {k: v for k, v in self.__dict__.items() if k != "_linearizing"}

    @property
    def _linearized(self) -> list[tuple[np.ndarray, ConeSolution]]:
        """Linearizations at the solved instances, built on first use (by a derivative or by
        `nondifferentiable`) and kept: (instances, linearization) pairs, one, or for a batch
        large enough (`_parts`) one per worker, made concurrently. Fills ``info.rcond`` and
        ``info.nondifferentiable`` and warns (`NonDifferentiableWarning`, once) where the
        outputs' derivative is not defined. Made once, under this result's own lock (renewed
        in a forked child, `fork_safe_lock`), while other results' are made alongside."""
        made = self.__dict__.get("_linearizations")
        if made is None:
            with self.__dict__.setdefault("_linearizing", _Lock())._lock:
                made = self.__dict__.get("_linearizations")
                if made is None:
                    made = self.__dict__["_linearizations"] = self._linearize_batch()
        return made

    def _linearize_batch(self) -> list[tuple[np.ndarray, ConeSolution]]:
        """`_linearized`'s linearizations, made."""
        idx = np.flatnonzero(self.ok)
        diagnosed = self._diagnosis()
        if idx.size == 0:
            return []
        t = self.layer.template
        pieces = [idx[sl] for sl in _parts(idx.size, _work(t))]

        def linearize(part: np.ndarray) -> tuple[ConeSolution, Any]:
            sol = self._linearize(part)
            return sol, None if diagnosed is None else diagnosed.examine(sol)

        made = parallel_map(linearize, pieces)  # (one piece: in this thread)
        # refinement's factorizations are now the linearizations' where they reuse them
        # (and garbage where they do not): the linearizations hold them
        self._refined.factors = None
        if diagnosed is not None:
            for part, (sol, found) in zip(pieces, made, strict=True):
                diagnosed.see(part, sol, found)
            diagnosed.report()
        return [(part, sol) for part, (sol, _) in zip(pieces, made, strict=True)]

    def _solutions(self) -> Iterator[tuple[np.ndarray, ConeSolution]]:
        """(solved instances, the linearization at them): all at once, kept (`_linearized`),
        or, in the low-memory mode (``Tuning.chunk_size``), ``chunk`` instances at a time,
        each linearization made when reached and dropped after. The first pass fills
        ``info``'s diagnostics and warns once, as `_linearized` does; a consumer must
        exhaust it."""
        if self.chunk is None:
            yield from self._linearized
            return
        idx = np.flatnonzero(self.ok)
        diagnosed = self._diagnosis()
        for lo in range(0, idx.size, self.chunk):
            part = idx[lo : lo + self.chunk]
            sol = self._linearize(part)
            if diagnosed is not None:
                diagnosed.see(part, sol)
            yield part, sol
            del sol
        if diagnosed is not None:
            diagnosed.report()

    def _each(self, f: Callable[[np.ndarray, ConeSolution], None]) -> None:
        """``f(instances, linearization)`` for each of `_solutions`: the kept ones
        concurrently (`parallel_map`: ``f`` must write only its own instances' rows), the
        low-memory mode's chunks one after another as each is made."""
        if self.chunk is None:
            parallel_map(lambda item: f(*item), self._linearized)
            return
        for part, sol in self._solutions():
            f(part, sol)

    def _linearize(self, idx: np.ndarray) -> ConeSolution:
        """`ConeSolution.at` the solved instances ``idx``, reusing refinement's
        factorizations where it kept them."""
        r = self._refined
        ops = self._ops.take(idx)
        sets = None if r.vertex is None else [r.vertex[i] for i in idx]
        skewed = _unbalanced(r.x[idx], r.y[idx])
        if sets is not None and all(a is not None for a in sets) and not skewed.any():
            # exact solutions of their active sets: S's solves are their M's
            t = ops.template
            v = r.v[idx]
            return ConeSolution(ops=ops, x=r.x[idx], y=r.y[idx], s=r.s[idx], v=v,
                                D=dproject(v, t.dims, dual=True), lin=ActiveSets(sets),
                                kink_mask=np.zeros(v.shape, dtype=bool),
                                scaling=self._scaling.take(idx))
        reuse = None if r.factors is None else [r.factors[i] for i in idx]
        known = None if r.D is None else (r.D.take(idx), r.v_D[idx])
        v = None if r.v is None else r.v[idx]
        extended = None if r.extended is None else r.extended[idx]
        strict = None if sets is None else np.array([a is not None for a in sets], dtype=bool)
        sol = ConeSolution.at(ops, r.x[idx], r.y[idx], r.s[idx], reuse=reuse, v=v,
                              known=known, scaling=self._scaling.take(idx), extended=extended,
                              strict=strict)
        rc = sol.lin.rcond
        ill = (rc <= RESCALE_RCOND) & (rc >= RESCALE_FLOOR)
        poor = ill | skewed & (rc >= RESCALE_FLOOR)
        # a derivative that float64 does not resolve at this scaling (`imprecise`) is tried
        # once more in the program scaled at its solution, with the instances above (one
        # rescaling: a second would start from points and v the first has moved), and is
        # reported where it stays so; those rescaled anyway are estimated after it only.
        # Along one random direction of all parameters at once: its error is judged against
        # the largest change of the outputs, as a Jacobian's against its largest entry.
        L = self.layer
        directions = parameter_directions(L.template, [(0, L.template.num_params)],
                                          per_block=1)
        loose = sol.imprecise(L.template.recover, *directions, where=~poor)
        retry = loose & (rc >= RESCALE_FLOOR) & ~poor
        todo = np.flatnonzero(poor | retry)
        if todo.size:
            sol = self._rescaled(sol, todo, v, extended, (ill | retry)[todo], strict)
            again = np.zeros(len(rc), dtype=bool)
            again[todo] = True
            loose = np.where(again, sol.imprecise(L.template.recover, *directions, where=again),
                             loose)
        sol.loose = loose
        return sol

    def _rescaled(self, sol: ConeSolution, poor: np.ndarray, v: np.ndarray | None,
                  extended: np.ndarray | None, ill: np.ndarray,
                  strict: np.ndarray | None = None) -> ConeSolution:
        """``sol`` with its instances ``poor`` linearized once more in the program scaled at
        their solution (`equilibrate.at_solution`), where that makes S better conditioned by
        more than RESCALE_GAIN (``ill``: those whose S is ill-conditioned) or no worse than
        1/RESCALE_GAIN (the others: their point far from balance, `IMBALANCE`); their
        derivatives, the kinks and the condition reported are then those of that scaling.
        The others keep their factorizations."""
        t = self.layer.template
        ops, eq = sol.ops, sol.scaling
        assert eq is not None  # (`_linearize` sets it)
        a1, h1, point = ops.a[poor], ops.h[poor], (sol.x[poor], sol.y[poor], sol.s[poor])
        rel = at_solution(t, a1, h1, *point)
        # at_solution keeps ρ = σ, and with it x̂ and ŷ apart where the Lagrangian's terms
        # are balanced already: ρ and σ move apart by the factor that brings their max-norms
        # to their geometric mean, on the instances rescaled for their balance
        x2, y2, _ = rel.scaled(*point)
        ax, ay = np.abs(x2).max(axis=1, initial=0.0), np.abs(y2).max(axis=1, initial=0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = binary(np.where(~ill & (ax > 0) & (ay > 0), np.sqrt(ay / ax), 1.0))
        rel = psd_met(t, replace(rel, rho=rel.rho * k, sigma=rel.sigma / k), *point)
        x2, y2, s2 = rel.scaled(*point)
        _, a2, _, h2 = rel.data(t, np.zeros_like(x2), a1, np.zeros_like(y2), h1)
        # (a point the scaling does not hold is still taken where S is ill-conditioned
        # without it: there the scaling is what the derivative has)
        held = ill | _pair_held(BatchOps(t, a2, h2), y2, s2)
        if not held.any():
            return sol
        poor, ill, point = poor[held], ill[held], tuple(p[held] for p in point)
        x2, y2, s2, a2, h2 = x2[held], y2[held], s2[held], a2[held], h2[held]
        rel = rel.take(np.flatnonzero(held))
        wide = None if extended is None else extended[poor]
        eq2 = eq.take(poor).composed(rel)
        trial = ConeSolution.at(BatchOps(t, a2, h2), x2, y2, s2, v=y2 - s2, scaling=eq2,
                                extended=wide, strict=None if strict is None else strict[poor])
        with np.errstate(invalid="ignore"):
            gain = trial.lin.rcond > np.where(ill, RESCALE_GAIN, 1 / RESCALE_GAIN) \
                * np.maximum(sol.lin.rcond[poor], 0.0)
        if not gain.any():
            return sol
        took, js = poor[gain], np.flatnonzero(gain)
        a, h = np.array(ops.a), np.array(ops.h)
        a[took], h[took] = a2[js], h2[js]
        x, y, s = np.array(sol.x), np.array(sol.y), np.array(sol.s)
        x[took], y[took], s[took] = x2[js], y2[js], s2[js]
        v_all = y - s if v is None else np.array(v)
        v_all[took] = y2[js] - s2[js]
        reuse: list[Factor | None] = list(sol.lin.factors)
        for i, j in zip(took.tolist(), js.tolist(), strict=True):
            reuse[i] = trial.lin.factors[j]
        return ConeSolution.at(BatchOps(t, a, h), x, y, s, reuse=reuse, v=v_all,
                               scaling=eq.merged(took, eq2, js), extended=extended,
                               strict=strict)

    def _diagnosis(self) -> _Diagnosis | None:
        """A fresh `_Diagnosis` filling ``info`` on the first linearization, None after."""
        if self.info.nondifferentiable is not None:
            return None
        B = self.batch_size
        self.info.nondifferentiable = np.zeros(B, dtype=bool)
        self.info.nondifferentiable_reason = [""] * B
        self.info.rcond = np.full(B, np.nan)
        return _Diagnosis(self)

    @property
    def nondifferentiable(self) -> np.ndarray:
        """(B,) bool: instances where the outputs' derivative is not defined (the reason per
        instance in ``info.nondifferentiable_reason``). Computed on first use from the
        linearization the derivatives use (refinement's last factorization, where DΠ is
        unchanged), so a forward-only call pays for it only when it asks."""
        for _ in self._solutions():
            pass
        assert self.info.nondifferentiable is not None
        return self.info.nondifferentiable

    @_blas_single
    def vjp(self, grads: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        """Cotangents of the outputs (each (B, *shape) or None) ↦ cotangents of the inputs."""
        L, t = self.layer, self.layer.template
        B = self.batch_size
        grads = self._per_item("vjp", "cotangent", "output", L.outputs, grads, True)
        g = np.zeros((B, t.recover.shape[0]))
        for spec, lo, gi in zip(L.outputs, L._out_offsets, grads, strict=True):
            if gi is not None:
                g[:, lo : lo + spec.size] = vec(gi, spec.shape)
        g[~self.ok] = 0.0  # failed instances: zero gradients (their outputs are NaN)
        dtheta = np.zeros((B, t.num_params))

        def pull(idx: np.ndarray, sol: ConeSolution) -> None:
            eq = sol.scaling
            assert eq is not None  # (`_linearize` sets it)
            gxy = times_t(g[idx], t.transposed["recover"])
            gx, gy = eq.solution_adjoint(gxy[:, : t.n], gxy[:, t.n :])
            r = sol.adjoint(gx, gy)
            # the data cotangents VJP_BLOCK instances at a time: their (·, nnz(A))
            # temporaries stay small (whole, OptNet QP at batch 512: 22 MB each, whose first
            # touch cost more than the arithmetic)
            for lo in range(0, idx.size, VJP_BLOCK):
                sl = slice(lo, lo + VJP_BLOCK)
                part = eq.take(np.arange(lo, min(lo + VJP_BLOCK, idx.size)))
                dtheta[idx[sl]] = t.apply_adjoint(*part.data_adjoint(
                    t, *sol.data_gradient(r, sl)))

        self._each(pull)
        out = []
        for param, batched in zip(L.parameters, self.input_batched, strict=True):
            d = unvec(dtheta[:, param.offset : param.offset + param.size], param.shape)
            out.append(d if batched else d.sum(axis=0))
        return out

    def _per_item(self, method: str, kind: str, of: str, specs: Sequence[Any],
                  values: Sequence[Any], batched_only: bool) -> list[np.ndarray | None]:
        """``values`` checked against ``specs`` (one each, None for zero), as float arrays:
        each of shape (B, *shape), or also (*shape) unless ``batched_only``; a mismatch
        raises `ParameterError` naming the method, the item and the shapes expected."""
        B = self.batch_size
        if isinstance(values, np.ndarray) or len(values) != len(specs):
            got = "an array" if isinstance(values, np.ndarray) else f"{len(values)}"
            raise ParameterError(
                f"{method}: expected a sequence of {len(specs)} {kind}(s), one per {of} ("
                + ", ".join(sp.name for sp in specs) + f", in order; None for zero); got {got}.")
        out: list[np.ndarray | None] = []
        for spec, v in zip(specs, values, strict=True):
            if v is None:
                out.append(None)
                continue
            try:
                a = np.asarray(v, dtype=float)
            except (TypeError, ValueError):
                raise ParameterError(f"{method}: the {kind} for {of} {spec.name!r} must be a "
                                     f"real array, got {type(v).__name__}.") from None
            shapes = [(B, *spec.shape)] + ([] if batched_only else [tuple(spec.shape)])
            if a.shape not in shapes:
                raise ParameterError(
                    f"{method}: the {kind} for {of} {spec.name!r} must have shape "
                    + " or ".join(str(sh) for sh in shapes) + f" (batch size {B}), got "
                    f"{a.shape}.")
            out.append(a)
        return out

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The refined solver solution (x (B, n), y (B, m), s (B, m)) and the solved mask (B,).

        With the parameter values, this is all `Layer.restore` needs to rebuild the
        VJP/JVP machinery without solving again (used by the JAX adapter, whose
        callbacks can only pass arrays).
        """
        r = self._refined
        x, y, s = self._scaling.solution(r.x, r.y, r.s)
        return x, y, s, self.ok

    @_blas_single
    def jacobian(self, index: int = 0) -> list[list[np.ndarray]]:
        """Full Jacobian of one instance: J[i][j] = ∂output_i/∂param_j, shaped
        ``output_i.shape + param_j.shape`` (NaN if the instance was not solved). ``index``
        counts from the end where negative, as Python's indexing does."""
        L, t = self.layer, self.layer.template
        B = self.batch_size
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) \
                or not -B <= index < B:
            raise ParameterError(f"jacobian: index must be an integer batch index in "
                                 f"[{-B}, {B}) (batch size {B}), got {index!r}.")
        index = int(index) % B
        full = np.full((t.recover.shape[0], t.num_params), np.nan)
        if self.ok[index]:
            if self.chunk is None:
                part, sol = next((p, q) for p, q in self._linearized if index in p)
                k = int(np.searchsorted(part, index))
            else:  # the low-memory mode: this instance alone
                _ = self.nondifferentiable
                k, sol = 0, self._linearize(np.array([index]))
            dense = (t.C.toarray(), t.F.toarray(), t.G.toarray(), t.H.toarray())
            dx, dy = sol.jacobian_one(k, *dense)
            full = np.asarray(t.recover @ np.concatenate([dx, dy], axis=0))
        return L.jacobian_blocks(full)

    @_blas_single
    def jvp(self, tangents: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        """Tangents of the inputs (None for zero) ↦ tangents of the outputs, each (B, *shape)."""
        L, t = self.layer, self.layer.template
        B = self.batch_size
        tangents = self._per_item("jvp", "tangent", "parameter", L.parameters, tangents, False)
        dtheta = np.zeros((B, t.num_params))
        for spec, ti in zip(L.parameters, tangents, strict=True):
            if ti is None:
                continue
            ti = np.broadcast_to(ti, (B, *spec.shape)) if ti.ndim == len(spec.shape) else ti
            dtheta[:, spec.offset : spec.offset + spec.size] = vec(ti, spec.shape)
        dout = np.zeros((B, t.recover.shape[0]))

        def push(idx: np.ndarray, sol: ConeSolution) -> None:
            dth = dtheta[idx]
            eq = sol.scaling
            assert eq is not None  # (`_linearize` sets it)
            dc, da, db, dh = eq.data(t, *(times_t(dth, M) for M in (t.C, t.F, t.G, t.H)))
            dx, dy = eq.solution(*sol.jvp(dc, da, db, dh))
            dout[idx] = times_t(np.concatenate([dx, dy], axis=1), t.recover)

        self._each(push)
        return [unvec(dout[:, lo : lo + s.size], s.shape)
                for s, lo in zip(L.outputs, L._out_offsets, strict=True)]


class Layer:
    """A compiled differentiable convex optimization layer (framework-free).

    Call ``layer.torch()`` for a ``torch.nn.Module`` or ``layer.jax()`` for a JAX
    function; ``layer.forward(values)`` runs the NumPy pipeline directly.
    """

    def __init__(self, template: ConeTemplate, parameters: tuple[ParameterSpec, ...],
                 outputs: tuple[OutputSpec, ...], solver_args: dict | None = None,
                 on_failure: str = "raise", solver: str | None = None,
                 tuning: Tuning | None = None) -> None:
        self.template = template
        self.parameters = parameters
        self.outputs = outputs
        if tuning is not None and not isinstance(tuning, Tuning):
            raise ProblemError(f"tuning must be a declarative.Tuning, got {type(tuning)!r}.")
        if tuning is None:
            tuning = Tuning() if solver is None else Tuning(solver=get_backend(solver).name)
        elif solver is not None and tuning.solver is not None \
                and get_backend(solver).name != tuning.solver:
            raise ProblemError(f"solver={solver!r} and tuning.solver={tuning.solver!r} differ; "
                               "give one of them.")
        if solver is not None:
            tuning = replace(tuning, solver=get_backend(solver).name)
        tuning = self._settled(tuning, solver_args)
        # a solver the user named (else the one decided from the template, `_default_solver`:
        # a call's solver settings without a solver name are then SCS's, as at compile time)
        self._solver_named = tuning.solver is not None
        self._check_tuning(tuning)
        self._tuning = tuning
        self.solver_args = self.check_options(solver_args, on_failure, tuning.solver)
        if tuning.solver is not None:
            self._check_program(get_backend(tuning.solver), self.solver_args)
        self.on_failure = on_failure
        self._out_offsets = np.concatenate([[0], np.cumsum([s.size for s in outputs])])[:-1]
        # Decisions left open in the tuning are made on first use, under this lock, from the
        # template alone, so that no call history shows in any result
        self._lock = fork_safe_lock(self)
        # Caches: the compile-time options resolved (key, value); each backend's state shared
        # by instances where A and P do not depend on the parameters (`Backend.share`)
        self._resolved: dict[str | None, tuple] = {}  # by the solver a call names
        self._shared: dict[str, Any] = {}
        self._ordered_first = False  # (`_ordering_first` done)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_ordered_first", False)
        if not isinstance(self.__dict__.get("_resolved"), dict):  # (an older pickle's)
            self._resolved = {}
        self._lock = fork_safe_lock(self)

    def __repr__(self) -> str:
        ps = ", ".join(f"{p.name}{list(p.shape)}" for p in self.parameters)
        os_ = ", ".join(f"{o.name}{list(o.shape)}" for o in self.outputs)
        return (f"Layer(({ps}) -> ({os_}), cones={self.template.dims.kinds()}, "
                f"n={self.template.n}, m={self.template.m}, tuning={self._tuning!r})")

    # -- tuning ------------------------------------------------------------------------
    @property
    def tuning(self) -> Tuning:
        """What this layer has decided so far (fields still None are decided when a call
        needs them). Settable: ``layer.tuning = dl.Tuning(...)``."""
        return self._tuning

    @tuning.setter
    def tuning(self, value: Tuning) -> None:
        if not isinstance(value, Tuning):
            raise ProblemError(f"tuning must be a declarative.Tuning, got {type(value)!r}.")
        value = self._settled(value, self.solver_args)
        self._check_tuning(value)
        self.check_options(self.solver_args, self.on_failure, value.solver)
        with self._lock:
            self._tuning = value
            self._solver_named = value.solver is not None
            self._resolved = {}

    @staticmethod
    def _settled(tuning: Tuning, solver_args: dict | None) -> Tuning:
        """``tuning`` with its solver set to the default (SCS) where it is open but
        ``solver_args`` hold a solver's settings (`_solver_settings`)."""
        if tuning.solver is None and _solver_settings(solver_args):
            return replace(tuning, solver=DEFAULT_SOLVER)
        return tuning

    def _solver(self) -> str:
        """The layer's solver: the tuning's, decided from the template on first use where it
        is open (`_default_solver`)."""
        name = self._tuning.solver
        return self._default_solver() if name is None else name

    def _default_solver(self) -> str:
        """Decide the solver from the template alone (so no result depends on the call
        history): Moreau's active-set method, from DEFAULT_BATCH_FROM instances on, where
        Moreau is installed and the program has only zero and nonnegative cones, at most
        ACTIVE_SET_MAX_ROWS inequalities and n + m <= ACTIVE_SET_MAX_SIZE; else SCS."""
        t = self.template
        dims = t.dims
        chosen: tuple[str, str | None, int | None] = (DEFAULT_SOLVER, None, None)
        if dims.polyhedral and 0 < dims.nonneg <= ACTIVE_SET_MAX_ROWS \
                and t.n + t.m <= ACTIVE_SET_MAX_SIZE:
            try:
                import declarative.backends.moreau  # noqa: F401
                chosen = ("moreau", "active_set", DEFAULT_BATCH_FROM)
            except ImportError:
                pass
        return self._keep_solver(*chosen)

    def _keep_solver(self, solver: str, method: str | None, batch_from: int | None) -> str:
        """Keep ``solver`` (with Moreau's ``method`` and ``batch_from`` where not None, and
        where the tuning has none) as the tuning's where it is still open (under the lock:
        a concurrent first call may have decided it); the tuning's solver."""
        with self._lock:
            if self._tuning.solver is None:
                tuning = replace(self._tuning, solver=solver)
                if tuning.method is None and method is not None:
                    tuning = replace(tuning, method=method)
                if tuning.batch_from is None and batch_from is not None:
                    tuning = replace(tuning, batch_from=batch_from)
                self._tuning = tuning
                self._resolved = {}
            kept = self._tuning.solver
        assert kept is not None
        return kept

    def _timed(self, batch: list, name: str, method: str | None) -> tuple[Forward, float]:
        """`forward` of ``batch`` with solver ``name`` (Moreau's ``method``), once to warm up
        and PROBE_RUNS times timed: the last result and the fastest run (the machine's noise
        only ever adds time)."""
        args = None if method is None else {"method": method}
        took = []
        for _ in range(PROBE_RUNS + 1):
            t0 = time.perf_counter()
            f = self.forward(batch, solver_args=args, on_failure="nan", solver=name)
            took.append(time.perf_counter() - t0)
        return f, min(took[1:])

    def _solver_candidates(self) -> list[tuple[str, str | None]]:
        """(solver, Moreau's method or None) pairs the layer may choose among: SCS, and
        Moreau where it is installed (its active-set method only with zero and nonnegative
        cones alone), up to PROBE_MAX_SIZE."""
        out: list[tuple[str, str | None]] = [(DEFAULT_SOLVER, None)]
        dims = self.template.dims
        if self.template.n + self.template.m > PROBE_MAX_SIZE:
            return out
        try:
            import declarative.backends.moreau  # noqa: F401
        except ImportError:
            return out
        out.append(("moreau", "ipm"))
        if dims.polyhedral:
            out.append(("moreau", "active_set"))
        return out

    def _probe_copies(self) -> int:
        """How many instances `_choose_solver` times each candidate on: PROBE_BATCH, fewer
        for large programs."""
        size = self.template.n + self.template.m
        return int(max(PROBE_MIN_BATCH, PROBE_BATCH * min(1.0, PROBE_FULL_SIZE / size)))

    def _probe_sample(self, values: Sequence[Any], batched: list[bool]) -> list[np.ndarray]:
        """The probe's instances from a call's parameter values: its first `_probe_copies`
        instances, repeated where the call has fewer."""
        copies = self._probe_copies()
        out = []
        for spec, v, b in zip(self.parameters, values, batched, strict=True):
            a = np.asarray(v, dtype=float)
            out.append(a[np.arange(copies) % a.shape[0]] if b
                       else np.broadcast_to(a.reshape(spec.shape), (copies, *spec.shape)).copy())
        return out

    def _choose_solver(self, sample: Sequence[Any]) -> str:
        """`tune`'s choice of the solver (and Moreau's method) by a timed probe: each
        candidate (`_solver_candidates`) solves and refines ``sample`` (parameter values
        stacked on a leading batch axis, `_probe_sample`) once to warm up and PROBE_RUNS
        times timed (the fastest run counts). Of the candidates that certify the most
        instances, the fastest wins (SCS where none runs); where that is a batched solver,
        `_crossover` sets ``batch_from``."""
        candidates = self._solver_candidates()
        best = candidates[0]
        batch_from = 1
        batch = list(sample) if len(candidates) > 1 else None
        if batch is not None:
            score: dict[tuple[str, str | None], tuple[int, float]] = {}
            for name, method in candidates:
                try:
                    f, seconds = self._timed(batch, name, method)
                except Exception:  # noqa: BLE001 - a candidate that fails is not chosen
                    continue
                score[(name, method)] = (-int(f.ok.sum()), seconds)
            if score:
                best = min(score, key=lambda k: score[k])
            if best[0] != DEFAULT_SOLVER and candidates[0] in score \
                    and score[best][0] == score[candidates[0]][0]:
                batch_from = self._crossover(batch, best, score[candidates[0]][1],
                                             score[best][1])
        return self._keep_solver(best[0], best[1], batch_from if batch_from > 1 else None)

    def _crossover(self, batch: list, chosen: tuple[str, str | None], scs_seconds: float,
                   chosen_seconds: float) -> int:
        """The batch size from which ``chosen`` (a batched solver, faster than SCS on the
        probe's ``batch``) is faster than SCS: both timed on the batch's first instance
        alone as well, each cost taken as fixed plus per instance, the two lines crossed."""
        P = len(batch[0]) if batch else 1
        one = [v[:1] for v in batch]
        single = {name: self._timed(one, name, method)[1]
                  for name, method in ((DEFAULT_SOLVER, None), chosen)}
        if P <= 1 or single[chosen[0]] <= single[DEFAULT_SOLVER]:
            return 1
        slope_scs = (scs_seconds - single[DEFAULT_SOLVER]) / (P - 1)
        slope = (chosen_seconds - single[chosen[0]]) / (P - 1)
        fixed_scs, fixed = single[DEFAULT_SOLVER] - slope_scs, single[chosen[0]] - slope
        if not slope < slope_scs:
            return P
        return int(min(P, max(1, math.ceil((fixed - fixed_scs) / (slope_scs - slope)))))

    def _check_program(self, backend: Backend, settings: dict) -> None:
        """`ProblemError` where ``backend`` with ``settings`` cannot solve this program (a
        backend with a ``check_program(dims, settings)`` says why)."""
        check = getattr(backend, "check_program", None)
        if check is not None:
            check(self.template.dims, settings)

    def _check_tuning(self, tuning: Tuning) -> None:
        """A tuning this layer can use: workspaces are shared only where A and P do not
        depend on the parameters (a shared setup updates only b and c)."""
        t = self.template
        if tuning.share_workspaces and not (t.fixed_data and t.m):
            raise ProblemError("Tuning.share_workspaces=True needs a problem whose constraint "
                               "matrix A and quadratic P do not depend on the parameters; this "
                               "one's do (or it has no constraints): use False or None.")

    def _decide(self, backend: Backend, settings: dict, user: dict) -> Tuning:
        """The tuning with what this call needs decided: whether to share workspaces, and for
        SCS its linear solver and scale (`_calibrate`, with the layer's own settings, not
        this call's) where the user's options (``user``) do not set them. Made once, under
        the lock."""
        t = self.template

        def needed(tuning: Tuning) -> dict[str, bool]:
            return {"share_workspaces": tuning.share_workspaces is None,
                    "linear_solver": "linear_solver" in backend.tunable
                    and tuning.linear_solver is None and "linear_solver" in settings
                    and "linear_solver" not in user,
                    "scale": "scale" in backend.tunable and tuning.scale is None
                    and "scale" not in user}

        if not any(needed(self._tuning).values()):
            return self._tuning
        own, own_user = self._own_settings(backend)  # (the calibration's: no call's)
        with self._lock:
            tuning = self._tuning
            need = needed(tuning)
            if need["share_workspaces"]:
                tuning = replace(tuning, share_workspaces=bool(t.fixed_data and t.m))
            if need["linear_solver"]:
                tuning = replace(tuning,
                                 linear_solver=linear_solver(t.n, t.m, t.nnz + t.P_rows.size))
            if need["scale"]:
                calib = self._tuned(backend, own, tuning, own_user)
                tuning = replace(tuning, scale=self._calibrate(
                    backend, calib, share=bool(tuning.share_workspaces)))
            self._tuning = tuning
            return tuning

    def _own_settings(self, backend: Backend) -> tuple[dict, dict]:
        """``backend``'s settings from the layer's compile-time options alone (no call's),
        and the user's options among them (what `_tuned` leaves as they are)."""
        return (self.resolve_options(None, None, backend.name)[1],
                self.solver_args if backend.name == self._tuning.solver else {})

    @staticmethod
    def _tuned(backend: Backend, settings: dict, tuning: Tuning, user: dict) -> dict:
        """``settings`` with the tuning's values for what ``backend`` takes from it, where
        the user's options (``user``) do not set them."""
        out = dict(settings)
        for name in backend.tunable:
            value = getattr(tuning, name)
            if value is not None and name not in user and (name != "linear_solver"
                                                           or name in settings):
                out[name] = value
        return out

    def tune(self, values: Sequence[Any], solver_args: dict | None = None) -> Tuning:
        """Decide this layer's tuning from sample parameter values (a batch, as for a call)
        and keep it: workspace sharing and SCS's linear solver from the template, and SCS's
        scale as the one in `solve.SCALE_CANDIDATES` that solves every sample instance in the
        fewest SCS iterations in all (from the template alone, as on a first call, where no
        candidate solves them all), and, where the user did not name the solver, the fastest
        solver on the sample (`_choose_solver`), and SuperLU's orderings as the fastest on
        the sample's systems (`derivative._best_ordering` timed). ``solver_args``: SCS
        settings for these trial solves. Returns the new `Tuning`. Not to be run while
        another thread calls the layer: its orderings are open while it runs."""
        theta, _ = self.batch(values)
        t = self.template
        c, a, b = t.apply(theta)
        h = t.apply_P(theta)
        c, a, b, h = equilibrate(t, c, a, b, h).data(t, c, a, b, h)
        mats = t.csc_batch(a)
        Ps = t.P_csc_batch(h) if t.quadratic else None
        scs = get_backend("scs")
        user = {k: v for k, v in (solver_args or {}).items() if k not in OUR_OPTIONS}
        tuning = replace(self._tuning, share_workspaces=bool(t.fixed_data and t.m),
                         linear_solver=linear_solver(t.n, t.m, t.nnz + t.P_rows.size))
        settings = self._tuned(scs, scs.settings(user), tuning, user)
        with single_threaded_blas():
            share = bool(tuning.share_workspaces)
            best = calibrate_scale(scs, mats, b, c, t.dims, settings, Ps, share=share,
                                   refines=_refines(BatchOps(t, a, h), c, b))
            if best is None:
                best = self._calibrate(scs, settings,
                                       (mats[0], b[0], c[0], None if Ps is None else Ps[0],
                                        BatchOps(t, a[:1], h[:1])), share=share)
        named = self._solver_named
        tuning = replace(tuning, scale=best, sparse_ordering=None, supernodes=None)
        if not named:  # open again: timed on the sample
            tuning = replace(tuning, solver=None, method=None, batch_from=None)
        self.tuning = tuning
        self._solver_named = named
        if not named:
            self._choose_solver(self._probe_sample(values, self.batch(values)[1]))
        if not use_dense(t):  # SuperLU's orderings: the fastest on the sample's systems
            layout = sparse_layout(t)
            layouts = (layout, sparse_layout(t, True)) if low_rank_groups(t) else (layout,)
            for each in layouts:
                each.ordering = None
                each.ordering_low_rank = None
                each.timed = True
            self._ordered_first = False
            with self._lock:  # (the solver's probes above may have recorded one)
                self._tuning = replace(self._tuning, sparse_ordering=None, supernodes=None)
            try:
                self.forward(values, on_failure="nan")
            finally:
                for each in layouts:
                    each.timed = False
            self._record_ordering(layout)
        return self._tuning

    # -- options -----------------------------------------------------------------------
    @staticmethod
    def check_options(solver_args: dict | None, on_failure: str,
                      solver: str | None = DEFAULT_SOLVER) -> dict:
        """The options validated: ``on_failure`` one of ON_FAILURE, every entry of
        ``solver_args`` a refinement option (OUR_OPTIONS) or a setting of ``solver``."""
        if on_failure not in ON_FAILURE:
            raise ProblemError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}.")
        backend = get_backend(solver or DEFAULT_SOLVER)
        _check_values(backend, {} if solver_args is None else solver_args)
        args = backend.normalize(solver_args or {})
        check_settings(backend, args, OUR_OPTIONS)
        ours = {k: args.pop(k) for k in list(args) if k in OUR_OPTIONS}
        return {**args, **ours}

    def resolve_options(self, solver_args: dict | None, on_failure: str | None,
                        solver: str | None = None) -> tuple[Backend, dict, dict, str]:
        """Per-call options over the compile-time ones, validated.

        Returns (the backend, its settings, our refinement options, on_failure): fresh dicts,
        the caller's to change. Without per-call settings they are validated once per solver
        named (kept with the compile-time ones they came from).
        """
        if not solver_args and on_failure is None:
            key = (dict(self.solver_args), self.on_failure, self._solver())
            cached = self._resolved.get(solver)
            if cached is None or cached[0] != key:
                cached = self._resolved[solver] = (key, self._resolve(None, None, solver))
            backend, settings, ours, on_failure = cached[1]
            return backend, dict(settings), dict(ours), on_failure
        return self._resolve(solver_args, on_failure, solver)

    def _resolve(self, solver_args: dict | None, on_failure: str | None,
                 solver: str | None) -> tuple[Backend, dict, dict, str]:
        on_failure = self.on_failure if on_failure is None else on_failure
        if solver is None and not self._solver_named and _solver_settings(solver_args):
            solver = DEFAULT_SOLVER
        backend = get_backend(self._solver() if solver is None else solver)
        _check_values(backend, {} if solver_args is None else solver_args)
        # aliases resolved on each side first, so that a per-call eps overrides a
        # compile-time eps_abs (and the reverse)
        args = backend.normalize(solver_args or {})
        if backend.name == self._tuning.solver:  # compile-time settings are that solver's
            args = {**backend.normalize(self.solver_args), **args}
        else:
            args = {**{k: v for k, v in self.solver_args.items() if k in OUR_OPTIONS}, **args}
        args = self.check_options(args, on_failure, backend.name)
        ours = {k: args.pop(k, v) for k, v in OUR_OPTIONS.items()}
        settings = backend.settings(args)
        self._check_program(backend, settings)
        return backend, settings, ours, on_failure

    def jacobian_blocks(self, full: np.ndarray) -> list[list[np.ndarray]]:
        """A stacked Jacobian (Σ output sizes, num_params), both sides flattened column-major,
        as blocks J[i][j] shaped ``output_i.shape + param_j.shape``."""
        J = []
        for o, lo in zip(self.outputs, self._out_offsets, strict=True):
            row = []
            for p in self.parameters:
                block = full[lo : lo + o.size, p.offset : p.offset + p.size]
                block = block.reshape(o.shape[::-1] + p.shape[::-1])
                nd_o, nd_p = len(o.shape), len(p.shape)
                axes = (*range(nd_o - 1, -1, -1), *range(nd_o + nd_p - 1, nd_o - 1, -1))
                row.append(np.transpose(block, axes))
            J.append(row)
        return J

    # -- inputs ------------------------------------------------------------------------
    def batch(self, values: Sequence[Any], *,
              check_values: bool = True) -> tuple[np.ndarray, list[bool]]:
        """Validate the parameter values and stack them into θ (B, p); B = 1 if none is batched.

        Every value must be a real number or array (float, integer or bool; a complex,
        None, string or other object raises `ParameterError`) of the parameter's shape,
        optionally with one leading batch axis. ``check_values=False`` checks only that
        (types, count, shapes, batch sizes), not the values themselves (finite, in the
        parameter's declared domain): for placeholders standing in for abstract values.
        """
        P = self.parameters
        if len(values) != len(P):
            names = ", ".join(p.name for p in P)
            raise ParameterError(
                f"expected {len(P)} parameter value(s) ({names}), in this order; got {len(values)}."
            )
        arrays, batched, sizes = [], [], {}
        for spec, val in zip(P, values, strict=True):
            try:
                a = np.asarray(val)
            except (TypeError, ValueError):  # e.g. a ragged nested list
                raise spec.not_real(val) from None
            if a.dtype.kind == "O" and val is not None and all(
                    isinstance(v, numbers.Real) for v in a.flat):  # e.g. Fractions
                a = a.astype(float)
            if a.dtype.kind not in "biuf":
                raise spec.not_real(val, dtype=a.dtype)
            a = a.astype(float, copy=False)
            if a.shape == spec.shape:
                batched.append(False)
            elif a.ndim == len(spec.shape) + 1 and a.shape[1:] == spec.shape:
                batched.append(True)
                sizes[spec.name] = a.shape[0]
            else:
                raise ParameterError(
                    f"parameter {spec.name!r}: expected shape {spec.shapes}, got {a.shape}."
                )
            arrays.append(a)
        if len(set(sizes.values())) > 1:
            raise ParameterError(
                "batched parameters must share one batch size; got "
                + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + "."
            )
        B = next(iter(sizes.values())) if sizes else 1
        theta = np.empty((B, self.template.num_params))
        arrays = [a if bt else a[None] for a, bt in zip(arrays, batched, strict=True)]
        for spec, a in zip(P, arrays, strict=True):  # an unbatched value broadcasts over B
            theta[:, spec.offset : spec.offset + spec.size] = vec(a, spec.shape)
        if not check_values:
            return theta, batched
        finite = bool(np.isfinite(theta).all())
        for spec, a, bt in zip(P, arrays, batched, strict=True):
            if not finite or spec.domain:
                check_finite_in_domain(spec, a, functools.partial(_batch_indices, batched=bt))
        return theta, batched

    # -- the pipeline ------------------------------------------------------------------
    @_blas_single
    def forward(self, values: Sequence[Any], solver_args: dict | None = None,
                on_failure: str | None = None, solver: str | None = None) -> Forward:
        """Solve every instance; outputs are (B, *shape) arrays (B = 1 when nothing is batched).

        ``solver_args``, ``on_failure`` and ``solver`` override the compile-time values for
        this call (``solver_args`` then holds that solver's settings)."""
        hold_freed_memory()  # (once per process: allocator.py)
        t0 = time.perf_counter()
        theta, input_batched = self.batch(values)
        user_solver = self._solver_named or solver is not None  # (settings alone name none)
        # The tuning's open solver (with Moreau's method and batch_from) is decided from the
        # template on every layer's first call, whichever solver that call names: a call
        # that names Moreau then reads the same method before and after a default call.
        self._solver()
        if solver is None and not _solver_settings(solver_args):
            small = self._tuning.batch_from
            if small is not None and theta.shape[0] < small:
                solver = DEFAULT_SOLVER  # SCS beats the batched solver's fixed cost
        backend, settings, ours, on_failure = self.resolve_options(solver_args, on_failure,
                                                                   solver)
        t = self.template
        B = theta.shape[0]
        c, a, b = t.apply(theta)
        h = t.apply_P(theta)
        if B == 0:
            return self.restore(values, np.zeros((0, t.n)), np.zeros((0, t.m)),
                                np.zeros((0, t.m)), np.zeros(0, dtype=bool))
        # Everything from here on, SCS included, works on the equilibrated program: SCS's
        # own normalization leaves b and c as they are, and a 1e9 entry of c among O(1) ones
        # cost it 39,000 iterations where the equilibrated program takes 25 (equilibrate.py)
        eq = equilibrate(t, c, a, b, h)
        raw = (c, a, b, h)
        c, a, b, h = eq.data(t, c, a, b, h)
        ops = BatchOps(t, a, h, t.rounding(theta, raw))
        mats = t.csc_batch(a)
        Ps = t.P_csc_batch(h) if t.quadratic else None
        user = {**(self.solver_args if backend.name == self._tuning.solver else {}),
                **(solver_args or {})}
        tuning = self._decide(backend, settings, user)
        settings = self._tuned(backend, settings, tuning, user)
        shared = self._shared_state(backend, tuning, mats[0], None if Ps is None else Ps[0])
        sparse = not use_dense(t)
        if sparse and tuning.sparse_ordering is not None:
            set_ordering(t, tuning.sparse_ordering,
                         True if tuning.supernodes is None else tuning.supernodes)
        chunk = tuning.chunk_size

        # SCS's capped tight retries: (shared, the instances the cap stopped, the settings
        # for the rest of max_iters, where each stopped), for what nothing else then settles
        # (RETRY_ITERS_FACTOR)
        capped: list[tuple[Any, np.ndarray, dict, tuple]] = []

        def solved_by(backend: Backend, shared: Any, idx: np.ndarray, settings: dict
                      ) -> _Attempt:
            """``backend``'s attempt at the instances ``idx`` with ``settings``. Accurate by
            default: an instance refinement could not certify from the solver's loose
            solution is solved again at a tight tolerance, warm-started, and refined again
            (SCS's capped, `RETRY_ITERS_FACTOR`)."""
            att = self._attempts(backend, shared, idx, ops, c, b, mats, Ps, settings, ours,
                                 eq, chunk)
            tight = backend.tightened(settings, RETRY_EPS)
            retry = np.flatnonzero(att.retryable)
            if ours["refine"] and retry.size and tight != settings:
                run = tight
                if backend.name == DEFAULT_SOLVER:
                    cap = max(RETRY_ITERS_MIN,
                              RETRY_ITERS_FACTOR * int(att.iterations[retry].max(initial=0)))
                    if cap < tight["max_iters"]:
                        run = {**tight, "max_iters": cap}
                again = self._attempts(backend, shared, idx[retry], ops, c, b, mats, Ps, run,
                                       ours, eq, chunk, (att.scs_x[retry], att.scs_y[retry],
                                                         att.scs_s[retry]))
                att.merge(retry, again)
                stopped = np.flatnonzero(again.iterations >= run.get("max_iters", np.inf))
                if run is not tight and stopped.size:
                    capped.append((shared, idx[retry[stopped]],
                                   {**tight, "max_iters": tight["max_iters"] - run["max_iters"]},
                                   (again.scs_x[stopped], again.scs_y[stopped],
                                    again.scs_s[stopped])))
            return att

        att = solved_by(backend, shared, np.arange(B), settings)
        scs_status = list(att.scs_status)

        if ours["refine"] and backend.name != DEFAULT_SOLVER and not self._solver_named:
            # the default's choice of solver must not cost an instance SCS would have solved
            # (a batched interior-point method can fail on data scales SCS's equilibrated
            # iterations take): what it leaves is solved as a call naming SCS solves it, with
            # the layer's SCS settings and tuning, then the tight retry
            left = np.flatnonzero(~_settled(att.status))
            if left.size:
                scs = get_backend(DEFAULT_SOLVER)
                own, own_user = self._own_settings(scs)
                own = self._tuned(scs, own, self._decide(scs, own, own_user), own_user)
                att.merge(left, solved_by(scs, None, left, own))
        if ours["refine"] and not user_solver and backend.name != SECOND_OPINION:
            # an interior-point solver's point is central where SCS's splitting iterates end
            # at a vertex of a degenerate face (ties in a dotsort: refinement then converges
            # only linearly, and may stall short of the certificate): what is still neither
            # certified nor shown infeasible or unbounded is solved by it at the tight
            # tolerance, and its results taken where they settle the instance
            left = np.flatnonzero(~_settled(att.status))
            if left.size:
                other, tight = _second_opinion()
                again = self._attempts(other, None, left, ops, c, b, mats, Ps, tight, ours, eq,
                                       chunk)
                att.merge(left, again, keep=_settled(again.status))
        if ours["refine"]:
            second = not user_solver
            ops, eq = self._solution_rescaled(att, backend, ops, c, b, settings, ours, eq,
                                              chunk, second)
            for how in (rebalance, recentred):
                ops, eq = self._rebalanced(att, backend, shared, ops, c, b, mats, Ps, settings,
                                           ours, eq, chunk, second, how)
            if t.quadratic:
                ops, eq = self._objective_rescaled(att, backend, raw, ops, settings, ours, eq,
                                                   chunk, second)
        for shared_at, idx, rest, warm in capped:
            # what nothing settled after a capped retry: SCS's remaining iterations, from where
            # the capped run stopped (the rebalanced and rescaled retries took only instances
            # they settled, so these still have this scaling)
            open_ = ~_settled([att.status[i] for i in idx.tolist()])
            if open_.any():
                again = self._attempts(get_backend(DEFAULT_SOLVER), shared_at, idx[open_], ops,
                                       c, b, mats, Ps, rest, ours, eq, chunk,
                                       tuple(w[open_] for w in warm))
                att.merge(idx[open_], again, keep=_settled(again.status))
        del raw
        if sparse and tuning.sparse_ordering is None and (layout := made_layout(t)) is not None:
            self._record_ordering(layout)
        status, x, y, s = att.status, att.x, att.y, att.s
        before, after, steps = att.residual_before, att.residual_after, att.steps
        ok = np.array([st is Status.SOLVED for st in status], dtype=bool)
        refined = _Solution(x, y, s, att.factors, att.v, att.D, att.v_D, att.extended,
                            att.vertex, att.unresolved)
        xy = np.concatenate(eq.solution(x, y), axis=1)
        xy[~ok] = np.nan
        out = times_t(xy, t.recover)
        outputs = [unvec(out[:, lo : lo + sp_.size], sp_.shape)
                   for sp_, lo in zip(self.outputs, self._out_offsets, strict=True)]
        info = SolveInfo(status=status, scs_status=scs_status, scs_iterations=att.iterations,
                         residual_before=before, residual_after=after, refine_steps=steps,
                         solve_seconds=att.seconds, total_seconds=time.perf_counter() - t0)
        if on_failure == "raise" and not ok.all():
            raise SolverError({int(i): str(status[i]) for i in np.flatnonzero(~ok)}, B)
        return Forward(layer=self, outputs=outputs, batched=any(input_batched),
                       input_batched=input_batched, info=info, ok=ok, _ops=ops, _refined=refined,
                       _scaling=eq, chunk=chunk)

    def _record_ordering(self, layout: Any) -> None:
        """Keep in the tuning the SuperLU ordering the first sparse factorization chose
        (`derivative._best_ordering` on that instance): every later call factors with it."""
        if layout.ordering is None:
            return
        with self._lock:
            if self._tuning.sparse_ordering is None:
                self._tuning = replace(self._tuning, sparse_ordering=layout.ordering,
                                       supernodes=layout.supernodes)

    def _shared_state(self, backend: Backend, tuning: Tuning, A: Any, P: Any) -> Any:
        """``backend``'s state shared by every instance (made once, under the lock), where the
        tuning shares workspaces; else None."""
        if not tuning.share_workspaces:
            return None
        if backend.name not in self._shared:
            with self._lock:
                if backend.name not in self._shared:
                    self._shared[backend.name] = backend.share(A, P, self.template.dims)
        return self._shared[backend.name]

    def _calibrate(self, backend: Backend, settings: dict,
                   sample: tuple[Any, np.ndarray, np.ndarray, Any, BatchOps] | None = None,
                   share: bool = False) -> float:
        """SCS's scale for this layer: `calibrate_scale` on the equilibrated program of fixed
        pseudo-random parameter values (seed 0: first all of them positive and symmetric ones
        positive definite, which makes the many problems whose constraints read Gx ≤ h
        strictly feasible, as the data a layer is trained on usually is, and a quad_form's
        symmetric matrix convex; then within each parameter's declared sign or
        definiteness), so a function of the problem alone. Where neither instance is solved
        it is calibrated on ``sample`` (`tune`'s first sample instance: its equilibrated (A,
        b, c, P) and its `BatchOps`) where given, and is otherwise, or where that is not
        solved either, DEFAULT_SCALE: never on a call's data, so no result depends on which
        call came first.
        ``share``: solved as a call that shares the solver's workspaces (`calibrate_scale`).
        Scales from which refinement converges rank first (`calibrate_scale`'s ``refines``),
        checked on SCALE_CHECKS more such instances (seeds 1, 2, …; ``check``).
        """
        t = self.template

        def values(seed: int, positive: bool) -> list[np.ndarray]:
            rng = np.random.default_rng(seed)
            out = []
            for spec in self.parameters:
                v = rng.standard_normal(spec.shape)
                if {"nonpos", "neg"} & set(spec.domain):
                    v = -np.abs(v) - 0.1
                elif positive and "symmetric" in spec.domain:
                    v = v @ v.T / max(1, v.shape[0]) + np.eye(v.shape[0])
                elif positive or {"nonneg", "pos"} & set(spec.domain):
                    v = np.abs(v) + 0.1
                if {"PSD", "NSD"} & set(spec.domain):
                    v = v @ v.T / max(1, v.shape[0]) + np.eye(v.shape[0])
                    v = -v if "NSD" in spec.domain else v
                elif "symmetric" in spec.domain and not positive:
                    v = (v + v.T) / 2
                out.append(v)
            return out

        for positive in (True, False):
            sets = [values(seed, positive) for seed in range(1 + SCALE_CHECKS)]
            try:
                theta, _ = self.batch([np.stack(vs) for vs in zip(*sets, strict=True)])
            except ParameterError:
                continue
            c, a, b = t.apply(theta)
            h = t.apply_P(theta)
            c, a, b, h = equilibrate(t, c, a, b, h).data(t, c, a, b, h)
            mats = t.csc_batch(a)
            Ps = t.P_csc_batch(h) if t.quadratic else None
            ops = BatchOps(t, a, h)
            rest = np.arange(1, len(a))
            check = ScaleCheck(mats[1:], b[1:], c[1:], None if Ps is None else Ps[1:],
                               _refines(ops.take(rest), c[1:], b[1:])) if rest.size else None
            scale = calibrate_scale(backend, mats[:1], b[:1], c[:1], t.dims, settings,
                                    None if Ps is None else Ps[:1], share=share,
                                    refines=_refines(ops.take(np.arange(1)), c[:1], b[:1]),
                                    check=check)
            if scale is not None:
                return scale
        if sample is None:
            return DEFAULT_SCALE
        A0, b0, c0, P0, ops0 = sample
        scale = calibrate_scale(backend, [A0], b0[None], c0[None], t.dims, settings,
                                None if P0 is None else [P0], share=share,
                                refines=_refines(ops0, c0[None], b0[None]))
        return DEFAULT_SCALE if scale is None else scale

    def _rebalanced(self, att: _Attempt, backend: Backend, shared: Any, ops: BatchOps,
                    c: np.ndarray, b: np.ndarray, mats: CSCBatch, Ps: CSCBatch | None,
                    settings: dict, ours: dict, eq: Equilibration, chunk: int | None,
                    second: bool = False, how: Callable = rebalance
                    ) -> tuple[BatchOps, Equilibration]:
        """Solve once more, with ``backend`` (and then, with ``second``, what it left open
        with the interior-point SECOND_OPINION at the tight tolerance, `_retries`), the
        instances still neither certified nor shown infeasible or unbounded whose
        equilibrated ĉ and b̂ (``c``, ``b``) are far apart in scale, now with ρ and σ of the
        scaling taken apart (``how`` = `equilibrate.rebalance`; or, `equilibrate.recentred`,
        both moved together so that the median entry of ĉ and b̂ is 1), taking the results
        that settle them.
        A linear program keeps Â: a positively homogeneous program with b × 1e6, whose ĉ
        otherwise lands at 1e-6. A quadratic one has P̂ scaled by the new σ/ρ as well:
        min ‖x − a‖² + ‖x‖₁ over a box of half-width 1e-9 with a ~ 1 had b̂ ~ 1e-10 beside
        ĉ ~ 1, and SCS's point, accurate to 1e-6 in those units, left refinement 1e4 away
        from the box; with b̂ ~ 1 the program is an LP in all but a P̂ ~ 1e-10. Returns the
        batch's operators and scaling with those instances' (where their retry was taken)."""
        left = np.flatnonzero(~_settled(att.status))
        if not left.size:
            return ops, eq
        apart, eq2, c2, b2 = how(eq, c, b)
        idx = left[apart[left]]
        if not idx.size:
            return ops, eq
        t = self.template
        ops2, Ps2, shared2 = ops, Ps, shared
        if t.quadratic:
            # P̂ = (σ/ρ) E P E: the instances moved have theirs scaled by the change of σ/ρ
            # (none where both moved together, `recentred`)
            shared2 = None
            change = (eq2.sigma[idx] / eq2.rho[idx]) / (eq.sigma[idx] / eq.rho[idx])
            if np.any(change != 1.0):
                h2 = np.array(ops.h)
                h2[idx] *= change[:, None]
                ops2, Ps2 = BatchOps(t, ops.a, h2, ops.rounding), t.P_csc_batch(h2)
        won = np.zeros(idx.size, dtype=bool)
        for k, (who, tries) in enumerate(self._retries(backend, settings, second, tight=False)):
            js = np.flatnonzero(~won)
            if not js.size:
                break
            again = self._attempts(who, shared2 if k == 0 else None, idx[js], ops2, c2, b2,
                                   mats, Ps2, tries, ours, eq2, chunk)
            now = _settled(again.status)
            att.merge(idx[js], again, keep=now)
            won[js[now]] = True
        took = idx[won]
        if ops2 is not ops and took.size:
            h = np.array(ops.h)
            h[took] = ops2.h[took]
            ops = BatchOps(t, ops.a, h, ops.rounding)
        return ops, eq.merged(took, eq2, took)

    def _objective_rescaled(self, att: _Attempt, backend: Backend, raw: tuple, ops: BatchOps,
                            settings: dict, ours: dict, eq: Equilibration, chunk: int | None,
                            second: bool = False) -> tuple[BatchOps, Equilibration]:
        """Solve once more, with ``backend``, the instances still neither certified nor shown
        infeasible or unbounded whose objective (P, c in ``raw``, the program's data before
        equilibration) is far from the constraints (A, b) in scale, now equilibrated with
        the objective multiplied by τ = max(|A|, |b|) / max(|P|, |c|) (`objective_scale`),
        at the backend's settings and then, for those still open, at RETRY_EPS (with
        ``second``, the interior-point SECOND_OPINION before the backend: `_retries`): a
        trust-region QP with (Q, q) × 1e6 is the O(1) one, where Ruiz's balance of
        [[P, Aᵀ], [A, 0]], held to one factor on the norm's cone block, left Â's entries
        spread over 1e-4 … 1 and S's rcond at 1e-7 (against 1e-2). The solution is the
        same, the multipliers τ times: the retry's scaling is that of (1) with σ·τ. Results
        are taken where they settle an instance. Returns the batch's operators and scaling
        with those instances' rows."""
        left = np.flatnonzero(~_settled(att.status))
        if not left.size:
            return ops, eq
        c0, a0, b0, h0 = (np.asarray(v)[left] for v in raw)
        tau = objective_scale(c0, a0, b0, h0)
        far = (tau > UNIFORM) | (tau < 1.0 / UNIFORM)
        if not far.any():
            return ops, eq
        idx, tau = left[far], tau[far]
        c0, a0, b0, h0 = c0[far], a0[far], b0[far], h0[far]
        t = self.template
        e1 = equilibrate(t, tau[:, None] * c0, a0, b0, tau[:, None] * h0)
        e2 = Equilibration(np.array(e1.d), np.array(e1.e), e1.rho, e1.sigma * tau)
        c2, a2, b2, h2 = e2.data(t, c0, a0, b0, h0)
        return self._retried(att, idx, ops, eq, (c2, a2, b2, h2), e2, backend, settings,
                             ours, chunk, second)

    def _retried(self, att: _Attempt, idx: np.ndarray, ops: BatchOps, eq: Equilibration,
                 data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                 scaling: Equilibration, backend: Backend, settings: dict, ours: dict,
                 chunk: int | None, second: bool, warm: tuple | None = None,
                 best: list | None = None) -> tuple[BatchOps, Equilibration]:
        """The instances ``idx`` solved in another scaling of their programs (``data`` =
        their (ĉ, Â, b̂, P̂) in it, ``scaling`` the whole scaling), by `_retries` in turn, each
        on what the ones before left open (``warm``: a start for ``backend``'s solves);
        results taken where they settle an instance. Returns the batch's operators and
        scaling with those instances' (``ops``, ``eq`` elsewhere). ``best`` (a list), where
        given, receives for the instances left unsettled (positions in ``idx``) the point
        of smallest backward error the retries reached, in the retry's scaling: (positions,
        x, y, s, ω)."""
        t = self.template
        c2, a2, b2, h2 = data
        ops2, mats2 = BatchOps(t, a2, h2, ops.rounding_of(idx)), t.csc_batch(a2)
        Ps2 = t.P_csc_batch(h2) if t.quadratic else None
        won = np.zeros(idx.size, dtype=bool)
        k = idx.size
        bx, by, bs = np.zeros((k, t.n)), np.zeros((k, t.m)), np.zeros((k, t.m))
        omega = np.full(k, np.inf)
        for who, tries in self._retries(backend, settings, second):
            js = np.flatnonzero(~won)
            if not js.size:
                break
            start = None if warm is None or who is not backend else tuple(p[js] for p in warm)
            again = self._attempts(who, None, js, ops2, c2, b2, mats2, Ps2, tries, ours,
                                   scaling, chunk, start)
            now = _settled(again.status)
            att.merge(idx[js], again, keep=now)
            won[js[now]] = True
            better = again.residual_after < omega[js]
            for name, into in (("x", bx), ("y", by), ("s", bs)):
                into[js[better]] = getattr(again, name)[better]
            omega[js[better]] = again.residual_after[better]
        if best is not None:
            open_ = np.flatnonzero(~won & np.isfinite(omega))
            best.append((open_, bx[open_], by[open_], bs[open_], omega[open_]))
        if not won.any():
            return ops, eq
        took = idx[won]
        a, h = np.array(ops.a), np.array(ops.h)
        a[took], h[took] = a2[won], h2[won]
        return BatchOps(t, a, h, ops.rounding), eq.merged(took, scaling, np.flatnonzero(won))

    def _solution_rescaled(self, att: _Attempt, backend: Backend, ops: BatchOps,
                           c: np.ndarray, b: np.ndarray, settings: dict, ours: dict,
                           eq: Equilibration, chunk: int | None, second: bool = False
                           ) -> tuple[BatchOps, Equilibration]:
        """Solve once more, with ``backend`` (then, with ``second``, the interior-point
        SECOND_OPINION, and ``backend`` at RETRY_EPS: `_retries`), the instances still
        neither certified nor shown infeasible or unbounded, in the program scaled at the
        best point found so far (`equilibrate.at_solution`, composed with ``eq``), warm
        started there, where that scaling is not uniform (its factors spread by more than
        UNIFORM). The magnitudes of an unconverged point are enough to set it, and an
        exponential cone's mixing (`equilibrate.Equilibration.mix`) is set from the affine
        slack b̂ − Âx̂, on instances whose objective's nonzero entries lie within
        1/SCALE_FLOOR of one another. Up to SOLUTION_ROUNDS rounds, each from the best point
        the one before reached.

        (Refinement's backward error judges rows far below an instance's largest at
        SCALE_FLOOR of it, so a variable that an objective entry that far below the rest
        sets is not resolved by it; the forward estimate, a linearization at the point, does
        not see a constraint that such an entry would make active. A mixing fitted to such a
        point centres its cones and let it pass: max cᵀx s.t. exp(x) <= b with c spread over
        1e-8 … 3e10 came back solved with x 1.4 off.)

        D and E from A and P balance the matrix, not the solution: the lasso
        sum_squares(A x − b) + λ‖x‖₁ with A, b ~ 1e-6 and λ ~ 1e-12 has every row and column
        at max-norm 1 and its solution at x ~ 1, A x − b ~ 1e-6, multipliers ~ 1e-12; SCS
        ran out of its 100,000 iterations on every instance, and refinement from there
        stalled. Returns the batch's operators and scaling with those instances' (where
        their retry settled them)."""
        boostable = pattern(self.template).boost_r.size > 0
        for boost in (False, True) if boostable else (False,):
            left = np.flatnonzero(~_settled(att.status))
            left = left[np.all(np.isfinite(np.concatenate(
                [att.x[left], att.y[left], att.s[left]], axis=1)), axis=1)]
            if left.size:
                ops, eq = self._rounds(att, left, backend, ops, c, b, settings, ours, eq,
                                       chunk, second, boost)
        return ops, eq

    def _rounds(self, att: _Attempt, left: np.ndarray, backend: Backend, ops: BatchOps,
                c: np.ndarray, b: np.ndarray, settings: dict, ours: dict, eq: Equilibration,
                chunk: int | None, second: bool, boost: bool
                ) -> tuple[BatchOps, Equilibration]:
        """`_solution_rescaled`'s rounds for the instances ``left``, from ``att``'s point:
        SOLUTION_ROUNDS, each round's scaling set at the best point the round before reached,
        mapped back to ``eq``'s scaling; or with ``boost``, BOOSTED_ROUNDS with the
        second-order cones boosted (`equilibrate.Equilibration.boost`), each later round
        scaling the program the round before solved and composing the two scalings (that
        point, mapped back, would lose what the first scaling resolved: inv_pos's x at 1e-12
        of t beside it). The boosts come second, for what the plain rounds leave: set at a
        point whose cone is near a ray (sqrt's x·1 >= t² at x ~ 1e-20), they boost by 2^34
        and more, and lose instances the plain rounds settle."""
        t = self.template
        x, y, s = att.x[left], att.y[left], att.s[left]
        cur: Equilibration | None = None  # (with ``boost``, the scaling so far after ``eq``'s)
        for _ in range(BOOSTED_ROUNDS if boost else SOLUTION_ROUNDS):
            if cur is None:
                sub = ops.take(left)
                a1, h1, b1 = sub.a, sub.h, b[left]
            else:
                _, a1, b1, h1 = cur.data(t, c[left], ops.a[left], b[left], ops.h[left])
                sub = BatchOps(t, a1, h1)
            rel = at_solution(t, a1, h1, x, y, s, affine=b1 - sub.A(x),
                              mixing=_entry_ratio(c[left]) <= 1.0 / SCALE_FLOOR,
                              boosting=np.full(left.size, boost))
            far = spread(np.concatenate([rel.d, rel.e], axis=1)) > UNIFORM
            if boost:
                boosted = np.zeros(left.size, dtype=bool) if rel.boost is None else \
                    np.any(rel.boost != 0, axis=1)
                # (the first boosted round takes only what it boosts: the plain rounds
                # tried the rest)
                far = boosted if cur is None else far | boosted
            if not far.any():
                break
            idx, js0 = left[far], np.flatnonzero(far)
            rel = rel.take(js0)
            point = rel.scaled(x[js0], y[js0], s[js0])
            total = rel if cur is None else cur.take(js0).composed(rel)
            c2, a2, b2, h2 = total.data(t, c[idx], ops.a[idx], b[idx], ops.h[idx])
            best: list = []
            ops, eq = self._retried(att, idx, ops, eq, (c2, a2, b2, h2),
                                    eq.take(idx).composed(total), backend, settings, ours,
                                    chunk, second, warm=point, best=best)
            # the next round starts from the best point the retry reached where its backward
            # error is within ACCEPT_BACKWARD or below its start's (a smaller backward error
            # alone is no nearer point: Clarabel's softmax at × 1e12, ω 2e-18, held a wrong
            # support, the retry's point ω 1e-16 the right one)
            js, bx, by, bs, omega = best[0]
            gain = omega <= np.maximum(att.residual_after[idx[js]], ACCEPT_BACKWARD)
            if not gain.any():
                break
            js, left = js[gain], idx[js[gain]]
            x2, y2, s2 = total.take(js).solution(bx[gain], by[gain], bs[gain])
            att.improve(left, x2, y2, s2, omega[gain])
            if boost:
                cur = total.take(js)
                x, y, s = bx[gain], by[gain], bs[gain]
            else:
                x, y, s = x2, y2, s2
        return ops, eq

    @staticmethod
    def _retries(backend: Backend, settings: dict, second: bool, tight: bool = True
                 ) -> list[tuple[Backend, dict]]:
        """The solves of a retry in another scaling, in order, each of what the ones before
        it left open: ``backend`` at ``settings``; with ``second`` (a call that did not name
        its solver), the interior-point SECOND_OPINION at RETRY_EPS, which settled in 8
        iterations what SCS at RETRY_EPS took 100,000 not to (min ‖x − a‖² + ‖x‖₁ over a
        box of half-widths 1e-4 and 1.6e-7, a ~ 1e3, its objective rescaled); with
        ``tight``, ``backend`` at RETRY_EPS."""
        out = [(backend, settings)]
        if second and backend.name != SECOND_OPINION:
            out.append(_second_opinion())
        strict = backend.tightened(settings, RETRY_EPS)
        if tight and strict != settings:
            out.append((backend, strict))
        return out

    def _attempts(self, backend: Backend, shared: Any, idx: np.ndarray, ops: BatchOps,
                  c: np.ndarray, b: np.ndarray, mats: CSCBatch, Ps: CSCBatch | None, settings: dict,
                  ours: dict, scaling: Equilibration, chunk: int | None,
                  warm: tuple | None = None) -> _Attempt:
        """`_attempt` on the instances ``idx``: all at once (``chunk`` None), or, in the
        low-memory mode, ``chunk`` at a time, keeping of each chunk neither refinement's
        factorizations nor its DΠ (the derivatives make them again, `Forward._solutions`)."""
        if chunk is None:
            return self._attempt(backend, shared, idx, ops, c, b, mats, Ps, settings, ours,
                                 scaling, warm)
        parts = []
        for lo in range(0, len(idx), chunk):
            sl = slice(lo, lo + chunk)
            part = self._attempt(backend, shared, idx[sl], ops, c, b, mats, Ps, settings, ours,
                                 scaling, None if warm is None else tuple(w[sl] for w in warm))
            part.factors = [None] * len(part.factors)
            part.D = part.v_D = None
            parts.append(part)
        return _Attempt.join(parts)

    def _attempt(self, backend: Backend, shared: Any, idx: np.ndarray, ops: BatchOps,
                 c: np.ndarray, b: np.ndarray, mats: CSCBatch, Ps: CSCBatch | None, settings: dict,
                 ours: dict, scaling: Equilibration, warm: tuple | None = None) -> _Attempt:
        """The backend's solve, then refinement and the certificate, on the instances ``idx``
        of the (equilibrated by ``scaling``) program (c, A = ``mats``, b, P = ``Ps``) whose
        operators are ``ops``. The solver's own solution is kept too (``scs_x``, ...: a warm
        start for a retry). Where the batch is cut in parts, the backend solves one instance
        a call and the program holds PSD or exponential cones, each part's solves overlap
        another part's refinement (`parallel.pipelined`, PIPELINE_PARTS), once SuperLU's
        orderings are decided (`_ordering_first`): on the first such call all are solved
        first, with the same cut."""
        t = self.template
        parts = _parts(len(idx), _work(t))
        d = t.dims
        # (a solver called per instance, on cones whose projections make its calls long)
        piped = not hasattr(backend, "solve_many") and bool(d.psd or d.exp or d.exp_dual)
        if len(parts) > 1 and piped:
            parts = _pipeline_parts(len(idx))
        if len(parts) > 1 and piped and (self._ordered_first or use_dense(t)):

            def solved(j: int) -> SolveResult:
                at = idx[parts[j]]
                return solve_batch(backend, pick(mats, at), b[at], c[at], t.dims, settings,
                                   None if Ps is None else pick(Ps, at),
                                   warm=None if warm is None else tuple(w[parts[j]] for w in warm),
                                   shared=shared)

            return _Attempt.join(pipelined(
                solved, lambda j, res: self._settle(res, idx[parts[j]], ops, c, b, ours, scaling),
                len(parts)), with_D=True)
        res = solve_batch(backend, pick(mats, idx), b[idx], c[idx], t.dims, settings,
                          None if Ps is None else pick(Ps, idx), warm=warm,
                          shared=shared)
        if len(parts) == 1:
            return self._settle(res, idx, ops, c, b, ours, scaling)
        self._ordering_first(res, ops, idx)
        return _Attempt.join(parallel_map(
            lambda sl: self._settle(res.take(sl), idx[sl], ops, c, b, ours, scaling),
            parts), with_D=True)

    def _ordering_first(self, res: SolveResult, ops: BatchOps, idx: np.ndarray) -> None:
        """SuperLU's orderings (`derivative._best_ordering`) decided before the parts of a
        batch are refined concurrently, where they are not yet: each layout's (S's, and
        S₀'s where S is low-rank) on the first instance of the attempt that factors with it
        and whose solver point is finite (the instances ``idx`` of ``ops``, their solver
        results ``res``), by one factorization of it. Otherwise the part that factors first
        would decide, on its own first instance. Once per layer."""
        t = self.template
        if self._ordered_first or use_dense(t):
            return
        v = res.y - res.s
        finite = np.flatnonzero(np.all(np.isfinite(res.x), axis=1)
                                & np.all(np.isfinite(v), axis=1))
        if not finite.size:
            return
        groups = low_rank_groups(t)
        if not groups:  # (S's layout alone)
            finite = finite[:1]
        D = dproject(v[finite], t.dims, dual=True)
        low = low_rank_mask(t, D)[0] if groups else np.zeros(1, dtype=bool)
        for kind in (False, True):
            at = np.flatnonzero(low == kind)
            if at.size and sparse_layout(t, kind).ordering is None:
                j = int(at[0])
                Linearization(ops.take(idx[finite[j : j + 1]]), D.take(np.array([j])))
        self._ordered_first = True

    def _settle(self, res: SolveResult, idx: np.ndarray, ops: BatchOps, c: np.ndarray,
                b: np.ndarray, ours: dict, scaling: Equilibration) -> _Attempt:
        """Refinement and the certificate of the backend's results ``res`` on the instances
        ``idx``: their attempt."""
        t = self.template
        status = list(res.status)
        finite = np.all(np.isfinite(res.x), axis=1)
        candidate = np.array([st in _REFINABLE for st in status], dtype=bool) & finite
        k = len(idx)
        every = k == ops.a.shape[0]  # the whole batch (idx = 0 … B−1): no copies
        ch, bh, eq = (c, b, scaling) if every else (c[idx], b[idx], scaling.take(idx))
        x, y, s = res.x, res.y, res.s
        # without refinement (``refine`` off) the solver's point is certified as it is
        sub = ops if every else ops.take(idx)
        # (the call's batch, not this part of it: a call takes one path whether the low-memory
        # mode settles it in chunks or not, and so reports the same conditioning)
        if ours["refine"] and ours["refine_max_iters"] > 0 and ops.a.shape[0] <= ACTIVE_SET_BATCH \
                and candidate.all() and small_polyhedral(t):
            vertices = self._vertices(res, sub, ch, bh, eq)
            if vertices is not None:
                return vertices
        r = refine(sub, ch, bh, x, y, s, tol=ours["refine_tol"],
                   max_iters=ours["refine_max_iters"] if ours["refine"] else 0)
        keep = candidate & (r.omega <= r.omega_before)
        x, y, s = (np.where(keep[:, None], new, old)
                   for new, old in ((r.x, x), (r.y, y), (r.s, s)))
        before = r.omega_before
        after = np.where(keep, r.omega, r.omega_before)
        factors = [f if kp else None for f, kp in zip(r.factors, keep, strict=True)]
        v = np.where(keep[:, None], r.v, y - s)
        certified = candidate & keep & (after <= ACCEPT_BACKWARD)
        certified = self._certified_held(sub, eq, r, certified, factors, ch, bh, v)
        vertex: list = [None] * k
        rescue = np.flatnonzero(candidate & ~certified)
        if rescue.size and ACTIVE_SET_RESCUE and ours["refine"] \
                and ours["refine_max_iters"] > 0 and small_polyhedral(t):
            # the exact solution of the active set that the refined point, else the solver's,
            # indicates (`_vertices`, instance by instance): where Newton stalls on a wrong
            # branch of a kink (two nearly coincident parallel bounds, both held active); for
            # a linear program, then HiGHS's vertex (`polyhedral.lp_vertex`)
            for point in ("refined", "solver", "vertex"):
                if point == "vertex":
                    if t.quadratic:
                        break
                    guesses = [(i, g) for i in rescue.tolist()
                               if (g := lp_vertex(sub.take(np.array([i])), ch[i], bh[i]))
                               is not None]
                    if not guesses:
                        break
                    todo = np.array([i for i, _ in guesses], dtype=int)
                    px, py, ps = (np.stack([g[q] for _, g in guesses]) for q in range(3))
                else:  # (the solver's point only where refinement kept another)
                    todo = rescue if point == "refined" else rescue[keep[rescue]]
                    px, py, ps = (a[todo] for a in ((x, y, s) if point == "refined"
                                                    else (res.x, res.y, res.s)))
                if todo.size:
                    found = self._vertex_points(sub, ch, bh, eq, px, py, ps, todo)
                    assert found is not None  # (not ``every``)
                    for j, (i, a) in enumerate(zip(todo.tolist(), found[0], strict=True)):
                        if a is not None:
                            x[i], y[i], s[i], v[i] = a.x, a.y, a.s, a.y - a.s
                            after[i], factors[i], vertex[i] = found[1][j], None, a
                            certified[i] = True
                rescue = rescue[~certified[rescue]]
                if not rescue.size:
                    break
        for i in range(k):
            if certified[i]:
                status[i] = Status.SOLVED
            elif status[i] is Status.SOLVED:  # SCS's word is not enough: not certified
                status[i] = Status.INACCURATE
        att = _Attempt(status=status, scs_status=list(res.status), x=x, y=y, s=s,
                       scs_x=res.x, scs_y=res.y, scs_s=res.s, residual_before=before,
                       residual_after=after, steps=r.steps, iterations=res.iterations,
                       seconds=res.seconds, retryable=candidate & ~certified,
                       factors=factors, v=v, extended=np.zeros(k, dtype=bool), D=r.D,
                       v_D=r.v_D, vertex=vertex)
        near = np.flatnonzero(candidate & keep & ~certified & (after <= EXTENDED_FROM))
        if ours["refine"] and near.size and extended_ok(t):
            again = self._extended(sub.take(near), eq.take(near), ch[near], bh[near], att,
                                   near, ours)
            won = again.extended
            att.merge(near, again, keep=won)
            att.retryable[near[won]] = False
        solved = np.array([st is Status.SOLVED for st in att.status], dtype=bool)
        if ours["refine"] and ours["refine_max_iters"] > 0 and t.dims.power:
            self._apexes_released(sub, eq, ch, bh, att, np.flatnonzero(candidate & ~solved),
                                  ours)
            solved = np.array([st is Status.SOLVED for st in att.status], dtype=bool)
        if ours["refine"] and ours["refine_max_iters"] > 0 and _curved(t):
            singular = np.array([f is not None and not f.rcond > RCOND_MIN
                                 for f in att.factors], dtype=bool)
            near = candidate & (solved & singular | ~solved & (att.residual_after <= HELD_OMEGA))
            if near.any():
                idx = np.flatnonzero(near)
                free = _free_priced(sub.take(idx), ch[idx], att.y[idx], att.s[idx])
                held = free.any(axis=1)
                self._inactive_held(sub, eq, ch, bh, att, idx[held], free[held], ours)
                solved = np.array([st is Status.SOLVED for st in att.status], dtype=bool)
        fine = np.flatnonzero(solved & ~att.extended & _unresolved(t, att.y, att.s))
        if ours["refine"] and ours["refine_max_iters"] > 0 and fine.size:
            again, won = self._polished(sub.take(fine), eq.take(fine), ch[fine], bh[fine],
                                        att, fine, ours)
            att.merge(fine, again, keep=won)
        solved = np.array([st is Status.SOLVED for st in att.status], dtype=bool)
        # (the largest row terms refinement measured, where its point is the one kept)
        same = np.all(att.x == r.x, axis=1) & np.all(att.y == r.y, axis=1) \
            & np.all(att.s == r.s, axis=1)
        top = np.where(same, r.den.max(axis=1, initial=0.0), np.nan)
        unresolved = solved & _costs_unresolved(sub, ch, bh, att.x, att.y, att.s, top)
        if ours["refine"] and ours["refine_max_iters"] > 0 and unresolved.any():
            # (refinement stops where ω, which judges such rows at its floor, is met: a row
            # missed for want of steps is met once polished, one whose structure is wrong
            # is not)
            idx = np.flatnonzero(unresolved)
            again, won = self._polished(sub.take(idx), eq.take(idx), ch[idx], bh[idx], att,
                                        idx, ours)
            won &= ~_costs_unresolved(sub.take(idx), ch[idx], bh[idx], again.x, again.y,
                                      again.s)
            att.merge(idx, again, keep=won)
            unresolved[idx[won]] = False
        att.unresolved = unresolved
        return att

    def _apexes_released(self, ops: BatchOps, eq: Equilibration, c: np.ndarray,
                         b: np.ndarray, att: _Attempt, idx: np.ndarray, ours: dict) -> None:
        """Refinement once more from ``att``'s points at ``idx`` (instances of ``ops``, not
        certified) whose power cones sit at an apex that a row of data rules out, moved to
        the face that row asks for (`cones.power_apexes_released`), and the certificate of
        its points (`_certified_again`); merged into ``att`` where certified and no power
        block is left unresolved (`_unresolved`).

        Newton's method cannot leave such an apex (its DΠ is 0 on the block, and the
        multiplier's entry that would move it enters no other row): min Σ x^1.5/1.5 − cᵀx
        with c over 1e-6 … 1e6 left 5 of 16 instances there, through every retry."""
        if not idx.size:
            return
        empty = ops.take(idx).magnitude.A(np.ones((idx.size, self.template.n))) == 0
        y, s, moved = power_apexes_released(att.y[idx], att.s[idx], b[idx], empty,
                                            self.template.dims)
        if not moved.any():
            return
        at = idx[moved]
        sub = ops.take(at)
        r = refine(sub, c[at], b[at], att.x[at], y[moved], s[moved], tol=ours["refine_tol"],
                   max_iters=ours["refine_max_iters"])
        again, won = self._certified_again(sub, eq.take(at), c[at], b[at], att, at, r,
                                           extended=False)
        won &= ~_unresolved(self.template, r.y, r.s)
        att.merge(at, again, keep=won)
        att.retryable[at[won]] = False

    def _inactive_held(self, ops: BatchOps, eq: Equilibration, c: np.ndarray,
                       b: np.ndarray, att: _Attempt, idx: np.ndarray, free: np.ndarray,
                       ours: dict) -> None:
        """Refinement once more from ``att``'s points at ``idx`` (instances of ``ops``: not
        certified, or certified where S is singular) with the idle cone blocks that a free
        priced variable (``free`` (len(idx), n), `_free_priced`) enters held active
        (`cones.inactive_cones_held`), then where that is not taken with the nonnegative
        rows that read their variables held as well, and each time the certificate of its
        points (`_certified_again`); merged into ``att`` where certified, refinement
        converged and S at the new point is regular or singular only along variables
        without a cost.

        A multiplier the solution sets far below the data is lost to the solver's
        tolerance, and with it the structure: min ‖x − a‖² + λ‖x‖₂ at λ = 1e-10‖a‖ came
        back with the norm's slack 2% inside its cone and the multiplier 0; at 1e-15‖a‖,
        certified (x is right to its promise either way) with S singular and ∂x/∂λ = 0 in
        place of −a/(2‖a‖), at 1e-9 … 1e-13, not certified. Held active, one Newton step
        reaches the solution, S regular.

        The free priced variables are those with a cost, no curvature and no active row
        (`_free_priced`; their blocks `_free_blocks`); the nonnegative rows close a cone's
        chain (log_sum_exp's Σ exp(x_i − t) <= 1). A truly inactive constraint's block (a
        ball around the data, whose epigraph variable is free between ‖x − a‖ and the
        radius), held too, took that variable to the apex, a kink on which the point's
        derivative lost ∂x/∂λ."""
        if not idx.size:
            return
        dims = self.template.dims
        sub = ops.take(idx)
        cones = _free_blocks(sub, free, att.y[idx], att.s[idx])
        tiers = [cones]
        if dims.nonneg:
            # the nonnegative rows that read a variable of those blocks
            mag = sub.magnitude
            reads = mag.A((mag.AT(cones.astype(float)) > 0).astype(float)) > 0
            nonneg = cone_layout(dims).nonneg
            chain = cones.copy()
            chain[:, nonneg] = reads[:, nonneg]
            tiers.append(chain)
        left = np.ones(idx.size, dtype=bool)
        for hold in tiers:
            y, s, moved = inactive_cones_held(att.y[idx], att.s[idx], dims, hold)
            moved &= left
            if not moved.any():
                return
            won = self._held_once(ops, eq, c, b, att, idx[moved], y[moved], s[moved], ours)
            left &= moved & ~np.isin(idx, won)

    def _held_once(self, ops: BatchOps, eq: Equilibration, c: np.ndarray, b: np.ndarray,
                   att: _Attempt, at: np.ndarray, y: np.ndarray, s: np.ndarray, ours: dict
                   ) -> np.ndarray:
        """`_inactive_held`'s refinement from (y, s) at the instances ``at`` and its
        certificate, merged into ``att`` where taken; returns those instances."""
        sub = ops.take(at)
        r = refine(sub, c[at], b[at], att.x[at], y, s, tol=ours["refine_tol"],
                   max_iters=ours["refine_max_iters"])
        again, won = self._certified_again(sub, eq.take(at), c[at], b[at], att, at, r,
                                           extended=False)
        # taken only where Newton converged to a point where S is regular, or singular only
        # along variables without a cost (an inactive constraint's epigraph variable beside
        # the held regularizer): the structure held is then the solution's (a point that
        # stalls can hold a block active that the solution does not, within the values'
        # promise and not the derivative's: min ‖x − a‖² + λ‖x‖₃ at λ = 1e-11‖a‖ certified
        # at ω 1e-9 with S's rcond 6e-12, ∂x/∂λ 0.3 off)
        n = self.template.n
        won &= r.converged & np.array(
            [f is not None and (f.rcond > RCOND_MIN or not _cost_along_null(f, c[i], n))
             for f, i in zip(r.factors, at.tolist(), strict=True)], dtype=bool)
        att.merge(at, again, keep=won)
        att.retryable[at[won]] = False
        return at[won]

    def _polished(self, ops: BatchOps, eq: Equilibration, c: np.ndarray, b: np.ndarray,
                  att: _Attempt, idx: np.ndarray, ours: dict
                  ) -> tuple[_Attempt, np.ndarray]:
        """Refinement once more from ``att``'s certified points at ``idx`` (the instances of
        ``ops``), past its tolerance to POLISH_TOL, and the certificate of its points
        (`_certified_again`: the attempt, and where it is certified; the caller keeps the
        first point elsewhere).

        For points with a power cone whose slack or multiplier holds an entry below
        UNRESOLVED of its block's largest (`_unresolved`): refinement stops at a
        backward error that judges a row far below the instance's largest at SCALE_FLOOR of
        it, and the certificate holds outputs to their max-norm, so an output set by such a
        row is held only to that. x = √c at c = 2e-10 beside c ~ 1e3 (min Σ x³/3 − cᵀx, its
        cone (t, 1, x) with t ~ 3e-15 beside the 1) came back 1.9e-4 of itself off, within
        the value's promise, and ∂x/∂c = 1/(2x), the Jacobian's largest entry, with it; two
        more Newton steps take it to 3e-12."""
        r = refine(ops, c, b, att.x[idx], att.y[idx], att.s[idx], tol=POLISH_TOL,
                   max_iters=min(POLISH_STEPS, ours["refine_max_iters"]), flip=False)
        # converged as the first refinement was: within its tolerance (POLISH_TOL is where
        # Newton stops gaining, not a test)
        r = replace(r, converged=r.omega <= ours["refine_tol"])
        return self._certified_again(ops, eq, c, b, att, idx, r, extended=False)

    def _vertices(self, res: SolveResult, ops: BatchOps, c: np.ndarray, b: np.ndarray,
                  eq: Equilibration) -> _Attempt | None:
        """The attempt at the instances of ``ops`` (a few, of a small polyhedral program;
        ``res`` the solver's results, all finite) that takes each to the exact solution of
        the active set its point indicates (`polyhedral.ActiveSet`), where every one of
        them is certified there; None where one is not (the general path, refinement and
        `_forward_error_ok`, then judges them all).

        Certified as `_forward_error_ok` certifies a refined point, with M's solves as S's:
        ω <= ACCEPT_BACKWARD, and each output's estimated error |S⁻¹F| + |S⁻¹|(ROUNDING·den)
        within ACCEPT_FORWARD of it (`_outputs_within`; a zero output that the program's
        small data may set is left to the general path). The rounding term is exact here,
        from M's inverse (`polyhedral.ActiveSet.bound`). Beyond that the point must be
        strictly complementary with room (ACTIVE_SET_MARGIN, and each multiplier
        and slack above its own estimated error: the active set is then the solution's,
        not rounding's) and M well conditioned (ACTIVE_SET_RCOND): a kink, a non-unique
        solution or a poorly conditioned one is the general path's to judge."""
        k = len(res.x)
        found = self._vertex_points(ops, c, b, eq, res.x, res.y, res.s, np.arange(k), True)
        if found is None:
            return None
        sets, omegas, before = found
        x = np.stack([a.x for a in sets])
        y = np.stack([a.y for a in sets])
        s = np.stack([a.s for a in sets])
        v = y - s  # (Π(v) = y exactly: y and s have disjoint supports, y >= 0 off zero rows)
        return _Attempt(status=[Status.SOLVED] * k, scs_status=list(res.status), x=x, y=y, s=s,
                        scs_x=res.x, scs_y=res.y, scs_s=res.s, residual_before=before,
                        residual_after=omegas, steps=np.ones(k, dtype=int),
                        iterations=res.iterations, seconds=res.seconds,
                        retryable=np.zeros(k, dtype=bool), factors=[None] * k, v=v,
                        extended=np.zeros(k, dtype=bool), vertex=sets)

    def _vertex_points(self, ops: BatchOps, c: np.ndarray, b: np.ndarray, eq: Equilibration,
                       x0: np.ndarray, y0: np.ndarray, s0: np.ndarray, idx: np.ndarray,
                       every: bool = False) -> tuple[list, np.ndarray, np.ndarray] | None:
        """`_vertices`' test, per instance ``idx`` of ``ops`` from the points (x0, y0, s0)
        (rows as ``idx``): for each, the `ActiveSet` whose exact solution it certifies, or
        None; and each one's backward error at that solution and at the given point. With
        ``every``, None as soon as one instance is not certified."""
        t = ops.template
        k = len(idx)
        sets: list = [None] * k
        omegas, ds, before = np.zeros(k), np.zeros((k, t.n + t.m)), np.zeros(k)
        v0 = y0 - s0
        pv0 = project_dual(v0, ops.take(idx))
        for j, i in enumerate(idx.tolist()):
            at = np.array([i])
            got = _vertex_at(ops.take(at), c[i], b[i], y0[j], s0[j],
                             None if ops.rounding is None
                             else functools.partial(self._data_rounding, ops, eq, at))
            if got is None:
                if every:
                    return None
                continue
            sets[j], omegas[j], ds[j] = got
            before[j] = omega(*sets[j].terms(x0[j], pv0[j], pv0[j] - v0[j]))
        have = np.array([j for j, a in enumerate(sets) if a is not None], dtype=int)
        if have.size:
            x = np.stack([sets[j].x for j in have])
            y = np.stack([sets[j].y for j in have])
            s = np.stack([sets[j].s for j in have])
            ok = self._outputs_within(ops, eq, idx[have], x, y, y - s, ds[have], c, b, None)
            for j in have[~ok].tolist():
                sets[j] = None
        if every and any(a is None for a in sets):
            return None
        return sets, omegas, before

    def _extended(self, ops: BatchOps, eq: Equilibration, c: np.ndarray, b: np.ndarray,
                  att: _Attempt, idx: np.ndarray, ours: dict) -> _Attempt:
        """Refinement once more from ``att``'s points at ``idx`` (the instances of ``ops``),
        with the residual evaluated in extended precision (`refine.refine` with
        ``extended``), and the certificate of its points with that precision's rounding
        (ROUNDING_EXTENDED): an attempt over ``idx`` whose ``extended`` marks the points it
        certifies (SOLVED there), its costs the refinement's steps alone.

        Where the float64 residual of an ill-conditioned program is all rounding, refinement
        stalls at about cond·u, and so does the estimate: Σ x⁴ + ‖x − a‖² with a ~ 1e6
        (S's rcond 3e-9) had its refined point 2e-10 off and an estimate of 1e-8, not
        certified; extended residuals take both to about u."""
        r = refine(ops, c, b, att.x[idx], att.y[idx], att.s[idx], tol=ours["refine_tol"],
                   max_iters=ours["refine_max_iters"], extended=True)
        return self._certified_again(ops, eq, c, b, att, idx, r, extended=True)[0]

    def _certified_again(self, ops: BatchOps, eq: Equilibration, c: np.ndarray, b: np.ndarray,
                         att: _Attempt, idx: np.ndarray, r: Any, extended: bool
                         ) -> tuple[_Attempt, np.ndarray]:
        """`_extended`'s and `_polished`'s attempt over ``idx`` from refinement's points ``r``
        (from ``att``'s; with ``extended``, its residuals in long double), and which of them
        are certified (with that precision's rounding): SOLVED there (and marked
        ``extended`` with ``extended``), ``att``'s status elsewhere, its costs the
        refinement's steps alone."""
        v = r.v.copy()
        ok = self._certified_held(ops, eq, r, r.omega <= ACCEPT_BACKWARD, r.factors, c, b, v,
                                  rounding=ROUNDING_EXTENDED if extended else ROUNDING)
        k = len(ok)
        return _Attempt(status=[Status.SOLVED if w else att.status[i]
                                for w, i in zip(ok, idx.tolist(), strict=True)],
                        scs_status=[att.scs_status[i] for i in idx], x=r.x, y=r.y, s=r.s,
                        scs_x=att.scs_x[idx], scs_y=att.scs_y[idx], scs_s=att.scs_s[idx],
                        residual_before=r.omega_before,
                        residual_after=r.omega, steps=r.steps,
                        iterations=np.zeros(k, dtype=att.iterations.dtype),
                        seconds=np.zeros(k), retryable=~ok, factors=r.factors, v=v,
                        extended=ok & extended, D=r.D, v_D=r.v_D), ok

    def _null_space_moves(self, f: Any, D: DProjection, here: np.ndarray, extent: float,
                          h: np.ndarray, mix: Equilibration | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per output (bool): does a direction in the null space of the singular S that
        ``f`` factored move it? The outputs change along a null vector w = (w_u, w_v) by
        R (w_u, DΠ(v) w_v) (R: ``template.recover``, ``D`` = DΠ exact at v, unbatched). An
        entry of that change is rounding where it is below NULL_RTOL of the same sum taken
        in absolute values (cancellation in R's sums), or below what the null vectors' own
        error (`TruncatedSVD.null_error`, a 2-norm, where S's singular values are known)
        leaves in it, |R_e|₂ times that error. The second holds only where the output is
        large enough for it: that error, over the extent of a face of solutions (taken as
        ``extent``, the point's max-norm, at least 1), within ACCEPT_FORWARD of the output's
        max-norm (``here``: the outputs' entries' magnitudes at the point, all in the
        equilibrated program's units); a tiny output beside large auxiliary variables
        (sparsemax with θ ~ 1e12: x̂ ~ 1e-14) is held to the first test alone. A sparse
        S's null space (`SparsePinv`, whose Ritz vectors carry no such bound) is taken from
        its dense SVD up to order NULL_SVD_MAX.

        Returned for the null vectors as computed, for exact ones, which are 0 on
        the variables where P (values ``h``) is nonsingular (`_strictly_convex`): S w = 0
        gives, from (1) in `derivative`, w_uᵀ P w_u = −w_vᵀ (I − DΠ) DΠ w_v, and DΠ is
        symmetric with eigenvalues in [0, 1], so both sides vanish (P ⪰ 0) and P w_u = 0.
        What a computed null vector holds there is rounding, which beside an output far
        smaller than the auxiliary variables (x ~ 1e-9 inside an ℓ₁ ball of radius 1, whose
        bounds t_i are free) would otherwise count as a move; and third, which outputs the
        computed null vectors move by more than their own error, whatever the output's size.
        An output moved that way but by no exact null vector marks an S that is nearly
        singular, not singular: its null vectors are no face of solutions.
        Where S's null space is not known (no pseudo-inverse: S not finite), every output
        counts as moved. ``mix`` (the instance's scaling, where it mixes exponential cones'
        rows or boosts second-order cones') is undone on the multipliers before ``recover``
        reads them (`Equilibration.unmixed`)."""
        every = np.ones(len(self.outputs), dtype=bool)
        if f.pinv is None:
            return every, every, ~every
        t = self.template
        pinv = f.pinv
        N = pinv.null  # (n + m, k): orthonormal basis of S's right null space
        if not np.isfinite(pinv.null_error) and isinstance(f.S, sp.spmatrix) \
                and f.S.shape[0] <= NULL_SVD_MAX:
            # the inverse iteration's Ritz vectors carry no error bound: the dense SVD's do
            dense = TruncatedSVD.of(f.S.toarray())
            if dense is not None and dense.null.shape[1] == N.shape[1]:
                pinv, N = dense, dense.null
        if N.shape[1] == 0:
            return ~every, ~every, ~every
        noise = self._recover_row_norms * pinv.null_error

        def moves(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            change = np.abs(t.recover @ W).max(axis=1)
            terms = (abs(t.recover) @ np.abs(W)).max(axis=1)
            cancelled = change <= NULL_RTOL * terms
            moved = np.zeros(len(self.outputs), dtype=bool)
            beyond = np.zeros(len(self.outputs), dtype=bool)
            for k, (o, lo) in enumerate(zip(self.outputs, self._out_offsets, strict=True)):
                sl = slice(lo, lo + o.size)
                size = here[sl].max(initial=0.0)
                within = change[sl] <= noise[sl]
                rounding = within & (noise[sl] * max(extent, 1.0) <= ACCEPT_FORWARD * size)
                moved[k] = not np.all(cancelled[sl] | rounding)
                beyond[k] = not np.all(cancelled[sl] | within)
            return moved, beyond

        y = D.matvec(N[t.n :])
        W = np.concatenate([N[: t.n], y if mix is None else mix.unmixed(y)], axis=0)
        computed, beyond = moves(W)
        unique = self._strictly_convex(h) if computed.any() else None
        if unique is None or unique.size == 0:
            return computed, computed, beyond
        W[unique] = 0.0
        return computed, moves(W)[0], beyond

    def _strictly_convex(self, h: np.ndarray) -> np.ndarray:
        """The variables (indices into u) that P, with values ``h`` (one instance's), touches,
        where P restricted to them is nonsingular (smallest eigenvalue above P_DEFINITE of
        the largest times their number): the objective is strictly convex in them, and they
        are unique on the optimal set. Empty where P is singular there, or touches more
        than NULL_SVD_MAX variables."""
        t = self.template
        on = h != 0
        support = np.union1d(t.P_rows[on], t.P_cols[on])
        if support.size == 0 or support.size > NULL_SVD_MAX:
            return support[:0]
        rows, cols = t.P_rows[on], t.P_cols[on]
        if np.array_equal(rows, cols):  # diagonal (sum_squares): exactly, from its entries
            return support if np.all(h[on] > 0) else support[:0]
        at = np.searchsorted(support, rows), np.searchsorted(support, cols)
        P = np.zeros((support.size, support.size))
        np.add.at(P, at, h[on])
        w = np.linalg.eigvalsh(P)  # (both triangles are stored)
        if not np.all(np.isfinite(w)) or w[0] <= P_DEFINITE * support.size * abs(w).max():
            return support[:0]
        return support

    @cached_property
    def _recover_row_norms(self) -> np.ndarray:
        """The 2-norms of ``template.recover``'s rows (the outputs' entries)."""
        R = self.template.recover
        return np.sqrt(np.asarray(R.multiply(R).sum(axis=1)).ravel())

    @staticmethod
    def _null_space_exact(f: Any) -> bool:
        """Is every vector n of the (numerical) null space of S that ``f`` factored null to
        rounding, ‖S n‖∞ <= NULL_EXACT·max|S|·‖n‖₁? A direction S only shrinks (a QP whose P
        has eigenvalues 1 and 1e12, rotated: rcond 7e-13, below RCOND_MIN) is no face of
        solutions: the point is unique, and known along it only to the conditioning."""
        if f.pinv is None or f.S is None:
            return False
        N = f.pinv.null
        if N.shape[1] == 0:
            return True
        SN = np.column_stack([f.S @ N[:, k] for k in range(N.shape[1])])
        bound = NULL_EXACT * abs_max(f.S) * np.abs(N).sum(axis=0)
        return bool(np.all(np.abs(SN).max(axis=0) <= bound))

    def _null_space_in_equalities(self, f: Any) -> bool:
        """Does a computed null vector of the singular S that ``f`` factored have entries on
        the zero cone's rows (equality duals) above NULL_EQUALITY of its largest?"""
        t = self.template
        if f.pinv is None or t.dims.zero == 0:
            return False
        N = np.abs(f.pinv.null)
        if N.shape[1] == 0:
            return False
        rows = N[t.n : t.n + t.dims.zero]
        return bool(np.any(rows.max(axis=0) > NULL_EQUALITY * N.max(axis=0)))

    def _no_face_exactly(self, f: Any, c: np.ndarray, b: np.ndarray,
                         in_range: bool = True) -> bool:
        """Does exact arithmetic show that the singular S that ``f`` factored has no face of
        solutions here: S nonsingular, or (``in_range``) the program's data (c, b),
        equilibrated, outside its range (`derivative.ranks_exactly`)? Asked of programs with
        zero and nonnegative cones alone, up to order EXACT_RANK_MAX (False elsewhere): their
        DΠ is 0 or 1, so S's entries are the equilibrated data, the user's times powers of
        two (`equilibrate`), and F = S (u, v) + (c, b) is affine while DΠ keeps its pattern, so
        a point of a face makes (c, b) a combination of S's columns. Nonnegative least
        squares whose F has condition 2e14 (columns nearly parallel) came back solved 8× off
        (S nonsingular, singular to rounding), and an LP whose cost is parallel to a face to
        1e-12 of its terms 190% off (S singular, (c, b) outside its range by that 1e-12)."""
        t = self.template
        if t.m != t.dims.zero + t.dims.nonneg or t.n + t.m > EXACT_RANK_MAX \
                or not isinstance(f.S, (np.ndarray, sp.spmatrix)):
            return False
        N = t.n + t.m
        M = np.column_stack([f.S.toarray() if isinstance(f.S, sp.spmatrix) else f.S,
                             np.concatenate([c, b])])
        if not np.all(np.isfinite(M)):
            return False
        ranks = ranks_exactly(M)  # (S's rank, then [S, (c, b)]'s, in one elimination)
        return bool(ranks[N - 1] == N or in_range and ranks[N] > ranks[N - 1])

    def _stale(self, r: Any, idx: np.ndarray, factors: list) -> list[int]:
        """The instances among ``idx`` whose kept factorization (refinement's last, of S at
        the previous iterate) is not S at the refined point to within STALE of its effect on
        S⁻¹: DΠ there and DΠ where it was made, applied to a fixed probe, differ in some row
        by more than STALE·rcond of the first (or by more than rounding where it is 0). S⁻¹
        moves by about S's relative change over rcond: a nearly singular quad_form on a ball
        of radius 1e11 had its kept S at rcond 3e-6 and S at the point at condition 4e10,
        DΠ 1e-5 apart, and its estimate 1e5 times short (x 2e-5 off, solved). Near the boundary
        of a cone's polar, DΠ's small eigenvalue can change entirely within the last step
        (a second-order cone holding entries ~1e10 beside ~1: 6e-11 against 1e-6), and
        with it S⁻¹, the error estimate and the derivative. A singular S's pseudo-inverse is
        not continuous in S (a singular value that vanishes at the solution is ~1e-9 one
        step before, and its inverse enters the estimate): there any move beyond rounding
        makes the factorization stale (a power cone at its apex, from SCS at eps 1e-9: a
        probe error of 1e-5 at the previous iterate, 5e-15 at the point)."""
        have = np.array([i for i in idx if factors[i] is not None], dtype=int)
        if have.size == 0:
            return []
        t = self.template
        w = np.broadcast_to(sign_probe(t.m), (have.size, t.m))
        at_v = np.all(r.v_D[have] == r.v[have], axis=1)
        now = r.D.take(have).matvec(w)
        if not at_v.all():
            now[~at_v] = dproject(r.v[have[~at_v]], t.dims, dual=True).matvec(w[~at_v])
        then = r.D_factored.take(have).matvec(w)
        rcond = np.array([factors[i].rcond for i in have], dtype=float)
        singular = ~(rcond > RCOND_MIN)
        rel = np.where(singular, ROUNDING, STALE * rcond)[:, None]
        drift = np.abs(now - then) > rel * np.abs(now) + ROUNDING
        return have[drift.any(axis=1)].tolist()

    def _null_space_curved(self, f: Any, D: DProjection) -> bool:
        """Does a direction of the null space of the singular S that ``f`` factored pass
        through a block of a curved cone (second-order, exponential, power, PSD) whose DΠ
        (``D``, at the point, unbatched) is neither 0 nor I, with more than FACE_TOL of its
        norm (see CURVED)? True where S's null space is not known."""
        if f.pinv is None:
            return True
        t = self.template
        N = f.pinv.null
        sep = t.dims.zero + t.dims.nonneg
        if N.shape[1] == 0 or sep == t.m:
            return False
        p = pattern(t)
        curved = p.blocks >= sep
        starts, sizes = p.blocks[curved], p.block_sizes[curved]
        # which blocks' DΠ is neither 0 nor I: a fixed probe, blockwise
        w = sign_probe(t.m)
        Dw = D.matvec(w)
        off_zero = np.add.reduceat(Dw * Dw, starts)
        off_one = np.add.reduceat((Dw - w) ** 2, starts)
        scale = sizes.astype(float)  # ‖w_b‖² (entries ±1)
        active = (off_zero > CURVED * scale) & (off_one > CURVED * scale)
        if not active.any():
            return False
        share = np.add.reduceat(N[t.n :] ** 2, starts, axis=0)[active]  # (blocks, k)
        return bool(np.any(share > FACE_TOL ** 2 * np.einsum("ij,ij->j", N, N)))

    def _certified_held(self, ops: BatchOps, eq: Equilibration, r: Any, which: np.ndarray,
                        factors: list, c: np.ndarray, b: np.ndarray, v: np.ndarray,
                        rounding: float = ROUNDING) -> np.ndarray:
        """`_forward_error_ok` of refinement's points ``r`` where ``which`` (B,), with each
        certified point's v (``v``, (B, m), changed in place) set to 0 on the entries the
        certificate took for kinks: a weakly active constraint known only to within its
        error is held on the kink, which the derivatives then find (`diagnose`), as they
        find one that refinement left there."""
        kinks = np.zeros(v.shape, dtype=bool)
        which = which & ~self._factors_lost(ops, eq, c, b, r.x, r.y, which)
        which = which & ~self._multiplier_rows_unmet(ops, eq, c, b, r.x, r.y, r.v, which)
        if self.template.dims.power:
            which = which & ~self._power_products_unmet(ops, eq, c, b, r.x, r.y, which)
        which = which & ~_data_rows_floored(self.template, r, b, which)
        which = which & ~_scaling_hides(ops, eq, r, c, b, which)
        layout = self._rotated_layout
        if layout is not None:
            which = which & ~_rotated_unresolved(ops, b, r.x, r.s,
                                                 self._raw_outputs(eq, r.x, r.y), layout)
        ok = which & self._forward_error_ok(ops, eq, r, which, factors, c, b,
                                            rounding=rounding, kinks=kinks)
        v[kinks & ok[:, None]] = 0.0
        return ok

    def _factors_lost(self, ops: BatchOps, eq: Equilibration, c: np.ndarray, b: np.ndarray,
                      x: np.ndarray, y: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Per instance of ``ops`` (B,), where ``which``: does a boostable second-order cone
        hold a factor below rounding that the point's optimality rests on? The sum and the
        difference of its slack's first row r and axis row q (b − Ax) are formed from the
        rows' data, (b_r ± b_q) − ((Ax)_r ± (Ax)_q), not from the rounded slacks; one that is
        nonzero and below FACTOR_LOST of the two rows' terms (|A||x| + |b|) is rounding in
        that scaling, and the duality gap it carries, ½|y_r ± y_q| times it, which no
        floating-point residual shows, must be within ACCEPT_BACKWARD of the objective's
        terms (|c|ᵀ|x| + |x|ᵀ|P||x|). An inactive cone (y = 0) carries none. The same of the
        multiplier's factors: `_multiplier_factors_lost`."""
        out = np.zeros(len(which), dtype=bool)
        pat = pattern(self.template)
        rq = pat.boost_rows
        idx = np.flatnonzero(which)
        if rq.shape[1] == 0 or idx.size == 0:
            return out
        sub = ops.take(idx)
        xs, ys, bb = x[idx], y[idx], b[idx]
        Ax = sub.A(xs)
        Ax_terms = sub.magnitude.A(np.abs(xs))
        terms = Ax_terms + np.abs(bb)
        r, q = rq
        scale = terms[:, r] + terms[:, q]
        objective = _objective_terms(sub, c[idx], xs)
        gap = np.zeros(idx.size)
        sides = []
        for sign in (1.0, -1.0):
            part = (bb[:, r] + sign * bb[:, q]) - (Ax[:, r] + sign * Ax[:, q])
            rounding = (part != 0) & (np.abs(part) <= FACTOR_LOST * scale)
            gap += np.where(rounding, 0.5 * np.abs(ys[:, r] + sign * ys[:, q]) * np.abs(part),
                            0.0).sum(axis=1)
            sides.append(part)
        lost = gap > ACCEPT_BACKWARD * objective

        def moved() -> np.ndarray:
            return self._slack_rows_moved(ops, eq, idx, bb, xs, ys)

        # (the point's own resolution: each entry of x to the rounding of its largest, which
        # leaves a cone at its apex holding 1e-37 where the solution holds 0)
        floor = sub.magnitude.A(np.repeat(np.abs(xs).max(axis=1, keepdims=True), xs.shape[1],
                                          axis=1))
        out[idx] = lost | self._multiplier_factors_lost(pat, bb - Ax, ys, sides,
                                                        Ax_terms + floor, terms + floor,
                                                        (bb[:, r] != 0) | (bb[:, q] != 0),
                                                        objective, moved)
        return out

    def _multiplier_rows_unmet(self, ops: BatchOps, eq: Equilibration, c: np.ndarray,
                               b: np.ndarray, x: np.ndarray, y: np.ndarray, v: np.ndarray,
                               which: np.ndarray) -> np.ndarray:
        """Per instance of ``ops`` (B,), where ``which``: does a dual row fail for every
        multiplier of the boostable second-order cones that the point's y rounds to, once
        each cone is read through its factors P, Q = y_r ± y_q (first row r, axis row q)?

        Those two rows store entries in the same columns, so a column reads the cone as
        ½(A_r + A_q)P + ½(A_r − A_q)Q, and a column of t in x·t >= w² (rows x + t, x − t)
        reads Q alone. A factor far below the other is lost to the rounding of y_r and y_q
        (|y| ~ 1e7 holds Q to 1e-9), and the row's residual, formed from y_r and y_q, is
        judged against their terms: any Q passes. But y in K* bounds each factor below by
        the other rows, PQ >= ‖W‖²: min Σ(x − a)² + wᵀx^1.5 came back `solved` with one x at
        1.5e-19 for 0.19, its chain's cone at its apex holding y = (5.7e6, 5.7e6, −1.3e-3),
        whose Q >= 1.4e-13 met a column that reads Q alone and asks Q = 0.

        Each entry of y is taken over what its rounding and the backward error leave it (its
        block's |Π(v)| + |v| times ROUNDING + ACCEPT_BACKWARD, as `refine.row_terms` and
        `refine.omega` hold it; |y| on zero and nonnegative rows), the factors so and above
        0, the rest of the row over that and its own rounding and the data's; 0 lies
        outside a row's range where it misses by more than ACCEPT_BACKWARD of its terms in
        this form (the factors' |½(A_r ± A_q)|·|P|, |Q| in place of the rows' |A_r||y_r| +
        |A_q||y_q|). A row is unmet where that holds once each factor is also held above
        ‖W‖²/(the other) and not without: the cone's bound, not the row's tolerance, is what
        fails it. The bound is formed from the cone's own entries to their rounding alone:
        one projection's, consistent to it, where the backward error would let a W of
        1.3e-3 in a block of 1e7 move to 0 and the bound with it. A row whose terms, as the
        residual holds them, lie below the backward error's floor (SCALE_FLOOR of the
        instance's largest) is not resolved in either form, and not judged. Other blocks
        read by the same row move as the backward error allows: a bound of 5e-20 that a
        row can meet only through an inactive cone's y = 0 (|v| ~ 2e-6) is met."""
        t = self.template
        out = np.zeros(len(which), dtype=bool)
        pat = pattern(t)
        r, q = pat.boost_rows
        idx = np.flatnonzero(which)
        if r.size == 0 or idx.size == 0:
            return out
        sub = ops.take(idx)
        xs, ys, vs = x[idx], y[idx], v[idx]
        # y's rounding: exact on zero and nonnegative rows, its block's elsewhere; and what
        # the backward error lets each entry move by besides (ACCEPT_BACKWARD of its terms
        # as `refine.row_terms` holds them: its block's |Π(v)| + |v|, or |y| on those rows)
        sep = t.dims.zero + t.dims.nonneg
        block = pat.block_max(np.abs(ys) + np.abs(vs))
        dy = np.zeros_like(ys)
        dy[:, sep:] = ROUNDING * block[:, sep:]
        free = ACCEPT_BACKWARD * np.abs(ys)
        free[:, sep:] = ACCEPT_BACKWARD * block[:, sep:]
        free += dy
        # the bound's own entries to their rounding: one cone's P, Q and W are one
        # projection's, consistent to it
        w2 = boost_cone_sums(pat, np.maximum(np.abs(ys) - dy, 0.0) ** 2, rest=True)
        df = free[:, r] + free[:, q]
        factors = (ys[:, r] + ys[:, q], ys[:, r] - ys[:, q])
        rounded = [(np.maximum(f - df, 0.0), f + df) for f in factors]
        bounded = [(lo.copy(), hi.copy()) for lo, hi in rounded]
        own = dy[:, r] + dy[:, q]
        with np.errstate(divide="ignore", invalid="ignore"):
            for (lo, _), other in ((bounded[0], factors[1] + own), (bounded[1], factors[0] + own)):
                np.maximum(lo, np.where((other > 0) & (w2 > 0), w2 / other, 0.0), out=lo)
        for lo, hi in bounded:
            np.maximum(hi, lo, out=hi)  # (a y outside K* beyond its rounding: no narrower)
        # the rows without the cones' first and axis rows, and their terms and rounding
        a = sub.a.copy()
        a[:, pat.boost_r] = 0.0
        a[:, pat.boost_q] = 0.0
        rest = BatchOps(t, a, sub.h)
        mid0 = sub.P(xs) + rest.AT(ys) + c[idx]
        px = sub.magnitude.P(np.abs(xs))
        terms0 = px + rest.magnitude.AT(np.abs(ys)) + np.abs(c[idx])
        radius0 = ROUNDING * terms0 + rest.magnitude.AT(free) \
            + ACCEPT_BACKWARD * (px + np.abs(c[idx]))
        cols = pat.cols[pat.boost_r]
        cone = pat.boost_cone
        ar, aq = sub.a[:, pat.boost_r], sub.a[:, pat.boost_q]
        halves = (0.5 * (ar + aq), 0.5 * (ar - aq))

        def excess(bounds: list[tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray]:
            mid, radius, terms = mid0.copy(), radius0.copy(), terms0.copy()
            for half, f, (lo, hi) in zip(halves, factors, bounds, strict=True):
                f, lo, hi = f[:, cone], lo[:, cone], hi[:, cone]
                np.add.at(mid.T, cols, (half * 0.5 * (lo + hi)).T)
                np.add.at(radius.T, cols, (np.abs(half) * (0.5 * (hi - lo) + ROUNDING * hi)).T)
                # (the factor's size: its value, or its bound where that is above it)
                np.add.at(terms.T, cols, (np.abs(half) * np.maximum(np.abs(f), lo)).T)
            return np.abs(mid) - radius, terms

        # a row unmet once the bounds are applied and met without them: the cone's bound
        # on a lost factor, not the row's tolerance, is what fails it
        fails, terms = excess(bounded)
        if not np.any(fails > ACCEPT_BACKWARD * terms):
            return out
        held, held_terms = excess(rounded)
        # (a row whose terms as the residual holds them lie below the backward error's floor
        # is judged there, as `refine.omega` judges it: it is not resolved, in either form)
        den = row_terms(sub, c[idx], b[idx], xs, vs, ys)
        unresolved = den[:, : t.n] <= SCALE_FLOOR * den.max(axis=1, initial=0.0)[:, None]
        fails[unresolved] = 0.0
        held[unresolved] = 0.0
        # (the data's rounding and the scaling's, asked only where a row fails without
        # them; the scaling's on a pair of the cones' entries in this form: a boost and a
        # factor of D scale each factor's coefficient, so one that is 0 stays exactly 0 and
        # the other rounds to that of the larger entry)
        allowed = np.zeros_like(fails)
        data = self._data_rounding(ops, eq, idx, xs, ys)
        if isinstance(data, np.ndarray):
            allowed += data[:, : t.n]
        got = None
        if eq.boost is not None or eq.mix is not None or t.dims.power:
            got = eq.take(idx).rounding(t, sub.a, b[idx])
        if got is not None:
            da = got[0].copy()
            pair = np.maximum(da[:, pat.boost_r], da[:, pat.boost_q])
            da[:, pat.boost_r] = 0.0
            da[:, pat.boost_q] = 0.0
            allowed += BatchOps(t, da).AT(np.abs(ys) + dy)
            for half, (_, hi) in zip(halves, bounded, strict=True):
                np.add.at(allowed.T, cols, (np.where(half != 0, pair, 0.0) * hi[:, cone]).T)
        unmet = (fails - allowed > ACCEPT_BACKWARD * terms) \
            & ~(held - allowed > ACCEPT_BACKWARD * held_terms)
        out[idx] = unmet.any(axis=1)
        return out

    def _power_products_unmet(self, ops: BatchOps, eq: Equilibration, c: np.ndarray,
                              b: np.ndarray, x: np.ndarray, y: np.ndarray, which: np.ndarray
                              ) -> np.ndarray:
        """Per instance of ``ops`` (B,), where ``which``: does a power cone's complementarity,
        formed from the slack's rows as the data give them, fail by more than the objective's
        terms allow?

        A complementary pair of K_α and its dual, s ⊥ y, has s_x y_x = α P and s_y y_y =
        (1 − α) P with P = |s_z y_z| (on the boundaries each is normal to the other's: y ∝
        (α/s_x, (1 − α)/s_y, −1/s_z) up to signs; both sides are 0 at an apex or an
        interior point), whichever of the pair is the primal cone. The residual forms s
        as Π(v) − v, known to the rounding of |v|: max Σ x^(3/4) − cᵀx at c ~ 1e3 holds
        x ~ 1e-13 in the rows of y_x ~ 1e3, so x came back 2-100% off, certified as a zero
        of its unit. The slack b − Ax keeps x; each identity's excess over its rounding
        (|A||x| + |b| and the data's in the slack's rows, |v|'s in the multiplier's) is a
        duality gap no floating-point residual shows, and must be within ACCEPT_BACKWARD of
        the objective's terms (|c|ᵀ|x| + |x|ᵀ|P||x|), as `_factors_lost`'s."""
        t = self.template
        out = np.zeros(len(which), dtype=bool)
        idx = np.flatnonzero(which)
        k = len(t.dims.power)
        if k == 0 or idx.size == 0:
            return out
        sub = ops.take(idx)
        xs, ys, bb = x[idx], y[idx], b[idx]
        s = bb - sub.A(xs)
        terms = sub.magnitude.A(np.abs(xs)) + np.abs(bb)
        lo = t.m - 3 * k  # (the power cones are the last blocks)
        alpha = np.abs(np.asarray(t.dims.power, dtype=float))
        ay = np.abs(ys)
        prod = s * ys
        P = np.abs(prod[:, lo + 2 :: 3])
        objective = _objective_terms(sub, c[idx], xs)

        def unmet(terms: np.ndarray) -> np.ndarray:
            # each product's rounding: the slack's entry to its terms' and the multiplier's
            # to its own (y = Π(v) beside |v| ~ |y| where s is the smaller)
            err = ROUNDING * (ay * terms + np.abs(s) * ay)
            dP = err[:, lo + 2 :: 3]
            excess = np.zeros(idx.size)
            for j, share in ((0, alpha), (1, 1.0 - alpha)):
                miss = np.abs(prod[:, lo + j :: 3] - share * P) \
                    - (err[:, lo + j :: 3] + share * dP)
                excess += np.maximum(miss, 0.0).sum(axis=1)
            return excess > ACCEPT_BACKWARD * objective

        # (the data's rounding in the slack's rows asked only where the products fail
        # without it: it can only widen the allowance)
        fails = unmet(terms)
        if fails.any():
            fails = unmet(terms + self._slack_rows_moved(ops, eq, idx, bb, xs, ys) / ROUNDING)
        out[idx] = fails
        return out

    def _slack_rows_moved(self, ops: BatchOps, eq: Equilibration, idx: np.ndarray,
                          b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(len(idx), m): what the rounding of the data and of the scaling of the instances
        ``idx`` (b: their b̂) moves the slack's rows by at their points (x, y), δb̂ + |δÂ||x|:
        the last m rows of `_data_rounding` and `_scaling_rounding`."""
        by = np.zeros_like(b)
        for part in (self._data_rounding(ops, eq, idx, x, y),
                     self._scaling_rounding(ops, eq, idx, b, x, y)):
            if isinstance(part, np.ndarray):
                by += part[:, self.template.n :]
        return by

    @staticmethod
    def _multiplier_factors_lost(pat: Any, s: np.ndarray, y: np.ndarray,
                                 sides: list[np.ndarray], Ax_terms: np.ndarray,
                                 s_terms: np.ndarray, data_pair: np.ndarray,
                                 objective: np.ndarray,
                                 moved: Callable[[], np.ndarray]) -> np.ndarray:
        """Per instance (B,): does a boostable second-order cone's complementarity, formed
        with the slack's factors from the data, fail by more than the point's optimality
        allows? The residual holds the slack as Π(v) − v, to the rounding of |v|, which is
        the multiplier's where that is the larger: max √x − c·x at c = 5e4 … 6e5 is
        (x + 1, x − 1, 2t) with y ≈ (c/2, c/2, −0.5), and x ~ 1e-10 … 1e-12 came back up to
        4 times too large (or 0), `solved`, x·1 > t² leaving the cone's slack inside it
        while its multiplier was on the boundary, a gap no floating-point residual shows.

        The slack's factors p, q = s_r ± s_q (first row r, axis row q) are formed from the
        rows' data (``sides``, b_r ± b_q − ((Ax)_r ± (Ax)_q)), its other rows w from b − Ax
        (``s``, with terms ``s_terms``: |A||x| + |b| and the point's own resolution); the
        multiplier's P, Q = y_r ± y_q are y's, except that one within FACTOR_LOST of
        |y_r| + |y_q|, lost to the other's rounding, is taken at the least value that keeps
        y in the cone, ‖W‖²/(the other) (W: y's other rows; at c = 1e8, y_r − y_q = 2.5e-9,
        exact where y binds, lies below 5e7's rounding and came back 0, and x = 7.3e-12, 3e5
        times the solution). The cone's ½(pP + qQ) + ⟨w, W⟩ beyond its rounding (the
        products' and sums' of p, q, P, Q, of what the data's rounding moves the rows by,
        ``moved()`` (B, m), and of v's rounding in P and Q where they are y's) must be
        within ACCEPT_BACKWARD of the objective's terms (|c|ᵀ|x| + |x|ᵀ|P||x|) and the
        cone's own (|p||P|/2 + |q||Q|/2 + |w|ᵀ|W|), on every cone whose multiplier is not 0
        and whose first or axis row holds data (``data_pair``), or whose multiplier lost a
        factor."""
        r, q = pat.boost_rows

        def per_cone(u: np.ndarray) -> np.ndarray:  # (B, m) → (B, cones): over the rest rows
            return boost_cone_sums(pat, u, rest=True)

        big_y = np.abs(y[:, r]) + np.abs(y[:, q])
        W2 = per_cone(y * y)
        # (asked where its first or axis row holds data, as x·1 >= t² does, whose constant
        # is what v = y − s keeps the slack's small factor beside; a cone of variables alone
        # at its apex, pnorm(x, 3)'s where its prox vanishes, holds noise 1e-22 … 1e-33
        # beside multipliers ~1 whose gap means nothing, unless a factor of y is lost)
        live = (big_y > 0) | (W2 > 0)
        if not live.any():
            return np.zeros(len(y), dtype=bool)
        p, qq = sides
        P, Q = y[:, r] + y[:, q], y[:, r] - y[:, q]
        lost = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for mine, other in ((P, Q), (Q, P)):
                gone = (np.abs(mine) <= FACTOR_LOST * big_y) & (other > 0) & (W2 > 0)
                mine[gone] = np.maximum(mine[gone], W2[gone] / other[gone])
                lost.append(gone)
        live &= data_pair | lost[0] | lost[1]
        if not live.any():
            return np.zeros(len(y), dtype=bool)
        sw = per_cone(s * y)
        gap = 0.5 * (p * P + qq * Q) + sw
        terms = 0.5 * (np.abs(p * P) + np.abs(qq * Q)) + per_cone(np.abs(s * y))
        # (p and q are exact but for their products' and sums' rounding, |A||x| of the two
        # rows and the sums' own, and the data's; P and Q are v's to its rounding, |v| the
        # larger of |y| and |s| there, where they are not taken from the boundary)
        both = Ax_terms[:, r] + Ax_terms[:, q]
        big_v = np.maximum(big_y + np.abs(s[:, r]) + np.abs(s[:, q]),
                           np.maximum(np.abs(y).max(axis=1, initial=0.0),
                                      np.abs(s).max(axis=1, initial=0.0))[:, None])
        v_part = 0.5 * big_v * (np.where(lost[0], 0.0, np.abs(p))
                                + np.where(lost[1], 0.0, np.abs(qq)))
        rounding = ROUNDING * (0.5 * (np.abs(P) * (both + np.abs(p))
                                      + np.abs(Q) * (both + np.abs(qq)))
                               + per_cone(s_terms * np.abs(y)) + v_part)
        excess = np.maximum(np.abs(gap) - rounding, 0.0)
        if not np.any(live & (excess > 0)):
            return np.zeros(len(y), dtype=bool)
        by = moved()
        excess = np.maximum(excess - 0.5 * (np.abs(P) + np.abs(Q)) * (by[:, r] + by[:, q]),
                            0.0)
        return np.any(live & (excess > ACCEPT_BACKWARD * (objective[:, None] + terms)), axis=1)

    def _data_rounding(self, ops: BatchOps, eq: Equilibration, idx: np.ndarray, x: np.ndarray,
                       y: np.ndarray) -> np.ndarray | float:
        """What the rounding of the data of the instances ``idx`` of ``ops``, as the template
        formed it from the parameters (``ops.rounding``, `ConeTemplate.rounding`), moves F's
        rows by at their points (x, y = Π(v)) of the program that ``eq`` scales (len(idx),
        n + m): δc + |δP||x| + |δA|ᵀ|y| over the first n rows, δb + |δA||x| over the last
        m. 0 where the data are exact. The data as rounded are not the user's, and neither
        is their solution: ‖Ax − b‖² + λ‖x‖₁ just below λ's threshold, whose c = −2Aᵀb sums
        eight products, came back 6.5e-8 off, certified from residuals in extended
        precision, whose rounding is far below the data's."""
        rounding = ops.rounding_of(idx)
        if rounding is None:
            return 0.0
        return _rows_moved(ops.template, *eq.take(idx).magnitudes(ops.template, *rounding),
                           x, y)

    @staticmethod
    def _scaling_rounding(ops: BatchOps, eq: Equilibration, idx: np.ndarray, b: np.ndarray,
                          x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
        """What the rounding of the scaling of the instances ``idx`` leaves in their data
        (`Equilibration.rounding`: boosts, mixing, factors that are not powers of two; b̂
        ``b`` of those) moves F's rows by at their points (x, y = Π(v)), as
        `_data_rounding`: |δÂ|ᵀ|y| over the first n rows, δb̂ + |δÂ||x| over the last m; 0
        where the scaling is exact."""
        t = ops.template
        if eq.boost is None and eq.mix is None and not t.dims.power:
            return 0.0
        got = eq.take(idx).rounding(t, ops.a[idx], b)
        if got is None:
            return 0.0
        da, db = got
        return _rows_moved(t, np.zeros((len(x), t.n)), da, db, None, x, y)

    def _forward_error_ok(self, ops: BatchOps, eq: Equilibration, r: Any, which: np.ndarray,
                          factors: list, c: np.ndarray, b: np.ndarray,
                          rounding: float = ROUNDING, branch: np.ndarray | None = None,
                          kinks: np.ndarray | None = None) -> np.ndarray:
        """Per instance (B,): is every output's estimated forward error within ACCEPT_FORWARD
        of that output's max-norm? Checked where ``which``.

        The error of the refined point z is estimated, per entry, as |S⁻¹F| + |S⁻¹|g: the
        Newton correction (the error itself, to first order, near a regular solution) plus
        the effect of rounding the residual's terms, g = ``rounding``·den (den,
        `refine.row_terms`; ROUNDING in float64, ROUNDING_EXTENDED where refinement evaluated
        F in long double). |S⁻¹|g is exact where S⁻¹ is at hand, and so is |S⁺|g where a
        small S is singular (`abs_inverse_times`); elsewhere it is |S⁻¹(g ⊙ ξ)| on a fixed
        ±1 probe ξ per entry, and each output's
        worst entry of it is estimated as a whole by Hager's method (`abs_rows_estimate`;
        Higham, *Accuracy and Stability of Numerical Algorithms*, §15.3), which a probe's
        cancelling terms do not fool. It is mapped to the outputs through the equilibration
        and ``recover`` in absolute values (|DΠ| ≤ 1 bounds y's error by v's). An output whose
        max-norm and error are both at most ZERO_FLOOR of its unit (what one unit of the
        equilibrated program is in the output's units) is a zero: its entries pass, a
        zero's rounding amplified by the conditioning being a few ulps of that unit, except
        those that the program's small data set (`_small_data_drive`), which are small
        values, not zeros, and must meet the relative test. (c, b) are the equilibrated
        program's.

        Where S is singular the estimate sees nothing along its null space. That is
        harmless where the null space moves no output (auxiliary variables that are not
        unique: `_null_space_moves`) or where the outputs are resolved in the equilibrated
        program (a whole optimal face: any point of it is a solution, see
        `NonDifferentiableWarning`). An output that the null space moves and whose size in
        the equilibrated program is below RESOLVED (sparsemax with θ ~ 1e12 has x̂ ~ 1e-14
        beside auxiliary variables ~1) is not known to any relative accuracy there: not
        certified; nor is one that it moves along a curved direction, which is no face
        (`_null_space_curved`); nor a point whose dual or primal rows all lie below the
        backward error's floor beside the other part's (`_part_unjudged`), which the tests of
        F's part outside S's range cannot see there. Where the null space moves an output,
        the point is taken for one of a face of solutions only where F is consistent to
        FACE_GAP of each row's terms (a backward error does not keep a face) and neither c
        nor b lies wholly within that allowance, where the test would not see it
        (`_face_data_unseen`).

        Refinement's last factorization, of S at the previous iterate, is used where DΠ has
        not moved since by more than STALE·rcond (`_stale`; the estimate is then off by a relative
        O(‖step‖), immaterial here); elsewhere S is factored at the point, and the
        factorization kept in ``factors`` for the derivative. Where that S is regular and
        refinement did not converge, the instance is not certified.

        A nonnegative cone's entry of v within its estimated error of 0 does not tell which
        side of the kink the solution is on, and S is linearized on one side: the estimate
        holds only if the solution's constraint is held or released as there. Such points
        are certified only where the estimate also passes with every such entry held active
        and with every one released (`_kinks_certified`); ``kinks`` (B, m) bool, where
        given, is set on those entries of the instances certified. ``branch``: the v whose DΠ
        linearizes S (default ``r.v``, the point's).
        """
        out = np.zeros(len(which), dtype=bool)
        idx = np.flatnonzero(which)
        if idx.size == 0:
            return out
        t = ops.template
        at_v = r.v if branch is None else branch  # where DΠ is taken
        for stale in self._stale(r, idx, factors):
            factors[stale] = None
        need = [i for i in idx if factors[i] is None]
        if need:
            sel = np.array(need)
            lin = Linearization(ops.take(sel), dproject(at_v[sel], t.dims, dual=True))
            for i, f in zip(need, lin.factors, strict=True):
                factors[i] = f
        # Newton stalls short of its tolerance at a regular S only where its model of F is
        # poor (DΠ changing over less than the distance to the solution), and then the Newton
        # correction is no estimate of the error (a rotated cone holding entries ~1e10 beside
        # ~1: 30% off at ω 6e-12; a second-order cone whose block holds one entry ~1e10
        # beside O(1) ones: 0.5 off at ω 4e-11). Judged on S at the point (or refinement's
        # last S where DΠ has not moved since).
        stalled = [i for i in idx if not r.converged[i] and factors[i].rcond > RCOND_MIN]
        if stalled:
            idx = np.setdiff1d(idx, stalled)
            if idx.size == 0:
                return out
        pv = r.y[idx]
        den = r.den[idx]
        # the rounding term |S⁻¹|g, g = rounding·den: exact where S⁻¹ is at hand, else on a
        # ±1 probe per entry (which can cancel) and, per output as a whole, by Hager's
        # estimate (`abs_rows_estimate`)
        g = rounding * den + self._data_rounding(ops, eq, idx, r.x[idx], pv) \
            + self._scaling_rounding(ops, eq, idx, b[idx], r.x[idx], pv)
        fs = [factors[i] for i in idx]
        exact, abs_g = abs_inverse_times(fs, g)
        corr = newton_correction(fs, np.stack([r.F[idx], g * sign_probe(t.n + t.m)], axis=2))
        newton = np.abs(corr[:, :, 0])
        d = newton + np.abs(corr[:, :, 1])
        d[exact] = newton[exact] + abs_g
        estimate = np.array([f.rcond > RCOND_MIN for f in fs], dtype=bool)
        estimate[exact] = False
        at = np.flatnonzero(estimate & np.isfinite(g).all(axis=1) & np.isfinite(d).all(axis=1))
        estimated = None
        if at.size:
            keep = np.ones((at.size, t.m), dtype=bool)
            lo, hi = t.dims.zero, t.dims.zero + t.dims.nonneg
            keep[:, lo:hi] = ~(at_v[idx[at], lo:hi] < 0)  # y = max(v, 0) = 0 stays 0
            rho = abs_rows_estimate([fs[i] for i in at.tolist()], g[at],
                                    *self._error_maps(eq.take(idx[at]), keep), self._out_blocks)
            estimated = (at, rho, newton[at])
        gradient = ops.take(idx).magnitude.P(np.abs(r.x[idx])) + np.abs(c[idx])
        d[_objective_unresolved(gradient, den, rounding)] = np.inf
        # (the point's own entries are float64 whatever the residual's arithmetic)
        d[_objective_rows_lost(gradient, np.abs(r.x[idx]), den, max(rounding, ROUNDING))] = \
            np.inf
        # where S is singular, the correction is a least-squares one: F must be in S's range
        # (non-unique auxiliary variables), else the point is not a solution at all
        absR = self._abs_recover
        unjudged = _part_unjudged(den, c[idx], b[idx], t.n)
        ends: list[tuple[int, np.ndarray]] = []  # (instance, v at an end of a face, past it)
        singular = [j for j, f in enumerate(fs)
                    if not f.rcond > RCOND_MIN and np.isfinite(d[j]).all()]
        # (where `_part_unjudged`, the tests below cannot see that part's rows in this scaling)
        d[[j for j in singular if unjudged[j]]] = np.inf
        judge = [j for j in singular if not unjudged[j]]
        # DΠ at the points of those judged, in one pass of the cone code
        D_judged = dproject(at_v[idx[judge]], t.dims, dual=True) if judge else None
        for k, j in enumerate(judge):
            f = fs[j]
            assert f.S is not None and D_judged is not None  # (S kept where it is singular)
            gap = np.abs(f.S @ corr[j, :, 0] + r.F[idx[j]])
            mix = eq.take(idx[j : j + 1])
            here = absR @ np.abs(np.concatenate([r.x[idx[j]], mix.unmixed(pv[j])]))
            Dj = D_judged.instance(k)
            extent = float(np.abs(np.concatenate([r.x[idx[j]], r.v[idx[j]]])).max(initial=0.0))
            moved, moved_exact, beyond = self._null_space_moves(f, Dj, here, extent,
                                                                ops.h[idx[j]], mix)
            # ill-conditioned, not singular: no face of solutions. Where the computed null
            # space moves no output but passes through equality rows' duals, whether S is
            # singular is asked of exact arithmetic too: nonsingular there, the data's part
            # along the near-null direction, inside the backward error, still sets the point
            # (Ax = b with A's rows parallel to 8e-17 of their size: x came back 3.9% off).
            # Inequality rows dependent to rounding are not asked: their polyhedron moves by
            # that rounding alone (a halfspace beside a copy of itself scaled by 0.1). Nor is
            # whether (c, b) lies in S's range where no output moves: at a kink the point's
            # side need not be the solution's, and S's range with it.
            if moved.any() and (not self._null_space_exact(f)
                                or self._no_face_exactly(f, c[idx[j]], b[idx[j]])) \
                    or not moved.any() and self._null_space_in_equalities(f) \
                    and self._no_face_exactly(f, c[idx[j]], b[idx[j]], in_range=False):
                d[j] = np.inf
                continue
            curved = moved.any() and self._null_space_curved(f, Dj)
            # (an output that no exact null vector moves, only the computed ones' rounding,
            # is known to the estimate however small; the other tests keep the computed ones)
            for k, (o, lo) in enumerate(zip(self.outputs, self._out_offsets, strict=True)):
                tiny = here[lo : lo + o.size].max(initial=0.0) < RESOLVED
                # (moved beyond the computed null vectors' error, but by no exact null
                # vector: S is nearly singular along a direction P's definiteness forbids)
                ill = beyond[k] and not moved_exact[k]
                if moved[k] and (curved or ill or (tiny and moved_exact[k])):
                    d[j] = np.inf
            # F's part outside S's range is judged against each row's own terms, not the
            # block-wide scale of a cone's rounding (`refine.row_terms`): S nearly singular
            # along a direction that a small dual entry sets (water-filling with α ~ 1e6,
            # whose log's exponential cones carry 1/(α + x) ~ 1e-6 beside entries ~ 1)
            # leaves the whole error in that part. (Rounding in F's largest rows leaks into
            # every row through the projection: the normwise term.)
            at = idx[j : j + 1]
            one = ops.take(at)
            own = row_terms(one, c[at], b[at], r.x[at], r.v[at], r.y[at], blockwise=False)[0]
            if not self._data_rows_met(one, c[at], b[at], r, at, own, bool(moved.any()),
                                       rounding):
                d[j] = np.inf
                continue
            judged = np.maximum(own, SCALE_FLOOR * den[j].max(initial=0.0))
            exact = gap <= ACCEPT_BACKWARD * judged
            zero, sep = t.n + t.dims.zero, t.n + t.dims.zero + t.dims.nonneg
            held = b[idx[j], : sep - t.n] != 0
            held[zero - t.n :] &= pv[j, zero - t.n : sep - t.n] > 0
            if not np.all(exact | (gap <= ACCEPT_BACKWARD * judged + rounding * den[j].max())):
                d[j] = np.inf
            # an equality, or an active inequality (y > 0), whose b_i is data the solution
            # answers to, is judged on its own terms (s and y exact there), not at the
            # floor: sum(power(x, 3)) <= r at x ~ 1e-9, the chain's cones boosted to their
            # limit, left Σt 2e7 times r below the floor, and x, the point without the
            # constraint, 20% off
            elif np.any(held & (gap[t.n : sep]
                                > (ACCEPT_BACKWARD + rounding) * own[t.n : sep])):
                d[j] = np.inf
            # a row left to rounding is not resolved here: the error it carries along the
            # null space is unbounded, so a null space that moves an output needs every row
            # resolved on its own terms, to FACE_GAP of them (a second-order cone whose block
            # holds one entry ~1e10 beside O(1) ones: its t row, set by r ~ 0.2, 100% off and
            # inside the rounding allowance of the block's largest terms; the outputs 0.5
            # off), not at SCALE_FLOOR of the instance's largest (the OptNet QP with all data
            # × 1e14 at Clarabel's point: duals ~5e11 beside primal rows of 1e-7 terms, one
            # of them 100% off, a 10-dimensional null space, the outputs 30-180% off). A row
            # whose own terms are below the rounding of the instance's largest is judged at
            # that rounding: auxiliary rows holding SCS's 1e-32 leftovers where the exact
            # values are 0 (‖X‖₁ + ‖X − A‖² with A ~ 1e-3, X = 0) are no unresolved rows
            elif moved.any() and (not np.all(
                    gap <= FACE_GAP * np.maximum(own, rounding * den[j].max()))
                    or _face_data_unseen(own, c[idx[j]], b[idx[j]], t.n)):
                d[j] = np.inf
            if branch is None and not moved.any() and np.isfinite(d[j]).all():
                ends.extend((int(idx[j]), e) for e in self._face_ends(f, at_v[idx[j]]))
        out[idx] = self._outputs_within(ops, eq, idx, r.x[idx], pv, at_v[idx], d, c, b,
                                        factors, estimated)
        if branch is None:
            self._face_ends_certified(ops, eq, r, out, ends, c, b, rounding)
            out &= self._kinks_certified(ops, eq, r, out, idx, d, c, b, rounding, kinks)
        return out

    def _face_ends_certified(self, ops: BatchOps, eq: Equilibration, r: Any, out: np.ndarray,
                             ends: list[tuple[int, np.ndarray]], c: np.ndarray, b: np.ndarray,
                             rounding: float) -> None:
        """``out`` (B,) kept only where `_forward_error_ok` also passes at every end of the
        instance's face (``ends``: (instance, v past an end), `_face_ends`), each end taken as
        an instance of its own: an instance's first end, then its next two, four, …, up to
        FACE_ENDS_AT_ONCE, every instance's together, until one fails (the rest are then
        not judged) or none is left."""
        left: dict[int, list[np.ndarray]] = {}
        for inst, end in ends:
            left.setdefault(inst, []).append(end)
        take = 1
        while left:
            part = []
            for inst in list(left):
                if out[inst]:
                    part += [(inst, end) for end in left[inst][:take]]
                    left[inst] = left[inst][take:]
                if not out[inst] or not left[inst]:
                    del left[inst]
            for lo in range(0, len(part), FACE_ENDS_AT_ONCE):
                chunk = part[lo : lo + FACE_ENDS_AT_ONCE]
                at = np.array([inst for inst, _ in chunk])
                ok = self._forward_error_ok(ops.take(at), eq.take(at), r.take(at),
                                            np.ones(at.size, dtype=bool), [None] * at.size,
                                            c[at], b[at], rounding,
                                            branch=np.stack([end for _, end in chunk]))
                for inst, fine in zip(at.tolist(), ok.tolist(), strict=True):
                    out[inst] &= fine
            take = min(2 * take, FACE_ENDS_AT_ONCE)

    def _face_ends(self, f: Any, v: np.ndarray) -> list[np.ndarray]:
        """Where a singular S (``f``) has null vectors that move no output, the points past
        the ends of the face they span from the point's v (``v``, (m,)) that a nonnegative
        cone's entry closes: for each null vector and each direction along it, the first
        step τ at which a nonnegative entry of v or a second-order cone's block of it
        crosses a kink of Π (changes sign; meets the boundary of K* or of −K), where that
        first crossing is a nonnegative entry's: v + τ·dv with that entry mirrored to the
        other side (|v_i| on it, as `_nonneg_kinks_certified` moves one).

        The estimate sees nothing along the null space, which is harmless while the face
        of non-unique multipliers it spans keeps DΠ, and with it S; at a kink on the face a
        constraint is only weakly active, and past it S changes and the outputs may move
        (the solution set branches there). min y s.t. sqrt(y) >= d, y <= e with d = 1e6,
        e = 1.0001e12 came back `solved` as y = e (y = d² = 1e12): the bound and the cone
        y >= t² both held, the null vector trading the cone's multiplier along its ray
        against the bound's, whose v (3.9e-13 beside 0.65) it takes to 0 at τ = 0.27, before
        the cone's reaches its apex (0.92); past that, with the bound released, only the
        cone sets y, its tangent's y-coefficient ~1e-12 of its block: S singular there
        along a direction that moves y. Entries of a null vector within its own error
        (`TruncatedSVD.null_error`) are taken as 0; exponential, power and PSD blocks
        bound no face here (a face taken longer than it is adds ends, never removes one)."""
        t = self.template
        lo, hi = t.dims.zero, t.dims.zero + t.dims.nonneg
        if f.pinv is None or hi == lo:
            return []
        N = f.pinv.null
        noise = float(f.pinv.null_error)
        if N.shape[1] == 0 or not np.isfinite(noise):
            return []
        out = []
        for k in range(N.shape[1]):
            dv = N[t.n :, k]
            vn, dn = v[lo:hi], dv[lo:hi]
            sig = np.abs(dn) > noise
            with np.errstate(divide="ignore", invalid="ignore"):
                tau_n = np.where(sig, -vn / np.where(sig, dn, 1.0), np.nan)
            tau_c: list[float] = []
            start = hi
            for size in t.dims.soc:
                bv, bd = v[start : start + size], dv[start : start + size]
                start += size
                if np.abs(bd).max(initial=0.0) <= noise:
                    continue
                qa = bd[1:] @ bd[1:] - bd[0] ** 2
                qb = bv[1:] @ bd[1:] - bv[0] * bd[0]
                qc = bv[1:] @ bv[1:] - bv[0] ** 2
                if qa == 0.0:
                    if qb != 0.0:
                        tau_c.append(-qc / (2 * qb))
                    continue
                disc = qb * qb - qa * qc
                if disc >= 0.0:
                    root = np.sqrt(disc)
                    tau_c += [(-qb - root) / qa, (-qb + root) / qa]
            tc = np.array(tau_c, dtype=float)
            for sign in (1.0, -1.0):
                with np.errstate(invalid="ignore"):
                    ahead = np.where(sign * tau_n > 0, sign * tau_n, np.inf)
                i = int(np.argmin(ahead))
                if not np.isfinite(ahead[i]):
                    continue
                if tc.size and np.any((sign * tc > 0) & (sign * tc <= ahead[i])):
                    continue  # a second-order cone's kink closes the face first
                past = v + sign * ahead[i] * dv
                past[lo + i] = -np.sign(v[lo + i]) * max(abs(v[lo + i]), np.finfo(float).tiny)
                out.append(past)
        return out

    def _kinks_certified(self, ops: BatchOps, eq: Equilibration, r: Any, out: np.ndarray,
                         idx: np.ndarray, d: np.ndarray, c: np.ndarray, b: np.ndarray,
                         rounding: float, kinks: np.ndarray | None = None) -> np.ndarray:
        """Per instance of ``ops`` (B,): ``out``, except where a nonnegative cone's entry of
        v at a point certified on its own side (``out``) lies within its estimated error
        (``d``, rows ``idx``) of 0 and the estimate fails with those entries all held active
        (DΠ = 1) or all released (DΠ = 0), S factored afresh on that side. Those entries of
        the instances that pass are set in ``kinks`` (B, m), where given: which side of the
        kink the solution lies on is not known there, so the point is taken on it. That
        window is the estimate's: at the soft-threshold's kink (a₀ = λ, x₀ and its epigraph
        variable both 0, a row with no scale of its own) about 30 ulps of a₀, narrower than
        the general rule's KINK_TOL of a row's own scale (`cones.snap_kinks`).

        Of the sides' 2ᵏ combinations only these two are tried: holding constraints
        compresses the primal's reduced Hessian (its least eigenvalue can only grow, by
        interlacing), releasing them removes rows of the active constraints (their least
        singular value can only grow), so they bound those two sources of ill-conditioning,
        not every output's error on a mixed side. Example:
        min ‖Fx − g‖² over x >= 0 with cond(F) 5e13, whose refined point held a bound at
        x = 0 with a multiplier of exactly 0. Held there, S's rcond was 6e-10 and the
        estimate 6e-13; the solution released that bound and sat 7.5e-5 away. Second-order
        cones' kinks likewise (`_soc_kinks_certified`)."""
        t = ops.template
        lo, hi = t.dims.zero, t.dims.zero + t.dims.nonneg
        if hi > lo:
            out = self._nonneg_kinks_certified(ops, eq, r, out, idx, d, c, b, rounding, kinks)
        if t.dims.soc:
            out = self._soc_kinks_certified(ops, eq, r, out, idx, d, c, b, rounding)
        return out

    def _nonneg_kinks_certified(self, ops: BatchOps, eq: Equilibration, r: Any,
                                out: np.ndarray, idx: np.ndarray, d: np.ndarray, c: np.ndarray,
                                b: np.ndarray, rounding: float, kinks: np.ndarray | None
                                ) -> np.ndarray:
        """`_kinks_certified` on the nonnegative cone."""
        t = ops.template
        lo, hi = t.dims.zero, t.dims.zero + t.dims.nonneg
        v = r.v[idx, lo:hi]
        with np.errstate(invalid="ignore"):
            near = (np.abs(v) <= d[:, t.n + lo : t.n + hi]) & out[idx][:, None]
        rows = np.flatnonzero(near.any(axis=1))
        if rows.size == 0:
            return out
        at, near, v = idx[rows], near[rows], v[rows]
        which = np.zeros_like(out)
        which[at] = True
        out = out.copy()
        tiny = np.finfo(float).tiny
        for side in (np.abs(v), np.minimum(-np.abs(v), -tiny)):  # held, released
            moved = np.where(near, side, v)
            if np.array_equal(moved >= 0, v >= 0):
                continue  # the point's own side
            branch = r.v.copy()
            branch[at, lo:hi] = moved
            out[at] &= self._forward_error_ok(ops, eq, r, which, [None] * len(out), c, b,
                                              rounding, branch=branch)[at]
        if kinks is not None:
            kinks[at, lo:hi] |= near & out[at][:, None]
        return out

    def _soc_kinks_certified(self, ops: BatchOps, eq: Equilibration, r: Any, out: np.ndarray,
                             idx: np.ndarray, d: np.ndarray, c: np.ndarray, b: np.ndarray,
                             rounding: float) -> np.ndarray:
        """`_kinks_certified` on the second-order cones: a block of v = (v₀, v̄) within its
        estimated error (the 2-norm of ``d`` over the block, times 2) of the boundary of K*
        (v₀ = ‖v̄‖, where DΠ jumps from I to the region between K* and −K) or of −K
        (v₀ = −‖v̄‖, from 0 to it) has its linearization on one side of that kink, and the
        solution may be on the other. Such points are certified only where the estimate
        also passes with every such block moved inside K* (those near its boundary), inside
        −K (those near its boundary) and into the region between (its gap to the kink
        mirrored, v₀ changed, |v₀| < ‖v̄‖), three passes. min ‖x‖₃ s.t. c·x >= B with c
        over 1e-8 … 1e7: a cone of pnorm's 6.8e-11 from the boundary of K* at an estimated
        error of 8.7e-7 certified x₀ at 3.3e-14 where it is 2.8e-12 (4e-8 of the output's
        largest entry, at an estimate of 2e-14)."""
        t = ops.template
        live = idx[out[idx]]
        if live.size == 0:
            return out
        lo = t.dims.zero + t.dims.nonneg
        hi = lo + sum(t.dims.soc)
        starts = lo + np.concatenate([[0], np.cumsum(t.dims.soc[:-1])]).astype(np.intp)
        v = r.v[live]
        err = np.sqrt(np.add.reduceat(d[np.searchsorted(idx, live)][:, t.n + lo : t.n + hi]
                                      ** 2, starts - lo, axis=1))
        v0 = v[:, starts]
        sq = v[:, lo:hi] ** 2
        sq[:, starts - lo] = 0.0
        nbar = np.sqrt(np.add.reduceat(sq, starts - lo, axis=1))
        gap_in = nbar - v0    # <= 0 inside K*
        gap_out = nbar + v0   # <= 0 inside −K
        with np.errstate(invalid="ignore"):
            near_in = np.abs(gap_in) <= 2 * err
            near_out = np.abs(gap_out) <= 2 * err
        near = near_in | near_out
        hit = np.flatnonzero(near.any(axis=1))
        if hit.size == 0:
            return out
        at, near_in, near_out = live[hit], near_in[hit], near_out[hit]
        v0, nbar = v0[hit], nbar[hit]
        which = np.zeros_like(out)
        which[at] = True
        out = out.copy()
        tiny = np.finfo(float).tiny
        step_in = np.maximum(np.abs(gap_in[hit]), tiny)
        step_out = np.maximum(np.abs(gap_out[hit]), tiny)
        # inside K*, inside −K, and the region between them (|v₀| < ‖v̄‖, empty at the
        # apex), each for the blocks near a kink that bounds it; a block near the apex is
        # near both
        inside = np.where(near_in, nbar + step_in, v0)
        outside = np.where(near_out, -nbar - step_out, v0)
        mirrored = np.where(near_in, nbar - step_in, -nbar + step_out)
        room = np.nextafter(nbar, 0.0)
        between = np.where(nbar > 0, np.clip(mirrored, -room, room), v0)
        for moved in (inside, outside, between):
            if np.array_equal(moved, v0):
                continue
            branch = r.v.copy()
            branch[np.ix_(at, starts)] = moved
            out[at] &= self._forward_error_ok(ops, eq, r, which, [None] * len(out), c, b,
                                              rounding, branch=branch)[at]
        return out

    def _outputs_within(self, ops: BatchOps, eq: Equilibration, idx: np.ndarray, x: np.ndarray,
                        pv: np.ndarray, v: np.ndarray, d: np.ndarray, c: np.ndarray,
                        b: np.ndarray, factors: list | None,
                        estimated: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                        ) -> np.ndarray:
        """Per instance ``idx`` of ``ops`` (k,): is every output's estimated forward error
        within ACCEPT_FORWARD of that output's max-norm (`_forward_error_ok`)? ``d`` (k, n + m):
        the estimated error of each entry of (u, v) at the point (``x``, y = ``pv``, ``v``) in
        the equilibrated program (c, b: its data, for every instance of ``ops``); ``factors``:
        S's factorization per instance of ``ops``, for the zero outputs' test
        (`_small_data_drive`), or None, where a zero output that small data may set is not
        certified."""
        t, absR = ops.template, self._abs_recover
        # y's error is v's (|DΠ| <= 1), except a nonnegative cone's y = max(v, 0), which stays
        # exactly 0 where v is negative by more than its error (an inactive constraint's dual,
        # a zero output whose estimated error would otherwise be v's rounding)
        dv = d[:, t.n :]
        lo, hi = t.dims.zero, t.dims.zero + t.dims.nonneg
        still_mask = np.zeros(dv.shape, dtype=bool)
        if hi > lo:
            dv = dv.copy()
            with np.errstate(invalid="ignore"):
                still_mask[:, lo:hi] = v[:, lo:hi] + dv[:, lo:hi] < 0
            dv[still_mask] = 0.0
        e = eq.take(idx)
        ex, ey = e.solution_bound(d[:, : t.n], dv)
        ux, uy = e.solution_bound(np.ones((idx.size, t.n)), np.ones((idx.size, t.m)))
        vals = np.abs(times_t(np.concatenate(e.solution(x, pv), axis=1), t.recover))
        with np.errstate(invalid="ignore"):  # (an uncertified instance's d is inf: inf·0)
            err = times_t(np.concatenate([ex, ey], axis=1), absR)
        unit = times_t(np.concatenate([ux, uy], axis=1), absR)
        ok = np.all(np.isfinite(err), axis=1)
        sizes = [o.size for o in self.outputs]
        starts = self._out_offsets
        if estimated is not None:
            # the rounding term of each output estimated as a whole (`abs_rows_estimate`),
            # beside the per-entry estimate: the Newton term's share plus it
            at, rho, newton = estimated
            keep = ~still_mask[at]
            L, _ = self._error_maps(e.take(at), keep)
            share = L(newton[..., None])[..., 0]
            err = err.copy()
            with np.errstate(invalid="ignore"):
                err[at] = np.maximum(err[at], share + np.repeat(rho, sizes, axis=1))
        # per output (k, outputs), then spread over its entries (k, N)
        size, u, worst = (np.repeat(np.maximum.reduceat(a, starts, axis=1), sizes, axis=1)
                          if a.shape[1] else a for a in (vals, unit, err))
        logs = self._log_columns
        if logs.any():  # u = log x: held to ACCEPT_FORWARD absolutely, x relatively
            size = np.where(logs, 1.0, size)
        relative = err <= ACCEPT_FORWARD * size
        # where the program carries data far below its largest (entries of b and c down to a
        # fraction δ < SMALL_DATA of the largest), outputs they set are of that scale, so a
        # zero is one to that scale: the floor shrinks by δ/SMALL_DATA (min c·x − Σ log x at
        # c ~ 1e14: x = 1/c is set by the log's constant 1, to second order, which no
        # first-order response sees, and passed as a zero of its unit 1e14, −0.06)
        data = np.abs(np.concatenate([c[idx], b[idx]], axis=1))
        big = data.max(axis=1, initial=0.0)
        least = np.where(data > 0, data, np.inf).min(axis=1, initial=np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.clip(least / (SMALL_DATA * big), 0.0, 1.0)
        shrink[~np.isfinite(shrink)] = 1.0
        floor = ZERO_FLOOR * u * shrink[:, None]
        # a zero cannot be told from 0: its max-norm is within its estimated error (an
        # output above that is a value, if a tiny one, and must meet the relative test:
        # max entr(x) + c x, x = exp(c − 1) ~ 7e-13 at c = −27 beside data ~30, 7 times
        # its error bound and 3e-3 off)
        zero = (size <= floor) & (err <= floor) & (size <= worst) & ~logs
        fine = relative | zero
        for jz in np.flatnonzero(ok & (zero & ~relative).any(axis=1)):
            # a zero output's entries whose value the small data set are not zeros
            at = idx[jz]
            driven = np.ones(fine.shape[1], dtype=bool) if factors is None else \
                self._small_data_drive(ops.take(idx[jz : jz + 1]), factors[at], v[jz], c[at],
                                       b[at], e.take(np.array([jz])), unit[jz])
            fine[jz] = relative[jz] | zero[jz] & ~driven
        ok &= fine.all(axis=1)
        return ok

    @cached_property
    def _log_columns(self) -> np.ndarray:
        """(N,) bool: the output entries that are a geometric program's u = log x."""
        return np.repeat([o.log for o in self.outputs], [o.size for o in self.outputs])

    def _error_maps(self, e: Equilibration, keep: np.ndarray
                    ) -> tuple[Callable[[np.ndarray], np.ndarray],
                               Callable[[np.ndarray], np.ndarray]]:
        """(L, Lᵀ): L maps bounds on the errors of (u, v) in the equilibrated program
        (k, n + m, K) to bounds on the outputs' errors (k, R, K), as `_outputs_within` does
        (the equilibration's `solution_bound`, then |recover|; y's error is v's where
        ``keep`` (k, m), else 0), for the k instances of ``e``."""
        n = self.template.n
        absR, absRt = self._abs_recover, self._abs_recover_t

        def L(D: np.ndarray) -> np.ndarray:
            out = np.empty((D.shape[0], absR.shape[0], D.shape[2]))
            for k in range(D.shape[2]):
                ex, ey = e.solution_bound(D[:, :n, k], D[:, n:, k] * keep)
                out[:, :, k] = times_t(np.concatenate([ex, ey], axis=1), absR)
            return out

        def Lt(X: np.ndarray) -> np.ndarray:
            out = np.empty((X.shape[0], absRt.shape[0], X.shape[2]))
            for k in range(X.shape[2]):
                w = times_t(np.ascontiguousarray(X[:, :, k]), absRt)
                gx, gy = e.bound_adjoint(w[:, :n], w[:, n:])
                out[:, :, k] = np.concatenate([gx, gy * keep], axis=1)
            return out

        return L, Lt

    @cached_property
    def _out_blocks(self) -> list[tuple[int, int]]:
        """Each output's (offset, size) among the outputs' entries."""
        return list(zip(self._out_offsets.tolist(), [o.size for o in self.outputs],
                        strict=True))

    @cached_property
    def _abs_recover_t(self):
        return abs(self.template.recover).T.tocsr()

    def _data_rows_met(self, ops: BatchOps, c: np.ndarray, b: np.ndarray, r: Any,
                       at: np.ndarray, own: np.ndarray, moved: bool, rounding: float) -> bool:
        """Does the refined point of instance ``at`` (one index array; ``ops``, ``c``, ``b``
        its (1, ·) data, ``own`` its rows' terms, `refine.row_terms` not blockwise) meet, to
        ACCEPT_BACKWARD of its own terms, every row that one data entry dominates (the row's
        other terms summing to at most that entry)?

        The backward error judges rows whose terms lie below SCALE_FLOOR of the instance's
        largest at that floor, for the rounding that auxiliary variables leave where the
        exact values are 0; a row that its own c_i or b_i dominates holds data, not
        leftovers, and where S is singular nothing else sees it:

        - a zero or nonnegative row (s exact there) led by b_i (max cᵀx s.t. −b <= x <= b
          at c ~ 1e12, b ~ 1e-12: x = 0 with both rows taken as active, F = b there, the
          null space y's free split), and a row of another cone led by b_i, there to the
          rounding of its block's largest terms as well (min Σ x^1.5/1.5 − cᵀx with one
          x_i ~ 1e-15 of the largest: its cone (t, 1, x_i) left at the apex, the 1
          equilibrated to 1e-13 and unmet, a face Newton cannot leave, and ∂x_i/∂c_i 0
          where it is 2c_i);
        - a dual row led by c_i, whose cone blocks count their rounding
          (`refine.row_terms`) unless their s lies deeper inside K than DEEP of the block,
          where y = 0 is exact: every such row where the null space moves an output
          (``moved``; max cᵀx s.t. exp(x) <= b at c ~ 1e-12, b ~ 1e12: s deep in every
          cone, y = 0, F = c; x −32 where log b is 27), else those of the variables that
          an output reads (max cᵀx s.t. 0 <= x <= b, c < 0, two b_i = 0, rescaled by
          retries to c_i ~ 1 beside terms ~1e44: x₃ = b₃ with its row at F = c₃, reported
          solved where x = 0 is the solution). The rows of variables that no output reads
          are left to the floor: ‖x‖ + ‖x − a‖² at a ~ 1e9, whose norm's y ~ 1e-19 of its
          |v| rounds to 0 and leaves t's row at F = c_t, with x right to 3e-10."""
        t = self.template
        sep = t.dims.zero + t.dims.nonneg
        F = r.F[at][0]
        rows = own[t.n :]
        lead = np.abs(b[0])
        # (on a cone that is not a product of half-lines, s is known to the rounding of its
        # block's largest terms: `refine.row_terms`)
        allowed = ACCEPT_BACKWARD * rows
        allowed[sep:] += rounding * r.den[at][0, t.n + sep :]
        if np.any((lead > 0) & (2 * lead >= rows) & (np.abs(F[t.n :]) > allowed)):
            return False
        rows = np.ones(t.n, dtype=bool) if moved else self._output_columns
        if not rows.any():
            return True
        terms = row_terms(ops, c, b, r.x[at], r.v[at], r.y[at], deep=DEEP)[0, : t.n]
        lead = np.abs(c[0])
        return not np.any(rows & (lead > 0) & (2 * lead >= terms)
                          & (np.abs(F[: t.n]) > ACCEPT_BACKWARD * terms))

    def _raw_outputs(self, eq: Equilibration, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(B, n): |x| in the user's units (the equilibration undone) on the variables an
        output reads, 0 on the others."""
        return np.abs(eq.solution(x, y)[0]) * self._output_columns

    @cached_property
    def _rotated_layout(self) -> _RotatedLayout | None:
        """`_rotated_layout` of the template, made once."""
        return _rotated_layout(self.template)

    @cached_property
    def _output_columns(self) -> np.ndarray:
        """(n,) bool: the variables that some output reads (`recover`'s x columns)."""
        t = self.template
        return np.asarray(abs(t.recover[:, : t.n]).sum(axis=0) > 0).ravel()

    def _small_data_drive(self, ops: BatchOps, f: Any, v: np.ndarray, c: np.ndarray,
                          b: np.ndarray, e: Equilibration, unit: np.ndarray) -> np.ndarray:
        """Per output entry (N,): do the small entries of the equilibrated program's c and
        b (nonzero, at most SMALL_DATA of the largest) set its value?

        Outputs are positively homogeneous of degree 1 in (b, c), so the small entries'
        share of an output is its first-order response to them: R (du, DΠ(v) dv) with
        (du, dv) = −S⁻¹(c_small, b_small) (F's derivative in (c, b) is the identity),
        here with the small entries scaled to unit max-norm. An entry that does not depend
        on them gets only that solve's rounding, estimated as in `_forward_error_ok` from
        the terms of S (du, dv) = −(c_small, b_small) (`refine.row_terms` at that point);
        an entry whose response exceeds DRIVEN times that is set by them. ``ops``: this
        instance's operators; ``unit`` (N,): what one unit of the equilibrated program is
        in each entry's units. Where S has no usable factorization every entry counts as
        set."""
        t = self.template
        N = t.recover.shape[0]
        data = np.concatenate([c, b])
        big = np.abs(data).max(initial=0.0)
        small = np.where((data != 0) & (np.abs(data) <= SMALL_DATA * big), data, 0.0)
        top = np.abs(small).max(initial=0.0)
        if top == 0:
            return np.zeros(N, dtype=bool)
        small = small / top
        dz = newton_correction([f], small[None])[0]
        if not np.all(np.isfinite(dz)):
            return np.ones(N, dtype=bool)
        du, dv = dz[None, : t.n], dz[None, t.n :]
        D = dproject(v, t.dims, dual=True)
        dy = D.matvec(dv[0][:, None])[:, 0][None]
        terms = row_terms(ops, small[None, : t.n], small[None, t.n :], du, dv, dy)
        w = newton_correction([f], (ROUNDING * terms[0] * sign_probe(t.n + t.m))[None])[0]
        if not np.all(np.isfinite(w)):
            return np.ones(N, dtype=bool)
        response = np.abs(t.recover @ np.concatenate(e.solution(du, dy), axis=1)[0])
        # (|DΠ| ≤ 1 bounds the rounding of DΠ dv by dv's)
        aw = np.abs(w)[None]
        rounding = self._abs_recover @ np.concatenate(
            e.solution_bound(aw[:, : t.n], aw[:, t.n :]), axis=1)[0]
        # (and not below the rounding of dz's largest entry: the estimate above is first
        # order, and leaves out rounding's products, ~ε² of it)
        rounding = np.maximum(rounding, ROUNDING * np.abs(dz).max() * unit)
        return response > DRIVEN * rounding

    @cached_property
    def _abs_recover(self):
        return abs(self.template.recover).tocsr()

    def restore(self, values: Sequence[Any], x: np.ndarray, y: np.ndarray, s: np.ndarray,
                ok: np.ndarray) -> Forward:
        """A `Forward` from a solution previously returned by `Forward.state` (no solve)."""
        theta, input_batched = self.batch(values)
        t = self.template
        c, a, b = t.apply(theta)
        h = t.apply_P(theta)
        eq = equilibrate(t, c, a, b, h)
        _, ah, _, hh = eq.data(t, c, a, b, h)
        ok = np.asarray(ok, dtype=bool).reshape(-1)
        x, y, s = (np.asarray(z, dtype=float) for z in (x, y, s))
        xy = np.concatenate([x, y], axis=1)
        xy[~ok] = np.nan
        out = times_t(xy, t.recover)
        outputs = [unvec(out[:, lo : lo + o.size], o.shape)
                   for o, lo in zip(self.outputs, self._out_offsets, strict=True)]
        B = len(ok)
        status = [Status.SOLVED if k else Status.FAILED for k in ok]
        info = SolveInfo(status=status, scs_status=list(status), scs_iterations=np.zeros(B, int),
                         residual_before=np.full(B, np.nan), residual_after=np.full(B, np.nan),
                         refine_steps=np.zeros(B, int), solve_seconds=np.zeros(B),
                         total_seconds=0.0)
        return Forward(layer=self, outputs=outputs, batched=any(input_batched),
                       input_batched=input_batched, info=info, ok=ok,
                       _ops=BatchOps(t, ah, hh), _refined=_Solution(*eq.scaled(x, y, s)),
                       _scaling=eq, chunk=self._tuning.chunk_size)

    # -- adapters ----------------------------------------------------------------------
    def torch(self):
        """This layer as a ``torch.nn.Module``: ``(x, ...) = module(theta, ...)``."""
        from declarative.torch import TorchLayer

        return TorchLayer(self)

    def jax(self):
        """This layer as a JAX function that works under jit, vmap, grad and jvp."""
        from declarative.jax import jax_layer

        return jax_layer(self)


def _check_values(backend: Backend, args: dict) -> None:
    """`check_values` on the options ``backend`` takes (its settings, ours, and the aliases its
    `normalize` maps onto its settings), by the names the user gave; a name it does not take
    is left to `check_settings`, which names the right one. ``args`` not a mapping is named."""
    if not isinstance(args, Mapping):
        raise ProblemError("solver_args must be a dict of solver settings (name -> value), "
                           f"got {type(args).__name__} {args!r}.")

    def takes(k: str) -> bool:
        if k in backend.options or k in OUR_OPTIONS:
            return True
        mapped = backend.normalize({k: 1.0})
        return k not in mapped and set(mapped) <= backend.options
    check_values({k: v for k, v in args.items() if takes(k)})


def _in_domain(a: np.ndarray, flat: np.ndarray, attr: str) -> np.ndarray:
    """Per instance: do the values respect the parameter attribute ``attr``?"""
    if attr in ("nonneg", "pos", "nonpos", "neg"):
        ok = {"nonneg": flat >= 0, "pos": flat > 0, "nonpos": flat <= 0, "neg": flat < 0}[attr]
        return np.all(ok, axis=1)
    # Symmetric, PSD and NSD parameters enter the problem as (S + Sᵀ)/2 (compile.py), so any
    # square value is meaningful (finite differences and gradcheck perturb one entry at a
    # time); only the definiteness that convexity may rely on is checked, on (S + Sᵀ)/2.
    if attr == "symmetric":
        return np.ones(len(a), dtype=bool)
    scale = DEFINITE_RTOL * (1.0 + np.abs(flat).max(axis=1, initial=0.0))
    eig = np.linalg.eigvalsh((a + np.swapaxes(a, -1, -2)) / 2)
    return eig.min(axis=-1) >= -scale if attr == "PSD" else eig.max(axis=-1) <= scale


def check_finite_in_domain(spec: ParameterSpec, a: np.ndarray,
                           where: Callable[[np.ndarray], str]) -> None:
    """Raise `ParameterError` if instances of ``a`` (N, *shape) have NaN or inf entries or
    values outside the parameter's declared domain (`_in_domain`); ``where(bad)`` says where,
    from the mask (N,) of offending instances."""
    flat = a.reshape(a.shape[0], spec.size)
    finite = np.all(np.isfinite(flat), axis=1)
    if not finite.all():
        raise ParameterError(f"parameter {spec.name!r} has NaN or inf entries {where(~finite)}.")
    for attr in spec.domain:
        ok = _in_domain(a, flat, attr)
        if not ok.all():
            raise ParameterError(f"parameter {spec.name!r} has values that are not {attr} (it "
                                 f"was declared {attr}=True) {where(~ok)}.")


def _batch_indices(bad: np.ndarray, batched: bool) -> str:
    """Where in a `Layer.batch` input the offending instances ``bad`` (B,) are."""
    if not batched:
        return "(unbatched value)"
    return f"at batch index [{describe_indices(np.flatnonzero(bad).tolist())}]"


_REFINABLE = (Status.SOLVED, Status.INACCURATE, Status.ITERATION_LIMIT)
_SETTLED = (Status.SOLVED, Status.INFEASIBLE, Status.UNBOUNDED)


def _work(t: ConeTemplate) -> float:
    """One instance's work in refinement, the certificate and the derivatives, in unknowns:
    n + m, and PSD_WORK·k³ for each PSD block of order k."""
    return t.n + t.m + PSD_WORK * sum(k**3 for k in t.dims.psd)


def _parts(k: int, size: float) -> list[slice]:
    """The instances 0 … k−1 of a program of ``size`` unknowns an instance (`_work`), cut into the
    consecutive parts that refinement, the certificate and the derivatives handle
    concurrently (one per worker, `parallel.workers`), or one part where the batch is too
    small for the overlap to pay (SETTLE_PARALLEL_FROM). Every step is per instance, so the
    parts' results are the whole batch's up to rounding (a batched NumPy reduction may add
    in another order for another batch size: softmax n = 100 at batch 64, one entry of
    2.5e-119 beside a largest of 1 moved by 5e-11 of itself); the cut depends only on the
    batch size and the program, so the same input still gives bitwise the same results."""
    ways = min(workers(), k // SETTLE_PART_MIN)
    if ways <= 1 or k * size < SETTLE_PARALLEL_FROM:
        return [slice(0, k)]
    return _cut(k, ways)


def _pipeline_parts(k: int) -> list[slice]:
    """The instances 0 … k−1 cut into the consecutive parts whose solves and refinement
    overlap (`parallel.pipelined`): PIPELINE_PARTS of them, each of at least
    PIPELINE_PART_MIN instances. Depends on the batch size alone."""
    return _cut(k, max(1, min(PIPELINE_PARTS, k // PIPELINE_PART_MIN)))


def _cut(k: int, ways: int) -> list[slice]:
    """The instances 0 … k−1 as ``ways`` consecutive parts whose sizes differ by one at most."""
    cuts = [k * j // ways for j in range(ways + 1)]
    return [slice(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]


def _second_opinion() -> tuple[Backend, dict]:
    """SECOND_OPINION's backend and its settings at RETRY_EPS (its defaults otherwise)."""
    other = get_backend(SECOND_OPINION)
    return other, other.tightened(other.settings({}), RETRY_EPS)


def _settled(status: Sequence[Status]) -> np.ndarray:
    """(len(status),) bool: certified solved, or shown infeasible or unbounded."""
    return np.array([st in _SETTLED for st in status], dtype=bool)


@dataclass
class _Attempt:
    """Per-instance results of one SCS + refinement pass over (a subset of) the batch."""

    status: list
    scs_status: list
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    scs_x: np.ndarray
    scs_y: np.ndarray
    scs_s: np.ndarray
    residual_before: np.ndarray
    residual_after: np.ndarray
    steps: np.ndarray
    iterations: np.ndarray
    seconds: np.ndarray
    retryable: np.ndarray
    factors: list
    v: np.ndarray                  # y − s, exactly as refinement left it
    extended: np.ndarray           # refined with the residual in extended precision (bool)
    D: DProjection | None = None   # DΠ_{K*} at v_D (from refinement), or None
    v_D: np.ndarray | None = None
    # per instance, the `ActiveSet` whose exact solution the point is (`Layer._vertices`),
    # or None
    vertex: list = field(default_factory=list)
    # per instance: a cost that places a variable is unresolved at the point
    # (`_costs_unresolved`): the outputs are certified, their derivative is not
    unresolved: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.vertex:
            self.vertex = [None] * len(self.status)
        if self.unresolved is None:
            self.unresolved = np.zeros(len(self.status), dtype=bool)

    @classmethod
    def join(cls, parts: list[_Attempt], with_D: bool = False) -> _Attempt:
        """Consecutive parts of a batch as one; with DΠ where ``with_D`` and every part has
        it."""
        values: dict[str, Any] = {"D": None, "v_D": None}
        Ds = [p.D for p in parts if p.D is not None]
        vs = [p.v_D for p in parts if p.v_D is not None]
        if with_D and len(Ds) == len(vs) == len(parts):
            values["D"] = DProjection.join(Ds)
            values["v_D"] = np.concatenate(vs)
        for f in fields(cls):
            if f.name in ("D", "v_D"):
                continue
            each = [getattr(p, f.name) for p in parts]
            values[f.name] = ([v for vs in each for v in vs] if isinstance(each[0], list)
                              else np.concatenate(each))
        return cls(**values)

    def improve(self, idx: np.ndarray, x: np.ndarray, y: np.ndarray, s: np.ndarray,
                omega: np.ndarray) -> None:
        """Unsettled instances ``idx`` given a better point (backward error ``omega``), their
        status kept; its factorization and DΠ are made again where needed."""
        self.x[idx], self.y[idx], self.s[idx] = x, y, s
        self.v[idx] = y - s
        self.residual_after[idx] = omega
        assert self.unresolved is not None  # (`__post_init__` sets it)
        self.unresolved[idx] = False
        for i in idx.tolist():
            self.factors[i] = None
            self.vertex[i] = None
        self.D = self.v_D = None

    def merge(self, idx: np.ndarray, other: _Attempt, keep: np.ndarray | None = None) -> None:
        """Take ``other``'s results (a retry of instances ``idx``), only where ``keep`` (bool,
        len(idx); None: everywhere); costs add up everywhere."""
        self.steps[idx] += other.steps
        self.iterations[idx] += other.iterations
        self.seconds[idx] += other.seconds
        js = np.arange(len(idx)) if keep is None else np.flatnonzero(keep)
        if not js.size:
            return
        idx = np.asarray(idx)[js]
        for j, i in zip(js.tolist(), idx.tolist(), strict=True):
            self.status[i] = other.status[j]
            self.factors[i] = other.factors[j]
            self.vertex[i] = other.vertex[j]
        for name in ("x", "y", "s", "v", "extended", "residual_after", "unresolved"):
            getattr(self, name)[idx] = getattr(other, name)[js]
        if self.D is not None and other.D is not None:
            assert self.v_D is not None and other.v_D is not None  # set together with D
            self.D.put(idx, other.D if keep is None else other.D.take(js))
            self.v_D[idx] = other.v_D[js]
        else:
            self.D = self.v_D = None


def _vertex_at(one: BatchOps, c: np.ndarray, b: np.ndarray, y: np.ndarray, s: np.ndarray,
               data: Callable[[np.ndarray, np.ndarray], np.ndarray | float] | None = None
               ) -> tuple[ActiveSet, float, np.ndarray] | None:
    """The `ActiveSet` that the point (y, s) of the one instance of ``one`` indicates (c (n,),
    b (m,)), with its backward error and each entry's estimated error (n + m,), where its
    exact solution passes `Layer._vertices`' tests short of the outputs' (well conditioned,
    resolved, every inequality's multiplier or slack beyond its margin and its error); else
    None. ``data(x, y)`` (both (1, ·)): what the rounding of the instance's data moves F's
    rows by there (`Layer._data_rounding`), counted with the residual's own rounding."""
    t = one.template
    a = ActiveSet.at(one, c, b, y, s)
    if a is None or a.rcond < ACTIVE_SET_RCOND:
        return None
    F, den = a.terms(a.x, a.y, a.s)
    w = omega(F, den)
    if not w <= ACCEPT_BACKWARD or _objective_unresolved(a.gradient(), den, ROUNDING):
        return None
    g = ROUNDING * den
    if data is not None:
        g = g + np.ravel(data(a.x[None], a.y[None]))
    d = np.abs(a.solve(F)) + a.bound(g)
    primal, dual = (side[0] for side in row_scales(one, a.x[None], a.y[None], a.s[None]))
    with np.errstate(invalid="ignore"):
        room = np.where(a.y > 0, a.y - np.maximum(ACTIVE_SET_MARGIN * dual, d[t.n :]),
                        a.s - np.maximum(ACTIVE_SET_MARGIN * primal, d[t.n :]))
    if not np.all(room[t.dims.zero :] > 0):
        return None
    return a, float(w), d


def _pair_held(ops: BatchOps, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per instance (B,): does v = y − s, as rounded, still give back y = Π_{K*}(v) and
    s = Π_{K*}(v) − v, each entry to REPRESENTED of itself, or of its cone block's largest
    |y| + |s| times REPRESENTED where it is smaller (an exponential cone's e^-30 entries come
    back to the block's rounding, and their derivative does not rest on them)? A point
    scaled by its cones' automorphisms (`equilibrate.at_solution`) carries each entry's
    error relative to its block before the scaling: where the scaling magnifies a block's
    small entries, their errors come with them, and the derivative at that v is another
    point's. min cᵀx s.t. pnorm(x, 3, approx=False) <= r with c₀ ~ 8e4 beside O(1)
    entries (one power cone's multiplier (0.21, 1.7e-10, −3.4e-7)) gave back its
    multiplier 26% off after the scaling, and ∂x/∂c 35% off (1e-12 without it: S's rcond
    2e-6 there). With c₀ ~ 1e6 … 5e7 the pair comes back 1e-6 … 1e-2 off, but S without
    the scaling is singular to 1e-12 and its Jacobian 1e-4 off, 1e-7 … 1e-12 with it: the
    caller keeps it where S is ill-conditioned."""
    v = y - s
    pv = project_dual(v, ops)
    floor = REPRESENTED * pattern(ops.template).block_max(np.abs(y) + np.abs(s))
    off_y = np.abs(pv - y) > REPRESENTED * np.maximum(np.abs(y), floor)
    off_s = np.abs((pv - v) - s) > REPRESENTED * np.maximum(np.abs(s), floor)
    return ~np.any(off_y | off_s, axis=1)


def _data_rows_floored(t: ConeTemplate, r: Any, b: np.ndarray, which: np.ndarray
                       ) -> np.ndarray:
    """Per instance (B,), where ``which``: does refinement's point ``r`` leave a row that
    holds data (b_i ≠ 0) unmet beyond ACCEPT_BACKWARD of its own terms (``r.den``, before
    the backward error's floor)? The backward error judges rows far below the instance's
    largest at SCALE_FLOOR of it (`refine.omega`), for the leftovers of auxiliary variables
    where the exact values are 0; a row with data of its own holds no leftovers.
    x^(1/8) >= d, x <= e with d = 1e5, e = 5e31 (infeasible: x^(1/8) <= 9.2e3) came back
    `solved` as x = e: the chain's cones, their constants 1 and t ~ 1e5, missed by 1e5,
    all at 1e-26 of the bound's row."""
    out = np.zeros(len(which), dtype=bool)
    idx = np.flatnonzero(which)
    if idx.size == 0:
        return out
    F = np.abs(r.F[idx, t.n :])
    den = r.den[idx, t.n :]
    data = b[idx] != 0
    out[idx] = np.any(data & (F > ACCEPT_BACKWARD * den), axis=1)
    return out


def _scaling_hides(ops: BatchOps, eq: Equilibration, r: Any, c: np.ndarray, b: np.ndarray,
                   which: np.ndarray) -> np.ndarray:
    """Per instance (B,), where ``which`` and the scaling ``eq`` boosts a second-order cone:
    does refinement's point ``r``, mapped back to the user's data and scaled as that data
    is first (`equilibrate`, which depends on no point), miss ACCEPT_BACKWARD there?

    ω (`refine.backward_error`) is invariant under diagonal scalings of rows and columns
    (Oettli & Prager), up to the floor it judges rows far below the instance's largest at;
    a boost is no diagonal scaling but an automorphism of the cone, and a perturbation
    within ω of the boosted program's entries is 2^|κ| times larger, relative to the user's
    data, along the block's small light-cone direction. The retry that boosts
    (`_solution_rescaled`) sets κ at the point it scales, and a boost set at a wrong point
    can make it look exact: max wᵀx^(2/3) s.t. x <= u with u₀ = 1.3e-4 beside 1e11 came
    back `solved` with x₀ = 3.8e-5 and t₀ ~ 0 (t₀ = u₀^(2/3)), certified where the cone
    t₀ >= z₀² was boosted by 2^−40 and t₀'s column scaled by ~1e14: ĉ₀ at 1e-24 of its dual
    row's terms, ω 1.1e-16; the same point has ω 1.5e-3 as first scaled (t₀'s dual row: the
    objective's coefficient unmet). The diagonal retries are not judged again: the points
    of power cones' tiny entries that they certify (Σ x^1.5/1.5 − cᵀx with c over
    1e-6 … 1e6, values and Jacobians right) have ω up to 6e-6 as first scaled, rows that
    only a scaling fitted at the solution resolves."""
    out = np.zeros(len(which), dtype=bool)
    idx = np.flatnonzero(which)
    if idx.size == 0:
        return out
    t = ops.template
    if eq.boost is None:
        return out
    idx = idx[np.any(eq.boost[idx] != 0, axis=1)]
    if idx.size == 0:
        return out
    e = eq.take(idx)
    cu, au, bu, hu = e.undone(t, c[idx], ops.a[idx], b[idx],
                              ops.h[idx] if t.quadratic else None)
    first = equilibrate(t, cu, au, bu, hu)
    c0, a0, b0, h0 = first.data(t, cu, au, bu, hu)
    x0, y0, s0 = first.scaled(*e.solution(r.x[idx], r.y[idx], r.s[idx]))
    one = BatchOps(t, a0, h0)
    v0 = y0 - s0
    om, _ = backward_error(one, c0, b0, x0, v0, y0, residual(one, c0, b0, x0, v0, y0))
    out[idx] = ~(om <= ACCEPT_BACKWARD)
    return out


def _objective_unresolved(gradient: np.ndarray, den: np.ndarray, rounding: float) -> np.ndarray:
    """(B,) bool, of ``gradient`` (|P||x| + |c|, (B, n)): the objective's gradient is below
    the rounding of the dual rows' own terms (``den``'s first n: Aᵀy, y = Π(v) known to
    rounding of the cone blocks' |v|), and so not resolved: any feasible point passes every
    row (max Σ log x s.t. p·x <= B at p ~ 1e-9, B ~ 1e12: c lands at 1e-21 of b in the
    equilibrated program, y = 0, x 70% off)."""
    top = gradient.max(axis=-1, initial=0.0)
    n = gradient.shape[-1]
    return (top > 0) & (top <= rounding * den[..., :n].max(axis=-1, initial=0.0))


def _objective_rows_lost(gradient: np.ndarray, x: np.ndarray, den: np.ndarray,
                         rounding: float) -> np.ndarray:
    """(B,) bool: do the dual rows whose objective term (``gradient``, |P||x| + |c|) lies
    within the rounding of the row's own terms (``den``'s first n) carry more than
    ACCEPT_BACKWARD of the objective (Σ gradientᵢ·|xᵢ|)? Those rows hold any point whatever
    the objective asks: min cᵀx s.t. pnorm(x − a, 3) <= r at r ~ 1e-9 … 1e-6 of a came back
    `solved` as x = a, its multipliers on |x − a| <= t at 1e16 beside c ~ 1, every row of x
    met to 1e-16 of those and c itself below their rounding (`_objective_unresolved` asks the
    same of the largest row only, which a scaling moves)."""
    n = gradient.shape[-1]
    lost = (gradient > 0) & (gradient <= rounding * den[..., :n])
    weight = gradient * x
    return (weight * lost).sum(axis=-1) > ACCEPT_BACKWARD * weight.sum(axis=-1)


def _part_unjudged(den: np.ndarray, c: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Per instance (B,): do the rows of one part of F, the dual rows (the first n, whose
    data is c) or the primal ones (the rest, b), all lie below SCALE_FLOOR of the other
    part's largest terms (``den``, `refine.row_terms`) while that part holds data?

    The backward error judges such rows at the floor (`refine.omega`), for rounding that
    auxiliary variables leave where the exact values are 0. Where S is regular the Newton
    correction still sees them (S⁻¹F, F's rounding per row); where S is singular the part
    of F outside S's range is judged against the rows' terms with the same floor and the
    normwise rounding of the largest rows (`_forward_error_ok`), which there hide that part
    whole. The parts scale apart (ρ and σ, and the equilibration's row and column factors,
    which a matrix far from the objective's scale pulls apart: min ‖x − y‖² s.t. G x <= h
    with G, h, y ~ 1e12 puts its primal rows at 1e-8 beside dual ones at 1e8, and a
    degenerate point whose eight active rows in five dimensions are inconsistent by 1e-9 of
    their terms passed, x 5e-8 off), so such a point is not certified in that scaling; the
    retries scale the program at the point (`_solution_rescaled`). A part without data
    (b = 0, or c = 0) is left to the floor: its rows hold only what the other part's
    variables put there, 0 at a zero solution."""
    big_x = den[:, :n].max(axis=1, initial=0.0)
    big_y = den[:, n:].max(axis=1, initial=0.0)
    data_x = np.abs(c).max(axis=1, initial=0.0) > 0
    data_y = np.abs(b).max(axis=1, initial=0.0) > 0
    return (data_x & (big_x < SCALE_FLOOR * big_y)) | (data_y & (big_y < SCALE_FLOOR * big_x))


def _face_data_unseen(own: np.ndarray, c: np.ndarray, b: np.ndarray, n: int) -> bool:
    """Does one part of one instance's data, c or b (equilibrated), lie wholly within FACE_GAP
    of its rows' own terms (``own``, `refine.row_terms`: the dual rows first, n of them)
    while not 0? The test of a face of solutions allows each row that much
    inconsistency, so such data is not seen by it: the point would pass with that part
    set to 0, and along the face it is what places the solution. A trust region with
    P's eigenvalues 5e-17 of its largest and |q| ~ 0.05 beside r ~ 3e8 had ĉ ~ 5e-14
    beside |P̂||x̂| ~ 1.5 in its dual rows, its point on the sphere with every multiplier
    0 (the true one is ~ĉ), and came back solved 5% off."""
    cx, bx = np.abs(c).max(initial=0.0), np.abs(b).max(initial=0.0)
    return bool((0 < cx <= FACE_GAP * own[:n].max(initial=0.0))
                or (0 < bx <= FACE_GAP * own[n:].max(initial=0.0)))


# A power cone's slack or multiplier with a nonzero entry below this of its block's largest
# is not resolved to the certificate's accuracy relative to that entry by refinement's
# tolerance (`Layer._polished`).
UNRESOLVED = 1e-8
# A rotated second-order cone 4ut >= ‖w‖² whose ‖w‖² exceeds 4ut by more than this fraction
# of the two beyond their rounding, u and t taken apart from the data, is violated; and
# only cones whose rows read an output's variable above this fraction of the outputs'
# largest entry are asked (`_rotated_unresolved`)
ROTATED_TOL = ACCEPT_FORWARD
# `Layer._polished`'s refinement: past REFINE_TOL to this ω, in at most POLISH_STEPS Newton
# steps (from a point within REFINE_TOL, two took x = √c at c = 2e-10 from 1.9e-4 of itself
# off to 3e-12).
POLISH_TOL = 1e-17
POLISH_STEPS = 2


class _RotatedLayout(NamedTuple):
    """Where `_rotated_unresolved` reads a template's boostable cones, from A's pattern."""

    block: np.ndarray        # (cones,): each cone's block among `pattern`'s blocks
    entry_cone: np.ndarray   # the stored entries of A in the cones' rows: their cone ...
    entry_cols: np.ndarray   # ... and their column
    sums: sp.csr_matrix      # (the first rows' entries, cones): each cone's sum


def _rotated_layout(t: ConeTemplate) -> _RotatedLayout | None:
    """The template's `_RotatedLayout`; None where it has no boostable cone."""
    p = pattern(t)
    if not p.boost_r.size:
        return None
    k = p.boost_rows.shape[1]
    block = np.searchsorted(p.blocks, p.boost_rows[0])
    cone_of = np.full(p.blocks.size, -1)
    cone_of[block] = np.arange(k)
    of = cone_of[np.searchsorted(p.blocks, p.rows, side="right") - 1]
    on = np.flatnonzero(of >= 0)
    e = p.boost_cone.size
    sums = sp.csr_matrix((np.ones(e), (np.arange(e), p.boost_cone)), shape=(e, k))
    return _RotatedLayout(block, of[on], p.cols[on], sums)


def _refines(ops: BatchOps, c: np.ndarray, b: np.ndarray) -> Callable[[SolveResult], np.ndarray]:
    """For the scale's calibration (`solve.calibrate_scale`): the solver's results on the
    instances of ``ops`` (equilibrated; c, b theirs) → (B,) bool, does refinement at its
    default settings converge from each point (deciding no SuperLU ordering: a call's first
    system does, as without the calibration's refinement)."""
    def converged(res: SolveResult) -> np.ndarray:
        finite = np.all(np.isfinite(res.x), axis=1)
        out = np.zeros(len(finite), dtype=bool)
        if finite.any():
            at = np.flatnonzero(finite)
            with orderings_undecided(ops.template):
                r = refine(ops.take(at), c[at], b[at], res.x[at], res.y[at], res.s[at])
            out[at] = r.converged
        return out
    return converged


def _cost_along_null(f: Any, c: np.ndarray, n: int) -> bool:
    """Does a null vector of the singular S that ``f`` factored move a variable whose cost
    c_j is not 0 (an entry above NULL_COST of the vector's largest)? True where the null
    space is not at hand. Such a direction is no face of solutions (the objective changes
    along it); non-unique auxiliary variables, which CVXPY gives no cost, are."""
    if f.pinv is None:
        return True
    N = np.abs(f.pinv.null)
    if N.shape[1] == 0:
        return False
    return bool(np.any((N[:n] > NULL_COST * N.max(axis=0)) & (c[:, None] != 0)))


def _idle_rows(t: ConeTemplate, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(B, m) bool: the rows inactive at the point (y, s) (B, m): every row of a cone block
    (second-order, PSD, exponential, power) whose multiplier is 0, and nonnegative rows whose
    multiplier is 0 and slack positive (an equality row binds)."""
    lay = cone_layout(t.dims)
    idle = pattern(t).block_max(np.abs(y)) == 0
    idle[:, lay.zero] = False
    idle[:, lay.nonneg] &= s[:, lay.nonneg] > 0
    return idle


def _free_priced(ops: BatchOps, c: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(B, n) bool: the variables with a cost (c_j ≠ 0) and no curvature (P's column j is 0)
    that enter only inactive rows at the point (y, s) (B, m) (`_idle_rows`).

    Nothing at the point bounds such a variable, so its cost is unmet in its dual row, by c_j
    itself, which the backward error can hold below its floor (λ·t for a regularizer's
    epigraph variable t at λ far below the data): the point's structure is not the
    solution's, and S is singular along it. CVXPY's auxiliary variables have no cost, a
    variable with curvature is bounded by it, and one that an active row binds (the face of
    an LP's solutions, x on a box beside inactive balls) is no such variable."""
    mag = ops.magnitude
    busy = (~_idle_rows(ops.template, y, s)).astype(float)
    return (c != 0) & (mag.P(np.ones_like(c)) == 0) & (mag.AT(busy) == 0)


def _free_blocks(ops: BatchOps, free: np.ndarray, y: np.ndarray, s: np.ndarray
                 ) -> np.ndarray:
    """(B, m) bool: the rows of each cone block (second-order, PSD, exponential, power) whose
    multiplier is 0 at the point (y, s) and that a variable of ``free`` (B, n) enters."""
    t = ops.template
    lay = cone_layout(t.dims)
    rows = _idle_rows(t, y, s) & (ops.magnitude.A(free.astype(float)) > 0)
    out = pattern(t).block_max(rows.astype(float)) > 0
    out[:, : lay.nonneg.stop] = False
    return out


def _placed(ops: BatchOps, b: np.ndarray, y: np.ndarray, floor: np.ndarray,
            wanted: np.ndarray) -> np.ndarray:
    """(B, n) bool: of the variables ``wanted`` (B, n; no curvature), those the point's
    structure places at the scale ``floor`` (B,): those entering an active row, one whose
    multiplier (its cone block's largest) is above the floor or an equality with data
    (b_i ≠ 0); and, in turn, the last variable not yet placed in an equality: a chain of
    equalities without data (p-norms', harmonic means') places its variables only where one
    end is placed (a variable with curvature counts as placed there)."""
    t = ops.template
    mag = ops.magnitude
    active = pattern(t).block_max(np.abs(y)) > floor[:, None]
    zero = slice(0, t.dims.zero)
    active[:, zero] |= b[:, zero] != 0
    placed = mag.AT(active.astype(float)) > 0
    if not t.dims.zero or not (wanted & ~placed).any():
        return placed & wanted
    placed |= mag.P(np.ones((len(b), t.n))) != 0
    links = BatchOps(t, (ops.a != 0).astype(float))  # A's pattern: counts
    open_ = np.zeros_like(active)
    for _ in range(t.n):
        left = links.A((~placed).astype(float))[:, zero]
        open_[:, zero] = (left == 1) & ~active[:, zero]
        newly = (links.AT(open_.astype(float)) > 0) & ~placed
        if not newly.any():
            break
        placed |= newly
    return placed & wanted


def _costs_unresolved(ops: BatchOps, c: np.ndarray, b: np.ndarray, x: np.ndarray,
                      y: np.ndarray, s: np.ndarray, top: np.ndarray | None = None
                      ) -> np.ndarray:
    """(B,) bool: does the point (x, y, s) leave unresolved a dual row that the structure
    the derivative rests on depends on, so that the derivative is no derivative of the
    program? ``top`` (B,): each instance's largest row terms where known (NaN where not),
    the scale of the certificate's floor (SCALE_FLOOR of it).

    A variable j with a cost c_j that is not 0 or that a parameter sets (``ops``'s
    template's C), no curvature (P's column j is 0), and nothing else placing it at the
    floor's scale (`_placed`) is placed by c_j alone, against multipliers as small as c_j.
    Its row is unresolved where c_j is within COST_ROUNDED times the rounding of the row's
    terms (ROUNDING of `refine.row_terms`, cone blocks counting their rounding unless s lies
    deeper inside K than DEEP) or the row is unmet by more than COST_MISS of its own terms
    and that rounding. In a program with power cones, so is any dual row whose own terms
    lie below the floor and that is unmet by as much and by more than ROUNDING of the
    instance's largest terms (leftovers where the exact values are 0 stay below that).

    The certificate judges such rows at its floor, or at the rounding of a block whose
    multiplier is exactly 0, and holds the outputs right (they do not move with such a
    variable), but the structure is set by rounding (where refinement merely stopped
    short, polishing meets the row: `Layer._settle`): min ‖x − a‖² − λ·geo_mean(x) at
    λ = 1e-14‖a‖ came back with the mean's hypograph variable t at 4e-14 where it is 0.9,
    its cone chain released, and ∂x/∂λ 0 where it is G/(2na) ~ 0.2; at λ = 0 (a
    nonnegative parameter), with t non-unique below 0.9, the same; with
    geo_mean(x, approx=False) at λ = 1.8e-14‖a‖, a retry's scaling left the chain's second
    power cone at its apex (its entries ~1e-11), the mean's variable at 0 where it is 1.2,
    placed by that cone's multiplier, the auxiliary's row 100% off, and ∂x/∂λ (2e-3, 0, 0)
    for (0.13, 0.17, 0.21)."""
    t = ops.template
    B, n = x.shape
    mag = ops.magnitude
    param = np.diff(t.C.indptr) > 0
    candidate = ((c != 0) | param) & (mag.P(np.ones_like(x)) == 0)
    power = bool(t.dims.power)
    out = np.zeros(B, dtype=bool)
    if not (power or candidate.any()):
        return out
    v = y - s
    top = np.full(B, np.nan) if top is None else np.array(top, dtype=float)
    unknown = np.flatnonzero(np.isnan(top))
    if unknown.size:
        top[unknown] = row_terms(ops.take(unknown), c[unknown], b[unknown], x[unknown],
                                 v[unknown], y[unknown]).max(axis=1, initial=0.0)
    floor = SCALE_FLOOR * top
    candidate &= ~_placed(ops, b, y, floor, candidate)
    idx = np.flatnonzero(candidate.any(axis=1) | power)
    if not idx.size:
        return out
    sub, ci, bi = ops.take(idx), c[idx], b[idx]
    xi, yi, vi = x[idx], y[idx], v[idx]
    F = np.abs(residual(sub, ci, bi, xi, vi, yi)[:, :n])
    own = row_terms(sub, ci, bi, xi, vi, yi, blockwise=False)[:, :n]
    rounding = ROUNDING * row_terms(sub, ci, bi, xi, vi, yi, deep=DEEP)[:, :n]
    missed = F > COST_MISS * own + rounding
    lost = candidate[idx] & ((np.abs(ci) <= COST_ROUNDED * rounding) | missed)
    if power:
        lost |= (own < floor[idx, None]) & missed & (F > ROUNDING * top[idx, None])
    out[idx] = lost.any(axis=1)
    return out


def _curved(t: ConeTemplate) -> bool:
    """Does the program hold a second-order, PSD, exponential or power cone?"""
    d = t.dims
    return bool(d.soc or d.psd or d.exp or d.power)


def _unresolved(t: ConeTemplate, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(B,) bool: does a power cone of the point (y, s) (B, m) hold, in its slack's or its
    multiplier's block, a nonzero entry below UNRESOLVED of the block's largest?

    (Exponential cones are not asked: softmax's tiny probabilities put most of its cones
    there, two more Newton steps on a quarter of a batch at logits × 10 cost 50% of the
    call, and the weighted logs, the budget problems and softmax measured no gain.)"""
    rows = cone_layout(t.dims).pow
    if not rows.size:
        return np.zeros(y.shape[0], dtype=bool)
    out = np.zeros(y.shape[0], dtype=bool)
    for part in (y, s):
        blk = np.abs(part[:, rows])  # (B, cones, 3)
        top = blk.max(axis=2, keepdims=True)
        with np.errstate(invalid="ignore"):
            small = (blk > 0) & (blk < UNRESOLVED * top)
        out |= small.any(axis=(1, 2))
    return out


def _rotated_unresolved(ops: BatchOps, b: np.ndarray, x: np.ndarray, s: np.ndarray,
                        raw: np.ndarray, layout: _RotatedLayout) -> np.ndarray:
    """(B,) bool: is a boostable second-order cone of the point (x, s) of the equilibrated
    program (`equilibrate`'s `_boostable`: rows u + t and u − t of a rotated cone
    4ut >= ‖w‖², w its other rows) violated once u and t are taken apart from b and A's
    rows, not from the slack's two rows, where its rows read an output's variable that
    matters?

    Where the smaller of u and t lies below the rounding of the larger, the slack's rows
    hold only the larger, and the cone binds to that rounding alone: sum_squares(x) <= r at
    x ~ 1e-9, r ~ 1e-18, CVXPY's t >= ‖x‖² as (1 + t, 1 − t, 2x) with t ~ 1e-18 beside the
    1, where x = a (the point without the ball, 5% … 110% off) solved the program as float64
    holds it to ω 4e-19 and its linearization, at a multiplier of 0, saw no error. 2u and
    2t are (b₀ ± b₁) − (A₀ ± A₁)x with A₀ ± A₁ formed entry by entry (the two rows store the
    same columns), exact where one holds data and the other a variable. Violated: 4ut below
    ‖w‖² by more than ROTATED_TOL of the two plus their rounding (|b₀ ± b₁| + |A₀ ± A₁||x|
    times ROUNDING), or u or t below minus its rounding. Only cones whose rows read a
    variable that an output reads, at more than ROTATED_TOL of the outputs' largest entry in
    the user's units (``raw`` (B, n): |x| of the output variables, 0 elsewhere) once scaled
    by what the cone asks of it (‖w‖²/4ut, where u or t would have to grow by that factor),
    are asked: a chain whose variable lies at 1e-18 of the output beside it (power(x, 1.5)
    with one x_i ~ 1e-18, returned as 1e-32, its cone short by a factor 2) holds no
    output's value; inv_pos(x) <= d as (x + d, x − d, 2) at d ~ 4e-7 with x = 2e-9 asks
    x for 1e15 times more, the 2.7e6 it is (x came back `solved` outside its constraint,
    59% of the largest output off), and a cone whose u or t is negative beyond its
    rounding asks any. ``layout``: the cones' indices
    (`Layer._rotated_layout`)."""
    p = pattern(ops.template)
    r0, r1 = p.boost_rows
    read = np.zeros((x.shape[0], r0.size))
    np.maximum.at(read.T, layout.entry_cone, raw[:, layout.entry_cols].T)
    if not read.any():
        return np.zeros(x.shape[0], dtype=bool)
    a0, a1 = ops.a[:, p.boost_r], ops.a[:, p.boost_q]
    xc = x[:, p.cols[p.boost_r]]

    def per_cone(v: np.ndarray) -> np.ndarray:  # (B, entries) → (B, cones): each cone's sum
        return np.asarray(v @ layout.sums)

    su = (b[:, r0] + b[:, r1]) - per_cone((a0 + a1) * xc)  # 2u
    df = (b[:, r0] - b[:, r1]) - per_cone((a0 - a1) * xc)  # 2t
    e_su = ROUNDING * (np.abs(b[:, r0] + b[:, r1]) + per_cone(np.abs((a0 + a1) * xc)))
    e_df = ROUNDING * (np.abs(b[:, r0] - b[:, r1]) + per_cone(np.abs((a0 - a1) * xc)))
    sq = s**2
    sq[:, r0] = sq[:, r1] = 0.0  # (‖w‖² summed apart: never s₀² − s₁² − …)
    w2 = np.add.reduceat(sq, p.blocks, axis=1)[:, layout.block]
    prod = su * df
    allowed = ROTATED_TOL * (w2 + np.abs(prod)) + np.abs(su) * e_df + np.abs(df) * e_su
    violated = (w2 - prod > allowed) | (su < -e_su) | (df < -e_df)
    # (what the cone asks of what it reads: u or t scaled by ‖w‖²/4ut at least, so the
    # variables it reads by that factor, as far as they make u or t; any factor where u or
    # t is negative beyond its rounding)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where((su > 0) & (df > 0), np.maximum(w2 / prod - 1.0, 1.0),
                          np.where((su < -e_su) | (df < -e_df), np.inf, 1.0))
        # (an output read as 0 is asked nothing, whatever the factor: never inf · 0)
        asked = np.where(read > 0, read * factor, 0.0) \
            > ROTATED_TOL * raw.max(axis=1, initial=0.0)[:, None]
    return np.any(violated & asked, axis=1)


def _objective_terms(ops: BatchOps, c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(B,): the objective's terms at x, |c|ᵀ|x| + |x|ᵀ|P||x|, per instance of ``ops``."""
    ax = np.abs(x)
    return (ax * (ops.magnitude.P(ax) + np.abs(c))).sum(axis=1)


def _unbalanced(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) bool: max(|x|, |y|) over their min (max-norms per instance, both above ROUNDING
    of the other) is above IMBALANCE. Below ROUNDING the smaller is the larger's rounding,
    not a scale to balance: the multipliers of an inactive constraint, 0 exactly, that
    refinement left at 1e-17 beside x ~ 1 (a ball's projection from inside, whose scaling
    at that point put ρ and σ 1e16 apart, the norm's non-unique epigraph variable then on
    its cone's boundary and reported weakly active)."""
    a = np.abs(x).max(axis=1, initial=0.0)
    b = np.abs(y).max(axis=1, initial=0.0)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return (lo > ROUNDING * hi) & (hi > IMBALANCE * lo)


def _rows_moved(t: ConeTemplate, dc: np.ndarray, da: np.ndarray | None, db: np.ndarray,
                dh: np.ndarray | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """What errors of magnitude (dc, da, db, dh) in the data (c, A's values, b, P's values;
    A's and P's None for none) move F's rows by at the points (x, y = Π(v)) (B, n + m):
    δc + |δP||x| + |δA|ᵀ|y| over the first n rows, δb + |δA||x| over the last m."""
    if da is not None or dh is not None:  # (A and P mostly exact: one parameter's each)
        ax = np.abs(x)
        err = BatchOps(t, np.zeros((len(x), t.nnz)) if da is None else da, dh)
        dc = dc + err.P(ax) + err.AT(np.abs(y))
        db = db + err.A(ax)
    return np.concatenate([dc, db], axis=1)


def _entry_ratio(a: np.ndarray) -> np.ndarray:
    """Per row of ``a`` (B, k): its largest nonzero magnitude over its smallest (1 where it
    has none)."""
    mag = np.abs(a)
    top = mag.max(axis=1, initial=0.0)
    least = np.where(mag > 0, mag, np.inf).min(axis=1, initial=np.inf)
    return np.where(top > 0, top / np.where(top > 0, least, 1.0), 1.0)


@dataclass
class _Solution:
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    factors: list | None = None  # refinement's last factorization per instance, to reuse
    v: np.ndarray | None = None  # y − s as refinement computed it (else recomputed)
    D: DProjection | None = None  # DΠ_{K*} at v_D, from refinement
    v_D: np.ndarray | None = None
    extended: np.ndarray | None = None  # refined in extended precision (`_Attempt`)
    vertex: list | None = None  # the `ActiveSet` an instance's point solves, or None
    unresolved: np.ndarray | None = None  # a cost unresolved at the point (`_Attempt`)
