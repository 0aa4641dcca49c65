"""Stage refine_round: a refinement round's samples, the pick and points of the front predicted so far."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core import groups, pareto, refine
from mapmerge.core import surrogate as quadratic
from mapmerge.core.metrics import maximized, sample_metrics
from mapmerge.core.selection import Reference, measured_front, pick_point, preference_scores, reference_values
from mapmerge.io import read_table, write_table
from mapmerge.stages.collect import evaluated
from mapmerge.stages.pareto_front import predicted_front

PathLike = str | os.PathLike
logger = logging.getLogger("mapmerge")


def run_refine_round(
    params: Mapping[str, Any],
    *,
    round: int | str,
    rounds: Sequence[PathLike],
    evals: Sequence[PathLike],
    plan: PathLike,
    reference: PathLike,
    group: str,
    samples: PathLike,
) -> None:
    """Round `round`'s samples (rounds/r<NN>.parquet): fit the surrogates on every earlier round's real
    evaluations (with the local correction once a refinement round is among them), predict the front, and take
    the pick for the preference and refine.points points in refine.order (refine.round_points: `cover`, those that
    best cover, with the measured front, the predicted non-dominated merges of a dense sample of the box; `gap`,
    the predicted front's points farthest from the measured front; kind `pick`, `front`; `extend` beside a pick on
    the upper bound when refine.extend > 0). With refine.trust_radius the pick is taken beside the best merge
    measured so far (_trusted_pick) instead of anywhere on the predicted front. With selection.method balanced the
    first front point is the predicted front's most balanced one (the rule without its weighted_sum fallback), so
    the measured front tells whether some merge keeps every task."""
    rnd = int(round)
    info = groups.group_plan(plan, group)
    members = info["members"]
    earlier, examples, metrics = evaluated(rounds, evals)
    cfg = params["surrogate"]
    table = quadratic.fit_table(
        earlier,
        metrics,
        members,
        cfg["links"],
        loo=False,
        missing=cfg["missing"],
        tasks=info["tasks"],
        correct=refine.corrected(cfg["correction"], earlier),
        examples=examples,
        scores=cfg["scores"],
    )
    coef = earlier[[f"c_{m}" for m in members]].to_numpy()
    front = predicted_front(params, table, coef, info)
    metric = params["optimizer"]["objective"]
    sel, settings = params["selection"], params["refine"]
    ref = reference_values(read_table(reference), metric, info["tasks"]) if sel["method"] == "balanced" else None
    lower, upper = coef.min(axis=0), coef.max(axis=0)
    measured = measured_front(sample_metrics(earlier, metrics), metric, info["tasks"])
    predict = quadratic.objective_predictor(table, metric, info["tasks"])
    if settings["trust_radius"] is None:
        pick, _, _ = pick_point(front, info, params["preference"], metric, sel["method"], sel["rho"], ref)
    else:  # the pick beside the best merge measured so far
        beside = _trusted_pick(params, predict, measured, info, ref, lower, upper, rnd)
        front, pick = pd.concat([front, beside], ignore_index=True), len(front)
    picks = [pick]
    if sel["method"] == "balanced":  # the most balanced predicted point, measured: whether the rule must fall back
        scores, _, _ = preference_scores(
            front, info, params["preference"], metric, "balanced", sel["rho"], ref, -np.inf
        )
        picks.append(int(np.argmax(scores)))
    k = refine.front_points(settings, len(members))
    columns = [f"{metric}_{t}" for t in info["tasks"]]
    objectives = front[columns].to_numpy()
    reached = measured[columns].to_numpy()
    C_front = front[[f"c_{m}" for m in members]].to_numpy()
    order, box = settings["order"], None
    if order == "cover":
        maximize = [maximized(metric)] * len(info["tasks"])
        box = pareto.sample_front(predict, lower, upper, maximize, refine.BOX_POINTS, params["seed"])
    points, kinds = refine.round_points(
        C_front, objectives, picks, k, coef, reached, lower, upper, order=order, box=box
    )
    if settings["extend"] > 0:
        wide = refine.extended_points(C_front[pick], lower, upper, settings["extend"], settings["limit"], coef)
        points, kinds = np.vstack([points, wide]), kinds + ["extend"] * len(wide)
    frame = pd.DataFrame(points, columns=[f"c_{m}" for m in members])
    frame.insert(0, "kind", kinds)
    frame.insert(0, "sample", [f"r{rnd:02d}s{i:04d}" for i in range(len(frame))])
    logger.info(
        "round %d: %d points (pick at %s) from a front of %d fitted on %d samples",
        rnd,
        len(frame),
        ", ".join(f"{m}={v:.3f}" for m, v in zip(members, C_front[pick])),
        len(front),
        len(earlier),
    )
    write_table(frame.assign(round=rnd), samples, "refine_round", params, inputs=[*rounds, *evals, plan, reference])


def _trusted_pick(
    params: Mapping[str, Any],
    predict: Callable[[np.ndarray], np.ndarray],
    measured: pd.DataFrame,
    info: Mapping[str, Any],
    ref: Reference | None,
    lower: np.ndarray,
    upper: np.ndarray,
    rnd: int,
) -> pd.DataFrame:
    """refine.trust_radius's pick, one row of coefficients and predicted `<metric>_<task>` values: of
    refine.trust_region's candidates around the point of `measured` (the measured front: the non-dominated real
    evaluations) the preference scores best, the one it scores best by `predict` (the surrogates' objectives)."""
    members, tasks = info["members"], info["tasks"]
    metric, sel, preference = params["optimizer"]["objective"], params["selection"], params["preference"]
    coefficients = [f"c_{m}" for m in members]
    center, _, _ = pick_point(measured, info, preference, metric, sel["method"], sel["rho"], ref)
    radius = params["refine"]["trust_radius"]
    C = refine.trust_region(measured[coefficients].iloc[center], lower, upper, radius, (params["seed"], rnd))
    F = predict(C)
    candidates = pd.DataFrame(C, columns=coefficients).assign(**{f"{metric}_{t}": F[:, i] for i, t in enumerate(tasks)})
    index, _, _ = pick_point(candidates, info, preference, metric, sel["method"], sel["rho"], ref)
    return candidates.iloc[[index]]
