"""The three node constructors and their call: validation, options, dispatch on the array type.

A node is *what* is computed (an optimality condition G(z, θ) = 0, see
`declarative.implicit.solvers`); the forward solver is only *how*. Calling a node on torch
tensors runs `declarative.implicit.torch`, on JAX arrays `declarative.implicit.jax`; each is
imported on first use, so this module imports no framework.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from declarative.implicit.solvers import DENSE_MAX, MAX_CONDITION, Options, Solver, default_tol

ON_FAILURE = ("raise", "nan")
METHODS = ("auto", "newton", "anderson")


class Node:
    """A declarative node: ``node(z0, *params)`` is the z with G(z, *params) = 0 near z0.

    Built by :func:`root`, :func:`fixed_point` or :func:`argmin`. Keyword settings given at
    construction are defaults; the same keywords passed to a call override them for that call.

    Call keywords:
        tol, atol: certificate ‖δ‖∞ ≤ tol·‖z‖∞ + atol on the final Newton correction
            δ = (∂G/∂z)⁻¹G(z) (default tol: 1e-10 in float64, 100 ulps in lower precisions).
        max_iters: forward iterations (Newton steps or Anderson steps).
        method: ``"auto"`` (Newton; Anderson for fixed points above ``dense_max`` unknowns),
            ``"newton"`` or ``"anderson"`` (fixed points only).
        solver: a forward solver of your own, ``solver(G, z0) -> z`` on flat float64 NumPy
            vectors (G is the optimality condition; for ``argmin`` with ``eq`` z = (y, λ)).
            Its result is certified like ours.
        on_failure: ``"raise"`` (:class:`~declarative.implicit.NodeError`) or ``"nan"`` (NaN
            output, zero gradients) when the solution is not certified.
        return_info: also return the call's :class:`~declarative.implicit.Info`
            (``z, info = node(z0, *params, return_info=True)``); nothing is stored on the
            node, so one node can be called from many threads.
        max_condition, dense_max: see `declarative.implicit.solvers`.
    """

    def __init__(self, kind: str, fn: Callable, eq: Callable | None = None,
                 **defaults: Any) -> None:
        if not callable(fn):
            raise TypeError(f"implicit.{kind} expects a callable, got {type(fn).__name__}")
        if eq is not None and not callable(eq):
            raise TypeError(f"implicit.argmin: eq must be a callable h(y, *params) -> vector, "
                            f"got {type(eq).__name__}")
        self.kind, self.fn, self.eq = kind, fn, eq
        self.defaults = self._check(defaults, where=f"implicit.{kind}(...)")

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        eq = f", eq={getattr(self.eq, '__name__', 'h')}" if self.eq is not None else ""
        return f"implicit.{self.kind}({name}{eq})"

    @staticmethod
    def _check(options: dict, where: str) -> dict:
        known = {"tol", "atol", "max_iters", "method", "solver", "on_failure", "max_condition",
                 "dense_max"}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"{where}: unknown option(s) {sorted(unknown)}; expected some of "
                            f"{sorted(known)}")
        for key in ("tol", "atol", "max_condition"):
            v = options.get(key)
            if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"{where}: {key} must be a finite number >= 0, got {v!r}")
        mi = options.get("max_iters")
        if mi is not None and not (isinstance(mi, (int, np.integer)) and mi >= 0):
            raise ValueError(f"{where}: max_iters must be an int >= 0, got {mi!r}")
        if options.get("method") is not None and options["method"] not in METHODS:
            raise ValueError(f"{where}: method must be one of {METHODS}, got {options['method']!r}")
        if options.get("on_failure") is not None and options["on_failure"] not in ON_FAILURE:
            raise ValueError(f"{where}: on_failure must be one of {ON_FAILURE}, "
                             f"got {options['on_failure']!r}")
        if options.get("solver") is not None and not callable(options["solver"]):
            raise TypeError(f"{where}: solver must be a callable solver(G, z0) -> z")
        return {k: v for k, v in options.items() if v is not None}

    def options(self, dtype: np.dtype, overrides: dict) -> tuple[Options, str, Solver | None]:
        o = {**self.defaults, **self._check(overrides, where=f"{self!r}(...)")}
        opts = Options(tol=float(o.get("tol", default_tol(dtype))), atol=float(o.get("atol", 0.0)),
                       max_iters=int(o.get("max_iters", 100)), method=o.get("method", "auto"),
                       max_condition=float(o.get("max_condition", MAX_CONDITION)),
                       dense_max=int(o.get("dense_max", DENSE_MAX)))
        if opts.method == "anderson" and self.kind != "fixed_point":
            raise ValueError(f"{self!r}: method='anderson' is for fixed_point nodes only")
        return opts, o.get("on_failure", "raise"), o.get("solver")

    def __call__(self, z0: Any, *params: Any, return_info: bool = False, **overrides: Any) -> Any:
        torch = sys.modules.get("torch")
        adapter: ModuleType  # declarative.implicit.torch or .jax, by z0's type
        if torch is not None and isinstance(z0, torch.Tensor):
            from declarative.implicit import torch as adapter
        else:
            jax = sys.modules.get("jax")
            if jax is not None and isinstance(z0, jax.Array):
                from declarative.implicit import jax as adapter
            else:
                raise TypeError(f"{self!r}: z0 must be a torch.Tensor or a jax.Array (the "
                                f"framework the node runs in), got {type(z0).__name__}")
        return adapter.call(self, z0, params, overrides, return_info)


def root(F: Callable, **options: Any) -> Node:
    """The node z ↦ z* with F(z*, *params) = 0; F returns an array of z's shape."""
    return Node("root", F, **options)


def fixed_point(f: Callable, **options: Any) -> Node:
    """The node z ↦ z* with z* = f(z*, *params), as the root of G(z) = z − f(z)."""
    return Node("fixed_point", f, **options)


def argmin(objective: Callable, eq: Callable | None = None, **options: Any) -> Node:
    """The node y ↦ a local minimizer of objective(y, *params) s.t. eq(y, *params) = 0.

    Solved and differentiated through its KKT conditions ∇obj + ∂hᵀλ = 0, h = 0 (Gould et
    al. 2021, *Deep Declarative Networks*, Prop. 4.5); certified a strict local minimum.
    """
    return Node("argmin", objective, eq=eq, **options)
