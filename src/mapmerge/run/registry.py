"""The workflow's stages, one entry per rule: the code it runs, what it takes, its params and resources.

A rule (workflow/rules/*.smk) is a declaration: named input, output and params, resources from its
entry, and one generic call, a `shell:` job `python -m mapmerge.run.job` (mapmerge.run.job) that calls

    <module>.<function>(params, **inputs, **outputs, **args)

with the rule's `stage` param as `params`, its named inputs and outputs by name (a path, a list of paths,
or a mapping key -> path where the rule keys them; `after` and `writes` name the files a stage finds
through the layout instead), and `args`: values of the job that are not files
(wildcards, the rule's other params, device, threads, ...), each by name. This module names the code
without importing it: the Snakefile, the jobs and the command line read it at no cost.

Order: the order of the workflow, which `mapmerge status` follows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One rule's stage."""

    rule: str
    # under mapmerge.stages; the code fingerprint hashes what it can import (mapmerge.run.fingerprint)
    module: str
    function: str  # its run_* entry point
    inputs: tuple[str, ...] = ()  # the rule's named inputs, passed by name
    outputs: tuple[str, ...] = ()  # the rule's named outputs, passed by name
    # other values the function takes by name: wildcards, the rule's other params, job settings
    args: tuple[str, ...] = ()
    # the params builder (mapmerge.run.config.stage_config) of the rule's `stage` param; default: the rule
    params: str = ""
    resources: str = "light"  # the config's resources group: light or evaluate
    threads: str = ""  # the resources group of its threads where it is not `resources`'s
    # inputs declared only so that the job waits for them (the stage finds them through the layout)
    after: tuple[str, ...] = ()
    # outputs declared for Snakemake that the stage writes under its own names (a folder, plots)
    writes: tuple[str, ...] = ()
    validation: bool = False  # an opt-in stage of validation.enabled
    cached: bool = False  # an evaluation whose tables are kept across reruns (mapmerge.run.evaluation_cache)

    @property
    def params_key(self) -> str:
        return self.params or self.rule

    @property
    def threads_group(self) -> str:
        return self.threads or self.resources


# an input of any rule: the files its stage opens through the config (mapmerge.run.reads), declared for Snakemake and
# hashed by the evaluation cache, never passed to the stage
READS = "reads"
# what an evaluation or merge reads: task vectors keyed by model, checkpoints by task
ENGINE = ("pretrained", "vectors", "checkpoints")
EVALUATION_ARGS = ("device", "threads")

STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare_benchmark", "prepare_benchmark", "run_prepare_benchmark", outputs=("pretrained", "finetuned", "table")
    ),
    Stage(
        "extract_task_vector",
        "task_vectors",
        "run_extract_task_vector",
        ("pretrained", "finetuned"),
        ("vector",),
        ("task",),
    ),
    Stage("task_vector_table", "task_vectors", "run_task_vector_table", ("vectors",), ("table",)),
    Stage(
        "evaluate_reference",
        "evaluation",
        "run_evaluate_reference",
        ENGINE,
        ("metrics", "examples"),
        EVALUATION_ARGS,
        params="evaluate",
        resources="evaluate",
        cached=True,
    ),
    Stage(
        "plan_level",
        "plan_level",
        "run_plan_level",
        ("reference", "previous", "selected", "vectors"),
        ("plan",),
        ("level",),
    ),
    Stage("sample_coefficients", "sample_coefficients", "run_sample_coefficients", ("plan",), ("samples",), ("group",)),
    Stage("propose_round", "propose_round", "run_propose_round", ("rounds", "evals"), ("samples",), ("round",)),
    Stage(
        "refine_round",
        "refine_round",
        "run_refine_round",
        ("rounds", "evals", "plan", "reference"),
        ("samples",),
        ("round", "group"),
    ),
    Stage(
        "evaluate_sample",
        "evaluation",
        "run_evaluate_samples",
        (*ENGINE, "plan"),
        ("examples",),
        ("group", "coefficients", *EVALUATION_ARGS, "on_error"),
        params="evaluate_group",
        resources="evaluate",
        cached=True,
    ),
    Stage(
        "evaluate_round",
        "evaluation",
        "run_evaluate_round",
        (*ENGINE, "plan", "samples"),
        ("examples",),
        ("group", "index", "size", *EVALUATION_ARGS, "on_error"),
        params="evaluate_group",
        resources="evaluate",
        cached=True,
    ),
    Stage("collect_metrics", "collect", "run_collect_metrics", ("rounds", "evals"), ("metrics", "samples")),
    Stage("fit_surrogate", "fit_surrogate", "run_fit_surrogate", ("samples", "metrics", "evals"), ("surrogate",)),
    Stage("pareto_front", "pareto_front", "run_pareto_front", ("surrogate", "samples", "plan"), ("front",), ("group",)),
    Stage(
        "merge_group",
        "merge_group",
        "run_merge_group",
        (*ENGINE, "plan", "front", "samples", "metrics", "surrogate", "reference"),
        ("merged", "vector", "choice"),
        ("group", "folders"),
        writes=("folders",),
    ),
    Stage(
        "evaluate_selected",
        "evaluation",
        "run_evaluate_selected",
        (*ENGINE, "plan", "choice"),
        ("examples",),
        ("group", *EVALUATION_ARGS),
        params="evaluate",
        resources="evaluate",
        cached=True,
    ),
    Stage("ledger", "collect", "run_ledger", ("evals",), ("ledger",)),
    Stage(
        "aggregate",
        "aggregate",
        "run_aggregate",
        ("reference", "plans", "ledger", "validation"),
        ("pareto", "measured", "selected", "groups", "report"),
        ("results", "group_names"),
        after=("group_tables", "task_vectors"),
        writes=("plots",),
    ),
    Stage(
        "report_tables",
        "report_tables",
        "run_report_tables",
        ("reference", "task_vectors", "pareto", "measured", "selected", "evaluations", "validation_table"),
        ("models", "front", "measured_front", "chosen", "ledger", "validation"),
    ),
    # validation (validation.enabled)
    Stage(
        "validate_grid",
        "evaluation",
        "run_evaluate_samples",
        (*ENGINE, "plan"),
        ("examples",),
        ("group", "coefficients", *EVALUATION_ARGS, "on_error", "stage"),
        params="evaluate",
        resources="evaluate",
        cached=True,
        validation=True,
    ),
    Stage(
        "validate_front",
        "validate_front",
        "run_evaluate_front",
        (*ENGINE, "plan", "front"),
        ("points", "examples"),
        EVALUATION_ARGS,
        resources="evaluate",
        cached=True,
        validation=True,
    ),
    Stage(
        "validate_baseline",
        "validate_baseline",
        "run_evaluate_baseline",
        (*ENGINE, "plan"),
        ("examples",),
        ("baseline", *EVALUATION_ARGS),
        resources="evaluate",
        cached=True,
        validation=True,
    ),
    Stage(
        "validate",
        "validate",
        "run_validate",
        ("front", "points", "front_evals", "grid", "baselines", "reference", "surrogate", "samples"),
        ("table", "plot"),
        threads="light",
        resources="evaluate",
        validation=True,
    ),
)
REGISTRY: dict[str, Stage] = {stage.rule: stage for stage in STAGES}


def stage_modules() -> dict[str, str]:
    """Params builder -> its stage module (mapmerge.stages.<module>): the code each set of params fingerprints."""
    modules: dict[str, str] = {}
    for stage in STAGES:
        if modules.setdefault(stage.params_key, stage.module) != stage.module:
            raise ValueError(
                f"params {stage.params_key}: run by modules {modules[stage.params_key]} and {stage.module}"
            )
    return modules
