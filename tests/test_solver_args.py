"""Solver options as users of cvxpylayers and diffcp write them: ``eps`` is SCS 3's
eps_abs = eps_rel; other foreign spellings are refused with the name to use here."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
from declarative.errors import ProblemError


def _layer(**kwargs):
    x, theta = cp.Variable(4), cp.Parameter(4)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [cp.sum(x) == 1, x >= 0])
    return dl.compile(problem, [theta], [x], **kwargs)


def test_eps_sets_both_tolerances():
    layer = _layer(solver_args={"eps": 1e-7})
    _, settings, _, _ = layer.resolve_options(None, None)
    assert settings["eps_abs"] == settings["eps_rel"] == 1e-7
    _, settings, _, _ = layer.resolve_options({"eps": 1e-5}, None)  # per call overrides
    assert settings["eps_abs"] == settings["eps_rel"] == 1e-5
    _, settings, _, _ = layer.resolve_options({"eps_rel": 1e-4}, None)
    assert (settings["eps_abs"], settings["eps_rel"]) == (1e-7, 1e-4)


def test_eps_solves_as_eps_abs_and_eps_rel():
    """Unrefined SCS solutions at eps = 1e-4 are bitwise those at eps_abs = eps_rel = 1e-4
    (their backward error, iterations and status alike), and further from optimal than
    those at 1e-9; without refinement the loose ones are not certified."""
    theta = np.array([[0.9, 0.3, -0.2, 0.4], [2.0, 1.5, 0.1, -3.0]])
    raw = {"refine": False}

    def run(args):
        return _layer().forward([theta], solver_args={**raw, **args}, on_failure="nan").info

    a, b = run({"eps": 1e-4}), run({"eps_abs": 1e-4, "eps_rel": 1e-4})
    assert np.array_equal(a.residual_before, b.residual_before)
    assert np.array_equal(a.scs_iterations, b.scs_iterations) and a.status == b.status
    assert all(str(st) == "inaccurate" for st in a.status)  # SCS's word is not enough
    c = run({"eps": 1e-9})
    assert np.all(c.residual_before < a.residual_before)
    assert np.all(c.scs_iterations > a.scs_iterations)


def test_eps_with_eps_abs_is_ambiguous():
    with pytest.raises(ProblemError, match=r"'eps' and \['eps_abs'\] both given"):
        _layer(solver_args={"eps": 1e-6, "eps_abs": 1e-5})


@pytest.mark.parametrize(("name", "hint"), [
    ("max_iter", "max_iters"), ("tol", "eps_abs and eps_rel"), ("mode", "derivative mode"),
    ("solve_method", "the solver= argument"), ("n_jobs_forward", "parallel threads"),
    ("use_indirect", "linear_solver"), ("raise_on_error", "on_failure"),
])
def test_foreign_spellings_name_ours(name, hint):
    with pytest.raises(ProblemError, match=rf"unsupported solver option\(s\) \['{name}'\].*"
                                           rf"Instead of '{name}': .*{hint}"):
        _layer(solver_args={name: 1})
    layer = _layer()
    with pytest.raises(ProblemError, match=rf"Instead of '{name}'"):
        layer.forward([np.ones(4)], solver_args={name: 1})


def test_cvxpylayers_scs_spellings_are_accepted():
    """What cvxpylayers' examples pass to SCS through diffcp works unchanged here."""
    layer = _layer(solver_args={"eps": 1e-8, "max_iters": 10_000, "acceleration_lookback": 0,
                                "verbose": False})
    (x,) = layer.forward([np.array([0.9, 0.3, -0.2, 0.4])]).outputs
    assert np.max(np.abs(x - [0.7, 0.1, 0.0, 0.2])) <= 1e-9


@pytest.mark.parametrize(("name", "hint"), [
    ("eps", "tol_gap_abs, tol_gap_rel and tol_feas"), ("max_iters", "max_iter"),
    ("eps_abs", "tol_gap_abs"),
])
def test_scs_spellings_name_clarabels_own(name, hint):
    """With solver="clarabel", SCS's names are refused with Clarabel's own."""
    with pytest.raises(ProblemError, match=rf"for solver 'clarabel'.*Instead of '{name}': {hint}"):
        _layer(solver="clarabel", solver_args={name: 1e-6})
    layer = _layer()
    with pytest.raises(ProblemError, match=rf"Instead of '{name}'"):
        layer.forward([np.ones(4)], solver="clarabel", solver_args={name: 1e-6})


def test_tune_names_foreign_spellings_too():
    """layer.tune validates its trial settings through the same check as a call."""
    layer = _layer()
    with pytest.raises(ProblemError, match=r"for solver 'scs'.*Instead of 'max_iter': max_iters"):
        layer.tune([np.ones((2, 4))], solver_args={"max_iter": 5})
