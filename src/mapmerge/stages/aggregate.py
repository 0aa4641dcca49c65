"""Stage aggregate: every group's front and choice, the group tree, plots and the report."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core import groups as core_groups
from mapmerge.core.metrics import maximized, measured_metrics, sample_metrics, suffixes
from mapmerge.core.selection import measured_front
from mapmerge.io import read_table, write_table
from mapmerge.layout import Layout
from mapmerge.outputs import plots
from mapmerge.outputs.measured import with_chosen_merge
from mapmerge.outputs.notes import INTERVAL_KEY
from mapmerge.outputs.report import write_report

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
        coefficients = {
            row.Index: [float(choices[row.group][f"c_{m}"].iloc[0]) for m in row.members] for row in grouped
        }
        scores = {
            row.Index: core_groups.merge_score(measured[row.group], list(row.tasks), metric, preference)
            for row in grouped
        }
        frames.append(
            frame.assign(
                coefficients=[coefficients.get(i) for i in frame.index],
                **{f"measured_{metric}": [scores.get(i, np.nan) for i in frame.index]},
            )
        )
    return pd.concat(frames, ignore_index=True)


def run_aggregate(
    params: Mapping[str, Any],
    *,
    reference: PathLike,
    plans: Sequence[PathLike],
    ledger: PathLike,
    pareto: PathLike,
    measured: PathLike,
    selected: PathLike,
    groups: PathLike,
    report: PathLike,
    results: PathLike,
    group_names: Sequence[str],
    validation: PathLike | None = None,
) -> None:
    """Gather fronts and choices of all groups (the last is the final merge), the group tree, plots and a report.

    Writes pareto, measured (every group's measured front), selected, groups (the group tree) and report (report.md,
    with the validation's table where `validation`, validation.parquet, is given) and the plots under the run
    folder's plots/. The groups' files are found through the layout of the run folder `results`.
    """
    layout = Layout(results)
    metric = params["objective"]
    fronts, chosen, inputs, real, measured_fronts = [], [], [*plans, ledger], {}, []
    for group in group_names:
        fronts.append(read_table(layout.front(group)).assign(group=group))
        group_tasks = suffixes(fronts[-1].columns, metric)
        samples = read_table(layout.samples(group))
        evaluated = sample_metrics(samples, read_table(layout.metrics(group)), complete=False)
        complete = evaluated.dropna(subset=evaluated.columns.difference(samples.columns))  # as sample_metrics' default
        choice = read_table(layout.choice(group)).assign(group=group)
        real[group] = measured_metrics(layout.selected_evals(group))
        complete = with_chosen_merge(complete, choice, real[group])
        measured_fronts.append(measured_front(complete, metric, group_tasks).assign(group=group))
        for name in sorted(set(real[group].index.get_level_values("metric"))):
            for task in group_tasks:
                choice[f"measured_{name}_{task}"] = real[group][(name, task)]
        chosen.append(choice)
        inputs += [layout.front(group), layout.choice(group), layout.selected_evals(group)]
        inputs += [layout.samples(group), layout.metrics(group)]
    level = {INTERVAL_KEY: str(params["interval"])}  # for select, plot and the report, which read no config
    write_table(pd.concat(fronts, ignore_index=True), pareto, "aggregate", params, inputs, extra=level)
    write_table(pd.concat(measured_fronts, ignore_index=True), measured, "aggregate", params, inputs)
    write_table(pd.concat(chosen, ignore_index=True), selected, "aggregate", params, inputs, extra=level)
    tree = group_tree(plans, dict(zip(group_names, chosen)), real, metric, params["preference"])
    write_table(tree, groups, "aggregate", params, inputs)
    tasks = suffixes(fronts[-1].columns, metric)
    drawn = plots.plot_all(
        evaluated,  # the final group's samples and their metrics
        fronts[-1],
        read_table(reference),
        tasks,
        metric,
        layout.plots,
        selected=chosen[-1],
        maximize=maximized(metric),
        members=suffixes(fronts[-1].columns, "c"),
        measured=measured_fronts[-1],
        interval=params["interval"],
    )
    write_report(results, group_names, report, drawn, validation)
