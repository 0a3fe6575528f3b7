"""The linear-algebra paths agree: dense vs sparse factorization, reused vs fresh."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from declarative import problems
from declarative.derivative import ConeSolution, use_dense
from declarative.layer import vec
from tests.conftest import every_cone_layer, max_abs, zoo_layer


def _cotangent(fwd, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(o.shape) for o in fwd.outputs]


def test_dense_and_sparse_paths_agree(zoo_name):
    layer, _, sizes = zoo_layer(zoo_name)
    insts = [problems.instance(zoo_name, s, **sizes) for s in range(2)]
    values = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
    fwd = layer.forward(values)
    x, y, s, _ = fwd.state()
    g = _cotangent(fwd)
    t = layer.template
    flat = np.concatenate([vec(gi, o.shape) for gi, o in zip(g, layer.outputs, strict=True)],
                          axis=1)
    gxy = np.asarray(flat @ t.recover)
    results = []
    for dense in (True, False):
        sol = ConeSolution.at(fwd._ops, x, y, s, dense=dense)
        results.append(t.apply_adjoint(*sol.vjp(gxy[:, : t.n], gxy[:, t.n :])))
    assert max_abs(results[0], results[1]) <= 1e-9 * (1 + np.abs(results[0]).max())


def test_refinement_factorization_is_reused_where_exact():
    """Polyhedral cones: the final Newton step leaves S unchanged, so the backward pass
    reuses refinement's factorization, and the gradient equals a fresh factorization's."""
    layer, _, sizes = zoo_layer("sparsemax", n=100)
    assert not use_dense(layer.template)
    insts = [problems.instance("sparsemax", s, **sizes) for s in range(4)]
    fwd = layer.forward([np.stack([i.params[0] for i in insts])])
    g = fwd.vjp(_cotangent(fwd))[0]
    assert fwd._linearized[0][1].lin.reused == 4
    x, y, s, _ = fwd.state()
    fresh = ConeSolution.at(fwd._ops, x, y, s)
    assert fresh.lin.reused == 0
    for b, inst in enumerate(insts):
        expected = _cotangent(fwd)[0][b] @ inst.jacobian[0][0]
        assert max_abs(g[b], expected) <= 1e-10


def test_large_sparse_problem_against_closed_form():
    """Sparsemax n = 2000 (S of size 4001): the sparse path with its chosen fill-reducing
    ordering gives the closed-form solution and Jacobian-vector product."""
    from declarative.derivative import sparse_layout

    layer, _, sizes = zoo_layer("sparsemax", n=2000)
    inst = problems.instance("sparsemax", 0, **sizes)
    fwd = layer.forward(inst.params)
    g = np.random.default_rng(1).standard_normal(2000)
    (grad,) = fwd.vjp([g[None]])
    assert sparse_layout(layer.template).ordering in ("MMD_AT_PLUS_A", "COLAMD")
    assert not sparse_layout(layer.template).supernodes  # thin factors: the plain path
    assert max_abs(fwd.outputs[0][0], inst.solution[0]) <= 1e-8
    assert max_abs(grad, g @ inst.jacobian[0][0]) <= 1e-8


def test_nearby_factorization_is_reused_by_iterative_refinement():
    """Exponential cones: refinement's last step moves S (by ~1e-8), so the backward pass
    solves with refinement's last LU as a preconditioner (iterative refinement) instead of
    factoring again, with DΠ as refinement computed it; the gradient equals a fresh
    linearization's and the closed form."""
    import declarative.derivative as der

    layer, _, sizes = zoo_layer("softmax", n=30)
    insts = [problems.instance("softmax", s, **sizes) for s in range(3)]
    fwd = layer.forward([np.stack([i.params[0] for i in insts])])
    g = _cotangent(fwd)
    calls = []
    real = der.dproject
    der.dproject = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        grad = fwd.vjp(g)[0]
    finally:
        der.dproject = real
    assert not calls  # DΠ at the solution comes from refinement too
    lin = fwd._linearized[0][1].lin
    assert all(f.near is not None for f in lin.factors)  # reused, not the same matrix
    assert all(f._exact is None for f in lin.factors)    # refinement converged: no fallback
    x, y, s, _ = fwd.state()
    fresh = ConeSolution.at(fwd._ops, x, y, s)
    assert not any(f.near is not None for f in fresh.lin.factors)
    t = layer.template
    gxy = np.asarray(np.concatenate([vec(gi, o.shape) for gi, o in zip(g, layer.outputs,
                                                                       strict=True)], axis=1)
                     @ t.recover)
    ref = t.apply_adjoint(*fresh.vjp(gxy[:, : t.n], gxy[:, t.n :]))
    assert max_abs(grad, ref) <= 1e-13
    for b, inst in enumerate(insts):
        assert max_abs(grad[b], g[0][b] @ inst.jacobian[0][0]) <= 1e-10
    # a preconditioner too far from S: refinement stagnates and S itself is factored
    f = lin.factors[0]
    far = der.Factor(f.S * 3.0, f.near.lu,
                     f.rcond, near=f.near)
    rhs = np.random.default_rng(0).standard_normal(f.S.shape[0])
    sol = der._refined_solve(far, rhs, transpose=True)
    assert far._exact is not None
    assert max_abs((far.S.T @ sol), rhs) <= 1e-10


def _spectraplex(k):
    import cvxpy as cp

    import declarative as dl

    Y = cp.Parameter((k, k))
    X = cp.Variable((k, k), PSD=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - (Y + Y.T) / 2)), [cp.trace(X) == 1])
    return dl.compile(prob, [Y], [X])


def _spectraplex_solution(Yv):
    """argmin ‖X − Y‖_F over X ⪰ 0, tr X = 1 (Y symmetric): U max(Λ − τ, 0) Uᵀ."""
    lam, U = np.linalg.eigh(Yv)
    s = np.sort(lam)[::-1]
    cs = (np.cumsum(s) - 1.0) / np.arange(1, s.size + 1)
    tau = cs[np.flatnonzero(s > cs).max()]
    return (U * np.maximum(lam - tau, 0.0)) @ U.T


def _psd_projection(k):
    import cvxpy as cp

    import declarative as dl

    Y = cp.Parameter((k, k))
    X = cp.Variable((k, k), PSD=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - (Y + Y.T) / 2)))
    return dl.compile(prob, [Y], [X])


def _random_spectraplex(B, seed, k=12):
    """The spectraplex projection of B random symmetric k × k matrices, solved: (layer, the
    forward, the generator after the draw)."""
    layer = _spectraplex(k)
    rng = np.random.default_rng(seed)
    Ys = rng.standard_normal((B, k, k))
    return layer, layer.forward([(Ys + np.swapaxes(Ys, 1, 2)) / 2]), rng


def _spectrum(rng, k, positive):
    """Symmetric k × k matrices (3 of them) with ``positive[b]`` positive eigenvalues."""
    out = []
    for p in positive:
        Q, _ = np.linalg.qr(rng.standard_normal((k, k)))
        lam = np.concatenate([rng.uniform(0.5, 2.0, p), -rng.uniform(0.5, 2.0, k - p)])
        out.append((Q * lam) @ Q.T)
    return np.array(out)


@pytest.mark.parametrize("factored", [False, True])
@pytest.mark.parametrize("path", ["woodbury", "bordered"])
@pytest.mark.parametrize("problem", ["spectraplex", "projection"])
def test_low_rank_psd_blocks_solve_without_dense_blocks(monkeypatch, path, problem, factored):
    """Where a PSD block of DΠ is 0 or I up to rank ρ, S = S₀ + U Vᵀ is never formed with its
    dense blocks: solved by Woodbury's formula from S₀'s LU (shifted where S₀ is singular:
    with the spectraplex's trace constraint, the dual's block is at base I and X fixed on
    the PSD rows overdetermines the trace), or by the bordered LU where S₀'s LU is refused.
    Batches mix low-rank instances with one that is not (its S assembled whole). Solves,
    VJPs and JVPs equal those of the dense LU of S; the solution the closed form. With
    ``factored``, U is kept as G Q diag(h) for the products (`LowRankS.form`)."""
    import declarative.derivative as der

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)  # the path at a small size (k = 12)
    monkeypatch.setattr(der, "FACTORED_U_MIN", 0 if factored else np.inf)
    if path == "bordered":
        monkeypatch.setattr(der, "S0_RCOND_MIN", np.inf)
    k = 12
    rng = np.random.default_rng(3)
    if problem == "spectraplex":
        layer = _spectraplex(k)
        Ys = rng.standard_normal((3, k, k))
        Ys = (Ys + np.swapaxes(Ys, 1, 2)) / 2
        Q, _ = np.linalg.qr(rng.standard_normal((k, k)))  # X* of rank k/2: not low rank
        lam = np.concatenate([1 / 6 + rng.uniform(0, 0.02, k // 2), -rng.uniform(0.5, 1, k // 2)])
        Ys[2] = (Q * lam) @ Q.T
    else:  # X* = Y₊: the dual's block is at base 0 where Y has few negative eigenvalues
        layer = _psd_projection(k)
        Ys = _spectrum(rng, k, [k - 1, k - 2, k // 2])
    fwd = layer.forward([Ys])
    assert fwd.ok.all()
    for b in range(3):
        ref = _spectraplex_solution(Ys[b]) if problem == "spectraplex" else \
            (lambda lam, U: (U * np.maximum(lam, 0)) @ U.T)(*np.linalg.eigh(Ys[b]))
        assert max_abs(fwd.outputs[0][b], ref) <= 1e-9
    x, y, s, _ = fwd.state()
    t = layer.template
    sparse = ConeSolution.at(fwd._ops, x, y, s, dense=False)
    dense = ConeSolution.at(fwd._ops, x, y, s, dense=True)
    kinds = [type(f.lu).__name__ for f in sparse.lin.factors]
    want = "Woodbury" if path == "woodbury" else "BorderedLU"
    assert kinds[:2] == [want, want] and kinds[2] == "SuperLU"
    assert all(isinstance(f.S, der.LowRankS) for f in sparse.lin.factors[:2])
    assert all((f.S.form is not None) == factored for f in sparse.lin.factors[:2])
    if problem == "spectraplex" and path == "woodbury":
        assert all(f.S.zero_rows.size for f in sparse.lin.factors[:2])  # S₀ shifted
    assert not sparse.lin.singular.any()
    g = rng.standard_normal((3, t.n + t.m))
    for u, v in zip(sparse.vjp(g[:, : t.n], g[:, t.n :]), dense.vjp(g[:, : t.n], g[:, t.n :]),
                    strict=True):
        assert max_abs(u, v) <= 1e-10 * (1 + np.abs(v).max())
    rhs = rng.standard_normal((3, t.n + t.m))
    for transpose in (False, True):
        got = sparse.lin.solve(rhs, transpose)
        ref = dense.lin.solve(rhs, transpose)
        assert max_abs(got, ref) <= 1e-10 * (1 + np.abs(ref).max())
        for b in range(2):  # S itself, as `LowRankS` products and made whole
            S = sparse.lin.factors[b].S
            M = S.tocsc().T if transpose else S.tocsc()
            assert max_abs(M @ got[b], rhs[b]) <= 1e-10
            assert max_abs((S.T if transpose else S) @ got[b], M @ got[b]) <= 1e-12


def test_factored_u_of_several_psd_blocks_is_u(monkeypatch):
    """U = G Q diag(h) (`LowRankS.form`) over several PSD blocks whose rows of A reach shared
    and own columns (two PSD variables, one coupling trace constraint and a scaled copy of
    X₁ in the second cone): the products with U, Vᵀ and S, of S and of Sᵀ, equal those
    with U as stored and with S made whole, and Woodbury's solves equal the dense ones."""
    import cvxpy as cp

    import declarative as dl
    import declarative.derivative as der

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)
    monkeypatch.setattr(der, "FACTORED_U_MIN", 0)
    k = 8
    Y1, Y2 = cp.Parameter((k, k), symmetric=True), cp.Parameter((k, k), symmetric=True)
    X1, X2 = cp.Variable((k, k), symmetric=True), cp.Variable((k, k), symmetric=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X1 - Y1) + cp.sum_squares(X2 - Y2)),
                      [X1 >> 0, X2 + 0.5 * X1 >> 0, cp.trace(X1) + cp.trace(X2) == 1])
    layer = dl.compile(prob, [Y1, Y2], [X1, X2])
    rng = np.random.default_rng(5)
    Ys = [_spectrum(rng, k, [k - 2, 2, 3]), _spectrum(rng, k, [1, k - 1, 2])]
    fwd = layer.forward(Ys)
    assert fwd.ok.all()
    x, y, s, _ = fwd.state()
    t = layer.template
    sparse = ConeSolution.at(fwd._ops, x, y, s, dense=False)
    dense = ConeSolution.at(fwd._ops, x, y, s, dense=True)
    low = [f for f in sparse.lin.factors if isinstance(f.S, der.LowRankS)]
    assert low and all(f.S.form is not None and len(f.S.form[3]) == f.S.rank for f in low)
    assert all(f.S.Vr.size == k * (k + 1) for f in low)  # both blocks
    for f in low:
        for S in (f.S, f.S.T):
            z = rng.standard_normal((S.rank, 2))
            assert max_abs(S.u_times(z), S.Ub @ z) <= 1e-12 * np.abs(S.Ub).max()
            w = rng.standard_normal((S.Vr.size, 2))
            assert max_abs(S.vt_times(w), S.Vb.T @ w) <= 1e-12 * np.abs(S.Vb).max() * k
            v = rng.standard_normal(t.n + t.m)
            assert max_abs(S @ v, S.tocsc() @ v) <= 1e-12 * (1 + np.abs(S.tocsc() @ v).max())
    rhs = rng.standard_normal((3, t.n + t.m))
    for transpose in (False, True):
        got, ref = sparse.lin.solve(rhs, transpose), dense.lin.solve(rhs, transpose)
        assert max_abs(got, ref) <= 1e-10 * (1 + np.abs(ref).max())


def test_low_rank_s_equals_only_the_same_entries(monkeypatch):
    """`LowRankS.equals`: a copy of S is equal; one entry changed anywhere (U's or V's last
    row, S₀'s last stored value), or U and V of another rank, is not."""
    from declarative import derivative as der

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)  # the path at a small size
    _, fwd, _ = _random_spectraplex(1, 3)
    x, y, s, _ = fwd.state()
    S = ConeSolution.at(fwd._ops, x, y, s, dense=False).lin.factors[0].S
    assert isinstance(S, der.LowRankS) and S.rank > 1

    def copy(**change):
        parts = {"S0": S.S0.copy(), "U": (S.Ur.copy(), S.Ub.copy()),
                 "V": (S.Vr.copy(), S.Vb.copy())}
        parts.update(change)
        return der.LowRankS(parts["S0"], parts["U"], parts["V"], S.zero_rows, S.layout,
                            S.shared)

    assert S.equals(copy()) and copy().equals(S)
    Ub, Vb, S0 = S.Ub.copy(), S.Vb.copy(), S.S0.copy()
    Ub[-1, -1] += 1e-3
    Vb[-1, -1] += 1e-3
    S0.data[-1] += 1e-3
    assert not S.equals(copy(U=(S.Ur, Ub)))
    assert not S.equals(copy(V=(S.Vr, Vb)))
    assert not S.equals(copy(S0=S0))
    assert not S.equals(copy(U=(S.Ur, S.Ub[:, :-1]), V=(S.Vr, S.Vb[:, :-1])))


def test_shared_lu_capacitance_by_its_kept_block_or_by_solves(monkeypatch):
    """Woodbury's Vᵀ S₀⁻¹ U from the kept sparse block S₀⁻¹[V's rows, U's rows] (formed on
    first use where S₀ takes few values) and from the ρ-column solve both equal the dense
    Vᵀ S₀⁻¹ U (S₀ inverted densely, an independent reference); a block denser than
    COUPLING_FILL times the LU is given up; and a layer's gradients are those of the dense
    LU and bitwise the same on its first call and on every later one (the way the product is
    formed does not depend on the calls before)."""
    import declarative.derivative as der

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)
    k = 20  # the layer's own calls factor sparsely from this size (N = 421)
    layer = _spectraplex(k)
    assert not der.use_dense(layer.template)
    assert der.sparse_layout(layer.template, low_rank=True).few_S0  # zero + one PSD cone
    rng = np.random.default_rng(7)
    Ys = rng.standard_normal((2, k, k))
    Ys = (Ys + np.swapaxes(Ys, 1, 2)) / 2
    g = [rng.standard_normal((2, k, k))]
    first = layer.forward([Ys])  # the layer's first call
    first_grad = first.vjp(g)[0]
    x, y, s, _ = first.state()
    f = ConeSolution.at(first._ops, x, y, s, dense=False).lin.factors[0]
    assert isinstance(f.lu, der.Woodbury)
    S = f.S
    S0 = S.shifted().toarray()
    U, V = S.U().toarray(), S.V().toarray()
    ref = V.T @ np.linalg.solve(S0, U)
    # (S₀ is shifted by √u·max|S₀| on the block's rows: C's largest entries ~1/√u, and any
    # two ways of forming it agree to a few ulps of those times S₀'s conditioning)
    tol = 1e-8 * np.abs(ref).max()
    key = S.Ur.tobytes() + b"|" + S.Vr.tobytes()
    kept = der.SharedLU(f.lu.lu0.lu, f.lu.lu0.columns, keep_blocks=True)
    solved = der.SharedLU(f.lu.lu0.lu, f.lu.lu0.columns, keep_blocks=False)
    by_block = kept.capacitance(S)
    formed = kept._blocks[key]
    assert isinstance(formed, sp.csr_matrix) and formed.nnz < formed.shape[0] * formed.shape[1]
    by_solves = solved.capacitance(S)
    assert solved._blocks == {}
    assert max_abs(by_block, ref) <= tol and max_abs(by_solves, ref) <= tol
    for _ in range(3):  # the same way every time
        assert np.array_equal(kept.capacitance(S), by_block)
        assert np.array_equal(solved.capacitance(S), by_solves)
    # a block denser than COUPLING_FILL times the LU is given up for good: C by solves
    monkeypatch.setattr(der, "COUPLING_FILL", 0.0)
    dense = der.SharedLU(f.lu.lu0.lu, f.lu.lu0.columns, keep_blocks=True)
    assert np.array_equal(dense.capacitance(S), by_solves)
    assert dense._blocks == {key: False}
    monkeypatch.undo()
    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)
    # the layer's S₀ LU (kept with the template) formed its block on the first call, and
    # every later call gives the first call's gradients, bitwise
    lu0 = der.sparse_layout(layer.template, low_rank=True)._lus
    assert any(v is not None and any(isinstance(w, sp.csr_matrix) for w in v._blocks.values())
               for v in lu0.values())
    for _ in range(6):  # (the block is no longer formed mid-way: once, the first call)
        assert np.array_equal(layer.forward([Ys]).vjp(g)[0], first_grad)
    t = layer.template
    dense_sol = ConeSolution.at(first._ops, x, y, s, dense=True)
    gz = rng.standard_normal((2, t.n + t.m))
    sparse_sol = ConeSolution.at(first._ops, x, y, s, dense=False)
    for u, v in zip(sparse_sol.vjp(gz[:, : t.n], gz[:, t.n :]),
                    dense_sol.vjp(gz[:, : t.n], gz[:, t.n :]), strict=True):
        assert max_abs(u, v) <= 1e-10 * (1 + np.abs(v).max())


def test_capacitance_is_solved_where_s0_may_differ_in_every_instance(monkeypatch):
    """With an inequality beside the PSD cone (DΠ's nonnegative rows are in S₀) no block is
    kept, and a layer's gradients are bitwise the same on its first call and later."""
    import cvxpy as cp

    import declarative as dl
    import declarative.derivative as der

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)
    k = 20
    Y = cp.Parameter((k, k))
    X = cp.Variable((k, k), PSD=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - (Y + Y.T) / 2)),
                      [cp.trace(X) == 1, X[0, 0] <= 0.5])
    layer = dl.compile(prob, [Y], [X])
    assert not der.sparse_layout(layer.template, low_rank=True).few_S0
    rng = np.random.default_rng(3)
    Ys = rng.standard_normal((3, k, k))
    g = [rng.standard_normal((3, k, k))]
    fwd = layer.forward([Ys])
    assert fwd.ok.all()
    first = fwd.vjp(g)[0]
    for _ in range(3):
        assert np.array_equal(layer.forward([Ys]).vjp(g)[0], first)
    lu0 = der.sparse_layout(layer.template, low_rank=True)._lus
    assert any(v is not None for v in lu0.values())  # (Woodbury was used)
    assert all(v._blocks == {} for v in lu0.values() if v is not None)


def test_woodbury_falls_back_on_the_bordered_lu(monkeypatch):
    """A Woodbury solve whose refinement cannot converge (its capacitance's LU replaced by a
    wrong one) is solved through the bordered LU instead, to the same accuracy."""
    import declarative.derivative as der

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)
    k = 12
    layer = _spectraplex(k)
    rng = np.random.default_rng(5)
    Ys = rng.standard_normal((1, k, k))
    fwd = layer.forward([(Ys + np.swapaxes(Ys, 1, 2)) / 2])
    x, y, s, _ = fwd.state()
    f = ConeSolution.at(fwd._ops, x, y, s, dense=False).lin.factors[0]
    assert isinstance(f.lu, der.Woodbury)
    rhs = rng.standard_normal(f.S.shape[0])
    good = f.lu.solve(rhs)
    lu, piv = f.lu.C
    f.lu.C = (lu * 1.5, piv)
    assert f.lu._fallback is None
    bad = f.lu.solve(rhs, "T")
    assert isinstance(f.lu._fallback.lu, der.BorderedLU)
    assert max_abs(f.S.tocsc().T @ bad, rhs) <= 1e-10
    assert max_abs(f.S.tocsc() @ good, rhs) <= 1e-10
    # the layer pickles with S₀'s LUs left behind (made again on the next call)
    import pickle

    again = pickle.loads(pickle.dumps(layer))
    assert not der.sparse_layout(again.template, low_rank=True)._lus
    out = again.forward([(Ys + np.swapaxes(Ys, 1, 2)) / 2])
    assert max_abs(out.outputs[0], fwd.outputs[0]) == 0.0


def _arrow(rng: np.random.Generator, n: int):
    """An n × n CSC matrix with a dense first row and column beside its diagonal."""
    import scipy.sparse as sp

    arrow = sp.lil_matrix((n, n))
    arrow.setdiag(rng.uniform(2, 3, n))
    arrow[0, :] = rng.uniform(0.1, 0.2, n)
    arrow[:, 0] = rng.uniform(0.1, 0.2, (n, 1))
    arrow[0, 0] = n
    return arrow.tocsc()


def test_envelope_and_natural_ordering_guard():
    """The envelope counts, per column, the rows from its first entry of S + Sᵀ to the
    diagonal; an arrow matrix with its dense row first (natural order fills completely) keeps
    the natural ordering out of the probe, the same arrow with the dense row last admits it."""
    import scipy.sparse as sp

    from declarative.derivative import ENVELOPE_RATIO, _best_ordering, _envelope

    rng = np.random.default_rng(0)
    n = 300
    M = sp.random(n, n, density=0.01, random_state=1, format="csc") + 4 * sp.identity(n)
    dense_ref = (np.abs(M.toarray()) + np.abs(M.toarray().T)) > 0
    first = np.array([np.flatnonzero(dense_ref[:, j]).min() for j in range(n)])
    assert _envelope(M.tocsc()) == int(np.maximum(np.arange(n) - first, 0).sum())
    first_dense = _arrow(rng, n)
    assert _envelope(first_dense) > ENVELOPE_RATIO * 3 * n  # ~n²/2 against fill ~3n
    spec, fill = _best_ordering(first_dense)
    assert spec != "NATURAL" and fill <= 4 * n
    p = np.r_[1:n, 0]
    last_dense = first_dense[p][:, p].tocsc()
    assert _envelope(last_dense) <= 2 * n


def test_best_ordering_is_the_preferred_one_within_the_fill_slack_whatever_the_timing(
        monkeypatch):
    """The ordering is the natural one where its fill (SuperLU's nnz(L + U), measured here
    directly) is within NATURAL_SLACK of the least, else the first of ORDERING_PREFERENCE
    within FILL_SLACK of it, on matrices where each rule decides: a time-based choice
    flipped between processes where two orderings tie. Made slowest by a delay, the
    preferred ordering is still the one taken, except where the choice is timed on purpose
    (`Layer.tune`)."""
    import time

    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    import declarative.derivative as der

    def fills(S):
        out = {}
        for spec in der.ORDERINGS:
            if spec == "NATURAL" and not der._envelope(S) <= der.ENVELOPE_RATIO * min(out.values()):
                continue
            lu = spla.splu(S, permc_spec=spec)
            out[spec] = float(lu.L.nnz + lu.U.nnz)
        return out

    def expected(S):
        f = fills(S)
        least = min(f.values())
        if f.get("NATURAL", np.inf) <= der.NATURAL_SLACK * least:
            return "NATURAL"
        return next(s for s in der.ORDERING_PREFERENCE if s in f and f[s] <= der.FILL_SLACK * least)

    rng = np.random.default_rng(3)
    n = 200
    banded = sp.diags([rng.uniform(1, 2, n - k) for k in (0, 1, 2)], [0, 1, 2]).tocsc()
    banded = (banded + banded.T + 8 * sp.identity(n)).tocsc()
    scattered = (sp.random(n, n, density=0.02, random_state=4) + 6 * sp.identity(n)).tocsc()
    wide = sp.lil_matrix(scattered)  # (a dense row and column: the natural order fills them)
    wide[0, :] = rng.uniform(0.1, 0.2, n)
    wide[:, 0] = rng.uniform(0.1, 0.2, (n, 1))
    wide = wide.tocsc()
    arrow = _arrow(rng, n)
    chosen = {}
    for name, S in (("banded", banded), ("scattered", scattered), ("wide", wide),
                    ("arrow", arrow)):
        spec, fill = der._best_ordering(S)
        assert spec == expected(S), name
        assert fill == fills(S)[spec]
        chosen[name] = spec
    assert chosen["banded"] == "NATURAL"  # (no fill beyond the band: the first preference)
    assert chosen["arrow"] != "NATURAL"  # (its dense first row fills the natural order)
    real = spla.splu

    def slow_preferred(S, permc_spec=None, **kw):
        if permc_spec == chosen["scattered"]:
            time.sleep(0.02)
        return real(S, permc_spec=permc_spec, **kw)

    monkeypatch.setattr(der.spla, "splu", slow_preferred)
    assert der._best_ordering(scattered)[0] == chosen["scattered"]
    # timed (`Layer.tune`): the fastest that factors it
    assert der._best_ordering(scattered, timed=True)[0] != chosen["scattered"]


def test_low_rank_factorization_preconditions_a_nearby_s(monkeypatch):
    """Where DΠ moved little (refinement's last step, the derivative after it), S = S₀ + U Vᵀ
    is solved by iterative refinement with the previous factorization's formula (no new C,
    no new condition estimate); where it moved much, S is factored anew. Both solve S to
    rounding: checked against S made whole."""
    import declarative.derivative as der
    from declarative.cones import dproject

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)
    layer, fwd, rng = _random_spectraplex(2, 3)  # (solutions of rank 1 and 2)
    x, y, s, _ = fwd.state()
    t = layer.template
    first = der.Linearization(fwd._ops, dproject(y - s, t.dims, dual=True), dense=False)
    assert all(isinstance(f.lu, der.Woodbury) for f in first.factors)
    rhs = rng.standard_normal((2, t.n + t.m))
    for shift, near in ((1e-10, True), (1e-2, False)):
        v = y - s + shift * rng.standard_normal(y.shape)
        lin = der.Linearization(fwd._ops, dproject(v, t.dims, dual=True), dense=False,
                                reuse=first.factors)
        assert all((f.near is not None) == near for f in lin.factors)
        _solves_s_made_whole(lin, rhs)


def _solves_s_made_whole(lin, rhs: np.ndarray) -> None:
    """Each instance of the low-rank linearization ``lin`` solves its S and Sᵀ (made whole,
    sparse) to 1e-11 on ``rhs`` (B, N)."""
    for transpose in (False, True):
        got = lin.solve(rhs, transpose)
        for b in range(len(rhs)):
            M = lin.factors[b].S.tocsc()
            assert max_abs((M.T if transpose else M) @ got[b], rhs[b]) <= 1e-11


def test_a_nearby_factorization_is_kept_where_its_measured_contraction_is_small(monkeypatch):
    """Where S moved from a factored S₀ + U Vᵀ by more than the bound ‖S₀⁻¹‖‖S − S₀‖ admits
    (NEAR_RATE) but S₀⁻¹(S − S₀) is small on the probe, the factorization still
    preconditions S (no new C, no new condition estimate), and S is solved to rounding
    (against S made whole); with no contraction admitted, S is factored anew and solved
    alike; where S moved much, the measured contraction refuses too."""
    import declarative.derivative as der
    from declarative.cones import dproject

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)
    layer, fwd, rng = _random_spectraplex(2, 3)
    x, y, s, _ = fwd.state()
    t = layer.template
    N = t.n + t.m
    first = der.Linearization(fwd._ops, dproject(y - s, t.dims, dual=True), dense=False)
    assert all(isinstance(f.lu, der.Woodbury) for f in first.factors)
    rhs = rng.standard_normal((2, N))
    move = rng.standard_normal(y.shape)
    z = der.sign_probe(N)
    for shift, admit, near in ((1e-4, der.NEAR_CONTRACTION, True), (1e-4, 0.0, False),
                               (1e-2, der.NEAR_CONTRACTION, False)):
        monkeypatch.setattr(der, "NEAR_CONTRACTION", admit)
        D = dproject(y - s + shift * move, t.dims, dual=True)
        for b, f in enumerate(first.factors):  # the bound alone refuses every one of these
            Sz = der.s_products(fwd._ops.take(np.array([b])), D.take(np.array([b])),
                                z[None])[0]
            assert np.abs(Sz - f.S @ z).max() > der.NEAR_RATE * f.rcond * f.S.abs_max()
        lin = der.Linearization(fwd._ops, D, dense=False, reuse=first.factors)
        assert all((f.near is not None) == near for f in lin.factors)
        _solves_s_made_whole(lin, rhs)
        if near:  # refined, S itself never factored
            assert all(f._exact is None for f in lin.factors)


def test_a_nearby_dense_factorization_is_kept_where_its_measured_contraction_is_small(
        monkeypatch):
    """The same on a dense S (power cones: the p-norm ball projection), whose entries are at
    hand: the bound refuses an S moved by 5e-4, the LU's measured contraction admits it, and
    S is solved to rounding; with no contraction admitted, or S moved by 1e-1, S is
    factored anew."""
    import declarative.derivative as der
    from declarative import problems
    from declarative.cones import dproject

    layer, _, sizes = zoo_layer("pnorm_ball_projection")
    insts = [problems.instance("pnorm_ball_projection", seed, **sizes) for seed in range(2)]
    fwd = layer.forward([np.stack([i.params[k] for i in insts])
                         for k in range(len(insts[0].params))])
    x, y, s, _ = fwd.state()
    t = layer.template
    first = der.Linearization(fwd._ops, dproject(y - s, t.dims, dual=True), dense=True)
    rng = np.random.default_rng(1)
    move = rng.standard_normal(y.shape)
    rhs = rng.standard_normal((2, t.n + t.m))
    for shift, admit, near in ((5e-4, der.NEAR_CONTRACTION, True), (5e-4, 0.0, False),
                               (1e-1, der.NEAR_CONTRACTION, False)):
        monkeypatch.setattr(der, "NEAR_CONTRACTION", admit)
        D = dproject(y - s + shift * move, t.dims, dual=True)
        S = der._dense_S(fwd._ops, D)
        for b, f in enumerate(first.factors):  # the bound alone refuses both
            assert np.abs(S[b] - f.S).max() > der.NEAR_RATE * f.rcond * np.abs(f.S).max()
        lin = der.Linearization(fwd._ops, D, dense=True, reuse=first.factors)
        assert all((f.near is not None) == near for f in lin.factors)
        for transpose in (False, True):
            got = lin.solve(rhs, transpose)
            for b in range(2):
                M = S[b].T if transpose else S[b]
                assert max_abs(M @ got[b], rhs[b]) <= 1e-12 * np.abs(M).max() * (
                    1 + np.abs(got[b]).max())
                if near:
                    assert lin.factors[b]._exact is None


def test_s_products_are_the_dense_s_products_for_every_cone_kind():
    """S X and Sᵀ X from A, P and DΠ's products (`s_products`) equal the dense S's on a
    program with zero, nonnegative, second-order, PSD, exponential and power cones, for one
    and for several right-hand sides, with DΠ taken at points v of scale 1e-6, 1 and 1e6."""
    from declarative.cones import dproject
    from declarative.derivative import _dense_S, s_products

    k = 3
    layer = every_cone_layer(k)
    t = layer.template
    assert t.quadratic and all((t.dims.zero, t.dims.nonneg, t.dims.soc, t.dims.psd,
                                t.dims.exp, t.dims.power))
    rng = np.random.default_rng(0)
    Yv = rng.standard_normal((3, k, k))
    # (only the program's A and P are used: D is drawn below)
    fwd = layer.forward([(Yv + Yv.transpose(0, 2, 1)) / 2, rng.standard_normal((3, 3))],
                        on_failure="nan")
    N = t.n + t.m
    for scale in (1e-6, 1.0, 1e6):
        D = dproject(scale * rng.standard_normal((3, t.m)), t.dims, dual=True)
        S = _dense_S(fwd._ops, D)
        for X_ in (rng.standard_normal((3, N)), rng.standard_normal((3, N, 2))):
            for transpose in (False, True):
                M = np.swapaxes(S, 1, 2) if transpose else S
                want = M @ X_ if X_.ndim == 3 else (M @ X_[..., None])[..., 0]
                got = s_products(fwd._ops, D, X_, transpose)
                assert max_abs(got, want) <= 1e-12 * np.abs(want).max()


def test_batched_refined_solves_equal_looped_ones_and_fall_back(monkeypatch):
    """Where S moved little from a factored S₀ + U Vᵀ, S is kept as its products
    (`OperatorS`) and a batch is refined at once: the same solutions (to rounding) as each
    instance refined alone, S solved to rounding against S made whole; an instance whose
    refinement cannot converge (here: no steps allowed) is solved by factoring S itself,
    and a non-finite right-hand side gives NaN."""
    import declarative.derivative as der
    from declarative.cones import dproject

    monkeypatch.setattr(der, "LOW_RANK_MIN", 0)
    layer, fwd, rng = _random_spectraplex(3, 3)
    x, y, s, _ = fwd.state()
    t = layer.template
    first = der.Linearization(fwd._ops, dproject(y - s, t.dims, dual=True), dense=False)
    v = y - s + 1e-10 * rng.standard_normal(y.shape)
    lin = der.Linearization(fwd._ops, dproject(v, t.dims, dual=True), dense=False,
                            reuse=first.factors)
    assert all(isinstance(f.S, der.OperatorS) and f.near is not None for f in lin.factors)
    rhs = rng.standard_normal((3, t.n + t.m, 2))
    rhs[2, 0, 1] = np.nan
    for transpose in (False, True):
        got = lin.solve(rhs, transpose)
        assert np.isnan(got[2]).all() and np.isfinite(got[:2]).all()
        for b in range(2):
            M = lin.factors[b].S.tocsc()
            assert max_abs((M.T if transpose else M) @ got[b], rhs[b]) <= 1e-11
            assert lin.factors[b]._exact is None  # refined: S itself not factored
            alone = der._refined_solve(lin.factors[b], rhs[b], transpose)
            assert max_abs(got[b], alone) <= 1e-12 * np.abs(alone).max()
    monkeypatch.setattr(der, "REFINE_SOLVE_STEPS", 0)
    got = lin.solve(rhs[:, :, 0])
    for b in range(3):
        assert lin.factors[b]._exact is not None
        M = lin.factors[b].S.tocsc()
        assert max_abs(M @ got[b], rhs[b, :, 0]) <= 1e-11


def test_refinement_that_finds_s_singular_falls_back_on_least_squares():
    """A nearby factorization preconditions S; where S itself turns out singular the
    refinement cannot converge and S's own factorization is singular too: the solve is then
    S's least-squares solution (its pseudo-inverse), not an error."""
    import declarative.derivative as der

    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    S = (Q * np.array([3.0, 2.0, 1.0, 0.5, 0.0])) @ Q.T  # singular
    near = der._factor_one(S + 0.3 * np.eye(5))
    f = der.Factor(S, near.lu, near.rcond, near=near)
    rhs = S @ rng.standard_normal(5)  # in S's range
    x = der._refined_solve(f, rhs, transpose=False)
    assert f._exact is not None and not f._exact.rcond > der.RCOND_MIN
    assert max_abs(x, np.linalg.pinv(S) @ rhs) <= 1e-12


def test_norm1_estimate_is_scipys_onenormest_with_one_column():
    """The 1-norm estimate of S⁻¹ (Woodbury's rcond) is Higham and Tisseur's algorithm with
    one column: the same number as scipy's onenormest(t=1), and a lower bound of the exact
    ‖M‖₁, on dense, inverse and sparse-plus-identity matrices across scales; not finite
    products give no bound (inf)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    from declarative.derivative import norm1_estimate

    rng = np.random.default_rng(0)
    for trial in range(90):
        n = int(rng.integers(2, 120))
        kind = trial % 3
        M = rng.standard_normal((n, n)) if kind == 0 else \
            np.linalg.inv(rng.standard_normal((n, n))) if kind == 1 else \
            sp.random(n, n, 0.05, random_state=trial).toarray() + np.eye(n)
        M *= 10.0 ** rng.uniform(-12, 12)
        est = norm1_estimate(lambda x, M=M: M @ x, lambda x, M=M: M.T @ x, n)
        exact = np.abs(M).sum(axis=0).max()
        assert est <= exact * (1 + 1e-12)
        if n > 4:
            assert est == spla.onenormest(M, t=1)
        else:
            assert est == pytest.approx(exact, rel=1e-15)
    M = np.eye(6)
    M[2, 2] = np.nan
    assert norm1_estimate(lambda x: M @ x, lambda x: M.T @ x, 6) == np.inf


@pytest.mark.parametrize("name", ["qp", "polytope_projection", "sparsemax", "box_projection"])
def test_polyhedral_dense_s_is_the_sparse_layouts_s(name):
    """Where DΠ is diagonal the dense S is scattered from A's stored entries directly: the
    same matrix, entry for entry, as the sparse layout assembles from P, A and DΠ (one
    instance's v made non-finite: its S is not finite either)."""
    from declarative.cones import dproject
    from declarative.derivative import _dense_S, sparse_layout

    layer, _, sizes = zoo_layer(name)
    insts = [problems.instance(name, s, **sizes) for s in range(3)]
    values = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
    fwd = layer.forward(values)
    t = layer.template
    assert t.dims.polyhedral
    v = fwd._refined.v.copy()
    v[2, -1] = np.nan
    D = dproject(v, t.dims, dual=True)
    S = _dense_S(fwd._ops, D)
    layout = sparse_layout(t)
    data = layout.values(fwd._ops, D.values())
    for j in range(2):
        assert np.array_equal(S[j], layout.matrix(data[j]).toarray())
    assert not np.isfinite(S[2]).all()


def test_polyhedral_dense_s_sums_repeated_positions_of_p():
    """A template whose P stores an entry twice at one position (each half of it): the dense
    S sums the two, the same matrix as with each entry stored once (halving is exact)."""
    import dataclasses

    from declarative.cones import dproject
    from declarative.derivative import BatchOps, _dense_S

    layer, _, sizes = zoo_layer("qp")
    insts = [problems.instance("qp", s, **sizes) for s in range(2)]
    values = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
    fwd = layer.forward(values)
    t, ops = layer.template, fwd._ops
    D = dproject(fwd._refined.v, t.dims, dual=True)
    twice = dataclasses.replace(t, P_rows=np.concatenate([t.P_rows, t.P_rows]),
                                P_cols=np.concatenate([t.P_cols, t.P_cols]))
    half = ops.h / 2
    S = _dense_S(BatchOps(twice, ops.a, np.concatenate([half, half], axis=1)), D)
    assert np.abs(ops.h).max() > 0
    assert np.array_equal(S, _dense_S(ops, D))


def test_dense_lu_solves_in_the_pool_equal_the_looped_ones():
    """From LAPACK_SOLVES_MIN instances on, the dense LU solves of `Linearization.solve` and
    `newton_correction` run in the thread pool: the same numbers as solving instance by
    instance, for one and several right-hand sides, transposed or not; an instance with a
    non-finite right-hand side gets NaN."""
    from declarative import derivative as der
    from declarative.cones import dproject

    layer, _, sizes = zoo_layer("qp", n=40, p=5, m=40)  # N above STACK_INVERSE_MAX: LU
    B = der.LAPACK_SOLVES_MIN + 2
    insts = [problems.instance("qp", s, **sizes) for s in range(B)]
    values = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
    fwd = layer.forward(values)
    t = layer.template
    lin = der.Linearization(fwd._ops, dproject(fwd._refined.v, t.dims, dual=True), dense=True)
    assert all(isinstance(f.lu, tuple) for f in lin.factors) and not lin.singular.any()
    rng = np.random.default_rng(0)
    for shape in ((B, t.n + t.m), (B, t.n + t.m, 3)):
        rhs = rng.standard_normal(shape)
        rhs[3] = np.nan
        for transpose in (False, True):
            got = lin.solve(rhs, transpose=transpose)
            for i in range(B):
                want = lin.solve_one(i, rhs[i], transpose)
                assert np.array_equal(got[i], want, equal_nan=True)
            assert np.isnan(got[3]).all()
        corr = der.newton_correction(lin.factors, rhs)
        for i in range(B):
            assert np.array_equal(corr[i], -lin.solve_one(i, rhs[i]), equal_nan=True)


@pytest.mark.parametrize("gap", [1e-1, 1e-4, 1e-7])
def test_a_dense_svds_null_vectors_are_within_their_stated_error(gap):
    """S = Q diag(σ) Wᵀ with one exact zero singular value and the smallest nonzero one at
    ``gap``: the computed null vector's distance from W's last column (up to sign) is within
    `TruncatedSVD.null_error`, which grows as 1/gap."""
    from declarative.derivative import TruncatedSVD

    rng = np.random.default_rng(4)
    N = 30
    Q = np.linalg.qr(rng.standard_normal((N, N)))[0]
    W = np.linalg.qr(rng.standard_normal((N, N)))[0]
    sv = np.concatenate([np.geomspace(3.0, gap, N - 1), [0.0]])
    svd = TruncatedSVD.of((Q * sv) @ W.T)
    assert svd is not None and svd.null.shape == (N, 1)
    exact, got = W[:, -1], svd.null[:, 0]
    err = min(np.linalg.norm(got - exact), np.linalg.norm(got + exact))
    assert err <= svd.null_error
    assert svd.null_error == pytest.approx(64 * np.finfo(float).eps * 3.0 / gap, rel=1e-6)


@pytest.mark.parametrize("B", [1, 7, 300])
def test_products_with_one_entry_a_row_are_scipys(B):
    """`times_t` picks and scales columns of X where each row of M holds at most one stored
    entry (rows without one, factors other than 1, columns read twice or never, a non-finite
    entry in a column no row reads, a transposed X): the same as SciPy's sparse product."""
    import scipy.sparse as sp

    from declarative.compile import times_t

    rng = np.random.default_rng(B)
    r, k = 400, 120  # (past the dense copy's size: the gather plan)
    cols = rng.integers(0, k - 1, r)  # column k - 1 is never read
    vals = rng.choice([1.0, -1.0, 2.5, 0.0], r)
    keep = rng.random(r) < 0.8
    M = sp.csr_matrix((vals[keep], (np.flatnonzero(keep), cols[keep])), shape=(r, k))
    X = rng.standard_normal((B, k))
    X[:, k - 1] = np.inf
    for Xi in (X, np.asfortranarray(X)):
        got = times_t(Xi, M)
        want = np.asarray(M @ Xi.T).T
        assert got.shape == (B, r)
        assert np.all(np.isfinite(got)) and np.array_equal(got, want)
    # a matrix of ones only, every row read
    P = sp.csr_matrix((np.ones(r), (np.arange(r), cols)), shape=(r, k))
    assert np.array_equal(times_t(X, P), X[:, cols])
    # where a row's entry meets an infinity, SciPy's product and ours both give inf · factor
    M2 = sp.csr_matrix(([3.0], ([5], [k - 1])), shape=(r, k))
    assert np.array_equal(times_t(X, M2), np.asarray(M2 @ X.T).T, equal_nan=True)


@pytest.mark.parametrize("split", [False, True])
def test_batch_products_with_a_and_p_are_the_dense_ones(monkeypatch, split):
    """A u, Aᵀ y and P u for a batch (`BatchOps`, summed by `_products`) equal the dense
    matrices' products, for one instance and several, whole or in blocks of instances (7
    instances: blocks of 5 and 2, the kept bins sliced for the second), and in long double
    (refinement's extended precision) to long double's rounding."""
    import declarative.derivative as dv

    layer = every_cone_layer(3)
    t = layer.template
    if split:
        monkeypatch.setattr(dv, "PRODUCT_BLOCK_ENTRIES", 5 * t.nnz)
    rng = np.random.default_rng(1)
    for B in (1, 7):
        ops = dv.BatchOps(t, rng.standard_normal((B, t.nnz)),
                          rng.standard_normal((B, t.P_rows.size)))
        A, P = ops.dense(), ops.dense_P()
        for dtype in (np.float64, np.longdouble):
            tol = 64 * np.finfo(dtype).eps
            u = rng.standard_normal((B, t.n)).astype(dtype)
            y = rng.standard_normal((B, t.m)).astype(dtype)
            for got, M, w in ((ops.A(u), A, u), (ops.AT(y), np.swapaxes(A, 1, 2), y),
                              (ops.P(u), P, u)):
                want = np.einsum("bij,bj->bi", M.astype(dtype), w)
                assert got.dtype == dtype and got.shape == want.shape
                assert np.abs(got - want).max() <= tol * (1 + np.abs(want).max())


def test_batch_ops_of_a_run_of_instances_are_views_and_of_others_copies():
    """`BatchOps.take` of consecutive instances reads the batch's values in place (a view);
    of any other selection (gaps, descending, repeated, one instance, a mask) it copies. Both
    hold exactly the selected instances' values and give their products."""
    import declarative.derivative as dv

    t = every_cone_layer(3).template
    rng = np.random.default_rng(3)
    B = 9
    ops = dv.BatchOps(t, rng.standard_normal((B, t.nnz)), rng.standard_normal((B, t.P_rows.size)))
    u = rng.standard_normal((B, t.n))
    for idx, view in ((np.arange(2, 6), True), (np.arange(B), True), (np.array([1, 2, 4]), False),
                      (np.array([5, 4, 3]), False), (np.array([3, 3, 4]), False),
                      (np.array([7]), False), (np.arange(B) % 2 == 0, False),
                      (np.array([-2, -1]), False), (np.array([-1, 0]), False)):
        sub = ops.take(idx)
        assert np.shares_memory(sub.a, ops.a) is view and np.shares_memory(sub.h, ops.h) is view
        assert np.array_equal(sub.a, ops.a[idx]) and np.array_equal(sub.h, ops.h[idx])
        assert np.array_equal(sub.A(u[idx]), ops.A(u)[idx])
    with pytest.raises(IndexError):
        ops.take(np.array([B - 1, B]))


@pytest.mark.parametrize("split", [False, True])
def test_batch_products_by_block_diagonal_matrices_are_bitwise_the_summed_ones(monkeypatch,
                                                                              split):
    """Where `BatchOps` multiplies by the block-diagonal matrix of the batch's matrices
    (`_block_matrices`, one or several of them), A u, Aᵀ y and P u are bitwise those of
    `_products` (each entry sums its terms in their stored order; on x86-64, whose SciPy
    builds do not fuse a multiply and an add, elsewhere to rounding) and equal the dense
    products; so is a pattern stored in no sorted order (the CSR over a permutation), on
    data spread over 1e-8 … 1e8. The kept index arrays stay within BLOCK_MATRIX_ENTRIES
    also where the matrices have far fewer stored entries than rows."""
    import platform

    import declarative.derivative as dv

    exact = platform.machine().lower() in ("x86_64", "amd64")

    layer = every_cone_layer(3)
    t = layer.template
    monkeypatch.setattr(dv, "BLOCK_PRODUCT_ENTRIES", 1)
    if split:
        monkeypatch.setattr(dv, "BLOCK_MATRIX_ENTRIES",
                            3 * max(t.nnz, t.P_rows.size, t.n, t.m))
    rng = np.random.default_rng(2)

    def spread(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 9, shape)

    for B in (1, 7):
        ops = dv.BatchOps(t, spread(B, t.nnz), spread(B, t.P_rows.size))
        u, y = spread(B, t.n), spread(B, t.m)
        got = (ops.A(u), ops.AT(y), ops.P(u))
        assert set(ops._blocks) == {"A", "P"}
        assert len(ops._blocks["A"]) == (-(-B // 3) if split else 1)
        summed = (dv._products(ops.a, u, ops.cols, ops.rows, t.m),
                  dv._products(ops.a, y, ops.rows, ops.cols, t.n),
                  dv._products(ops.h, u, t.P_cols, t.P_rows, t.n))
        A, P = ops.dense(), ops.dense_P()
        pairs = (("bij,bj->bi", A, u), ("bji,bj->bi", A, y), ("bij,bj->bi", P, u))
        for g, s, (form, M, w) in zip(got, summed, pairs, strict=True):
            size = np.einsum(form, np.abs(M), np.abs(w))  # (rounding is relative to it)
            assert np.array_equal(g, s) if exact else np.all(np.abs(g - s) <= 1e-14 * size)
            assert np.all(np.abs(g - np.einsum(form, M, w)) <= 1e-14 * size)
    # a pattern sorted neither by row nor by column
    n, m, nnz, B = 9, 6, 30, 5
    index, into = rng.integers(0, n, nnz), rng.integers(0, m, nnz)
    values, u = spread(B, nnz), spread(B, n)
    blocks = dv._block_matrices(values, index, into, n, m)
    want = dv._products(values, u, index, into, m)
    got = dv._block_products(blocks, u, m, transpose=False)
    assert np.array_equal(got, want) if exact else np.allclose(got, want, rtol=1e-14, atol=0)
    dense = np.zeros((B, m, n))
    np.add.at(dense, (slice(None), into, index), values)
    y = spread(B, m)
    size = np.einsum("bji,bj->bi", np.abs(dense), np.abs(y))
    err = dv._block_products(blocks, y, n, transpose=True) - np.einsum("bji,bj->bi", dense, y)
    assert np.all(np.abs(err) <= 1e-14 * size)
    # two stored entries among 2,000 rows: the index pointers, not the entries, bound a block
    monkeypatch.undo()
    index, into = np.array([0, 1]), np.array([0, 1])
    blocks = dv._block_matrices(np.ones((8192, 2)), index, into, 2000, 2000)
    assert len(blocks) == 16
    assert all(M.indptr.size <= dv.BLOCK_MATRIX_ENTRIES + 1 for _, _, M, _ in blocks)


@pytest.mark.parametrize("kind", ("lu", "superlu"))
def test_hagers_estimate_of_abs_rows_against_the_inverse(kind):
    """`abs_rows_estimate` against max_i Σ_j |(L S⁻¹)_ij| g_j computed from S⁻¹ formed
    densely, per instance and block of L's rows: never above it (it is some row's exact
    sum, a lower bound), and on these matrices within a factor 3 of it. The matrices are
    graded (rows scaled over 1e-3 … 1e3, columns over 1e2 … 1e-2), and one has a row of
    S⁻¹ whose two large entries have opposite signs against equal g, where a ±1 probe with
    equal signs there sees their difference."""
    from declarative.derivative import _factor_one, _factor_sparse_one, abs_rows_estimate
    rng = np.random.default_rng(0)
    N, R = 30, 7
    blocks = [(0, 3), (3, 4)]
    factors, mats = [], []
    for k in range(6):
        S = rng.standard_normal((N, N)) + 4 * np.eye(N)
        if k % 2:
            S = np.logspace(-3, 3, N)[:, None] * S * np.logspace(2, -2, N)[None, :]
        if k == 5:
            Sinv = np.eye(N)
            Sinv[0, 1], Sinv[0, 2] = 1e3, -1e3  # row 0 of S⁻¹: 1, 1e3, −1e3
            S = np.linalg.inv(Sinv)
        mats.append(S)
        factors.append(_factor_one(S) if kind == "lu" else _factor_sparse_one(sp.csc_matrix(S)))
    W = np.abs(rng.standard_normal((R, N))) * (rng.random((R, N)) < 0.2)
    W[0, 0] = 1.0
    g = np.abs(rng.standard_normal((len(mats), N))) * 1e-16

    def L(D):
        return np.einsum("rn,bnk->brk", W, D)

    def Lt(X):
        return np.einsum("rn,brk->bnk", W, X)

    est = abs_rows_estimate(factors, g, L, Lt, blocks)
    for b, S in enumerate(mats):
        rows = np.abs(W @ np.linalg.inv(S)) @ g[b]
        exact = [rows[lo : lo + size].max() for lo, size in blocks]
        assert np.all(est[b] <= np.array(exact) * (1 + 1e-9)), (b, est[b], exact)
        assert np.all(est[b] >= np.array(exact) / 3), (b, est[b], exact)


def test_exact_ranks_match_sympys_rational_rank():
    """`ranks_exactly` (modulo a prime) gives the rank over the rationals of every leading
    column block of a float matrix whose entries span 1e±30, with columns that are exact
    multiples, rounded sums (not dependent in exact arithmetic), zero rows and subnormals:
    against sympy's exact rank of the same entries as Fractions."""
    from fractions import Fraction

    import sympy

    from declarative.derivative import ranks_exactly

    rng = np.random.default_rng(5)
    for k in range(60):
        n = 5
        M = rng.standard_normal((n, n + 1)) * 10.0 ** rng.integers(-30, 30, (n, n + 1))
        if k % 4 == 0:
            M[:, 3] = M[:, 0] * 2.0 ** rng.integers(-5, 5)
        elif k % 4 == 1:
            M[:, 3] = M[:, 0] + M[:, 1]
        elif k % 4 == 2:
            M[2] = 0.0
            M[:, 5] = M[:, 0] * 4
        else:
            M[1, 2] = 5e-320
        exact = sympy.Matrix([[sympy.Rational(Fraction(v)) for v in row] for row in M])
        assert list(ranks_exactly(M)) == [exact[:, : j + 1].rank() for j in range(n + 1)]
