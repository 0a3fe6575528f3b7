"""Tuning: what a layer decides from its problem rather than from the user's options.

A `Tuning` is a plain value: frozen, picklable, comparable, shown in ``repr(layer)``. A
layer fills the fields left as None once, under its lock, from its template alone (so no
result depends on the call history), or all at once from sample data by `Layer.tune`; a user
may set any field (``layer.tuning = dl.Tuning(...)`` or ``dl.compile(..., tuning=...)``).
The one exception is SuperLU's ordering (``sparse_ordering``), which is decided on the
first system a call factors: deterministically, from that system alone, but from a
call's data. The same tuning and the same input give bitwise-equal outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from declarative.backends import SOLVERS
from declarative.derivative import ORDERINGS
from declarative.errors import ProblemError

# Moreau's algorithms a tuning may name (`backends.moreau.METHODS`, repeated here so that
# importing the tuning does not import Moreau).
MOREAU_METHODS = ("ipm", "active_set")
# SCS's linear solvers for its KKT system that a tuning may name.
SCS_LINEAR_SOLVERS = ("qdldl", "cpu_dense")


@dataclass(frozen=True)
class Tuning:
    """A layer's tuning; None means "not decided yet" (the layer decides it when needed).

    ``solver``: the backend the layer uses unless a call names another (one of
    `declarative.backends.SOLVERS`). Left open (no ``solver=`` and no solver settings in
    ``solver_args`` at compile time), the layer decides it from its template
    (`Layer._default_solver`: Moreau's active-set method for small programs with only zero
    and nonnegative cones and few inequalities, where Moreau is installed; SCS otherwise);
    `Layer.tune` times SCS and Moreau with each of its methods (``method``: ``"ipm"``, or
    ``"active_set"`` where the cones are only zero and nonnegative ones) on its sample.
    ``batch_from``: the batch size from which ``solver`` is used; smaller calls (without a
    solver of their own) use SCS (a batched solver such as Moreau has a fixed cost per call;
    `Layer.tune` puts it where the two costs, fixed plus per instance, cross). None: every
    call.
    ``scale``: SCS's primal/dual balance on the equilibrated program (a positive number;
    `Layer` calibrates it among `solve.SCALE_CANDIDATES`).
    ``linear_solver``: SCS's factorization of its KKT matrix, ``"qdldl"`` (sparse LDLᵀ) or
    ``"cpu_dense"`` (dense Cholesky). ``share_workspaces``: whether instances whose A and P
    do not depend on the parameters share one solver setup per thread (only b and c are
    updated). ``sparse_ordering`` and ``supernodes``: SuperLU's column ordering (one of
    `derivative.ORDERINGS`) and whether it uses supernodes, where the Newton and derivative
    systems are factored sparse (decided on the first instance factored, from the fill of
    each ordering there: `derivative._best_ordering`). A user's ``solver_args`` entry of
    the same name overrides a field per call.

    ``chunk_size``: None (the default) refines the whole batch at once and keeps refinement's
    factorizations of S for the derivative. A positive integer k is the low-memory mode: the
    batch is refined and certified k instances at a time, its factorizations are not kept,
    and each derivative (VJP, JVP, `Forward.nondifferentiable`) factors S again, k instances
    at a time, dropping each chunk's factorizations before the next. What a call holds for
    its derivative is then O(k·N²) (N = n + m) rather than O(B·N²), for one more
    factorization per solved instance in each derivative. Outputs and derivatives agree with
    the default mode's to rounding. Never decided by the layer.
    """

    solver: str | None = None
    scale: float | None = None
    linear_solver: str | None = None
    share_workspaces: bool | None = None
    sparse_ordering: str | None = None
    supernodes: bool | None = None
    chunk_size: int | None = None
    method: str | None = None
    batch_from: int | None = None

    def __post_init__(self) -> None:
        if self.solver is not None and self.solver not in SOLVERS:
            raise ProblemError(f"Tuning.solver must be one of {list(SOLVERS)}, "
                               f"got {self.solver!r}.")
        if self.scale is not None:
            if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                    or not math.isfinite(self.scale) or self.scale <= 0:
                raise ProblemError(f"Tuning.scale must be a positive finite number or None, "
                                   f"got {self.scale!r}.")
        if self.linear_solver is not None and self.linear_solver not in SCS_LINEAR_SOLVERS:
            raise ProblemError(f"Tuning.linear_solver must be one of {list(SCS_LINEAR_SOLVERS)} "
                               f"or None, got {self.linear_solver!r}.")
        for name in ("share_workspaces", "supernodes"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ProblemError(f"Tuning.{name} must be True, False or None, got {value!r}.")
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not isinstance(
                self.chunk_size, int) or self.chunk_size < 1):
            raise ProblemError(f"Tuning.chunk_size must be a positive integer (instances per "
                               f"chunk) or None (the whole batch at once), got "
                               f"{self.chunk_size!r}.")
        if self.batch_from is not None and (isinstance(self.batch_from, bool) or not isinstance(
                self.batch_from, int) or self.batch_from < 1):
            raise ProblemError(f"Tuning.batch_from must be a positive integer (instances) or "
                               f"None, got {self.batch_from!r}.")
        if self.method is not None and self.method not in MOREAU_METHODS:
            raise ProblemError(f"Tuning.method must be one of {list(MOREAU_METHODS)} or None, "
                               f"got {self.method!r}.")
        if self.sparse_ordering is not None and self.sparse_ordering not in ORDERINGS:
            raise ProblemError(f"Tuning.sparse_ordering must be one of {list(ORDERINGS)} or "
                               f"None, got {self.sparse_ordering!r}.")
