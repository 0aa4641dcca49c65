"""Groups of models that MAP merges, level by level.

Plain and Bayesian MAP: one level with one group, `all`, whose members are every task. Nested MAP:
at each level the models (fine-tuned ones at level 1, then the merges of the level before and any
model passed up) are paired, the two closest first (pairing `metric`: closest measured metric;
`cosine`: most similar task vectors); an odd model out passes to the next level. Each pair is a
2-member MAP problem. The shape of the tree (how many groups per level) depends only on the number
of tasks, so the workflow's jobs are known up front; which models a group holds is data, written
by the planning stage of its level.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.io import read_table

METHODS = ("map", "nested", "bayesian")
PAIRINGS = ("metric", "cosine")
PLAIN_GROUP = "all"
PLAN_COLUMNS = ["level", "group", "members", "member_tasks", "member_score", "tasks", "pairing"]
# The files a merge reads: pretrained (path), vectors (member -> task-vector path), checkpoints (task -> fine-tuned checkpoint path)
EngineFiles = Mapping[str, Any]


def structure(method: str, n_tasks: int) -> list[list[str]]:
    """Group names per level: [['all']] for plain and Bayesian MAP, pairs level by level for nested."""
    if method not in METHODS:
        raise ValueError(f"method: unknown method '{method}'; known: {', '.join(METHODS)}")
    if method != "nested":
        return [[PLAIN_GROUP]]
    if n_tasks < 2:
        raise ValueError(f"method: nested MAP needs at least 2 tasks, got {n_tasks}")
    levels, n = [], n_tasks
    while n > 1:
        level = len(levels) + 1
        levels.append([f"L{level}g{j}" for j in range(n // 2)])
        n = (n + 1) // 2
    return levels


def n_members(method: str, n_tasks: int) -> int:
    """Members (task vectors) of every group: all tasks, or 2 for nested MAP."""
    return 2 if method == "nested" else n_tasks


def candidates(tasks: Sequence[str], levels: Sequence[Sequence[str]], level: int) -> list[str]:
    """The models that may be members at `level` (1-based): every task and every group below it."""
    return [*tasks, *(g for names in levels[: level - 1] for g in names)]


def pair_greedily(models: Sequence[str], distance: np.ndarray) -> tuple[list[tuple[str, str]], list[str]]:
    """Pairs by increasing distance (ties: the earlier pair in model order); the rest passes up.

    Each pair keeps the models' input order; pairs come in the order they were formed.
    """
    left = list(range(len(models)))
    pairs = []
    while len(left) > 1:
        best = min(((distance[i, j], i, j) for a, i in enumerate(left) for j in left[a + 1 :]))
        _, i, j = best
        pairs.append((models[i], models[j]))
        left = [k for k in left if k not in (i, j)]
    return pairs, [models[k] for k in left]


def plain_plan(tasks: Sequence[str]) -> pd.DataFrame:
    """The single-group plan of plain and Bayesian MAP."""
    row = {
        "level": 1,
        "group": PLAIN_GROUP,
        "members": list(tasks),
        "member_tasks": [[t] for t in tasks],
        "member_score": [float("nan")] * len(tasks),
        "tasks": list(tasks),
        "pairing": "none",
    }
    return pd.DataFrame([row], columns=PLAN_COLUMNS)


def pair_plan(
    level: int,
    names: Sequence[str],
    models: Mapping[str, Sequence[str]],
    scores: Mapping[str, float],
    distance: np.ndarray,
    pairing: str,
) -> pd.DataFrame:
    """One nested level: groups `names` in order, each a pair of models; passed models as rows without a group.

    models: model -> the tasks inside it, in input order; scores: model -> its pairing metric;
    distance: [models x models] in the same order (|metric difference| or 1 - cosine).
    """
    order = list(models)
    pairs, passed = pair_greedily(order, distance)
    if len(pairs) != len(names):
        raise ValueError(f"level {level}: {len(order)} models make {len(pairs)} pairs, the plan expects {len(names)}")
    rows = []
    for group, members in [*zip(names, pairs), *((None, (m,)) for m in passed)]:
        member_tasks = [list(models[m]) for m in members]
        rows.append(
            {
                "level": level,
                "group": group,
                "members": list(members),
                "member_tasks": member_tasks,
                "member_score": [float(scores[m]) for m in members],
                "tasks": [t for ts in member_tasks for t in ts],
                "pairing": pairing,
            }
        )
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def metric_distance(scores: Sequence[float]) -> np.ndarray:
    """|s_i - s_j|: pairing by closest metric."""
    s = np.asarray(scores, dtype=float)
    return np.abs(s[:, None] - s[None, :])


def group_info(plan: pd.DataFrame, group: str) -> dict:
    """One group's row of a level plan, with plain lists."""
    rows = plan[plan["group"] == group]
    if rows.empty:
        raise KeyError(f"the plan of level {plan['level'].iloc[0]} has no group '{group}'")
    row = rows.iloc[0]
    return {
        "group": group,
        "level": int(row["level"]),
        "members": list(row["members"]),
        "member_tasks": [list(t) for t in row["member_tasks"]],
        "tasks": list(row["tasks"]),
    }


def group_plan(plan: str | os.PathLike, group: str) -> dict:
    """One group's members, the tasks inside each member, and all its tasks, from its level's plan file."""
    return group_info(read_table(plan), group)


def group_files(files: EngineFiles, info: Mapping[str, Any]) -> EngineFiles:
    """The engine files of one group (group_info), out of the candidates the workflow passes in."""
    return {
        "pretrained": files["pretrained"],
        "vectors": {m: files["vectors"][m] for m in info["members"]},
        "checkpoints": {t: files["checkpoints"][t] for t in info["tasks"]},
    }


def task_weights(preference: Mapping[str, float] | None, tasks: Sequence[str]) -> dict[str, float]:
    """Unnormalised preference weights of `tasks` (1 each when the preference is empty, else 0 if unnamed)."""
    return {t: float(preference.get(t, 0.0)) if preference else 1.0 for t in tasks}


def side_weights(info: Mapping, weights: Mapping[str, float]) -> list[dict[str, float]]:
    """Per member, its tasks' preference weights (the weights of `weights`, over all tasks)."""
    return [{t: float(weights[t]) for t in tasks} for tasks in info["member_tasks"]]


def weighted_mean(values: Mapping[str, np.ndarray] | Mapping[str, float], side: Mapping[str, float]):
    """Preference-weighted mean of per-task values over one side; equal weights where they sum to 0."""
    total = sum(side.values())
    w = {t: (v / total if total > 0 else 1.0 / len(side)) for t, v in side.items()}
    return sum(w[t] * values[t] for t in side)


def merge_score(
    measured: pd.Series, tasks: Sequence[str], metric: str, preference: Mapping[str, float] | None
) -> float:
    """A merged model's metric on its group: the preference-weighted mean of its tasks' measured `metric`.

    measured: the merge's real metrics indexed (metric, task) (mapmerge.core.metrics.measured_metrics).
    """
    return float(weighted_mean({t: measured[(metric, t)] for t in tasks}, task_weights(preference, tasks)))


def group_objectives(
    predict: Callable[[np.ndarray], np.ndarray], info: Mapping[str, Any], preference: Mapping[str, float] | None
) -> Callable[[np.ndarray], np.ndarray]:
    """C -> F [n, members]: per member, the preference-weighted mean of the predictions of its tasks.

    predict: C -> [n, tasks], one column per task of info['tasks'] (mapmerge.core.surrogate.objective_predictor).
    For plain MAP every member is one task, so F is the predictions themselves.
    """
    sides = side_weights(info, task_weights(preference, info["tasks"]))

    def objectives(C: np.ndarray) -> np.ndarray:
        F = predict(C)
        per_task = {t: F[:, i] for i, t in enumerate(info["tasks"])}
        return np.column_stack([weighted_mean(per_task, side) for side in sides])

    return objectives
