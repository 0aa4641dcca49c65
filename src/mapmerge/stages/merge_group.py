"""Stage merge_group: the front point a preference picks, merged and written."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mapmerge.adapters.transformers import save_merged_models
from mapmerge.core import groups
from mapmerge.core.groups import EngineFiles
from mapmerge.core.selection import pick_point
from mapmerge.io import read_table, write_table
from mapmerge.tensors.checkpoints import hf_config, open_checkpoint, save_safetensors
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
) -> None:
    """Pick the front point for the preference; write the merged checkpoint, its task vector and the choice.

    A member's weight is the sum of the preference weights of the tasks inside it; its objective is
    their weighted mean. The task vector (merged - pretrained) is what a later nested level merges.
    Where the tasks' checkpoints are transformers directories, each task's merged model also goes to
    folders/<task>/ (mapmerge.adapters.transformers.save_merged_models).
    """
    info = groups.group_plan(plan, group)
    files = groups.group_files(
        {"pretrained": pretrained, "vectors": dict(vectors), "checkpoints": dict(checkpoints)}, info
    )
    points = read_table(front)
    members = info["members"]
    sel = params["selection"]
    index, weights = pick_point(points, info, params["preference"], params["objective"], sel["method"], sel["rho"])
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
    for out, delta in ((merged, False), (vector, True)):  # one at a time: memory holds one model
        state = merge_files(files["pretrained"], files["vectors"], c, operator, params.get("merge_seed"), delta=delta)
        save_safetensors(state, out, metadata={"task": group, **metadata} if delta else metadata)
        if not delta and all(hf_config(files["checkpoints"][t]) for t in info["tasks"]):  # transformers directories
            _save_transformers(state, files, info["tasks"], Path(folders), metadata)
        del state
    write_table(row, choice, "merge_group", params, inputs=[front, plan])


def _save_transformers(
    state: Mapping[str, Any], files: EngineFiles, tasks: Sequence[str], out: Path, metadata: Mapping[str, str]
) -> None:
    """The merge as one transformers directory per task (merged body, the task's head): out/<task>/."""
    with open_checkpoint(next(iter(files["vectors"].values()))) as reader:
        names = reader.keys()
    save_merged_models(state, names, {t: files["checkpoints"][t] for t in tasks}, files["pretrained"], out, metadata)
