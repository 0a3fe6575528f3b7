"""Exponential cones at data scales a diagonal scaling cannot balance.

A diagonal scaling keeps the exponential cone only with one factor for its three rows, so
entr(x) at x ~ 1e8, CVXPY's (t, x, 1) ∈ K_exp with t ~ −2e9 beside the constant 1, stays
unbalanced however the program is equilibrated. (x, y, z) ↦ (x + c·y, y, e^c·z) maps the cone
onto itself for any c, and c = log x brings that point to (0, x, x): the scaling at the
solution mixes the rows that way (`equilibrate.Equilibration.mix`)."""

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
from declarative.cones import project
from declarative.equilibrate import Equilibration, at_solution, pattern
from tests.conftest import assert_scaled_points_kept, assert_scaling_adjoints

U = np.array([0.3, -1.2, 2.0, 0.7, -0.4])


def _softmax_layer():
    x = cp.Variable(5)
    z, tau, r = cp.Parameter(5), cp.Parameter(nonneg=True), cp.Parameter(nonneg=True)
    problem = cp.Problem(cp.Maximize(z @ x + tau * cp.sum(cp.entr(x))), [cp.sum(x) == r])
    return dl.compile(problem, [z, tau, r], [x])


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize("scale, r", [(1e-12, 1e-12), (1e-8, 1e-8), (1e4, 1e4), (1e8, 1e8),
                                      (1e12, 1e12), (1.0, 1e-6), (1.0, 1e6)])
def test_softmax_at_scale_is_solved_with_its_jacobian(scale, r):
    """max zᵀx + τ Σ entr(x) s.t. Σx = r: x = r·softmax(z/τ), ∂x/∂z = r (diag(p) − ppᵀ)/τ,
    ∂x/∂r = p. With (z, τ, r) all × 1e±12, 1e-8, 1e4 or 1e8, or r = 1e±6 alone, every
    instance came back iteration_limit or inaccurate after SCS's 100,000-300,000 iterations;
    each is now solved, against the closed form (at 1e12 in the second round of the retry
    in the solution's scaling, the first having started from a point with the wrong
    support)."""
    layer = _softmax_layer()
    z = scale * U
    fwd = layer.forward([z, scale, r], on_failure="nan")
    assert fwd.ok.all(), fwd.info.status
    p = _softmax(z / scale)
    assert np.abs(fwd.outputs[0][0] - r * p).max() <= 1e-9 * r * p.max()
    J = fwd.jacobian(0)[0]
    Jz = r * (np.diag(p) - np.outer(p, p)) / scale
    assert np.abs(J[0] - Jz).max() <= 1e-8 * np.abs(Jz).max()
    assert np.abs(J[2] - p).max() <= 1e-8 * p.max()


def _mixed(seed=0, B=3):
    """A softmax template, a random scaling with random mixing on its exponential cones (D's
    factors (δ, δ, δ·e^c) on each, as `at_solution` makes them), and random data for it."""
    layer = _softmax_layer()
    t = layer.template
    rng = np.random.default_rng(seed)
    first = pattern(t).exp_first
    d, mix = rng.uniform(0.5, 2, (B, t.m)), rng.uniform(-3, 3, (B, first.size))
    d[:, first + 1] = d[:, first]  # (δ, δ, δ·e^c) on each cone: D N keeps it
    d[:, first + 2] = d[:, first] * np.exp(mix)
    eq = Equilibration(d, rng.uniform(0.5, 2, (B, t.n)), rng.uniform(0.5, 2, B),
                       rng.uniform(0.5, 2, B), mix=mix, mix_rows=first)
    data = (rng.standard_normal((B, t.n)), rng.standard_normal((B, t.nnz)),
            rng.standard_normal((B, t.m)), np.zeros((B, 0)))
    return t, eq, data, rng


def test_the_mixing_keeps_every_exponential_cone_and_its_adjoints():
    """The mixed scaling's maps against their definitions: `data` and `data_adjoint`, and
    `solution` and `solution_adjoint`, adjoint to rounding; `scaled` inverts `solution`;
    ŝ = ρ D N s and ŷ = σ D⁻¹ N⁻ᵀ y keep sᵀy up to ρσ, and a point of K_exp (of its dual
    cone) stays in it (the projection leaves it where it is); composing two scalings is
    applying one after the other."""
    t, eq, (c, a, b, h), rng = _mixed()
    B = c.shape[0]
    x = assert_scaling_adjoints(t, eq, (c, a, b, h), rng)[-1]
    # cones: boundary points of K_exp and of its dual on every exponential block
    dims = t.dims
    s = np.abs(rng.standard_normal((B, t.m)))
    yv = np.abs(rng.standard_normal((B, t.m)))
    first = pattern(t).exp_first
    v = rng.uniform(0.5, 2, (B, first.size))
    ratio = rng.uniform(-3, 3, (B, first.size))
    s[:, first], s[:, first + 1], s[:, first + 2] = ratio * v, v, v * np.exp(ratio)
    yv[:, first], yv[:, first + 1] = -v, -v * (1 - ratio)
    yv[:, first + 2] = v * np.exp(-ratio)
    rows = np.concatenate([first, first + 1, first + 2])
    assert np.abs(s[:, rows] - project(s, dims)[:, rows]).max() <= 1e-12  # (the control)
    assert np.abs(yv[:, rows] - project(yv, dims, dual=True)[:, rows]).max() <= 1e-12
    _, other, _, _ = _mixed(seed=1)
    assert_scaled_points_kept(t, eq, other, (c, a, b, h), x, yv, s, rows, composed_atol=1e-12)


def test_the_mixing_at_the_solution_brings_an_entropy_cone_to_its_centre():
    """At entr's point (t, x, 1) with t = −x log x, `at_solution` mixes its rows by c = log x:
    the scaled slack is on the ray of (0, 1, 1)."""
    layer = _softmax_layer()
    t = layer.template
    fwd = layer.forward([1e4 * U, 1e4, 1e4])
    r = fwd._refined
    rel = at_solution(t, fwd._ops.a, fwd._ops.h, r.x, r.y, r.s, mixing=np.ones(1, dtype=bool))
    assert rel.mix is not None
    _, _, s = rel.scaled(r.x, r.y, r.s)
    first = pattern(t).exp_first
    assert np.abs(s[0, first]).max() <= 1e-8 * np.abs(s[0, first + 1]).max()
    np.testing.assert_allclose(s[0, first + 2], s[0, first + 1], rtol=1e-8)


_EXP_BOUND = {
    # c spread over 1e-8 … 3e10: x[0:3] came back solved at -29, -30, -0.14 with the mixing
    "c spread 1e18": ([9.268109365958401e-05, 5.9570176833111325e-08, 1.6941528433777457e-06,
                       32884227766.58079],
                      [0.31132026702290205, 0.027651326111385488, 848611841.1240879,
                       377285004.4811946]),
    # c spread 1e-11 … 6e11: x[2] came back solved at 10.3 (log b = 12.2)
    "c spread 4e22": ([72667263.4129225, 88054209.94219403, 1.300841717627382e-11,
                       569670657411.9634],
                      [2217434.116390253, 1.0783755424989591e-10, 201395.5880586782,
                       102542.97658236935]),
    # c ~ 1e-12 beside b ~ 1e12: came back solved with x = -32 where log b = 27, every
    # multiplier exactly 0 and F = c in the dual rows, below the backward error's floor
    "c 1e-12, b 1e12": ([1.668260138033108e-12, 8.020170468526546e-13, 7.015276059475888e-13,
                         1.645437634456507e-12],
                        [530343085565.1299, 1918401021947.9092, 702631793763.8983,
                         1400165428294.4016]),
}


@pytest.mark.parametrize("case", [
    "c spread 1e18", "c spread 4e22",
    "c 1e-12, b 1e12",
])
def test_a_solved_exp_bound_is_its_closed_form(case):
    """max cᵀx s.t. exp(x) <= b: x = log b for any c > 0. Where c's entries lie far apart,
    the variables the small ones set are not resolved by the backward error, and a row
    mixing fitted to a point with those constraints slack made that point pass the
    certificate; those instances are not mixed. A point whose multipliers are all 0 while
    c is not leaves the dual rows unsatisfied at any scale. Solved means correct: x within 1e-9 of
    log b, relative to its largest entry."""
    n = 4
    x, c, b = cp.Variable(n), cp.Parameter(n, pos=True), cp.Parameter(n, pos=True)
    layer = dl.compile(cp.Problem(cp.Maximize(c @ x), [cp.exp(x) <= b]), [c, b], [x])
    cv, bv = (np.array(v) for v in _EXP_BOUND[case])
    fwd = layer.forward([cv, bv], on_failure="nan")
    if fwd.ok[0]:
        exact = np.log(bv)
        assert np.abs(fwd.outputs[0][0] - exact).max() <= 1e-9 * np.abs(exact).max()


def _weighted_log_layer(n):
    """max wᵀlog x − Σx, whose solution is x = w (∂x/∂w = I): each log is CVXPY's
    (t, 1, x) ∈ K_exp, whose slack x sits beside the constant 1 in its cone's block."""
    x, w = cp.Variable(n), cp.Parameter(n, nonneg=True)
    return dl.compile(cp.Problem(cp.Maximize(w @ cp.log(x) - cp.sum(x))), [w], [x])


def test_weighted_logs_over_eight_decades_have_exact_jacobians():
    """w spread over 1e-6 … 1e2: every instance solved, x = w to 1e-9 of its largest entry
    and ∂x/∂w = I to 1e-8, against the closed form."""
    n, B = 4, 24
    layer = _weighted_log_layer(n)
    w = np.exp(np.random.default_rng(2).uniform(np.log(1e-6), np.log(1e2), size=(B, n)))
    fwd = layer.forward([w])
    assert fwd.ok.all(), fwd.info.status
    assert np.all(np.abs(fwd.outputs[0] - w).max(axis=1) <= 1e-9 * w.max(axis=1))
    for i in range(B):
        J = np.asarray(fwd.jacobian(i)[0][0]).reshape(n, n)
        assert np.abs(J - np.eye(n)).max() <= 1e-8, (i, w[i])


def test_a_weighted_log_at_a_tiny_weight_has_an_exact_jacobian():
    """w₂ = 1.4e-10 beside w₄ = 9.3: ∂x/∂w = I to 1e-8 where solved. In x₂'s cone both parts
    of v = y − s are present with the multiplier's 1e-10 of the slack on two rows, and
    DΠ_{K*} = I − DΠ_K formed by subtraction held those rows' entries only to rounding of 1:
    ∂x₂/∂w₂ came out 1.6e-7 off."""
    n = 4
    layer = _weighted_log_layer(n)
    w = np.array([0.0014687484033296218, 1.4031929886225217e-10, 1.725029064641661e-08,
                  9.301255598927924])
    fwd = layer.forward([w], on_failure="nan")
    assert fwd.ok[0], fwd.info.status
    J = np.asarray(fwd.jacobian(0)[0][0]).reshape(n, n)
    assert np.abs(J - np.eye(n)).max() <= 1e-8


def test_weighted_logs_over_sixteen_decades_have_exact_jacobians():
    """w spread over 1e-12 … 1e4: x = w and ∂x/∂w = I to 1e-8 on every solved instance,
    against the closed form (4 of the 11 solved were 2e-8 … 3.7e-7 off, unflagged, with the
    polar cones' derivatives formed as I − DΠ)."""
    n, B = 4, 16
    layer = _weighted_log_layer(n)
    w = np.exp(np.random.default_rng(5).uniform(np.log(1e-12), np.log(1e4), size=(B, n)))
    fwd = layer.forward([w], on_failure="nan")
    assert fwd.ok.sum() >= B // 2, fwd.info.status
    assert not fwd.nondifferentiable.any()
    for i in np.flatnonzero(fwd.ok):
        assert np.abs(fwd.outputs[0][i] - w[i]).max() <= 1e-9 * w[i].max()
        J = np.asarray(fwd.jacobian(i)[0][0]).reshape(n, n)
        assert np.abs(J - np.eye(n)).max() <= 1e-8, (i, w[i])


def test_the_mixing_rounding_bounds_the_mixed_data_against_exact_rationals():
    """`Equilibration.rounding` against the mixed data formed in exact rationals from the
    same (floating-point) input, D a power of two but on each cone's third row (δ·e^c):
    every entry's rounding is within its bound, and some entries do round."""
    from fractions import Fraction

    from declarative.equilibrate import binary
    t, eq, (c, a, b, h), rng = _mixed(seed=3)
    first = pattern(t).exp_first
    d = binary(eq.d)
    d[:, first + 1] = d[:, first]
    d[:, first + 2] = d[:, first] * np.exp(eq.mix)
    eq = Equilibration(d, binary(eq.e), binary(eq.rho), binary(eq.sigma), mix=eq.mix,
                       mix_rows=first)
    a = a * np.exp(rng.uniform(-10, 10, a.shape))
    _, da, db, _ = eq.data(t, c, a, b, h)
    bound = eq.rounding(t, da, db)
    assert bound is not None
    p = pattern(t)
    rows, cols = t.rows_cols()
    mixed_from = dict(zip(p.mix_to.tolist(), p.mix_from.tolist(), strict=True))
    cone_of = dict(zip(p.mix_to.tolist(), p.mix_cone.tolist(), strict=True))
    rounded = 0
    for i in range(c.shape[0]):
        for k in range(t.nnz):
            want = Fraction(a[i, k])
            if k in mixed_from:
                want += Fraction(eq.mix[i, cone_of[k]]) * Fraction(a[i, mixed_from[k]])
            want *= Fraction(eq.d[i, rows[k]]) * Fraction(eq.e[i, cols[k]])
            err = abs(Fraction(da[i, k]) - want)
            assert err <= Fraction(bound[0][i, k]), (i, k, float(err), bound[0][i, k])
            rounded += err > 0
        for j in range(t.m):
            want = Fraction(b[i, j])
            at = np.flatnonzero(first == j)
            if at.size:
                want += Fraction(eq.mix[i, at[0]]) * Fraction(b[i, j + 1])
            want *= Fraction(eq.rho[i]) * Fraction(eq.d[i, j])
            assert abs(Fraction(db[i, j]) - want) <= Fraction(bound[1][i, j])
    assert rounded > 0
