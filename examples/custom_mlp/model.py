"""A model defined outside mapmerge: a small MLP on 2-D points, and its per-task evaluator.

Every task labels the same point cloud (uniform in [-1, 1]^2, drawn from the seed) with stripes along
a different direction, so fine-tuning pulls the shared trunk in conflicting directions. The pretrained
model learns rings (labels periodic in the radius).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

# Fine-tuning tasks: name -> direction of the stripes in degrees.
TASKS: dict[str, float] = {"stripes_0": 0.0, "stripes_60": 60.0, "stripes_120": 120.0}
PRETRAIN_TASK = "rings"
FREQUENCY = 3.0  # sin() changes sign every pi/3 (about 1.05) along the stripe direction


def build(hidden: int = 32, n_classes: int = 2) -> nn.Module:
    """MLP on 2-D input: shared `trunk.*` (merged) and a task-specific linear `head`."""
    return nn.Sequential(
        OrderedDict(
            trunk=nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()),
            head=nn.Linear(hidden, n_classes),
        )
    )


def make_data(task: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 2) float32 and binary labels (n,) int64; the points depend on the seed only."""
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 2)).astype(np.float32)
    if task == PRETRAIN_TASK:
        phase = FREQUENCY * np.hypot(x[:, 0], x[:, 1])
    elif task in TASKS:
        angle = np.deg2rad(TASKS[task])
        phase = FREQUENCY * (x @ np.array([np.cos(angle), np.sin(angle)], dtype=np.float32))
    else:
        raise ValueError(f"unknown task '{task}'; known: {', '.join([PRETRAIN_TASK, *TASKS])}")
    return x, (np.sin(phase) > 0).astype(np.int64)


class TaskEvaluator:
    """Per-example accuracy and loss of a model on one task's evaluation points (drawn from `seed`)."""

    def __init__(self, task: str, n: int = 500, seed: int = 0) -> None:
        x, y = make_data(task, n, seed)
        self._data = torch.from_numpy(x), torch.from_numpy(y)
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, module: nn.Module, device: str | torch.device) -> pd.DataFrame:
        """One row per example: example (index), correct (bool), loss (float)."""
        key = str(torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = tuple(t.to(device) for t in self._data)
        x, y = self._on_device[key]
        with torch.inference_mode():
            logits = module(x).double()
            correct = (logits.argmax(1) == y).cpu().numpy()
            loss = F.cross_entropy(logits, y, reduction="none").cpu().numpy()
        return pd.DataFrame({"example": np.arange(len(y)), "correct": correct, "loss": loss})
