"""Hugging Face transformers models: directories in, the generic model contract out (model.adapter: transformers).

resolve() turns model.transformers (a pretrained directory, one fine-tuned directory or PEFT LoRA adapter
and one local data file or, for a causal LM, an lm-eval task (mapmerge.adapters.lm_eval_tasks) per task)
into builder, pretrained, tasks and merge.exclude; it reads only JSON, task YAMLs and file headers (every
workflow job resolves the config), never transformers itself. Weights are read by
mapmerge.tensors.checkpoints (safetensors, sharded or not, with a base model's names given transformers'
base_model_prefix). The evaluators tokenize their data once per job and return per-example rows;
save_merged_models writes each task's merged model as a directory that from_pretrained loads. Wherever a
directory is taken, a Hugging Face model name (org/name[@revision]) names its snapshot in the local cache
(mapmerge.adapters.hub).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mapmerge.adapters import hub, lm_eval_tasks
from mapmerge.errors import ConfigError
from mapmerge.io import ArtifactError, atomic_path, safetensors_shapes
from mapmerge.tensors.lora import adapter_weights, read_adapter, vector_names

# a directory's weights, as mapmerge.tensors.checkpoints reads them (not imported: it imports torch, and every
# workflow job resolves the config)
SHARD_INDEX_SUFFIX = ".safetensors.index.json"
HF_WEIGHTS = ("model.safetensors", "model" + SHARD_INDEX_SUFFIX)
TASK_TYPES = {"sequence_classification": "AutoModelForSequenceClassification", "causal_lm": "AutoModelForCausalLM"}
EVALUATORS = {
    "sequence_classification": "mapmerge.adapters.transformers.SequenceClassificationEvaluator",
    "causal_lm": "mapmerge.adapters.transformers.CausalLMEvaluator",
}
# model.transformers defaults (config/model/transformers.yaml documents them); per task, the
# evaluation keys may be overridden
DEFAULTS: dict[str, Any] = {
    "pretrained": None,
    "task_type": "sequence_classification",
    "heads": "auto",
    "text_column": "text",
    "label_column": "label",
    "max_length": 128,
    "batch_size": 32,
    "limit": None,
    "tasks": {},
}
EVALUATION_KEYS = ("text_column", "label_column", "max_length", "batch_size", "limit")
DATA_SUFFIXES = (".csv", ".jsonl", ".parquet")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
# what save_merged_models copies from the pretrained directory into a task's that has no tokenizer
TOKENIZER_EXTRA = (
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
MAX_SHARD_SIZE = "5GB"  # save_merged_models' shard size (transformers < 5's; huggingface_hub's default)
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".h5",
    ".msgpack",
    ".ckpt",
    SHARD_INDEX_SUFFIX,
    ".bin.index.json",
)


def resolve(model: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The generic model config of model.transformers; ConfigError naming the key or file when something is wrong.

    A task's directory may be a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) of the
    pretrained model: its checkpoint is then the adapter's weights (a low-rank task vector), and its
    config, labels and head are the pretrained directory's.
    """
    block = {**DEFAULTS, **(model.get("transformers") or {})}  # keys and values checked by mapmerge.run.schema
    task_type = block["task_type"]
    pretrained = _directory(block["pretrained"], "model.transformers.pretrained", base_dir)
    tasks = block["tasks"]
    if not isinstance(tasks, dict) or len(tasks) < 2:
        raise ConfigError("model.transformers.tasks: must map at least two task names to {directory, data or lm_eval}")
    resolved, directories = {}, {}
    for task, spec in tasks.items():
        key = f"model.transformers.tasks.{task}"
        directory, adapter = _task_directory(spec["directory"], f"{key}.directory", base_dir)
        directories[task] = pretrained if adapter else directory  # the task's config.json, labels and head
        settings = {k: spec.get(k, block[k]) for k in EVALUATION_KEYS}
        tokenizer = _tokenizer_dir(directory, pretrained, key)
        if spec.get("lm_eval") is not None:
            if task_type != "causal_lm":
                raise ConfigError(f"{key}.lm_eval: needs model.transformers.task_type causal_lm (it is {task_type})")
            evaluator = lm_eval_tasks.evaluator_spec(
                spec["lm_eval"], f"{key}.lm_eval", base_dir, tokenizer, settings["batch_size"], settings["limit"]
            )
        else:
            data = _data_file(spec["data"], f"{key}.data", base_dir)
            columns = [settings["text_column"]] + (
                [settings["label_column"]] if task_type == "sequence_classification" else []
            )
            _check_columns(data, columns, key)
            evaluator = {
                "_target_": EVALUATORS[task_type],
                "data": str(data),
                "tokenizer": str(tokenizer),
                "text_column": settings["text_column"],
                "max_length": settings["max_length"],
                "batch_size": settings["batch_size"],
                "limit": settings["limit"],
            }
            if task_type == "sequence_classification":
                evaluator.update(label_column=settings["label_column"], directory=str(directories[task]))
        checkpoint = adapter or weights_file(directory, f"{key}.directory")
        resolved[str(task)] = {"checkpoint": str(checkpoint), "evaluator": evaluator}
    first = next(iter(directories.values()))
    heads = head_patterns(
        block["heads"],
        task_type,
        weights_file(pretrained, "model.transformers.pretrained"),
        [weights_file(d, "") for d in directories.values()],
    )
    merge = dict(model.get("merge") or {})
    merge["exclude"] = [*(merge.get("exclude") or []), *(p for p in heads if p not in (merge.get("exclude") or []))]
    return {
        **model,
        "builder": {
            "_target_": "mapmerge.adapters.transformers.build_model",
            "directory": str(first),
            "task_type": task_type,
        },
        "pretrained": str(weights_file(pretrained, "model.transformers.pretrained")),
        "tasks": resolved,
        "merge": merge,
    }


def _task_directory(value: Any, key: str, base_dir: Path) -> tuple[Path, Path | None]:
    """(directory, its adapter weights) of a PEFT LoRA adapter (checked: mapmerge.tensors.lora.read_adapter), else
    (the fine-tuned model directory, None); either may be given by a Hugging Face model name (_model_path)."""
    path = _model_path(value, key, base_dir)
    adapter = adapter_weights(path) if path.is_dir() else None
    if adapter is None:
        return _directory(str(path), key, base_dir), None
    try:
        read_adapter(adapter)
    except ArtifactError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return path, adapter


def _model_path(value: Any, key: str, base_dir: Path) -> Path:
    """A model directory key's value as a path: a directory (relative to base_dir) where one of that spelling
    exists, else the cached snapshot of a Hugging Face model name `org/name[@revision]` (mapmerge.adapters.hub)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a model directory path or a Hugging Face model name (org/name)")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (base_dir / path).resolve()
    return hub.model_path(value, key, path)


def _directory(value: Any, key: str, base_dir: Path) -> Path:
    path = _model_path(value, key, base_dir)
    if not path.is_dir():
        raise ConfigError(f"{key}: directory {path} not found")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}: {path} has no config.json (not a transformers model directory)")
    weights_file(path, key)
    return path


def weights_file(directory: Path, key: str) -> Path:
    """A transformers directory's weights: model.safetensors, or the index of a sharded save."""
    for name in reversed(HF_WEIGHTS):  # the index first: a sharded save has no model.safetensors
        if (directory / name).is_file():
            return directory / name
    raise ConfigError(f"{key}: {directory} has neither {' nor '.join(HF_WEIGHTS)} (save it with save_pretrained)")


def _data_file(value: Any, key: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a data file path ({', '.join(DATA_SUFFIXES)})")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (base_dir / path).resolve()
    if path.suffix not in DATA_SUFFIXES:
        raise ConfigError(f"{key}: {path} is not a {', '.join(DATA_SUFFIXES)} file")
    if not path.is_file():
        raise ConfigError(f"{key}: data file {path} not found")
    return path


def _check_columns(path: Path, columns: Sequence[str], key: str) -> None:
    have = data_columns(path)
    for column, name in zip(columns, ("text_column", "label_column")):
        if column not in have:
            raise ConfigError(f"{key}.{name}: {path} has no column '{column}' (it has: {', '.join(have)})")


def data_columns(path: str | os.PathLike) -> list[str]:
    """The column names of a CSV, JSONL or Parquet data file, from its header (first line, schema)."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if path.suffix == ".csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        with open(path, encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "{}")
        record = json.loads(first)
        return list(record) if isinstance(record, dict) else []
    except Exception as exc:  # pandas, pyarrow and json raise several types
        raise ConfigError(f"{path}: unreadable data file ({' '.join(str(exc).split())})") from exc


def read_examples(path: str | os.PathLike, columns: Sequence[str], limit: int | None = None) -> pd.DataFrame:
    """The first `limit` rows (all when None) of `columns` of a CSV, JSONL or Parquet file.

    ConfigError naming the file when it is missing, of another kind, unreadable, empty or lacks a column.
    """
    path = Path(path)
    if path.suffix not in DATA_SUFFIXES:
        raise ConfigError(f"{path}: not a {', '.join(DATA_SUFFIXES)} data file")
    if not path.is_file():
        raise ConfigError(f"{path}: data file not found")
    have = data_columns(path)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ConfigError(f"{path}: no column '{missing[0]}' (it has: {', '.join(have)})")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path, columns=list(columns))
        elif path.suffix == ".csv":
            frame = pd.read_csv(path, usecols=list(columns), nrows=limit, keep_default_na=False)
        else:
            frame = pd.read_json(path, lines=True, nrows=limit)[list(columns)]
    except Exception as exc:  # pandas and pyarrow raise several types
        raise ConfigError(f"{path}: unreadable data file ({' '.join(str(exc).split())})") from exc
    frame = frame.iloc[:limit] if limit is not None else frame
    if frame.empty:
        raise ConfigError(f"{path}: holds no examples")
    return frame.reset_index(drop=True)


def _tokenizer_dir(directory: Path, pretrained: Path, key: str) -> Path:
    for candidate in (directory, pretrained):
        if any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return candidate
    raise ConfigError(f"{key}.directory: neither {directory} nor the pretrained {pretrained} has tokenizer files")


def header_shapes(weights: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor name -> shape as stored, from the safetensors headers alone (a sharded save: every shard's)."""
    weights = Path(weights)
    files = [weights]
    if weights.name.endswith(SHARD_INDEX_SUFFIX):
        files = [weights.parent / f for f in dict.fromkeys(json.loads(weights.read_text())["weight_map"].values())]
    shapes: dict[str, list[int]] = {}
    for file in files:
        try:
            shapes.update(safetensors_shapes(file))
        except ArtifactError as exc:
            raise ConfigError(str(exc)) from exc
    return shapes


def head_patterns(heads: Any, task_type: str, pretrained: Path, tasks: Sequence[Path]) -> list[str]:
    """merge.exclude patterns of the task heads: model.transformers.heads, or for 'auto' (sequence
    classification) every top-level module outside the body, the body being the top-level module
    holding most of the first task's tensors (transformers' base model: `bert`, `roberta`, `transformer`).
    Any tensor whose shape differs between the pretrained model and a task is a head too.
    """
    if heads != "auto" and not (isinstance(heads, list) and all(isinstance(h, str) for h in heads)):
        raise ConfigError(f"model.transformers.heads: must be 'auto' or a list of name patterns, got {heads!r}")
    task_shapes = [header_shapes(t) for t in tasks]
    top = Counter(name.split(".")[0] for name in task_shapes[0])
    body = top.most_common(1)[0][0]
    patterns = list(heads) if isinstance(heads, list) else []
    if heads == "auto" and task_type == "sequence_classification":
        patterns += [
            f"{g}.*" if any("." in n for n in task_shapes[0] if n.split(".")[0] == g) else g
            for g in sorted(top)
            if g != body
        ]
    pre = header_shapes(pretrained)
    if not any(
        name.startswith(f"{body}.") for name in pre
    ):  # a base model's names, as the checkpoint reader gives them
        pre = {f"{body}.{name}": shape for name, shape in pre.items()}
    differing = sorted({n for shapes in task_shapes for n, s in shapes.items() if n in pre and pre[n] != s})
    return patterns + [n for n in differing if n not in patterns]


def build_model(directory: str, task_type: str = "sequence_classification") -> Any:
    """The model of a transformers directory's config.json with its head, freshly initialised (the
    engine loads the weights): AutoModelForSequenceClassification or AutoModelForCausalLM."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    return getattr(transformers, TASK_TYPES[task_type]).from_config(config)


def _tokenizer(directory: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _padded(sequences: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of token id lists, right-padded to the longest."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def label_ids(labels: pd.Series, data: str, label_column: str, directory: str | None) -> pd.Series:
    """Integer class ids of a label column: integers in 0..num_labels-1, or names of the task's config.json label2id."""
    config = json.loads((Path(directory) / "config.json").read_text()) if directory else {}
    label2id = config.get("label2id") or {}
    if not pd.api.types.is_integer_dtype(labels):
        unknown = sorted({str(v) for v in labels if str(v) not in label2id})
        if unknown:
            raise ConfigError(
                f"{data}: label '{unknown[0]}' in column '{label_column}' is not an integer nor in {directory}/config.json label2id"
            )
        return labels.map(lambda v: label2id[str(v)])
    n_labels = config.get("num_labels") or len(config.get("id2label") or label2id) or None
    if n_labels is not None and len(labels) and not (labels.min() >= 0 and labels.max() < n_labels):
        bad = labels[(labels < 0) | (labels >= n_labels)].iloc[0]
        raise ConfigError(
            f"{data}: label {bad} in column '{label_column}' is outside 0..{n_labels - 1} ({directory}/config.json has {n_labels} labels)"
        )
    return labels


def check_labels(evaluator: Mapping[str, Any]) -> None:
    """A sequence-classification evaluator's labels, read from its data file before any job (causal LM: none)."""
    if evaluator["_target_"] != EVALUATORS["sequence_classification"]:
        return
    frame = read_examples(evaluator["data"], [evaluator["label_column"]], evaluator["limit"])
    label_ids(frame[evaluator["label_column"]], evaluator["data"], evaluator["label_column"], evaluator["directory"])


class SequenceClassificationEvaluator:
    """Accuracy (`correct`) and cross-entropy `loss` per example of a text classification data file.

    data: CSV, JSONL or Parquet with text_column and label_column (integer labels, or label names
    of the task directory's config.json label2id); tokenized once (truncated to max_length) with the
    tokenizer of directory `tokenizer`; the first `limit` rows when limit is set.
    """

    def __init__(
        self,
        data: str,
        tokenizer: str,
        directory: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        max_length: int = 128,
        batch_size: int = 32,
        limit: int | None = None,
    ) -> None:
        import torch

        frame = read_examples(data, [text_column, label_column], limit)
        labels = label_ids(frame[label_column], data, label_column, directory)
        tok = _tokenizer(tokenizer)
        encoded = tok(frame[text_column].astype(str).tolist(), truncation=True, max_length=int(max_length))["input_ids"]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.labels = torch.tensor(labels.to_numpy(dtype="int64"))
        size = int(batch_size)
        self.batches = [_padded(encoded[i : i + size], pad) for i in range(0, len(encoded), size)]

    def __call__(self, module: Any, device: Any) -> pd.DataFrame:
        import torch
        import torch.nn.functional as F

        logits = torch.cat(
            [
                module(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
                for ids, mask in self.batches
            ]
        )
        if int(self.labels.max()) >= logits.shape[1] or int(self.labels.min()) < 0:
            raise ValueError(
                f"labels range over {int(self.labels.min())}..{int(self.labels.max())} but the model has {logits.shape[1]} labels"
            )
        loss = F.cross_entropy(logits, self.labels, reduction="none")
        return pd.DataFrame(
            {"example": range(len(loss)), "correct": (logits.argmax(1) == self.labels).numpy(), "loss": loss.numpy()}
        )


class CausalLMEvaluator:
    """Per example, the mean next-token cross-entropy `loss` of its text (perplexity = exp(loss)).

    data: CSV, JSONL or Parquet with text_column; tokenized once (truncated to max_length) with the
    tokenizer of directory `tokenizer`; every example needs at least 2 tokens.
    """

    def __init__(
        self,
        data: str,
        tokenizer: str,
        text_column: str = "text",
        max_length: int = 128,
        batch_size: int = 32,
        limit: int | None = None,
    ) -> None:
        frame = read_examples(data, [text_column], limit)
        tok = _tokenizer(tokenizer)
        encoded = tok(frame[text_column].astype(str).tolist(), truncation=True, max_length=int(max_length))["input_ids"]
        short = [i for i, ids in enumerate(encoded) if len(ids) < 2]
        if short:
            raise ConfigError(f"{data}: example {short[0]} has fewer than 2 tokens (no next token to predict)")
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        size = int(batch_size)
        self.batches = [_padded(encoded[i : i + size], pad) for i in range(0, len(encoded), size)]

    def __call__(self, module: Any, device: Any) -> pd.DataFrame:
        import torch

        losses = [
            token_losses(
                module(input_ids=ids.to(device), attention_mask=mask.to(device)).logits, ids.to(device), mask.to(device)
            )
            for ids, mask in self.batches
        ]
        loss = torch.cat(losses).cpu()
        return pd.DataFrame({"example": range(len(loss)), "loss": loss.numpy()})


def token_losses(logits: Any, ids: Any, mask: Any) -> Any:
    """Per sequence, the mean cross-entropy of predicting token t+1 from tokens ..t over its unpadded tokens."""
    import torch.nn.functional as F

    targets, keep = ids[:, 1:], mask[:, 1:].float()
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    return (losses * keep).sum(1) / keep.sum(1)


def model_weights(checkpoint: str | os.PathLike, pretrained: str | os.PathLike) -> Path:
    """A task's model weights (its config, head): its checkpoint, or the pretrained model's for a LoRA adapter."""
    return Path(pretrained if adapter_weights(checkpoint) is not None else checkpoint)


def parse_size(text: str | int) -> int:
    """Bytes of a size as transformers' max_shard_size takes it: an integer, or a number with KB, MB, GB or TB
    (powers of 1000: "5GB", "200KB"); ValueError when it is none or not positive."""
    value = str(text).strip().upper()
    factor = next((f for unit, f in SIZE_UNITS.items() if value.endswith(unit)), 1)
    number = value[:-2].strip() if factor > 1 else value
    try:
        size = int(float(number) * factor) if factor > 1 else int(number)
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with KB, MB, GB or TB, e.g. 5GB)")
    return size


def non_persistent_buffers(weights: str | os.PathLike) -> set[str]:
    """The names (as open_checkpoint gives them) of the non-persistent buffers of the model a transformers directory's
    config.json describes (its architecture's class, else AutoModel), built on the meta device.

    state_dict() leaves them out (computed constants: BERT's embeddings.position_ids, rotary inv_freq), so
    load_state_dict reports them as unexpected, but older transformers saved some: they are left out of what
    mapmerge writes.
    """
    import torch
    import transformers

    from mapmerge.tensors.checkpoints import hf_names  # deferred: torch

    directory = Path(weights).parent
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    cls = getattr(transformers, (config.architectures or [""])[0], None)
    with torch.device("meta"):
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            model = cls(config)
        else:
            model = transformers.AutoModel.from_config(config)
    persistent = set(model.state_dict())
    buffers = sorted(name for name, _ in model.named_buffers() if name not in persistent)
    return set(hf_names(Path(weights), buffers)) if buffers else set()


def save_weights(
    state: Mapping[str, Any],
    directory: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str = MAX_SHARD_SIZE,
) -> Path:
    """Write a state dict into a transformers directory as save_pretrained does: model.safetensors, or past
    max_shard_size shards model-0000k-of-0000n.safetensors and their index model.safetensors.index.json
    (huggingface_hub's split_torch_state_dict_into_shards). Each file atomically, with the usual permissions;
    `metadata` goes into every file's header (key `mapmerge`, beside transformers' format: pt). Returns the
    weights file (model.safetensors or the index)."""
    from huggingface_hub import split_torch_state_dict_into_shards  # deferred: installed with transformers
    from safetensors.torch import save_file

    directory = Path(directory)
    split = split_torch_state_dict_into_shards(
        dict(state), filename_pattern="model{suffix}.safetensors", max_shard_size=parse_size(max_shard_size)
    )
    header = {"format": "pt", "mapmerge": json.dumps(dict(metadata or {}), sort_keys=True)}
    for file, names in split.filename_to_tensors.items():
        with atomic_path(directory / file) as tmp:
            save_file({n: state[n].contiguous() for n in names}, str(tmp), metadata=header)
    if not split.is_sharded:
        return directory / HF_WEIGHTS[0]
    index = {
        "metadata": {"total_parameters": sum(t.numel() for t in state.values()), **split.metadata},
        "weight_map": split.tensor_to_filename,
    }
    with atomic_path(directory / HF_WEIGHTS[1]) as tmp:
        tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return directory / HF_WEIGHTS[1]


def save_merged_models(
    merged: Mapping[str, Any],
    merged_names: Sequence[str],
    checkpoints: Mapping[str, str | os.PathLike],
    pretrained: str | os.PathLike,
    out_dir: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str = MAX_SHARD_SIZE,
) -> Path:
    """Write out_dir/<task>/ per task: its directory's config and tokenizer files (the pretrained
    directory's tokenizer where it has none) and its weights (save_weights: model.safetensors, sharded past
    max_shard_size) holding the merged tensors (merged_names, from `merged`) and the task's own others (its
    head), named as in the task's files, less the non-persistent buffers of its model (non_persistent_buffers).

    from_pretrained loads each as it loads the task's own directory. Every file gets the usual permissions
    (0666 less the umask). One task's tensors are built at a time (the merged ones shared, not copied); out_dir
    is replaced as a whole (renamed into place).
    """
    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch

    out_dir = Path(out_dir)
    names = set(merged_names)
    tmp = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(4)}.tmp"
    try:
        for task, weights in checkpoints.items():
            target = tmp / task
            target.mkdir(parents=True)
            source = Path(weights).parent
            for file in source.iterdir():
                if file.is_file() and not file.name.endswith(WEIGHT_SUFFIXES):
                    shutil.copyfile(file, target / file.name)  # not copy2: the usual permissions, not the source's
            if not any((target / name).is_file() for name in TOKENIZER_FILES):
                for file in Path(pretrained).parent.iterdir():
                    if file.name in (*TOKENIZER_FILES, *TOKENIZER_EXTRA) and not (target / file.name).exists():
                        shutil.copyfile(file, target / file.name)
            skip = non_persistent_buffers(weights)
            with open_checkpoint(weights) as own:
                state = {}
                for name in own.keys():
                    if name in skip:
                        continue
                    tensor = own.get(name)
                    state[own.stored_name(name)] = (
                        merged[name].to(tensor.dtype) if name in names else tensor
                    ).contiguous()
            save_weights(state, target, metadata, max_shard_size)
            del state
        old = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(4)}.old"
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def merged_tensor_names(vectors: Iterable[str | os.PathLike]) -> list[str]:
    """The merged tensors' names: those any of the task vectors holds (dense or low-rank)."""
    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch

    names: set[str] = set()
    for path in vectors:
        with open_checkpoint(path) as reader:
            names.update(vector_names(reader, path))
    return sorted(names)
