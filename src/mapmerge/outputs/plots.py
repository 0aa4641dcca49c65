"""Figures of a Pareto front: the 2-task picture in metric space and parallel coordinates for any T.

Each shows the predicted front with its intervals, the measured front (the real evaluations no other one
dominates) and the chosen merge, predicted and measured; mapmerge.outputs.figure renders them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mapmerge.outputs.figure import (
    FINETUNED_COLORS,
    FRONT_COLOR,
    INTERVAL_LABEL,
    SELECTED_COLOR,
    bounds,
    count,
    legend_entries,
    reference_value,
    require_columns,
    save,
)

CMAP = "viridis"
MEASURED_COLOR = "0.15"  # the measured front: real evaluations that no other one dominates
MAX_ERROR_BARS = 25  # front points drawn with their intervals in the 2-task plot (spread along it)


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


def _measured_values(measured: pd.DataFrame | None, columns: Sequence[str]) -> np.ndarray | None:
    """The measured front's complete rows in `columns`, sorted by them, or None where there is none to draw."""
    if measured is None or measured.empty:
        return None
    require_columns(measured, columns, "measured front")
    values = measured[list(columns)].dropna().sort_values(list(columns)).to_numpy(dtype=float)
    return values if len(values) else None


def _measured_label(n: int) -> str:
    return f"measured Pareto front ({count(n, 'evaluated merge')})"


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
    objective: str | None = None,
    interval: float | None = None,
) -> Path:
    """Plot a two-task front in metric space (x: `tasks[0]`, y: `tasks[1]`) and save it as PNG.

    Shows the evaluated samples, the predicted front, the measured front (`measured`: the real evaluations that no
    other one dominates), the fine-tuned models as dashed lines, the pretrained model and the selected point
    (predicted, and measured when present).
    `maximize` says whether larger metric values are better (marked by an arrow in that corner). `objective`: the
    metric the fronts were found by, named in the title where it is not `metric`. `interval`: the level of the
    front's prediction intervals (surrogate.interval), named in the legend where given.
    """
    tasks = list(tasks)
    if len(tasks) != 2:
        raise ValueError(f"plot_front_2d needs exactly 2 tasks, got {len(tasks)}: {tasks}")
    cols = [f"{metric}_{t}" for t in tasks]
    require_columns(front, cols, "front")
    pf = front[cols].dropna().sort_values(cols)
    if pf.empty:
        raise ValueError("front table has no complete rows")
    if reference is not None:
        require_columns(reference, ["model", "task", "metric", "value"], "reference")

    fig = Figure(figsize=(7.6, 5.0), layout="constrained")
    ax = fig.add_subplot()
    if samples is not None and not samples.empty:
        require_columns(samples, cols, "samples")
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
    _draw_front_2d(ax, front, pf, cols, _measured_values(measured, cols))
    for i, (task, color) in enumerate(zip(tasks, FINETUNED_COLORS)):
        value = reference_value(reference, task, task, metric)
        if value is not None:
            line = ax.axvline if i == 0 else ax.axhline
            line(value, color=color, linestyle="--", linewidth=1.3, label=f"fine-tuned {task}", zorder=1)
    pre = [reference_value(reference, "pretrained", t, metric) for t in tasks]
    if None not in pre:
        ax.scatter(*pre, marker="X", s=70, color="black", label="pretrained", zorder=5)
    row = _selected_row(selected)
    if row is not None:
        _draw_selected_2d(ax, row, cols)
    if None not in pre:
        _label_pretrained(ax, pre)
    _finish_2d(ax, tasks, metric, maximize, objective)
    _name_level([ax], interval)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return save(fig, path)


def _draw_front_2d(
    ax: Axes, front: pd.DataFrame, pf: pd.DataFrame, cols: Sequence[str], real: np.ndarray | None
) -> None:
    """The predicted front `pf` (sorted), the measured front `real`, and the intervals of up to MAX_ERROR_BARS points
    spread along the predicted one."""
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
    xerr, yerr = bounds(shown, cols[0]), bounds(shown, cols[1])
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


def _draw_selected_2d(ax: Axes, row: pd.Series, cols: Sequence[str]) -> None:
    """The selected point: predicted (a star, with its interval) and measured (a ring), joined by a line."""
    predicted = _finite(row, cols)
    measured = _finite(row, [f"measured_{c}" for c in cols])
    if predicted is not None and measured is not None:
        ax.plot([predicted[0], measured[0]], [predicted[1], measured[1]], color=SELECTED_COLOR, linewidth=0.8, zorder=5)
    bars = [bounds(row, c) for c in cols]
    if predicted is not None and bars[0] is not None and bars[1] is not None:
        ax.errorbar(*predicted, xerr=bars[0], yerr=bars[1], fmt="none", ecolor=SELECTED_COLOR, elinewidth=1.0, zorder=5)
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


def _label_pretrained(ax: Axes, pre: Sequence[float]) -> None:
    """Label the pretrained point on its side facing the middle of the (now final) axes."""
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


def _drawn_in(metric: str, objective: str | None) -> str:
    """The title's note where the fronts (non-dominated by `objective`) are drawn in another metric; else ''."""
    return f" (fronts by {objective}, drawn in {metric})" if objective and objective != metric else ""


def _finish_2d(ax: Axes, tasks: Sequence[str], metric: str, maximize: bool, objective: str | None) -> None:
    """Axis labels, title, grid, and an arrow to the better corner."""
    x_task, y_task = tasks
    ax.set_xlabel(f"{metric} on {x_task}")
    ax.set_ylabel(f"{metric} on {y_task}")
    note = _drawn_in(metric, objective).strip()  # on a line of its own: one line ran into the legend beside the axes
    ax.set_title(f"Pareto front of merges: {x_task} vs {y_task}" + (f"\n{note}" if note else ""))
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
    objective: str | None = None,
    interval: float | None = None,
) -> Path:
    """Plot the front in parallel coordinates (coefficients left, metrics right) as PNG.

    One polyline per front point, coloured by its mean predicted metric; the measured front (`measured`: the real
    evaluations that no other one dominates) as dark dotted polylines over it; the selected point drawn bold on both
    panels. members: the coefficients' names (default: the tasks). objective, interval: as for plot_front_2d.
    """
    tasks = list(tasks)
    members = tasks if members is None else list(members)
    if not tasks:
        raise ValueError("plot_front_parallel needs at least one task")
    c_cols = [f"c_{m}" for m in members]
    m_cols = [f"{metric}_{t}" for t in tasks]
    require_columns(front, c_cols + m_cols, "front")
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
        lines = _draw_polylines(ax, xs, values, mean[order], norm)
        bars = [bounds(front.loc[pf.index], c) for c in cols] if ax is ax_m else []
        if bars and all(b is not None for b in bars):
            _draw_interval_bands(ax, xs, values, [bar[:, order] for bar in bars], mean[order], norm)
        if real is not None:
            _draw_measured_polylines(ax, xs, real[:, [(c_cols + m_cols).index(c) for c in cols]])
        ax.autoscale_view()
        _parallel_axes(ax, labels, ylabel, title)
        if row is not None:
            _draw_selected_polyline(ax, xs, row, cols, metrics=ax is ax_m)

    _name_level([ax_c, ax_m], interval)
    legend = legend_entries((ax_c, ax_m))
    if legend:
        fig.legend(
            legend.values(), legend.keys(), loc="outside lower center", ncols=len(legend), fontsize=9, frameon=False
        )
    bar = fig.colorbar(lines, ax=[ax_c, ax_m], pad=0.01, fraction=0.04)
    bar.set_label(f"mean predicted {metric}")
    measured_count = f"; measured: {count(len(real), 'point')}" if real is not None else ""
    fig.suptitle(
        f"Pareto front in parallel coordinates: {count(len(pf), 'point')}, {count(len(tasks), 'task')}{measured_count}"
        + _drawn_in(metric, objective)
    )
    return save(fig, path)


def _name_level(axes: Sequence[Axes], interval: float | None) -> None:
    """Name the intervals' level in their legend entry (`90% prediction interval (surrogate.interval)`), where known."""
    if interval is None:
        return
    for ax in axes:
        for artist in [*ax.get_children(), *ax.containers]:
            if artist.get_label() == INTERVAL_LABEL:
                artist.set_label(f"{interval:.0%} {INTERVAL_LABEL}")


def _draw_polylines(
    ax: Axes, xs: np.ndarray, values: np.ndarray, colour: np.ndarray, norm: Normalize
) -> LineCollection:
    """One polyline with its points per row of `values`, coloured by `colour` (the mean predicted metric)."""
    lines = LineCollection(
        [np.column_stack([xs, v]) for v in values], cmap=CMAP, norm=norm, linewidths=1.0, alpha=0.75, zorder=2
    )
    lines.set_array(colour)
    ax.add_collection(lines)
    ax.scatter(
        np.tile(xs, len(values)),
        values.ravel(),
        c=np.repeat(colour, len(xs)),
        cmap=CMAP,
        norm=norm,
        s=7,
        linewidths=0,
        zorder=3,
    )
    return lines


def _draw_interval_bands(
    ax: Axes, xs: np.ndarray, values: np.ndarray, bars: Sequence[np.ndarray], colour: np.ndarray, norm: Normalize
) -> None:
    """Each point's interval (`bars`: below, above per axis) as a thin line just right of its axis, placed by its
    value there: a band per axis."""
    ranges, colours = [], []
    for k, (x, bar) in enumerate(zip(xs, bars)):
        rank = np.argsort(np.argsort(values[:, k], kind="stable"), kind="stable")
        offset = 0.04 + 0.14 * rank / max(len(values) - 1, 1)
        below, above = bar
        ranges += [np.array([[x + d, v - b], [x + d, v + a]]) for d, v, b, a in zip(offset, values[:, k], below, above)]
        colours.append(colour)
    band = LineCollection(ranges, cmap=CMAP, norm=norm, linewidths=0.6, alpha=0.35, zorder=1)
    band.set_array(np.concatenate(colours))
    band.set_label(INTERVAL_LABEL)
    ax.add_collection(band)


def _draw_measured_polylines(ax: Axes, xs: np.ndarray, values: np.ndarray) -> None:
    """The measured front, one dark dotted polyline per point."""
    ax.add_collection(
        LineCollection(
            [np.column_stack([xs, v]) for v in values],
            colors=MEASURED_COLOR,
            linewidths=0.9,
            linestyles=":",
            alpha=0.8,
            label=_measured_label(len(values)),
            zorder=3,
        )
    )


def _draw_selected_polyline(ax: Axes, xs: np.ndarray, row: pd.Series, cols: Sequence[str], metrics: bool) -> None:
    """The selected point, bold; on the metrics panel with its interval and its measured values."""
    chosen = _finite(row, cols)
    bars = [bounds(row, c) for c in cols] if chosen is not None and metrics else []
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
    measured = _finite(row, [f"measured_{c}" for c in cols]) if metrics else None
    if measured is not None:
        ax.plot(xs, measured, "--s", color="black", linewidth=1.6, markersize=4, label="selected (measured)", zorder=5)


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
    objective: str | None = None,
    interval: float | None = None,
) -> list[Path]:
    """Write front_parallel.png, and front_2d.png when there are exactly 2 tasks; return the paths.

    members: the coefficients' names, when they are not the tasks (nested MAP's upper levels). measured: the
    measured front (measured.parquet's rows of the group), drawn with the predicted one. objective: the metric the
    fronts were found by, where the plots draw them in another (`mapmerge plot --metric`): the titles say so.
    interval: the level of the front's prediction intervals (surrogate.interval), named in the legends.
    """
    out_dir = Path(out_dir)
    parallel = out_dir / "front_parallel.png"
    paths = [
        plot_front_parallel(
            front,
            tasks,
            metric,
            parallel,
            selected=selected,
            members=members,
            measured=measured,
            objective=objective,
            interval=interval,
        )
    ]
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
                objective=objective,
                interval=interval,
            )
        )
    return paths
