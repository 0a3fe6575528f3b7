"""The README's code snippets run as written, and give what the README says they give.

Each ```python block is executed in order in one namespace (a later block may use what an
earlier one defined, as a reader would). Names a block leaves to the reader (``theta_value``,
``my_closed_form``, ``F``, ``z0``, ...) are bound to small concrete cases first, and the
results are checked against independent references.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _sparsemax(theta: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by sorting (Martins & Astudillo 2016)."""
    z = np.sort(theta)[::-1]
    k = np.arange(1, theta.size + 1)
    cssv = np.cumsum(z) - 1
    rho = k[z - cssv / k > 0][-1]
    return np.maximum(theta - cssv[rho - 1] / rho, 0.0)


def test_readme_has_the_snippets_this_test_knows():
    """A new snippet must be added here (with what it should give), not silently skipped."""
    blocks = _blocks()
    assert len(blocks) == 3
    assert "dl.compile" in blocks[0]
    assert "implicit.root" in blocks[1]
    assert "dl.verify" in blocks[2]


def test_readme_snippets_run_and_give_what_they_say():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    import jax
    import torch

    jax.config.update("jax_enable_x64", True)
    blocks = _blocks()
    ns: dict = {}

    # the quick start: sparsemax in torch (float32 in, float32 out: checked to float32's
    # rounding) and JAX
    exec(compile(blocks[0], "README.md[0]", "exec"), ns)
    theta = ns["theta_t"].detach().numpy()
    expected = np.stack([_sparsemax(t) for t in theta])
    x = ns["x_t"].detach().numpy()
    assert ns["x_t"].dtype == torch.float32
    assert np.abs(x - expected).max() <= 1e-6
    # d/dθ Σx = 0 (Σx = 1 whatever θ), and the JVP along ones is 0 (sparsemax is shift-invariant)
    assert torch.abs(ns["theta_t"].grad).max() <= 1e-6
    assert torch.abs(ns["dx"][0]).max() <= 1e-6  # the module returns a tuple of outputs
    n = ns["n"]
    assert np.abs(np.asarray(ns["x_j"]) - np.full(n, 1.0 / n)).max() <= 1e-8

    # declarative nodes, all on one parameter vector x (the snippet passes the same params
    # to each): Kepler's equation z − 0.4 sin z = x elementwise (root), a linear fixed point
    # z = Wz + x, and the projection of x onto the unit sphere (equality-constrained argmin)
    rng = np.random.default_rng(0)
    W = torch.tensor(0.15 * rng.standard_normal((4, 4)), dtype=torch.float64)
    xv = torch.tensor(rng.standard_normal(4), dtype=torch.float64)
    ns.update(
        F=lambda z, x: z - 0.4 * torch.sin(z) - x,
        f=lambda z, x: W @ z + x,
        objective=lambda y, x: ((y - x) ** 2).sum(),
        h=lambda y, x: (y @ y - 1.0).reshape(1),
        z0=torch.zeros(4, dtype=torch.float64), y0=torch.ones(4, dtype=torch.float64) / 2,
        params=(xv,),
    )
    exec(compile(blocks[1], "README.md[1]", "exec"), ns)
    x = xv.numpy()
    E = ns["z"].numpy()  # the last line solves the root again, with its info
    assert np.abs(E - 0.4 * np.sin(E) - x).max() <= 1e-12
    assert ns["info"].converged and ns["info"].status == "converged"
    zf = ns["fp"](ns["z0"], xv).numpy()
    assert np.abs(zf - np.linalg.solve(np.eye(4) - W.numpy(), x)).max() <= 1e-10
    assert np.abs(ns["y"].numpy() - x / np.linalg.norm(x)).max() <= 1e-10

    # verification against a closed form, at one instance of the quick start's layer
    theta_value = rng.standard_normal(n)
    s = _sparsemax(theta_value)
    support = s > 0
    J = np.diag(support.astype(float)) - np.outer(support, support) / support.sum()
    ns.update(theta_value=theta_value, my_closed_form=lambda th: [_sparsemax(th)],
              my_jacobian=lambda th: [[J]])
    exec(compile(blocks[2], "README.md[2]", "exec"), ns)
    report = ns["report"]
    assert report.passed
    assert '"passed": true' in report.to_json()
