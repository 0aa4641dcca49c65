"""Checks of an lm-eval task's local JSON data that need no job: what lm-eval found only when a job loaded the task,
after Snakemake had deleted that job's finished tables, and named in words that say neither the file nor the fault
(`KeyError('tst')`, `StopIteration()`, `TypeError: 'NoneType' object is not iterable`, `Sample larger than
population`).

From the task YAML (mapmerge.adapters.lm_eval_tasks.find_task) and its `dataset_path: json` files alone, lm_eval not
imported: the splits the YAML names are splits of its data_files; every file reads as JSON documents, some; the fields
its templates name (`{{question}}`, `doc_to_target: answer`; not in a template with a `{% ... %}` statement) are in
every document a job scores; num_fewshot leaves
documents to draw. Other builders, folders, globs and templates with more than a field name are left to lm-eval.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mapmerge.adapters.lm_eval_tasks import find_task
from mapmerge.errors import ConfigError
from mapmerge.run.schema import closest

SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")
TEMPLATE_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice")
FIELD = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")  # a template's bare field: {{question}}
NAME = re.compile(r"[A-Za-z_]\w*")
Document = tuple[str, dict[str, Any]]  # (file:line, the document)


def check_task_data(evaluator: Mapping[str, Any], key: str) -> None:
    """ConfigError naming the key, the file and the fault, for an lm-eval evaluator's task (see the module)."""
    info, cfg = find_task(Path(evaluator["include_path"]), evaluator["task"], f"{key}.task")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if cfg.get("dataset_path") != "json" or files is None:
        return
    where = f"{key}.task: {info.path}"
    splits = files if isinstance(files, dict) else {"train": files}  # datasets' name for unnamed data_files
    for name in SPLIT_KEYS:
        split = cfg.get(name)
        if split is not None and split not in splits:
            raise ConfigError(
                f"{where}: {name} {split} is not a split of its data_files ({', '.join(map(str, splits))})"
                f"{closest(str(split), [str(s) for s in splits])}"
            )
    docs = {split: _documents(info.path.parent, entries, where) for split, entries in splits.items()}
    scored = cfg.get("test_split") or cfg.get("validation_split")
    if scored is None or docs.get(scored) is None:
        return
    _check_fields(cfg, docs[scored][: evaluator.get("limit") or None], where, info.output_type)
    _check_fewshot(cfg, docs, scored, evaluator.get("num_fewshot"), key, where)


def _documents(folder: Path, entries: Any, where: str) -> list[Document] | None:
    """The documents of a split's files, in order; None where a file is not plainly named (a glob, a URL)."""
    docs: list[Document] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        if not isinstance(entry, str) or "://" in entry or any(c in entry for c in "*?["):
            return None
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else folder / path
        found = _read_json_documents(path, where)
        if not found:
            raise ConfigError(f"{where}: data file {path} holds no documents")
        docs += found
    return docs


def _read_json_documents(path: Path, where: str) -> list[Document]:
    """A JSON Lines file's objects (or a JSON array's), each with its file:line; ConfigError for one that is not."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: data file {path} is not JSON ({exc})") from None
        return [(f"{path} item {i}", row) for i, row in enumerate(rows) if _is_object(row, f"{path} item {i}", where)]
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{where}: {path}:{number}: not a JSON document ({exc})") from None
        if _is_object(row, f"{path}:{number}", where):
            docs.append((f"{path}:{number}", row))
    return docs


def _is_object(row: Any, at: str, where: str) -> bool:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: {at}: a document must be a JSON object, got {type(row).__name__}")
    return True


def _check_fields(cfg: Mapping[str, Any], docs: Sequence[Document], where: str, output_type: str) -> None:
    """Every field a template names in every scored document, not null; a multiple-choice doc_to_target or
    doc_to_choice that is a bare name must name a field (lm-eval took `answr` as the literal gold)."""
    if not docs:
        return
    first = docs[0][1]
    fields: list[tuple[str, str]] = []  # (template key, field)
    for name in TEMPLATE_KEYS:
        template = cfg.get(name)
        if not isinstance(template, str):
            continue
        if "{%" in template:  # a statement ({% if context %}) may name a field some documents lack
            continue
        if "{{" in template:
            fields += [(name, field) for field in FIELD.findall(template)]
        elif NAME.fullmatch(template) and name != "doc_to_text":
            if template in first:
                fields.append((name, template))
            elif output_type == "multiple_choice":
                raise ConfigError(
                    f"{where}: {name} {template} is not a field of its documents ({', '.join(first)})"
                    f"{closest(template, list(first))}"
                )
    for name, field in fields:
        if not any(field in doc for _, doc in docs):
            raise ConfigError(
                f"{where}: {name} names {field}, which no document has ({', '.join(first)}){closest(field, list(first))}"
            )
    for at, doc in docs:
        for name, field in fields:
            if doc.get(field) is None:
                raise ConfigError(f"{where}: {at}: the document has no {field} (its {name} names it)")
        if output_type == "multiple_choice":
            _check_gold(cfg, doc, at, where)


def _check_gold(cfg: Mapping[str, Any], doc: Mapping[str, Any], at: str, where: str) -> None:
    """A multiple-choice document's gold (doc_to_target's field) among its choices (doc_to_choice's list field): an
    index below their number, or one of them."""
    target, choice = (_field(cfg.get(k)) for k in ("doc_to_target", "doc_to_choice"))
    choices = doc.get(choice) if choice else None
    if target is None or not isinstance(choices, list) or target not in doc:
        return
    gold = doc[target]
    ok = 0 <= gold < len(choices) if isinstance(gold, int) and not isinstance(gold, bool) else gold in choices
    if not ok:
        raise ConfigError(f"{where}: {at}: gold {gold!r} ({target}) is not one of its {len(choices)} {choice}")


def _field(template: Any) -> str | None:
    """The document field a template is: `answer` or `{{answer}}`; None for anything else."""
    if not isinstance(template, str):
        return None
    found = FIELD.fullmatch(template.strip()) or NAME.fullmatch(template.strip())
    return (found.group(1) if found.re is FIELD else found.group(0)) if found else None


def _check_fewshot(
    cfg: Mapping[str, Any], docs: Mapping[str, Any], scored: str, shots: Any, key: str, where: str
) -> None:
    """num_fewshot at most the documents lm-eval draws them from (fewshot_split, else the training, validation or
    test split, the scored document itself left out)."""
    if not shots:
        return
    source = next((cfg[k] for k in ("fewshot_split", "training_split", "validation_split") if cfg.get(k)), scored)
    if docs.get(source) is None:
        return
    available = len(docs[source]) - (1 if source == scored else 0)
    if shots > available:
        raise ConfigError(
            f"{key}.num_fewshot: {shots} examples, but {where.split(': ', 1)[1]} draws them from split {source}, which "
            f"holds {available}{' besides the document scored' if source == scored else ''}"
        )
