"""A plain-text (Markdown) report of a finished run: what was evaluated, how good the fit is, what was chosen."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mapmerge.core.metrics import METRICS, suffixes, wide_metrics
from mapmerge.core.surrogate import TABLE_COLUMNS
from mapmerge.io import atomic_path, read_table, table_metadata
from mapmerge.layout import Layout
from mapmerge.outputs.notes import group_notes, interval_level, interval_line


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a Markdown table, floats rounded, a missing value (None, NaN) left blank."""

    def cell(value: object) -> str:
        if isinstance(value, (list, tuple, np.ndarray)):
            return ", ".join(cell(v) for v in value)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


HTML_TABLES = ("models", "front", "measured_front", "chosen", "ledger")  # report/<name>.html, for snakemake --report


def single_models(reference: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """reference.parquet as one row per model (pretrained first), one column per metric and task, the tasks in the
    run's order (task_vectors.parquet's; reference.parquet's rows are sorted by model)."""
    ref = wide_metrics(reference, "model")
    columns = [f"{m}_{t}" for m in sorted(set(reference["metric"])) for t in tasks]
    return ref.reindex(index=["pretrained", *tasks], columns=columns).reset_index()


def evaluations_by_stage(ledger: pd.DataFrame) -> pd.DataFrame:
    """The ledger's real evaluations summed per stage."""
    return ledger.groupby("stage", sort=False)[["models", "task_evaluations", "examples"]].sum().reset_index()


def distinct_evaluations(ledger: pd.DataFrame, selected: pd.DataFrame) -> str:
    """The report's count of real evaluations: the ledger's, less a chosen merge that is a measured point (after
    refinement rounds its table holds that point's rows again, taken from its evaluation)."""
    measured = selected["source"].eq("measured") if "source" in selected.columns else pd.Series(False, selected.index)
    again = ledger[(ledger["stage"] == "evaluate_selected") & ledger["group"].isin(selected.loc[measured, "group"])]
    models, pairs = (
        int(ledger["models"].sum() - again["models"].sum()),
        int(ledger["task_evaluations"].sum() - again["task_evaluations"].sum()),
    )
    repeated = (
        " (a chosen merge that is a measured point counted once: evaluate_selected's "
        + ("tables repeat" if len(again) > 1 else "table repeats")
        + " rows evaluated before)"
        if len(again)
        else ""
    )
    return f"Real model evaluations in all: {models} models, {pairs} (model, task) evaluations{repeated}."


def chosen_merge(selected: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The final chosen merge (the last group's): what it is as column, value rows (its group, where it comes from,
    its members' coefficients and weights), and its metrics as one row per task: each metric predicted, with its
    interval, and measured."""
    row = selected.iloc[-1].dropna()
    metrics = [m for m in METRICS if suffixes(row.index, m)]
    tasks = list(dict.fromkeys(t for m in metrics for t in suffixes(row.index, m)))
    parts = [
        (prefix, m, end) for m in metrics for prefix, end in (("", ""), ("", "_lo"), ("", "_hi"), ("measured_", ""))
    ]
    per_task = pd.DataFrame(
        {f"{prefix}{m}{end}": [row.get(f"{prefix}{m}_{t}{end}") for t in tasks] for prefix, m, end in parts},
        index=pd.Index(tasks, name="task"),
    )
    shown = {f"{prefix}{m}_{t}{end}" for prefix, m, end in parts for t in tasks}
    about = row[["group", *(c for c in row.index if c not in shown and c != "group")]]
    return about.rename("value").rename_axis("column").reset_index(), per_task.dropna(axis=1, how="all").reset_index()


def write_html_tables(
    tables: Mapping[str, str | os.PathLike] | str | os.PathLike, outputs: Mapping[str, str | os.PathLike]
) -> None:
    """The key tables of a finished run as HTML pages for `snakemake --report`.

    tables: the run's reference, task_vectors, pareto, measured, selected and evaluations tables (and validation)
    by those names, or the run folder, whose layout names them. outputs: a path for each of HTML_TABLES: models (single
    models), front (pareto.parquet), measured_front (measured.parquet), chosen (the chosen merge), ledger (real evaluations per stage and per
    file); and validation (validation.parquet) where outputs names it.
    """
    if not isinstance(tables, Mapping):
        layout = Layout(tables)
        tables = {
            "reference": layout.reference,
            "task_vectors": layout.task_vector_table,
            "pareto": layout.pareto,
            "measured": layout.measured,
            "selected": layout.selected,
            "evaluations": layout.ledger,
            "validation": layout.validation,
        }
    ledger = read_table(tables["evaluations"])
    pages = {  # each page's title and its tables, one after another
        "models": (
            "Single models (real evaluations, reference.parquet)",
            (single_models(read_table(tables["reference"]), read_table(tables["task_vectors"])["task"].tolist()),),
        ),
        "front": ("Predicted Pareto front (pareto.parquet)", (read_table(tables["pareto"]),)),
        "measured_front": (
            "Measured Pareto front: the real evaluations no other dominates (measured.parquet)",
            (read_table(tables["measured"]),),
        ),
        "chosen": (
            "Chosen merge: where it comes from, its coefficients, and per task its predicted and measured metrics "
            "(selected.parquet)",
            chosen_merge(read_table(tables["selected"])),
        ),
        "ledger": (
            "Real evaluations per stage, then per file (evaluations.parquet)",
            (pd.concat([evaluations_by_stage(ledger), ledger], ignore_index=True),),
        ),
    }
    if "validation" in outputs:
        pages["validation"] = (
            "Validation against the grid's ground truth (validation.parquet)",
            (read_table(tables["validation"]),),
        )
    for key, (title, frames) in pages.items():
        html = "".join(
            frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0) for frame in frames
        )
        with atomic_path(outputs[key]) as tmp:
            tmp.write_text(
                f"<html><head><meta charset='utf-8'><title>{title}</title></head><body><h3>{title}</h3>{html}</body></html>\n"
            )


def validation_section(validation: str | os.PathLike, plots: Path) -> list[str]:
    """report.md's lines on validation.parquet: what its rows measure, the table, and plots/validation.png."""
    table = read_table(validation)
    level = table_metadata(validation).get("mapmerge.interval")
    lines = [
        "## Validation against a real grid (validation.parquet)",
        "",
        "IGD, IGD+ and GD of the front's K points as predicted and as measured, against the non-dominated points of "
        "the grid's real evaluations (`n_reference`); the hypervolumes; the prediction errors at the K points; the "
        "win rates against a brute-force search of the same budget; and `coverage`, the share of the grid's real "
        f"values inside the front's {float(level):.0%} prediction intervals (calibrated: about as much). `ci_low`, "
        "`ci_high`: bootstrap intervals at `validation.ci_level` (docs/validation.md). The validation's own "
        "evaluations (the grid, the K points, the baselines) are not among the run's counted above.",
        "",
        markdown_table(table),
        "",
    ]
    return [*lines, f"![validation.png]({plots.name}/validation.png)", ""]


def write_report(
    results: str | os.PathLike,
    group_names: Sequence[str],
    out: str | os.PathLike,
    plots: Sequence[Path] = (),
    validation: str | os.PathLike | None = None,
) -> Path:
    """Write report.md for a run's results folder, showing `plots` (PNGs under it) at its end, and the validation's
    table (validation.parquet, with validation.enabled) before them."""
    layout = Layout(results)
    reference = read_table(layout.reference)
    tasks = read_table(layout.task_vector_table)["task"].tolist()
    selected = read_table(layout.selected)
    measured = read_table(layout.measured)
    sections = [f"# mapmerge report: {layout.root.name}", ""]
    sections += ["## Single models (real evaluations)", "", markdown_table(single_models(reference, tasks)), ""]
    for group in group_names:
        samples = read_table(layout.samples(group))
        fit = read_table(layout.surrogate(group))
        # its statistics, not the parameters' and the bootstrap's lists; the correction's length scale where fitted;
        # whether the class scores give the prediction (surrogate.scores)
        shown = [c for c in (*TABLE_COLUMNS, "correction_length") if c in fit.columns and c not in ("params", "tasks")]
        scored = ["yes" if len(p) else "" for p in fit["score_params"]] if "score_params" in fit.columns else None
        fit = fit[shown] if scored is None else fit[shown].assign(class_scores=scored)
        fit = fit.sort_values("task", key=lambda t: t.map(tasks.index), kind="stable")  # the run's task order
        front = read_table(layout.front(group))
        members = suffixes(samples.columns, "c")
        sections += [
            f"## Group {group}: {', '.join(members)}",
            "",
            f"- {len(samples)} sampled merges evaluated; front of {len(front)} points: {layout.front(group)}",
            f"- measured front: {int((measured['group'] == group).sum())} of the evaluated merges, those no other one "
            f"dominates: {layout.measured}",
            f"- merged checkpoint: {layout.merged(group)}",
            *(f"- {line}" for line in group_notes(results, group)),
            "",
            "Surrogate fit per task and metric:",
            "",
            markdown_table(fit),
            "",
        ]
    tree = read_table(layout.group_tree)
    if len(tree) > 1:
        columns = [
            "level",
            "group",
            "members",
            "member_score",
            "coefficients",
            *[c for c in tree.columns if c.startswith("measured_")],
        ]
        tree = tree.assign(group=tree["group"].fillna("(passed up)"))  # a model passed up to the next level
        sections += ["## Nested merge tree (groups.parquet)", "", markdown_table(tree[columns]), ""]
    ledger = read_table(layout.ledger)
    sections += ["## Real evaluations (evaluations.parquet)", "", markdown_table(evaluations_by_stage(ledger)), ""]
    sections += [
        f"## Chosen merge of group {selected['group'].iloc[-1]} (predicted and measured)",
        "",
        *(line for table in chosen_merge(selected) for line in (markdown_table(table), "")),
        interval_line(interval_level(layout.selected)),
        "",
        distinct_evaluations(ledger, selected),
        *(validation_section(validation, layout.plots) if validation is not None else []),
        f"Plots: {layout.plots}",
        "",
        *(line for p in plots for line in (f"![{Path(p).name}]({Path(p).relative_to(layout.root).as_posix()})", "")),
    ]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(sections))
    return Path(out)
