"""Stage fit_surrogate: the quadratic surrogate of every task and metric of one group."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mapmerge.core import refine
from mapmerge.core import surrogate as quadratic
from mapmerge.core.metrics import suffixes
from mapmerge.io import read_table, write_table

PathLike = str | os.PathLike
logger = logging.getLogger("mapmerge")


def run_fit_surrogate(
    params: Mapping[str, Any],
    *,
    samples: PathLike,
    metrics: PathLike,
    evals: Sequence[PathLike],
    surrogate: PathLike,
) -> None:
    """Fit the quadratic surrogate of every task and metric, with what its prediction intervals need and, once
    refinement rounds' evaluations are among the samples, its local correction (surrogate.parquet); with
    surrogate.scores, accuracy from the class scores of the evaluation batches `evals` (empty with `none`)."""
    sample_frame = read_table(samples)
    metric_frame = read_table(metrics)
    members = suffixes(sample_frame.columns, "c")
    cfg = params["surrogate"]
    try:
        table = quadratic.fit_table(
            sample_frame,
            metric_frame,
            members,
            cfg["links"],
            loo=cfg["loo"],
            missing=cfg["missing"],
            tasks=list(dict.fromkeys(metric_frame["task"])),
            bootstrap=quadratic.INTERVAL_BOOTSTRAP,  # the front's prediction intervals
            correct=refine.corrected(cfg["correction"], sample_frame),
            examples=pd.concat([read_table(p) for p in evals], ignore_index=True) if evals else None,
            scores=cfg["scores"],
        )
    except quadratic.SurrogateError as exc:
        raise quadratic.SurrogateError(f"{metrics}: {exc}") from exc
    for row in table[table["n_dropped"] > 0].itertuples():
        logger.warning(
            "task %s, metric %s: fitted without samples %s (surrogate.missing=drop)", row.task, row.metric, row.dropped
        )
    write_table(table, surrogate, "fit_surrogate", params, inputs=[samples, metrics, *evals])
