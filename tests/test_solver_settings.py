"""SCS settings the layer chooses for speed (solve.calibrate_scale), asserted on deterministic
quantities (iteration counts, exact equality of repeated calls), never on wall-clock time."""

import numpy as np
import pytest

import declarative as dl
import problems
from declarative.solve import (
    SCALE_CANDIDATES,
    SCS_DEFAULTS,
    SharedData,
    calibrate_scale,
    solve_batch,
)
from tests.conftest import max_abs, zoo_layer


def _batch(name: str, seeds, **sizes):
    layer, _, sizes = zoo_layer(name, **sizes)
    insts = [problems.instance(name, s, **sizes) for s in seeds]
    values = [np.stack([inst.params[k] for inst in insts]) for k in range(len(insts[0].params))]
    return layer, insts, values


@pytest.mark.parametrize("name", ["sparsemax", "softmax", "qp", "polytope_projection"])
def test_calibrated_scale_is_the_fewest_iterations_and_exact(name):
    layer, insts, values = _batch(name, range(3))
    fwd = layer.forward(values)
    scale = layer._scs_scale
    assert scale in SCALE_CANDIDATES
    # the choice: no candidate solves instance 0 (equilibrated, as the layer solves it) in
    # fewer SCS iterations (a direct SCS run each)
    from declarative.equilibrate import equilibrate

    t = layer.template
    theta, _ = layer.batch([v[:1] for v in values])
    c, a, b = t.apply(theta)
    h = t.apply_P(theta)
    c, a, b, h = equilibrate(t, c, a, b, h).data(t, c, a, b, h)
    P = [t.P_matrix(h[0], upper=True)] if t.quadratic else None
    import declarative.solve as solve

    settings = {**SCS_DEFAULTS,
                "linear_solver": solve.linear_solver(t.n, t.m, t.nnz + t.P_rows.size)}
    iters = {s: solve_batch([t.matrix(a[0])], b, c, t.dims, {**settings, "scale": s},
                            P).iterations[0] for s in SCALE_CANDIDATES}
    # SCS checks convergence every 25 iterations; on the equilibrated programs the
    # candidates often tie or differ by one check, which state left by other tests in the
    # same process (BLAS libraries loaded, threads) can flip: allow that one check
    assert iters[scale] <= min(iters.values()) + 25
    again = calibrate_scale(t.matrix(a[0]), b[0], c[0], t.dims, settings,
                            None if P is None else P[0])
    assert iters[again] == min(iters.values())
    # and the solutions are the closed form's, as at any scale
    for k, inst in enumerate(insts):
        assert max_abs(fwd.outputs[0][k], inst.solution[0]) <= 1e-8


def test_calibration_cuts_scs_iterations_on_sparsemax():
    """SCS's default scale 0.1 needs several times more iterations on sparsemax."""
    layer, _, values = _batch("sparsemax", range(8))
    ours = layer.forward(values).info.scs_iterations
    default = layer.forward(values, solver_args={"scale": 0.1}).info.scs_iterations
    assert layer._scs_scale != 0.1
    assert ours.sum() * 2 <= default.sum()


def test_scale_chosen_once_and_repeated_calls_are_identical():
    layer, _, values = _batch("softmax", range(4))
    first = layer.forward(values).outputs[0]
    scale = layer._scs_scale
    other = [v[::-1].copy() for v in values]
    layer.forward(other)
    again = layer.forward(values).outputs[0]
    assert layer._scs_scale == scale
    assert np.array_equal(first, again)


def test_a_user_scale_is_used_and_not_calibrated():
    layer, _, values = _batch("sparsemax", range(2))
    layer = type(layer)(layer.template, layer.parameters, layer.outputs,
                        solver_args={"scale": 10.0})
    fwd = layer.forward(values)
    assert layer._scs_scale is None
    t = layer.template
    theta, _ = layer.batch(values)
    c, a, b = t.apply(theta)
    h = t.apply_P(theta)
    direct = solve_batch([t.matrix(a[i]) for i in range(2)], b, c, t.dims,
                         {**SCS_DEFAULTS, "scale": 10.0},
                         [t.P_matrix(h[i], upper=True) for i in range(2)])
    assert np.array_equal(fwd.info.scs_iterations, direct.iterations)


def _large_sparsemax(n: int, seed: int, B: int = 4):
    import declarative as dl

    problem, params, variables = problems.get("sparsemax").build(n=n)
    layer = dl.compile(problem, params, variables)
    z = np.random.default_rng(seed).normal(size=(B, n))
    return layer, z


def test_refinement_takes_non_monotone_newton_steps():
    """From SCS's loose (eps 1e-3) sparsemax solution a full Newton step can raise ‖F‖ and
    the next one be exact; a monotone line search took 7–11 steps here (n = 2000), the
    watchdog takes at most 4 (the last one taking the componentwise backward error from
    ~1e-12 to the rounding floor), and the result is the closed form."""
    layer, z = _large_sparsemax(2000, 1)
    fwd = layer.forward([z])
    assert all(str(s) == "solved" for s in fwd.info.status)
    assert fwd.info.refine_steps.max() <= 4
    assert fwd.info.scs_iterations.max() <= 100  # no retry at a tight tolerance was needed
    for k in range(len(z)):
        assert max_abs(fwd.outputs[0][k], problems.get("sparsemax").solution(z[k])[0]) <= 1e-12


def test_refinement_gives_up_early_on_a_large_singular_newton_matrix(monkeypatch):
    """n = 5000 (S is 15001 × 15001, too large for a dense SVD): at SCS's loose solution every
    bound is active against Σx = 1, so S is singular. Refinement does not try an LSMR step
    (expensive, and no help): the instance is solved again by SCS at a tight tolerance."""
    import declarative.derivative as der

    calls = []
    real = der._lstsq
    monkeypatch.setattr(der, "_lstsq", lambda *a: calls.append(1) or real(*a))
    layer, z = _large_sparsemax(5000, 1, B=1)
    fwd = layer.forward([z])
    assert str(fwd.info.status[0]) == "solved"
    assert fwd.info.scs_iterations[0] > 100  # the tight retry ran
    assert fwd.info.refine_steps[0] <= 3
    assert not calls
    assert max_abs(fwd.outputs[0][0], problems.get("sparsemax").solution(z[0])[0]) <= 1e-12


@pytest.mark.parametrize("linear_solver", ["qdldl", "cpu_dense"])
@pytest.mark.parametrize("name", ["qp", "softmax", "polytope_projection"])
def test_scs_without_its_python_wrapper_is_the_same_solve(name, linear_solver, monkeypatch):
    """SCS's C extension called with bare CSC arrays (solve._native_scs) solves exactly as
    SCS's public wrapper on SciPy matrices: same iterations, bitwise-equal iterates."""
    import declarative.solve as solve

    layer, _, values = _batch(name, range(3))
    t = layer.template
    theta, _ = layer.batch(values)
    c, a, b = t.apply(theta)
    h = t.apply_P(theta)
    settings = {**SCS_DEFAULTS, "scale": 1.0, "linear_solver": linear_solver}
    assert solve._native_scs(settings) is not None  # the fast path is the one in use here
    fast = solve_batch([t.csc(a[i]) for i in range(3)], b, c, t.dims, settings,
                       [t.P_csc(h[i]) for i in range(3)] if t.quadratic else None)
    monkeypatch.setattr(solve, "_native_ok", dict.fromkeys(solve._NATIVE_MODULES.values()))
    public = solve_batch([t.matrix(a[i]) for i in range(3)], b, c, t.dims, settings,
                         [t.P_matrix(h[i], upper=True) for i in range(3)] if t.quadratic
                         else None)
    assert np.array_equal(fast.iterations, public.iterations)
    for u, v in ((fast.x, public.x), (fast.y, public.y), (fast.s, public.s)):
        assert np.array_equal(u, v)


def test_shared_scs_workspace_is_set_up_once_and_each_solve_is_independent(monkeypatch):
    """Sparsemax's A and P do not depend on z: SCS is set up once per thread for the layer
    (solve.SharedData), and each instance's solution is a function of that instance alone:
    batched, reversed and after pickling bitwise the same, and one at a time the same to
    rounding."""
    import pickle

    import declarative.solve as solve

    _, mod, sizes = zoo_layer("sparsemax")
    layer = dl.compile(*mod.build(**sizes))  # a new layer: zoo_layer's is shared
    insts = [problems.instance("sparsemax", k, **sizes) for k in range(6)]
    values = [np.stack([i.params[0] for i in insts])]
    assert layer.template.fixed_data
    layer.forward(values)  # first call: calibration and the shared base
    assert isinstance(layer._shared, SharedData)
    setups = []
    real = solve._scs_solver
    monkeypatch.setattr(solve, "_scs_solver", lambda *a: setups.append(1) or real(*a))
    out = layer.forward(values).outputs[0]
    again = layer.forward([values[0][::-1]]).outputs[0][::-1]
    single = np.concatenate([layer.forward([values[0][k]]).outputs[0] for k in range(6)])
    assert len(setups) <= solve._CPUS  # no SCS setup per instance: one per worker at most
    assert np.array_equal(out, again)  # other instances, order and threads: no influence
    assert max_abs(out, single) <= 1e-15  # (batch-size-dependent products: rounding only)
    copy = pickle.loads(pickle.dumps(layer))
    assert np.array_equal(copy.forward(values).outputs[0], out)
    for k in range(6):
        assert max_abs(out[k], problems.get("sparsemax").solution(values[0][k])[0]) <= 1e-12


def test_shared_scs_workspace_leaves_failures_to_a_fresh_solve():
    """A fixed-A problem with an infeasible instance: the shared workspace does not solve it,
    a fresh SCS solve says why (infeasible), and the other instances are unaffected."""
    import cvxpy as cp

    x, lo = cp.Variable(2), cp.Parameter(2)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= lo, cp.sum(x) <= 1])
    layer = dl.compile(prob, [lo], [x], on_failure="nan")
    assert layer.template.fixed_data
    layer.forward([np.array([[0.1, 0.2], [0.3, -0.2], [-0.5, 0.4]])])
    assert isinstance(layer._shared, SharedData)  # the first batch found sharing no worse
    lows = np.array([[0.2, 0.1], [0.8, 0.8], [-1.0, 0.3]])
    fwd = layer.forward([lows])
    assert [str(s) for s in fwd.info.status] == ["solved", "infeasible", "solved"]
    assert np.isnan(fwd.outputs[0][1]).all()
    for k in (0, 2):  # the projection of 0 onto {x ≥ lo}: max(lo, 0) (Σ ≤ 1 inactive)
        assert max_abs(fwd.outputs[0][k], np.maximum(lows[k], 0.0)) <= 1e-10


def test_shared_scs_workspace_only_where_it_costs_no_more_iterations():
    """SCS scales b and c by factors fixed at setup, which can suit instances other than the
    one it was set up with less: a layer shares workspaces only where, on its first batch,
    solving instances 1–4 on instance 0's workspace takes no more SCS iterations than fresh
    setups. Checked against those counts, computed here on the layer's (equilibrated)
    programs."""
    import declarative.solve as solve
    from declarative.equilibrate import equilibrate

    for name in ("l2_ball_projection", "sparsemax"):
        _, mod, sizes = zoo_layer(name)
        layer = dl.compile(*mod.build(**sizes))  # a new layer: zoo_layer's is shared
        insts = [problems.instance(name, k, **sizes) for k in range(8)]
        values = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
        assert layer.template.fixed_data and layer._shared is None
        layer.forward(values)
        t = layer.template
        theta, _ = layer.batch(values)
        c, a, b = t.apply(theta)
        h = t.apply_P(theta)
        c, a, b, h = equilibrate(t, c, a, b, h).data(t, c, a, b, h)
        settings = {**SCS_DEFAULTS, "scale": layer._scs_scale,
                    "linear_solver": solve.linear_solver(t.n, t.m, t.nnz + t.P_rows.size)}
        Ps = [t.P_csc(h[i]) for i in range(8)] if t.quadratic else None
        shared = SharedData(t.csc(a[0].copy()), None if Ps is None else Ps[0], b[0].copy(),
                            c[0].copy(), t.dims.scs())
        k = np.arange(1, 5)
        args = ([t.csc(a[i]) for i in k], b[k], c[k], t.dims, settings,
                None if Ps is None else [Ps[i] for i in k])
        fresh, reused = solve_batch(*args), solve_batch(*args, shared=shared)
        expected = reused.iterations.sum() <= fresh.iterations.sum()
        assert isinstance(layer._shared, SharedData) is bool(expected), name


def test_scs_linear_solver_follows_the_kkt_density(monkeypatch):
    """Dense Cholesky for SCS where its KKT matrix is dense (the OptNet QP), QDLDL where it
    is sparse (sparsemax); a user's choice stands."""
    import declarative.solve as solve

    seen = []
    real = solve._scs_solver
    monkeypatch.setattr(solve, "_scs_solver",
                        lambda *a: seen.append(a[4]["linear_solver"]) or real(*a))
    for name, expected in (("qp", "cpu_dense"), ("sparsemax", "qdldl")):
        _, mod, sizes = zoo_layer(name)
        layer = dl.compile(*mod.build(**sizes))  # a new layer: no SCS workspaces yet
        insts = [problems.instance(name, k, **sizes) for k in range(2)]
        values = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
        seen.clear()
        layer.forward(values, solver_args={"scale": 1.0})
        assert set(seen) == {expected}
        seen.clear()
        layer.forward(values, solver_args={"scale": 1.0, "linear_solver": "qdldl"})
        assert set(seen) <= {"qdldl"}  # (sparsemax: SCS workspaces from the first call)
        assert seen or name == "sparsemax"
