"""Solver backends behind the seam of `declarative.solve`: one module per solver.

``backend(name)`` imports the module on first use, so a solver that is not installed costs
nothing until it is asked for.
"""

from __future__ import annotations

import importlib

from declarative.errors import ProblemError
from declarative.solve import Backend

# name → (module, the backend object in it)
_BACKENDS = {"scs": ("declarative.backends.scs", "SCS"),
             "clarabel": ("declarative.backends.clarabel", "CLARABEL"),
             "moreau": ("declarative.backends.moreau", "MOREAU")}
SOLVERS = tuple(_BACKENDS)
DEFAULT_SOLVER = "scs"


def backend(name: str) -> Backend:
    """The backend called ``name`` (one of SOLVERS)."""
    if not isinstance(name, str) or name.lower() not in _BACKENDS:
        raise ProblemError(f"unknown solver {name!r}; expected one of {list(SOLVERS)}.")
    module, attr = _BACKENDS[name.lower()]
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ProblemError(f"solver {name!r} is not available: {e}. Install it (pip install "
                           f"{name}) or choose another of {list(SOLVERS)}.") from e
