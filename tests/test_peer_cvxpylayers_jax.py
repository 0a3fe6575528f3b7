"""cvxpylayers' JAX test suite (cvxpylayers/tests/test_jax.py), ported to our API.

Their JAX suite repeats their torch one with ``jax.grad`` and ``jax.test_util.check_grads``.
Each test keeps their problem and checks it, in float64, against an independent reference
(`tests.peer_cvxpylayers_problems`): a closed form or KKT solution (1e-8), and central
differences of the layer in both modes (``check_grads`` with ``modes=("fwd", "rev")``;
theirs checked reverse mode only). Compile-time errors do not depend on the framework and
are ported once, in the torch file; the call-time ones are here.
"""

from __future__ import annotations

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import declarative as dl
from declarative.errors import ParameterError, SolverError
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

TIGHT = 1e-8
FD = {"order": 1, "modes": ("fwd", "rev"), "eps": 1e-6, "atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _err(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _ridge_jax(A, b):
    return jnp.linalg.solve(A.T @ A + jnp.eye(A.shape[1]), A.T @ b)


def test_example_l1_regression():
    """Their test_example took jax.grad without checking it; here the solution is the LP's
    (CVXPY, Clarabel) and the gradient agrees with differences in both modes."""
    from tests.output_checks import cvxpy_reference

    problem, params, variables = l1_regression()
    f = dl.compile(problem, params, variables).jax()
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((3, 2)), rng.standard_normal(3)
    (x,) = f(jnp.asarray(A), jnp.asarray(b))
    (ref,) = cvxpy_reference(problem, params, variables, [A, b])
    assert _err(x, ref) <= 1e-7
    check_grads(lambda A, b: f(A, b)[0], (jnp.asarray(A), jnp.asarray(b)), **FD)


def test_simple_batch_socp():
    """Batched SOCP against its KKT solution per instance, then check_grads on the batch (b
    scaled by 0.3 so that every instance is feasible: |b| < ‖a‖, the ball meets the plane)."""
    n, m, B = 5, 1, 4
    P_sqrt, q = cp.Parameter((n, n)), cp.Parameter((n, 1))
    A, b = cp.Parameter((m, n)), cp.Parameter((m, 1))
    x = cp.Variable((n, 1))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(P_sqrt @ x) + q.T @ x),
                         [A @ x == b, cp.norm(x) <= 1])
    f = dl.compile(problem, [P_sqrt, q, A, b], [x]).jax()
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((B, n, n)), rng.standard_normal((B, n, 1)),
              rng.standard_normal((B, m, n)), 0.3 * rng.standard_normal((B, m, 1))]
    assert np.all(np.abs(values[3][:, 0, 0]) < np.linalg.norm(values[2][:, 0], axis=1))
    (xs,) = f(*map(jnp.asarray, values))
    assert xs.shape == (B, n, 1)
    for i in range(B):
        assert _err(xs[i], ball_qp(*[v[i] for v in values])) <= TIGHT
    check_grads(lambda *ps: f(*ps)[0].sum(), tuple(map(jnp.asarray, values)), **FD)


def test_least_squares():
    """jax.grad of sum(x) in A and b against the normal equations' (theirs: eps=1e-10,
    atol 1e-6 on the norm; ours at default settings)."""
    m, n = 100, 20
    problem, params, variables = ridge(m, n)
    f = dl.compile(problem, params, variables).jax()
    rng = np.random.default_rng(0)
    A, b = jnp.asarray(rng.standard_normal((m, n))), jnp.asarray(rng.standard_normal(m))
    assert _err(f(A, b)[0], _ridge_jax(A, b)) <= TIGHT
    g = jax.grad(lambda A, b: f(A, b, solver_args={"eps": 1e-10})[0].sum(), (0, 1))(A, b)
    g_ref = jax.grad(lambda A, b: _ridge_jax(A, b).sum(), (0, 1))(A, b)
    assert _err(g[0], g_ref[0]) <= TIGHT and _err(g[1], g_ref[1]) <= TIGHT


def test_logistic_regression():
    rng = np.random.default_rng(0)
    N, n = 5, 2
    X_np = rng.standard_normal((N, n))
    a_true = rng.standard_normal((n, 1))
    y = np.round(1 / (1 + np.exp(-(X_np @ a_true + 0.5 * rng.standard_normal((N, 1))))))
    a, X, lam = cp.Variable((n, 1)), cp.Parameter((N, n)), cp.Parameter(1, nonneg=True)
    log_likelihood = cp.sum(cp.multiply(y, X @ a) - cp.log_sum_exp(
        cp.hstack([np.zeros((N, 1)), X @ a]).T, axis=0, keepdims=True).T)
    problem = cp.Problem(cp.Minimize(-log_likelihood + lam * cp.sum_squares(a)))
    f = dl.compile(problem, [X, lam], [a]).jax()
    a_ref, H = logistic_newton(X_np, y, 0.1)
    Xj, lj = jnp.asarray(X_np), jnp.asarray([0.1])
    assert _err(f(Xj, lj)[0], a_ref) <= TIGHT
    g = jax.grad(lambda lam: f(Xj, lam)[0].sum())(lj)
    assert _err(g, [-np.ones(n) @ np.linalg.solve(H, 2 * a_ref.ravel())]) <= TIGHT
    check_grads(lambda X, lam: f(X, lam)[0], (Xj, lj), **FD)


def test_entropy_maximization():
    """Skipped in theirs; with a feasible point planted (see the torch port for their data,
    which is infeasible)."""
    from tests.output_checks import cvxpy_reference

    problem, params, x = entropy_problem()
    rng = np.random.default_rng(243)
    tmp = rng.uniform(0.5, 1.5, 5)
    A_np, F_np = rng.standard_normal((3, 5)), rng.standard_normal((2, 5))
    values = [A_np, A_np @ tmp, F_np, F_np @ tmp + np.abs(rng.standard_normal(2))]
    f = dl.compile(problem, params, [x]).jax()
    (start,) = cvxpy_reference(problem, params, [x], values)
    assert _err(f(*map(jnp.asarray, values))[0], entropy_newton(values, start)) <= TIGHT
    check_grads(lambda *ps: f(*ps)[0], tuple(map(jnp.asarray, values)), **FD)


def test_lml():
    x, y = cp.Parameter(4), cp.Variable(4)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y)) - cp.sum(cp.entr(1.0 - y))),
                         [cp.sum(y) == 2])
    f = dl.compile(problem, [x], [y]).jax()
    x_np = np.array([1.0, -1.0, -1.0, -1.0])
    y_ref, J_ref = lml_closed_form(x_np, 2)
    xj = jnp.asarray(x_np)
    assert _err(f(xj)[0], y_ref) <= TIGHT
    assert _err(jax.jacrev(lambda t: f(t)[0])(xj), J_ref) <= TIGHT
    assert _err(jax.jacfwd(lambda t: f(t)[0])(xj), J_ref) <= TIGHT
    check_grads(lambda t: f(t)[0], (xj,), **FD)


def test_sdp():
    """X* = vvᵀ (v: eigenvector of C's smallest eigenvalue); derivatives against differences."""
    n = 3
    X, C = cp.Variable((n, n), symmetric=True), cp.Parameter((n, n), symmetric=True)
    problem = cp.Problem(cp.Minimize(cp.trace(C @ X)), [X >> 0, cp.trace(X) == 1])
    f = dl.compile(problem, [C], [X]).jax()
    C_np = np.array([[2.0, 0.5, 0.1], [0.5, 3.0, 0.2], [0.1, 0.2, 1.5]])
    _, V = np.linalg.eigh(C_np)
    assert _err(f(jnp.asarray(C_np))[0], np.outer(V[:, 0], V[:, 0])) <= TIGHT
    check_grads(lambda C: f(C)[0], (jnp.asarray(C_np),), **FD)


def _two_lambda_layer():
    x = cp.Variable(1)
    lam, lam2 = cp.Parameter(1, nonneg=True, name="lam"), cp.Parameter(1, nonneg=True,
                                                                        name="lam2")
    problem = cp.Problem(cp.Minimize(lam * cp.norm(x, 1) + lam2 * cp.sum_squares(x)))
    return dl.compile(problem, [lam, lam2], [x]).jax()


def test_not_enough_parameters_at_call_time():
    with pytest.raises(ParameterError, match="expected 2 parameter value"):
        _two_lambda_layer()(jnp.ones(1))


def test_none_parameter_at_call_time():
    """Theirs expects an AttributeError from deep inside; ours names the parameter."""
    with pytest.raises(ParameterError, match="lam2"):
        _two_lambda_layer()(jnp.ones(1), None)


def test_infeasible_and_unbounded():
    x, param = cp.Variable(1), cp.Parameter(1)
    infeasible = dl.compile(cp.Problem(cp.Minimize(param), [x >= 1, x <= -1]),
                            [param], [x]).jax()
    with pytest.raises(SolverError, match="infeasible"):
        infeasible(jnp.ones(1))
    assert np.isnan(np.asarray(infeasible(jnp.ones(1), on_failure="nan")[0])).all()
    unbounded = dl.compile(cp.Problem(cp.Minimize(x), [x <= param]), [param], [x]).jax()
    with pytest.raises(SolverError, match="unbounded"):
        unbounded(jnp.ones(1))


def test_incorrect_parameter_shape():
    m, n = 100, 20
    problem, params, variables = ridge(m, n)
    f = dl.compile(problem, params, variables).jax()
    z = jnp.zeros
    with pytest.raises(ParameterError, match="batch"):
        f(z((32, m, n)), z((20, m)))
    with pytest.raises(ParameterError, match=str(2 * m)):
        f(z((32, m, n)), z((32, 2 * m)))
    with pytest.raises(ParameterError, match=str(2 * m)):
        f(z((m, n)), z((2 * m,)))
    with pytest.raises(ParameterError, match=str(m)):
        f(z((32, m, n)), z((32, 32, m)))


def test_broadcasting():
    """A unbatched, b batched with two equal rows: A's gradient is twice the single one."""
    m, n = 100, 20
    problem, params, variables = ridge(m, n)
    f = dl.compile(problem, params, variables).jax()
    rng = np.random.default_rng(0)
    A, b0 = jnp.asarray(rng.standard_normal((m, n))), jnp.asarray(rng.standard_normal(m))
    b = jnp.stack((b0, b0))
    x = f(A, b)[0]
    assert x.shape == (2, n)
    assert _err(x, jnp.stack([_ridge_jax(A, b0)] * 2)) <= TIGHT
    gA, gb = jax.grad(lambda A, b: f(A, b)[0].sum(), (0, 1))(A, b)
    gA_ref, gb_ref = jax.grad(lambda A, b: _ridge_jax(A, b).sum(), (0, 1))(A, b0)
    assert _err(gA / 2, gA_ref) <= TIGHT and _err(gb, jnp.stack([gb_ref] * 2)) <= TIGHT


def test_shared_parameter():
    m, n = 10, 5
    rng = np.random.default_rng(0)
    A, x = cp.Parameter((m, n)), cp.Variable(n)
    b1, b2 = rng.standard_normal(m), rng.standard_normal(m)
    f1 = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b1))), [A], [x]).jax()
    f2 = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b2))), [A], [x]).jax()

    def f(A):
        return jnp.concatenate((f1(A)[0], f2(A)[0]))

    def f_ref(A):
        return jnp.concatenate((jnp.linalg.lstsq(A, b1)[0], jnp.linalg.lstsq(A, b2)[0]))

    A_j = jnp.asarray(rng.standard_normal((m, n)))
    assert _err(f(A_j), f_ref(A_j)) <= TIGHT
    assert _err(jax.grad(lambda A: f(A).sum())(A_j), jax.grad(lambda A: f_ref(A).sum())(A_j)
                ) <= TIGHT
    check_grads(f, (A_j,), **FD)


def test_equality():
    n = 10
    x, b = cp.Variable(n), cp.Parameter(n)
    f = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x)), [np.eye(n) @ x == b]),
                   [b], [x]).jax()
    b_j = jnp.asarray(np.random.default_rng(0).standard_normal(n))
    assert _err(f(b_j)[0], b_j) <= TIGHT
    assert _err(jax.jacfwd(lambda t: f(t)[0])(b_j), np.eye(n)) <= TIGHT
    assert _err(jax.jacrev(lambda t: f(t)[0])(b_j), np.eye(n)) <= TIGHT


def test_basic_gp():
    problem, params, variables = gp()
    f = dl.compile(problem, params, variables, gp=True).jax()
    vals = tuple(jnp.asarray(v) for v in (2.0, 1.0, 0.5))
    assert _err(jnp.stack(f(*vals)), gp_reference(2.0, 1.0, 0.5)) <= TIGHT
    g = jax.grad(lambda a, b, c: f(a, b, c)[0], (0, 1, 2))(*vals)
    assert _err(jnp.stack(g), gp_reference_grad(2.0, 1.0, 0.5)) <= 1e-7
    check_grads(lambda a, b, c: f(a, b, c)[0], vals, **FD)


def test_batched_gp():
    problem, params, variables = gp()
    f = dl.compile(problem, params, variables, gp=True).jax()
    batch = [np.array([2.0, 1.5, 2.5, 1.8]), np.array([1.0, 1.2, 0.8, 1.5]),
             np.array([0.5, 0.6, 0.4, 0.5])]
    outs = f(*map(jnp.asarray, batch))
    assert all(o.shape == (4,) for o in outs)
    for i in range(4):
        assert _err(jnp.stack([o[i] for o in outs]), gp_reference(*[v[i] for v in batch])
                    ) <= TIGHT
    check_grads(lambda a, b, c: f(a, b, c)[0].sum(), tuple(map(jnp.asarray, batch)), **FD)


def test_gp_without_param_values_and_reversed_order():
    """No parameter values are needed to compile; [c, b, a] is the same layer as [a, b, c]
    with its arguments permuted, gradients included."""
    problem, (a, b, c), variables = gp(named=True)
    assert a.value is None and b.value is None and c.value is None
    abc = dl.compile(problem, [a, b, c], variables, gp=True).jax()
    cba = dl.compile(problem, [c, b, a], variables, gp=True).jax()
    va, vb, vc = jnp.asarray(2.0), jnp.asarray(1.0), jnp.asarray(0.5)
    ref = gp_reference(2.0, 1.0, 0.5)
    assert _err(jnp.stack(abc(va, vb, vc)), ref) <= TIGHT
    assert _err(jnp.stack(cba(vc, vb, va)), ref) <= TIGHT
    gref = gp_reference_grad(2.0, 1.0, 0.5)
    g_cba = jax.grad(lambda c, b, a: cba(c, b, a)[0], (0, 1, 2))(vc, vb, va)
    assert _err(jnp.stack(g_cba[::-1]), gref) <= 1e-7
    check_grads(lambda c, b, a: cba(c, b, a)[0], (vc, vb, va), **FD)


def test_batch_size_one_preserves_batch_dimension():
    n = 3
    x, b = cp.Variable(n), cp.Parameter(n)
    f = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - b))), [b], [x]).jax()
    b_j = jnp.asarray(np.random.default_rng(0).standard_normal((1, n)))
    (x_j,) = f(b_j)
    assert x_j.shape == (1, n) and _err(x_j, b_j) <= TIGHT
    g = jax.grad(lambda t: f(t)[0].sum())(b_j)
    assert g.shape == (1, n) and _err(g, np.ones((1, n))) <= TIGHT


def test_under_jit_and_vmap():
    """Not in theirs, but the same least-squares layer under jax.jit and jax.vmap gives the
    closed form (their JAX layer is documented to work under both)."""
    m, n = 12, 4
    problem, params, variables = ridge(m, n)
    f = dl.compile(problem, params, variables).jax()
    rng = np.random.default_rng(5)
    A, bs = jnp.asarray(rng.standard_normal((m, n))), jnp.asarray(rng.standard_normal((3, m)))
    xs = jax.jit(jax.vmap(lambda b: f(A, b)[0]))(bs)
    assert _err(xs, jnp.stack([_ridge_jax(A, b) for b in bs])) <= TIGHT
