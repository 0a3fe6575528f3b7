"""cvxpylayers' torch test suite (cvxpylayers/tests/test_torch.py), ported to our API.

Each test keeps their problem and what their check establishes, with an independent
reference held to what that reference allows: a closed form (tight, 1e-8), CVXPY's own
solve with Clarabel at tight tolerance (1e-7), or central finite differences of the layer
(``torch.autograd.gradcheck`` in float64). Where their API differs from ours (errors by
type and message, ``solver_args`` spellings, what counts as "solved"), the test checks our
contract and its docstring says how. Their Moreau-only quad_form tests run here on SCS:
``quad_form(x, Q)`` with a PSD parameter is DPP in our objective.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import declarative as dl
from declarative.errors import ParameterError, ProblemError, SolverError
from tests.output_checks import cvxpy_reference
from tests.peer_cvxpylayers_problems import (
    ball_qp,
    entropy_newton,
    entropy_problem,
    gp,
    gp_reference,
    gp_reference_grad,
    l1_regression,
    lml_closed_form,
    logistic_newton,
    ridge,
)

TIGHT = 1e-8       # against a closed form
CLARABEL = 1e-7    # against CVXPY + Clarabel at 1e-10
FD = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-4}   # gradcheck: central differences


def _t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=float), dtype=torch.float64, requires_grad=grad)


def _err(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _ridge_torch(A, b):
    n = A.shape[-1]
    return torch.linalg.solve(A.T @ A + torch.eye(n, dtype=A.dtype), A.T @ b)


# --- their "example" and the small cone programs -----------------------------------------


def test_example_l1_regression_matches_cvxpy_and_finite_differences():
    """Their test_example only ran backward; here the solution is CVXPY's and backward
    agrees with central differences (a generic LP vertex: the map is locally affine)."""
    problem, params, variables = l1_regression()
    module = dl.compile(problem, params, variables).torch()
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((3, 2)), rng.standard_normal(3)
    (x,) = module(_t(A), _t(b))
    (ref,) = cvxpy_reference(problem, params, variables, [A, b])
    assert _err(x, ref) <= CLARABEL
    assert torch.autograd.gradcheck(lambda A, b: module(A, b)[0], (_t(A, True), _t(b, True)),
                                    **FD)


def test_simple_batch_socp_gradcheck():
    """Skipped in their torch suite, run in their JAX suite: an SOCP with an equality, batched
    over every parameter. Each instance against its KKT solution (CVXPY with Clarabel stops
    'optimal_inaccurate' at tight tolerance on one of them), backward against differences."""
    n, m, B = 5, 1, 4
    P_sqrt, q = cp.Parameter((n, n)), cp.Parameter((n, 1))
    A, b = cp.Parameter((m, n)), cp.Parameter((m, 1))
    x = cp.Variable((n, 1))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(P_sqrt @ x) + q.T @ x),
                         [A @ x == b, cp.norm(x) <= 1])
    params = [P_sqrt, q, A, b]
    module = dl.compile(problem, params, [x]).torch()
    rng = np.random.default_rng(243)
    values = [rng.standard_normal((B, n, n)), rng.standard_normal((B, n, 1)),
              rng.standard_normal((B, m, n)), 0.3 * rng.standard_normal((B, m, 1))]
    (xs,) = module(*[_t(v) for v in values])
    assert xs.shape == (B, n, 1)
    for i in range(B):
        assert _err(xs[i], ball_qp(*[v[i] for v in values])) <= TIGHT
    assert torch.autograd.gradcheck(lambda *ps: module(*ps)[0],
                                    tuple(_t(v, True) for v in values), **FD)


def test_least_squares_closed_form():
    """Solution and gradients in A and b against the normal equations (their atol 1e-6 with
    eps=1e-10; ours at default settings, tight)."""
    m, n = 100, 20
    problem, params, variables = ridge(m, n)
    module = dl.compile(problem, params, variables).torch()
    rng = np.random.default_rng(243)
    A, b = _t(rng.standard_normal((m, n)), True), _t(rng.standard_normal(m), True)
    (x,) = module(A, b)
    x_ref = _ridge_torch(A, b)
    assert _err(x, x_ref) <= TIGHT
    gA, gb = torch.autograd.grad(x.sum(), [A, b])
    gA_ref, gb_ref = torch.autograd.grad(x_ref.sum(), [A, b])
    assert _err(gA, gA_ref) <= TIGHT and _err(gb, gb_ref) <= TIGHT


def test_least_squares_with_their_eps_setting():
    """Their call passes solver_args={"eps": 1e-10}; we take diffcp's spelling as SCS's
    eps_abs = eps_rel, and the result is the same closed form."""
    m, n = 30, 8
    problem, params, variables = ridge(m, n)
    module = dl.compile(problem, params, variables).torch()
    rng = np.random.default_rng(1)
    A, b = _t(rng.standard_normal((m, n))), _t(rng.standard_normal(m))
    (x,) = module(A, b, solver_args={"eps": 1e-10})
    assert _err(x, _ridge_torch(A, b)) <= TIGHT


def test_logistic_regression():
    """Exponential cones (log_sum_exp): the Newton solution of the smooth problem, da/dλ in
    closed form, and central differences in X (CVXPY + Clarabel is within 8e-7 here)."""
    rng = np.random.default_rng(0)
    N, n = 5, 2
    X_np = rng.standard_normal((N, n))
    a_true = rng.standard_normal((n, 1))
    y = np.round(1 / (1 + np.exp(-(X_np @ a_true + 0.5 * rng.standard_normal((N, 1))))))
    a, X, lam = cp.Variable((n, 1)), cp.Parameter((N, n)), cp.Parameter(1, nonneg=True)
    log_likelihood = cp.sum(cp.multiply(y, X @ a) - cp.log_sum_exp(
        cp.hstack([np.zeros((N, 1)), X @ a]).T, axis=0, keepdims=True).T)
    problem = cp.Problem(cp.Minimize(-log_likelihood + lam * cp.sum_squares(a)))
    module = dl.compile(problem, [X, lam], [a]).torch()
    lam_t = _t([0.1], True)
    (a_t,) = module(_t(X_np), lam_t)
    a_ref, H = logistic_newton(X_np, y, 0.1)
    assert _err(a_t, a_ref) <= TIGHT
    (g,) = torch.autograd.grad(a_t.sum(), lam_t)
    assert _err(g, [-np.ones(n) @ np.linalg.solve(H, 2 * a_ref.ravel())]) <= TIGHT
    assert torch.autograd.gradcheck(lambda X, lam: module(X, lam)[0],
                                    (_t(X_np, True), _t([0.1], True)), **FD)


def test_entropy_maximization_their_data_is_infeasible():
    """Skipped in their suites. Their data (b = A t, g = F t + noise, t Gaussian) has no
    x ≥ 0 with Ax = b here: CVXPY says infeasible and so do we, by status."""
    problem, params, x = entropy_problem()
    rng = np.random.default_rng(243)
    tmp = rng.standard_normal(5)
    A_np, F_np = rng.standard_normal((3, 5)), rng.standard_normal((2, 5))
    values = [A_np, A_np @ tmp, F_np, F_np @ tmp + rng.standard_normal(2)]
    for prm, v in zip(params, values, strict=True):
        prm.value = v
    problem.solve(solver=cp.CLARABEL)
    assert problem.status == cp.INFEASIBLE
    module = dl.compile(problem, params, [x]).torch()
    with pytest.raises(SolverError, match="infeasible"):
        module(*[_t(v) for v in values])


def test_entropy_maximization():
    """Their problem with a feasible point planted (t > 0): CVXPY's solution and central
    differences."""
    problem, params, x = entropy_problem()
    rng = np.random.default_rng(243)
    tmp = rng.uniform(0.5, 1.5, 5)
    A_np, F_np = rng.standard_normal((3, 5)), rng.standard_normal((2, 5))
    values = [A_np, A_np @ tmp, F_np, F_np @ tmp + np.abs(rng.standard_normal(2))]
    module = dl.compile(problem, params, [x]).torch()
    (x_t,) = module(*[_t(v) for v in values])
    (start,) = cvxpy_reference(problem, params, [x], values)
    assert _err(x_t, entropy_newton(values, start)) <= TIGHT
    assert torch.autograd.gradcheck(lambda *ps: module(*ps)[0],
                                    tuple(_t(v, True) for v in values), **FD)


def test_lml():
    """The limited multi-label projection: solution and Jacobian against the closed form
    (CVXPY + Clarabel is only within 3e-6 here; their gradcheck used atol 1e-3)."""
    x, y = cp.Parameter(4), cp.Variable(4)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y)) - cp.sum(cp.entr(1.0 - y))),
                         [cp.sum(y) == 2])
    module = dl.compile(problem, [x], [y]).torch()
    x_np = np.array([1.0, -1.0, -1.0, -1.0])
    y_ref, J_ref = lml_closed_form(x_np, 2)
    (y_t,) = module(_t(x_np))
    assert _err(y_t, y_ref) <= TIGHT
    J = torch.func.jacrev(lambda t: module(t)[0])(_t(x_np))
    assert _err(J, J_ref) <= TIGHT
    assert torch.autograd.gradcheck(lambda t: module(t)[0], (_t(x_np, True),), **FD)


def test_sdp_symmetric_parameter():
    """min tr(CX) s.t. X ⪰ 0, tr X = 1: X* = vvᵀ for v the eigenvector of C's smallest
    eigenvalue (a closed form), and dX/dC against central differences. Our symmetric
    parameter enters as (C + Cᵀ)/2, so gradcheck's one-entry perturbations are valid."""
    n = 3
    X, C = cp.Variable((n, n), symmetric=True), cp.Parameter((n, n), symmetric=True)
    problem = cp.Problem(cp.Minimize(cp.trace(C @ X)), [X >> 0, cp.trace(X) == 1])
    module = dl.compile(problem, [C], [X]).torch()
    C_np = np.array([[2.0, 0.5, 0.1], [0.5, 3.0, 0.2], [0.1, 0.2, 1.5]])
    (X_t,) = module(_t(C_np))
    w, V = np.linalg.eigh(C_np)
    assert _err(X_t, np.outer(V[:, 0], V[:, 0])) <= TIGHT
    assert torch.autograd.gradcheck(lambda C: module(C)[0], (_t(C_np, True),), **FD)


# --- bad input: ours raises ProblemError / ParameterError (both ValueErrors) -------------


def _two_lambda_problem():
    x = cp.Variable(1)
    lam, lam2 = cp.Parameter(1, nonneg=True, name="lam"), cp.Parameter(1, nonneg=True,
                                                                        name="lam2")
    problem = cp.Problem(cp.Minimize(lam * cp.norm(x, 1) + lam2 * cp.sum_squares(x)))
    return problem, lam, lam2, x


def test_not_enough_parameters():
    """Theirs: ValueError 'must exactly match problem.parameters'. Ours names the missing
    parameter."""
    problem, lam, lam2, x = _two_lambda_problem()
    with pytest.raises(ProblemError, match="lam2"):
        dl.compile(problem, [lam], [x])


def test_not_enough_parameters_at_call_time():
    problem, lam, lam2, x = _two_lambda_problem()
    module = dl.compile(problem, [lam, lam2], [x]).torch()
    with pytest.raises(ParameterError, match="2"):
        module(torch.ones(1, dtype=torch.float64))


def test_none_parameter_at_call_time():
    """Theirs expects an AttributeError from deep inside; ours is a ParameterError naming the
    parameter that got None."""
    problem, lam, lam2, x = _two_lambda_problem()
    module = dl.compile(problem, [lam, lam2], [x]).torch()
    with pytest.raises(ParameterError, match="lam2"):
        module(torch.ones(1, dtype=torch.float64), None)


def test_too_many_variables():
    """A variable that is not in the problem is refused at compile time, by name."""
    x, y = cp.Variable(1, name="x"), cp.Variable(1, name="y_not_in_problem")
    lam = cp.Parameter(1, nonneg=True)
    problem = cp.Problem(cp.Minimize(lam * cp.norm(x, 1)))
    with pytest.raises(ProblemError, match="y_not_in_problem"):
        dl.compile(problem, [lam], [x, y])


def test_infeasible():
    """Theirs raises diffcp.SolverError; ours raises SolverError naming the status, or gives
    NaN with on_failure='nan'."""
    x, param = cp.Variable(1), cp.Parameter(1)
    problem = cp.Problem(cp.Minimize(param), [x >= 1, x <= -1])
    module = dl.compile(problem, [param], [x]).torch()
    with pytest.raises(SolverError, match="infeasible"):
        module(torch.ones(1, dtype=torch.float64))
    (out,) = module(torch.ones(1, dtype=torch.float64), on_failure="nan")
    assert torch.isnan(out).all()


def test_unbounded():
    x, param = cp.Variable(1), cp.Parameter(1)
    problem = cp.Problem(cp.Minimize(x), [x <= param])
    module = dl.compile(problem, [param], [x]).torch()
    with pytest.raises(SolverError, match="unbounded"):
        module(torch.ones(1, dtype=torch.float64))


def test_incorrect_parameter_shape():
    """Their four cases: inconsistent batch sizes, wrong shape batched and unbatched, too
    many dimensions. Ours raises ParameterError naming the parameter, expected and got."""
    m, n = 100, 20
    problem, (A, b), variables = ridge(m, n)
    module = dl.compile(problem, [A, b], variables).torch()
    r = torch.randn
    with pytest.raises(ParameterError, match="batch"):
        module(r(32, m, n, dtype=torch.float64), r(20, m, dtype=torch.float64))
    with pytest.raises(ParameterError, match=str(2 * m)):
        module(r(32, m, n, dtype=torch.float64), r(32, 2 * m, dtype=torch.float64))
    with pytest.raises(ParameterError, match=str(2 * m)):
        module(r(m, n, dtype=torch.float64), r(2 * m, dtype=torch.float64))
    with pytest.raises(ParameterError, match=str(m)):
        module(r(32, m, n, dtype=torch.float64), r(32, 32, m, dtype=torch.float64))


# --- batching and broadcasting ---------------------------------------------------------


def test_broadcasting():
    """A unbatched, b batched (two equal rows): each instance is the closed form; A's
    gradient sums over the batch (twice the single one), b's is per instance."""
    m, n = 100, 20
    problem, params, variables = ridge(m, n)
    module = dl.compile(problem, params, variables).torch()
    rng = np.random.default_rng(243)
    A, b0 = _t(rng.standard_normal((m, n)), True), _t(rng.standard_normal(m), True)
    b = torch.stack((b0, b0)).detach().requires_grad_()
    (x,) = module(A, b)
    assert x.shape == (2, n)
    x_ref = _ridge_torch(A, b0)
    assert _err(x[0], x_ref) <= TIGHT and _err(x[1], x_ref) <= TIGHT
    gA, gb = torch.autograd.grad(x.sum(), [A, b])
    gA_ref, gb_ref = torch.autograd.grad(x_ref.sum(), [A, b0])
    assert _err(gA / 2, gA_ref) <= TIGHT
    assert _err(gb[0], gb_ref) <= TIGHT and _err(gb[1], gb_ref) <= TIGHT


def test_shared_parameter():
    """One parameter tensor feeding two layers: the summed gradient is the sum of the two
    least-squares closed forms' gradients, and agrees with differences."""
    m, n = 10, 5
    rng = np.random.default_rng(243)
    A, x = cp.Parameter((m, n)), cp.Variable(n)
    b1, b2 = rng.standard_normal(m), rng.standard_normal(m)
    layer1 = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b1))), [A], [x]).torch()
    layer2 = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b2))), [A], [x]).torch()

    def f(A_t):
        return torch.cat((layer1(A_t)[0], layer2(A_t)[0]))

    def f_ref(A_t):
        return torch.cat((torch.linalg.lstsq(A_t, _t(b1)).solution,
                          torch.linalg.lstsq(A_t, _t(b2)).solution))

    A_t = _t(rng.standard_normal((m, n)), True)
    assert _err(f(A_t), f_ref(A_t)) <= TIGHT
    (g,) = torch.autograd.grad(f(A_t).sum(), A_t)
    (g_ref,) = torch.autograd.grad(f_ref(A_t).sum(), A_t)
    assert _err(g, g_ref) <= TIGHT
    assert torch.autograd.gradcheck(f, (A_t,), **FD)


def test_equality():
    """min ‖x‖² s.t. x = b: x* = b, Jacobian the identity."""
    n = 10
    x, b = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [np.eye(n) @ x == b])
    module = dl.compile(problem, [b], [x]).torch()
    b_t = _t(np.random.default_rng(243).standard_normal(n), True)
    (x_t,) = module(b_t)
    assert _err(x_t, b_t) <= TIGHT
    J = torch.func.jacrev(lambda t: module(t)[0])(b_t)
    assert _err(J, torch.eye(n, dtype=torch.float64)) <= TIGHT


def test_batch_size_one_preserves_batch_dimension():
    """An explicit batch of one stays a batch of one, in outputs and gradients; min ‖x − b‖²
    gives x = b and the gradient of sum(x) is ones."""
    n = 3
    x, b = cp.Variable(n), cp.Parameter(n)
    module = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - b))), [b], [x]).torch()
    b_t = _t(np.random.default_rng(0).standard_normal((1, n)), True)
    (x_t,) = module(b_t)
    assert x_t.shape == (1, n)
    assert _err(x_t, b_t) <= TIGHT
    x_t.sum().backward()
    assert b_t.grad.shape == (1, n)
    assert _err(b_t.grad, torch.ones(1, n, dtype=torch.float64)) <= TIGHT


def test_nd_array_variable():
    """A matrix variable: X* = (AᵀA + 0.01 I)⁻¹AᵀB column by column (their reference was
    CVXPY at atol 1e-4)."""
    m, n, k = 50, 20, 10
    A, B, X = cp.Parameter((m, n)), cp.Parameter((m, k)), cp.Variable((n, k))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ X - B) + 0.01 * cp.sum_squares(X)))
    module = dl.compile(problem, [A, B], [X]).torch()
    rng = np.random.default_rng(123)
    A_np, B_np = rng.standard_normal((m, n)), rng.standard_normal((m, k))
    (X_t,) = module(_t(A_np), _t(B_np))
    assert X_t.shape == (n, k)
    assert _err(X_t, np.linalg.solve(A_np.T @ A_np + 0.01 * np.eye(n), A_np.T @ B_np)) <= TIGHT


# --- autograd bookkeeping ------------------------------------------------------------


def test_no_grad_context_and_requires_grad_false():
    problem, params, variables = l1_regression()
    module = dl.compile(problem, params, variables).torch()
    rng = np.random.default_rng(3)
    A, b = _t(rng.standard_normal((3, 2)), True), _t(rng.standard_normal(3), True)
    with torch.no_grad():
        (x,) = module(A, b)
    assert not x.requires_grad
    (x,) = module(A.detach(), b.detach())
    assert not x.requires_grad
    (x_grad,) = module(A, b)
    assert x_grad.requires_grad and _err(x, x_grad) == 0.0


def test_solver_args_reach_the_solver():
    """Their check: max_iters=1 gives a worse solution. Ours does not return an unconverged
    solve as solved: with SCS stopped after one iteration and refinement off, the instance is
    reported (or, if the single iterate happens to certify, is exact); with refinement on,
    the answer is the closed form whatever max_iters is."""
    m, n = 50, 20
    rng = np.random.default_rng(123)
    A_np, b_np = rng.standard_normal((m, n)), rng.standard_normal(m)
    A, b, x = cp.Parameter((m, n)), cp.Parameter(m), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.01 * cp.sum_squares(x)))
    module = dl.compile(problem, [A, b], [x]).torch()
    x_ref = np.linalg.solve(A_np.T @ A_np + 0.01 * np.eye(n), A_np.T @ b_np)
    (x_nan,), info = module(_t(A_np), _t(b_np), on_failure="nan", return_info=True,
                            solver_args={"max_iters": 1, "refine": False})
    assert info.scs_iterations[0] <= 1
    assert torch.isnan(x_nan).all() or _err(x_nan, x_ref) <= 1e-6
    (x_ref_t,) = module(_t(A_np), _t(b_np), solver_args={"max_iters": 10000, "eps": 1e-10})
    assert _err(x_ref_t, x_ref) <= TIGHT


# --- geometric programs (gp=True) ------------------------------------------------------


def test_basic_gp():
    """Solution against the two-active-constraint reduction, CVXPY agreeing loosely, and
    ∂x/∂(a, b, c) against that reference's differences and gradcheck; c is an exponent."""
    problem, params, variables = gp()
    module = dl.compile(problem, params, variables, gp=True).torch()
    vals = [2.0, 1.0, 0.5]
    ts = [_t(v, True) for v in vals]
    outs = module(*ts)
    assert _err(torch.stack(outs), gp_reference(*vals)) <= TIGHT
    for o, r in zip(outs, cvxpy_reference(problem, params, variables, vals, gp=True),
                    strict=True):
        assert _err(o, r) <= 1e-5
    grads = torch.autograd.grad(outs[0], ts)
    assert _err(torch.stack(grads), gp_reference_grad(*vals)) <= 1e-7
    assert torch.autograd.gradcheck(lambda a, b, c: module(a, b, c)[0],
                                    tuple(_t(v, True) for v in vals), **FD)


def test_batched_gp():
    """A batch of four GPs against the reference instance by instance, then gradcheck on the
    batch."""
    problem, params, variables = gp()
    module = dl.compile(problem, params, variables, gp=True).torch()
    batch = [np.array([2.0, 1.5, 2.5, 1.8]), np.array([1.0, 1.2, 0.8, 1.5]),
             np.array([0.5, 0.6, 0.4, 0.5])]
    outs = module(*[_t(v) for v in batch])
    for o in outs:
        assert o.shape == (4,)
    for i in range(4):
        ref = gp_reference(*[v[i] for v in batch])
        assert _err(torch.stack([o[i] for o in outs]), ref) <= TIGHT
    assert torch.autograd.gradcheck(lambda a, b, c: module(a, b, c)[0].sum(),
                                    tuple(_t(v, True) for v in batch), **FD)


def test_gp_without_param_values():
    """Compiling needs no parameter values."""
    problem, params, variables = gp(named=True)
    assert all(p.value is None for p in params)
    module = dl.compile(problem, params, variables, gp=True).torch()
    a, b, c = _t(2.0, True), _t(1.0, True), _t(0.5, True)
    outs = module(a, b, c)
    assert _err(torch.stack(outs), gp_reference(2.0, 1.0, 0.5)) <= TIGHT
    grads = torch.autograd.grad(outs[0], [a, b, c])
    assert _err(torch.stack(grads), gp_reference_grad(2.0, 1.0, 0.5)) <= 1e-7


def test_gp_reversed_parameter_order():
    """The parameters are taken in the order given: [c, b, a] gives the same solution as
    [a, b, c], and gradients land on the right arguments."""
    problem, (a, b, c), variables = gp(named=True)
    abc = dl.compile(problem, [a, b, c], variables, gp=True).torch()
    cba = dl.compile(problem, [c, b, a], variables, gp=True).torch()
    a_t, b_t, c_t = _t(2.0, True), _t(1.0, True), _t(0.5, True)
    ref = gp_reference(2.0, 1.0, 0.5)
    out1 = torch.stack(abc(a_t, b_t, c_t))
    out2 = torch.stack(cba(c_t, b_t, a_t))
    assert _err(out1, ref) <= TIGHT and _err(out2, ref) <= TIGHT
    g1 = torch.autograd.grad(out1[0], [a_t, b_t, c_t])
    g2 = torch.autograd.grad(out2[0], [a_t, b_t, c_t])
    gref = gp_reference_grad(2.0, 1.0, 0.5)
    assert _err(torch.stack(g1), gref) <= 1e-7 and _err(torch.stack(g2), gref) <= 1e-7


# --- quad_form(x, Q) with a PSD (or NSD) parameter: theirs need Moreau, ours run on SCS ---


def _qp(n, constraints=lambda x: [], nsd=False, maximize=False):
    Q = cp.Parameter((n, n), NSD=True) if nsd else cp.Parameter((n, n), PSD=True)
    q, x = cp.Parameter(n), cp.Variable(n)
    obj = 0.5 * cp.quad_form(x, Q) + q @ x
    sense = cp.Maximize if maximize else cp.Minimize
    problem = cp.Problem(sense(obj), constraints(x))
    return dl.compile(problem, [Q, q], [x]).torch()


def test_quad_form_psd_forward_and_different_Q():
    """Unconstrained: x* = −Q⁻¹q, for several Q."""
    module = _qp(4)
    q = np.random.default_rng(136).standard_normal(4)
    for Q in (2.0 * np.eye(4), np.eye(4), 3.0 * np.eye(4),
              np.diag([1.0, 2.0, 3.0, 4.0]) + 0.3):
        (x,) = module(_t(Q), _t(q))
        assert _err(x, np.linalg.solve(Q, -q)) <= TIGHT


def test_quad_form_psd_gradients_closed_form():
    """x* = −Q⁻¹q: ∂(1ᵀx)/∂q = −Q⁻¹1 and, Q entering as (Q + Qᵀ)/2, ∂(1ᵀx)/∂Q = −sym(u x*ᵀ)
    with u = Q⁻¹1. Their tests checked finite and nonzero; these are the values."""
    n = 4
    module = _qp(n)
    rng = np.random.default_rng(7)
    Bm = rng.standard_normal((n, n))
    Q_np, q_np = Bm @ Bm.T + np.eye(n), rng.standard_normal(n)
    Q, q = _t(Q_np, True), _t(q_np, True)
    (x,) = module(Q, q)
    x.sum().backward()
    xs = np.linalg.solve(Q_np, -q_np)
    u = np.linalg.solve(Q_np, np.ones(n))
    assert _err(q.grad, -u) <= TIGHT
    G = -np.outer(u, xs)
    assert _err(Q.grad, (G + G.T) / 2) <= TIGHT
    assert torch.autograd.gradcheck(lambda Q, q: module(Q, q)[0], (Q, q), **FD)


def test_quad_form_psd_batched():
    n, B = 3, 4
    module = _qp(n)
    scales = np.array([1.0, 2.0, 3.0, 4.0])
    Q_np = scales[:, None, None] * np.eye(n)
    q_np = np.random.default_rng(136).standard_normal((B, n))
    Q, q = _t(Q_np, True), _t(q_np, True)
    (x,) = module(Q, q)
    assert x.shape == (B, n)
    assert _err(x, -q_np / scales[:, None]) <= TIGHT
    x.sum().backward()
    assert _err(q.grad, -np.ones((B, n)) / scales[:, None]) <= TIGHT


def test_quad_form_psd_with_constraints():
    """Box constraints clamp: x* = clip(−Q⁻¹q, −1/2, 1/2) for Q = I."""
    module = _qp(3, lambda x: [x >= -0.5, x <= 0.5])
    (x,) = module(_t(np.eye(3)), _t([3.0, -3.0, 0.1]))
    assert _err(x, [-0.5, 0.5, -0.1]) <= TIGHT


def test_quad_form_plus_constant_linear_resolve():
    """quad_form(x, P) + cᵀx with a constant c, re-solved with a second P: x* = −P⁻¹c."""
    n = 3
    P, x = cp.Parameter((n, n), PSD=True), cp.Variable(n)
    c = np.array([2.0, -2.0, 0.5])
    module = dl.compile(cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + c @ x)),
                        [P], [x]).torch()
    assert _err(module(_t(np.eye(n)))[0], -c) <= TIGHT
    assert _err(module(_t(2 * np.eye(n)))[0], -c / 2) <= TIGHT


def _sum_qp(n):
    P, Q = cp.Parameter((n, n), PSD=True), cp.Parameter((n, n), PSD=True)
    q, x = cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P + Q) + q @ x))
    return dl.compile(problem, [P, Q, q], [x]).torch()


def test_quad_form_sum_of_parameters():
    """quad_form(x, P + Q): x* = −(P + Q)⁻¹q, re-solved with new P, Q; ∂/∂P = ∂/∂Q."""
    module = _sum_qp(2)
    q = np.array([1.0, -1.0])
    for P, Q in ((np.diag([2.0, 1.0]), np.eye(2)), (np.diag([1.0, 3.0]), np.diag([1.0, 2.0]))):
        P_t, Q_t = _t(P, True), _t(Q, True)
        (x,) = module(P_t, Q_t, _t(q))
        assert _err(x, np.linalg.solve(P + Q, -q)) <= TIGHT
        gP, gQ = torch.autograd.grad(x.sum(), [P_t, Q_t])
        assert _err(gP, gQ) <= TIGHT
    P_t, Q_t = _t(2 * np.eye(2), True), _t(3 * np.eye(2), True)
    assert torch.autograd.gradcheck(lambda P, Q: module(P, Q, _t(q))[0], (P_t, Q_t), **FD)


def test_quad_form_negated_nsd_parameter():
    """quad_form(x, −P) with P NSD: x* = P⁻¹q, and gradients against differences."""
    n = 3
    P, q, x = cp.Parameter((n, n), NSD=True), cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, -P) + q @ x))
    module = dl.compile(problem, [P, q], [x]).torch()
    q_np = np.array([1.0, -1.0, 0.5])
    (x_t,) = module(_t(-2 * np.eye(n)), _t(q_np))
    assert _err(x_t, -q_np / 2) <= TIGHT
    assert torch.autograd.gradcheck(lambda P: module(P, _t(q_np))[0],
                                    (_t(-2 * np.eye(n), True),), **FD)


def test_quad_form_multiple_quad_forms():
    n = 3
    P1, P2 = cp.Parameter((n, n), PSD=True), cp.Parameter((n, n), PSD=True)
    q, x = cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P1) + 0.5 * cp.quad_form(x, P2)
                                     + q @ x))
    module = dl.compile(problem, [P1, P2, q], [x]).torch()
    P1_np = np.array([[2, 0.5, 0], [0.5, 1, 0], [0, 0, 3]])
    P2_np = np.array([[1, 0, 0], [0, 2, 0.5], [0, 0.5, 1]])
    q_np = np.array([1.0, -1.0, 0.5])
    (x_t,) = module(_t(P1_np), _t(P2_np), _t(q_np))
    assert _err(x_t, np.linalg.solve(P1_np + P2_np, -q_np)) <= TIGHT


def test_quad_form_nsd_maximize():
    """max ½xᵀQx + qᵀx on the box, Q = −I: x* = clip(q, −1, 1); unconstrained x* = −Q⁻¹q
    with ∂(1ᵀx)/∂q = −Q⁻¹1."""
    boxed = _qp(3, lambda x: [x >= -1, x <= 1], nsd=True, maximize=True)
    (x,) = boxed(_t(-np.eye(3)), _t([2.0, -2.0, 0.5]))
    assert _err(x, [1.0, -1.0, 0.5]) <= TIGHT
    free = _qp(4, nsd=True, maximize=True)
    q = _t(np.random.default_rng(2).standard_normal(4), True)
    (x,) = free(_t(-2 * np.eye(4)), q)
    assert _err(x, q / 2) <= TIGHT
    (g,) = torch.autograd.grad(x.sum(), q)
    assert _err(g, np.full(4, 0.5)) <= TIGHT


@pytest.mark.parametrize("case", ["symmetric_only", "param_times_param", "param_in_x",
                                  "x_plus_param", "in_constraints"])
def test_quad_form_rejected(case):
    """What is not DPP (or not convex) is refused at compile time with a ProblemError."""
    n = 2
    x = cp.Variable(n)
    if case == "symmetric_only":
        P, q = cp.Parameter((n, n), symmetric=True), cp.Parameter(n)
        problem, params = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x),
                                     [x >= -1, x <= 1]), [P, q]
    elif case == "param_times_param":
        P = cp.Parameter((n, n), PSD=True)
        problem, params = cp.Problem(cp.Minimize(cp.quad_form(x, P @ P, assume_PSD=True)),
                                     [cp.sum(x) == 1]), [P]
    elif case == "param_in_x":
        p, Q = cp.Parameter(n), cp.Parameter((n, n), PSD=True)
        problem, params = cp.Problem(cp.Minimize(cp.quad_form(p, Q) + cp.sum_squares(x))), [p, Q]
    elif case == "x_plus_param":
        p, Q = cp.Parameter(n), cp.Parameter((n, n), PSD=True)
        problem, params = cp.Problem(cp.Minimize(cp.quad_form(x + p, Q)),
                                     [x >= -1, x <= 1]), [p, Q]
    else:
        P = cp.Parameter((n, n), PSD=True)
        problem, params = cp.Problem(cp.Minimize(cp.sum(x)), [cp.quad_form(x, P) <= 1]), [P]
    with pytest.raises(ProblemError):
        dl.compile(problem, params, [x])


@pytest.mark.skip(reason="tests CVXPY's quad_form_dpp_scope (a CVXPY feature), not a layer")
def test_quad_form_dpp_detection_in_scope():
    pass
