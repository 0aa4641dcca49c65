"""Stages extract_task_vector and task_vector_table."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mapmerge.io import write_table
from mapmerge.tensors.taskvectors import extract_task_vector, task_vector_table

PathLike = str | os.PathLike


def run_extract_task_vector(
    params: Mapping[str, Any], *, task: str, pretrained: PathLike, finetuned: PathLike, vector: PathLike
) -> None:
    """tau_task = finetuned - pretrained over the merged tensors, stored in model.merge.vector_dtype (`vector`)."""
    merge = params["merge"]
    extract_task_vector(
        pretrained, finetuned, merge["include"], merge["exclude"], vector, task, merge.get("vector_dtype", "float32")
    )


def run_task_vector_table(params: Mapping[str, Any], *, vectors: Mapping[str, PathLike], table: PathLike) -> None:
    """Norms and pairwise cosine similarities of the task vectors (task -> file)."""
    write_table(task_vector_table(vectors), table, "task_vectors", inputs=vectors.values())
