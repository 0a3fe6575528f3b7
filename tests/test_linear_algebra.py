"""The linear-algebra paths agree: dense vs sparse factorization, reused vs fresh."""

from __future__ import annotations

import numpy as np

import problems
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
    assert max_abs(fwd.outputs[0][0], inst.solution[0]) <= 1e-8
    assert max_abs(grad, g @ inst.jacobian[0][0]) <= 1e-8
