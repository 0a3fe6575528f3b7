"""Checking a compiled layer against the math: :func:`verify` and what it reports.

``declarative.verify`` is :func:`verify` (imported on first use). Modules: ``run`` (the
check itself), ``report`` (:class:`Check`, :class:`Report`, tolerances),
``finite_differences`` and ``diffcp_reference`` (the two derivative references).
"""

from declarative.verification.report import (
    CLOSED_FORM,
    DIFFCP,
    DIFFCP_TOLERANCE,
    FD_STEP,
    FD_TOLERANCE,
    FINITE_DIFFERENCES,
    REFERENCES,
    TOLERANCE,
    Check,
    Report,
    jacobian_matrix,
)
from declarative.verification.run import verify

__all__ = [
    "verify", "Check", "Report", "jacobian_matrix", "TOLERANCE", "FD_TOLERANCE",
    "DIFFCP_TOLERANCE", "FD_STEP", "CLOSED_FORM", "FINITE_DIFFERENCES", "DIFFCP", "REFERENCES",
]
