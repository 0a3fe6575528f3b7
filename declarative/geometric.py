"""Geometric programs: a layer over the log-log change of variables.

A DGP problem in θ > 0 and x > 0 is convex in u = log x with parameters log θ
(`declarative.compile.compile_gp_template`). `GeometricLayer` solves that convex program
and maps the ends of the pipeline:

    θ ↦ log θ ↦ (convex layer) ↦ u ↦ x = exp(u),

so its derivatives follow by the chain rule through the two elementwise maps:

    ∂x/∂θ = diag(exp u) · ∂u/∂(log θ) · diag(1/θ).

A dual variable output is the convex program's own (as CVXPY reports a DGP problem's
duals): its map is the identity. A parameter that is an exponent (x ** c is c · log x in
log-log coordinates) enters the convex program as itself: its map is the identity and its
factor 1/θ is 1.

Everything in between (solve, refinement, certificate, VJP and JVP) is the convex layer's.
The certificate's accuracy on u is a relative accuracy on x (δx/x = δu).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from declarative.layer import Forward, Layer


@dataclasses.dataclass
class GeometricForward(Forward):
    """A `Forward` whose primal outputs are exp of the convex layer's and whose inputs are
    θ, not log θ; ``theta`` holds each parameter's chain-rule divisor, each (B, *shape): its
    (positive) values where it enters as log θ, ones where it enters as itself."""

    theta: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)

    @classmethod
    def wrap(cls, fwd: Forward, theta: list[np.ndarray]) -> GeometricForward:
        """The geometric view of a convex-layer result ``fwd`` at parameter values ``theta``."""
        fields = {f.name: getattr(fwd, f.name) for f in dataclasses.fields(Forward)}
        fields["outputs"] = [np.exp(u) if o.kind == "primal" else u
                             for u, o in zip(fwd.outputs, fwd.layer.outputs, strict=True)]
        return cls(**fields, theta=theta)

    def vjp(self, grads: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        """x̄ ↦ θ̄ = (1/θ) ⊙ VJP_u(exp(u) ⊙ x̄) (θ of an exponent: 1 for 1/θ; a dual output:
        1 for exp(u))."""
        gu = [None if g is None else np.asarray(g, dtype=float) * x
              for g, x in zip(grads, self._dexp, strict=True)]
        glog = super().vjp(gu)
        out = []
        for g, th, batched in zip(glog, self.theta, self.input_batched, strict=True):
            out.append(g / th if batched else g / th[0])  # an unbatched θ: the same per row
        return out

    def jvp(self, tangents: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        """θ̇ ↦ ẋ = exp(u) ⊙ JVP_u(θ̇ / θ)."""
        tlog: list[np.ndarray | None] = []
        for t, th in zip(tangents, self.theta, strict=True):
            if t is None:
                tlog.append(None)
                continue
            t = np.asarray(t, dtype=float)
            unbatched = t.ndim < th.ndim and th.shape[0] == 1
            tlog.append(t / th[0] if unbatched else t / th)
        du = super().jvp(tlog)
        return [d * x for d, x in zip(du, self._dexp, strict=True)]

    @property
    def _dexp(self) -> list[np.ndarray]:
        """Each output's derivative in u: exp(u) = x for a primal output, 1 for a dual."""
        return [x if o.kind == "primal" else np.ones_like(x)
                for x, o in zip(self.outputs, self.layer.outputs, strict=True)]

    def jacobian(self, index: int = 0) -> list[list[np.ndarray]]:
        """J[i][j] = diag(x_i) · ∂u_i/∂(log θ_j) · diag(1/θ_j), for one instance."""
        J = super().jacobian(index)
        out = []
        for Ji, x in zip(J, self._dexp, strict=True):
            xi = x[index]
            row = []
            for Jij, th in zip(Ji, self.theta, strict=True):
                thj = th[index if th.shape[0] > 1 else 0]
                row.append(Jij * xi.reshape(xi.shape + (1,) * thj.ndim) / thj)
            out.append(row)
        return out


class GeometricLayer(Layer):
    """A compiled geometric program: takes θ > 0 (and exponents), returns x > 0 and any
    requested duals (see the module docstring).

    Values of parameters that enter through their logarithm are checked positive
    (`ParameterError` naming the parameter and the batch indices) before their logarithms
    reach the convex layer; an exponent is checked against its own declared domain.
    """

    def batch(self, values: Sequence[Any], *,
              check_values: bool = True) -> tuple[np.ndarray, list[bool]]:
        """As `Layer.batch` (checks included, positivity among them), then log θ for the
        parameters that enter through their logarithm: the convex layer's parameter vector."""
        theta, batched = super().batch(values, check_values=check_values)
        theta = np.array(theta, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):  # placeholders may be 0
            for spec in self.parameters:
                if spec.log:
                    block = slice(spec.offset, spec.offset + spec.size)
                    theta[:, block] = np.log(theta[:, block])
        return theta, batched

    def _theta(self, values: Sequence[Any]) -> list[np.ndarray]:
        """Each parameter's chain-rule divisor as (B, *shape) (B = 1 when unbatched): its
        values if it enters as log θ, ones if it enters as itself; a copy (the caller may
        change its arrays, or a tensor's memory, before the derivative is asked)."""
        out = []
        for spec, v in zip(self.parameters, values, strict=True):
            a = np.asarray(v, dtype=float)
            a = a.copy() if spec.log else np.ones_like(a)
            out.append(a if a.ndim > len(spec.shape) else a[None])
        return out

    def forward(self, values: Sequence[Any], *args: Any, **kwargs: Any) -> Forward:
        """`Layer.forward` (same options) on log θ, its outputs exp(u)."""
        fwd = super().forward(values, *args, **kwargs)
        if isinstance(fwd, GeometricForward):  # an empty batch, answered by `restore`
            return fwd
        return GeometricForward.wrap(fwd, self._theta(values))

    def restore(self, values: Sequence[Any], *args: Any, **kwargs: Any) -> Forward:
        """`Layer.restore` (same arguments), as a `GeometricForward`."""
        return GeometricForward.wrap(super().restore(values, *args, **kwargs),
                                     self._theta(values))

    def from_log(self, u: list[np.ndarray], J: list[list[np.ndarray]], values: Sequence[Any]
                 ) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """One instance's outputs u and Jacobian ∂u/∂(log θ) of the convex program (e.g.
        from another solver) ↦ x = exp(u) and ∂x/∂θ = diag(x) ∂u/∂(log θ) diag(1/θ)."""
        x = [np.exp(ui) if o.kind == "primal" else np.asarray(ui)
             for ui, o in zip(u, self.outputs, strict=True)]
        dx = [xi if o.kind == "primal" else np.ones_like(xi)
              for xi, o in zip(x, self.outputs, strict=True)]
        theta = [np.asarray(v, dtype=float) if spec.log else np.ones(np.shape(v))
                 for spec, v in zip(self.parameters, values, strict=True)]
        return x, [[Jij * xi.reshape(xi.shape + (1,) * th.ndim) / th
                    for Jij, th in zip(Ji, theta, strict=True)]
                   for Ji, xi in zip(J, dx, strict=True)]

    def __repr__(self) -> str:
        return "Geometric" + super().__repr__()
