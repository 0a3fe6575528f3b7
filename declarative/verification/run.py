"""``declarative.verify``: check any compiled layer against the math at one instance.

It solves once, computes the full Jacobian (``Forward.jacobian``) and compares solution and
Jacobian with up to three references, each a :class:`~declarative.verification.report.Check`
per (reference, output[, parameter]):

``closed_form``
    a solution and/or Jacobian the user supplies (functions of the parameter values, or
    the arrays themselves): ``solution(*params)`` is a list with one array per output,
    ``jacobian(*params)[i][j]`` is ∂output_i/∂param_j shaped
    ``output_i.shape + param_j.shape``. Judged on the max abs error at ``tolerance``.
``finite_differences``
    central differences of the layer's own forward pass
    (:mod:`declarative.verification.finite_differences`).
``diffcp``
    diffcp on the very same cone program (:mod:`declarative.verification.diffcp_reference`).

The finite-difference and diffcp thresholds are informational: far looser than the closed
form's, they flag a wrong derivative, not a slightly inaccurate one.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from declarative.derivative import NonDifferentiableWarning
from declarative.errors import ParameterError
from declarative.layer import Forward, Layer
from declarative.tools.format import finite_or_none
from declarative.verification.diffcp_reference import DIFFCP_SCS, diffcp_jacobian
from declarative.verification.finite_differences import (
    fd_directions,
    finite_difference_jacobian,
    symmetric_parameter,
    symmetrize,
)
from declarative.verification.report import (
    CLOSED_FORM,
    DIFFCP,
    DIFFCP_TOLERANCE,
    FD_STEP,
    FD_TOLERANCE,
    FINITE_DIFFERENCES,
    TOLERANCE,
    Check,
    Jacobian,
    Report,
    as_jacobian,
    as_solution,
    compare,
)

if TYPE_CHECKING:
    from declarative.implicit.verify import Report as NodeReport

Reference = Callable[..., Any] | Sequence[Any] | None


def verify(
    layer: Layer | Any,
    values: Sequence[Any],
    *,
    solution: Reference = None,
    jacobian: Reference = None,
    finite_differences: bool = True,
    diffcp: bool = True,
    solver_args: dict | None = None,
    tolerance: float = TOLERANCE,
    fd_step: float = FD_STEP,
    fd_tolerance: float = FD_TOLERANCE,
    diffcp_tolerance: float = DIFFCP_TOLERANCE,
    diffcp_at_ours: bool = True,
    name: str | None = None,
    progress: bool | None = None,
) -> Report | NodeReport:
    """Check ``layer`` at one instance (unbatched ``values``, one per parameter).

    Args:
        layer: any compiled layer (``declarative.compile``).
        values: the parameter values, in the layer's order, unbatched.
        solution: closed-form reference ``solution(*values) -> [array per output]`` (or
            that list itself).
        jacobian: closed-form reference ``jacobian(*values) -> J`` with ``J[i][j]`` shaped
            ``output_i.shape + param_j.shape`` (or that nested list itself).
        finite_differences: also compare with central differences of the layer's forward.
        diffcp: also compare with diffcp on the same cone program (skipped, with a note,
            when diffcp is not installed).
        solver_args: per-call solver settings for every solve (ours and the FD ones).
        tolerance: max abs error allowed against the closed form.
        fd_step: central-difference step, scaled by max(1, |θ_k|) per entry.
        fd_tolerance, diffcp_tolerance: thresholds on the error relative to
            max(1, ‖reference‖∞) against finite differences and diffcp.
        diffcp_at_ours: evaluate diffcp's derivative at our refined solution, so that
            differences come from the derivative alone (False: at diffcp's own SCS
            solution, a fully independent pipeline, as accurate as SCS). diffcp's solution
            check is always its own, cold-started solve.
        name: a label for the report.
        progress: a tqdm bar on stderr over the finite differences and diffcp's
            directions; None (default): only on a terminal, and only once the work has
            taken more than 2 s.
    """
    from declarative.implicit.nodes import Node

    if isinstance(layer, Node):  # a declarative node: values = (z0, *params)
        from declarative.implicit.verify import verify as verify_node

        return verify_node(layer, values[0], values[1:], solution=solution, jacobian=jacobian,
                           finite_differences=finite_differences, tolerance=tolerance)
    theta = _one_instance(layer, values)
    cmp = _Comparison.of_ours(layer, values, solver_args)
    args = [np.asarray(v, dtype=float) for v in values]
    total = theta.shape[1] * int(diffcp)
    if finite_differences:
        total += sum(1 for spec, v in zip(layer.parameters, args, strict=True)
                     for _ in fd_directions(spec, v, fd_step))
    bar = _progress_bar(total, name, progress)
    at_ours = False
    try:
        _check_closed_form(cmp, args, solution, jacobian, tolerance)
        if finite_differences:
            _check_finite_differences(cmp, args, fd_step, fd_tolerance, solver_args,
                                      bar.update)
        if diffcp:
            at_ours = _check_diffcp(cmp, args, diffcp_at_ours, diffcp_tolerance, bar.update)
    finally:
        bar.close()
    settings: dict[str, Any] = {"tolerance": tolerance, "solver_args": dict(solver_args or {})}
    if finite_differences:
        settings.update(fd_step=fd_step, fd_tolerance=fd_tolerance)
    if diffcp:
        settings.update(diffcp_tolerance=diffcp_tolerance, diffcp_mode="dense",
                        diffcp_derivative_at="ours" if at_ours else "diffcp's solution",
                        diffcp_scs=dict(DIFFCP_SCS))
    return cmp.report(name, settings)


def _one_instance(layer: Layer, values: Sequence[Any]) -> np.ndarray:
    """θ of one instance; a batched value is an error."""
    theta, batched = layer.batch(values)
    if any(batched):
        names = [p.name for p, bt in zip(layer.parameters, batched, strict=True) if bt]
        raise ParameterError(
            f"verify checks one instance: pass unbatched values (batched: {', '.join(names)}).")
    return theta


def _progress_bar(total: int, name: str | None, progress: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"verify{' ' + name if name else ''}", unit="direction",
                file=sys.stderr, leave=False, delay=2.0,
                disable=None if progress is None else not progress)


def _solver_summary(fwd: Forward) -> dict[str, Any]:
    """The solver's diagnostics of instance 0, for the report."""
    info = fwd.info
    solver: dict[str, Any] = {
        "scs_status": str(info.scs_status[0]),
        "scs_iterations": int(info.scs_iterations[0]),
        "residual_before": finite_or_none(float(info.residual_before[0])),
        "residual_after": finite_or_none(float(info.residual_after[0])),
        "refine_steps": int(info.refine_steps[0]),
    }
    if info.rcond is not None and np.isfinite(info.rcond[0]):
        solver["rcond"] = float(info.rcond[0])
    return solver


class _Comparison:
    """Our solution and Jacobian at one instance, and the checks made against them."""

    def __init__(self, layer: Layer, fwd: Forward, jacobian: Jacobian,
                 seconds: dict[str, float], notes: list[str]) -> None:
        self.layer, self.fwd = layer, fwd
        self.symmetric = [symmetric_parameter(p) for p in layer.parameters]
        self.solution = [o[0] for o in fwd.outputs]
        self.jacobian = jacobian
        self.seconds, self.notes = seconds, notes
        self.checks: list[Check] = []
        self.solutions: dict[str, list[np.ndarray]] = {"ours": self.solution}
        self.jacobians: dict[str, Jacobian] = {"ours": jacobian}

    @classmethod
    def of_ours(cls, layer: Layer, values: Sequence[Any], solver_args: dict | None
                ) -> _Comparison:
        """Solve, compute the full Jacobian (symmetrized over symmetric parameters' axes)."""
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        fwd = layer.forward(values, solver_args=solver_args, on_failure="nan")
        seconds["forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonDifferentiableWarning)
            J = fwd.jacobian(0)
        seconds["jacobian"] = time.perf_counter() - t0
        notes = [f"ours: {w.message}" for w in caught
                 if issubclass(w.category, NonDifferentiableWarning)]
        sym = [symmetric_parameter(p) for p in layer.parameters]
        if any(sym):
            J = [[symmetrize(b) if sy else b for b, sy in zip(row, sym, strict=True)]
                 for row in J]
            names = ", ".join(p.name for p, sy in zip(layer.parameters, sym, strict=True) if sy)
            notes.append(f"Jacobian blocks of symmetric parameter(s) {names} are compared on "
                         "symmetric directions only: every block is symmetrized, (J + Jᵀ)/2 "
                         "over the parameter's two axes, before comparing.")
        status = str(fwd.info.status[0])
        if status != "solved":
            notes.append(f"the layer did not solve this instance (status {status}); its "
                         "outputs and Jacobian are NaN, so every check fails.")
        return cls(layer, fwd, J, seconds, notes)

    def check_solution(self, ref_name: str, ref: Sequence[Any], tol: float,
                       measure: str) -> None:
        for o, ours, r in zip(self.layer.outputs, self.solution, ref, strict=True):
            self.checks.append(compare(ref_name, "solution", o.name, None, ours, r, tol,
                                       measure))

    def check_jacobian(self, ref_name: str, ref: Sequence[Sequence[Any]], tol: float,
                       measure: str) -> None:
        compared: Jacobian = []
        for o, row_ours, row_ref in zip(self.layer.outputs, self.jacobian, ref, strict=True):
            compared.append([])
            for p, sy, ours, r in zip(self.layer.parameters, self.symmetric, row_ours, row_ref,
                                      strict=True):
                r = np.asarray(r, dtype=float)
                if sy and r.shape == ours.shape:
                    r = symmetrize(r)
                compared[-1].append(r)
                self.checks.append(compare(ref_name, "jacobian", o.name, p.name, ours, r, tol,
                                           measure))
        self.jacobians[ref_name] = compared

    def nan_solution(self) -> list[np.ndarray]:
        return [np.full(o.shape, np.nan) for o in self.layer.outputs]

    def nan_jacobian(self) -> Jacobian:
        return [[np.full(o.shape + p.shape, np.nan) for p in self.layer.parameters]
                for o in self.layer.outputs]

    def report(self, name: str | None, settings: dict[str, Any]) -> Report:
        layer = self.layer
        return Report(
            name=name, layer=repr(layer),
            parameters=[{"name": p.name, "shape": list(p.shape)} for p in layer.parameters],
            outputs=[{"name": o.name, "shape": list(o.shape), "kind": o.kind}
                     for o in layer.outputs],
            cones=tuple(layer.template.dims.kinds()), status=str(self.fwd.info.status[0]),
            solver=_solver_summary(self.fwd), checks=self.checks, seconds=self.seconds,
            notes=self.notes, settings=settings, solutions=self.solutions,
            jacobians=self.jacobians,
        )


def _check_closed_form(cmp: _Comparison, args: list[np.ndarray], solution: Reference,
                       jacobian: Reference, tolerance: float) -> None:
    """The user's closed form, judged on the max abs error."""
    if solution is None and jacobian is None:
        return
    t0 = time.perf_counter()
    n_out, n_par = len(cmp.layer.outputs), len(cmp.layer.parameters)
    if solution is not None:
        ref = as_solution(solution(*args) if callable(solution) else solution, n_out)
        cmp.solutions[CLOSED_FORM] = [np.asarray(r, dtype=float) for r in ref]
        cmp.check_solution(CLOSED_FORM, ref, tolerance, "abs")
    if jacobian is not None:
        J = as_jacobian(jacobian(*args) if callable(jacobian) else jacobian, n_out, n_par)
        cmp.check_jacobian(CLOSED_FORM, J, tolerance, "abs")
    cmp.seconds[CLOSED_FORM] = time.perf_counter() - t0


def _check_finite_differences(cmp: _Comparison, args: list[np.ndarray], step: float,
                              tolerance: float, solver_args: dict | None,
                              on_step: Callable[[int], Any]) -> None:
    """Central differences of the layer's forward, judged on the relative error."""
    t0 = time.perf_counter()
    try:
        fd, unsolved, notes = finite_difference_jacobian(
            cmp.layer, args, step=step, solver_args=solver_args, on_step=on_step)
    except ParameterError as e:  # a perturbation left a declared domain (PSD, ...)
        cmp.notes.append(f"finite differences failed: {e}")
        fd, unsolved, notes = cmp.nan_jacobian(), 0, []
    cmp.seconds[FINITE_DIFFERENCES] = time.perf_counter() - t0
    cmp.notes.extend(f"finite differences: {m}" for m in notes)
    if unsolved:
        cmp.notes.append(f"finite differences: {unsolved} perturbed instances were not solved "
                         "(NaN entries).")
    cmp.check_jacobian(FINITE_DIFFERENCES, fd, tolerance, "rel")


def _check_diffcp(cmp: _Comparison, args: list[np.ndarray], at_ours: bool, tolerance: float,
                  on_step: Callable[[int], Any]) -> bool:
    """diffcp's solution and derivative, judged on the relative error. Returns whether the
    derivative was taken at our solution."""
    at = None
    if cmp.layer.template.dims.power:
        cmp.notes.append("diffcp has no power cones; skipped.")
        return False
    t0 = time.perf_counter()
    if at_ours and cmp.fwd.ok[0]:
        x, y, s, _ = cmp.fwd.state()
        at = (x[0], y[0], s[0])
    try:
        d_x, d_J, notes = diffcp_jacobian(cmp.layer, args, at=at, on_step=on_step)
    except ImportError:
        cmp.notes.append("diffcp is not installed (pip install 'declarative[reference]'); "
                         "skipped.")
    except Exception as e:  # noqa: BLE001 - diffcp failing is a finding, not a crash
        cmp.notes.append(f"diffcp failed: {type(e).__name__}: {e}")
        cmp.check_solution(DIFFCP, cmp.nan_solution(), tolerance, "rel")
        cmp.check_jacobian(DIFFCP, cmp.nan_jacobian(), tolerance, "rel")
    else:
        cmp.notes.extend(f"diffcp: {m}" for m in notes)
        cmp.solutions[DIFFCP] = d_x
        cmp.check_solution(DIFFCP, d_x, tolerance, "rel")
        cmp.check_jacobian(DIFFCP, d_J, tolerance, "rel")
    cmp.seconds[DIFFCP] = time.perf_counter() - t0
    return at is not None
