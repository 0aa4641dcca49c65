"""Whether this machine has the torch device an evaluation asks for (`evaluation.device`: auto, cpu, cuda or
cuda:N): checked by the driver before the first job (mapmerge.run.preflight.check_device) and by each evaluation
job (mapmerge.tensors.engine.pick_device), in the same words. Imports torch only."""

from __future__ import annotations

import torch


def device_problem(requested: str) -> str | None:
    """Why this machine cannot run on an explicit CUDA device (one line naming it and what the machine has), or None.

    `auto`, `cpu` and a CUDA device this machine has are fine.
    """
    if not requested.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        build = "" if torch.version.cuda else f" (torch {torch.__version__} is a CPU-only build)"
        return f"evaluation.device: '{requested}' asked for, but this machine has no CUDA device{build}"
    index, count = torch.device(requested).index, torch.cuda.device_count()
    if index is not None and index >= count:
        return (
            f"evaluation.device: '{requested}' asked for, but this machine has {count} CUDA device(s): "
            f"cuda:0 .. cuda:{count - 1}"
        )
    return None
