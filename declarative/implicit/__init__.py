"""Declarative nodes beyond convex programs: root, fixed-point and argmin layers.

::

    from declarative import implicit
    z = implicit.root(F)(z0, *params)             # F(z, *params) = 0
    z = implicit.fixed_point(f)(z0, *params)      # z = f(z, *params)
    y = implicit.argmin(obj, eq=h)(y0, *params)   # min obj(y, *params) s.t. h(y, *params) = 0

Each call takes torch tensors or JAX arrays (the framework is chosen by z0's type and
imported only then), solves off the autograd tape, certifies the solution (see
`declarative.implicit.solvers`) and is differentiated by the implicit function theorem only.
"""

from __future__ import annotations

from declarative.implicit.nodes import Node, argmin, fixed_point, root
from declarative.implicit.solvers import STATUS, Info, NodeError
from declarative.implicit.verify import Check, Report, verify

__all__ = ["root", "fixed_point", "argmin", "verify", "Node", "Info", "NodeError", "STATUS",
           "Report", "Check"]
