"""export (PyTorch): the layer as a ``torch.nn.Module`` with backward and forward-mode AD.

A thin adapter over `declarative.layer`: tensors go to NumPy float64, the layer
solves and differentiates, results come back in the inputs' dtype and device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from declarative.layer import Forward, Layer


def _result_dtype(params: tuple[torch.Tensor, ...]) -> torch.dtype:
    dtype = None
    for p in params:
        if p.is_floating_point():
            dtype = p.dtype if dtype is None else torch.promote_types(dtype, p.dtype)
    return dtype if dtype is not None else torch.get_default_dtype()


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


class _LayerFunction(torch.autograd.Function):
    """(params...) ↦ (outputs..., Forward); VJP in ``backward``, JVP in ``jvp``."""

    @staticmethod
    def forward(layer: Layer, options: dict, *params: torch.Tensor):
        fwd = layer.forward([_numpy(p) for p in params], **options)
        dtype = _result_dtype(params)
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

    @staticmethod
    def backward(ctx: Any, *grads):
        return (None, None, *_Cotangent.apply(ctx.fwd, *grads[:-1]))

    @staticmethod
    def jvp(ctx: Any, _layer_t, _options_t, *tangents):
        return (*_Tangent.apply(ctx.fwd, *tangents), None)


class _Meta:
    """dtype and device of each parameter and output, to hand results back alike."""

    def __init__(self, params: list, outputs: list) -> None:
        self.params, self.outputs = params, outputs


def _to_numpy(ts, fwd: Forward) -> list:
    """Tensors shaped like outputs (or params) → NumPy with a batch axis; None stays None."""
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


class _Cotangent(torch.autograd.Function):
    """Output cotangents ↦ parameter cotangents (the VJP, linear; its derivative is the JVP)."""

    @staticmethod
    def forward(fwd: Forward, *grads: torch.Tensor):
        return _cotangent(fwd, _to_numpy(grads, fwd))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.fwd = inputs[0]

    @staticmethod
    def backward(ctx: Any, *gg):
        return (None, *_tangent(ctx.fwd, _to_numpy(gg, ctx.fwd)))

    @staticmethod
    def jvp(ctx: Any, _fwd_t, *tangents):
        return _Cotangent.apply(ctx.fwd, *tangents)


class _Tangent(torch.autograd.Function):
    """Parameter tangents ↦ output tangents (the JVP, linear; its adjoint is the VJP)."""

    @staticmethod
    def forward(fwd: Forward, *tangents: torch.Tensor):
        return _tangent(fwd, _to_numpy(tangents, fwd))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.fwd = inputs[0]

    @staticmethod
    def backward(ctx: Any, *gg):
        return (None, *_cotangent(ctx.fwd, _to_numpy(gg, ctx.fwd)))

    @staticmethod
    def jvp(ctx: Any, _fwd_t, *tangents):
        return _Tangent.apply(ctx.fwd, *tangents)


class TorchLayer(torch.nn.Module):
    """``(x, ...) = layer(theta, ...)``: a convex optimization problem as a module.

    Parameters are positional, in the order given to `declarative.compile`; each is
    unbatched (its CVXPY shape) or batched (one more leading dimension). Keyword
    arguments ``solver_args`` and ``on_failure`` override the compile-time values;
    ``return_info=True`` also returns the per-instance `SolveInfo`.
    """

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer

    def extra_repr(self) -> str:
        return repr(self.layer)

    def forward(self, *params: torch.Tensor, solver_args: dict | None = None,
                on_failure: str | None = None, return_info: bool = False):
        params = tuple(p if isinstance(p, torch.Tensor) else torch.as_tensor(p) for p in params)
        options = {"solver_args": solver_args, "on_failure": on_failure}
        *outs, fwd = _LayerFunction.apply(self.layer, options, *params)
        return (tuple(outs), fwd.info) if return_info else tuple(outs)
