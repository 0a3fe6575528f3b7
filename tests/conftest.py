"""Shared fixtures: compiled zoo layers (compiling once per session keeps the suite fast)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import declarative as dl
from declarative import problems


@functools.cache
def zoo_layer(name: str, **sizes):
    """(layer, module, sizes) for a zoo problem, compiled once per test session."""
    mod = problems.get(name)
    sizes = {**mod.SIZES, **sizes}
    prob, params, variables = mod.build(**sizes)
    return dl.compile(prob, params, variables, **problems.compile_options(mod)), mod, sizes


@functools.cache
def every_cone_layer(k: int = 3):
    """A layer whose program holds zero, nonnegative, second-order, PSD (k × k, with a trace
    constraint), exponential and power cones; parameters Y (k × k) and a (3,), outputs X, u,
    w. Compiled once per test session."""
    import cvxpy as cp

    X, u, w = cp.Variable((k, k), PSD=True), cp.Variable(3), cp.Variable(2)
    Y, a = cp.Parameter((k, k)), cp.Parameter(3)
    cons = [cp.trace(X) == 1, cp.PowCone3D(u[0], u[1], u[2], 0.3), u[0] + u[1] <= 2,
            cp.sum(cp.exp(u)) <= 50, cp.norm(w) <= u[0] + 2]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - Y) - u[2] + cp.sum_squares(u - a)
                                  + cp.sum_squares(w - 1)), cons)
    return dl.compile(prob, [Y, a], [X, u, w])


def max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


@pytest.fixture(params=list(problems.ZOO))
def zoo_name(request) -> str:
    return request.param
