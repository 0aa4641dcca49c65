"""`mapmerge export --mergekit`: a run's merge (its own, a preference's pick or any front point) as a mergekit
configuration, to be merged again by mergekit (`mergekit-yaml OUT.yaml OUTPUT_DIR`).

mergekit merges the models of one architecture from transformers directories, so only a transformers run
(model.transformers, plain or Bayesian MAP) is exported: the built-in benchmark's checkpoints are single
safetensors files, and nested MAP's final members are merges of merges. The run folder records its models'
file names and hashes only, so the directories are given (--pretrained, --model TASK=DIR) and checked: each
task's weights minus the pretrained ones must give the run's task vector, every tensor.

What mergekit computes is mapmerge's merge theta_pre + sum_i c_i tau'_i (mapmerge.tensors.operators) where:

- task_arithmetic: any point; task_arithmetic with weight c_i, normalize false.
- ties, dare_ties: only points whose coefficients are all equal, c; weight 1, normalize true, lambda c
  (dare_ties: c / (1 - drop_rate)). mergekit elects each element's sign from the weighted deltas and divides
  by the sum of the kept weights, so at unequal coefficients no configuration gives mapmerge's merge (the sign
  of the unweighted sum, divided by the count kept). mergekit keeps int(density * n) entries of a tensor of n,
  mapmerge ceil(density * n) (operators.trim_count): a tensor where they differ gets its own density.
- dare (mergekit's dare_linear), dare_ties: rescale false and the weight (lambda) divided by 1 - drop_rate, as
  mapmerge rescales; the masks are random in both (mapmerge's per seed, task and tensor, mergekit's from
  torch's generator), so the merges are the same only at drop_rate 0.
- slerp: only points with c_1 + c_2 = 1: base_model task 1's directory, t = c_2.

A tensor the run did not merge (model.merge.exclude) gets weight 0 in every model, so mergekit keeps the base
model's, the pretrained one, as mapmerge's merged checkpoint does (slerp, whose base is task 1, is refused).
mergekit computes in float32 (dtype), as mapmerge merges; out_dtype is the pretrained checkpoint's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mapmerge.adapters import hub
from mapmerge.adapters.transformers import weights_file
from mapmerge.errors import ConfigError
from mapmerge.io import atomic_path
from mapmerge.layout import Layout
from mapmerge.tensors.checkpoints import open_checkpoint, safetensors_metadata
from mapmerge.tensors.lora import adapter_weights, vector_names
from mapmerge.tensors.operators import trim_count, validate
from mapmerge.tools.check import read_checked
from mapmerge.tools.merge_inputs import member_vectors, merge_record, pretrained_record
from mapmerge.tools.runfolder import UsageError, final_group, front_file, objective_metric, pick_warnings, scan
from mapmerge.tools.select_merge import (
    check_out,
    preference_candidates,
    preference_weights,
    run_pick,
)

# mapmerge's operator -> mergekit's merge_method
METHODS = {
    "task_arithmetic": "task_arithmetic",
    "ties": "ties",
    "dare": "dare_linear",
    "dare_ties": "dare_ties",
    "slerp": "slerp",
}
HEADER = "mergekit configuration written by `mapmerge export`"  # the first line of what export writes, after '# '
TOLERANCE = 1e-9  # equal coefficients (ties, dare_ties), c_1 + c_2 = 1 (slerp)
DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class Models:
    """The directories of a merge and its tensors: what a mergekit configuration names."""

    pretrained: Path  # the pretrained model's directory
    members: dict[str, Path]  # member -> its fine-tuned directory, in coefficient order
    merged: dict[str, int]  # the tensors the run merged (named as stored, as mergekit names them) -> their size
    others: list[str]  # the models' other tensors (not merged: the pretrained ones)
    dtype: str = "float32"  # the pretrained checkpoint's floating-point dtype
    vector_dtype: str = "float32"  # the run's task vectors' (model.merge.vector_dtype)


def mergekit_config(
    operator: Mapping[str, Any], coefficients: Mapping[str, float], models: Models
) -> tuple[dict[str, Any], list[str]]:
    """(the mergekit configuration that gives mapmerge's merge at `coefficients`, notes for its header).

    UsageError saying why where no configuration does (see the module's docstring).
    """
    spec = validate(operator)
    op = spec["operator"]
    c = [float(coefficients[m]) for m in models.members]
    shown = ", ".join(f"{m}={v:.6g}" for m, v in zip(models.members, c))
    notes = [f"mapmerge's merge theta_pre + sum_i c_i tau'_i, operator {op}, at {shown}"]
    if op in ("ties", "dare_ties") and max(c) - min(c) > TOLERANCE:
        raise UsageError(
            f"merge operator {op}: the point's coefficients ({shown}) are not all equal, and mergekit's {METHODS[op]} "
            "elects each element's sign from the weighted deltas and divides by the sum of the kept weights, so no "
            "mergekit configuration gives mapmerge's merge there (the sign of the unweighted sum, divided by the count "
            "kept); export a point with equal coefficients"
        )
    if op == "slerp":
        return _slerp(c, models, notes)
    names = [*models.merged, *models.others]

    def weight(value: float) -> Any:  # the tensors the run did not merge: weight 0, the base's
        return per_tensor_setting({n: value if n in models.merged else 0.0 for n in names}, value)

    keep = 1.0 - spec.get("drop_rate", 0.0)
    if op == "task_arithmetic":
        parameters, shared = [{"weight": weight(v)} for v in c], {"normalize": False}
    elif op == "ties":
        density = spec["density"]
        per_tensor = {n: _mergekit_density(density, models.merged.get(n)) for n in names}
        parameters = [{"weight": weight(1.0), "density": per_tensor_setting(per_tensor, density)} for _ in c]
        shared = {"normalize": True, "lambda": c[0]}
        if any(v != density for v in per_tensor.values()):
            notes.append(
                "density per tensor: mergekit keeps int(density * n) entries of a tensor of n, mapmerge "
                "ceil(density * n); the tensors where they differ have their own"
            )
    elif op == "dare":
        parameters = [{"weight": weight(v / keep), "density": keep} for v in c]
        shared = {"normalize": False, "rescale": False}
    else:  # dare_ties
        parameters = [{"weight": weight(1.0), "density": keep} for _ in c]
        shared = {"normalize": True, "rescale": False, "lambda": c[0] / keep}
    if op in ("dare", "dare_ties"):
        notes.append(
            f"DARE masks are random in both: mapmerge draws them per seed, task and tensor, mergekit from torch's "
            f"generator; this is mapmerge's merge in form (kept entries scaled by 1 / (1 - drop_rate) = {1 / keep:.6g} "
            "through the weights, rescale off) but not its masks, the same merge only at drop_rate 0"
        )
    if models.vector_dtype != "float32":
        notes.append(
            f"the run stored its task vectors in {models.vector_dtype} (model.merge.vector_dtype): its merges differ "
            "from this one by their rounding"
        )
    if models.others:
        notes.append(
            f"weight 0 on the tensors the run did not merge ({len(models.others)}, e.g. {models.others[0]}): they stay "
            "the pretrained ones, as in mapmerge's merged checkpoint"
        )
    config = {
        "merge_method": METHODS[op],
        "base_model": str(models.pretrained),
        "models": [
            {"model": str(path), "parameters": p} for path, p in zip(models.members.values(), parameters, strict=True)
        ],
        "parameters": shared,
        **_dtypes(models),
    }
    return config, notes


def _slerp(c: list[float], models: Models, notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    if abs(sum(c) - 1) > TOLERANCE:
        raise UsageError(
            f"merge operator slerp: the point's c1 + c2 = {sum(c):.6g}, not 1, and mergekit's slerp is mapmerge's "
            "merge only on that line (elsewhere mapmerge scales the SLERP'd model's task vector by c1 + c2); export "
            "a point with c1 + c2 = 1"
        )
    if models.others:
        raise UsageError(
            f"merge operator slerp: the run did not merge some tensors ({len(models.others)}, e.g. "
            f"{models.others[0]}), which mergekit's slerp interpolates too (its base is task 1's model, not the "
            "pretrained one)"
        )
    paths = [str(p) for p in models.members.values()]
    notes.append(f"slerp between {' and '.join(models.members)} at t = c2; the pretrained model is not an input")
    config = {
        "merge_method": "slerp",
        "base_model": paths[0],
        "models": [{"model": p} for p in paths],
        "parameters": {"t": c[1]},
        **_dtypes(models),
    }
    return config, notes


def _dtypes(models: Models) -> dict[str, str]:
    """mergekit computes in float32, as mapmerge merges, and writes the pretrained checkpoint's dtype."""
    return {"dtype": "float32", **({"out_dtype": models.dtype} if models.dtype != "float32" else {})}


def _mergekit_density(density: float, n: int | None) -> float:
    """The density at which mergekit keeps the entries mapmerge's ties keeps of a tensor of n (k = trim_count):
    mergekit keeps max(1, int(d * n)), all at d >= 1."""
    if n is None or density >= 1:
        return density
    k = trim_count(density, n)
    if k == n:
        return 1.0
    return density if max(1, int(density * n)) == k else (k + 0.5) / n


def per_tensor_setting(values: Mapping[str, float], default: float) -> float | list[dict[str, Any]]:
    """A mergekit parameter setting that gives each tensor its value: `default`, or a list of {filter, value}
    entries and a last {value: default}. mergekit takes the first entry whose filter is a substring of the tensor's
    name, so the entries go longest name first, and a tensor another's filter would catch gets its own entry."""
    entries = {n for n, v in values.items() if v != default}
    while True:
        order = sorted(entries, key=lambda n: (-len(n), n))
        wrong = {n for n, v in values.items() if next((values[f] for f in order if f in n), default) != v}
        if not wrong:
            break
        entries |= wrong
    if not order:
        return default
    return [{"filter": n, "value": values[n]} for n in order] + [{"value": default}]


def _check_yaml_out(out: Path) -> None:
    """Refuse a --mergekit path not named like a YAML file, or an existing file that export did not write (HEADER)."""
    if out.suffix not in (".yaml", ".yml"):
        raise UsageError(f"--mergekit {out}: not a YAML file's name; give one ending in .yaml or .yml")
    if out.is_file():
        with out.open(errors="replace") as fh:
            own = fh.readline().startswith(f"# {HEADER}")
        if not own:
            raise UsageError(
                f"--mergekit {out}: exists, and export replaces only the configurations it wrote; remove the file "
                "first, or give another path"
            )


def write_config(config: Mapping[str, Any], notes: Sequence[str], out: Path) -> Path:
    """The configuration as YAML, its notes as comment lines on top, written atomically."""
    header = "".join(f"# {line}\n" for line in notes)
    with atomic_path(out) as tmp:
        tmp.write_text(header + yaml.safe_dump(dict(config), sort_keys=False))
    return out


# ---------------------------------------------------------------------------------------------------
# A run folder's point and models


def export(
    results: Path,
    out: Path,
    preference: Mapping[str, float] | None = None,
    method: str | None = None,
    rho: float | None = None,
    point: str | None = None,
    pretrained: str | None = None,
    models: Mapping[str, str] | None = None,
    metric: str | None = None,
) -> tuple[str, list[str]]:
    """Write the mergekit configuration of a run's merge to `out`; what was written, as text, and the warnings
    (runfolder.pick_warnings) to print before it.

    The point: with `preference`, the one `mapmerge select` picks (method, rho and metric as there); with `point`,
    a row of the final group's front.parquet (its 0-based index) or an evaluated sample (its name); else the run's
    own merge (the coefficients in groups/<g>/merged.safetensors). pretrained, models: the run's pretrained and
    fine-tuned transformers directories (or Hugging Face names of cached models), checked against its task vectors.
    """
    results, out = Path(results), Path(out)
    if preference is not None and point is not None:
        raise UsageError("--prefer and --point: give one (or neither, for the run's own merge)")
    picking = {"--method": method, "--rho": rho, "--metric": metric}
    if preference is None and (given := [name for name, value in picking.items() if value is not None]):
        raise UsageError(f"{given[0]}: has no effect without --prefer (it picks the point for a preference)")
    layout = scan(results)
    check_out(results, out, option="--mergekit", tool="export", file="the YAML file to write")
    _check_yaml_out(out)
    group, info = final_group(layout)
    warnings = pick_warnings(results, group)
    merges = [m for m in info["members"] if m not in info["tasks"]]
    if merges:
        raise UsageError(
            f"{results}: nested MAP's final group {group} merges {merges[0]}, a merge of the level below, which no "
            "single mergekit configuration names; export a plain or Bayesian MAP run"
        )
    if pretrained_record(results, layout, group).builtin:
        raise UsageError(
            f"{results}: the built-in benchmark's checkpoints are single safetensors files, which mergekit cannot read "
            "as models (it reads transformers directories: config.json and weights); export a transformers run"
        )
    paths = Layout(results)
    operator, chosen, _ = merge_record(paths.merged(group))
    members = info["members"]
    if preference is not None:
        c, where = _preference_point(results, layout, group, info, preference, method, rho, metric)
    elif point is not None:
        c, where = _front_point(results, group, members, point)
    else:
        c, where = {m: float(chosen[m]) for m in members}, f"the run's own merge ({paths.merged(group)})"
    if pretrained is None:
        raise UsageError(
            f"{results}: the run folder records its models' file names, not their folders; give the pretrained "
            "directory the run merged with --pretrained DIR (model.transformers.pretrained)"
        )
    given = dict(models or {})
    unknown = sorted(set(given) - set(members))
    missing = [m for m in members if m not in given]
    if unknown or missing:
        raise UsageError(
            f"--model: {'unknown task ' + repr(unknown[0]) if unknown else 'no directory for task ' + repr(missing[0])}; "
            f"give TASK=DIR for each of the run's tasks {', '.join(members)}"
        )
    vectors = member_vectors(results, members, layout.tasks or info["tasks"])
    found = read_models(pretrained, given, vectors)
    config, notes = mergekit_config(operator, c, found)
    notes = [
        f"{HEADER} from {results}: {where}",
        *notes,
        f"merge it: mergekit-yaml {out.name} OUTPUT_DIR",
    ]
    write_config(config, notes, out)
    shown = ", ".join(f"{m} {v:.6g}" for m, v in c.items())
    text = [
        f"{out}: mergekit {config['merge_method']} of {where}",
        f"  coefficients: {shown} (merge operator {operator['operator']})",
        *(f"  {line}" for line in notes[1:-1]),
        f"  merge it: mergekit-yaml {out} OUTPUT_DIR",
    ]
    return "\n".join(text), warnings


def _preference_point(
    results: Path,
    layout: Any,
    group: str,
    info: Mapping[str, Any],
    preference: Mapping[str, float],
    method: str | None,
    rho: float | None,
    metric: str | None,
) -> tuple[dict[str, float], str]:
    """The coefficients `mapmerge select` merges for a preference (select_merge.preference_candidates), and a label."""
    pick = run_pick(results, method, rho)
    method, rho = pick.method, pick.rho
    weights = preference_weights(preference, info["tasks"])
    front = read_checked(front_file(results, group), info["tasks"])
    metric, _ = objective_metric(results, front, info["tasks"], metric)
    _, _, candidates, refined = preference_candidates(results, group, info, front, weights, metric, method, rho)
    pick = candidates[-1] if refined else candidates[0]
    label = ", ".join(f"{t}={w:g}" for t, w in preference.items())
    return (
        {m: float(pick[f"c_{m}"].iloc[0]) for m in info["members"]},
        f"the {pick['source'].iloc[0]} pick for the preference {label} ({method}), as `mapmerge select` merges it",
    )


def _front_point(results: Path, group: str, members: Sequence[str], point: str) -> tuple[dict[str, float], str]:
    """A row of the final group's front (its index) or an evaluated sample (its name): its coefficients, a label."""
    paths = Layout(results)
    columns = [f"c_{m}" for m in members]
    if point.isdigit():
        front = read_checked(front_file(results, group))
        if int(point) >= len(front):
            raise UsageError(
                f"--point {point}: the front {paths.front(group)} has {len(front)} points (0 to {len(front) - 1})"
            )
        row, where = front.iloc[int(point)], f"point {point} of {paths.front(group)}"
    else:
        samples = read_checked(paths.samples(group))
        rows = samples[samples["sample"] == point]
        if rows.empty:
            raise UsageError(
                f"--point {point}: neither a row index of {paths.front(group)} nor a sample of {paths.samples(group)}"
            )
        row, where = rows.iloc[0], f"sample {point} of {paths.samples(group)}"
    return {m: float(row[col]) for m, col in zip(members, columns)}, where


def _directory(value: str, where: str) -> Path:
    """A transformers model directory, or a cached Hugging Face model's snapshot (mapmerge.adapters.hub);
    `where`: the option as given, for messages."""
    try:
        path = hub.model_path(value, where, Path(value))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if adapter_weights(path) is not None:
        raise UsageError(f"{where}: a PEFT LoRA adapter; the mergekit export takes full fine-tuned models")
    if not (path / "config.json").is_file():
        raise UsageError(
            f"{where}: not a transformers model directory (no config.json); mergekit reads models from such directories"
        )
    try:
        weights_file(path, where)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return path.resolve()


def _check_same_tensors(pre: Mapping[str, Any], ft: Mapping[str, Any], where: str, pretrained: Path) -> None:
    """UsageError where a fine-tune's stored tensors (name -> shape) are not the pretrained model's: mergekit merges
    models of one architecture, stored alike. Says which are only in either, and where a prefix tells them apart (a
    base model's names lack its body's, `bert.`)."""
    only_ft, only_pre = sorted(set(ft) - set(pre)), sorted(set(pre) - set(ft))
    if only_ft or only_pre:
        unprefixed = set(only_pre)
        prefixed = [n for n in only_ft if n.partition(".")[2] in unprefixed]
        why = f"{len(only_ft)} tensors only in it" + (f" ('{only_ft[0]}')" if only_ft else "")
        why += f", {len(only_pre)} only in the pretrained model" + (f" ('{only_pre[0]}')" if only_pre else "")
        if prefixed:
            why += f"; {len(prefixed)} of them the same but for the prefix '{prefixed[0].partition('.')[0]}.'"
    elif reshaped := sorted(n for n in pre if ft[n] != pre[n]):
        why = f"tensor '{reshaped[0]}' has shape {tuple(ft[reshaped[0]])}, the pretrained model's {tuple(pre[reshaped[0]])}"
    else:
        return
    raise UsageError(
        f"{where}: not stored as the pretrained model {pretrained}: {why}; mergekit merges models of one architecture, "
        "stored alike"
    )


def read_models(pretrained: str, directories: Mapping[str, str], vectors: Mapping[str, Path]) -> Models:
    """The Models of a merge: the pretrained and each member's directory (or cached model name), checked against
    the members' task vectors (member -> file, in coefficient order): each directory minus the pretrained one
    gives its task vector, every tensor, as the run computed it (in float32, stored in its dtype).

    UsageError naming the option where a directory is none, a model's tensors are not the pretrained model's
    (mergekit merges models of one architecture) or a task vector is not given."""
    models = Models(
        _directory(pretrained, f"--pretrained {pretrained}"),
        {m: _directory(directories[m], f"--model {m}={directories[m]}") for m in vectors},
        {},
        [],
    )
    pre_path, merged = weights_file(models.pretrained, "--pretrained"), {}
    with open_checkpoint(pre_path) as pre:
        meta = pre.meta()
        for member, directory in models.members.items():
            with (
                open_checkpoint(weights_file(directory, str(directory))) as ft,
                open_checkpoint(vectors[member]) as tau,
            ):
                ft_meta = ft.meta()
                _check_same_tensors(
                    {pre.stored_name(n): meta[n].shape for n in meta},
                    {ft.stored_name(n): ft_meta[n].shape for n in ft_meta},
                    f"--model {member}={directory}",
                    models.pretrained,
                )
                storage = tau.meta()
                for name in vector_names(tau, vectors[member]):
                    if name not in storage:
                        raise UsageError(
                            f"{vectors[member]}: a low-rank task vector; the mergekit export takes full fine-tunes"
                        )
                    given = (ft.get(name).float() - pre.get(name).float()).to(storage[name].dtype)
                    if not torch.equal(given, tau.get(name)):
                        raise UsageError(
                            f"--model {member}={directory}: its tensor '{name}' minus --pretrained's is not the run's "
                            f"task vector {vectors[member]}; give the directories the run merged"
                        )
                    merged[name] = given.numel()
        # mergekit's names: as stored (a base model's without transformers' base_model_prefix)
        models.merged = {pre.stored_name(n): numel for n, numel in merged.items()}
        models.others = sorted(pre.stored_name(n) for n in set(meta) - set(merged))
    dtypes = {meta[n].dtype for n in merged}
    models.dtype = DTYPES.get(dtypes.pop(), "float32") if len(dtypes) == 1 else "float32"
    stored = sorted({str(safetensors_metadata(p).get("dtype", "float32")) for p in vectors.values()})
    models.vector_dtype = ", ".join(stored)
    return models
