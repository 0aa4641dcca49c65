"""LoRA fine-tunes (PEFT adapters) as low-rank task vectors, never densified on disk.

A PEFT adapter is a directory with `adapter_config.json` and `adapter_model.safetensors`, whose
`base_model.model.<module>.lora_A.weight` [r x in] and `.lora_B.weight` [out x r] adapt the Linear
layer `<module>`: its weight W0 becomes W0 + s B A, s = lora_alpha / r (lora_alpha / sqrt(r) with
use_rslora). mapmerge reads the JSON and the safetensors itself (peft is not needed).

A task-vector artifact holds per merged tensor `name` (the base model's state-dict name, as
mapmerge.tensors.checkpoints names it) either the dense tau under `name`, or a low-rank tau as two
tensors `name::lora_A` [r x in] and `name::lora_B` [out x r] with s folded into lora_B, so that
tau = lora_B @ lora_A. A member holding low-rank tensors lacks those its adapter leaves alone (they
contribute zero). Only plain LoRA on Linear layers is read; the rest is refused (see read_adapter).

Importing this module does not import torch: the config loader detects and checks adapters.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mapmerge.io import ArtifactError, safetensors_shapes

if TYPE_CHECKING:
    import torch

    Delta = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # dense tau, or (lora_A, lora_B): tau = lora_B @ lora_A

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FACTOR_A, FACTOR_B = "::lora_A", "::lora_B"  # a low-rank tau's keys in a task-vector artifact: name + suffix
# base_model.model.<module>.lora_A[.<adapter name>].weight
_FACTOR_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")
# adapter_config.json keys that change what the adapter computes beyond W0 + s B A: (key, feature) refused when set
_REFUSED = (
    ("use_dora", "DoRA (use_dora)"),
    ("lora_bias", "a trained LoRA bias (lora_bias)"),
    ("modules_to_save", "modules_to_save (whole modules trained beside LoRA: heads)"),
    ("fan_in_fan_out", "fan_in_fan_out (Conv1D layers: GPT-2's)"),
    ("alpha_pattern", "per-module lora_alpha (alpha_pattern)"),
    ("layer_replication", "layer_replication"),
    ("target_parameters", "LoRA on parameters (target_parameters)"),
    ("trainable_token_indices", "trainable tokens (trainable_token_indices)"),
    ("use_qalora", "QALoRA (use_qalora)"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora)"),
)


class TensorSource(Protocol):
    """What task vectors are read from: a LazyCheckpoint or a plain name -> tensor dict."""

    def __contains__(self, name: object) -> bool: ...

    def get(self, name: str) -> Any: ...

    def keys(self) -> Iterable[str]: ...


@dataclass(frozen=True)
class LoraModule:
    """One adapted Linear layer: its PEFT module path, the factors' keys and shapes, and the scale s."""

    module: str
    key_a: str
    key_b: str
    rank: int
    in_features: int
    out_features: int
    scale: float


@dataclass(frozen=True)
class Adapter:
    """A PEFT LoRA adapter: its weights file and the layers it adapts (module path -> LoraModule)."""

    weights: Path
    modules: dict[str, LoraModule]


def adapter_weights(path: str | os.PathLike) -> Path | None:
    """The adapter_model.safetensors of a PEFT adapter (given its directory or that file), else None."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if not (directory / ADAPTER_CONFIG).is_file() or (path != directory and path.name != ADAPTER_WEIGHTS):
        return None
    return directory / ADAPTER_WEIGHTS


def read_adapter(path: str | os.PathLike) -> Adapter:
    """Read and check a PEFT adapter's config and safetensors header (no tensor data, no torch).

    ArtifactError naming the file for a missing or unreadable one, another PEFT method than LoRA, and
    what mapmerge does not merge: DoRA, bias training (bias != none, lora_bias), modules_to_save,
    LoRA on embeddings or convolutions, and the other options of _REFUSED.
    """
    weights = adapter_weights(path)
    if weights is None:
        raise ArtifactError(f"{path}: not a PEFT adapter (no {ADAPTER_CONFIG})")
    config_path = weights.parent / ADAPTER_CONFIG
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{config_path}: unreadable adapter config ({' '.join(str(exc).split())})") from exc
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_path}: not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise ArtifactError(f"{config_path}: PEFT method {config.get('peft_type')} is not supported (LoRA only)")
    for key, feature in _REFUSED:
        if config.get(key):
            raise ArtifactError(
                f"{config_path}: {feature} is not supported; mapmerge merges plain LoRA on Linear layers"
            )
    if config.get("bias", "none") != "none":
        raise ArtifactError(
            f"{config_path}: trained biases (bias: {config['bias']}) are not supported; mapmerge merges plain LoRA on Linear layers"
        )
    if not weights.is_file():
        raise ArtifactError(f"{weights.parent}: PEFT adapter without {ADAPTER_WEIGHTS} (save it with safetensors)")
    alpha, rslora = float(config.get("lora_alpha", 8)), bool(config.get("use_rslora"))
    factors: dict[str, dict[str, tuple[str, list[int]]]] = {}
    shapes = safetensors_shapes(weights)
    embedding = next((key for key in shapes if "lora_embedding_" in key), None)
    if embedding is not None:
        raise ArtifactError(
            f"{weights}: embedding LoRA ('{embedding}') is not supported; mapmerge merges LoRA on Linear layers"
        )
    for key, shape in shapes.items():
        match = _FACTOR_KEY.match(key)
        if match is None:
            raise ArtifactError(
                f"{weights}: tensor '{key}' is not a LoRA factor (lora_A / lora_B weight); not supported"
            )
        if len(shape) != 2:
            raise ArtifactError(
                f"{weights}: tensor '{key}' has shape {tuple(shape)}: LoRA on convolutions is not supported (Linear layers only)"
            )
        pair = factors.setdefault(match["module"], {})
        if match["factor"] in pair:
            raise ArtifactError(
                f"{weights}: holds two lora_{match['factor']} of layer '{match['module']}' (several adapters)"
            )
        pair[match["factor"]] = (key, shape)
    if not factors:
        raise ArtifactError(f"{weights}: holds no LoRA factors")
    modules = {}
    for module, pair in sorted(factors.items()):
        if len(pair) != 2:
            have, lacks = ("A", "B") if "A" in pair else ("B", "A")
            raise ArtifactError(f"{weights}: layer '{module}' has lora_{have} without lora_{lacks}")
        (key_a, (rank, n_in)), (key_b, (n_out, rank_b)) = pair["A"], pair["B"]
        if rank != rank_b:
            raise ArtifactError(f"{weights}: layer '{module}' has lora_A of rank {rank} but lora_B of rank {rank_b}")
        scale = alpha / (math.sqrt(rank) if rslora else rank)
        modules[module] = LoraModule(module, key_a, key_b, rank, n_in, n_out, scale)
    return Adapter(weights, modules)


def target_names(
    adapter: Adapter, pretrained: Mapping[str, Any], pretrained_path: str | os.PathLike, merged: Sequence[str]
) -> dict[str, LoraModule]:
    """Pretrained tensor name -> the LoraModule adapting it; ArtifactError naming the adapter where none fits or
    it adapts a tensor outside `merged` (the names model.merge merges).

    A module `m` adapts the pretrained weight `m.weight`, or `<prefix>.m.weight` when the adapter was
    trained on the base model (BertModel's `encoder.*` for the checkpoint's `bert.encoder.*`).
    pretrained: name -> tensor (a 'meta' one will do) of the pretrained checkpoint.
    """
    out = {}
    for module, lora in adapter.modules.items():
        name = f"{module}.weight"
        if name not in pretrained:
            prefixed = [n for n in pretrained if n.count(".") == name.count(".") + 1 and n.endswith(f".{name}")]
            if len(prefixed) != 1:
                raise ArtifactError(f"{adapter.weights}: adapts '{module}', which has no weight in {pretrained_path}")
            name = prefixed[0]
        shape = tuple(pretrained[name].shape)
        if shape != (lora.out_features, lora.in_features):
            raise ArtifactError(
                f"{adapter.weights}: layer '{module}' maps {lora.in_features} -> {lora.out_features} features, "
                f"{pretrained_path} has '{name}' of shape {shape}"
            )
        out[name] = lora
    outside = sorted(set(out) - set(merged))
    if outside:
        raise ArtifactError(
            f"{adapter.weights}: adapts '{outside[0]}', which model.merge does not merge (include/exclude)"
        )
    return out


def extract_lora_vector(
    adapter_path: str | os.PathLike,
    pretrained: Mapping[str, Any],
    pretrained_path: str | os.PathLike,
    merged: Sequence[str],
    storage: torch.dtype,
) -> tuple[dict[str, torch.Tensor], dict[str, float | int]]:
    """The low-rank task vector of an adapter (name::lora_A, name::lora_B with s folded into lora_B) and its stats.

    pretrained: the pretrained checkpoint's tensors by name ('meta' ones will do); merged: the names
    model.merge merges: ArtifactError when the adapter adapts another. The factors are scaled in float32
    and stored in `storage`. Stats: n_tensors, n_params (of the dense tensors), n_stored (of the
    factors), norm (Frobenius norm of tau, from the factors).
    """
    import torch

    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch (the config loader imports lora)

    adapter = read_adapter(adapter_path)
    targets = target_names(adapter, pretrained, pretrained_path, merged)
    tau: dict[str, torch.Tensor] = {}
    n_params, n_stored, squares = 0, 0, 0.0
    with open_checkpoint(adapter.weights) as reader:
        for name, lora in sorted(targets.items()):
            a = reader.get(lora.key_a).float().to(storage)
            b = (reader.get(lora.key_b).float() * lora.scale).to(storage)
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise ArtifactError(
                    f"{adapter.weights}: layer '{lora.module}' scaled by {lora.scale:g} overflows {storage}"
                )
            tau[name + FACTOR_A], tau[name + FACTOR_B] = a, b
            n_params += lora.in_features * lora.out_features
            n_stored += a.numel() + b.numel()
            squares += float(inner((a, b), (a, b)))
    return tau, {"n_tensors": len(targets), "n_params": n_params, "n_stored": n_stored, "norm": math.sqrt(squares)}


def is_low_rank(keys: Iterable[str]) -> bool:
    """Whether a task-vector artifact's keys hold low-rank tensors."""
    return any(k.endswith(FACTOR_A) or k.endswith(FACTOR_B) for k in keys)


def vector_names(source: TensorSource, path: str | os.PathLike = "task vector") -> list[str]:
    """The sorted merged tensors' names of a task vector (dense or low-rank); ArtifactError naming the file
    where a low-rank tensor lacks one of its factors."""
    names = set()
    for key in source.keys():
        for suffix, other in ((FACTOR_A, FACTOR_B), (FACTOR_B, FACTOR_A)):
            if key.endswith(suffix):
                key = key.removesuffix(suffix)
                if key + other not in source:
                    raise ArtifactError(f"{path}: low-rank tensor '{key}' has {suffix[2:]} without {other[2:]}")
        names.add(key)
    return sorted(names)


def member_delta(source: TensorSource, name: str) -> Delta | None:
    """A task vector's tau of tensor `name`: the dense tensor, its (lora_A, lora_B), or None where it lacks it."""
    if name in source:
        return source.get(name)
    if name + FACTOR_A in source:
        return source.get(name + FACTOR_A), source.get(name + FACTOR_B)
    return None


def delta_shape(delta: Delta) -> tuple[int, ...]:
    """The shape of tau (lora_B @ lora_A for a low-rank one)."""
    if isinstance(delta, tuple):
        return (delta[1].shape[0], delta[0].shape[1])
    return tuple(delta.shape)


def inner(x: Delta, y: Delta) -> torch.Tensor:
    """<x, y> (Frobenius, float64) of two taus, dense or low-rank, never forming a low-rank one densely."""
    if isinstance(x, tuple) and isinstance(y, tuple):  # tr(A1^T B1^T B2 A2) through r1 x r2 matrices
        (a1, b1), (a2, b2) = x, y
        return ((b1.double().T @ b2.double()) * (a1.double() @ a2.double().T)).sum()
    if isinstance(x, tuple) or isinstance(y, tuple):  # <T, B A> = <B^T T, A>
        (a, b), dense = (x, y) if isinstance(x, tuple) else (y, x)
        return ((b.double().T @ dense.double()) * a.double()).sum()
    return x.double().flatten() @ y.double().flatten()


def merge_deltas(total: torch.Tensor, deltas: Iterable[Delta | None], coefficients: Sequence[float]) -> torch.Tensor:
    """total += sum_i c_i tau_i in place (total: float32): dense taus one at a time, then the low-rank ones as one
    rank-(sum r_i) product [c_1 B_1 ... c_n B_n] @ [A_1; ...; A_n]. Members lacking the tensor (None) add nothing."""
    import torch

    lefts, rights = [], []
    for coef, delta in zip(coefficients, deltas, strict=True):
        if isinstance(delta, tuple):
            rights.append(delta[0].float())
            lefts.append(delta[1].float() * float(coef))
        elif delta is not None:
            total += float(coef) * delta.float()
    if lefts:
        total.addmm_(torch.cat(lefts, dim=1), torch.cat(rights, dim=0))
    return total


def low_rank_sum(
    deltas: Iterable[tuple[torch.Tensor, torch.Tensor] | None], coefficients: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i c_i B_i A_i as one low-rank tau (lora_A, lora_B) of rank sum r_i, float32: what a nested level merges."""
    import torch

    rights, lefts = [], []
    for coef, delta in zip(coefficients, deltas, strict=True):
        if delta is not None:
            rights.append(delta[0].float())
            lefts.append(delta[1].float() * float(coef))
    return torch.cat(rights, dim=0), torch.cat(lefts, dim=1)
