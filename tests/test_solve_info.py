"""`SolveInfo.as_dict`: every field, as the plain values held on the info itself."""

from __future__ import annotations

import dataclasses
import json
import warnings

import cvxpy as cp
import numpy as np

import declarative as dl
from declarative.layer import SolveInfo


def _sparsemax(n: int = 4) -> dl.Layer:
    x, theta = cp.Variable(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [cp.sum(x) == 1, x >= 0])
    return dl.compile(prob, [theta], [x])


def test_as_dict_has_every_field_including_rcond():
    layer = _sparsemax()
    theta = np.array([[0.3, -1.0, 0.1, 0.5], [2.0, 0.2, -0.4, 1.1]])
    fwd = layer.forward([theta])
    before = fwd.info.as_dict()
    names = [f.name for f in dataclasses.fields(SolveInfo)]
    assert list(before) == names
    assert before["rcond"] is None and before["nondifferentiable"] is None  # not yet computed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd.vjp([np.ones((2, 4))])  # the linearization fills rcond and nondifferentiable
    d = fwd.info.as_dict()
    assert list(d) == names
    np.testing.assert_array_equal(d["rcond"], fwd.info.rcond)
    assert all(0.0 < r <= 1.0 for r in d["rcond"])  # a reciprocal condition number
    assert d["nondifferentiable"] == fwd.info.nondifferentiable.tolist()
    assert d["status"] == ["solved", "solved"]
    assert d["scs_iterations"] == fwd.info.scs_iterations.tolist()
    json.dumps(d)  # plain Python values throughout
