"""Second-order cones at data scales a diagonal scaling cannot balance.

CVXPY writes x·t >= w² (inv_pos, sqrt, power, quad_over_lin, geo_mean) as the second-order
cone ‖(x − t, 2w)‖ <= x + t. inv_pos(x) at x ~ 1e-6 holds t ~ 1e6 there: the rows x + t and
x − t agree to 1e-12, the point resolves x to 1e-4 of itself, and a diagonal scaling, one
factor for the cone's rows, cannot separate them. The Lorentz boost that multiplies the sum of
the two rows by 2^κ and their difference by 2^−κ maps the cone onto itself; the scaling at
the solution applies it (`equilibrate.Equilibration.boost`)."""

from fractions import Fraction

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
from declarative.equilibrate import Equilibration, at_solution, binary, equilibrate, pattern
from tests.conftest import assert_scaled_points_kept, assert_scaling_adjoints


def _inv_pos_layer(n=4, dual=False):
    x = cp.Variable(n)
    c, u = cp.Parameter(n, pos=True), cp.Parameter(n, pos=True)
    bound = x <= u
    problem = cp.Problem(cp.Minimize(cp.sum(cp.inv_pos(x)) + c @ x), [bound])
    return dl.compile(problem, [c, u], [x] + ([bound.dual_variables[0]] if dual else []))


def _inv_pos_data(s, B=6, seed=3):
    """c ~ s², u ~ 1/s: x* = min(u, c^-1/2) ~ 1/s, some at the bound, t = 1/x ~ s."""
    rng = np.random.default_rng(seed)
    return [(0.5 + rng.random((B, 4))) * s**2, (0.6 + rng.random((B, 4))) / s]


def test_the_cones_cvxpy_writes_for_x_t_at_least_w_squared_are_boostable():
    """inv_pos, sqrt and quad_over_lin each give cones whose first row and second store the
    same columns (x + t and x − t), held by no other cone: boostable. A norm's cone has no
    such pair. power(x, 3)'s chain (x² <= w·1, w² <= t·x per entry) holds each link's
    columns in the other's axis row only, which a boost leaves: boostable. pnorm(x, 3)'s
    cones that hold its bound t in their first two rows share it there, which one column
    factor could not follow through boosts set apart: not boostable, and no two boostable
    cones share a column in those rows."""
    x, y = cp.Variable(3), cp.Variable(pos=True)
    a = cp.Parameter(3)
    for expr, count in ((cp.sum(cp.inv_pos(x)), 3), (-cp.sum(cp.sqrt(x)), 3),
                        (cp.quad_over_lin(x - a, y), 1), (cp.norm(x - a, 2), 0),
                        (cp.sum(cp.power(x, 3)), 6), (cp.pnorm(x, 3), 3)):
        problem = cp.Problem(cp.Minimize(expr + a @ x), [x >= -5, y <= 2])
        t = dl.compile(problem, [a], [x]).template
        p = pattern(t)
        assert p.boost_rows.shape[1] == count
        rows, cols = t.rows_cols()
        for r, q in p.boost_rows.T:
            assert np.array_equal(np.sort(cols[rows == r]), np.sort(cols[rows == q]))
        np.testing.assert_array_equal(cols[p.boost_r], cols[p.boost_q])
        held = [set(cols[rows == r]) for r in p.boost_rows[0]]
        assert all(not (h & g) for i, h in enumerate(held) for g in held[i + 1 :])


def _boosted_scaling(seed=0, B=3, kmax=5):
    """The inv_pos template, a random scaling with random boosts 2^κ, |κ| <= ``kmax``, on
    its cones (D constant on each cone's block, as `at_solution` makes it), and random data
    for it. (A boost by 2^κ and back keeps a generic vector to 2^(2|κ|) roundings only: a
    point is boosted where that balances it.)"""
    t = _inv_pos_layer().template
    rng = np.random.default_rng(seed)
    p = pattern(t)
    d = binary(rng.uniform(0.1, 10, (B, t.m)))
    lo = t.dims.zero + t.dims.nonneg
    for k in t.dims.soc:
        d[:, lo : lo + k] = d[:, lo : lo + 1]
        lo += k
    kappa = rng.integers(-kmax, kmax + 1, (B, p.boost_rows.shape[1])).astype(float)
    eq = Equilibration(d, binary(rng.uniform(0.1, 10, (B, t.n))), binary(rng.uniform(0.1, 10, B)),
                       binary(rng.uniform(0.1, 10, B)), boost=kappa, boost_rows=p.boost_rows)
    data = (rng.standard_normal((B, t.n)), rng.standard_normal((B, t.nnz)),
            rng.standard_normal((B, t.m)), np.zeros((B, 0)))
    return t, eq, data, rng


def test_the_boost_keeps_every_second_order_cone_and_its_adjoints():
    """The boosted scaling's maps against their definitions: `data` and `data_adjoint`,
    `solution` and `solution_adjoint`, adjoint to rounding; `scaled` inverts `solution`;
    ŝ = ρ D N s and ŷ = σ D⁻¹ N⁻ᵀ y keep sᵀy up to ρσ; boundary points of the cone stay on
    it (the projection leaves them where they are); the bounds' maps are the absolute
    values of the maps; composing two scalings is applying one after the other."""
    t, eq, (c, a, b, h), rng = _boosted_scaling()
    B = c.shape[0]
    xh, yh, gx, gy, x = assert_scaling_adjoints(t, eq, (c, a, b, h), rng)
    # the bounds: |solution| of nonnegative inputs, and its adjoint
    bx, by = eq.solution_bound(np.abs(xh), np.abs(yh))
    lx, ly = eq.bound_adjoint(np.abs(gx), np.abs(gy))
    np.testing.assert_allclose((bx * np.abs(gx)).sum(1) + (by * np.abs(gy)).sum(1),
                               (np.abs(xh) * lx).sum(1) + (np.abs(yh) * ly).sum(1), rtol=1e-12)
    assert np.all(by >= np.abs(eq.solution(xh, yh)[1]) * (1 - 1e-12))
    # boundary points of the cones, complementary: s = α(1, n), y = β(1, −n)
    dims = t.dims
    lo = dims.zero + dims.nonneg
    s, yv = np.zeros((B, t.m)), np.zeros((B, t.m))
    rows = []
    for k in dims.soc:
        n = rng.standard_normal((B, k - 1))
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        alpha, beta = rng.uniform(0.5, 2, (B, 1)), rng.uniform(0.5, 2, (B, 1))
        s[:, lo : lo + k] = alpha * np.concatenate([np.ones((B, 1)), n], axis=1)
        yv[:, lo : lo + k] = beta * np.concatenate([np.ones((B, 1)), -n], axis=1)
        rows += list(range(lo, lo + k))
        lo += k
    _, other, _, _ = _boosted_scaling(seed=1)
    assert_scaled_points_kept(t, eq, other, (c, a, b, h), x, yv, s, rows, composed_tol=1e-9,
                              dot_atol=1e-9)


def test_the_boost_rounding_bounds_the_boosted_data_against_exact_rationals():
    """`Equilibration.rounding` against the boosted data formed in exact rationals from the
    same (floating-point) input: every entry's rounding is within its bound."""
    t, eq, (c, a, b, h), rng = _boosted_scaling(seed=2, kmax=20)
    a = a * np.exp(rng.uniform(-20, 20, a.shape))
    b = b * np.exp(rng.uniform(-20, 20, b.shape))
    _, da, db, _ = eq.data(t, c, a, b, h)
    bound = eq.rounding(t, da, db)
    assert bound is not None
    p = pattern(t)
    r, q = p.boost_rows

    def exact(u_r, u_q, kappa, dr):
        two = Fraction(2) ** int(kappa)
        P, Q = Fraction(u_r) + Fraction(u_q), Fraction(u_r) - Fraction(u_q)
        return ((two * P + Q / two) / 2 * Fraction(dr), (two * P - Q / two) / 2 * Fraction(dr))

    worst = 0.0
    for i in range(c.shape[0]):
        for j, (ir, iq) in enumerate(zip(p.boost_r, p.boost_q, strict=True)):
            cone = p.boost_cone[j]
            kap = eq.boost[i, cone]
            col = t.rows_cols()[1][ir]
            w_r = eq.d[i, r[cone]] * eq.e[i, col]  # D constant on the block: one weight
            er, eqq = exact(a[i, ir], a[i, iq], kap, w_r)
            for got, want, bnd in ((da[i, ir], er, bound[0][i, ir]),
                                   (da[i, iq], eqq, bound[0][i, iq])):
                err = abs(Fraction(got) - want)
                assert err <= Fraction(bnd), (i, j, float(err), bnd)
                worst = max(worst, float(err) / max(bnd, 1e-300))
        for cone in range(r.size):
            w = eq.rho[i] * eq.d[i, r[cone]]
            er, eqq = exact(b[i, r[cone]], b[i, q[cone]], eq.boost[i, cone], w)
            for got, want, bnd in ((db[i, r[cone]], er, bound[1][i, r[cone]]),
                                   (db[i, q[cone]], eqq, bound[1][i, q[cone]])):
                assert abs(Fraction(got) - want) <= Fraction(bnd)
    assert worst > 0.0  # (some entries do round: the bound is not vacuous)


def test_the_boost_at_the_solution_balances_an_inv_pos_cone():
    """At inv_pos's point (x + t, x − t, 2) with x ~ 1e-6, t ~ 1e6 (the layer's solution,
    taken to the units of the program's first equilibration) `at_solution` boosts each cone
    by 2^±(20 ± 2): the scaled slack's two rows' sum and difference come within a factor 4
    of each other, where they were 1e12 apart."""
    layer = _inv_pos_layer()
    t = layer.template
    c, u = (v[:1] for v in _inv_pos_data(1e6))
    fwd = layer.forward([c, u], solver="clarabel")
    assert fwd.ok.all(), fwd.info.status
    r = fwd._refined
    x, y, s = fwd._scaling.solution(r.x, r.y, r.s)
    theta, _ = layer.batch([c, u])
    cr, ar, br = t.apply(theta)
    hr = t.apply_P(theta)
    eq0 = equilibrate(t, cr, ar, br, hr)
    _, a0, _, h0 = eq0.data(t, cr, ar, br, hr)
    xh, yh, sh = eq0.scaled(x, y, s)
    p = pattern(t)
    rr, qq = p.boost_rows
    assert np.all(np.abs(np.log2((sh[0, rr] + sh[0, qq]) / (sh[0, rr] - sh[0, qq]))) >= 36)
    rel = at_solution(t, a0, h0, xh, yh, sh, boosting=np.ones(1, dtype=bool))
    assert rel.boost is not None
    assert np.all(np.abs(rel.boost) >= 18) and np.all(np.abs(rel.boost) <= 22)
    _, _, s2 = rel.scaled(xh, yh, sh)
    plus, minus = s2[0, rr] + s2[0, qq], s2[0, rr] - s2[0, qq]
    assert np.all(np.maximum(plus / minus, minus / plus) <= 4.0)


@pytest.mark.parametrize("s", [1e-6, 1e-3, 1e3, 1e6])
def test_inv_pos_at_scale_is_solved_with_its_jacobian(s):
    """min Σ inv_pos(x) + c·x s.t. x <= u: x = min(u, c^-1/2), its multiplier 1/u² − c where
    the bound holds, ∂x/∂c = −c^-3/2/2 where it is slack, ∂x/∂u = 1 where it holds. With
    c ~ s² and u ~ 1/s, s = 1e±6, every instance came back inaccurate; each is now solved,
    within 1e-9 of the closed form, its Jacobian within 1e-7."""
    layer = _inv_pos_layer(dual=True)
    c, u = _inv_pos_data(s)
    fwd = layer.forward([c, u], on_failure="nan")
    assert fwd.ok.all(), fwd.info.status
    x = np.minimum(u, c**-0.5)
    lam = np.where(u < c**-0.5, u**-2.0 - c, 0.0)
    for i in range(len(x)):
        assert np.abs(fwd.outputs[0][i] - x[i]).max() <= 1e-9 * x[i].max()
        assert np.abs(fwd.outputs[1][i] - lam[i]).max() <= 1e-9 * c[i].max()
        J = fwd.jacobian(i)[0]
        slack = c[i] ** -0.5 < u[i]
        np.testing.assert_allclose(J[0], np.diag(np.where(slack, -0.5 * c[i] ** -1.5, 0.0)),
                                   rtol=1e-7, atol=1e-7 * s**-3)
        np.testing.assert_allclose(J[1], np.diag(np.where(slack, 0.0, 1.0)), atol=1e-7)


def test_cones_that_share_a_column_are_not_boosted_apart():
    """min ‖x‖₃ s.t. c·x >= B with c spread over 1e-4 … 1e4: x_i = B sign(c_i)|c_i|^½/S,
    S = Σ|c_j|^(3/2) (Hölder's equality case), and ∂x_i/∂c_k = B/(2|c_i|^½ S)[i = k]
    − (3/2) B s_i s_k |c_i c_k|^½/S². pnorm's cones all hold its bound t: boosted apart (by
    up to 2^11), they left S nearly singular and a certified point whose Jacobian was 3×
    off on the diagonal. They are not boosted; the value and the Jacobian are within
    1e-10 and 1e-8 of the closed form."""
    x = cp.Variable(4)
    c, B = cp.Parameter(4), cp.Parameter()
    layer = dl.compile(cp.Problem(cp.Minimize(cp.pnorm(x, 3)), [c @ x >= B]), [c, B], [x])
    cv = np.array([11921.537963606233, -0.0002794001209750143, -0.0013345511125828248,
                   -0.0007976453567764982])
    Bv = 0.12098670965865889
    fwd = layer.forward([cv[None], np.array([Bv])])
    assert fwd.ok.all(), fwd.info.status
    sign, root = np.sign(cv), np.sqrt(np.abs(cv))
    S = (np.abs(cv) ** 1.5).sum()
    want = Bv * sign * root / S
    assert np.abs(fwd.outputs[0][0] - want).max() <= 1e-10 * np.abs(want).max()
    J = np.diag(Bv / (2 * root * S)) - 1.5 * Bv * np.outer(sign * root, sign * root) / S**2
    got = fwd.jacobian(0)[0][0]
    assert np.abs(got - J).max() <= 1e-8 * np.abs(J).max()


def test_a_point_near_a_second_order_cones_kink_is_certified_only_from_both_sides():
    """min ‖x‖₃ s.t. c·x >= B with c over 1e-8 … 1e7 (Hölder: x_i = B sign(c_i)|c_i|^½/S).
    At the refined point one of pnorm's cones sat 6.8e-11 from the boundary of K* at an
    estimated error of 8.7e-7: linearized on one side of that kink, the estimate (2e-14)
    certified x₀ = 3.3e-14 where it is 2.8e-12, 4e-8 of the output's largest entry. Solved
    means within 1e-8 of the closed form, relative to the output's largest entry."""
    x = cp.Variable(4)
    c, B = cp.Parameter(4), cp.Parameter()
    layer = dl.compile(cp.Problem(cp.Minimize(cp.pnorm(x, 3)), [c @ x >= B]), [c, B], [x])
    cv = np.array([2.2862076912768892e-08, 14507716.501571171, -0.000157445076407981,
                   19.051814244634663])
    Bv = 1006.7668311168468
    fwd = layer.forward([cv[None], np.array([Bv])], on_failure="nan")
    want = Bv * np.sign(cv) * np.sqrt(np.abs(cv)) / (np.abs(cv) ** 1.5).sum()
    if fwd.ok[0]:
        assert np.abs(fwd.outputs[0][0] - want).max() <= 1e-8 * np.abs(want).max()



def test_a_point_certified_where_a_cone_holds_its_factor_below_rounding_is_not_taken():
    """min c·x s.t. square(‖x − a‖) <= q at q = (1e-6|a|)²: x = a − √q ĉ. The rotated cone
    CVXPY writes for the square holds rows 1 ± t with t ~ 1e-18 of 1 in the equilibrated
    program, where t is rounding: SCS's point x = a, off by the whole radius (4.8e-7 of x),
    was certified there as a face of non-unique auxiliaries. Only a scaling that resolves the
    factor (a boost) may certify it; every instance solved is within 1e-12 of x's scale, and
    three of the four at least are (all four on one machine; instance 0 `iteration_limit` on
    another, AVX-512, whose solver points differ in their last bits)."""
    n = 5
    x, a, c = cp.Variable(n), cp.Parameter(n), cp.Parameter(n)
    q = cp.Parameter(nonneg=True)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x), [cp.square(cp.norm(x - a)) <= q]),
                       [a, q, c], [x])
    rng = np.random.default_rng(5)
    A = 1e-3 * rng.standard_normal((4, n))
    Q = np.full(4, 1e-18)
    C = rng.standard_normal((4, n))
    fwd = layer.forward([A, Q, C], on_failure="nan")
    truth = A - np.sqrt(Q)[:, None] * C / np.linalg.norm(C, axis=1, keepdims=True)
    assert fwd.ok.sum() >= 3, fwd.info.status
    for i in np.flatnonzero(fwd.ok):
        assert np.abs(fwd.outputs[0][i] - truth[i]).max() <= 1e-12 * np.abs(truth[i]).max()


@pytest.mark.parametrize("form", ["sum_squares", "quad_form"])
@pytest.mark.parametrize("s", [1e-12, 1e-9, 1e9, 1e12, "mixed"])
def test_a_ball_written_as_sum_squares_at_scale_is_solved_with_its_jacobian(form, s):
    """Projection onto ‖x‖² <= r, r = ρ‖a‖² (ρ in 0.2 … 0.95: the ball is active). CVXPY
    writes t >= ‖x‖² as (1 + t, 1 − t, 2x): at a ~ 1e-9, t ~ 1e-18 lies below the rounding
    of the 1 in both rows, the cone binds to that rounding alone, and x = a (the point
    without the ball, 5% … 110% off) was certified with a multiplier of 0. Every instance
    solved, x = a·√r/‖a‖ and both Jacobian blocks within 1e-8 of their largest entries."""
    n = 4
    x, a, r = cp.Variable(n), cp.Parameter(n), cp.Parameter(pos=True)
    lhs = cp.sum_squares(x) if form == "sum_squares" else cp.quad_form(x, np.eye(n))
    layer = dl.compile(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - a)), [lhs <= r]),
                       [a, r], [x], on_failure="nan")
    rng = np.random.default_rng(3)
    scale = 10 ** rng.uniform(-6, 6, (6, 1)) if s == "mixed" else s
    A = rng.standard_normal((6, n)) * scale
    R = rng.uniform(0.2, 0.95, 6) * (A**2).sum(axis=1)
    fwd = layer.forward([A, R])
    assert fwd.ok.all(), fwd.info.status
    for i in range(6):
        na = np.linalg.norm(A[i])
        xt = A[i] * np.sqrt(R[i]) / na
        Ja = np.sqrt(R[i]) * (np.eye(n) / na - np.outer(A[i], A[i]) / na**3)
        Jr = A[i] / (2 * np.sqrt(R[i]) * na)
        J = fwd.jacobian(i)[0]
        assert np.abs(fwd.outputs[0][i] - xt).max() <= 1e-8 * np.abs(xt).max()
        assert np.abs(J[0] - Ja).max() <= 1e-8 * np.abs(Ja).max()
        assert np.abs(np.ravel(J[1]) - Jr).max() <= 1e-8 * np.abs(Jr).max()


@pytest.mark.parametrize("s", [1e-12, 1e-9, 1e-6, 1e6, 1e9, 1e12])
def test_a_cubic_constraint_at_scale_is_solved_right_or_not_at_all(s):
    """Projection of a > 0 onto Σ xᵢ³ <= r (CVXPY's chain x² <= w·1, w² <= t·x) with
    r = 0.6 Σ aᵢ³, all data × (s, s³). At s = 1e-12 the chain's t ~ 1e-36 lies below any
    boost, and five of six instances came back as x = a, the point without the constraint,
    20% off, `solved` (the constraint's row Σt <= r, 2e7 times r at the point, judged at
    the backward error's floor). Every solved instance within 1e-8 of s·x(a, r), x from
    its KKT conditions (xᵢ = (√(1 + 12λaᵢ) − 1)/(6λ), λ by bisection); at 1e-6 and 1e6
    every instance solved."""
    from scipy.optimize import brentq

    n = 4
    x, a, r = cp.Variable(n, pos=True), cp.Parameter(n), cp.Parameter()
    layer = dl.compile(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - a)),
                                  [cp.sum(cp.power(x, 3)) <= r]), [a, r], [x], on_failure="nan")
    A = np.abs(np.random.default_rng(11).standard_normal((6, n))) + 0.5
    R = 0.6 * (A**3).sum(axis=1)

    def exact(ai, ri):
        def at(lam):
            return (np.sqrt(1 + 12 * lam * ai) - 1) / (6 * lam)
        lam = brentq(lambda lam: (at(lam) ** 3).sum() - ri, 1e-12, 1e6, xtol=1e-300,
                     rtol=1e-15)
        return at(lam)

    fwd = layer.forward([s * A, s**3 * R])
    if s in (1e-6, 1e6):
        assert fwd.ok.all(), fwd.info.status
    for i in np.flatnonzero(fwd.ok):
        xt = s * exact(A[i], R[i])
        assert np.abs(fwd.outputs[0][i] - xt).max() <= 1e-8 * xt.max(), (i, fwd.info.status)


@pytest.mark.parametrize("atom", ["sqrt", "power"])
def test_a_multiplier_whose_cone_factor_is_lost_to_rounding_is_solved_right(atom):
    """max √x − c·x (x = 1/(4c²), dx/dc = −1/(2c³)) for c over 1e-12 … 1e12 and 3e4 …
    6e5 in one batch. CVXPY writes t <= √x as (x + 1, x − 1, 2t); at c = 1e8 the
    multiplier is (5e7, 5e7, −0.5), whose rows' difference, 2.5e-9 where it binds, lies
    below their rounding: x = 7.3e-12 (3e5 times the solution) and x = 0 at c = 1e10 came
    back `solved`; at c = 5e4 … 6e5, where v = y − s holds x only to the rounding of
    y ~ c, x came back up to 4 times too large, or 0, `solved`: duality gaps invisible to
    the residual. Every instance solved, its value and its derivative within
    1e-8 of the closed forms."""
    x, c = cp.Variable(), cp.Parameter(pos=True)
    root = cp.sqrt(x) if atom == "sqrt" else cp.power(x, 0.5)
    layer = dl.compile(cp.Problem(cp.Maximize(root - c * x)), [c], [x], on_failure="nan")
    C = np.concatenate([np.logspace(-12, 12, 13), [3e4, 5e4, 7e4, 1e5, 2e5, 4e5, 6e5]])
    fwd = layer.forward([C])
    assert fwd.ok.all(), fwd.info.status
    for i, ci in enumerate(C):
        xt, jt = 1 / (4 * ci**2), -1 / (2 * ci**3)
        assert abs(fwd.outputs[0][i] - xt) <= 1e-8 * xt, (ci, fwd.outputs[0][i])
        assert abs(np.ravel(fwd.jacobian(i)[0][0])[0] - jt) <= 1e-8 * abs(jt), ci


def test_a_point_outside_an_inv_pos_constraint_is_not_solved():
    """min cᵀx s.t. inv_pos(x) <= d at d = (2.2e-7, 3.7e-7): x = 1/d. SCS's point held
    x₂ = 2e-9 in the cone (x + d, x − d, 2), 1e15 times short of what the cone asks, and
    came back `solved`, 59% of the largest output off, since x₂ is 4e-16 of x₁. Solved to
    x = 1/d, or not solved."""
    x, c, d = cp.Variable(2), cp.Parameter(2, pos=True), cp.Parameter(2, pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x), [cp.inv_pos(x) <= d]), [c, d], [x],
                       on_failure="nan")
    dv = np.array([2.1544346900319306e-07, 3.662538973054282e-07])
    fwd = layer.forward([np.ones((1, 2)), dv[None]])
    if fwd.ok[0]:
        assert np.abs(fwd.outputs[0][0] - 1 / dv).max() <= 1e-8 * (1 / dv).max()


def test_a_chain_holding_an_output_entry_far_below_the_others_is_right_where_solved():
    """min Σ power(x, 1.5)/1.5 − cᵀx (CVXPY's chain of rotated cones) with c = (1, 1e-6,
    1e3, 1e-7) × 1e-3 … 1e3 in a batch: x = c² = (1e-6, 1e-18, 1, 1e-20) × …, returned at
    × 1e-3 as (1e-6, 2.5e-32, 1, 6e-31), right to 1e-8 of its largest entry; its chains of
    x₂ and x₄ are violated once their u and t are taken apart from the data, one with t
    negative beyond its rounding (−4e-32), which now counts as asking anything of what the
    cone reads, so that point is not certified (inv_pos(x) <= d at d ~ 4e-7 left x = 2e-9,
    59% of the largest output off, on such a cone). Every instance solved is right to 1e-8
    of its largest entry."""
    x, c = cp.Variable(4, nonneg=True), cp.Parameter(4, pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(
        cp.sum(cp.power(x, 1.5, approx=True)) / 1.5 - c @ x)), [c], [x])
    cv = np.stack([k * np.array([1.0, 1e-6, 1e3, 1e-7]) for k in np.logspace(-3, 3, 7)])
    fwd = layer.forward([cv], on_failure="nan")  # (the batch: c × 1e-3 … 1e3)
    for i in np.flatnonzero(fwd.ok):
        assert np.abs(fwd.outputs[0][i] - cv[i] ** 2).max() <= 1e-8 * (cv[i] ** 2).max()
