"""verify: check a compiled layer against the math.

:func:`verify` checks ANY compiled layer at one set of parameter values. It solves
once, computes the full Jacobian (``Forward.jacobian``) and compares solution and
Jacobian with up to three references:

``closed_form``
    a solution and/or Jacobian the user supplies (functions of the parameter values,
    or the arrays themselves), with the zoo's conventions: ``solution(*params)`` is a
    list with one array per output, ``jacobian(*params)[i][j]`` is ∂output_i/∂param_j
    shaped ``output_i.shape + param_j.shape``.  Pass/fail on the max abs error,
    tolerance :data:`TOLERANCE` (1e-8, what the project promises at default settings).
``finite_differences``
    central differences of the layer's own forward pass, all perturbed instances solved
    as one batch; step ``h = FD_STEP · max(1, |θ_k|)`` per entry. FD_STEP = 1e-5: on the
    zoo it gives ≤ 1e-8 against the closed forms, where 1e-6 gives 2e-8 (solver noise / h)
    and 1e-4 gives 1e-6 (truncation, h²). Parameters declared nonneg/pos/nonpos/neg get
    second-order one-sided differences within two steps of 0; parameters declared
    symmetric/PSD/NSD are moved along symmetric directions (E_kl + E_lk), and for them
    every Jacobian block is compared symmetrized, (J + Jᵀ)/2 over the parameter's axes
    (only symmetric directions are meaningful; conventions differ on the rest). This
    checks the derivative of the whole pipeline, not the solution itself, and assumes no
    kink of the solution map within h of θ. It passes on the error relative to
    max(1, ‖reference‖∞) ≤ :data:`FD_TOLERANCE` (1e-6).
``diffcp``
    diffcp (Agrawal et al. 2019) on the very same cone program (c, A, b, K) that the
    layer's template builds (a quadratic objective ½xᵀPx, which diffcp's exact modes do
    not take, rewritten with one more second-order cone). Solution: diffcp's own solve
    (SCS, cold start, eps 1e-9), an independent check of ours. Jacobian: diffcp's
    derivative (``mode="dense"``) evaluated at our refined solution, so that it differs
    from ours only by how the derivative is computed, along every parameter direction
    (dc, dA, db) = (C e_k, F e_k, G e_k), mapped to the user's outputs with
    ``template.recover``. It checks the solve and the derivative, not the compilation.
    diffcp's exponential-cone derivative is accurate to ~1e-8 and its SCS solution to
    ~1e-8, so it passes on the relative error ≤ :data:`DIFFCP_TOLERANCE` (1e-6).

The finite-difference and diffcp thresholds are informational: far looser than the
closed form's, they flag a wrong derivative, not a slightly inaccurate one.

The result is a :class:`Report`: one :class:`Check` per (reference, output[, parameter]),
the solver's diagnostics, timings and notes; ``str(report)`` is a table,
``report.to_json()`` / ``Report.from_json`` round-trip it.

:func:`check_zoo` runs :func:`verify` on sampled instances of a zoo problem (problems/)
against the problem's closed form; ``declarative verify`` (cli.py) prints it as a table.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import declarative as dl
from declarative.errors import ParameterError
from declarative.layer import Layer

# What the project holds itself to at default settings (DESIGN.md): max abs error.
TOLERANCE = 1e-8
# Informational references, on the error relative to max(1, ‖reference‖∞).
FD_TOLERANCE = 1e-6
DIFFCP_TOLERANCE = 1e-6
# Central-difference step, scaled by max(1, |θ_k|) per entry.
FD_STEP = 1e-5
# Perturbed instances per forward call of the finite differences (bounds memory).
FD_CHUNK = 512
# SCS settings for diffcp's own (cold) solve.
DIFFCP_SCS = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 20_000}

CLOSED_FORM, FINITE_DIFFERENCES, DIFFCP = "closed_form", "finite_differences", "diffcp"
REFERENCES = (CLOSED_FORM, FINITE_DIFFERENCES, DIFFCP)
_LABEL = {CLOSED_FORM: "closed form", FINITE_DIFFERENCES: "finite diff.", DIFFCP: "diffcp"}

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
            "abs_error": _finite_or_none(self.abs_error),
            "rel_error": _finite_or_none(self.rel_error),
            "tolerance": self.tolerance, "measure": self.measure, "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(
            reference=d["reference"], quantity=d["quantity"], output=d["output"],
            parameter=d["parameter"], shape=tuple(d["shape"]),
            reference_shape=tuple(d["reference_shape"]),
            abs_error=_none_to_inf(d["abs_error"]), rel_error=_none_to_inf(d["rel_error"]),
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
            d["solutions"] = {k: [_tolist(a) for a in v] for k, v in self.solutions.items()}
            d["jacobians"] = {k: [[_tolist(a) for a in row] for row in v]
                              for k, v in self.jacobians.items()}
        return d

    def to_json(self, arrays: bool = False, **kwargs: Any) -> str:
        """JSON text (strict: non-finite errors are written as null and read back as inf)."""
        kwargs.setdefault("indent", 2)
        return json.dumps(self.as_dict(arrays=arrays), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            name=d.get("name"), layer=d["layer"], parameters=d["parameters"],
            outputs=d["outputs"], cones=tuple(d["cones"]), status=d["status"],
            solver=d["solver"], checks=[Check.from_dict(c) for c in d["checks"]],
            seconds=d["seconds"], notes=list(d.get("notes", [])),
            settings=d.get("settings", {}),
            solutions={k: [_fromlist(a) for a in v] for k, v in d.get("solutions", {}).items()},
            jacobians={k: [[_fromlist(a) for a in row] for row in v]
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
                       f" | residual {_fmt(s.get('residual_before'))} -> "
                       f"{_fmt(s.get('residual_after'))} ({s.get('refine_steps')} Newton step(s))")
        lines.append(status)
        sec = self.seconds
        lines.append("time: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sec.items()))
        if self.checks:
            rows = [("reference", "quantity", "output", "parameter", "shape", "max abs err",
                     "rel err", "tolerance", "ok")]
            for c in self.checks:
                shape = "x".join(map(str, c.shape)) or "scalar"
                if c.reference_shape != c.shape:
                    shape += f" (ref {'x'.join(map(str, c.reference_shape)) or 'scalar'})"
                rows.append((_LABEL.get(c.reference, c.reference), c.quantity, c.output,
                             c.parameter or "-", shape, _fmt(c.abs_error), _fmt(c.rel_error),
                             f"{c.measure} <= {c.tolerance:.0e}", "yes" if c.passed else "NO"))
            widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
            lines.append("")
            for k, r in enumerate(rows):
                lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
                             .rstrip())
                if k == 0:
                    lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
        for note in self.notes:
            lines.append(f"note: {note}")
        n_ok = sum(c.passed for c in self.checks)
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"{verdict}: {n_ok} of {len(self.checks)} checks within tolerance"
                     + ("" if self.solved else f"; the instance was not solved ({self.status})")
                     + ".")
        return "\n".join(lines)


# -- helpers -------------------------------------------------------------------------------
def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _none_to_inf(v: float | None) -> float:
    return float("inf") if v is None else float(v)


def _tolist(a: Any) -> Any:
    """Nested lists of floats, NaN/inf as None (strict JSON)."""
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return float(a) if np.isfinite(a) else None
    return [_tolist(x) for x in a]


def _fromlist(v: Any) -> np.ndarray:
    return np.array(v, dtype=float)  # None → nan


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.1e}" if math.isfinite(v) else str(v)


def _absmax(a: np.ndarray) -> float:
    """max |a| over the finite entries (0 if none)."""
    a = np.abs(np.asarray(a, dtype=float))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def _max_abs(a: Any, b: Any) -> float:
    """max |a − b|; inf when the shapes differ or either holds NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    e = float(np.max(np.abs(a - b)))
    return float("inf") if math.isnan(e) else e


def _compare(reference: str, quantity: str, output: str, parameter: str | None,
             ours: np.ndarray, ref: Any, tolerance: float, measure: str) -> Check:
    ref = np.asarray(ref, dtype=float)
    err = _max_abs(ours, ref)
    scale = float(np.max(np.abs(ref))) if ref.size and np.all(np.isfinite(ref)) else 0.0
    return Check(reference=reference, quantity=quantity, output=output, parameter=parameter,
                 shape=tuple(np.shape(ours)), reference_shape=tuple(ref.shape),
                 abs_error=err, rel_error=err / max(1.0, scale), tolerance=tolerance,
                 measure=measure)


def _as_solution(value: Any, n_out: int) -> list:
    """A user's solution: a list with one array per output (a bare array for one output)."""
    if isinstance(value, np.ndarray) and n_out == 1 and value.dtype != object:
        return [value]
    value = list(value)
    if len(value) != n_out:
        raise ValueError(f"the reference solution has {len(value)} entries; the layer has "
                         f"{n_out} output(s).")
    return value


def _as_jacobian(value: Any, n_out: int, n_par: int) -> list[list]:
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


# -- the references ------------------------------------------------------------------------
_SYMMETRIC = ("symmetric", "PSD", "NSD")
_SIGN = {"nonneg": (0.0, True), "pos": (0.0, False), "nonpos": (0.0, True), "neg": (0.0, False)}


def symmetric_parameter(spec: Any) -> bool:
    """Declared symmetric (or PSD/NSD): only symmetric directions are meaningful for it."""
    return any(a in _SYMMETRIC for a in getattr(spec, "domain", ()))


def _symmetrize(block: np.ndarray) -> np.ndarray:
    """The part of a Jacobian block that acts on symmetric directions of a matrix parameter
    (its last two axes), written symmetrically: (J + Jᵀ)/2 over those axes."""
    block = np.asarray(block, dtype=float)
    if block.ndim < 2 or block.shape[-1] != block.shape[-2]:
        return block
    return (block + np.swapaxes(block, -1, -2)) / 2


# Finite-difference stencils (offsets in steps, weights): central, and second-order
# one-sided ones for entries within two steps of the boundary of a sign-constrained parameter.
_CENTRAL = ((1.0, -1.0), (0.5, -0.5))
_FORWARD = ((0.0, 1.0, 2.0), (-1.5, 2.0, -0.5))
_BACKWARD = ((0.0, -1.0, -2.0), (1.5, -2.0, 0.5))


def _fd_directions(spec: Any, value: np.ndarray, step: float):
    """(entry index, direction, step h, stencil) for each direction of one parameter.

    Plain parameters: every entry, central differences. Sign-constrained ones (nonneg,
    pos, ...): one-sided (second order) at entries within two steps of the boundary.
    Symmetric/PSD/NSD ones: the symmetric directions E_kl + E_lk (k < l) and E_kk.
    """
    domain = getattr(spec, "domain", ())
    if symmetric_parameter(spec) and value.ndim == 2 and value.shape[0] == value.shape[1]:
        n = value.shape[0]
        for k in range(n):
            for m in range(k, n):
                d = np.zeros_like(value)
                d[k, m] = d[m, k] = 1.0
                yield (k, m), d, _step(float(value[k, m]), step), _CENTRAL
        return
    sign = next((a for a in domain if a in _SIGN), None)
    for idx in np.ndindex(value.shape):
        d = np.zeros_like(value)
        d[idx] = 1.0
        v = float(value[idx])
        h = _step(v, step)
        stencil = _CENTRAL
        if sign in ("nonneg", "pos") and v - h <= 0.0:
            stencil = _FORWARD
        elif sign in ("nonpos", "neg") and v + h >= 0.0:
            stencil = _BACKWARD
        yield idx, d, h, stencil


def _step(v: float, step: float) -> float:
    """h = step · max(1, |v|), rounded so that v + h is exact."""
    h = step * max(1.0, abs(v))
    return (v + h) - v


def finite_difference_jacobian(layer: Layer, values: Sequence[Any], *,
                               step: float = FD_STEP, solver_args: dict | None = None,
                               chunk: int = FD_CHUNK, on_step: Callable[[int], Any] | None = None
                               ) -> tuple[Jacobian, int, list[str]]:
    """Central differences of ``layer.forward`` at unbatched ``values``.

    Entry k of every parameter moves by ±h_k, h_k = step · max(1, |θ_k|); all the
    perturbed instances are solved as batches of about ``chunk``. Parameters declared
    with a sign (nonneg, ...) get second-order one-sided differences near their boundary;
    symmetric (PSD, NSD) ones are perturbed along symmetric directions, and their blocks
    come back symmetrized (see `_symmetrize`). Returns J[i][j] (NaN where a perturbed
    instance was not solved), the number of unsolved instances, and notes. ``on_step(k)``
    is called after each batch with the number of directions it covered.
    """
    values = [np.asarray(v, dtype=float) for v in values]
    P = layer.parameters
    entries = [(j, *e) for j, (spec, v) in enumerate(zip(P, values, strict=True))
               for e in _fd_directions(spec, v, step)]
    notes = []
    one_sided = sorted({P[e[0]].name for e in entries if e[4] is not _CENTRAL})
    if one_sided:
        notes.append("one-sided differences for the entries of sign-constrained parameter(s) "
                     f"{', '.join(one_sided)} within two steps of 0.")
    J = [[np.full(o.shape + p.shape, np.nan) for p in P] for o in layer.outputs]
    unsolved = 0
    lo = 0
    while lo < len(entries):
        part, B = [], 0
        while lo < len(entries) and (not part or B + len(entries[lo][4][0]) <= chunk):
            part.append(entries[lo])
            B += len(entries[lo][4][0])
            lo += 1
        batch = [np.repeat(v[None], B, axis=0) for v in values]
        first = []
        row = 0
        for j, _, d, h, (offsets, _) in part:
            first.append(row)
            for t in offsets:
                batch[j][row] += (t * h) * d
                row += 1
        fwd = layer.forward(batch, solver_args=solver_args, on_failure="nan")
        if on_step is not None:
            on_step(len(part))
        unsolved += int(np.count_nonzero(~fwd.ok))
        for i, out in enumerate(fwd.outputs):
            for (j, idx, _, h, (_, weights)), r0 in zip(part, first, strict=True):
                deriv = sum(w * out[r0 + k] for k, w in enumerate(weights)) / h
                if len(idx) == 2 and symmetric_parameter(P[j]) and idx[0] != idx[1]:
                    J[i][j][(..., *idx)] = J[i][j][(..., idx[1], idx[0])] = deriv / 2
                else:
                    J[i][j][(..., *idx)] = deriv
    return J, unsolved, notes


class _LinearConeProgram:
    """The layer's cone program at one θ with a linear objective, as diffcp needs it.

    diffcp's exact modes take min cᵀx s.t. Ax + s = b, s ∈ K only. A template with a
    quadratic objective ½xᵀPx (P supported on the variables J) is rewritten with one more
    variable τ and one more second-order cone, appended after the existing ones:

        min cᵀx + τ   s.t.  ((τ+1)/√2, (τ−1)/√2, S x_J) ∈ SOC,   S = P_JJ^{1/2},

    i.e. x_JᵀP_JJ x_J ≤ 2τ: same x, same duals of the original rows. A parameter direction
    that moves P by dP moves the optimality conditions exactly as dc = dP x* does (P enters
    them only through P x), so it is passed to diffcp as that change of c, at the solution
    x* where the derivative is taken; no derivative of the square root is needed, and a
    singular P is fine.
    """

    def __init__(self, t: Any, theta: np.ndarray) -> None:
        self.t = t
        c, a, b = (z[0] for z in t.apply(theta[None]))
        A = t.matrix(a)
        self.quadratic = bool(getattr(t, "quadratic", False))
        cone = t.dims.scs()
        if not self.quadratic:
            self.A, self.b, self.c, self.cone = A, b, c, cone
            return
        import scipy.sparse as sp

        P = t.P_matrix(t.apply_P(theta[None])[0]).toarray()
        self.J = J = np.unique(t.P_rows)
        PJ = P[np.ix_(J, J)]
        lam, V = np.linalg.eigh((PJ + PJ.T) / 2)
        scale = max(1.0, float(np.abs(lam).max(initial=0.0)))
        if lam.min(initial=0.0) < -1e-10 * scale:
            raise ValueError("the quadratic objective's P is not PSD "
                             f"(eigenvalue {lam.min():.1e}).")
        self.S = (V * np.sqrt(np.clip(lam, 0.0, None))) @ V.T
        q, n, dims = J.size, t.n, t.dims
        self.pos = dims.zero + dims.nonneg + sum(dims.soc)
        self.k = q + 2
        r2 = 1 / np.sqrt(2)
        soc = np.zeros((q + 2, n + 1))
        soc[0, n] = soc[1, n] = -r2
        soc[2:, J] = -self.S
        Ax = sp.hstack([A, sp.csc_matrix((t.m, 1))], format="csr")
        self.A = sp.vstack([Ax[: self.pos], sp.csr_matrix(soc), Ax[self.pos :]], format="csc")
        self.b = np.concatenate([b[: self.pos], [r2, -r2], np.zeros(q), b[self.pos :]])
        self.c = np.concatenate([c, [1.0]])
        self.cone = {**cone, "q": [*cone.get("q", []), q + 2]}

    def direction(self, k: int, x: np.ndarray):
        """(dA, db, dc) of the program along the user's parameter coordinate k, for the
        derivative at a solution whose layer variables are ``x``."""
        t = self.t
        dc = t.C[:, [k]].toarray().ravel()
        db = t.G[:, [k]].toarray().ravel()
        dA = t.matrix(t.F[:, [k]].toarray().ravel())
        if not self.quadratic:
            return dA, db, dc
        import scipy.sparse as sp

        dh = t.H[:, [k]].toarray().ravel()
        if np.any(dh):
            dc = dc + t.P_matrix(dh) @ x[: t.n]
        dA = sp.hstack([dA, sp.csc_matrix((t.m, 1))], format="csr")
        dA = sp.vstack([dA[: self.pos], sp.csr_matrix((self.k, t.n + 1)), dA[self.pos :]],
                       format="csc")
        db = np.concatenate([db[: self.pos], np.zeros(self.k), db[self.pos :]])
        return dA, db, np.concatenate([dc, [0.0]])

    def lift(self, x: np.ndarray, y: np.ndarray, s: np.ndarray):
        """A solution of the layer's program ↦ one of this program."""
        if not self.quadratic:
            return x, y, s
        Sx = self.S @ x[self.J]
        tau = 0.5 * float(Sx @ Sx)
        r2 = 1 / np.sqrt(2)
        s_soc = np.concatenate([[(tau + 1) * r2, (tau - 1) * r2], Sx])
        y_soc = np.concatenate([[(tau + 1) * r2, -(tau - 1) * r2], -Sx])
        p = self.pos
        return (np.concatenate([x, [tau]]), np.concatenate([y[:p], y_soc, y[p:]]),
                np.concatenate([s[:p], s_soc, s[p:]]))

    def restrict(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A solution (or derivative) of this program ↦ the layer's (x, y)."""
        if not self.quadratic:
            return x, y
        p, k = self.pos, self.k
        return x[: self.t.n], np.concatenate([y[:p], y[p + k :]])


_PATCH = threading.Lock()


def _diffcp_derivative_at(prog: _LinearConeProgram, point, mode: str):
    """diffcp's derivative map of ``prog`` evaluated at a given solution (x, y, s).

    diffcp only offers the derivative together with its own solve; its solve step
    (``diffcp.cone_program.solve_internal``) is swapped, under a lock, for one that
    returns ``point``. The derivative code that runs is diffcp's, unchanged.
    """
    import diffcp.cone_program as dcp

    x, y, s = (np.asarray(z, dtype=float).copy() for z in point)

    def given(*args: Any, **kwargs: Any) -> dict:
        return {"x": x, "y": y, "s": s, "info": {"status": "solved"}}

    with _PATCH:
        original = dcp.solve_internal
        dcp.solve_internal = given
        try:
            result = dcp.solve_and_derivative_internal(
                prog.A.copy(), prog.b.copy(), prog.c.copy(), prog.cone, mode=mode)
        finally:
            dcp.solve_internal = original
    return result["D"]


def diffcp_jacobian(layer: Layer, values: Sequence[Any], *,
                    at: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                    mode: str = "dense", scs_args: dict | None = None,
                    on_step: Callable[[int], Any] | None = None
                    ) -> tuple[list[np.ndarray], Jacobian, list[str]]:
    """diffcp's solution and forward-mode Jacobian of the layer's own cone program.

    The solution is diffcp's own (SCS, cold start, settings :data:`DIFFCP_SCS` updated
    by ``scs_args``). The Jacobian is diffcp's derivative at ``at``, a solution (x, y, s)
    of the layer's program (``Forward.state``), so that it differs from ours only by the
    derivative computation; without ``at``, at diffcp's own solution. A quadratic
    objective is rewritten with a second-order cone (`_LinearConeProgram`).

    Returns (outputs, J[i][j], notes); ``on_step(1)`` is called after each parameter
    direction. Raises ImportError without diffcp, diffcp's own
    errors (e.g. ``diffcp.SolverError``) when its solve fails, and ValueError when a
    quadratic objective cannot be rewritten differentiably.
    """
    import diffcp

    t = layer.template
    theta, batched = layer.batch(values)
    if any(batched):
        raise ParameterError("diffcp_jacobian checks one instance: pass unbatched values.")
    prog = _LinearConeProgram(t, theta[0])
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = {**DIFFCP_SCS, **(scs_args or {})}
        D = None
        if at is not None:
            try:
                D = _diffcp_derivative_at(prog, prog.lift(*at), mode)
                x_at = np.asarray(at[0], dtype=float)
            except (AttributeError, TypeError) as e:  # diffcp's internals changed
                notes.append(f"could not evaluate diffcp's derivative at our solution ({e}); "
                             "using diffcp's own solution.")
        if D is None:
            x, y, _, D, _ = diffcp.solve_and_derivative(
                prog.A.copy(), prog.b.copy(), prog.c.copy(), prog.cone, mode=mode,
                solve_method="SCS", **settings)
            x_at = x
        else:
            x, y, _ = diffcp.solve_only(prog.A.copy(), prog.b.copy(), prog.c.copy(), prog.cone,
                                        solve_method="SCS", **settings)
        cols = np.empty((t.recover.shape[0], t.num_params))
        for k in range(t.num_params):
            dx, dy, _ = D(*prog.direction(k, x_at))
            cols[:, k] = t.recover @ np.concatenate(prog.restrict(dx, dy))
            if on_step is not None:
                on_step(1)
    from declarative.layer import unvec

    xy = np.asarray(t.recover @ np.concatenate(prog.restrict(x, y)))[None]
    outs = [unvec(xy[:, lo : lo + o.size], o.shape)[0]
            for o, lo in zip(layer.outputs, layer._out_offsets, strict=True)]
    notes += sorted({str(w.message) for w in caught})
    J = layer.jacobian_blocks(cols)
    from declarative.geometric import GeometricLayer

    if isinstance(layer, GeometricLayer):  # diffcp's program is in log-log coordinates
        outs, J = layer.from_log(outs, J, values)
    return outs, J, notes


# -- the API -------------------------------------------------------------------------------
def verify(
    layer: Layer | Any,
    values: Sequence[Any],
    *,
    solution: Callable[..., Any] | Sequence[Any] | None = None,
    jacobian: Callable[..., Any] | Sequence[Any] | None = None,
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
) -> Report:
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
        fd_step, fd_tolerance, diffcp_tolerance: see the module docstring.
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
    from tqdm import tqdm

    theta, batched = layer.batch(values)
    if any(batched):
        names = [p.name for p, bt in zip(layer.parameters, batched, strict=True) if bt]
        raise ParameterError(
            f"verify checks one instance: pass unbatched values (batched: {', '.join(names)}).")
    notes: list[str] = []
    seconds: dict[str, float] = {}
    P, O = layer.parameters, layer.outputs
    dl_warnings = (dl.NonDifferentiableWarning,)

    t0 = time.perf_counter()
    fwd = layer.forward(values, solver_args=solver_args, on_failure="nan")
    seconds["forward"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dl_warnings)
        ours_J = fwd.jacobian(0)
    seconds["jacobian"] = time.perf_counter() - t0
    notes += [f"ours: {w.message}" for w in caught if issubclass(w.category, dl_warnings)]
    ours_x = [o[0] for o in fwd.outputs]
    sym = [symmetric_parameter(p) for p in P]
    if any(sym):
        ours_J = [[_symmetrize(b) if sy else b for b, sy in zip(row, sym, strict=True)]
                  for row in ours_J]
        names = ", ".join(p.name for p, sy in zip(P, sym, strict=True) if sy)
        notes.append(f"Jacobian blocks of symmetric parameter(s) {names} are compared on "
                     "symmetric directions only: every block is symmetrized, (J + Jᵀ)/2 over "
                     "the parameter's two axes, before comparing.")
    info = fwd.info
    status = str(info.status[0])
    if status != "solved":
        notes.append(f"the layer did not solve this instance (status {status}); its outputs "
                     "and Jacobian are NaN, so every check fails.")
    solver = {
        "scs_status": str(info.scs_status[0]),
        "scs_iterations": int(info.scs_iterations[0]),
        "residual_before": _finite_or_none(float(info.residual_before[0])),
        "residual_after": _finite_or_none(float(info.residual_after[0])),
        "refine_steps": int(info.refine_steps[0]),
    }
    if info.rcond is not None and np.isfinite(info.rcond[0]):
        solver["rcond"] = float(info.rcond[0])
    checks: list[Check] = []
    solutions = {"ours": ours_x}
    jacobians = {"ours": ours_J}

    def check_solution(ref_name: str, ref: list, tol: float, measure: str) -> None:
        for o, ours, r in zip(O, ours_x, ref, strict=True):
            checks.append(_compare(ref_name, "solution", o.name, None, ours, r, tol, measure))

    def check_jacobian(ref_name: str, ref: list[list], tol: float, measure: str) -> None:
        compared = []
        for o, row_ours, row_ref in zip(O, ours_J, ref, strict=True):
            compared.append([])
            for p, sy, ours, r in zip(P, sym, row_ours, row_ref, strict=True):
                r = np.asarray(r, dtype=float)
                if sy and r.shape == ours.shape:
                    r = _symmetrize(r)
                compared[-1].append(r)
                checks.append(_compare(ref_name, "jacobian", o.name, p.name, ours, r, tol,
                                       measure))
        jacobians[ref_name] = compared

    # closed form -----------------------------------------------------------------------
    args = [np.asarray(v, dtype=float) for v in values]
    total = theta.shape[1] * int(diffcp)
    if finite_differences:
        total += sum(1 for spec, v in zip(P, args, strict=True)
                     for _ in _fd_directions(spec, v, fd_step))
    bar = tqdm(total=total, desc=f"verify{' ' + name if name else ''}", unit="direction",
               file=sys.stderr, leave=False, delay=2.0,
               disable=None if progress is None else not progress)
    t0 = time.perf_counter()
    if solution is not None:
        ref = _as_solution(solution(*args) if callable(solution) else solution, len(O))
        solutions[CLOSED_FORM] = [np.asarray(r, dtype=float) for r in ref]
        check_solution(CLOSED_FORM, ref, tolerance, "abs")
    if jacobian is not None:
        ref = _as_jacobian(jacobian(*args) if callable(jacobian) else jacobian, len(O), len(P))
        check_jacobian(CLOSED_FORM, ref, tolerance, "abs")
    if solution is not None or jacobian is not None:
        seconds[CLOSED_FORM] = time.perf_counter() - t0

    try:
        # finite differences ----------------------------------------------------------------
        if finite_differences:
            t0 = time.perf_counter()
            try:
                fd, unsolved, fd_notes = finite_difference_jacobian(
                    layer, args, step=fd_step, solver_args=solver_args, on_step=bar.update)
            except ParameterError as e:  # a perturbation left a declared domain (PSD, ...)
                notes.append(f"finite differences failed: {e}")
                unsolved, fd_notes = 0, []
                fd = [[np.full(o.shape + p.shape, np.nan) for p in P] for o in O]
            seconds[FINITE_DIFFERENCES] = time.perf_counter() - t0
            notes += [f"finite differences: {m}" for m in fd_notes]
            if unsolved:
                notes.append(f"finite differences: {unsolved} perturbed instances were not solved "
                             "(NaN entries).")
            check_jacobian(FINITE_DIFFERENCES, fd, fd_tolerance, "rel")

        # diffcp ------------------------------------------------------------------------------
        at = None
        if diffcp and layer.template.dims.power:
            notes.append("diffcp has no power cones; skipped.")
        elif diffcp:
            t0 = time.perf_counter()
            if diffcp_at_ours and fwd.ok[0]:
                x, y, s, _ = fwd.state()
                at = (x[0], y[0], s[0])
            try:
                d_x, d_J, d_notes = diffcp_jacobian(layer, args, at=at, on_step=bar.update)
            except ImportError:
                notes.append("diffcp is not installed (pip install 'declarative[reference]'); "
                             "skipped.")
            except Exception as e:  # noqa: BLE001 - diffcp failing is a finding, not a crash
                notes.append(f"diffcp failed: {type(e).__name__}: {e}")
                nan_x = [np.full(o.shape, np.nan) for o in O]
                nan_J = [[np.full(o.shape + p.shape, np.nan) for p in P] for o in O]
                check_solution(DIFFCP, nan_x, diffcp_tolerance, "rel")
                check_jacobian(DIFFCP, nan_J, diffcp_tolerance, "rel")
            else:
                notes += [f"diffcp: {m}" for m in d_notes]
                solutions[DIFFCP] = d_x
                check_solution(DIFFCP, d_x, diffcp_tolerance, "rel")
                check_jacobian(DIFFCP, d_J, diffcp_tolerance, "rel")
            seconds[DIFFCP] = time.perf_counter() - t0

    finally:
        bar.close()
    settings = {"tolerance": tolerance, "solver_args": dict(solver_args or {})}
    if finite_differences:
        settings.update(fd_step=fd_step, fd_tolerance=fd_tolerance)
    if diffcp:
        settings.update(diffcp_tolerance=diffcp_tolerance, diffcp_mode="dense",
                        diffcp_derivative_at="ours" if at is not None else "diffcp's solution",
                        diffcp_scs=dict(DIFFCP_SCS))
    return Report(
        name=name, layer=repr(layer),
        parameters=[{"name": p.name, "shape": list(p.shape)} for p in P],
        outputs=[{"name": o.name, "shape": list(o.shape), "kind": o.kind} for o in O],
        cones=tuple(layer.template.dims.kinds()), status=status, solver=solver,
        checks=checks, seconds=seconds, notes=notes, settings=settings,
        solutions=solutions, jacobians=jacobians,
    )


# -- plots ---------------------------------------------------------------------------------
def plot_jacobians(report: Report, path: str, reference: str = CLOSED_FORM,
                   title: str | None = None) -> str:
    """A PNG with three heatmaps: the reference Jacobian, ours, and ours − reference.

    All (output, parameter) blocks are laid out as one matrix (`jacobian_matrix`):
    outputs down, parameters side by side, separated by thin lines. Needs matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if reference not in report.jacobians:
        raise ValueError(f"the report holds no {reference!r} Jacobian "
                         f"(it has {sorted(report.jacobians)}).")
    shapes = [o["shape"] for o in report.outputs]
    ours = jacobian_matrix(report.jacobians["ours"], shapes)
    try:
        ref = jacobian_matrix(report.jacobians[reference], shapes)
    except ValueError:  # a reference of the wrong shape: show it as NaN
        ref = np.full(ours.shape, np.nan)
    diff = ours - ref if ours.shape == ref.shape else np.full(ours.shape, np.nan)
    vmax = max(_absmax(ref), _absmax(ours)) or 1.0
    dmax = _absmax(diff) or 1e-300
    rows, cols = ours.shape
    if cols > 2 * rows:  # wide: panels one above the other
        fig, axes = plt.subplots(3, 1, figsize=(min(16.0, 4.0 + 0.12 * cols),
                                                3 * min(4.0, 1.2 + 0.25 * rows)),
                                 constrained_layout=True)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(15.0, min(6.0, 2.5 + 0.2 * rows)),
                                 constrained_layout=True)
    name = _LABEL.get(reference, reference)
    panels = [(ref, name, "RdBu_r", vmax), (ours, "ours", "RdBu_r", vmax),
              (diff, f"ours - {name} (max |.| {dmax:.1e})", "PuOr_r", dmax)]
    col_edges = np.cumsum([int(np.prod(p["shape"], dtype=int)) for p in report.parameters])
    row_edges = np.cumsum([int(np.prod(o["shape"], dtype=int)) for o in report.outputs])
    for ax, (m, label, cmap, lim) in zip(axes, panels, strict=True):
        im = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto",
                       interpolation="nearest")
        for e in col_edges[:-1]:
            ax.axvline(e - 0.5, color="k", lw=0.6)
        for e in row_edges[:-1]:
            ax.axhline(e - 0.5, color="k", lw=0.6)
        centers = np.concatenate([[0], col_edges[:-1]]) + np.diff(np.concatenate(
            [[0], col_edges])) / 2 - 0.5
        ax.set_xticks(centers, [p["name"] for p in report.parameters], fontsize=8)
        rc = np.concatenate([[0], row_edges[:-1]]) + np.diff(np.concatenate(
            [[0], row_edges])) / 2 - 0.5
        ax.set_yticks(rc, [o["name"] for o in report.outputs], fontsize=8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.85)
    label = f" - {report.name}" if report.name else ""
    fig.suptitle(title or f"Jacobian d(outputs)/d(parameters){label}", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the zoo -------------------------------------------------------------------------------
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
            "solution_error": _finite_or_none(self.solution_error),
            "jacobian_error": _finite_or_none(self.jacobian_error),
            "fd_error": None if self.fd_error is None else _finite_or_none(self.fd_error),
            "diffcp_error": (None if self.diffcp_error is None
                             else _finite_or_none(self.diffcp_error)),
            "diffcp_solution_error": (None if self.diffcp_solution_error is None
                                      else _finite_or_none(self.diffcp_solution_error)),
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
    import problems

    t_start = time.perf_counter()
    mod = problems.get(name)
    sizes = {**mod.SIZES, **sizes}
    prob, params, variables = mod.build(**sizes)
    layer = dl.compile(prob, params, variables, on_failure="nan",
                       **problems.compile_options(mod))
    reports = []
    for seed in seeds:
        inst = problems.instance(name, seed, **sizes)
        reports.append(verify(
            layer, inst.params, solution=inst.solution, jacobian=inst.jacobian,
            finite_differences=finite_differences, diffcp=diffcp, solver_args=solver_args,
            tolerance=tolerance, name=f"{name} (seed {seed})", progress=progress))

    def worst(reference: str, quantity: str, measure: str = "abs") -> float | None:
        errs = [r.error(reference, quantity, measure) for r in reports]
        errs = [e for e in errs if e is not None]
        return max(errs) if errs else None

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


class _CallableModule(types.ModuleType):
    """Lets ``declarative.verify(layer, values, ...)`` call `verify` directly."""

    def __call__(self, *args: Any, **kwargs: Any) -> Report:
        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
