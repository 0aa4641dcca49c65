# mapmerge: MAP (model merging with amortized Pareto fronts) as a Snakemake workflow.
#   snakemake --cores N                                   the default run on the built-in benchmark
#   snakemake --cores N --config experiment=my.yaml       your own model and tasks
#   snakemake --cores N --config overrides='[name=trial2, surrogate.loo=false]'
# The config is composed once with Hydra (config/); each rule gets only its own sub-config as params.

from pathlib import Path

from mapmerge.config import load_config, stage_config
from mapmerge import report as report_module, stages, validation
from mapmerge.logs import run_stage

CFG = load_config(
    Path(workflow.basedir) / "config",
    experiment=config.get("experiment"),
    overrides=config.get("overrides"),
)
R = CFG["results"]
TASKS = CFG["task_names"]
MODEL = CFG["model"]
DEVICE = CFG["evaluation"]["device"]
BATCH = CFG["evaluation"]["samples_per_job"]
EVAL = CFG["resources"]["evaluate"]
LIGHT = CFG["resources"]["light"]
VALIDATION = CFG["validation"]
HF_FOLDERS = MODEL.get("adapter") == "transformers"  # merge_group also writes groups/<g>/merged/<task>/
# report/<name>.html, for snakemake --report
REPORT_TABLES = report_module.HTML_TABLES + (("validation",) if CFG["validation"]["enabled"] else ())


report: "workflow/report/workflow.rst"


wildcard_constraints:
    task="[A-Za-z0-9_.-]+",
    group="[A-Za-z0-9_.-]+",
    batch="b[0-9]+",
    level="[0-9]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/taskvectors.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/map.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/validate.smk"


rule all:
    default_target: True
    input:
        every_artifact(),
