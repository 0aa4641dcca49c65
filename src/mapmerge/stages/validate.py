"""Stage validate (validation.enabled): the front's indicators against the grid's true front, and their plot."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mapmerge.core.groundtruth import GRID_PREFIX, validation_table
from mapmerge.core.metrics import (
    maximized,
    metrics_from_examples,
    suffixes,
    wide_metrics,
)
from mapmerge.io import read_table, write_table

PathLike = str | os.PathLike
logger = logging.getLogger("mapmerge")


def run_validate(
    params: Mapping[str, Any],
    front_table: PathLike,
    points_table: PathLike,
    front_evals: PathLike,
    grid_evals: Sequence[PathLike],
    baselines: Mapping[str, PathLike],
    reference: PathLike,
    out: PathLike,
    plot: PathLike,
) -> None:
    """validation.parquet (the indicators with bootstrap intervals) and plots/validation.png.

    baselines: name -> per-example evaluation of that baseline; reference: reference.parquet (fine-tuned models).
    """
    from mapmerge.outputs import plots  # deferred: the rules import stage modules at every Snakefile parse

    metric = params["objective"]
    maximize = maximized(metric)
    points = read_table(points_table)
    grid_examples = pd.concat([read_table(p) for p in grid_evals], ignore_index=True)
    examples = pd.concat([grid_examples, read_table(front_evals)], ignore_index=True)
    table, hv_ref = validation_table(examples, points, metric, maximize, params["bootstrap"], params["ci_level"], params["seed"])
    tasks = suffixes(points.columns, metric)
    extra = {"mapmerge.hv_reference": json.dumps(dict(zip(tasks, hv_ref.tolist())))}
    inputs = [front_table, points_table, front_evals, *grid_evals, *baselines.values(), reference]
    write_table(table, out, "validate", params, inputs, extra=extra)
    logger.info("validation:\n%s", table.to_string(index=False))

    wide = wide_metrics(metrics_from_examples(examples), "sample")
    grid = wide.loc[[s for s in wide.index if s.startswith(GRID_PREFIX)]]
    measured = wide.loc[points["sample"]].add_prefix("measured_").reset_index(drop=True)
    base = pd.concat([wide_metrics(metrics_from_examples(read_table(p)), "sample") for p in baselines.values()]) if baselines else None
    plots.plot_validation(grid, read_table(front_table), pd.concat([points, measured], axis=1), base, read_table(reference), tasks,
                          metric, plot, maximize=maximize)
