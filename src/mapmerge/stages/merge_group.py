"""Stage merge_group: the front point a preference picks, merged and written."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.adapters.transformers import merged_tensor_names, model_weights, save_merged_models
from mapmerge.core import groups
from mapmerge.core.groups import EngineFiles
from mapmerge.core.metrics import sample_metrics
from mapmerge.core.selection import Reference, measured_front, pick_point, preference_scores, reference_values
from mapmerge.core.surrogate import prediction_columns
from mapmerge.io import read_table, write_table
from mapmerge.tensors.checkpoints import hf_config, save_safetensors
from mapmerge.tensors.taskvectors import merge_files

PathLike = str | os.PathLike


def run_merge_group(
    params: Mapping[str, Any],
    *,
    pretrained: PathLike,
    vectors: Mapping[str, PathLike],
    checkpoints: Mapping[str, PathLike],
    plan: PathLike,
    front: PathLike,
    group: str,
    merged: PathLike,
    vector: PathLike,
    choice: PathLike,
    folders: PathLike,
    samples: PathLike | None = None,
    metrics: PathLike | None = None,
    surrogate: PathLike | None = None,
    reference: PathLike | None = None,
) -> None:
    """Pick the merge for the preference; write the merged checkpoint, its task vector and the choice.

    The pick: the predicted front's (front), or after refinement rounds (params `refined`) the best measured
    point (measured_choice: samples, metrics, surrogate); selection.method balanced also reads `reference`.
    A member's weight is the sum of the preference weights of the tasks inside it; its objective is
    their weighted mean. The task vector (merged - pretrained) is what a later nested level merges.
    Where the tasks' checkpoints are transformers directories (or LoRA adapters of a pretrained one), each task's
    merged model also goes to folders/<task>/ (mapmerge.adapters.transformers.save_merged_models).
    """
    info = groups.group_plan(plan, group)
    files = groups.group_files(
        {"pretrained": pretrained, "vectors": dict(vectors), "checkpoints": dict(checkpoints)}, info
    )
    points = read_table(front)
    members = info["members"]
    sel = params["selection"]
    inputs = [front, plan]
    ref = None
    if sel["method"] == "balanced":
        ref = reference_values(read_table(reference), params["objective"], info["tasks"])
        inputs.append(reference)
    rule = sel["method"]
    if params.get("refined"):
        row, weights = measured_choice(
            params, info, read_table(samples), read_table(metrics), read_table(surrogate), ref
        )
        inputs += [samples, metrics, surrogate]
    else:
        pref, metric = params["preference"], params["objective"]
        index, weights, rule = pick_point(points, info, pref, metric, sel["method"], sel["rho"], ref)
        row = points.iloc[[index]].reset_index(drop=True)
    for member, w in weights.items():
        row[f"weight_{member}"] = w
    c = [float(row[f"c_{m}"].iloc[0]) for m in members]
    operator = params.get("merge_operator") or {"operator": "task_arithmetic"}
    metadata = {
        "coefficients": json.dumps(dict(zip(members, c))),
        "operator": json.dumps(operator),
        "seed": json.dumps(params.get("merge_seed")),
    }  # what `mapmerge select` needs to merge again
    models = {t: model_weights(files["checkpoints"][t], files["pretrained"]) for t in info["tasks"]}
    for out, delta in ((merged, False), (vector, True)):  # one at a time: memory holds one model
        state = merge_files(files["pretrained"], files["vectors"], c, operator, params.get("merge_seed"), delta=delta)
        save_safetensors(state, out, metadata={"task": group, **metadata} if delta else metadata)
        if not delta and all(hf_config(m) for m in models.values()):  # transformers directories
            _save_transformers(state, files, models, Path(folders), metadata)
        del state
    extra = {"mapmerge.selection": json.dumps(dict(sel))}  # what `mapmerge select` applies by default
    if rule != sel["method"]:  # balanced's fallback picked the predicted merge (a measured choice: its `rule` column)
        extra["mapmerge.rule"] = rule
    write_table(row, choice, "merge_group", params, inputs=inputs, extra=extra)


def measured_choice(
    params: Mapping[str, Any],
    info: Mapping[str, Any],
    samples: pd.DataFrame,
    metrics: pd.DataFrame,
    surrogate: pd.DataFrame,
    reference: Reference | None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """After refinement rounds: the measured point the preference picks among the group's real evaluations (every
    round's pick among them), as one row: its sample, kind and round, `c_<member>`, the final surrogates'
    predictions `<metric>_<task>` there with their intervals (`_lo`, `_hi`), `source` ('measured'), and the last round's pick for comparison
    (`last_pick`, `last_pick_score`, `score`: the scores of `rule`, the selection rule applied, of the real values, higher is better;
    selection.preference_scores)."""
    metric, tasks, members = params["objective"], info["tasks"], info["members"]
    sel = params["selection"]
    measured = sample_metrics(samples, metrics)
    picks = measured[measured["kind"] == "pick"]
    candidates = measured_front(measured, metric, tasks)
    last = picks.loc[picks["round"].idxmax()] if len(picks) else None
    if last is not None and last["sample"] not in set(candidates["sample"]):  # dominated: scored all the same
        candidates = pd.concat([candidates, last.to_frame().T], ignore_index=True)
    pref = params["preference"]
    scores, weights, rule = preference_scores(candidates, info, pref, metric, sel["method"], sel["rho"], reference)
    index = int(np.argmax(scores))
    chosen = candidates.iloc[index]
    coef = chosen[[f"c_{m}" for m in members]].to_numpy(dtype=float)[None, :]
    predicted = prediction_columns(surrogate, coef, tasks, params["interval"])
    row = pd.concat([pd.DataFrame(coef, columns=[f"c_{m}" for m in members]), predicted], axis=1)
    row["source"] = "measured"
    row["sample"], row["kind"], row["round"] = str(chosen["sample"]), str(chosen["kind"]), int(chosen["round"])
    row["rule"] = rule  # balanced falls back to weighted_sum where every candidate gives a task up
    row["score"] = float(scores[index])
    last_index = index if last is None else int(np.flatnonzero(candidates["sample"] == last["sample"])[0])
    row["last_pick"] = str(candidates["sample"].iloc[last_index])
    row["last_pick_score"] = float(scores[last_index])
    return row, weights


def _save_transformers(
    state: Mapping[str, Any], files: EngineFiles, models: Mapping[str, Path], out: Path, metadata: Mapping[str, str]
) -> None:
    """The merge as one transformers directory per task (merged body, the task's head): out/<task>/.

    models: task -> its model weights (model_weights). The merged tensors: those any member's task vector holds.
    """
    names = merged_tensor_names(files["vectors"].values())
    save_merged_models(state, names, models, files["pretrained"], out, metadata)
