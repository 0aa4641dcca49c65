"""Stage validate_front (validation.enabled): K points of the predicted front, evaluated for real."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mapmerge.core import groups
from mapmerge.core.groundtruth import front_sample
from mapmerge.io import read_table, write_table
from mapmerge.stages.evaluation import run_evaluate_samples

PathLike = str | os.PathLike


def run_evaluate_front(
    params: Mapping[str, Any],
    *,
    pretrained: PathLike,
    vectors: Mapping[str, PathLike],
    checkpoints: Mapping[str, PathLike],
    plan: PathLike,
    front: PathLike,
    points: PathLike,
    examples: PathLike,
    device: str = "auto",
    threads: int = 0,
) -> None:
    """Evaluate for real `front_points` points spread along the group `all`'s predicted front (front.parquet).

    Writes the points (mapmerge.core.groundtruth.front_sample) and their per-example rows (sample, task, example, correct, loss).
    """
    chosen = front_sample(read_table(front), params["objective"], params["front_points"])
    members = groups.group_plan(plan, groups.PLAIN_GROUP)["members"]
    coefficients = {row["sample"]: [float(row[f"c_{m}"]) for m in members] for _, row in chosen.iterrows()}
    run_evaluate_samples(
        params,
        pretrained=pretrained,
        vectors=vectors,
        checkpoints=checkpoints,
        plan=plan,
        group=groups.PLAIN_GROUP,
        coefficients=coefficients,
        examples=examples,
        device=device,
        threads=threads,
        stage="validate_front",
    )
    write_table(chosen, points, "validate_front", params, inputs=[front, plan])
