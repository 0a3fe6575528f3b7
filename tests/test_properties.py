"""Property tests (hypothesis): random instances of every zoo problem, at default settings.

Hypothesis draws the seeds of the problems' samplers (which only produce instances where
the solution map is differentiable) and batch compositions; each example checks accuracy
against the closed form and that a batched call equals a loop of single calls.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declarative import problems
from tests.conftest import max_abs, zoo_layer

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@SETTINGS
@given(seed=seeds)
def test_accuracy_at_defaults(zoo_name, seed):
    layer, _, sizes = zoo_layer(zoo_name)
    inst = problems.instance(zoo_name, seed, **sizes)
    fwd = layer.forward(inst.params)
    for o, s in zip(fwd.outputs, inst.solution, strict=True):
        assert max_abs(o[0], s) <= 1e-8
    for row, ref_row in zip(fwd.jacobian(0), inst.jacobian, strict=True):
        for J, ref in zip(row, ref_row, strict=True):
            assert max_abs(J, ref) <= 1e-8


@SETTINGS
@given(batch_seeds=st.lists(seeds, min_size=1, max_size=4), data=st.data())
def test_batched_equals_looped(zoo_name, batch_seeds, data):
    layer, _, sizes = zoo_layer(zoo_name)
    insts = [problems.instance(zoo_name, s, **sizes) for s in batch_seeds]
    # Hypothesis also decides which parameters are batched (the rest broadcast from instance 0).
    P = len(insts[0].params)
    batched = data.draw(st.lists(st.booleans(), min_size=P, max_size=P))
    values = [np.stack([i.params[j] for i in insts]) if batched[j] else insts[0].params[j]
              for j in range(P)]
    # Mixing parameters of different instances can make a coupled problem (qp, polytope)
    # infeasible: then the batched and the looped call must agree on that too.
    fwd = layer.forward(values, on_failure="nan")
    rng = np.random.default_rng(0)
    cot = [rng.standard_normal(o.shape) for o in fwd.outputs]
    grads = fwd.vjp(cot)
    loop_grads = [np.zeros_like(g) for g in grads]
    for b in range(len(insts)):
        single_vals = [values[j][b] if batched[j] else values[j] for j in range(P)]
        single = layer.forward(single_vals, on_failure="nan")
        assert fwd.info.status[b if any(batched) else 0] == single.info.status[0]
        for o, so in zip(fwd.outputs, single.outputs, strict=True):
            ob = o[b if any(batched) else 0]
            assert np.array_equal(np.isnan(ob), np.isnan(so[0]))
            assert max_abs(np.nan_to_num(ob), np.nan_to_num(so[0])) <= 1e-10
        if not any(batched):
            break
        sg = single.vjp([c[b][None] for c in cot])
        for j in range(P):
            if batched[j]:
                loop_grads[j][b] = sg[j]
            else:
                loop_grads[j] += sg[j]
    if any(batched):
        for g, lg in zip(grads, loop_grads, strict=True):
            assert max_abs(g, lg) <= 1e-8 * (1 + np.abs(lg).max())
