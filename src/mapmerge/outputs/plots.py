"""Figures of a Pareto front: the 2-task picture in metric space and parallel coordinates for any T.

Rendering uses Matplotlib's Agg canvas directly (no pyplot, no display). PNGs carry no
software or date metadata, so the same tables give byte-identical files, and each file is
written atomically (temporary file beside it, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mapmerge.io import atomic_path

DPI = 150
CMAP = "viridis"
SELECTED_COLOR = "#d62728"
FRONT_COLOR = "#1f77b4"
FINETUNED_COLORS = ("#ff7f0e", "#2ca02c")
MEASURED_COLOR = "0.15"  # the measured front: real evaluations that no other one dominates
INTERVAL_LABEL = "prediction interval (surrogate.interval)"
MAX_ERROR_BARS = 25  # front points drawn with their intervals in the 2-task plot (spread along it)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    """Raise ValueError naming the table and the columns it lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} table lacks column(s) {', '.join(missing)}")


def _reference_value(reference: pd.DataFrame | None, model: str, task: str, metric: str) -> float | None:
    """Value of `metric` for `model` evaluated on `task`, or None when the table has no such row."""
    if reference is None or reference.empty:
        return None
    rows = reference[(reference["model"] == model) & (reference["task"] == task) & (reference["metric"] == metric)]
    values = rows["value"].dropna()
    return float(values.iloc[0]) if len(values) else None


def _selected_row(selected: pd.DataFrame | None) -> pd.Series | None:
    """The single row of `selected`, or None when there is none."""
    if selected is None or selected.empty:
        return None
    if len(selected) != 1:
        raise ValueError(f"selected table must have one row, got {len(selected)}")
    return selected.iloc[0]


def _finite(row: pd.Series, columns: Sequence[str]) -> np.ndarray | None:
    """The values of `columns` in `row` as floats, or None if any is absent or not finite."""
    if not all(c in row.index for c in columns):
        return None
    values = row[list(columns)].to_numpy(dtype=float)
    return values if np.all(np.isfinite(values)) else None


def _bounds(frame: pd.DataFrame | pd.Series, column: str) -> np.ndarray | None:
    """The prediction interval of `column` as error-bar lengths [2, n] (below, above; 0 where a bound is not
    finite), or None when `frame` lacks `<column>_lo` / `_hi` (fronts written before intervals)."""
    names = [f"{column}_lo", f"{column}_hi"]
    index = frame.index if isinstance(frame, pd.Series) else frame.columns
    if not all(n in index for n in names):
        return None
    value = np.atleast_1d(np.asarray(frame[column], dtype=float))
    low, high = (np.atleast_1d(np.asarray(frame[n], dtype=float)) for n in names)
    return np.nan_to_num(np.vstack([value - low, high - value]), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)


def _measured_values(measured: pd.DataFrame | None, columns: Sequence[str]) -> np.ndarray | None:
    """The measured front's complete rows in `columns`, sorted by them, or None where there is none to draw."""
    if measured is None or measured.empty:
        return None
    _require_columns(measured, columns, "measured front")
    values = measured[list(columns)].dropna().sort_values(list(columns)).to_numpy(dtype=float)
    return values if len(values) else None


def _measured_label(n: int) -> str:
    return f"measured Pareto front ({_count(n, 'evaluated merge')})"


def _count(n: int, noun: str) -> str:
    """'1 point', '2 points'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Render `fig` to a PNG at `path` atomically, without time- or version-dependent metadata."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.1)
    return Path(path)


def plot_front_2d(
    samples: pd.DataFrame,
    front: pd.DataFrame,
    reference: pd.DataFrame | None,
    tasks: Sequence[str],
    metric: str,
    path: str | os.PathLike,
    selected: pd.DataFrame | None = None,
    maximize: bool = True,
    measured: pd.DataFrame | None = None,
) -> Path:
    """Plot a two-task front in metric space (x: `tasks[0]`, y: `tasks[1]`) and save it as PNG.

    Shows the evaluated samples, the predicted front, the measured front (`measured`: the real evaluations that no
    other one dominates), the fine-tuned models as dashed lines, the pretrained model and the selected point
    (predicted, and measured when present).
    `maximize` says whether larger metric values are better (marked by an arrow in that corner).
    """
    tasks = list(tasks)
    if len(tasks) != 2:
        raise ValueError(f"plot_front_2d needs exactly 2 tasks, got {len(tasks)}: {tasks}")
    cols = [f"{metric}_{t}" for t in tasks]
    _require_columns(front, cols, "front")
    pf = front[cols].dropna().sort_values(cols)
    if pf.empty:
        raise ValueError("front table has no complete rows")
    if reference is not None:
        _require_columns(reference, ["model", "task", "metric", "value"], "reference")
    x_task, y_task = tasks

    fig = Figure(figsize=(7.6, 5.0), layout="constrained")
    ax = fig.add_subplot()

    if samples is not None and not samples.empty:
        _require_columns(samples, cols, "samples")
        pts = samples[cols].dropna()
        ax.scatter(
            pts[cols[0]],
            pts[cols[1]],
            s=12,
            color="0.6",
            alpha=0.7,
            linewidths=0,
            label=f"evaluated samples ({len(pts)})",
            zorder=2,
        )

    ax.plot(
        pf[cols[0]],
        pf[cols[1]],
        "-o",
        color=FRONT_COLOR,
        markersize=3.5,
        linewidth=1.5,
        label=f"predicted Pareto front ({len(pf)})",
        zorder=3,
    )
    real = _measured_values(measured, cols)
    if real is not None:
        ax.plot(
            real[:, 0],
            real[:, 1],
            ":s",
            color=MEASURED_COLOR,
            markerfacecolor="white",
            markersize=4.5,
            linewidth=1.0,
            label=_measured_label(len(real)),
            zorder=4,
        )
    shown = front.loc[pf.index[np.unique(np.linspace(0, len(pf) - 1, MAX_ERROR_BARS).round().astype(int))]]
    xerr, yerr = _bounds(shown, cols[0]), _bounds(shown, cols[1])
    if xerr is not None and yerr is not None:
        ax.errorbar(
            shown[cols[0]],
            shown[cols[1]],
            xerr=xerr,
            yerr=yerr,
            fmt="none",
            ecolor=FRONT_COLOR,
            elinewidth=0.7,
            alpha=0.35,
            label=INTERVAL_LABEL,
            zorder=2,
        )

    for i, (task, color) in enumerate(zip(tasks, FINETUNED_COLORS)):
        value = _reference_value(reference, task, task, metric)
        if value is None:
            continue
        line = ax.axvline if i == 0 else ax.axhline
        line(value, color=color, linestyle="--", linewidth=1.3, label=f"fine-tuned {task}", zorder=1)

    pre = [_reference_value(reference, "pretrained", t, metric) for t in tasks]
    if None not in pre:
        ax.scatter(*pre, marker="X", s=70, color="black", label="pretrained", zorder=5)

    row = _selected_row(selected)
    if row is not None:
        predicted = _finite(row, cols)
        measured = _finite(row, [f"measured_{c}" for c in cols])
        if predicted is not None and measured is not None:
            ax.plot(
                [predicted[0], measured[0]], [predicted[1], measured[1]], color=SELECTED_COLOR, linewidth=0.8, zorder=5
            )
        bars = [_bounds(row, c) for c in cols]
        if predicted is not None and bars[0] is not None and bars[1] is not None:
            ax.errorbar(
                *predicted, xerr=bars[0], yerr=bars[1], fmt="none", ecolor=SELECTED_COLOR, elinewidth=1.0, zorder=5
            )
        if predicted is not None:
            ax.scatter(
                *predicted,
                marker="*",
                s=180,
                color=SELECTED_COLOR,
                edgecolors="black",
                linewidths=0.6,
                label="selected (predicted)",
                zorder=6,
            )
        if measured is not None:
            ax.scatter(
                *measured,
                marker="o",
                s=55,
                facecolors="white",
                edgecolors=SELECTED_COLOR,
                linewidths=1.8,
                label="selected (measured)",
                zorder=6,
            )

    if None not in pre:
        # Label the pretrained point on its side facing the middle of the (now final) axes.
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        right, top = (pre[0] - x0) / (x1 - x0) > 0.7, (pre[1] - y0) / (y1 - y0) > 0.85
        ax.annotate(
            "pretrained",
            pre,
            xytext=(-7 if right else 7, -7 if top else 7),
            textcoords="offset points",
            ha="right" if right else "left",
            va="top" if top else "bottom",
            fontsize=8,
        )
    ax.set_xlabel(f"{metric} on {x_task}")
    ax.set_ylabel(f"{metric} on {y_task}")
    ax.set_title(f"Pareto front of merges: {x_task} vs {y_task}")
    ax.grid(True, color="0.9", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    corner, tail = ((0.97, 0.97), (0.86, 0.86)) if maximize else ((0.03, 0.03), (0.14, 0.14))
    ax.annotate(
        "better",
        corner,
        xytext=tail,
        xycoords="axes fraction",
        textcoords="axes fraction",
        ha="center",
        va="center",
        fontsize=8,
        color="0.35",
        arrowprops={"arrowstyle": "->", "color": "0.35", "linewidth": 1.0},
    )
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return _save(fig, path)


def _parallel_axes(ax: Axes, tasks: Sequence[str], ylabel: str, title: str) -> None:
    """Draw vertical coordinate axes at 0..T-1 labelled by task, rotating long or many labels."""
    for i in range(len(tasks)):
        ax.axvline(i, color="0.75", linewidth=0.8, zorder=0)
    ax.set_xticks(range(len(tasks)))
    rotate = len(tasks) > 4 or max(len(t) for t in tasks) > 10
    ax.set_xticklabels(tasks, rotation=35 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.25, len(tasks) - 0.75)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)


def plot_front_parallel(
    front: pd.DataFrame,
    tasks: Sequence[str],
    metric: str,
    path: str | os.PathLike,
    selected: pd.DataFrame | None = None,
    members: Sequence[str] | None = None,
    measured: pd.DataFrame | None = None,
) -> Path:
    """Plot the front in parallel coordinates (coefficients left, metrics right) as PNG.

    One polyline per front point, coloured by its mean predicted metric; the measured front (`measured`: the real
    evaluations that no other one dominates) as dark dotted polylines over it; the selected point drawn bold on both
    panels. members: the coefficients' names (default: the tasks).
    """
    tasks = list(tasks)
    members = tasks if members is None else list(members)
    if not tasks:
        raise ValueError("plot_front_parallel needs at least one task")
    c_cols = [f"c_{m}" for m in members]
    m_cols = [f"{metric}_{t}" for t in tasks]
    _require_columns(front, c_cols + m_cols, "front")
    pf = front[c_cols + m_cols].dropna()
    if pf.empty:
        raise ValueError("front table has no complete rows")

    mean = pf[m_cols].mean(axis=1).to_numpy()
    lo, hi = float(mean.min()), float(mean.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5e-3, hi + 0.5e-3
    norm = Normalize(lo, hi)
    # Polylines are layered by mean metric, the highest on top.
    order = np.argsort(mean)

    fig = Figure(figsize=(max(10.0, 2.4 + 1.3 * len(tasks)), 4.6), layout="constrained")
    ax_c, ax_m = fig.subplots(1, 2)
    row = _selected_row(selected)
    real = _measured_values(measured, c_cols + m_cols)
    panel = (metric, f"{metric.capitalize()} per task, predicted and measured") if real is not None else None
    for ax, cols, labels, ylabel, title in (
        (ax_c, c_cols, members, "coefficient $c$", "Merge coefficients"),
        (ax_m, m_cols, tasks, *(panel or (f"predicted {metric}", f"Predicted {metric} per task"))),
    ):
        xs = np.arange(len(cols), dtype=float)
        values = pf[cols].to_numpy(dtype=float)[order]
        lines = LineCollection(
            [np.column_stack([xs, v]) for v in values], cmap=CMAP, norm=norm, linewidths=1.0, alpha=0.75, zorder=2
        )
        lines.set_array(mean[order])
        ax.add_collection(lines)
        ax.scatter(
            np.tile(xs, len(values)),
            values.ravel(),
            c=np.repeat(mean[order], len(xs)),
            cmap=CMAP,
            norm=norm,
            s=7,
            linewidths=0,
            zorder=3,
        )
        bars = [_bounds(front.loc[pf.index], c) for c in cols] if ax is ax_m else []
        if bars and all(b is not None for b in bars):
            # each point's interval as a thin line just right of its axis, placed by its value there: a band
            ranges, colours = [], []
            for k, (x, bar) in enumerate(zip(xs, bars)):
                rank = np.argsort(np.argsort(values[:, k], kind="stable"), kind="stable")
                offset = 0.04 + 0.14 * rank / max(len(values) - 1, 1)
                below, above = bar[:, order]
                ranges += [
                    np.array([[x + d, v - b], [x + d, v + a]]) for d, v, b, a in zip(offset, values[:, k], below, above)
                ]
                colours.append(mean[order])
            band = LineCollection(ranges, cmap=CMAP, norm=norm, linewidths=0.6, alpha=0.35, zorder=1)
            band.set_array(np.concatenate(colours))
            band.set_label(INTERVAL_LABEL)
            ax.add_collection(band)
        if real is not None:
            shown = real[:, [(c_cols + m_cols).index(c) for c in cols]]
            ax.add_collection(
                LineCollection(
                    [np.column_stack([xs, v]) for v in shown],
                    colors=MEASURED_COLOR,
                    linewidths=0.9,
                    linestyles=":",
                    alpha=0.8,
                    label=_measured_label(len(shown)),
                    zorder=3,
                )
            )
        ax.autoscale_view()
        _parallel_axes(ax, labels, ylabel, title)
        chosen = _finite(row, cols) if row is not None else None
        bars = [_bounds(row, c) for c in cols] if chosen is not None and ax is ax_m else []
        if bars and all(b is not None for b in bars):
            below, above = np.hstack(bars)
            ax.fill_between(
                xs, chosen - below, chosen + above, color=SELECTED_COLOR, alpha=0.15, linewidth=0, label=INTERVAL_LABEL
            )
        if chosen is not None:
            ax.plot(
                xs,
                chosen,
                "-o",
                color=SELECTED_COLOR,
                linewidth=2.8,
                markersize=5,
                markeredgecolor="black",
                markeredgewidth=0.6,
                label="selected (predicted)",
                zorder=4,
            )
        if ax is ax_m and row is not None:
            measured = _finite(row, [f"measured_{c}" for c in cols])
            if measured is not None:
                ax.plot(
                    xs,
                    measured,
                    "--s",
                    color="black",
                    linewidth=1.6,
                    markersize=4,
                    label="selected (measured)",
                    zorder=5,
                )

    legend: dict[str, Artist] = {}
    for ax in (ax_c, ax_m):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(
            legend.values(), legend.keys(), loc="outside lower center", ncols=len(legend), fontsize=9, frameon=False
        )
    bar = fig.colorbar(lines, ax=[ax_c, ax_m], pad=0.01, fraction=0.04)
    bar.set_label(f"mean predicted {metric}")
    measured_count = f"; measured: {_count(len(real), 'point')}" if real is not None else ""
    fig.suptitle(
        f"Pareto front in parallel coordinates: {_count(len(pf), 'point')}, {_count(len(tasks), 'task')}{measured_count}"
    )
    return _save(fig, path)


def plot_all(
    samples: pd.DataFrame,
    front: pd.DataFrame,
    reference: pd.DataFrame | None,
    tasks: Sequence[str],
    metric: str,
    out_dir: str | os.PathLike,
    selected: pd.DataFrame | None = None,
    maximize: bool = True,
    members: Sequence[str] | None = None,
    measured: pd.DataFrame | None = None,
) -> list[Path]:
    """Write front_parallel.png, and front_2d.png when there are exactly 2 tasks; return the paths.

    members: the coefficients' names, when they are not the tasks (nested MAP's upper levels). measured: the
    measured front (measured.parquet's rows of the group), drawn with the predicted one.
    """
    out_dir = Path(out_dir)
    parallel = out_dir / "front_parallel.png"
    paths = [plot_front_parallel(front, tasks, metric, parallel, selected=selected, members=members, measured=measured)]
    if len(tasks) == 2:
        paths.append(
            plot_front_2d(
                samples,
                front,
                reference,
                tasks,
                metric,
                out_dir / "front_2d.png",
                selected=selected,
                maximize=maximize,
                measured=measured,
            )
        )
    return paths


GRID_COLOR = "0.55"
TRUTH_COLOR = "black"
BASELINE_MARKERS = ("D", "P", "v", "^", "s", "h")
TASK_COLORS = (*FINETUNED_COLORS, "#9467bd", "#8c564b", "#e377c2", "#17becf")


def plot_validation(
    grid: pd.DataFrame,
    predicted: pd.DataFrame,
    points: pd.DataFrame,
    baselines: pd.DataFrame | None,
    reference: pd.DataFrame | None,
    tasks: Sequence[str],
    metric: str,
    path: str | os.PathLike,
    maximize: bool = True,
) -> Path:
    """Plot a front against ground truth in metric space: one panel per pair of tasks; save it as PNG.

    grid: the grid's real `<metric>_<task>` per point (its non-dominated points are drawn as the true
    front); predicted: MAP's predicted front; points: the K re-evaluated points, predicted
    `<metric>_<task>` and real `measured_<metric>_<task>`; baselines: one row per baseline, indexed
    by its name; reference: reference.parquet, for each fine-tuned model's own-task line.
    """
    from mapmerge.core.pareto import non_dominated  # deferred: pymoo

    tasks = list(tasks)
    cols = [f"{metric}_{t}" for t in tasks]
    _require_columns(grid, cols, "grid")
    _require_columns(predicted, cols, "front")
    _require_columns(points, cols + [f"measured_{c}" for c in cols], "front points")
    truth = grid.iloc[non_dominated(grid[cols].to_numpy(dtype=float), [maximize] * len(tasks))]
    pairs = list(zip(*np.triu_indices(len(tasks), 1)))
    fig = Figure(figsize=(2.0 + 4.6 * len(pairs), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    line = len(tasks) == 2  # with more tasks a projected front is a cloud, not a curve
    for ax, (i, j) in zip(axes, pairs):
        x, y = cols[i], cols[j]
        ax.scatter(
            grid[x],
            grid[y],
            s=9,
            color=GRID_COLOR,
            alpha=0.5,
            linewidths=0,
            label=f"grid, real ({len(grid)})",
            zorder=2,
        )
        ax.plot(
            truth.sort_values(x)[x],
            truth.sort_values(x)[y],
            "-o" if line else "o",
            color=TRUTH_COLOR,
            markersize=3,
            linewidth=1.6,
            label="grid non-dominated (ground truth)",
            zorder=3,
        )
        ax.plot(
            predicted.sort_values(x)[x],
            predicted.sort_values(x)[y],
            "-" if line else "o",
            color=FRONT_COLOR,
            markersize=2.5,
            linewidth=1.6,
            label="MAP, predicted",
            zorder=3,
        )
        for _, row in points.iterrows():
            ax.plot(
                [row[x], row[f"measured_{x}"]],
                [row[y], row[f"measured_{y}"]],
                color=SELECTED_COLOR,
                linewidth=0.7,
                zorder=4,
            )
        xerr, yerr = _bounds(points, x), _bounds(points, y)
        if xerr is not None and yerr is not None:  # does the interval hold the real value?
            ax.errorbar(
                points[x],
                points[y],
                xerr=xerr,
                yerr=yerr,
                fmt="none",
                ecolor=FRONT_COLOR,
                elinewidth=0.8,
                alpha=0.5,
                label=f"MAP, predicted: {INTERVAL_LABEL}",
                zorder=4,
            )
        ax.scatter(
            points[f"measured_{x}"],
            points[f"measured_{y}"],
            marker="o",
            s=40,
            color=SELECTED_COLOR,
            edgecolors="black",
            linewidths=0.5,
            label=f"MAP, real ({len(points)})",
            zorder=5,
        )
        for k, axline in ((i, ax.axvline), (j, ax.axhline)):
            value = _reference_value(reference, tasks[k], tasks[k], metric)
            if value is not None:
                axline(
                    value,
                    color=TASK_COLORS[k % len(TASK_COLORS)],
                    linestyle="--",
                    linewidth=1.2,
                    label=f"fine-tuned {tasks[k]}",
                    zorder=1,
                )
        for n, (name, row) in enumerate((baselines if baselines is not None else pd.DataFrame()).iterrows()):
            ax.scatter(
                row[x],
                row[y],
                marker=BASELINE_MARKERS[n % len(BASELINE_MARKERS)],
                s=55,
                color="white",
                edgecolors="black",
                linewidths=1.0,
                label=f"baseline: {name}",
                zorder=6,
            )
            left, below = n % 2 == 1, n % 4 >= 2  # baselines often lie close together: labels take turns
            ax.annotate(
                str(name),
                (row[x], row[y]),
                xytext=(-6 if left else 6, -4 if below else 4),
                textcoords="offset points",
                ha="right" if left else "left",
                va="top" if below else "bottom",
                fontsize=7,
            )
        ax.set_xlabel(f"{metric} on {tasks[i]}")
        ax.set_ylabel(f"{metric} on {tasks[j]}")
        ax.grid(True, color="0.9", linewidth=0.6, zorder=0)
        ax.set_axisbelow(True)
    legend: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="outside right center", fontsize=8, frameon=False)
    better = "higher" if maximize else "lower"
    fig.suptitle(f"MAP's front against a real grid of {_count(len(grid), 'merge')} ({better} {metric} is better)")
    return _save(fig, path)
