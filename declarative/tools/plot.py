"""Figures, with matplotlib: heatmaps of a verify report's Jacobians (``declarative verify --plot``)
and time per instance of a ``bench scaling`` run (``declarative bench scaling --plot``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from declarative.verification.report import CLOSED_FORM, LABELS, Report, jacobian_matrix


def plot_jacobians(report: Report, path: str, reference: str = CLOSED_FORM,
                   title: str | None = None) -> str:
    """A PNG with three heatmaps: the reference Jacobian, ours, and ours − reference.

    All (output, parameter) blocks are laid out as one matrix (`jacobian_matrix`):
    outputs down, parameters side by side, separated by thin lines. Needs matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if reference not in report.jacobians:
        raise ValueError(f"the report holds no {reference!r} Jacobian "
                         f"(it has {sorted(report.jacobians)}).")
    shapes = [o["shape"] for o in report.outputs]
    ours = jacobian_matrix(report.jacobians["ours"], shapes)
    try:
        ref = jacobian_matrix(report.jacobians[reference], shapes)
    except ValueError:  # a reference of the wrong shape: show it as NaN
        ref = np.full(ours.shape, np.nan)
    diff = ours - ref if ours.shape == ref.shape else np.full(ours.shape, np.nan)
    vmax = max(_absmax(ref), _absmax(ours)) or 1.0
    dmax = _absmax(diff) or 1e-300
    rows, cols = ours.shape
    if cols > 2 * rows:  # wide: panels one above the other
        fig, axes = plt.subplots(3, 1, figsize=(min(16.0, 4.0 + 0.12 * cols),
                                                3 * min(4.0, 1.2 + 0.25 * rows)),
                                 constrained_layout=True)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(15.0, min(6.0, 2.5 + 0.2 * rows)),
                                 constrained_layout=True)
    name = LABELS.get(reference, reference)
    panels = [(ref, name, "RdBu_r", vmax), (ours, "ours", "RdBu_r", vmax),
              (diff, f"ours - {name} (max |.| {dmax:.1e})", "PuOr_r", dmax)]
    col_edges = np.cumsum([int(np.prod(p["shape"], dtype=int)) for p in report.parameters])
    row_edges = np.cumsum([int(np.prod(o["shape"], dtype=int)) for o in report.outputs])
    for ax, (m, label, cmap, lim) in zip(axes, panels, strict=True):
        im = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto",
                       interpolation="nearest")
        for e in col_edges[:-1]:
            ax.axvline(e - 0.5, color="k", lw=0.6)
        for e in row_edges[:-1]:
            ax.axhline(e - 0.5, color="k", lw=0.6)
        centers = np.concatenate([[0], col_edges[:-1]]) + np.diff(np.concatenate(
            [[0], col_edges])) / 2 - 0.5
        ax.set_xticks(centers, [p["name"] for p in report.parameters], fontsize=8)
        rc = np.concatenate([[0], row_edges[:-1]]) + np.diff(np.concatenate(
            [[0], row_edges])) / 2 - 0.5
        ax.set_yticks(rc, [o["name"] for o in report.outputs], fontsize=8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.85)
    label = f" - {report.name}" if report.name else ""
    fig.suptitle(title or f"Jacobian d(outputs)/d(parameters){label}", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _absmax(a: np.ndarray) -> float:
    """max |a| over the finite entries (0 if none)."""
    a = np.abs(np.asarray(a, dtype=float))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def plot_scaling(doc: dict[str, Any], path: str) -> str:
    """A PNG of a ``bench scaling`` document: time per instance (total = forward + backward,
    over the batch) against batch size, ours and each peer, log-log, one panel per problem of
    the batch sweep; then one panel per size sweep (time per instance against the size).
    A peer that failed or did not run at a point has no marker there. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    who = ["ours", *doc["settings"]["peers"]]
    panels: list[tuple[str, str, list[tuple[float, dict[str, Any]]]]] = []
    for problem in dict.fromkeys(r["problem"] for r in doc["by_batch"]):
        rows = [r for r in doc["by_batch"] if r["problem"] == problem]
        sizes = ", ".join(f"{k}={v}" for k, v in rows[0]["sizes"].items())
        panels.append((f"{problem} ({sizes}): vs batch", "batch size",
                       [(r["batch"], r) for r in rows]))
    for problem in dict.fromkeys(r["problem"] for r in doc["by_size"]):
        rows = [r for r in doc["by_size"] if r["problem"] == problem]
        key = next(iter(rows[0]["sizes"]))
        panels.append((f"{problem} (batch {rows[0]['batch']}): vs {key}", key,
                       [(r["sizes"][key], r) for r in rows]))
    if not panels:
        raise ValueError("the scaling document has no rows to plot")
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False,
                             constrained_layout=True)
    for ax, (title, xlabel, points) in zip(axes.flat, panels, strict=False):
        for name in who:
            xy = [(x, r["per_instance"].get(name)) for x, r in points]
            xy = [(x, y) for x, y in xy if y is not None and y > 0]
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.plot(xs, ys, marker="o", ms=3, lw=2.0 if name == "ours" else 1.2,
                        label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("time per instance (s)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("declarative bench scaling: forward + backward time per instance (float64; "
                 "every library at its defaults; lower is better)", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
