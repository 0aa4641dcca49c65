"""The validation figure: MAP's front against a real grid's, one panel per pair of tasks (plots/validation.png)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mapmerge.outputs import figure

GRID_COLOR = "0.55"
TRUTH_COLOR = "black"
BASELINE_MARKERS = ("D", "P", "v", "^", "s", "h")
TASK_COLORS = (*figure.FINETUNED_COLORS, "#9467bd", "#8c564b", "#e377c2", "#17becf")


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
    figure.require_columns(grid, cols, "grid")
    figure.require_columns(predicted, cols, "front")
    figure.require_columns(points, cols + [f"measured_{c}" for c in cols], "front points")
    truth = grid.iloc[non_dominated(grid[cols].to_numpy(dtype=float), [maximize] * len(tasks))]
    pairs = list(zip(*np.triu_indices(len(tasks), 1)))
    fig = Figure(figsize=(2.0 + 4.6 * len(pairs), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    line = len(tasks) == 2  # with more tasks a projected front is a cloud, not a curve
    for ax, (i, j) in zip(axes, pairs):
        x, y = cols[i], cols[j]
        _draw_fronts(ax, grid, truth, predicted, x, y, line)
        _draw_front_points(ax, points, x, y)
        for k, axline in ((i, ax.axvline), (j, ax.axhline)):
            value = figure.reference_value(reference, tasks[k], tasks[k], metric)
            if value is not None:
                axline(
                    value,
                    color=TASK_COLORS[k % len(TASK_COLORS)],
                    linestyle="--",
                    linewidth=1.2,
                    label=f"fine-tuned {tasks[k]}",
                    zorder=1,
                )
        _draw_baselines(ax, baselines if baselines is not None else pd.DataFrame(), x, y)
        ax.set_xlabel(f"{metric} on {tasks[i]}")
        ax.set_ylabel(f"{metric} on {tasks[j]}")
        ax.grid(True, color="0.9", linewidth=0.6, zorder=0)
        ax.set_axisbelow(True)
    legend = figure.legend_entries(axes)
    fig.legend(legend.values(), legend.keys(), loc="outside right center", fontsize=8, frameon=False)
    better = "higher" if maximize else "lower"
    fig.suptitle(f"MAP's front against a real grid of {figure.count(len(grid), 'merge')} ({better} {metric} is better)")
    return figure.save(fig, path)


def _draw_fronts(
    ax: Axes, grid: pd.DataFrame, truth: pd.DataFrame, predicted: pd.DataFrame, x: str, y: str, line: bool
) -> None:
    """The grid's points, its non-dominated ones (the true front) and MAP's predicted front, in (x, y)."""
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
    for front, style, colour, size, label in (
        (truth, "-o" if line else "o", TRUTH_COLOR, 3, "grid non-dominated (ground truth)"),
        (predicted, "-" if line else "o", figure.FRONT_COLOR, 2.5, "MAP, predicted"),
    ):
        ordered = front.sort_values(x)
        ax.plot(ordered[x], ordered[y], style, color=colour, markersize=size, linewidth=1.6, label=label, zorder=3)


def _draw_front_points(ax: Axes, points: pd.DataFrame, x: str, y: str) -> None:
    """MAP's re-evaluated front points: each prediction joined to its real value, its interval, the real value."""
    for _, row in points.iterrows():
        ax.plot(
            [row[x], row[f"measured_{x}"]],
            [row[y], row[f"measured_{y}"]],
            color=figure.SELECTED_COLOR,
            linewidth=0.7,
            zorder=4,
        )
    xerr, yerr = figure.bounds(points, x), figure.bounds(points, y)
    if xerr is not None and yerr is not None:  # does the interval hold the real value?
        ax.errorbar(
            points[x],
            points[y],
            xerr=xerr,
            yerr=yerr,
            fmt="none",
            ecolor=figure.FRONT_COLOR,
            elinewidth=0.8,
            alpha=0.5,
            label=f"MAP, predicted: {figure.INTERVAL_LABEL}",
            zorder=4,
        )
    ax.scatter(
        points[f"measured_{x}"],
        points[f"measured_{y}"],
        marker="o",
        s=40,
        color=figure.SELECTED_COLOR,
        edgecolors="black",
        linewidths=0.5,
        label=f"MAP, real ({len(points)})",
        zorder=5,
    )


def _draw_baselines(ax: Axes, baselines: pd.DataFrame, x: str, y: str) -> None:
    """Each baseline (a row, indexed by its name) as a marker of its own, labelled beside it."""
    for n, (name, row) in enumerate(baselines.iterrows()):
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
