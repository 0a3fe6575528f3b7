"""The peers of ``declarative bench`` (tools/peers.py) and the speed rows' yardstick.

The yardstick rule on synthetic measurements; a peer that is not installed is recorded and
skipped; the QP forms handed to proxsuite reproduce the zoo's closed forms; the JAX-to-torch
bridge of qpax against a closed-form gradient; the row budget. No wall-clock thresholds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from declarative.tools import bench, peers

pytest.importorskip("cvxpylayers")

M = bench.Measurement


# -- the yardstick ------------------------------------------------------------------------------
def test_yardstick_is_the_fastest_accurate_peer():
    measured = {"slow_exact": M(total=3.0, error=1e-12), "fast_exact": M(total=2.0, error=1e-6),
                "fastest_rough": M(total=1.0, error=1e-3)}
    assert bench.yardstick(measured) == ("fast_exact", True)
    # the threshold is inclusive
    assert bench.yardstick({"a": M(total=1.0, error=1e-5), "b": M(total=0.5, error=2e-5)}) == (
        "a", True)


def test_yardstick_falls_back_to_the_fastest_when_none_is_accurate():
    measured = {"a": M(total=3.0, error=1e-2), "b": M(total=2.0, error=1.0),
                "c": M(total=2.5, error=None)}   # no reference: not accurate, but timed
    assert bench.yardstick(measured) == ("b", False)


def test_yardstick_ignores_failures():
    measured = {"failed": M(failure="RuntimeError: boom"),
                "nan_time": M(total=math.nan, error=1e-9),
                "nan_error": M(total=0.1, error=math.nan),
                "ok": M(total=5.0, error=1e-9)}
    assert bench.yardstick(measured) == ("ok", True)
    assert bench.yardstick({"x": M(failure="not installed")}) == (None, False)
    assert bench.yardstick({}) == (None, False)


# -- peers that cannot run -----------------------------------------------------------------------
def _absent() -> peers.Peer:
    return peers.QPPeer("absent", ("no_such_module_for_declarative_tests",), ("no-such-dist",),
                        "never installed")


def test_a_peer_that_is_not_installed_is_recorded_and_skipped():
    peer = _absent()
    assert not peer.available()
    assert "(not installed)" in peer.label
    case = bench.SPEED_CASES["sparsemax"]
    built = peer.build(case, None, [], [])
    assert not built.ok and built.failure == "not installed"
    with pytest.raises(RuntimeError, match="not installed"):
        built.call()


def test_a_peer_that_does_not_apply_is_recorded():
    case = bench.SPEED_CASES["softmax"]
    built = peers.PEERS["proxsuite"].build(case, None, [], [])
    expected = "not installed" if not peers.PEERS["proxsuite"].available() else \
        "does not apply to softmax"
    assert built.failure == expected


def test_speed_records_an_absent_peer_and_goes_on(monkeypatch):
    monkeypatch.setitem(peers.PEERS, "absent", _absent())
    doc = bench.run_speed(["polytope-2d"], batches=[1, 2], repeats=1, search_batch=2,
                          grid=(1e-4,), progress=False, peer_names=["absent", "cvxpylayers"])
    assert [r["batch"] for r in doc["rows"]] == [1, 2]
    for r in doc["rows"]:
        assert r["ours"]["failure"] is None
        assert r["peers"]["absent"]["failure"] == "not installed"
        assert r["yardstick"] in (None, "cvxpylayers")
    assert doc["searches"]["polytope-2d"]["peers"]["absent"]["failure"] == "not installed"
    assert "not installed, not run: absent" in bench.format_speed(doc)


def test_unknown_peer_is_a_usage_error(capsys):
    assert bench.main(["speed", "--peers", "nope", "--no-progress"]) == 2
    assert "unknown peer 'nope'" in capsys.readouterr().err


def test_a_failing_peer_is_recorded_not_raised(monkeypatch):
    class Exploding(peers.QPPeer):
        def _solver(self, options):
            def solve(*qp):
                raise RuntimeError("the peer's solver failed")
            return solve

    monkeypatch.setitem(peers.PEERS, "exploding",
                        Exploding("exploding", ("torch",), ("torch",), "raises"))
    case = bench.SPEED_CASES["sparsemax"]
    libs = bench.Libraries(case, peer_names=["exploding"])
    batch = bench.make_batch(case, 2, variables=libs.variables)
    m = libs.time_peer("exploding", batch, 1)
    assert not m.ok and "the peer's solver failed" in m.failure


# -- the QP forms and the proxsuite peer ----------------------------------------------------------
@pytest.mark.parametrize("key", ["sparsemax", "qp", "polytope-2d"])
def test_qp_form_objective_and_constraints_match_the_zoo(key):
    """½zᵀQz + pᵀz equals the zoo's objective up to a constant, and the constraints of the QP
    form hold exactly at the zoo's closed-form solution, with the active ones tight."""
    case = bench.SPEED_CASES[key]
    mod = bench.problems.get(case.problem)
    problem, parameters, variables = mod.build(**case.sizes)
    batch = bench.make_batch(case, 2, seed=3, reference=False, variables=variables)
    Q, p, A, b, G, lo, up = (t.numpy() for t in peers.qp_form(case)(
        *(torch.tensor(v) for v in batch.values)))
    for i, params in enumerate(batch.instances):
        for par, val in zip(parameters, params, strict=True):
            par.value = val
        (x_star,) = mod.solution(*params)
        rng = np.random.default_rng(i)
        diffs = []
        for z in (x_star, x_star + rng.standard_normal(x_star.shape)):
            variables[0].value = z
            diffs.append(problem.objective.value - (0.5 * z @ Q[i] @ z + p[i] @ z))
        assert diffs[0] == pytest.approx(diffs[1], abs=1e-9)
        np.testing.assert_allclose(A[i] @ x_star, b[i], atol=1e-9)
        Gx = G[i] @ x_star
        assert np.all(Gx >= lo[i] - 1e-9) and np.all(Gx <= up[i] + 1e-9)
        assert np.min(np.minimum(Gx - lo[i], up[i] - Gx)) <= 1e-9   # an active row


@pytest.mark.parametrize("key", ["sparsemax", "qp"])
def test_proxsuite_peer_at_its_tightest_tolerance_matches_the_closed_form(key):
    pytest.importorskip("proxsuite")
    case = bench.SPEED_CASES[key]
    libs = bench.Libraries(case, peer_names=["proxsuite"])
    batch = bench.make_batch(case, 3, seed=1, variables=libs.variables)
    fn = libs.built["proxsuite"].call(peers.PEERS["proxsuite"].tight)
    (x,) = fn(*(torch.tensor(v) for v in batch.values))
    ref = np.stack([bench.problems.get(case.problem).solution(*p)[0] for p in batch.instances])
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-7)
    m = libs.time_peer("proxsuite", batch, 1, peers.PEERS["proxsuite"].tight)
    assert m.ok and m.error <= 1e-5


def test_jax_to_torch_bridge_against_a_closed_form_gradient():
    """f(x, c) = sin(x) * c (elementwise): ∂⟨g, f⟩/∂x = g c cos x, ∂/∂c = g sin x."""
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp

    f = peers.jax_to_torch(lambda x, c: jnp.sin(x) * c)
    x64 = jax.config.jax_enable_x64
    rng = np.random.default_rng(0)
    x0, c0, g = rng.standard_normal((3, 4, 5))
    x, c = torch.tensor(x0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    out = f(x, c)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.detach().numpy(), np.sin(x0) * c0, rtol=1e-14, atol=1e-15)
    (out * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), g * c0 * np.cos(x0), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(c.grad.numpy(), g * np.sin(x0), rtol=1e-14, atol=1e-15)
    assert jax.config.jax_enable_x64 == x64   # the global setting is left as it was


# -- the row budget -------------------------------------------------------------------------------
def test_row_budget_skips_a_library_predicted_to_exceed_it():
    last: dict[str, tuple[int, float]] = {"slow": (8, 2.0), "quick": (8, 0.01)}
    ran = []

    def run(names):
        ran.append(list(names))
        return {n: M(forward=1.0, backward=1.0, total=2.0, repeats=1) for n in names}

    # 2 s at batch 8 -> 16 s at batch 64, 3 repeats: 48 s > 10 s; the others are timed
    # together, in the order given
    got = bench._within_budget(["slow", "quick", "new"], 64, last, 10.0, 3, run)
    assert list(got) == ["slow", "quick", "new"]
    assert not got["slow"].ok and "row budget" in got["slow"].failure
    assert got["quick"].ok and got["new"].ok and ran == [["quick", "new"]]
    assert last == {"slow": (8, 2.0), "quick": (64, 2.0), "new": (64, 2.0)}
    # within the budget, or no budget: it runs and becomes the last time
    assert bench._within_budget(["slow"], 16, last, 100.0, 3, run)["slow"].ok
    assert last["slow"] == (16, 2.0)
    assert bench._within_budget(["slow"], 10**6, last, None, 3, run)["slow"].ok
    # every one over the budget: nothing runs
    ran.clear()
    assert not bench._within_budget(["slow"], 10**9, last, 1.0, 3, run)["slow"].ok and not ran


def test_libraries_are_timed_interleaved_and_a_failure_stops_only_its_own():
    """Round r times every library once, starting at the r-th (rotated): a load that changes
    during a row weighs on all alike. A library that raises is not called again."""
    case = bench.Case("sparsemax", "sparsemax", {"n": 8})
    batch = bench.make_batch(case, 2, reference=False)
    order: list[str] = []
    calls = {"a": 0, "boom": 0}

    def layer(name):
        def call(*params):
            order.append(name)
            if name == "boom":
                calls["boom"] += 1
                if calls["boom"] == 2:
                    raise RuntimeError("failed at batch index 1")
            return (params[0] * 2.0,)
        return call

    got = bench.measure_all({n: layer(n) for n in ("a", "b", "c")}, batch, repeats=3)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(m.ok and m.repeats == 3 and m.total > 0 for m in got.values())
    order.clear()
    got = bench.measure_all({n: layer(n) for n in ("a", "boom", "c")}, batch, repeats=3)
    assert order == ["a", "boom", "c", "boom", "c", "a", "c", "a"]
    assert got["a"].repeats == 3 and got["c"].repeats == 3
    assert not got["boom"].ok and "failed at batch index 1" in got["boom"].failure
    # one library: `measure`, as before
    assert bench.measure(layer("a"), batch, repeats=2).repeats == 2


def test_sdp_cases_use_their_own_batches():
    for k in (10, 30, 50):
        case = bench.SPEED_CASES[f"psd-{k}"]
        assert case.problem == "psd_trace_projection" and case.sizes == {"k": k}
        assert case.batches == bench.SDP_BATCHES == (1, 8, 64)
    assert bench.SPEED_CASES["sparsemax"].batches is None and bench.SPEED_BATCHES == (1, 64, 512)


def test_speed_on_an_sdp_row(monkeypatch):
    """An SDP row end to end (k = 4, own batches) with one peer: our error within 1e-8."""
    monkeypatch.setitem(bench.SPEED_CASES, "psd-4", bench.Case(
        "psd-4", "psd_trace_projection", {"k": 4}, batches=(1, 2)))
    doc = bench.run_speed(["psd-4"], repeats=1, search_batch=2, grid=(1e-4,), progress=False,
                          peer_names=["cvxpylayers"])
    assert [r["batch"] for r in doc["rows"]] == [1, 2]
    s = doc["searches"]["psd-4"]
    assert s["our_failure"] is None and s["our_error"] <= 1e-8
    assert doc["settings"]["batches_per_problem"] == {"psd-4": [1, 2]}
