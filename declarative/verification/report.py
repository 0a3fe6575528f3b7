"""What :func:`declarative.verify` reports: one :class:`Check` per comparison, gathered in a
:class:`Report` that prints as a table and round-trips through strict JSON.

A check compares ours with one reference on one quantity: ``abs_error`` is
max |ours − reference|, ``rel_error`` is ``abs_error / max(1, ‖reference‖∞)``. The closed
form is judged on the absolute error at :data:`TOLERANCE` (what the project promises at
default settings); finite differences and diffcp, informational, on the relative error at
:data:`FD_TOLERANCE` and :data:`DIFFCP_TOLERANCE`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from declarative.promise import ACCURACY
from declarative.tools.format import (
    array_from_json,
    array_to_json,
    finite_or_none,
    json_text,
    none_to_inf,
    sci,
    table,
)

# What the project promises at default settings: max abs error against the closed form.
TOLERANCE = ACCURACY
# Informational references, on the error relative to max(1, ‖reference‖∞).
FD_TOLERANCE = 1e-6
DIFFCP_TOLERANCE = 1e-6
# Central-difference step, scaled by max(1, |θ_k|) per entry.
FD_STEP = 1e-5

CLOSED_FORM, FINITE_DIFFERENCES, DIFFCP = "closed_form", "finite_differences", "diffcp"
REFERENCES = (CLOSED_FORM, FINITE_DIFFERENCES, DIFFCP)
LABELS = {CLOSED_FORM: "closed form", FINITE_DIFFERENCES: "finite diff.", DIFFCP: "diffcp"}

Jacobian = list[list[np.ndarray]]


@dataclass(frozen=True)
class Check:
    """One comparison of ours against one reference.

    ``abs_error`` is max |ours − reference| (inf when the shapes differ or either holds
    NaN); ``rel_error`` is ``abs_error / max(1, max |reference|)``. ``measure`` says
    which of the two ``tolerance`` bounds.
    """

    reference: str            # "closed_form" | "finite_differences" | "diffcp"
    quantity: str             # "solution" | "jacobian"
    output: str
    parameter: str | None     # None for a solution check
    shape: tuple[int, ...]    # what ours has (the expected shape)
    reference_shape: tuple[int, ...]
    abs_error: float
    rel_error: float
    tolerance: float
    measure: str              # "abs" | "rel"

    @property
    def error(self) -> float:
        """The error the tolerance applies to."""
        return self.abs_error if self.measure == "abs" else self.rel_error

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference, "quantity": self.quantity, "output": self.output,
            "parameter": self.parameter, "shape": list(self.shape),
            "reference_shape": list(self.reference_shape),
            "abs_error": finite_or_none(self.abs_error),
            "rel_error": finite_or_none(self.rel_error),
            "tolerance": self.tolerance, "measure": self.measure, "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(
            reference=d["reference"], quantity=d["quantity"], output=d["output"],
            parameter=d["parameter"], shape=tuple(d["shape"]),
            reference_shape=tuple(d["reference_shape"]),
            abs_error=none_to_inf(d["abs_error"]), rel_error=none_to_inf(d["rel_error"]),
            tolerance=float(d["tolerance"]), measure=d["measure"],
        )


@dataclass
class Report:
    """Everything :func:`verify` found at one instance.

    ``checks`` holds one :class:`Check` per (reference, output) for solutions and per
    (reference, output, parameter) for Jacobian blocks. ``solutions`` and ``jacobians``
    hold the arrays compared (keys ``"ours"`` and the reference names; the Jacobian blocks
    of a symmetric parameter symmetrized); they are in ``as_dict(arrays=True)`` only.
    ``passed``: the instance was solved and every check is within its tolerance.
    """

    layer: str
    parameters: list[dict[str, Any]]   # name, shape
    outputs: list[dict[str, Any]]      # name, shape, kind
    cones: tuple[str, ...]
    status: str
    solver: dict[str, Any]             # SCS status, iterations, residuals, refine steps
    checks: list[Check]
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    solutions: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    jacobians: dict[str, Jacobian] = field(default_factory=dict, repr=False)

    # -- summaries ---------------------------------------------------------------------
    @property
    def solved(self) -> bool:
        return self.status == "solved"

    @property
    def passed(self) -> bool:
        """Solved, and every check within its tolerance."""
        return self.solved and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def select(self, reference: str | None = None, quantity: str | None = None) -> list[Check]:
        return [c for c in self.checks if (reference is None or c.reference == reference)
                and (quantity is None or c.quantity == quantity)]

    def error(self, reference: str, quantity: str = "jacobian", measure: str = "abs"
              ) -> float | None:
        """Worst error against ``reference`` over all blocks (None if it was not checked)."""
        cs = self.select(reference, quantity)
        if not cs:
            return None
        return max(c.abs_error if measure == "abs" else c.rel_error for c in cs)

    # -- serialization -----------------------------------------------------------------
    def as_dict(self, arrays: bool = False) -> dict[str, Any]:
        d = {
            "name": self.name, "layer": self.layer, "parameters": self.parameters,
            "outputs": self.outputs, "cones": list(self.cones), "status": self.status,
            "passed": self.passed, "solver": self.solver,
            "checks": [c.as_dict() for c in self.checks], "seconds": self.seconds,
            "notes": self.notes, "settings": self.settings,
        }
        if arrays:
            d["solutions"] = {k: [array_to_json(a) for a in v] for k, v in self.solutions.items()}
            d["jacobians"] = {k: [[array_to_json(a) for a in row] for row in v]
                              for k, v in self.jacobians.items()}
        return d

    def to_json(self, arrays: bool = False, **kwargs: Any) -> str:
        """JSON text (strict: non-finite errors are written as null and read back as inf)."""
        return json_text(self.as_dict(arrays=arrays), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            name=d.get("name"), layer=d["layer"], parameters=d["parameters"],
            outputs=d["outputs"], cones=tuple(d["cones"]), status=d["status"],
            solver=d["solver"], checks=[Check.from_dict(c) for c in d["checks"]],
            seconds=d["seconds"], notes=list(d.get("notes", [])),
            settings=d.get("settings", {}),
            solutions={k: [array_from_json(a) for a in v]
                       for k, v in d.get("solutions", {}).items()},
            jacobians={k: [[array_from_json(a) for a in row] for row in v]
                       for k, v in d.get("jacobians", {}).items()},
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    # -- the table ---------------------------------------------------------------------
    def __str__(self) -> str:
        s = self.solver
        lines = [f"verify{' ' + self.name if self.name else ''}: {self.layer}"]
        status = f"status: {self.status}"
        if s.get("scs_iterations") is not None:
            status += (f" | SCS {s['scs_status']} after {s['scs_iterations']} iterations"
                       f" | residual {sci(s.get('residual_before'))} -> "
                       f"{sci(s.get('residual_after'))} ({s.get('refine_steps')} Newton step(s))")
        lines.append(status)
        sec = self.seconds
        lines.append("time: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sec.items()))
        if self.checks:
            header = ("reference", "quantity", "output", "parameter", "shape", "max abs err",
                      "rel err", "tolerance", "ok")
            lines += ["", table(header, [_row(c) for c in self.checks],
                                right=[False] * len(header))]
        for note in self.notes:
            lines.append(f"note: {note}")
        n_ok = sum(c.passed for c in self.checks)
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"{verdict}: {n_ok} of {len(self.checks)} checks within tolerance"
                     + ("" if self.solved else f"; the instance was not solved ({self.status})")
                     + ".")
        return "\n".join(lines)


def _row(c: Check) -> tuple[str, ...]:
    """One line of the report's table."""
    shape = "x".join(map(str, c.shape)) or "scalar"
    if c.reference_shape != c.shape:
        shape += f" (ref {'x'.join(map(str, c.reference_shape)) or 'scalar'})"
    return (LABELS.get(c.reference, c.reference), c.quantity, c.output, c.parameter or "-",
            shape, sci(c.abs_error), sci(c.rel_error), f"{c.measure} <= {c.tolerance:.0e}",
            "yes" if c.passed else "NO")


def _max_abs(a: Any, b: Any) -> float:
    """max |a − b|; inf when the shapes differ or either holds NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    e = float(np.max(np.abs(a - b)))
    return float("inf") if math.isnan(e) else e


def compare(reference: str, quantity: str, output: str, parameter: str | None,
            ours: np.ndarray, ref: Any, tolerance: float, measure: str) -> Check:
    """``ours`` against ``ref`` as one :class:`Check` (see the module docstring)."""
    ref = np.asarray(ref, dtype=float)
    err = _max_abs(ours, ref)
    scale = float(np.max(np.abs(ref))) if ref.size and np.all(np.isfinite(ref)) else 0.0
    return Check(reference=reference, quantity=quantity, output=output, parameter=parameter,
                 shape=tuple(np.shape(ours)), reference_shape=tuple(ref.shape),
                 abs_error=err, rel_error=err / max(1.0, scale), tolerance=tolerance,
                 measure=measure)


def as_solution(value: Any, n_out: int) -> list:
    """A user's solution: a list with one array per output (a bare array for one output)."""
    if isinstance(value, np.ndarray) and n_out == 1 and value.dtype != object:
        return [value]
    value = list(value)
    if len(value) != n_out:
        raise ValueError(f"the reference solution has {len(value)} entries; the layer has "
                         f"{n_out} output(s).")
    return value


def as_jacobian(value: Any, n_out: int, n_par: int) -> list[list]:
    """A user's Jacobian: J[i][j] per (output, parameter); a bare array when both are one."""
    if isinstance(value, np.ndarray) and n_out == 1 and n_par == 1 and value.dtype != object:
        return [[value]]
    rows = [list(r) for r in value]
    if len(rows) != n_out or any(len(r) != n_par for r in rows):
        raise ValueError(
            f"the reference Jacobian must be a list of {n_out} row(s) (one per output) of "
            f"{n_par} block(s) (one per parameter); got {len(rows)} row(s) of lengths "
            f"{[len(r) for r in rows]}."
        )
    return rows


def jacobian_matrix(J: Jacobian, output_shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """J[i][j] blocks as one 2-D matrix: outputs (each flattened row-major) stacked down,
    parameters (each flattened row-major) side by side."""
    rows = []
    for row, shape in zip(J, output_shapes, strict=True):
        size = int(np.prod(shape, dtype=int))
        rows.append(np.concatenate([np.asarray(b, dtype=float).reshape(size, -1) for b in row],
                                   axis=1))
    return np.concatenate(rows, axis=0)


