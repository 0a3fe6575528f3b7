"""``declarative bench``: quick modes run, the JSON has the expected fields, errors are finite,
our error at defaults is within 1e-8, and a cvxpylayers failure is recorded, not raised.

No wall-clock thresholds: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from declarative.tools import bench

pytest.importorskip("cvxpylayers")


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "accuracy.json"
    code = bench.main(["accuracy", "--quick", "--no-progress", "--json", str(path)])
    return code, json.loads(path.read_text())


@pytest.fixture(scope="module")
def speed(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "speed.json"
    code = bench.main(["speed", "--quick", "--no-progress", "--json", str(path)])
    return code, json.loads(path.read_text())


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _check_measurement(m: dict, with_error: bool) -> None:
    assert set(m) >= {"forward", "backward", "total", "error", "failure", "warnings", "repeats"}
    if m["failure"] is None:
        for k in ("forward", "backward", "total"):
            assert _finite(m[k]) and m[k] >= 0
        assert m["repeats"] >= 1
        if with_error:
            assert _finite(m["error"])


def test_accuracy_quick(accuracy, capsys):
    code, doc = accuracy
    assert code == 0
    assert doc["command"] == "bench accuracy"
    assert doc["settings"]["quick"] is True and doc["settings"]["batch"] >= 1
    assert doc["settings"]["cvxpylayers_args"] == {"solve_method": "SCS"}
    assert doc["environment"]["versions"]["cvxpylayers"]
    rows = {r["problem"]: r for r in doc["rows"]}
    assert set(rows) == {"sparsemax", "softmax"}
    for name, r in rows.items():
        assert r["sizes"] == {"n": 100} and r["failure"] is None
        assert set(r) >= {"ours", "cvxpylayers", "search", "cvxpylayers_at_eps", "ratio",
                          "ratio_defaults"}
        _check_measurement(r["ours"], with_error=True)
        assert r["ours"]["failure"] is None
        # the accuracy guarantee: our gradient at defaults within 1e-8 of the closed form
        assert r["ours"]["error"] <= 1e-8, name
        _check_measurement(r["cvxpylayers"], with_error=True)
        s = r["search"]
        assert s["target"] == max(r["ours"]["error"], 1e-8)
        assert s["steps"] and s["steps"][0]["eps"] == 1e-4
        for st in s["steps"]:
            _check_measurement(st, with_error=True)
        if s["matched"]:
            err = next(st["error"] for st in s["steps"] if st["eps"] == s["eps_needed"])
            assert err <= s["target"]
        else:
            assert s["eps_needed"] is None
        if r["cvxpylayers_at_eps"] is not None:
            _check_measurement(r["cvxpylayers_at_eps"], with_error=True)
            assert r["ratio"] is None or r["ratio"] > 0
    assert doc["summary"]["ours_within_tolerance"] is True
    assert doc["summary"]["our_max_error"] <= 1e-8


def test_accuracy_table():
    doc = {"rows": [], "settings": {"repeats": 1}, "seconds": 0.0,
           "summary": bench._accuracy_summary([])}
    text = bench.format_accuracy(doc)
    for col in ("problem", "our err", "our time", "cvxpylayers err", "eps needed", "ratio"):
        assert col in text


def test_speed_quick(speed):
    code, doc = speed
    assert code == 0
    assert doc["command"] == "bench speed"
    batches = doc["settings"]["batches"]
    names = list(doc["searches"])
    assert names == list(bench.QUICK_SPEED["problems"])
    assert [(r["problem"], r["batch"]) for r in doc["rows"]] == [
        (n, b) for n in names for b in batches]
    for name, s in doc["searches"].items():
        assert s["our_failure"] is None and s["our_error"] <= 1e-8, name
        assert s["our_solution_error"] <= 1e-8, name
        for p, a in s["peers"].items():  # each peer's outputs against the closed form too
            assert a["failure"] is not None or a["solution_error"] is not None, (name, p)
        assert s["steps"] and (s["matched"] or s["best_eps"] is not None)
    for r in doc["rows"]:
        _check_measurement(r["ours"], with_error=False)
        _check_measurement(r["cvxpylayers"], with_error=False)
        assert r["ours"]["failure"] is None
        assert r["eps"] == doc["searches"][r["problem"]]["eps_needed"] or not r["eps_matched"]
        if r["cvxpylayers"]["failure"] is None:
            assert set(r["ratio"]) == {"forward", "backward", "total"}
            assert all(v is None or v > 0 for v in r["ratio"].values())
    gm = doc["summary"]["geomean_ratio"]
    assert set(gm) == {"forward", "backward", "total"}
    assert all(v is None or v > 0 for v in gm.values())
    # every peer has a cell per row; the yardstick follows the rule on the row's own numbers
    assert set(doc["settings"]["peers"]) == set(bench.peers.PEERS)
    for r in doc["rows"]:
        assert set(r["peers"]) == set(bench.peers.PEERS)
        measured = {p: bench.Measurement(total=m["total"] if m["total"] is not None
                                         else math.nan, error=m["error"], failure=m["failure"])
                    for p, m in r["peers"].items()}
        assert (r["yardstick"], r["yardstick_accurate"]) == bench.yardstick(measured)
        if r["yardstick"] is not None:
            assert r["yardstick_ratio"] == pytest.approx(
                r["peers"][r["yardstick"]]["total"] / r["ours"]["total"])
    ratios = [r["yardstick_ratio"] for r in doc["rows"] if r["yardstick_ratio"]]
    assert doc["summary"]["yardstick_geomean_ratio"] == pytest.approx(
        math.exp(np.mean(np.log(ratios))))


def test_scaling_quick(tmp_path, capsys):
    path, fig = tmp_path / "scaling.json", tmp_path / "scaling.png"
    code = bench.main(["scaling", "--quick", "--no-progress", "--batches", "1,3",
                       "--size-problems", "sparsemax", "psd_trace_projection", "--sizes", "5",
                       "--peers", "cvxpylayers", "--json", str(path), "--plot", str(fig)])
    assert code == 0
    doc = json.loads(path.read_text())
    assert [r["batch"] for r in doc["by_batch"]] == [1, 3]
    assert [(r["problem"], r["sizes"]) for r in doc["by_size"]] == [
        ("sparsemax", {"n": 5}), ("psd_trace_projection", {"k": 5})]
    for r in doc["by_batch"] + doc["by_size"]:
        assert r["ours"]["failure"] is None and r["ours_per_instance"] > 0
        assert set(r["per_instance"]) == {"ours", "cvxpylayers"}
        m = r["peers"]["cvxpylayers"]
        if m["failure"] is None:
            assert r["per_instance"]["cvxpylayers"] == pytest.approx(m["total"] / r["batch"])
    out = capsys.readouterr().out
    assert "per instance" in out and "problem grows" in out and "figure:" in out
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_error_metric_is_sensitive():
    """The same quantity for both libraries: ours is exact; a 1% wrong layer is caught."""
    case = bench.Case("sparsemax", "sparsemax", {"n": 8})
    libs = bench.Libraries(case, build_cvxpylayers=False)
    batch = bench.make_batch(case, 4, seed=1, variables=libs.variables)
    good = bench.measure(libs.ours, batch, repeats=1)
    assert good.ok and good.error <= 1e-8 and good.solution_error <= 1e-8
    bad = bench.measure(lambda *p: tuple(1.01 * o for o in libs.ours(*p)), batch, repeats=1)
    assert bad.ok and bad.error > 1e-4
    # the outputs' error against the closed-form solution, independently of the gradient's
    ref = max(float(np.abs(x).max()) for x in batch.solutions)
    assert bad.solution_error == pytest.approx(0.01 * ref, rel=1e-6)
    shifted = bench.measure(lambda *p: tuple(o + 0.5 for o in libs.ours(*p)), batch, repeats=1)
    assert shifted.error <= 1e-8 and shifted.solution_error == pytest.approx(0.5)
    search = {"peers": {"moreau": {"error": good.error, "solution_error": 0.5},
                        "proxsuite": {"error": good.error, "solution_error": 1e-9}}}
    notes = bench._solution_notes("sparsemax", search, bench.YARDSTICK_ERROR)
    assert len(notes) == 1 and "moreau's outputs are 5.0e-01 from the closed form" in notes[0]


def test_cvxpylayers_failure_is_recorded(monkeypatch):
    import cvxpylayers.torch

    class Broken:
        def __init__(self, *args, **kwargs):
            raise ValueError("cannot handle this parameter")

    monkeypatch.setattr(cvxpylayers.torch, "CvxpyLayer", Broken)
    doc = bench.run_accuracy(["sparsemax"], batch=3, repeats=1, grid=(1e-4,), progress=False)
    (row,) = doc["rows"]
    assert row["ours"]["failure"] is None and row["ours"]["error"] <= 1e-8
    assert "cannot handle this parameter" in row["cvxpylayers"]["failure"]
    assert row["search"] is None and row["ratio"] is None
    assert doc["summary"]["cvxpylayers_failed"] == ["sparsemax"]
    assert "cannot handle this parameter" in bench.format_accuracy(doc)
    json.dumps(doc, allow_nan=False)


def test_measure_records_a_failing_call():
    case = bench.Case("sparsemax", "sparsemax", {"n": 8})
    batch = bench.make_batch(case, 2, reference=False)

    def boom(*params):
        raise RuntimeError("solver failed at batch index 1")

    m = bench.measure(boom, batch, repeats=1)
    assert not m.ok and "solver failed at batch index 1" in m.failure
    assert m.as_dict()["total"] is None


def test_polytope_sampler_high_dimension():
    rng = np.random.default_rng(0)
    G, h, y = bench._sample_polytope(rng, d=20, m=40)
    assert G.shape == (40, 20) and h.shape == (40,) and y.shape == (20,)
    assert np.allclose(np.linalg.norm(G, axis=1), 1.0)


def test_usage_errors(capsys):
    assert bench.main(["speed", "--problems", "nope", "--no-progress"]) == 2
    assert "unknown problem 'nope'" in capsys.readouterr().err
    assert bench.main(["accuracy", "--batch", "0", "--no-progress"]) == 2


def test_registers_on_the_cli():
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "speed", "--quick", "--batches", "1", "64,512"])
    assert args.func is bench._cmd_speed and bench._flat(args.batches) == [1, 64, 512]
    from declarative.tools import cli

    args = cli.build_parser().parse_args(["bench", "accuracy", "--quick"])
    assert callable(args.func)


def test_torch_threads_untouched(speed):
    # the bench never changes the global thread setting
    assert speed[1]["environment"]["torch_threads"] == torch.get_num_threads()


def test_cvxpylayers_args_and_search_budget(tmp_path):
    path = tmp_path / "dense.json"
    code = bench.main(["accuracy", "--problems", "sparsemax", "--batch", "3", "--repeats", "1",
                       "--cvxpylayers-arg", "mode=dense", "--search-budget", "0",
                       "--no-progress", "--json", str(path)])
    assert code == 0
    doc = json.loads(path.read_text())
    assert doc["settings"]["cvxpylayers_args"] == {"solve_method": "SCS", "mode": "dense"}
    (row,) = doc["rows"]
    assert len(row["search"]["steps"]) == 1 or row["search"]["matched"]
    assert row["search"]["matched"] or "budget" in row["search"]["stopped"]
    assert bench.main(["accuracy", "--cvxpylayers-arg", "mode", "--no-progress"]) == 2
