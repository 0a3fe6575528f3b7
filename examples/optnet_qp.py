"""OptNet: a quadratic program as the last layer of a network (Amos & Kolter 2017).

A small MLP maps an input z to the linear term q(z) of a QP whose other data are learned
parameters of the network:

    x(z) = argmin_x  ½‖Lᵀx‖² + ε‖x‖² + q(z)ᵀx   s.t.  Gx ≤ h,        h = softplus(h_raw) > 0

(Q = LLᵀ + 2εI through the factor L keeps the problem DPP and strictly convex; h > 0 keeps
x = 0 strictly feasible, so every QP the network can produce is solvable). L, G and h_raw are
`nn.Parameter`s passed to the layer unbatched, q comes per sample from the MLP.

Synthetic task: the targets come from a hidden QP of the same form — hidden L*, G*, h* and
q*(z) = W*z — so the network has to recover a constrained, piecewise-linear map. The figure
shows the training loss (mean squared error of x) on the training set and on held-out
samples, next to the same MLP trained with its last layer an unconstrained linear map
(no QP) as a reference.

With ``--learn-q`` the network learns Q itself rather than its factor: the layer is written
with ``cp.quad_form(x, Q)`` for a PSD parameter Q (DPP in the objective, where Q enters the
cone program's quadratic term affinely), Q is an ``nn.Parameter`` and each Adam step is
followed by a projection onto {Q = Qᵀ ⪰ 2εI} (eigenvalues clipped), which keeps every QP
strictly convex.

    python examples/optnet_qp.py [--quick] [--learn-q] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import cvxpy as cp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import declarative as dl  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
EPS = 0.05


def qp_layer(n: int, m: int) -> torch.nn.Module:
    """(L, q, G, h) ↦ argmin ½‖Lᵀx‖² + ε‖x‖² + qᵀx s.t. Gx ≤ h."""
    L = cp.Parameter((n, n), name="L")
    q = cp.Parameter(n, name="q")
    G = cp.Parameter((m, n), name="G")
    h = cp.Parameter(m, name="h")
    x = cp.Variable(n, name="x")
    objective = 0.5 * cp.sum_squares(L.T @ x) + EPS * cp.sum_squares(x) + q @ x
    problem = cp.Problem(cp.Minimize(objective), [G @ x <= h])
    return dl.compile(problem, parameters=[L, q, G, h], variables=[x]).torch()


def qp_layer_q(n: int, m: int) -> torch.nn.Module:
    """(Q, q, G, h) ↦ argmin ½xᵀQx + qᵀx s.t. Gx ≤ h, for a PSD parameter Q."""
    Q = cp.Parameter((n, n), PSD=True, name="Q")
    q = cp.Parameter(n, name="q")
    G = cp.Parameter((m, n), name="G")
    h = cp.Parameter(m, name="h")
    x = cp.Variable(n, name="x")
    objective = 0.5 * cp.quad_form(x, Q) + q @ x
    problem = cp.Problem(cp.Minimize(objective), [G @ x <= h])
    return dl.compile(problem, parameters=[Q, q, G, h], variables=[x]).torch()


class OptNetQ(nn.Module):
    """z ↦ MLP ↦ q(z) ↦ QP(Q, q(z), G, h) with Q itself, G and h learned; `project` keeps
    Q in {Q = Qᵀ ⪰ 2εI} after each optimizer step."""

    def __init__(self, d_in: int, hidden: int, n: int, m: int, qp: nn.Module,
                 gen: torch.Generator) -> None:
        super().__init__()
        f64 = {"dtype": torch.float64}
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden, **f64), nn.Tanh(),
                                 nn.Linear(hidden, n, **f64))
        self.qp = qp
        L = torch.eye(n, **f64) + 0.1 * torch.randn(n, n, generator=gen, **f64)
        self.Q = nn.Parameter(L @ L.T + 2 * EPS * torch.eye(n, **f64))
        self.G = nn.Parameter(torch.randn(m, n, generator=gen, **f64) / np.sqrt(n))
        self.h_raw = nn.Parameter(torch.full((m,), 0.5, **f64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        q = self.mlp(z)
        return self.qp(self.Q, q, self.G, nn.functional.softplus(self.h_raw))[0]

    @torch.no_grad()
    def project(self) -> None:
        """Q ← V max(Λ, 2ε) Vᵀ for (Q + Qᵀ)/2 = V Λ Vᵀ: the nearest matrix with Q ⪰ 2εI."""
        lam, V = torch.linalg.eigh((self.Q + self.Q.T) / 2)
        self.Q.copy_((V * lam.clamp(min=2 * EPS)) @ V.T)


class OptNet(nn.Module):
    """z ↦ MLP ↦ q(z) ↦ QP(L, q(z), G, h) with L, G, h learned."""

    def __init__(self, d_in: int, hidden: int, n: int, m: int, qp: nn.Module,
                 gen: torch.Generator) -> None:
        super().__init__()
        f64 = {"dtype": torch.float64}
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden, **f64), nn.Tanh(),
                                 nn.Linear(hidden, n, **f64))
        self.qp = qp
        self.L = nn.Parameter(torch.eye(n, **f64) + 0.1 * torch.randn(n, n, generator=gen, **f64))
        self.G = nn.Parameter(torch.randn(m, n, generator=gen, **f64) / np.sqrt(n))
        self.h_raw = nn.Parameter(torch.full((m,), 0.5, **f64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        q = self.mlp(z)
        return self.qp(self.L, q, self.G, nn.functional.softplus(self.h_raw))[0]


class PlainMLP(nn.Module):
    """The same MLP with an extra hidden layer in place of the QP (the reference)."""

    def __init__(self, d_in: int, hidden: int, n: int) -> None:
        super().__init__()
        f64 = {"dtype": torch.float64}
        self.net = nn.Sequential(nn.Linear(d_in, hidden, **f64), nn.Tanh(),
                                 nn.Linear(hidden, hidden, **f64), nn.Tanh(),
                                 nn.Linear(hidden, n, **f64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def make_data(qp: nn.Module, d_in: int, n: int, m: int, N: int, gen: torch.Generator):
    """Inputs z and targets x*(z) from a hidden QP with q*(z) = W* z."""
    f64 = {"dtype": torch.float64, "generator": gen}
    L = torch.randn(n, n, **f64) / np.sqrt(n)
    G = torch.randn(m, n, **f64)
    h = 0.2 + 0.8 * torch.rand(m, **f64)
    W = 2.0 * torch.randn(n, d_in, **f64) / np.sqrt(d_in)
    z = torch.randn(N, d_in, **f64)
    with torch.no_grad():
        x = qp(L, z @ W.T, G, h)[0]
    n_active = int(((G @ x.T).T > h - 1e-7).sum())
    return z, x, n_active / N


def train(model: nn.Module, z, x, z_test, x_test, steps: int, batch: int, lr: float,
          gen: torch.Generator, every: int) -> tuple[list[float], list[float]]:
    """Adam on minibatches; the loss on fixed train/held-out subsets every ``every`` steps."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_curve, test_curve = [], []
    k = min(z.shape[0], z_test.shape[0], 128)  # loss curves on fixed subsets, to save solves

    def evaluate() -> None:
        with torch.no_grad():
            train_curve.append(float(((model(z[:k]) - x[:k]) ** 2).mean()))
            test_curve.append(float(((model(z_test[:k]) - x_test[:k]) ** 2).mean()))

    evaluate()
    for step in range(steps):
        idx = torch.randint(0, z.shape[0], (batch,), generator=gen)
        loss = ((model(z[idx]) - x[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(model, "project"):
            model.project()
        if (step + 1) % every == 0 or step + 1 == steps:
            evaluate()
    return train_curve, test_curve


def run(quick: bool = False, out: Path | str = DEFAULT_OUT, seed: int = 0,
        learn_q: bool = False) -> dict:
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():  # nn.Linear initializes from the global RNG
        torch.manual_seed(seed)
        d_in, hidden, n, m = 8, 32, 5, 8
        N, N_test = (256, 64) if quick else (1024, 512)
        steps, batch, lr = (60, 32, 3e-2) if quick else (600, 64, 1e-2)
        every = 6 if quick else 20
        gen = torch.Generator().manual_seed(seed)
        qp = qp_layer(n, m)
        z, x, act = make_data(qp, d_in, n, m, N + N_test, gen)
        z, z_test, x, x_test = z[:N], z[N:], x[:N], x[N:]
        variance = float(((x - x.mean(0)) ** 2).mean())

        model = (OptNetQ(d_in, hidden, n, m, qp_layer_q(n, m), gen) if learn_q
                 else OptNet(d_in, hidden, n, m, qp, gen))
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", dl.NonDifferentiableWarning)
            qp_train, qp_test = train(model, z, x, z_test, x_test, steps, batch, lr, gen,
                                      every)
        qp_seconds = time.perf_counter() - t0
        n_nondiff = sum(issubclass(w.category, dl.NonDifferentiableWarning) for w in caught)

        mlp = PlainMLP(d_in, hidden, n)
        mlp_train, mlp_test = train(mlp, z, x, z_test, x_test, steps, batch, lr, gen, every)

    evals = np.unique([0, *range(every, steps + 1, every), steps])
    result = {
        "n": n, "m": m, "d_in": d_in, "train_size": N, "steps": steps, "batch": batch,
        "active_constraints_per_sample": act, "target_variance": variance,
        "initial_loss": qp_train[0], "final_loss": qp_train[-1],
        "loss_ratio": qp_train[0] / qp_train[-1],
        "initial_test_loss": qp_test[0], "final_test_loss": qp_test[-1],
        "test_loss_ratio": qp_test[0] / qp_test[-1],
        "mlp_final_loss": mlp_train[-1], "mlp_final_test_loss": mlp_test[-1],
        "train_seconds": qp_seconds, "nondifferentiable_warnings": n_nondiff,
        "curves": {"steps": evals.tolist(), "qp_train": qp_train, "qp_test": qp_test,
                   "mlp_train": mlp_train, "mlp_test": mlp_test},
        "learn_q": learn_q,
        "figure": out / ("optnet_qp_learn_q.png" if learn_q else "optnet_qp.png"),
    }

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(evals, qp_train, "-", color="C0", label="MLP → QP layer (train)")
    ax.semilogy(evals, qp_test, "--", color="C0", label="MLP → QP layer (held out)")
    ax.semilogy(evals, mlp_train, "-", color="C7", label="plain MLP, no QP (train)")
    ax.semilogy(evals, mlp_test, "--", color="C7", label="plain MLP, no QP (held out)")
    ax.axhline(variance, color="k", lw=0.8, ls=":", label="variance of the targets")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("mean squared error of x")
    ax.set_title(f"OptNet{' (Q learned directly)' if learn_q else ''}: learning a hidden QP "
                 f"(n = {n}, m = {m}), "
                 f"loss ÷{result['loss_ratio']:.0f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(result["figure"], dpi=80)
    plt.close(fig)
    result["seconds"] = time.perf_counter() - t_start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps")
    parser.add_argument("--learn-q", action="store_true",
                        help="learn Q itself (a PSD parameter, projected) instead of its factor L")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the PNG")
    args = parser.parse_args()
    r = run(quick=args.quick, out=args.out, learn_q=args.learn_q)
    print(
        f"An MLP whose last layer is a QP (n = {r['n']} variables, m = {r['m']} inequalities; "
        f"{'Q' if r['learn_q'] else 'L'}, G, h learned as nn.Parameters, q produced per "
        f"sample) is trained with Adam for "
        f"{r['steps']} steps of batch {r['batch']} to reproduce a hidden QP "
        f"({r['active_constraints_per_sample']:.2f} active constraints per target on average). "
        f"The training MSE drops from {r['initial_loss']:.3e} to {r['final_loss']:.3e} "
        f"(÷{r['loss_ratio']:.1f}) and the held-out MSE from {r['initial_test_loss']:.3e} to "
        f"{r['final_test_loss']:.3e} (÷{r['test_loss_ratio']:.1f}); the targets' variance is "
        f"{r['target_variance']:.3e}; for reference, the MLP with an extra hidden layer in place "
        f"of the QP reaches {r['mlp_final_loss']:.3e} (train) / {r['mlp_final_test_loss']:.3e} "
        f"(held out). "
        f"Training through the layer took {r['train_seconds']:.1f} s "
        f"({r['nondifferentiable_warnings']} non-differentiability warnings). "
        f"Figure: {r['figure']} ({r['seconds']:.1f} s)."
    )


if __name__ == "__main__":
    main()
