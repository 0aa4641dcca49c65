"""A plain-text (Markdown) report of a finished run: what was evaluated, how good the fit is, what was chosen."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mapmerge.io import atomic_path, read_table
from mapmerge.metrics import suffixes, wide_metrics


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a Markdown table, floats rounded."""
    def cell(value: object) -> str:
        if isinstance(value, (list, tuple, np.ndarray)):
            return ", ".join(cell(v) for v in value)
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_report(results: str | os.PathLike, group_names: Sequence[str], out: str | os.PathLike) -> Path:
    """Write report.md for a run's results folder."""
    results = Path(results)
    reference = read_table(results / "reference.parquet")
    selected = read_table(results / "selected.parquet")
    sections = [f"# mapmerge report: {results.name}", ""]
    tasks = [m for m in reference["model"].unique() if m != "pretrained"]
    ref = wide_metrics(reference, "model")
    ref = ref.reindex(index=["pretrained", *tasks], columns=[f"{m}_{t}" for m in sorted(set(reference["metric"])) for t in tasks])
    sections += ["## Single models (real evaluations)", "", markdown_table(ref.reset_index()), ""]
    for group in group_names:
        gdir = results / "groups" / group
        samples = read_table(gdir / "samples.parquet")
        fit = read_table(gdir / "surrogate.parquet").drop(columns=["params", "tasks"])
        front = read_table(gdir / "front.parquet")
        members = suffixes(samples.columns, "c")
        sections += [
            f"## Group {group}: {', '.join(members)}",
            "",
            f"- {len(samples)} sampled merges evaluated; front of {len(front)} points: {gdir / 'front.parquet'}",
            f"- merged checkpoint: {gdir / 'merged.safetensors'}",
            "",
            "Surrogate fit per task and metric:",
            "",
            markdown_table(fit),
            "",
        ]
    tree = read_table(results / "groups.parquet")
    if len(tree) > 1:
        columns = ["level", "group", "members", "member_score", "coefficients", *[c for c in tree.columns if c.startswith("measured_")]]
        sections += ["## Nested merge tree (groups.parquet)", "", markdown_table(tree[columns]), ""]
    ledger = read_table(results / "evaluations.parquet")
    cost = ledger.groupby("stage", sort=False)[["models", "task_evaluations"]].sum().reset_index()
    sections += ["## Real evaluations (evaluations.parquet)", "", markdown_table(cost), ""]
    sections += [
        f"## Chosen merge of group {selected['group'].iloc[-1]} (predicted and measured)",
        "",
        markdown_table(selected.iloc[-1].dropna().rename("value").rename_axis("column").reset_index()),
        "",
        f"Real model evaluations in all: {int(ledger['models'].sum())} models, {int(ledger['task_evaluations'].sum())} (model, task) evaluations.",
        f"Plots: {results / 'plots'}",
        "",
    ]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(sections))
    return Path(out)
