"""Summary figures (PNG, matplotlib's Agg canvas; no pyplot global state, no display needed).

Every function takes plain data and a path, draws one figure and writes it. Missing jobs appear
as labelled empty panels, so a partial sweep still gives every figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .fileio import atomic_output

DPI = 110
SPLIT_STYLES = {"train": "-", "test": "--"}
PNG_METADATA = {"Software": None}  # keep the matplotlib version out of the file


@dataclass
class ObjectPanel:
    """One job's images for the object grid: ground truth and registered reconstruction crops.

    ``rec_*`` are NaN outside the illuminated mask (drawn grey).
    """

    gt_phase: np.ndarray
    gt_amplitude: np.ndarray
    rec_phase: np.ndarray
    rec_amplitude: np.ndarray


@dataclass
class CurveJob:
    """One job's curves."""

    dose: int
    view: str
    split: str
    frc_frequency: np.ndarray | None = None
    frc: np.ndarray | None = None
    frc_threshold: np.ndarray | None = None
    loss_epochs: np.ndarray | None = None
    loss_values: np.ndarray | None = None


@dataclass
class ConvergenceTrace:
    """One job's scored checkpoints: the headline metric at each epoch and engine second."""

    dose: int
    view: str  # the line's name: a view, or a view and a reconstructor
    split: str
    epochs: Sequence[int]
    seconds: Sequence[float | None]
    values: Sequence[float | None]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_output(path) as handle:  # a kill never leaves half a PNG
        fig.savefig(handle, format="png", dpi=DPI, metadata=PNG_METADATA)
    return path


def _colours(views: Sequence[str]) -> dict[str, str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    return {view: palette[i % len(palette)] for i, view in enumerate(views)}


def _empty(ax, text: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes, wrap=True)


def object_grid(panels: dict[tuple[int, str], ObjectPanel], doses: Sequence[int], views: Sequence[str],
                quantity: str, split: str, path: Path, missing: dict[tuple[int, str], str] | None = None) -> Path:
    """Rows = doses, columns = ground truth then each view; ``quantity`` 'phase' or 'amplitude'."""
    missing = missing or {}
    n_rows, n_cols = max(len(doses), 1), len(views) + 1
    shapes = [p.gt_phase.shape for p in panels.values()]
    aspect = min(max(shapes[0][0] / shapes[0][1], 0.25), 2.0) if shapes else 1.0  # rows / cols of a panel
    fig = Figure(figsize=(2.4 * n_cols + 1.0, 2.4 * aspect * n_rows + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    values = [getattr(p, f"gt_{quantity}") for p in panels.values()]
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values]) if values else np.array([0.0, 1.0])
    vmin, vmax = (float(np.min(finite)), float(np.max(finite))) if finite.size else (0.0, 1.0)
    cmap = "twilight_shifted" if quantity == "phase" else "gray"
    image = None
    for r, dose in enumerate(doses):
        row_panels = [panels.get((dose, view)) for view in views]
        first = next((p for p in row_panels if p is not None), None)
        ax = axes[r, 0]
        if first is None:
            _empty(ax, "no reconstruction")
        else:
            image = ax.imshow(getattr(first, f"gt_{quantity}"), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_ylabel(f"dose {dose:g}", fontsize=9)
        if r == 0:
            ax.set_title("ground truth", fontsize=9)
        for c, (view, panel) in enumerate(zip(views, row_panels), start=1):
            ax = axes[r, c]
            if r == 0:
                ax.set_title(view, fontsize=9)
            if panel is None:
                _empty(ax, missing.get((dose, view), "no reconstruction"))
                continue
            masked = np.ma.masked_invalid(getattr(panel, f"rec_{quantity}"))
            image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_facecolor("0.75")
            ax.set_xticks([])
            ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="phase (rad)" if quantity == "phase" else "amplitude")
    fig.suptitle(f"{quantity}: ground truth vs reconstruction ({split} split, registered, mask only)", fontsize=10)
    return _save(fig, path)


def metrics_vs_dose(rows: Iterable[dict], views: Sequence[str], metric_labels: dict[str, str], path: Path) -> Path:
    """One panel per metric: value against dose (log axis), a line per view, style per split.

    ``rows``: dicts with dose, view, split and ``metrics`` {name: value or None}.
    """
    rows = list(rows)
    names = list(metric_labels)
    n_cols = 3
    n_rows = (len(names) + n_cols - 1) // n_cols
    fig = Figure(figsize=(4.2 * n_cols, 3.0 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    colours = _colours(views)
    for ax, name in zip(axes, names):
        for view in views:
            for split, style in SPLIT_STYLES.items():
                points = sorted((row["dose"], row["metrics"].get(name)) for row in rows
                                if row["view"] == view and row["split"] == split and row["metrics"].get(name) is not None)
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, marker="o", color=colours[view], label=f"{view} {split}")
        ax.set_xscale("log")
        ax.set_xlabel("dose (photons / exposure)")
        ax.set_title(metric_labels[name], fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    _legend(fig, axes)
    return _save(fig, path)


def _legend(fig: Figure, axes) -> None:
    """One legend for all panels (each label once)."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)


def _per_dose_axes(doses: Sequence[int], title_height: float = 3.0):
    n = max(len(doses), 1)
    fig = Figure(figsize=(4.4 * n + 1.6, title_height), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False).ravel()
    return fig, axes


def frc_curves(jobs: Sequence[CurveJob], doses: Sequence[int], views: Sequence[str], path: Path) -> Path:
    """FRC against spatial frequency per dose, a line per job, its half-bit curve dotted."""
    fig, axes = _per_dose_axes(doses)
    colours = _colours(views)
    for ax, dose in zip(axes, doses):
        drawn = False
        for job in jobs:
            if job.dose != dose or job.frc is None:
                continue
            colour = colours.get(job.view, "k")
            ax.plot(job.frc_frequency / 0.5, job.frc, SPLIT_STYLES[job.split], color=colour, label=f"{job.view} {job.split}")
            ax.plot(job.frc_frequency / 0.5, job.frc_threshold, ":", color=colour, linewidth=0.8)
            drawn = True
        ax.axhline(0, color="0.6", linewidth=0.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.2, 1.05)
        ax.set_xlabel("spatial frequency / Nyquist")
        ax.set_ylabel("FRC")
        ax.set_title(f"dose {dose:g} (dotted: half-bit)", fontsize=9)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no reconstruction", ha="center", transform=ax.transAxes)
    _legend(fig, axes)
    return _save(fig, path)


def loss_curves(jobs: Sequence[CurveJob], doses: Sequence[int], views: Sequence[str], path: Path) -> Path:
    """Loss per epoch (log scale) per dose, a line per job."""
    fig, axes = _per_dose_axes(doses)
    colours = _colours(views)
    for ax, dose in zip(axes, doses):
        drawn = False
        for job in jobs:
            if job.dose != dose or job.loss_values is None or len(job.loss_values) == 0:
                continue
            ax.plot(job.loss_epochs, job.loss_values, SPLIT_STYLES[job.split], color=colours.get(job.view, "k"),
                    marker="." if len(job.loss_values) < 30 else None, label=f"{job.view} {job.split}")
            drawn = True
        if drawn and all(v > 0 for job in jobs if job.dose == dose and job.loss_values is not None for v in job.loss_values):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(f"dose {dose:g}", fontsize=9)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no loss recorded", ha="center", transform=ax.transAxes)
    _legend(fig, axes)
    return _save(fig, path)


def convergence_curves(traces: Sequence[ConvergenceTrace], dose: int, views: Sequence[str], metric_label: str,
                       path: Path) -> Path:
    """One dose: the headline metric against epoch (left) and engine seconds (right), a line per job.

    Colour per view (or view and reconstructor), style per split; a point is a scored checkpoint.
    Points without a value (or, on the right, without seconds) are left out.
    """
    fig = Figure(figsize=(10.4, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False).ravel()
    colours = _colours(views)
    for ax, axis in zip(axes, ("epoch", "seconds")):
        drawn = False
        for trace in traces:
            xs = trace.epochs if axis == "epoch" else trace.seconds
            points = [(x, y) for x, y in zip(xs, trace.values) if x is not None and y is not None]
            if not points:
                continue
            px, py = zip(*points)
            ax.plot(px, py, SPLIT_STYLES.get(trace.split, "-"), marker=".", color=colours.get(trace.view, "k"),
                    label=f"{trace.view} {trace.split}")
            drawn = True
        ax.set_xlabel("epoch" if axis == "epoch" else "seconds in the engine")
        ax.set_ylabel(metric_label)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no checkpoint scored", ha="center", transform=ax.transAxes)
    fig.suptitle(f"dose {dose:g}: {metric_label} of each checkpoint", fontsize=10)
    _legend(fig, axes)
    return _save(fig, path)
