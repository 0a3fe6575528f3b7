"""SCS settings the layer chooses for speed, asserted on deterministic quantities (iteration
counts, exact equality of repeated calls), never on wall-clock time."""

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
import declarative.backends.scs as scs_backend
import declarative.parallel as parallel
from declarative import problems
from declarative.backends.scs import SCS, SCS_DEFAULTS, SharedData
from declarative.equilibrate import equilibrate
from declarative.solve import SCALE_CANDIDATES, solve_batch
from tests.conftest import max_abs, zoo_layer


def _batch(name: str, seeds, **sizes):
    layer, _, sizes = zoo_layer(name, **sizes)
    insts = [problems.instance(name, s, **sizes) for s in seeds]
    values = [np.stack([inst.params[k] for inst in insts]) for k in range(len(insts[0].params))]
    return layer, insts, values


def _equilibrated(layer, values):
    """The layer's programs as SCS receives them: (c, A values, b, P values)."""
    t = layer.template
    theta, _ = layer.batch(values)
    c, a, b = t.apply(theta)
    h = t.apply_P(theta)
    return equilibrate(t, c, a, b, h).data(t, c, a, b, h)


@pytest.mark.parametrize("name", ["sparsemax", "softmax"])
def test_calibrated_scale_cuts_scs_iterations(name):
    """SCS's own default scale 0.1 needs at least twice the iterations of the layer's
    calibrated one on the equilibrated sparsemax and softmax programs; both give the closed
    form. The calibration is the fewest iterations among the candidates on the layer's
    template instance (`Layer._calibrate`)."""
    # (sparsemax at n = 100: at the zoo's n = 8 both scales take 25-50 iterations)
    layer, insts, values = _batch(name, range(8), **({"n": 100} if name == "sparsemax" else {}))
    ours = layer.forward(values)
    default = layer.forward(values, solver_args={"scale": 0.1})
    assert ours.info.scs_iterations.sum() * 2 <= default.info.scs_iterations.sum()
    assert layer.tuning.scale in SCALE_CANDIDATES
    for fwd in (ours, default):
        for k, inst in enumerate(insts):
            assert max_abs(fwd.outputs[0][k], inst.solution[0]) <= 1e-8


def test_results_do_not_depend_on_the_call_history_or_the_layer_object():
    """Two layers of one problem whose first calls differ (batches, order, sizes) give
    bitwise-equal outputs and gradients for the same input: nothing is decided from data."""
    for name in ("softmax", "qp"):
        _, mod, sizes = zoo_layer(name)
        insts = [problems.instance(name, k, **sizes) for k in range(6)]
        values = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
        one, two = dl.compile(*mod.build(**sizes)), dl.compile(*mod.build(**sizes))
        one.forward([v[3:] for v in values])
        two.forward([v[::-1][:4] for v in values])
        two.forward([v[5] for v in values])
        f1, f2 = one.forward(values), two.forward(values)
        g = [np.ones_like(o) for o in f1.outputs]
        assert all(np.array_equal(a, b) for a, b in zip(f1.outputs, f2.outputs, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(f1.vjp(g), f2.vjp(g), strict=True))


def test_a_user_scale_is_used():
    layer, _, values = _batch("sparsemax", range(2))
    layer = type(layer)(layer.template, layer.parameters, layer.outputs,
                        solver_args={"scale": 10.0})
    fwd = layer.forward(values)
    t = layer.template
    c, a, b, h = _equilibrated(layer, values)
    direct = solve_batch(SCS, [t.matrix(a[i]) for i in range(2)], b, c, t.dims,
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
    """n = 5000 (S is 10001 × 10001, too large for a dense SVD): at SCS's loose solution with
    its own default scale 0.1, every bound is active against Σx = 1, so S is singular.
    Refinement does not try an LSMR step (expensive, and no help): the instance is solved
    again by SCS at a tight tolerance."""
    import declarative.derivative as der

    calls = []
    real = der._lstsq
    monkeypatch.setattr(der, "_lstsq", lambda *a: calls.append(1) or real(*a))
    layer, z = _large_sparsemax(5000, 1, B=1)
    fwd = layer.forward([z], solver_args={"scale": 0.1})
    assert str(fwd.info.status[0]) == "solved"
    assert fwd.info.scs_iterations[0] > 100  # the tight retry ran
    assert fwd.info.refine_steps[0] <= 4  # the watchdog's bound (see the test above)
    assert not calls
    assert max_abs(fwd.outputs[0][0], problems.get("sparsemax").solution(z[0])[0]) <= 1e-12


@pytest.mark.parametrize("linear_solver", ["qdldl", "cpu_dense"])
@pytest.mark.parametrize("name", ["qp", "softmax", "polytope_projection"])
def test_scs_without_its_python_wrapper_is_the_same_solve(name, linear_solver, monkeypatch):
    """SCS's C extension called with bare CSC arrays (scs._native_scs) solves exactly as
    SCS's public wrapper on SciPy matrices: same iterations, bitwise-equal iterates."""
    layer, _, values = _batch(name, range(3))
    t = layer.template
    theta, _ = layer.batch(values)
    c, a, b = t.apply(theta)
    h = t.apply_P(theta)
    settings = {**SCS_DEFAULTS, "scale": 1.0, "linear_solver": linear_solver}
    assert scs_backend._native_scs(settings) is not None  # the fast path is in use here
    fast = solve_batch(SCS, [t.csc(a[i]) for i in range(3)], b, c, t.dims, settings,
                       [t.P_csc(h[i]) for i in range(3)] if t.quadratic else None)
    monkeypatch.setattr(scs_backend, "_native_ok",
                        dict.fromkeys(scs_backend._NATIVE_MODULES.values()))
    public = solve_batch(SCS, [t.matrix(a[i]) for i in range(3)], b, c, t.dims, settings,
                         [t.P_matrix(h[i], upper=True) for i in range(3)] if t.quadratic
                         else None)
    assert np.array_equal(fast.iterations, public.iterations)
    for u, v in ((fast.x, public.x), (fast.y, public.y), (fast.s, public.s)):
        assert np.array_equal(u, v)


def test_shared_scs_workspace_is_set_up_once_and_each_solve_is_independent(monkeypatch):
    """Sparsemax's A and P do not depend on z: SCS is set up once per thread for the layer
    (backends.scs.SharedData), and each instance's solution is a function of that instance
    alone: batched, reversed and after pickling bitwise the same, and one at a time the same
    to rounding."""
    import pickle

    _, mod, sizes = zoo_layer("sparsemax")
    layer = dl.compile(*mod.build(**sizes))  # a new layer: zoo_layer's is shared
    insts = [problems.instance("sparsemax", k, **sizes) for k in range(6)]
    values = [np.stack([i.params[0] for i in insts])]
    assert layer.template.fixed_data
    layer.forward(values)  # first call: the shared workspace is made
    assert layer.tuning.share_workspaces is True
    setups = []
    real = scs_backend._scs_solver
    monkeypatch.setattr(scs_backend, "_scs_solver", lambda *a: setups.append(1) or real(*a))
    out = layer.forward(values).outputs[0]
    again = layer.forward([values[0][::-1]]).outputs[0][::-1]
    single = np.concatenate([layer.forward([values[0][k]]).outputs[0] for k in range(6)])
    assert len(setups) <= parallel._CPUS  # no SCS setup per instance: one per worker at most
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
    assert layer.tuning.share_workspaces is True
    lows = np.array([[0.2, 0.1], [0.8, 0.8], [-1.0, 0.3]])
    fwd = layer.forward([lows])
    assert [str(s) for s in fwd.info.status] == ["solved", "infeasible", "solved"]
    assert np.isnan(fwd.outputs[0][1]).all()
    for k in (0, 2):  # the projection of 0 onto {x ≥ lo}: max(lo, 0) (Σ ≤ 1 inactive)
        assert max_abs(fwd.outputs[0][k], np.maximum(lows[k], 0.0)) <= 1e-10


def test_shared_scs_workspace_costs_few_iterations_on_the_zoo():
    """A workspace set up from A and P alone (b₀ = c₀ = 0; SCS fixes its scaling of b and c
    at setup) solves the fixed-data zoo problems' instances in at most 20% more SCS
    iterations than fresh setups (measured: equal on sparsemax, softmax and the box, 350
    against 300 on the l2 ball), while saving every setup but one per thread."""
    for name in ("sparsemax", "softmax", "l2_ball_projection", "box_projection"):
        _, mod, sizes = zoo_layer(name)
        layer = dl.compile(*mod.build(**sizes))
        insts = [problems.instance(name, k, **sizes) for k in range(8)]
        values = [np.stack([i.params[j] for i in insts]) for j in range(len(insts[0].params))]
        layer.forward(values)
        tuning = layer.tuning
        assert tuning.share_workspaces is True
        t = layer.template
        c, a, b, h = _equilibrated(layer, values)
        settings = {**SCS_DEFAULTS, "scale": tuning.scale,
                    "linear_solver": tuning.linear_solver}
        Ps = [t.P_csc(h[i]) for i in range(8)] if t.quadratic else None
        args = (SCS, [t.csc(a[i]) for i in range(8)], b, c, t.dims, settings, Ps)
        fresh = solve_batch(*args)
        shared = SCS.share(args[1][0], None if Ps is None else Ps[0], t.dims)
        assert isinstance(shared, SharedData)
        reused = solve_batch(*args, shared=shared)
        assert reused.iterations.sum() <= 1.2 * fresh.iterations.sum(), name


def test_scs_linear_solver_follows_the_kkt_density(monkeypatch):
    """Dense Cholesky for SCS where its KKT matrix is dense (the OptNet QP), QDLDL where it
    is sparse (sparsemax); a user's choice stands."""
    seen = []
    real = scs_backend._scs_solver
    monkeypatch.setattr(scs_backend, "_scs_solver",
                        lambda *a: seen.append(a[4]["linear_solver"]) or real(*a))
    for name, expected in (("qp", "cpu_dense"), ("sparsemax", "qdldl")):
        # (sparsemax at n = 100: at the zoo's n = 8 its KKT matrix is a fifth full)
        _, mod, sizes = zoo_layer(name, **({"n": 100} if name == "sparsemax" else {}))
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


def test_a_scale_no_template_instance_settles_does_not_depend_on_the_first_call():
    """Where neither of the template's pseudo-random instances is solved (here both are
    infeasible: x >= θ and x <= −θ need θ <= 0, and those draws are positive or of mixed
    sign), SCS's scale is its default, not one calibrated on whichever call came first: two
    layers whose first calls differ give bitwise-equal outputs and gradients."""
    n = 6
    theta, a = cp.Parameter(n), cp.Parameter(n)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a) + cp.sum(cp.abs(x))),
                      [x >= theta, x <= -theta])
    rng = np.random.default_rng(3)
    # (a first call on the second set alone would calibrate 0.3, on the first 1)
    sets = [[-np.abs(rng.standard_normal((5, n))), rng.standard_normal((5, n)) * w]
            for w in (1.0, 100.0)]
    one, two, three = (dl.compile(prob, [theta, a], [x]) for _ in range(3))
    one.forward(sets[0])
    two.forward(sets[1])
    three.forward(sets[0], solver_args={"eps": 1e-9, "max_iters": 100_000})  # (not its own)
    assert one.tuning.scale == two.tuning.scale == three.tuning.scale
    for values in sets:
        f1, f2 = one.forward(values), two.forward(values)
        assert np.all(f1.ok) and np.all(f2.ok)
        g = [np.cos(np.arange(o.size)).reshape(o.shape) for o in f1.outputs]
        for u, w in zip(f1.outputs + f1.vjp(g), f2.outputs + f2.vjp(g), strict=True):
            np.testing.assert_array_equal(u, w)
        # the solution: x = clip(a − sign·½, θ, −θ) (soft threshold, then the box)
        soft = np.sign(values[1]) * np.maximum(np.abs(values[1]) - 0.5, 0.0)
        want = np.clip(soft, values[0], -values[0])
        assert max_abs(f1.outputs[0], want) <= 1e-8 * max(1.0, np.abs(want).max())
