"""The peers ``declarative bench`` times beside our layers, behind one small interface.

A :class:`Peer` is another library that differentiates through an optimization problem from
PyTorch. Each has a ``name`` (its key on the command line and in the JSON), a ``label`` (with
its installed version), ``available()`` (importable here?), ``applies(case)`` (can it express
this zoo problem?) and ``build(case, problem, parameters, variables)``, which returns a
:class:`Built`: either ``call(options) -> fn`` with ``fn(*tensors) -> outputs`` taking the zoo's
parameters (float64 torch tensors, batched along a leading axis) and returning the zoo's
variables, or the reason it could not be built. A peer's ``defaults`` are the options it is
timed at; ``tight`` are the options that tighten its tolerance as far as it goes (None where
the bench has a search of its own, as for cvxpylayers' SCS eps).

Peers:

- ``cvxpylayers``: cvxpylayers with its default backend, diffcp, told to use SCS
  (``solve_method="SCS"``); options are the per-call ``solver_args`` (SCS's ``eps_abs``,
  ``eps_rel``, ...).
- ``moreau``: cvxpylayers with ``solver="MOREAU"`` (Moreau's own autograd; its ``solver="auto"``
  picks an active-set method for small problems, an interior-point one for large). Options are
  fields of ``moreau.Settings``, given as ``CvxpyLayer(..., solver_args=...)`` when the layer is
  built (per-call ones do not reach a solver already set up); the interior-point tolerances
  live in ``ipm_settings`` (``tol_gap_abs``, ``tol_gap_rel``, ``tol_feas``, 1e-8 by default), a
  dict that replaces the whole ``moreau.IPMSettings``.
- ``proxsuite``: ``proxsuite.torch.qplayer.QPFunction`` (ProxQP's QPLayer) on the zoo problems
  that are quadratic programs min ½zᵀQz + pᵀz s.t. Az = b, l <= Gz <= u: the OptNet QP,
  sparsemax and projection onto a polytope. The zoo's parameters are mapped to (Q, p, A, b, G,
  l, u) here, in torch, so gradients flow back to them through autograd. Options are
  ``QPFunction``'s keywords: ``eps`` (forward, 1e-9 by default), ``eps_backward`` (1e-4) and the
  backward pass's proximal regularization ``rho_backward``, ``mu_backward`` (1e-6 each).
- ``qpax``: the same QPs through ``qpax.solve_qp_primal`` (JAX), bridged to torch by
  ``jax.vjp``. qpax pins an old JAX, so it is usually not installed: then it is recorded as
  such and not run.

Nothing here raises for a peer's failure: ``build`` records it in ``Built.failure``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from declarative import problems

Outputs = Sequence[Any]
Fn = Callable[..., Outputs]
# The zoo problems that are quadratic programs proxsuite and qpax can express.
QP_PROBLEMS = ("qp", "sparsemax", "polytope_projection")
# Finite stand-in for an absent bound (proxsuite's own convention for one-sided rows).
NO_BOUND = 1e20


class CaseLike(Protocol):
    """What a peer needs of a benchmark case: the zoo problem's name and its sizes."""

    @property
    def problem(self) -> str: ...

    @property
    def sizes(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Built:
    """A peer's layer for one problem: ``call(options)`` gives ``fn(*tensors) -> outputs`` with
    those options (None: the peer's defaults), or ``failure`` says why there is none."""

    peer: str
    factory: Callable[[Mapping[str, Any]], Fn] | None = None
    failure: str | None = None
    compile_seconds: float = math.nan

    @property
    def ok(self) -> bool:
        return self.factory is not None

    def call(self, options: Mapping[str, Any] | None = None) -> Fn:
        if self.factory is None:
            raise RuntimeError(f"{self.peer} was not built: {self.failure}")
        return self.factory(options or {})


def describe(e: BaseException) -> str:
    """``"TypeName: message"`` on one line, at most 300 characters."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Peer:
    """One peer library; subclasses implement ``_factory``."""

    name: str
    modules: tuple[str, ...]                 # what must import for it to run
    dists: tuple[str, ...]                   # distributions whose versions go in the label
    how: str                                 # its settings, in words
    defaults: dict[str, Any] = field(default_factory=dict)
    tight: dict[str, Any] | None = None      # options at its tightest tolerance

    @property
    def label(self) -> str:
        parts = [f"{d} {version(d) or '(not installed)'}" for d in self.dists]
        return f"{self.name}: {', '.join(parts)} ({self.how})"

    def available(self) -> bool:
        try:
            return all(importlib.util.find_spec(m) is not None for m in self.modules)
        except (ImportError, ValueError):
            return False

    def applies(self, case: CaseLike) -> bool:
        """Whether this peer can express ``case``'s problem."""
        return True

    def build(self, case: CaseLike, problem: Any, parameters: Sequence[Any],
              variables: Sequence[Any]) -> Built:
        """The peer's layer for ``case`` (its CVXPY ``problem``), or the recorded reason not."""
        if not self.available():
            return Built(self.name, failure="not installed")
        if not self.applies(case):
            return Built(self.name, failure=f"does not apply to {case.problem}")
        t0 = time.perf_counter()
        try:
            factory = self._factory(case, problem, parameters, variables)
        except Exception as e:  # noqa: BLE001 - recorded; the bench goes on
            return Built(self.name, failure=describe(e))
        return Built(self.name, factory, compile_seconds=time.perf_counter() - t0)

    def _factory(self, case: CaseLike, problem: Any, parameters: Sequence[Any],
                 variables: Sequence[Any]) -> Callable[[Mapping[str, Any]], Fn]:
        raise NotImplementedError


@dataclass(frozen=True)
class CvxpyLayersPeer(Peer):
    """cvxpylayers (``solver`` None: its diffcp backend). With ``per_call`` the options are
    per-call ``solver_args``; otherwise they are given when the layer is built (one layer per
    set of options, built on first use), as Moreau reads its settings only then."""

    solver: str | None = None
    per_call: bool = True

    def _factory(self, case: CaseLike, problem: Any, parameters: Sequence[Any],
                 variables: Sequence[Any]) -> Callable[[Mapping[str, Any]], Fn]:
        from cvxpylayers.torch import CvxpyLayer

        kwargs: dict[str, Any] = {**problems.compile_options(problems.get(case.problem))}
        if self.solver is not None:
            kwargs["solver"] = self.solver
        defaults = dict(self.defaults)

        def make(args: Mapping[str, Any]) -> Any:
            return CvxpyLayer(problem, parameters=list(parameters), variables=list(variables),
                              solver_args=None if self.per_call else dict(args), **kwargs)

        if self.per_call:
            layer = make({})

            def per_call(options: Mapping[str, Any]) -> Fn:
                args = {**defaults, **options}
                return lambda *p: layer(*p, solver_args=dict(args))

            return per_call
        layers = {repr(defaults): make(defaults)}

        def built(options: Mapping[str, Any]) -> Fn:
            args = {**defaults, **options}
            key = repr(args)
            if key not in layers:
                layers[key] = make(args)
            return layers[key]

        return built


@dataclass(frozen=True)
class QPPeer(Peer):
    """A QP layer taking (Q, p, A, b, G, l, u); ``applies`` to the zoo's QPs only."""

    def applies(self, case: CaseLike) -> bool:
        return case.problem in QP_PROBLEMS

    def _factory(self, case: CaseLike, problem: Any, parameters: Sequence[Any],
                 variables: Sequence[Any]) -> Callable[[Mapping[str, Any]], Fn]:
        to_qp = qp_form(case)
        defaults = dict(self.defaults)

        def factory(options: Mapping[str, Any]) -> Fn:
            solve = self._solver({**defaults, **options})
            return lambda *p: (solve(*to_qp(*p)),)

        return factory

    def _solver(self, options: Mapping[str, Any]) -> Callable[..., Any]:
        """``solve(Q, p, A, b, G, l, u) -> z`` (batched torch tensors) with ``options``."""
        raise NotImplementedError


@dataclass(frozen=True)
class ProxSuitePeer(QPPeer):
    def _solver(self, options: Mapping[str, Any]) -> Callable[..., Any]:
        from proxsuite.torch.qplayer import QPFunction

        fn = QPFunction(**options)
        return lambda *qp: fn(*qp)[0]


@dataclass(frozen=True)
class QpaxPeer(QPPeer):
    """qpax's primal solve (JAX, batched by ``jax.vmap``), bridged to torch by ``jax.vjp``.

    qpax takes one-sided inequalities Gz <= h, so l <= Gz <= u becomes [G; −G] z <= [u; −l]
    with the rows of infinite bounds dropped (every zoo QP has one-sided rows only)."""

    def _solver(self, options: Mapping[str, Any]) -> Callable[..., Any]:
        import jax
        import qpax

        jax.config.update("jax_enable_x64", True)

        def one(Q: Any, p: Any, A: Any, b: Any, G: Any, h: Any) -> Any:
            return qpax.solve_qp_primal(Q, p, A, b, G, h, **options)

        batched = jax.vmap(one)

        def solve(Q: Any, p: Any, A: Any, b: Any, G: Any, lo: Any, up: Any) -> Any:
            import torch

            Gs, hs = [], []
            if bool(torch.all(up < NO_BOUND)):
                Gs.append(G)
                hs.append(up)
            if bool(torch.all(lo > -NO_BOUND)):
                Gs.append(-G)
                hs.append(-lo)
            return jax_to_torch(batched)(Q, p, A, b, torch.cat(Gs, 1), torch.cat(hs, 1))

        return solve


def jax_to_torch(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` (a JAX function of arrays, returning one array) as a torch function of float64
    tensors, differentiable once in reverse mode (its backward is ``jax.vjp``'s pullback)."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    class Bridge(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *args: torch.Tensor) -> torch.Tensor:
            import jax

            out, pullback = jax.vjp(f, *(jnp.asarray(a.detach().numpy()) for a in args))
            ctx.pullback = pullback
            return torch.from_numpy(np.array(out))

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
            grads = ctx.pullback(jnp.asarray(g.detach().numpy()))
            return tuple(torch.from_numpy(np.array(x)) for x in grads)

    return Bridge.apply


def qp_form(case: CaseLike) -> Callable[..., tuple[Any, ...]]:
    """The map from ``case``'s zoo parameters (batched torch tensors) to the QP data
    (Q, p, A, b, G, l, u) of min ½zᵀQz + pᵀz s.t. Az = b, l <= Gz <= u, each batched, with
    ±NO_BOUND for absent bounds. Written in torch so gradients reach the zoo parameters.

    - qp (½‖Lᵀx‖² + (ε/2)‖x‖² + qᵀx, Ax = b, Gx <= h): Q = LLᵀ + εI, p = q, l = −∞, u = h.
    - sparsemax (‖x − θ‖², 1ᵀx = 1, x >= 0): Q = 2I, p = −2θ, A = 1ᵀ, b = 1, G = I, l = 0.
    - polytope_projection (‖x − y‖², Gx <= h): Q = 2I, p = −2y, no equalities, u = h.
    """
    import torch

    name = case.problem
    if name == "qp":
        eps = problems.get("qp").EPS

        def qp(L: Any, q: Any, A: Any, b: Any, G: Any, h: Any) -> tuple[Any, ...]:
            n = L.shape[-1]
            Q = L @ L.transpose(-1, -2) + eps * torch.eye(n, dtype=L.dtype)
            return Q, q, A, b, G, torch.full_like(h, -NO_BOUND), h

        return qp
    if name == "sparsemax":
        def sparsemax(theta: Any) -> tuple[Any, ...]:
            B, n = theta.shape
            eye = torch.eye(n, dtype=theta.dtype).expand(B, n, n)
            return (2.0 * eye, -2.0 * theta, torch.ones(B, 1, n, dtype=theta.dtype),
                    torch.ones(B, 1, dtype=theta.dtype), eye, torch.zeros_like(theta),
                    torch.full_like(theta, NO_BOUND))

        return sparsemax
    if name == "polytope_projection":
        def polytope(G: Any, h: Any, y: Any) -> tuple[Any, ...]:
            B, d = y.shape
            eye = torch.eye(d, dtype=y.dtype).expand(B, d, d)
            return (2.0 * eye, -2.0 * y, torch.zeros(B, 0, d, dtype=y.dtype),
                    torch.zeros(B, 0, dtype=y.dtype), G, torch.full_like(h, -NO_BOUND), h)

        return polytope
    raise ValueError(f"no QP form for zoo problem {name!r}; QPs: {', '.join(QP_PROBLEMS)}")


# ``tight``: every tolerance (and proxsuite's backward regularization) at 1e-12.
PEERS: dict[str, Peer] = {p.name: p for p in (
    CvxpyLayersPeer("cvxpylayers", ("cvxpylayers", "diffcp"), ("cvxpylayers", "diffcp"),
                    "diffcp, SCS", defaults={"solve_method": "SCS"}),
    CvxpyLayersPeer("moreau", ("cvxpylayers", "moreau"), ("cvxpylayers", "moreau"),
                    'solver="MOREAU"',
                    tight={"ipm_settings": {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12,
                                            "tol_feas": 1e-12}},
                    solver="MOREAU", per_call=False),
    ProxSuitePeer("proxsuite", ("proxsuite",), ("proxsuite",), "QPFunction",
                  tight={"eps": 1e-12, "eps_backward": 1e-12, "rho_backward": 1e-12,
                         "mu_backward": 1e-12}),
    QpaxPeer("qpax", ("qpax", "jax"), ("qpax",), "solve_qp_primal, jax.vjp",
             tight={"solver_tol": 1e-12}),
)}


def get(names: Sequence[str] | None = None) -> list[Peer]:
    """The peers called ``names`` (default: all), in that order; ValueError naming the valid
    ones for an unknown name."""
    names = list(PEERS) if names is None else list(names)
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise ValueError(f"unknown peer{'s' if len(bad) > 1 else ''} "
                         f"{', '.join(map(repr, bad))}; valid: {', '.join(PEERS)}")
    return [PEERS[n] for n in names]
