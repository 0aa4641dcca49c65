"""Stage validate_baseline (validation.enabled): one baseline merge, evaluated for real."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mapmerge.core import groups
from mapmerge.stages.evaluation import run_evaluate_samples

PathLike = str | os.PathLike


def run_evaluate_baseline(
    params: Mapping[str, Any],
    *,
    pretrained: PathLike,
    vectors: Mapping[str, PathLike],
    checkpoints: Mapping[str, PathLike],
    plan: PathLike,
    baseline: str,
    examples: PathLike,
    device: str = "auto",
    threads: int = 0,
) -> None:
    """Evaluate one baseline (its name: `baseline`) for real: its operator (params['merge_operator']) at `coefficient` for every task."""
    members = groups.group_plan(plan, groups.PLAIN_GROUP)["members"]
    c = {baseline: [float(params["coefficient"])] * len(members)}
    run_evaluate_samples(
        params,
        pretrained=pretrained,
        vectors=vectors,
        checkpoints=checkpoints,
        plan=plan,
        group=groups.PLAIN_GROUP,
        coefficients=c,
        examples=examples,
        device=device,
        threads=threads,
        stage="validate_baseline",
    )
