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
    every evaluation batch)."""
    coefficients = pd.concat([read_table(p) for p in rounds], ignore_index=True)
    examples = pd.concat([read_table(p) for p in evals], ignore_index=True)
    return coefficients, examples, metrics_from_examples(examples)


def run_ledger(params: Mapping[str, Any], *, evals: Mapping[str, PathLike], ledger: PathLike) -> None:
    """The evaluation ledger (evaluations.parquet): per evaluation file, its stage, group, models evaluated,
    (model, task) evaluations, examples.

    evals: label -> path, the label 'group/file' (a bare file name for the reference models).
    params: only the code fingerprint (the table records no config).
    """
    rows = []
    for label, path in evals.items():
        group, _, name = str(label).rpartition("/")
        stage = table_metadata(path).get("mapmerge.stage", "")
        rows.append({"stage": stage, "group": group or None, "file": name, **evaluation_counts(read_table(path))})
    write_table(pd.DataFrame(rows), ledger, "ledger", inputs=evals.values())
