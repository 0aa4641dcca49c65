"""Task vectors: tau = theta_finetuned - theta_pretrained over the merged parameters."""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from mapmerge.io import ArtifactError
from mapmerge.progress import progress
from mapmerge.tensors.checkpoints import (
    LazyCheckpoint,
    open_checkpoint,
    release_freed_memory,
    save_safetensors,
)
from mapmerge.tensors.lora import (
    FACTOR_A,
    FACTOR_B,
    TensorSource,
    adapter_weights,
    delta_shape,
    extract_lora_vector,
    inner,
    is_low_rank,
    low_rank_sum,
    member_delta,
    merge_deltas,
    read_adapter,
    target_names,
    vector_names,
)
from mapmerge.tensors.operators import POINTWISE, SEEDED, apply_operator, slerp_dot, slerp_weights, validate

if TYPE_CHECKING:
    from mapmerge.tensors.lora import Delta

# model.merge.vector_dtype -> the dtype task vectors are stored in (mapmerge.run.config checks the names)
VECTOR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merged_names(state: Mapping[str, torch.Tensor], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Names of floating-point tensors matching an include pattern and no exclude pattern, sorted."""
    return sorted(
        name
        for name, tensor in state.items()
        if tensor.is_floating_point()
        and any(fnmatch.fnmatchcase(name, p) for p in include)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    )


def check_compatible(
    pretrained: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], pre_path: str, ft_path: str
) -> None:
    """Raise ArtifactError naming the file and tensor when names or shapes differ (tensors may be 'meta')."""
    missing = sorted(set(pretrained) - set(finetuned))
    extra = sorted(set(finetuned) - set(pretrained))
    if missing:
        raise ArtifactError(f"{ft_path}: lacks tensor '{missing[0]}' of {pre_path} ({len(missing)} missing)")
    if extra:
        raise ArtifactError(f"{ft_path}: has tensor '{extra[0]}' that {pre_path} lacks ({len(extra)} extra)")
    for name, tensor in pretrained.items():
        if finetuned[name].shape != tensor.shape:
            raise ArtifactError(
                f"{ft_path}: tensor '{name}' has shape {tuple(finetuned[name].shape)}, "
                f"{pre_path} has {tuple(tensor.shape)}"
            )


def vector_dtype(name: str) -> torch.dtype:
    """The torch dtype of a model.merge.vector_dtype value (float32, bfloat16, float16)."""
    if name not in VECTOR_DTYPES:
        raise ValueError(f"model.merge.vector_dtype: must be one of {', '.join(VECTOR_DTYPES)}, got {name!r}")
    return VECTOR_DTYPES[name]


def compatible_names(
    pretrained_path: str | os.PathLike,
    finetuned_path: str | os.PathLike,
    include: Sequence[str],
    exclude: Sequence[str],
) -> list[str]:
    """The merged tensors' names, from the headers alone; ArtifactError naming the file when they do not line up.

    A PEFT adapter (mapmerge.tensors.lora) must adapt merged tensors of the pretrained model, with their shapes.
    """
    if adapter_weights(finetuned_path) is not None:
        with open_checkpoint(pretrained_path) as pre:
            names = _merged(pre, include, exclude)
            target_names(read_adapter(finetuned_path), pre.meta(), pretrained_path, names)
        return names
    with open_checkpoint(pretrained_path) as pre, open_checkpoint(finetuned_path) as ft:
        return _compatible(pre, ft, include, exclude)


def _merged(pre: LazyCheckpoint, include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    names = merged_names(pre.meta(), include, exclude)
    if not names:
        raise ArtifactError(
            f"{pre.path}: no tensor matches model.merge include={list(include)} exclude={list(exclude)}"
        )
    return names


def _compatible(pre: LazyCheckpoint, ft: LazyCheckpoint, include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    pre_meta = pre.meta()
    names = _merged(pre, include, exclude)
    ft_meta = ft.meta()
    check_compatible(
        {n: pre_meta[n] for n in names}, {n: ft_meta[n] for n in names if n in ft_meta}, str(pre.path), str(ft.path)
    )
    return names


def extract_task_vector(
    pretrained_path: str | os.PathLike,
    finetuned_path: str | os.PathLike,
    include: Sequence[str],
    exclude: Sequence[str],
    out_path: str | os.PathLike,
    task: str,
    dtype: str = "float32",
) -> dict[str, float | int | str]:
    """Write tau = finetuned - pretrained (merged tensors only) as safetensors; return its stats.

    tau is computed in float32 and stored in `dtype` (model.merge.vector_dtype: float32, or bfloat16 /
    float16 for half the file size and memory; merges compute in float32 either way). The checkpoints
    are read one tensor at a time, so memory holds tau plus a few tensors. The stats (parameter count,
    norm) are those of the stored vector. Only the merged tensors must agree in names and shapes: the
    others (task heads, which may have other shapes or be absent from the pretrained model) are not compared.

    A PEFT adapter (its directory or adapter_model.safetensors) gives a low-rank task vector: per tensor it
    adapts, its factors (mapmerge.tensors.lora); the stats then add n_stored, the factors' parameter count.
    """
    storage = vector_dtype(dtype)
    if adapter_weights(finetuned_path) is not None:
        with open_checkpoint(pretrained_path) as pre:
            names = _merged(pre, include, exclude)
            tau, stats = extract_lora_vector(finetuned_path, pre.meta(), pretrained_path, names, storage)
        save_safetensors(
            tau,
            out_path,
            metadata={"task": task, "source": Path(finetuned_path).name, "dtype": dtype, "format": "lora"},
        )
        return {"task": task, **stats}
    with open_checkpoint(pretrained_path) as pre, open_checkpoint(finetuned_path) as ft:
        names = _compatible(pre, ft, include, exclude)
        tau: dict[str, torch.Tensor] = {}
        n_params, squares = 0, 0.0
        for name in names:
            stored = (ft.get(name).float() - pre.get(name).float()).to(storage)
            if not torch.isfinite(stored).all():
                raise ArtifactError(
                    f"{finetuned_path}: tensor '{name}' minus the pretrained one overflows model.merge.vector_dtype {dtype}"
                )
            tau[name] = stored
            n_params += stored.numel()
            squares += float(stored.double().square().sum())
            release_freed_memory(stored.nbytes)
    save_safetensors(tau, out_path, metadata={"task": task, "source": Path(finetuned_path).name, "dtype": dtype})
    return {"task": task, "n_tensors": len(names), "n_params": n_params, "norm": math.sqrt(squares)}


def task_vector_table(paths: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Per task: parameter count, norm, and cosine similarity to every other task vector.

    The vectors are read one tensor at a time (memory: one tensor per task), their Gram matrix
    accumulated in float64. n_params counts the tensors any task vector holds, dense.
    """
    tasks = list(paths)
    gram, n_params = gram_matrix(paths)
    norms = gram.diagonal().sqrt()
    cosine = cosine_matrix(gram)
    rows_out = []
    for i, task in enumerate(tasks):
        row: dict[str, object] = {"task": task, "n_params": n_params, "norm": float(norms[i])}
        row.update({f"cos_{other}": float(cosine[i, j]) for j, other in enumerate(tasks)})
        rows_out.append(row)
    return pd.DataFrame(rows_out)


def gram_matrix(paths: Mapping[str, str | os.PathLike]) -> tuple[torch.Tensor, int]:
    """(Gram matrix of the task vectors in float64, parameter count), read one tensor at a time.

    Low-rank tensors' inner products come from their factors (mapmerge.tensors.lora.inner), never densified;
    a task vector lacking a tensor contributes zero there.
    """
    members = list(paths)
    with ExitStack() as stack:
        readers = [stack.enter_context(open_checkpoint(p)) for p in paths.values()]
        gram = torch.zeros((len(members), len(members)), dtype=torch.float64)
        n_params = 0
        for name in _same_tensors(members, readers):
            deltas = [member_delta(r, name) for r in readers]
            if all(isinstance(d, torch.Tensor) for d in deltas):
                rows = torch.stack([d.double().flatten() for d in deltas])
                gram += rows @ rows.T
                size = rows.nbytes
                del rows
                release_freed_memory(size)
            else:
                present = [(i, d) for i, d in enumerate(deltas) if d is not None]
                for i, x in present:
                    for j, y in present:
                        if j >= i:
                            gram[i, j] = gram[j, i] = gram[i, j] + inner(x, y)
            n_params += math.prod(delta_shape(next(d for d in deltas if d is not None)))
    return gram, n_params


def cosine_matrix(gram: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities from a Gram matrix."""
    norms = gram.diagonal().sqrt()
    return gram / torch.outer(norms, norms).clamp_min(1e-12)


def _same_tensors(members: Sequence[str], sources: Sequence[TensorSource]) -> list[str]:
    """The sorted merged tensors' names of the task vectors; ArtifactError naming the file when a dense one's
    differ from the first's. Where any holds low-rank tensors (LoRA), each may lack some: all their names."""
    paths = [getattr(source, "path", member) for member, source in zip(members, sources)]
    held = [vector_names(source, path) for source, path in zip(sources, paths)]
    if any(is_low_rank(source.keys()) for source in sources):
        return sorted({name for names in held for name in names})
    for member, path, names in zip(members, paths, held):
        if names != held[0]:
            raise ArtifactError(f"{path}: task vector of '{member}' holds other tensors than '{members[0]}'")
    return held[0] if held else []


def _merge_spec(
    n_vectors: int, coefficients: Sequence[float], operator: Mapping[str, Any] | None, members: Sequence[str] | None
) -> tuple[dict[str, Any], list[str]]:
    """The validated operator spec and the members' names (placeholders where the operator needs none)."""
    if n_vectors != len(coefficients):
        raise ValueError(f"{n_vectors} task vectors but {len(coefficients)} coefficients")
    spec = validate(operator)
    if members is None:
        if spec["operator"] in SEEDED:
            raise ValueError(f"merge operator {spec['operator']}: needs the members' names")
        members = [str(i) for i in range(n_vectors)]
    if len(members) != n_vectors:
        raise ValueError(f"{n_vectors} task vectors but {len(members)} member names")
    return spec, list(members)


def merge_tensor(
    spec: Mapping[str, Any],
    members: Sequence[str],
    name: str,
    pretrained: torch.Tensor,
    vectors: Iterable[Delta | None],
    coefficients: Sequence[float],
    seed: int | None = None,
    delta: bool = False,
) -> torch.Tensor:
    """theta_pre + sum_i c_i tau'_i for one tensor, computed in float32, returned in pretrained's dtype.

    vectors: the members' task vectors of this tensor, in order (any float dtype); an iterator is
    consumed one tensor at a time under task arithmetic, else copied into one float32 stack for the
    operator (a validated spec; see _merge_spec). The temporaries' memory is handed back on return.
    Under task arithmetic a member's tau may be low-rank, (lora_A, lora_B), or None where it lacks the
    tensor (mapmerge.tensors.lora.merge_deltas); the other operators need every member's dense tau.
    slerp weighs tau_1, tau_2 and theta_pre per tensor (mapmerge.tensors.operators.slerp_weights).
    delta=True: the merge minus theta_pre, in float32.
    """
    merged = _merge_tensor(spec, members, name, pretrained, vectors, coefficients, seed, delta)
    release_freed_memory(merged.nbytes)
    return merged


def _merge_tensor(
    spec: Mapping[str, Any],
    members: Sequence[str],
    name: str,
    pretrained: torch.Tensor,
    vectors: Iterable[Delta | None],
    coefficients: Sequence[float],
    seed: int | None,
    delta: bool,
) -> torch.Tensor:
    if delta:
        total = torch.zeros(pretrained.shape, dtype=torch.float32, device=pretrained.device)
    else:
        total = pretrained.to(torch.float32, copy=True)
    dtype = total.dtype if delta else pretrained.dtype
    checked = (_checked(name, i, tau, pretrained) for i, tau in enumerate(vectors))
    if spec["operator"] == "task_arithmetic":
        return merge_deltas(total, checked, coefficients).to(dtype)
    stacked = torch.empty((len(coefficients), *pretrained.shape), dtype=torch.float32, device=pretrained.device)
    count = 0
    for i, tau in enumerate(checked):
        if not isinstance(tau, torch.Tensor):
            raise ValueError(
                f"tensor '{name}': merge operator {spec['operator']} needs dense task vectors; "
                f"task vector {i} is {'low-rank (LoRA)' if tau is not None else 'missing'}"
            )
        stacked[i].copy_(tau)
        count += 1
    if count != len(coefficients):
        raise ValueError(f"tensor '{name}': {count} task vectors for {len(coefficients)} coefficients")
    effective = apply_operator(spec, members, name, stacked, seed)
    if spec["operator"] in POINTWISE:
        coefficients, pre_weight = slerp_weights(coefficients, slerp_dot(pretrained, stacked))
        total.add_(pretrained.to(torch.float32), alpha=pre_weight)
    for coef, tau in zip(coefficients, effective, strict=True):
        total += float(coef) * tau
    return total.to(dtype)


def _checked(name: str, index: int, tau: Delta | None, pretrained: torch.Tensor) -> Delta | None:
    if tau is not None and delta_shape(tau) != tuple(pretrained.shape):
        raise ValueError(
            f"tensor '{name}': task vector {index} has shape {delta_shape(tau)}, pretrained {tuple(pretrained.shape)}"
        )
    return tau


def merged_state(
    pretrained: Mapping[str, torch.Tensor],
    vectors: Sequence[Mapping[str, torch.Tensor]],
    coefficients: Sequence[float],
    operator: Mapping[str, Any] | None = None,
    members: Sequence[str] | None = None,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """theta_pre + sum_i c_i tau'_i on the vectors' tensors; every other tensor as in `pretrained`.

    tau' = the merge operator (mapmerge.tensors.operators; None = task arithmetic, tau' = tau) applied per
    tensor, as MergeEngine does; members (the vectors' names, in order) and seed feed seeded operators.
    A vector may be low-rank (mapmerge.tensors.lora: `name::lora_A`, `name::lora_B`).
    All in memory; merge_files does the same from files, one tensor at a time.
    """
    spec, members = _merge_spec(len(vectors), coefficients, operator, members)
    merged = dict(pretrained)
    for name in _same_tensors(members, vectors):
        merged[name] = merge_tensor(
            spec, members, name, pretrained[name], (member_delta(tau, name) for tau in vectors), coefficients, seed
        )
    return merged


def merge_files(
    pretrained: str | os.PathLike,
    vectors: Mapping[str, str | os.PathLike],
    coefficients: Sequence[float],
    operator: Mapping[str, Any] | None = None,
    seed: int | None = None,
    delta: bool = False,
) -> dict[str, torch.Tensor]:
    """merged_state from files, streamed: the merged state dict built one tensor at a time.

    delta=True gives the merge's own task vector instead: sum_i c_i tau'_i (float32; under slerp the merge
    minus theta_pre) over the vectors' tensors only, what a later nested level merges; low-rank where every
    member holding the tensor is (the members' factors side by side, rank sum r_i: mapmerge.tensors.lora.low_rank_sum).

    vectors: member name -> task-vector file, in coefficient order (the names feed seeded operators).
    Per tensor, theta_pre's tensor and the members' tensors are read (open_checkpoint), merged
    (merge_tensor) and stored in the pretrained dtype, so memory holds the merged model plus the
    temporaries of one tensor (task arithmetic: one task vector's tensor at a time; other operators:
    one float32 stack of the members' tensors and the operator's temporaries), never T whole vectors.
    ArtifactError names the file when a vector's tensors differ from the first's or from pretrained.
    """
    members = list(vectors)
    spec, members = _merge_spec(len(members), coefficients, operator, members)
    with ExitStack() as stack:
        pre = stack.enter_context(open_checkpoint(pretrained))
        readers = [stack.enter_context(open_checkpoint(p)) for p in vectors.values()]
        names = set(_same_tensors(members, readers))
        pre_meta = pre.meta()
        for reader in readers:
            meta = reader.meta()
            for name in vector_names(meta, reader.path):
                if name not in pre_meta:
                    raise ArtifactError(f"{reader.path}: has tensor '{name}' that {pretrained} lacks")
                shape = delta_shape(member_delta(meta, name))
                if shape != tuple(pre_meta[name].shape):
                    raise ArtifactError(
                        f"{reader.path}: tensor '{name}' has shape {shape}, {pretrained} has {tuple(pre_meta[name].shape)}"
                    )
        merged: dict[str, torch.Tensor] = {}
        for name in progress(pre.keys(), desc=f"merge {Path(pretrained).name}", unit="tensor"):
            if name not in names:
                if not delta:
                    merged[name] = pre.get(name)
                continue
            deltas = (member_delta(r, name) for r in readers)  # read one at a time
            if delta and spec["operator"] == "task_arithmetic" and not any(name in r for r in readers):
                merged[name + FACTOR_A], merged[name + FACTOR_B] = low_rank_sum(deltas, coefficients)
                continue
            merged[name] = merge_tensor(spec, members, name, pre.get(name), deltas, coefficients, seed, delta)
    return merged
