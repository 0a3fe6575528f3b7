"""The zoo runner behind ``declarative verify``: every zoo problem through
:func:`declarative.verify` against its closed form, one :class:`ZooResult` per problem,
printed as a table row by row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import declarative as dl
from declarative import problems
from declarative.tools.format import Column, Columns, finite_or_none, sci, size_text
from declarative.verification.report import (
    CLOSED_FORM,
    DIFFCP,
    DIFFCP_TOLERANCE,
    FD_STEP,
    FD_TOLERANCE,
    FINITE_DIFFERENCES,
    TOLERANCE,
    Report,
)
from declarative.verification.run import verify


@dataclass
class ZooResult:
    """One zoo problem's worst errors over the sampled instances.

    ``solution_error`` and ``jacobian_error`` are max abs errors against the closed form
    (what ``passed`` judges, at :data:`TOLERANCE`); ``fd_error`` and ``diffcp_error`` are
    the worst Jacobian errors relative to max(1, ‖reference‖∞) against finite differences
    and diffcp (None when not run), informational, judged by ``fd_ok``/``diffcp_ok``;
    ``diffcp_solution_error`` likewise for diffcp's own solve.
    """

    problem: str
    cones: tuple[str, ...]
    sizes: dict[str, int]
    instances: int
    solution_error: float
    jacobian_error: float
    seconds: float                      # ours per instance: forward + Jacobian
    statuses: list[str]
    fd_error: float | None = None
    diffcp_error: float | None = None
    diffcp_solution_error: float | None = None
    total_seconds: float = 0.0          # everything, references included
    error: str | None = None            # an exception that stopped the check
    tolerance: float = TOLERANCE
    reports: list[Report] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return self.error is None and max(self.solution_error,
                                           self.jacobian_error) <= self.tolerance

    @property
    def fd_ok(self) -> bool | None:
        return None if self.fd_error is None else self.fd_error <= FD_TOLERANCE

    @property
    def diffcp_ok(self) -> bool | None:
        if self.diffcp_error is None:
            return None
        return max(self.diffcp_error, self.diffcp_solution_error or 0.0) <= DIFFCP_TOLERANCE

    def as_dict(self) -> dict:
        return {
            "problem": self.problem, "cones": list(self.cones), "sizes": dict(self.sizes),
            "instances": self.instances,
            "solution_error": finite_or_none(self.solution_error),
            "jacobian_error": finite_or_none(self.jacobian_error),
            "fd_error": finite_or_none(self.fd_error),
            "diffcp_error": finite_or_none(self.diffcp_error),
            "diffcp_solution_error": finite_or_none(self.diffcp_solution_error),
            "seconds": self.seconds, "total_seconds": self.total_seconds,
            "statuses": self.statuses, "tolerance": self.tolerance, "passed": self.passed,
            "fd_ok": self.fd_ok, "diffcp_ok": self.diffcp_ok, "error": self.error,
        }


def check_zoo(name: str, seeds: Sequence[int] = range(3), solver_args: dict | None = None,
              *, finite_differences: bool = False, diffcp: bool = False,
              tolerance: float = TOLERANCE, progress: bool | None = False,
              **sizes: int) -> ZooResult:
    """Compile zoo problem ``name``; compare solution and Jacobian with its closed form
    at each seed's instance (and, if asked, with finite differences and diffcp)."""
    t_start = time.perf_counter()
    mod = problems.get(name)
    sizes = {**mod.SIZES, **sizes}
    prob, params, variables = mod.build(**sizes)
    layer = dl.compile(prob, params, variables, on_failure="nan",
                       **problems.compile_options(mod))
    reports: list[Report] = []
    for seed in seeds:
        inst = problems.instance(name, seed, **sizes)
        report = verify(
            layer, inst.params, solution=inst.solution, jacobian=inst.jacobian,
            finite_differences=finite_differences, diffcp=diffcp, solver_args=solver_args,
            tolerance=tolerance, name=f"{name} (seed {seed})", progress=progress)
        assert isinstance(report, Report)  # a compiled layer's report (not a node's)
        reports.append(report)

    def worst(reference: str, quantity: str, measure: str = "abs") -> float | None:
        errs = [r.error(reference, quantity, measure) for r in reports]
        found = [e for e in errs if e is not None]
        return max(found) if found else None

    ours = sum(r.seconds["forward"] + r.seconds["jacobian"] for r in reports)
    return ZooResult(
        problem=name, cones=layer.template.dims.kinds(), sizes=sizes, instances=len(reports),
        solution_error=worst(CLOSED_FORM, "solution") or 0.0,
        jacobian_error=worst(CLOSED_FORM, "jacobian") or 0.0,
        seconds=ours / max(len(reports), 1), statuses=[r.status for r in reports],
        fd_error=worst(FINITE_DIFFERENCES, "jacobian", "rel"),
        diffcp_error=worst(DIFFCP, "jacobian", "rel"),
        diffcp_solution_error=worst(DIFFCP, "solution", "rel"),
        total_seconds=time.perf_counter() - t_start, tolerance=tolerance, reports=reports,
    )


def failed(name: str, error: BaseException, t0: float) -> ZooResult:
    """The result of a problem whose check raised ``error`` (started at ``t0``)."""
    mod = problems.get(name)
    inf = float("inf")
    return ZooResult(problem=name, cones=tuple(mod.CONES), sizes=dict(mod.SIZES),
                     instances=0, solution_error=inf, jacobian_error=inf, seconds=0.0,
                     statuses=[], total_seconds=time.perf_counter() - t0,
                     error=f"{type(error).__name__}: {error}")


class ZooTable:
    """The verify table, printed row by row (column widths fixed up front)."""

    def __init__(self, names: Sequence[str], fd: bool, diffcp: bool) -> None:
        mods = [problems.get(n) for n in names]
        cols = [
            Column("problem", max(7, *(len(n) for n in names))),
            Column("cones", max(5, *(len("+".join(m.CONES)) for m in mods))),
            Column("sizes", max(5, *(len(size_text(m.SIZES)) for m in mods))),
            Column("solution", 10, right=True),
            Column("Jacobian", 10, right=True),
        ]
        if fd:
            cols.append(Column("Jac vs FD", 9, right=True))
        if diffcp:
            cols.append(Column("Jac vs diffcp", 13, right=True))
        cols += [Column("ours/inst", 9, right=True), Column("total", 6, right=True),
                 Column("ok", 3)]
        self.columns = Columns(cols)
        self.fd, self.diffcp = fd, diffcp

    def header(self) -> str:
        return self.columns.header(groups=[(3, 4, "vs closed form")])

    def row(self, r: ZooResult) -> str:
        vals = [r.problem, "+".join(r.cones), size_text(r.sizes), sci(r.solution_error),
                sci(r.jacobian_error)]
        if self.fd:
            vals.append(sci(r.fd_error) + ("" if r.fd_ok in (None, True) else "!"))
        if self.diffcp:
            vals.append(sci(r.diffcp_error) + ("" if r.diffcp_ok in (None, True) else "!"))
        vals += [f"{r.seconds * 1e3:.1f}ms", f"{r.total_seconds:.2f}s",
                 "yes" if r.passed else ("ERR" if r.error else "NO")]
        line = self.columns.line(vals)
        if r.error:
            line += f"\n    error: {r.error}"
        return line


def summary(results: Sequence[ZooResult], tolerance: float, seeds: int, fd: bool,
            diffcp: bool, solver_args: dict[str, Any], elapsed: float) -> list[str]:
    """The lines under the table: how many passed, against what."""
    failed_names = [r.problem for r in results if not r.passed]
    settings = "default settings" if not solver_args else f"solver_args {solver_args}"
    lines = [f"{len(results) - len(failed_names)} of {len(results)} problems within "
             f"{tolerance:g} (max abs error, float64, {settings}) of the closed-form solution "
             f"and Jacobian ({seeds} instance{'s' if seeds > 1 else ''} each, {elapsed:.1f}s)."]
    if fd:
        n_ok = sum(bool(r.fd_ok) for r in results)
        lines.append(f"Jac vs FD (informational): {n_ok} of {len(results)} within "
                     f"{FD_TOLERANCE:g} (max abs / max(1, |J|)), central differences, step "
                     f"{FD_STEP:g}*max(1, |theta|).")
    if diffcp:
        compared = [r for r in results if r.diffcp_ok is not None]  # diffcp has no power cones
        n_ok = sum(bool(r.diffcp_ok) for r in compared)
        lines.append(f"Jac vs diffcp (informational): {n_ok} of {len(compared)} within "
                     f"{DIFFCP_TOLERANCE:g} (max abs / max(1, |J|)), diffcp on the same cone "
                     "program, dense mode.")
    if failed_names:
        lines.append(f"FAILED: {', '.join(failed_names)}")
    return lines


def document(results: Sequence[ZooResult], tolerance: float, seeds: int, fd: bool,
             diffcp: bool, solver_args: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The JSON document of a verify run: the settings, then every problem and instance."""
    return {
        "command": "verify",
        "passed": all(r.passed for r in results),
        "tolerance": tolerance,
        "fd_tolerance": FD_TOLERANCE if fd else None,
        "fd_step": FD_STEP if fd else None,
        "diffcp_tolerance": DIFFCP_TOLERANCE if diffcp else None,
        "seeds": seeds,
        "solver_args": solver_args,
        "seconds": elapsed,
        "problems": [{**r.as_dict(), "instances_detail": [rep.as_dict() for rep in r.reports]}
                     for r in results],
    }


def plot(r: ZooResult, directory: str) -> str | None:
    """DIRECTORY/<problem>.png for the first instance: closed form, ours, difference."""
    from declarative.tools.plot import plot_jacobians

    if not r.reports or CLOSED_FORM not in r.reports[0].jacobians:
        return None
    rep = r.reports[0]
    path = os.path.join(directory, f"{r.problem}.png")
    return plot_jacobians(rep, path, title=f"{rep.name or r.problem}, {size_text(r.sizes)}: "
                          "Jacobian d(outputs)/d(parameters), closed form vs ours")
