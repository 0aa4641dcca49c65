"""Stage plan_level: the groups of one level."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from mapmerge.core import groups
from mapmerge.core.metrics import measured_metrics
from mapmerge.io import read_table, write_table

PathLike = str | os.PathLike


def run_plan_level(
    params: Mapping[str, Any],
    *,
    level: int | str,
    plan: PathLike,
    reference: PathLike | None = None,
    previous: PathLike | None = None,
    selected: Mapping[str, PathLike] | None = None,
    vectors: Mapping[str, PathLike] | None = None,
) -> None:
    """The groups of one level (levels/level<k>.parquet, `plan`): every task for plain and Bayesian MAP; pairs for nested MAP.

    Nested, level 1 pairs the fine-tuned models by their metric on their own task (reference);
    a later level pairs the merges of the level before (their measured, preference-weighted metric,
    from `selected`: group -> selected_evals) with the models passed up from it (previous plan).
    With pairing 'cosine' the models' task vectors (`vectors`: model -> file) decide instead.
    """
    level = int(level)
    tasks = params["tasks"]
    if params["method"] != "nested":
        write_table(groups.plain_plan(tasks), plan, "plan_level", params)
        return
    metric, nested = params["objective"], params["nested"]
    if level == 1:
        ref = read_table(reference).set_index(["model", "task", "metric"])["value"]
        models = {t: [t] for t in tasks}
        scores = {t: float(ref[(t, t, metric)]) for t in tasks}
        inputs = [reference]
    else:
        below = read_table(previous)
        models, scores = {}, {}
        for row in below.itertuples():
            tasks_in = [t for ts in row.member_tasks for t in ts]
            if pd.isna(row.group):  # passed up unchanged
                models[row.members[0]], scores[row.members[0]] = tasks_in, float(row.member_score[0])
                continue
            models[row.group] = tasks_in
            scores[row.group] = groups.merge_score(
                measured_metrics(selected[row.group]), tasks_in, metric, params["preference"]
            )
        inputs = [previous, *selected.values()]
    if nested["pairing"] == "cosine":
        from mapmerge.tensors.taskvectors import (  # deferred: torch, for nested.pairing=cosine only
            cosine_matrix,
            gram_matrix,
        )

        gram, _ = gram_matrix({m: vectors[m] for m in models})
        distance = 1.0 - cosine_matrix(gram).numpy()
        inputs += [vectors[m] for m in models]
    else:
        distance = groups.metric_distance([scores[m] for m in models])
    frame = groups.pair_plan(level, params["groups"], models, scores, distance, nested["pairing"])
    write_table(frame, plan, "plan_level", params, inputs=inputs)
