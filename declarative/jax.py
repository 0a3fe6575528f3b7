"""export (JAX): the layer as a function that works under jit, vmap, grad, jvp and their mixes.

``f = layer.jax()``; ``outputs = f(*params, solver_args=None, on_failure=None, solver=None)``
with the calling convention of the torch module (`declarative.torch`).

How it is built
---------------
* The solve is one ``jax.pure_callback`` (``vmap_method="expand_dims"``) wrapped in a
  ``jax.custom_jvp``. The callback returns the outputs and, as one opaque ``uint32``
  residual array, the refined solution ``(x, y, s, ok)`` bit-cast from float64, so the
  derivative callbacks can rebuild the linearization with `Layer.restore` without solving
  again and without losing precision (even when ``jax_enable_x64`` is off).
* The JVP rule computes the primal outputs and residual with that callback and the output
  tangents with the primitive ``declarative_linear`` (mode ``"jvp"``): a linear map of the
  tangents, evaluated by a second pure callback (`Forward.jvp`). Its transpose rule is the
  same primitive in mode ``"vjp"`` (`Forward.vjp`) and vice versa, so reverse mode (grad,
  jacrev, vjp) is JAX transposing the JVP. ``jax.custom_derivatives.linear_call`` would
  express the same pairing, but it has no batching rule in JAX 0.10, so it fails under
  ``vmap`` (and ``jacfwd``/``jacrev``, which are vmaps); our primitive has one.
* Batching never loops: under ``vmap`` every callback receives arrays with extra leading
  axes (size 1 where an argument was not mapped) and solves / differentiates all instances
  as one batch. Parameters are canonicalised to one leading batch axis (size 1 when not
  batched), so the callbacks see ``(*vmap axes, batch, *shape)`` for every argument. A
  derivative callback factorizes the derivative system once per distinct instance and
  reuses it for every tangent/cotangent direction (jacfwd/jacrev rows), and it sums
  cotangents over axes where a parameter was broadcast.
* A call on concrete arrays (no transformation at all) skips the callback and calls
  `Layer.forward` directly, so errors reach the user as the library's own exceptions.
  Under a transformation, value checks (NaN/inf, declared domains such as ``pos=True``)
  and ``on_failure="raise"`` can only run inside the callback; JAX re-raises those as
  ``JaxRuntimeError`` whose message ends with the library's message (parameter name,
  batch indices).

Only first derivatives are supported (the solution map's second derivatives are not
implemented); differentiating a derivative raises ``NotImplementedError``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from declarative.errors import SECOND_ORDER, SolverError
from declarative.layer import Layer, check_finite_in_domain

__all__ = ["jax_layer"]


def _result_dtype(arrays: Sequence[jax.Array]) -> np.dtype:
    """The promoted floating dtype of the inputs (the default float if none is floating)."""
    floats = [a for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)]
    return np.dtype(jnp.result_type(*floats) if floats else jnp.result_type(float))


class _Context:
    """What is static about a call: the layer, its options, which inputs are batched, dtype.

    One context per distinct (options, batched flags, dtype), cached by `jax_layer`, so the
    callbacks and the ``custom_jvp`` function are the same objects from call to call.
    """

    def __init__(self, layer: Layer, solver_args: dict | None, on_failure: str | None,
                 solver: str | None, batched: tuple[bool, ...], dtype: np.dtype) -> None:
        self.layer = layer
        self.solver_args = solver_args
        self.on_failure = on_failure
        self.solver = solver
        self.batched = batched
        self.dtype = dtype
        t = layer.template
        self.n, self.m = t.n, t.m
        self.words = 2 * (t.n + 2 * t.m + 1)  # float64 (x, y, s, ok) as uint32 words
        self._linear_fns: dict[tuple, Callable] = {}
        self.solve = self._make_solve()

    # -- the primal ---------------------------------------------------------------------
    def _make_solve(self) -> Callable:
        @jax.custom_jvp
        def solve(*params):
            *outs, _ = self.primal(params)
            return tuple(outs)

        @jax.custom_jvp
        def solve_with_state(*params):
            return tuple(self.primal(params))

        @solve_with_state.defjvp
        def _second_order(primals, tangents):
            raise NotImplementedError(SECOND_ORDER)

        @solve.defjvp
        def solve_jvp(primals, tangents):
            *outs, state = solve_with_state(*primals)
            touts = _linear_p.bind(*primals, state, *tangents, call=self, mode="jvp",
                                   out_shapes=tuple(o.shape for o in outs))
            return tuple(outs), tuple(touts)

        return solve

    def primal(self, params: Sequence[jax.Array]) -> list[jax.Array]:
        B = max((p.shape[0] for p in params), default=1)
        result = [jax.ShapeDtypeStruct((B, *o.shape), self.dtype) for o in self.layer.outputs]
        result.append(jax.ShapeDtypeStruct((B, self.words), np.uint32))
        return list(jax.pure_callback(self.host_solve, result, *params,
                                      vmap_method="expand_dims"))

    def host_solve(self, *params) -> list[np.ndarray]:
        """(*lead, *shape) parameter arrays → outputs (*lead, *out_shape) and the state."""
        specs = self.layer.parameters
        ps = [np.asarray(p) for p in params]
        nlead = ps[0].ndim - len(specs[0].shape) if ps else 1
        F = np.broadcast_shapes(*(p.shape[:nlead] for p in ps)) if ps else (1,)
        N = math.prod(F)
        self._check_values(ps, nlead)
        values = [np.broadcast_to(p.astype(np.float64, copy=False), (*F, *s.shape))
                  .reshape((N, *s.shape)) for p, s in zip(ps, specs, strict=True)]
        try:
            fwd = self.layer.forward(values, solver_args=self.solver_args,
                                     on_failure=self.on_failure, solver=self.solver)
        except SolverError as e:
            if nlead == 1:
                raise
            raise SolverError(
                e.failures, e.batch_size,
                hint=("under jax.vmap the batch index counts the instances in row-major order "
                      f"over the leading axes {tuple(F)} (vmapped axes first, then the batch "
                      "axis)")) from None
        outs = [o.reshape((*F, *s.shape)).astype(self.dtype)
                for o, s in zip(fwd.outputs, self.layer.outputs, strict=True)]
        x, y, s, ok = fwd.state()
        state = np.concatenate([x, y, s, ok[:, None].astype(np.float64)], axis=1)
        state = np.ascontiguousarray(state, dtype=np.float64).view(np.uint32)
        return [*outs, state.reshape((*F, self.words))]

    def _check_values(self, ps: list[np.ndarray], nlead: int) -> None:
        """NaN/inf parameters and values outside a parameter's declared domain, reported with
        the parameter's name and its own indices (`declarative.layer.check_finite_in_domain`)."""
        for p, spec, user_batched in zip(ps, self.layer.parameters, self.batched, strict=True):
            lead = p.shape[:nlead]
            where = functools.partial(_where, lead=lead, user_batched=user_batched)
            check_finite_in_domain(spec, p.reshape((-1, *spec.shape)), where)

    # -- the derivatives ------------------------------------------------------------------
    def linear_fn(self, mode: str, out_shapes: tuple) -> Callable:
        key = (mode, out_shapes)
        fn = self._linear_fns.get(key)
        if fn is None:
            fn = self._linear_fns.setdefault(key, functools.partial(self.host_linear, mode,
                                                                    out_shapes))
        return fn

    def host_linear(self, mode: str, out_shapes: tuple, *args) -> list[np.ndarray]:
        """JVP (tangents of the parameters → of the outputs) or VJP (cotangents of the outputs
        → of the parameters) for every instance, all arrays with the same leading axes."""
        L = self.layer
        k = len(L.parameters)
        ps = [np.asarray(a) for a in args[:k]]
        state = np.asarray(args[k])
        lin = [np.asarray(a) for a in args[k + 1 :]]
        nlead = state.ndim - 1
        R = np.broadcast_shapes(*(a.shape[:nlead] for a in (*ps, state)))
        F = np.broadcast_shapes(R, *(a.shape[:nlead] for a in lin),
                                *(tuple(s[:nlead]) for s in out_shapes))
        # Axes along which only the (co)tangents vary: one instance, many directions.
        extra = [a for a in range(nlead) if R[a] == 1 and F[a] > 1]
        rest = [a for a in range(nlead) if a not in extra]
        E, I_ = math.prod(F[a] for a in extra), math.prod(R)
        specs = [p.shape for p in L.parameters]
        in_shapes, res_shapes = ((specs, [o.shape for o in L.outputs]) if mode == "jvp"
                                 else ([o.shape for o in L.outputs], specs))
        values = [np.broadcast_to(p.astype(np.float64, copy=False), (*R, *s)).reshape((I_, *s))
                  for p, s in zip(ps, specs, strict=True)]
        st = np.ascontiguousarray(np.broadcast_to(state, (*R, self.words)).reshape(I_, -1))
        st = st.view(np.float64)
        n, m = self.n, self.m
        fwd = L.restore(values, st[:, :n], st[:, n : n + m], st[:, n + m : n + 2 * m],
                        st[:, -1] > 0.5)
        directions = []
        for a, s in zip(lin, in_shapes, strict=True):
            full = np.broadcast_to(a.astype(np.float64, copy=False), (*F, *s))
            perm = (*extra, *rest, *range(nlead, nlead + len(s)))
            directions.append(np.transpose(full, perm).reshape((E, I_, *s)))
        apply = fwd.jvp if mode == "jvp" else fwd.vjp
        results = [apply([d[e] for d in directions]) for e in range(E)]
        order = np.argsort([*extra, *rest])
        outs = []
        for j, (s, target) in enumerate(zip(res_shapes, out_shapes, strict=True)):
            r = np.stack([res[j] for res in results]).reshape(
                (*(F[a] for a in extra), *(F[a] for a in rest), *s))
            r = np.transpose(r, (*order, *range(nlead, nlead + len(s))))
            summed = tuple(a for a in range(nlead) if target[a] == 1 and F[a] > 1)
            if summed:
                r = r.sum(axis=summed, keepdims=True)
            outs.append(np.ascontiguousarray(r.reshape(target), dtype=self.dtype))
        return outs


def _where(bad: np.ndarray, lead: tuple[int, ...], user_batched: bool) -> str:
    """Where the offending instances ``bad`` (flattened over the leading axes ``lead``: the
    vmap axes, outermost first, then the layer's batch axis) are, in the user's terms."""
    names = [*(f"vmap axis {a}" for a in range(len(lead) - 1)), "batch"]
    axes = [k for k in range(len(lead))
            if lead[k] > 1 or (k == len(lead) - 1 and user_batched)]
    if not axes:
        return "(unbatched value)"
    idx = [tuple(int(i[k]) for k in axes) for i in np.argwhere(bad.reshape(lead))]
    shown = [str(i[0]) if len(i) == 1 else str(i) for i in idx[:10]]
    more = f", ... ({len(idx)} in all)" if len(idx) > 10 else ""
    label = names[axes[0]] if len(axes) == 1 else "(" + ", ".join(names[k] for k in axes) + ")"
    return f"at {label} index [{', '.join(shown)}{more}]"


# -- the linear primitive: JVP and VJP, each other's transpose -----------------------------
_linear_p = Primitive("declarative_linear")
_linear_p.multiple_results = True
_FLIP = {"jvp": "vjp", "vjp": "jvp"}


def _linear_abstract(*args, call: _Context, mode: str, out_shapes: tuple):
    return [jax.core.ShapedArray(s, call.dtype) for s in out_shapes]


def _linear_impl(*args, call: _Context, mode: str, out_shapes: tuple):
    result = [jax.ShapeDtypeStruct(s, call.dtype) for s in out_shapes]
    # Never vmapped itself: the batching rule below rebinds the primitive.
    return jax.pure_callback(call.linear_fn(mode, out_shapes), result, *args)


def _linear_batch(args, dims, *, call: _Context, mode: str, out_shapes: tuple):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    args = [jnp.expand_dims(a, 0) if d is None else jnp.moveaxis(a, d, 0)
            for a, d in zip(args, dims, strict=True)]
    out = _linear_p.bind(*args, call=call, mode=mode,
                         out_shapes=tuple((size, *s) for s in out_shapes))
    return out, [0] * len(out)


def _linear_transpose(cts, *args, call: _Context, mode: str, out_shapes: tuple):
    k = len(call.layer.parameters) + 1
    fixed, lin = args[:k], args[k:]
    if any(ad.is_undefined_primal(a) for a in fixed):
        raise NotImplementedError(SECOND_ORDER)
    undefined = [ad.is_undefined_primal(a) for a in lin]
    if all(type(ct) is ad.Zero for ct in cts):
        return [None] * len(args)
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    shapes = tuple(tuple(a.aval.shape) if u else tuple(np.shape(a))
                   for a, u in zip(lin, undefined, strict=True))
    out = _linear_p.bind(*fixed, *cts, call=call, mode=_FLIP[mode], out_shapes=shapes)
    return [None] * k + [o if u else None for o, u in zip(out, undefined, strict=True)]


def _linear_jvp(primals, tangents, *, call: _Context, mode: str, out_shapes: tuple):
    k = len(call.layer.parameters) + 1
    if any(type(t) is not ad.Zero for t in tangents[:k]):
        raise NotImplementedError(SECOND_ORDER)
    out = _linear_p.bind(*primals, call=call, mode=mode, out_shapes=out_shapes)
    lin_t = [ad.instantiate_zeros(t) for t in tangents[k:]]
    t_out = _linear_p.bind(*primals[:k], *lin_t, call=call, mode=mode, out_shapes=out_shapes)
    return out, t_out


_linear_p.def_abstract_eval(_linear_abstract)
_linear_p.def_impl(_linear_impl)
mlir.register_lowering(_linear_p, mlir.lower_fun(_linear_impl, multiple_results=True))
batching.primitive_batchers[_linear_p] = _linear_batch
ad.primitive_transposes[_linear_p] = _linear_transpose
ad.primitive_jvps[_linear_p] = _linear_jvp


# -- the public function -------------------------------------------------------------------
def _arrays(layer: Layer, values: tuple) -> list[jax.Array]:
    """The parameter values as JAX arrays (or tracers), each checked to be real (not complex,
    None, a string or another object) before anything casts it to the result dtype."""
    if len(values) != len(layer.parameters):
        layer.batch(values)  # raises the count error, naming the parameters
    out = []
    for spec, v in zip(layer.parameters, values, strict=True):
        try:
            a = v if isinstance(v, jax.Array) else jnp.asarray(v)
        except (TypeError, ValueError):
            raise spec.not_real(v) from None
        if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)
                or jnp.issubdtype(a.dtype, jnp.bool_)):
            raise spec.not_real(a)
        out.append(a)
    return out


def jax_layer(layer: Layer) -> Callable[..., tuple[jax.Array, ...]]:
    """``layer`` as a JAX function ``f(*params, solver_args=None, on_failure=None,
    solver=None)``.

    Parameters are positional, in the order given to `declarative.compile`; each is
    unbatched (its CVXPY shape) or batched (one more leading axis, one batch size for all);
    the outputs are batched iff some parameter is. ``solver_args``, ``on_failure`` and
    ``solver`` are static Python values overriding the compile-time ones. Works under ``jax.jit``,
    ``jax.vmap`` (one batched solve per call), ``jax.grad``/``jax.vjp``/``jax.jacrev`` and
    ``jax.jvp``/``jax.jacfwd``, and compositions of them; outputs have the inputs' dtype.
    """
    contexts: dict[Any, _Context] = {}

    def layer_fn(*params: Any, solver_args: dict | None = None, on_failure: str | None = None,
                 solver: str | None = None) -> tuple[jax.Array, ...]:
        arrays = _arrays(layer, params)
        # Shape checks with the library's own messages (at trace time: placeholders, not
        # values; the values are checked when they are known, in `Layer.forward`).
        _, batched = layer.batch([np.broadcast_to(0.0, np.shape(a)) for a in arrays],
                                 check_values=False)
        layer.resolve_options(solver_args, on_failure, solver)  # validates them (ProblemError)
        dtype = _result_dtype(arrays)
        if not any(isinstance(a, jax.core.Tracer) for a in arrays):
            # Concrete values, no transformation: no callback needed.
            fwd = layer.forward([np.asarray(a, dtype=np.float64) for a in arrays],
                                solver_args=solver_args, on_failure=on_failure, solver=solver)
            return tuple(jnp.asarray(o if fwd.batched else o[0], dtype=dtype)
                         for o in fwd.outputs)
        key = (repr(sorted((solver_args or {}).items())), on_failure, solver, tuple(batched),
               dtype)
        ctx = contexts.get(key)
        if ctx is None:
            ctx = contexts.setdefault(key, _Context(layer, solver_args, on_failure, solver,
                                                    tuple(batched), dtype))
        canon = [a.astype(dtype) if b else a.astype(dtype)[None]
                 for a, b in zip(arrays, batched, strict=True)]
        outs = ctx.solve(*canon)
        return tuple(outs) if any(batched) else tuple(o[0] for o in outs)

    layer_fn.layer = layer  # type: ignore[attr-defined]  # mypy does not model function attributes
    layer_fn.__doc__ = f"{layer!r} as a JAX function.\n\n{jax_layer.__doc__}"
    return layer_fn
