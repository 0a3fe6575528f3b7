"""Every zoo problem, every parameter: solution and full Jacobian against the closed form.

The closed forms (problems/) are independent of the library; they are checked
against CVXPY+Clarabel and finite differences in test_zoo_closed_forms.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from declarative import problems
from tests.conftest import max_abs, zoo_layer

TIGHT = {"eps_abs": 1e-9, "eps_rel": 1e-9}


def _errors(fwd, inst):
    sol = max(max_abs(o[0], s) for o, s in zip(fwd.outputs, inst.solution, strict=True))
    J = fwd.jacobian(0)
    jac = max(
        max_abs(a, b)
        for row_a, row_b in zip(J, inst.jacobian, strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    )
    return sol, jac


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tight_tolerance_matches_closed_form(zoo_name, seed):
    layer, _, sizes = zoo_layer(zoo_name)
    inst = problems.instance(zoo_name, seed, **sizes)
    sol, jac = _errors(layer.forward(inst.params, solver_args=TIGHT), inst)
    assert sol <= 1e-6 and jac <= 1e-6, (sol, jac)


@pytest.mark.parametrize("seed", [3, 4])
def test_defaults_accurate_to_1e8(zoo_name, seed):
    """No solver arguments at all: refinement makes the default accurate."""
    layer, _, sizes = zoo_layer(zoo_name)
    inst = problems.instance(zoo_name, seed, **sizes)
    sol, jac = _errors(layer.forward(inst.params), inst)
    assert sol <= 1e-8 and jac <= 1e-8, (sol, jac)


def test_torch_vjp_and_jvp_match_closed_form(zoo_name):
    """Through the public torch API: backward gives gᵀJ, torch.func.jvp gives J t."""
    layer, _, sizes = zoo_layer(zoo_name)
    inst = problems.instance(zoo_name, 5, **sizes)
    module = layer.torch()
    rng = np.random.default_rng(0)
    params = [torch.tensor(p, requires_grad=True) for p in inst.params]
    outs = module(*params)
    cot = [rng.standard_normal(s.shape) for s in inst.solution]
    loss = sum((o * torch.tensor(c)).sum() for o, c in zip(outs, cot, strict=True))
    loss.backward()
    for j, p in enumerate(params):
        expected = sum(
            np.tensordot(c, inst.jacobian[i][j], axes=c.ndim) for i, c in enumerate(cot)
        )
        assert max_abs(p.grad.numpy(), expected) <= 1e-8

    tangents = [rng.standard_normal(np.shape(p)) for p in inst.params]
    _, touts = torch.func.jvp(
        lambda *ps: module(*ps),
        tuple(torch.tensor(p) for p in inst.params),
        tuple(torch.tensor(t) for t in tangents),
    )
    for i, tout in enumerate(touts):
        expected = sum(
            np.tensordot(inst.jacobian[i][j], t, axes=t.ndim) for j, t in enumerate(tangents)
        )
        assert max_abs(tout.numpy(), expected) <= 1e-8
