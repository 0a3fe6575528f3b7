"""Auxiliary variables that equality rows define are substituted out at compile time
(`compile.eliminate_defined`): the smaller program has the same solutions, duals and
derivatives as the one CVXPY produced, which the layer without the substitution computes."""

import importlib

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
from declarative.layer import Layer
from tests.conftest import max_abs

comp = importlib.import_module("declarative.compile")  # (the package's `compile` shadows it)


def _both(problem, params, variables, monkeypatch):
    """(layer with the substitution, layer without it) for the same problem."""
    reduced = dl.compile(problem, params, variables)
    with monkeypatch.context() as m:
        m.setattr(comp, "eliminate_defined", lambda t: t)
        full = Layer(*comp.compile_template(problem, params, variables))
    return reduced, full


def _sparsemax(n):
    theta = cp.Parameter(n)
    x = cp.Variable(n)
    con = x >= 0
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [cp.sum(x) == 1, con])
    return prob, [theta], [x, con.dual_variables[0]], lambda rng, B: [rng.normal(size=(B, n))]


def _least_squares_constant_matrix(n):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(n + 3, n))
    b = cp.Parameter(n + 3)
    lam = cp.Parameter(nonneg=True)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + lam * cp.norm1(x)), [x <= 1])
    return prob, [b, lam], [x], lambda rng, B: [rng.normal(size=(B, n + 3)),
                                                 rng.uniform(0.1, 1.0, size=B)]


def _least_squares_parameter_matrix(n):
    A = cp.Parameter((n + 2, n))
    b = cp.Parameter(n + 2)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [cp.sum(x) == 1])
    return prob, [A, b], [x], lambda rng, B: [rng.normal(size=(B, n + 2, n)),
                                              rng.normal(size=(B, n + 2))]


def _spectraplex(k):
    Y = cp.Parameter((k, k), symmetric=True)
    X = cp.Variable((k, k), PSD=True)
    con = cp.trace(X) == 1
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - Y)), [con])

    def sample(rng, B):
        Z = rng.normal(size=(B, k, k))
        return [(Z + np.swapaxes(Z, 1, 2)) / 2]
    return prob, [Y], [X, con.dual_variables[0]], sample


def _weighted_prox_with_exp(n):
    y = cp.Parameter(n)
    w = cp.Parameter(n, pos=True)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - y) - cp.sum(cp.entr(x))
                                  + w @ x), [cp.sum(x) <= 2])
    return prob, [y, w], [x], lambda rng, B: [rng.normal(size=(B, n)),
                                              rng.uniform(0.1, 1.0, size=(B, n))]


CASES = {
    # name: (builder, size, variables and rows removed: (n, m) before -> after)
    "sparsemax": (_sparsemax, 12, True),
    "least_squares_constant_matrix": (_least_squares_constant_matrix, 6, True),
    "least_squares_parameter_matrix": (_least_squares_parameter_matrix, 5, False),
    "spectraplex": (_spectraplex, 5, True),
    "prox_with_entropy": (_weighted_prox_with_exp, 6, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_substitution_keeps_solutions_duals_and_gradients(name, monkeypatch):
    build, size, shrinks = CASES[name]
    problem, params, variables, sample = build(size)
    reduced, full = _both(problem, params, variables, monkeypatch)
    tr, tf = reduced.template, full.template
    if shrinks:  # one variable and one equality row less per substituted entry
        assert tr.n < tf.n and tf.n - tr.n == tf.m - tr.m
        assert tf.dims.zero - tr.dims.zero == tf.m - tr.m
    else:  # the definition's coefficients depend on a parameter: kept as it is
        assert (tr.n, tr.m) == (tf.n, tf.m)
    rng = np.random.default_rng(1)
    values = sample(rng, 4)
    a, b = reduced.forward(values), full.forward(values)
    assert a.ok.all() and b.ok.all()
    for u, v in zip(a.outputs, b.outputs, strict=True):
        assert max_abs(u, v) <= 1e-9 * (1 + np.abs(v).max())
    g = [rng.normal(size=o.shape) for o in a.outputs]
    for u, v in zip(a.vjp(g), b.vjp(g), strict=True):
        assert max_abs(u, v) <= 1e-8 * (1 + np.abs(v).max())
    dv = [rng.normal(size=np.shape(v)) for v in values]
    for u, v in zip(a.jvp(dv), b.jvp(dv), strict=True):
        assert max_abs(u, v) <= 1e-8 * (1 + np.abs(v).max())


def test_a_defined_variable_that_is_an_output_is_kept():
    """t == x − y with t and that equality's dual requested: neither is substituted. x is
    the projection of y onto the simplex (closed form), t = x − y, and the dual ν of
    t == x − y is −2t (stationarity in t: 2t + ν = 0, CVXPY's sign), as CVXPY's own solve
    gives it."""
    n = 4
    y = cp.Parameter(n)
    x, t = cp.Variable(n), cp.Variable(n)
    define = t == x - y
    prob = cp.Problem(cp.Minimize(cp.sum_squares(t)), [define, x >= 0, cp.sum(x) == 1])
    layer = dl.compile(prob, [y], [x, t, define.dual_variables[0]])
    assert layer.template.n >= 2 * n  # t kept
    yv = np.array([0.3, -0.2, 0.9, 0.1])
    fwd = layer.forward([yv])
    assert fwd.ok.all()
    xs = np.array([0.2, 0.0, 0.8, 0.0])  # τ = 0.1 on the support {0, 2}
    for got, want in zip(fwd.outputs, (xs, xs - yv, -2 * (xs - yv)), strict=True):
        assert max_abs(got[0], want) <= 1e-12
    y.value = yv
    prob.solve(solver=cp.CLARABEL)
    assert max_abs(fwd.outputs[2][0], define.dual_value) <= 1e-3  # the sign: CVXPY's
