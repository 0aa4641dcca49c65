"""Per-task metrics from per-example rows, so any metric can be recomputed without a model."""

from __future__ import annotations

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
