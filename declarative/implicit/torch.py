"""Declarative nodes on torch tensors: forward solve off the tape, backward by the IFT.

How it is built
---------------
* The forward solve (`declarative.implicit.solvers`) runs on plain, detached tensors: no
  iterate is ever recorded by autograd.
* At the certified solution z*, G(z*, θ) is evaluated once *with* autograd (θ: the
  parameters and whatever tensors the user's function closes over, e.g. an ``nn.Module``'s
  weights) and passed through ``_DenseLink``/``_KrylovLink``, a ``torch.autograd.Function``
  whose value is z* and whose derivative with respect to that residual is −(∂G/∂z)⁻¹. By
  the implicit function theorem dz*/dθ = −(∂G/∂z)⁻¹ ∂G/∂θ, so autograd's chain rule through
  the one G evaluation gives exact gradients for every tensor G depends on. What the backward
  pass keeps is that one evaluation's graph and a factorization of ∂G/∂z: memory does not
  depend on the number of forward iterations.
* Dense (≤ ``dense_max`` unknowns): ∂G/∂z formed with ``torch.func.jacfwd`` and LU-factored;
  the link has ``backward``, ``jvp`` and ``generate_vmap_rule``, so ``torch.func.jvp``,
  ``torch.func.jacrev`` and ``torch.func.jacfwd`` work. Matrix-free: GMRES (SciPy) on
  ``torch.func.vjp``/``jvp`` products in ``backward``/``jvp``.
* ``torch.func.vmap`` over a node is not supported (the forward solver's iteration count
  depends on the data): put the batch into z instead.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor

from declarative.errors import ParameterError
from declarative.implicit import solvers
from declarative.implicit.solvers import GMRES_RTOL, Info, NodeError

__all__ = ["call"]

# torch's forward-mode AD levels are process-global: concurrent torch.func.jvp / jacfwd from
# several threads corrupt each other's levels, so the node's own forward-mode calls take turns.
_FORWARD_AD = threading.RLock()


def residual_fn(node: Any, shape: tuple) -> Callable[..., torch.Tensor]:
    """G(z_flat, *params) -> flat residual, in torch, for the node's kind."""
    n = math.prod(shape)
    fn, eq = node.fn, node.eq

    def checked(out: Any, expected: tuple, what: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ParameterError(f"{node!r}: {what} returned {got}; expected a tensor of "
                                 f"shape {expected}")
        return out

    if node.kind == "root":
        return lambda z, *p: checked(fn(z.reshape(shape), *p), shape, "F(z, *params)").reshape(-1)
    if node.kind == "fixed_point":
        return lambda z, *p: z - checked(fn(z.reshape(shape), *p), shape,
                                         "f(z, *params)").reshape(-1)

    def objective(y: torch.Tensor, *p: Any) -> torch.Tensor:
        return checked(fn(y.reshape(shape), *p), (), "objective(y, *params)")

    if eq is None:
        return lambda z, *p: torch.func.grad(objective)(z, *p)

    def constraint(y: torch.Tensor, *p: Any) -> torch.Tensor:
        return eq(y.reshape(shape), *p).reshape(-1)

    def lagrangian(y: torch.Tensor, lam: torch.Tensor, *p: Any) -> torch.Tensor:
        return objective(y, *p) + torch.dot(lam, constraint(y, *p))

    def kkt(z: torch.Tensor, *p: Any) -> torch.Tensor:
        y, lam = z[:n], z[n:]
        return torch.cat([torch.func.grad(lagrangian)(y, lam, *p), constraint(y, *p)])

    return kkt


class TorchSystem:
    """G and its derivatives as functions of flat float64 NumPy vectors (`solvers.System`)."""

    def __init__(self, G: Callable, params: Sequence[Any], size: int, n_primal: int | None,
                 kind: str, like: torch.Tensor) -> None:
        self.G, self.params, self.size, self.n_primal, self.kind = G, params, size, n_primal, kind
        self.dtype, self.device = like.dtype, like.device

    def tensor(self, v: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(v, dtype=float)).to(self.dtype).to(self.device)

    @staticmethod
    def array(t: torch.Tensor) -> np.ndarray:
        while is_functorch_wrapped_tensor(t):  # a tangent/cotangent inside torch.func
            t = get_unwrapped(t)
        with torch._C._DisableFuncTorch():
            return t.detach().to("cpu", torch.float64).numpy().copy()

    def g(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z, *self.params)

    def residual(self, z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.array(self.g(self.tensor(z)))

    def jvp(self, z: np.ndarray, v: np.ndarray) -> np.ndarray:
        with _FORWARD_AD, torch.no_grad():
            return self.array(torch.func.jvp(self.g, (self.tensor(z),), (self.tensor(v),))[1])

    def vjp(self, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            pullback = torch.func.vjp(self.g, self.tensor(z))[1]
            return self.array(pullback(self.tensor(u))[0])

    def jacobian(self, z: np.ndarray) -> np.ndarray:
        with _FORWARD_AD, torch.no_grad():
            return self.array(torch.func.jacfwd(self.g)(self.tensor(z)))


class _DenseLink(torch.autograd.Function):
    """Value z*; derivative −(∂G/∂z)⁻¹ with respect to the residual r = G(z*, θ) (IFT)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(r: torch.Tensor, zs: torch.Tensor, lu: torch.Tensor, piv: torch.Tensor):
        return zs.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        _, _, lu, piv = inputs
        ctx.save_for_backward(lu, piv)
        ctx.save_for_forward(lu, piv)
        ctx.lu, ctx.piv = lu, piv

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        lu, piv = ctx.saved_tensors
        u = torch.linalg.lu_solve(lu, piv, g.to(lu.dtype).unsqueeze(-1), adjoint=True)
        return -u.squeeze(-1).to(g.dtype), None, None, None

    @staticmethod
    def jvp(ctx: Any, tr: torch.Tensor, tz: Any, tlu: Any, tpiv: Any) -> torch.Tensor:
        d = torch.linalg.lu_solve(ctx.lu, ctx.piv, tr.to(ctx.lu.dtype).unsqueeze(-1))
        return -d.squeeze(-1).to(tr.dtype)


def _gmres(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, kind: str) -> np.ndarray:
    n = b.size
    op = spla.LinearOperator((n, n), matvec=matvec, dtype=float)
    x, info = spla.gmres(op, b, rtol=GMRES_RTOL, atol=0.0, restart=min(n, 60),
                         maxiter=max(1, 4 * n // 60 + 10))
    if info != 0:
        raise RuntimeError(f"implicit.{kind}: GMRES on ∂G/∂z did not converge in the "
                           "derivative (ill-conditioned Jacobian at the solution)")
    return x


class _KrylovLink(torch.autograd.Function):
    """`_DenseLink` for large systems: (∂G/∂z)⁻ᵀ and (∂G/∂z)⁻¹ by GMRES on VJPs / JVPs."""

    @staticmethod
    def forward(r: torch.Tensor, zs: torch.Tensor, system: TorchSystem, z: np.ndarray):
        return zs.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.system, ctx.z = inputs[2], inputs[3]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        s: TorchSystem = ctx.system
        u = _gmres(lambda v: s.vjp(ctx.z, v), s.array(g), s.kind)
        return -s.tensor(u).to(g.dtype), None, None, None

    @staticmethod
    def jvp(ctx: Any, tr: torch.Tensor, *_: Any) -> torch.Tensor:
        s: TorchSystem = ctx.system
        d = _gmres(lambda v: s.jvp(ctx.z, v), s.array(tr), s.kind)
        return -s.tensor(d).to(tr.dtype)


def _tracked(t: Any) -> bool:
    if not isinstance(t, torch.Tensor):
        return False
    if is_functorch_wrapped_tensor(t) or t.requires_grad:
        return True
    return torch.autograd.forward_ad.unpack_dual(t).tangent is not None


class _Run:
    """One call's forward solve; its result is read back after `_Solve` ran it."""

    def __init__(self, node: Any, opts: solvers.Options, solver: Any, shape: tuple) -> None:
        self.node, self.opts, self.solver, self.shape = node, opts, solver, shape
        self.info: Info | None = None

    def __call__(self, z0: torch.Tensor, params: Sequence[Any]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z*, LU and pivots of ∂G/∂z at z* (empty when matrix-free or not converged))."""
        node, n = self.node, z0.numel()
        zp, pp = z0.detach(), [p.detach() if isinstance(p, torch.Tensor) else p for p in params]
        for i, p in enumerate([zp, *pp]):
            if (isinstance(p, torch.Tensor) and p.is_floating_point()
                    and not torch.isfinite(p).all()):
                raise solvers.non_finite_input(node, i)
        m = 0
        if node.eq is not None:
            with torch.no_grad():
                h0 = node.eq(zp, *pp)
            if not isinstance(h0, torch.Tensor):
                raise ParameterError(f"{node!r}: eq(y, *params) returned {type(h0).__name__}; "
                                     "expected a tensor")
            m = h0.numel()
        self.G = residual_fn(node, self.shape)
        self.system = TorchSystem(self.G, pp, n + m, n if node.kind == "argmin" else None,
                                  node.kind, zp)
        z_init = np.concatenate([self.system.array(zp).reshape(-1), np.zeros(m)])
        fixed_map = ((lambda z: z - self.system.residual(z)) if node.kind == "fixed_point"
                     else None)
        z_np, info = solvers.solve(self.system, z_init, self.opts, fixed_map, self.solver)
        self.z = z_np
        self.info = Info(int(info.status_code), int(info.iterations), float(info.residual),
                         float(info.step), float(info.condition))
        lu, piv = torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int32)
        if info.converged and self.system.size <= self.opts.dense_max:
            J = torch.as_tensor(self.system.jacobian(z_np), dtype=torch.float64)
            lu, piv = torch.linalg.lu_factor(J.to(z0.device))
        return self.system.tensor(z_np), lu, piv


class _Solve(torch.autograd.Function):
    """The forward solve as an opaque, non-differentiable step (functorch unwraps its inputs)."""

    @staticmethod
    def forward(run: _Run, z0: torch.Tensor, *params: Any) -> tuple:
        return run(z0, params)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple:
        return (None,) * len(ctx.needs_input_grad)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple:
        return None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, *args: Any) -> Any:
        raise NotImplementedError(
            "torch.func.vmap over a declarative node is not supported: the forward solver's "
            "iterations depend on the data. Put the batch into z (the node treats z as one "
            "vector) or loop")


def call(node: Any, z0: torch.Tensor, params: Sequence[Any], overrides: dict,
         return_info: bool) -> Any:
    """Solve the node at (z0, params), certify the solution and link it to autograd."""
    if not isinstance(z0, torch.Tensor) or not z0.is_floating_point():
        raise ParameterError(f"{node!r}: z0 must be a floating tensor, got dtype {z0.dtype}")
    opts, on_failure, solver = node.options(np.dtype(str(z0.dtype).removeprefix("torch.")),
                                            overrides)
    shape = tuple(z0.shape)
    run = _Run(node, opts, solver, shape)
    zs, lu, piv = _Solve.apply(run, z0, *params)
    info, system = run.info, run.system
    assert info is not None
    tracked = [t for t in (z0, *params) if _tracked(t)]
    if not info.converged:
        if on_failure == "raise":
            raise NodeError(node.kind, info)
        out = torch.full(shape, float("nan"), dtype=z0.dtype, device=z0.device)
        for p in tracked:  # zero gradients, not None: the output depends on them
            if p.is_floating_point():
                out = out + 0 * p.sum().to(out.dtype)
        return (out, info) if return_info else out
    r = run.G(zs, *params)  # the one evaluation autograd records (none under no_grad)
    if _tracked(r) or tracked:
        if system.size <= opts.dense_max:
            zfull = _DenseLink.apply(r, zs, lu, piv)
        else:
            zfull = _KrylovLink.apply(r, zs, system, run.z)
    else:
        zfull = zs
    y = zfull[:z0.numel()].reshape(shape)
    return (y, info) if return_info else y
