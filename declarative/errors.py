"""The exceptions `declarative` raises, one per kind of mistake.

Every message says what was wrong and what was expected, so a user can act on
it without reading our source.
"""

from __future__ import annotations

from collections.abc import Sequence

# What both framework adapters raise (as NotImplementedError) on any path to a second derivative.
SECOND_ORDER = (
    "declarative layers have exact first derivatives but no second derivatives: "
    "differentiating a layer's derivative with respect to its parameters (second-order "
    "autodiff: a Hessian, grad of grad, jacfwd or jacrev of a gradient, a gradient penalty "
    "backpropagated through the layer) is not supported. Where a second-order term is "
    "needed, approximate it by finite differences of the first derivatives."
)


class DeclarativeError(Exception):
    """Base class of every error raised by `declarative`."""


class ProblemError(DeclarativeError, ValueError):
    """The CVXPY problem cannot be compiled (not DCP, not DPP, unsupported cone, ...)."""


class ParameterError(DeclarativeError, ValueError):
    """A value passed to a layer does not fit its parameter (count, shape, batch, NaN/inf)."""


class SolverError(DeclarativeError, RuntimeError):
    """Some batch instances were not solved.

    ``failures`` maps each failing batch index to its status, so nothing about
    the solved instances (or the failed ones) is lost.
    """

    def __init__(self, failures: dict[int, str], batch_size: int, hint: str = "") -> None:
        self.failures = dict(sorted(failures.items()))
        self.batch_size = batch_size
        listed = ", ".join(f"{i}: {s}" for i, s in self.failures.items())
        msg = (
            f"{len(self.failures)} of {batch_size} problem instance(s) not solved "
            f"(batch index: status) {{{listed}}}. Pass on_failure='nan' to get NaN outputs "
            "and zero gradients for exactly these instances and exact results for the others"
        )
        super().__init__(msg + (f"; {hint}" if hint else "") + ".")


def describe_indices(indices: Sequence[int], limit: int = 10) -> str:
    """``[0, 3, 7]`` as text, eliding a long list."""
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")
