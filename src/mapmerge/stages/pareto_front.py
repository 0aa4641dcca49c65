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


def _objectives(params: Mapping[str, Any], table: pd.DataFrame, info: Mapping[str, Any]) -> pareto.Predict:
    """The group's objectives on the surrogates: per member, the preference-weighted mean of its tasks' `objective`."""
    metric = params["optimizer"]["objective"]
    return groups.group_objectives(objective_predictor(table, metric, info["tasks"]), info, params.get("preference"))


def predicted_front(
    params: Mapping[str, Any], table: pd.DataFrame, coef: np.ndarray, info: Mapping[str, Any], corners: bool = False
) -> pd.DataFrame:
    """NSGA-III front of a group's objectives on the surrogates (`table`) inside the box of the evaluated
    coefficients `coef` [n, members]: `c_<member>` and every fitted metric predicted per task. `corners`: with the
    box's one-member corners that no other point dominates (pareto.surrogate_front)."""
    members, tasks = info["members"], info["tasks"]
    opt = params["optimizer"]
    C, _ = pareto.surrogate_front(
        _objectives(params, table, info),
        len(members),
        coef.min(axis=0),
        coef.max(axis=0),
        [maximized(opt["objective"])] * len(members),
        pop_size=opt["pop_size"],
        n_gen=opt["n_gen"],
        seed=params["seed"],
        ref_partitions=opt["ref_partitions"],
        corners=corners,
    )
    points = pd.DataFrame(C, columns=[f"c_{m}" for m in members])
    for other in sorted(set(table["metric"])):
        predicted = objective_predictor(table, other, tasks)(C)
        for i, task in enumerate(tasks):
            points[f"{other}_{task}"] = predicted[:, i]
    return points


def grid_check(
    params: Mapping[str, Any], table: pd.DataFrame, coef: np.ndarray, info: Mapping[str, Any], points: pd.DataFrame
) -> dict[str, str]:
    """Two members: the front's IGD against the non-dominated points of a dense grid on the same surrogates, as
    front.parquet's metadata (`mapmerge.grid_igd`); no check for more members."""
    members = info["members"]
    if len(members) != 2:
        return {}
    opt = params["optimizer"]
    objectives = _objectives(params, table, info)
    maximize = [maximized(opt["objective"])] * len(members)
    F = objectives(points[[f"c_{m}" for m in members]].to_numpy(dtype=float))
    lower, upper = coef.min(axis=0), coef.max(axis=0)
    _, grid = pareto.grid_front(objectives, lower, upper, maximize, resolution=opt["grid_check_resolution"])
    return {"mapmerge.grid_igd": f"{pareto.igd(F, grid, maximize):.6g}"}


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
    """NSGA-III front of the group's objectives inside the sampled box, with the box's one-member corners that no
    other point dominates (each member's own model, which NSGA-III seldom reaches with many members), every fitted
    metric predicted per task and its prediction interval at level `interval` (`<metric>_<task>`, `_lo`, `_hi`;
    front.parquet). The refinement rounds' fronts (refine_round) are NSGA-III's alone."""
    info = groups.group_plan(plan, group)
    coef = read_table(samples)[[f"c_{m}" for m in info["members"]]].to_numpy()
    table = read_table(surrogate)
    points = predicted_front(params, table, coef, info, corners=True)
    extra = grid_check(params, table, coef, info, points)
    points = with_intervals(points, table, info, params["interval"])
    write_table(points, front, "pareto_front", params, inputs=[surrogate, samples, plan], extra=extra)
