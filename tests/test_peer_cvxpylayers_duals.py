"""cvxpylayers' dual-variable test suite (cvxpylayers/tests/test_dual_variables.py), ported.

Their problems, each returning primal and dual variables (``constraint.dual_variables``)
from a torch layer. Values are checked against CVXPY's own solve with Clarabel at tight
tolerance (theirs: Clarabel at default tolerance, rtol 1e-3) or a closed form, and every
problem's derivatives (all outputs, duals included) against central differences; theirs
gradchecked some and skipped the power cone (a diffcp bug).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import declarative as dl
from declarative.errors import ProblemError
from tests.output_checks import cvxpy_reference

CLARABEL = 1e-7
FD = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-4}


def _lp_with_equality():
    x, c, b = cp.Variable(2), cp.Parameter(2), cp.Parameter()
    eq, ineq = cp.sum(x) == b, x >= 0
    return cp.Problem(cp.Minimize(c @ x), [eq, ineq]), [c, b], x, eq, ineq


def case_equality_dual():
    problem, params, x, eq, _ = _lp_with_equality()
    return problem, params, [x, eq.dual_variables[0]], [np.array([1.0, 2.0]), np.array(1.0)]


def case_multiple_duals():
    problem, params, x, eq, ineq = _lp_with_equality()
    return (problem, params, [x, eq.dual_variables[0], ineq.dual_variables[0]],
            [np.array([1.0, 2.0]), np.array(1.0)])


def case_dual_only():
    problem, params, _, eq, _ = _lp_with_equality()
    return problem, params, [eq.dual_variables[0]], [np.array([1.0, 2.0]), np.array(1.0)]


def case_inequality_dual():
    x, c = cp.Variable(2), cp.Parameter(2)
    ineq = x >= 0
    problem = cp.Problem(cp.Minimize(c @ x + cp.sum_squares(x)), [ineq])
    return problem, [c], [x, ineq.dual_variables[0]], [np.array([1.0, -1.0])]


def case_qp_equality_dual():
    x, c, b = cp.Variable(2), cp.Parameter(2), cp.Parameter()
    eq = cp.sum(x) == b
    problem = cp.Problem(cp.Minimize(c @ x + 0.5 * cp.sum_squares(x)), [eq])
    return problem, [c, b], [x, eq.dual_variables[0]], [np.array([0.5, -0.3]), np.array(1.0)]


def case_qp_inequality_dual():
    x, c = cp.Variable(2), cp.Parameter(2)
    ineq = x >= 0
    problem = cp.Problem(cp.Minimize(c @ x + 0.5 * cp.sum_squares(x)), [ineq])
    return problem, [c], [x, ineq.dual_variables[0]], [np.array([1.0, -1.0])]


def case_vector_equality_dual():
    x, A, b = cp.Variable(3), cp.Parameter((2, 3)), cp.Parameter(2)
    eq = A @ x == b
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x)), [eq])
    rng = np.random.default_rng(42)
    return (problem, [A, b], [x, eq.dual_variables[0]],
            [rng.standard_normal((2, 3)), rng.standard_normal(2)])


def case_soc_dual():
    x, c, t = cp.Variable(3), cp.Parameter(3), cp.Parameter(nonneg=True)
    soc = cp.norm(x) <= t
    problem = cp.Problem(cp.Minimize(c @ x + 0.1 * cp.sum_squares(x)), [soc])
    return (problem, [c, t], [x, soc.dual_variables[0]],
            [np.array([0.5, 0.3, -0.2]), np.array(2.0)])


def case_soc_linear_objective_dual():
    x, c, t = cp.Variable(3), cp.Parameter(3), cp.Parameter(nonneg=True)
    soc = cp.norm(x) <= t
    problem = cp.Problem(cp.Minimize(c @ x), [soc])
    return (problem, [c, t], [x, soc.dual_variables[0]],
            [np.array([1.0, 0.5, -0.5]), np.array(2.0)])


def _exp_cone_problem():
    x, y, z, t = cp.Variable(), cp.Variable(), cp.Variable(), cp.Parameter(nonneg=True)
    con = cp.constraints.ExpCone(x, y, z)
    problem = cp.Problem(cp.Minimize(-z + 0.1 * (x**2 + y**2 + z**2)), [con, y >= 0.1, z <= t])
    return problem, [t], [x, y, z, *con.dual_variables]


def case_exp_cone_duals():
    """Theirs at t = 5, where z ≤ t is weakly active (see the closed-form test below); here
    at t = 4, where it is strictly active (multiplier 1 − 0.2·4 = 0.2)."""
    return (*_exp_cone_problem(), [np.array(4.0)])


def case_pow_cone_duals():
    x, y, z, t = cp.Variable(), cp.Variable(), cp.Variable(), cp.Parameter(nonneg=True)
    con = cp.PowCone3D(x, y, z, 0.5)
    problem = cp.Problem(cp.Minimize(-z + 0.1 * (x**2 + y**2)),
                         [con, x >= 0.1, y >= 0.1, x + y <= t])
    return problem, [t], [x, y, z, *con.dual_variables], [np.array(4.0)]


def case_psd_dual():
    X, C = cp.Variable((2, 2), symmetric=True), cp.Parameter((2, 2), symmetric=True)
    psd = X >> 0
    problem = cp.Problem(cp.Minimize(cp.trace(C @ X)), [psd, cp.trace(X) == 1])
    return problem, [C], [X, psd.dual_variables[0]], [np.array([[1.0, 0.5], [0.5, 2.0]])]


def case_soc_explicit_duals():
    x, t = cp.Variable(3), cp.Variable()
    c, t_max = cp.Parameter(3), cp.Parameter(nonneg=True)
    soc = cp.SOC(t, x)
    problem = cp.Problem(cp.Minimize(c @ x - t + 0.1 * cp.sum_squares(x)), [soc, t <= t_max])
    return (problem, [c, t_max], [x, t, *soc.dual_variables],
            [np.array([0.5, 0.3, -0.2]), np.array(2.0)])


def case_mixed_cones():
    """Every cone kind in one problem: their check that each dual is read from its own
    block of the dual vector. Theirs had tr(X) in the objective, which makes X non-unique
    (any X ⪰ 0 with tr X = 1/2; see the xfail test below); tr(WX) with W = diag(1, 2) has
    the unique X = diag(1/2, 0) and PSD dual diag(0, 1)."""
    W = np.diag([1.0, 2.0])
    x_eq, x_ineq, x_soc, t_soc = cp.Variable(2), cp.Variable(2), cp.Variable(2), cp.Variable()
    x_exp, y_exp, z_exp = cp.Variable(), cp.Variable(), cp.Variable()
    X_psd = cp.Variable((2, 2), symmetric=True)
    x_pow, y_pow, z_pow = cp.Variable(), cp.Variable(), cp.Variable()
    b_eq, ub, t = cp.Parameter(2), cp.Parameter(2), cp.Parameter(nonneg=True)
    eq, ineq, soc = x_eq == b_eq, x_ineq <= ub, cp.SOC(t_soc, x_soc)
    exp, psd = cp.constraints.ExpCone(x_exp, y_exp, z_exp), X_psd >> 0
    pow_ = cp.PowCone3D(x_pow, y_pow, z_pow, 0.5)
    obj = (cp.sum_squares(x_eq) + cp.sum_squares(x_ineq) + cp.sum_squares(x_soc) - t_soc
           - z_exp + 0.1 * (x_exp**2 + y_exp**2 + z_exp**2) + cp.trace(W @ X_psd) - z_pow
           + 0.1 * (x_pow**2 + y_pow**2))
    problem = cp.Problem(cp.Minimize(obj), [
        eq, ineq, soc, t_soc <= t, exp, y_exp >= 0.1, z_exp <= t, psd, cp.trace(X_psd) >= 0.5,
        pow_, x_pow >= 0.1, y_pow >= 0.1, x_pow + y_pow <= t])
    outputs = [x_eq, x_ineq, t_soc, z_exp, X_psd, z_pow, eq.dual_variables[0],
               ineq.dual_variables[0], *soc.dual_variables, *exp.dual_variables,
               psd.dual_variables[0], *pow_.dual_variables]
    return problem, [b_eq, ub, t], outputs, [np.array([0.5, -0.3]), np.array([1.0, 1.0]),
                                             np.array(3.0)]


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dual_values_match_cvxpy(name):
    problem, params, outputs, values = CASES[name]()
    module = dl.compile(problem, params, outputs).torch()
    outs = module(*[torch.tensor(v, dtype=torch.float64) for v in values])
    refs = cvxpy_reference(problem, params, outputs, values)
    for o, r, var in zip(outs, refs, outputs, strict=True):
        assert tuple(o.shape) == r.shape, (var, o.shape, r.shape)
        err = float(np.max(np.abs(o.numpy() - r)))
        assert err <= CLARABEL * max(1.0, float(np.max(np.abs(r)))), (var, err)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dual_derivatives_match_finite_differences(name):
    problem, params, outputs, values = CASES[name]()
    module = dl.compile(problem, params, outputs).torch()
    args = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values)
    assert torch.autograd.gradcheck(lambda *ps: module(*ps), args, **FD)


def test_inequality_dual_closed_form():
    """min cᵀx + ‖x‖² s.t. x ≥ 0: x = max(−c/2, 0), λ = max(c, 0); dλ/dc = 1 where c > 0."""
    problem, params, outputs, _ = case_inequality_dual()
    module = dl.compile(problem, params, outputs).torch()
    c = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    x, lam = module(c)
    assert float((x - torch.clamp(-c / 2, min=0)).abs().max()) <= 1e-8
    assert float((lam - torch.clamp(c, min=0)).abs().max()) <= 1e-8
    (g,) = torch.autograd.grad(lam.sum(), c)
    assert float((g - torch.tensor([1.0, 0.0], dtype=torch.float64)).abs().max()) <= 1e-8


def test_batched_dual_variables():
    """A batch of LPs: each instance's primal and dual against CVXPY."""
    problem, params, x, eq, _ = _lp_with_equality()
    outputs = [x, eq.dual_variables[0]]
    module = dl.compile(problem, params, outputs).torch()
    rng = np.random.default_rng(0)
    c, b = rng.standard_normal((3, 2)), np.ones(3)
    xs, duals = module(torch.tensor(c), torch.tensor(b))
    assert xs.shape == (3, 2) and duals.shape == (3,)
    for i in range(3):
        x_ref, d_ref = cvxpy_reference(problem, params, outputs, [c[i], b[i]])
        assert float(np.max(np.abs(xs[i].numpy() - x_ref))) <= CLARABEL
        assert float(np.max(np.abs(duals[i].numpy() - d_ref))) <= CLARABEL


def test_invalid_dual_variable():
    """A dual variable of a constraint that is not in the problem is refused."""
    x, c = cp.Variable(2), cp.Parameter(2)
    other = x >= 1
    problem = cp.Problem(cp.Minimize(c @ x), [x >= 0])
    with pytest.raises(ProblemError):
        dl.compile(problem, [c], [x, other.dual_variables[0]])


def test_exp_cone_weakly_active_closed_form():
    """Their t = 5: the unconstrained minimizer in z is 5, so z ≤ t holds with a zero
    multiplier. x = 0, y = 0.1, z = 5 (the exponential cone inactive: 0.1·e⁰ < 5, its duals
    zero); CVXPY + Clarabel stops 3e-5 away (an interior point method on a weakly active
    constraint). dz/dt is one-sided (1 below t = 5, 0 above): reported, not averaged."""
    problem, params, outputs = _exp_cone_problem()
    layer = dl.compile(problem, params, outputs)
    fwd = layer.forward([np.array(5.0)])
    expected = [0.0, 0.1, 5.0, 0.0, 0.0, 0.0]
    for o, e in zip(fwd.outputs, expected, strict=True):
        assert abs(float(o[0]) - e) <= 1e-8
    with pytest.warns(dl.NonDifferentiableWarning):
        assert fwd.nondifferentiable[0]


def test_psd_dual_at_non_unique_primal_is_certified():
    """Their mixed-cone PSD block: min tr X s.t. X ⪰ 0, tr X ≥ 1/2 has a non-unique X and a
    PSD dual that is exactly 0. S is singular, but its null space (the face of optimal X)
    does not move the dual: certified solved, and 0 (the closed form)."""
    t = cp.Parameter(nonneg=True)
    X = cp.Variable((2, 2), symmetric=True)
    psd = X >> 0
    problem = cp.Problem(cp.Minimize(cp.trace(X)), [psd, cp.trace(X) >= t])
    layer = dl.compile(problem, [t], [psd.dual_variables[0]])
    (Z,) = layer.torch()(torch.tensor(0.5, dtype=torch.float64))
    assert float(Z.abs().max()) <= 1e-8


# --- geometric programs: duals of the convex (log-log) form, as CVXPY reports them -------


def _gp_single():
    x, y, z = cp.Variable(pos=True), cp.Variable(pos=True), cp.Variable(pos=True)
    a, b = cp.Parameter(pos=True), cp.Parameter(pos=True)
    con = a * (x * y + x * z + y * z) <= b
    return cp.Problem(cp.Minimize(1 / (x * y * z)), [con]), [a, b], [x, y, z,
                                                                      con.dual_variables[0]]


def _gp_two():
    x, y = cp.Variable(pos=True), cp.Variable(pos=True)
    a, b = cp.Parameter(pos=True), cp.Parameter(pos=True)
    con1, con2 = a * (x * y) <= b, x + y <= 2
    return (cp.Problem(cp.Minimize(1 / (x * y)), [con1, con2]), [a, b],
            [x, y, con1.dual_variables[0], con2.dual_variables[0]])


def test_gp_inequality_constraint_dual_closed_form():
    """max xyz s.t. a(xy + xz + yz) ≤ b: x = y = z = √(b/3a) (AM–GM). In log form,
    min −(u+v+w) s.t. log(a(e^(u+v) + e^(u+w) + e^(v+w))/b) ≤ 0: stationarity in u gives
    1 = λ·(2/3), so λ = 3/2 whatever a and b; CVXPY agrees."""
    problem, params, outputs = _gp_single()
    module = dl.compile(problem, params, outputs, gp=True).torch()
    a_t = torch.tensor([2.0, 0.5], dtype=torch.float64, requires_grad=True)
    b_t = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    x, y, z, lam = module(a_t, b_t)
    s = torch.sqrt(b_t / (3 * a_t)).detach()
    for o in (x, y, z):
        assert float((o - s).abs().max()) <= 1e-8
    assert float((lam - 1.5).abs().max()) <= 1e-8
    ga, gb = torch.autograd.grad(lam.sum(), [a_t, b_t])
    assert float(ga.abs().max()) <= 1e-8 and float(gb.abs().max()) <= 1e-8
    refs = cvxpy_reference(problem, params, outputs, [2.0, 1.0], gp=True)
    assert abs(float(refs[3]) - 1.5) <= 1e-5  # CVXPY's convention (Clarabel, exp cones)


def test_gp_multiple_constraint_duals():
    """max xy s.t. a·xy ≤ b, x + y ≤ 2 with b/a = 2: x = y = 1 (x + y ≤ 2 active, a·xy ≤ b
    not); in log form stationarity gives λ₂ = 2, λ₁ = 0. Values against that and CVXPY,
    every output's derivative against central differences. (Their a = 2, b = 1 makes
    a·xy ≤ b the active one and x, y non-unique: see the xfail test below.)"""
    problem, params, outputs = _gp_two()
    module = dl.compile(problem, params, outputs, gp=True).torch()
    vals = [0.5, 1.0]
    outs = module(*[torch.tensor(v, dtype=torch.float64) for v in vals])
    for o, e in zip(outs, [1.0, 1.0, 0.0, 2.0], strict=True):
        assert abs(float(o) - e) <= 1e-8
    refs = cvxpy_reference(problem, params, outputs, vals, gp=True)
    for o, r in zip(outs, refs, strict=True):  # CVXPY's conventions (Clarabel: 2e-6 here)
        assert abs(float(o) - float(r)) <= 1e-5
    args = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in vals)
    assert torch.autograd.gradcheck(lambda *ps: module(*ps), args, **FD)


def test_gp_multiple_constraint_duals_their_data():
    """Their data: xy = b/a = 1/2 with x + y < 2 leaves x, y non-unique along xy = 1/2 (any
    point of that face is a solution) and the second dual exactly 0, which the face does
    not move: certified solved."""
    problem, params, outputs = _gp_two()
    module = dl.compile(problem, params, outputs, gp=True).torch()
    outs = module(*[torch.tensor(v, dtype=torch.float64) for v in (2.0, 1.0)])
    assert abs(float(outs[0] * outs[1]) - 0.5) <= 1e-8
    # log form: min −(u + v) s.t. log a + u + v ≤ log b, log(eᵘ + eᵛ) ≤ log 2; stationarity
    # with the second constraint inactive gives λ₁ = 1, λ₂ = 0
    assert abs(float(outs[2]) - 1.0) <= 1e-8 and abs(float(outs[3])) <= 1e-8
