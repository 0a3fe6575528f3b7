"""Tuning a regularization weight by implicit differentiation (bilevel optimization).

Ridge regression is the inner problem, its regularization weight λ the parameter of a layer:

    w(λ) = argmin_w  ‖X_train w − y_train‖² + λ‖w‖²,

and the outer problem minimizes the validation error L(λ) = mean (X_val w(λ) − y_val)² over
λ = exp(s) (positive by construction) by plain gradient descent on s. dL/ds flows through
the layer: the implicit function theorem gives dw/dλ without unrolling a solver. A sweep
of λ (one batched call of the same layer) draws the validation curve; the figure overlays the
gradient-descent path on it. The layer's gradient is also checked against the closed form
dw/dλ = −(XᵀX + λI)⁻¹ w.

    python examples/hyperparameter_ridge.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cvxpy as cp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import declarative as dl  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def ridge_layer(X: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    """λ ↦ w(λ) for fixed training data (λ scalar, or a batch of λ of shape (B,))."""
    lam = cp.Parameter(nonneg=True, name="lam")
    w = cp.Variable(X.shape[1], name="w")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X @ w - y) + lam * cp.sum_squares(w)))
    return dl.compile(problem, parameters=[lam], variables=[w]).torch()


def closed_form(X, y, Xv, yv, lam: float) -> tuple[float, float]:
    """Validation loss and its derivative in λ, from w = (XᵀX + λI)⁻¹Xᵀy."""
    H = X.T @ X + lam * np.eye(X.shape[1])
    w = np.linalg.solve(H, X.T @ y)
    r = Xv @ w - yv
    dw = -np.linalg.solve(H, w)
    return float(np.mean(r**2)), float(2 * np.mean(r * (Xv @ dw)))


def run(quick: bool = False, out: Path | str = DEFAULT_OUT, seed: int = 0) -> dict:
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n, n_val, d, noise = 40, 200, 30, 0.5
    w_true = rng.standard_normal(d) / np.sqrt(d)
    X, Xv = rng.standard_normal((n, d)), rng.standard_normal((n_val, d))
    y = X @ w_true + noise * rng.standard_normal(n)
    yv = Xv @ w_true + noise * rng.standard_normal(n_val)
    Xv_t, yv_t = torch.tensor(Xv), torch.tensor(yv)
    layer = ridge_layer(X, y)

    def val_loss(lam: torch.Tensor) -> torch.Tensor:
        """Validation MSE for λ of shape () or (B,)."""
        (w,) = layer(lam)
        return ((w @ Xv_t.T - yv_t) ** 2).mean(-1)

    # the sweep: one batched call
    lams = np.logspace(-3, 3, 25 if quick else 121)
    with torch.no_grad():
        sweep = val_loss(torch.tensor(lams)).numpy()
    best = int(np.argmin(sweep))

    # gradient descent on s = log λ
    steps, lr, lam0 = (20, 8.0, 0.05) if quick else (30, 8.0, 0.05)
    s = torch.tensor(np.log(lam0), requires_grad=True)
    path_lam, path_loss, path_grad, grad_cf = [], [], [], []
    t0 = time.perf_counter()
    for _ in range(steps + 1):
        lam = s.exp()
        loss = val_loss(lam)
        (g,) = torch.autograd.grad(loss, s)
        grad_cf.append(closed_form(X, y, Xv, yv, lam.item())[1] * lam.item())  # dL/ds
        path_lam.append(lam.item())
        path_loss.append(loss.item())
        path_grad.append(g.item())
        with torch.no_grad():
            s -= lr * g
    gd_seconds = time.perf_counter() - t0
    grad_err = np.abs(np.subtract(path_grad, grad_cf)).max() / np.abs(grad_cf).max()

    # the exact optimum, from the closed form (golden section on log λ)
    lo, hi = np.log(lams[max(best - 1, 0)]), np.log(lams[min(best + 1, lams.size - 1)])
    phi = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if closed_form(X, y, Xv, yv, np.exp(a))[0] < closed_form(X, y, Xv, yv, np.exp(b))[0]:
            hi = b
        else:
            lo = a
    lam_opt = float(np.exp((lo + hi) / 2))
    loss_opt = closed_form(X, y, Xv, yv, lam_opt)[0]

    result = {
        "lambdas": lams, "sweep": sweep, "sweep_best_lambda": float(lams[best]),
        "sweep_best_loss": float(sweep[best]), "optimal_lambda": lam_opt,
        "optimal_loss": loss_opt, "path_lambda": path_lam, "path_loss": path_loss,
        "path_grad": path_grad, "initial_lambda": path_lam[0], "final_lambda": path_lam[-1],
        "initial_loss": path_loss[0], "final_loss": path_loss[-1],
        "max_grad_rel_error": float(grad_err), "steps": steps, "step_size": lr,
        "gd_seconds": gd_seconds, "figure": out / "hyperparameter_ridge.png",
    }

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.semilogx(lams, sweep, color="0.3", label="validation loss (sweep, one batched call)")
    ax.plot(path_lam, path_loss, "o-", color="C3", ms=4, lw=1,
            label=f"gradient descent on log λ ({steps} steps)")
    ax.plot(path_lam[0], path_loss[0], "s", color="C3", ms=8)
    ax.plot(lam_opt, loss_opt, "*", color="C2", ms=14, label=f"optimum λ = {lam_opt:.2f}")
    ax.set_xlabel("λ")
    ax.set_ylabel("validation MSE")
    ax.set_title(f"ridge: λ {path_lam[0]:.2g} → {path_lam[-1]:.3g}, "
                 f"val. MSE {path_loss[0]:.3f} → {path_loss[-1]:.4f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(result["figure"], dpi=80)
    plt.close(fig)
    result["seconds"] = time.perf_counter() - t_start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="coarser sweep, fewer steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the PNG")
    args = parser.parse_args()
    r = run(quick=args.quick, out=args.out)
    print(
        f"Ridge regression's λ tuned by {r['steps']} steps of gradient descent on log λ "
        f"(step {r['step_size']:g}), with dL/dλ through the layer by implicit differentiation: "
        f"λ goes from {r['initial_lambda']:.3g} to {r['final_lambda']:.4g} and the validation MSE "
        f"from {r['initial_loss']:.4f} to {r['final_loss']:.5f}, against the optimum "
        f"{r['optimal_loss']:.5f} at λ = {r['optimal_lambda']:.4g} (sweep of "
        f"{len(r['lambdas'])} values: best {r['sweep_best_loss']:.5f} at λ = "
        f"{r['sweep_best_lambda']:.3g}). The layer's gradient matches the closed form "
        f"−(XᵀX + λI)⁻¹w along the path to {r['max_grad_rel_error']:.1e} (max error over max "
        f"|dL/d log λ|). "
        f"The figure overlays the descent path on the validation curve ({r['figure']}; "
        f"descent {r['gd_seconds']:.1f} s, total {r['seconds']:.1f} s)."
    )


if __name__ == "__main__":
    main()
