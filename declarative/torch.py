"""export (PyTorch): the layer as a ``torch.nn.Module`` with backward and forward-mode AD.

A thin adapter over `declarative.layer`: tensors go to NumPy float64, the layer
solves and differentiates, results come back in the inputs' dtype and device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch._C._functorch import (
    TransformType,
    get_interpreter_stack,
    get_unwrapped,
    is_functorch_wrapped_tensor,
    maybe_current_level,
    maybe_get_level,
)

from declarative.errors import SECOND_ORDER
from declarative.layer import Forward, Layer


def _result_dtype(params: tuple[torch.Tensor, ...]) -> torch.dtype:
    dtype = None
    for p in params:
        if p.is_floating_point():
            dtype = p.dtype if dtype is None else torch.promote_types(dtype, p.dtype)
    return dtype if dtype is not None else torch.get_default_dtype()


def _tensors(layer: Layer, values: tuple) -> tuple[tuple[torch.Tensor, ...], torch.dtype]:
    """The parameter values as tensors, each checked to be real (not complex, None, a string
    or another object) before anything casts it to float64, and the outputs' dtype.

    A NumPy array keeps its dtype (copied where torch cannot share its memory: negative
    strides, read-only; float64 where torch has no such dtype, as long double). A Python
    number or nested list is weak, as in torch's own type promotion: the outputs' dtype is
    the promoted floating dtype of the tensors and arrays (torch's default dtype where there
    are none), and the number reaches the float64 solve as itself, not as float32's rounding
    of it, on the device of the first tensor or array."""
    if len(values) != len(layer.parameters):
        layer.batch(values)  # raises the count error, naming the parameters
    out: list[torch.Tensor] = []
    strong = []
    weak = []  # the indices of the Python numbers and lists
    for spec, v in zip(layer.parameters, values, strict=True):
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise spec.not_real(v, "tensor")
            v = np.require(v, requirements=["C", "W"])
            try:
                v = torch.from_numpy(v)
            except TypeError:  # (a dtype torch lacks)
                v = torch.from_numpy(v.astype(np.float64))
        elif not isinstance(v, torch.Tensor):
            try:
                a = np.asarray(v)
                if a.dtype.kind not in "biuf":
                    raise TypeError
                v = torch.from_numpy(a.astype(np.float64))
            except (TypeError, ValueError, RuntimeError, OverflowError):
                raise spec.not_real(v, "tensor") from None
            weak.append(len(out))
            out.append(v)
            continue
        if v.is_complex():
            raise spec.not_real(v, "tensor")
        out.append(v)
        strong.append(v)
    if strong:  # the weak ones on the tensors' device, where the outputs go
        for i in weak:
            out[i] = out[i].to(strong[0].device)
    return tuple(out), _result_dtype(tuple(strong))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _signature_kept(fn):
    """``fn`` with its signature worked out once. `torch.autograd.Function.apply` binds its
    arguments through ``inspect.signature(forward)`` on every call where ``setup_context`` is
    defined (about 10 µs, ~1% of a small layer's call), and `inspect` reads a function's
    ``__signature__`` before anything else."""
    fn.__signature__ = inspect.signature(fn)
    return fn


class _LayerFunction(torch.autograd.Function):
    """(params...) ↦ (outputs..., Forward); VJP in ``backward``, JVP in ``jvp``."""

    @staticmethod
    @_signature_kept
    def forward(layer: Layer, options: dict, *params: torch.Tensor):
        options = dict(options)
        dtype = options.pop("dtype", None)  # the outputs' (`_tensors`), else the inputs'
        fwd = layer.forward([_numpy(p) for p in params], **options)
        dtype = _result_dtype(params) if dtype is None else dtype
        device = params[0].device if params else torch.device("cpu")
        fwd.meta = _Meta(
            params=[(p.dtype if p.is_floating_point() else dtype, p.device) for p in params],
            outputs=[(dtype, device)] * len(fwd.outputs),
        )
        outs = tuple(
            torch.as_tensor(o if fwd.batched else o[0], dtype=dtype, device=device)
            for o in fwd.outputs
        )
        return (*outs, fwd)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.fwd = output[-1]
        params = inputs[2:]
        ctx.save_for_backward(*params)
        ctx.save_for_forward(*params)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, layer: Layer, options: dict, *params: torch.Tensor):
        """torch.func.vmap: fold the vmapped dimension into the layer's own batch (one solve)."""
        dims = in_dims[2:]
        if all(d is None for d in dims):
            res = _LayerFunction.apply(layer, options, *params)
            return res, (None,) * len(res)
        xs = [p.movedim(d, 0) if d is not None else p for p, d in zip(params, dims, strict=True)]
        per_call = [x.dim() - (d is not None) == len(spec.shape) + 1
                    for x, d, spec in zip(xs, dims, layer.parameters, strict=True)]
        B0 = next((x.shape[int(d is not None)] for x, d, pc in zip(xs, dims, per_call, strict=True)
                   if pc), None)
        fold = _Fold(_level(), info.batch_size, B0, per_call)
        res = _LayerFunction.apply(layer, options, *fold.fold(xs, dims))
        fwd = res[-1]
        fwd.fold = fold
        outs = [fold.unfold(o) for o in res[:-1]]
        return (*outs, fwd), (0,) * len(outs) + (None,)

    @staticmethod
    def backward(ctx: Any, *grads):
        if not torch.is_grad_enabled():
            # A plain backward (no create_graph, no torch.func transform): nothing will
            # differentiate the VJP itself, so it runs directly, without the anchor and the
            # second autograd Function (a third of the backward's time on a small problem).
            return (None, None, *_cotangent(ctx.fwd, _to_numpy(grads[:-1])))
        anchor = _anchor(ctx.saved_tensors)
        return (None, None, *_Cotangent.apply(ctx.fwd, anchor, *grads[:-1]))

    @staticmethod
    def jvp(ctx: Any, _layer_t, _options_t, *tangents):
        if _differentiated_outside(ctx.saved_tensors, _level()):
            raise NotImplementedError(SECOND_ORDER)
        anchor = _anchor(ctx.saved_tensors)
        return (*_Tangent.apply(ctx.fwd, anchor, *tangents), None)


def _anchor(params) -> torch.Tensor:
    """A zero that depends on the parameters, through `_Refuse`.

    The VJP and JVP are linear maps at a fixed solution, evaluated by autograd Functions
    that take this zero as an extra input. Any derivative *of* them with respect to the
    parameters (second derivatives, Hessians) then has to pass through `_Refuse`, which
    raises, instead of being silently computed as if the Jacobian did not depend on the
    parameters. Derivatives of the linear maps with respect to their own inputs (the
    double-backward trick of ``torch.autograd.functional.jvp``) do not reach the parameters,
    so autograd never runs `_Refuse`'s backward for them.
    """
    zero = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.is_floating_point():
            zero = zero + (p * 0).sum().to(torch.float64)
    return _Refuse.apply(zero)


class _Refuse(torch.autograd.Function):
    """x ↦ x, whose derivative (backward or forward mode) raises `NotImplementedError`."""

    @staticmethod
    @_signature_kept
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        raise NotImplementedError(SECOND_ORDER)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor):
        raise NotImplementedError(SECOND_ORDER)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor):
        return _Refuse.apply(x), in_dims[0]


def _differentiated_outside(params, level: int | None) -> bool:
    """Whether a forward-mode transform enclosing ``level`` (torch.func.jvp / jacfwd around
    the one being evaluated) differentiates any of ``params``.

    PyTorch evaluates an autograd Function's ``jvp`` with forward-mode AD switched off, so
    such an outer transform would see the output tangents as constants: a second derivative
    of zero, silently. Found by the functorch levels the parameters are wrapped at.
    """
    if level is None:
        return False
    outer = {ci.level() for ci in get_interpreter_stack() or ()
             if ci.key() == TransformType.Jvp and ci.level() < level}
    for p in params:
        while outer and is_functorch_wrapped_tensor(p):
            if maybe_get_level(p) in outer:
                return True
            p = get_unwrapped(p)
    return False


class _Meta:
    """dtype and device of each parameter and output, to hand results back alike."""

    def __init__(self, params: list, outputs: list) -> None:
        self.params, self.outputs = params, outputs


def _to_numpy(ts: Sequence[torch.Tensor | None]) -> list[np.ndarray | None]:
    """Tensors → NumPy float64 arrays; None stays None."""
    return [None if t is None else _numpy(t) for t in ts]


def _cotangent(fwd: Forward, grads) -> tuple[torch.Tensor, ...]:
    g = [None if gi is None else (gi if fwd.batched else gi[None]) for gi in grads]
    return tuple(
        torch.as_tensor(d, dtype=dt, device=dev)
        for d, (dt, dev) in zip(fwd.vjp(g), fwd.meta.params, strict=True)
    )


def _tangent(fwd: Forward, tangents) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.as_tensor(d if fwd.batched else d[0], dtype=dt, device=dev)
        for d, (dt, dev) in zip(fwd.jvp(tangents), fwd.meta.outputs, strict=True)
    )


def _level() -> int | None:
    """The innermost active torch.func transform's level (None outside torch.func)."""
    return maybe_current_level()


class _Fold:
    """How a vmapped call was folded into one batched solve: V vmapped examples, each with
    its own batch B0 (or None), ``per_call`` telling which parameters each example batched."""

    def __init__(self, level, V: int, B0: int | None, per_call: list[bool]) -> None:
        self.level, self.V, self.B0, self.per_call = level, V, B0, per_call

    def fold(self, xs, dims) -> list[torch.Tensor]:
        """Parameter-shaped tensors (vmapped dim first, or none) → one batch (V·B0, *shape)."""
        V, B0 = self.V, self.B0
        out = []
        for x, d, pc in zip(xs, dims, self.per_call, strict=True):
            if d is None:
                x = x.expand(V, *x.shape)
            if B0 is not None and not pc:
                x = x.unsqueeze(1).expand(V, B0, *x.shape[1:])
            out.append(x.reshape(V * (B0 or 1), *x.shape[2 if B0 is not None else 1 :]))
        return out

    def unfold(self, o: torch.Tensor) -> torch.Tensor:
        return o.reshape(self.V, self.B0, *o.shape[1:]) if self.B0 is not None else o

    def unfold_param(self, g: torch.Tensor, per_call: bool) -> torch.Tensor:
        """A cotangent of the folded (batched) parameter → per example, summed over the
        example's own batch where the example did not batch this parameter."""
        g = self.unfold(g)
        return g.sum(dim=1) if self.B0 is not None and not per_call else g


def _fold_anchor(anchor: torch.Tensor, dim) -> torch.Tensor:
    return anchor if dim is None else anchor.sum()


def _vmap_linear(fn, info: Any, in_dims: tuple, fwd: Forward, anchor: torch.Tensor,
                 *vs: torch.Tensor, adjoint: bool):
    """vmap rule of a linear map (VJP if ``adjoint``, else JVP) at a solution ``fwd``.

    If ``fwd`` came from folding this very vmap level (vmap of grad / of jvp), the vmapped
    dimension is the examples' batch: fold the directions the same way. Otherwise it
    enumerates directions (jacrev / jacfwd): one linear map each, reusing the factorization.
    """
    fold = fwd.fold
    dims = in_dims[2:]
    anchor_dim = in_dims[1]
    if fold is not None and fold.level == _level() and fold.V == info.batch_size:
        moved = [v.movedim(d, 0) if d is not None else v for v, d in zip(vs, dims, strict=True)]
        if adjoint:  # output cotangents: shaped like the outputs (per example batched or not)
            flat = []
            for v, d in zip(moved, dims, strict=True):
                v = v if d is not None else v.expand(fold.V, *v.shape)
                flat.append(v.reshape(fold.V * fold.B0, *v.shape[2:]) if fold.B0 is not None
                            else v)
            res = fn.apply(fwd, _fold_anchor(anchor, anchor_dim), *flat)
            out = tuple(fold.unfold_param(g, pc) for g, pc in zip(res, fold.per_call,
                                                                   strict=True))
        else:  # parameter tangents: fold like the parameters themselves
            res = fn.apply(fwd, _fold_anchor(anchor, anchor_dim), *fold.fold(moved, dims))
            out = tuple(fold.unfold(o) for o in res)
        return out, (0,) * len(out)
    V = info.batch_size
    stacked = [v.movedim(d, 0) if d is not None else v.expand(V, *v.shape)
               for v, d in zip(vs, dims, strict=True)]
    anchors = anchor.movedim(anchor_dim, 0) if anchor_dim is not None else None
    if V == 0:  # no direction: the map applied to a zero one gives the shapes, none kept
        res = fn.apply(fwd, anchor if anchors is None else anchors.new_zeros(anchors.shape[1:]),
                       *(v.new_zeros(v.shape[1:]) for v in stacked))
        out = tuple(r.unsqueeze(0)[:0] for r in res)
        return out, (0,) * len(out)
    rows = [fn.apply(fwd, anchor if anchors is None else anchors[k], *(v[k] for v in stacked))
            for k in range(V)]
    out = tuple(torch.stack([r[j] for r in rows]) for j in range(len(rows[0])))
    return out, (0,) * len(out)


def _linear_map(name: str, doc: str, apply, transpose,
                transposed: Callable[[], type[torch.autograd.Function]],
                adjoint: bool) -> type[torch.autograd.Function]:
    """An autograd Function for a linear map at a solution (the VJP or the JVP).

    Linear, so its derivative (jvp) is itself; its backward is the transposed map
    (``transpose`` on arrays, or the Function ``transposed()`` where the backward must itself
    be differentiable or vmapped); its vmap rule is `_vmap_linear`.
    """

    class LinearMap(torch.autograd.Function):
        @staticmethod
        @_signature_kept
        def forward(fwd: Forward, anchor: torch.Tensor, *vs: torch.Tensor):
            return apply(fwd, _to_numpy(vs))

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
            ctx.fwd = inputs[0]
            ctx.save_for_backward(inputs[1])

        @staticmethod
        def backward(ctx: Any, *gg):
            # The derivative with respect to the map's own input is its transpose, exact. The
            # anchor's gradient is a zero that autograd hands on to `_Refuse`, whose backward
            # raises if (and only if) a derivative with respect to the parameters is wanted.
            zero = torch.zeros((), dtype=torch.float64)
            if not torch.is_grad_enabled() and _level() is None:
                return (None, zero, *transpose(ctx.fwd, _to_numpy(gg)))
            # Differentiable (create_graph) or under torch.func: the transpose as a Function,
            # anchored like this one, so that differentiating it again is refused as well.
            (anchor,) = ctx.saved_tensors
            return (None, zero, *transposed().apply(ctx.fwd, anchor, *gg))

        @staticmethod
        def jvp(ctx: Any, _fwd_t, anchor_t, *tangents):
            if anchor_t is not None:
                raise NotImplementedError(SECOND_ORDER)
            return LinearMap.apply(ctx.fwd, torch.zeros((), dtype=torch.float64), *tangents)

        @staticmethod
        def vmap(info: Any, in_dims: tuple, fwd: Forward, anchor: torch.Tensor,
                 *vs: torch.Tensor):
            return _vmap_linear(LinearMap, info, in_dims, fwd, anchor, *vs, adjoint=adjoint)

    LinearMap.__name__ = LinearMap.__qualname__ = name
    LinearMap.__doc__ = doc
    return LinearMap


_Cotangent: type[torch.autograd.Function] = _linear_map(
    "_Cotangent", "Output cotangents ↦ parameter cotangents (the VJP).",
    _cotangent, _tangent, lambda: _Tangent, adjoint=True)
_Tangent: type[torch.autograd.Function] = _linear_map(
    "_Tangent", "Parameter tangents ↦ output tangents (the JVP).",
    _tangent, _cotangent, lambda: _Cotangent, adjoint=False)


class TorchLayer(torch.nn.Module):
    """``(x, ...) = layer(theta, ...)``: a convex optimization problem as a module.

    Parameters are positional, in the order given to `declarative.compile`; each is
    unbatched (its CVXPY shape) or batched (one more leading dimension). Keyword
    arguments ``solver_args``, ``on_failure`` and ``solver`` override the compile-time values;
    ``return_info=True`` also returns the per-instance `SolveInfo`. Under ``torch.compile``
    the solve runs eagerly, a graph break between the compiled parts around it.
    """

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer

    def extra_repr(self) -> str:
        return repr(self.layer)

    # torch.compile runs the solve eagerly (a graph break) and compiles what is around it:
    # Dynamo cannot trace NumPy and SciPy's factorizations, and tracing into the layer's
    # Python failed inside the certificate
    @torch.compiler.disable
    def forward(self, *params: torch.Tensor, solver_args: dict | None = None,
                on_failure: str | None = None, solver: str | None = None,
                return_info: bool = False):
        params, dtype = _tensors(self.layer, params)
        options = {"solver_args": solver_args, "on_failure": on_failure, "solver": solver,
                   "dtype": dtype}
        *outs, fwd = _LayerFunction.apply(self.layer, options, *params)
        return (tuple(outs), fwd.info) if return_info else tuple(outs)
