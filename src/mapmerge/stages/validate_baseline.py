"""Stage validate_baseline (validation.enabled): one baseline merge, evaluated for real."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Unpack

from mapmerge.core import groups
from mapmerge.stages.evaluation import EngineJob, run_evaluate_samples

PathLike = str | os.PathLike


def run_evaluate_baseline(
    params: Mapping[str, Any],
    *,
    baseline: str,
    **job: Unpack[EngineJob],
) -> None:
    """Evaluate one baseline (its name: `baseline`) for real: its operator (params['merge_operator']) at `coefficient` for every task."""
    members = groups.group_plan(job["plan"], groups.PLAIN_GROUP)["members"]
    c = {baseline: [float(params["coefficient"])] * len(members)}
    run_evaluate_samples(params, group=groups.PLAIN_GROUP, coefficients=c, stage="validate_baseline", **job)
