"""Model adapters: turn a model family's own checkpoint layout into the generic model contract.

An adapter is a module mapmerge.adapters.<name> with resolve(model, base_dir) -> model, which fills
in builder, pretrained, tasks and merge (the contract of config/model/default.yaml) from the
adapter's own block model.<name>; paths are relative to base_dir (the experiment file's folder).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

ADAPTERS = ("transformers", "openclip")


def check_unused(model: dict[str, Any]) -> None:
    """ValueError when an adapter's block is set but model.adapter does not name it (it would be ignored)."""
    for name in ADAPTERS:
        if model.get(name) is not None and model.get("adapter") != name:
            raise ValueError(
                f"model.{name}: is set but model.adapter is {model.get('adapter')!r}; choose it with model={name} (or model.adapter: {name})"
            )


def resolve(model: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The generic model config for model.adapter (one of ADAPTERS: mapmerge.run.schema checks it)."""
    name = model["adapter"]
    adapter = importlib.import_module(f"mapmerge.adapters.{name}")
    return adapter.resolve(model, base_dir)
