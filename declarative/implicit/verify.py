"""Check a declarative node at one point against a closed form and central finite differences.

``implicit.verify(node, z0, params, solution=..., jacobian=...)`` (also reached as
``dl.verify(node, (z0, *params), ...)``) solves the node once in its framework (torch tensors
or JAX arrays, whatever ``z0`` is), takes its Jacobian with respect to every parameter
through the framework's reverse mode (``torch.func.jacrev`` / ``jax.jacrev``, i.e. the
implicit-function-theorem backward), and compares:

``closed_form``
    ``solution(*params) -> array`` and ``jacobian(*params) -> [J_j]`` with ``J_j`` shaped
    ``z.shape + params[j].shape`` (NumPy, float64). Passes on
    max |ours − reference| / max |reference| ≤ ``tolerance`` (1e-8): relative to the
    reference's own scale, so data at 1e-8 or 1e8 is held to the same 8 digits.
``finite_differences``
    central differences of the node's own forward solve, step
    h = ``fd_step`` · |θ_k| (``fd_step`` · max(‖θ‖∞, 1) where θ_k = 0), each perturbed solve
    warm-started at the solution. Passes on the same relative error ≤ ``fd_tolerance`` (1e-6):
    it checks the derivative, not the last digits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from declarative.promise import ACCURACY

TOLERANCE = ACCURACY  # the relative error a node is held to (module docstring)
FD_TOLERANCE = 1e-6
FD_STEP = 1e-6


@dataclass(frozen=True)
class Check:
    """One comparison: ``error`` = max |ours − reference| / max |reference| (inf on shape
    mismatch or NaN)."""

    reference: str          # "closed_form" | "finite_differences"
    quantity: str           # "solution" | "jacobian"
    parameter: int | None   # index into params for a Jacobian block
    abs_error: float
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance


@dataclass
class Report:
    """What :func:`verify` found: the node's :class:`Info` and one :class:`Check` each."""

    node: str
    info: Any
    checks: list[Check]
    seconds: dict[str, float] = field(default_factory=dict)
    solution: np.ndarray | None = field(default=None, repr=False)
    jacobians: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return bool(self.info.converged) and all(c.passed for c in self.checks)

    def error(self, reference: str, quantity: str = "jacobian") -> float | None:
        errs = [c.error for c in self.checks if c.reference == reference and c.quantity == quantity]
        return max(errs) if errs else None

    def __str__(self) -> str:
        lines = [f"verify {self.node}: status {self.info.status}, {int(self.info.iterations)} "
                 f"iteration(s), relative Newton step {float(self.info.step):.2e}, "
                 f"condition {float(self.info.condition):.3g}"]
        for c in self.checks:
            what = c.quantity + ("" if c.parameter is None else f" d/dparams[{c.parameter}]")
            lines.append(f"  {c.reference:<18} {what:<26} rel err {c.error:.2e} "
                         f"(abs {c.abs_error:.2e})  <= {c.tolerance:.0e}  "
                         f"{'ok' if c.passed else 'FAILED'}")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def _compare(reference: str, quantity: str, parameter: int | None, ours: np.ndarray,
             ref: Any, tolerance: float) -> Check:
    ref = np.asarray(ref, dtype=float)
    if ref.shape != ours.shape or not (np.all(np.isfinite(ours)) and np.all(np.isfinite(ref))):
        return Check(reference, quantity, parameter, float("inf"), float("inf"), tolerance)
    abs_err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
    return Check(reference, quantity, parameter, abs_err, rel, tolerance)


class _Framework:
    """Forward solves and reverse-mode Jacobians of a node in the framework of ``z0``."""

    def __init__(self, node: Any, z0: Any, params: Sequence[Any], options: dict) -> None:
        self.node, self.options = node, options
        self.torch = type(z0).__module__.startswith("torch")
        self.lib: Any  # the framework's array module: torch or jax.numpy
        if self.torch:
            import torch

            self.lib = torch
            self.z0 = z0.detach().to(torch.float64)
        else:
            import jax.numpy as jnp

            self.lib = jnp
            self.z0 = jnp.asarray(z0, dtype=jnp.float64)
        self.params = [np.asarray(self.numpy(p), dtype=float) for p in params]

    def numpy(self, a: Any) -> np.ndarray:
        if self.torch and isinstance(a, self.lib.Tensor):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def array(self, a: np.ndarray) -> Any:
        if self.torch:
            return self.lib.as_tensor(a, dtype=self.lib.float64)
        return self.lib.asarray(a, dtype=self.lib.float64)

    def solve(self, params: Sequence[np.ndarray], z0: Any = None) -> tuple[np.ndarray, Any]:
        z, info = self.node(self.z0 if z0 is None else z0, *[self.array(p) for p in params],
                            return_info=True, on_failure="nan", **self.options)
        return np.asarray(self.numpy(z), dtype=float), info

    def jacobians(self) -> list[np.ndarray]:
        ps = [self.array(p) for p in self.params]
        if self.torch:
            import torch

            def f(*p: Any) -> Any:
                return self.node(self.z0, *p, **self.options)
            J = torch.func.jacrev(f, argnums=tuple(range(len(ps))))(*ps)
        else:
            import jax

            def f(*p: Any) -> Any:
                return self.node(self.z0, *p, **self.options)
            J = jax.jacrev(f, argnums=tuple(range(len(ps))))(*ps)
        return [np.asarray(self.numpy(b), dtype=float) for b in J]


def finite_difference_jacobians(fw: _Framework, z: np.ndarray, step: float) -> list[np.ndarray]:
    """Central differences of the forward solve, one parameter entry at a time."""
    out = []
    warm = fw.array(z)
    for j, p in enumerate(fw.params):
        block = np.zeros(z.shape + p.shape)
        scale = max(float(np.max(np.abs(p))) if p.size else 0.0, 1.0)
        for k in np.ndindex(p.shape):
            h = step * (abs(p[k]) if p[k] != 0 else scale)
            plus, minus = [q.copy() for q in fw.params], [q.copy() for q in fw.params]
            plus[j][k] += h
            minus[j][k] -= h
            zp, _ = fw.solve(plus, warm)
            zm, _ = fw.solve(minus, warm)
            block[(...,) + k] = (zp - zm) / (2 * h)
        out.append(block)
    return out


def verify(node: Any, z0: Any, params: Sequence[Any], *,
           solution: Callable[..., Any] | Any = None,
           jacobian: Callable[..., Any] | Sequence[Any] | None = None,
           finite_differences: bool = True, tolerance: float = TOLERANCE,
           fd_step: float = FD_STEP, fd_tolerance: float = FD_TOLERANCE,
           **options: Any) -> Report:
    """Check ``node`` at (z0, params) in float64; see the module docstring.

    ``options`` (tol, max_iters, method, ...) are passed to every call of the node.
    """
    fw = _Framework(node, z0, params, options)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    z, info = fw.solve(fw.params)
    seconds["forward"] = time.perf_counter() - t
    checks: list[Check] = []
    jacs: list[np.ndarray] = []
    if info.converged:
        t = time.perf_counter()
        jacs = fw.jacobians()
        seconds["jacobian"] = time.perf_counter() - t
    if solution is not None:
        ref = solution(*fw.params) if callable(solution) else solution
        checks.append(_compare("closed_form", "solution", None, z, ref, tolerance))
    if jacobian is not None and info.converged:
        refs = jacobian(*fw.params) if callable(jacobian) else jacobian
        if len(refs) != len(fw.params):
            raise ValueError(f"verify: the closed-form jacobian has {len(refs)} block(s); "
                             f"expected one per parameter ({len(fw.params)})")
        checks += [_compare("closed_form", "jacobian", j, ours, ref, tolerance)
                   for j, (ours, ref) in enumerate(zip(jacs, refs, strict=True))]
    if finite_differences and info.converged:
        t = time.perf_counter()
        fds = finite_difference_jacobians(fw, z, fd_step)
        seconds["finite_differences"] = time.perf_counter() - t
        checks += [_compare("finite_differences", "jacobian", j, ours, ref, fd_tolerance)
                   for j, (ours, ref) in enumerate(zip(jacs, fds, strict=True))]
    return Report(repr(node), info, checks, seconds, z, jacs)
