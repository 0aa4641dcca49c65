"""Task vectors: tau = theta_finetuned - theta_pretrained over the merged parameters."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mapmerge.checkpoints import load_state_dict, save_safetensors
from mapmerge.io import ArtifactError
from mapmerge.operators import SEEDED, apply_operator, validate


def merged_names(state: Mapping[str, torch.Tensor], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Names of floating-point tensors matching an include pattern and no exclude pattern, sorted."""
    return sorted(
        name
        for name, tensor in state.items()
        if tensor.is_floating_point()
        and any(fnmatch.fnmatchcase(name, p) for p in include)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    )


def check_compatible(pretrained: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], pre_path: str, ft_path: str) -> None:
    """Raise ArtifactError naming the file and tensor when names or shapes differ."""
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


def extract_task_vector(
    pretrained_path: str | os.PathLike,
    finetuned_path: str | os.PathLike,
    include: Sequence[str],
    exclude: Sequence[str],
    out_path: str | os.PathLike,
    task: str,
) -> dict[str, float | int | str]:
    """Write tau = finetuned - pretrained (float32, merged tensors only) as safetensors; return its stats."""
    pre = load_state_dict(pretrained_path)
    ft = load_state_dict(finetuned_path)
    check_compatible(pre, ft, str(pretrained_path), str(finetuned_path))
    names = merged_names(pre, include, exclude)
    if not names:
        raise ArtifactError(f"{pretrained_path}: no tensor matches model.merge include={list(include)} exclude={list(exclude)}")
    tau = {n: ft[n].float() - pre[n].float() for n in names}
    save_safetensors(tau, out_path, metadata={"task": task, "source": Path(finetuned_path).name})
    flat = torch.cat([t.flatten() for t in tau.values()])
    return {"task": task, "n_tensors": len(names), "n_params": int(flat.numel()), "norm": float(flat.norm())}


def task_vector_table(paths: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Per task: tensor and parameter counts, norm, and cosine similarity to every other task vector."""
    flats = {task: _flatten(load_state_dict(p)) for task, p in paths.items()}
    tasks = list(flats)
    matrix = torch.stack([flats[t] for t in tasks])
    norms = matrix.norm(dim=1)
    cosine = (matrix @ matrix.T) / torch.outer(norms, norms).clamp_min(1e-12)
    rows = []
    for i, task in enumerate(tasks):
        row: dict[str, object] = {"task": task, "n_params": int(matrix.shape[1]), "norm": float(norms[i])}
        row.update({f"cos_{other}": float(cosine[i, j]) for j, other in enumerate(tasks)})
        rows.append(row)
    return pd.DataFrame(rows)


def _flatten(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[n].float().flatten() for n in sorted(state)])


def merged_state(
    pretrained: Mapping[str, torch.Tensor],
    vectors: Sequence[Mapping[str, torch.Tensor]],
    coefficients: Sequence[float],
    operator: Mapping[str, Any] | None = None,
    members: Sequence[str] | None = None,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """theta_pre + sum_i c_i tau'_i on the vectors' tensors; every other tensor as in `pretrained`.

    tau' = the merge operator (mapmerge.operators; None = task arithmetic, tau' = tau) applied per
    tensor, as MergeEngine does; members (the vectors' names, in order) and seed feed seeded operators.
    """
    if len(vectors) != len(coefficients):
        raise ValueError(f"{len(vectors)} task vectors but {len(coefficients)} coefficients")
    spec = validate(operator)
    if members is None:
        if spec["operator"] in SEEDED:
            raise ValueError(f"merge operator {spec['operator']}: needs the members' names")
        members = [str(i) for i in range(len(vectors))]
    if len(members) != len(vectors):
        raise ValueError(f"{len(vectors)} task vectors but {len(members)} member names")
    merged = dict(pretrained)
    for name in vectors[0] if vectors else []:
        total = pretrained[name].float().clone()
        if spec["operator"] == "task_arithmetic":
            effective = [tau[name] for tau in vectors]
        else:
            effective = apply_operator(spec, members, name, torch.stack([tau[name].float() for tau in vectors]), seed)
        for coef, tau in zip(coefficients, effective):
            total += float(coef) * tau
        merged[name] = total.to(pretrained[name].dtype)
    return merged
