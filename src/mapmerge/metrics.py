"""Per-task metrics from per-example rows, so any metric can be recomputed without a model."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def metrics_from_examples(examples: pd.DataFrame) -> pd.DataFrame:
    """Long table (sample, task, metric, value): accuracy = mean correct, loss = mean loss."""
    grouped = examples.groupby(["sample", "task"], sort=True)
    frames = []
    for metric, column in (("accuracy", "correct"), ("loss", "loss")):
        values = grouped[column].mean().dropna()
        if len(values):
            frame = values.rename("value").reset_index()
            frame.insert(2, "metric", metric)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True).sort_values(["sample", "task", "metric"], ignore_index=True)


def suffixes(columns: Iterable[str], prefix: str) -> list[str]:
    """Names after `prefix_` in column names, in column order: suffixes(front, 'c') -> the tasks."""
    return [c[len(prefix) + 1 :] for c in columns if c.startswith(f"{prefix}_")]


def wide_metrics(long: pd.DataFrame, index: str) -> pd.DataFrame:
    """A long (index, task, metric, value) table as one row per `index` with `<metric>_<task>` columns."""
    wide = long.pivot_table(index=index, columns=["metric", "task"], values="value")
    wide.columns = [f"{m}_{t}" for m, t in wide.columns]
    return wide
