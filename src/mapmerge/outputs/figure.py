"""What mapmerge's figures share: colours, the checks of their tables, interval bars, one legend and the PNG writer.

Rendering uses Matplotlib's Agg canvas directly (no pyplot, no display). PNGs carry no
software or date metadata, so the same tables give byte-identical files, and each file is
written atomically (temporary file beside it, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mapmerge.io import atomic_path

DPI = 150
SELECTED_COLOR = "#d62728"
FRONT_COLOR = "#1f77b4"
FINETUNED_COLORS = ("#ff7f0e", "#2ca02c")
INTERVAL_LABEL = "prediction interval (surrogate.interval)"


def require_columns(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    """Raise ValueError naming the table and the columns it lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} table lacks column(s) {', '.join(missing)}")


def reference_value(reference: pd.DataFrame | None, model: str, task: str, metric: str) -> float | None:
    """Value of `metric` for `model` evaluated on `task`, or None when the table has no such row."""
    if reference is None or reference.empty:
        return None
    rows = reference[(reference["model"] == model) & (reference["task"] == task) & (reference["metric"] == metric)]
    values = rows["value"].dropna()
    return float(values.iloc[0]) if len(values) else None


def bounds(frame: pd.DataFrame | pd.Series, column: str) -> np.ndarray | None:
    """The prediction interval of `column` as error-bar lengths [2, n] (below, above; 0 where a bound is not
    finite), or None when `frame` lacks `<column>_lo` / `_hi` (fronts written before intervals)."""
    names = [f"{column}_lo", f"{column}_hi"]
    index = frame.index if isinstance(frame, pd.Series) else frame.columns
    if not all(n in index for n in names):
        return None
    value = np.atleast_1d(np.asarray(frame[column], dtype=float))
    low, high = (np.atleast_1d(np.asarray(frame[n], dtype=float)) for n in names)
    return np.nan_to_num(np.vstack([value - low, high - value]), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)


def count(n: int, noun: str) -> str:
    """'1 point', '2 points'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def legend_entries(axes: Iterable[Axes]) -> dict[str, Artist]:
    """One handle per label over the axes, in the order first drawn: a figure's shared legend."""
    legend: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    return legend


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Render `fig` to a PNG at `path` atomically, without time- or version-dependent metadata."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.1)
    return Path(path)
