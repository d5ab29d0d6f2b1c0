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
                quantity: str, split: str, path: Path, missing: dict[tuple[int, str], str] | None = None,
                truth_title: str = "ground truth") -> Path:
    """Rows = doses, columns = ground truth then each view; ``quantity`` 'phase' or 'amplitude'.

    ``truth_title`` names the first column (without ground truth: the reference reconstruction).
    """
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
            ax.set_title(truth_title, fontsize=9)
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
    fig.suptitle(f"{quantity}: {truth_title} vs reconstruction ({split} split, registered, mask only)", fontsize=10)
    return _save(fig, path)


def metrics_vs_dose(cells: Iterable[dict], views: Sequence[str], metric_labels: dict[str, str], path: Path,
                    points: Iterable[dict] = ()) -> Path:
    """One panel per metric: cell mean against dose (log axis) with its 95 % CI as error bars, a line per view.

    ``cells``: dicts with dose, view (the line's name) and ``metrics`` {name: {mean, ci_low, ci_high}}
    (a cell without an interval is drawn without a bar). ``points``: dicts with dose, view, split
    and ``metrics`` {name: value}, drawn small and faint (each scored job).
    """
    cells, points = list(cells), list(points)
    names = list(metric_labels)
    n_cols = 3
    n_rows = (len(names) + n_cols - 1) // n_cols
    fig = Figure(figsize=(4.2 * n_cols, 3.0 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    colours = _colours(views)
    for ax, name in zip(axes, names):
        for view in views:
            for split, marker in (("train", "^"), ("test", "v")):
                job_points = [(p["dose"], p["metrics"].get(name)) for p in points
                              if p["view"] == view and p["split"] == split and p["metrics"].get(name) is not None]
                if job_points:
                    xs, ys = zip(*job_points)
                    ax.plot(xs, ys, marker, color=colours[view], alpha=0.35, markersize=3, linestyle="none")
            series = sorted((c["dose"], c["metrics"].get(name) or {}) for c in cells if c["view"] == view)
            series = [(d, s) for d, s in series if s.get("mean") is not None]
            if not series:
                continue
            xs = [d for d, _ in series]
            ys = [s["mean"] for _, s in series]
            low = [s["mean"] - s["ci_low"] if s.get("ci_low") is not None else 0.0 for _, s in series]
            high = [s["ci_high"] - s["mean"] if s.get("ci_high") is not None else 0.0 for _, s in series]
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", color=colours[view], capsize=3, label=view)
        ax.set_xscale("log")
        ax.set_xlabel("dose (photons / exposure)")
        ax.set_title(metric_labels[name], fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle("cell mean with 95 % CI (bars) over replicates x splits; faint marks: single jobs "
                 "(^ train, v test)", fontsize=9)
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
        _frc_axes(ax, "FRC", f"dose {dose:g} (dotted: half-bit)", drawn, "no reconstruction")
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


@dataclass
class PairCurve:
    """One (dose, view, split) two-reconstruction FRC: the pair-averaged curve and its half-bit threshold."""

    dose: int
    view: str
    split: str
    frequency: np.ndarray
    frc: np.ndarray
    threshold: np.ndarray


def pair_frc_curves(curves: Sequence[PairCurve], doses: Sequence[int], views: Sequence[str], path: Path) -> Path:
    """Two-reconstruction FRC per dose, a line per (view, split), its half-bit curve dotted, 0.5 dashed grey."""
    fig, axes = _per_dose_axes(doses)
    colours = _colours(views)
    for ax, dose in zip(axes, doses):
        drawn = False
        for curve in curves:
            if curve.dose != dose:
                continue
            colour = colours.get(curve.view, "k")
            x = np.asarray(curve.frequency) / 0.5
            ax.plot(x, curve.frc, SPLIT_STYLES.get(curve.split, "-"), color=colour, label=f"{curve.view} {curve.split}")
            ax.plot(x, curve.threshold, ":", color=colour, linewidth=0.8)
            drawn = True
        ax.axhline(0.5, color="0.5", linewidth=0.8, linestyle="--")
        _frc_axes(ax, "FRC between two replicates", f"dose {dose:g} (dotted: half-bit, dashed: 0.5)", drawn,
                  "fewer than 2 replicates")
    _legend(fig, axes)
    return _save(fig, path)


def _frc_axes(ax, ylabel: str, title: str, drawn: bool, empty_text: str) -> None:
    """The frame every FRC panel shares: zero line, frequency axis to Nyquist, labels, grid."""
    ax.axhline(0, color="0.6", linewidth=0.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlabel("spatial frequency / Nyquist")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, empty_text, ha="center", transform=ax.transAxes)


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres: midpoints inside, half a step beyond the ends."""
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def dose_overlap_heatmap(doses: Sequence[float], overlaps: Sequence[float], values: np.ndarray, label: str, path: Path,
                         target: float | None = None, title: str = "") -> Path:
    """A metric over (log10 dose, measured overlap): cells coloured by value, contour lines, values printed.

    ``values[i, j]``: the cell mean at ``overlaps[i]`` and ``doses[j]`` (NaN where there is none);
    overlaps ascending. Contours need a grid of >= 2 x 2 distinct overlaps and doses; ``target``
    (the quality target of this metric) is drawn as a thick contour.
    """
    log_dose = np.log10(np.asarray(doses, np.float64))
    overlap = np.asarray(overlaps, np.float64)
    values = np.asarray(values, np.float64)
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    masked = np.ma.masked_invalid(values)
    mesh = ax.pcolormesh(_edges(log_dose), _edges(overlap), masked, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label=label)
    finite = values[np.isfinite(values)]
    distinct = np.all(np.diff(overlap) > 0) and np.all(np.diff(log_dose) > 0)
    if distinct and values.shape[0] >= 2 and values.shape[1] >= 2 and finite.size and np.ptp(finite) > 0:
        levels = np.linspace(finite.min(), finite.max(), 7)[1:-1]
        lines = ax.contour(log_dose, overlap, masked, levels=levels, colors="white", linewidths=0.8)
        ax.clabel(lines, fontsize=7, fmt="%.3g")
        if target is not None and finite.min() < target < finite.max():
            ax.contour(log_dose, overlap, masked, levels=[target], colors="red", linewidths=2.0)
    for i, y in enumerate(overlap):
        for j, x in enumerate(log_dose):
            if np.isfinite(values[i, j]):
                ax.text(x, y, f"{values[i, j]:.3g}", ha="center", va="center", fontsize=6, color="black",
                        bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.5, "linewidth": 0})
    ax.set_xticks(log_dose, [f"{d:g}" for d in doses], fontsize=7)
    ax.set_xlabel("dose (photons / exposure, log scale)")
    ax.set_ylabel("measured overlap")
    ax.set_title(title or label + (f" (red: target {target:g})" if target is not None else ""), fontsize=9)
    return _save(fig, path)


@dataclass
class MinDosePoint:
    """The minimum dose reaching Q at one overlap (statistics.minimum_dose's fields)."""

    series: str
    overlap: float
    min_dose: float | None
    status: str
    dose_low: float | None
    dose_low_status: str
    dose_high: float | None
    dose_high_status: str


def min_dose_curve(points: Sequence[MinDosePoint], doses: Sequence[float], target_label: str, path: Path) -> Path:
    """Minimum dose reaching Q against measured overlap, a line per series, the 95 % range as bars.

    "Not reached" (no studied dose reaches Q) is an upward triangle above the highest dose;
    "at or below the lowest dose" a downward triangle at the lowest dose; an open range end is
    drawn to the edge of the studied doses.
    """
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    lo, hi = float(min(doses)), float(max(doses))
    ceiling, floor = hi * 2.0, lo / 2.0
    colours = _colours(list(dict.fromkeys(p.series for p in points)))
    for series, colour in colours.items():
        mine = sorted((p for p in points if p.series == series), key=lambda p: p.overlap)
        line = [(p.overlap, p.min_dose) for p in mine if p.status in ("interpolated", "at_or_below_lowest")]
        if line:
            ax.plot(*zip(*line), "-", color=colour, label=series)
        for p in mine:
            y = {"interpolated": p.min_dose, "at_or_below_lowest": lo, "not_reached": ceiling}.get(p.status)
            if y is None:
                continue
            marker = {"interpolated": "o", "at_or_below_lowest": "v", "not_reached": "^"}[p.status]
            ax.plot([p.overlap], [y], marker, color=colour)
            if p.status == "not_reached":
                ax.annotate("not reached", (p.overlap, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=colour)
            if p.dose_low_status != "no_interval":
                bottom = {"interpolated": p.dose_low, "at_or_below_lowest": floor}.get(p.dose_low_status, ceiling)
                top = {"interpolated": p.dose_high, "at_or_below_lowest": lo}.get(p.dose_high_status, ceiling)
                ax.plot([p.overlap, p.overlap], [bottom, top], "-", color=colour, alpha=0.5, linewidth=3)
    ax.axhline(hi, color="0.6", linewidth=0.6, linestyle=":")
    ax.axhline(lo, color="0.6", linewidth=0.6, linestyle=":")
    ax.set_yscale("log")
    ax.set_ylim(floor / 1.5, ceiling * 1.5)
    ax.set_xlabel("measured overlap")
    ax.set_ylabel("minimum dose (photons / exposure)")
    ax.set_title(f"minimum dose reaching {target_label}\n(bars: 95 % range; ^ not reached within the doses, "
                 "v reached at the lowest)", fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _errorbar_series(ax, series: list[tuple[float, dict]], colour: str, style: str, marker: str, label: str,
                     filled: bool = True) -> bool:
    """Cell means against dose with their 95 % CI as bars; a cell without an interval has no bar."""
    series = [(d, s) for d, s in sorted(series, key=lambda p: p[0]) if s and s.get("mean") is not None]
    if not series:
        return False
    xs = [d for d, _ in series]
    ys = [s["mean"] for _, s in series]
    low = [s["mean"] - s["ci_low"] if s.get("ci_low") is not None else 0.0 for _, s in series]
    high = [s["ci_high"] - s["mean"] if s.get("ci_high") is not None else 0.0 for _, s in series]
    ax.errorbar(xs, ys, yerr=[low, high], marker=marker, linestyle=style, color=colour, capsize=3, label=label,
                markerfacecolor=colour if filled else "white")
    return True


def before_after_vs_dose(cells: Iterable[dict], views: Sequence[str], panels: Sequence[tuple[str, str, str, str]],
                         path: Path, title: str) -> Path:
    """Per panel, a "before" and an "after" metric against dose: cell mean with its 95 % CI, a colour per view.

    ``cells``: dicts with dose, view (the line's name) and ``metrics`` {name: {mean, ci_low, ci_high}};
    ``panels``: (panel title, y label, before metric, after metric). Before: dashed, open circles;
    after: solid, filled squares.
    """
    cells = list(cells)
    fig = Figure(figsize=(4.6 * len(panels) + 1.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    colours = _colours(views)
    for ax, (panel_title, ylabel, before, after) in zip(axes, panels):
        drawn = False
        for view in views:
            mine = [c for c in cells if c["view"] == view]
            drawn |= _errorbar_series(ax, [(c["dose"], c["metrics"].get(before)) for c in mine], colours[view], "--",
                                      "o", f"{view} before", filled=False)
            drawn |= _errorbar_series(ax, [(c["dose"], c["metrics"].get(after)) for c in mine], colours[view], "-",
                                      "s", f"{view} after")
        ax.set_xscale("log")
        ax.set_xlabel("dose (photons / exposure)")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no value", ha="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=9)
    _legend(fig, axes)
    return _save(fig, path)


def beside_vs_dose(rows: Sequence[dict], names: Sequence[str], labels: dict[str, str], this_label: str,
                   other_label: str, path: Path) -> Path:
    """Two studies' cell means against dose, a panel per metric: a colour per view (and reconstructor), this
    study solid with filled markers, the other dashed with open ones, 95 % CI half-widths as bars.

    ``rows``: summary.json ``beside`` rows ({dose, view, reconstructor, metrics: {name: {this, other}}}),
    each side {n, mean, half_width}.
    """
    series = list(dict.fromkeys(r["view"] if r["reconstructor"] is None else f"{r['view']} {r['reconstructor']}"
                                for r in rows))
    n_cols = min(3, max(len(names), 1))
    n_rows = (len(names) + n_cols - 1) // n_cols
    fig = Figure(figsize=(4.2 * n_cols + 1.6, 3.0 * max(n_rows, 1)), layout="constrained")
    axes = fig.subplots(max(n_rows, 1), n_cols, squeeze=False).ravel()
    colours = _colours(series)
    for ax, name in zip(axes, names):
        for line in series:
            mine = [r for r in rows if (r["view"] if r["reconstructor"] is None else f"{r['view']} {r['reconstructor']}") == line]
            for side, style, marker, filled, label in (("this", "-", "s", True, this_label),
                                                       ("other", "--", "o", False, other_label)):
                points = []
                for r in mine:
                    stat = r["metrics"][name][side]
                    if stat["mean"] is None:
                        continue
                    half = stat["half_width"]
                    points.append((r["dose"], {"mean": stat["mean"], "ci_low": None if half is None else stat["mean"] - half,
                                               "ci_high": None if half is None else stat["mean"] + half}))
                _errorbar_series(ax, points, colours[line], style, marker, f"{line} ({label})", filled)
        ax.set_xscale("log")
        ax.set_xlabel("dose (photons / exposure)")
        ax.set_title(labels[name], fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{this_label} (solid) beside {other_label} (dashed): cell mean with 95 % CI", fontsize=9)
    _legend(fig, axes)
    return _save(fig, path)
