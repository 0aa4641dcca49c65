"""Checks of a resolved config that need no job: the plan's size and cost, and the files it names.

`check_plan` (cheap, every Snakefile parse) refuses a design too small for the surrogate (below its parameter count
only where refinement rounds add the merges it lacks), a population
too small for the objectives and a plan past budget.max_evaluations. `check_files` (the driver only: it
reads checkpoint headers and data files) refuses a run folder that cannot be made or written, importable-looking
targets that do not import, checkpoints whose merged tensors do not line up, and labels a task's model does not know.
The onstart of a run whose jobs start on this machine runs `check_device`, which refuses a CUDA device it lacks, and,
where an evaluation job is about to run, `check_builds`, which builds the user's model and evaluators. Each raises
ConfigError with one line naming the key the user wrote.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapmerge.adapters import lm_eval_tasks
from mapmerge.adapters.transformers import EVALUATORS, check_labels, read_examples
from mapmerge.core import bayesian, groups, refine
from mapmerge.core.quadratic import n_params
from mapmerge.core.sampling import design_size
from mapmerge.errors import ConfigError
from mapmerge.io import ArtifactError
from mapmerge.run.checkpoint_twins import first_twin
from mapmerge.run.lm_eval_checks import check_task_data
from mapmerge.run.schema import MAX_SIZE, closest
from mapmerge.run.transformers_checks import (
    check_same_bodies,
    check_same_vocabulary,
    check_tokenizer,
    config_differences,
)
from mapmerge.tensors.lora import ADAPTER_WEIGHTS, adapter_weights
from mapmerge.tensors.operators import SLERP_MEMBERS

METHOD_NAMES = {"map": "plain MAP", "nested": "nested MAP", "bayesian": "Bayesian MAP"}


@dataclass(frozen=True)
class Plan:
    """What a run's method will evaluate for real (validation's grid and baselines not counted)."""

    method: str
    n_tasks: int
    n_groups: int
    merged_models: int  # designed and proposed samples of every group, plus each group's chosen merge
    reference_models: int  # the pretrained and the fine-tuned models
    task_evaluations: int  # (model, task) evaluations: an upper bound for nested MAP, whose groups are data
    evaluation_jobs: int
    exact: bool

    def describe(self) -> str:
        """One line for the driver's start."""
        bound = "" if self.exact else "at most "
        return (
            f"{METHOD_NAMES[self.method]} on {self.n_tasks} tasks in {self.n_groups} group{'s' * (self.n_groups > 1)}: "
            f"{self.merged_models} merged + {self.reference_models} reference models, "
            f"{bound}{self.task_evaluations} (model, task) evaluations in {self.evaluation_jobs} evaluation jobs"
        )


def group_samples(cfg: Mapping[str, Any], n_members: int) -> tuple[int, int]:
    """(samples, evaluation jobs) of one group: its design, the Bayesian rounds and the refinement rounds (at most:
    a refinement round skips points already evaluated)."""
    per_job = cfg["evaluation"]["samples_per_job"]
    rounds = [(cfg["refine"]["rounds"], refine.round_size(cfg["refine"], n_members))]
    if cfg["method"] != "bayesian":
        initial = design_size(n_members, cfg["sampler"])
    else:
        initial = design_size(n_members, bayesian.initial_sampler(cfg["sampler"], cfg["bayesian"], n_members))
        rounds.append((cfg["bayesian"]["rounds"], bayesian.round_size(cfg["bayesian"], n_members)))
    samples = initial + sum(n * size for n, size in rounds)
    return samples, math.ceil(initial / per_job) + sum(n * math.ceil(size / per_job) for n, size in rounds)


def plan(cfg: Mapping[str, Any], method: str | None = None) -> Plan:
    """The plan of cfg's method (or of `method` on the same tasks and design)."""
    method = method or cfg["method"]
    cfg = {**cfg, "method": method}
    n_tasks = len(cfg["task_names"])
    levels = groups.structure(method, n_tasks)
    n_groups = sum(len(level) for level in levels)
    samples, jobs = group_samples(cfg, groups.n_members(method, n_tasks))
    return Plan(
        method=method,
        n_tasks=n_tasks,
        n_groups=n_groups,
        merged_models=n_groups * (samples + 1),
        reference_models=n_tasks + 1,
        # a level's groups hold disjoint tasks, all of them when no model passes up: T per level at most
        task_evaluations=(n_tasks + 1) * n_tasks + len(levels) * n_tasks * (samples + 1),
        evaluation_jobs=1 + n_groups * (jobs + 1),
        # nested MAP: a power of 2, so that no model ever passes up; a refinement round may skip evaluated points
        exact=(method != "nested" or n_tasks & (n_tasks - 1) == 0) and not cfg["refine"]["rounds"],
    )


def _check_design(cfg: Mapping[str, Any], method: str, members: int, sampler: Mapping[str, Any]) -> None:
    """ConfigError unless the group's last fit can have more merges than the surrogate's P parameters: the design
    alone, or (plain and nested MAP) the design with the refinement rounds' merges (a design below P)."""
    p, points = n_params(members), design_size(members, sampler)
    key = "bayesian.initial_factor" if method == "bayesian" else "sampler.factor"
    gives = f"{key}: {sampler['factor']:g} gives {points} design points for the surrogate's {p} parameters"
    per_group = f"({members} coefficients per group)"
    rounds = cfg["refine"]["rounds"] if method != "bayesian" else 0
    if points > p:
        return
    if not rounds:
        raise ConfigError(
            f"{gives} {per_group}; it needs at least {p + 1}: raise {key} (>= {(p + 1) / p:.2f}) or "
            "sampler.min_points"
            + ("" if method == "bayesian" else ", or add refinement rounds (refine.rounds) to a design below P")
        )
    added = rounds * refine.round_size(cfg["refine"], members)
    if points + added <= p:
        raise ConfigError(
            f"{gives} {per_group}, and refine.rounds={rounds} add at most {added}: together they need at least "
            f"{p + 1}; raise {key}, refine.rounds or refine.points"
        )


def check_plan(cfg: Mapping[str, Any]) -> Plan:
    """The run's plan, or ConfigError when its design, population or cost cannot work."""
    method, n_tasks = cfg["method"], len(cfg["task_names"])
    members = groups.n_members(method, n_tasks)
    if cfg["merge"]["operator"] == "slerp" and members != SLERP_MEMBERS:
        raise ConfigError(
            f"merge.operator: slerp merges exactly {SLERP_MEMBERS} models, and {METHOD_NAMES[method]} merges all "
            f"{n_tasks} tasks in one group; give 2 tasks, or use method=nested (pairs)"
        )
    sampler = (
        cfg["sampler"] if method != "bayesian" else bayesian.initial_sampler(cfg["sampler"], cfg["bayesian"], members)
    )
    _check_design(cfg, method, members, sampler)
    optimizer = cfg["optimizer"]
    model = cfg["model"]
    if model.get("adapter") == "transformers":
        _check_objective(optimizer["objective"], {t: model["tasks"][t]["evaluator"] for t in cfg["task_names"]})
    least = members * (members + 1) // 2  # Das-Dennis directions of 2 partitions: the extremes and points between
    if optimizer["pop_size"] < least:
        raise ConfigError(
            f"optimizer.pop_size: {optimizer['pop_size']} is too small for {members} objectives; NSGA-III needs at least "
            f"{least} to place points between the extremes"
        )
    if optimizer["ref_partitions"] == 1:
        raise ConfigError(
            "optimizer.ref_partitions: 1 gives only the extreme directions (one task each); use 2 or more, or null"
        )
    if (
        optimizer["ref_partitions"]
        and (n := math.comb(members + optimizer["ref_partitions"] - 1, members - 1)) > MAX_SIZE
    ):
        raise ConfigError(
            f"optimizer.ref_partitions: {optimizer['ref_partitions']} gives {n:,} reference directions for {members} "
            f"objectives, past {MAX_SIZE:,} (NSGA-III keeps a point per direction); lower it, or null"
        )
    run = plan(cfg)
    budget = cfg["budget"]["max_evaluations"]
    if budget is not None and run.task_evaluations > budget:
        hint = "raise budget.max_evaluations, or merge fewer tasks"
        if method != "nested":
            nested = plan(cfg, "nested")
            hint = f"use method=nested (pairwise: at most {nested.task_evaluations}), {hint}"
        raise ConfigError(
            f"budget.max_evaluations: {METHOD_NAMES[method]} on {n_tasks} tasks plans {'' if run.exact else 'at most '}"
            f"{run.task_evaluations} (model, task) "
            f"evaluations, past the budget of {budget}; {hint}"
        )
    return run


def _check_objective(objective: str, evaluators: Mapping[str, Mapping[str, Any]]) -> None:
    """The transformers evaluators must report the objective, and all the same metrics (the surrogate fits each metric
    any task reports for every task): a causal LM's data file gives the loss only, an lm-eval task accuracy and loss."""
    scored = [t for t, e in evaluators.items() if e["_target_"] == lm_eval_tasks.TARGET]
    for task, evaluator in evaluators.items():
        if evaluator["_target_"] != EVALUATORS["causal_lm"]:
            continue
        if objective == "accuracy":
            raise ConfigError(
                f"optimizer.objective: accuracy, but model.transformers.task_type causal_lm reports the loss only "
                f"(task {task}); set optimizer.objective=loss, or score the task with an lm-eval task "
                f"(model.transformers.tasks.{task}.lm_eval)"
            )
        if scored:
            raise ConfigError(
                f"model.transformers.tasks.{task}.data: gives the loss only, but task {scored[0]} is scored by lm-eval "
                f"(accuracy and loss), and every task must report the same metrics; score {task} with lm_eval too"
            )


# ---------------------------------------------------------------------------------------------------
# Files


def task_key(model: Mapping[str, Any], task: str) -> str:
    """The key the user wrote for a task's checkpoint."""
    adapter = model.get("adapter")
    if adapter == "transformers":
        return f"model.transformers.tasks.{task}.directory"
    if adapter == "openclip":
        return "model.openclip.tasks"
    return f"model.tasks.{task}.checkpoint"


def pretrained_key(model: Mapping[str, Any]) -> str:
    adapter = model.get("adapter")
    return {"transformers": "model.transformers.pretrained", "openclip": "model.openclip.root"}.get(
        adapter, "model.pretrained"
    )


def check_device(device: str) -> None:
    """Refuse an explicit CUDA evaluation.device this machine lacks: no CUDA at all, or cuda:N past its devices.

    For runs whose jobs start on this machine only (the Snakefile's onstart, local executor): a cluster's nodes
    may have a GPU the submitting host has not. `auto` and `cpu` always pass.
    """
    if not device.startswith("cuda"):
        return
    from mapmerge.tensors.devices import device_problem  # deferred: torch, and only for a run that asks for CUDA

    problem = device_problem(device)
    if problem:
        raise ConfigError(f"{problem}; use auto or cpu here, or submit the run to a cluster with GPUs")


def check_builds(model: Mapping[str, Any], tasks: Sequence[str]) -> None:
    """Build the user's model builder (no adapter) where check_files could not build it on the meta device, and every
    task's evaluator whose `_target_` is the user's (mapmerge's own are checked by the schema and check_files), as
    each evaluation job builds them, and refuse the first that raises: a value a constructor refuses (a wrong type,
    hidden: '32'; a task name it does not know, a data file that is not there) would otherwise fail the jobs only
    after Snakemake deleted their finished tables.

    For a local run about to run an evaluation job (the Snakefile's onstart): those jobs build the same.
    """
    from hydra.utils import instantiate  # deferred: hydra's instantiate, for a run that evaluates

    with _on_path(model["python_path"]):
        if model.get("adapter") is None and model.get("builder") and not _is_ours(model["builder"]["_target_"]):
            _check_builder_builds(model)
        for task in tasks:
            spec = model["tasks"][task]["evaluator"]
            if _is_ours(spec["_target_"]):
                continue
            try:
                evaluator = instantiate(dict(spec))
            except Exception as exc:  # the user's constructor, for its own reasons
                cause = exc.__cause__ or exc  # instantiate wraps it: "Error in call to target ..."
                raise ConfigError(
                    f"model.tasks.{task}.evaluator: {spec['_target_']} could not be built: "
                    f"{type(cause).__name__}: {' '.join(str(cause).split())}"
                ) from None
            _check_call(evaluator, f"model.tasks.{task}.evaluator: {spec['_target_']}")


def _check_call(evaluator: Any, where: str) -> None:
    """Refuse an evaluator that cannot be called as every evaluation job calls it, evaluator(module, device)
    (mapmerge.tensors.engine): `def evaluate(module)` failed the first job, after Snakemake deleted its finished
    table. One whose signature Python cannot tell (a builtin) is left to the jobs."""
    if not callable(evaluator):
        raise ConfigError(
            f"{where}: built a {type(evaluator).__name__}, which cannot be called as evaluator(module, device)"
        )
    try:
        signature = inspect.signature(evaluator)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, "cpu")
    except TypeError as exc:
        raise ConfigError(
            f"{where}: cannot be called as evaluator(module, device), as the jobs call it: its signature is {signature} "
            f"({exc})"
        ) from None


def check_results_folder(results: str) -> None:
    """Refuse a run folder (results_dir/name) that cannot be made or written, judged on the folder itself or else its
    nearest existing parent, without writing there (a dry run leaves every mtime as it was): a file in the way, no
    permission to write, a read-only file system."""
    path = Path(results)
    where = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    why = None
    if not where.exists():
        why = "a symbolic link to nothing"
    elif not where.is_dir():
        why = "Not a directory"
    elif os.statvfs(where).f_flag & os.ST_RDONLY:
        why = "Read-only file system"
    elif not os.access(where, os.W_OK | os.X_OK):
        why = "Permission denied"
    if why is not None:
        raise ConfigError(f"results_dir: the run folder {path} cannot be made or written ({where}: {why})")


def check_files(cfg: Mapping[str, Any], warn: Callable[[str], None] | None = None) -> None:
    """ConfigError for the first file the run names that would fail a job: targets, checkpoints, labels; `warn`
    gets a line for what makes results wrong without failing a job (unmerged_fallbacks).

    The built-in benchmark's checkpoints are made by the run, so only user models' are read.
    """
    check_results_folder(cfg["results"])
    model, tasks = cfg["model"], cfg["task_names"]
    for folder in model["python_path"]:
        if not Path(folder).is_dir():
            raise ConfigError(f"model.python_path: folder {folder} not found")
    with _on_path(model["python_path"]):
        _check_target(model["builder"], "model.builder", model["python_path"])
        for task in tasks:
            _check_target(model["tasks"][task]["evaluator"], f"model.tasks.{task}.evaluator", model["python_path"])
    if model["builtin"]:
        return
    check_lora(cfg)
    reshaped = _check_checkpoints(model, tasks)
    for line in [*unmerged_fallbacks(model, tasks), *reshaped] if warn is not None else []:
        warn(line)
    if model.get("adapter") == "transformers":
        for task in tasks:
            evaluator = model["tasks"][task]["evaluator"]
            if evaluator["_target_"] == lm_eval_tasks.TARGET:
                check_task_data(evaluator, f"model.transformers.tasks.{task}.lm_eval")
            _check_next_token(model, task, evaluator)
            check_tokenizer(evaluator, model["tasks"][task]["checkpoint"], model["pretrained"], task)
            check_same_vocabulary(evaluator, model["pretrained"], task)
            try:
                check_labels(evaluator)
                _check_default_labels(evaluator)
            except ConfigError as exc:
                raise ConfigError(f"model.transformers.tasks.{task}.data: {exc}") from None


def _check_next_token(model: Mapping[str, Any], task: str, evaluator: Mapping[str, Any]) -> None:
    """A causal LM's data task scores each next token: max_length 1 leaves none, which failed every evaluation job."""
    if evaluator["_target_"] != EVALUATORS["causal_lm"] or int(evaluator["max_length"]) >= 2:
        return
    own = "max_length" in ((model.get("transformers") or {}).get("tasks") or {}).get(task, {})
    key = f"model.transformers.tasks.{task}.max_length" if own else "model.transformers.max_length"
    raise ConfigError(
        f"{key}: must be at least 2 for a causal LM (a token and the next one it predicts), got {evaluator['max_length']}"
    )


def _check_default_labels(evaluator: Mapping[str, Any]) -> None:
    """Integer labels of a sequence classifier whose config.json names no labels: transformers' default, 2 labels,
    which check_labels cannot see there (transformers writes neither num_labels nor id2label for it), so a label 5
    failed the first job after Snakemake deleted its finished table."""
    if evaluator["_target_"] != EVALUATORS["sequence_classification"] or not evaluator.get("directory"):
        return
    config = json.loads((Path(evaluator["directory"]) / "config.json").read_text())
    if any(config.get(key) for key in ("num_labels", "id2label", "label2id")):
        return
    column = evaluator["label_column"]
    labels = read_examples(evaluator["data"], [column], evaluator["limit"])[column]
    if labels.dtype.kind in "iu" and len(labels) and not labels.between(0, 1).all():
        bad = labels[~labels.between(0, 1)].iloc[0]
        raise ConfigError(
            f"{evaluator['data']}: label {bad} in column '{column}' is outside 0..1 ({evaluator['directory']}/config.json "
            "names no labels: transformers' default of 2)"
        )


@contextmanager
def _on_path(folders: list[str]) -> Iterator[None]:
    added = [f for f in folders if f not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            sys.path.remove(folder)


def _is_ours(target: str) -> bool:
    """Whether a `_target_` is mapmerge's own (checked by the schema and the adapters, not imported or built here)."""
    return target.split(".")[0] == "mapmerge"


def _check_target(spec: Mapping[str, Any], key: str, python_path: list[str]) -> None:
    """spec's _target_ must import: its module found (mapmerge's own are not imported here), a user's callable in it."""
    target = spec["_target_"]
    module, _, name = target.rpartition(".")
    where = (
        f"model.python_path ({', '.join(python_path)})"
        if python_path
        else "the installed packages (model.python_path is empty)"
    )
    if _is_ours(target):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{key}._target_: module {module} not found")
        return
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise ConfigError(f"{key}._target_: module {module} not found in {where}") from None
        raise ConfigError(f"{key}._target_: importing {module} failed: {exc}") from None
    except Exception as exc:  # the user's module failed for its own reasons
        raise ConfigError(f"{key}._target_: importing {module} failed: {' '.join(str(exc).split())}") from None
    if not hasattr(imported, name):
        hint = closest(name, [n for n in vars(imported) if not n.startswith("_")])
        raise ConfigError(f"{key}._target_: module {module} ({imported.__file__}) has no {name}{hint}")
    _check_arguments(getattr(imported, name), spec, key)


def _check_arguments(target: Any, spec: Mapping[str, Any], key: str) -> None:
    """spec's arguments must fit target's signature as Hydra's instantiate passes them (all of them unless the spec is
    `_partial_`): a mistyped or missing argument would fail every job that builds it."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a callable without a signature (some builtins): instantiate tells
        return
    kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}  # Hydra's own keys: _target_, _partial_, ...
    bind = signature.bind_partial if spec.get("_partial_") else signature.bind
    try:
        bind(*spec.get("_args_", ()), **kwargs)
    except TypeError as exc:
        params = signature.parameters.values()
        names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        unknown = [k for k in kwargs if k not in names]
        problem = str(exc)
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in params):
            problem = f"no argument '{unknown[0]}'{closest(unknown[0], names)}"
        raise ConfigError(f"{key}: {spec['_target_']}({', '.join(names)}): {problem}") from None


def check_lora(cfg: Mapping[str, Any]) -> None:
    """ConfigError where a task's checkpoint is a PEFT LoRA adapter and the run needs dense task vectors: merge.operator
    or an enabled validation baseline other than task_arithmetic (TIES and DARE act on the dense entries). A
    model.tasks checkpoint must name the adapter's weights file, not its directory."""
    model = cfg["model"]
    checkpoints = {t: Path(model["tasks"][t]["checkpoint"]) for t in cfg["task_names"]}
    adapters = {t: p for t, p in checkpoints.items() if adapter_weights(p) is not None}
    if not adapters:
        return
    for task, path in adapters.items():
        if path.is_dir():
            raise ConfigError(
                f"{task_key(model, task)}: {path} is a PEFT adapter directory; give its {path / ADAPTER_WEIGHTS}"
            )
    validation = cfg["validation"]
    used = [("merge.operator", cfg["merge"]["operator"])]
    if validation["enabled"]:
        used += [(f"validation.baselines.{n}.operator", b["operator"]) for n, b in validation["baselines"].items()]
    task, path = next(iter(adapters.items()))
    for key, operator in used:
        if operator != "task_arithmetic":
            raise ConfigError(
                f"{key}: {operator} needs dense task vectors, but {task_key(model, task)} is a LoRA adapter ({path.parent}); "
                "use task_arithmetic"
            )


def _check_checkpoints(model: Mapping[str, Any], tasks: list[str]) -> list[str]:
    """No file, and no two files with the same bytes, is two checkpoints (the pretrained one and a task's, or two
    tasks'); every checkpoint's header read;
    the fine-tuned ones' merged tensors must match the pretrained's names and shapes; every model.merge pattern must
    match a tensor. The warning lines of a transformers run's tensors of another vocabulary (check_same_bodies)."""
    from mapmerge.tensors.taskvectors import (  # deferred: torch
        compatible_names,  # deferred: torch, and only the driver reads headers
    )

    _check_twins(model, tasks)
    # first: a model of another width has no tensor of the pretrained one's shape
    reshaped = check_same_bodies(model, tasks)
    merge = model["merge"]
    for task in tasks:
        try:
            compatible_names(
                model["pretrained"], model["tasks"][task]["checkpoint"], merge["include"], merge["exclude"]
            )
        except ArtifactError as exc:
            bad_pretrained = str(exc).startswith(str(model["pretrained"]))
            hint = "" if bad_pretrained else _lacking_hint(model, task)
            raise ConfigError(
                f"{pretrained_key(model) if bad_pretrained else task_key(model, task)}: {exc}{hint}"
            ) from None
    _check_built_model(model, tasks)
    _check_patterns(model, tasks)  # after the loop, which names a missing or mismatched file first
    return reshaped


def _lacking_hint(model: Mapping[str, Any], task: str) -> str:
    """The way out where a task's checkpoint lacks tensors of the pretrained one (both headers read once): a
    pretraining head its fine-tunes dropped (_pretraining_head_hint), or names under another prefix (_prefix_hint)."""
    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch

    with open_checkpoint(model["pretrained"]) as pre, open_checkpoint(model["tasks"][task]["checkpoint"]) as ft:
        names, have = list(pre.keys()), set(ft.keys())
    missing = [n for n in names if n not in have]
    if not missing:  # another shape, not another name
        return ""
    head = _pretraining_head_hint(names, missing) if model.get("adapter") == "transformers" else ""
    return head or _prefix_hint(missing, have)


def _pretraining_head_hint(names: list[str], missing: list[str]) -> str:
    """Where a transformers task lacks only tensors outside the pretrained model's body (the module holding most of
    them): a pretraining head (BERT's `cls.*`, saved with bert-base-uncased), which its fine-tunes drop."""
    body = _body_module(names)
    if any(n.split(".")[0] == body for n in missing):
        return ""
    return (
        f"; the pretrained model's head {_quoted(sorted({n.split('.')[0] + '.*' for n in missing}))}, which the "
        "fine-tunes dropped: give model.transformers.pretrained its body alone (AutoModel.from_pretrained(folder)"
        ".save_pretrained(new_folder))"
    )


def _prefix_hint(missing: list[str], have: set[str]) -> str:
    """Where a task's checkpoint lacks the pretrained one's tensors (`missing`) because its names (`have`) carry a
    prefix the pretrained's do not, or lack one they carry (a model saved inside a wrapper: `model.block.1.bias`)."""
    first = missing[0]
    for name in sorted(have):
        if name.endswith(f".{first}") and all(name[: -len(first)] + n in have for n in missing):
            return (
                f"; its names carry a prefix the pretrained checkpoint's do not ('{name[: -len(first)]}': {name!r}): "
                "save both with the same names"
            )
        prefix = first[: -len(name)]
        if first.endswith(f".{name}") and all(n.startswith(prefix) and n[len(prefix) :] in have for n in missing):
            return (
                f"; its names lack the prefix the pretrained checkpoint's carry ('{prefix}': {name!r} for {first!r}): "
                "save both with the same names"
            )
    return ""


def _body_module(names: Iterable[str]) -> str:
    """A transformers checkpoint's body: the top-level module holding most of its tensors (`bert`, `model`); the
    rest are heads (as mapmerge.adapters.transformers.head_patterns finds it in a task's)."""
    return Counter(name.split(".")[0] for name in names).most_common(1)[0][0]


def unmerged_fallbacks(model: Mapping[str, Any], tasks: list[str]) -> list[str]:
    """A line per fine-tuned checkpoint of a user's model (model.builder) that lacks tensors the pretrained one has
    and the merge leaves alone (a head): the task's evaluations take those from the pretrained checkpoint, as
    mapmerge.tensors.engine does, which a checkpoint saved in part makes silently wrong; and one per checkpoint
    holding tensors the pretrained one lacks, which neither the merge nor the evaluations use."""
    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch
    from mapmerge.tensors.lora import adapter_weights  # deferred: torch
    from mapmerge.tensors.taskvectors import merged_names  # deferred: torch

    if model.get("adapter") is not None:
        return []
    with open_checkpoint(model["pretrained"]) as pre:
        header = pre.meta()
    merged = set(merged_names(header, model["merge"]["include"], model["merge"]["exclude"]))
    unmerged = [name for name in header if name not in merged]
    lines = []
    for task in tasks:
        path = model["tasks"][task]["checkpoint"]
        if adapter_weights(path) is not None:
            continue
        with open_checkpoint(path) as ft:
            held = ft.meta()
        missing = [name for name in unmerged if name not in held]
        if extra := [name for name in held if name not in header]:
            lines.append(
                f"{task_key(model, task)}: {path} holds {_quoted(extra)}, which the pretrained checkpoint "
                f"{model['pretrained']} lacks: left out of the merge and of task {task}'s evaluations"
            )
        if missing:
            lines.append(
                f"{task_key(model, task)}: {path} lacks {_quoted(missing)}, which the merge leaves alone: task {task}'s "
                f"evaluations take {'them' if len(missing) > 1 else 'it'} from the pretrained checkpoint "
                f"{model['pretrained']}"
            )
    return lines


def _quoted(names: list[str], shown: int = 3) -> str:
    """'head.weight', 'head.bias' and 2 more."""
    quoted = [repr(n) for n in names[:shown]]
    return ", ".join(quoted) + (f" and {len(names) - shown} more" if len(names) > shown else "")


# a larger pretrained model's builder is not built by the driver: it may load weights itself (from_pretrained)
BUILD_CHECK_BYTES = 1 << 30


def _check_built_model(model: Mapping[str, Any], tasks: list[str]) -> None:
    """The module model.builder builds (a transformers run's: from its first task's config.json), built on torch's meta
    device (shapes, no memory) as every evaluation job builds it, must take the pretrained checkpoint's tensors,
    loaded with its header alone; and each task's checkpoint must hold the module's tensors the pretrained one lacks
    (a head; each of the task's jobs failed with `lacks tensor ...`: a LoRA adapter for sequence classification of a
    base model without a head). A builder that cannot build on the meta device, or of a model over
    BUILD_CHECK_BYTES, is left to the jobs; an OpenCLIP model's to its adapter."""
    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch
    from mapmerge.tensors.engine import _load_pretrained  # deferred: torch; the jobs' own load

    if model.get("adapter") not in (None, "transformers"):
        return
    header = _pretrained_header(model)
    if _too_large(header):
        return
    with _on_path(model["python_path"]):
        module = _built_on_meta(model)
    if module is None:  # its jobs report it, with the traceback
        return
    try:
        _load_pretrained(module, header, model["pretrained"])
    except ArtifactError as exc:
        if model.get("adapter") is None:
            raise ConfigError(f"model.builder: {exc}") from None
        detail = str(exc).removeprefix(f"{model['pretrained']}: does not fit model.builder ")
        raise ConfigError(
            f"{task_key(model, tasks[0])}: its config.json builds every task's model, which the pretrained checkpoint "
            f"{model['pretrained']} does not fit {detail}; list first a task whose config.json has the pretrained "
            "model's sizes (vocab_size)"
        ) from None
    state = module.state_dict(keep_vars=True)
    # a tied tensor (an output layer tied to the embeddings) follows the one it is tied to
    primary = {id(t): n for n, t in reversed(state.items()) if n in header}
    wanted = [n for n, t in state.items() if n not in header and primary.get(id(t), n) == n]
    if model.get("adapter") == "transformers":
        _check_same_layers(model, tasks, header, wanted, set(state) | {n for n, _ in module.named_buffers()})
    for task in tasks if wanted else []:
        path = model["tasks"][task]["checkpoint"]
        with open_checkpoint(path) as checkpoint:
            missing = [n for n in wanted if n not in checkpoint]
        if missing:
            lora = " (a LoRA adapter, whose other tensors are the pretrained model's)" if adapter_weights(path) else ""
            raise ConfigError(
                f"{task_key(model, task)}: {path}{lora} lacks {_quoted(missing)} of the model, which the pretrained "
                f"checkpoint {model['pretrained']} lacks too: task {task} cannot be evaluated"
            )


def _check_same_layers(
    model: Mapping[str, Any], tasks: list[str], header: Mapping[str, Any], wanted: list[str], built: set[str]
) -> None:
    """Refuse a transformers task of another depth than the pretrained model: the first task's config.json building
    body tensors the pretrained checkpoint lacks (under the module holding most of its tensors), or a task's checkpoint holding tensors neither
    the pretrained checkpoint nor the built model has (its extra layers, which the evaluations left out without a
    word, while its merged folder shipped them)."""
    body_module = _body_module(header)
    body = [n for n in wanted if n.split(".")[0] == body_module]
    if body:
        first = model["tasks"][tasks[0]]["checkpoint"]
        raise ConfigError(
            f"{task_key(model, tasks[0])}: its config.json builds every task's model, with {_quoted(body)}, which the "
            f"pretrained checkpoint {model['pretrained']} lacks{config_differences(first, model['pretrained'])}: not "
            "a fine-tune of the pretrained model"
        )
    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch

    for task in tasks:
        path = model["tasks"][task]["checkpoint"]
        if adapter_weights(path) is not None:
            continue
        with open_checkpoint(path) as checkpoint:
            extra = [n for n in checkpoint.keys() if n not in header and n not in built]
        if extra:
            raise ConfigError(
                f"{task_key(model, task)}: {path} holds {_quoted(extra)}, which neither the pretrained checkpoint nor "
                f"the model the first task's config.json builds has{config_differences(path, model['pretrained'])}: not a "
                "fine-tune of the pretrained model"
            )


def _check_builder_builds(model: Mapping[str, Any]) -> None:
    """model.builder built on the meta device, else (a builder that needs real tensors) on the CPU, as the jobs build
    it; ConfigError with its fault. A model over BUILD_CHECK_BYTES that needs real tensors is left to the jobs."""
    from mapmerge.tensors.engine import EvaluationError, build_module  # deferred: torch; the jobs' own build

    if _built_on_meta(model) is not None or _too_large(_pretrained_header(model)):
        return
    try:
        build_module(model["builder"], model["python_path"])
    except EvaluationError as exc:  # the builder's own fault, under Hydra's "Error in call to target"
        cause = exc.__cause__ and (exc.__cause__.__cause__ or exc.__cause__)
        if cause is None:  # not a torch.nn.Module
            raise ConfigError(str(exc)) from None
        raise ConfigError(
            f"model.builder: {model['builder']['_target_']} could not be built: "
            f"{type(cause).__name__}: {' '.join(str(cause).split())}"
        ) from None


def _pretrained_header(model: Mapping[str, Any]) -> dict[str, Any]:
    """The pretrained checkpoint's tensors on the meta device (its header: names, shapes, dtypes)."""
    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch

    with open_checkpoint(model["pretrained"]) as pretrained:
        return pretrained.meta()


def _too_large(header: Mapping[str, Any]) -> bool:
    """Whether a model of these tensors is past BUILD_CHECK_BYTES, which the driver does not build."""
    return sum(t.numel() * t.element_size() for t in header.values()) > BUILD_CHECK_BYTES


def _built_on_meta(model: Mapping[str, Any]) -> Any:
    """The module model.builder builds on torch's meta device (shapes, no memory), or None where it cannot build
    there (it needs real tensors, or fails)."""
    import torch  # deferred: torch, and only the driver checks

    from mapmerge.tensors.engine import EvaluationError, build_module  # deferred: torch; the jobs' own build

    try:
        with torch.device("meta"):
            return build_module(model["builder"], model["python_path"])
    except EvaluationError:
        return None


def _check_patterns(model: Mapping[str, Any], tasks: list[str]) -> None:
    """Refuse a model.merge pattern that matches no tensor of the checkpoints, a typo that would otherwise change what
    is merged without a word ('heads.*' for 'head.*' merges the heads): the tensors' names as the jobs read them, of
    the pretrained checkpoint and the dense fine-tuned ones (a LoRA adapter's layers are the pretrained model's)."""
    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch

    names: set[str] = set()
    for path in [model["pretrained"], *(model["tasks"][task]["checkpoint"] for task in tasks)]:
        if adapter_weights(path) is None:
            with open_checkpoint(path) as checkpoint:
                names.update(checkpoint.meta())
    heads = (model.get("transformers") or {}).get("heads")
    for which in ("include", "exclude"):
        for pattern in model["merge"][which]:
            if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                continue
            key = "model.transformers.heads" if isinstance(heads, list) and pattern in heads else f"model.merge.{which}"
            raise ConfigError(
                f"{key}: {pattern!r} matches no tensor of the checkpoints{closest(pattern, _patterns(names))}"
            )


def _patterns(names: set[str]) -> set[str]:
    """Every tensor name and every module prefix of one ('trunk.0.*', 'trunk.*'): what a pattern may have meant."""
    found = set(names)
    for name in names:
        parts = name.split(".")
        found.update(".".join(parts[:i]) + ".*" for i in range(1, len(parts)))
    return found


def _check_twins(model: Mapping[str, Any], tasks: list[str]) -> None:
    """Refuse one checkpoint given under two keys (the pretrained one and a task's, or two tasks'): the same file (its
    resolved path, whether it exists or not), or two files with the same bytes (checkpoint_twins.first_twin)."""
    checkpoints = {None: model["pretrained"], **{task: model["tasks"][task]["checkpoint"] for task in tasks}}
    keys = {None: pretrained_key(model), **{task: task_key(model, task) for task in tasks}}
    why = "each task needs its own fine-tuned checkpoint (its task vector would be zero, or another task's)"
    owner: dict[Path, str | None] = {}
    for name, checkpoint in checkpoints.items():
        path = Path(checkpoint).resolve()
        if path in owner:
            raise ConfigError(f"{keys[name]}: {path} is also given as {keys[owner[path]]}; {why}")
        owner[path] = name
    twin = first_twin(checkpoints)
    if twin is not None:
        earlier, later = twin
        raise ConfigError(
            f"{keys[later]}: {checkpoints[later]} holds the same bytes as {checkpoints[earlier]} ({keys[earlier]}); {why}"
        )
