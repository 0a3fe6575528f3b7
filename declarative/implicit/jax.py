"""Declarative nodes on JAX arrays: ``jax.lax.custom_root`` around a host forward solve.

How it is built
---------------
* The node is ``jax.lax.custom_root(G(·, θ), z0, solve, tangent_solve)``: JAX differentiates
  it by the implicit function theorem, dz* = −(∂G/∂z)⁻¹ ∂G/∂θ dθ, and transposes that linear
  solve for reverse mode, so ``jit``, ``vmap``, ``grad``, ``jvp``, ``jacfwd`` and ``jacrev``
  work. The forward iterations are never traced or differentiated.
* ``solve`` is the NumPy forward solver (`declarative.implicit.solvers`) in a
  ``jax.pure_callback`` (``vmap_method="sequential"``: under ``vmap`` each instance is solved
  on its own), evaluating G and its derivatives with jitted JAX functions on the host. It
  returns the solution and the :class:`~declarative.implicit.Info` fields as arrays.
* ``tangent_solve``: dense ``jnp.linalg.solve`` on ∂G/∂z (``jax.jacfwd`` of the linearized
  map) up to ``dense_max`` unknowns, ``jax.scipy.sparse.linalg.gmres`` above.
* A call on concrete arrays (no transformation) solves before tracing, so errors reach the
  user as the library's own exceptions. Under a transformation ``on_failure="raise"`` can
  only raise inside the callback; JAX re-raises it as ``JaxRuntimeError`` ending with our
  message. With ``on_failure="nan"`` the output is NaN and its derivatives zero.

G must depend on traced values only through ``params``: the host solve sees the parameters'
values, not arrays a function closes over under a transformation.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from declarative.errors import ParameterError
from declarative.implicit import solvers
from declarative.implicit.solvers import Info, NodeError

__all__ = ["call"]

_LOCK = threading.Lock()


def residual_fn(node: Any, shape: tuple) -> Callable[..., jax.Array]:
    """G(z_flat, *params) -> flat residual, in JAX, for the node's kind."""
    n = math.prod(shape)
    fn, eq = node.fn, node.eq

    def checked(out: Any, expected: tuple, what: str) -> jax.Array:
        if not hasattr(out, "shape") or tuple(out.shape) != expected:
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ParameterError(f"{node!r}: {what} returned {got}; expected an array of "
                                 f"shape {expected}")
        return jnp.asarray(out)

    if node.kind == "root":
        return lambda z, *p: checked(fn(z.reshape(shape), *p), shape, "F(z, *params)").reshape(-1)
    if node.kind == "fixed_point":
        return lambda z, *p: z - checked(fn(z.reshape(shape), *p), shape,
                                         "f(z, *params)").reshape(-1)

    def objective(y: jax.Array, *p: Any) -> jax.Array:
        return checked(fn(y.reshape(shape), *p), (), "objective(y, *params)")

    if eq is None:
        return jax.grad(objective)

    def constraint(y: jax.Array, *p: Any) -> jax.Array:
        return jnp.asarray(eq(y.reshape(shape), *p)).reshape(-1)

    def lagrangian(y: jax.Array, lam: jax.Array, *p: Any) -> jax.Array:
        return objective(y, *p) + jnp.dot(lam, constraint(y, *p))

    def kkt(z: jax.Array, *p: Any) -> jax.Array:
        y, lam = z[:n], z[n:]
        return jnp.concatenate([jax.grad(lagrangian)(y, lam, *p), constraint(y, *p)])

    return kkt


class _Compiled:
    """Jitted G, JVP and Jacobian of one node for one (shape, m): made once, reused."""

    def __init__(self, G: Callable) -> None:
        self.G = jax.jit(G)
        self.jvp = jax.jit(lambda z, v, *p: jax.jvp(lambda zz: G(zz, *p), (z,), (v,))[1])
        self.jac = jax.jit(lambda z, *p: jax.jacfwd(lambda zz: G(zz, *p))(z))


def _compiled(node: Any, shape: tuple, m: int) -> tuple[Callable, _Compiled]:
    cache = node.__dict__.setdefault("_jax_cache", {})
    key = (shape, m)
    with _LOCK:
        if key not in cache:
            G = residual_fn(node, shape)
            cache[key] = (G, _Compiled(G))
        return cache[key]


class JaxSystem:
    """G and its derivatives on flat float64 NumPy vectors (`solvers.System`), on the host."""

    def __init__(self, c: _Compiled, params: Sequence[Any], size: int, n_primal: int | None,
                 kind: str, dtype: np.dtype) -> None:
        self.c, self.params, self.size, self.n_primal, self.kind = c, params, size, n_primal, kind
        self.dtype = dtype

    def _in(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v, dtype=self.dtype)

    def residual(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.c.G(self._in(z), *self.params), dtype=float)

    def jvp(self, z: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.asarray(self.c.jvp(self._in(z), self._in(v), *self.params), dtype=float)

    def jacobian(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.c.jac(self._in(z), *self.params), dtype=float)


def _host_solve(node: Any, compiled: _Compiled, m: int, opts: solvers.Options,
                solver: Any, on_failure: str, dtype: np.dtype,
                z0: np.ndarray, *params: np.ndarray) -> tuple:
    """The forward solve on concrete values: (z_full, *Info fields) as NumPy arrays."""
    z0 = np.asarray(z0)
    params = tuple(np.asarray(p) for p in params)
    for i, p in enumerate([z0, *params]):
        if np.issubdtype(p.dtype, np.floating) and not np.all(np.isfinite(p)):
            raise solvers.non_finite_input(node, i)
    n = z0.size
    system = JaxSystem(compiled, params, n + m, n if node.kind == "argmin" else None, node.kind,
                       dtype)
    z_init = np.concatenate([z0.reshape(-1).astype(float), np.zeros(m)])
    fixed_map = (lambda z: z - system.residual(z)) if node.kind == "fixed_point" else None
    z, info = solvers.solve(system, z_init, opts, fixed_map, solver)
    if not info.converged:
        if on_failure == "raise":
            raise NodeError(node.kind, info)
        z = np.full_like(z, np.nan)
    return (z.astype(dtype), *(np.asarray(v, dtype=dtype) for v in info))


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def call(node: Any, z0: jax.Array, params: Sequence[Any], overrides: dict,
         return_info: bool) -> Any:
    """Solve the node at (z0, params) and differentiate it by the IFT (``custom_root``)."""
    if not jnp.issubdtype(z0.dtype, jnp.floating):
        raise ParameterError(f"{node!r}: z0 must be a floating array, got dtype {z0.dtype}")
    dtype = np.dtype(z0.dtype)
    opts, on_failure, solver = node.options(dtype, overrides)
    params = tuple(jnp.asarray(p) for p in params)
    shape = tuple(z0.shape)
    n = math.prod(shape)
    m = 0
    if node.eq is not None:
        m = math.prod(jax.eval_shape(lambda y, *p: jnp.asarray(node.eq(y, *p)), z0, *params).shape)
    G, compiled = _compiled(node, shape, m)
    host = functools.partial(_host_solve, node, compiled, m, opts, solver, on_failure, dtype)
    size = n + m
    # Info's fields travel as floats of z's dtype (custom_root's aux outputs get tangents).
    result_shapes = (jax.ShapeDtypeStruct((size,), dtype), *[jax.ShapeDtypeStruct((), dtype)] * 5)
    z0_flat = jnp.concatenate([z0.reshape(-1), jnp.zeros(m, dtype)])

    done = None
    if all(_concrete(x) for x in (z0, *params)):
        done = host(np.asarray(z0), *(np.asarray(p) for p in params))

        def solve(_: Any, x0: jax.Array) -> tuple:
            return jnp.asarray(done[0]), tuple(jnp.asarray(v) for v in done[1:])
    else:
        frozen = tuple(jax.lax.stop_gradient(p) for p in params)

        def solve(_: Any, x0: jax.Array) -> tuple:
            out = jax.pure_callback(host, result_shapes, jax.lax.stop_gradient(z0), *frozen,
                                    vmap_method="sequential")
            return out[0], tuple(out[1:])

    def tangent_solve(g: Callable, y: jax.Array) -> jax.Array:
        # Linear in y (JAX transposes it for reverse mode): the failure mask depends on ∂G/∂z
        # only. A NaN node (on_failure="nan") has a NaN ∂G/∂z and gets zero derivatives.
        if size <= opts.dense_max:
            J = jax.jacfwd(g)(jnp.zeros_like(y))
            ok = jnp.all(jnp.isfinite(J))
            J = jnp.where(ok, J, jnp.eye(size, dtype=J.dtype))
            return jnp.linalg.solve(J, jnp.where(ok, y, 0.0))
        ok = jnp.all(jnp.isfinite(g(jnp.ones_like(y))))

        def gmres(matvec: Callable, b: jax.Array) -> jax.Array:
            return jax.scipy.sparse.linalg.gmres(matvec, b, tol=solvers.GMRES_RTOL, atol=0.0)[0]

        # custom_linear_solve makes GMRES transposable (GMRES on the transposed map).
        return jax.lax.custom_linear_solve(lambda v: jnp.where(ok, g(v), v),
                                           jnp.where(ok, y, 0.0), gmres, transpose_solve=gmres)

    z, fields = jax.lax.custom_root(lambda z: G(z, *params), z0_flat, solve, tangent_solve,
                                    has_aux=True)
    y = jnp.asarray(z[:n]).reshape(shape)
    if not return_info:
        return y
    if done is not None:
        status, iterations, *rest = (v.item() for v in done[1:])
        return y, Info(int(status), int(iterations), *rest)
    return y, Info(*fields)
