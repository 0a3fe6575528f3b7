"""The bordered block-diagonal factorization (`declarative.arrow`) against dense solves, and
layers that use it against closed forms and against their own batch-of-one results (which
SuperLU factors)."""

import warnings

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp

import declarative as dl
from declarative.arrow import BATCH_MIN, Arrow
from declarative.derivative import sign_probe, sparse_layout


def _arrow_matrix(rng, k, s, nb, B, singular_block=None):
    """B random matrices (CSC data of one pattern) made of k diagonal blocks of size s and
    a border of nb nodes coupled to every block, the nodes shuffled."""
    N = k * s + nb
    blocks = np.zeros((N, N), dtype=bool)
    for b in range(k):
        blocks[b * s:(b + 1) * s, b * s:(b + 1) * s] = True
    blocks[k * s:, :] = True
    blocks[:, k * s:] = True
    perm = rng.permutation(N)
    pattern = blocks[np.ix_(perm, perm)]
    P = sp.csc_matrix(pattern.astype(float))
    P.sort_indices()
    rows, cols = P.indices, np.repeat(np.arange(N), np.diff(P.indptr))
    data = rng.standard_normal((B, P.nnz))
    # diagonally heavy blocks and border: regular, well conditioned
    data[:, rows == cols] += 4.0 * np.sign(data[:, rows == cols])
    if singular_block is not None:  # one instance's first block made singular (rank 1)
        inst = singular_block
        first = perm.argsort()[:s]  # the nodes of block 0
        sel = np.isin(rows, first) & np.isin(cols, first)
        r, c = rows[sel], cols[sel]
        u = rng.standard_normal(N)
        v = rng.standard_normal(N)
        data[inst, np.flatnonzero(sel)] = u[r] * v[c]
    return P, data


@pytest.mark.parametrize("k,s,nb", [(20, 3, 0), (20, 5, 1), (12, 2, 5), (9, 12, 3)])
def test_arrow_solves_match_dense_solves(k, s, nb):
    rng = np.random.default_rng(k * 100 + s * 10 + nb)
    B = 6
    P, data = _arrow_matrix(rng, k, s, nb, B)
    N = P.shape[0]
    arrow = Arrow.of(P.indices, P.indptr, N)
    assert arrow is not None and arrow.nb <= max(nb, 1) + nb
    fa, rcond, ok = arrow.factor(data, sign_probe(N))
    assert ok.all()
    dense = [sp.csc_matrix((d, P.indices, P.indptr), shape=(N, N)).toarray() for d in data]
    exact_rcond = [1 / (np.linalg.norm(S, 1) * np.linalg.norm(np.linalg.inv(S), 1))
                   for S in dense]
    # Hager's estimate bounds ‖S⁻¹‖₁ from below: rcond from above, and within a factor N
    assert np.all(rcond >= np.array(exact_rcond) * (1 - 1e-12))
    assert np.all(rcond <= N * np.array(exact_rcond))
    js = np.array([4, 1, 5])
    for K in (None, 3):
        rhs = rng.standard_normal((js.size, N) if K is None else (js.size, N, K))
        for transpose in (False, True):
            got = fa.solve(js, rhs, transpose)
            for g, j in enumerate(js):
                M = dense[j].T if transpose else dense[j]
                want = np.linalg.solve(M, rhs[g])
                assert np.abs(got[g] - want).max() <= 1e-12 * np.abs(want).max()


def test_a_singular_block_leaves_its_instance_to_another_factorization():
    rng = np.random.default_rng(7)
    P, data = _arrow_matrix(rng, 10, 3, 1, 4, singular_block=2)
    arrow = Arrow.of(P.indices, P.indptr, P.shape[0])
    assert arrow is not None
    _, rcond, ok = arrow.factor(data, sign_probe(P.shape[0]))
    assert ok.tolist() == [True, True, False, True]
    assert rcond[2] == 0.0
    bad = data.copy()
    bad[1, 0] = np.nan
    _, rcond, ok = arrow.factor(bad, sign_probe(P.shape[0]))
    assert ok.tolist() == [True, False, False, True]


def test_a_coupled_pattern_has_no_arrow_structure():
    N = 40
    P = sp.csc_matrix(np.ones((N, N)))
    assert Arrow.of(P.indices, P.indptr, N) is None


def _softmax_layer(n):
    x = cp.Variable(n)
    theta = cp.Parameter(n)
    prob = cp.Problem(cp.Maximize(theta @ x + cp.sum(cp.entr(x))), [cp.sum(x) == 1])
    return dl.compile(prob, parameters=[theta], variables=[x])


def _counting(monkeypatch):
    """A list that grows by one each time `Arrow.factor` runs."""
    calls = []
    factor = Arrow.factor

    def counted(self, data, z):
        calls.append(data.shape[0])
        return factor(self, data, z)
    monkeypatch.setattr(Arrow, "factor", counted)
    return calls


def _softmax_checked(fwd, theta, rng):
    """``fwd``'s outputs and a VJP against softmax's closed form: p = softmax(θ), and the
    Jacobian diag(p) − p pᵀ (symmetric), to 1e-12. Returns (g, the VJP)."""
    p = np.exp(theta - theta.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert np.abs(fwd.outputs[0] - p).max() <= 1e-12
    g = rng.standard_normal(theta.shape)
    (vjp,) = fwd.vjp([g])
    want = p * g - p * (p * g).sum(axis=1, keepdims=True)
    assert np.abs(vjp - want).max() <= 1e-12
    return g, vjp


def test_softmax_batched_through_the_arrow_matches_closed_form_and_batch_of_one(monkeypatch):
    calls = _counting(monkeypatch)
    n, B = 30, 2 * BATCH_MIN
    layer = _softmax_layer(n)
    arrow = sparse_layout(layer.template).arrow
    assert arrow is not None and arrow.nb == 1  # the equality Σx = 1 is the border
    rng = np.random.default_rng(3)
    # logits across scales: O(1), 30, and one instance with a near-tie of 1e-9
    theta = rng.standard_normal((B, n)) * np.array([1.0] * (B - 2) + [30.0, 1.0])[:, None]
    theta[-1, 1] = theta[-1, 0] + 1e-9
    fwd = layer.forward([theta])
    assert fwd.ok.all() and calls and calls[0] == B
    g, vjp = _softmax_checked(fwd, theta, rng)
    for i in (0, B - 1):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            one = layer.forward([theta[i]])
            (v1,) = one.vjp([g[i][None]])
        assert np.abs(one.outputs[0][0] - fwd.outputs[0][i]).max() <= 1e-13
        assert np.abs(np.ravel(v1) - vjp[i]).max() <= 1e-12


def test_sparsemax_batched_through_the_arrow_matches_closed_form(monkeypatch):
    calls = _counting(monkeypatch)
    n, B = 100, 3 * BATCH_MIN
    x = cp.Variable(n)
    z = cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - z)), [cp.sum(x) == 1, x >= 0])
    layer = dl.compile(prob, parameters=[z], variables=[x])
    rng = np.random.default_rng(5)
    scales = np.geomspace(1e-6, 1e6, B)[:, None]
    Z = rng.standard_normal((B, n)) * scales
    fwd = layer.forward([Z])
    assert fwd.ok.all() and calls

    def sparsemax(v):
        u = np.sort(v)[::-1]
        css = np.cumsum(u) - 1
        k = np.arange(1, v.size + 1)
        rho = k[u - css / k > 0][-1]
        return np.maximum(v - css[rho - 1] / rho, 0.0)

    P = np.stack([sparsemax(v) for v in Z])
    assert np.abs(fwd.outputs[0] - P).max() <= 1e-12
    g = rng.standard_normal((B, n))
    (vjp,) = fwd.vjp([g])
    S = P > 0
    # on the support: g − mean of g over the support; 0 off it
    want = np.where(S, g - (g * S).sum(axis=1, keepdims=True) / S.sum(axis=1, keepdims=True),
                    0.0)
    assert np.abs(vjp - want).max() <= 1e-10


def test_a_large_program_is_factored_through_the_arrow_at_any_batch(monkeypatch):
    """From ORDER_ALONE unknowns the arrow factors batches below BATCH_MIN too, one instance
    included (softmax n = 250: 1,251 unknowns), matching the closed form; a small program's
    small batch (n = 30) is left to SuperLU."""
    from declarative.arrow import ORDER_ALONE

    calls = _counting(monkeypatch)
    rng = np.random.default_rng(7)
    for n, B, used in ((250, 1, True), (250, 3, True), (30, 3, False)):
        layer = _softmax_layer(n)
        t = layer.template
        assert (t.n + t.m >= ORDER_ALONE) == used
        calls.clear()
        theta = rng.standard_normal((B, n))
        fwd = layer.forward([theta])
        assert fwd.ok.all()
        assert bool(calls) == used and all(0 < c < BATCH_MIN for c in calls)
        _softmax_checked(fwd, theta, rng)
