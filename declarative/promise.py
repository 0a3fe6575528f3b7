"""The accuracy `declarative` promises.

At default settings, every solved instance's outputs and their Jacobian are within
``ACCURACY`` (float64, max abs, relative to the data's scale) of the exact solution map.
The solve certificate sits inside it (``layer.ACCEPT_*``), the verification tools judge
against it (``verification.TOLERANCE``, ``implicit.verify.TOLERANCE``) and the benchmark
searches its peers' tolerance down to it.
"""

from __future__ import annotations

ACCURACY = 1e-8
