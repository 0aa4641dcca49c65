"""The real evaluations of merged models: stage `evaluate` (rules evaluate_reference, evaluate_sample,
evaluate_round, evaluate_selected and validate_grid; validation's front and baselines evaluate through
run_evaluate_samples too).

Every entry point takes the engine's files by name: `pretrained` (a checkpoint), `vectors` (model ->
task vector: the candidate members) and `checkpoints` (task -> fine-tuned checkpoint, for its head).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict, Unpack

import numpy as np
import pandas as pd
import torch

from mapmerge.core import groups
from mapmerge.core.groups import EngineFiles
from mapmerge.core.metrics import metrics_from_examples
from mapmerge.io import read_table, write_table
from mapmerge.progress import progress
from mapmerge.tensors.engine import MergeEngine, failure_rows

PathLike = str | os.PathLike
logger = logging.getLogger("mapmerge")


class EngineJob(TypedDict):
    """What every evaluation of a group's samples takes by name besides its coefficients (see run_evaluate_samples)."""

    pretrained: PathLike
    vectors: Mapping[str, PathLike]
    checkpoints: Mapping[str, PathLike]
    plan: PathLike
    examples: PathLike
    device: NotRequired[str]
    threads: NotRequired[int]


def _engine(params: Mapping[str, Any], files: EngineFiles, device: str, threads: int) -> MergeEngine:
    """The engine of an evaluation stage's params; it keeps the class scores as their `scores` says (default none)."""
    if threads > 0:
        torch.set_num_threads(threads)
    model = params["model"]
    return MergeEngine(
        builder=model["builder"],
        pretrained=files["pretrained"],
        vectors=files["vectors"],
        task_checkpoints=files["checkpoints"],
        evaluators=model["evaluators"],
        merge=model["merge"],
        device=device,
        python_path=model["python_path"],
        operator=params.get("merge_operator"),
        seed=params.get("merge_seed"),
        dtype=model["dtype"],
        placement=model["placement"],
        scores=params.get("scores", "none"),
    )


def _engine_inputs(files: EngineFiles) -> list[PathLike]:
    return [files["pretrained"], *files["vectors"].values(), *files["checkpoints"].values()]


def _files(pretrained: PathLike, vectors: Mapping[str, PathLike], checkpoints: Mapping[str, PathLike]) -> EngineFiles:
    return {"pretrained": pretrained, "vectors": dict(vectors), "checkpoints": dict(checkpoints)}


def run_evaluate_reference(
    params: Mapping[str, Any],
    *,
    pretrained: PathLike,
    vectors: Mapping[str, PathLike],
    checkpoints: Mapping[str, PathLike],
    metrics: PathLike,
    examples: PathLike,
    device: str = "auto",
    threads: int = 0,
) -> None:
    """Evaluate the pretrained model and every fine-tuned model on every task: reference.parquet (metrics) and
    reference_examples.parquet (per-example rows).

    The merge operator is not applied: these are the real fine-tuned models, theta_pre + tau_i.
    """
    files = _files(pretrained, vectors, checkpoints)
    engine = _engine({**params, "merge_operator": None}, files, device, threads)
    models = {"pretrained": np.zeros(len(engine.members))}
    models.update({m: np.eye(len(engine.members))[i] for i, m in enumerate(engine.members)})
    rows = pd.concat(
        [
            engine.evaluate(c, sample=name)
            for name, c in progress(models.items(), desc="evaluate reference", total=len(models), unit="model")
        ],
        ignore_index=True,
    )
    inputs = _engine_inputs(files)
    table = metrics_from_examples(rows).rename(columns={"sample": "model"})
    write_table(rows.rename(columns={"sample": "model"}), examples, "evaluate_reference", params, inputs)
    write_table(table, metrics, "evaluate_reference", params, inputs)


def run_evaluate_samples(
    params: Mapping[str, Any],
    *,
    pretrained: PathLike,
    vectors: Mapping[str, PathLike],
    checkpoints: Mapping[str, PathLike],
    plan: PathLike,
    group: str,
    coefficients: Mapping[str, Sequence[float]],
    examples: PathLike,
    device: str = "auto",
    threads: int = 0,
    on_error: str = "fail",
    stage: str = "evaluate_sample",
) -> None:
    """Evaluate the merges of several samples (sample -> coefficients) of one group with one engine, into one
    per-example table.

    vectors holds the candidate members; the group's members and tasks come from its level's plan.
    on_error='record' keeps failed (sample, task) evaluations as rows with an `error` (see MergeEngine.evaluate).
    """
    files = groups.group_files(_files(pretrained, vectors, checkpoints), groups.group_plan(plan, group))
    if not coefficients:  # the last batches of a refinement round that skipped points already evaluated
        empty = failure_rows("", "", "").iloc[:0]
        write_table(empty, examples, stage, {**params, "c": {}}, [plan, *_engine_inputs(files)])
        return
    engine = _engine(params, files, device, threads)
    out = Path(examples)
    samples = progress(
        coefficients.items(),
        desc=f"evaluate {out.parent.parent.name}/{out.stem}",
        total=len(coefficients),
        unit="sample",
    )
    rows = pd.concat([engine.evaluate(c, sample=s, on_error=on_error) for s, c in samples], ignore_index=True)
    failed = rows.dropna(subset=["error"])
    if len(failed):
        logger.warning(
            "%d of %d evaluations failed and were recorded in %s",
            len(failed),
            len(coefficients) * len(engine.tasks),
            examples,
        )
    write_table(rows, examples, stage, {**params, "c": dict(coefficients)}, [plan, *_engine_inputs(files)])


def run_evaluate_round(
    params: Mapping[str, Any],
    *,
    samples: PathLike,
    group: str,
    index: int | str,
    size: int,
    on_error: str = "fail",
    **job: Unpack[EngineJob],
) -> None:
    """Bayesian MAP: evaluate batch `index` (of `size` samples) of one round's proposed samples (its rounds/r<NN>.parquet)."""
    start = int(index) * size
    frame = read_table(samples).iloc[start : start + size]
    columns = [c for c in frame.columns if c.startswith("c_")]
    coefficients = {row["sample"]: [float(row[c]) for c in columns] for _, row in frame.iterrows()}
    run_evaluate_samples(
        params, group=group, coefficients=coefficients, on_error=on_error, stage="evaluate_round", **job
    )


def run_evaluate_selected(params: Mapping[str, Any], *, choice: PathLike, group: str, **job: Unpack[EngineJob]) -> None:
    """Evaluate the chosen merge (choice.parquet) for real on every task of its group (per-example rows)."""
    frame = read_table(choice)
    members = groups.group_plan(job["plan"], group)["members"]
    c = {"selected": [float(frame[f"c_{m}"].iloc[0]) for m in members]}
    run_evaluate_samples(params, group=group, coefficients=c, stage="evaluate_selected", **job)
