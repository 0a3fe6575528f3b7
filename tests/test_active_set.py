"""A few instances of a small polyhedral program are solved at their active set
(`Layer._vertices`, `polyhedral.ActiveSet`): the points and derivatives it certifies are
checked against closed forms, against the general path (refinement and `_forward_error_ok`,
the same layer with the active-set path switched off) and against S itself; points it must
not take (ties, non-unique solutions) are left to the general path, whose verdicts stand."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
import declarative.layer as L
from declarative import polyhedral
from declarative.derivative import NonDifferentiableWarning
from declarative.polyhedral import ActiveSet

EPS = np.finfo(float).eps


def _sparsemax(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Martins & Astudillo 2016: the projection onto the simplex and its Jacobian."""
    zs = np.sort(z)[::-1]
    k = np.arange(1, z.size + 1)
    cs = np.cumsum(zs)
    kk = k[1 + k * zs > cs][-1]
    x = np.maximum(z - (cs[kk - 1] - 1) / kk, 0.0)
    s = (x > 0).astype(float)
    return x, np.diag(s) - np.outer(s, s) / s.sum()


def sparsemax_layer(n: int = 8):
    x, th = cp.Variable(n), cp.Parameter(n)
    return dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [cp.sum(x) == 1, x >= 0]),
                      [th], [x], on_failure="nan")


def qp_layer(n: int = 6, p: int = 2, m: int = 5, ridge: float = 0.0):
    """OptNet's QP with every datum a parameter (and ``ridge``/2 ‖x‖² added where not 0),
    and the inequalities' multipliers as an output."""
    x = cp.Variable(n)
    L_, q = cp.Parameter((n, n)), cp.Parameter(n)
    A, b, G, h = cp.Parameter((p, n)), cp.Parameter(p), cp.Parameter((m, n)), cp.Parameter(m)
    ineq = G @ x <= h
    f = 0.5 * cp.sum_squares(L_ @ x) + q @ x
    if ridge:
        f = f + 0.5 * ridge * cp.sum_squares(x)
    prob = cp.Problem(cp.Minimize(f), [A @ x == b, ineq])
    return dl.compile(prob, [L_, q, A, b, G, h], [x, ineq.dual_variables[0]], on_failure="nan")


def qp_data(rng: np.random.Generator, n: int = 6, p: int = 2, m: int = 5,
            ridge: float = 0.0, noise: float = 1.0) -> list[np.ndarray]:
    x0 = rng.standard_normal(n)
    G = rng.standard_normal((m, n))
    A = rng.standard_normal((p, n))
    slack = rng.random(m) + 0.5
    slack[rng.permutation(m)[: n - p - 1]] = 0.0  # a unique solution and unique multipliers
    lam = np.where(slack == 0, rng.random(m) + 0.5, 0.0)
    Lm = noise * rng.standard_normal((n, n)) + 2 * np.eye(n)
    nu = rng.standard_normal(p)
    q = -((Lm.T @ Lm + ridge * np.eye(n)) @ x0 + A.T @ nu + G.T @ lam)
    return [Lm, q, A, A @ x0, G, G @ x0 + slack]


def polytope_layer(d: int = 3, m: int = 7):
    x, y = cp.Variable(d), cp.Parameter(d)
    G, h = cp.Parameter((m, d)), cp.Parameter(m)
    return dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [G @ x <= h]),
                      [G, h, y], [x], on_failure="nan")


def polytope_data(rng: np.random.Generator, d: int = 3, m: int = 7) -> list[np.ndarray]:
    G = rng.standard_normal((m, d))
    return [G, np.abs(rng.standard_normal(m)) + 0.5, 3 * rng.standard_normal(d)]


def _general(monkeypatch, layer, values):
    """The same call with the active-set path switched off: the general path's result."""
    with monkeypatch.context() as mp:
        mp.setattr(L, "ACTIVE_SET_BATCH", 0)
        mp.setattr(L, "ACTIVE_SET_RESCUE", False)
        fwd = layer.forward(values)
        assert all(a is None for a in fwd._refined.vertex)
        return fwd


def _agree(a: np.ndarray, b: np.ndarray, rel: float = 1e-10) -> None:
    assert np.abs(a - b).max(initial=0.0) <= rel * max(1.0, np.abs(b).max(initial=0.0)), \
        np.abs(a - b).max(initial=0.0)


@pytest.mark.parametrize("make", ["sparsemax", "qp", "polytope"])
def test_one_instance_takes_its_active_set_and_agrees_with_the_general_path(monkeypatch, make):
    rng = np.random.default_rng(3)
    if make == "sparsemax":
        layer, values = sparsemax_layer(), [rng.standard_normal(8)]
    elif make == "qp":
        layer, values = qp_layer(), qp_data(rng)
    else:
        layer, values = polytope_layer(), polytope_data(rng)
    fwd = layer.forward(values)
    assert [str(s) for s in fwd.info.status] == ["solved"]
    assert fwd._refined.vertex[0] is not None
    ref = _general(monkeypatch, layer, values)
    assert [str(s) for s in ref.info.status] == ["solved"]
    for o, r in zip(fwd.outputs, ref.outputs, strict=True):
        _agree(o, r)
    cot = [rng.standard_normal(o.shape) for o in fwd.outputs]
    for g, gr in zip(fwd.vjp(cot), ref.vjp(cot), strict=True):
        _agree(g, gr)
    tan = [rng.standard_normal(np.shape(v)) for v in values]
    for g, gr in zip(fwd.jvp(tan), ref.jvp(tan), strict=True):
        _agree(g, gr)
    for row, row_r in zip(fwd.jacobian(0), ref.jacobian(0), strict=True):
        for J, Jr in zip(row, row_r, strict=True):
            _agree(J, Jr)
    assert not fwd.nondifferentiable.any() and not ref.nondifferentiable.any()
    assert np.isfinite(fwd.info.rcond).all()


@pytest.mark.parametrize("scale", (1e-12, 1e-9, 1e-6, 1.0, 1e6, 1e9, 1e12, "mixed"))
def test_sparsemax_solved_at_its_active_set_is_its_closed_form(monkeypatch, scale):
    """Whatever path solves it, a solved instance is the closed form, value and Jacobian;
    and the active-set path leaves no instance unsolved that the general path solves."""
    n = 8
    layer = sparsemax_layer(n)
    rng = np.random.default_rng(11)
    took = 0
    for _ in range(6):
        z = rng.standard_normal(n)
        if scale == "mixed":
            z = z * 10.0 ** rng.uniform(-6, 6, n)
            data = np.abs(z).max()
        else:
            z, data = z * scale, scale
        fwd = layer.forward([z])
        ref = _general(monkeypatch, layer, [z])
        if str(ref.info.status[0]) == "solved":
            assert str(fwd.info.status[0]) == "solved"
        if str(fwd.info.status[0]) != "solved":
            continue
        took += fwd._refined.vertex[0] is not None
        truth, jac = _sparsemax(z)
        bound = 1e-8 * np.abs(truth).max() + 64 * EPS * data
        assert np.abs(fwd.outputs[0][0] - truth).max() <= bound
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonDifferentiableWarning)
            J = fwd.jacobian(0)[0][0]
        assert np.abs(J - jac).max() <= 1e-8
    if scale in (1.0, 1e-6, 1e6):
        assert took > 0


def test_a_tie_at_the_support_is_left_to_the_general_path(monkeypatch):
    """sparsemax with z₀ exactly at the threshold: x₀ = 0 with a zero multiplier, a kink.
    The active-set path must not take it (its derivative is one-sided); the general path
    reports it as it did."""
    layer = sparsemax_layer(4)
    # τ = (1 + 0.5 − 1) / 2 = 0.25 = z₂: x = (0.75, 0.25, 0, 0), x₂ at 0 with no multiplier
    z = np.array([1.0, 0.5, 0.25, -2.0])
    fwd = layer.forward([z])
    ref = _general(monkeypatch, layer, [z])
    assert fwd._refined.vertex[0] is None
    assert [str(s) for s in fwd.info.status] == [str(s) for s in ref.info.status]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonDifferentiableWarning)
        assert fwd.nondifferentiable.tolist() == ref.nondifferentiable.tolist()
        assert fwd.info.nondifferentiable_reason == ref.info.nondifferentiable_reason


def test_a_face_of_solutions_is_left_to_the_general_path():
    """max x₀ + x₁ over the unit box's x₀ + x₁ <= 1 face: every point of a segment is
    optimal, M is singular, and the active-set path takes none of it."""
    x, c = cp.Variable(2), cp.Parameter(2)
    layer = dl.compile(cp.Problem(cp.Maximize(c @ x), [x >= 0, cp.sum(x) <= 1]), [c], [x],
                       on_failure="nan")
    fwd = layer.forward([np.array([1.0, 1.0])])
    assert fwd._refined.vertex[0] is None


def test_a_batch_of_singles_is_the_batched_call():
    """Each instance alone (the active-set path) against the batch of eight (the general
    path): the same values and the same VJP."""
    layer = qp_layer()
    rng = np.random.default_rng(5)
    data = [qp_data(rng) for _ in range(8)]
    batch = [np.stack(v) for v in zip(*data, strict=True)]
    fwd = layer.forward(batch)
    assert all(a is None for a in fwd._refined.vertex)
    cot = [rng.standard_normal(o.shape) for o in fwd.outputs]
    grads = fwd.vjp(cot)
    for i, values in enumerate(data):
        one = layer.forward(values)
        assert one._refined.vertex[0] is not None
        for o, ob in zip(one.outputs, fwd.outputs, strict=True):
            _agree(o[0], ob[i])
        for g, gb in zip(one.vjp([c[i : i + 1] for c in cot]), grads, strict=True):
            _agree(g, gb[i])


@pytest.mark.parametrize("k", [0, 1, 7, 12])
@pytest.mark.parametrize("spread", [1.0, 1e4])
def test_the_range_space_inverse_is_m_inverse(k, spread):
    """M = [[D, Aᵀ], [−A, 0]]'s inverse from the QR factorization of D^-1/2 Aᵀ
    (`polyhedral._range_space_inverse`) against LAPACK's LU-based inverse of M, for D
    spread over up to RANGE_SPACE_SPREAD; where A's rows are dependent, None or an inverse
    whose reciprocal condition is below u (M singular, as `ActiveSet._for_rows` judges)."""
    rng = np.random.default_rng(k)
    n = 12
    d = 10.0 ** rng.uniform(0, np.log10(spread), n) if spread > 1 else np.full(n, 0.3)
    A = rng.standard_normal((k, n))
    M = np.block([[np.diag(d), A.T], [-A, np.zeros((k, k))]])
    inv = polyhedral._range_space_inverse(d, A)
    assert inv is not None
    ref = np.linalg.inv(M)
    _agree(inv, ref, 1e-10)
    # as accurate as the LU's: its residuals within a small factor of the LU's
    eye = np.eye(n + k)
    for res in (M @ inv - eye, inv @ M - eye):
        assert np.abs(res).max() <= 10 * max(np.abs(M @ ref - eye).max(),
                                             np.abs(ref @ M - eye).max(), EPS)
    if k >= 2:
        dependent = A.copy()
        dependent[-1] = dependent[0]
        bad = polyhedral._range_space_inverse(d, dependent)
        norm1 = np.abs(np.block([[np.diag(d), dependent.T], [-dependent, np.zeros((k, k))]])
                       ).sum(axis=0).max()
        assert bad is None or 1 / (norm1 * np.abs(bad).sum(axis=0).max()) <= EPS
    assert polyhedral._range_space_inverse(d, rng.standard_normal((n + 1, n))) is None


# OptNet's QP with a ridge (P diagonal and positive once canonicalized: x's ½ridge‖x‖² and
# the auxiliary Lx's ½‖·‖²), large enough that M (about 70 rows) is inverted through the
# range-space factorization (`polyhedral.RANGE_SPACE_MIN`)
RIDGE_QP = {"n": 20, "p": 3, "m": 20, "ridge": 0.1}


def _ridge_data(rng: np.random.Generator) -> list[np.ndarray]:
    return qp_data(rng, **RIDGE_QP, noise=1 / np.sqrt(RIDGE_QP["n"]))


def test_a_separable_qp_is_solved_through_the_range_space_inverse(monkeypatch):
    """One instance of RIDGE_QP takes its active set with M's inverse from the range-space
    factorization, and its values and VJP are those of the same call with M's LU and of the
    general path (refinement)."""
    layer = qp_layer(**RIDGE_QP)
    rng = np.random.default_rng(14)
    values = _ridge_data(rng)
    cot = [rng.standard_normal((1, *o.shape[1:])) for o in layer.forward(values).outputs]
    fwd = layer.forward(values)
    a = fwd._refined.vertex[0]
    assert isinstance(a, ActiveSet) and a.inv is not None and a.lu is None
    assert a.M is not None and a.M.shape[0] >= polyhedral.RANGE_SPACE_MIN
    with monkeypatch.context() as mp:
        mp.setattr(polyhedral, "RANGE_SPACE_MIN", 10**9)
        lu = layer.forward(values)
        assert lu._refined.vertex[0] is not None and lu._refined.vertex[0].lu is not None
        assert np.isclose(lu._refined.vertex[0].rcond, a.rcond, rtol=0.5)
    general = _general(monkeypatch, layer, values)
    for other in (lu, general):
        for o, ob in zip(fwd.outputs, other.outputs, strict=True):
            _agree(o, ob)
        for g, gb in zip(fwd.vjp(cot), other.vjp(cot), strict=True):
            _agree(g, gb)


@pytest.mark.parametrize("route", ["lu", "range_space"])
def test_the_active_set_solves_are_those_of_S(route):
    """`ActiveSet.solve` against S of the residual map (derivative.py, eq. (1)) formed
    densely at the point, S = [[P, AᵀDΠ], [−A, I − DΠ]] with DΠ 0/1 by the active set: the
    solve and the transposed solve, with M's LU (OptNet's QP) and with M's inverse from the
    range-space factorization (RIDGE_QP); and the componentwise bound |S⁻¹| w, exact on x
    and the active rows and through |A| (an upper bound) on the others."""
    rng = np.random.default_rng(2 if route == "lu" else 12)
    if route == "lu":
        a = qp_layer().forward(qp_data(rng))._refined.vertex[0]
    else:
        a = qp_layer(**RIDGE_QP).forward(_ridge_data(rng))._refined.vertex[0]
    assert isinstance(a, ActiveSet)
    assert (a.lu if route == "lu" else a.inv) is not None
    n, m = a.n, a.m
    D = np.zeros(m)
    D[a.rows] = 1.0
    S = np.block([[a.P, a.A.T * D], [-a.A, np.diag(1.0 - D)]])
    r = rng.standard_normal((n + m, 3))
    _agree(a.solve(r), np.linalg.solve(S, r), 1e-12)
    _agree(a.solve(r, transpose=True), np.linalg.solve(S.T, r), 1e-12)
    _agree(a.solve(r[:, 0]), np.linalg.solve(S, r[:, 0]), 1e-12)
    w = rng.random(n + m)
    exact = np.abs(np.linalg.inv(S)) @ w
    got = a.bound(w)
    on = np.concatenate([np.arange(n), n + a.rows])
    _agree(got[on], exact[on], 1e-12)
    assert np.all(got >= exact * (1 - 1e-12))


def _sparsemax_with_duals(n: int = 5):
    x, th = cp.Variable(n), cp.Parameter(n)
    eq, ineq = cp.sum(x) == 1, x >= 0
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [eq, ineq])
    return dl.compile(prob, [th], [x, eq.dual_variables[0], ineq.dual_variables[0]],
                      on_failure="nan")


# θ₀ − 1 ~ 3e-12 beside O(1) data: the equality's multiplier ν = 2(θ₀ − 1) is the difference
# of two rows' O(1) terms, known only to ~1e-16 absolute, 1e-5 of itself
TINY_DUAL = np.array([1 + 3e-12, -0.3, -1.0, -2.0, -0.5])


def test_a_tiny_multiplier_beside_large_terms_is_not_taken_by_the_active_set_path():
    """ν's rounding, ~1e-16 against ν ~ 6e-12, is seen by the exact componentwise bound
    (`ActiveSet.bound`): the active-set path does not certify it."""
    fwd = _sparsemax_with_duals().forward([TINY_DUAL])
    assert fwd._refined.vertex[0] is None


def _box_lp(n: int):
    c, lo, hi, x = cp.Parameter(n), cp.Parameter(n), cp.Parameter(n), cp.Variable(n)
    return dl.compile(cp.Problem(cp.Minimize(c @ x), [lo <= x, x <= hi]), [c, lo, hi], [x],
                      on_failure="nan")


def _box_data(rng: np.random.Generator, B: int, n: int, narrow: bool
              ) -> tuple[list[np.ndarray], np.ndarray]:
    """B box LPs, each entry at its own scale (10^U(−6, 6)); ``narrow``: each box's width
    1e-9 … 1e-5 of its bounds, else 1e-3 … 1e-1. The unique solution: x = lo where c > 0,
    hi where c < 0."""
    lo = rng.standard_normal((B, n)) * 10.0 ** rng.uniform(-6, 6, (B, n))
    width = np.abs(lo) * 10.0 ** (rng.uniform(-9, -5, (B, n)) if narrow
                                  else rng.uniform(-3, -1, (B, n)))
    c = rng.choice([-1.0, 1.0], (B, n)) * 10.0 ** rng.uniform(-6, 6, (B, n))
    return [c, lo, lo + width], np.where(c > 0, lo, lo + width)


@pytest.mark.parametrize("B", [1, 6])
@pytest.mark.parametrize("narrow", [True, False])
def test_box_lps_with_every_entry_at_its_own_scale_are_solved_at_their_vertex(B, narrow):
    """min cᵀx s.t. lo <= x <= hi with each entry of c, lo and the widths at its own scale
    (10^±6) and boxes as narrow as 1e-9 of their bounds: SCS's multipliers of the two
    parallel bounds came back both large and nearly equal (805.56 and 805.06 at
    1 <= x <= 1 + 1e-7), the guessed active set was singular, Newton stalled on it, and
    the retries ran 200,000 SCS iterations to return `iteration_limit`; and a slack of
    1.6e-11 was refused against a margin taken from the instance's largest row. Now the
    guess is pruned to independent rows (`polyhedral.independent_rows`), the margin is
    each row's own, and in a batch (B = 6, the general path first) an unsettled instance
    is tried at its active set. Every instance is solved; values within the promise and
    Jacobians in lo and hi against the closed form."""
    n = 5
    layer = _box_lp(n)
    rng = np.random.default_rng(17 if narrow else 19)
    solved = 0
    for _ in range(12 // B):
        values, truth = _box_data(rng, B, n, narrow)
        fwd = layer.forward(values)
        assert [str(s) for s in fwd.info.status] == ["solved"] * B
        solved += B
        for i in range(B):
            x = fwd.outputs[0][i]
            assert np.abs(x - truth[i]).max() <= 1e-9 * np.abs(truth[i]).max()
            with warnings.catch_warnings():
                warnings.simplefilter("error", NonDifferentiableWarning)
                J = fwd.jacobian(i)[0]
            below = values[0][i] > 0
            np.testing.assert_array_equal(J[0], np.zeros((n, n)))
            np.testing.assert_allclose(J[1], np.diag(below.astype(float)), rtol=0, atol=1e-9)
            np.testing.assert_allclose(J[2], np.diag((~below).astype(float)), rtol=0,
                                       atol=1e-9)
    assert solved == 12


def test_lps_with_every_entry_at_its_own_scale_meet_their_optimality_conditions():
    """min cᵀx s.t. Ax <= b, x >= 0 (10 variables, 15 rows) with every entry of A, b and c at
    its own scale (10^±6), batch 6: SCS's point gives no usable active set (its guesses held
    4 … 23 rows), and the instances that refinement leaves unsettled are solved at the
    vertex HiGHS's dual simplex points to (`polyhedral.lp_vertex`), certified as any
    other. Before, 1 of 6 was solved. Each solved instance is checked against the LP's
    optimality conditions with the multipliers it returns (independent of any solver):
    feasibility, c + Aᵀλ − μ = 0 with λ, μ >= 0, and complementarity, each to 1e-9 of its
    own terms; a multiplier is exactly 0 on a row whose slack is not."""
    n, m, B = 10, 15, 6
    x, A, b, c = cp.Variable(n), cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(n)
    rows, signs = A @ x <= b, x >= 0
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x), [rows, signs]), [A, b, c],
                       [x, rows.dual_variables[0], signs.dual_variables[0]], on_failure="nan")
    rng = np.random.default_rng(5)

    def mixed(a: np.ndarray) -> np.ndarray:
        return a * 10.0 ** rng.uniform(-6, 6, np.shape(a))

    As, bs, cs = [], [], []
    for _ in range(B):
        Av = mixed(rng.standard_normal((m, n)))
        x0 = mixed(rng.uniform(0, 1, n))
        bs.append(Av @ x0 + mixed(rng.uniform(0.1, 1, m)))
        cs.append(-Av.T @ mixed(rng.uniform(0, 1, m)) + mixed(rng.uniform(0, 1, n)))
        As.append(Av)
    fwd = layer.forward([np.array(As), np.array(bs), np.array(cs)])
    solved = [i for i in range(B) if str(fwd.info.status[i]) == "solved"]
    assert len(solved) >= 4
    tol = 1e-9
    for i in solved:
        Av, bv, cv = As[i], bs[i], cs[i]
        xv, lam, mu = (o[i] for o in fwd.outputs)
        terms = np.abs(Av) @ np.abs(xv) + np.abs(bv)
        slack = bv - Av @ xv
        assert np.all(slack >= -tol * terms)
        assert np.all(xv >= -tol * np.abs(xv).max())
        assert np.all(lam >= 0) and np.all(mu >= 0)
        grad = cv + Av.T @ lam - mu
        assert np.all(np.abs(grad) <= tol * (np.abs(cv) + np.abs(Av).T @ lam + mu))
        assert np.all(lam[slack > tol * terms] == 0)  # (a multiplier of 0 is exact)
        assert np.all(mu[xv > tol * np.abs(xv).max()] == 0)
