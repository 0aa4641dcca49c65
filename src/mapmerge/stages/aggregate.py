"""Stage aggregate: every group's front and choice, the group tree, plots and the report."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core import groups
from mapmerge.core.metrics import maximized, measured_metrics, suffixes, wide_metrics
from mapmerge.io import read_table, write_table

PathLike = str | os.PathLike


def group_tree(
    plans: Sequence[PathLike],
    choices: Mapping[str, pd.DataFrame],
    measured: Mapping[str, pd.Series],
    metric: str,
    preference: Mapping[str, float] | None,
) -> pd.DataFrame:
    """groups.parquet: every level's plan with each group's chosen coefficients and measured metric.

    choices, measured: per group, its choice row and its merge's real metrics (measured_metrics).
    measured_<metric>: merge_score of the chosen merge (what the next nested level pairs by).
    """
    frames = []
    for plan in plans:
        frame = read_table(plan)
        grouped = [row for row in frame.itertuples() if not pd.isna(row.group)]
        coefficients = {row.Index: [float(choices[row.group][f"c_{m}"].iloc[0]) for m in row.members] for row in grouped}
        scores = {row.Index: groups.merge_score(measured[row.group], list(row.tasks), metric, preference) for row in grouped}
        frames.append(frame.assign(coefficients=[coefficients.get(i) for i in frame.index],
                                   **{f"measured_{metric}": [scores.get(i, np.nan) for i in frame.index]}))
    return pd.concat(frames, ignore_index=True)


def run_aggregate(
    params: Mapping[str, Any],
    results: PathLike,
    plans: Sequence[PathLike],
    group_names: Sequence[str],
    ledger: PathLike,
    outputs: Mapping[str, PathLike],
) -> None:
    """Gather fronts and choices of all groups (the last is the final merge), the group tree, plots and a report.

    outputs: pareto, selected, groups, report (paths) and plots (folder).
    """
    from mapmerge.outputs import plots, report  # deferred: the rules import stage modules at every Snakefile parse

    results = Path(results)
    metric = params["objective"]
    fronts, chosen, inputs, measured = [], [], [*plans, ledger], {}
    for group in group_names:
        gdir = results / "groups" / group
        fronts.append(read_table(gdir / "front.parquet").assign(group=group))
        choice = read_table(gdir / "choice.parquet").assign(group=group)
        measured[group] = measured_metrics(gdir / "selected_evals.parquet")
        for name in sorted(set(measured[group].index.get_level_values("metric"))):
            for task in suffixes(choice.columns, metric):
                choice[f"measured_{name}_{task}"] = measured[group][(name, task)]
        chosen.append(choice)
        inputs += [gdir / "front.parquet", gdir / "choice.parquet", gdir / "selected_evals.parquet"]
    write_table(pd.concat(fronts, ignore_index=True), outputs["pareto"], "aggregate", params, inputs)
    write_table(pd.concat(chosen, ignore_index=True), outputs["selected"], "aggregate", params, inputs)
    tree = group_tree(plans, dict(zip(group_names, chosen)), measured, metric, params["preference"])
    write_table(tree, outputs["groups"], "aggregate", params, inputs)
    gdir = results / "groups" / group_names[-1]
    samples = read_table(gdir / "samples.parquet")
    samples = samples.merge(wide_metrics(read_table(gdir / "metrics.parquet"), "sample").reset_index(), on="sample")
    tasks = suffixes(fronts[-1].columns, metric)
    reference = read_table(results / "reference.parquet")
    plots.plot_all(samples, fronts[-1], reference, tasks, metric, outputs["plots"], selected=chosen[-1],
                   maximize=maximized(metric), members=suffixes(fronts[-1].columns, "c"))
    report.write_report(results, group_names, outputs["report"])
