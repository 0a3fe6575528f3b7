"""diffcp (Agrawal et al. 2019, *Differentiating through a cone program*) on the layer's
own cone program: the independent derivative reference of :func:`declarative.verify`.

The program (c, A, b, K) is the one the layer's template builds at θ; a quadratic objective
½xᵀPx, which diffcp's exact modes do not take, is rewritten with one more second-order cone
(:class:`LinearConeProgram`). Solution: diffcp's own solve (SCS, cold start, eps 1e-9).
Jacobian: diffcp's derivative (``mode="dense"``), by default evaluated at our refined
solution so that it differs from ours only by how the derivative is computed, along every
parameter direction (dc, dA, db) = (C e_k, F e_k, G e_k), mapped to the outputs with
``template.recover``. diffcp's exponential-cone derivative is accurate to ~1e-8 and its SCS
solution to ~1e-8, hence the relative threshold DIFFCP_TOLERANCE = 1e-6.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from declarative.errors import ParameterError
from declarative.layer import Layer, unvec
from declarative.verification.report import Jacobian

# SCS settings for diffcp's own (cold) solve.
DIFFCP_SCS = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 20_000}


class LinearConeProgram:
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


def _diffcp_derivative_at(prog: LinearConeProgram, point, mode: str):
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
    objective is rewritten with a second-order cone (`LinearConeProgram`).

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
    prog = LinearConeProgram(t, theta[0])
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
    xy = np.asarray(t.recover @ np.concatenate(prog.restrict(x, y)))[None]
    outs = [unvec(xy[:, lo : lo + o.size], o.shape)[0]
            for o, lo in zip(layer.outputs, layer._out_offsets, strict=True)]
    notes += sorted({str(w.message) for w in caught})
    J = layer.jacobian_blocks(cols)
    from declarative.geometric import GeometricLayer

    if isinstance(layer, GeometricLayer):  # diffcp's program is in log-log coordinates
        outs, J = layer.from_log(outs, J, values)
    return outs, J, notes

