# Input functions shared by the rules.
#
# No checkpoints: the shape of every method's work is known when the DAG is built. Plain MAP's
# design is a function of the config (so a design's values are its batches' params). Nested MAP's
# tree has as many groups per level as the number of tasks dictates; which models a group holds is
# data, written by its level's plan_level job and read by the group's jobs, which take every model
# that could be a member as input. Bayesian MAP's rounds have a fixed size; their points are data.
# That matters: Snakemake (9.27) does not check the params or code of jobs it only finds behind a
# checkpoint, so a changed evaluator or design would silently keep stale evaluations.

import math
import sys
from functools import lru_cache

from mapmerge.core import bayesian, groups

from mapmerge.run import runlock
from mapmerge.core.sampling import design, sample_batches

METHOD = CFG["method"]
LEVELS = groups.structure(METHOD, len(TASKS))  # group names per level; which models they hold is data
LEVEL_OF = {g: k for k, names in enumerate(LEVELS, 1) for g in names}
GROUPS = [g for names in LEVELS for g in names]  # the last one is the final merge
N_MEMBERS = groups.n_members(METHOD, len(TASKS))
ROUNDS = CFG["bayesian"]["rounds"] if METHOD == "bayesian" else 0

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


def vector_path(model):
    """A task's task vector, or a group's merged - pretrained."""
    return f"{R}/task_vectors/{model}.safetensors" if model in TASKS else f"{R}/groups/{model}/vector.safetensors"


def plan_path(group):
    return f"{R}/levels/level{LEVEL_OF[group]}.parquet"


def candidates(group):
    return groups.candidates(TASKS, LEVELS, LEVEL_OF[group])


@lru_cache(maxsize=None)
def design_values():
    """The designed samples' values, the same for every group (sample_coefficients writes them with the members' names).

    Computed once per snakemake process, not once per group: every job parses this file again.
    """
    return design([f"m{i}" for i in range(N_MEMBERS)], params_of("sample_coefficients")["sampler"], CFG["seed"])


def design_batches():
    return sample_batches(design_values()["sample"].tolist(), BATCH)


def round_batches():
    """The batch indices of a Bayesian round (every round draws the same number of points)."""
    n = bayesian.round_size(CFG["bayesian"], N_MEMBERS)
    return [f"{k:04d}" for k in range(math.ceil(n / BATCH))]


def engine_inputs(wildcards):
    """pretrained, the candidate members' vectors, every task's checkpoint (for its head), the level's plan."""
    return {
        "pretrained": MODEL["pretrained"],
        "vectors": [vector_path(m) for m in candidates(wildcards.group)],
        "checkpoints": [checkpoint_path(t) for t in TASKS],
        "plan": plan_path(wildcards.group),
    }


def engine_files(wildcards, input):
    """The engine's files by name: pretrained, vectors (model -> path), checkpoints (task -> path)."""
    members = candidates(wildcards.group) if "group" in wildcards.keys() else TASKS
    return {
        "pretrained": input.pretrained,
        "vectors": dict(zip(members, input.vectors)),
        "checkpoints": dict(zip(TASKS, input.checkpoints)),
    }


def batch_c(wildcards):
    """{sample: coefficients} of one evaluation batch: its params, so a changed design reruns it."""
    frame = design_values().set_index("sample")
    columns = [c for c in frame.columns if c.startswith("c_")]
    return {s: [float(v) for v in frame.loc[s, columns]] for s in design_batches()[wildcards.batch]}


def round_batch(wildcards, input):
    """run_evaluate_round's arguments that say what to evaluate: files, plan, group, round table, batch, size."""
    return engine_files(wildcards, input), input.plan, wildcards.group, input.samples, int(wildcards.index), BATCH


def aggregate_outputs(output):
    """The aggregate's outputs by name, the plots as their folder."""
    return {**dict(output.items()), "plots": f"{R}/plots"}


def round_file(group, rnd):
    return f"{R}/groups/{group}/rounds/r{rnd:02d}.parquet"


def group_rounds(group, upto=None):
    """The group's sample tables of rounds 0 .. upto - 1 (all rounds by default)."""
    return [round_file(group, r) for r in range(ROUNDS + 1 if upto is None else upto)]


def group_evals(group, upto=None):
    """The group's evaluation batches of rounds 0 .. upto - 1 (all rounds by default)."""
    last = ROUNDS + 1 if upto is None else upto
    files = [f"{R}/groups/{group}/evals/{b}.parquet" for b in design_batches()]
    return files + [f"{R}/groups/{group}/evals/r{r:02d}b{k}.parquet" for r in range(1, last) for k in round_batches()]


def level_params(level):
    """plan_level's params: its groups' names; level 1 pairs by the models' own metric, so no preference."""
    params = {**params_of("plan_level"), "groups": LEVELS[level - 1]}
    return {k: v for k, v in params.items() if not (level == 1 and k == "preference")}


def level_inputs(wildcards):
    """What a level's plan reads: the reference metrics (level 1) or the level below's plan and
    chosen merges, and the candidates' vectors when pairing by cosine."""
    level = int(wildcards.level)
    if METHOD != "nested":
        return {}
    inputs = {"reference": f"{R}/reference.parquet"} if level == 1 else {
        "previous": f"{R}/levels/level{level - 1}.parquet",
        "selected": [f"{R}/groups/{g}/selected_evals.parquet" for g in LEVELS[level - 2]],
    }
    if CFG["nested"]["pairing"] == "cosine":
        inputs["vectors"] = [vector_path(m) for m in groups.candidates(TASKS, LEVELS, level)]
    return inputs


def as_list(files):
    return [files] if isinstance(files, str) else list(files)


def level_files(wildcards, input):
    """plan_level's inputs as run_plan_level takes them: selected (group -> file), vectors (model -> file)."""
    level = int(wildcards.level)
    files = {k: input[k] for k in ("reference", "previous") if k in input.keys()}
    if "selected" in input.keys():
        files["selected"] = dict(zip(LEVELS[level - 2], as_list(input.selected)))
    if "vectors" in input.keys():
        files["vectors"] = dict(zip(groups.candidates(TASKS, LEVELS, level), as_list(input.vectors)))
    return files


GROUP_FILES = ["front.parquet", "choice.parquet", "selected_evals.parquet", "samples.parquet", "metrics.parquet", "surrogate.parquet"]


def group_outputs():
    return [f"{R}/groups/{g}/{f}" for g in GROUPS for f in GROUP_FILES]


def all_evals():
    """Every evaluation file, labelled for the ledger ('group/file', or the file name)."""
    files = {"reference_examples.parquet": f"{R}/reference_examples.parquet"}
    for g in GROUPS:
        files.update({f"{g}/{Path(p).name}": p for p in [*group_evals(g), f"{R}/groups/{g}/selected_evals.parquet"]})
    return files


def plot_outputs():
    return [f"{R}/plots/front_parallel.png"] + ([f"{R}/plots/front_2d.png"] if len(TASKS) == 2 else [])


def every_artifact():
    """Every artifact of a finished run: what rule all asks for.

    Snakemake does not remake a missing file that no job it runs needs; as rule all asks for every
    artifact, one that was deleted (by `mapmerge check --delete`, say) is made again, with what depends on it.
    """
    made = [MODEL["pretrained"], *map(checkpoint_path, CFG["benchmark"]["tasks"]), f"{R}/benchmark.parquet"] if MODEL["builtin"] else []
    made += [*map(vector_path, TASKS), *(f"{R}/{f}" for f in ("task_vectors.parquet", "reference.parquet", "reference_examples.parquet"))]
    made += [f"{R}/levels/level{k}.parquet" for k in range(1, len(LEVELS) + 1)]
    made += [*all_evals().values(), *(r for g in GROUPS for r in group_rounds(g)), *group_outputs()]
    made += [f"{R}/groups/{g}/{f}" for g in GROUPS for f in ("merged.safetensors", "vector.safetensors", *(["merged"] if HF_FOLDERS else []))]
    made += validation_artifacts() if CFG["validation"]["enabled"] else []  # validate.smk
    return [*made, *(f"{R}/{f}" for f in ("evaluations.parquet", "groups.parquet", "pareto.parquet", "selected.parquet", "report.md")), *plot_outputs(), *(f"{R}/report/{k}.html" for k in REPORT_TABLES)]


# validation (validate.smk)


@lru_cache(maxsize=None)
def grid_table():
    """The grid's points (sample, c_<task>) over the sampler's box."""
    box = CFG["sampler"]
    return groundtruth.grid_points(TASKS, box["lower"], box["upper"], VALIDATION["resolution"])


@lru_cache(maxsize=None)
def grid_batches():
    return sample_batches(grid_table()["sample"].tolist(), VALIDATION["batch"])


def grid_batch_c(wildcards):
    """{sample: coefficients} of one grid batch: its params, so a changed grid reruns it."""
    frame = grid_table().set_index("sample")
    return {s: [float(v) for v in frame.loc[s]] for s in grid_batches()[wildcards.batch]}


def grid_files():
    return [f"{R}/validation/grid/{b}.parquet" for b in grid_batches()]


def baseline_files():
    return {name: f"{R}/validation/baselines/{name}.parquet" for name in VALIDATION["baselines"]}


def validation_artifacts():
    """Every file of the validation stage (what every_artifact adds when validation is enabled)."""
    made = [*grid_files(), *baseline_files().values(), *(f"{R}/validation/{f}" for f in ("front.parquet", "front_evals.parquet"))]
    return [*made, f"{R}/validation.parquet", f"{R}/plots/validation.png"]


def validation_engine_inputs(wildcards):
    """pretrained, every task's vector and checkpoint, the plan of group `all`."""
    return {
        "pretrained": MODEL["pretrained"],
        "vectors": [vector_path(t) for t in TASKS],
        "checkpoints": [checkpoint_path(t) for t in TASKS],
        "plan": f"{R}/levels/level1.parquet",
    }


def validate_args(input, output):
    """rule validate's inputs and outputs in the order of mapmerge.stages.validate.run_validate."""
    baselines = dict(zip(baseline_files(), as_list(input.baselines)))
    return (input.front, input.points, input.front_evals, as_list(input.grid), baselines, input.reference, output.table, output.plot)
