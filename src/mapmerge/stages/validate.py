"""Stage validate (validation.enabled): the front's indicators against the grid's true front, and their plot."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mapmerge.core.groundtruth import GRID_PREFIX, coverage_table, grid_points, validation_table
from mapmerge.core.metrics import (
    maximized,
    metrics_from_examples,
    suffixes,
    wide_metrics,
)
from mapmerge.core.surrogate import prediction_columns
from mapmerge.io import read_table, write_table
from mapmerge.outputs.validation_plot import plot_validation

PathLike = str | os.PathLike
logger = logging.getLogger("mapmerge")


def run_validate(
    params: Mapping[str, Any],
    *,
    front: PathLike,
    points: PathLike,
    front_evals: PathLike,
    grid: Sequence[PathLike],
    baselines: Mapping[str, PathLike],
    reference: PathLike,
    table: PathLike,
    plot: PathLike,
    samples: PathLike | None = None,
    surrogate: PathLike | None = None,
) -> None:
    """validation.parquet (`table`: the indicators with bootstrap intervals) and plots/validation.png (`plot`).

    front: the group all's predicted front; points, front_evals: validate_front's points and their evaluations;
    grid: the grid's evaluation batches; baselines: name -> per-example evaluation of that baseline;
    reference: reference.parquet (fine-tuned models); samples: the group all's samples.parquet, whose rows are the
    win rates' budget (default: the samples.parquet beside `front`); surrogate: the group all's surrogate.parquet,
    for the coverage of its prediction intervals on the grid (params `interval`, `box`; none without it).
    """
    metric = params["objective"]
    maximize = maximized(metric)
    chosen = read_table(points)
    grid_examples = pd.concat([read_table(p) for p in grid], ignore_index=True)
    examples = pd.concat([grid_examples, read_table(front_evals)], ignore_index=True)
    samples = samples if samples is not None else Path(front).with_name("samples.parquet")  # direct calls
    budget = len(read_table(samples))
    indicators, hv_ref = validation_table(
        examples, chosen, metric, maximize, params["bootstrap"], params["ci_level"], params["seed"], budget=budget
    )
    tasks = suffixes(chosen.columns, metric)
    extra = {"mapmerge.hv_reference": json.dumps(dict(zip(tasks, hv_ref.tolist())))}
    inputs = [front, points, front_evals, *grid, *baselines.values(), reference, samples]
    if surrogate is not None:
        coverage = grid_coverage(params, grid_examples, read_table(surrogate))
        indicators = pd.concat([indicators, coverage], ignore_index=True)
        extra["mapmerge.interval"] = f"{params['interval']:g}"
        inputs.append(surrogate)
    write_table(indicators, table, "validate", params, inputs, extra=extra)
    logger.info("validation:\n%s", indicators.to_string(index=False))

    wide = wide_metrics(metrics_from_examples(examples), "sample")
    true_grid = wide.loc[[s for s in wide.index if s.startswith(GRID_PREFIX)]]
    measured = wide.loc[chosen["sample"]].add_prefix("measured_").reset_index(drop=True)
    base = (
        pd.concat([wide_metrics(metrics_from_examples(read_table(p)), "sample") for p in baselines.values()])
        if baselines
        else None
    )
    plot_validation(
        true_grid,
        read_table(front),
        pd.concat([chosen, measured], axis=1),
        base,
        read_table(reference),
        tasks,
        metric,
        plot,
        maximize=maximize,
    )


def grid_coverage(params: Mapping[str, Any], examples: pd.DataFrame, surrogate: pd.DataFrame) -> pd.DataFrame:
    """The coverage rows (mapmerge.core.groundtruth.coverage_table) of the surrogate's `interval` prediction intervals
    on the grid's points (the grid over `box`, its resolution from its number of points), logged."""
    members = str(surrogate["tasks"].iloc[0]).split(",")
    n_grid = examples["sample"].nunique()
    resolution = int(round(n_grid ** (1.0 / len(members))))
    coefficients = grid_points(members, *params["box"], resolution).set_index("sample")
    level = params["interval"]
    tasks = list(dict.fromkeys(surrogate["task"]))
    bounds = prediction_columns(surrogate, coefficients.to_numpy(dtype=float), tasks, level)
    bounds.index = coefficients.index
    table = coverage_table(examples, bounds, params["bootstrap"], params["ci_level"], params["seed"])
    for row in table[table["front"] == "all"].itertuples():
        per_task = ", ".join(
            f"{r.front} {r.value:.3f}"
            for r in table[(table["metric"] == row.metric) & (table["front"] != "all")].itertuples()
        )
        logger.info(
            "coverage of the %g prediction intervals of %s on the grid's %d points: %.3f [%.3f, %.3f] (%s)",
            level,
            row.metric,
            row.n_reference,
            row.value,
            row.ci_low,
            row.ci_high,
            per_task,
        )
    return table
