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


def max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


@pytest.fixture(params=list(problems.ZOO))
def zoo_name(request) -> str:
    return request.param
