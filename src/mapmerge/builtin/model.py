"""Built-in benchmark: a small CNN on scikit-learn's digits, fine-tuned on 8 conflicting derived tasks.

The pretrained model learns plain 10-way digits (or, with dataset "fashion", the 10 classes of an
8x8 Fashion-MNIST subset: mapmerge.builtin.fashion). Each task changes the images (rotation, inversion,
mirroring, shift, transposition, noise, occlusion) and/or the labels (parity, digit mod 3), so the
fine-tuned task vectors pull the shared backbone in different directions. Every task keeps a 10-way
head (a task with k < 10 classes uses labels 0..k-1), so all checkpoints share names and shapes.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mapmerge.builtin.digits import TASK_NAMES, check_dataset, check_task, task_arrays
from mapmerge.tensors.checkpoints import save_safetensors

DEFAULTS: dict[str, Any] = {
    "tasks": 4,
    "seed": 0,
    "width": 16,
    "pretrain_epochs": 20,
    "finetune_epochs": 10,
    "lr": 0.01,
    "batch_size": 128,
    "test_fraction": 0.3,
    "dataset": "digits",
    "subset": None,  # fashion: the number of images used (train + test)
    "data_dir": None,  # fashion: folder of the IDX files (None: Debian's dataset-fashion-mnist)
    "threads": 1,  # CPU threads for training: the checkpoints are byte-identical only for the same count
}
DATA_KEYS = ("dataset", "subset", "data_dir")  # the images, beyond seed and test_fraction


def build_model(width: int = 16, n_classes: int = 10) -> nn.Module:
    """Small CNN on 1x8x8 input: shared `features.*` and `body.*`, task-specific linear `head`."""
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
            ),
            body=nn.Sequential(nn.Linear(2 * width * 16, 4 * width), nn.ReLU()),
            head=nn.Linear(4 * width, n_classes),
        )
    )


def task_data(
    task: str, split: str = "test", seed: int = 0, test_fraction: float = 0.3, **source: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, 8, 8) float32 and labels (n,) int64 of a task's split, as tensors.

    source: dataset, subset, data_dir of mapmerge.builtin.digits.task_arrays (default: the digits).
    """
    x, y = task_arrays(task, split, seed, test_fraction, **source)
    return torch.tensor(x).unsqueeze(1), torch.tensor(y)


def _train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int, seed: int
) -> None:
    """Train all parameters with Adam on minibatches shuffled by a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()


@torch.inference_mode()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).double().mean())


def _resolve(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Config with defaults filled in and `tasks` expanded to a checked list of names."""
    resolved = {**DEFAULTS, **cfg}
    tasks = resolved["tasks"]
    if isinstance(tasks, int):
        if not 1 <= tasks <= len(TASK_NAMES):
            raise ValueError(f"tasks: {tasks} is not between 1 and {len(TASK_NAMES)}")
        tasks = TASK_NAMES[:tasks]
    resolved["tasks"] = [check_task(str(t)) for t in tasks]
    check_dataset(resolved["dataset"])
    return resolved


def _task_seed(seed: int, task: str) -> int:
    """Seed of a task's training run; independent of the task's position in the list."""
    return seed + zlib.crc32(task.encode())


def prepare_benchmark(cfg: Mapping[str, Any], out_dir: str | Path) -> pd.DataFrame:
    """Pretrain on the plain dataset, fine-tune a copy per task; save out_dir/{pretrained,<task>}.safetensors.

    cfg keys (defaults in DEFAULTS): tasks (names, or n for the first n of TASK_NAMES), seed, width,
    pretrain_epochs, finetune_epochs, lr, batch_size, test_fraction, dataset (digits | fashion),
    subset and data_dir (fashion), threads (torch's CPU threads while it trains, restored after: the same
    checkpoints whoever calls it). Returns one row per saved model:
    model, task (trained on), accuracy (test, on that task), seconds (training), file.
    """
    cfg = _resolve(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg["threads"]))
    try:
        return _prepare(cfg, out_dir)
    finally:
        torch.set_num_threads(threads)


def _prepare(cfg: Mapping[str, Any], out_dir: str | Path) -> pd.DataFrame:
    """prepare_benchmark with cfg resolved and torch's threads set."""
    seed, width = int(cfg["seed"]), int(cfg["width"])
    data = {"seed": seed, "test_fraction": float(cfg["test_fraction"]), **{k: cfg[k] for k in DATA_KEYS}}
    train = {"lr": float(cfg["lr"]), "batch_size": int(cfg["batch_size"])}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pretrained = build_model(width)
    runs = [("pretrained", cfg["dataset"], int(cfg["pretrain_epochs"]))]
    runs += [(task, task, int(cfg["finetune_epochs"])) for task in cfg["tasks"]]
    rows = []
    for name, task, epochs in runs:
        model = pretrained if name == "pretrained" else _clone(pretrained, width)
        start = time.perf_counter()
        _train(model, *task_data(task, "train", **data), epochs=epochs, seed=_task_seed(seed, task), **train)
        seconds = time.perf_counter() - start
        file = f"{name}.safetensors"
        # One metadata key only: safetensors writes several in random order, breaking byte-identity.
        save_safetensors(model.state_dict(), Path(out_dir) / file, metadata={"task": task})
        accuracy = _accuracy(model, *task_data(task, "test", **data))
        rows.append({"model": name, "task": task, "accuracy": accuracy, "seconds": seconds, "file": file})
    return pd.DataFrame(rows)


def _clone(model: nn.Module, width: int) -> nn.Module:
    clone = build_model(width)
    clone.load_state_dict(model.state_dict())
    return clone


class DigitsEvaluator:
    """Per-example evaluation of a model on one task's split (the same split as prepare_benchmark).

    dataset, subset, data_dir: the images, as in prepare_benchmark's config (default: the digits).
    """

    def __init__(
        self,
        task: str,
        seed: int = 0,
        test_fraction: float = 0.3,
        batch_size: int = 1024,
        split: str = "test",
        dataset: str = "digits",
        subset: int | None = None,
        data_dir: str | None = None,
    ):
        self.task = task
        self.batch_size = batch_size
        self._data = task_data(task, split, seed, test_fraction, dataset=dataset, subset=subset, data_dir=data_dir)
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tensors(self, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(torch.device(device))
        if key not in self._on_device:
            x, y = self._data
            self._on_device[key] = (x.to(device), y.to(device))
        return self._on_device[key]

    def __call__(self, module: nn.Module, device: str | torch.device) -> pd.DataFrame:
        """One row per example: example (int64 index into the split), correct (bool), loss (float64), scores (the
        10 logits, float64) and target (the label)."""
        x, y = self._tensors(device)
        scores = []
        with torch.inference_mode():
            for xb in x.split(self.batch_size):
                scores.append(module(xb).double().cpu())
        logits, labels = torch.cat(scores), y.cpu()
        return pd.DataFrame(
            {
                "example": np.arange(len(y), dtype=np.int64),
                "correct": (logits.argmax(1) == labels).numpy(),
                "loss": F.cross_entropy(logits, labels, reduction="none").numpy(),
                "scores": list(logits.numpy()),
                "target": labels.numpy(),
            }
        )
