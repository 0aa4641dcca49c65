# What the rules share: the run folder's layout (L), how a rule runs its stage (JOB, job_of), resources
# per stage family, and the input functions that depend on the config.
#
# Every rule is a declaration (named input, output and params, a log, threads and resources from its
# stage's entry in mapmerge.run.registry) and the same `shell: JOB`. JOB runs `python -m mapmerge.run.job`,
# which imports only the stage's own module and calls its run_* function with the rule's params, files
# and values by name (see mapmerge.run.job); no Snakemake, no Snakefile parse, no config in the job.
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
from collections.abc import Mapping
from functools import lru_cache

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from mapmerge.core import bayesian, groups, refine
from mapmerge.core.sampling import design, sample_batches
from mapmerge.layout import Layout
from mapmerge.run import job, jobserver, reads, runlock
from mapmerge.run.registry import REGISTRY

L = Layout(R)
METHOD = CFG["method"]
LEVELS = groups.structure(METHOD, len(TASKS))  # group names per level; which models they hold is data
LEVEL_OF = {g: k for k, names in enumerate(LEVELS, 1) for g in names}
GROUPS = [g for names in LEVELS for g in names]  # the last one is the final merge
N_MEMBERS = groups.n_members(METHOD, len(TASKS))
BAYES_ROUNDS = CFG["bayesian"]["rounds"] if METHOD == "bayesian" else 0
ROUNDS = BAYES_ROUNDS + CFG["refine"]["rounds"]  # Bayesian rounds 1 .. BAYES_ROUNDS, then the refinement rounds
ON_ERROR = CFG["evaluation"]["on_error"]
EVALUATION_RULES = {rule for rule, stage in REGISTRY.items() if stage.resources == "evaluate"}

# One driver per results folder (runlock.hold, taken just before the first job starts); the jobs it
# starts locally stop when it is killed (mapmerge.run.job), so a restart finds no orphan still writing.
if workflow.is_main_process:
    runlock.mark_driver()
    DRIVER = runlock.holder(R)
    if DRIVER is not None:
        print(
            f"mapmerge: a snakemake driver ({runlock.describe(DRIVER)}) is running on {R}; a run now is refused "
            "until it ends (do not --unlock meanwhile: Snakemake's lock is what it holds)",
            file=sys.stderr,
        )


# A run's start, before its first job: on this machine, the checks that need it (the device, and the user's model
# builder and evaluators built as the evaluation jobs about to run build them; a cluster's nodes may have a GPU, or
# data, that the submitting host lacks); the run's lock; then, for a local run with enough jobs to run, its job server
# (mapmerge.run.jobserver), which imports each stage's modules once and forks each job; onsuccess and onerror stop it.
JOB_SERVER = []
onstart:
    if workflow.local_exec:
        planned = {planned_job.rule.name for planned_job in workflow.dag.needrun_jobs()}
        try:
            preflight.check_device(DEVICE)
            if planned & EVALUATION_RULES:
                preflight.check_builds(MODEL, TASKS)
        except ConfigError as exc:
            sys.exit(f"mapmerge: {exc}")
    try:
        runlock.hold(R)
    except runlock.RunLockError as exc:  # a driver from another working directory (Snakemake's lock is per folder)
        sys.exit(f"mapmerge: {exc}")
    if workflow.local_exec:
        runlock.pass_interrupts_to_jobs()
    # a conda job runs another Python
    if workflow.local_exec and len(workflow.dag) >= jobserver.MIN_JOBS and jobserver.enabled() and not CONDA_JOBS:
        JOB_SERVER.append(jobserver.start())


onerror:
    for server in JOB_SERVER:
        jobserver.stop(server)


# Every rule's command: the Python running snakemake runs the job (the rule's conda environment's with --sdm conda).
CONDA_JOBS = DeploymentMethod.CONDA in getattr(workflow.deployment_settings, "deployment_method", ())
JOB = job.shell_command(conda=CONDA_JOBS)
SOFTWARE = "../../environment.yml"  # every rule's conda: the software a job runs


@lru_cache(maxsize=None)
def params_of(stage):
    """A params builder's sub-config (mapmerge.run.config.stage_config), computed once per process."""
    return stage_config(CFG, stage)


REFINE_ROUND = params_of("refine_round")  # each refinement round's params: mapmerge.run.config.round_params


def threads_of(rule):
    return CFG["resources"][REGISTRY[rule].threads_group]["threads"]


def resources_of(rule):
    """mem_mb, runtime (and gpu for an evaluation) from the config's resources group of the rule's stage."""
    group = REGISTRY[rule].resources
    return {key: CFG["resources"][group][key] for key in ("mem_mb", "runtime", "gpu") if key in CFG["resources"][group]}


class keyed:
    """An input function whose values may be mappings key -> path (task vectors by model, checkpoints by task).

    Snakemake gets their paths, in order (`input: unpack(...)`); the stage gets the mappings (`job_of(rule, ...)`).
    """

    def __init__(self, function):
        self.function = function

    def __call__(self, wildcards):
        return {name: list(value.values()) if isinstance(value, Mapping) else value for name, value in self.function(wildcards).items()}

    def mappings(self, wildcards):
        return {name: {k: str(p) for k, p in value.items()} for name, value in self.function(wildcards).items() if isinstance(value, Mapping)}


def job_of(rule, *mapped, **args):
    """The rule's `job` param: what mapmerge.run.job calls, as a command-line argument.

    Its stage (REGISTRY[rule]) with the rule's params as written (`stage` and the others), its named
    inputs and outputs (`mapped`: keyed input functions whose mappings replace their flat lists) and the
    values of the stage's `args`: given here (a value, or a function of the wildcards), else the job's
    threads or the wildcard of that name. A derived param (it takes input and output), so Snakemake
    does not compare it between runs; the params, files and code it holds are compared anyway.
    """
    stage = REGISTRY[rule]

    def spec(wildcards, input, output, threads):
        declared = getattr(rules, rule).params
        params = {name: value(wildcards) if callable(value) else value for name, value in declared.items() if name not in ("job", "stamps")}
        inputs = {name: value if isinstance(value, str) else list(value) for name, value in input.items() if name not in stage.after}
        for function in mapped:
            inputs.update(function.mappings(wildcards))
        outputs = {name: value if isinstance(value, str) else list(value) for name, value in output.items() if name not in stage.writes}
        unknown = sorted((set(inputs) - {*stage.inputs, reads.READS}) | (set(outputs) - set(stage.outputs)))
        if unknown:
            raise ValueError(f"{rule}: files {', '.join(unknown)} are not in the rule's entry of mapmerge.run.registry")
        values = {}
        for name in stage.args:
            if name in args:
                values[name] = args[name](wildcards) if callable(args[name]) else args[name]
            elif name in params:
                continue  # one of the rule's params, passed with them
            elif name == "threads":
                values[name] = threads
            else:
                values[name] = getattr(wildcards, name)
        cache = {"cache": True} if stage.cached and CFG["evaluation"]["cache"] else {}
        return job.encode({"rule": rule, "wildcards": dict(wildcards.items()), "params": params, "inputs": inputs,
                           "outputs": outputs, "args": values, **cache})

    return spec


# what the evaluators open by themselves and the files behind the checkpoints (mapmerge.run.reads): none for most runs
EVALUATION_READS = reads.evaluation_reads(MODEL, TASKS)


# The user's files a job reads (the checkpoints, the files behind them, what the evaluators open), each stamped with its
# size and mtime in a `stamps` param (mapmerge.run.reads.stamps): a file replaced by other bytes with an older mtime
# (cp -p, tar x, rsync -a) reruns its jobs, where Snakemake's mtime check would pass over it. None for the built-in
# benchmark's checkpoints, which the workflow makes; no param where there is nothing to stamp. The stage never gets it.
USER_CHECKPOINTS = [] if MODEL["builtin"] else [MODEL["pretrained"], *(MODEL["tasks"][t]["checkpoint"] for t in TASKS)]
ENGINE_STAMPS = reads.stamps([*USER_CHECKPOINTS, *EVALUATION_READS])
STAMPED = {"stamps": ENGINE_STAMPS} if ENGINE_STAMPS else {}  # the params of the jobs that merge or evaluate


def extraction_stamps(wildcards):
    """A task vector's `stamps` param: the pretrained and fine-tuned checkpoints and the files behind them."""
    files = [MODEL["pretrained"], checkpoint_path(wildcards.task)]
    return reads.stamps([*files, *extraction_reads(wildcards).get(reads.READS, [])])


def evaluation_reads(wildcards):
    """An evaluation's `reads` input: Snakemake reruns it when one changes; the evaluation cache hashes them."""
    return {reads.READS: EVALUATION_READS} if EVALUATION_READS else {}


def extraction_reads(wildcards):
    """A task vector's `reads` input: the files behind the pretrained and fine-tuned checkpoints (shards, a LoRA
    adapter's config)."""
    found = sorted({*reads.behind(MODEL["pretrained"]), *reads.behind(checkpoint_path(wildcards.task))})
    return {reads.READS: found} if found else {}


def checkpoint_path(task):
    return MODEL["tasks"][task]["checkpoint"]


def vector_path(model):
    """A task's task vector, or a group's merged - pretrained."""
    return L.vector(model, TASKS)


def candidates(level):
    return groups.candidates(TASKS, LEVELS, level)


def engine_files(members):
    """What an evaluation or a merge reads: the pretrained checkpoint, the members' vectors and every task's checkpoint (for its head)."""
    return {
        "pretrained": MODEL["pretrained"],
        "vectors": {m: vector_path(m) for m in members},
        "checkpoints": {t: checkpoint_path(t) for t in TASKS},
    }


@keyed
def engine_inputs(wildcards):
    """A group's engine files (every model that could be one of its members) and its level's plan."""
    level = LEVEL_OF[wildcards.group]
    return {**engine_files(candidates(level)), "plan": L.plan(level)}


@keyed
def reference_inputs(wildcards):
    return engine_files(TASKS)


@keyed
def task_vectors(wildcards):
    return {"vectors": {t: vector_path(t) for t in TASKS}}


@lru_cache(maxsize=None)
def design_values():
    """The designed samples' values, the same for every group (sample_coefficients writes them with the members' names).

    Computed once per snakemake process, not once per group.
    """
    return design([f"m{i}" for i in range(N_MEMBERS)], params_of("sample_coefficients")["sampler"], CFG["seed"])


def design_batches():
    return sample_batches(design_values()["sample"].tolist(), CFG["evaluation"]["samples_per_job"])


def round_batches(number):
    """The batch indices of round `number`: its most points (a Bayesian round's size, or a refinement round's), in
    batches of evaluation.samples_per_job; a refinement round with fewer points leaves its last batches empty."""
    n = bayesian.round_size(CFG["bayesian"], N_MEMBERS) if number <= BAYES_ROUNDS else refine.round_size(CFG["refine"], N_MEMBERS)
    return [f"{k:04d}" for k in range(math.ceil(n / CFG["evaluation"]["samples_per_job"]))]


def round_numbers(first, last):
    """A wildcard constraint matching the round numbers first .. last (none when last < first)."""
    return "|".join(f"{r:02d}" for r in range(first, last + 1)) or "(?!)"


def batch_c(wildcards):
    """{sample: coefficients} of one evaluation batch: its params, so a changed design reruns it."""
    frame = design_values().set_index("sample")
    columns = [c for c in frame.columns if c.startswith("c_")]
    return {s: [float(v) for v in frame.loc[s, columns]] for s in design_batches()[wildcards.batch]}


def group_rounds(group, upto=None):
    """The group's sample tables of rounds 0 .. upto - 1 (all rounds by default)."""
    return [L.round(group, r) for r in range(ROUNDS + 1 if upto is None else upto)]


def group_evals(group, upto=None):
    """The group's evaluation batches of rounds 0 .. upto - 1 (all rounds by default)."""
    last = ROUNDS + 1 if upto is None else upto
    files = [L.batch(group, b) for b in design_batches()]
    return files + [L.round_batch(group, r, k) for r in range(1, last) for k in round_batches(r)]


def level_params(level):
    """plan_level's params: its groups' names; level 1 pairs by the models' own metric, so no preference."""
    params = {**params_of("plan_level"), "groups": LEVELS[level - 1]}
    return {k: v for k, v in params.items() if not (level == 1 and k == "preference")}


@keyed
def level_inputs(wildcards):
    """What a level's plan reads: the reference metrics (level 1) or the level below's plan and
    chosen merges (group -> file), and the candidates' vectors (model -> file) when pairing by cosine."""
    level = int(wildcards.level)
    if METHOD != "nested":
        return {}
    inputs = {"reference": L.reference} if level == 1 else {
        "previous": L.plan(level - 1),
        "selected": {g: L.selected_evals(g) for g in LEVELS[level - 2]},
    }
    if CFG["nested"]["pairing"] == "cosine":
        inputs["vectors"] = {m: vector_path(m) for m in candidates(level)}
    return inputs


GROUP_FILES = ("front", "choice", "selected_evals", "samples", "metrics", "surrogate")


def group_outputs():
    """Every group's tables that aggregate reads (through the layout)."""
    return [getattr(L, name)(g) for g in GROUPS for name in GROUP_FILES]


def all_evals():
    """Every evaluation file, labelled for the ledger ('group/file', or the file name)."""
    files = {L.reference_examples.name: L.reference_examples}
    for g in GROUPS:
        files.update({f"{g}/{p.name}": p for p in [*group_evals(g), L.selected_evals(g)]})
    return files


@keyed
def ledger_inputs(wildcards):
    return {"evals": all_evals()}


def plot_outputs():
    return [L.plot("front_parallel")] + ([L.plot("front_2d")] if len(TASKS) == 2 else [])


def every_artifact():
    """Every artifact of a finished run: what rule all asks for.

    Snakemake does not remake a missing file that no job it runs needs; as rule all asks for every
    artifact, one that was deleted (by `mapmerge check --delete`, say) is made again, with what depends on it.
    """
    made = [MODEL["pretrained"], *map(checkpoint_path, CFG["benchmark"]["tasks"]), L.benchmark] if MODEL["builtin"] else []
    made += [*map(vector_path, TASKS), L.task_vector_table, L.reference, L.reference_examples]
    made += [L.plan(k) for k in range(1, len(LEVELS) + 1)]
    made += [*all_evals().values(), *(r for g in GROUPS for r in group_rounds(g)), *group_outputs()]
    made += [f for g in GROUPS for f in (L.merged(g), L.group_vector(g), *([L.merged_folders(g)] if HF_FOLDERS else []))]
    made += validation_artifacts() if CFG["validation"]["enabled"] else []  # validate.smk
    made += [L.ledger, L.group_tree, L.pareto, L.measured, L.selected, L.report, *plot_outputs()]
    return [*made, *(L.report_table(k) for k in REPORT_TABLES)]


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
    return [L.grid_batch(b) for b in grid_batches()]


def baseline_files():
    return {name: L.baseline(name) for name in VALIDATION["baselines"]}


def validation_artifacts():
    """Every file of the validation stage (what every_artifact adds when validation is enabled)."""
    made = [*grid_files(), *baseline_files().values(), L.validation_front, L.validation_front_evals]
    return [*made, L.validation, L.plot("validation")]


@keyed
def validation_engine_inputs(wildcards):
    """Every task's vector and checkpoint, and the plan of group `all`."""
    return {**engine_files(TASKS), "plan": L.plan(1)}


@keyed
def baseline_inputs(wildcards):
    return {"baselines": baseline_files()}
