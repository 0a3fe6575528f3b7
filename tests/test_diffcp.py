"""Our VJP and JVP of the cone program against diffcp's adjoint and derivative.

diffcp (Agrawal et al. 2019) is the reference implementation of the derivative of a
cone program. To compare the derivatives themselves (not two solvers' rounding),
diffcp is evaluated at the very solution we computed, through its dense mode.
"""

from __future__ import annotations

import cvxpy as cp
import diffcp
import diffcp.cone_program as dcp_mod
import numpy as np
import pytest
import scipy.sparse as sp

from declarative import problems
from declarative.compile import compile_template
from declarative.derivative import BatchOps, ConeSolution
from declarative.layer import Layer


def cone_form(prob, params, variables):
    """The layer in pure cone form (no quadratic objective P): what diffcp differentiates."""
    return Layer(*compile_template(prob, params, variables, quad_obj=False))


def _psd_problem(k=3):
    X = cp.Variable((k, k), symmetric=True)
    Y, t = cp.Parameter((k, k)), cp.Parameter(nonneg=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - Y)), [X >> 0, cp.trace(X) <= t])
    rng = np.random.default_rng(3)
    M = rng.standard_normal((k, k))
    return cone_form(prob, [Y, t], [X]), [M + M.T, np.array(1.5)]


def _mixed_problem(n=4):
    """Zero, nonnegative, SOC, exponential and PSD cones in one program."""
    x, X = cp.Variable(n), cp.Variable((2, 2), PSD=True)
    theta, Y = cp.Parameter(n), cp.Parameter((2, 2))
    obj = cp.sum_squares(x - theta) - cp.sum(cp.entr(x)) + cp.sum_squares(X - Y)
    cons = [cp.sum(x) == 1, x >= 0.01, cp.norm(x, 2) <= 0.8, cp.trace(X) <= 1.0]
    rng = np.random.default_rng(4)
    M = rng.standard_normal((2, 2))
    return (cone_form(cp.Problem(cp.Minimize(obj), cons), [theta, Y], [x, X]),
            [rng.standard_normal(n) * 0.3, M + M.T])


def _zoo(name):
    mod = problems.get(name)
    return cone_form(*mod.build(**mod.SIZES)), problems.instance(name, 0).params


CASES = {
    "soc (polytope projection)": lambda: _zoo("polytope_projection"),
    "exp (softmax)": lambda: _zoo("softmax"),
    "psd": _psd_problem,
    "all cones": _mixed_problem,
}
# diffcp's exponential-cone projection is accurate to ~1e-7 only: at the softmax solution
# its Π_{K*} leaves the residual outside K by 2e-7 (⟨p, p − v⟩ = 9e-9), while ours meets
# the cone and orthogonality conditions to 1e-14 (and our softmax Jacobian matches the
# closed form to 1e-15, test_zoo_accuracy.py). Where exp cones are present the comparison
# is limited by diffcp.
RTOL = {"soc (polytope projection)": 1e-8, "exp (softmax)": 1e-6, "psd": 1e-8,
        "all cones": 1e-6}


def _program(layer, values):
    """Our refined solution and the cone program data of instance 0."""
    fwd = layer.forward(values)
    t = layer.template
    theta, _ = layer.batch(values)
    c, a, b = t.apply(theta)
    x, y, s, ok = fwd.state()
    assert ok.all()
    return t, c, a, b, x, y, s


def _diffcp_at(monkeypatch, A, b, c, cones, x, y, s):
    """diffcp's derivative and adjoint, evaluated at our (x, y, s)."""
    monkeypatch.setattr(dcp_mod, "solve_internal",
                        lambda *args, **kw: {"x": x, "y": y, "s": s})
    _, _, _, D, DT = diffcp.solve_and_derivative(A, b, c, cones, mode="dense")
    return D, DT


@pytest.mark.parametrize("case", list(CASES))
def test_solution_agrees_with_diffcp_scs(case):
    layer, values = CASES[case]()
    t, c, a, b, x, y, s = _program(layer, values)
    A = t.matrix(a[0])
    xd, yd, sd, _, _ = diffcp.solve_and_derivative(A, b[0], c[0], t.dims.scs(), eps_abs=1e-11,
                                                   eps_rel=1e-11, max_iters=200_000)
    # the user's outputs (the cone program's own solution need not be unique: "all cones"
    # has an inactive norm constraint whose epigraph variable is free)
    R = t.recover
    ours, theirs = R @ np.concatenate([x[0], y[0]]), R @ np.concatenate([xd, yd])
    assert np.abs(ours - theirs).max() <= 1e-6


@pytest.mark.parametrize("case", list(CASES))
def test_jvp_and_vjp_match_diffcp(case, monkeypatch):
    """Through the parameters and outputs: dθ ↦ d(outputs) and its adjoint.

    This is where the derivative is unique even when the cone program's solution is
    not (the "all cones" case has an inactive norm constraint, whose epigraph variable
    is free: S is singular, but no output moves along its null space).
    """
    layer, values = CASES[case]()
    t, c, a, b, x, y, s = _program(layer, values)
    A = t.matrix(a[0])
    A.eliminate_zeros()
    keep = a[0] != 0  # diffcp drops explicit zeros of A
    D, DT = _diffcp_at(monkeypatch, A, b[0], c[0], t.dims.scs(), x[0], y[0], s[0])
    fwd = layer.forward(values)
    rng = np.random.default_rng(0)
    tol = RTOL[case]
    R = t.recover.toarray()

    # Forward mode: a random direction in parameter space.
    dtheta = rng.standard_normal(t.num_params)
    dc, da, db = t.C @ dtheta, t.F @ dtheta, t.G @ dtheta
    assert np.all(da[~keep] == 0)
    dx_ref, dy_ref, _ = D(_same_pattern(A, t, da), db, dc)
    ref = R @ np.concatenate([dx_ref, dy_ref])
    tangents = [dtheta[p.offset : p.offset + p.size].reshape(p.shape, order="F")
                for p in layer.parameters]
    ours = np.concatenate([np.ravel(o[0], order="F") for o in fwd.jvp(tangents)])
    assert np.abs(ours - ref).max() <= tol * (1 + np.abs(ref).max())

    # Reverse mode: a random cotangent on the outputs.
    g = rng.standard_normal(R.shape[0])
    gxy = R.T @ g
    dA_ref, db_ref, dc_ref = DT(gxy[: t.n], gxy[t.n :], np.zeros(t.m))
    rows, cols = t.rows_cols()
    da_ref = np.where(keep, np.asarray(sp.csc_matrix(dA_ref)[rows, cols]).ravel(), 0.0)
    ref = t.C.T @ dc_ref + t.F.T @ da_ref + t.G.T @ db_ref
    offsets = np.concatenate([[0], np.cumsum([o.size for o in layer.outputs])])
    grads = [g[lo:hi].reshape(o.shape, order="F")[None]
             for o, lo, hi in zip(layer.outputs, offsets[:-1], offsets[1:], strict=True)]
    ours = np.concatenate([np.ravel(d, order="F") for d in fwd.vjp(grads)])
    assert np.abs(ours - ref).max() <= tol * (1 + np.abs(ref).max())


@pytest.mark.parametrize("case", ["soc (polytope projection)", "exp (softmax)", "psd"])
def test_cone_program_derivative_matches_diffcp(case, monkeypatch):
    """Where the cone program's solution is unique, its derivative itself agrees."""
    layer, values = CASES[case]()
    t, c, a, b, x, y, s = _program(layer, values)
    A = t.matrix(a[0])
    A.eliminate_zeros()
    keep = a[0] != 0
    D, DT = _diffcp_at(monkeypatch, A, b[0], c[0], t.dims.scs(), x[0], y[0], s[0])
    sol = ConeSolution.at(BatchOps(t, a), x, y, s)
    assert not sol.lin.singular.any()
    rng = np.random.default_rng(1)
    tol = RTOL[case]
    da = np.where(keep, rng.standard_normal(t.nnz), 0.0)
    db, dc = rng.standard_normal(t.m), rng.standard_normal(t.n)
    dx_ref, dy_ref, _ = D(_same_pattern(A, t, da), db, dc)
    dx, dy = sol.jvp(dc[None], da[None], db[None])
    for ours, ref in ((dx[0], dx_ref), (dy[0], dy_ref)):
        assert np.abs(ours - ref).max() <= tol * (1 + np.abs(ref).max())
    gx, gy = rng.standard_normal(t.n), rng.standard_normal(t.m)
    dA_ref, db_ref, dc_ref = DT(gx, gy, np.zeros(t.m))
    dc_o, da_o, db_o, _ = sol.vjp(gx[None], gy[None])
    rows, cols = t.rows_cols()
    ref_vals = np.asarray(sp.csc_matrix(dA_ref)[rows[keep], cols[keep]]).ravel()
    for ours, ref in ((dc_o[0], dc_ref), (db_o[0], db_ref), (da_o[0][keep], ref_vals)):
        assert np.abs(ours - ref).max() <= tol * (1 + np.abs(ref).max())


def _same_pattern(A, t, da):
    """dA with exactly A's (zero-eliminated) sparsity pattern, as diffcp requires."""
    dA = A.copy().astype(float)
    rows, cols = t.rows_cols()
    lookup = {(r, c): v for r, c, v in zip(rows, cols, da, strict=True)}
    coo = dA.tocoo()
    dA = sp.csc_matrix(([lookup[(r, c)] for r, c in zip(coo.row, coo.col, strict=True)],
                        (coo.row, coo.col)), shape=A.shape)
    return dA


@pytest.mark.parametrize("name", ["sparsemax", "qp", "polytope_projection", "psd_projection"])
def test_quadratic_objective_form_matches_cone_form(name):
    """SCS's P (the default) and the SOC reformulation give the same outputs and Jacobians."""
    mod = problems.get(name)
    prob, params, variables = mod.build(**mod.SIZES)
    quad = Layer(*compile_template(prob, params, variables))
    cone = Layer(*compile_template(prob, params, variables, quad_obj=False))
    assert quad.template.quadratic and not cone.template.quadratic
    inst = problems.instance(name, 1)
    fq, fc = quad.forward(inst.params), cone.forward(inst.params)
    for a, b in zip(fq.outputs, fc.outputs, strict=True):
        assert np.abs(a - b).max() <= 1e-10
    for ra, rb in zip(fq.jacobian(0), fc.jacobian(0), strict=True):
        for a, b in zip(ra, rb, strict=True):
            assert np.abs(a - b).max() <= 1e-9
