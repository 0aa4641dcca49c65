"""Evaluation engine: merged models theta_pre + sum_i c_i tau_i, evaluated on every task.

The pretrained weights (theta_pre, in their checkpoint dtype) and the task vectors (in their storage dtype)
are loaded once per engine; the module's parameters hold the merged weights in the evaluation dtype
(evaluation.dtype), and a merge rewrites them in place, tensor by tensor and chunk by chunk, from
theta_pre + sum_i c_i tau_i accumulated in float32, so no model is copied per sample. Dense task vectors
of a tensor merge as one matrix-vector product; low-rank ones (tau = B A, LoRA) as one rank-(sum r_i)
product [c_1 B_1 | ... | c_T B_T] [A_1; ...; A_T]. Under slerp the weights of a tensor's tau_1, tau_2 and
theta_pre come from the point and the tensor's angle (mapmerge.tensors.operators.slerp_weights; the angle
computed once at load), and the merge is the same product with theta_pre scaled. Where the task vectors
live (the device, or host memory streamed to it) is planned by mapmerge.tensors.placement; docs/scaling.md
gives the memory formulas.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

from mapmerge.io import ArtifactError
from mapmerge.tensors import operators
from mapmerge.tensors import placement as placement_plan
from mapmerge.tensors.checkpoints import LazyCheckpoint, open_checkpoint, release_freed_memory
from mapmerge.tensors.devices import device_problem
from mapmerge.tensors.operators import apply_operator
from mapmerge.tensors.placement import Sizes
from mapmerge.tensors.taskvectors import merged_names

Evaluator = Callable[[torch.nn.Module, torch.device], pd.DataFrame]
FAILED_EXAMPLE = -1  # `example` of the one row that records a failed (sample, task)
logger = logging.getLogger("mapmerge")
# evaluation.dtype -> the module's dtype
EVAL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# elements merged per step: on CPU small enough that a chunk's float32 temporaries stay in cache
CHUNK = {"cpu": 1 << 20, "cuda": 1 << 26}
LORA_SEP = "::"  # a low-rank tensor's factors: name::lora_A [r x in], name::lora_B [out x r]
LORA_PARTS = ("lora_A", "lora_B")


class EvaluationError(RuntimeError):
    """An evaluator failed or returned unusable rows; the message names the sample and task."""


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when available for 'auto', else CPU; an explicit device must exist here (devices.device_problem)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(requested)
    if problem:
        raise EvaluationError(problem)
    return torch.device(requested)


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


def _read_pretrained(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the pretrained checkpoint, read one at a time, the reader's freed buffers handed back to the
    OS as it goes (read at once, a 2 GB checkpoint left 0.4 GB of holes in the heap)."""
    out = {}
    with open_checkpoint(path, mmap=False) as ckpt:  # tensors that own their memory
        for name, tensor in ckpt.items():
            out[name] = tensor
            release_freed_memory(tensor.numel() * tensor.element_size())
    return out


def _fits(tensor: torch.Tensor, shape: torch.Size, path: str | os.PathLike, name: str) -> torch.Tensor:
    if tensor.shape != shape:
        raise ArtifactError(
            f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, the pretrained model's has {tuple(shape)}"
        )
    return tensor


def eval_dtype(name: str) -> torch.dtype:
    """The torch dtype of an evaluation.dtype value (float32, bfloat16, float16)."""
    if name not in EVAL_DTYPES:
        raise ValueError(f"evaluation.dtype: must be one of {', '.join(EVAL_DTYPES)}, got {name!r}")
    return EVAL_DTYPES[name]


class _Member:
    """One task vector's tensors, read lazily: dense names and low-rank names (tau = B A, keys name::lora_A/B)."""

    def __init__(self, name: str, ckpt: LazyCheckpoint) -> None:
        self.name, self.ckpt = name, ckpt
        self.meta = ckpt.meta()
        self.dense = {n for n in self.meta if LORA_SEP not in n}
        self.low = set()
        for key in self.meta:
            base, sep, part = key.rpartition(LORA_SEP)
            if sep and part not in LORA_PARTS:
                raise ArtifactError(
                    f"{ckpt.path}: tensor '{key}': a low-rank factor is named '<tensor>::lora_A' or '::lora_B'"
                )
            if sep and f"{base}{LORA_SEP}{LORA_PARTS[1 - LORA_PARTS.index(part)]}" not in self.meta:
                raise ArtifactError(f"{ckpt.path}: tensor '{key}' lacks its other low-rank factor")
            if sep:
                self.low.add(base)
        both = sorted(self.dense & self.low)
        if both:
            raise ArtifactError(f"{ckpt.path}: tensor '{both[0]}' is both dense and low-rank")

    def nbytes(self, name: str) -> int:
        """Bytes of this member's tensor `name` as stored (dense, or both factors)."""
        keys = [name] if name in self.dense else [f"{name}{LORA_SEP}{part}" for part in LORA_PARTS]
        return sum(self.meta[k].numel() * self.meta[k].dtype.itemsize for k in keys)

    def factors(self, name: str, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [r x in], B [out x r]) of a low-rank tensor, checked against the pretrained shape."""
        a, b = (self.ckpt.get(f"{name}{LORA_SEP}{part}") for part in LORA_PARTS)
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(shape):
            raise ArtifactError(
                f"{self.ckpt.path}: low-rank tensor '{name}': lora_B {tuple(b.shape)} @ lora_A {tuple(a.shape)} "
                f"does not give the pretrained model's shape {tuple(shape)}"
            )
        return a, b


@dataclass
class _Merged:
    """One merged tensor: the module's tensor (2-D view), theta_pre's, the dense members' stack and the low-rank ones."""

    target: torch.Tensor  # [rows, cols] view of the module's parameter or buffer
    pre: torch.Tensor  # [rows, cols], checkpoint dtype
    dense: torch.Tensor | None  # [members, rows, cols], held dtype
    dense_positions: list[int]  # the dense members' positions in the coefficient vector
    dense_index: torch.Tensor  # the same, on the device
    low: list[tuple[int, torch.Tensor, torch.Tensor]]  # (member position, A [r x cols], B [rows x r])
    dot: float | None = None  # slerp: cos of the angle between theta_1 and theta_2 (operators.slerp_dot)


class _Factors(NamedTuple):
    """What a merge needs per tensor: the dense coefficients (a device tensor for float32 vectors, else values),
    the low-rank update's factors [c_1 B_1 | ... | c_T B_T] and [A_1; ...; A_T] in float32, and (slerp) the
    factor of theta_pre."""

    dense_c: torch.Tensor | None
    dense_values: list[float]
    scaled_b: torch.Tensor | None
    stacked_a: torch.Tensor | None
    pre_scale: float | None = None


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The module with its floating-point parameters and persistent buffers in dtype; computed constants (non-persistent
    buffers such as rotary inv_freq) stay as built, as transformers keeps them in a half-precision model."""
    persistent = {id(t) for t in module.state_dict(keep_vars=True).values()}
    for sub in module.modules():
        for param in sub._parameters.values():
            if param is not None and param.is_floating_point():
                param.data = param.data.to(dtype)
        for key, buffer in sub._buffers.items():
            if buffer is not None and buffer.is_floating_point() and id(buffer) in persistent:
                sub._buffers[key] = buffer.to(dtype)
    return module


def _as_2d(tensor: torch.Tensor) -> torch.Tensor:
    rows = tensor.shape[0] if tensor.dim() else 1
    return tensor.view(rows, tensor.numel() // max(rows, 1))


def _cast_inputs(dtype: torch.dtype) -> Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]:
    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        return _convert(args, dtype), _convert(kwargs, dtype)

    return hook


def _widen_outputs(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    return _convert(output, torch.float32)


def _convert(value: Any, dtype: torch.dtype) -> Any:
    """Floating-point tensors in value (nested tuples, lists, dicts, ModelOutputs) cast to dtype."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        for key, item in list(value.items()):
            value[key] = _convert(item, dtype)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_convert(item, dtype) for item in value)
    return value


class MergeEngine:
    """Holds theta_pre and the task vectors and evaluates merges of them on one device.

    members: ordered names of the task vectors (the coefficient vector follows this order). A task vector
    holds a tensor densely (key `name`) or low-rank (keys `name::lora_A` [r x in] and `name::lora_B`
    [out x r], the scale folded into lora_B); a member without a tensor adds nothing to it, and the merged
    tensors are the union over members.
    operator, seed: the merge operator spec (mapmerge.tensors.operators; None = task arithmetic), applied
    once per tensor to the members' task vectors, and the seed of a seeded operator (dare, dare_ties); operators
    other than task arithmetic need dense task vectors and hold their output in float32. slerp (two members)
    weighs each tensor's tau_1, tau_2 and theta_pre by the point and the tensor's angle, computed here once.
    task_checkpoints: per evaluated task, its fine-tuned checkpoint, from which the tensors that are
    not merged (task heads) are taken when that task is evaluated: copied into the module's tensor,
    or swapped in for the task where its shape differs (a classifier with other labels). The
    pretrained checkpoint may lack task heads; every task checkpoint then holds them.
    dtype: evaluation.dtype, the module's dtype (a half-precision module takes float inputs and returns
    float32 outputs); placement: evaluation.placement (auto | device | host; mapmerge.tensors.placement).
    scores: keep the evaluators' per-example class scores (columns `scores`, `target`; check_rows): `none`, `auto`
    (where an evaluator returns them) or `required` (an evaluator that does not fails).
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
        dtype: str = "float32",
        placement: str = "auto",
        scores: str = "none",
    ) -> None:
        self.device = pick_device(device)
        self.scores = scores
        self.dtype = eval_dtype(dtype)
        if self.device.type == "cuda" and self.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise EvaluationError(
                f"evaluation.dtype: bfloat16 is not supported by {self.device}; use float16 or float32"
            )
        self.members = list(vectors)
        self.tasks = list(task_checkpoints)
        self.chunk = CHUNK[self.device.type]
        self.module = _cast(build_module(builder, python_path), self.dtype)
        pre = _load_pretrained(self.module, _read_pretrained(pretrained), pretrained)
        operator_name = operators.validate(operator)["operator"]
        dense_operator = operator_name != "task_arithmetic"
        with ExitStack() as stack:
            # the task vectors are read tensor by tensor: host memory holds one tensor per member at a time
            members = [_Member(m, stack.enter_context(open_checkpoint(p))) for m, p in vectors.items()]
            for member in members:
                if member.low and dense_operator:
                    raise EvaluationError(
                        f"merge.operator: {operator_name} needs dense task vectors, "
                        f"and '{member.name}' ({member.ckpt.path}) is low-rank"
                    )
            union = set().union(*(m.dense | m.low for m in members))
            self.names = sorted(union) if members else merged_names(pre, merge["include"], merge["exclude"])
            for name in self.names:
                if name not in pre:
                    holder = next(m for m in members if name in m.dense | m.low)
                    raise ArtifactError(f"{holder.ckpt.path}: tensor '{name}' is not in the pretrained checkpoint")
            self.sizes = self._sizes(members, pre, dense_operator)
            resident = self.sizes.module + self.sizes.pre if self.device.type == "cpu" else 0
            free = placement_plan.free_memory(self.device)
            self.placement = placement_plan.plan(placement, free, self.sizes, self.device.type, resident)
            self.module.to(self.device).eval().requires_grad_(False)
            slots = dict(self.module.state_dict(keep_vars=True))
            # the tensors that are not merged (task heads, integer buffers), less those tied to another
            primary = {id(t): n for n, t in reversed(slots.items()) if n in pre or n in self.names}
            own = [n for n, t in slots.items() if n not in self.names and primary.get(id(t), n) == n]
            self.own = {
                task: self._own_tensors(task, path, own, slots, pre, pretrained)
                for task, path in task_checkpoints.items()
            }
            pre = {n: pre[n] for n in self.names}  # the rest is in the module already: not held while loading
            pin = self.device.type == "cuda"
            where = {p: self.device if p == "device" else torch.device("cpu") for p in ("device", "host")}
            self.merged = [
                self._load_tensor(
                    name,
                    slots,
                    pre,
                    members,
                    operator,
                    seed,
                    where[self.placement.pre],
                    where[self.placement.vectors],
                    pin,
                )
                for name in self.names
            ]
        self.stream = (
            torch.cuda.Stream(self.device) if pin and "host" in (self.placement.pre, self.placement.vectors) else None
        )
        self.work = [
            (k, r0, min(r0 + step, len(m.target)))
            for k, m in enumerate(self.merged)
            for step in [max(1, self.chunk // max(m.target.shape[1], 1))]
            for r0 in range(0, len(m.target), step)
        ]
        if self.dtype != torch.float32:
            self.module.register_forward_pre_hook(_cast_inputs(self.dtype), with_kwargs=True)
            self.module.register_forward_hook(_widen_outputs)
        self.evaluators: dict[str, Evaluator] = {}
        for task in self.tasks:
            try:
                self.evaluators[task] = instantiate(dict(evaluators[task]))
            except Exception as exc:
                raise EvaluationError(f"model.tasks.{task}.evaluator: could not be built: {exc}") from exc
        self.timings = {"merge": 0.0, "evaluate": 0.0}

    @property
    def n_params(self) -> int:
        """The number of merged parameters."""
        return sum(m.target.numel() for m in self.merged)

    def _sizes(self, members: Sequence[_Member], pre: Mapping[str, torch.Tensor], dense_operator: bool) -> Sizes:
        """The bytes the engine will hold (placement.Sizes), from the tensors' shapes and dtypes."""
        module = sum(
            t.numel() * t.element_size() for t in {id(t): t for t in self.module.state_dict().values()}.values()
        )
        vectors = workspace = chunk = 0
        for name in self.names:
            numel = pre[name].numel()
            cols = numel // (pre[name].shape[0] if pre[name].dim() else 1)
            rows_per_chunk = max(1, self.chunk // max(cols, 1))
            chunk_numel = min(numel, rows_per_chunk * cols)
            holders = [m for m in members if name in m.dense]
            if dense_operator:
                vectors += len(members) * numel * 4
                dense_rows, held = len(members), 4
            else:
                vectors += sum(m.nbytes(name) for m in members if name in m.dense | m.low)
                dense_rows = len(holders)
                held = max((m.meta[name].dtype.itemsize for m in holders), default=0)
            rank = sum(m.meta[f"{name}{LORA_SEP}lora_A"].shape[0] for m in members if name in m.low)
            # per chunk: the float32 accumulator; per tensor: the low-rank factors in float32
            workspace = max(workspace, 4 * (chunk_numel + rank * (numel // cols + cols)))
            chunk = max(chunk, chunk_numel * (dense_rows * held + pre[name].element_size()))
        pre_bytes = sum(pre[n].numel() * pre[n].element_size() for n in self.names)
        return Sizes(module=module, pre=pre_bytes, vectors=vectors, workspace=workspace, chunk=chunk)

    def _load_tensor(
        self,
        name: str,
        slots: Mapping[str, torch.Tensor],
        pre: Mapping[str, torch.Tensor],
        members: Sequence[_Member],
        operator: Mapping[str, Any] | None,
        seed: int | None,
        pre_at: torch.device,
        vectors_at: torch.device,
        pin: bool,
    ) -> _Merged:
        """Read one merged tensor of every member into where the placement keeps it."""
        if name not in slots or not slots[name].is_floating_point():
            raise ArtifactError(f"task vector tensor '{name}' is not a floating-point parameter or buffer of the model")
        shape = pre[name].shape
        pinned = pin and vectors_at.type == "cpu"
        positions = [i for i, m in enumerate(members) if name in m.dense]
        op, dot = operators.validate(operator)["operator"], None
        if op != "task_arithmetic":
            # rows: the members' effective task vectors (the operator applied on the device), zero where a member lacks it
            stacked = torch.zeros((len(members), *shape), dtype=torch.float32, device=self.device)
            for i in positions:
                stacked[i].copy_(_fits(members[i].ckpt.get(name), shape, members[i].ckpt.path, name))
            effective = apply_operator(operator, self.members, name, stacked, seed)
            if op in operators.POINTWISE:
                dot = operators.slerp_dot(pre[name], stacked)
            dense = torch.empty(effective.shape, dtype=torch.float32, device=vectors_at, pin_memory=pinned)
            dense.copy_(effective)
            positions = list(range(len(members)))
            del stacked, effective
        elif positions:
            dtype = functools.reduce(torch.promote_types, [members[i].meta[name].dtype for i in positions])
            dense = torch.empty((len(positions), *shape), dtype=dtype, device=vectors_at, pin_memory=pinned)
            for row, i in zip(dense, positions):
                row.copy_(_fits(members[i].ckpt.get(name), shape, members[i].ckpt.path, name))
        else:
            dense = None
        low = []
        for i, member in enumerate(members):
            if name in member.low:
                a, b = member.factors(name, shape)
                held = [
                    torch.empty(t.shape, dtype=t.dtype, device=vectors_at, pin_memory=pinned).copy_(t) for t in (a, b)
                ]
                low.append((i, held[0], held[1]))
        theta = pre[name].to(pre_at).contiguous()
        if pin and pre_at.type == "cpu":
            theta = theta.pin_memory()
        release_freed_memory(4 * pre[name].numel())
        return _Merged(
            target=_as_2d(slots[name].data),
            pre=_as_2d(theta),
            dense=None if dense is None else dense.view(len(dense), *_as_2d(theta).shape),
            dense_positions=positions,
            dense_index=torch.tensor(positions, dtype=torch.long, device=self.device),
            low=low,
            dot=dot,
        )

    def merge(self, coefficients: Sequence[float]) -> None:
        """Set the module's merged tensors to theta_pre + sum_i c_i tau_i, in place, chunk by chunk in float32
        (slerp: theta_pre + w_1 tau_1 + w_2 tau_2 + w_pre theta_pre, the weights per tensor)."""
        values = np.asarray(coefficients, dtype=np.float32)
        if values.size != len(self.members):
            raise ValueError(f"{values.size} coefficients for {len(self.members)} task vectors {self.members}")
        c = torch.as_tensor(values, device=self.device)
        start = time.perf_counter()
        factors = _Factors(None, [], None, None)
        staged = self._stage(0) if self.work else None
        for k, (index, r0, r1) in enumerate(self.work):
            following = self._stage(k + 1) if k + 1 < len(self.work) else None
            merged = self.merged[index]
            if r0 == 0:
                factors = self._factors(merged, values, c)
            self._merge_rows(merged.target[r0:r1], *self._arrived(staged), factors, r0, r1)
            staged = following
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings["merge"] += time.perf_counter() - start

    def _factors(self, merged: _Merged, values: np.ndarray, c: torch.Tensor) -> _Factors:
        """A tensor's dense coefficients, and its low-rank update's [c_1 B_1 | ... ] and [A_1; ...] in float32;
        under slerp the tensor's weights of tau_1 and tau_2 and the factor 1 + w_pre of theta_pre."""
        if merged.dot is not None:
            weights, pre_weight = operators.slerp_weights(values.tolist(), merged.dot)
            dense_c = torch.tensor(weights, dtype=torch.float32, device=self.device)
            return _Factors(dense_c, weights, None, None, 1.0 + pre_weight)
        dense_c = c[merged.dense_index] if merged.dense is not None and merged.dense.dtype == torch.float32 else None
        scaled_b = stacked_a = None
        if merged.low:
            on = {"device": self.device, "dtype": torch.float32, "non_blocking": True}
            scaled_b = torch.cat([c[i] * b.to(**on) for i, _, b in merged.low], dim=1)
            stacked_a = torch.cat([a.to(**on) for _, a, _ in merged.low], dim=0)
        return _Factors(dense_c, [float(values[i]) for i in merged.dense_positions], scaled_b, stacked_a)

    def _stage(self, k: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.cuda.Event | None]:
        """Rows r0:r1 of work item k's theta_pre and dense stack on the device: views, or (host placement on CUDA)
        copies started on the side stream, so that the next chunk's copy overlaps this chunk's merge."""
        index, r0, r1 = self.work[k]
        merged = self.merged[index]
        pre, dense = merged.pre[r0:r1], None if merged.dense is None else merged.dense[:, r0:r1]
        if self.stream is None:
            return pre, dense, None
        with torch.cuda.stream(self.stream):
            if pre.device != self.device:
                pre = pre.to(self.device, non_blocking=True)
            if dense is not None and dense.device != self.device:
                rows = torch.empty(dense.shape, dtype=dense.dtype, device=self.device)
                for row, source in zip(rows, dense):
                    row.copy_(source, non_blocking=True)
                dense = rows
            return pre, dense, self.stream.record_event()

    def _arrived(
        self, staged: tuple[torch.Tensor, torch.Tensor | None, torch.cuda.Event | None] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A staged chunk, once its copies are done; the compute stream then owns its memory."""
        assert staged is not None
        pre, dense, event = staged
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in (pre, dense):
                if tensor is not None:
                    tensor.record_stream(current)
        return pre, dense

    @staticmethod
    def _merge_rows(
        out: torch.Tensor, pre: torch.Tensor, dense: torch.Tensor | None, factors: _Factors, r0: int, r1: int
    ) -> None:
        """out (rows r0:r1 of a module tensor) = pre + sum_i c_i tau_i, accumulated in float32 and rounded once
        (slerp: pre scaled by factors.pre_scale).

        float32 dense vectors merge as one addmv (what the engine always did, to the bit); others are added
        row by row into a float32 accumulator (converting a half-precision chunk for addmv is far slower on CPU).
        """
        direct = out.dtype == torch.float32
        if factors.dense_c is not None:
            flat = pre.reshape(-1).float()
            matrix = dense.reshape(len(dense), -1).T
            beta = {} if factors.pre_scale is None else {"beta": factors.pre_scale}
            if direct:
                acc = out
                torch.addmv(flat, matrix, factors.dense_c, out=out.view(-1), **beta)
            else:
                acc = torch.addmv(flat, matrix, factors.dense_c, **beta).view(out.shape)
        else:
            acc = out.copy_(pre) if direct else pre.to(torch.float32, copy=True)
            for row, value in zip(() if dense is None else dense, factors.dense_values):
                acc.add_(row, alpha=value)
        if factors.scaled_b is not None:
            acc.addmm_(factors.scaled_b[r0:r1], factors.stacked_a)
        if acc is not out:
            out.copy_(acc)

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
            hint = ""
            if self.dtype == torch.float16 and self.device.type == "cpu":
                hint = " (evaluation.dtype float16 on CPU: some ops lack half-precision CPU kernels; use bfloat16)"
            raise EvaluationError(
                f"sample {sample}, task {task}: evaluator raised {type(exc).__name__}: {exc}{hint}"
            ) from exc
        return check_rows(rows, sample, task, self.scores)


def check_rows(rows: Any, sample: str, task: str, scores: str = "none") -> pd.DataFrame:
    """Validate an evaluator's output into the per-example schema; NaN is an error naming sample and task.

    scores: `required` also keeps its columns `scores` (per example, the score of every class: a sequence of floats
    of one length) and `target` (the index of the right class), which it must then return; `auto` keeps them where it
    returns both; `none` drops them.
    """
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
    absent = [c for c in ("scores", "target") if c not in rows]
    if scores == "required" or (scores == "auto" and not absent):
        if absent:
            raise EvaluationError(
                f"sample {sample}, task {task}: evaluator returned no {absent} (surrogate.scores=required)"
            )
        if len({len(s) for s in rows["scores"]}) != 1:
            raise EvaluationError(f"sample {sample}, task {task}: 'scores' of other lengths, NaN or inf")
        stacked = np.stack(rows["scores"].to_numpy()).astype("float64")
        if not np.isfinite(stacked).all():
            raise EvaluationError(f"sample {sample}, task {task}: 'scores' of other lengths, NaN or inf")
        target = rows["target"].astype("int64").to_numpy()
        if ((target < 0) | (target >= stacked.shape[1])).any():
            raise EvaluationError(f"sample {sample}, task {task}: a 'target' is not the index of one of its 'scores'")
        out["scores"] = list(stacked)
        out["target"] = target
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
