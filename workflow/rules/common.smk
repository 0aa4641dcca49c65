# Input functions shared by the rules.
#
# Plain MAP's plan and design are pure functions of the config, so the groups, their samples and
# the evaluation batches are known when the DAG is built: no checkpoints. That matters: Snakemake
# (9.27) does not check the params or code of jobs it only finds behind a checkpoint, so a changed
# evaluator or design would silently keep stale evaluations.

import sys
from functools import lru_cache

from mapmerge import runlock
from mapmerge.groups import plan_groups

PLAN = {row["group"]: row for row in plan_groups(CFG["method"], TASKS).to_dict("records")}

# One driver per results folder (runlock.hold, taken just before the first job starts); local jobs
# stop when their driver is killed, so a restart finds no orphan still writing.
if workflow.is_main_process:
    runlock.mark_driver()
    DRIVER = runlock.holder(R)
    if DRIVER is not None:
        print(f"mapmerge: a snakemake driver ({runlock.describe(DRIVER)}) is running on {R}", file=sys.stderr)
else:
    runlock.stop_with_driver()


onstart:
    runlock.hold(R)


def params_of(stage):
    return stage_config(CFG, stage)


def checkpoint_path(task):
    return MODEL["tasks"][task]["checkpoint"]


def vector_path(member):
    return f"{R}/task_vectors/{member}.safetensors"


@lru_cache(maxsize=None)
def group_design(group):
    """The group's designed samples (the same table sample_coefficients writes)."""
    from mapmerge.sampling import design

    return design(PLAN[group]["members"], CFG["sampler"], CFG["seed"])


def group_batches(group):
    return stages.sample_batches(group_design(group)["sample"].tolist(), BATCH)


def engine_inputs(wildcards):
    """pretrained, the group's task vectors and the tasks' own checkpoints (for their heads)."""
    info = PLAN[wildcards.group]
    return {
        "pretrained": MODEL["pretrained"],
        "vectors": [vector_path(m) for m in info["members"]],
        "checkpoints": [checkpoint_path(t) for t in info["tasks"]],
    }


def engine_files(wildcards, input):
    """The engine's files by name: pretrained, vectors (member -> path), checkpoints (task -> path)."""
    info = PLAN[wildcards.group] if "group" in wildcards.keys() else {"members": TASKS, "tasks": TASKS}
    return {
        "pretrained": input.pretrained,
        "vectors": dict(zip(info["members"], input.vectors)),
        "checkpoints": dict(zip(info["tasks"], input.checkpoints)),
    }


def batch_c(wildcards):
    """{sample: coefficients} of one evaluation batch: its params, so a changed design reruns it."""
    frame = group_design(wildcards.group).set_index("sample")
    columns = [f"c_{m}" for m in PLAN[wildcards.group]["members"]]
    return {s: [float(v) for v in frame.loc[s, columns]] for s in group_batches(wildcards.group)[wildcards.batch]}


def group_evals(wildcards):
    return [f"{R}/groups/{wildcards.group}/evals/{b}.parquet" for b in group_batches(wildcards.group)]


def aggregate_inputs():
    files = ["front.parquet", "choice.parquet", "selected_evals.parquet", "samples.parquet", "metrics.parquet", "surrogate.parquet"]
    return [f"{R}/groups/{g}/{f}" for g in PLAN for f in files]


def plot_outputs():
    return [f"{R}/plots/front_parallel.png"] + ([f"{R}/plots/front_2d.png"] if len(TASKS) == 2 else [])


def all_evals(wildcards):
    """Every group's evaluation batches; an input function, so that jobs need not compute the design."""
    return [f"{R}/groups/{g}/evals/{b}.parquet" for g in PLAN for b in group_batches(g)]


def aggregate_outputs():
    """Every artifact of a finished run, the aggregate's own outputs last: what rule all asks for.

    Snakemake does not remake a missing file that no job it runs needs; as rule all asks for every
    artifact, one that was deleted (by `mapmerge check --delete`, say) is made again, with what depends on it.
    """
    made = [MODEL["pretrained"], *map(checkpoint_path, CFG["benchmark"]["tasks"]), f"{R}/benchmark.parquet"] if MODEL["builtin"] else []
    made += [*map(vector_path, TASKS), *(f"{R}/{f}" for f in ("task_vectors.parquet", "reference.parquet", "reference_examples.parquet", "groups.parquet"))]
    made += [all_evals, *aggregate_inputs(), *(f"{R}/groups/{g}/merged.safetensors" for g in PLAN)]
    return [*made, f"{R}/pareto.parquet", f"{R}/selected.parquet", f"{R}/report.md", *plot_outputs()]
