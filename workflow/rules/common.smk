# Input functions shared by the rules: checkpoints decide the groups and their samples.

from mapmerge.io import read_table


def params_of(stage):
    return stage_config(CFG, stage)


def checkpoint_path(task):
    return MODEL["tasks"][task]["checkpoint"]


def vector_path(member):
    return f"{R}/task_vectors/{member}.safetensors"


def group_info(group):
    """members and tasks of a group, read from the plan_groups checkpoint."""
    table = checkpoints.plan_groups.get().output[0]
    return stages.group_row(table, group)


def group_names():
    return read_table(checkpoints.plan_groups.get().output[0])["group"].tolist()


def group_samples(group):
    samples = checkpoints.sample_coefficients.get(group=group).output[0]
    return read_table(samples)["sample"].tolist()


def engine_inputs(wildcards):
    """pretrained, the group's task vectors and the tasks' own checkpoints (for their heads)."""
    info = group_info(wildcards.group)
    return {
        "pretrained": MODEL["pretrained"],
        "vectors": [vector_path(m) for m in info["members"]],
        "checkpoints": [checkpoint_path(t) for t in info["tasks"]],
    }


def engine_files(wildcards, input):
    """The engine's files by name: pretrained, vectors (member -> path), checkpoints (task -> path)."""
    info = group_info(wildcards.group) if "group" in wildcards.keys() else {"members": TASKS, "tasks": TASKS}
    return {
        "pretrained": input.pretrained,
        "vectors": dict(zip(info["members"], input.vectors)),
        "checkpoints": dict(zip(info["tasks"], input.checkpoints)),
    }


def sample_engine_inputs(wildcards):
    # the samples table is read for params, not an input: a new design reruns only the batches whose samples changed
    group_samples(wildcards.group)
    return engine_inputs(wildcards)


def batch_c(wildcards):
    samples = f"{R}/groups/{wildcards.group}/samples.parquet"
    return stages.batch_coefficients(samples, wildcards.batch, BATCH)


def group_evals(wildcards):
    batches = stages.sample_batches(group_samples(wildcards.group), BATCH)
    return [f"{R}/groups/{wildcards.group}/evals/{b}.parquet" for b in batches]


def aggregate_inputs(wildcards):
    names = group_names()
    files = ["front.parquet", "choice.parquet", "selected_evals.parquet", "samples.parquet", "metrics.parquet", "surrogate.parquet"]
    return [f"{R}/groups/{g}/{f}" for g in names for f in files]


def aggregate_outputs():
    plots = [f"{R}/plots/front_parallel.png"] + ([f"{R}/plots/front_2d.png"] if len(TASKS) == 2 else [])
    return [f"{R}/pareto.parquet", f"{R}/selected.parquet", f"{R}/report.md", f"{R}/task_vectors.parquet", *plots]
