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
from mapmerge.outputs import plots

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
) -> None:
    """validation.parquet (`table`: the indicators with bootstrap intervals) and plots/validation.png (`plot`).

    front: the group all's predicted front; points, front_evals: validate_front's points and their evaluations;
    grid: the grid's evaluation batches; baselines: name -> per-example evaluation of that baseline;
    reference: reference.parquet (fine-tuned models).
    """
    metric = params["objective"]
    maximize = maximized(metric)
    chosen = read_table(points)
    grid_examples = pd.concat([read_table(p) for p in grid], ignore_index=True)
    examples = pd.concat([grid_examples, read_table(front_evals)], ignore_index=True)
    indicators, hv_ref = validation_table(
        examples, chosen, metric, maximize, params["bootstrap"], params["ci_level"], params["seed"]
    )
    tasks = suffixes(chosen.columns, metric)
    extra = {"mapmerge.hv_reference": json.dumps(dict(zip(tasks, hv_ref.tolist())))}
    inputs = [front, points, front_evals, *grid, *baselines.values(), reference]
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
    plots.plot_validation(
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
