"""`mapmerge select`: the final group's merge for a new preference, chosen from the run's stored fronts without
evaluating anything, and written as a checkpoint (or, for a transformers run, as per-task model folders).

Two candidates, each marked: the predicted front's pick and, where the run evaluated samples, the measured front's;
the run's own rule decides between them, as its merge_group did. The merge is rebuilt from the run's own operator,
task vectors and a pretrained checkpoint checked first (mapmerge.tools.merge_inputs).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mapmerge.adapters.transformers import (
    HF_WEIGHTS,
    MAX_SHARD_SIZE,
    merged_tensor_names,
    non_persistent_buffers,
    save_merged_models,
    weights_file,
)
from mapmerge.core import metrics, selection
from mapmerge.core.metrics import METRICS
from mapmerge.errors import ConfigError
from mapmerge.io import ArtifactError, atomic_path, table_metadata
from mapmerge.layout import Layout
from mapmerge.outputs.measured import with_chosen_merge
from mapmerge.outputs.notes import fallback_note, interval_level, interval_line
from mapmerge.run.evaluation_cache import table_digest
from mapmerge.run.schema import checked_weights, unknown_task
from mapmerge.tensors.operators import SEEDED
from mapmerge.tools.check import read_checked
from mapmerge.tools.merge_inputs import (
    check_pretrained,
    check_reproduces,
    checkpoint_sources,
    config_key,
    find_pretrained,
    member_vectors,
    merge_record,
    pretrained_record,
)
from mapmerge.tools.runfolder import (
    FRONT_KEY,
    METHOD_NAMES,
    UsageError,
    final_group,
    front_file,
    objective_metric,
    pick_warnings,
    run_objective,
    scan,
    table_columns,
    text_table,
)

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
SOURCE = "mapmerge select"  # the `source` in the metadata of the merges select writes


def parse_preference(text: str) -> dict[str, Any]:
    """'task=weight,task=weight', or a preference file (YAML task: weight, as the config's `preference` takes), as
    {task: weight}; UsageError naming the bad item or the file."""
    if not text.strip():  # a shell variable left unset
        raise UsageError("--prefer: empty; give task=weight,... or a preference file")
    path = Path(text).expanduser()
    if path.is_file() or ("=" not in text and (path.exists() or path.suffix in (".yaml", ".yml"))):
        return _preference_file(path)
    preference: dict[str, float] = {}
    items = [part.strip() for part in text.strip().rstrip(",").split(",")]  # a trailing comma is harmless
    for item in items:
        if not item:
            raise UsageError(f"--prefer: an empty item in {text!r} (two commas, or one first)")
        task, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not task:
            raise UsageError(f"--prefer: {item!r} is not task=weight")
        try:
            weight = float(value)
        except ValueError:
            raise UsageError(f"--prefer: weight of task {task!r} is not a number: {value!r}") from None
        if task in preference:
            raise UsageError(f"--prefer: task {task!r} is given twice")
        preference[task] = weight
    if not preference:
        raise UsageError("--prefer: give at least one task=weight")
    return preference


class PreferenceFile(dict[str, Any]):
    """The weights read from a preference file, as written (preference_weights checks them and names the file)."""

    def __init__(self, path: Path, weights: Mapping[str, Any]) -> None:
        super().__init__(weights)
        self.path = path


def _preference_file(path: Path) -> PreferenceFile:
    """The task: weight mapping of a preference file; UsageError naming the file."""
    from mapmerge.run.config import read_preference_file  # deferred: Hydra's imports, 0.2 s of every command

    if not path.is_file():
        raise UsageError(
            f"--prefer: preference file {path}: {'a folder, not a file' if path.is_dir() else 'not found'}"
        )
    try:
        preference = read_preference_file(path)
    except ConfigError as exc:
        raise UsageError(f"--prefer: {exc}") from None
    return PreferenceFile(path, {str(task): weight for task, weight in preference.items()})


def preference_weights(preference: Mapping[str, float], tasks: Sequence[str]) -> dict[str, float]:
    """--prefer's weights normalised over the run's tasks; UsageError naming a bad one (a mistyped task with the
    closest name, and the preference file that holds it)."""
    where = f"--prefer: preference file {preference.path}: " if isinstance(preference, PreferenceFile) else "--prefer: "
    for task in preference:
        if task not in tasks:
            raise UsageError(where + unknown_task(task, tasks, tasks))
    try:
        return checked_weights(preference, tasks)
    except selection.PreferenceError as exc:
        raise UsageError(where + str(exc)) from None


def preference_name(preference: Mapping[str, float], pick: Pick, metric: str | None = None) -> str:
    """A file name for a preference: rot90-2_invert-1 (and the selection method, with its rho where that is not the
    default, when they are not the run's own; and `metric`, given where it is not the run's objective)."""
    name = "_".join(f"{t}-{w:g}" for t, w in preference.items())
    if (pick.method, pick.rho) != (pick.own_method, pick.own_rho):
        shown = pick.method != "weighted_sum" and (pick.rho != DEFAULT_RHO or pick.method == pick.own_method)
        name += f"_{pick.method}" + (f"-rho{pick.rho:g}" if shown else "")
    if metric:
        name += f"_{metric}"
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
    if len(name) > 100:
        name = f"{name[:80]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def check_out(
    results: Path,
    out: Path,
    tasks: Sequence[str] | None = None,
    option: str = "--out",
    tool: str = "select",
    file: str = "a file path (.safetensors, else a torch state dict)",
) -> None:
    """Refuse an --out (`option` of `tool`) that would add or replace a file of the run folder outside
    RESULTS/selected/.

    tasks: the folder of per-task folders a transformers run's select writes (replaced whole), which may exist only
    as such a folder (nothing in it but folders named after the tasks); else `file`, not a folder.
    """
    run, target, selections = results.resolve(), out.resolve(), Layout(results).selections
    if (target.is_relative_to(run) and not target.is_relative_to(selections.resolve())) or run.is_relative_to(target):
        raise UsageError(
            f"{option} {out}: {'inside' if target.is_relative_to(run) else 'holds'} the run folder {results}, where "
            f"{tool} writes only under {selections}/; give a path there or outside the run folder"
        )
    if tasks is None:
        if target.is_dir():
            raise UsageError(f"{option} {out}: is a folder; give {file}")
        return
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder for the per-task model folders")
    other = sorted(p.name for p in target.iterdir() if p.name not in tasks or not p.is_dir()) if target.is_dir() else []
    if other:
        raise UsageError(
            f"--out {out}: a folder holding {other[0]}, which select would replace with the folder; give a new folder, "
            f"or one holding only task folders ({', '.join(tasks)})"
        )


def check_file_out(results: Path, out: Path) -> None:
    """Refuse a checkpoint --out whose name no checkpoint has (README.md), or an existing file outside
    RESULTS/selected/ that select did not write (a model of the user's own): select replaces only its own merges."""
    if out.suffix not in CHECKPOINT_SUFFIXES:
        raise UsageError(
            f"--out {out}: not a checkpoint's file name; give one ending in .safetensors (or "
            f"{', '.join(CHECKPOINT_SUFFIXES[1:])} for a torch state dict)"
        )
    if out.is_file() and not out.resolve().is_relative_to(Layout(results).selections.resolve()) and not _own(out):
        raise UsageError(
            f"--out {out}: exists, and select replaces only the merges it wrote (it is not one); remove the file "
            "first, or give another path"
        )


def _own(path: Path) -> bool:
    """Whether a file is a merge select wrote: its metadata says so (a .safetensors header; a torch file's state dict
    `_metadata`, save_checkpoint)."""
    try:
        if path.suffix == ".safetensors":
            from mapmerge.tensors.checkpoints import safetensors_metadata  # deferred: torch

            return safetensors_metadata(path).get("source") == SOURCE
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return getattr(state, "_metadata", {}).get("", {}).get("source") == SOURCE
    except Exception:  # not a readable checkpoint, or not one with metadata: not select's
        return False


def task_folder(folder: Path, task: str) -> Path:
    """The weights of the run's merged model folder of a task (groups/<g>/merged/<task>/, written by merge_group)."""
    if not (folder / "config.json").is_file() or not any((folder / name).is_file() for name in HF_WEIGHTS):
        raise ArtifactError(
            f"{folder}: not found or incomplete (the run's merged model of task {task}: its config, tokenizer and "
            "head, from which select makes its folders); run the workflow again, or give --out FILE.safetensors"
        )
    return weights_file(folder, str(folder))


def out_is_folder(out: Path | None) -> bool:
    """Whether a transformers run's --out names the folder of per-task folders (no .safetensors or torch suffix)."""
    return out is None or out.suffix not in CHECKPOINT_SUFFIXES


def save_checkpoint(state: Mapping[str, Any], out: Path, metadata: Mapping[str, str]) -> Path:
    """A state dict as safetensors (out ends in .safetensors, metadata in its header) or torch.save, atomically (the
    metadata as the state dict's `_metadata` of its root module, which load_state_dict passes by and torch.load
    keeps)."""
    import torch

    from mapmerge.tensors.checkpoints import save_safetensors  # deferred: torch

    if out.suffix == ".safetensors":
        return save_safetensors(state, out, metadata=metadata)
    ordered = OrderedDict(state)
    ordered._metadata = {"": dict(metadata)}  # type: ignore[attr-defined]
    with atomic_path(out) as tmp:
        torch.save(ordered, tmp)
    return out


@dataclass
class RebuiltMerge:
    """How select rebuilt the merge: the run's operator and seed, the pretrained checkpoint and how it was checked."""

    operator: dict[str, Any]
    seed: int | None
    chosen: dict[str, float]  # the run's own coefficients
    pretrained: Path
    found: str  # where the pretrained checkpoint came from
    checked: str  # how it was checked


@dataclass
class Selection:
    """What `select` chose and wrote."""

    group: str
    method: str  # of the run: map, nested, bayesian
    members: list[str]
    coefficients: dict[str, float]
    member_weights: dict[str, float]
    task_weights: dict[str, float]
    index: int  # the predicted pick's row of `front`
    front: pd.DataFrame
    metric: str
    out: Path
    candidate: str  # which candidate was merged: predicted or measured
    refined: bool  # whether the run's own rule merges the measured candidate (after refinement rounds)
    as_folders: bool  # a transformers run's per-task folders, else one checkpoint file
    merge: RebuiltMerge
    text: str = ""  # what `mapmerge select` prints
    warnings: list[str] = field(default_factory=list)  # runfolder.pick_warnings: printed on stderr


DEFAULT_RHO = 0.05  # selection.rho of config/selection/*.yaml


@dataclass(frozen=True)
class Pick:
    """How a preference picks a point: the selection method and rho, and the run's own (its selection.*)."""

    method: str
    rho: float
    own_method: str
    own_rho: float


def run_pick(results: Path, method: str | None, rho: float | None) -> Pick:
    """The selection method and rho of `select` and `export`: those given, else the run's own (choice.parquet records
    its selection.*; weighted_sum and DEFAULT_RHO where it does not). UsageError naming --method or --rho for a bad
    one, or a rho given to weighted_sum, which has none."""
    own: dict[str, Any] = {}
    for path in sorted(Path(results).glob("groups/*/choice.parquet")):
        if recorded := table_metadata(path).get("mapmerge.selection"):
            own = json.loads(recorded)
            break
    own_method, own_rho = str(own.get("method", "weighted_sum")), float(own.get("rho", DEFAULT_RHO))
    chosen = method or own_method
    if chosen not in selection.METHODS:
        raise UsageError(f"--method: must be one of {', '.join(selection.METHODS)}, got {chosen!r}")
    if rho is not None and chosen == "weighted_sum":
        given = "--method weighted_sum" if method else "weighted_sum, the run's own selection.method (see --method)"
        raise UsageError(f"--rho: has no effect with {given}; only tchebycheff and balanced take it")
    rho = own_rho if rho is None else rho
    if not (math.isfinite(rho) and rho >= 0):
        raise UsageError(f"--rho: must be a finite number >= 0, got {rho}")
    return Pick(chosen, rho, own_method, own_rho)


def preference_candidates(
    results: Path,
    group: str,
    info: Mapping[str, Any],
    front: pd.DataFrame,
    task_weights: Mapping[str, float],
    metric: str,
    method: str,
    rho: float,
) -> tuple[int, dict[str, float], list[pd.DataFrame], bool]:
    """(the predicted pick's row in `front`, the member weights, the candidates, refined) for a preference.

    The candidates (one row each, marked in `source`, with the `rule` that picked it: `method`, or balanced's
    fallback, selection.preference_scores): the predicted front's pick and, where the run evaluated samples, the
    measured front's pick. refined: whether the run's own rule merges the measured one (after refinement rounds, as
    its merge_group did; the last candidate), else the predicted one (the first).
    """
    paths = Layout(results)
    tasks = info["tasks"]
    reference = (
        selection.reference_values(read_checked(paths.reference, tasks), metric, tasks)
        if method == "balanced"
        else None
    )

    def pick(points: pd.DataFrame, source: str) -> tuple[int, dict[str, float], pd.DataFrame]:
        index, weights, rule = selection.pick_point(points, info, task_weights, metric, method, rho, reference)
        return index, weights, points.iloc[index].to_frame().T.assign(source=source, rule=rule)

    index, member_weights, predicted = pick(front, "predicted")
    candidates = [predicted]
    refined = (
        "source" in table_columns(paths.choice(group))
        and read_checked(paths.choice(group))["source"].iloc[0] == "measured"
    )
    if paths.samples(group).exists() and paths.metrics(group).exists():
        evaluated = metrics.sample_metrics(read_checked(paths.samples(group)), read_checked(paths.metrics(group)))
        if paths.selected_evals(group).exists():  # the chosen merge, evaluated for real where it is no sample
            real = metrics.measured_metrics(paths.selected_evals(group))
            evaluated = with_chosen_merge(evaluated, read_checked(paths.choice(group)), real)
        candidates.append(pick(selection.measured_front(evaluated, metric, tasks), "measured")[2])
    return index, member_weights, candidates, refined


def _merge_seed(operator: Mapping[str, Any], recorded: Any, given: int | None, merged: Path) -> int | None:
    """The seed of a seeded merge operator (dare, dare_ties): the one merged.safetensors records, else --seed.
    --seed for an operator that draws nothing is refused rather than ignored."""
    if operator.get("operator") not in SEEDED:
        if given is not None:
            raise UsageError(
                f"--seed {given}: the run's merge operator {operator.get('operator')} draws no random masks; "
                "leave --seed out"
            )
        return None
    if recorded is not None and given is not None and int(given) != int(recorded):
        raise UsageError(f"--seed {given}: the run merged with seed {recorded} ({merged})")
    seed = recorded if recorded is not None else given
    if seed is None:
        raise UsageError(
            f"the run's merge operator {operator['operator']} draws random masks and {merged} "
            "does not record their seed; give the run's seed (the config's `seed`) with --seed N"
        )
    return int(seed)


def _default_out(results: Path, pretrained: Path, name: str, tasks: Sequence[str], as_folders: bool) -> Path:
    """RESULTS/selected/<name>: a folder of per-task folders, else a file in the pretrained checkpoint's format."""
    from mapmerge.tensors.checkpoints import SHARD_INDEX_SUFFIX  # deferred: torch

    torch_file = pretrained.suffix != ".safetensors" and not pretrained.name.endswith(SHARD_INDEX_SUFFIX)
    out = Layout(results).selections / f"{name}{'' if as_folders else '.pt' if torch_file else '.safetensors'}"
    if as_folders:  # replaced whole: an earlier select's folders only
        check_out(results, out, tasks)
    return out


def _candidate_lines(
    candidates: Sequence[pd.DataFrame], front: pd.DataFrame, members: Sequence[str], tasks: Sequence[str], method: str
) -> list[str]:
    """The candidates as a table, each marked predicted or measured (a prediction with its interval), and the
    fallback rule of any that the preference's method did not pick."""
    shown = [m for m in METRICS if all(f"{m}_{t}" in front.columns for t in tasks)]
    header = ["candidate", "sample", *(f"c_{m}" for m in members)]
    header += [f"{m}_{t}" for m in shown for t in tasks]
    rows = []
    for frame in candidates:
        row = frame.iloc[0]
        source = str(row["source"])
        label = "predicted (not evaluated)" if source == "predicted" else "measured (real evaluation)"
        values = []
        for m in shown:
            for t in tasks:
                value = f"{float(row[f'{m}_{t}']):.4f}"
                if f"{m}_{t}_lo" in row.index and source == "predicted":
                    value += f" [{float(row[f'{m}_{t}_lo']):.3f}, {float(row[f'{m}_{t}_hi']):.3f}]"
                values.append(value)
        rows.append((label, str(row.get("sample", "-")), *(f"{float(row[f'c_{m}']):.4f}" for m in members), *values))
    lines = text_table(rows, header)
    merged = set(members) != set(tasks)  # nested MAP's members: merges of several tasks, judged by their mean gain
    for frame in candidates:
        rule, source = str(frame["rule"].iloc[0]), str(frame["source"].iloc[0])
        if rule != method:
            lines.append(f"the {source} candidate: {fallback_note(rule, method, source, merged)}")
    return lines


def _text(
    results: Path, chosen: Selection, method: str, rho: float, metric_source: str, candidates: Sequence[pd.DataFrame]
) -> str:
    """What select prints: the run, the preference, the candidates and which was merged, the file written."""
    members, tasks = chosen.members, list(chosen.task_weights)
    lines = [
        f"{results}: {METHOD_NAMES[chosen.method]}; group {chosen.group} (members {', '.join(members)}), "
        f"its stored front of {len(chosen.front)} points; objective {chosen.metric} ({metric_source}); "
        f"selection {method}" + (f" (rho {rho:g})" if method != "weighted_sum" else ""),
        "preference (normalised): " + ", ".join(f"{t} {w:.3g}" for t, w in chosen.task_weights.items()),
    ]
    if chosen.method == "nested":
        lines += [
            f"nested MAP: only the top group {chosen.group} is chosen again; its members ({', '.join(members)}) keep "
            "the merges",
            "  chosen for the run's own preference, since each level's merges depend on the choices below it. To choose every",
            "  level for this preference, run the workflow again with it: that keeps level 1's sample evaluations and",
            "  recomputes level 1's fronts and choices and everything of the later levels.",
            "member weights (sums of their tasks' weights): "
            + ", ".join(f"{m} {w:.3g}" for m, w in chosen.member_weights.items()),
        ]
    why = (
        "the run refined its front with real evaluations, so, as its own merge, the best measured point"
        if chosen.refined
        else "the run has no refinement rounds, so, as its own merge, the predicted front's pick"
    )
    lines += ["", f"candidates ({method}); chosen: the {chosen.candidate} one: {why}", ""]
    lines += _candidate_lines(candidates, chosen.front, members, tasks, method)
    lines.append(interval_line(interval_level(Layout(results).selected), "[low, high]"))
    merge = chosen.merge
    lines += [
        "",
        f"(the run's own choice: {', '.join(f'{float(merge.chosen[m]):.4f}' for m in members)})",
        "preference weights: " + ", ".join(f"{t} {chosen.task_weights[t]:.3g}" for t in tasks),
        "",
    ]
    if chosen.as_folders:
        lines.append(
            f"merged models: {chosen.out}/<task>/ for {', '.join(tasks)}: each its config, tokenizer and weights, the "
            "merged tensors and the task's own head (from_pretrained loads it)"
        )
    else:
        lines.append(f"merged checkpoint: {chosen.out}")
    lines += [
        f"  theta_pre + sum_i c_i tau'_i, merge operator {merge.operator.get('operator')}"
        + (f" (seed {merge.seed})" if merge.seed is not None else ""),
        f"  pretrained: {merge.pretrained} ({merge.found}); the parameters that are not merged are the pretrained ones",
        f"  checked: {merge.checked}",
    ]
    return "\n".join(lines)


def select(
    results: Path,
    preference: Mapping[str, float],
    method: str | None = None,
    rho: float | None = None,
    out: Path | None = None,
    pretrained: Path | None = None,
    metric: str | None = None,
    seed: int | None = None,
    max_shard_size: int | str | None = None,
) -> Selection:
    """Pick the final group's merge for `preference` (no evaluation) and write its merged checkpoint.

    Two candidates: the predicted front's pick (the surrogates' predictions) and, where the run evaluated samples,
    the measured front's pick (real values); the run's own rule decides, as its merge_group did: after refinement
    rounds the measured pick, else the predicted one. `method` and `rho` (default: the run's selection.method and
    selection.rho, from its choice.parquet; run_pick) pick within each.

    A transformers run (its merge_group wrote groups/<g>/merged/<task>/) gets the same folders: `out` (default
    RESULTS/selected/<preference>/) holds <task>/ per task, each its config, tokenizer and weights (sharded past
    max_shard_size, default MAX_SHARD_SIZE; refused for any other output), the merged tensors at the new
    coefficients and the task's own head, made from the run's folders
    (save_merged_models); an `out` ending in .safetensors or a torch suffix gets the merged state dict instead. Either
    way the model's non-persistent buffers are left out.
    """
    from mapmerge.tensors.checkpoints import hf_config  # deferred: torch
    from mapmerge.tensors.taskvectors import merge_files  # deferred: torch

    results = Path(results)
    pick = run_pick(results, method, rho)
    method, rho = pick.method, pick.rho
    layout = scan(results)
    group, info = final_group(layout)
    warnings = pick_warnings(results, group)
    tasks, members = info["tasks"], info["members"]
    paths = Layout(results)
    folders = paths.merged_folders(group)
    transformers_run = folders.is_dir() or config_key(checkpoint_sources(results)) == "model.transformers.pretrained"
    out = None if out is None else Path(out)
    as_folders = transformers_run and out_is_folder(out)
    if max_shard_size is not None and not as_folders:
        made = f"--out {out}: one checkpoint file" if transformers_run else f"{results}: not a transformers run"
        raise UsageError(f"--max-shard-size: has no effect ({made}); it shards a transformers run's task folders")
    if out is not None:
        check_out(results, out, tasks if as_folders else None)
    task_weights = preference_weights(preference, tasks)
    merged = paths.merged(group)
    front_path = front_file(results, group)
    front = read_checked(front_path, tasks)
    digest = table_digest(front_path)  # runfolder.stale_selections
    given_metric = metric
    metric, metric_source = objective_metric(results, front, tasks, metric)
    operator, chosen, recorded_seed = merge_record(merged)
    seed = _merge_seed(operator, recorded_seed, seed, merged)
    record = pretrained_record(results, layout, group)
    pre_path, pre_source = find_pretrained(results, pretrained, record)
    vectors = member_vectors(results, members, layout.tasks or tasks)
    templates = {t: task_folder(folders / t, t) for t in tasks} if as_folders else {}
    if out is None:
        named = metric if given_metric and metric != run_objective(results, front, tasks) else None
        out = _default_out(results, pre_path, preference_name(preference, pick, named), tasks, as_folders)
    if out.resolve() == pre_path.resolve():
        raise UsageError(f"--out {out}: is the pretrained checkpoint itself; write the merge elsewhere")
    if as_folders and pre_path.parent.resolve().is_relative_to(out.resolve()):
        raise UsageError(f"--out {out}: holds the pretrained checkpoint {pre_path}; write the merge elsewhere")
    if not as_folders:
        check_file_out(results, out)
    buffers = non_persistent_buffers(pre_path) if transformers_run and hf_config(pre_path) else set()
    checked = check_pretrained(results, pre_path, pretrained is not None, record)
    if checked is None:
        own_c = [float(chosen[m]) for m in members]
        hint = record.hint(results)
        check_reproduces(pre_path, vectors, own_c, operator, seed, merged, pretrained is not None, hint, buffers)
        checked = f"merged at the run's own coefficients it gives {merged}, every tensor ({record.why})"

    index, member_weights, candidates, refined = preference_candidates(
        results, group, info, front, task_weights, metric, method, rho
    )
    pick = candidates[-1] if refined else candidates[0]
    c = {m: float(pick[f"c_{m}"].iloc[0]) for m in members}
    state = merge_files(pre_path, vectors, list(c.values()), operator, seed)
    metadata = {
        "coefficients": json.dumps(c),
        "operator": json.dumps(operator),
        "preference": json.dumps(dict(preference)),
        "selection": json.dumps({"method": method, "rho": rho, "metric": metric}),
        "candidate": str(pick["source"].iloc[0]),
        "group": group,
        FRONT_KEY: digest,
        "source": SOURCE,
        **({"seed": str(seed)} if seed is not None else {}),
    }
    if as_folders:
        save_merged_models(
            state,
            merged_tensor_names(vectors.values()),
            templates,
            pre_path,
            out,
            metadata,
            MAX_SHARD_SIZE if max_shard_size is None else max_shard_size,
        )
    else:
        save_checkpoint({k: v for k, v in state.items() if k not in buffers}, out, metadata)
    del state
    made = Selection(
        group,
        layout.method or "map",
        members,
        c,
        member_weights,
        task_weights,
        index,
        front,
        metric,
        out,
        candidate=str(pick["source"].iloc[0]),
        refined=refined,
        as_folders=as_folders,
        merge=RebuiltMerge(operator, seed, chosen, pre_path, pre_source, checked),
        warnings=warnings,
    )
    made.text = _text(results, made, method, rho, metric_source, candidates)
    return made
