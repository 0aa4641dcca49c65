"""Files a job reads that no rule names: what the evaluators and the model's builder open by themselves (a task's
data file, a model folder's config and tokenizer files, an lm-eval task's folder and data files) and the files
behind a checkpoint (the shards a sharded checkpoint's index names, a PEFT adapter's config).

The workflow declares them as the `reads` input of the jobs that read them, so Snakemake reruns those jobs
when one of them changes, and the evaluation cache hashes their bytes into its key, so an edited data file
misses the cache. The stage function never gets them: mapmerge.run.job leaves `reads` out of its call.
A run whose jobs read no such file declares no `reads` input at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mapmerge.adapters import lm_eval_tasks
from mapmerge.run.registry import READS

__all__ = ["READS", "behind", "evaluation_reads", "evaluator_files", "spec_files", "stamps"]
# names of mapmerge.tensors.checkpoints and .lora (which import torch; the config must not): a sharded checkpoint's
# index, and the config beside a PEFT adapter's weights
SHARD_INDEX_SUFFIX = ".safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# what transformers reads from a model folder besides its weights: the model's config and its tokenizer's files
HF_MARKERS = ("config.json", "tokenizer_config.json")
HF_FILES = (
    *HF_MARKERS,
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def behind(checkpoint: str | os.PathLike) -> list[str]:
    """The files read with a checkpoint: the shards a sharded safetensors checkpoint's index names, a PEFT
    adapter's adapter_config.json (its scale, its target modules); none for a checkpoint in one file."""
    path = Path(checkpoint)
    if path.name == ADAPTER_WEIGHTS and (path.parent / ADAPTER_CONFIG).is_file():
        return [str((path.parent / ADAPTER_CONFIG).resolve())]
    if not path.name.endswith(SHARD_INDEX_SUFFIX):
        return []
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):  # a job that opens it says what is wrong
        return []
    return sorted({str((path.parent / shard).resolve()) for shard in weight_map.values() if isinstance(shard, str)})


def evaluator_files(spec: Mapping[str, Any], folders: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The files an evaluator (or the model's builder) opens by itself, from its spec (spec_files, also relative to
    `folders`); for an lm-eval task also every file under its include_path and the task's data files."""
    found = set(spec_files(spec, folders))
    if spec.get("_target_") == lm_eval_tasks.TARGET:
        found.update(_lm_eval_files(Path(spec["include_path"]), spec["task"]))
    return sorted(found)


def spec_files(spec: Mapping[str, Any], folders: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The files a spec's strings name: each that names a file (absolute, or relative to the current folder, the
    jobs' own, or to one of `folders`, the model's python_path, where the user's code may open it from its own
    folder; with a folder or a suffix in it), and of each that names a Hugging Face model folder (one with a
    config.json or tokenizer_config.json) the config and tokenizer files in it (HF_FILES). Other folders are not
    read, nor a model folder's weights (those the rules name are inputs already)."""
    found = set()
    for value in _strings(spec):
        named = Path(value).expanduser()
        if not (named.is_absolute() or "/" in value or named.suffix):  # a plain word ('digits') is no path
            continue
        for path in [named, *(Path(folder) / named for folder in folders if not named.is_absolute())]:
            try:
                if path.is_file():
                    found.add(str(path.resolve()))
                elif any((path / name).is_file() for name in HF_MARKERS):
                    found.update(str((path / name).resolve()) for name in HF_FILES if (path / name).is_file())
            except OSError:  # a name too long to be a path
                continue
    return sorted(found)


def stamps(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """Each existing file's size and mtime, `<bytes>:<ns>`, by path (in order): a param of the jobs that read the
    files, so that a file replaced by other bytes with an older mtime (cp -p, tar x, rsync -a), which Snakemake's
    mtime check passes over, reruns them."""
    found = {}
    for path in sorted({os.fspath(p) for p in paths}):
        try:
            stat = os.stat(path)
        except OSError:  # not there (yet): a job that needs it says so
            continue
        found[path] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return found


def evaluation_reads(model: Mapping[str, Any], tasks: Sequence[str]) -> list[str]:
    """What an evaluation job reads besides the files its rule names: the files the model's builder and every
    task's evaluator open by themselves (named relative to the current folder or to a python_path folder), and those
    behind the pretrained and fine-tuned checkpoints."""
    checkpoints = [model["pretrained"], *(model["tasks"][task]["checkpoint"] for task in tasks)]
    folders = model.get("python_path") or ()
    found = set(spec_files(model["builder"], folders))
    for checkpoint in checkpoints:
        found.update(behind(checkpoint))
    for task in tasks:
        found.update(evaluator_files(model["tasks"][task]["evaluator"], folders))
    return sorted(found - {str(Path(p).resolve()) for p in checkpoints})  # those the rules name already


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key != "_target_":
                yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def _lm_eval_files(include_path: Path, task: str) -> list[str]:
    """Every file lm-eval may read for the task: those under include_path (its task index reads every YAML there;
    `!function` modules and data often lie beside them) and the task's local data files or dataset folder."""
    found = set(_tree(include_path, lm_eval_tasks.IGNORED_DIRS))
    info, cfg = lm_eval_tasks.find_task(include_path, task, "lm_eval.task")
    folder = info.path.parent
    dataset = folder / Path(str(cfg.get("dataset_path"))).expanduser()
    if dataset.is_dir():
        found.update(_tree(dataset, lm_eval_tasks.IGNORED_DIRS))
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    for entry in files.values() if isinstance(files, dict) else [files]:
        for name in entry if isinstance(entry, list) else [entry]:
            if isinstance(name, str) and (folder / Path(name).expanduser()).is_file():
                found.add(str((folder / Path(name).expanduser()).resolve()))
    return sorted(found)


def _tree(folder: Path, ignored: Iterable[str]) -> Iterator[str]:
    """The regular files under folder, but in hidden folders or those named in `ignored`."""
    skip = set(ignored)
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if not name.startswith(".") and path.is_file():
                yield str(path.resolve())
