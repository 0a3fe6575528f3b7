"""The solver seam: SCS and Clarabel behind one protocol, the choice of solver per layer and
per call, and the layer's `Tuning`.

References: the zoo's closed forms, closed-form cone programs (the smallest eigenvalue, a
power-cone maximum), and one backend against the other.
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import declarative as dl
import declarative.backends.clarabel as clarabel_backend
import declarative.backends.scs as scs_backend
import declarative.derivative as derivative
from declarative import problems
from declarative.backends import SOLVERS, backend
from declarative.cones import ConeDims, _svec, project
from declarative.derivative import ORDERINGS
from declarative.equilibrate import equilibrate
from declarative.errors import ProblemError
from declarative.refine import REFINE_MAX_ITERS
from declarative.solve import (
    SCALE_CANDIDATES,
    Outcome,
    ScaleCheck,
    Status,
    calibrate_scale,
    solve_batch,
)
from tests.conftest import max_abs, zoo_layer


def _zoo_batch(name: str, seeds):
    _, mod, sizes = zoo_layer(name)
    insts = [problems.instance(name, s, **sizes) for s in seeds]
    values = [np.stack([i.params[k] for i in insts]) for k in range(len(insts[0].params))]
    return mod, sizes, insts, values


# -- both backends on the zoo -----------------------------------------------------------------
def test_clarabel_and_scs_agree_on_every_zoo_problem(zoo_name):
    """Per call ``solver=``: both backends' outputs, VJPs and JVPs agree to 1e-8 (after the
    same refinement) and with the closed form, every instance ``solved``."""
    layer, _, _ = zoo_layer(zoo_name)
    _, _, insts, values = _zoo_batch(zoo_name, (6, 7))
    rng = np.random.default_rng(0)
    tan = [rng.standard_normal(v.shape) for v in values]
    runs = {}
    for solver in ("scs", "clarabel"):  # Moreau: tests/test_moreau.py
        fwd = layer.forward(values, solver=solver)
        assert [str(s) for s in fwd.info.status] == ["solved"] * 2, solver
        cot = [np.ones_like(o) for o in fwd.outputs]
        runs[solver] = (fwd.outputs, fwd.vjp(cot), fwd.jvp(tan))
    for a, b in zip(runs["scs"], runs["clarabel"], strict=True):
        for u, v in zip(a, b, strict=True):
            assert max_abs(u, v) <= 1e-8
    for k, inst in enumerate(insts):
        for out, sol in zip(runs["clarabel"][0], inst.solution, strict=True):
            assert max_abs(out[k], sol) <= 1e-8


def test_clarabel_iterations_are_its_own():
    """Clarabel, an interior-point method, takes tens of iterations where SCS takes more;
    the layer reports the backend's own count."""
    layer, _, _ = zoo_layer("softmax")
    _, _, _, values = _zoo_batch("softmax", (0, 1))
    fwd = layer.forward(values, solver="clarabel")
    assert fwd.info.scs_iterations.max() <= 30
    assert [str(s) for s in fwd.info.scs_status] == ["solved"] * 2


# -- statuses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_infeasible_and_unbounded_with_every_backend(solver):
    n = 3
    x, theta, lo, hi = cp.Variable(n), cp.Parameter(n), cp.Parameter(n), cp.Parameter(n)
    box = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [x >= lo, x <= hi]),
                     [theta, lo, hi], [x], solver=solver, on_failure="nan")
    fwd = box.forward([np.zeros(n), np.ones(n), -np.ones(n)])  # lo > hi
    assert [str(s) for s in fwd.info.status] == ["infeasible"]
    assert np.isnan(fwd.outputs[0]).all()
    c = cp.Parameter(n)
    lp = dl.compile(cp.Problem(cp.Minimize(c @ x), [x >= lo]), [c, lo], [x], solver=solver,
                    on_failure="nan")
    fwd = lp.forward([-np.arange(1.0, n + 1), np.ones(n)])
    assert [str(s) for s in fwd.info.status] == ["unbounded"]
    fwd = lp.forward([np.arange(1.0, n + 1), np.ones(n)])
    assert [str(s) for s in fwd.info.status] == ["solved"]
    assert max_abs(fwd.outputs[0][0], np.ones(n)) <= 1e-8


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_ray_over_an_infeasible_program_is_infeasible_not_unbounded(solver):
    """min c·x s.t. x₀ <= h₀, −x₀ <= h₁ with h = (−1, −1) has no feasible point, and with
    c = (0, −1) no dual one either (x₁ is free): the ray x = (0, 1) proves only the second,
    so the status is INFEASIBLE, as CVXPY with Clarabel reports. With h = (1, 1) the same ray
    makes the program unbounded."""
    x, c, h = cp.Variable(2), cp.Parameter(2), cp.Parameter(2)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x), [x[0] <= h[0], -x[0] <= h[1]]),
                       [c, h], [x], solver=solver, on_failure="nan")
    for cv in ([0.0, -1.0], [0.0, 0.0], [1.0, 0.0]):
        fwd = layer.forward([np.array(cv), np.array([-1.0, -1.0])])
        assert [str(s) for s in fwd.info.status] == ["infeasible"], cv
    fwd = layer.forward([np.array([0.0, -1.0]), np.array([1.0, 1.0])])
    assert [str(s) for s in fwd.info.status] == ["unbounded"]
    # in a batch, whichever backend serves it
    fwd = layer.forward([np.array([0.0, -1.0]),
                         np.tile([[-1.0, -1.0], [1.0, 1.0]], (10, 1))])
    assert [str(s) for s in fwd.info.status] == ["infeasible", "unbounded"] * 10


class _FakeClarabel:
    """Stands in for `clarabel.DefaultSolver`: returns a fixed solution."""

    def __init__(self, status, x, z):
        self.sol = type("Sol", (), {"status": status, "x": x, "z": z, "s": np.zeros_like(z),
                                    "iterations": 7})()

    def solve(self):
        return self.sol


@pytest.mark.parametrize("z, expected", [(np.array([1.0, 1.0]), Status.INFEASIBLE),
                                         (np.array([1.0, 2.0]), Status.INACCURATE)])
def test_clarabel_almost_infeasible_counts_only_when_certified(monkeypatch, z, expected):
    """x ≥ 1, x ≤ 0 (rows −x + s = −1, x + s = 0): ŷ = (1, 1) proves infeasibility, (1, 2)
    does not (Aᵀŷ = 1). Clarabel's "almost primal infeasible" counts only with the first."""
    import clarabel

    fake = _FakeClarabel(clarabel.SolverStatus.AlmostPrimalInfeasible, np.full(1, np.nan), z)
    monkeypatch.setattr(clarabel_backend.clarabel, "DefaultSolver", lambda *a: fake)
    A = sp.csc_matrix(np.array([[-1.0], [1.0]]))
    res = solve_batch(backend("clarabel"), [A], np.array([[-1.0, 0.0]]), np.zeros((1, 1)),
                      ConeDims(nonneg=2), backend("clarabel").settings({}))
    assert res.status == [expected]


def test_clarabel_statuses_come_from_its_public_constants():
    import clarabel

    mapped = clarabel_backend._STATUS
    assert mapped[clarabel.SolverStatus.Solved] is Status.SOLVED
    assert mapped[clarabel.SolverStatus.MaxIterations] is Status.ITERATION_LIMIT
    assert mapped[clarabel.SolverStatus.AlmostDualInfeasible] is Status.UNBOUNDED
    assert clarabel.SolverStatus.NumericalError not in mapped  # → FAILED


# -- cone conventions -------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_psd_layout_min_eigenvalue(solver, k):
    """min ⟨C, X⟩ s.t. tr X = 1, X ⪰ 0 in SCS's svec layout (lower triangle by columns, √2
    off the diagonal): the optimum is λ_min(C) at X = vvᵀ, with dual y₀ = −λ_min on the trace
    and svec(C − λ_min I) on the PSD block. Clarabel and Moreau store the upper triangle: the
    backend permutes the rows."""
    rng = np.random.default_rng(k)
    C = rng.standard_normal((k, k))
    C = C + C.T
    lam = np.linalg.eigvalsh(C)
    size = k * (k + 1) // 2
    c = _svec(C, k)
    trace = _svec(np.eye(k), k)
    A = sp.vstack([sp.csr_matrix(trace), -sp.identity(size)]).tocsc()
    b = np.concatenate([[1.0], np.zeros(size)])
    be = backend(solver)
    res = solve_batch(be, [A], b[None], c[None], ConeDims(zero=1, psd=(k,)),
                      be.tightened(be.settings({}), 1e-9))
    assert res.status == [Status.SOLVED]
    tol = 1e-6
    assert abs(c @ res.x[0] - lam[0]) <= tol
    assert abs(res.y[0, 0] + lam[0]) <= tol
    assert max_abs(res.y[0, 1:], _svec(C - lam[0] * np.eye(k), k)) <= tol


@pytest.mark.parametrize("solver", SOLVERS)
def test_dual_exponential_cone(solver):
    """min u/5 + w s.t. (u, v, w) ∈ K*_exp (−u·e^{v/u} ≤ e·w, u < 0), v = 1: at the optimum
    w = −u·e^{1/u − 1}, and u minimizes u/5 − u·e^{1/u − 1} (negative near 0⁻, +∞ at −∞).
    Clarabel has no dual exponential cone: the backend maps it onto K_exp."""
    from scipy.optimize import minimize_scalar

    f = lambda u: u / 5 - u * np.exp(1.0 / u - 1.0)  # noqa: E731
    best = minimize_scalar(f, bounds=(-50.0, -1e-3), method="bounded",
                           options={"xatol": 1e-12})
    A = sp.vstack([sp.csr_matrix([[0.0, 1.0, 0.0]]), -sp.identity(3)]).tocsc()
    b = np.array([1.0, 0.0, 0.0, 0.0])
    c = np.array([0.2, 0.0, 1.0])
    dims = ConeDims(zero=1, exp_dual=1)
    be = backend(solver)
    res = solve_batch(be, [A], b[None], c[None], dims, be.tightened(be.settings({}), 1e-10))
    assert res.status == [Status.SOLVED]
    assert abs(c @ res.x[0] - best.fun) <= 1e-6
    assert max_abs(res.s[0][1:], project(res.s[0], dims)[1:]) <= 1e-6  # s ∈ K*_exp
    y = res.y[0]
    assert max_abs(y[1:], project(y, dims, dual=True)[1:]) <= 1e-6  # y ∈ K_exp


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("alpha", [0.3, -0.3, 0.7, -0.7])
def test_power_cones(solver, alpha):
    """max z s.t. (x, y, z) in the power cone of exponent |α| (its dual for α < 0, SCS's sign
    convention), x + y ≤ 2. Primal: x^α y^(1−α) ≥ |z|, the maximum (2α)^α (2(1−α))^(1−α);
    dual: (x/α)^α (y/(1−α))^(1−α) ≥ |z|, the maximum 2."""
    a = abs(alpha)
    expected = (2 * a) ** a * (2 * (1 - a)) ** (1 - a) if alpha > 0 else 2.0
    A = sp.vstack([sp.csr_matrix([[1.0, 1.0, 0.0]]), -sp.identity(3)]).tocsc()
    b = np.array([2.0, 0.0, 0.0, 0.0])
    c = np.array([0.0, 0.0, -1.0])
    be = backend(solver)
    res = solve_batch(be, [A], b[None], c[None], ConeDims(nonneg=1, power=(alpha,)),
                      be.tightened(be.settings({}), 1e-10))
    assert res.status == [Status.SOLVED]
    assert abs(res.x[0, 2] - expected) <= 1e-6
    assert abs(res.x[0, 0] - 2 * a) <= 1e-4 and abs(res.x[0, 1] - 2 * (1 - a)) <= 1e-4
    assert abs(res.y[0, 0] - (expected / 2)) <= 1e-5  # d(max z)/d(2) = z*/2 (homogeneous)


# -- choosing the solver ----------------------------------------------------------------------
def _sparsemax_layer(n: int | None = None, **kw):
    mod = problems.get("sparsemax")
    return dl.compile(*mod.build(**(mod.SIZES if n is None else {"n": n})), **kw), mod


# n = 100: the Newton and derivative systems (401 × 401) are factored sparse (SuperLU)
SPARSE_N = 100


def _sparsemax_values(seeds, n: int = SPARSE_N):
    insts = [problems.instance("sparsemax", k, n=n) for k in seeds]
    return insts, [np.stack([i.params[0] for i in insts])]


def test_compile_with_clarabel_and_per_call_switch():
    layer, mod = _sparsemax_layer(solver="clarabel")
    assert layer.tuning.solver == "clarabel"
    _, _, insts, values = _zoo_batch("sparsemax", (0, 1, 2))
    fwd = layer.forward(values)
    assert fwd.info.scs_iterations.max() <= 30  # Clarabel's count
    scs = layer.forward(values, solver="scs")
    for k, inst in enumerate(insts):
        assert max_abs(fwd.outputs[0][k], inst.solution[0]) <= 1e-8
        assert max_abs(scs.outputs[0][k], inst.solution[0]) <= 1e-8
    assert layer.tuning.scale in SCALE_CANDIDATES  # decided by the SCS call, kept


def test_compile_time_scs_settings_do_not_reach_a_clarabel_call():
    layer, _ = _sparsemax_layer(solver_args={"eps_abs": 1e-4, "refine_max_iters": 20})
    _, _, insts, values = _zoo_batch("sparsemax", (0,))
    fwd = layer.forward(values, solver="clarabel", solver_args={"max_iter": 50})
    assert max_abs(fwd.outputs[0][0], insts[0].solution[0]) <= 1e-8


def test_solver_per_call_through_torch_and_jax():
    layer, _ = _sparsemax_layer()
    _, _, insts, values = _zoo_batch("sparsemax", (0, 1))
    module = layer.torch()
    z = torch.tensor(values[0], requires_grad=True)
    (x,), info = module(z, solver="clarabel", return_info=True)
    assert info.scs_iterations.max() <= 30
    (x * torch.arange(x.shape[1], dtype=x.dtype)).sum().backward()
    (x_scs,) = module(torch.tensor(values[0]))
    assert max_abs(x.detach().numpy(), x_scs.numpy()) <= 1e-8
    import jax
    import jax.numpy as jnp

    f = layer.jax()
    with jax.enable_x64(True):
        (xj,) = f(jnp.asarray(values[0]), solver="clarabel")
        assert max_abs(np.asarray(xj), x_scs.numpy()) <= 1e-8
        g = jax.grad(lambda v: (f(v, solver="clarabel")[0] * jnp.arange(v.shape[1])).sum())
        assert max_abs(np.asarray(g(jnp.asarray(values[0]))), z.grad.numpy()) <= 1e-8


def test_unknown_solver_and_options_are_named():
    layer, mod = _sparsemax_layer()
    values = [problems.instance("sparsemax", 0, **mod.SIZES).params[0]]
    for call in (lambda: dl.compile(*mod.build(**mod.SIZES), solver="gurobi"),
                 lambda: layer.forward(values, solver="mosek"),
                 lambda: layer.torch()(torch.tensor(values[0]), solver="ecos"),
                 lambda: layer.jax()(values[0], solver="osqp")):
        with pytest.raises(ProblemError, match=r"unknown solver .*\['scs', 'clarabel', 'moreau'\]"):
            call()
    with pytest.raises(ProblemError, match=r"\['eps_abs'\] for solver 'clarabel'.*tol_gap_abs"):
        layer.forward(values, solver="clarabel", solver_args={"eps_abs": 1e-5})
    with pytest.raises(ProblemError, match=r"\['tol_feas'\] for solver 'scs'.*eps_abs"):
        layer.forward(values, solver_args={"tol_feas": 1e-5})
    with pytest.raises(ProblemError, match=r"\['max_iters'\] for solver 'clarabel'.*max_iter"):
        dl.compile(*mod.build(**mod.SIZES), solver="clarabel", solver_args={"max_iters": 5})
    with pytest.raises(ProblemError, match="differ"):
        dl.compile(*mod.build(**mod.SIZES), solver="scs", tuning=dl.Tuning(solver="clarabel"))


@pytest.mark.parametrize("threads", [0, 2])
def test_clarabel_runs_on_one_thread(threads):
    """Clarabel's own worker pool does not survive a fork (a DataLoader worker's first solve
    blocked): ``max_threads`` other than 1 is refused, naming what to pass; 1 is taken."""
    layer, mod = _sparsemax_layer()
    inst = problems.instance("sparsemax", 0, **mod.SIZES)
    with pytest.raises(ProblemError, match=rf"max_threads={threads} .*expected 1"):
        layer.forward([inst.params[0]], solver="clarabel", solver_args={"max_threads": threads})
    with pytest.raises(ProblemError, match=rf"max_threads={threads} .*expected 1"):
        dl.compile(*mod.build(**mod.SIZES), solver="clarabel",
                   solver_args={"max_threads": threads})
    out = layer.forward([inst.params[0][None]], solver="clarabel",
                        solver_args={"max_threads": 1})
    assert max_abs(out.outputs[0][0], inst.solution[0]) <= 1e-8


# -- Tuning -----------------------------------------------------------------------------------
def test_tuning_validates_its_fields():
    for bad, match in (({"solver": "cplex"}, "solver"), ({"scale": -1.0}, "scale"),
                       ({"scale": float("nan")}, "scale"), ({"linear_solver": "mkl"},
                                                             "linear_solver"),
                       ({"share_workspaces": 1}, "share_workspaces"),
                       ({"sparse_ordering": "METIS"}, "sparse_ordering"),
                       ({"supernodes": "yes"}, "supernodes")):
        with pytest.raises(ProblemError, match=match):
            dl.Tuning(**bad)
    layer, _ = _sparsemax_layer()
    with pytest.raises(ProblemError, match="declarative.Tuning"):
        layer.tuning = {"scale": 1.0}
    qp, _, _ = zoo_layer("qp")  # A and P depend on the parameters: no shared setup
    with pytest.raises(ProblemError, match="share_workspaces=True"):
        qp.tuning = dl.Tuning(share_workspaces=True)


def test_tuning_is_decided_once_shown_and_pickled():
    layer, _ = _sparsemax_layer(SPARSE_N)
    assert layer.tuning == dl.Tuning()  # nothing decided before a call
    _, values = _sparsemax_values((0, 1))
    out = layer.forward(values).outputs[0]
    tuning = layer.tuning
    assert tuning.scale in SCALE_CANDIDATES and tuning.linear_solver == "qdldl"
    assert tuning.share_workspaces is True
    assert tuning.sparse_ordering in ORDERINGS and isinstance(tuning.supernodes, bool)
    assert f"tuning={tuning!r}" in repr(layer)
    assert pickle.loads(pickle.dumps(tuning)) == tuning
    copy = pickle.loads(pickle.dumps(layer))
    assert copy.tuning == tuning
    assert np.array_equal(copy.forward(values).outputs[0], out)
    layer.forward([v[::-1] for v in values])
    assert layer.tuning is tuning  # decided once


def test_user_tuning_is_used_and_deterministic(monkeypatch):
    """A tuning set by the user is what SCS receives, and two layers with that tuning give
    bitwise-equal outputs and gradients whatever their call histories."""
    tuning = dl.Tuning(solver="scs", scale=10.0, linear_solver="qdldl", share_workspaces=False,
                       sparse_ordering="COLAMD", supernodes=False)
    one, mod = _sparsemax_layer(SPARSE_N, tuning=tuning)
    two, _ = _sparsemax_layer(SPARSE_N)
    two.tuning = tuning
    insts, values = _sparsemax_values(range(5))
    seen, orderings = [], []
    real = scs_backend._scs_solver
    monkeypatch.setattr(scs_backend, "_scs_solver",
                        lambda *a: seen.append((a[4]["scale"], a[4]["linear_solver"]))
                        or real(*a))
    real_lu = derivative._factor_sparse_one
    monkeypatch.setattr(derivative, "_factor_sparse_one",
                        lambda S, ordering="COLAMD", supernodes=True:
                        orderings.append((ordering, supernodes)) or real_lu(S, ordering,
                                                                            supernodes))
    two.forward([values[0][3:]])
    two.forward([values[0][0]])
    f1, f2 = one.forward(values), two.forward(values)
    assert set(seen) == {(10.0, "qdldl")}
    assert set(orderings) == {("COLAMD", False)}
    assert one.tuning == two.tuning == tuning  # nothing left to decide
    g = [np.ones_like(f1.outputs[0])]
    assert np.array_equal(f1.outputs[0], f2.outputs[0])
    assert np.array_equal(f1.vjp(g)[0], f2.vjp(g)[0])
    for k, inst in enumerate(insts):
        assert max_abs(f1.outputs[0][k], inst.solution[0]) <= 1e-8


def test_tune_picks_the_scale_with_fewest_iterations_on_the_sample():
    """`Layer.tune(sample)`: the candidate scale whose SCS solves of the sample (its
    equilibrated programs) take the fewest iterations in all, counted here directly."""
    mod, sizes, insts, values = _zoo_batch("softmax", range(4))
    layer = dl.compile(*mod.build(**sizes))
    tuning = layer.tune(values)
    assert layer.tuning == tuning
    assert tuning.share_workspaces is True and tuning.linear_solver == "qdldl"
    t = layer.template
    theta, _ = layer.batch(values)
    c, a, b = t.apply(theta)
    h = t.apply_P(theta)
    c, a, b, h = equilibrate(t, c, a, b, h).data(t, c, a, b, h)
    scs = backend("scs")
    counts = {}
    for scale in SCALE_CANDIDATES:  # (solved as a call solves them: one shared workspace)
        res = solve_batch(scs, [t.matrix(a[i]) for i in range(4)], b, c, t.dims,
                          scs.settings({"scale": scale, "linear_solver": "qdldl"}),
                          shared=scs.share(t.matrix(a[0]), None, t.dims))
        assert res.status == [Status.SOLVED] * 4
        counts[scale] = res.iterations.sum()
    assert tuning.scale == min(counts, key=counts.get), counts
    fwd = layer.forward(values)
    for k, inst in enumerate(insts):
        assert max_abs(fwd.outputs[0][k], inst.solution[0]) <= 1e-8
    assert layer.tuning == tuning


def test_the_scale_tune_picks_is_the_fewest_iterations_of_calls_at_each_scale():
    """Softmax at n = 1,000, whose instances share SCS's workspaces (no Anderson
    acceleration there): `tune` picks the candidate whose calls on the sample take the fewest
    SCS iterations, counted from the calls themselves at each scale set by hand. Calibrated
    with Anderson acceleration on, every candidate took 75 and the first, 1, was picked; the
    calls then took 275 iterations an instance against 150 at 10."""
    mod = problems.get("softmax")
    sizes = {**mod.SIZES, "n": 1000}
    rng = np.random.default_rng(0)
    values = [np.stack([mod.sample(rng, **sizes)[0] for _ in range(2)])]
    layer = dl.compile(*mod.build(**sizes), **problems.compile_options(mod))
    tuning = layer.tune(values)
    assert tuning.share_workspaces is True
    counts = {}
    for scale in SCALE_CANDIDATES:
        layer.tuning = replace(tuning, scale=scale)
        fwd = layer.forward(values)
        assert fwd.ok.all()
        counts[scale] = int(fwd.info.scs_iterations.sum())
    assert counts[tuning.scale] == min(counts.values()), (tuning.scale, counts)


def test_the_calibrated_scale_is_one_refinement_converges_from():
    """`calibrate_scale` ranks the scales from which refinement converges first, then by SCS
    iterations, and with ``check`` takes the first so ranked that its instances confirm.
    Which scales "converge" is set here by hand from each scale's own iteration count (the
    scales told apart by that count, measured first): the pick must be the fewest-iteration
    scale among the accepted ones, whatever SCS's own ranking."""
    mod = problems.get("geometric_mean_budget")
    layer = dl.compile(*mod.build(n=30), **problems.compile_options(mod))
    t = layer.template
    theta, _ = layer.batch([np.stack(v) for v in zip(*[mod.sample(np.random.default_rng(k),
                                                                  n=30) for k in range(3)],
                                                       strict=True)])
    c, a, b = t.apply(theta)
    mats = t.csc_batch(a)
    scs = backend("scs")
    settings = scs.settings({})
    iters = {s: int(solve_batch(scs, mats[:1], b[:1], c[:1], t.dims, {**settings, "scale": s})
                    .iterations.sum()) for s in SCALE_CANDIDATES}
    counts = sorted(set(iters.values()))
    assert len(counts) >= 3, iters  # (else the ranking cannot be told from SCS's)
    plain = calibrate_scale(scs, mats[:1], b[:1], c[:1], t.dims, settings)
    assert iters[plain] == counts[0]

    def accept(*allowed):
        return lambda res: np.full(len(res.status), res.iterations.sum() in allowed)

    # the fewest-iteration scales refused: the pick is the fewest among the rest
    picked = calibrate_scale(scs, mats[:1], b[:1], c[:1], t.dims, settings,
                             refines=accept(*counts[1:]))
    assert iters[picked] == counts[1], (picked, iters)
    # none accepted: SCS's own ranking
    assert calibrate_scale(scs, mats[:1], b[:1], c[:1], t.dims, settings,
                           refines=accept()) == plain
    # the check's instances refuse the first ranked (every scale converges on the first
    # instance): the next ranked is taken
    calls: list = []

    def second_on(res):
        calls.append(1)
        return np.full(len(res.status), len(calls) > 1)

    ranked = sorted(SCALE_CANDIDATES, key=lambda s: iters[s])  # (stable, as calibrate_scale)
    picked = calibrate_scale(scs, mats[:1], b[:1], c[:1], t.dims, settings,
                             refines=accept(*counts),
                             check=ScaleCheck(mats[1:], b[1:], c[1:], None, second_on))
    assert len(calls) == 2 and picked == ranked[1], (picked, ranked, calls)


def test_a_scale_refinement_stalls_from_is_not_calibrated():
    """The geometric-mean budget at n = 150: the scale with the fewest SCS iterations on the
    calibration's instance (3) left refinement stalled on 5 of 8 sampled instances (20 futile
    Newton steps each, then a tight solve: 435 ms an instance against 11). Every instance
    must now be certified by its first refinement (fewer Newton steps than its limit), with
    the closed form's values and Jacobian."""
    mod = problems.get("geometric_mean_budget")
    layer = dl.compile(*mod.build(n=150), **problems.compile_options(mod))
    rng = np.random.default_rng(0)
    insts = [mod.sample(rng, n=150) for _ in range(4)]
    values = [np.stack([np.asarray(i[j], dtype=float) for i in insts]) for j in range(2)]
    fwd = layer.forward(values)
    assert fwd.ok.all()
    assert np.all(fwd.info.refine_steps < REFINE_MAX_ITERS), fwd.info.refine_steps
    for k, inst in enumerate(insts):
        assert max_abs(fwd.outputs[0][k], mod.solution(*inst)[0]) <= 1e-8


def test_the_scale_calibration_leaves_no_trace_but_the_scale():
    """The calibration refines its own pseudo-random instances; their S must not decide
    SuperLU's ordering (a call's first system does): a layer that calibrates and one given
    the same scale by hand end with the same tuning and bitwise the same outputs (the
    geometric-mean budget at n = 70: the calibration's S chose MMD_AT_PLUS_A, the call's
    COLAMD, and one instance took 17 Newton steps in place of 9)."""
    mod = problems.get("geometric_mean_budget")
    rng = np.random.default_rng(0)
    insts = [mod.sample(rng, n=70) for _ in range(4)]
    values = [np.stack([np.asarray(i[j], dtype=float) for i in insts]) for j in range(2)]
    calibrated = dl.compile(*mod.build(n=70), **problems.compile_options(mod))
    f1 = calibrated.forward(values)
    given = dl.compile(*mod.build(n=70), **problems.compile_options(mod),
                       tuning=dl.Tuning(scale=calibrated.tuning.scale))
    f2 = given.forward(values)
    assert f1.ok.all() and calibrated.tuning == given.tuning, (calibrated.tuning, given.tuning)
    assert np.array_equal(f1.outputs[0], f2.outputs[0])
    assert np.array_equal(f1.info.refine_steps, f2.info.refine_steps)


# -- SCS's private entry point ----------------------------------------------------------------
def test_native_scs_only_in_tested_releases(monkeypatch):
    """SCS's private C extension is used only in the releases it was tested against: another
    version goes through the public `scs.SCS`, with the same results."""
    _, mod, sizes = zoo_layer("qp")
    _, _, insts, values = _zoo_batch("qp", (0, 1))
    assert scs_backend._native_scs({"linear_solver": "qdldl"}) is not None
    monkeypatch.setattr(scs_backend.scs, "__version__", "4.0.0")
    monkeypatch.setattr(scs_backend, "_native_ok", {})
    assert scs_backend._native_scs({"linear_solver": "qdldl"}) is None
    calls = []
    real = scs_backend.scs.SCS
    monkeypatch.setattr(scs_backend.scs, "SCS", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = dl.compile(*mod.build(**sizes))
    fwd = layer.forward(values)
    assert calls and layer.tuning.linear_solver == "qdldl"  # no dense path without it
    for k, inst in enumerate(insts):
        assert max_abs(fwd.outputs[0][k], inst.solution[0]) <= 1e-8


def test_what_scs_leaves_unsettled_gets_a_second_opinion(monkeypatch):
    """Where the user did not choose the solver, instances that SCS (and its tight retry)
    leave unsolved are solved by the interior-point backend and certified as usual (outputs
    and VJPs against the closed form); a solver the user named is used alone."""
    layer, mod, sizes = zoo_layer("sparsemax")
    rng = np.random.default_rng(3)
    inst = [mod.sample(rng, **sizes) for _ in range(3)]
    theta = np.stack([p[0] for p in inst])

    def scs_fails(self, A, b, c, dims, settings, P=None, warm=None, shared=None):
        n, m = A.shape[1], A.shape[0]
        return Outcome(np.full(n, np.nan), np.full(m, np.nan), np.full(m, np.nan),
                       Status.FAILED, 1)

    monkeypatch.setattr(scs_backend.ScsBackend, "solve", scs_fails)
    fwd = layer.forward([theta], on_failure="nan")
    assert [str(s) for s in fwd.info.status] == ["solved"] * 3
    g = rng.standard_normal(theta.shape)
    (dtheta,) = fwd.vjp([g])
    for i, p in enumerate(inst):
        assert max_abs(fwd.outputs[0][i], mod.solution(*p)[0]) <= 1e-12
        assert max_abs(dtheta[i], g[i] @ mod.jacobian(*p)[0][0]) <= 1e-10
    named = layer.forward([theta], solver="scs", on_failure="nan")
    assert not any(str(s) == "solved" for s in named.info.status)
    assert np.isnan(named.outputs[0]).all()
