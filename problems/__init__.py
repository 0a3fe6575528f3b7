"""The problem zoo: parametrized convex problems with closed-form solutions and Jacobians.

Every zoo module exposes the same interface (see :class:`ZooProblem`)::

    NAME: str                      # registry key, e.g. "sparsemax"
    REFERENCE: str                 # one line: where the closed form comes from
    CONES: tuple[str, ...]         # cone kinds of its SCS cone form (use_quad_obj=False),
                                   # a subset of CONE_KINDS
    SIZES: dict[str, int]          # default (small, test-friendly) sizes
    build(**sizes) -> (cp.Problem, [cp.Parameter, ...], [cp.Variable, ...])   # DPP
    sample(rng, **sizes) -> [np.ndarray, ...]          # one value per parameter, same order/shape
    solution(*params) -> [np.ndarray, ...]             # closed-form value of each variable
    jacobian(*params) -> [[np.ndarray, ...], ...]      # J[i][j] = d var_i / d param_j,
                                                       #   shape var_i.shape + param_j.shape
    GP: bool                       # optional: a geometric program (DGP), compiled and
                                   #   solved with gp=True (see `compile_options`)

``sample`` only returns instances where the solution map is differentiable and well conditioned
(unique solution, strict complementarity with a margin).  The active-set problems raise
:class:`DegenerateInstanceError` (a ``ValueError``) from ``solution``/``jacobian`` when handed an
instance where LICQ or strict complementarity fails.

To add a problem: write ``problems/<name>.py`` with the interface above, import it below and
append it to ``_MODULES``; :func:`register` checks the interface on import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import (
    affine_projection,
    box_projection,
    box_volume,
    entropic_ot,
    geometric_mean_budget,
    l1_ball_projection,
    l2_ball_projection,
    pnorm_ball_projection,
    polytope_projection,
    psd_projection,
    psd_trace_projection,
    qp,
    ridge,
    simplex_quadratic,
    softmax,
    softmax_temperature,
    sparsemax,
    water_filling,
)
from ._activeset import DegenerateInstanceError

__all__ = [
    "CONE_KINDS",
    "ZOO",
    "DegenerateInstanceError",
    "Instance",
    "ZooProblem",
    "compile_options",
    "get",
    "instance",
    "register",
]

CONE_KINDS = frozenset({"zero", "nonneg", "soc", "exp", "psd", "power"})


@runtime_checkable
class ZooProblem(Protocol):
    """Structural type of a zoo module."""

    NAME: str
    REFERENCE: str
    CONES: tuple[str, ...]
    SIZES: dict[str, int]
    build: Callable[..., tuple[Any, list[Any], list[Any]]]
    sample: Callable[..., list[np.ndarray]]
    solution: Callable[..., list[np.ndarray]]
    jacobian: Callable[..., list[list[np.ndarray]]]


_REQUIRED = ("NAME", "REFERENCE", "CONES", "SIZES", "build", "sample", "solution", "jacobian")

ZOO: dict[str, ModuleType] = {}


def register(module: ModuleType) -> ModuleType:
    """Check ``module`` against the zoo interface and add it to :data:`ZOO`."""
    missing = [attr for attr in _REQUIRED if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"zoo module {module.__name__} lacks {missing}")
    name = module.NAME
    if not isinstance(name, str) or not name:
        raise TypeError(f"zoo module {module.__name__}: NAME must be a non-empty str")
    if name in ZOO and ZOO[name] is not module:
        raise ValueError(f"duplicate zoo problem name {name!r}")
    if not isinstance(module.REFERENCE, str) or "\n" in module.REFERENCE:
        raise TypeError(f"zoo problem {name!r}: REFERENCE must be a one-line str")
    cones = tuple(module.CONES)
    if not cones or not set(cones) <= CONE_KINDS:
        raise ValueError(f"zoo problem {name!r}: CONES {cones} must be a subset of {CONE_KINDS}")
    if not isinstance(module.SIZES, dict) or not all(
        isinstance(v, int) and v >= 1 for v in module.SIZES.values()
    ):
        raise TypeError(f"zoo problem {name!r}: SIZES must be a dict of positive ints")
    ZOO[name] = module
    return module


def compile_options(module: ModuleType) -> dict[str, Any]:
    """Keyword arguments that ``dl.compile`` and ``problem.solve`` need for ``module``'s
    problem beyond the defaults: ``{"gp": True}`` for a geometric program."""
    return {"gp": True} if getattr(module, "GP", False) else {}


def get(name: str) -> ModuleType:
    """The zoo module called ``name``; KeyError listing the valid names otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo problem {name!r}; valid names: {', '.join(ZOO)}") from None


@dataclass(frozen=True)
class Instance:
    """One sampled instance of a zoo problem together with its closed-form answers."""

    name: str
    sizes: dict[str, int]
    params: list[np.ndarray]
    solution: list[np.ndarray]
    jacobian: list[list[np.ndarray]] = field(repr=False)


def instance(name: str, seed: int | np.random.Generator = 0, **sizes: int) -> Instance:
    """Sample problem ``name`` (default sizes overridden by ``sizes``) and evaluate its closed
    forms; the same seed always gives the same instance."""
    module = get(name)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    params = module.sample(rng, **sizes)
    return Instance(
        name=name,
        sizes={**module.SIZES, **sizes},
        params=params,
        solution=module.solution(*params),
        jacobian=module.jacobian(*params),
    )


_MODULES: tuple[ModuleType, ...] = (
    softmax,
    sparsemax,
    qp,
    polytope_projection,
    box_projection,
    l2_ball_projection,
    l1_ball_projection,
    affine_projection,
    ridge,
    softmax_temperature,
    psd_projection,
    entropic_ot,
    water_filling,
    simplex_quadratic,
    geometric_mean_budget,
    pnorm_ball_projection,
    box_volume,
    psd_trace_projection,
)
for _module in _MODULES:
    register(_module)
del _module
