"""Stage pareto_front: the Pareto front of one group's objectives on the surrogates."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from mapmerge.core import groups, pareto
from mapmerge.core.metrics import maximized
from mapmerge.core.surrogate import objective_predictor
from mapmerge.io import read_table, write_table

PathLike = str | os.PathLike


def run_pareto_front(
    params: Mapping[str, Any], *, surrogate: PathLike, samples: PathLike, plan: PathLike, group: str, front: PathLike
) -> None:
    """NSGA-III front of the group's objectives inside the sampled box, with every fitted metric predicted per task (front.parquet)."""
    table = read_table(surrogate)
    info = groups.group_plan(plan, group)
    members, tasks = info["members"], info["tasks"]
    opt = params["optimizer"]
    metric = opt["objective"]
    coef = read_table(samples)[[f"c_{m}" for m in members]].to_numpy()
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
    write_table(points, front, "pareto_front", params, inputs=[surrogate, samples, plan], extra=extra)
