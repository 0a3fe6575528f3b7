"""The low-memory mode (``Tuning.chunk_size``): the same outputs as the whole batch at once, and
derivatives equal to rounding, through the NumPy API and torch, with failed instances in the
batch; against closed forms where there are some."""

from __future__ import annotations

import copy
import dataclasses
import os
import queue
import threading
import tracemalloc
import warnings
from typing import Any

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import declarative as dl
from declarative import NonDifferentiableWarning
from declarative.derivative import splu
from declarative.errors import ProblemError
from tests.conftest import max_abs, zoo_layer

B = 11  # not a multiple of the chunk: the last chunk is short
CHUNK = 4
# The two modes differ only by rounding: the same solves, batched over different sets of
# instances, and for derivatives different (equally accurate) factorizations: where the default
# mode reuses refinement's last factorization of a nearby S (iterative refinement), the
# low-memory mode factors S itself.
RTOL = 1e-12


def _chunked(layer: dl.Layer, chunk: int = CHUNK) -> dl.Layer:
    low = copy.deepcopy(layer)
    low.tuning = dataclasses.replace(layer.tuning, chunk_size=chunk)
    return low


def _sample(mod, sizes: dict, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = [mod.sample(rng, **sizes) for _ in range(count)]
    return [np.stack([np.asarray(p[j], dtype=float) for p in pool]) for j in range(len(pool[0]))]


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return max_abs(a, b) <= RTOL * max(1.0, float(np.abs(a).max(initial=0.0)))


# sparsemax: S factored sparse; the QP: dense; softmax: exponential cones, where the default
# mode's derivative solves with a nearby factorization (DΠ moved in refinement's last step)
ZOO = {"sparsemax": {"n": 30}, "qp": {}, "softmax": {"n": 10}}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_chunked_numpy_api_matches_whole_batch_and_closed_form(name):
    layer, mod, sizes = zoo_layer(name, **ZOO[name])
    low = _chunked(layer)
    values = _sample(mod, sizes, B)
    whole, chunked = layer.forward(values), low.forward(values)
    assert chunked.chunk == CHUNK and whole.chunk is None
    for a, b in zip(whole.outputs, chunked.outputs, strict=True):
        assert _close(a, b)  # the same solves (batched products may round differently)
    rng = np.random.default_rng(1)
    g = [rng.standard_normal(o.shape) for o in whole.outputs]
    dtheta = [rng.standard_normal(v.shape) for v in values]
    for a, b in zip(whole.vjp(g), chunked.vjp(g), strict=True):
        assert _close(a, b)
    for a, b in zip(whole.jvp(dtheta), chunked.jvp(dtheta), strict=True):
        assert _close(a, b)
    # and against the closed-form Jacobian, instance by instance
    vjp = chunked.vjp(g)
    for k in range(B):
        J = mod.jacobian(*(v[k] for v in values))
        for j in range(len(values)):
            ref = sum(np.tensordot(g[i][k], J[i][j], axes=g[i][k].ndim) for i in range(len(g)))
            assert max_abs(vjp[j][k], ref) <= 1e-8 * max(1.0, float(np.abs(ref).max()))
    # one instance's full Jacobian, and the diagnostics the linearizations fill
    for ra, rb in zip(whole.jacobian(CHUNK + 1), chunked.jacobian(CHUNK + 1), strict=True):
        for a, b in zip(ra, rb, strict=True):
            assert _close(a, b)
    assert np.array_equal(whole.nondifferentiable, chunked.nondifferentiable)
    # rcond is the estimate of the LU solves use: the whole batch's may be refinement's last,
    # of a matrix within NEAR_RATE·rcond of S (non-polyhedral cones), the chunks' S's own
    assert np.allclose(whole.info.rcond, chunked.info.rcond, rtol=1e-3)


@pytest.mark.parametrize("name", ["sparsemax", "qp"])
def test_chunked_torch_gradient_matches_whole_batch(name):
    layer, mod, sizes = zoo_layer(name, **ZOO[name])
    values = _sample(mod, sizes, B, seed=2)
    grads = []
    for lay in (layer, _chunked(layer, 3)):
        params = [torch.tensor(v, requires_grad=True) for v in values]
        outs = lay.torch()(*params)
        w = torch.Generator().manual_seed(0)
        loss = sum((o * torch.randn(o.shape, generator=w, dtype=o.dtype)).sum() for o in outs)
        loss.backward()
        grads.append([p.grad.numpy() for p in params])
    for a, b in zip(*grads, strict=True):
        assert _close(a, b)


def _box():
    """x = argmin ‖x − θ‖² s.t. l ≤ x ≤ u: clip(θ, l, u), infeasible where some lᵢ > uᵢ."""
    x, th, lo, hi = cp.Variable(3), cp.Parameter(3), cp.Parameter(3), cp.Parameter(3)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [x >= lo, x <= hi])
    return dl.compile(prob, [th, lo, hi], [x], on_failure="nan")


def test_failed_instances_in_chunks_numpy_and_torch():
    layer = _box()
    rng = np.random.default_rng(3)
    theta = 2 * rng.standard_normal((B, 3))
    lo, hi = -np.ones((B, 3)), np.ones((B, 3))
    bad = [0, 5, 6, B - 1]  # the first and last instance, and two in one chunk
    lo[bad, 1] = 2.0  # l > u: infeasible
    low = _chunked(layer)
    whole, chunked = layer.forward([theta, lo, hi]), low.forward([theta, lo, hi])
    ok = np.ones(B, dtype=bool)
    ok[bad] = False
    assert whole.ok.tolist() == chunked.ok.tolist() == ok.tolist()
    assert [str(s) for s in whole.info.status] == [str(s) for s in chunked.info.status]
    assert np.isnan(chunked.outputs[0][bad]).all()
    assert max_abs(chunked.outputs[0][ok], np.clip(theta, lo, hi)[ok]) <= 1e-9
    g = [rng.standard_normal((B, 3))]
    gw, gc = whole.vjp(g), chunked.vjp(g)
    # closed form: ∂x/∂θ = 1 strictly inside the box, ∂x/∂l = 1 below, ∂x/∂u = 1 above
    inside = (theta > lo) & (theta < hi)
    ref = [g[0] * inside, g[0] * (theta < lo), g[0] * (theta > hi)]
    for a, b, r in zip(gw, gc, ref, strict=True):
        assert _close(a, b)
        assert max_abs(b[ok], r[ok]) <= 1e-9
        assert not b[bad].any()  # failed instances: zero gradients
    params = [torch.tensor(v, requires_grad=True) for v in (theta, lo, hi)]
    (x,) = low.torch()(*params)
    assert torch.isnan(x[bad]).all()
    (x[torch.tensor(ok)] * torch.tensor(g[0][ok])).sum().backward()
    for p, r in zip(params, ref, strict=True):
        assert max_abs(p.grad.numpy()[ok], r[ok]) <= 1e-9
        assert not p.grad.numpy()[bad].any()


def test_nondifferentiable_instances_are_warned_once_with_batch_indices():
    """A sparsemax tie (θ = (1, 0, 0, −1): τ = 0, so θ₂ = θ₃ = τ) in the second and third
    chunks: one warning for the call, naming the batch indices, as the default mode does."""
    x, th = cp.Variable(4), cp.Parameter(4)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [cp.sum(x) == 1, x >= 0]),
                       [th], [x])
    theta = np.tile([0.6, 0.3, -0.2, 0.0], (7, 1))
    theta[[3, 6]] = [1.0, 0.0, 0.0, -1.0]
    for lay in (layer, _chunked(layer, 2)):
        fwd = lay.forward([theta])
        with pytest.warns(NonDifferentiableWarning, match=r"batch index \[3, 6\]") as rec:
            fwd.vjp([np.ones((7, 4))])
        assert len(rec) == 1
        assert fwd.nondifferentiable.tolist() == [i in (3, 6) for i in range(7)]
        with warnings.catch_warnings():
            warnings.simplefilter("error", NonDifferentiableWarning)
            fwd.vjp([np.ones((7, 4))])  # warned once per call, not per derivative


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_chunk_size_must_be_a_positive_integer(bad):
    with pytest.raises(ProblemError, match=r"Tuning.chunk_size must be a positive integer"):
        dl.Tuning(chunk_size=bad)


def test_low_memory_mode_holds_memory_for_a_chunk_not_the_batch():
    """The OptNet QP (S dense, N = n + m): at defaults a call holds, for its derivative, the LU
    of S for every instance (≥ B·N² floats); in the low-memory mode its forward holds no
    factorization, and forward + VJP peak far lower (numpy's allocations, traced)."""
    layer, mod, sizes = zoo_layer("qp", n=50, p=10, m=50)
    N = layer.template.n + layer.template.m
    batch, chunk = 48, 6
    values = _sample(mod, sizes, batch, seed=4)
    held, peak = {}, {}
    for name, lay in (("default", layer), ("low", _chunked(layer, chunk))):
        lay.forward([v[:1] for v in values])  # one-time caches (template, layouts)
        tracemalloc.start()
        fwd = lay.forward(values)
        held[name] = tracemalloc.get_traced_memory()[0]
        g = [np.ones_like(o) for o in fwd.outputs]
        fwd.vjp(g)
        peak[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del fwd
    per_instance = N * N * 8  # one dense N × N float64 matrix
    assert held["default"] >= batch * per_instance
    assert held["low"] <= 2 * chunk * per_instance
    # (the default mode's own peak is kept down by the VJP's blocks: 3.2× the low-memory one)
    assert peak["low"] <= peak["default"] / 2.5


def test_chunked_jax_gradient_matches_whole_batch():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    layer, mod, sizes = zoo_layer("sparsemax", **ZOO["sparsemax"])
    (theta,) = _sample(mod, sizes, B, seed=5)
    g = np.random.default_rng(6).standard_normal(theta.shape)
    grads = []
    with jax.enable_x64(True):  # a global switch: restored afterwards
        for lay in (layer, _chunked(layer, 3)):
            f = lay.jax()
            grads.append(np.asarray(jax.grad(lambda th, f=f: jnp.sum(f(th)[0] * g))(theta)))
    assert _close(*grads)
    J = [mod.jacobian(th)[0][0] for th in theta]
    assert max_abs(grads[1], np.stack([gi @ Ji for gi, Ji in zip(g, J, strict=True)])) <= 1e-8


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_superlu_factors_made_on_another_thread_are_freed():
    """SciPy records a SuperLU factorization's allocations in the table of the thread that
    made it, and frees them only from that table: factors made on a worker and dropped on
    the caller's thread (a batch's, with its result) were never freed. Twelve factorizations
    of ~40 MB each, asked for by a live worker thread (made on a pool worker,
    `parallel.on_a_lasting_thread`) and dropped here, are sent home and freed there at its
    next factorization: the process's resident memory grows by a few of them, not by twelve
    (it did: ~480 MB)."""
    n = 2000
    A = (sp.random(n, n, density=0.01, random_state=0) + 10 * sp.eye(n)).tocsc()
    size = splu(A).L.nnz * 12 + splu(A).U.nnz * 12  # values and row indices
    requests: queue.SimpleQueue = queue.SimpleQueue()
    made: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while (count := requests.get()) is not None:
            made.put([splu(A) for _ in range(count)])

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        requests.put(1)
        del made.get()[0]
        start = _resident_bytes()
        for _ in range(12):
            requests.put(1)
            lus = made.get()
            assert np.allclose(A @ lus[0].solve(np.ones(n)), 1.0)
            del lus  # dropped on this thread
        grown = _resident_bytes() - start
    finally:
        requests.put(None)
        thread.join()
    assert size > 20e6  # each factorization is large
    assert grown < 4 * size, (grown, size)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_superlu_factors_made_for_a_thread_that_ended_are_freed():
    """A layer called from a short-lived thread, its result used after the thread ended (the
    factorizations' SciPy table ends with the thread that made them): they are made on a
    pool worker instead (`parallel.on_a_lasting_thread`), which frees them once dropped.
    Twelve factorizations of ~40 MB, each made for a thread that then ended and dropped
    here: resident memory grows by a few of them, not by twelve (it did: ~480 MB)."""
    n = 2000
    A = (sp.random(n, n, density=0.01, random_state=0) + 10 * sp.eye(n)).tocsc()
    size = splu(A).L.nnz * 12 + splu(A).U.nnz * 12  # values and row indices

    def made_by_a_thread() -> Any:
        box: list = []
        thread = threading.Thread(target=lambda: box.append(splu(A)))
        thread.start()
        thread.join()
        return box.pop()

    made_by_a_thread()  # (the pool started)
    start = _resident_bytes()
    for _ in range(12):
        lu = made_by_a_thread()
        assert np.allclose(A @ lu.solve(np.ones(n)), 1.0)
        del lu
    grown = _resident_bytes() - start
    assert size > 20e6
    assert grown < 4 * size, (grown, size)
