"""Stage pareto_front: the Pareto front of one group's objectives on the surrogates."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core import groups, pareto
from mapmerge.core.metrics import maximized
from mapmerge.core.surrogate import objective_predictor, prediction_columns
from mapmerge.io import read_table, write_table

PathLike = str | os.PathLike


def predicted_front(
    params: Mapping[str, Any], table: pd.DataFrame, coef: np.ndarray, info: Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """NSGA-III front of a group's objectives on the surrogates (`table`) inside the box of the evaluated
    coefficients `coef` [n, members]: `c_<member>` and every fitted metric predicted per task, and the
    table's extra metadata (T = 2: the IGD against a dense grid on the surrogates)."""
    members, tasks = info["members"], info["tasks"]
    opt = params["optimizer"]
    metric = opt["objective"]
    lower, upper = coef.min(axis=0), coef.max(axis=0)
    objectives = groups.group_objectives(objective_predictor(table, metric, tasks), info, params.get("preference"))
    maximize = [maximized(metric)] * len(members)
    C, F = pareto.surrogate_front(
        objectives,
        len(members),
        lower,
        upper,
        maximize,
        pop_size=opt["pop_size"],
        n_gen=opt["n_gen"],
        seed=params["seed"],
        ref_partitions=opt["ref_partitions"],
    )
    points = pd.DataFrame(C, columns=[f"c_{m}" for m in members])
    for other in sorted(set(table["metric"])):
        predicted = objective_predictor(table, other, tasks)(C)
        for i, task in enumerate(tasks):
            points[f"{other}_{task}"] = predicted[:, i]
    extra = {}
    if len(members) == 2:
        _, grid = pareto.grid_front(objectives, lower, upper, maximize, resolution=opt["grid_check_resolution"])
        extra["mapmerge.grid_igd"] = f"{pareto.igd(F, grid, maximize):.6g}"
    return points, extra


def with_intervals(points: pd.DataFrame, table: pd.DataFrame, info: Mapping[str, Any], level: float) -> pd.DataFrame:
    """`points` (`c_<member>` and predicted `<metric>_<task>` columns) with each prediction's `level` interval,
    `<metric>_<task>_lo` and `_hi`, beside it (mapmerge.core.surrogate.prediction_columns)."""
    C = points[[f"c_{m}" for m in info["members"]]].to_numpy(dtype=float)
    bounds = prediction_columns(table, C, info["tasks"], level).set_index(points.index)
    order = [c for name in points.columns for c in (name, f"{name}_lo", f"{name}_hi") if c in points or c in bounds]
    return pd.concat([points, bounds.drop(columns=[c for c in bounds if c in points])], axis=1)[order]


def run_pareto_front(
    params: Mapping[str, Any], *, surrogate: PathLike, samples: PathLike, plan: PathLike, group: str, front: PathLike
) -> None:
    """NSGA-III front of the group's objectives inside the sampled box, with every fitted metric predicted per task and
    its prediction interval at level `interval` (`<metric>_<task>`, `_lo`, `_hi`; front.parquet)."""
    info = groups.group_plan(plan, group)
    coef = read_table(samples)[[f"c_{m}" for m in info["members"]]].to_numpy()
    table = read_table(surrogate)
    points, extra = predicted_front(params, table, coef, info)
    points = with_intervals(points, table, info, params["interval"])
    write_table(points, front, "pareto_front", params, inputs=[surrogate, samples, plan], extra=extra)
