"""verify: check a compiled layer against the math.

`check_zoo` compiles a problem of the zoo (problems/), solves sampled instances at
default settings, and measures the solution and the full Jacobian against the
problem's closed form (float64, max abs error).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

import declarative as dl

# What the project holds itself to at default settings (DESIGN.md).
TOLERANCE = 1e-8


@dataclass
class ZooResult:
    """One zoo problem's worst errors over the sampled instances."""

    problem: str
    cones: tuple[str, ...]
    sizes: dict[str, int]
    instances: int
    solution_error: float
    jacobian_error: float
    seconds: float
    statuses: list[str]

    @property
    def passed(self) -> bool:
        return max(self.solution_error, self.jacobian_error) <= TOLERANCE

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_zoo(name: str, seeds: range = range(3), solver_args: dict | None = None,
              **sizes: int) -> ZooResult:
    """Compile zoo problem ``name``; compare solution and Jacobian with its closed form."""
    import problems

    mod = problems.get(name)
    sizes = {**mod.SIZES, **sizes}
    prob, params, variables = mod.build(**sizes)
    layer = dl.compile(prob, params, variables, on_failure="nan")
    sol_err = jac_err = 0.0
    seconds = 0.0
    statuses = []
    for seed in seeds:
        inst = problems.instance(name, seed, **sizes)
        t0 = time.perf_counter()
        fwd = layer.forward(inst.params, solver_args=solver_args)
        J = fwd.jacobian(0)
        seconds += time.perf_counter() - t0
        statuses.append(str(fwd.info.status[0]))
        sol_err = max(sol_err, *(_max_abs(o[0], s) for o, s in zip(fwd.outputs, inst.solution,
                                                                     strict=True)))
        jac_err = max(jac_err, *(_max_abs(a, b) for ra, rb in zip(J, inst.jacobian, strict=True)
                                 for a, b in zip(ra, rb, strict=True)))
    # NaN (an unsolved instance) must fail, not compare as small.
    sol_err = float("inf") if np.isnan(sol_err) else sol_err
    jac_err = float("inf") if np.isnan(jac_err) else jac_err
    return ZooResult(problem=name, cones=layer.template.dims.kinds(), sizes=sizes,
                     instances=len(seeds), solution_error=sol_err, jacobian_error=jac_err,
                     seconds=seconds / max(len(seeds), 1), statuses=statuses)
