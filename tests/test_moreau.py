"""Moreau behind the solver seam (one batched call per batch), the layer's choice of solver
(from its template; timed by `tune`), and the stacked inverses that small dense systems are
solved with.

References: the zoo's closed forms, SCS through the same refinement, NumPy's dense solves.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
import declarative.derivative as derivative
from declarative import problems
from declarative.backends import moreau as moreau_backend
from declarative.errors import ProblemError
from tests.conftest import every_cone_layer, max_abs, zoo_layer


def _values(name: str, seeds):
    _, mod, sizes = zoo_layer(name)
    insts = [problems.instance(name, s, **sizes) for s in seeds]
    return insts, [np.stack([i.params[k] for i in insts]) for k in range(len(insts[0].params))]


def test_moreau_agrees_with_the_closed_form_and_scs_on_the_zoo(zoo_name):
    """Every zoo problem (every cone kind: PSD blocks in Moreau's upper-triangle order, dual
    exponential and power cones through the row map), with each method that applies: every
    instance ``solved``, outputs within 1e-8 of the closed form, VJPs and JVPs within 1e-8 of
    SCS's (both refined and differentiated by the same code)."""
    layer, _, _ = zoo_layer(zoo_name)
    dims = layer.template.dims
    insts, values = _values(zoo_name, (3, 4, 5))
    rng = np.random.default_rng(0)
    tan = [rng.standard_normal(v.shape) for v in values]
    ref = layer.forward(values, solver="scs")
    cot = [rng.standard_normal(o.shape) for o in ref.outputs]
    ref_vjp, ref_jvp = ref.vjp(cot), ref.jvp(tan)
    methods = ["ipm", "active_set"] if dims.polyhedral else ["ipm"]
    for method in methods:
        fwd = layer.forward(values, solver="moreau", solver_args={"method": method})
        assert [str(s) for s in fwd.info.status] == ["solved"] * 3, method
        for k, inst in enumerate(insts):
            for out, sol in zip(fwd.outputs, inst.solution, strict=True):
                assert max_abs(out[k], sol) <= 1e-8, method
        for u, v in zip(fwd.vjp(cot), ref_vjp, strict=True):
            assert max_abs(u, v) <= 1e-8, method
        for u, v in zip(fwd.jvp(tan), ref_jvp, strict=True):
            assert max_abs(u, v) <= 1e-8, method


def test_moreau_keeps_every_other_instance_when_one_fails():
    """One infeasible instance in a batch solved in one Moreau call: it alone is reported
    (infeasible, NaN), the others are solved exactly (box projection: clip)."""
    n = 4
    x, theta, lo, hi = cp.Variable(n), cp.Parameter(n), cp.Parameter(n), cp.Parameter(n)
    box = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [x >= lo, x <= hi]),
                     [theta, lo, hi], [x], solver="moreau", on_failure="nan")
    rng = np.random.default_rng(1)
    th = 2 * rng.standard_normal((3, n))
    lo_v, hi_v = -np.ones((3, n)), np.ones((3, n))
    lo_v[1] = 2.0  # lo > hi: infeasible
    fwd = box.forward([th, lo_v, hi_v])
    assert [str(s) for s in fwd.info.status] == ["solved", "infeasible", "solved"]
    assert np.isnan(fwd.outputs[0][1]).all()
    for k in (0, 2):
        assert max_abs(fwd.outputs[0][k], np.clip(th[k], -1, 1)) <= 1e-9


def test_moreau_settings_are_checked_and_named():
    layer, _, _ = zoo_layer("sparsemax")
    _, values = _values("sparsemax", (0,))
    with pytest.raises(ProblemError, match="method"):
        layer.forward(values, solver="moreau", solver_args={"method": "simplex"})
    with pytest.raises(ProblemError, match="max_iter"):
        layer.forward(values, solver="moreau", solver_args={"max_iters": 10})
    soft, _, _ = zoo_layer("softmax")
    with pytest.raises(ProblemError, match="active-set"):
        soft.forward(_values("softmax", (0,))[1], solver="moreau",
                     solver_args={"method": "active_set"})
    psd = problems.get("psd_projection")
    with pytest.raises(ProblemError, match="active-set"):
        dl.compile(*psd.build(**psd.SIZES), solver="moreau", solver_args={"method": "active_set"})


def test_the_default_solver_is_decided_from_the_template():
    """Without ``solver=``, the tuning's solver is open until the first call, then decided
    from the template alone: Moreau's active-set method from DEFAULT_BATCH_FROM instances
    on for a small program with only zero and nonnegative cones and few inequalities, SCS
    otherwise (sparsemax: 100 inequalities; softmax: exponential cones); solver settings
    without a solver name are SCS's. Both sides of batch_from agree with the closed form."""
    from declarative.layer import DEFAULT_BATCH_FROM

    mod = problems.get("polytope_projection")
    layer = dl.compile(*mod.build(**mod.SIZES))
    assert layer.tuning.solver is None
    insts, values = _values("polytope_projection", range(DEFAULT_BATCH_FROM + 1))
    out = layer.forward(values).outputs[0]
    chosen = layer.tuning
    assert (chosen.solver, chosen.method, chosen.batch_from) == (
        "moreau", "active_set", DEFAULT_BATCH_FROM)
    small = layer.forward([v[:2] for v in values]).outputs[0]
    for k, inst in enumerate(insts):
        assert max_abs(out[k], inst.solution[0]) <= 1e-8
        if k < 2:
            assert max_abs(small[k], inst.solution[0]) <= 1e-8
    assert (layer.tuning.solver, layer.tuning.batch_from) == ("moreau", DEFAULT_BATCH_FROM)
    assert dl.compile(*mod.build(**mod.SIZES), solver_args={"eps": 1e-6}).tuning.solver == "scs"
    for name, sizes in (("sparsemax", {"n": 100}), ("softmax", {})):
        other = problems.get(name)
        sizes = {**other.SIZES, **sizes}
        lay = dl.compile(*other.build(**sizes))
        lay.forward(problems.instance(name, 0, **sizes).params)
        assert lay.tuning.solver == "scs" and lay.tuning.batch_from is None


def test_tune_times_the_solvers_on_the_sample():
    """`Layer.tune`: the solver (and Moreau's method, and where Moreau wins the batch size
    from which it does) timed on the sample; every choice certifies the sample."""
    mod = problems.get("polytope_projection")
    layer = dl.compile(*mod.build(**mod.SIZES))
    insts, values = _values("polytope_projection", range(32))
    tuning = layer.tune(values)
    assert (tuning.solver, tuning.method) in layer._solver_candidates()
    assert tuning.batch_from is None or (tuning.solver == "moreau" and tuning.batch_from >= 2)
    fwd = layer.forward(values)
    for k, inst in enumerate(insts):
        assert max_abs(fwd.outputs[0][k], inst.solution[0]) <= 1e-8


def test_stacked_inverses_solve_like_lu_and_fall_back_where_singular():
    """`_factor_stack` on small dense S: regular ones solve (both ways) as NumPy's LU does,
    with the exact 1-norm condition number; a singular one and a non-finite one go through
    `_factor_one` (its SVD; none); `Linearization.solve` and `newton_correction` batch the
    regular ones and agree with per-instance solves."""
    rng = np.random.default_rng(0)
    N = 9
    S = rng.standard_normal((5, N, N)) + 3 * np.eye(N)
    S[2, :, 0] = S[2, :, 1]  # singular
    S[4, 0, 0] = np.nan
    fs = derivative._factor_stack(S.copy())
    rhs = rng.standard_normal((5, N))
    for j in (0, 1, 3):
        assert type(fs[j].lu) is derivative.Inverse
        cond = np.linalg.norm(S[j], 1) * np.linalg.norm(np.linalg.inv(S[j]), 1)
        assert abs(fs[j].rcond * cond - 1) <= 1e-10
        assert max_abs(derivative._lu_solve(fs[j], rhs[j], False),
                       np.linalg.solve(S[j], rhs[j])) <= 1e-12
        assert max_abs(derivative._lu_solve(fs[j], rhs[j], True),
                       np.linalg.solve(S[j].T, rhs[j])) <= 1e-12
    assert fs[2].pinv is not None and not fs[2].rcond > derivative.RCOND_MIN
    assert fs[4].lu is None
    corr = derivative.newton_correction(fs, rhs)
    for j in (0, 1, 3):
        assert max_abs(corr[j], -np.linalg.solve(S[j], rhs[j])) <= 1e-12
    assert np.isnan(corr[4]).all()
    assert max_abs(corr[2], -np.linalg.lstsq(S[2], rhs[2], rcond=None)[0]) <= 1e-10


def test_a_polyhedral_programs_stacked_inverses_through_its_active_rows():
    """S of a polyhedral program (DΠ a diagonal of 0s and 1s: S = [[P, AᵀD], [−A, I − D]])
    inverted through the system of its active rows (`_invert_reduced`) agrees with NumPy's
    inverse of S itself, in groups of different active counts (none, some, all), with the
    same exact condition numbers; an S that is singular through its active rows (two equal
    ones) and one whose v-block is not 0s and 1s (taken whole) are handled as before."""
    rng = np.random.default_rng(1)
    n, m = 14, 12
    N = n + m
    assert N >= derivative.REDUCE_MIN
    stack = []
    for j in range(9):
        L = rng.standard_normal((n, n)) / np.sqrt(n)
        A = rng.standard_normal((m, n))
        d = (rng.random(m) < [0.0, 0.3, 0.3, 0.6, 1.0, 0.3, 0.3, 0.3, 0.3][j]).astype(float)
        if j == 6:  # two active rows equal: S singular
            d[:2] = 1.0
            A[1] = A[0]
        S = np.zeros((N, N))
        S[:n, :n] = L @ L.T + 0.1 * np.eye(n)
        S[:n, n:] = A.T * d
        S[n:, :n] = -A
        S[n:, n:] = np.diag(1.0 - d)
        if j == 7:  # not 0s and 1s on the v-block's diagonal
            S[n + 3, n + 3] = 0.5
        stack.append(S)
    S = np.array(stack)
    whole = derivative._factor_stack(S.copy())
    fs = derivative._factor_stack(S.copy(), n=n)
    for j in range(9):
        if j == 6:
            assert not fs[j].rcond > derivative.RCOND_MIN and fs[j].pinv is not None
            continue
        assert type(fs[j].lu) is derivative.Inverse
        ref = np.linalg.inv(S[j])
        assert max_abs(fs[j].lu.inv, ref) <= 1e-10 * np.abs(ref).max()
        assert abs(fs[j].rcond / whole[j].rcond - 1) <= 1e-10


def test_every_cone_kind_in_one_program_keeps_its_rows():
    """A program with zero, nonnegative, second-order, PSD, exponential and power cones (in
    SCS's order): Moreau's own solution already nearly satisfies our residual map (a row
    out of place would leave an O(1) residual), and after refinement every output agrees
    with SCS's to 1e-8, every instance solved."""
    k = 3
    layer = every_cone_layer(k)
    dims = layer.template.dims
    assert dims.zero and dims.nonneg and dims.soc and dims.psd and dims.exp and dims.power
    rng = np.random.default_rng(0)
    Yv = rng.standard_normal((4, k, k))
    Yv = (Yv + Yv.transpose(0, 2, 1)) / 2
    av = rng.standard_normal((4, 3))
    ref = layer.forward([Yv, av], solver="scs")
    fwd = layer.forward([Yv, av], solver="moreau")
    assert [str(s) for s in fwd.info.status] == ["solved"] * 4
    assert fwd.info.residual_before.max() <= 1e-3
    for p, q in zip(fwd.outputs, ref.outputs, strict=True):
        assert max_abs(p, q) <= 1e-8


def test_scs_takes_over_what_the_chosen_moreau_leaves(monkeypatch):
    """Where the probe chose Moreau, an instance it leaves neither certified nor shown
    infeasible is solved by SCS (every one solved, closed form to 1e-8); a solver the user
    named is not replaced (the same failure is reported)."""
    from declarative.layer import DEFAULT_BATCH_FROM

    B = DEFAULT_BATCH_FROM
    insts, values = _values("polytope_projection", range(B))
    mod = problems.get("polytope_projection")
    monkeypatch.setattr(moreau_backend.MoreauBackend, "solve_many",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("broken")))
    chosen = dl.compile(*mod.build(**mod.SIZES))
    fwd = chosen.forward(values)
    assert chosen.tuning.solver == "moreau"
    assert [str(s) for s in fwd.info.status] == ["solved"] * B
    for k, inst in enumerate(insts):
        assert max_abs(fwd.outputs[0][k], inst.solution[0]) <= 1e-8
    named = dl.compile(*mod.build(**mod.SIZES), solver="moreau", on_failure="nan")
    assert [str(s) for s in named.forward(values).info.status] == ["failed"] * B


def test_small_calls_use_scs_below_batch_from(monkeypatch):
    """``Tuning.batch_from``: calls with fewer instances are solved by SCS, the others by
    the tuning's solver (counted on Moreau's calls); both to the closed form. Invalid
    values are named."""
    mod = problems.get("polytope_projection")
    layer = dl.compile(*mod.build(**mod.SIZES),
                       tuning=dl.Tuning(solver="moreau", method="active_set", batch_from=3))
    calls = []
    real = moreau_backend.MoreauBackend.solve_many
    monkeypatch.setattr(moreau_backend.MoreauBackend, "solve_many",
                        lambda self, *a, **k: calls.append(len(a[1])) or real(self, *a, **k))
    insts, values = _values("polytope_projection", (0, 1, 2))
    small = layer.forward([v[:2] for v in values])
    assert calls == []
    whole = layer.forward(values)
    assert calls == [3]
    layer.forward([v[:2] for v in values], solver="moreau")
    assert calls == [3, 2]  # a call's own solver wins
    for k, inst in enumerate(insts):
        assert max_abs(whole.outputs[0][k], inst.solution[0]) <= 1e-8
        if k < 2:
            assert max_abs(small.outputs[0][k], inst.solution[0]) <= 1e-8
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ProblemError, match="batch_from"):
            dl.Tuning(batch_from=bad)


def test_moreau_reads_a_batch_of_matrices_as_the_list_of_its_instances():
    """A batch given as stacked values (`compile.CSCBatch`, what the layer passes) and as a
    list of one matrix per instance give Moreau the same programs: the same points and
    statuses, and every instance's A and P (upper triangle) as the template makes it alone.
    Instances picked from the batch (a retry's) are those instances."""
    from declarative.compile import CSC, pick
    from declarative.solve import solve_batch

    layer, _, _ = zoo_layer("polytope_projection")
    t = layer.template
    _, values = _values("polytope_projection", range(5))
    theta, _ = layer.batch(values)
    c, a, b = t.apply(theta)
    h = t.apply_P(theta)
    mats, Ps = t.csc_batch(a), t.P_csc_batch(h)
    for i in range(5):
        one, P1 = t.csc(a[i]), t.P_csc(h[i])
        for got, want in ((mats[i], one), (Ps[i], P1)):
            assert isinstance(got, CSC) and got.shape == want.shape
            assert np.array_equal(got.data, want.data)
            assert np.array_equal(got.indices, want.indices)
            assert np.array_equal(got.indptr, want.indptr)
    settings = moreau_backend.MOREAU.settings({"method": "active_set"})
    whole = solve_batch(moreau_backend.MOREAU, mats, b, c, t.dims, settings, Ps)
    listed = solve_batch(moreau_backend.MOREAU, list(mats), b, c, t.dims, settings, list(Ps))
    assert [str(s) for s in whole.status] == ["solved"] * 5 == [str(s) for s in listed.status]
    for k in ("x", "y", "s"):
        assert np.array_equal(getattr(whole, k), getattr(listed, k))
    idx = np.array([3, 1])
    part = solve_batch(moreau_backend.MOREAU, pick(mats, idx), b[idx], c[idx], t.dims,
                       settings, pick(Ps, idx))
    assert max_abs(part.x, whole.x[idx]) <= 1e-12


@pytest.mark.parametrize("zoo", ["polytope_projection", "softmax"])
def test_a_kept_compiled_solver_solves_like_a_fresh_one(zoo, monkeypatch):
    """Moreau's compiled solver, kept between calls of the same shape, gives bitwise the
    points, statuses and iteration counts a solver built for the call gives, whatever it
    solved before (two batches interleaved, each method that applies); one in use by another
    call is not shared (that call builds its own), and one whose call raised is dropped."""
    from declarative.solve import solve_batch

    layer, _, _ = zoo_layer(zoo)
    t = layer.template
    methods = ["active_set", "ipm"] if t.dims.polyhedral else ["ipm"]

    def program(seeds):
        _, values = _values(zoo, seeds)
        theta, _ = layer.batch(values)
        c, a, b = t.apply(theta)
        return t.csc_batch(a), b, c, t.P_csc_batch(t.apply_P(theta)) if t.quadratic else None

    first, second = program(range(4)), program(range(10, 14))
    for method in methods:
        settings = moreau_backend.MOREAU.settings({"method": method})

        def solve(backend, prog, settings=settings):
            mats, b, c, Ps = prog
            return solve_batch(backend, mats, b, c, t.dims, settings, Ps)

        fresh = [solve(moreau_backend.MoreauBackend(), p) for p in (first, second)]
        kept = moreau_backend.MoreauBackend()
        runs = [solve(kept, p) for p in (first, second, first, second)]
        assert len(kept._compiled._kept) == 1
        for k, got in enumerate(runs):
            want = fresh[k % 2]
            assert [str(s) for s in got.status] == [str(s) for s in want.status], method
            assert np.array_equal(got.iterations, want.iterations), method
            for name in ("x", "y", "s"):
                assert np.array_equal(getattr(got, name), getattr(want, name)), (method, name)
        # in use: the call builds its own solver and leaves the kept one alone
        (lock, solver, _), = kept._compiled._kept.values()
        assert lock.acquire(blocking=False)
        try:
            busy = solve(kept, first)
        finally:
            lock.release()
        assert np.array_equal(busy.x, fresh[0].x)
        assert next(iter(kept._compiled._kept.values()))[1] is solver
        # a call that raises drops its solver
        with pytest.raises(RuntimeError, match="broken"):
            with kept._compiled.use(next(iter(kept._compiled._kept)), lambda: None):
                raise RuntimeError("broken")
        assert not kept._compiled._kept
        # a workspace over the bound is not kept; kept ones are dropped, least recently used
        # first, while their sizes together are over it
        with monkeypatch.context() as mp:
            mp.setattr(moreau_backend, "COMPILED_ENTRIES_MAX", 0)
            assert np.array_equal(solve(kept, first).x, fresh[0].x)
            assert not kept._compiled._kept
            mp.setattr(moreau_backend, "COMPILED_ENTRIES_MAX", 4 * (t.n + t.m) ** 2)
            solve(kept, first)
            three = tuple(None if p is None else p[:3] for p in first)
            want = solve(moreau_backend.MoreauBackend(), three)
            assert np.array_equal(solve(kept, three).x, want.x)
            assert [k[-1] for k in kept._compiled._kept] == [3]


def test_threads_sharing_a_moreau_layer_get_its_single_threaded_results():
    """Four threads call one Moreau layer (its kept solver shared, or built per call where in
    use) on two batches in turn: every output is bitwise the single-threaded call's, and
    within 1e-8 of the closed form."""
    import threading

    mod = problems.get("polytope_projection")
    layer = dl.compile(*mod.build(**mod.SIZES), solver="moreau")
    batches = [_values("polytope_projection", range(lo, lo + 5)) for lo in (0, 20)]
    want = [layer.forward(values).outputs[0] for _, values in batches]
    for (insts, _), out in zip(batches, want, strict=True):
        for k, inst in enumerate(insts):
            assert max_abs(out[k], inst.solution[0]) <= 1e-8
    got: list = []

    def work(j: int) -> None:
        for r in range(3):
            which = (j + r) % 2
            got.append((which, layer.forward(batches[which][1]).outputs[0]))

    threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 12
    for which, out in got:
        assert np.array_equal(out, want[which])


@pytest.mark.parametrize("copy_by", ["deepcopy", "pickle"])
def test_a_layer_that_solved_with_moreau_copies_and_pickles(copy_by):
    """The resolved options hold the Moreau backend, whose compiled solvers and locks are
    live state: a layer that has solved with it deep-copies and pickles (the backend as a
    reference to the process's own), and the copy gives the original's outputs and VJP
    bitwise."""
    import copy
    import pickle

    layer, _, _ = zoo_layer("qp")
    _, values = _values("qp", range(3, 3 + 20))
    layer.forward(values)  # (the default's choice at this batch size, resolved and kept)
    assert layer._resolved[None][1][0].name == "moreau"
    before = layer.forward(values, solver="moreau")
    other = copy.deepcopy(layer) if copy_by == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert other._resolved[None][1][0] is moreau_backend.MOREAU
    after = other.forward(values, solver="moreau")
    cot = [np.ones_like(o) for o in before.outputs]
    for a, b in zip(before.outputs + before.vjp(cot), after.outputs + after.vjp(cot),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_options_a_small_batch_resolves_are_resolved_once(monkeypatch):
    """Below the tuning's ``batch_from`` a call solves with SCS, not the layer's Moreau: its
    options are validated on the first such call and kept beside the Moreau call's, so
    neither kind of call validates them again, and each still solves with its own
    solver (outputs equal to a fresh layer's, bitwise)."""
    _, mod, sizes = zoo_layer("qp")
    layer = dl.compile(*mod.build(**sizes), **problems.compile_options(mod))  # (its own)
    _, values = _values("qp", range(7, 7 + 20))
    one = [v[:1] for v in values]
    layer.forward(values)
    small = layer.tuning.batch_from
    assert small is not None and small > 1
    calls = []
    resolve = layer._resolve
    monkeypatch.setattr(layer, "_resolve", lambda *a: calls.append(a[2]) or resolve(*a))
    outs = [layer.forward(v).outputs for v in (one, values, one, values, one)]
    assert calls == ["scs"]
    fresh = dl.compile(*mod.build(**sizes), **problems.compile_options(mod))
    fresh.forward(values)
    for got, v in zip(outs, (one, values, one, values, one), strict=True):
        for a, b in zip(got, fresh.forward(v).outputs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_named_solvers_result_does_not_depend_on_the_calls_before_it():
    """The tuning's open choices (solver, Moreau's method) are decided from the template on
    a layer's first call whatever that call names, so a call with ``solver="moreau"`` gives
    bitwise the same outputs and VJP before and after the layer's first default call (which,
    on this small polyhedral program, would pick Moreau's active-set method)."""
    _, mod, sizes = zoo_layer("qp")
    _, values = _values("qp", range(5, 5 + 20))
    first, second = (dl.compile(*mod.build(**sizes), **problems.compile_options(mod))
                     for _ in range(2))
    named_first = first.forward(values, solver="moreau")
    second.forward(values)  # the default call, first
    assert second.tuning.method == "active_set"
    named_after = second.forward(values, solver="moreau")
    assert first.tuning == second.tuning
    cot = [np.cos(np.arange(o.size)).reshape(o.shape) for o in named_first.outputs]
    for a, b in zip(named_first.outputs + named_first.vjp(cot),
                    named_after.outputs + named_after.vjp(cot), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_default_choice_of_moreau_costs_no_infeasibility_certificate():
    """An instance the chosen Moreau leaves uncertified is solved by SCS as a call naming SCS
    would solve it (the layer's SCS settings, then the tight retry): an infeasible OptNet QP
    with all data × 1e9 (two opposite rows that no x meets), which Moreau's active-set
    method and Clarabel leave inaccurate, comes back infeasible, as from SCS alone; the
    feasible instances beside it are solved and agree with SCS's."""
    n, m, neq, B = 30, 60, 3, 16
    rng = np.random.default_rng(24)
    x = cp.Variable(n)
    Q, p = cp.Parameter((n, n), PSD=True), cp.Parameter(n)
    G, h, b = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(neq)
    A = rng.standard_normal((neq, n))
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + p @ x), [G @ x <= h, A @ x == b])
    layer = dl.compile(prob, [Q, p, G, h, b], [x], on_failure="nan")
    values: list[list[np.ndarray]] = [[], [], [], [], []]
    for k in range(B):
        L = rng.standard_normal((n, n))
        Gk, x0 = rng.standard_normal((m, n)), rng.standard_normal(n)
        hk = Gk @ x0 + rng.uniform(0, 1, m) * (rng.uniform(size=m) < 0.7)
        if k == 3:
            Gk[1], hk[1] = -Gk[0], -hk[0] - 1.0
        for v, w in zip(values, (L @ L.T / n + 0.1 * np.eye(n), rng.standard_normal(n), Gk, hk,
                                 A @ x0 / 1e9), strict=True):
            v.append(w * 1e9)
    stacked = [np.stack(v) for v in values]
    default = layer.forward(stacked)
    assert layer.tuning.solver == "moreau" and B >= layer.tuning.batch_from
    scs = layer.forward(stacked, solver="scs")
    assert str(scs.info.status[3]) == "infeasible"
    assert [str(s) for s in default.info.status] == [str(s) for s in scs.info.status]
    ok = default.ok
    assert ok.sum() == B - 1
    assert max_abs(default.outputs[0][ok], scs.outputs[0][ok]) <= 1e-8 * np.abs(
        scs.outputs[0][ok]).max()
