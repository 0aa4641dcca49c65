"""A plain-text (Markdown) report of a finished run: what was evaluated, how good the fit is, what was chosen."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mapmerge.io import atomic_path, read_table
from mapmerge.metrics import suffixes, wide_metrics


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a Markdown table, floats rounded."""
    def cell(value: object) -> str:
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
    tasks = suffixes(selected.columns, "c")
    ref = wide_metrics(reference, "model")
    ref = ref.reindex(index=["pretrained", *tasks], columns=[f"{m}_{t}" for m in sorted(set(reference["metric"])) for t in tasks])
    sections += ["## Single models (real evaluations)", "", markdown_table(ref.reset_index()), ""]
    n_real = len(reference["model"].unique())
    for group in group_names:
        gdir = results / "groups" / group
        samples = read_table(gdir / "samples.parquet")
        fit = read_table(gdir / "surrogate.parquet").drop(columns=["params", "tasks"])
        front = read_table(gdir / "front.parquet")
        n_real += len(samples) + 1
        sections += [
            f"## Group {group}",
            "",
            f"- {len(samples)} sampled merges evaluated; front of {len(front)} points: {gdir / 'front.parquet'}",
            f"- merged checkpoint: {gdir / 'merged.safetensors'}",
            "",
            "Surrogate fit per task and metric:",
            "",
            markdown_table(fit),
            "",
        ]
    sections += [
        "## Chosen merge (predicted and measured)",
        "",
        markdown_table(selected.T.reset_index().rename(columns={"index": "column", 0: "value"})),
        "",
        f"Real model evaluations in all: {n_real}.",
        f"Plots: {results / 'plots'}",
        "",
    ]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(sections))
    return Path(out)
