"""Stages extract_task_vector and task_vector_table."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mapmerge.io import write_table

PathLike = str | os.PathLike


def run_extract_task_vector(params: Mapping[str, Any], task: str, pretrained: PathLike, finetuned: PathLike, out: PathLike) -> None:
    """tau_task = finetuned - pretrained over the merged tensors, stored in model.merge.vector_dtype."""
    from mapmerge.tensors.taskvectors import extract_task_vector  # deferred: the rules import stage modules at every Snakefile parse

    merge = params["merge"]
    extract_task_vector(pretrained, finetuned, merge["include"], merge["exclude"], out, task, merge.get("vector_dtype", "float32"))


def run_task_vector_table(vectors: Mapping[str, PathLike], out: PathLike) -> None:
    """Norms and pairwise cosine similarities of the task vectors."""
    from mapmerge.tensors.taskvectors import task_vector_table  # deferred: the rules import stage modules at every Snakefile parse

    write_table(task_vector_table(vectors), out, "task_vectors", inputs=vectors.values())
