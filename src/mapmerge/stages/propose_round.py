"""Stage propose_round (Bayesian MAP): the next round's samples."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core import bayesian
from mapmerge.core.metrics import suffixes
from mapmerge.io import write_table
from mapmerge.stages.collect import evaluated

PathLike = str | os.PathLike
logger = logging.getLogger("mapmerge")


def run_propose_round(
    params: Mapping[str, Any],
    *,
    round: int | str,
    rounds: Sequence[PathLike],
    evals: Sequence[PathLike],
    samples: PathLike,
) -> None:
    """Bayesian MAP: round `round`'s samples (rounds/r<NN>.parquet), drawn where the surrogates' out-of-sample error
    is worst over the earlier rounds (their sample tables `rounds` and evaluation batches `evals`)."""
    rnd = int(round)
    earlier, _, metrics = evaluated(rounds, evals)
    members = suffixes(earlier.columns, "c")
    errors = bayesian.sample_errors(earlier, metrics, members, params["surrogate"], params["objective"])
    cfg = bayesian.with_bins(params["bayesian"], len(earlier), len(members))
    sampler = params["sampler"]
    lower, upper = np.full(len(members), float(sampler["lower"])), np.full(len(members), float(sampler["upper"]))
    C = earlier[[f"c_{m}" for m in members]].to_numpy()
    n_new = bayesian.round_size(cfg, len(members))
    points = bayesian.propose(
        C, errors.reindex(earlier["sample"]).to_numpy(), n_new, lower, upper, cfg, params["seed"] + rnd
    )
    frame = pd.DataFrame(points, columns=[f"c_{m}" for m in members])
    frame.insert(0, "kind", "bayesian")
    frame.insert(0, "sample", [f"r{rnd:02d}s{i:04d}" for i in range(n_new)])
    logger.info("round %d: mean out-of-sample error %.4f over %d samples", rnd, float(np.nanmean(errors)), len(earlier))
    write_table(frame.assign(round=rnd), samples, "propose_round", params, inputs=[*rounds, *evals])
