"""Checks of a transformers run's directories that need no job: each task's model has the pretrained model's body
(another vocabulary's embeddings aside) and a tokenizer whose ids its embeddings hold and that gives the pretrained
tokenizer's tokens their ids.

Each was a run that extracted its task vectors and failed every evaluation job of the task (a fine-tune of a wider
model: `Expected weight to be of same shape as normalized_shape`; a tokenizer given tokens its model was never
resized for: `IndexError: index out of range in self`), or merged models whose embeddings index other tokens without
a word. Everything here reads JSON, text and safetensors headers only.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mapmerge.adapters.hub import is_name, snapshot
from mapmerge.adapters.transformers import DEFAULTS, HF_WEIGHTS, data_columns, header_shapes
from mapmerge.errors import ConfigError
from mapmerge.run.schema import close_folder, closest

Shape = tuple[int, ...]
CONFIG = "config.json"
# a checkpoint whose headers do not read (a file, a shard index): preflight's checks of the checkpoints name it
UNREADABLE = (ConfigError, OSError, ValueError, KeyError, TypeError)
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "added_tokens.json")
LABEL_KEYS = ("num_labels", "vocab_size")  # config.json integers a fine-tune may change: its head, added tokens


def check_block(block: Mapping[str, Any], base_dir: Path) -> None:
    """ConfigError, before the adapter resolves model.transformers, for what it would name wrongly or with a traceback:
    a local directory mistyped (a did-you-mean; the adapter took it for a Hugging Face name and said how to fetch it),
    a sharded save's index that is not one (model.safetensors.index.json; a traceback in the adapter's header read,
    or JSON's words without a file), and a text or label column set for every task that a task's data lacks (named by
    the key the user set, not the task's own key the adapter fills from it). Paths are relative to base_dir;
    directories given by a Hugging Face model name are left to the adapter."""
    tasks = block.get("tasks") if isinstance(block.get("tasks"), Mapping) else {}
    specs = {t: s for t, s in tasks.items() if isinstance(s, Mapping)}
    named = [("model.transformers.pretrained", block.get("pretrained"))]
    named += [(_task_key(t), s.get("directory")) for t, s in specs.items()]
    for key, value in named:
        folder = _local(value, base_dir)
        if folder is None:
            continue
        if not folder.exists():
            _check_mistyped(folder, str(value), key)
        elif (folder / HF_WEIGHTS[1]).is_file():
            _check_shard_index(folder / HF_WEIGHTS[1], key)
    columns = ["text_column"] + (
        ["label_column"] if block.get("task_type", DEFAULTS["task_type"]) == "sequence_classification" else []
    )
    for column in (c for c in columns if c in block):
        for task, spec in specs.items():
            data = _local(spec.get("data"), base_dir)
            if column in spec or data is None or not data.is_file():
                continue
            try:
                have = data_columns(data)
            except (ConfigError, OSError, ValueError):  # the adapter names the file's problem
                continue
            if block[column] not in have:
                raise ConfigError(
                    f"model.transformers.{column}: {data} (task {task}) has no column '{block[column]}'"
                    f"{closest(str(block[column]), have)} (it has: {', '.join(have)})"
                )


def _local(value: Any, base_dir: Path) -> Path | None:
    """A path key's value as a local path (relative to base_dir), None for no string."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _check_mistyped(folder: Path, value: str, key: str) -> None:
    """ConfigError with a did-you-mean for a directory that does not exist beside one of a close name (unless the
    value names a cached Hugging Face model)."""
    close = close_folder(folder)
    if close is None:
        return
    if is_name(value):
        try:
            snapshot(value, key)
            return
        except ConfigError:
            pass
    raise ConfigError(f"{key}: directory {folder.resolve()} not found (did you mean `{close.name}`?)")


def _check_shard_index(index: Path, key: str) -> None:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not a JSON object
        weight_map = None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConfigError(
            f"{key}: {index}: not a safetensors index (a JSON object whose weight_map maps tensor names to shard files)"
        )
    name, shard = next(((n, s) for n, s in weight_map.items() if not isinstance(s, str) or not s), (None, None))
    if name is not None:
        raise ConfigError(f"{key}: {index}: weight_map gives tensor '{name}' the shard {shard!r}, not a file name")


def check_same_bodies(model: Mapping[str, Any], tasks: list[str]) -> list[str]:
    """ConfigError for a task whose body tensor differs from the pretrained one's in a dimension that is not a
    vocabulary's (config.json vocab_size): fine-tuned from another model (another hidden size), which every
    evaluation of the task fails on, the model being built from one config.json for every task. Else a warning line
    per tensor of another vocabulary (its embeddings): the adapter leaves such a tensor out of the merge for every
    task (mapmerge.adapters.transformers.head_patterns), which changed the merge without a word."""
    found = list(_reshaped(model, tasks))  # each checkpoint's header read once, for both
    pre_config = _config(Path(model["pretrained"]).parent)
    for name, task, shape, pre_shape in found if pre_config is not None else []:
        task_config = _config(Path(model["tasks"][task]["checkpoint"]).parent) or {}
        vocabularies = _vocab_sizes(pre_config) | _vocab_sizes(task_config)
        if len(shape) == len(pre_shape) and all(
            a == b or (a in vocabularies and b in vocabularies) for a, b in zip(shape, pre_shape)
        ):
            continue
        raise ConfigError(
            f"{_task_key(task)}: tensor {name!r} has shape {shape}, the pretrained model's {pre_shape}"
            f"{config_differences(model['tasks'][task]['checkpoint'], model['pretrained'])}: not a fine-tune of the "
            "pretrained model, whose config.json builds every task's model"
        )
    tasks_of: dict[str, list[tuple[str, Shape, Shape]]] = {}
    for name, task, shape, pre_shape in found:
        tasks_of.setdefault(name, []).append((task, shape, pre_shape))
    lines = []
    for name, differ in tasks_of.items():
        task, shape, pre_shape = differ[0]
        lines.append(
            f"{_task_key(task)}: tensor {name!r} has shape {shape}, the pretrained model's {pre_shape}: "
            f"it is merged for no task{' (' + str(len(differ)) + ' tasks differ)' if len(differ) > 1 else ''}, each "
            "evaluating with its own"
        )
    return lines


def config_differences(weights: str, pretrained: str) -> str:
    """' (config.json: num_hidden_layers 3, the pretrained's 2)': the sizes in which the config.json beside a task's
    weights differs from the pretrained one's; '' where none does, or either has none."""
    config, pre = _config(Path(weights).parent), _config(Path(pretrained).parent)
    differ = _differing_sizes(config, pre) if config is not None and pre is not None else ""
    return f" ({CONFIG}: {differ})" if differ else ""


def check_tokenizer(evaluator: Mapping[str, Any], checkpoint: str, pretrained: str, task: str) -> None:
    """ConfigError where a task's tokenizer has token ids past its model's vocab_size: tokens added to the tokenizer
    without resizing the model's embeddings, which failed every evaluation whose text holds one."""
    folder = evaluator.get("tokenizer")
    if not folder:
        return
    largest = max(vocabulary(Path(folder)).values(), default=None)
    where = Path(checkpoint).parent if (Path(checkpoint).parent / CONFIG).is_file() else Path(pretrained).parent
    vocab = (_config(where) or {}).get("vocab_size")
    if largest is None or not isinstance(vocab, int) or largest < vocab:
        return
    raise ConfigError(
        f"{_task_key(task)}: the tokenizer in {folder} has token ids up to {largest}, but the model's vocab_size is "
        f"{vocab} ({where / CONFIG}): text with those tokens fails the evaluation; resize the model's embeddings to "
        "the tokenizer (model.resize_token_embeddings(len(tokenizer))) and save it again"
    )


def check_same_vocabulary(evaluator: Mapping[str, Any], pretrained: str, task: str) -> None:
    """ConfigError where a task's own tokenizer gives tokens of the pretrained tokenizer other ids: its model's
    embeddings index other tokens than the pretrained model's (another vocabulary, or one reordered), which the run
    merged and evaluated without a word. Tokens added past the pretrained vocabulary are the task's own."""
    folder, pre_folder = evaluator.get("tokenizer"), Path(pretrained).parent
    if not folder or Path(folder).resolve() == pre_folder.resolve():
        return
    ours, theirs = vocabulary(Path(folder)), vocabulary(pre_folder)
    if not ours or not theirs:
        return
    moved = [token for token, i in theirs.items() if token in ours and ours[token] != i]
    if moved:
        token = moved[0]
        raise ConfigError(
            f"{_task_key(task)}: the tokenizer in {folder} gives {len(moved)} of the pretrained tokenizer's tokens other "
            f"ids ({token!r}: {ours[token]}, the pretrained's {theirs[token]}), so its model's embeddings index other "
            "tokens than the pretrained model's: not a fine-tune of the pretrained model with its tokenizer"
        )


def vocabulary(folder: Path) -> dict[str, int]:
    """Token -> id of a tokenizer folder's files (tokenizer.json, else vocab.txt or vocab.json, with added tokens), read
    as JSON and text; {} where only a sentencepiece model (tokenizer.model) holds it. Read once per state of its files
    (the pretrained tokenizer is every task's comparison; a large model's tokenizer.json is megabytes)."""
    signature = tuple((f, s.st_mtime_ns, s.st_size) for f in VOCABULARY_FILES if (s := _stat(folder / f)) is not None)
    return _read_vocabulary(folder, signature)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


@functools.lru_cache(maxsize=16)
def _read_vocabulary(folder: Path, signature: tuple[tuple[str, int, int], ...]) -> dict[str, int]:
    tokens: dict[str, int] = {}
    fast = folder / "tokenizer.json"
    if fast.is_file():
        spec = json.loads(fast.read_text(encoding="utf-8"))
        vocab = (spec.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            tokens.update(vocab)
        elif isinstance(vocab, list):  # Unigram: [piece, score] in id order
            tokens.update({entry[0]: i for i, entry in enumerate(vocab)})
        tokens.update({t["content"]: t["id"] for t in spec.get("added_tokens") or []})
    elif (folder / "vocab.txt").is_file():
        with open(folder / "vocab.txt", encoding="utf-8") as fh:
            tokens.update({line.rstrip("\n"): i for i, line in enumerate(fh)})
    elif (folder / "vocab.json").is_file():
        tokens.update(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    if (folder / "added_tokens.json").is_file():
        tokens.update(json.loads((folder / "added_tokens.json").read_text(encoding="utf-8")))
    return tokens


def _reshaped(model: Mapping[str, Any], tasks: list[str]) -> Iterator[tuple[str, str, Shape, Shape]]:
    """(tensor, task, its shape there, the pretrained one's) of every tensor outside the heads that a task's
    checkpoint holds in another shape than the pretrained one."""
    if model.get("adapter") != "transformers":
        return
    try:
        pre = header_shapes(model["pretrained"])
    except UNREADABLE:  # the checks of the checkpoints name it
        return
    found = []
    for task in tasks:
        try:
            shapes = header_shapes(model["tasks"][task]["checkpoint"])
        except UNREADABLE:
            continue
        for name, shape in shapes.items():
            base = name if name in pre else name.partition(".")[2]  # a base model's names lack the body's prefix
            if base in pre and pre[base] != shape:
                found.append((name, task, tuple(shape), tuple(pre[base])))
    differing = {name for name, *_ in found}
    declared = [p for p in model["merge"]["exclude"] if p not in differing]  # the heads, and the user's patterns
    yield from (f for f in found if not any(fnmatch.fnmatchcase(f[0], p) for p in declared))


def _config(folder: Path) -> dict[str, Any] | None:
    path = folder / CONFIG
    return json.loads(path.read_text()) if path.is_file() else None


def _vocab_sizes(config: Mapping[str, Any]) -> set[int]:
    """Every vocab_size of a config.json, a multimodal one's text_config's among them."""
    sizes = {config["vocab_size"]} if isinstance(config.get("vocab_size"), int) else set()
    for value in config.values():
        if isinstance(value, dict):
            sizes |= _vocab_sizes(value)
    return sizes


def _differing_sizes(config: Mapping[str, Any], pre: Mapping[str, Any], shown: int = 3) -> str:
    """'hidden_size 32, the pretrained's 16; ...': the integers of two config.json files that differ, but for the
    ones a fine-tune may change (labels, vocabulary) and token ids."""
    keys = [
        k
        for k, v in config.items()
        if type(v) is int and type(pre.get(k)) is int and v != pre[k]
        if k not in LABEL_KEYS and not k.endswith("_token_id")
    ]
    return "; ".join(f"{k} {config[k]}, the pretrained's {pre[k]}" for k in keys[:shown])


def _task_key(task: str) -> str:
    return f"model.transformers.tasks.{task}.directory"
