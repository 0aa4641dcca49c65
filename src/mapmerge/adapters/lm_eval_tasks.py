"""lm-evaluation-harness tasks as a causal LM's evaluator (model.transformers.tasks.<task>.lm_eval).

evaluator_spec() checks at config time, from the task YAMLs alone (lm_eval is not imported: every job
resolves the config), that the task is defined under include_path, is multiple_choice or
generate_until, generates greedily and has a per-example accuracy metric. LMEvalEvaluator loads the
task once per job (its data from local files, offline, cached in a temporary folder) and scores the
merged module in the job's own process through lm-eval's HFLM wrapper: per example `correct` (the
task's acc, acc_norm or exact_match) and `loss`: for multiple choice the cross-entropy of the gold
choice among the choices' log-likelihoods, for generation -log p(reference answer | prompt).
"""

from __future__ import annotations

import contextlib
import importlib.util
import numbers
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mapmerge.errors import ConfigError

TARGET = "mapmerge.adapters.lm_eval_tasks.LMEvalEvaluator"
INSTALL = "pip install 'mapmerge[llm]'"
ACCURACY_METRICS = ("acc", "acc_norm", "exact_match")  # per-example 0/1 scores lm-eval logs
# lm_eval.api.registry.DEFAULT_METRIC_REGISTRY: a task's metrics when its YAML has no metric_list
DEFAULT_METRICS = {"multiple_choice": ("acc", "acc_norm"), "generate_until": ("exact_match",)}
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed
IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # as lm-eval's task index
LOCAL_BUILDERS = ("json", "csv", "parquet", "text")  # datasets' builders of local data_files


@dataclass(frozen=True)
class TaskInfo:
    """What the config needs of an lm-eval task: where it is defined, its output type and metrics."""

    name: str
    path: Path
    output_type: str
    metrics: tuple[str, ...]


class _Loader(yaml.SafeLoader):
    """lm-eval's task YAML: `!function module.name` kept as its text (lm-eval resolves it when it loads the task)."""


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def require_lm_eval(key: str) -> None:
    """ConfigError naming `key` when lm_eval is not installed (found without importing it)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"{key}: scoring with lm-eval needs the lm_eval package; {INSTALL}")


def read_task_yaml(path: Path, seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """A task YAML with its `include`s merged in (each relative to the file including it; its own keys win)."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"include cycle at {path}")
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.load(fh, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    if not isinstance(cfg, dict):
        raise ValueError("not a mapping")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict[str, Any] = {}
    for name in includes if isinstance(includes, list) else [includes]:
        included = read_task_yaml(path.parent / name, seen | {path})
        included.pop("task_list", None)
        merged.update(included)
    return {**merged, **cfg}


def find_task(include_path: Path, name: str, key: str) -> tuple[TaskInfo, dict[str, Any]]:
    """The task `name` of the YAMLs under include_path (the first in path order, as lm-eval's index) and its config."""
    names, unreadable = [], []
    for path in sorted(include_path.rglob("*.yaml"), key=lambda p: p.as_posix()):
        if IGNORED_DIRS & set(path.relative_to(include_path).parts):
            continue
        try:
            cfg = read_task_yaml(path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            unreadable.append(f"{path} ({' '.join(str(exc).split())})")
            continue
        task = cfg.get("task")
        if not isinstance(task, str) or "group" in cfg:
            continue
        if task != name:
            names.append(task)
            continue
        if "class" in cfg:
            raise ConfigError(f"{key}: {path}: task '{name}' is a Python class task; mapmerge runs YAML-defined tasks")
        output_type = cfg.get("output_type", "generate_until")  # lm-eval's default
        if output_type not in DEFAULT_METRICS:
            raise ConfigError(
                f"{key}: {path}: output_type {output_type} is not supported ({', '.join(DEFAULT_METRICS)})"
            )
        listed = cfg.get("metric_list")
        metrics = (
            tuple(str(m.get("metric")) for m in listed if isinstance(m, dict))
            if isinstance(listed, list)
            else DEFAULT_METRICS[output_type]
        )
        return TaskInfo(name, path, output_type, metrics), cfg
    found = f"it defines: {', '.join(sorted(names))}" if names else "it defines no task"
    skipped = f"; unreadable: {unreadable[0]}" if unreadable else ""
    raise ConfigError(f"{key}: no task '{name}' in the YAML files under {include_path} ({found}{skipped})")


def _check_task(info: TaskInfo, cfg: Mapping[str, Any], key: str) -> None:
    """Greedy generation, and local data: a local builder's data_files present, or a local dataset folder (relative
    paths: to the YAML's folder)."""
    generation = cfg.get("generation_kwargs") or {}
    if info.output_type == "generate_until" and (
        generation.get("do_sample") or float(generation.get("temperature") or 0) > 0
    ):
        raise ConfigError(
            f"{key}: {info.path}: generation_kwargs sample (do_sample, temperature); mapmerge scores greedy "
            "generation only: set do_sample: false"
        )
    dataset = str(cfg.get("dataset_path"))
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if not ((dataset in LOCAL_BUILDERS and files) or (info.path.parent / Path(dataset).expanduser()).is_dir()):
        raise ConfigError(
            f"{key}: {info.path}: dataset_path {dataset} is not local data; mapmerge runs offline: use "
            f"dataset_path: {' | '.join(LOCAL_BUILDERS)} with dataset_kwargs.data_files, or a local dataset folder"
        )
    files = files.values() if isinstance(files, dict) else [files] if files is not None else []
    for entry in files:
        for file in entry if isinstance(entry, list) else [entry]:
            if isinstance(file, str) and "://" not in file and not any(c in file for c in "*?["):
                path = Path(file).expanduser()
                if not (path if path.is_absolute() else info.path.parent / path).is_file():
                    raise ConfigError(f"{key}: {info.path}: data file {file} not found (relative paths: to its folder)")


def evaluator_spec(
    spec: Mapping[str, Any], key: str, base_dir: Path, tokenizer: Path, batch_size: int, limit: int | None
) -> dict[str, Any]:
    """The evaluator of a task's `lm_eval` block (checked by mapmerge.run.schema): ConfigError naming the key."""
    require_lm_eval(key)
    include = Path(spec["include_path"]).expanduser()
    include = include if include.is_absolute() else (base_dir / include).resolve()
    if not include.is_dir():
        raise ConfigError(f"{key}.include_path: folder {include} not found")
    info, cfg = find_task(include, spec["task"], f"{key}.task")
    _check_task(info, cfg, f"{key}.task")
    reports = f"{info.path}: task '{info.name}' reports {', '.join(info.metrics) or 'no metric'}"
    accurate = [m for m in info.metrics if m in ACCURACY_METRICS]
    metric = spec.get("metric") or (accurate[0] if accurate else None)
    if metric is None:
        raise ConfigError(f"{key}.task: {reports}, no per-example accuracy ({', '.join(ACCURACY_METRICS)})")
    if metric not in accurate:
        raise ConfigError(f"{key}.metric: {reports}, not {metric}")
    return {
        "_target_": TARGET,
        "task": info.name,
        "include_path": str(include),
        "tokenizer": str(tokenizer),
        "metric": metric,
        "output_type": info.output_type,
        "num_fewshot": spec.get("num_fewshot"),
        "seed": spec.get("seed", FEWSHOT_SEED),
        "batch_size": batch_size,
        "limit": limit,
    }


@contextlib.contextmanager
def local_datasets(cache_dir: str) -> Iterator[None]:
    """datasets offline, its cache (the prepared Arrow files) in cache_dir, while the task loads its data."""
    import datasets  # deferred: lm-eval's dependency, imported with it

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_CACHE", "DOWNLOADED_DATASETS_PATH", "EXTRACTED_DATASETS_PATH")
    saved = {n: getattr(datasets.config, n) for n in names}
    root = Path(cache_dir)
    values = (True, root, root / "downloads", root / "downloads" / "extracted")
    try:
        for name, value in zip(names, values):
            setattr(datasets.config, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(datasets.config, name, value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's progress bars and notices off the job's stderr (tqdm and logging's last-resort handler write to
    sys.stderr): mapmerge shows progress on a terminal only; errors still raise."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


class LMEvalEvaluator:
    """Per example of an lm-eval task, `correct` (its `metric`) and `loss`.

    The task is loaded once (TaskManager over include_path only, lm-eval's built-in tasks left out)
    with the working directory at its YAML's folder, so that relative data_files are relative to it.
    Each call wraps the module in HFLM (no weights reloaded) and runs lm_eval.evaluator.evaluate on the
    first `limit` documents with `num_fewshot` examples (null: the task's own) drawn with `seed`.
    Rows are in document order. `loss`: multiple choice, -log softmax(log-likelihoods of the choices)[gold];
    generation, -log p(target_delimiter + reference answer | the prompt generated from), teacher-forced
    (several golds or references: their summed probability).
    """

    def __init__(
        self,
        task: str,
        include_path: str,
        tokenizer: str,
        metric: str,
        output_type: str,
        num_fewshot: int | None = None,
        seed: int = FEWSHOT_SEED,
        batch_size: int = 32,
        limit: int | None = None,
    ) -> None:
        from lm_eval.tasks import TaskManager  # deferred: lm-eval is an optional extra
        from transformers import AutoTokenizer  # deferred: an optional extra, imported by the jobs alone

        manager = TaskManager(include_path=include_path, include_defaults=False)
        entry = manager.task_index.get(task)
        if entry is None or entry.yaml_path is None:
            raise ConfigError(f"{include_path}: lm-eval finds no task '{task}' there")
        self._cache = tempfile.TemporaryDirectory(prefix="mapmerge-lm-eval-")  # removed with the evaluator
        with _quiet(), local_datasets(self._cache.name), contextlib.chdir(Path(entry.yaml_path).parent):
            self.task = manager.load([task])["tasks"][task]
        metrics = list(self.task.aggregation())
        if self.task.OUTPUT_TYPE != output_type or metric not in metrics:
            raise ConfigError(
                f"{entry.yaml_path}: lm-eval loads task '{task}' as {self.task.OUTPUT_TYPE} with metrics "
                f"{', '.join(metrics)}, not the {output_type} with {metric} the config was resolved with"
            )
        if num_fewshot is not None and self.task.get_config("num_fewshot") != 0:  # as lm_eval.simple_evaluate
            self.task.set_config(key="num_fewshot", value=num_fewshot)
        self.name, self.metric, self.seed = task, metric, seed
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        self.batch_size, self.limit = int(batch_size), limit
        self._lm: Any = None

    def __call__(self, module: Any, device: Any) -> pd.DataFrame:
        from lm_eval.evaluator import evaluate  # deferred: lm-eval is an optional extra
        from lm_eval.models.huggingface import HFLM  # deferred: lm-eval is an optional extra

        with _quiet():
            if self._lm is None or self._lm.model is not module:  # HFLM uses the module's own device
                self._lm = HFLM(pretrained=module, tokenizer=self.tokenizer, batch_size=self.batch_size)
            self.task.set_fewshot_seed(seed=self.seed)
            results = evaluate(
                lm=self._lm,
                task_dict={"tasks": {self.name: self.task}, "groups": {}},
                limit=self.limit,
                bootstrap_iters=0,
                log_samples=True,
            )
            return self._rows(results["samples"][self.name])

    def _rows(self, samples: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """lm-eval's logged samples (the task's first filter) as per-example rows in document order."""
        first = [s for s in samples if s["filter"] == samples[0]["filter"]]
        first.sort(key=lambda s: s["doc_id"])
        if self.task.OUTPUT_TYPE == "multiple_choice":
            losses = [self._choice_loss(s) for s in first]
        else:
            losses = self._answer_losses(first)
        return pd.DataFrame(
            {
                "example": [s["doc_id"] for s in first],
                "correct": [float(s[self.metric]) for s in first],
                "loss": losses,
            }
        )

    def _choice_loss(self, sample: Mapping[str, Any]) -> float:
        """-log of the probability the choices' log-likelihoods give the gold one(s) (lm-eval's gold rules)."""
        doc = sample["doc"]
        choices = self.task.doc_to_choice(doc)
        lls = [float(resp[0]) for resp in sample["filtered_resps"][: len(choices)]]
        gold = self.task.doc_to_text(doc) if self.task.multiple_input else self.task.doc_to_target(doc)
        golds = [choices.index(g) if isinstance(g, str) and g in choices else g for g in _as_list(gold)]
        if not all(isinstance(g, numbers.Integral) and 0 <= g < len(choices) for g in golds):
            raise ValueError(
                f"lm-eval task {self.name}, document {sample['doc_id']}: gold {gold!r} is not one of its {len(choices)} choices"
            )
        return float(np.logaddexp.reduce(lls) - np.logaddexp.reduce([lls[g] for g in set(map(int, golds))]))

    def _answer_losses(self, samples: Sequence[Mapping[str, Any]]) -> list[float]:
        """Per generation sample, -log p(reference answer | its prompt), the answer after the task's
        target_delimiter (several references: their summed probability), scored by lm-eval's loglikelihood."""
        from lm_eval.api.instance import Instance  # deferred: lm-eval is an optional extra

        requests, owners = [], []
        for i, sample in enumerate(samples):
            doc = sample["doc"]
            gold = self.task.doc_to_target(doc)
            if self.task.config.doc_to_choice is not None:  # as lm-eval's generate_until scoring
                gold = self.task.doc_to_choice(doc)[gold]
            for answer in _as_list(gold):
                if not str(answer).strip():
                    raise ValueError(
                        f"lm-eval task {self.name}, document {sample['doc_id']}: a reference answer is empty (no loss)"
                    )
                continuation = self.task.config.target_delimiter + str(answer)
                requests.append(
                    Instance("loglikelihood", doc, (sample["arguments"][0][0], continuation), len(requests))
                )
                owners.append(i)
        per_sample: list[list[float]] = [[] for _ in samples]
        for (ll, _), i in zip(self._lm.loglikelihood(requests, disable_tqdm=True), owners):
            per_sample[i].append(float(ll))
        return [-float(np.logaddexp.reduce(lls)) for lls in per_sample]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]
