"""Heatmaps of a verify report's Jacobians (``declarative verify --plot``); needs matplotlib."""

from __future__ import annotations

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
