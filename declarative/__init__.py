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
from declarative.tuning import Tuning

__all__ = [
    "compile", "verify", "implicit", "Layer", "Forward", "SolveInfo", "Status", "Tuning",
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
    solver: str | None = None,
    tuning: Tuning | None = None,
    gp: bool = False,
) -> Layer:
    """Compile a DPP CVXPY problem into a differentiable layer, once.

    Args:
        problem: a CVXPY problem that is DCP and DPP (``quad_form(x, P)`` with a PSD
            parameter P is DPP in the objective); with ``gp=True``, DGP and DPP.
        parameters: every parameter of the problem, as a list (one parameter may be given
            alone); the layer takes their values positionally in this order.
        variables: what the layer returns (a list, or one variable alone): variables of the
            problem (structured ones too: diag, symmetric, PSD, nonneg, nonpos, bounds)
            and/or dual variables of its
            constraints (any entry of ``constraint.dual_variables``: SOC's (t, X) parts,
            ExpCone's three, ...), in CVXPY's own conventions.
        solver_args: the solver's settings (SCS: ``eps_abs``, ``max_iters``, ...; ``eps``
            sets eps_abs = eps_rel, as in cvxpylayers and diffcp; Clarabel: ``tol_gap_abs``,
            ``max_iter``, ...; Moreau: ``method``, ``tol_gap_abs``, ...) and refinement
            options (``refine``, ``refine_tol``, ``refine_max_iters``); overridable per call.
            A solver's settings without ``solver=`` are SCS's.
        on_failure: ``"raise"`` (one error naming every unsolved batch index) or ``"nan"``
            (NaN outputs and zero gradients for exactly those instances).
        solver: ``"scs"``, ``"clarabel"`` or ``"moreau"``; overridable per call. Not given
            (and no solver settings given), decided from the program: Moreau's active-set
            method for small programs with few inequalities, where installed, else SCS
            (`Tuning.solver`).
            Refinement, the certificate and the derivative are the same whichever solves.
        tuning: a `Tuning` to use instead of deciding one (its ``solver`` is the layer's).
        gp: the problem is a geometric program (log-log convex, DGP): solved in log-log
            coordinates (CVXPY's ``Dgp2Dcp``); the layer takes the positive parameters and
            returns the positive variables (`declarative.geometric.GeometricLayer`).
    """
    if gp:
        from declarative.compile import compile_gp_template
        from declarative.geometric import GeometricLayer

        template, params, outputs = compile_gp_template(problem, parameters, variables)
        return GeometricLayer(template, params, outputs, solver_args=solver_args,
                              on_failure=on_failure, solver=solver, tuning=tuning)
    template, params, outputs = compile_template(problem, parameters, variables)
    return Layer(template, params, outputs, solver_args=solver_args, on_failure=on_failure,
                 solver=solver, tuning=tuning)


def __getattr__(name: str):
    """``declarative.verify`` (declarative/verification: it pulls in diffcp and the
    finite-difference machinery, which a layer does not need) and ``declarative.implicit``,
    imported on first use."""
    if name == "verify":
        from declarative.verification.run import verify

        return verify
    if name == "implicit":
        import importlib

        return importlib.import_module("declarative.implicit")
    raise AttributeError(f"module 'declarative' has no attribute {name!r}")
