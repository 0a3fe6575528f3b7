"""declarative: differentiable convex optimization layers.

Write a parametrized convex problem in CVXPY, compile it once, and use it as a
PyTorch module or a JAX function whose gradients are exact::

    layer = declarative.compile(problem, parameters=[theta], variables=[x])
    (x_t,) = layer.torch()(theta_t)
"""

from __future__ import annotations

from collections.abc import Sequence

import cvxpy as cp

from declarative.compile import compile_template
from declarative.derivative import NonDifferentiableWarning
from declarative.errors import DeclarativeError, ParameterError, ProblemError, SolverError
from declarative.layer import Forward, Layer, SolveInfo
from declarative.solve import Status

__all__ = [
    "compile", "verify", "Layer", "Forward", "SolveInfo", "Status",
    "DeclarativeError", "ProblemError", "ParameterError", "SolverError",
    "NonDifferentiableWarning",
]
__version__ = "0.1.0"


def compile(  # noqa: A001 - the public name the design fixes
    problem: cp.Problem,
    parameters: Sequence[cp.Parameter],
    variables: Sequence[cp.Variable],
    *,
    solver_args: dict | None = None,
    on_failure: str = "raise",
) -> Layer:
    """Compile a DPP CVXPY problem into a differentiable layer, once.

    Args:
        problem: a CVXPY problem that is DCP and DPP.
        parameters: every parameter of the problem; the layer takes their values
            positionally in this order.
        variables: what the layer returns: variables of the problem and/or dual
            variables of its constraints (``constraint.dual_variables[0]``).
        solver_args: SCS settings (``eps_abs``, ``max_iters``, ...) and refinement
            options (``refine``, ``refine_tol``, ``refine_max_iters``); overridable per call.
        on_failure: ``"raise"`` (one error naming every unsolved batch index) or ``"nan"``
            (NaN outputs and zero gradients for exactly those instances).
    """
    template, params, outputs = compile_template(problem, list(parameters), list(variables))
    return Layer(template, params, outputs, solver_args=solver_args, on_failure=on_failure)


def __getattr__(name: str):
    """``declarative.verify`` (declarative/verification), imported on first use: it pulls in
    diffcp and the finite-difference machinery, which a layer does not need."""
    if name == "verify":
        from declarative.verification.run import verify

        return verify
    raise AttributeError(f"module 'declarative' has no attribute {name!r}")
