"""A large batch is refined, certified and differentiated in parts, one per worker thread
(`layer._parts`): every result must be the whole batch's (statuses exactly, numbers to
rounding: batched NumPy reductions may add in another order for another batch size), on
every cone kind, with failed instances among the parts, and bitwise the same again on a
second call."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from declarative import layer as layer_module
from declarative import parallel, problems
from tests.conftest import every_cone_layer, zoo_layer

B = 13  # odd: the two parts differ in size
RTOL = 1e-12


def _values(name: str) -> tuple:
    rng = np.random.default_rng(0)
    if name == "every_cone":
        Y, a = rng.standard_normal((B, 3, 3)), rng.standard_normal((B, 3))
        a[4] *= 1e14  # not solved: a failure inside the first part
        a[7] *= 1e9
        return every_cone_layer(3), [Y, a]
    sizes = {"softmax": {"n": 10}, "sparsemax": {"n": 30}, "qp": {}}[name]
    layer, mod, sizes = zoo_layer(name, **sizes)
    pool = [mod.sample(rng, **sizes) for _ in range(B)]
    values = [np.stack([np.asarray(p[j], dtype=float) for p in pool])
              for j in range(len(pool[0]))]
    values[0][3] *= 1e8  # one instance far from the others' scale
    return layer, values


def _everything(layer, values) -> list:
    """Outputs, statuses, diagnostics, VJP, JVP and one Jacobian of a call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd = layer.forward(values, on_failure="nan")
        rng = np.random.default_rng(1)
        g = [rng.standard_normal(o.shape) for o in fwd.outputs]
        t = [rng.standard_normal(v.shape) for v in values]
        got = [*fwd.outputs, fwd.ok, np.array([str(s) for s in fwd.info.status]),
               fwd.info.residual_after, fwd.info.refine_steps, fwd.nondifferentiable,
               fwd.info.rcond, *fwd.vjp(g), *fwd.jvp(t)]
        last = int(np.flatnonzero(fwd.ok)[-1])
        got += [J for row in fwd.jacobian(last) for J in row]
    return got, fwd


SCALES = (1e-12, 1e-6, 1.0, 1e6, 1e12)


def _zoo_values(name: str) -> tuple:
    """A zoo problem's batch, each instance's parameters scaled by one of SCALES, two
    instances with two of their parameters scaled apart (mixed scales)."""
    layer, mod, sizes = zoo_layer(name)
    rng = np.random.default_rng(2)
    pool = [mod.sample(rng, **sizes) for _ in range(B)]
    values = [np.stack([np.asarray(p[j], dtype=float) for p in pool])
              for j in range(len(pool[0]))]
    for i in range(B):
        for v in values:
            v[i] *= SCALES[i % len(SCALES)]
    if len(values) > 1:
        values[0][5] *= 1e6
        values[-1][10] *= 1e-6
    return layer, values


@pytest.mark.parametrize("name", ["every_cone", "softmax", "sparsemax", "qp"])
def test_a_batch_in_parts_is_the_whole_batch(monkeypatch, name):
    monkeypatch.setattr(parallel, "_CPUS", 2)
    layer, values = _values(name)
    _parts_are_the_whole(monkeypatch, layer, values)
    if name == "every_cone":
        fwd = layer.forward(values, on_failure="nan")
        assert not fwd.ok[4] and fwd.ok.sum() >= B - 2


@pytest.mark.parametrize("name", list(problems.ZOO))
def test_zoo_batches_at_mixed_scales_in_parts_are_the_whole_batch(monkeypatch, name):
    monkeypatch.setattr(parallel, "_CPUS", 2)
    _parts_are_the_whole(monkeypatch, *_zoo_values(name))


def _parts_are_the_whole(monkeypatch, layer, values) -> None:
    """Everything a call gives, whole and (twice) cut in two parts: the parts' calls
    bitwise equal, and equal to the whole batch's (exactly where not floating point, else
    to RTOL of each array's max-norm, NaNs in the same places); the cut checked to have been
    made (`Layer._settle` called per half)."""
    monkeypatch.setattr(layer_module, "SETTLE_PARALLEL_FROM", 10**12)
    whole, fwd = _everything(layer, values)
    assert len(fwd._linearized) == 1
    monkeypatch.setattr(layer_module, "SETTLE_PARALLEL_FROM", 0)
    settled: list[int] = []
    settle = layer_module.Layer._settle

    def counted(self, res, idx, *args):
        settled.append(len(idx))
        return settle(self, res, idx, *args)

    monkeypatch.setattr(layer_module.Layer, "_settle", counted)
    pipes: list[int] = []
    pipelined = layer_module.pipelined

    def counted_pipe(produce, consume, n):
        pipes.append(n)
        return pipelined(produce, consume, n)

    monkeypatch.setattr(layer_module, "pipelined", counted_pipe)
    first = None
    for _ in range(2):
        settled.clear()
        parts, fwd = _everything(layer, values)
        # (the parts were taken: the forward's, and the derivatives' where enough are solved;
        # with PSD or exponential cones the forward's solves overlap its refinement in finer
        # parts, `_pipeline_parts`)
        d = layer.template.dims
        piped = bool(d.psd or d.exp or d.exp_dual)
        cut = [sl.stop - sl.start for sl in layer_module._pipeline_parts(B)] if piped \
            else [B // 2, B - B // 2]
        assert sorted(settled[: len(cut)]) == sorted(cut)
        assert len(fwd._linearized) == (2 if fwd.ok.sum() >= 4 else 1)
        assert len(whole) == len(parts)
        for a, b in zip(whole, parts, strict=True):
            assert a.shape == b.shape
            if a.dtype.kind != "f":
                assert np.array_equal(a, b)
                continue
            assert np.array_equal(np.isnan(a), np.isnan(b))
            scale = max(1.0, float(np.nanmax(np.abs(a), initial=0.0)))
            assert np.nanmax(np.abs(a - b), initial=0.0) <= RTOL * scale
        if first is None:
            first = parts
        else:
            for a, b in zip(first, parts, strict=True):
                assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    # (the second call at least, its orderings decided, solved and refined overlapping;
    # retries of a few instances too)
    assert (len(cut) in pipes) == piped


def test_parts_are_cut_only_for_large_batches(monkeypatch):
    monkeypatch.setattr(parallel, "_CPUS", 2)
    monkeypatch.setattr(layer_module, "SETTLE_PARALLEL_FROM", 1000)
    cut = layer_module._parts
    assert cut(10, 50) == [slice(0, 10)]            # 500 unknowns
    assert cut(20, 50) == [slice(0, 10), slice(10, 20)]
    assert cut(21, 50) == [slice(0, 10), slice(10, 21)]
    assert cut(3, 1000) == [slice(0, 3)]            # fewer than 2 instances a part
    monkeypatch.setattr(parallel, "_CPUS", 1)
    assert cut(20, 50) == [slice(0, 20)]


def test_parallel_map_inside_parallel_map_runs_in_its_calling_thread(monkeypatch):
    """The inner map's items run where its caller runs: two threads busy, not three."""
    monkeypatch.setattr(parallel, "_CPUS", 2)
    seen: list[tuple[str, str]] = []

    def outer(i: int) -> list[int]:
        me = threading.current_thread().name

        def inner(j: int) -> int:
            seen.append((me, threading.current_thread().name))
            return i * 10 + j

        return parallel.parallel_map(inner, [0, 1, 2])

    assert parallel.parallel_map(outer, [0, 1, 2, 3]) == [[i * 10 + j for j in range(3)]
                                                          for i in range(4)]
    assert len(seen) == 12 and all(a == b for a, b in seen)
    # and at the top level the map still uses the pool
    names = parallel.parallel_map(
        lambda i: (threading.Event().wait(0.05), threading.current_thread().name)[1],
        [0, 1, 2, 3])
    assert any(n.startswith(parallel._PREFIX) for n in names)


def test_pipelined_is_the_serial_map_and_overlaps_the_stages(monkeypatch):
    """`parallel.pipelined` gives consume(i, produce(i)) in order, whichever thread ran what;
    one item's production runs beside another's consumption (item 0's consumption ends only
    once item 1's production has started, which a serial run never does: bounded by a
    timeout); nested in `parallel_map` it runs in the calling thread."""
    monkeypatch.setattr(parallel, "_CPUS", 2)
    started = threading.Event()

    def produce(i: int) -> int:
        if i == 1:
            started.set()
        return i * i

    def consume(i: int, p: int) -> tuple[int, int]:
        if i == 0:
            assert started.wait(5.0), "item 1 was not produced beside item 0's consumption"
        return i, p + 1

    n = 9
    assert parallel.pipelined(produce, consume, n) == [(i, i * i + 1) for i in range(n)]
    names = parallel.parallel_map(
        lambda k: parallel.pipelined(lambda i: threading.current_thread().name,
                                     lambda i, p: p == threading.current_thread().name, 4),
        [0, 1])
    assert names == [[True] * 4, [True] * 4]


@pytest.mark.parametrize("stage", ["produce", "consume"])
def test_pipelined_raises_the_first_error_and_starts_nothing_after(monkeypatch, stage):
    monkeypatch.setattr(parallel, "_CPUS", 2)
    ran: list[tuple[str, int]] = []

    def produce(i: int) -> int:
        ran.append(("produce", i))
        if stage == "produce" and i == 3:
            raise ValueError("bad item 3")
        return i

    def consume(i: int, p: int) -> int:
        ran.append(("consume", i))
        if stage == "consume" and i == 3:
            raise ValueError("bad item 3")
        return p

    with pytest.raises(ValueError, match="bad item 3"):
        parallel.pipelined(produce, consume, 40)
    # the tasks are taken in order, two workers: a few beyond the failing one at most
    assert len(ran) < 16
    if stage == "produce":
        assert ("consume", 3) not in ran


def test_blas_is_held_to_one_thread_from_any_thread():
    """`single_threaded_blas` entered from a thread other than the main one limits BLAS too
    (threadpoolctl's OpenBLAS controller obeys only the first thread that set a limit), and
    restores the counts it found."""
    from concurrent.futures import ThreadPoolExecutor

    import scipy.linalg  # noqa: F401  (SciPy's OpenBLAS loaded, as a layer has it)

    with parallel.single_threaded_blas():  # the main thread sets a limit first
        pass

    def inside() -> tuple[list[int], list[int]]:
        before = [lib.num_threads for lib in parallel._blas_libs]
        with parallel.single_threaded_blas():
            held = [lib.num_threads for lib in parallel._blas_libs]
        return held, before

    with ThreadPoolExecutor(1) as ex:
        held, before = ex.submit(inside).result()
    assert held and all(n == 1 for n in held)
    assert [lib.num_threads for lib in parallel._blas_libs] == before


def test_a_call_from_another_thread_is_bitwise_the_main_threads():
    """Outputs and VJP of a call made from a worker thread equal a main-thread call's
    bitwise (Woodbury's dense products of a 20 × 20 PSD block round the same way on one
    BLAS thread whoever calls), and so do three concurrent calls."""
    from concurrent.futures import ThreadPoolExecutor

    layer, mod, sizes = zoo_layer("psd_trace_projection", k=20)
    rng = np.random.default_rng(4)
    pool = [mod.sample(rng, **sizes) for _ in range(4)]
    values = [np.stack([np.asarray(p[j], dtype=float) for p in pool])
              for j in range(len(pool[0]))]
    g = [rng.standard_normal((4, 20, 20))]

    def call() -> list[np.ndarray]:
        fwd = layer.forward(values)
        return [*fwd.outputs, *fwd.vjp(g)]

    main = call()
    with ThreadPoolExecutor(3) as ex:
        others = [f.result() for f in [ex.submit(call) for _ in range(3)]]
    for other in others:
        for a, b in zip(main, other, strict=True):
            assert np.array_equal(a, b)


def test_superlu_ordering_is_decided_once_before_the_parts(monkeypatch):
    """On a layer's first call cut in parts, SuperLU's ordering is decided once, on the
    batch's first instance in the calling thread, before the parts are refined, and every
    part factors with it. Decided by each part on its own first instance, a part could
    factor with one ordering while another part set a second one for every later call.
    Here a decision in a worker thread is made to differ, and the caller's to come last."""
    import time

    import declarative.derivative as der

    monkeypatch.setattr(parallel, "_CPUS", 2)
    monkeypatch.setattr(layer_module, "SETTLE_PARALLEL_FROM", 0)
    layer, mod, sizes = zoo_layer("sparsemax", n=100)
    t = layer.template
    assert not der.use_dense(t)  # (SuperLU's)
    for key in ("sparse_layout", "sparse_layout_low_rank"):
        t.derived.pop(key, None)
    assert layer.tuning.sparse_ordering is None
    rng = np.random.default_rng(5)
    values = [np.stack([np.asarray(mod.sample(rng, **sizes)[0], dtype=float)
                        for _ in range(B)])]
    best, factor = der._best_ordering, der._factor_sparse_one
    deciders: list[str] = []
    used: list[str] = []

    def by_thread(S, timed=False):
        caller = threading.current_thread() is threading.main_thread()
        if caller:
            time.sleep(0.05)
        deciders.append("caller" if caller else "worker")
        return ("COLAMD" if caller else "MMD_AT_PLUS_A"), best(S)[1]

    def recorded(S, ordering="COLAMD", supernodes=True):
        used.append(ordering)
        return factor(S, ordering, supernodes)

    monkeypatch.setattr(der, "_best_ordering", by_thread)
    monkeypatch.setattr(der, "_factor_sparse_one", recorded)
    fwd = layer.forward(values)
    assert fwd.ok.all()
    assert "worker" not in deciders  # (the caller also probes the fill for `use_dense`)
    assert used and set(used) == {"COLAMD"}
    assert layer.tuning.sparse_ordering == "COLAMD"


@pytest.mark.parametrize("name, sizes", [("sparsemax", {"n": 100}),
                                         ("psd_trace_projection", {"k": 20})])
def test_tune_times_superlu_orderings_and_a_call_does_not(monkeypatch, name, sizes):
    """`Layer.tune` chooses SuperLU's orderings by timing on its sample (and keeps S's in
    the tuning), S₀'s too where S is low-rank (the PSD projection); a call decides by fill
    alone, and a tuned layer's later calls do not decide."""
    import declarative.derivative as der

    layer, mod, sizes = zoo_layer(name, **sizes)
    t = layer.template
    assert not der.use_dense(t)
    rng = np.random.default_rng(6)
    values = [np.stack([np.asarray(mod.sample(rng, **sizes)[0], dtype=float)
                        for _ in range(5)])]  # (beyond the active-set path, short of `arrow`)
    best = der._best_ordering
    flags: list[bool] = []  # (each decision's ``timed``)

    def recorded(S, timed=False):
        flags.append(timed)
        return best(S, timed=timed)

    monkeypatch.setattr(der, "_best_ordering", recorded)
    layer.tune(values)
    assert True in flags
    assert not der.sparse_layout(t).timed and not der.sparse_layout(t, True).timed
    if name == "sparsemax":
        assert layer.tuning.sparse_ordering in der.ORDERINGS
    else:
        assert der.sparse_layout(t, True).ordering in der.ORDERINGS
    flags.clear()
    layer.forward(values)
    assert True not in flags
