"""The solver seam under stress: Ctrl-C, SCS's inaccurate certificates, fork, long-running
schedules of settings, concurrent first calls. Every result is checked against a closed form
(the box projection clip(θ, lo, hi), sparsemax, hand-made certificates)."""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_info

import declarative as dl
import declarative.backends.scs as scs_backend
import declarative.parallel as parallel
from declarative import problems
from declarative.backends.scs import (
    SCS,
    SCS_INFEASIBLE_INACCURATE,
    SCS_SIGINT,
    SCS_UNBOUNDED_INACCURATE,
    SharedData,
)
from declarative.cones import ConeDims
from declarative.derivative import splu
from declarative.solve import (
    Status,
    infeasibility_certified,
    solve_batch,
    solver_failure,
    unboundedness_certified,
)
from tests.conftest import max_abs

# SCS settings under which a solve never converges (zero tolerances) and stops only at its
# time limit, so that a signal sent shortly after the start lands inside SCS. The time limit
# bounds the test if the signal were lost. `scale` skips the layer's calibration, and SCS's
# own default acceleration_lookback rules out shared workspaces (their trial solves).
NEVER_CONVERGES = {"eps_abs": 0.0, "eps_rel": 0.0, "eps_infeas": 0.0, "max_iters": 10**9,
                   "time_limit_secs": 30.0, "scale": 1.0, "acceleration_lookback": 10}


def _box(n: int) -> dl.Layer:
    """Projection onto a box, min ‖x − θ‖² s.t. lo ≤ x ≤ hi: x* = clip(θ, lo, hi)."""
    x, th, lo, hi = cp.Variable(n), cp.Parameter(n), cp.Parameter(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [x >= lo, x <= hi])
    return dl.compile(prob, [th, lo, hi], [x])


def _box_values(batch: int, n: int, scale: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    theta = 2.0 * scale * rng.standard_normal((batch, n))
    return [theta, -scale * np.ones(n), scale * np.ones(n)]


@contextlib.contextmanager
def _sigint_after(seconds: float) -> Iterator[None]:
    """SIGINT to this process after ``seconds`` (from a timer thread), unless the block ended."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not handled by Python's default handler here")
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


# -- Ctrl-C -----------------------------------------------------------------------------------
def test_scs_status_constants_are_scs_own():
    import scs

    for name, ours in (("SIGINT", SCS_SIGINT), ("INFEASIBLE_INACCURATE", SCS_INFEASIBLE_INACCURATE),
                       ("UNBOUNDED_INACCURATE", SCS_UNBOUNDED_INACCURATE)):
        assert ours == getattr(scs, name, ours)
    assert (SCS_SIGINT, SCS_UNBOUNDED_INACCURATE, SCS_INFEASIBLE_INACCURATE) == (-5, -6, -7)


@pytest.mark.parametrize("batch", [1, 6])
def test_ctrl_c_inside_scs_raises_and_starts_no_further_solve(monkeypatch, batch):
    """SCS catches SIGINT while it solves (in the calling thread for one instance, in the
    calling thread and a worker for six): KeyboardInterrupt, no solve started after it, BLAS
    threads restored, and the next call solves and matches the closed form."""
    monkeypatch.setattr(parallel, "_CPUS", 2)
    n = 200
    layer = _box(n)
    started = []
    real = scs_backend._scs_solver
    monkeypatch.setattr(scs_backend, "_scs_solver", lambda *a: started.append(1) or real(*a))
    blas = _blas_threads()
    with pytest.raises(KeyboardInterrupt), _sigint_after(0.5):
        layer.forward(_box_values(batch, n, 1.0), solver_args=NEVER_CONVERGES)
    assert len(started) == min(batch, 2)  # the solves running when the signal came
    assert parallel._blas_depth == 0 and _blas_threads() == blas
    values = _box_values(4, n, 1.0, seed=1)
    fwd = layer.forward(values)
    assert max_abs(fwd.outputs[0], np.clip(values[0], values[1], values[2])) <= 1e-8


@pytest.mark.parametrize("where", ["calling thread", "worker"])
def test_interrupt_between_items_stops_the_batch(monkeypatch, where):
    """Ctrl-C in Python (the calling thread, by a real SIGINT) or a KeyboardInterrupt in a
    worker (as SCS's SIGINT status becomes): raised by parallel_map, and the other thread
    starts no item after it; the pool then serves the next call."""
    monkeypatch.setattr(parallel, "_CPUS", 2)
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not handled by Python's default handler here")
    raised = threading.Event()
    seen: list[int] = []
    interrupter = threading.main_thread() if where == "calling thread" else None

    def f(i: int) -> int:
        seen.append(i)
        me = threading.current_thread()
        interrupts = me is interrupter if interrupter else me.name.startswith(parallel._PREFIX)
        if interrupts and not raised.is_set():
            raised.set()
            if interrupter:
                signal.raise_signal(signal.SIGINT)
            raise KeyboardInterrupt
        raised.wait(10.0)
        time.sleep(0.05)  # the interrupt propagates meanwhile
        return i

    with pytest.raises(KeyboardInterrupt):
        parallel.parallel_map(f, list(range(100)))
    assert len(seen) <= 3  # the interrupted item, the other thread's, at most one more
    assert parallel.parallel_map(lambda i: i * i, list(range(10))) == [i * i for i in range(10)]


# -- certificates -----------------------------------------------------------------------------
# min 0 s.t. x ≥ 1, x ≤ −1 as Ax + s = b, s ≥ 0: A = (−1, 1)ᵀ, b = (−1, −1). Farkas
# certificate y = (1, 1): y ≥ 0, Aᵀy = 0, bᵀy = −2. For y = (1, 1 + δ): Aᵀy = δ, and the
# scale-free measure |Aᵀy|·‖b‖/(−bᵀy·‖A‖) = δ/(2 + δ) at every scaling of A and b.
INFEASIBLE_A = np.array([[-1.0], [1.0]])
INFEASIBLE_B = np.array([-1.0, -1.0])
# min −x (or ½x² − x) s.t. x ≥ 0: A = (−1), b = 0, c = −1; the ray x = 1 has Ax + s = 0 with
# s = 1 ≥ 0 and cᵀx = −1 < 0: unbounded without P, not with P = 1 (Px ≠ 0).
UNBOUNDED_A = np.array([[-1.0]])
UNBOUNDED_C = np.array([-1.0])
SCALES = (1e-6, 1e-3, 1.0, 1e3, 1e6)


def _csc(M: np.ndarray):
    import scipy.sparse as sp

    return sp.csc_matrix(M)


@pytest.mark.parametrize("alpha", SCALES)
@pytest.mark.parametrize("beta", SCALES)
def test_infeasibility_certificate_is_judged_scale_invariantly(alpha, beta):
    dims = ConeDims(nonneg=2)
    A, b = _csc(alpha * INFEASIBLE_A), beta * INFEASIBLE_B
    for gamma in SCALES:
        assert infeasibility_certified(A, b, gamma * np.array([1.0, 1.0]), dims)
        assert infeasibility_certified(A, b, gamma * np.array([1.0, 1.0 + 1e-9]), dims)
        # off by an interior-point method's tolerance: moved to the exact certificate nearby
        assert infeasibility_certified(A, b, gamma * np.array([1.0, 1.0 + 1e-7]), dims)
        assert not infeasibility_certified(A, b, gamma * np.array([1.0, 1.0 + 1e-3]), dims)
        assert not infeasibility_certified(A, b, -gamma * np.array([1.0, 1.0]), dims)  # ∉ K*
    assert not infeasibility_certified(A, b, np.array([np.nan, 1.0]), dims)


@pytest.mark.parametrize("alpha", SCALES)
@pytest.mark.parametrize("beta", SCALES)
def test_unboundedness_certificate_is_judged_scale_invariantly(alpha, beta):
    dims = ConeDims(nonneg=1)
    A, c = _csc(alpha * UNBOUNDED_A), beta * UNBOUNDED_C
    for gamma in SCALES:
        assert unboundedness_certified(A, c, np.array([gamma]), dims)
        assert not unboundedness_certified(A, c, np.array([-gamma]), dims)  # cᵀx > 0
        assert not unboundedness_certified(A, c, np.array([gamma]), dims, P=_csc([[alpha]]))
    # x ≥ 0 replaced by x = 0 (zero cone): Ax + s = 0 forces x = 0, no ray
    assert not unboundedness_certified(A, c, np.array([1.0]), ConeDims(zero=1))


def test_a_ray_whose_objective_is_one_entrys_rounding_certifies_nothing():
    """min c₁x₁ + t₁ with x₁·t₁ >= 1 (CVXPY's (x + t, x − t, 2) for inv_pos) has no ray: its
    cone needs x₁, t₁ >= 0. x = (−3e-16, 0.5) meets the cone to rounding (x₁ is the rounding
    of t₁ in those rows), and c₁ = 9e15 makes that rounding an objective of −1.7. Refused, as
    is that point scaled up (genuine rays are accepted at every scale:
    `test_unboundedness_certificate_is_judged_scale_invariantly`)."""
    A = _csc([[-1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])
    dims = ConeDims(soc=[3])
    c = np.array([8.7e15, 1.0])
    x = np.array([-3.1e-16, 0.5])
    assert c @ x < 0
    assert not unboundedness_certified(A, c, x, dims)
    assert not unboundedness_certified(A, c, 1e6 * x, dims)


def test_a_ray_whose_objective_rides_on_a_second_order_cones_curvature_certifies_nothing():
    """max w·√x − c·x at w = 1e12, c = 1e3 (x = (w/2c)², bounded) as min −w'·t + c'·x over
    the cone (x/4, x/4, t/2): the point (x, t) = (6e7, 0.61) misses the cone by 3e-9,
    inside the rounding of x/4 = 1.5e7, and its objective −1 comes from t alone, which the
    cone holds only to √(2 · 1.5e7 · that rounding) ~ 1: refused (it was `unbounded`). A
    genuine ray along the cone's boundary, t = 0, has no negative objective to offer."""
    A = _csc([[0.0, -0.25], [0.0, -0.25], [-0.5, 0.0]])
    dims = ConeDims(soc=[3])
    c = np.array([-0.90949, 9.0949e-10])
    x = np.array([0.61017, 6.0410e7])
    assert c @ x < 0
    assert not unboundedness_certified(A, c, x, dims)


# SCS's Farkas certificate for min cᵀx s.t. sqrt(x) >= d at d = 4.6e8 · (1, 1.7), c = 1
# (x = d², feasible), equilibrated: rows 0-1 the constraints t >= d, then per entry the cone
# x·1 >= t² as (x/4 + ε, x/4 − ε, t/2), ε = 2⁻³⁰.
_SQRT_A = [[0.0, 0.0, -0.25, 0.0], [0.0, 0.0, 0.0, -0.25], [-0.25, 0.0, 0.0, 0.0],
           [-0.25, 0.0, 0.0, 0.0], [0.0, 0.0, -0.5, 0.0], [0.0, -0.25, 0.0, 0.0],
           [0.0, -0.25, 0.0, 0.0], [0.0, 0.0, 0.0, -0.5]]
_SQRT_B = [-0.43228164594620466, -0.734878798108548, 2.0**-30, -(2.0**-30), 0.0, 2.0**-30,
           -(2.0**-30), 0.0]
_SQRT_Y = [7.715293180970195, 8.55427381022915, 85941700.36065415, -85941700.36065404,
           -3.857646590485099, 112997007.58328955, -112997007.58328949, -4.277136905114575]
# The same for power(x, 1/4) >= d at d = 1e10 · (1, 1.7): two cones per entry in a chain,
# (u/4 + ε, ε − u/4, t/2) then (x/4 + ε, x/4 − ε, u/2), ε = 2⁻²⁹.
_E = 2.0**-29
_POW_A = [[0, 0, 0, 0, -0.25, 0], [0, 0, 0, 0, 0, -0.25], [0, 0, -0.25, 0, 0, 0],
          [0, 0, 0.25, 0, 0, 0], [0, 0, 0, 0, -0.5, 0], [0, 0, 0, -0.25, 0, 0],
          [0, 0, 0, 0.25, 0, 0], [0, 0, 0, 0, 0, -0.5], [-0.25, 0, 0, 0, 0, 0],
          [-0.25, 0, 0, 0, 0, 0], [0, 0, -0.5, 0, 0, 0], [0, -0.25, 0, 0, 0, 0],
          [0, -0.25, 0, 0, 0, 0], [0, 0, 0, -0.5, 0, 0]]
_POW_B = [-0.4012947324723139, -0.6822010452029336, _E, _E, 0.0, _E, _E, 0.0, _E, -_E, 0.0,
          _E, -_E, 0.0]
_POW_Y = [1.0468479039609189, 0.8500886866839444, 2127.925727097991, 2127.925629763503,
          -0.5234239519797917, 2398.903205283672, 2398.903135675793, -0.42504434334130464,
          1362.334919441103, -1362.3349194411016, -4.86672443443339e-05, 1074.082502274273,
          -1074.0825022742724, -3.480394030778669e-05]


@pytest.mark.parametrize("case", ["sqrt", "power chain"])
def test_a_farkas_certificate_resting_on_a_cones_curvature_certifies_nothing(case):
    """ŷ ∈ K*, Aᵀŷ = 0 to 16 ulps, bᵀŷ = −9.3 (sqrt) or −1.0 (the chain): SCS's certificates
    that the feasible programs above are infeasible. Each cone x·1 >= t² sits on its axis
    ray to rounding (its first two entries ±8.6e7 agree to 1e-7, inside the rounding of x's
    column), which the cone's curvature turns into room for a transverse entry of
    √(2 · 8.6e7 · 3e-7) ~ 7: the entry −3.9 could be 0, and t's column ties it to the
    constraint's multiplier, whose b makes bᵀŷ. In the chain the room passes from the second
    cone's transverse entry through u's column to the first cone's axis entries and on to
    its transverse one. Refused (both were accepted); the same certificates scaled too."""
    A, b, y = ((_SQRT_A, _SQRT_B, _SQRT_Y) if case == "sqrt" else (_POW_A, _POW_B, _POW_Y))
    A, b, y = _csc(np.array(A, dtype=float)), np.array(b), np.array(y)
    dims = ConeDims(nonneg=2, soc=[3] * ((len(b) - 2) // 3))
    assert b @ y < 0
    assert np.abs(A.T @ y).max() <= 1e-14 * (abs(A).T @ np.abs(y)).max()
    for scale in (1.0, 1e-8, 1e8):
        assert not infeasibility_certified(A, b, scale * y, dims)


@pytest.mark.parametrize("form", ["sqrt", "power(x, 1/4)"])
def test_a_feasible_program_with_large_roots_is_never_infeasible(form):
    """min cᵀx s.t. sqrt(x) >= d (x = d²), and power(x, 1/4) >= d (x = d⁴), for d over 1e7 …
    1e11 and 1e4 … 3e7, where the cone's constant 1 lies below the rounding of x: SCS's
    certificates of infeasibility (3 and 10 of a sweep) rested on the cones' curvature.
    Solved to x, or not solved; never infeasible."""
    n = 2
    x, c, d = cp.Variable(n), cp.Parameter(n, pos=True), cp.Parameter(n, pos=True)
    if form == "sqrt":
        con, root, ds = cp.sqrt(x) >= d, 2, 10.0 ** np.arange(7, 11.01, 1 / 3)
    else:
        con, root, ds = cp.power(x, 0.25) >= d, 4, 10.0 ** np.arange(4, 7.51, 1 / 3)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x), [con]), [c, d], [x], on_failure="nan")
    C = np.repeat(np.array([[1.0, 1.0], [1e6, 1e6]]), ds.size, axis=0)
    D = np.tile(ds[:, None] * np.array([1.0, 1.7]), (2, 1))
    fwd = layer.forward([C, D])
    for i, status in enumerate(fwd.info.status):
        assert status is not Status.INFEASIBLE, (C[i], D[i])
        if status is Status.SOLVED:
            xt = D[i] ** root
            assert np.abs(fwd.outputs[0][i] - xt).max() <= 1e-8 * xt.max(), (C[i], D[i])


@pytest.mark.parametrize("form", ["sqrt", "power(x, 1/4)", "geo_mean"])
def test_infeasible_programs_through_second_order_cones_are_infeasible(form):
    """sqrt(x) >= d with x <= d²/2, power(x, 1/4) >= d with x <= d⁴/2 and geo_mean(z) >= d
    with z <= d/2 have no feasible point; their certificates pass through second-order
    cones away from their axis rays and are accepted: infeasible at d = 1e-3, 1, 1e3."""
    ds = np.array([1e-3, 1.0, 1e3])
    d, e = cp.Parameter(pos=True), cp.Parameter(pos=True)
    if form == "geo_mean":
        v = cp.Variable(3)
        cons, es = [cp.geo_mean(v) >= d, v <= e], ds / 2
    else:
        v = cp.Variable()
        root = 2 if form == "sqrt" else 4
        cons = [(cp.sqrt(v) if root == 2 else cp.power(v, 0.25)) >= d, v <= e]
        es = ds**root / 2
    layer = dl.compile(cp.Problem(cp.Minimize(0 * cp.sum(v)), cons), [d, e], [v],
                       on_failure="nan")
    fwd = layer.forward([ds, es])
    assert all(s is Status.INFEASIBLE for s in fwd.info.status), fwd.info.status


def test_a_ray_resting_on_a_chained_cones_curvature_certifies_nothing():
    """SCS's ray for max x^(2/3) − c·x at c = 4.6e3 (bounded: x = (1.5c)⁻³), equilibrated:
    columns (t, x, w), cones (x + w, x − w, t) and (t/2, −t/2, 1.4e-14·w). The second sits
    on its axis ray with its transverse entry 1.2e-13 inside the curvature's room (~4e-7),
    so w is free to be 0 there, and the first cone then leaves t no room: the objective
    −0.5t + 0.57x = −1 rests on nothing. Refused (it was accepted); genuine rays through
    the same cones are accepted (`test_unbounded_programs_through_second_order_cones_are_
    unbounded`)."""
    A = _csc(np.array([[0.0, -1.0, -1.0], [0.0, -1.0, 1.0], [-1.0, 0.0, 0.0],
                       [-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, -1.4210854715202004e-14]]))
    c = np.array([-0.5, 0.5666001994155498, 0.0])
    x = np.array([10.515928811899295, 7.514936299602001, 8.382938408716614])
    dims = ConeDims(soc=[3, 3])
    assert c @ x < 0
    for scale in (1.0, 1e-8, 1e8):
        assert not unboundedness_certified(A, c, scale * x, dims)


@pytest.mark.parametrize("form", ["x^(1/4) + cx", "sqrt(x) + cx", "geo_mean + cz",
                                  "-x + c/x"])
def test_unbounded_programs_through_second_order_cones_are_unbounded(form):
    """Programs unbounded for every c > 0 whose rays run through chains of second-order
    cones: reported unbounded at c = 1e-3, 1, 1e3."""
    cs = np.array([1e-3, 1.0, 1e3])
    c = cp.Parameter(pos=True)
    v = cp.Variable(3) if form == "geo_mean + cz" else cp.Variable()
    objective = {"x^(1/4) + cx": lambda: cp.Maximize(cp.power(v, 0.25) + c * v),
                 "sqrt(x) + cx": lambda: cp.Maximize(cp.sqrt(v) + c * v),
                 "geo_mean + cz": lambda: cp.Maximize(cp.geo_mean(v) + c * v[0]),
                 "-x + c/x": lambda: cp.Minimize(-v + c * cp.inv_pos(v))}[form]()
    layer = dl.compile(cp.Problem(objective), [c], [v], on_failure="nan")
    fwd = layer.forward([cs])
    assert all(s is Status.UNBOUNDED for s in fwd.info.status), fwd.info.status


def test_a_bounded_power_with_a_chained_cone_is_never_unbounded():
    """max x^(2/3) − c·x (CVXPY's chain of two cones) is bounded for every c > 0, x =
    (1.5c)⁻³; SCS's rays at 9 of 145 c over 1e-12 … 1e12 (`test_a_ray_resting_on_a_chained_
    cones_curvature_certifies_nothing`) made it `unbounded`. Solved to x, or not solved;
    x is checked where it is above 1e-13 of the data's scale (below, an output is certified
    as the zero it rounds to: `layer.ZERO_FLOOR`)."""
    x, c = cp.Variable(1), cp.Parameter(1, pos=True)
    layer = dl.compile(cp.Problem(cp.Maximize(cp.sum(cp.power(x, 2 / 3)) - c @ x)), [c], [x],
                       on_failure="nan")
    cs = 10.0 ** np.arange(-12, 12.001, 1 / 6)
    fwd = layer.forward([cs[:, None]])
    for i, status in enumerate(fwd.info.status):
        assert status is not Status.UNBOUNDED and status is not Status.INFEASIBLE, cs[i]
        xt = (1.5 * cs[i]) ** -3.0
        if status is Status.SOLVED and cs[i] <= 1e4:
            assert abs(fwd.outputs[0][i, 0] - xt) <= 1e-8 * xt, cs[i]


@pytest.mark.parametrize("solver", [None, "clarabel"])
def test_a_bounded_sum_of_inverses_with_coefficients_far_apart_is_not_unbounded(solver):
    """min cᵀx + Σ 1/xᵢ at c = (7.6e-3, 1.4e10, 4.5e-11, 2.1e-2) is bounded (x = 1/√c); SCS's
    ray held one entry at the rounding of its cone's other, which a coefficient ~1e16 in the
    solver's scaling made the whole objective: reported `unbounded`. Solved to x = 1/√c, or
    not solved; never unbounded."""
    x, c = cp.Variable(4), cp.Parameter(4, pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x + cp.sum(cp.power(x, -1.0)))), [c], [x],
                       on_failure="nan")
    cv = np.array([0.007577179886481494, 14003281782.736822, 4.458291397676991e-11,
                   0.020889338412336287])
    fwd = layer.forward([cv[None]], solver=solver)
    status = fwd.info.status[0]
    assert status is not Status.UNBOUNDED and status is not Status.INFEASIBLE, status
    if status is Status.SOLVED:
        xt = 1 / np.sqrt(cv)
        assert np.abs(fwd.outputs[0][0] - xt).max() <= 1e-8 * xt.max()


class _FakeSCS:
    """An SCS solver that returns a given status and (x, y, s)."""

    def __init__(self, status_val: int, x: np.ndarray, y: np.ndarray) -> None:
        self.sol = {"x": x, "y": y, "s": np.full_like(y, np.nan),
                    "info": {"status_val": status_val, "iter": 100}}

    def solve(self, *args):
        return self.sol


@pytest.mark.parametrize("y, expected", [(np.array([1.0, 1.0]), Status.INFEASIBLE),
                                         (np.array([1.0, 2.0]), Status.INACCURATE)])
def test_scs_inaccurate_infeasibility_counts_only_when_certified(monkeypatch, y, expected):
    """SCS's "infeasible (inaccurate)" with a valid certificate is infeasible; with an invalid
    one it is inaccurate, with the origin as the iterate to start again from."""
    fake = _FakeSCS(SCS_INFEASIBLE_INACCURATE, np.full(1, np.nan), y)
    monkeypatch.setattr(scs_backend, "_scs_solver", lambda *a: fake)
    res = solve_batch(SCS, [_csc(INFEASIBLE_A)], INFEASIBLE_B[None], np.zeros((1, 1)),
                      ConeDims(nonneg=2), scs_backend.SCS_DEFAULTS)
    assert res.status == [expected]
    if expected is Status.INACCURATE:
        assert not res.x.any() and not res.y.any() and not res.s.any()


def test_scs_sigint_status_raises(monkeypatch):
    fake = _FakeSCS(SCS_SIGINT, np.full(1, np.nan), np.full(2, np.nan))
    monkeypatch.setattr(scs_backend, "_scs_solver", lambda *a: fake)
    with pytest.raises(KeyboardInterrupt):
        solve_batch(SCS, [_csc(INFEASIBLE_A)], INFEASIBLE_B[None], np.zeros((1, 1)),
                    ConeDims(nonneg=2), scs_backend.SCS_DEFAULTS)


class PanicException(BaseException):
    """What PyO3 raises for a panic in a Rust solver (Clarabel, Moreau): a BaseException."""


PanicException.__module__ = "pyo3_runtime"


def test_only_solver_failures_are_recorded_as_statuses():
    assert solver_failure(ValueError("bad data")) and solver_failure(PanicException("oob"))
    assert not solver_failure(KeyboardInterrupt()) and not solver_failure(SystemExit(1))

    class Other(BaseException):  # (a BaseException of that name from elsewhere is not one)
        pass

    Other.__name__ = "PanicException"
    assert not solver_failure(Other())


def test_a_solver_panic_on_one_instance_loses_none_of_the_others():
    """x ∈ [lo, hi] minimizing x: x* = lo. The instance whose b holds the marker panics in
    the backend, as Clarabel did on a log-det program; it fails, the others are solved."""
    marker = 7.0

    class Panics:
        name = "scs"

        def solve(self, A, b, c, dims, settings, P=None, warm=None, shared=None):
            if b[0] == marker:
                raise PanicException("index out of bounds: the len is 35 but the index is -1")
            return SCS.solve(A, b, c, dims, settings, P=P, warm=warm, shared=shared)

    b = np.array([[0.0, 1.0], [marker, 1.0], [2.0, 3.0]])  # lo = −b₀, hi = b₁
    res = solve_batch(Panics(), [_csc(INFEASIBLE_A)] * 3, b, np.ones((3, 1)),
                      ConeDims(nonneg=2), scs_backend.SCS_DEFAULTS)
    assert res.status[1] is Status.FAILED and np.isnan(res.x[1]).all()
    assert res.status[0] is res.status[2] is Status.SOLVED
    assert max_abs(res.x[[0, 2], 0], -b[[0, 2], 0]) <= 1e-3


def test_a_layer_whose_solver_panics_reports_failures_not_the_panic(monkeypatch):
    """Every Clarabel solve panics: the call raises SolverError naming the instances (or, with
    ``on_failure="nan"``, returns NaN there), never the panic itself; an instance another
    backend settles matches the closed form."""
    import declarative.backends.clarabel as clarabel_backend

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(clarabel_backend.ClarabelBackend, "solve", panic)
    n = 4
    x, th = cp.Variable(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [x >= -1, x <= 1])
    layer = dl.compile(prob, [th], [x], solver="clarabel")
    theta = 2.0 * np.random.default_rng(0).standard_normal((3, n))
    with pytest.raises(dl.SolverError, match="0.*1.*2"):
        layer.forward([theta])
    fwd = layer.forward([theta], on_failure="nan")
    ok = np.array([st is Status.SOLVED for st in fwd.info.status])
    assert np.isnan(fwd.outputs[0][~ok]).all()
    assert max_abs(fwd.outputs[0][ok], np.clip(theta[ok], -1, 1)) <= 1e-8


def test_feasible_box_at_scale_1e12_is_solved_not_infeasible():
    """Data × 1e12: SCS (at any tolerance) stops with "infeasible (inaccurate)" and a
    certificate that does not verify; the instance is then solved from the origin by
    refinement, and matches the closed form."""
    n = 5
    layer = _box(n)
    values = _box_values(3, n, 1e12)
    t = layer.template
    theta, _ = layer.batch(values)
    c, a, b = t.apply(theta)
    P = [t.P_matrix(h, upper=True) for h in t.apply_P(theta)]
    raw = solve_batch(SCS, [t.matrix(a_) for a_ in a], b, c, t.dims, scs_backend.SCS_DEFAULTS, P)
    assert Status.INFEASIBLE not in raw.status
    fwd = layer.forward(values)
    assert [str(s) for s in fwd.info.status] == ["solved"] * 3
    assert max_abs(fwd.outputs[0], np.clip(*values)) <= 1e-8 * 1e12


@pytest.mark.parametrize("scale", SCALES)
def test_infeasible_and_unbounded_are_reported_at_every_scale(scale):
    n = 4
    box = _box(n)
    theta = scale * np.arange(n, dtype=float)
    fwd = box.forward([theta, scale * np.ones(n), -scale * np.ones(n)], on_failure="nan")
    assert [str(s) for s in fwd.info.status] == ["infeasible"]  # lo > hi
    x, c, lo = cp.Variable(n), cp.Parameter(n), cp.Parameter(n)
    lp = dl.compile(cp.Problem(cp.Minimize(c @ x), [x >= lo]), [c, lo], [x])
    fwd = lp.forward([-scale * np.arange(1.0, n + 1), scale * np.ones(n)], on_failure="nan")
    assert [str(s) for s in fwd.info.status] == ["unbounded"]  # c < 0, x unbounded above
    fwd = lp.forward([scale * np.arange(1.0, n + 1), scale * np.ones(n)])
    assert max_abs(fwd.outputs[0][0], scale * np.ones(n)) <= 1e-8 * scale  # c > 0: x = lo


# -- fork -------------------------------------------------------------------------------------
def _one_parameter_batch(name: str, count: int, **sizes):
    """A fresh layer of the zoo problem ``name`` (one parameter) at its sizes updated by
    ``sizes``, a batch of its instances 0 … count−1, and their closed-form first outputs."""
    mod = problems.get(name)
    sizes = {**mod.SIZES, **sizes}
    insts = [problems.instance(name, s, **sizes) for s in range(count)]
    return (dl.compile(*mod.build(**sizes)), [np.stack([i.params[0] for i in insts])],
            [i.solution[0] for i in insts])


def test_layer_works_in_a_forked_child(monkeypatch):
    """The pool is started in the parent, then the process forks (as a DataLoader worker
    does): the child's batch is solved, and matches the closed form. Bounded: a child that
    hangs is killed and the test fails."""
    monkeypatch.setattr(parallel, "_CPUS", 2)
    layer, values, solutions = _one_parameter_batch("sparsemax", 4)
    layer.forward(values)
    assert parallel._pool is not None
    message = _error_in_forked_child(layer, values, solutions)
    assert float(message) <= 1e-8, message


def _error_in_forked_child(layer, values, solutions) -> str:
    """Fork; the child solves ``values`` with ``layer`` and reports its first output's max
    abs error against ``solutions`` (or the exception it met), then exits, whatever happens.
    Bounded: a child that hangs is killed and the test fails (`_child_message`)."""
    def error() -> str:
        out = layer.forward(values).outputs[0]
        return repr(max(max_abs(o, s) for o, s in zip(out, solutions, strict=True)))

    return _in_forked_child(error, 120.0)


def test_a_result_linearizing_on_another_thread_holds_up_neither_others_nor_a_fork(
        monkeypatch):
    """While one result's linearization (its first VJP's) runs on another thread, another
    result's VJP goes on, and a child forked meanwhile (a DataLoader worker) computes VJPs.
    With `functools.cached_property` on Python 3.11, every result waited on one lock of
    the class's, which a fork left held in the child for good."""
    from declarative.layer import Forward

    monkeypatch.setattr(parallel, "_CPUS", 2)
    layer, values, _ = _one_parameter_batch("sparsemax", 4)
    g = [np.ones_like(layer.forward(values).outputs[0])]
    expected = layer.forward(values).vjp(g)[0]
    first, second = layer.forward(values), layer.forward(values)
    inside, release = threading.Event(), threading.Event()
    linearize = Forward._linearize_batch

    def held(self):
        if self is first:
            inside.set()
            release.wait(60.0)
        return linearize(self)

    monkeypatch.setattr(Forward, "_linearize_batch", held)
    thread = threading.Thread(target=lambda: first.vjp(g))
    thread.start()
    try:
        assert inside.wait(30.0)
        done: list = []
        other = threading.Thread(target=lambda: done.append(second.vjp(g)[0]))
        other.start()
        other.join(60.0)
        assert done and np.array_equal(done[0], expected)
        message = _in_forked_child(
            lambda: repr(max_abs(layer.forward(values).vjp(g)[0], expected)), 60.0)
        assert float(message) == 0.0, message
    finally:
        release.set()
        thread.join()
    assert np.array_equal(first.vjp(g)[0], expected)


def test_a_result_is_copied_and_pickled_after_its_first_vjp():
    """A result's first VJP keeps its linearization under a lock of its own; copied or
    pickled after it (the lock left out), the copy's VJP is the original's, bitwise."""
    layer, values, _ = _one_parameter_batch("sparsemax", 4)
    fwd = layer.forward(values)
    g = [np.ones_like(fwd.outputs[0])]
    first = fwd.vjp(g)[0]
    for copied in (copy.deepcopy(fwd), pickle.loads(pickle.dumps(fwd))):
        assert np.array_equal(copied.vjp(g)[0], first)


_AFTER_MAIN_RETURNED = """
import threading, time, numpy as np
import declarative as dl
from declarative import problems
mod = problems.get("softmax"); sizes = {**mod.SIZES, "n": 1000}
layer = dl.compile(*mod.build(**sizes))
inst = problems.instance("softmax", 0, **sizes)
values = [inst.params[0][None]]
layer.forward(values)
def late():
    time.sleep(1.0)  # the main thread has returned, the pool is shut down
    out = layer.forward(values, on_failure="nan")
    print("late", bool(out.ok.all()), float(np.abs(out.outputs[0][0] - inst.solution[0]).max()))
threading.Thread(target=late).start()
"""


def test_a_thread_that_outlives_the_main_thread_solves():
    """A thread still calling a layer after the main thread returned (the pool shut down at
    exit): its sparse factorizations, meant for a pool worker, are made on that thread, and
    the instance is solved (it was reported not solved: the failed hand-off read as a
    singular matrix)."""
    done = subprocess.run([sys.executable, "-c", _AFTER_MAIN_RETURNED], capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
    late = [line for line in done.stdout.splitlines() if line.startswith("late")]
    assert late, done.stdout + done.stderr
    _, ok, error = late[0].split()
    assert ok == "True" and float(error) <= 1e-8, late[0]


def _in_forked_child(report: Callable[[], str], seconds: float) -> str:
    """Fork; the child sends what ``report()`` returns (or the exception it raised) and
    exits, whatever happens; the parent gets it within ``seconds`` (`_child_message`)."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        pid = os.fork()
    if pid == 0:
        try:
            message = report()
        except BaseException as exc:  # noqa: BLE001
            message = f"error: {exc!r}"
        finally:
            os.write(write, message.encode()[:4096])
            os._exit(0)
    os.close(write)
    return _child_message(pid, read, seconds)


def test_fork_resets_locks_and_pool_in_the_child(monkeypatch):
    """A lock held by another thread at the fork is free in the child; the child's pool is new."""
    monkeypatch.setattr(parallel, "_CPUS", 2)
    parallel.parallel_map(lambda i: i, [0, 1])
    with _held_by_another_thread(parallel._pool_lock, parallel._blas_lock):
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                out = parallel.parallel_map(lambda i: i + 1, [0, 1, 2, 3])
                message = "ok" if out == [1, 2, 3, 4] and parallel._blas_depth == 0 \
                    else repr(out)
            except BaseException as exc:  # noqa: BLE001
                message = f"error: {exc!r}"
            finally:
                os.write(write, message.encode())
                os._exit(0)
    os.close(write)
    assert _child_message(pid, read, 60.0) == "ok"


@contextlib.contextmanager
def _held_by_another_thread(*locks):
    """``locks`` held by a thread of their own for the duration of the block."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            holding.set()
            release.wait(10.0)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10.0)
    try:
        yield
    finally:
        release.set()
        thread.join()


def test_a_forked_child_solves_with_moreau_after_the_parent_kept_a_solver():
    """Moreau's compiled solver is kept between calls, and a live one owns worker threads that
    a forked child lacks (a child that solves then hangs, even with a solver of its own). The
    layer is called (a solver kept), the process forks (as a DataLoader worker does), and the
    child solves the batch through Moreau to the closed form (the zoo's polytope projection);
    the parent's next call gives bitwise its first call's outputs."""
    pytest.importorskip("moreau")
    from declarative.backends import moreau as moreau_backend

    mod = problems.get("polytope_projection")
    insts = [problems.instance("polytope_projection", s, **mod.SIZES) for s in range(4)]
    values = [np.stack([i.params[k] for i in insts]) for k in range(len(insts[0].params))]
    layer = dl.compile(*mod.build(**mod.SIZES), solver="moreau")
    first = layer.forward(values).outputs[0]
    assert moreau_backend.MOREAU._compiled._kept
    message = _error_in_forked_child(layer, values, [i.solution[0] for i in insts])
    assert float(message) <= 1e-8, message
    assert np.array_equal(layer.forward(values).outputs[0], first)


def test_a_forked_child_solves_an_sdp_with_clarabel():
    """Clarabel can run a PSD cone's work on a thread pool of its own (from k ≈ 20), which a
    forked child lacks: its first solve blocked for good. The layer solves a PSD projection
    (k = 20) with Clarabel, the process forks (as a DataLoader worker does), and the child
    solves the batch to the closed form."""
    mod = problems.get("psd_trace_projection")
    sizes = {**mod.SIZES, "k": 20}
    insts = [problems.instance("psd_trace_projection", s, **sizes) for s in range(2)]
    values = [np.stack([i.params[0] for i in insts])]
    layer = dl.compile(*mod.build(**sizes), solver="clarabel")
    first = layer.forward(values).outputs[0]
    assert max(max_abs(o, i.solution[0]) for o, i in zip(first, insts, strict=True)) <= 1e-8
    message = _error_in_forked_child(layer, values, [i.solution[0] for i in insts])
    assert float(message) <= 1e-8, message


def test_a_fork_beside_superlu_factors_of_another_thread_leaves_a_clean_child():
    """A thread that made a SuperLU factorization still alive (a pool worker's, kept with a
    result or a layout) has its SciPy table cleared in a forked child, which up to SciPy
    1.17 fails and leaves an error pending that breaks the child's first at-fork hook
    (threading's, or `random`'s reseeding: the child printed a SystemError, and counted the
    parent's threads as alive or drew the parent's random numbers). Here the child reports
    nothing, runs one thread, and draws random numbers of its own."""
    n = 300
    A = (sp.random(n, n, density=0.02, random_state=0) + 10 * sp.eye(n)).tocsc()
    made, release = threading.Event(), threading.Event()
    kept: list = []

    def hold() -> None:
        kept.append(splu(A))
        made.set()
        release.wait(30.0)

    thread = threading.Thread(target=hold)
    thread.start()
    assert made.wait(30.0)
    reported: list = []
    saved, sys.unraisablehook = sys.unraisablehook, reported.append
    try:
        message = _in_forked_child(
            lambda: f"{threading.active_count()} {len(reported)} {random.random()!r}", 60.0)
    finally:
        sys.unraisablehook = saved
        release.set()
        thread.join()
    threads, failures, child_drew = message.split()
    drawn = random.random()  # (the parent's next number: the child's, had it not reseeded)
    assert (threads, failures, reported) == ("1", "0", [])
    assert float(child_drew) != drawn
    assert np.allclose(A @ kept[0].solve(np.ones(n)), 1.0)


def _child_message(pid: int, read: int, seconds: float) -> str:
    """What a forked child wrote to the pipe ``read`` before exiting; the test fails (and the
    child is killed) if it has not exited within ``seconds``."""
    deadline = time.monotonic() + seconds
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.02)
    message = os.read(read, 4096).decode()
    os.close(read)
    return message


# -- bounded caches ---------------------------------------------------------------------------
def test_shared_workspaces_are_bounded_per_thread(monkeypatch):
    """A schedule of tolerances (a new eps every call) keeps at most WORKSPACES_PER_THREAD
    SCS workspaces per thread, and every call stays exact."""
    monkeypatch.setattr(parallel, "_CPUS", 2)
    layer, values, solutions = _one_parameter_batch("sparsemax", 4)
    made: list[SharedData] = []
    real = SCS.share
    monkeypatch.setattr(SCS, "share", lambda *a: made.append(real(*a)) or made[-1])
    layer.forward(values)
    # (one made for the scale's calibration and dropped, one the layer keeps)
    assert layer.tuning.share_workspaces is True and len(made) == 2
    shared = made[-1]
    for k in range(12):
        eps = 1e-3 * (1 + k / 12)
        fwd = layer.forward(values, solver_args={"eps_abs": eps, "eps_rel": eps})
        assert max(max_abs(o, s) for o, s in zip(fwd.outputs[0], solutions, strict=True)) <= 1e-8
        one = layer.forward([values[0][0]], solver_args={"eps_abs": eps, "eps_rel": eps})
        assert max_abs(one.outputs[0][0], solutions[0]) <= 1e-8
    counts = parallel.parallel_map(lambda _: len(shared.workspaces()), list(range(8)))
    counts.append(len(shared.workspaces()))
    assert 0 < max(counts) <= SharedData.WORKSPACES_PER_THREAD
    assert len(shared.workspaces()) == SharedData.WORKSPACES_PER_THREAD  # main: 12 settings
    assert len(made) == 2


# -- concurrent first calls -------------------------------------------------------------------
def test_concurrent_first_calls_agree_with_some_serial_order():
    """Eight threads call a new layer at once, each with its own batch (data at different
    scales, so the first-call decisions depend on which batch is first). The result must be
    what a serial history gives: for some batch j, every thread's outputs bitwise equal
    those of a new layer called first with batch j, then with the thread's batch."""
    n, k = 8, 8
    batches = [_box_values(3, n, 10.0 ** (j - 4), seed=j) for j in range(k)]
    layer = _box(n)
    barrier = threading.Barrier(k)
    outs: list = [None] * k

    def call(j: int) -> None:
        barrier.wait(30.0)
        outs[j] = layer.forward(batches[j]).outputs[0]

    threads = [threading.Thread(target=call, args=(j,)) for j in range(k)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120.0)
    assert all(o is not None for o in outs)
    for j, vals in enumerate(batches):  # each right, whatever the decisions
        assert max_abs(outs[j], np.clip(*vals)) <= 1e-8 * 10.0 ** (j - 4)
    matches = []
    for first in range(k):
        serial = _box(n)
        serial.forward(batches[first])
        matches.append(all(np.array_equal(serial.forward(batches[j]).outputs[0], outs[j])
                           for j in range(k)))
    assert any(matches)


@pytest.mark.parametrize("scale", SCALES)
def test_a_ray_with_noise_on_its_other_rows_is_polished_on_its_support(scale):
    """Two opposite rows g·x <= h₀ and −g·x <= −h₀ − 1 beside ten others: y = e₀ + e₁ is the
    certificate. SCS at eps 1e-3 returns it with noise of up to 1e-3 of its largest entry
    on every other row, and 1e-4 between the two, which no polish within CERTIFICATE_SNAP
    of it removes; on the support of its large entries it is the exact ray. A ray whose
    large entries are not one (e₀ + 2e₁) is still refused."""
    rng = np.random.default_rng(0)
    n, m = 6, 12
    G = rng.standard_normal((m, n))
    G[1] = -G[0]
    h = np.abs(rng.standard_normal(m))
    h[1] = -h[0] - 1.0
    A, b = _csc(scale * G), scale * h
    dims = ConeDims(nonneg=m)
    noise = np.abs(rng.standard_normal(m)) * 6e-4
    noise[:2] = [0.0, -1.5e-4]
    y = np.zeros(m)
    y[:2] = 1.0
    assert infeasibility_certified(A, b, 7.0 * (y + noise), dims)
    y[1] = 2.0
    assert not infeasibility_certified(A, b, 7.0 * (y + noise), dims)


def test_a_layer_and_its_sparse_layout_locked_by_another_thread_at_the_fork_are_free_in_the_child(
        monkeypatch):
    """A thread holds a fresh layer's lock (where its first call decides the tuning) and its
    sparse layout's (where SuperLU's ordering is decided) while the process forks: the
    child's first call takes both and solves its batch to the closed form. Bounded: a child
    that waits on a lock held by a thread it does not have is killed and the test fails."""
    from declarative.derivative import sparse_layout, use_dense

    monkeypatch.setattr(parallel, "_CPUS", 2)
    layer, values, solutions = _one_parameter_batch("sparsemax", 6, n=100)
    t = layer.template
    assert not use_dense(t)  # (a sparse layout, with its own lock)
    with _held_by_another_thread(layer._lock, sparse_layout(t)._lock):
        message = _error_in_forked_child(layer, values, solutions)
    assert float(message) <= 1e-8, message


def test_a_cached_shared_lu_locked_at_the_fork_is_free_in_the_child(monkeypatch):
    """The sparse layout keeps the LUs of S₀ it made (`SharedLU`) across calls, and forms
    their capacitance blocks under their own lock; held by a thread at the fork, that lock
    is free in the child, which solves the PSD trace projection (low-rank S) to the closed
    form. Bounded: a child that hangs is killed and the test fails."""
    from declarative.derivative import low_rank_groups, sparse_layout, use_dense

    monkeypatch.setattr(parallel, "_CPUS", 2)
    layer, values, solutions = _one_parameter_batch("psd_trace_projection", 4, k=20)
    t = layer.template
    assert not use_dense(t) and low_rank_groups(t)
    layer.forward(values)
    lus = [lu for lu in sparse_layout(t, True)._lus.values() if lu is not None]
    assert lus  # (kept for the next call, and for the child)
    with _held_by_another_thread(*(lu._lock for lu in lus)):
        message = _error_in_forked_child(layer, values, solutions)
    assert float(message) <= 1e-8, message
