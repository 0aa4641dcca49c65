"""A plain-text (Markdown) report of a finished run: what was evaluated, how good the fit is, what was chosen."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mapmerge.core.metrics import suffixes, wide_metrics
from mapmerge.io import atomic_path, read_table


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a Markdown table, floats rounded."""
    def cell(value: object) -> str:
        if isinstance(value, (list, tuple, np.ndarray)):
            return ", ".join(cell(v) for v in value)
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


HTML_TABLES = ("models", "front", "chosen", "ledger")  # report/<name>.html, for snakemake --report


def single_models(reference: pd.DataFrame) -> pd.DataFrame:
    """reference.parquet as one row per model (pretrained first), one column per metric and task."""
    tasks = [m for m in reference["model"].unique() if m != "pretrained"]
    ref = wide_metrics(reference, "model")
    columns = [f"{m}_{t}" for m in sorted(set(reference["metric"])) for t in tasks]
    return ref.reindex(index=["pretrained", *tasks], columns=columns).reset_index()


def evaluations_by_stage(ledger: pd.DataFrame) -> pd.DataFrame:
    """The ledger's real evaluations summed per stage."""
    return ledger.groupby("stage", sort=False)[["models", "task_evaluations", "examples"]].sum().reset_index()


def chosen_merge(selected: pd.DataFrame) -> pd.DataFrame:
    """The final chosen merge (the last group's) as column, value rows: coefficients, predicted and measured metrics."""
    return selected.iloc[-1].dropna().rename("value").rename_axis("column").reset_index()


def write_html_tables(results: str | os.PathLike, outputs: Mapping[str, str | os.PathLike]) -> None:
    """The key tables of a finished run as HTML pages for `snakemake --report`.

    outputs: a path for each of HTML_TABLES: models (single models), front (pareto.parquet), chosen (the
    chosen merge), ledger (real evaluations per stage and per file); and validation (validation.parquet)
    where outputs names it.
    """
    results = Path(results)
    ledger = read_table(results / "evaluations.parquet")
    tables = {
        "models": ("Single models (real evaluations, reference.parquet)", single_models(read_table(results / "reference.parquet"))),
        "front": ("Predicted Pareto front (pareto.parquet)", read_table(results / "pareto.parquet")),
        "chosen": ("Chosen merge: coefficients, predicted and measured metrics (selected.parquet)", chosen_merge(read_table(results / "selected.parquet"))),
        "ledger": ("Real evaluations per stage, then per file (evaluations.parquet)", pd.concat([evaluations_by_stage(ledger), ledger], ignore_index=True)),
    }
    if "validation" in outputs:
        tables["validation"] = ("Validation against the grid's ground truth (validation.parquet)", read_table(results / "validation.parquet"))
    for key, (title, frame) in tables.items():
        html = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)
        with atomic_path(outputs[key]) as tmp:
            tmp.write_text(f"<html><head><meta charset='utf-8'><title>{title}</title></head><body><h3>{title}</h3>{html}</body></html>\n")


def write_report(results: str | os.PathLike, group_names: Sequence[str], out: str | os.PathLike) -> Path:
    """Write report.md for a run's results folder."""
    results = Path(results)
    reference = read_table(results / "reference.parquet")
    selected = read_table(results / "selected.parquet")
    sections = [f"# mapmerge report: {results.name}", ""]
    sections += ["## Single models (real evaluations)", "", markdown_table(single_models(reference)), ""]
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
    sections += ["## Real evaluations (evaluations.parquet)", "", markdown_table(evaluations_by_stage(ledger)), ""]
    sections += [
        f"## Chosen merge of group {selected['group'].iloc[-1]} (predicted and measured)",
        "",
        markdown_table(chosen_merge(selected)),
        "",
        f"Real model evaluations in all: {int(ledger['models'].sum())} models, {int(ledger['task_evaluations'].sum())} (model, task) evaluations.",
        f"Plots: {results / 'plots'}",
        "",
    ]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(sections))
    return Path(out)
