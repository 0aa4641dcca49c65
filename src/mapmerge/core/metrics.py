"""Per-task metrics from per-example rows, so any metric can be recomputed without a model."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pandas as pd

from mapmerge.io import read_table

METRICS = {"accuracy": "correct", "loss": "loss"}  # metric -> per-example column it averages


def metrics_from_examples(examples: pd.DataFrame) -> pd.DataFrame:
    """Long table (sample, task, metric, value, error): accuracy = mean correct, loss = mean loss.

    A metric the evaluator does not report is left out; a failed (sample, task) (a non-empty
    `error`, see evaluation.on_error) keeps one row per reported metric, with NaN value and its error.
    """
    keys = ["sample", "task"]
    errors = examples.get("error", pd.Series(None, index=examples.index, dtype="str"))
    failed = examples.assign(error=errors).dropna(subset=["error"]).groupby(keys, sort=True)["error"].first()
    grouped = examples.groupby(keys, sort=True)
    reported = [m for m, column in METRICS.items() if examples[column].notna().any()] or list(METRICS)
    frames = []
    for metric in reported:
        values = grouped[METRICS[metric]].mean()
        values = values[values.notna() | values.index.isin(failed.index)]
        frame = values.rename("value").reset_index()
        frame.insert(2, "metric", metric)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table["error"] = pd.Series(failed.reindex(pd.MultiIndex.from_frame(table[keys])).to_numpy(), dtype="str")
    return table.sort_values(["sample", "task", "metric"], ignore_index=True)


def evaluation_counts(examples: pd.DataFrame) -> dict[str, int]:
    """What one per-example table holds: models evaluated, (model, task) evaluations, examples, failed (model, task).

    The model column is `model` (reference evaluations) or `sample`; without an `error` column nothing failed.
    """
    key = "model" if "model" in examples.columns else "sample"
    failed = examples["error"].notna() if "error" in examples.columns else pd.Series(False, index=examples.index)
    return {
        "models": int(examples[key].nunique()),
        "task_evaluations": int(examples[[key, "task"]].drop_duplicates().shape[0]),
        "examples": int((~failed).sum()),
        "failed": int(examples.loc[failed, [key, "task"]].drop_duplicates().shape[0]),
    }


def suffixes(columns: Iterable[str], prefix: str) -> list[str]:
    """Names after `prefix_` in column names, in column order: suffixes(front, 'c') -> the tasks.

    A prediction interval's bound (`<metric>_<task>_lo`, `_hi` beside `<metric>_<task>`) is not a name of its own.
    """
    columns = list(columns)
    present = set(columns)
    bounds = {f"{c}{end}" for c in columns for end in ("_lo", "_hi")} & present
    return [c[len(prefix) + 1 :] for c in columns if c.startswith(f"{prefix}_") and c not in bounds]


def wide_metrics(long: pd.DataFrame, index: str) -> pd.DataFrame:
    """A long (index, task, metric, value) table as one row per `index` with `<metric>_<task>` columns."""
    wide = long.pivot_table(index=index, columns=["metric", "task"], values="value")
    wide.columns = [f"{m}_{t}" for m, t in wide.columns]
    return wide


def sample_metrics(samples: pd.DataFrame, metrics: pd.DataFrame, complete: bool = True) -> pd.DataFrame:
    """Every evaluated sample's row (sample, kind, round, c_<member>) with its real `<metric>_<task>` values; samples
    without every value (a recorded failure) are left out, or with complete=False kept with NaN there."""
    wide = wide_metrics(metrics, "sample")
    return samples.merge((wide.dropna() if complete else wide).reset_index(), on="sample")


def maximized(metric: str) -> bool:
    """Accuracy is maximised, loss minimised."""
    return metric != "loss"


def measured_metrics(selected_evals: str | os.PathLike) -> pd.Series:
    """A chosen merge's real metrics, indexed (metric, task), from its per-example evaluations."""
    return metrics_from_examples(read_table(selected_evals)).set_index(["metric", "task"])["value"]
