"""Bad input gets a clear error, before any solve, naming the culprit and what was expected."""

from __future__ import annotations

import re

import cvxpy as cp
import numpy as np
import pytest
import torch

import declarative as dl
from declarative.errors import ParameterError, ProblemError


@pytest.fixture(scope="module")
def simple():
    x, theta = cp.Variable(3), cp.Parameter(3, name="theta")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [x >= 0])
    return dl.compile(prob, [theta], [x]), x, theta


def test_non_dcp_names_the_objective():
    x, theta = cp.Variable(3), cp.Parameter(3)
    with pytest.raises(ProblemError, match="(?s)not DCP.*maximize a function that is convex"):
        dl.compile(cp.Problem(cp.Maximize(cp.sum_squares(x - theta))), [theta], [x])


def test_non_dcp_constraint_is_named():
    x, theta = cp.Variable(3, name="x"), cp.Parameter(3)
    prob = cp.Problem(cp.Minimize(cp.sum(x)), [cp.sqrt(x) >= theta, cp.square(x[0]) >= 1])
    with pytest.raises(ProblemError, match=r"(?s)constraints are not DCP.*x\[0\]"):
        dl.compile(prob, [theta], [x])


def test_non_dpp_names_the_product_of_parameters():
    x = cp.Variable(3)
    theta, a = cp.Parameter(3, name="theta"), cp.Parameter(pos=True, name="alpha")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(a * theta - x)))
    with pytest.raises(ProblemError, match=r"not DPP(.|\n)*alpha(.|\n)*theta|not DPP(.|\n)*theta"):
        dl.compile(prob, [theta, a], [x])


def test_non_dpp_does_not_call_a_dcp_problem_not_dcp():
    """A parameter inside a nonlinear atom (quad_over_lin(x, s), s a parameter): DCP, not
    DPP. The message names the subexpression and says it is not DPP, never that the
    objective is not DCP (CVXPY's text, made under DPP rules, says DCP)."""
    x, a, s = cp.Variable(4), cp.Parameter(4), cp.Parameter(pos=True, name="s")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a) + cp.quad_over_lin(x, s)))
    with pytest.raises(ProblemError) as info:
        dl.compile(prob, [a, s], [x])
    text = str(info.value)
    assert "is not DPP" in text and "quad_over_lin" in text and "not DCP" not in text


def test_parameter_lists_checked_against_problem():
    x, theta, other = cp.Variable(3), cp.Parameter(3, name="theta"), cp.Parameter(name="other")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)))
    with pytest.raises(ProblemError, match=r"\['theta'\].*not in parameters"):
        dl.compile(prob, [], [x])
    with pytest.raises(ProblemError, match="other does not appear in the problem"):
        dl.compile(prob, [theta, other], [x])
    with pytest.raises(ProblemError, match="listed twice"):
        dl.compile(prob, [theta, theta], [x])
    stranger = cp.Variable(2, name="stranger")
    with pytest.raises(ProblemError, match="stranger is neither a variable of the problem"):
        dl.compile(prob, [theta], [stranger])
    with pytest.raises(ProblemError, match="variables is empty"):
        dl.compile(prob, [theta], [])
    empty = cp.Variable(0, name="empty")
    with_empty = cp.Problem(cp.Minimize(cp.sum_squares(x - theta) + cp.sum(empty)),
                            [empty >= 0])
    with pytest.raises(ProblemError, match=r"empty has no entries \(shape \(0,\)\)"):
        dl.compile(with_empty, [theta], [x, empty])


def test_wrong_count_shape_and_batch(simple):
    layer, _, _ = simple
    with pytest.raises(ParameterError, match=r"expected 1 parameter value\(s\) \(theta\).*got 2"):
        layer.forward([np.ones(3), np.ones(3)])
    with pytest.raises(ParameterError, match=r"'theta': expected shape \(3,\) or \(batch, 3\), "
                                             r"got \(4,\)"):
        layer.forward([np.ones(4)])
    with pytest.raises(ParameterError, match=r"got \(2, 2, 3\)"):
        layer.torch()(torch.ones(2, 2, 3))


def test_batch_sizes_must_agree():
    x, p, q = cp.Variable(3), cp.Parameter(3, name="p"), cp.Parameter(3, name="q")
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - p - q))), [p, q], [x])
    with pytest.raises(ParameterError, match="one batch size; got p: 2, q: 4"):
        layer.torch()(torch.ones(2, 3), torch.ones(4, 3))


def test_nan_and_inf_name_parameter_and_batch_index(simple):
    layer, _, _ = simple
    with pytest.raises(ParameterError, match=r"'theta' has NaN or inf entries \(unbatched"):
        layer.forward([np.array([1.0, np.nan, 2.0])])
    bad = np.ones((5, 3))
    bad[1, 0], bad[4, 2] = np.inf, np.nan
    with pytest.raises(ParameterError, match=r"'theta' has NaN or inf entries at batch index "
                                             r"\[1, 4\]"):
        layer.torch()(torch.tensor(bad))


def test_values_outside_declared_domain():
    x = cp.Variable(3)
    lam = cp.Parameter(nonneg=True, name="lam")
    S = cp.Parameter((2, 2), PSD=True, name="S")
    y = cp.Variable(2)
    prob = cp.Problem(cp.Minimize(lam * cp.sum_squares(x) + cp.sum(x) + cp.sum_squares(S @ y)
                                  + cp.sum(y)))
    layer = dl.compile(prob, [lam, S], [x, y])
    with pytest.raises(ParameterError, match=r"'lam' has values that are not nonneg .*\[1\]"):
        layer.forward([np.array([1.0, -1.0]), np.eye(2)])
    with pytest.raises(ParameterError, match=r"'S' has values that are not PSD"):
        layer.forward([np.array(1.0), np.diag([1.0, -1.0])])


def test_unknown_solver_option_and_on_failure(simple):
    layer, _, _ = simple
    with pytest.raises(ProblemError, match=r"unsupported solver option\(s\) \['tol'\].*eps_abs"):
        layer.forward([np.ones(3)], solver_args={"tol": 1e-3})
    with pytest.raises(ProblemError, match="on_failure must be one of"):
        layer.torch()(torch.ones(3), on_failure="ignore")
    with pytest.raises(ProblemError, match="unsupported solver option"):
        x, theta = cp.Variable(3), cp.Parameter(3)
        dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - theta))), [theta], [x],
                   solver_args={"solver": "ECOS"})


@pytest.mark.parametrize("args, named", [
    ({"refine_tol": "x"}, "'refine_tol' must be a finite positive number, got 'x'"),
    ({"refine_tol": -5.0}, "'refine_tol' must be a finite positive number"),
    ({"refine_max_iters": "a"}, "'refine_max_iters' must be a whole number of at least 0"),
    ({"refine_max_iters": 2.5}, "'refine_max_iters' must be a whole number"),
    ({"refine": "no"}, "'refine' must be True or False"),
    ({"eps": float("nan")}, "'eps' must be a finite nonnegative number, got nan"),
    ({"eps_abs": -1.0}, "'eps_abs' must be a finite nonnegative number"),
    ({"max_iters": -1}, "'max_iters' must be a whole number of at least 1, got -1"),
    ({"max_iters": True}, "'max_iters' must be a whole number"),
    ({"scale": 0.0}, "'scale' must be a finite positive number, got 0.0"),
    ({"scale": float("nan")}, "'scale' must be a finite positive number"),
    ({"rho_x": -1e-6}, "'rho_x' must be a finite positive number"),
    ({"alpha": 5.0}, "'alpha' must be a number in (0, 2), got 5.0"),
    ({"time_limit_secs": -1}, "'time_limit_secs' must be a finite nonnegative number"),
    ({"acceleration_lookback": -5}, "'acceleration_lookback' must be a whole number of at least 0"),
    ({"acceleration_interval": 0}, "'acceleration_interval' must be a whole number of at least 1"),
    ([("eps", 1e-6)], "solver_args must be a dict of solver settings (name -> value), got list"),
    ("eps", "solver_args must be a dict of solver settings (name -> value), got str"),
    (3, "solver_args must be a dict of solver settings (name -> value), got int"),
])
def test_a_solver_option_of_the_wrong_kind_is_named(simple, args, named):
    """Values are checked as the user named them, per call and at compile time, before any
    solve (a string reached NumPy's arithmetic, a NaN tolerance SCS, silently)."""
    layer, _, _ = simple
    with pytest.raises(ProblemError, match=re.escape(named)):
        layer.forward([np.ones(3)], solver_args=args)
    x, theta = cp.Variable(3), cp.Parameter(3)
    with pytest.raises(ProblemError, match=re.escape(named)):
        dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - theta))), [theta], [x],
                   solver_args=args)


def test_empty_batch_gives_empty_outputs(simple):
    layer, _, _ = simple
    (x,) = layer.torch()(torch.ones(0, 3))
    assert x.shape == (0, 3)


def test_empty_batch_jacobians_under_torch_func(simple):
    """jacrev and jacfwd over a batch of 0 give (0, 3, 0, 3), as torch's own ops do (the
    vmap rule took the first of no directions)."""
    layer, _, _ = simple
    module = layer.torch()
    z = torch.zeros(0, 3, dtype=torch.float64)
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        J = transform(lambda t: module(t)[0])(z)
        assert J.shape == (0, 3, 0, 3)


def test_mixed_integer_problems_are_rejected_naming_the_variable():
    x, theta = cp.Variable(3, integer=True, name="counts"), cp.Parameter(3)
    with pytest.raises(ProblemError, match=r"\['counts'\] are integer or boolean"):
        dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - theta))), [theta], [x])


def _small_forward():
    n = 3
    x, th, lam = cp.Variable(n, name="x"), cp.Parameter(n, name="th"), \
        cp.Parameter(nonneg=True, name="lam")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - th) + lam * cp.sum(x)), [x >= 0])
    layer = dl.compile(prob, parameters=[th, lam], variables=[x])
    return layer, layer.forward([np.ones((2, n)), np.ones(2)])


@pytest.mark.parametrize("call, message", [
    (lambda f: f.jacobian(5), r"jacobian: index must be an integer batch index in \[-2, 2\) "
                              r"\(batch size 2\), got 5"),
    (lambda f: f.jacobian(0.5), "got 0.5"),
    (lambda f: f.vjp([np.ones((3, 3))]),
     r"vjp: the cotangent for output 'x' must have shape \(2, 3\) \(batch size 2\), got "
     r"\(3, 3\)"),
    (lambda f: f.vjp([np.ones((2, 3)), np.ones((2, 3))]),
     r"vjp: expected a sequence of 1 cotangent\(s\), one per output \(x, in order"),
    (lambda f: f.jvp([np.ones((2, 3))]),
     r"jvp: expected a sequence of 2 tangent\(s\), one per parameter \(th, lam"),
    (lambda f: f.jvp([np.ones((2, 4)), None]),
     r"jvp: the tangent for parameter 'th' must have shape \(2, 3\) or \(3,\)"),
    (lambda f: f.jvp(["a", None]), "must be a real array"),
])
def test_derivative_calls_of_the_wrong_shape_are_named(call, message):
    _, fwd = _small_forward()
    with pytest.raises(ParameterError, match=message):
        call(fwd)


def test_a_negative_jacobian_index_counts_from_the_end():
    _, fwd = _small_forward()
    for a, b in zip(fwd.jacobian(-1)[0], fwd.jacobian(1)[0], strict=True):
        assert np.array_equal(a, b)


def test_one_parameter_or_variable_may_be_given_alone():
    x, th = cp.Variable(3), cp.Parameter(3)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [x >= 0])
    layer = dl.compile(prob, parameters=th, variables=x)
    out = layer.forward([np.array([1.0, -2.0, 3.0])]).outputs[0]
    assert np.abs(out - np.array([[1.0, 0.0, 3.0]])).max() <= 1e-12
    with pytest.raises(ProblemError, match="variables must be a list of cvxpy Variables, "
                                           "got dict"):
        dl.compile(prob, parameters=[th], variables={"x": x})
