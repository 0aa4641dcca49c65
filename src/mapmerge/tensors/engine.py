"""Evaluation engine: merged models theta_pre + sum_i c_i tau_i, evaluated on every task.

The pretrained weights and the task vectors are loaded once per engine and kept on the device as
one flat vector and one [members x parameters] matrix; the module's merged parameters are views
into a flat buffer, so a merge is a single fused multiply-add and no model is copied per sample.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

from mapmerge.io import ArtifactError
from mapmerge.tensors.checkpoints import (
    load_state_dict,
    open_checkpoint,
    release_freed_memory,
)
from mapmerge.tensors.operators import apply_operator
from mapmerge.tensors.taskvectors import merged_names

Evaluator = Callable[[torch.nn.Module, torch.device], pd.DataFrame]
FAILED_EXAMPLE = -1  # `example` of the one row that records a failed (sample, task)
logger = logging.getLogger("mapmerge")


class EvaluationError(RuntimeError):
    """An evaluator failed or returned unusable rows; the message names the sample and task."""


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when available for 'auto', else CPU; an explicit device must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"evaluation.device: '{requested}' asked for but CUDA is not available")
    return device


def build_module(builder: Mapping[str, Any], python_path: Sequence[str] = ()) -> torch.nn.Module:
    """Instantiate the model builder config (Hydra `_target_`) into a torch module."""
    for folder in python_path:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = instantiate(dict(builder))
    except Exception as exc:
        detail = " ".join(str(exc).split())  # one line: Hydra's messages span several
        raise EvaluationError(f"model.builder: {builder.get('_target_')} failed: {detail}") from exc
    if not isinstance(module, torch.nn.Module):
        raise EvaluationError(
            f"model.builder: {builder.get('_target_')} returned {type(module).__name__}, not a torch.nn.Module"
        )
    return module


def _rebind(module: torch.nn.Module, name: str, view: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf].data = view
    elif leaf in owner._buffers:
        owner._buffers[leaf] = view
    else:
        raise ArtifactError(f"task vector tensor '{name}' is not a parameter or buffer of the model")


def _attached(owner: torch.nn.Module, leaf: str) -> torch.Tensor | None:
    """The parameter or buffer `leaf` the module holds now."""
    return owner._parameters[leaf] if leaf in owner._parameters else owner._buffers.get(leaf)


def _load_pretrained(
    module: torch.nn.Module, pre: dict[str, torch.Tensor], path: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """Load theta_pre into the built module; the tensors loaded.

    Strict, except that a tensor the checkpoint holds for a non-persistent buffer of the module is
    left out (older transformers saved e.g. position_ids), and that tensors it lacks are left to the
    task checkpoints (task heads; tied ones follow the tensor they are tied to).
    """
    state = module.state_dict()
    buffers = {name for name, _ in module.named_buffers()}
    pre = {name: tensor for name, tensor in pre.items() if name in state or name not in buffers}
    try:
        unexpected = module.load_state_dict(pre, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"Error(s):\nUnexpected key(s) in state_dict: {', '.join(map(repr, unexpected))}.")
    except RuntimeError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4] if line.strip())
        raise ArtifactError(f"{path}: does not fit model.builder ({detail})") from exc
    return pre


def _fits(tensor: torch.Tensor, shape: torch.Size, path: str | os.PathLike, name: str) -> torch.Tensor:
    if tensor.shape != shape:
        raise ArtifactError(
            f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, the pretrained model's has {tuple(shape)}"
        )
    return tensor


class MergeEngine:
    """Holds theta_pre and the task vectors on one device and evaluates merges of them.

    members: ordered names of the task vectors (the coefficient vector follows this order).
    operator, seed: the merge operator spec (mapmerge.tensors.operators; None = task arithmetic), applied
    once per tensor to the members' task vectors, and the seed of a seeded operator (dare).
    task_checkpoints: per evaluated task, its fine-tuned checkpoint, from which the tensors that are
    not merged (task heads) are taken when that task is evaluated: copied into the module's tensor,
    or swapped in for the task where its shape differs (a classifier with other labels). The
    pretrained checkpoint may lack task heads; every task checkpoint then holds them.
    """

    def __init__(
        self,
        builder: Mapping[str, Any],
        pretrained: str | os.PathLike,
        vectors: Mapping[str, str | os.PathLike],
        task_checkpoints: Mapping[str, str | os.PathLike],
        evaluators: Mapping[str, Mapping[str, Any]],
        merge: Mapping[str, Sequence[str]],
        device: str = "auto",
        python_path: Sequence[str] = (),
        operator: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.members = list(vectors)
        self.tasks = list(task_checkpoints)
        # evaluation runs in float32: the merge is one float32 vector, the module's tensors views into it
        self.module = build_module(builder, python_path).float()
        pre = _load_pretrained(self.module, load_state_dict(pretrained), pretrained)
        self.module.to(self.device).eval().requires_grad_(False)
        slots = dict(self.module.state_dict(keep_vars=True))
        with ExitStack() as stack:
            # the task vectors are read tensor by tensor: host memory holds one tensor per member at a time
            taus = [stack.enter_context(open_checkpoint(p)) for p in vectors.values()]
            self.names = sorted(taus[0].keys()) if taus else merged_names(pre, merge["include"], merge["exclude"])
            for member, tau, path in zip(self.members, taus, vectors.values()):
                if sorted(tau.keys()) != self.names:
                    raise ArtifactError(
                        f"{path}: task vector of '{member}' holds other tensors than '{self.members[0]}'"
                    )
            shapes = [pre[n].shape for n in self.names]
            self.theta_pre = torch.cat([pre[n].float().flatten() for n in self.names]).to(self.device)
            # rows: the members' effective task vectors (the merge operator applied tensor by tensor)
            self.vectors = torch.zeros((len(taus), self.theta_pre.numel()), device=self.device)
            offset = 0
            for name, shape in zip(self.names, shapes):
                size = int(np.prod(shape))
                if taus:
                    stacked = torch.empty((len(taus), *shape), dtype=torch.float32, device=self.device)
                    for row, tau in zip(stacked, taus):
                        row.copy_(_fits(tau.get(name), shape, tau.path, name))  # to float32, on the device
                    effective = apply_operator(operator, self.members, name, stacked, seed)
                    self.vectors[:, offset : offset + size] = effective.reshape(len(taus), size)
                    del stacked, effective
                    release_freed_memory(4 * size)
                offset += size
        self.flat = self.theta_pre.clone()
        offset = 0
        for name, shape in zip(self.names, shapes):
            size = int(np.prod(shape))
            _rebind(self.module, name, self.flat[offset : offset + size].view(shape))
            offset += size
        # the tensors that are not merged (task heads, integer buffers), less those tied to another
        primary = {id(t): n for n, t in reversed(slots.items()) if n in pre or n in self.names}
        own = [n for n, t in slots.items() if n not in self.names and primary.get(id(t), n) == n]
        self.own = {
            task: self._own_tensors(task, path, own, slots, pre, pretrained) for task, path in task_checkpoints.items()
        }
        self.evaluators: dict[str, Evaluator] = {}
        for task in self.tasks:
            try:
                self.evaluators[task] = instantiate(dict(evaluators[task]))
            except Exception as exc:
                raise EvaluationError(f"model.tasks.{task}.evaluator: could not be built: {exc}") from exc
        self.timings = {"merge": 0.0, "evaluate": 0.0}

    def merge(self, coefficients: Sequence[float]) -> None:
        """Set the module's merged tensors to theta_pre + sum_i c_i tau_i (one fused op, in place)."""
        c = torch.as_tensor(np.asarray(coefficients, dtype=np.float32), device=self.device)
        if c.numel() != len(self.members):
            raise ValueError(f"{c.numel()} coefficients for {len(self.members)} task vectors {self.members}")
        start = time.perf_counter()
        torch.addmv(self.theta_pre, self.vectors.T, c, out=self.flat)
        self.timings["merge"] += time.perf_counter() - start

    def evaluate(self, coefficients: Sequence[float], sample: str, on_error: str = "fail") -> pd.DataFrame:
        """Per-example rows (sample, task, example, correct, loss, error) of the merge on every task.

        on_error='record' turns an EvaluationError into one row with NaN correct and loss and the
        message in `error` (logged as a warning); 'fail' raises it.
        """
        self.merge(coefficients)
        frames = []
        start = time.perf_counter()
        with torch.inference_mode():
            for task in self.tasks:
                for owner, leaf, slot, tensor in self.own[task]:
                    if tensor.shape == slot.shape:  # into the module's own tensor
                        if _attached(owner, leaf) is not slot:
                            setattr(owner, leaf, slot)
                        slot.copy_(tensor)
                    else:  # another shape (a head with other labels): this task's tensor takes its place
                        setattr(owner, leaf, tensor)
                try:
                    frames.append(self._run(task, sample))
                except EvaluationError as exc:
                    if on_error != "record":
                        raise
                    logger.warning("%s (recorded: evaluation.on_error=record)", exc)
                    frames.append(failure_rows(sample, task, str(exc)))
        self.timings["evaluate"] += time.perf_counter() - start
        return pd.concat(frames, ignore_index=True)

    def _own_tensors(
        self,
        task: str,
        path: str | os.PathLike,
        names: Sequence[str],
        slots: Mapping[str, torch.Tensor],
        pre: Mapping[str, torch.Tensor],
        pretrained: str | os.PathLike,
    ) -> list[tuple[torch.nn.Module, str, torch.Tensor, torch.Tensor]]:
        """(owner, attribute, module tensor, the task's tensor) of every tensor that is not merged.

        The task's checkpoint gives its own (read tensor by tensor), else the pretrained one is used;
        a tensor of another shape than the module's becomes a parameter of its own, swapped in for the task.
        """
        out = []
        with open_checkpoint(path) as ckpt:
            for name in names:
                if name in ckpt:
                    tensor = ckpt.get(name)
                elif name in pre:
                    tensor = pre[name]
                else:
                    raise ArtifactError(f"{path}: lacks tensor '{name}' (task {task}), which {pretrained} lacks too")
                slot = slots[name]
                dtype = slot.dtype if tensor.is_floating_point() and slot.is_floating_point() else tensor.dtype
                tensor = tensor.to(self.device, dtype)
                if tensor.shape != slot.shape and isinstance(slot, torch.nn.Parameter):
                    tensor = torch.nn.Parameter(tensor, requires_grad=False)
                owner_name, _, leaf = name.rpartition(".")
                out.append((self.module.get_submodule(owner_name) if owner_name else self.module, leaf, slot, tensor))
        return out

    def _run(self, task: str, sample: str) -> pd.DataFrame:
        try:
            rows = self.evaluators[task](self.module, self.device)
        except Exception as exc:
            raise EvaluationError(
                f"sample {sample}, task {task}: evaluator raised {type(exc).__name__}: {exc}"
            ) from exc
        return check_rows(rows, sample, task)


def check_rows(rows: Any, sample: str, task: str) -> pd.DataFrame:
    """Validate an evaluator's output into the per-example schema; NaN is an error naming sample and task."""
    if not isinstance(rows, pd.DataFrame):
        rows = pd.DataFrame(rows)
    if "correct" not in rows and "loss" not in rows:
        raise EvaluationError(f"sample {sample}, task {task}: evaluator returned neither 'correct' nor 'loss' columns")
    out = pd.DataFrame(
        {
            "sample": sample,
            "task": task,
            "example": rows["example"].astype("int64") if "example" in rows else np.arange(len(rows), dtype="int64"),
            "correct": rows["correct"].astype(float) if "correct" in rows else np.nan,
            "loss": rows["loss"].astype("float64") if "loss" in rows else np.nan,
            "error": pd.Series(None, index=rows.index, dtype="str"),
        }
    )
    if len(out) == 0:
        raise EvaluationError(f"sample {sample}, task {task}: evaluator returned no rows")
    for column in ("correct", "loss"):
        if column in rows and not np.isfinite(out[column]).all():
            raise EvaluationError(f"sample {sample}, task {task}: evaluator returned NaN or inf in '{column}'")
    return out


def failure_rows(sample: str, task: str, message: str) -> pd.DataFrame:
    """The row that records a failed evaluation: NaN correct and loss, the message in `error`."""
    return pd.DataFrame(
        {
            "sample": [sample],
            "task": [task],
            "example": np.array([FAILED_EXAMPLE], dtype="int64"),
            "correct": [np.nan],
            "loss": [np.nan],
            "error": pd.Series([message], dtype="str"),
        }
    )
