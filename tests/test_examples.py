"""Every example in examples/ runs in quick mode and shows what it claims to show."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    """Import examples/<name>.py as a module (examples/ is a folder of scripts, not a package)."""
    key = f"_examples_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def run_quick(name: str, tmp_path: Path) -> dict:
    result = load(name).run(quick=True, out=tmp_path)
    figure = Path(result["figure"])
    assert figure.parent == tmp_path and figure.suffix == ".png"
    assert figure.stat().st_size > 5_000  # a real picture, not an empty canvas
    return result


def test_softmax_jacobian(tmp_path):
    r = run_quick("softmax_jacobian", tmp_path)
    assert r["solution_error"] <= 1e-8
    assert r["max_abs_error"] <= 1e-8  # reverse mode vs diag(x) − xxᵀ
    assert r["max_abs_error_forward_mode"] <= 1e-8


def test_implicit_vs_unrolled(tmp_path):
    r = run_quick("implicit_vs_unrolled", tmp_path)
    assert r["implicit_peak_ratio"] <= 1.5          # flat in K
    assert r["unrolled_peak_growth"] >= 5.0         # grows with K
    assert r["unrolled_retained_growth"] >= 5.0
    assert np.all(np.diff(r["unrolled_retained_bytes"]) > 0)
    # autograd keeps only the layer's parameters (θ, batch × n float64) for it, whatever K
    assert r["implicit_saved_tensor_bytes"] == [r["batch"] * r["n"] * 8] * len(r["Ks"])
    assert max(r["implicit_grad_error"]) <= 1e-8        # exact gradients...
    assert r["unrolled_grad_error"][-1] < r["unrolled_grad_error"][0]  # ...unrolling converges
    assert r["unrolled_grad_error"][0] > 1e-2


def test_optnet_qp(tmp_path):
    r = run_quick("optnet_qp", tmp_path)
    assert r["loss_ratio"] >= 5.0
    assert r["test_loss_ratio"] >= 3.0
    assert r["final_loss"] < 0.2 * r["target_variance"]


def test_optnet_qp_learns_q_directly(tmp_path):
    """The same task with Q itself a (PSD) parameter of the layer: gradients in Q through the
    quadratic objective train it."""
    result = load("optnet_qp").run(quick=True, out=tmp_path, learn_q=True)
    assert Path(result["figure"]).stat().st_size > 5_000
    assert result["loss_ratio"] >= 5.0
    assert result["test_loss_ratio"] >= 3.0
    assert result["final_loss"] < 0.2 * result["target_variance"]


def test_learn_polytope(tmp_path):
    r = run_quick("learn_polytope", tmp_path)
    assert r["loss_ratio"] >= 20.0
    assert r["final_test_loss"] <= r["initial_test_loss"] / 20
    assert r["final_hausdorff"] <= 0.15
    assert r["final_hausdorff"] <= r["initial_hausdorff"] / 4
    assert r["final_iou"] >= 0.9


def test_hyperparameter_ridge(tmp_path):
    r = run_quick("hyperparameter_ridge", tmp_path)
    losses = np.asarray(r["path_loss"])
    assert np.all(np.diff(losses) <= 1e-12)                       # descent all the way
    assert r["final_loss"] <= r["sweep_best_loss"] + 1e-9         # as good as the sweep's best
    assert r["final_loss"] <= r["optimal_loss"] * (1 + 1e-4)
    assert abs(np.log(r["final_lambda"] / r["optimal_lambda"])) <= 0.1
    assert r["max_grad_rel_error"] <= 1e-8                         # layer vs closed form


def test_deq_implicit(tmp_path):
    r = run_quick("deq_implicit", tmp_path)
    assert r["final_test_loss"] <= 0.7 * r["initial_test_loss"]
    # the implicit node saves the same bytes whatever K; unrolling grows linearly in K
    assert len(set(r["implicit_saved_bytes"])) == 1
    assert np.all(np.diff(r["unrolled_saved_bytes"]) > 0)
    assert r["unrolled_saved_bytes"][-1] >= 5 * r["unrolled_saved_bytes"][0]
    assert r["unrolled_saved_bytes"][-1] > r["implicit_saved_bytes"][0]
    # unrolling converges to the implicit gradient as K grows
    assert r["unrolled_grad_rel_error"][0] > 1e-3 and r["unrolled_grad_rel_error"][-1] < 1e-8


def test_kepler_root(tmp_path):
    r = run_quick("kepler_root", tmp_path)
    assert r["max_jacobian_error"] <= 1e-12        # layer vs 1/(1 − e cos E), sin E/(1 − e cos E)
    assert abs(r["e_fit"] - r["e_true"]) <= 0.01
    assert abs(r["a_fit"] - r["a_true"]) <= 0.02
    assert r["final_loss"] <= r["initial_loss"] / 1000


def test_robust_pooling(tmp_path):
    r = run_quick("robust_pooling", tmp_path)
    assert r["max_jacobian_error"] <= 1e-12        # node vs φ''(y − x_i)/Σφ''
    e = r["errors"]
    assert e["welsch"][-1] < e["median"][-1] < e["mean"][-1]
    assert r["test_mse_after"] < 0.6 * r["test_mse_before"]


@pytest.mark.parametrize("name", ["softmax_jacobian", "implicit_vs_unrolled", "optnet_qp",
                                  "learn_polytope", "hyperparameter_ridge", "deq_implicit",
                                  "kepler_root", "robust_pooling"])
def test_example_is_a_script(name):
    """Each example has the CLI the README documents: --quick and --out, and a main()."""
    module = load(name)
    assert callable(module.main) and callable(module.run)
    source = (EXAMPLES / f"{name}.py").read_text()
    assert '"--quick"' in source and '"--out"' in source
    assert 'if __name__ == "__main__":' in source
