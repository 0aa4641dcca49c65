"""Stage fit_surrogate: the quadratic surrogate of every task and metric of one group."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from mapmerge.core.metrics import suffixes
from mapmerge.io import read_table, write_table

PathLike = str | os.PathLike
logger = logging.getLogger("mapmerge")


def run_fit_surrogate(params: Mapping[str, Any], samples: PathLike, metrics: PathLike, out: PathLike) -> None:
    """Fit the quadratic surrogate of every task and metric."""
    from mapmerge.core import surrogate  # deferred: the rules import stage modules at every Snakefile parse

    sample_frame = read_table(samples)
    metric_frame = read_table(metrics)
    members = suffixes(sample_frame.columns, "c")
    cfg = params["surrogate"]
    try:
        table = surrogate.fit_table(
            sample_frame, metric_frame, members, cfg["links"], loo=cfg["loo"], missing=cfg["missing"],
            tasks=list(dict.fromkeys(metric_frame["task"])),
        )
    except surrogate.SurrogateError as exc:
        raise surrogate.SurrogateError(f"{metrics}: {exc}") from exc
    for row in table[table["n_dropped"] > 0].itertuples():
        logger.warning("task %s, metric %s: fitted without samples %s (surrogate.missing=drop)", row.task, row.metric, row.dropped)
    write_table(table, out, "fit_surrogate", params, inputs=[samples, metrics])
