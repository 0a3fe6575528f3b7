"""Failures lose nothing; non-differentiable points warn once and stay well defined."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

import declarative as dl
from declarative import NonDifferentiableWarning, SolverError, problems
from tests.conftest import max_abs, tiny_box_data, tiny_box_layer, zoo_layer


@pytest.fixture(scope="module")
def lp():
    """min c·x  s.t.  x >= lo,  a·x <= hi  (scalar x): feasible, infeasible or unbounded."""
    x, c, lo, a, hi = cp.Variable(), cp.Parameter(), cp.Parameter(), cp.Parameter(), cp.Parameter()
    return dl.compile(cp.Problem(cp.Minimize(c * x), [x >= lo, a * x <= hi]), [c, lo, a, hi], [x])


# instance:        0 solved   1 infeasible  2 unbounded  3 solved  4 solved (upper bound active)
MIXED = [np.array([1.0, 1.0, -1.0, 1.0, -2.0]), np.array([0.0, 2.0, 0.0, 0.5, -1.0]),
         np.array([1.0, 1.0, 0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0, 3.0, 4.0])]
EXPECTED_X = np.array([0.0, np.nan, np.nan, 0.5, 2.0])  # lo if c > 0, hi/a if c < 0


def test_mixed_batch_nan_mode(lp):
    params = [torch.tensor(v, requires_grad=True) for v in MIXED]
    (x,), info = lp.torch()(*params, on_failure="nan", return_info=True)
    assert [str(s) for s in info.status] == ["solved", "infeasible", "unbounded", "solved",
                                             "solved"]
    assert np.array_equal(np.isnan(x.detach().numpy()), np.isnan(EXPECTED_X))
    ok = ~np.isnan(EXPECTED_X)
    assert max_abs(x.detach().numpy()[ok], EXPECTED_X[ok]) <= 1e-8
    x.nansum().backward()
    # dx/dlo = 1 where the lower bound binds, dx/dhi = 1/a where the upper bound binds.
    assert max_abs(params[1].grad, [1.0, 0, 0, 1.0, 0]) <= 1e-8
    assert max_abs(params[3].grad, [0.0, 0, 0, 0, 0.5]) <= 1e-8
    assert max_abs(params[2].grad, [0.0, 0, 0, 0, -1.0]) <= 1e-8  # d(hi/a)/da = -hi/a²


def test_mixed_batch_raise_names_every_failure(lp):
    with pytest.raises(SolverError) as err:
        lp.torch()(*[torch.tensor(v) for v in MIXED])
    assert err.value.failures == {1: "infeasible", 2: "unbounded"}
    assert "2 of 5" in str(err.value) and "1: infeasible" in str(err.value)
    assert "2: unbounded" in str(err.value)


def test_iteration_limit_hits_some_instances_only():
    layer, _, sizes = zoo_layer("qp")
    insts = [problems.instance("qp", s, **sizes) for s in range(10)]
    batch = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
    base = {"eps_abs": 1e-6, "eps_rel": 1e-6, "refine": False}
    alone = [layer.forward(i.params, solver_args=base, on_failure="nan").info.scs_iterations[0]
             for i in insts]
    limit = int(np.median(alone))
    expected_fail = np.array(alone) >= limit
    assert 0 < expected_fail.sum() < len(insts)
    args = {**base, "max_iters": limit}
    fwd = layer.forward(batch, solver_args=args, on_failure="nan")
    assert [s == "iteration_limit" for s in fwd.info.status] == expected_fail.tolist()
    assert np.isnan(fwd.outputs[0][expected_fail]).all()
    g = fwd.vjp([np.ones_like(fwd.outputs[0])])
    assert all(np.all(gi[expected_fail] == 0) for gi in g)
    # the others: exactly what a single solve gives (without refinement, SCS's point is
    # certified as it is, or reported inaccurate: NaN either way in both)
    for b in np.flatnonzero(~expected_fail):
        single = layer.forward(insts[b].params, solver_args=args, on_failure="nan")
        assert fwd.info.status[b] == single.info.status[0] != "iteration_limit"
        assert fwd.info.scs_iterations[b] == single.info.scs_iterations[0]
        np.testing.assert_allclose(fwd.outputs[0][b], single.outputs[0][0], rtol=0, atol=1e-12)
        gs = single.vjp([np.ones_like(single.outputs[0])])
        assert all(max_abs(gi[b], gsi) <= 1e-10 for gi, gsi in zip(g, gs, strict=True))


def test_refinement_rescues_an_early_stop_only_when_certified(lp):
    """From a 1-iteration SCS solution, Newton reaches the exact solution (residual certified);
    an infeasible instance is never promoted to solved."""
    fwd = lp.forward(MIXED, solver_args={"max_iters": 1}, on_failure="nan")
    assert fwd.info.status[1] != "solved" and fwd.info.status[2] != "solved"
    for i in (0, 3, 4):
        if fwd.info.status[i] == "solved":
            assert fwd.info.residual_after[i] <= 1e-8
            assert abs(fwd.outputs[0][i] - EXPECTED_X[i]) <= 1e-8


def _sparsemax(n):
    x, th = cp.Variable(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [cp.sum(x) == 1, x >= 0])
    return dl.compile(prob, [th], [x])


def test_sparsemax_tie_warns_once_and_is_one_sided():
    layer = _sparsemax(4)
    tie = np.array([1.0, 0.0, 0.0, -1.0])       # θ₂ = θ₃ = τ = 0: both weakly active
    regular = np.array([0.6, 0.3, -0.2, 0.0])   # τ = −1/30: support {0, 1, 3}, no tie
    with pytest.warns(NonDifferentiableWarning) as rec:
        fwd = layer.forward([np.stack([tie, regular])])
        J_tie, J_reg = fwd.jacobian(0)[0][0], fwd.jacobian(1)[0][0]
    assert len(rec) == 1
    assert "batch index [0]" in str(rec[0].message) and "strict complementarity" in str(
        rec[0].message)
    # One-sided: the weakly active constraints held active, support {0}: diag(s) − ssᵀ/|S| = 0.
    assert max_abs(J_tie, np.zeros((4, 4))) <= 1e-10
    s = np.array([1.0, 1.0, 0, 1.0])
    assert max_abs(J_reg, np.diag(s) - np.outer(s, s) / 3) <= 1e-10
    # The same derivative whatever rounding does to the tie: perturb below the kink tolerance.
    with pytest.warns(NonDifferentiableWarning):
        J_pert = layer.forward([tie + 1e-13]).jacobian(0)[0][0]
    assert max_abs(J_pert, J_tie) <= 1e-10


def test_lp_with_non_unique_solution_warns_and_is_finite():
    z, c = cp.Variable(3), cp.Parameter(3)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ z), [cp.sum(z) == 1, z >= 0]), [c], [z])
    module = layer.torch()
    ct = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.5, 2.0]], dtype=torch.float64,
                      requires_grad=True)
    with pytest.warns(NonDifferentiableWarning, match=r"index \[0\] the solution is not unique"):
        (zs,) = module(ct)
        (zs * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    assert torch.isfinite(ct.grad).all()
    assert max_abs(zs[1].detach(), [1.0, 0, 0]) <= 1e-8
    assert max_abs(ct.grad[1], np.zeros(3)) <= 1e-8  # a vertex solution: locally constant


def test_regular_problems_do_not_warn(zoo_name):
    """No spurious warnings: e.g. inactive norm constraints make CVXPY's epigraph variables
    non-unique, which must not be reported as a non-differentiable solution map."""
    layer, _, sizes = zoo_layer(zoo_name)
    inst = problems.instance(zoo_name, 0, **sizes)
    x, th = cp.Variable(3), cp.Parameter(3)
    inactive = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [cp.norm(x) <= 10]),
                          [th], [x])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonDifferentiableWarning)
        layer.forward(inst.params).jacobian(0)
        J = inactive.forward([np.array([0.1, 0.2, 0.3])]).jacobian(0)[0][0]
    assert max_abs(J, np.eye(3)) <= 1e-10


def test_return_info_diagnostics():
    layer, _, sizes = zoo_layer("softmax")
    inst = problems.instance("softmax", 0, **sizes)
    (x,), info = layer.torch()(torch.tensor(np.stack([inst.params[0]] * 2)), return_info=True)
    assert [str(s) for s in info.status] == ["solved", "solved"]
    assert (info.scs_iterations > 0).all() and (info.solve_seconds > 0).all()
    assert (info.residual_after <= 1e-10).all()
    assert (info.residual_after <= info.residual_before).all()
    assert set(info.as_dict()) >= {"status", "scs_iterations", "residual_before",
                                   "residual_after", "refine_steps", "solve_seconds"}


def test_uncertified_instances_are_retried_at_a_tight_tolerance():
    """No Newton steps allowed: SCS's loose solution cannot be certified, so the instance is
    solved again at a tight tolerance (warm-started). SCS's eps-1e-9 point still leaves
    entries that are exactly 0 at the solution at ~1e-10 beside slacks of the same size: a
    componentwise backward error near 1, so without refinement it is not certified either;
    one Newton step certifies it. With refinement off (no steps, no retry) SCS's "solved"
    is not taken on its word either."""
    layer, _, sizes = zoo_layer("sparsemax")
    inst = problems.instance("sparsemax", 0, **sizes)
    loose = {"eps_abs": 1e-3, "eps_rel": 1e-3}
    plain = layer.forward(inst.params, solver_args={**loose, "refine": False},
                          on_failure="nan")
    assert plain.info.scs_status[0] == "solved" and plain.info.refine_steps[0] == 0
    assert str(plain.info.status[0]) == "inaccurate" and np.isnan(plain.outputs[0]).all()
    fwd = layer.forward(inst.params, solver_args={**loose, "refine_max_iters": 0},
                        on_failure="nan")
    assert str(fwd.info.status[0]) == "inaccurate" and np.isnan(fwd.outputs[0]).all()
    assert fwd.info.scs_iterations[0] > plain.info.scs_iterations[0]  # the retry ran
    one = layer.forward(inst.params, solver_args={**loose, "refine_max_iters": 1})
    assert str(one.info.status[0]) == "solved" and one.info.residual_after[0] <= 1e-9
    assert max_abs(one.outputs[0][0], inst.solution[0]) <= 1e-12


def test_scs_saying_solved_is_not_enough():
    """Loose SCS, no refinement steps, and a retry that cannot converge: never 'solved'.
    (SCS's own scale 0.1: at the scale the layer calibrates, 30 iterations would suffice.)"""
    layer, _, sizes = zoo_layer("sparsemax")
    inst = problems.instance("sparsemax", 0, **sizes)
    args = {"refine_max_iters": 0, "eps_abs": 1e-3, "eps_rel": 1e-3, "max_iters": 30,
            "scale": 0.1}
    fwd = layer.forward(inst.params, solver_args=args, on_failure="nan")
    assert str(fwd.info.status[0]) in ("inaccurate", "iteration_limit")
    assert np.isnan(fwd.outputs[0]).all()
    with pytest.raises(SolverError, match="0: (inaccurate|iteration_limit)"):
        layer.forward(inst.params, solver_args=args)


def test_non_finite_cotangents_reach_the_gradient_of_their_instance_only():
    """A NaN cotangent on a solved instance gives that instance a NaN gradient (as torch's
    own layers do: overflow checks such as GradScaler rely on it); a failed instance keeps
    zero gradients whatever its cotangent; the others are exact (box projection:
    ∂x/∂θ = diag(lo < θ < hi))."""
    n = 4
    x, th, lo, hi = cp.Variable(n), cp.Parameter(n), cp.Parameter(n), cp.Parameter(n)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [x >= lo, x <= hi]),
                       [th, lo, hi], [x]).torch()
    theta = torch.tensor([[0.2, -2.0, 0.1, 3.0]] * 3, dtype=torch.float64, requires_grad=True)
    lows = torch.tensor([[-1.0] * n, [1.0] * n, [-1.0] * n], dtype=torch.float64)
    highs = torch.tensor([[1.0] * n, [-1.0] * n, [1.0] * n], dtype=torch.float64)  # 1: empty
    (xs,) = layer(theta, lows, highs, on_failure="nan")
    assert torch.isnan(xs[1]).all() and torch.isfinite(xs[[0, 2]]).all()
    g = torch.tensor([[float("nan"), 1.0, 1.0, 1.0], [float("nan")] * n, [1.0, 2.0, 3.0, 4.0]],
                     dtype=torch.float64)
    xs.backward(g)
    assert torch.isnan(theta.grad[0]).any()
    assert (theta.grad[1] == 0).all()
    inside = np.array([1.0, 0.0, 1.0, 0.0])
    assert max_abs(theta.grad[2], np.array([1.0, 2.0, 3.0, 4.0]) * inside) <= 1e-12


def test_a_capped_retry_that_settles_nothing_gets_the_rest_of_max_iters(monkeypatch):
    """SCS's tight retry runs capped (RETRY_ITERS_FACTOR × the loose attempt's iterations);
    an instance nothing settles after it is given the rest of max_iters, warm-started where
    the capped run stopped, so the cap costs no instance the whole max_iters would have
    solved. Here the capped run is made to stop where it started (as a stalled SCS does) and
    the rebalanced and rescaled retries are off: the instances come back solved, against
    the closed form, with more than the cap's iterations. (So is the active-set rescue of
    the first attempt, which settles them before any retry.)"""
    from declarative import layer as L
    from declarative.solve import SolveResult, Status

    layer = tiny_box_layer()
    A, T, truth, _ = tiny_box_data(1e-6, 1e-6)
    cap = 7
    monkeypatch.setattr(L, "ACTIVE_SET_RESCUE", False)
    monkeypatch.setattr(L, "RETRY_ITERS_MIN", cap)
    monkeypatch.setattr(L, "RETRY_ITERS_FACTOR", 0)
    def never(eq, c, b):
        return np.zeros(len(c), bool), eq, c, b

    monkeypatch.setattr(L, "rebalance", never)
    monkeypatch.setattr(L, "recentred", never)
    monkeypatch.setattr(L, "objective_scale", lambda c, a, b, h: np.ones(len(c)))
    real = L.solve_batch
    stalled = []

    def solve_batch(backend, mats, b, c, dims, settings, P=None, warm=None, shared=None):
        if warm is not None and settings["max_iters"] == cap:  # the capped retry: no progress
            stalled.append(len(b))
            k = len(b)
            return SolveResult(warm[0].copy(), warm[1].copy(), warm[2].copy(),
                               [Status.ITERATION_LIMIT] * k, np.full(k, cap), np.zeros(k))
        return real(backend, mats, b, c, dims, settings, P, warm=warm, shared=shared)

    monkeypatch.setattr(L, "solve_batch", solve_batch)
    fwd = layer.forward([A, T], on_failure="nan", solver="scs")
    assert stalled and stalled[0] >= 1
    assert fwd.ok.all()
    np.testing.assert_allclose(fwd.outputs[0], truth, rtol=0, atol=1e-8 * 1e-6)
    assert (fwd.info.scs_iterations > cap + 25).sum() >= stalled[0]


def test_the_tight_retry_stops_early_where_a_fallback_settles_the_instance():
    """min ‖x − a‖² + ‖x‖₁ over a box of half-width ~1e-6 about a ~ 1e-6: one instance's
    tight retry took SCS's whole max_iters (100,000 iterations) before refinement settled it;
    capped, it takes a few thousand, and every instance is still solved, against the closed
    form (iterations, not wall time: the machines are shared)."""
    layer = tiny_box_layer()
    A, T, truth, _ = tiny_box_data(1e-6, 1e-6)
    for solver in (None, "scs"):
        fwd = layer.forward([A, T], on_failure="nan", **({} if solver is None else
                                                        {"solver": solver}))
        assert fwd.ok.all()
        np.testing.assert_allclose(fwd.outputs[0], truth, rtol=0, atol=1e-14)
        assert fwd.info.scs_iterations.max() < 10_000


@pytest.mark.parametrize("scale, rho", [(1e-3, 1e-6), (1.0, 1e-6), (1.0, 1e-7)])
def test_a_ball_of_radius_a_millionth_of_its_centre_is_solved_with_its_jacobian(scale, rho):
    """min c·x s.t. ‖x − a‖ <= r with r = ρ|a|: x = a − r ĉ (ĉ = c/‖c‖), ∂x/∂a = I,
    ∂x/∂r = −ĉ, ∂x/∂c = −(r/‖c‖)(I − ĉĉᵀ). The cone's slack (r, a − x) is ρ beside its
    multiplier, which an interior-point solver leaves inside its cone by more than that:
    v = y − s loses s, and Newton stalls on a singular S until the cone is mirrored."""
    n = 5
    x, a, c = cp.Variable(n), cp.Parameter(n), cp.Parameter(n)
    r = cp.Parameter(nonneg=True)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x), [cp.norm(x - a) <= r]), [a, c, r], [x])
    A, C = (np.concatenate([scale * np.random.default_rng(seed).normal(size=(2, 4, n))[k]
                            for seed in (0, 1)]) for k in (0, 1))
    C /= scale
    R = np.full(len(A), rho * scale)
    fwd = layer.forward([A, C, R], on_failure="nan")
    assert fwd.ok.all(), fwd.info.status
    unit = C / np.linalg.norm(C, axis=1, keepdims=True)
    np.testing.assert_allclose(fwd.outputs[0], A - R[:, None] * unit, rtol=0, atol=1e-15 * scale)
    for i in range(len(A)):
        Ja, Jc, Jr = fwd.jacobian(i)[0]
        np.testing.assert_allclose(Ja, np.eye(n), rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.ravel(Jr), -unit[i], rtol=0, atol=1e-9)
        Jc_exact = -(R[i] / np.linalg.norm(C[i])) * (np.eye(n) - np.outer(unit[i], unit[i]))
        np.testing.assert_allclose(Jc, Jc_exact, rtol=0, atol=1e-6 * np.abs(Jc_exact).max())
