"""The problem zoo's closed forms against CVXPY + Clarabel and against finite differences.

Independent of the ``declarative`` library: only ``problems``, numpy and cvxpy are used.
"""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest

import problems
from problems import ZOO, DegenerateInstanceError, get

NAMES = list(ZOO)
SEEDS = range(10)
FD_SEEDS = range(5)

# Exp-cone solutions are accurate only to ~sqrt(duality gap), hence the very tight gap.
CLARABEL_OPTS = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}
SOLVE_ATOL = 1e-6
FD_STEP = 1e-6
FD_RTOL = 1e-6


def _sample(name: str, seed: int, **sizes: int) -> list[np.ndarray]:
    return get(name).sample(np.random.default_rng(seed), **sizes)


def _clarabel_solution(name: str, params: list[np.ndarray], **sizes: int) -> list[np.ndarray]:
    problem, parameters, variables = get(name).build(**sizes)
    for par, val in zip(parameters, params, strict=True):
        par.value = val
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "may be inaccurate" at 1e-12 tolerances
        problem.solve(solver=cp.CLARABEL, **CLARABEL_OPTS)
    assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), problem.status
    return [np.asarray(v.value) for v in variables]


def _finite_difference_jacobian(name: str, params: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Central differences of the closed-form ``solution`` in every entry of every parameter."""
    module = get(name)
    base = module.solution(*params)
    jac = [[np.zeros(x.shape + p.shape) for p in params] for x in base]
    for j, p in enumerate(params):
        for idx in np.ndindex(p.shape):
            plus = [q.copy() for q in params]
            minus = [q.copy() for q in params]
            plus[j][idx] += FD_STEP
            minus[j][idx] -= FD_STEP
            x_plus, x_minus = module.solution(*plus), module.solution(*minus)
            for i in range(len(base)):
                jac[i][j][(...,) + idx] = (x_plus[i] - x_minus[i]) / (2 * FD_STEP)
    return jac


def _bigger_sizes(name: str) -> dict[str, int]:
    return {k: v + 2 for k, v in get(name).SIZES.items()}


# --------------------------------------------------------------------------- registry


def test_registry_order_and_get():
    assert NAMES[:4] == ["softmax", "sparsemax", "qp", "polytope_projection"]
    for name in NAMES:
        assert get(name) is ZOO[name]
        assert ZOO[name].NAME == name
    with pytest.raises(KeyError) as excinfo:
        get("no_such_problem")
    message = str(excinfo.value)
    assert "no_such_problem" in message
    for name in NAMES:
        assert name in message


@pytest.mark.parametrize("name", NAMES)
def test_module_interface(name):
    module = get(name)
    assert isinstance(module, problems.ZooProblem)
    assert isinstance(module.REFERENCE, str) and module.REFERENCE and "\n" not in module.REFERENCE
    assert isinstance(module.CONES, tuple) and set(module.CONES) <= problems.CONE_KINDS
    assert module.SIZES and all(isinstance(v, int) and v > 0 for v in module.SIZES.values())
    assert module.__doc__ and len(module.__doc__) > 200  # states the closed form
    with pytest.raises(TypeError):
        module.build(not_a_size=3)


# --------------------------------------------------------------------------- build / sample


@pytest.mark.parametrize("name", NAMES)
def test_build_is_dpp_and_shapes_match(name):
    module = get(name)
    problem, parameters, variables = module.build()
    assert problem.is_dcp(dpp=True)
    assert all(isinstance(p, cp.Parameter) for p in parameters)
    assert all(isinstance(v, cp.Variable) for v in variables)
    assert set(problem.parameters()) == set(parameters)
    assert set(problem.variables()) >= set(variables)

    params = _sample(name, 0)
    assert [p.shape for p in params] == [p.shape for p in parameters]
    assert all(p.dtype == np.float64 for p in params)
    solution = module.solution(*params)
    assert [x.shape for x in solution] == [v.shape for v in variables]
    jac = module.jacobian(*params)
    assert len(jac) == len(variables)
    for row, v in zip(jac, variables, strict=True):
        assert [J.shape for J in row] == [v.shape + p.shape for p in parameters]


@pytest.mark.parametrize("name", NAMES)
def test_cones_match_canonical_form(name):
    problem, _, _ = get(name).build()
    dims = problem.get_problem_data(cp.SCS, solver_opts={"use_quad_obj": False})[0]["dims"]
    used = {
        "zero": dims.zero > 0,
        "nonneg": dims.nonneg > 0,
        "soc": len(dims.soc) > 0,
        "exp": dims.exp > 0,
        "psd": len(dims.psd) > 0,
    }
    assert not dims.p3d, "power cones are not a zoo cone kind"
    assert {k for k, v in used.items() if v} == set(get(name).CONES)


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_reproducible(name):
    a, b = _sample(name, 123), _sample(name, 123)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = _sample(name, 124)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_solution_matches_clarabel(name, seed):
    params = _sample(name, seed)
    closed = get(name).solution(*params)
    reference = _clarabel_solution(name, params)
    for x, ref in zip(closed, reference, strict=True):
        assert x.shape == ref.shape
        np.testing.assert_allclose(x, ref, rtol=0, atol=SOLVE_ATOL)


@pytest.mark.parametrize("seed", FD_SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_jacobian_matches_finite_differences(name, seed):
    params = _sample(name, seed)
    closed = get(name).jacobian(*params)
    numeric = _finite_difference_jacobian(name, params)
    for row_c, row_n in zip(closed, numeric, strict=True):
        for Jc, Jn in zip(row_c, row_n, strict=True):
            assert Jc.shape == Jn.shape
            np.testing.assert_allclose(Jc, Jn, rtol=0, atol=FD_RTOL * max(1.0, np.abs(Jn).max()))


@pytest.mark.parametrize("name", NAMES)
def test_non_default_sizes(name):
    sizes = _bigger_sizes(name)
    module = get(name)
    params = module.sample(np.random.default_rng(7), **sizes)
    _, parameters, _ = module.build(**sizes)
    assert [p.shape for p in params] == [p.shape for p in parameters]
    reference = _clarabel_solution(name, params, **sizes)
    for x, ref in zip(module.solution(*params), reference, strict=True):
        np.testing.assert_allclose(x, ref, rtol=0, atol=SOLVE_ATOL)
    numeric = _finite_difference_jacobian(name, params)
    for row_c, row_n in zip(module.jacobian(*params), numeric, strict=True):
        for Jc, Jn in zip(row_c, row_n, strict=True):
            np.testing.assert_allclose(Jc, Jn, rtol=0, atol=FD_RTOL * max(1.0, np.abs(Jn).max()))


def test_instance_helper():
    inst = problems.instance("sparsemax", seed=3)
    params = _sample("sparsemax", 3)
    np.testing.assert_array_equal(inst.params[0], params[0])
    np.testing.assert_array_equal(inst.solution[0], get("sparsemax").solution(*params)[0])


# --------------------------------------------------------------------------- problem specifics


def test_softmax_sampler_keeps_mass_away_from_zero():
    module = get("softmax")
    for seed in range(50):
        (theta,) = _sample("softmax", seed)
        assert module.solution(theta)[0].min() >= 1e-3


def test_sparsemax_sampler_margin_and_support():
    module = get("sparsemax")
    n = module.SIZES["n"]
    for seed in range(50):
        (theta,) = _sample("sparsemax", seed)
        tau = module.threshold(theta)
        assert np.abs(theta - tau).min() >= module.MARGIN / n
        support = int((module.solution(theta)[0] > 0).sum())
        assert 3 <= support <= n - 1


def test_sparsemax_matches_sort_free_bisection():
    module = get("sparsemax")
    (theta,) = _sample("sparsemax", 11)
    lo, hi = theta.min() - 1.0, theta.max()
    for _ in range(200):  # τ is the root of sum(max(θ − τ, 0)) = 1
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(theta - mid, 0).sum() > 1 else (lo, mid)
    np.testing.assert_allclose(module.threshold(theta), 0.5 * (lo + hi), atol=1e-14)


@pytest.mark.parametrize("name", ["qp", "polytope_projection"])
def test_active_set_independent_of_cache(name):
    """The cached active set only accelerates; a cold oracle call gives the same point."""
    module = get(name)
    params = _sample(name, 4)
    warm = module.solution(*params)[0]
    module._ACTIVE_CACHE.clear()
    cold = module.solution(*params)[0]
    np.testing.assert_allclose(warm, cold, rtol=0, atol=1e-13)
    # a wrong cached guess is rejected by the certificate, not trusted
    for key in module._ACTIVE_CACHE:
        module._ACTIVE_CACHE[key] = ~module._ACTIVE_CACHE[key]
    np.testing.assert_allclose(module.solution(*params)[0], cold, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["qp", "polytope_projection"])
def test_active_set_problems_reject_degenerate_instances(name):
    """Make one inactive inequality weakly active (zero slack, zero multiplier)."""
    module = get(name)
    params = [p.copy() for p in _sample(name, 5)]
    x = module.solution(*params)[0]
    G_index, h_index = (4, 5) if name == "qp" else (0, 1)
    G, h = params[G_index], params[h_index]
    slack = h - G @ x
    i = int(np.argmax(slack))
    assert slack[i] > 1e-3
    h[i] = G[i] @ x
    with pytest.raises(DegenerateInstanceError):
        module.jacobian(*params)


def test_qp_equalities_and_kkt_hold_exactly():
    module = get("qp")
    for seed in SEEDS:
        L, q, A, b, G, h = _sample("qp", seed)
        x = module.solution(L, q, A, b, G, h)[0]
        scale = 1.0 + np.abs(x).max()
        assert np.abs(A @ x - b).max() <= 1e-12 * scale * (1 + np.abs(A).max())
        assert (G @ x - h).max() <= 1e-12 * scale * (1 + np.abs(G).max())
