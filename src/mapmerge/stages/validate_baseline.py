"""Stage validate_baseline (validation.enabled): one baseline merge, evaluated for real."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mapmerge.core import groups
from mapmerge.core.groups import EngineFiles
from mapmerge.stages.evaluation import run_evaluate_samples

PathLike = str | os.PathLike


def run_evaluate_baseline(
    params: Mapping[str, Any],
    name: str,
    files: EngineFiles,
    plan: PathLike,
    out: PathLike,
    device: str = "auto",
    threads: int = 0,
) -> None:
    """Evaluate one baseline for real: its operator (params['merge_operator']) at `coefficient` for every task."""
    members = groups.group_plan(plan, groups.PLAIN_GROUP)["members"]
    c = {name: [float(params["coefficient"])] * len(members)}
    run_evaluate_samples(params, files, plan, groups.PLAIN_GROUP, c, out, device, threads, stage="validate_baseline")
