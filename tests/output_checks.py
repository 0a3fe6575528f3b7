"""Checks shared by the output tests: a layer's outputs against CVXPY's own solve (Clarabel
at tight tolerance), and its torch VJP and JAX JVP against central finite differences of
its forward map, on a batch."""

from __future__ import annotations

from collections.abc import Sequence

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import torch

import declarative as dl

CLARABEL_TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10,
                  "tol_ktratio": 1e-10, "max_iter": 500}


def dense(value) -> np.ndarray:
    """A CVXPY value (possibly a sparse matrix) as a dense float array."""
    return np.asarray(value.toarray() if sp.issparse(value) else value, dtype=float)


def cvxpy_reference(problem: cp.Problem, parameters: Sequence[cp.Parameter],
                    outputs: Sequence[cp.Variable], values: Sequence[np.ndarray],
                    gp: bool = False) -> list[np.ndarray]:
    """The outputs' values from CVXPY's own solve (Clarabel, tight) at one parameter value."""
    for p, v in zip(parameters, values, strict=True):
        p.value = v
    problem.solve(solver=cp.CLARABEL, gp=gp, **CLARABEL_TIGHT)
    assert problem.status == cp.OPTIMAL, problem.status
    return [dense(o.value).reshape(o.shape) for o in outputs]


def check_values(layer: dl.Layer, problem, parameters, outputs, batch: Sequence[np.ndarray],
                 tol: float = 1e-7, gp: bool = False) -> None:
    """Batched layer outputs = CVXPY's, instance by instance (max abs error ≤ tol times the
    output's scale)."""
    fwd = layer.forward(list(batch))
    B = batch[0].shape[0]
    for i in range(B):
        ref = cvxpy_reference(problem, parameters, outputs, [v[i] for v in batch], gp=gp)
        for o, r, var in zip(fwd.outputs, ref, outputs, strict=True):
            err = np.max(np.abs(o[i] - r)) if r.size else 0.0
            assert err <= tol * max(1.0, np.max(np.abs(r))), (var.name(), i, err, o[i], r)


def fd_directional(layer: dl.Layer, batch: Sequence[np.ndarray],
                   tangent: Sequence[np.ndarray], h: float = 1e-6) -> list[np.ndarray]:
    """Central difference of the outputs along ``tangent``: (F(θ + h t) − F(θ − h t)) / 2h."""
    plus = layer.forward([v + h * t for v, t in zip(batch, tangent, strict=True)]).outputs
    minus = layer.forward([v - h * t for v, t in zip(batch, tangent, strict=True)]).outputs
    return [(a - b) / (2 * h) for a, b in zip(plus, minus, strict=True)]


def check_derivatives(layer: dl.Layer, batch: Sequence[np.ndarray],
                      tangent: Sequence[np.ndarray], tol: float = 1e-5, seed: int = 0) -> None:
    """JAX's jvp and torch's backward agree with finite differences on a batch."""
    D = fd_directional(layer, batch, tangent)
    scale = max(1.0, max(float(np.max(np.abs(d))) for d in D if d.size))
    with jax.enable_x64(True):
        f = layer.jax()
        _, jv = jax.jvp(f, tuple(jnp.asarray(v) for v in batch),
                        tuple(jnp.asarray(t) for t in tangent))
        for a, d in zip(jv, D, strict=True):
            assert np.max(np.abs(np.asarray(a) - d), initial=0.0) <= tol * scale, (a, d)
    rng = np.random.default_rng(seed)
    W = [rng.standard_normal(d.shape) for d in D]
    xs = [torch.tensor(v, requires_grad=True) for v in batch]
    outs = layer.torch()(*xs)
    loss = sum((o * torch.tensor(w)).sum() for o, w in zip(outs, W, strict=True))
    grads = torch.autograd.grad(loss, xs, allow_unused=True)
    lhs = sum(float(np.sum(g.numpy() * t)) for g, t in zip(grads, tangent, strict=True)
              if g is not None)
    rhs = sum(float(np.sum(w * d)) for w, d in zip(W, D, strict=True))
    assert abs(lhs - rhs) <= tol * max(1.0, abs(rhs)) * 10, (lhs, rhs)
