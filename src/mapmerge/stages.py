"""One function per workflow stage. Each reads its inputs, writes its outputs atomically, and
knows nothing of Snakemake, so every stage can be run from Python and from tests.

Every workflow job imports this module (the Snakefile is parsed again in each job), so torch,
pymoo, scipy and matplotlib are imported inside the stages that need them, not at the top.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mapmerge import groups, selection
from mapmerge.io import read_table, write_table
from mapmerge.metrics import metrics_from_examples, suffixes, wide_metrics

PathLike = str | os.PathLike
# pretrained: path; vectors: member -> task-vector path; checkpoints: task -> fine-tuned checkpoint path
EngineFiles = Mapping[str, Any]
logger = logging.getLogger("mapmerge")


def run_prepare_benchmark(params: Mapping[str, Any], checkpoint_dir: PathLike, table: PathLike) -> None:
    """Train the built-in benchmark's pretrained and fine-tuned checkpoints."""
    import torch

    from mapmerge import benchmark

    torch.set_num_threads(int(params["benchmark"]["threads"]))
    frame = benchmark.prepare_benchmark(params["benchmark"], checkpoint_dir)
    files = [Path(checkpoint_dir) / f for f in frame["file"]]
    write_table(frame, table, "prepare_benchmark", params, inputs=files)


def run_extract_task_vector(params: Mapping[str, Any], task: str, pretrained: PathLike, finetuned: PathLike, out: PathLike) -> None:
    """tau_task = finetuned - pretrained over the merged tensors."""
    from mapmerge.taskvectors import extract_task_vector

    extract_task_vector(pretrained, finetuned, params["merge"]["include"], params["merge"]["exclude"], out, task)


def run_task_vector_table(vectors: Mapping[str, PathLike], out: PathLike) -> None:
    """Norms and pairwise cosine similarities of the task vectors."""
    from mapmerge.taskvectors import task_vector_table

    write_table(task_vector_table(vectors), out, "task_vectors", inputs=vectors.values())


def _engine(params: Mapping[str, Any], files: EngineFiles, device: str, threads: int):
    import torch

    from mapmerge.evaluate import MergeEngine

    if threads > 0:
        torch.set_num_threads(threads)
    model = params["model"]
    return MergeEngine(
        builder=model["builder"],
        pretrained=files["pretrained"],
        vectors=files["vectors"],
        task_checkpoints=files["checkpoints"],
        evaluators=model["evaluators"],
        merge=model["merge"],
        device=device,
        python_path=model["python_path"],
        operator=params.get("merge_operator"),
        seed=params.get("merge_seed"),
    )


def _engine_inputs(files: EngineFiles) -> list[PathLike]:
    return [files["pretrained"], *files["vectors"].values(), *files["checkpoints"].values()]


def run_evaluate_reference(
    params: Mapping[str, Any],
    files: EngineFiles,
    metrics_out: PathLike,
    examples_out: PathLike,
    device: str = "auto",
    threads: int = 0,
) -> None:
    """Evaluate the pretrained model and every fine-tuned model on every task.

    The merge operator is not applied: these are the real fine-tuned models, theta_pre + tau_i.
    """
    engine = _engine({**params, "merge_operator": None}, files, device, threads)
    models = {"pretrained": np.zeros(len(engine.members))}
    models.update({m: np.eye(len(engine.members))[i] for i, m in enumerate(engine.members)})
    examples = pd.concat([engine.evaluate(c, sample=name) for name, c in models.items()], ignore_index=True)
    inputs = _engine_inputs(files)
    metrics = metrics_from_examples(examples).rename(columns={"sample": "model"})
    write_table(examples.rename(columns={"sample": "model"}), examples_out, "evaluate_reference", params, inputs)
    write_table(metrics, metrics_out, "evaluate_reference", params, inputs)


def run_plan_groups(params: Mapping[str, Any], out: PathLike) -> None:
    """The groups of tasks that MAP runs on (one for plain MAP)."""
    write_table(groups.plan_groups(params["method"], params["tasks"]), out, "plan_groups", params)


def group_row(groups_table: PathLike, group: str) -> dict[str, Any]:
    """One group's row of groups.parquet, with members and tasks as lists."""
    frame = read_table(groups_table)
    rows = frame[frame["group"] == group]
    if rows.empty:
        raise KeyError(f"{groups_table}: no group '{group}'")
    row = rows.iloc[0].to_dict()
    return {**row, "members": list(row["members"]), "tasks": list(row["tasks"])}


def run_sample_coefficients(params: Mapping[str, Any], groups_table: PathLike, group: str, out: PathLike) -> None:
    """The designed coefficient vectors of one group."""
    from mapmerge import sampling

    members = group_row(groups_table, group)["members"]
    frame = sampling.design(members, params["sampler"], params["seed"])
    write_table(frame, out, "sample_coefficients", params, inputs=[groups_table])


def sample_batches(samples: Sequence[str], size: int) -> dict[str, list[str]]:
    """Consecutive batches of `size` samples, named b0000, b0001, ...; a grown design keeps earlier batches."""
    if size < 1:
        raise ValueError(f"evaluation.samples_per_job: must be at least 1, got {size}")
    return {f"b{i // size:04d}": list(samples[i : i + size]) for i in range(0, len(samples), size)}


def run_evaluate_samples(
    params: Mapping[str, Any],
    files: EngineFiles,
    coefficients: Mapping[str, Sequence[float]],
    out: PathLike,
    device: str = "auto",
    threads: int = 0,
    on_error: str = "fail",
) -> None:
    """Evaluate the merges of several samples with one engine, into one per-example table.

    on_error='record' keeps failed (sample, task) evaluations as rows with an `error` (see MergeEngine.evaluate).
    """
    engine = _engine(params, files, device, threads)
    examples = pd.concat([engine.evaluate(c, sample=s, on_error=on_error) for s, c in coefficients.items()], ignore_index=True)
    failed = examples.dropna(subset=["error"])
    if len(failed):
        logger.warning("%d of %d evaluations failed and were recorded in %s", len(failed), len(coefficients) * len(engine.tasks), out)
    write_table(examples, out, "evaluate_sample", {**params, "c": dict(coefficients)}, _engine_inputs(files))


def run_collect_metrics(evals: Sequence[PathLike], out: PathLike) -> None:
    """Per-task metrics (sample, task, metric, value) of all of a group's evaluations."""
    examples = pd.concat([read_table(p) for p in evals], ignore_index=True)
    write_table(metrics_from_examples(examples), out, "collect_metrics", inputs=evals)


def run_fit_surrogate(params: Mapping[str, Any], samples: PathLike, metrics: PathLike, out: PathLike) -> None:
    """Fit the quadratic surrogate of every task and metric."""
    from mapmerge import surrogate

    sample_frame = read_table(samples)
    metric_frame = read_table(metrics)
    members = suffixes(sample_frame.columns, "c")
    cfg = params["surrogate"]
    try:
        table = surrogate.fit_table(sample_frame, metric_frame, members, cfg["links"], loo=cfg["loo"], missing=cfg["missing"])
    except surrogate.SurrogateError as exc:
        raise surrogate.SurrogateError(f"{metrics}: {exc}") from exc
    for row in table[table["n_dropped"] > 0].itertuples():
        logger.warning("task %s, metric %s: fitted without samples %s (surrogate.missing=drop)", row.task, row.metric, row.dropped)
    write_table(table, out, "fit_surrogate", params, inputs=[samples, metrics])


def objective_predictor(table: pd.DataFrame, metric: str, tasks: Sequence[str]):
    """A function C -> F with one column per task: the surrogate's prediction of `metric`."""
    from mapmerge import surrogate

    fits = surrogate.fits_from_table(table)
    missing = [t for t in tasks if (t, metric) not in fits]
    if missing:
        raise KeyError(f"surrogate has no fit of metric '{metric}' for task '{missing[0]}' (surrogate.links)")
    chosen = [fits[(t, metric)] for t in tasks]
    return lambda C: np.column_stack([f.predict(C) for f in chosen])


def maximized(metric: str) -> bool:
    """Accuracy is maximised, loss minimised."""
    return metric != "loss"


def run_pareto_front(params: Mapping[str, Any], surrogate_table: PathLike, samples: PathLike, out: PathLike) -> None:
    """NSGA-III front of the surrogates inside the sampled box, with every fitted metric predicted."""
    from mapmerge import pareto

    table = read_table(surrogate_table)
    members = table["tasks"].iloc[0].split(",")
    tasks = sorted(set(table["task"]), key=members.index)
    opt = params["optimizer"]
    metric = opt["objective"]
    sample_frame = read_table(samples)
    coef = sample_frame[[f"c_{m}" for m in members]].to_numpy()
    lower, upper = coef.min(axis=0), coef.max(axis=0)
    predict = objective_predictor(table, metric, tasks)
    maximize = [maximized(metric)] * len(tasks)
    C, _ = pareto.surrogate_front(
        predict, len(members), lower, upper, maximize,
        pop_size=opt["pop_size"], n_gen=opt["n_gen"], seed=params["seed"], ref_partitions=opt["ref_partitions"],
    )
    front = pd.DataFrame(C, columns=[f"c_{m}" for m in members])
    for other in sorted(set(table["metric"])):
        F = objective_predictor(table, other, tasks)(C)
        for i, task in enumerate(tasks):
            front[f"{other}_{task}"] = F[:, i]
    extra = {}
    if len(members) == 2:
        _, grid = pareto.grid_front(predict, lower, upper, maximize, resolution=opt["grid_check_resolution"])
        extra["mapmerge.grid_igd"] = f"{pareto.igd(front[[f'{metric}_{t}' for t in tasks]].to_numpy(), grid, maximize):.6g}"
    write_table(front, out, "pareto_front", params, inputs=[surrogate_table, samples], extra=extra)


def run_merge_group(
    params: Mapping[str, Any],
    front_table: PathLike,
    files: EngineFiles,
    merged_out: PathLike,
    choice_out: PathLike,
) -> None:
    """Pick the front point for the preference and write the merged checkpoint and the choice."""
    from mapmerge.checkpoints import load_state_dict, save_safetensors
    from mapmerge.taskvectors import merged_state

    front = read_table(front_table)
    metric = params["objective"]
    tasks = suffixes(front.columns, metric)
    weights = selection.normalize_preference(params["preference"], tasks)
    sel = params["selection"]
    F = front[[f"{metric}_{t}" for t in tasks]].to_numpy()
    index = selection.select_point(F, list(weights.values()), [maximized(metric)] * len(tasks), sel["method"], sel["rho"])
    choice = front.iloc[[index]].reset_index(drop=True)
    for task, w in weights.items():
        choice[f"weight_{task}"] = w
    members = list(files["vectors"])
    c = [float(choice[f"c_{m}"].iloc[0]) for m in members]
    vectors = [load_state_dict(v) for v in files["vectors"].values()]
    merged = merged_state(
        load_state_dict(files["pretrained"]), vectors, c,
        operator=params.get("merge_operator"), members=members, seed=params.get("merge_seed"),
    )
    operator = params.get("merge_operator") or {"operator": "task_arithmetic"}
    metadata = {"coefficients": json.dumps(dict(zip(members, c))), "operator": json.dumps(operator)}
    save_safetensors(merged, merged_out, metadata=metadata)
    write_table(choice, choice_out, "merge_group", params, inputs=[front_table])


def run_evaluate_selected(
    params: Mapping[str, Any],
    choice: PathLike,
    files: EngineFiles,
    out: PathLike,
    device: str = "auto",
    threads: int = 0,
) -> None:
    """Evaluate the chosen merge for real on every task (per-example rows)."""
    frame = read_table(choice)
    c = {"selected": [float(frame[f"c_{m}"].iloc[0]) for m in files["vectors"]]}
    run_evaluate_samples(params, files, c, out, device, threads)


def run_aggregate(
    params: Mapping[str, Any],
    results: PathLike,
    group_names: Sequence[str],
    pareto_out: PathLike,
    selected_out: PathLike,
    plot_dir: PathLike,
    report_out: PathLike,
) -> None:
    """Gather fronts and choices of all groups, measured metrics of the choices, plots and a report."""
    from mapmerge import plots, report

    results = Path(results)
    metric = params["objective"]
    fronts, chosen, inputs = [], [], []
    for group in group_names:
        gdir = results / "groups" / group
        fronts.append(read_table(gdir / "front.parquet").assign(group=group))
        choice = read_table(gdir / "choice.parquet").assign(group=group)
        measured = metrics_from_examples(read_table(gdir / "selected_evals.parquet")).set_index(["metric", "task"])["value"]
        for name in sorted(set(measured.index.get_level_values("metric"))):
            for task in suffixes(choice.columns, metric):
                choice[f"measured_{name}_{task}"] = measured[(name, task)]
        chosen.append(choice)
        inputs += [gdir / "front.parquet", gdir / "choice.parquet", gdir / "selected_evals.parquet"]
    front = pd.concat(fronts, ignore_index=True)
    selected = pd.concat(chosen, ignore_index=True)
    write_table(front, pareto_out, "aggregate", params, inputs)
    write_table(selected, selected_out, "aggregate", params, inputs)
    last = group_names[-1]
    gdir = results / "groups" / last
    samples = read_table(gdir / "samples.parquet")
    samples = samples.merge(wide_metrics(read_table(gdir / "metrics.parquet"), "sample").reset_index(), on="sample")
    tasks = suffixes(front.columns, metric)
    reference = read_table(results / "reference.parquet")
    plots.plot_all(samples, fronts[-1], reference, tasks, metric, plot_dir, selected=chosen[-1], maximize=maximized(metric))
    report.write_report(results, group_names, report_out)
