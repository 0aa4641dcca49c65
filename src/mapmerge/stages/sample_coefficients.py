"""Stage sample_coefficients: the designed coefficient vectors of one group (round 0)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mapmerge.core import groups, sampling
from mapmerge.io import write_table

PathLike = str | os.PathLike


def run_sample_coefficients(params: Mapping[str, Any], *, plan: PathLike, group: str, samples: PathLike) -> None:
    """The designed coefficient vectors of one group (round 0: rounds/r00.parquet, `samples`)."""
    members = groups.group_plan(plan, group)["members"]
    frame = sampling.design(members, params["sampler"], params["seed"]).assign(round=0)
    write_table(frame, samples, "sample_coefficients", params, inputs=[plan])
