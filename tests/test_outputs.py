"""Every dual variable of every constraint and every structured variable as an output: values
against CVXPY's own solve (Clarabel, tight), derivatives (torch backward, JAX jvp) against
finite differences, on batches."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
from declarative.errors import ProblemError
from tests.output_checks import check_derivatives, check_values


def _cones_problem():
    """One problem with an SOC, an exponential cone, a PSD constraint and vector (in)equalities,
    each active with multipliers that move with the parameters:

    - min t + ½‖x‖² s.t. (t, x − a) ∈ SOC: x = a (1 − 1/‖a‖) for ‖a‖ > 1;
    - min −c·u + w s.t. (u, v, w) ∈ K_exp, v = 1: w = c, u = log c;
    - min tr(M X) s.t. tr X = 1, X ⪰ 0: X = q qᵀ (q the least eigenvector of M);
    - min ‖y − d‖² s.t. y ≤ 0.5, (y₀ + y₁, y₂) = e.
    """
    a, c = cp.Parameter(3, name="a"), cp.Parameter(pos=True, name="c")
    m, d, e = cp.Parameter(3, name="m"), cp.Parameter(3, name="d"), cp.Parameter(2, name="e")
    t, x = cp.Variable(name="t"), cp.Variable(3, name="x")
    u, v, w = cp.Variable(name="u"), cp.Variable(name="v"), cp.Variable(name="w")
    X, y = cp.Variable((2, 2), symmetric=True, name="X"), cp.Variable(3, name="y")
    M = cp.bmat([[m[0], m[1]], [m[1], m[2]]])
    soc, exp, psd = cp.SOC(t, x - a), cp.ExpCone(u, v, w), X >> 0
    trace, ineq = cp.trace(X) == 1, y <= 0.5
    eq = cp.hstack([y[0] + y[1], y[2]]) == e
    objective = (t + 0.5 * cp.sum_squares(x) - c * u + w + cp.trace(M @ X)
                 + cp.sum_squares(y - d))
    problem = cp.Problem(cp.Minimize(objective), [soc, exp, v == 1, psd, trace, ineq, eq])
    outputs = [x, X, y, *soc.dual_variables, *exp.dual_variables, *psd.dual_variables,
               *trace.dual_variables, *ineq.dual_variables, *eq.dual_variables]
    batch = [np.array([[2.0, -1.0, 0.5], [1.0, 3.0, -2.0]]), np.array([1.5, 0.7]),
             np.array([[1.0, 0.3, 2.0], [-1.0, 0.5, 0.2]]),
             np.array([[2.0, -1.0, 0.3], [0.1, 1.5, 1.0]]),
             np.array([[0.4, 0.2], [0.8, -0.7]])]
    return problem, [a, c, m, d, e], outputs, batch


def test_every_dual_variable_of_every_cone():
    problem, params, outputs, batch = _cones_problem()
    layer = dl.compile(problem, params, outputs)
    check_values(layer, problem, params, outputs, batch)
    rng = np.random.default_rng(1)
    tangent = [rng.standard_normal(v.shape) for v in batch]
    check_derivatives(layer, batch, tangent)


def test_soc_duals_closed_form():
    """min t + ½‖x‖² s.t. ‖x − a‖ ≤ t: the SOC multiplier is (1, −(x − a)/‖x − a‖) with
    x − a = −a/‖a‖, i.e. (1, a/‖a‖); its Jacobian in a is (0, (I − â âᵀ)/‖a‖)."""
    a, t, x = cp.Parameter(3), cp.Variable(), cp.Variable(3)
    soc = cp.SOC(t, x - a)
    problem = cp.Problem(cp.Minimize(t + 0.5 * cp.sum_squares(x)), [soc])
    layer = dl.compile(problem, [a], soc.dual_variables)
    A = np.array([[2.0, -1.0, 0.5], [1e3, 3e2, -2e3], [0.7, 0.9, -0.4]])
    lam0, lam1 = layer.forward([A]).outputs
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    assert np.max(np.abs(lam0 - 1.0)) <= 1e-9
    assert np.max(np.abs(lam1 - A / norms)) <= 1e-9
    J = layer.forward([A[:1]]).jacobian(0)[1][0]
    ahat = A[0] / norms[0]
    assert np.max(np.abs(J - (np.eye(3) - np.outer(ahat, ahat)) / norms[0])) <= 1e-8


def test_exp_cone_duals_closed_form():
    """min −c·u + w s.t. (u, 1, w) ∈ K_exp (CVXPY: v·exp(u/v) ≤ w): u = log c, w = c. The
    multiplier λ ∈ K_exp* = {λ_u < 0, −λ_u exp(λ_v/λ_u) ≤ e·λ_w} has λ_u = −c, λ_w = 1 by
    stationarity in u and w, and lies on the dual cone's boundary (complementarity):
    λ_v = c (log c − 1); so dλ/dc = (−1, log c, 0)."""
    c = cp.Parameter(pos=True)
    u, v, w = cp.Variable(), cp.Variable(), cp.Variable()
    exp = cp.ExpCone(u, v, w)
    problem = cp.Problem(cp.Minimize(-c * u + w), [exp, v == 1])
    outputs = [u, w, *exp.dual_variables]
    layer = dl.compile(problem, [c], outputs)
    C = np.array([0.5, 1.0, 7.0, 1e-2, 1e2])
    u_, w_, l0, l1, l2 = layer.forward([C]).outputs
    assert np.max(np.abs(u_ - np.log(C))) <= 1e-8 and np.max(np.abs(w_ - C) / C) <= 1e-8
    assert np.max(np.abs(l0 + C) / C) <= 1e-8 and np.max(np.abs(l2 - 1.0)) <= 1e-8
    assert np.max(np.abs(l1 - C * (np.log(C) - 1)) / np.maximum(C, 1)) <= 1e-8
    for ci in C[:3]:
        J = layer.forward([np.array([ci])]).jacobian(0)
        assert abs(float(J[2][0]) + 1.0) <= 1e-7, J[2]
        assert abs(float(J[3][0]) - np.log(ci)) <= 1e-7, J[3]
        assert abs(float(J[4][0])) <= 1e-7, J[4]


def test_psd_dual_closed_form():
    """min tr(M X) s.t. tr X = 1, X ⪰ 0: stationarity M + ν I − S = 0 (CVXPY's sign for an
    equality's multiplier ν) with S ⪰ 0, S X = 0 gives S = M − λ_min(M) I, ν = −λ_min(M)."""
    M = cp.Parameter((3, 3), symmetric=True)
    X = cp.Variable((3, 3), symmetric=True)
    psd, tr = X >> 0, cp.trace(X) == 1
    problem = cp.Problem(cp.Minimize(cp.trace(M @ X)), [psd, tr])
    layer = dl.compile(problem, [M], [X, psd.dual_variables[0], tr.dual_variables[0]])
    rng = np.random.default_rng(3)
    Ms = []
    for scale in (1e-3, 1.0, 1e3):
        G = rng.standard_normal((3, 3))
        Ms.append(scale * (G + G.T))
    Ms = np.stack(Ms)
    X_, S, nu = layer.forward([Ms]).outputs
    for i, Mi in enumerate(Ms):
        lam, V = np.linalg.eigh(Mi)
        scale = np.max(np.abs(Mi))
        assert np.max(np.abs(X_[i] - np.outer(V[:, 0], V[:, 0]))) <= 1e-8
        assert np.max(np.abs(S[i] - (Mi - lam[0] * np.eye(3)))) <= 1e-8 * scale
        assert abs(nu[i] + lam[0]) <= 1e-8 * scale
    outputs = [X, psd.dual_variables[0], tr.dual_variables[0]]
    check_values(layer, problem, [M], outputs, [Ms])


def test_structured_variables():
    """diag, symmetric, PSD, nonneg, nonpos and bounded variables as outputs: projections of
    the parameters onto each set (closed forms), and their derivatives."""
    Q = cp.Parameter((3, 3), name="Q")
    S = cp.Parameter((3, 3), symmetric=True, name="S")
    q = cp.Parameter(4, name="q")
    D = cp.Variable((3, 3), diag=True, name="D")
    Y = cp.Variable((3, 3), symmetric=True, name="Y")
    P = cp.Variable((3, 3), PSD=True, name="P")
    zp = cp.Variable(4, nonneg=True, name="zp")
    zn = cp.Variable(4, nonpos=True, name="zn")
    zb = cp.Variable(4, bounds=[-1.0, 2.0], name="zb")
    objective = (cp.sum_squares(D - Q) + cp.sum_squares(Y - Q) + cp.sum_squares(P - S)
                 + cp.sum_squares(zp - q) + cp.sum_squares(zn - q) + cp.sum_squares(zb - q))
    problem = cp.Problem(cp.Minimize(objective))
    outputs = [D, Y, P, zp, zn, zb]
    params = [Q, S, q]
    layer = dl.compile(problem, params, outputs)
    rng = np.random.default_rng(4)
    Qs = rng.standard_normal((2, 3, 3))
    G = rng.standard_normal((2, 3, 3))
    Ss = G + G.transpose(0, 2, 1)
    Ss[0] = np.diag([2.0, -1.0, 0.5]) + 0.1 * Ss[0]
    qs = np.array([[0.3, -0.4, 2.5, -1.5], [1.2, -0.1, -3.0, 0.7]])
    batch = [Qs, Ss, qs]
    check_values(layer, problem, params, outputs, batch)
    D_, Y_, P_, zp_, zn_, zb_ = layer.forward(batch).outputs
    for i in range(2):
        lam, V = np.linalg.eigh(Ss[i])
        assert np.max(np.abs(D_[i] - np.diag(np.diag(Qs[i])))) <= 1e-9
        assert np.max(np.abs(Y_[i] - (Qs[i] + Qs[i].T) / 2)) <= 1e-9
        assert np.max(np.abs(P_[i] - (V * np.maximum(lam, 0)) @ V.T)) <= 1e-8
    assert np.max(np.abs(zp_ - np.maximum(qs, 0))) <= 1e-9
    assert np.max(np.abs(zn_ - np.minimum(qs, 0))) <= 1e-9
    assert np.max(np.abs(zb_ - np.clip(qs, -1.0, 2.0))) <= 1e-9
    T = rng.standard_normal((2, 3, 3))
    tangent = [rng.standard_normal((2, 3, 3)), T + T.transpose(0, 2, 1),
               rng.standard_normal((2, 4))]
    check_derivatives(layer, batch, tangent)


@pytest.mark.parametrize("structure", ["diag", "sparsity"])
def test_structured_parameters_enter_by_their_pattern(structure):
    """A ``diag`` or ``sparsity=`` parameter enters as its entries on the pattern: a value with
    entries off it gives the solution of the value with those set to 0 (the closed form
    y = (DᵀD + λI)⁻¹Dᵀa of min ‖D y − a‖² + λ‖y‖²), its gradient is the closed form's on the
    pattern (central differences) and 0 off it."""
    n, lam = 3, 0.1
    rows, cols = ((0, 1, 2), (0, 1, 2)) if structure == "diag" else ((0, 1, 2, 0), (0, 1, 2, 2))
    kw = {"diag": True} if structure == "diag" else {"sparsity": (rows, cols)}
    D = cp.Parameter((n, n), **kw)
    a = np.array([1.0, 2.0, 3.0])
    y = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(D @ y - a) + lam * cp.sum_squares(y)))
    layer = dl.compile(problem, [D], [y])
    on = np.zeros((n, n), dtype=bool)
    on[rows, cols] = True

    def closed(M):
        M = np.where(on, M, 0.0)
        return np.linalg.solve(M.T @ M + lam * np.eye(n), M.T @ a)

    rng = np.random.default_rng(5)
    values = np.stack([np.diag([1.0, 2.0, 4.0]) + 0.3 * rng.standard_normal((n, n))
                       for _ in range(2)])
    g = rng.standard_normal((2, n))
    res = layer.forward([values])
    assert all(s is dl.Status.SOLVED for s in res.info.status)
    (grad,) = res.vjp([g])
    for i in range(2):
        assert np.max(np.abs(res.outputs[0][i] - closed(values[i]))) <= 1e-9
        fd = np.zeros((n, n))
        for j, k in zip(rows, cols, strict=True):
            step = np.zeros((n, n))
            step[j, k] = 1e-6
            fd[j, k] = g[i] @ (closed(values[i] + step) - closed(values[i] - step)) / 2e-6
        assert np.max(np.abs(grad[i] - fd)) <= 1e-7
        assert not grad[i][~on].any()

def test_a_dual_variable_of_another_problem_is_refused():
    x, theta = cp.Variable(3), cp.Parameter(3)
    other = cp.SOC(cp.Variable(), cp.Variable(3))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [x >= 0])
    with pytest.raises(ProblemError, match=r"dual variable \(an entry of "
                                           r"constraint.dual_variables\)"):
        dl.compile(problem, [theta], [other.dual_variables[1]])


def test_compile_leaves_the_users_dual_values_alone():
    """Reading the duals through the constraints' own save_dual_value at compile time does not
    change what the user's constraints hold."""
    t, x, a = cp.Variable(), cp.Variable(2), cp.Parameter(2)
    soc = cp.SOC(t, x - a)
    problem = cp.Problem(cp.Minimize(t + cp.sum_squares(x)), [soc])
    a.value = np.array([3.0, 4.0])
    problem.solve(solver=cp.CLARABEL)
    before = [np.copy(d.value) for d in soc.dual_variables]
    dl.compile(problem, [a], soc.dual_variables)
    for d, b in zip(soc.dual_variables, before, strict=True):
        assert np.array_equal(d.value, b)


@pytest.mark.parametrize("axis", [0, 1])
def test_vector_soc_and_exp_cones(axis):
    """Several cones in one constraint (SOC with a matrix argument along either axis, an
    elementwise ExpCone of vectors): each dual part has its variable's shape and CVXPY's
    values, and finite-difference derivatives."""
    A = cp.Parameter((3, 2), name="A")
    c = cp.Parameter(2, pos=True, name="c")
    X, t = cp.Variable((3, 2), name="X"), cp.Variable(3 if axis else 2, name="t")
    u, v, w = cp.Variable(2), cp.Variable(2), cp.Variable(2)
    soc = cp.SOC(t, X - A, axis=axis)
    exp = cp.ExpCone(u, v, w)
    problem = cp.Problem(cp.Minimize(cp.sum(t) + 0.5 * cp.sum_squares(X) - c @ u + cp.sum(w)),
                         [soc, exp, v == 1])
    outputs = [X, *soc.dual_variables, *exp.dual_variables]
    layer = dl.compile(problem, [A, c], outputs)
    assert [o.shape for o in layer.outputs] == [tuple(o.shape) for o in outputs]
    rng = np.random.default_rng(5)
    batch = [rng.standard_normal((2, 3, 2)) * 3, np.array([[0.5, 2.0], [1.5, 0.8]])]
    check_values(layer, problem, [A, c], outputs, batch, tol=1e-6)
    check_derivatives(layer, batch, [rng.standard_normal((2, 3, 2)),
                                     rng.standard_normal((2, 2))])


def test_power_cone_duals():
    """PowCone3D's three dual variables, against CVXPY and finite differences: min a·x + y
    s.t. x^α y^(1−α) ≥ |z|, z = b (unique: x = αc/a, y = (1−α)c for c = b / ((α/a)^α
    (1−α)^(1−α))). Runs where power cones are supported."""
    a, b = cp.Parameter(pos=True, name="a"), cp.Parameter(pos=True, name="b")
    x, y, z = cp.Variable(name="x"), cp.Variable(name="y"), cp.Variable(name="z")
    pow3 = cp.PowCone3D(x, y, z, 0.3)
    problem = cp.Problem(cp.Minimize(a * x + y), [pow3, z == b])
    outputs = [x, y, z, *pow3.dual_variables]
    try:
        layer = dl.compile(problem, [a, b], outputs)
    except ProblemError as e:
        if "power cones" in str(e):
            pytest.skip("power cones are not supported by this build")
        raise
    A, B = np.array([0.5, 2.0]), np.array([1.0, 1.5])
    fwd = layer.forward([A, B])
    x_, y_, _, lx, ly, lz = fwd.outputs
    c = B / ((0.3 / A) ** 0.3 * 0.7 ** 0.7)
    assert np.max(np.abs(x_ - 0.3 * c / A)) <= 1e-9 and np.max(np.abs(y_ - 0.7 * c)) <= 1e-9
    # λ = (a, 1, λ_z) by stationarity, on the dual cone's boundary: (λ_x/α)^α (λ_y/(1−α))^(1−α)
    # = |λ_z|, with CVXPY's sign λ_z < 0; so dλ_z/da = α λ_z / a.
    lam_z = -((A / 0.3) ** 0.3) * (1 / 0.7) ** 0.7
    assert np.max(np.abs(lx - A)) <= 1e-9 and np.max(np.abs(ly - 1)) <= 1e-9
    assert np.max(np.abs(lz - lam_z)) <= 1e-9
    J = fwd.jacobian(1)
    assert abs(float(J[5][0]) - 0.3 * lam_z[1] / A[1]) <= 1e-8
    check_derivatives(layer, [A, B], [np.array([0.3, -0.2]), np.array([0.1, 0.4])])
