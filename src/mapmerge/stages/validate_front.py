"""Stage validate_front (validation.enabled): K points of the predicted front, evaluated for real."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mapmerge.core import groups
from mapmerge.core.groundtruth import front_sample
from mapmerge.core.groups import EngineFiles
from mapmerge.io import read_table, write_table
from mapmerge.stages.evaluation import run_evaluate_samples

PathLike = str | os.PathLike


def run_evaluate_front(
    params: Mapping[str, Any],
    front_table: PathLike,
    files: EngineFiles,
    plan: PathLike,
    points_out: PathLike,
    evals_out: PathLike,
    device: str = "auto",
    threads: int = 0,
) -> None:
    """Evaluate for real `front_points` points spread along the group `all`'s predicted front.

    Writes the points (mapmerge.core.groundtruth.front_sample) and their per-example rows (sample, task, example, correct, loss).
    """
    points = front_sample(read_table(front_table), params["objective"], params["front_points"])
    members = groups.group_plan(plan, groups.PLAIN_GROUP)["members"]
    coefficients = {row["sample"]: [float(row[f"c_{m}"]) for m in members] for _, row in points.iterrows()}
    run_evaluate_samples(params, files, plan, groups.PLAIN_GROUP, coefficients, evals_out, device, threads, stage="validate_front")
    write_table(points, points_out, "validate_front", params, inputs=[front_table, plan])
