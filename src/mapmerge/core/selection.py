"""Preference weights over tasks and the choice of one point from a Pareto front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core import groups
from mapmerge.core.metrics import maximized

METHODS = ("weighted_sum", "tchebycheff")


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


def select_point(
    F: np.ndarray,
    weights: Sequence[float],
    maximize: Sequence[bool],
    method: str = "weighted_sum",
    rho: float = 0.05,
) -> int:
    """Index of the front point F [m, k] that best matches the weights; ties go to the lowest index.

    weighted_sum: maximise sum_i w_i * (F_i if maximised else -F_i).
    tchebycheff: minimise max_i w_i (1 - u_i) + rho * sum_i w_i (1 - u_i), u the utility over the front.
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
        return int(np.argmax((F * np.where(maximize, 1.0, -1.0)) @ w))
    if method == "tchebycheff":
        regret = w * (1.0 - _utility(F, maximize))
        return int(np.argmin(regret.max(axis=1) + rho * regret.sum(axis=1)))
    raise ValueError(f"unknown selection method {method!r}; known: {', '.join(METHODS)}")


def pick_point(
    front: pd.DataFrame,
    info: Mapping[str, Any],
    preference: Mapping[str, float] | None,
    metric: str,
    method: str = "weighted_sum",
    rho: float = 0.05,
) -> tuple[int, dict[str, float]]:
    """The front point a preference picks: (its row index in `front`, the members' normalised weights).

    A member's weight is the sum of the preference weights of the tasks inside it; its objective is
    their weighted mean of the front's predicted `metric` (columns `<metric>_<task>`). What stage
    merge_group chooses, and what `mapmerge select` chooses again for a new preference.
    """
    members = info["members"]
    sides = groups.side_weights(info, groups.task_weights(preference, info["tasks"]))
    per_task = {t: front[f"{metric}_{t}"].to_numpy() for t in info["tasks"]}
    F = np.column_stack([groups.weighted_mean(per_task, side) for side in sides])
    totals = {m: sum(side.values()) for m, side in zip(members, sides)}
    weights = normalize_preference(totals if any(totals.values()) else None, members)
    index = select_point(F, list(weights.values()), [maximized(metric)] * len(members), method, rho)
    return index, weights
