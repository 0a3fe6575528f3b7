"""Learning a polytope from projections onto it (Amos & Kolter 2017, Sec. 5-style).

A hidden 2-D polytope P* = {x : G*x ≤ h*} is observed only through pairs (y, Π_P*(y)): points
and their Euclidean projections. We fit G, h by gradient descent through the projection layer

    x(y; G, h) = argmin_x ‖x − y‖²   s.t.  Gx ≤ h,

minimizing the mean ‖x(y; G, h) − Π_P*(y)‖². The learned polytope has more facets than the
hidden one (the surplus ones can become redundant). Rows of G are normalized inside the model
(G = G_raw / ‖G_raw‖ row-wise, removing the scale redundancy of (G, h)) and h = softplus(h_raw)
keeps the origin inside, so every polytope the model can express is non-empty.

The figure shows the true, initial and learned polytopes with some training pairs, and the
loss curve. Distances between polytopes: the Hausdorff distance of their boundaries and the
intersection-over-union of their areas (exact, by clipping convex polygons).

    python examples/learn_polytope.py [--quick] [--out DIR]
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
from scipy.spatial import HalfspaceIntersection  # noqa: E402
from torch import nn  # noqa: E402

import declarative as dl  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def projection_layer(m: int, d: int = 2) -> torch.nn.Module:
    G = cp.Parameter((m, d), name="G")
    h = cp.Parameter(m, name="h")
    y = cp.Parameter(d, name="y")
    x = cp.Variable(d, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [G @ x <= h])
    return dl.compile(problem, parameters=[G, h, y], variables=[x]).torch()


class Polytope(nn.Module):
    """{x : Gx ≤ h} with unit rows G = G_raw/‖G_raw‖ and h = softplus(h_raw) > 0."""

    def __init__(self, m: int, layer: nn.Module) -> None:
        super().__init__()
        angles = 2 * np.pi * (np.arange(m) + 0.5) / m
        self.G_raw = nn.Parameter(torch.tensor(np.c_[np.cos(angles), np.sin(angles)]))
        self.h_raw = nn.Parameter(torch.full((m,), float(np.log(np.expm1(0.7))),
                                             dtype=torch.float64))
        self.layer = layer

    def halfspaces(self) -> tuple[torch.Tensor, torch.Tensor]:
        G = self.G_raw / self.G_raw.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return G, nn.functional.softplus(self.h_raw)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        G, h = self.halfspaces()
        return self.layer(G, h, y)[0]


# -- 2-D convex polygon geometry -------------------------------------------------------------
def polygon(G: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Vertices (counter-clockwise) of {x : Gx ≤ h}, which must contain the origin strictly."""
    hs = HalfspaceIntersection(np.c_[G, -h], np.zeros(2)).intersections
    c = hs.mean(axis=0)
    order = np.argsort(np.arctan2(hs[:, 1] - c[1], hs[:, 0] - c[0]))
    V = hs[order]
    keep = np.r_[True, np.linalg.norm(np.diff(V, axis=0), axis=1) > 1e-12]  # merge duplicates
    return V[keep]


def area(V: np.ndarray) -> float:
    x, y = V[:, 0], V[:, 1]
    return 0.5 * float(np.abs(x @ np.roll(y, -1) - y @ np.roll(x, -1)))


def clip(V: np.ndarray, G: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Sutherland–Hodgman: the convex polygon V intersected with {x : Gx ≤ h}."""
    for g, b in zip(G, h, strict=True):
        if len(V) == 0:
            break
        out = []
        for P, Q in zip(V, np.roll(V, -1, axis=0), strict=True):
            fp, fq = g @ P - b, g @ Q - b
            if fp <= 0:
                out.append(P)
            if fp * fq < 0:
                out.append(P + fp / (fp - fq) * (Q - P))
        V = np.array(out)
    return V


def boundary_points(V: np.ndarray, k: int = 400) -> np.ndarray:
    E = np.roll(V, -1, axis=0) - V
    lengths = np.linalg.norm(E, axis=1)
    t = np.linspace(0, lengths.sum(), k, endpoint=False)
    edge = np.searchsorted(np.cumsum(lengths), t, side="right")
    s = (t - np.r_[0, np.cumsum(lengths)][edge]) / lengths[edge]
    return V[edge] + s[:, None] * E[edge]


def hausdorff(VA: np.ndarray, VB: np.ndarray) -> float:
    A, B = boundary_points(VA), boundary_points(VB)
    D = np.linalg.norm(A[:, None] - B[None], axis=2)
    return float(max(D.min(axis=1).max(), D.min(axis=0).max()))


def compare(G, h, G_true, h_true) -> dict:
    V, V_true = polygon(G, h), polygon(G_true, h_true)
    inter = clip(V, G_true, h_true)
    a, a_true, a_int = area(V), area(V_true), area(inter) if len(inter) >= 3 else 0.0
    return {"hausdorff": hausdorff(V, V_true), "iou": a_int / (a + a_true - a_int),
            "area": a, "area_true": a_true, "vertices": V, "vertices_true": V_true}


# -- the experiment --------------------------------------------------------------------------
def run(quick: bool = False, out: Path | str = DEFAULT_OUT, seed: int = 0) -> dict:
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    m_true, m = 5, 8
    N, N_test = (160, 200) if quick else (300, 1000)
    steps, lr = (40, 0.05) if quick else (200, 0.03)

    # hidden polytope: m_true facets with normals spread around the circle
    ang = 2 * np.pi * (np.arange(m_true) + rng.uniform(-0.25, 0.25, m_true)) / m_true
    G_true = np.c_[np.cos(ang), np.sin(ang)]
    h_true = rng.uniform(0.6, 1.3, m_true)
    true_layer = projection_layer(m_true)

    def observe(n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.tensor(rng.uniform(-2.2, 2.2, (n_points, 2)))
        with torch.no_grad():
            x = true_layer(torch.tensor(G_true), torch.tensor(h_true), y)[0]
        return y, x

    y, x = observe(N)
    y_test, x_test = observe(N_test)
    model = Polytope(m, projection_layer(m))
    with torch.no_grad():
        G0, h0 = (t.numpy().copy() for t in model.halfspaces())
        initial_test = float(((model(y_test) - x_test) ** 2).sum(1).mean())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):  # full-batch Adam
        loss = ((model(y) - x) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - t0
    with torch.no_grad():
        losses.append(float(((model(y) - x) ** 2).sum(1).mean()))
        final_test = float(((model(y_test) - x_test) ** 2).sum(1).mean())
        G, h = (t.numpy().copy() for t in model.halfspaces())

    before, after = compare(G0, h0, G_true, h_true), compare(G, h, G_true, h_true)
    result = {
        "m_true": m_true, "m": m, "train_size": N, "steps": steps,
        "initial_loss": losses[0], "final_loss": losses[-1],
        "loss_ratio": losses[0] / losses[-1],
        "initial_test_loss": initial_test, "final_test_loss": final_test,
        "initial_hausdorff": before["hausdorff"], "final_hausdorff": after["hausdorff"],
        "initial_iou": before["iou"], "final_iou": after["iou"],
        "area_true": after["area_true"], "area_learned": after["area"],
        "G": G, "h": h, "G_true": G_true, "h_true": h_true, "losses": losses,
        "train_seconds": train_seconds, "figure": out / "learn_polytope.png",
    }

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    ax = axes[0]
    for V, style, label in ((before["vertices"], dict(color="0.6", ls="--"), "initial"),
                            (after["vertices_true"], dict(color="k", lw=2.5), "true P*"),
                            (after["vertices"], dict(color="C0", lw=1.5), "learned")):
        W = np.vstack([V, V[:1]])
        ax.plot(W[:, 0], W[:, 1], label=label, **style)
    yn, xn = y.numpy()[:60], x.numpy()[:60]
    for a, b in zip(yn, xn, strict=True):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="C1", lw=0.5, alpha=0.6)
    ax.scatter(yn[:, 0], yn[:, 1], s=6, color="C1", label="points y → Π_P*(y)")
    ax.set_aspect("equal")
    ax.set_xlim(-2.3, 2.3)
    ax.set_ylim(-2.3, 2.3)
    ax.set_title(f"Hausdorff {before['hausdorff']:.2f} → {after['hausdorff']:.2g}, "
                 f"IoU {before['iou']:.2f} → {after['iou']:.4g}")
    ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
    ax = axes[1]
    ax.semilogy(np.arange(len(losses)), losses, color="C0")
    ax.set_xlabel("Adam step (full batch)")
    ax.set_ylabel("mean ‖x(y; G, h) − Π_P*(y)‖²")
    ax.set_title(f"training loss ÷{result['loss_ratio']:.3g}")
    fig.suptitle(f"learning a {m_true}-facet polytope with an {m}-facet projection layer "
                 f"from {N} projections")
    fig.tight_layout()
    fig.savefig(result["figure"], dpi=80)
    plt.close(fig)
    result["seconds"] = time.perf_counter() - t_start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the PNG")
    args = parser.parse_args()
    r = run(quick=args.quick, out=args.out)
    print(
        f"A hidden {r['m_true']}-facet polygon is recovered from {r['train_size']} pairs "
        f"(y, projection of y) by training an {r['m']}-facet projection layer (G, h learnable) "
        f"for {r['steps']} full-batch Adam steps. The loss falls from {r['initial_loss']:.3e} to "
        f"{r['final_loss']:.3e} (÷{r['loss_ratio']:.3g}; held-out {r['initial_test_loss']:.3e} → "
        f"{r['final_test_loss']:.3e}); the Hausdorff distance between the learned and the true "
        f"polygon goes from {r['initial_hausdorff']:.3f} to {r['final_hausdorff']:.2g} and their "
        f"intersection-over-union from {r['initial_iou']:.3f} to {r['final_iou']:.6g} (areas "
        f"{r['area_learned']:.3f} learned vs {r['area_true']:.3f} true). The figure overlays "
        f"the true, initial and learned polygons with some training pairs, next to the loss "
        f"curve ({r['figure']}; training {r['train_seconds']:.1f} s, total {r['seconds']:.1f} s)."
    )


if __name__ == "__main__":
    main()
