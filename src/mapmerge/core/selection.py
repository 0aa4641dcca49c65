"""Preference weights over tasks and the choice of one point from a Pareto front."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core import groups
from mapmerge.core.metrics import maximized

METHODS = ("weighted_sum", "tchebycheff", "balanced")
BALANCED_FLOOR = 0.1  # balanced needs a point whose every weighted gain reaches this, else weighted_sum decides
ABOVE_PRETRAINED = "weighted_sum_above_pretrained"  # balanced's fallback where some point gains on every weighted task
Reference = Mapping[str, tuple[float, float]]  # per task: (the pretrained model's, its fine-tuned model's) metric


class PreferenceError(ValueError):
    """A preference names an unknown task or gives an unusable weight."""


def _weight(task: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise PreferenceError(f"preference weight for task {task!r} must be a finite number >= 0; got {value!r}")
    return float(value)


def normalize_preference(preference: Mapping[str, float] | None, tasks: Sequence[str]) -> dict[str, float]:
    """Weights for every task in `tasks` order, summing to 1; None or empty means equal weights.

    Tasks the preference does not name get weight 0.
    """
    if not tasks:
        raise PreferenceError("no tasks to weigh")
    if not preference:
        return {task: 1.0 / len(tasks) for task in tasks}
    for task in preference:
        if task not in tasks:
            raise PreferenceError(f"preference names unknown task {task!r}; known: {', '.join(tasks)}")
    weights = {task: _weight(task, preference.get(task, 0.0)) for task in tasks}
    total = sum(weights.values())
    if total == 0:
        raise PreferenceError(f"preference weights are all zero: {dict(preference)}")
    return {task: w / total for task, w in weights.items()}


def _utility(F: np.ndarray, maximize: np.ndarray) -> np.ndarray:
    """Objectives rescaled over the front to [0, 1], 1 = best; a constant objective is 1 everywhere."""
    lo, hi = F.min(axis=0), F.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    u = np.where(maximize, F - lo, hi - F) / span
    return np.where(hi > lo, u, 1.0)


def point_scores(
    F: np.ndarray,
    weights: Sequence[float],
    maximize: Sequence[bool],
    method: str = "weighted_sum",
    rho: float = 0.05,
) -> np.ndarray:
    """How well each point F [m, k] matches the weights under `method`: higher is better.

    weighted_sum: sum_i w_i * (F_i if maximised else -F_i).
    tchebycheff: -(max_i w_i (1 - u_i) + rho * sum_i w_i (1 - u_i)), u the utility over the points.
    balanced: the same with u = F itself, F being gains (1 at the fine-tuned models; see pick_point).
    """
    F = np.asarray(F, dtype=float)
    w = np.asarray(weights, dtype=float)
    maximize = np.asarray(maximize, dtype=bool)
    if F.ndim != 2 or len(F) == 0 or F.shape[1] != len(w) or len(w) != len(maximize):
        raise ValueError(
            f"front of shape {F.shape} needs [m>0, k] with k = {len(w)} weights = {len(maximize)} maximize flags"
        )
    if not np.isfinite(F).all():
        raise ValueError("front has NaN or infinite objectives")
    if method == "weighted_sum":
        return (F * np.where(maximize, 1.0, -1.0)) @ w
    if method in ("tchebycheff", "balanced"):
        regret = w * (1.0 - (_utility(F, maximize) if method == "tchebycheff" else F))
        return -(regret.max(axis=1) + rho * regret.sum(axis=1))
    raise ValueError(f"unknown selection method {method!r}; known: {', '.join(METHODS)}")


def select_point(
    F: np.ndarray,
    weights: Sequence[float],
    maximize: Sequence[bool],
    method: str = "weighted_sum",
    rho: float = 0.05,
) -> int:
    """Index of the point of F [m, k] that best matches the weights (point_scores); ties go to the lowest index."""
    return int(np.argmax(point_scores(F, weights, maximize, method, rho)))


def reference_values(reference: pd.DataFrame, metric: str, tasks: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Per task, (the pretrained model's, the task's fine-tuned model's) real `metric`, from reference.parquet."""
    table = reference[reference["metric"] == metric].set_index(["model", "task"])["value"]
    return {t: (float(table[("pretrained", t)]), float(table[(t, t)])) for t in tasks}


def span(pretrained: float, finetuned: float, maximize: bool) -> float:
    """How much better the fine-tuned model scores than the pretrained one (either way of the metric; <= 0: no gain)."""
    return (finetuned - pretrained) if maximize else (pretrained - finetuned)


def gains(values: np.ndarray, pretrained: float, finetuned: float, maximize: bool) -> np.ndarray:
    """Normalised gains: 0 at the pretrained model's value, 1 at the fine-tuned model's (either way of the metric).

    Defined where the fine-tuned model is the better one; task_gains covers a task where it is not."""
    return (values - pretrained) * (1.0 if maximize else -1.0) / max(span(pretrained, finetuned, maximize), 1e-6)


def median_span(spans: Iterable[float]) -> float:
    """The median of the positive spans (1 where none is): the scale task_gains weighs a task without its own by."""
    gained = [s for s in spans if s > 0]
    return float(np.median(gained)) if gained else 1.0


# a fine-tune that gains less than this share of the tasks' median span is weighed (in part) as one that gains nothing
SMALL_GAIN = 0.1


def task_gains(values: Mapping[str, np.ndarray], reference: Reference, maximize: bool) -> dict[str, np.ndarray]:
    """Each task's values as gains (gains). A task whose fine-tuned model scores no better than the pretrained one
    has no span to divide by: its gain is 1 at the pretrained model's value (the best either model reaches) and moves
    by 1 per the median span of the tasks that have one (per 1 of the metric where none has), so a merge that keeps
    the task there gives nothing up and one that loses on it pays as on any task. A task whose span is positive but
    below SMALL_GAIN of that median moves between the two rules with its span (its gain is 1 at the fine-tuned
    model's value and moves by 1 per a step from the median at span 0 down to its span at SMALL_GAIN of it), so a
    tiny gain does not make each of its losses count a hundredfold."""
    sign = 1.0 if maximize else -1.0
    spans = {t: span(*reference[t], maximize) for t in values}
    scale = median_span(spans.values())
    result = {}
    for task, v in values.items():
        pretrained, finetuned = reference[task]
        s = spans[task]
        if s >= SMALL_GAIN * scale:
            result[task] = gains(v, pretrained, finetuned, maximize)
        else:
            best = finetuned if s > 0 else pretrained
            step = scale - (1 - SMALL_GAIN) * max(s, 0.0) / SMALL_GAIN
            result[task] = 1.0 + sign * (v - best) / step
    return result


def preference_scores(
    front: pd.DataFrame,
    info: Mapping[str, Any],
    preference: Mapping[str, float] | None,
    metric: str,
    method: str = "weighted_sum",
    rho: float = 0.05,
    reference: Reference | None = None,
    floor: float = BALANCED_FLOOR,
) -> tuple[np.ndarray, dict[str, float], str]:
    """Every point's score for a preference (point_scores, higher is better), the members' normalised weights, and
    the rule that scored them.

    A member's weight is the sum of the preference weights of the tasks inside it; its objective is
    their weighted mean of the points' `metric` (columns `<metric>_<task>`).
    balanced: each task's value as its normalised gain (task_gains, from `reference`) first, then the weighted
    Tchebycheff regret w_m (1 - gain_m) against gain 1, over the points whose every weighted member's gain is at
    `floor` (BALANCED_FLOOR; -inf never falls back) or more (the others score -inf): no weighted member is given up,
    however light its weight, while a point keeps every one at the floor. Where no point does, balancing would pick
    a merge barely past the pretrained model, so the weighted sum decides
    instead: rule ABOVE_PRETRAINED, the weighted sum over the points whose every weighted member's gain is above 0
    (the others score -inf), where some point has one; else rule weighted_sum, over every point (each gives some
    member up, and the least merge, the pretrained model at gain 0, would win balancing).
    """
    members, tasks = info["members"], info["tasks"]
    sides = groups.side_weights(info, groups.task_weights(preference, tasks))
    totals = {m: sum(side.values()) for m, side in zip(members, sides)}
    weights = normalize_preference(totals if any(totals.values()) else None, members)
    per_task = {t: front[f"{metric}_{t}"].to_numpy(dtype=float) for t in tasks}
    above = np.zeros(len(front), dtype=bool)
    if method == "balanced":
        if reference is None:
            raise ValueError("selection.method balanced needs the reference models' metrics (reference.parquet)")
        gain = task_gains(per_task, reference, maximized(metric))
        G = np.column_stack([groups.weighted_mean(gain, side) for side in sides])
        lowest = G[:, np.array(list(weights.values())) > 0].min(axis=1)
        if len(G) and lowest.max() >= floor:
            scores = point_scores(G, list(weights.values()), [True] * len(members), method, rho)
            return np.where(lowest >= floor, scores, -np.inf), weights, method
        method, above = "weighted_sum", lowest > 0
    F = np.column_stack([groups.weighted_mean(per_task, side) for side in sides])
    scores = point_scores(F, list(weights.values()), [maximized(metric)] * len(members), method, rho)
    if above.any():
        return np.where(above, scores, -np.inf), weights, ABOVE_PRETRAINED
    return scores, weights, method


def pick_point(
    front: pd.DataFrame,
    info: Mapping[str, Any],
    preference: Mapping[str, float] | None,
    metric: str,
    method: str = "weighted_sum",
    rho: float = 0.05,
    reference: Reference | None = None,
) -> tuple[int, dict[str, float], str]:
    """The point a preference picks (preference_scores' best; ties: the lowest index): (its row index in `front`,
    the members' normalised weights, the rule that picked it: `method` or balanced's fallback). What stage
    merge_group chooses, and `mapmerge select` for a new preference."""
    scores, weights, rule = preference_scores(front, info, preference, metric, method, rho, reference)
    return int(np.argmax(scores)), weights, rule


def measured_front(measured: pd.DataFrame, metric: str, tasks: Sequence[str]) -> pd.DataFrame:
    """The rows of real evaluations (one per sample, `<metric>_<task>` columns) that no other row dominates in `metric`."""
    from mapmerge.core import pareto  # deferred: pymoo and moocore, out of the Snakefile's imports (run.config)

    F = measured[[f"{metric}_{t}" for t in tasks]].to_numpy(dtype=float)
    return measured.iloc[pareto.non_dominated(F, [maximized(metric)] * len(tasks))].reset_index(drop=True)
