"""Task vectors: tau = theta_finetuned - theta_pretrained over the merged parameters."""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

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
from mapmerge.tensors.operators import SEEDED, apply_operator, validate

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
    """The merged tensors' names, from the headers alone; ArtifactError naming the file when they do not line up."""
    with open_checkpoint(pretrained_path) as pre, open_checkpoint(finetuned_path) as ft:
        return _compatible(pre, ft, include, exclude)


def _compatible(pre: LazyCheckpoint, ft: LazyCheckpoint, include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    pre_meta = pre.meta()
    names = merged_names(pre_meta, include, exclude)
    if not names:
        raise ArtifactError(
            f"{pre.path}: no tensor matches model.merge include={list(include)} exclude={list(exclude)}"
        )
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
    """
    storage = vector_dtype(dtype)
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
    accumulated in float64.
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
    """(Gram matrix of the task vectors in float64, parameter count), read one tensor at a time."""
    members = list(paths)
    with ExitStack() as stack:
        readers = [stack.enter_context(open_checkpoint(p)) for p in paths.values()]
        gram = torch.zeros((len(members), len(members)), dtype=torch.float64)
        n_params = 0
        for name in _same_tensors(members, readers):
            rows = torch.stack([r.get(name).double().flatten() for r in readers])
            gram += rows @ rows.T
            n_params += rows.shape[1]
            size = rows.nbytes
            del rows
            release_freed_memory(size)
    return gram, n_params


def cosine_matrix(gram: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities from a Gram matrix."""
    norms = gram.diagonal().sqrt()
    return gram / torch.outer(norms, norms).clamp_min(1e-12)


def _same_tensors(members: Sequence[str], readers: Sequence[LazyCheckpoint]) -> list[str]:
    """The sorted tensor names of the first task vector; ArtifactError naming the file when another differs."""
    names = sorted(readers[0].keys()) if readers else []
    for member, reader in zip(members, readers):
        if sorted(reader.keys()) != names:
            raise ArtifactError(f"{reader.path}: task vector of '{member}' holds other tensors than '{members[0]}'")
    return names


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
    vectors: Iterable[torch.Tensor],
    coefficients: Sequence[float],
    seed: int | None = None,
) -> torch.Tensor:
    """theta_pre + sum_i c_i tau'_i for one tensor, computed in float32, returned in pretrained's dtype.

    vectors: the members' task vectors of this tensor, in order (any float dtype); an iterator is
    consumed one tensor at a time under task arithmetic, else copied into one float32 stack for the
    operator (a validated spec; see _merge_spec). The temporaries' memory is handed back on return.
    """
    merged = _merge_tensor(spec, members, name, pretrained, vectors, coefficients, seed)
    release_freed_memory(merged.nbytes)
    return merged


def _merge_tensor(
    spec: Mapping[str, Any],
    members: Sequence[str],
    name: str,
    pretrained: torch.Tensor,
    vectors: Iterable[torch.Tensor],
    coefficients: Sequence[float],
    seed: int | None,
) -> torch.Tensor:
    total = pretrained.to(torch.float32, copy=True)
    if spec["operator"] == "task_arithmetic":
        effective: Iterable[torch.Tensor] = (
            _checked(name, i, tau, pretrained).float() for i, tau in enumerate(vectors)
        )
    else:
        stacked = torch.empty((len(coefficients), *pretrained.shape), dtype=torch.float32, device=pretrained.device)
        count = 0
        for i, tau in enumerate(vectors):
            stacked[i].copy_(_checked(name, i, tau, pretrained))
            count += 1
        if count != len(coefficients):
            raise ValueError(f"tensor '{name}': {count} task vectors for {len(coefficients)} coefficients")
        effective = apply_operator(spec, members, name, stacked, seed)
    for coef, tau in zip(coefficients, effective, strict=True):
        total += float(coef) * tau
    return total.to(pretrained.dtype)


def _checked(name: str, index: int, tau: torch.Tensor, pretrained: torch.Tensor) -> torch.Tensor:
    if tau.shape != pretrained.shape:
        raise ValueError(
            f"tensor '{name}': task vector {index} has shape {tuple(tau.shape)}, pretrained {tuple(pretrained.shape)}"
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
    All in memory; merge_files does the same from files, one tensor at a time.
    """
    spec, members = _merge_spec(len(vectors), coefficients, operator, members)
    merged = dict(pretrained)
    for name in vectors[0] if vectors else []:
        merged[name] = merge_tensor(
            spec, members, name, pretrained[name], (tau[name] for tau in vectors), coefficients, seed
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

    delta=True gives the merge's own task vector instead: sum_i c_i tau'_i (float32) over the
    vectors' tensors only, what a later nested level merges.

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
            for name, meta in reader.meta().items():
                if name not in pre_meta:
                    raise ArtifactError(f"{reader.path}: has tensor '{name}' that {pretrained} lacks")
                if meta.shape != pre_meta[name].shape:
                    raise ArtifactError(
                        f"{reader.path}: tensor '{name}' has shape {tuple(meta.shape)}, {pretrained} has {tuple(pre_meta[name].shape)}"
                    )
        merged: dict[str, torch.Tensor] = {}
        for name in progress(pre.keys(), desc=f"merge {Path(pretrained).name}", unit="tensor"):
            if delta and name not in names:
                continue
            theta = torch.zeros(pre_meta[name].shape, dtype=torch.float32) if delta else pre.get(name)
            if name in names:
                theta = merge_tensor(spec, members, name, theta, (r.get(name) for r in readers), coefficients, seed)
            merged[name] = theta
    return merged
