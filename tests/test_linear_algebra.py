"""The linear-algebra paths agree: dense vs sparse factorization, reused vs fresh."""

from __future__ import annotations

import numpy as np

from declarative import problems
from declarative.derivative import ConeSolution, use_dense
from declarative.layer import vec
from tests.conftest import max_abs, zoo_layer


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
    layer, _, sizes = zoo_layer("sparsemax", n=40)
    assert not use_dense(layer.template)
    insts = [problems.instance("sparsemax", s, **sizes) for s in range(4)]
    fwd = layer.forward([np.stack([i.params[0] for i in insts])])
    g = fwd.vjp(_cotangent(fwd))[0]
    assert fwd._solution.lin.reused == 4
    x, y, s, _ = fwd.state()
    fresh = ConeSolution.at(fwd._ops, x, y, s)
    assert fresh.lin.reused == 0
    for b, inst in enumerate(insts):
        expected = _cotangent(fwd)[0][b] @ inst.jacobian[0][0]
        assert max_abs(g[b], expected) <= 1e-10


def test_large_sparse_problem_against_closed_form():
    """Sparsemax n = 2000 (S of size 8001): the sparse path with its chosen fill-reducing
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
    lin = fwd._solution.lin
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
