"""Stages collect_metrics (a group's samples and metrics) and ledger (the evaluation ledger)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mapmerge.core.metrics import evaluation_counts, metrics_from_examples
from mapmerge.io import read_table, table_metadata, write_table

PathLike = str | os.PathLike


def run_collect_metrics(
    params: Mapping[str, Any],
    *,
    rounds: Sequence[PathLike],
    evals: Sequence[PathLike],
    metrics: PathLike,
    samples: PathLike,
) -> None:
    """A group's evaluated samples (every round's coefficients) and their per-task metrics (sample, task, metric, value).

    params: only the code fingerprint (the tables record no config).
    """
    coefficients, _, measured = evaluated(rounds, evals)
    write_table(measured, metrics, "collect_metrics", inputs=evals)
    write_table(coefficients, samples, "collect_metrics", inputs=rounds)


def evaluated(rounds: Sequence[PathLike], evals: Sequence[PathLike]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A group's samples so far (every round's table, in order), their per-example rows and their metrics (from
    every evaluation batch, each task's evaluations over the same number of examples: check_examples)."""
    coefficients = pd.concat([read_table(p) for p in rounds], ignore_index=True)
    tables = {p: read_table(p) for p in evals}
    check_examples(pd.concat([example_counts(t, p) for p, t in tables.items()], ignore_index=True))
    examples = pd.concat(tables.values(), ignore_index=True)
    return coefficients, examples, metrics_from_examples(examples)


def example_counts(examples: pd.DataFrame, path: PathLike) -> pd.DataFrame:
    """(model, task, examples, file): the rows of each (model, task) evaluation of a per-example table that did not
    fail (evaluation.on_error=record keeps one row for a failed one)."""
    key = "model" if "model" in examples.columns else "sample"
    ok = examples["error"].isna() if "error" in examples.columns else pd.Series(True, index=examples.index)
    counts = examples[ok].groupby([key, "task"], sort=False).size().rename("examples").reset_index()
    return counts.rename(columns={key: "model"}).assign(file=str(path))


def check_examples(counts: pd.DataFrame) -> None:
    """ValueError naming the task, the model and its file where a task's evaluations (example_counts) hold other
    numbers of examples: an evaluator returns one row per example, the same for every model (an accuracy over 499
    examples beside the others' over 500 was taken without a word)."""
    for task, rows in counts.groupby("task", sort=True):
        freq = rows["examples"].value_counts()
        usual = max(freq.index, key=lambda n: (freq[n], n))  # the most common; of two as common, the larger
        odd = rows[rows["examples"] != usual]
        if len(odd):
            first = odd.iloc[0]
            raise ValueError(
                f"task {task}: the evaluator returned {first['examples']} rows for {first['model']} ({first['file']}) "
                f"and {usual} for each of {len(rows) - len(odd)} other evaluations; it must return one row per example, "
                "the same examples for every model"
            )


def run_ledger(params: Mapping[str, Any], *, evals: Mapping[str, PathLike], ledger: PathLike) -> None:
    """The evaluation ledger (evaluations.parquet): per evaluation file, its stage, group, models evaluated,
    (model, task) evaluations, examples.

    evals: label -> path, the label 'group/file' (a bare file name for the reference models).
    params: only the code fingerprint (the table records no config).
    """
    rows, counts = [], []
    for label, path in evals.items():
        group, _, name = str(label).rpartition("/")
        stage = table_metadata(path).get("mapmerge.stage", "")
        examples = read_table(path)
        rows.append({"stage": stage, "group": group or None, "file": name, **evaluation_counts(examples)})
        counts.append(example_counts(examples, path))
    check_examples(pd.concat(counts, ignore_index=True))  # the reference models' too, beside every group's
    write_table(pd.DataFrame(rows), ledger, "ledger", inputs=evals.values())
