"""Large second-order cones (S kept as S₀ plus a rank-2 term per cone) and singular sparse S
(its pseudo-inverse from one sparse LU of the augmented matrix), against closed forms and
dense linear algebra."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import declarative.derivative as der
from declarative import problems
from declarative.cones import ConeDims, block_pattern, dproject, group_entries
from declarative.derivative import ConeSolution
from tests.conftest import max_abs, zoo_layer


def _ball_batch(n, B, rng, scale=1.0):
    """l2-ball projections: instances inside the ball (x* = y: the norm's epigraph variable is
    not unique, S singular), outside it, and one on the far side."""
    out = []
    for b in range(B):
        r = rng.uniform(0.5, 1.5)
        d = rng.standard_normal(n)
        d /= np.linalg.norm(d)
        ratio = (0.3, 0.6, 2.0, 3.0)[b % 4]
        out.append([scale * ratio * r * d, np.array(scale * r)])
    return [np.stack([o[j] for o in out]) for j in range(2)]


def test_second_order_cone_blocks_as_rank_two_updates():
    """Each second-order cone block of DΠ equals base·I + Q diag(h) Qᵀ with ρ <= 2
    (`low_rank_columns`): base 1 and ρ = 0 inside the cone, base 0 and ρ = 0 in its polar,
    ρ = 2 in between; checked against the dense blocks."""
    dims = ConeDims(zero=1, nonneg=2, soc=(6, 3, 6), psd=(3,), exp=1)
    rng = np.random.default_rng(2)
    V = rng.standard_normal((6, dims.size))
    first = 3  # the first cone of size 6 (the second starts at 12, after the one of size 3)
    x = rng.standard_normal(5)
    V[0, first], V[0, first + 1 : first + 6] = 2 * np.linalg.norm(x), x   # inside
    V[1, first], V[1, first + 1 : first + 6] = -2 * np.linalg.norm(x), x  # polar
    V[2, first], V[2, first + 1 : first + 6] = 0.3 * np.linalg.norm(x), x  # in between
    groups = frozenset({("soc", 6)})
    rows, cols = block_pattern(dims)
    mask = group_entries(dims, groups)
    assert set(zip(rows[mask].tolist(), cols[mask].tolist(), strict=True)) == {
        (i, j) for lo in (3, 12) for i in range(lo, lo + 6) for j in range(lo, lo + 6)}
    D = dproject(V, dims, dual=True)
    dense = D.dense()
    for b in range(6):
        total = 0
        parts = D.low_rank_columns(b, groups)
        assert [idx[0] for idx, _, _, _ in parts] == [3, 12]
        for idx, base, Q, h in parts:
            block = base * np.eye(idx.size) + (Q * h) @ Q.T
            assert np.abs(block - dense[b][np.ix_(idx, idx)]).max() <= 1e-14
            assert h.size <= 2
            total += h.size
        assert total == D.low_rank(groups)[b]
    assert [(p[1], p[3].size) for p in D.low_rank_columns(0, groups)][0] == (1.0, 0)
    assert [(p[1], p[3].size) for p in D.low_rank_columns(1, groups)][0] == (0.0, 0)
    assert D.low_rank_columns(2, groups)[0][3].size == 2


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_large_second_order_cone_solved_without_its_dense_block(scale):
    """The l2-ball projection with n = 300 (a second-order cone of size 301): S is kept as S₀
    plus a rank-2 term (`LowRankS`, factored through its bordered matrix) where the cone is
    not inside or in its polar, and as S₀ alone (singular: the norm's epigraph variable is
    free inside the ball) where it is.
    Solutions, VJPs and JVPs against the closed forms at data scales 1e-6, 1, 1e6."""
    n, B = 300, 8
    layer, _, _ = zoo_layer("l2_ball_projection", n=n)
    mod = problems.get("l2_ball_projection")
    assert ("soc", n + 1) in der.low_rank_groups(layer.template)
    rng = np.random.default_rng(0)
    y, r = _ball_batch(n, B, rng, scale)
    fwd = layer.forward([y, r])
    assert fwd.ok.all()
    assert not fwd.nondifferentiable.any()
    g = rng.standard_normal((B, n))
    gy, gr = fwd.vjp([g])
    dy, dr = rng.standard_normal((B, n)), rng.standard_normal(B)
    (jx,) = fwd.jvp([dy, dr])
    for b in range(B):
        (x_ref,) = mod.solution(y[b], r[b])
        (Jy, Jr), = mod.jacobian(y[b], r[b])
        assert max_abs(fwd.outputs[0][b], x_ref) <= 1e-12 * scale
        assert max_abs(gy[b], g[b] @ Jy) <= 1e-11
        assert max_abs(gr[b], g[b] @ Jr.reshape(n)) <= 1e-11
        assert max_abs(jx[b], Jy @ dy[b] + Jr.reshape(n) * dr[b]) <= 1e-11
    sol = fwd._linearized[0][1]
    # S₀ + U Vᵀ, or (beside refinement's factorization of a nearby S) S's products alone
    kinds = [isinstance(f.S, der.LowRankS | der.OperatorS) for f in sol.lin.factors]
    assert all(kinds)
    inside = np.linalg.norm(y, axis=1) < r
    assert np.array_equal(sol.lin.singular, inside)
    # outside the ball S₀ is the instance's own (the cone's base between 0 and 1): its
    # bordered matrix is factored, not S₀ for Woodbury's formula
    assert all(isinstance(f.lu, der.BorderedLU) and not (
        f.S.low_rank() if isinstance(f.S, der.OperatorS) else f.S).shared
               for f, s in zip(sol.lin.factors, inside, strict=True) if not s)
    assert all(isinstance(f.pinv, der.SparsePinv) for f, s in zip(
        sol.lin.factors, sol.lin.singular, strict=True) if s)


def test_large_singular_system_beyond_a_dense_svd():
    """n = 1500: S is 3003 × 3003 (beyond SVD_MAX) and singular inside the ball. Newton steps
    and derivatives come from the sparse pseudo-inverse; every instance is solved and
    certified, with the closed-form gradient."""
    n, B = 1500, 4
    layer, _, _ = zoo_layer("l2_ball_projection", n=n)
    assert layer.template.n + layer.template.m > der.SVD_MAX
    mod = problems.get("l2_ball_projection")
    rng = np.random.default_rng(1)
    y, r = _ball_batch(n, B, rng)
    fwd = layer.forward([y, r])
    assert fwd.ok.all() and not fwd.nondifferentiable.any()
    g = rng.standard_normal((B, n))
    gy, gr = fwd.vjp([g])
    for b in range(B):
        (Jy, Jr), = mod.jacobian(y[b], r[b])
        assert max_abs(fwd.outputs[0][b], mod.solution(y[b], r[b])[0]) <= 1e-12
        assert max_abs(gy[b], g[b] @ Jy) <= 1e-11
        assert max_abs(gr[b], g[b] @ Jr.reshape(n)) <= 1e-11


def _singular_sparse(N: int, nullity: int, rng: np.random.Generator) -> sp.csc_matrix:
    """A sparse N × N S, nonsymmetric, whose last ``nullity`` columns are combinations of two
    others each (its null space that many dimensions)."""
    S = (sp.random(N, N, density=0.04, random_state=nullity) + 3 * sp.identity(N)).tolil()
    for j in range(N - nullity, N):
        a, b = rng.choice(N - nullity, 2, replace=False)
        S[:, j] = S[:, a] * rng.uniform(0.5, 2) - S[:, b] * rng.uniform(0.5, 2)
    return sp.csc_matrix(S)


@pytest.mark.parametrize("guess", [True, False])
@pytest.mark.parametrize("nullity", [1, 3, 9])
def test_sparse_pseudo_inverse_matches_the_dense_one(monkeypatch, nullity, guess):
    """`SparsePinv` of a singular sparse S (nonsymmetric; its last columns combinations of
    two others each): S⁺r and S⁺ᵀr, the null space and the part of r outside S's range agree
    with NumPy's SVD-based pseudo-inverse, for r inside and outside the range. Without the
    guess of the null space's dimension (no pivot counts as small), a nullity above the first
    block's size (9 > PINV_BLOCK) makes the block grow."""
    if not guess:
        monkeypatch.setattr(der, "PINV_PIVOT", 0.0)
    rng = np.random.default_rng(nullity)
    N = 120
    Ssp = _singular_sparse(N, nullity, rng)
    pinv = der.SparsePinv.factor(Ssp)
    assert pinv is not None
    assert pinv._guess == (nullity if guess else 0)
    Sd = Ssp.toarray()
    P = np.linalg.pinv(Sd, rcond=1e-11)
    for r in (Sd @ rng.standard_normal(N), rng.standard_normal(N),
              rng.standard_normal((N, 3))):
        x = pinv.solve(r)
        assert max_abs(x, P @ r) <= 1e-9 * np.abs(P @ r).max()
        xt = pinv.solve(r, transpose=True)
        assert max_abs(xt, P.T @ r) <= 1e-9 * np.abs(P.T @ r).max()
        miss = r - Sd @ (P @ r)
        assert max_abs(pinv.range_miss(r if r.ndim == 2 else r[:, None]),
                       miss if miss.ndim == 2 else miss[:, None]) <= 1e-9 * np.abs(r).max()
    Nul = pinv.null
    assert Nul.shape == (N, nullity)
    ref = np.linalg.svd(Sd)[2][N - nullity:].T
    # the same subspace: its projector
    assert max_abs(Nul @ Nul.T, ref @ ref.T) <= 1e-9
    assert max_abs(Nul.T @ Nul, np.eye(nullity)) <= 1e-12


@pytest.mark.parametrize("nullity", [1, 9])
def test_a_regularized_newton_step_is_the_least_squares_one_up_to_the_null_space(nullity):
    """`SparsePinv.regularized` (refinement's step on a singular sparse S): S x and Sᵀ x are
    the projections of r onto S's range (their least-squares residuals NumPy's), to 1e-9,
    for r inside and outside the range; x is S⁺r (NumPy's) but for a part along the null
    space that the solves' rounding leaves (below 5% of it), and the null space is never
    computed."""
    rng = np.random.default_rng(10 + nullity)
    N = 120
    Ssp = _singular_sparse(N, nullity, rng)
    pinv = der.SparsePinv.factor(Ssp)
    assert pinv is not None
    Sd = Ssp.toarray()
    P = np.linalg.pinv(Sd, rcond=1e-11)
    for r in (Sd @ rng.standard_normal(N), rng.standard_normal(N),
              rng.standard_normal((N, 3))):
        for M, Pm, transpose in ((Sd, P, False), (Sd.T, P.T, True)):
            x = pinv.regularized(r, transpose)
            assert max_abs(M @ x, M @ (Pm @ r)) <= 1e-9 * np.abs(r).max()
            off = x - Pm @ r  # (along the null space: M @ off is 0 above)
            assert np.abs(off).max() <= 0.05 * np.abs(Pm @ r).max()
    assert not pinv.null_known and not pinv._null


def test_a_singular_sparse_s_with_a_null_space_a_third_of_its_order_goes_to_the_dense_svd():
    """Where the null space's guessed dimension is above PINV_GUESS_MAX of S's order, or S is
    at least DENSE_LU_FILL full, `_factor_sparse_one` takes S's dense SVD, not the
    `SparsePinv`: the same pseudo-inverse (NumPy's) and null space, without the block
    iteration on hundreds of columns. A small nullity in a sparse S still gets the
    `SparsePinv`."""
    rng = np.random.default_rng(7)
    N = 150
    for nullity, density, sparse_pinv in ((50, 0.04, False), (9, 0.04, True), (3, 0.3, False)):
        S = (sp.random(N, N, density=density, random_state=nullity)
             + 3 * sp.identity(N)).tolil()
        for j in range(N - nullity, N):
            a, b = rng.choice(N - nullity, 2, replace=False)
            S[:, j] = S[:, a] * rng.uniform(0.5, 2) - S[:, b] * rng.uniform(0.5, 2)
        Ssp = sp.csc_matrix(S)
        guess = der.SparsePinv.factor(Ssp).guess
        full = Ssp.nnz >= der.DENSE_LU_FILL * N * N
        assert (guess > der.PINV_GUESS_MAX * N or full) != sparse_pinv, (guess, full)
        f = der._factor_sparse_one(Ssp)
        assert isinstance(f.pinv, der.SparsePinv if sparse_pinv else der.TruncatedSVD)
        Sd = Ssp.toarray()
        P = np.linalg.pinv(Sd, rcond=1e-11)
        r = rng.standard_normal(N)
        assert max_abs(f.pinv.solve(r), P @ r) <= 1e-9 * np.abs(P @ r).max()
        assert max_abs(f.pinv.solve(r, transpose=True), P.T @ r) <= 1e-9 * np.abs(P.T @ r).max()
        ref = np.linalg.svd(Sd)[2][N - nullity:].T
        assert max_abs(f.pinv.null @ f.pinv.null.T, ref @ ref.T) <= 1e-9


def test_a_dense_enough_sparse_matrix_is_factored_by_lapack():
    """`derivative.splu`: a sparse matrix at least DENSE_LU_FILL full (of order DENSE_LU_MIN …
    DENSE_LU_MAX) gets LAPACK's dense LU, whose solves and transposed solves match NumPy's and
    whose U diagonal gives the pivot ratio; an exactly singular one raises as SuperLU does;
    a sparser one is SuperLU's."""
    rng = np.random.default_rng(3)
    N = 300
    M = sp.random(N, N, density=0.3, random_state=1, format="csc") + 5 * sp.identity(N)
    lu = der.splu(M.tocsc())
    assert isinstance(lu, der.DenseLU)
    Md = M.toarray()
    r = rng.standard_normal((N, 2))
    assert max_abs(lu.solve(r), np.linalg.solve(Md, r)) <= 1e-12
    assert max_abs(lu.solve(r[:, 0], trans="T"), np.linalg.solve(Md.T, r[:, 0])) <= 1e-12
    assert 0 < der._pivot_ratio(lu) <= 1
    singular = M.tolil()
    singular[:, 7] = 0.0
    with pytest.raises(RuntimeError):
        der.splu(sp.csc_matrix(singular))
    thin = (sp.random(N, N, density=0.01, random_state=2) + 5 * sp.identity(N)).tocsc()
    assert not isinstance(der.splu(thin), der.DenseLU)


def test_sparse_pseudo_inverse_through_the_linearization():
    """A singular sparse S in a `Linearization`: its least-squares solves and null space are
    the dense SVD's (`TruncatedSVD`) on the same S."""
    layer, _, _ = zoo_layer("l2_ball_projection", n=120)
    rng = np.random.default_rng(4)
    y, r = _ball_batch(120, 4, rng)
    fwd = layer.forward([y, r])
    x, yy, s, _ = fwd.state()
    sparse = ConeSolution.at(fwd._ops, x, yy, s, dense=False)
    dense = ConeSolution.at(fwd._ops, x, yy, s, dense=True)
    assert np.array_equal(sparse.lin.singular, dense.lin.singular)
    assert sparse.lin.singular[:2].all() and not sparse.lin.singular[2:].any()
    t = layer.template
    rhs = rng.standard_normal((4, t.n + t.m))
    for transpose in (False, True):
        assert max_abs(sparse.lin.solve(rhs, transpose), dense.lin.solve(rhs, transpose)) \
            <= 1e-8
    for b in range(2):
        assert isinstance(sparse.lin.factors[b].pinv, der.SparsePinv)
        assert isinstance(dense.lin.factors[b].pinv, der.TruncatedSVD)
        Ns, Nd = sparse.lin.null_space(b), dense.lin.null_space(b)
        assert Ns.shape == Nd.shape == (t.n + t.m, 1)
        assert max_abs(Ns @ Ns.T, Nd @ Nd.T) <= 1e-9


def test_many_non_unique_auxiliary_variables():
    """The 3-norm ball projection inside the ball (n = 60, sparse S): the power-cone
    auxiliary variables are free, so S's null space has a dimension near 2n (far beyond the
    first block). It spans the dense SVD's; solutions and gradients against the closed form;
    no instance flagged non-differentiable."""
    n = 60
    layer, _, _ = zoo_layer("pnorm_ball_projection", n=n)
    assert not der.use_dense(layer.template)
    mod = problems.get("pnorm_ball_projection")
    rng = np.random.default_rng(3)
    ys, rs = [], []
    for _ in range(2):
        y = rng.standard_normal(n)
        r = 2.0 * np.sum(np.abs(y) ** 3) ** (1 / 3)  # inside: x* = y
        ys.append(y)
        rs.append(np.array(r))
    y, r = np.stack(ys), np.stack(rs)
    fwd = layer.forward([y, r])
    assert fwd.ok.all() and not fwd.nondifferentiable.any()
    for f in fwd._linearized[0][1].lin.factors:
        assert isinstance(f.pinv, der.SparsePinv)
        Ns, Nd = f.pinv.null, der.TruncatedSVD.of(f.pinv.S.toarray()).null
        assert Ns.shape == Nd.shape and Nd.shape[1] > n
        assert max_abs(Ns @ Ns.T, Nd @ Nd.T) <= 1e-9
    g = rng.standard_normal((2, n))
    gy, gr = fwd.vjp([g])
    for b in range(2):
        (Jy, Jr), = mod.jacobian(y[b], r[b])
        assert max_abs(fwd.outputs[0][b], mod.solution(y[b], r[b])[0]) <= 1e-12
        assert max_abs(gy[b], g[b] @ Jy) <= 1e-11
        assert max_abs(gr[b], g[b] @ Jr.reshape(n)) <= 1e-11


@pytest.mark.parametrize("nullity", [2, 40])
@pytest.mark.parametrize("smallest", [1e-4, 1e-7, 1e-9])
def test_sparse_pseudo_inverse_of_an_ill_conditioned_singular_matrix(smallest, nullity):
    """Nonzero singular values spread down to ``smallest`` (times the largest) beside a null
    space of dimension 2 (solved through the bordered LU) or 40 (above PINV_BORDER_MAX:
    iterated Tikhonov, then the bordered LU where it converges too slowly): S⁺r and S⁺ᵀr
    against the exact pseudo-inverse from the
    construction, for r in the range, to the accuracy the conditioning allows (1e-14 over the
    smallest); a vector orthogonal to the range is found outside it. At 1e-9 the
    smallest are below δ = √u·σ̂, the inverse iteration cannot tell them from 0, and the dense
    SVD answers instead (S is small enough)."""
    rng = np.random.default_rng(0)
    N, k = 100, nullity
    U, _ = np.linalg.qr(rng.standard_normal((N, N)))
    V, _ = np.linalg.qr(rng.standard_normal((N, N)))
    sv = np.concatenate([np.logspace(0, np.log10(smallest), N - k), np.zeros(k)])
    S = sp.csc_matrix((U * sv) @ V.T)
    pinv = der.SparsePinv.factor(S)
    exact = (V[:, :-k] / sv[:-k]) @ U[:, :-k].T
    for transpose in (False, True):
        r = (S.T if transpose else S) @ rng.standard_normal(N)  # in the range
        ref = (exact.T if transpose else exact) @ r
        got = pinv.solve(r, transpose)
        assert max_abs(got, ref) <= 1e-14 / smallest * np.abs(ref).max()
    outside = U[:, -k:] @ rng.standard_normal(k)  # left null space: orthogonal to the range
    assert max_abs(pinv.range_miss(outside[:, None])[:, 0], outside) <= 1e-6
    assert pinv.null.shape == (N, k)
    assert max_abs(pinv.null @ pinv.null.T, V[:, -k:] @ V[:, -k:].T) <= 1e-6
    assert (pinv._dense is not None) == (smallest < 1e-8)


def test_s_layout_is_made_only_where_s_is_factored_whole():
    """S's own layout, whose pattern holds the PSD block's kk² entries (at k = 50, 1.6e6 of
    them: a second of a first call), is made only where an instance's S is factored whole,
    not in low-rank form (S₀ + U Vᵀ): here no instance's is, and the solutions are the
    closed form's. A tuning's SuperLU ordering given before that layout exists is set on it
    once made, and on it where it exists."""
    from declarative import compile as dl_compile

    mod = problems.get("psd_trace_projection")
    prob, params, variables = mod.build(k=50)
    layer = dl_compile(prob, params, variables, **problems.compile_options(mod))
    t = layer.template
    assert not der.use_dense(t) and der.low_rank_groups(t)
    rng = np.random.default_rng(0)
    pool = [mod.sample(rng, k=50) for _ in range(2)]
    fwd = layer.forward([np.stack([np.asarray(p[0], dtype=float) for p in pool])])
    assert fwd.ok.all()
    for i, p in enumerate(pool):
        (want,) = mod.solution(*p)
        assert max_abs(fwd.outputs[0][i], want) <= 1e-9
    assert der.made_layout(t) is None and "sparse_layout_low_rank" in t.derived
    der.set_ordering(t, "NATURAL", False)
    layout = der.sparse_layout(t)
    assert der.made_layout(t) is layout
    assert (layout.ordering, layout.supernodes) == ("NATURAL", False)
    der.set_ordering(t, "COLAMD", True)
    assert (layout.ordering, layout.supernodes) == ("COLAMD", True)


def test_a_large_s_is_factored_sparse_without_probing_its_fill():
    """From N ≈ 650 on the cost model prefers SuperLU at any fill (nnz(L + U) ≤ N(N + 1)):
    the PSD projection at k = 30 (N = 931) decides without the fill probe (SuperLU under
    each ordering: 0.28 of its first call's 0.35 s), and the probe's fill decides the same."""
    layer, _, _ = zoo_layer("psd_trace_projection", k=30)
    t = layer.template
    assert not der.use_dense(t)
    layout = der.sparse_layout(t)
    assert layout._fill is None
    N = t.n + t.m
    assert der.DENSE_COST * N**3 >= der.SPARSE_COST + der.SPARSE_FILL_COST * layout.fill


def test_newton_steps_on_a_singular_sparse_s_compute_no_null_space(monkeypatch):
    """Inside the 3-norm ball (n = 30: S sparse) the constraint's auxiliary variables are
    free: S is singular with a null space of about N/4 at every point. Refinement's Newton
    steps there are regularized least-squares steps (`SparsePinv.regularized`), with no
    subspace iteration for the null space (which cost two to ten times the whole call);
    the certificate and the derivatives still compute it. Outputs and the VJP match the
    closed form."""
    import declarative.layer as lay

    n, B = 30, 4
    mod = problems.get("pnorm_ball_projection")
    layer, _, _ = zoo_layer("pnorm_ball_projection", n=n)
    assert not der.use_dense(layer.template)
    rng = np.random.default_rng(3)
    y = rng.standard_normal((B, n))
    y /= np.sum(np.abs(y) ** 3, axis=1, keepdims=True) ** (1 / 3)
    r = np.array([2.0, 3.0, 0.5, 4.0])  # the third instance outside the ball
    y *= np.where(np.arange(B) == 2, 1.0, 0.5)[:, None]
    refining, during = [False], []
    iterate, refine = der.SparsePinv._iterate, lay.refine

    def spied_iterate(self, *args):
        during.append(refining[0])
        return iterate(self, *args)

    def spied_refine(*args, **kwargs):
        refining[0] = True
        try:
            return refine(*args, **kwargs)
        finally:
            refining[0] = False

    monkeypatch.setattr(der.SparsePinv, "_iterate", spied_iterate)
    monkeypatch.setattr(lay, "refine", spied_refine)
    fwd = layer.forward([y, r])
    assert fwd.ok.all() and not fwd.nondifferentiable.any()
    g = rng.standard_normal((B, n))
    gy, gr = fwd.vjp([g])
    assert during and not any(during)  # (the certificate's and derivatives' alone)
    for b in range(B):
        (x_ref,) = mod.solution(y[b], r[b])
        (Jy, Jr), = mod.jacobian(y[b], r[b])
        assert max_abs(fwd.outputs[0][b], x_ref) <= 1e-12
        assert max_abs(gy[b], g[b] @ Jy) <= 1e-10
        assert max_abs(gr[b], g[b] @ Jr.reshape(n)) <= 1e-10
