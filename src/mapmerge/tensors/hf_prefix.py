"""transformers' base_model_prefix of a model (the attribute holding its body: 'bert', 'transformer', 'model').

Read from the source of the model's modeling file in the installed transformers (parsed, not imported:
0.003-0.01 s, where importing the model class costs 2-3 s in a job that may need nothing else of transformers);
when the source does not settle it (a prefix inherited from a class of another file, an unusual layout) the
class is imported and asked.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mapmerge.io import ArtifactError


def base_model_prefix(config: Mapping[str, Any]) -> str:
    """The base_model_prefix of a transformers config.json's model ('' when it has none)."""
    architectures = config.get("architectures") or []
    return _prefix(str(architectures[0]) if architectures else "", str(config["model_type"]))


@functools.cache
def _prefix(architecture: str, model_type: str) -> str:
    found = prefix_from_source(architecture, model_type)
    return found if found is not None else prefix_from_class(architecture, model_type)


def prefix_from_source(architecture: str, model_type: str) -> str | None:
    """The prefix as the modeling file of model_type assigns it to `architecture` or the classes it derives from
    in that file (without an architecture: the one value the file assigns), or None when the source does not say."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = model_type.replace("-", "_")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / folder / f"modeling_{folder}.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    if not architecture:
        values = {_assigned(node) for node in classes.values()} - {None}
        return values.pop() if len(values) == 1 else None
    return _inherited(architecture, classes, set())


def _inherited(name: str, classes: dict[str, ast.ClassDef], seen: set[str]) -> str | None:
    """base_model_prefix of class `name` through its bases, depth first (None: a base outside the file comes first)."""
    node = classes.get(name)
    if node is None or name in seen:
        return None
    seen.add(name)
    value = _assigned(node)
    if value is not None:
        return value
    for base in node.bases:
        base_name = base.id if isinstance(base, ast.Name) else None
        if base_name in classes:
            found = _inherited(base_name, classes, seen)
            if found is not None:
                return found
        elif base_name not in {"GenerationMixin", "object"}:  # mixins hold no prefix; anything else might
            return None
    return None


def _assigned(node: ast.ClassDef) -> str | None:
    """The string a class body assigns to base_model_prefix, if any."""
    for statement in node.body:
        targets = (
            statement.targets
            if isinstance(statement, ast.Assign)
            else [statement.target]
            if isinstance(statement, ast.AnnAssign) and statement.value is not None
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "base_model_prefix" for t in targets):
            value = statement.value
            return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None
    return None


def prefix_from_class(architecture: str, model_type: str) -> str:
    """The prefix as the imported model class has it (the architecture's, else model_type's base model class)."""
    try:
        import transformers  # deferred: seconds to import, only where the source did not settle it
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES  # deferred: as above
    except ImportError as exc:
        raise ArtifactError(
            f"reading a transformers checkpoint ({model_type}) needs transformers: pip install 'mapmerge[models]'"
        ) from exc
    cls = getattr(transformers, architecture, None) or getattr(
        transformers, MODEL_MAPPING_NAMES.get(model_type, ""), None
    )
    return str(getattr(cls, "base_model_prefix", "") or "")
