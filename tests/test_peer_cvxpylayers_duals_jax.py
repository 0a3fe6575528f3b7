"""cvxpylayers' JAX dual-variable tests (cvxpylayers/tests/test_dual_variables_jax.py),
ported: the same problems as the torch port (`tests.test_peer_cvxpylayers_duals`), through
the JAX function, against CVXPY (Clarabel, tight) or closed forms, with ``check_grads`` in
forward and reverse mode where theirs checked that a gradient exists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import declarative as dl
from tests.output_checks import cvxpy_reference
from tests.test_peer_cvxpylayers_duals import (
    CASES,
    CLARABEL,
    _gp_single,
    _lp_with_equality,
    case_inequality_dual,
)

FD = {"order": 1, "modes": ("fwd", "rev"), "eps": 1e-6, "atol": 1e-5, "rtol": 1e-4}
# Their JAX suite: equality, inequality, multiple, dual-only, gradients, SOC, PSD, GP.
JAX_CASES = ["equality_dual", "inequality_dual", "multiple_duals", "dual_only",
             "qp_equality_dual", "qp_inequality_dual", "soc_linear_objective_dual", "psd_dual"]


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("name", JAX_CASES)
def test_dual_values_and_derivatives(name):
    problem, params, outputs, values = CASES[name]()
    f = dl.compile(problem, params, outputs).jax()
    args = tuple(jnp.asarray(v) for v in values)
    outs = f(*args)
    refs = cvxpy_reference(problem, params, outputs, values)
    for o, r in zip(outs, refs, strict=True):
        assert o.shape == r.shape
        assert float(np.max(np.abs(np.asarray(o) - r))) <= CLARABEL * max(1.0, np.abs(r).max())
    check_grads(f, args, **FD)


def test_inequality_dual_gradient_closed_form():
    """λ = max(c, 0): jax.grad of Σλ is 1 where c > 0, 0 elsewhere."""
    problem, params, outputs, _ = case_inequality_dual()
    f = dl.compile(problem, params, outputs).jax()
    g = jax.grad(lambda c: f(c)[1].sum())(jnp.asarray([1.0, -1.0]))
    assert float(np.max(np.abs(np.asarray(g) - [1.0, 0.0]))) <= 1e-8


def test_batched_dual_variables():
    problem, params, x, eq, _ = _lp_with_equality()
    outputs = [x, eq.dual_variables[0]]
    f = dl.compile(problem, params, outputs).jax()
    rng = np.random.default_rng(0)
    c, b = rng.standard_normal((3, 2)), np.ones(3)
    xs, duals = f(jnp.asarray(c), jnp.asarray(b))
    assert xs.shape == (3, 2) and duals.shape == (3,)
    for i in range(3):
        x_ref, d_ref = cvxpy_reference(problem, params, outputs, [c[i], b[i]])
        assert float(np.max(np.abs(np.asarray(xs[i]) - x_ref))) <= CLARABEL
        assert float(np.max(np.abs(np.asarray(duals[i]) - d_ref))) <= CLARABEL


def test_gp_inequality_constraint_dual():
    """x = y = z = √(b/3a) and λ = 3/2 (see the torch port), its gradient zero."""
    problem, params, outputs = _gp_single()
    f = dl.compile(problem, params, outputs, gp=True).jax()
    a, b = jnp.asarray([2.0, 0.5]), jnp.asarray([1.0, 3.0])
    x, y, z, lam = f(a, b)
    s = np.sqrt(np.asarray(b) / (3 * np.asarray(a)))
    for o in (x, y, z):
        assert float(np.max(np.abs(np.asarray(o) - s))) <= 1e-8
    assert float(np.max(np.abs(np.asarray(lam) - 1.5))) <= 1e-8
    ga, gb = jax.grad(lambda a, b: f(a, b)[3].sum(), (0, 1))(a, b)
    assert float(np.max(np.abs(np.asarray(ga)))) <= 1e-8
    assert float(np.max(np.abs(np.asarray(gb)))) <= 1e-8
    check_grads(lambda a, b: f(a, b)[0], (a, b), **FD)
