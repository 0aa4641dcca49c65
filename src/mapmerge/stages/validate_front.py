"""Stage validate_front (validation.enabled): K points of the predicted front, evaluated for real."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Unpack

from mapmerge.core import groups
from mapmerge.core.groundtruth import front_sample
from mapmerge.io import read_table, write_table
from mapmerge.stages.evaluation import EngineJob, run_evaluate_samples

PathLike = str | os.PathLike


def run_evaluate_front(
    params: Mapping[str, Any],
    *,
    front: PathLike,
    points: PathLike,
    **job: Unpack[EngineJob],
) -> None:
    """Evaluate for real `front_points` points spread along the group `all`'s predicted front (front.parquet).

    Writes the points (mapmerge.core.groundtruth.front_sample) and their per-example rows (sample, task, example, correct, loss).
    """
    chosen = front_sample(read_table(front), params["objective"], params["front_points"])
    members = groups.group_plan(job["plan"], groups.PLAIN_GROUP)["members"]
    coefficients = {row["sample"]: [float(row[f"c_{m}"]) for m in members] for _, row in chosen.iterrows()}
    run_evaluate_samples(params, group=groups.PLAIN_GROUP, coefficients=coefficients, stage="validate_front", **job)
    write_table(chosen, points, "validate_front", params, inputs=[front, job["plan"]])
