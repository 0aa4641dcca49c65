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
from mapmerge.io import read_table, table_metadata, write_table
from mapmerge.metrics import evaluation_counts, metrics_from_examples, suffixes, wide_metrics
from mapmerge.progress import progress

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
    """tau_task = finetuned - pretrained over the merged tensors, stored in model.merge.vector_dtype."""
    from mapmerge.taskvectors import extract_task_vector

    merge = params["merge"]
    extract_task_vector(pretrained, finetuned, merge["include"], merge["exclude"], out, task, merge.get("vector_dtype", "float32"))


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
    examples = pd.concat(
        [engine.evaluate(c, sample=name) for name, c in progress(models.items(), desc="evaluate reference", total=len(models), unit="model")],
        ignore_index=True,
    )
    inputs = _engine_inputs(files)
    metrics = metrics_from_examples(examples).rename(columns={"sample": "model"})
    write_table(examples.rename(columns={"sample": "model"}), examples_out, "evaluate_reference", params, inputs)
    write_table(metrics, metrics_out, "evaluate_reference", params, inputs)


def run_plan_level(
    params: Mapping[str, Any],
    level: int,
    out: PathLike,
    reference: PathLike | None = None,
    previous: PathLike | None = None,
    selected: Mapping[str, PathLike] | None = None,
    vectors: Mapping[str, PathLike] | None = None,
) -> None:
    """The groups of one level: every task for plain and Bayesian MAP; pairs for nested MAP.

    Nested, level 1 pairs the fine-tuned models by their metric on their own task (reference);
    a later level pairs the merges of the level before (their measured, preference-weighted metric,
    from `selected`: group -> selected_evals) with the models passed up from it (previous plan).
    With pairing 'cosine' the models' task vectors (`vectors`: model -> file) decide instead.
    """
    tasks = params["tasks"]
    if params["method"] != "nested":
        write_table(groups.plain_plan(tasks), out, "plan_level", params)
        return
    metric, nested = params["objective"], params["nested"]
    if level == 1:
        ref = read_table(reference).set_index(["model", "task", "metric"])["value"]
        models = {t: [t] for t in tasks}
        scores = {t: float(ref[(t, t, metric)]) for t in tasks}
        inputs = [reference]
    else:
        plan = read_table(previous)
        models, scores = {}, {}
        for row in plan.itertuples():
            tasks_in = [t for ts in row.member_tasks for t in ts]
            if pd.isna(row.group):  # passed up unchanged
                models[row.members[0]], scores[row.members[0]] = tasks_in, float(row.member_score[0])
                continue
            models[row.group] = tasks_in
            scores[row.group] = merge_score(measured_metrics(selected[row.group]), tasks_in, metric, params["preference"])
        inputs = [previous, *selected.values()]
    if nested["pairing"] == "cosine":
        from mapmerge.taskvectors import cosine_matrix, gram_matrix

        gram, _ = gram_matrix({m: vectors[m] for m in models})
        distance = 1.0 - cosine_matrix(gram).numpy()
        inputs += [vectors[m] for m in models]
    else:
        distance = groups.metric_distance([scores[m] for m in models])
    frame = groups.pair_plan(level, params["groups"], models, scores, distance, nested["pairing"])
    write_table(frame, out, "plan_level", params, inputs=inputs)


def measured_metrics(selected_evals: PathLike) -> pd.Series:
    """A chosen merge's real metrics, indexed (metric, task), from its per-example evaluations."""
    return metrics_from_examples(read_table(selected_evals)).set_index(["metric", "task"])["value"]


def merge_score(measured: pd.Series, tasks: Sequence[str], metric: str, preference: Mapping[str, float] | None) -> float:
    """A merged model's metric on its group: the preference-weighted mean of its tasks' measured `metric`."""
    return float(groups.weighted_mean({t: measured[(metric, t)] for t in tasks}, groups.task_weights(preference, tasks)))


def group_plan(plan: PathLike, group: str) -> dict[str, Any]:
    """One group's members, the tasks inside each member, and all its tasks, from its level's plan."""
    return groups.group_info(read_table(plan), group)


def _narrow(files: EngineFiles, info: Mapping[str, Any]) -> EngineFiles:
    """The engine files of one group, out of the candidates the workflow passes in."""
    return {
        "pretrained": files["pretrained"],
        "vectors": {m: files["vectors"][m] for m in info["members"]},
        "checkpoints": {t: files["checkpoints"][t] for t in info["tasks"]},
    }


def run_sample_coefficients(params: Mapping[str, Any], plan: PathLike, group: str, out: PathLike) -> None:
    """The designed coefficient vectors of one group (round 0)."""
    from mapmerge import sampling

    members = group_plan(plan, group)["members"]
    frame = sampling.design(members, params["sampler"], params["seed"]).assign(round=0)
    write_table(frame, out, "sample_coefficients", params, inputs=[plan])


def run_propose_round(
    params: Mapping[str, Any],
    rnd: int,
    rounds: Sequence[PathLike],
    evals: Sequence[PathLike],
    out: PathLike,
) -> None:
    """Bayesian MAP: the next round's samples, drawn where the surrogates' out-of-sample error is worst."""
    from mapmerge import bayesian

    samples = pd.concat([read_table(p) for p in rounds], ignore_index=True)
    metrics = metrics_from_examples(pd.concat([read_table(p) for p in evals], ignore_index=True))
    members = suffixes(samples.columns, "c")
    errors = bayesian.sample_errors(samples, metrics, members, params["surrogate"], params["objective"])
    cfg = bayesian.with_bins(params["bayesian"], len(samples), len(members))
    sampler = params["sampler"]
    lower, upper = np.full(len(members), float(sampler["lower"])), np.full(len(members), float(sampler["upper"]))
    C = samples[[f"c_{m}" for m in members]].to_numpy()
    n_new = bayesian.round_size(cfg, len(members))
    points = bayesian.propose(C, errors.reindex(samples["sample"]).to_numpy(), n_new, lower, upper, cfg, params["seed"] + rnd)
    frame = pd.DataFrame(points, columns=[f"c_{m}" for m in members])
    frame.insert(0, "kind", "bayesian")
    frame.insert(0, "sample", [f"r{rnd:02d}s{i:04d}" for i in range(n_new)])
    logger.info("round %d: mean out-of-sample error %.4f over %d samples", rnd, float(np.nanmean(errors)), len(samples))
    write_table(frame.assign(round=rnd), out, "propose_round", params, inputs=[*rounds, *evals])


def sample_batches(samples: Sequence[str], size: int) -> dict[str, list[str]]:
    """Consecutive batches of `size` samples, named b0000, b0001, ...; a grown design keeps earlier batches."""
    if size < 1:
        raise ValueError(f"evaluation.samples_per_job: must be at least 1, got {size}")
    return {f"b{i // size:04d}": list(samples[i : i + size]) for i in range(0, len(samples), size)}


def run_evaluate_samples(
    params: Mapping[str, Any],
    files: EngineFiles,
    plan: PathLike,
    group: str,
    coefficients: Mapping[str, Sequence[float]],
    out: PathLike,
    device: str = "auto",
    threads: int = 0,
    on_error: str = "fail",
    stage: str = "evaluate_sample",
) -> None:
    """Evaluate the merges of several samples of one group with one engine, into one per-example table.

    files holds candidate models; the group's members and tasks come from its level's plan.
    on_error='record' keeps failed (sample, task) evaluations as rows with an `error` (see MergeEngine.evaluate).
    """
    files = _narrow(files, group_plan(plan, group))
    engine = _engine(params, files, device, threads)
    samples = progress(coefficients.items(), desc=f"evaluate {Path(out).parent.parent.name}/{Path(out).stem}", total=len(coefficients), unit="sample")
    examples = pd.concat([engine.evaluate(c, sample=s, on_error=on_error) for s, c in samples], ignore_index=True)
    failed = examples.dropna(subset=["error"])
    if len(failed):
        logger.warning("%d of %d evaluations failed and were recorded in %s", len(failed), len(coefficients) * len(engine.tasks), out)
    write_table(examples, out, stage, {**params, "c": dict(coefficients)}, [plan, *_engine_inputs(files)])


def run_evaluate_round(
    params: Mapping[str, Any],
    files: EngineFiles,
    plan: PathLike,
    group: str,
    round_table: PathLike,
    batch: int,
    size: int,
    out: PathLike,
    device: str = "auto",
    threads: int = 0,
    on_error: str = "fail",
) -> None:
    """Bayesian MAP: evaluate batch `batch` (of `size` samples) of one round's proposed samples."""
    frame = read_table(round_table).iloc[batch * size : (batch + 1) * size]
    columns = [c for c in frame.columns if c.startswith("c_")]
    coefficients = {row["sample"]: [float(row[c]) for c in columns] for _, row in frame.iterrows()}
    run_evaluate_samples(params, files, plan, group, coefficients, out, device, threads, on_error, stage="evaluate_round")


def run_collect_metrics(rounds: Sequence[PathLike], evals: Sequence[PathLike], metrics_out: PathLike, samples_out: PathLike) -> None:
    """A group's evaluated samples (every round's coefficients) and their per-task metrics (sample, task, metric, value)."""
    examples = pd.concat([read_table(p) for p in evals], ignore_index=True)
    samples = pd.concat([read_table(p) for p in rounds], ignore_index=True)
    write_table(metrics_from_examples(examples), metrics_out, "collect_metrics", inputs=evals)
    write_table(samples, samples_out, "collect_metrics", inputs=rounds)


def run_fit_surrogate(params: Mapping[str, Any], samples: PathLike, metrics: PathLike, out: PathLike) -> None:
    """Fit the quadratic surrogate of every task and metric."""
    from mapmerge import surrogate

    sample_frame = read_table(samples)
    metric_frame = read_table(metrics)
    members = suffixes(sample_frame.columns, "c")
    cfg = params["surrogate"]
    try:
        table = surrogate.fit_table(
            sample_frame, metric_frame, members, cfg["links"], loo=cfg["loo"], missing=cfg["missing"],
            tasks=list(dict.fromkeys(metric_frame["task"])),
        )
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


def group_objectives(params: Mapping[str, Any], table: pd.DataFrame, info: Mapping[str, Any], metric: str):
    """C -> F [n, members]: per member, the preference-weighted mean of the surrogates of its tasks.

    For plain MAP every member is one task, so F is the surrogates' predictions themselves.
    """
    predict = objective_predictor(table, metric, info["tasks"])
    sides = groups.side_weights(info, groups.task_weights(params.get("preference"), info["tasks"]))

    def objectives(C: np.ndarray) -> np.ndarray:
        F = predict(C)
        per_task = {t: F[:, i] for i, t in enumerate(info["tasks"])}
        return np.column_stack([groups.weighted_mean(per_task, side) for side in sides])

    return objectives


def run_pareto_front(
    params: Mapping[str, Any], surrogate_table: PathLike, samples: PathLike, plan: PathLike, group: str, out: PathLike
) -> None:
    """NSGA-III front of the group's objectives inside the sampled box, with every fitted metric predicted per task."""
    from mapmerge import pareto

    table = read_table(surrogate_table)
    info = group_plan(plan, group)
    members, tasks = info["members"], info["tasks"]
    opt = params["optimizer"]
    metric = opt["objective"]
    coef = read_table(samples)[[f"c_{m}" for m in members]].to_numpy()
    lower, upper = coef.min(axis=0), coef.max(axis=0)
    objectives = group_objectives(params, table, info, metric)
    maximize = [maximized(metric)] * len(members)
    C, F = pareto.surrogate_front(
        objectives, len(members), lower, upper, maximize,
        pop_size=opt["pop_size"], n_gen=opt["n_gen"], seed=params["seed"], ref_partitions=opt["ref_partitions"],
    )
    front = pd.DataFrame(C, columns=[f"c_{m}" for m in members])
    for other in sorted(set(table["metric"])):
        predicted = objective_predictor(table, other, tasks)(C)
        for i, task in enumerate(tasks):
            front[f"{other}_{task}"] = predicted[:, i]
    extra = {}
    if len(members) == 2:
        _, grid = pareto.grid_front(objectives, lower, upper, maximize, resolution=opt["grid_check_resolution"])
        extra["mapmerge.grid_igd"] = f"{pareto.igd(F, grid, maximize):.6g}"
    write_table(front, out, "pareto_front", params, inputs=[surrogate_table, samples, plan], extra=extra)


def pick_point(
    front: pd.DataFrame,
    info: Mapping[str, Any],
    preference: Mapping[str, float] | None,
    metric: str,
    method: str = "weighted_sum",
    rho: float = 0.05,
) -> tuple[int, dict[str, float]]:
    """The front point a preference picks: (its row index in `front`, the members' normalised weights).

    A member's weight is the sum of the preference weights of the tasks inside it; its objective is
    their weighted mean of the front's predicted `metric` (columns `<metric>_<task>`). What
    run_merge_group chooses, and what `mapmerge select` chooses again for a new preference.
    """
    members = info["members"]
    sides = groups.side_weights(info, groups.task_weights(preference, info["tasks"]))
    per_task = {t: front[f"{metric}_{t}"].to_numpy() for t in info["tasks"]}
    F = np.column_stack([groups.weighted_mean(per_task, side) for side in sides])
    totals = {m: sum(side.values()) for m, side in zip(members, sides)}
    weights = selection.normalize_preference(totals if any(totals.values()) else None, members)
    index = selection.select_point(F, list(weights.values()), [maximized(metric)] * len(members), method, rho)
    return index, weights


def run_merge_group(
    params: Mapping[str, Any],
    front_table: PathLike,
    files: EngineFiles,
    plan: PathLike,
    group: str,
    merged_out: PathLike,
    vector_out: PathLike,
    choice_out: PathLike,
) -> None:
    """Pick the front point for the preference; write the merged checkpoint, its task vector and the choice.

    A member's weight is the sum of the preference weights of the tasks inside it; its objective is
    their weighted mean. The task vector (merged - pretrained) is what a later nested level merges.
    Where the tasks' checkpoints are transformers directories, each task's merged model also goes to
    <merged_out's folder>/merged/<task>/ (mapmerge.adapters.transformers.save_merged_models).
    """
    from mapmerge.checkpoints import hf_config, save_safetensors
    from mapmerge.taskvectors import merge_files

    info = group_plan(plan, group)
    files = _narrow(files, info)
    front = read_table(front_table)
    members = info["members"]
    sel = params["selection"]
    index, weights = pick_point(front, info, params["preference"], params["objective"], sel["method"], sel["rho"])
    choice = front.iloc[[index]].reset_index(drop=True)
    for member, w in weights.items():
        choice[f"weight_{member}"] = w
    c = [float(choice[f"c_{m}"].iloc[0]) for m in members]
    operator = params.get("merge_operator") or {"operator": "task_arithmetic"}
    metadata = {"coefficients": json.dumps(dict(zip(members, c))), "operator": json.dumps(operator),
                "seed": json.dumps(params.get("merge_seed"))}  # what `mapmerge select` needs to merge again
    for out, delta in ((merged_out, False), (vector_out, True)):  # one at a time: memory holds one model
        state = merge_files(files["pretrained"], files["vectors"], c, operator, params.get("merge_seed"), delta=delta)
        save_safetensors(state, out, metadata={"task": group, **metadata} if delta else metadata)
        if not delta and all(hf_config(files["checkpoints"][t]) for t in info["tasks"]):  # transformers directories
            _save_transformers(state, files, info["tasks"], Path(merged_out).parent / "merged", metadata)
        del state
    write_table(choice, choice_out, "merge_group", params, inputs=[front_table, plan])


def _save_transformers(state: Mapping[str, Any], files: EngineFiles, tasks: Sequence[str], out: Path, metadata: Mapping[str, str]) -> None:
    """The merge as one transformers directory per task (merged body, the task's head): out/<task>/."""
    from mapmerge.adapters.transformers import save_merged_models
    from mapmerge.checkpoints import open_checkpoint

    with open_checkpoint(next(iter(files["vectors"].values()))) as vector:
        names = vector.keys()
    save_merged_models(state, names, {t: files["checkpoints"][t] for t in tasks}, files["pretrained"], out, metadata)


def run_evaluate_selected(
    params: Mapping[str, Any],
    choice: PathLike,
    files: EngineFiles,
    plan: PathLike,
    group: str,
    out: PathLike,
    device: str = "auto",
    threads: int = 0,
) -> None:
    """Evaluate the chosen merge for real on every task of its group (per-example rows)."""
    frame = read_table(choice)
    c = {"selected": [float(frame[f"c_{m}"].iloc[0]) for m in group_plan(plan, group)["members"]]}
    run_evaluate_samples(params, files, plan, group, c, out, device, threads, stage="evaluate_selected")


def run_ledger(evals: Mapping[str, PathLike], out: PathLike) -> None:
    """The evaluation ledger: per evaluation file, its stage, group, models evaluated, (model, task) evaluations, examples.

    evals: label -> path, the label 'group/file' (a bare file name for the reference models).
    """
    rows = []
    for label, path in evals.items():
        group, _, name = str(label).rpartition("/")
        stage = table_metadata(path).get("mapmerge.stage", "")
        rows.append({"stage": stage, "group": group or None, "file": name, **evaluation_counts(read_table(path))})
    write_table(pd.DataFrame(rows), out, "ledger", inputs=evals.values())


def group_tree(
    plans: Sequence[PathLike],
    choices: Mapping[str, pd.DataFrame],
    measured: Mapping[str, pd.Series],
    metric: str,
    preference: Mapping[str, float] | None,
) -> pd.DataFrame:
    """groups.parquet: every level's plan with each group's chosen coefficients and measured metric.

    choices, measured: per group, its choice row and its merge's real metrics (measured_metrics).
    measured_<metric>: merge_score of the chosen merge (what the next nested level pairs by).
    """
    frames = []
    for plan in plans:
        frame = read_table(plan)
        grouped = [row for row in frame.itertuples() if not pd.isna(row.group)]
        coefficients = {row.Index: [float(choices[row.group][f"c_{m}"].iloc[0]) for m in row.members] for row in grouped}
        scores = {row.Index: merge_score(measured[row.group], list(row.tasks), metric, preference) for row in grouped}
        frames.append(frame.assign(coefficients=[coefficients.get(i) for i in frame.index],
                                   **{f"measured_{metric}": [scores.get(i, np.nan) for i in frame.index]}))
    return pd.concat(frames, ignore_index=True)


def run_aggregate(
    params: Mapping[str, Any],
    results: PathLike,
    plans: Sequence[PathLike],
    group_names: Sequence[str],
    ledger: PathLike,
    outputs: Mapping[str, PathLike],
) -> None:
    """Gather fronts and choices of all groups (the last is the final merge), the group tree, plots and a report.

    outputs: pareto, selected, groups, report (paths) and plots (folder).
    """
    from mapmerge import plots, report

    results = Path(results)
    metric = params["objective"]
    fronts, chosen, inputs, measured = [], [], [*plans, ledger], {}
    for group in group_names:
        gdir = results / "groups" / group
        fronts.append(read_table(gdir / "front.parquet").assign(group=group))
        choice = read_table(gdir / "choice.parquet").assign(group=group)
        measured[group] = measured_metrics(gdir / "selected_evals.parquet")
        for name in sorted(set(measured[group].index.get_level_values("metric"))):
            for task in suffixes(choice.columns, metric):
                choice[f"measured_{name}_{task}"] = measured[group][(name, task)]
        chosen.append(choice)
        inputs += [gdir / "front.parquet", gdir / "choice.parquet", gdir / "selected_evals.parquet"]
    write_table(pd.concat(fronts, ignore_index=True), outputs["pareto"], "aggregate", params, inputs)
    write_table(pd.concat(chosen, ignore_index=True), outputs["selected"], "aggregate", params, inputs)
    tree = group_tree(plans, dict(zip(group_names, chosen)), measured, metric, params["preference"])
    write_table(tree, outputs["groups"], "aggregate", params, inputs)
    gdir = results / "groups" / group_names[-1]
    samples = read_table(gdir / "samples.parquet")
    samples = samples.merge(wide_metrics(read_table(gdir / "metrics.parquet"), "sample").reset_index(), on="sample")
    tasks = suffixes(fronts[-1].columns, metric)
    reference = read_table(results / "reference.parquet")
    plots.plot_all(samples, fronts[-1], reference, tasks, metric, outputs["plots"], selected=chosen[-1],
                   maximize=maximized(metric), members=suffixes(fronts[-1].columns, "c"))
    report.write_report(results, group_names, outputs["report"])
