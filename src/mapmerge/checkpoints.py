"""Reading and writing model weights: safetensors or torch state dicts, checked on the way in."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mapmerge.io import ArtifactError, atomic_path, recompute_hint

METADATA_KEY = "mapmerge"


def load_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a checkpoint (safetensors, or a torch state dict) as a flat name -> tensor dict.

    Raises ArtifactError naming the file when it is missing, unreadable, not a state dict,
    or holds NaN/inf in a floating-point tensor.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path), device=device)
        else:
            obj = torch.load(path, map_location=device, weights_only=True)
            if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
                obj = obj["state_dict"]
            if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise ArtifactError(f"{path}: not a state dict of tensors")
            tensors = dict(obj)
    except (SafetensorError, RuntimeError, OSError, EOFError) as exc:
        raise ArtifactError(f"{path}: unreadable checkpoint ({exc}); if the workflow made it, {recompute_hint(path)}") from exc
    for name, tensor in tensors.items():
        _check_finite(path, name, tensor)
    return tensors


def _check_finite(path: Path, name: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ArtifactError(f"{path}: tensor '{name}' holds NaN or inf")


def verify_safetensors(path: str | os.PathLike) -> None:
    """Read every tensor of a safetensors file, one at a time; ArtifactError when one is unreadable or not finite."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                _check_finite(path, name, fh.get_tensor(name))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ArtifactError(f"{path}: unreadable safetensors ({exc})") from exc


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save tensors as safetensors atomically (contiguous CPU copies), with metadata.

    The metadata goes into one header entry as sorted JSON: safetensors writes several entries in
    random order, and the same tensors must give the same bytes.
    """
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {METADATA_KEY: json.dumps(dict(metadata), sort_keys=True, default=str)} if metadata else None
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=header)
    return Path(path)


def safetensors_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The metadata that save_safetensors stored in a file's header."""
    with safe_open(str(path), framework="pt") as fh:
        return json.loads((fh.metadata() or {}).get(METADATA_KEY, "{}"))
