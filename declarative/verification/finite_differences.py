"""Central finite differences of a layer's forward pass, the derivative-free reference of
:func:`declarative.verify`.

Entry k of a parameter moves by ±h_k, h_k = step · max(1, |θ_k|). FD_STEP = 1e-5: on the
zoo it gives ≤ 1e-8 against the closed forms, where 1e-6 gives 2e-8 (solver noise / h) and
1e-4 gives 1e-6 (truncation, h²). Parameters declared nonneg/pos/nonpos/neg get
second-order one-sided differences within two steps of 0; parameters declared
symmetric/PSD/NSD are moved along symmetric directions (E_kl + E_lk), and their Jacobian
blocks are compared symmetrized, (J + Jᵀ)/2 over the parameter's axes (only symmetric
directions are meaningful; conventions differ on the rest). This checks the derivative of
the whole pipeline and assumes no kink of the solution map within h of θ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from declarative.layer import Layer
from declarative.verification.report import FD_STEP, Jacobian

# Perturbed instances per forward call (bounds memory).
FD_CHUNK = 512

_SYMMETRIC = ("symmetric", "PSD", "NSD")
_SIGNS = ("nonneg", "pos", "nonpos", "neg")


def symmetric_parameter(spec: Any) -> bool:
    """Declared symmetric (or PSD/NSD): only symmetric directions are meaningful for it."""
    return any(a in _SYMMETRIC for a in getattr(spec, "domain", ()))


def symmetrize(block: np.ndarray) -> np.ndarray:
    """The part of a Jacobian block that acts on symmetric directions of a matrix parameter
    (its last two axes), written symmetrically: (J + Jᵀ)/2 over those axes."""
    block = np.asarray(block, dtype=float)
    if block.ndim < 2 or block.shape[-1] != block.shape[-2]:
        return block
    return (block + np.swapaxes(block, -1, -2)) / 2


# Finite-difference stencils (offsets in steps, weights): central, and second-order
# one-sided ones for entries within two steps of the boundary of a sign-constrained parameter.
Stencil = tuple[tuple[float, ...], tuple[float, ...]]  # (offsets in steps, weights)
_CENTRAL: Stencil = ((1.0, -1.0), (0.5, -0.5))
_FORWARD: Stencil = ((0.0, 1.0, 2.0), (-1.5, 2.0, -0.5))
_BACKWARD: Stencil = ((0.0, -1.0, -2.0), (1.5, -2.0, 0.5))


def fd_directions(spec: Any, value: np.ndarray, step: float
                  ) -> Iterator[tuple[Any, np.ndarray, float, Stencil]]:
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
    sign = next((a for a in domain if a in _SIGNS), None)
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
    come back symmetrized (see `symmetrize`). Returns J[i][j] (NaN where a perturbed
    instance was not solved), the number of unsolved instances, and notes. ``on_step(k)``
    is called after each batch with the number of directions it covered.
    """
    values = [np.asarray(v, dtype=float) for v in values]
    P = layer.parameters
    entries = [(j, *e) for j, (spec, v) in enumerate(zip(P, values, strict=True))
               for e in fd_directions(spec, v, step)]
    notes = []
    one_sided = sorted({P[e[0]].name for e in entries if e[4] is not _CENTRAL})
    if one_sided:
        notes.append("one-sided differences for the entries of sign-constrained parameter(s) "
                     f"{', '.join(one_sided)} within two steps of 0.")
    J = [[np.full(o.shape + p.shape, np.nan) for p in P] for o in layer.outputs]
    unsolved = 0
    lo = 0
    while lo < len(entries):
        part: list[tuple[Any, ...]] = []
        B = 0
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
                key = (..., *idx)
                if len(idx) == 2 and symmetric_parameter(P[j]) and idx[0] != idx[1]:
                    J[i][j][key] = J[i][j][(..., idx[1], idx[0])] = deriv / 2
                else:
                    J[i][j][key] = deriv
    return J, unsolved, notes

