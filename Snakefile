# mapmerge: MAP (model merging with amortized Pareto fronts) as a Snakemake workflow.
#   snakemake --cores N                                   the default run on the built-in benchmark
#   snakemake --cores N --config experiment=my.yaml       your own model and tasks
#   snakemake --cores N --config overrides='[name=trial2, surrogate.loo=false]'
# The config is composed once with Hydra (config/); each rule gets only its own sub-config as params.
# Every rule runs its stage as a `shell:` job (workflow/rules/common.smk, mapmerge.run.job) that imports
# only that stage's module: this file and its imports stay free of torch, pymoo and matplotlib.

import sys
from pathlib import Path

from mapmerge.core import groundtruth
from mapmerge.outputs.report import HTML_TABLES
from mapmerge.run import preflight, records, validation_config
from mapmerge.run.config import TASK_NAME, ConfigError, check_command_line, load_config, round_params, stage_config

# Every check runs here, before the first job (the driver also reads the files the config names); a
# mistake ends the run with one line and touches nothing on disk.
try:
    check_command_line(config)
    CFG = load_config(
        Path(workflow.basedir) / "config",
        experiment=config.get("experiment"),
        overrides=config.get("overrides"),
        check_files=workflow.is_main_process,
        warn=(lambda line: print(f"mapmerge: warning: {line}", file=sys.stderr)) if workflow.is_main_process else None,
    )
    if workflow.is_main_process:
        records.check_own_folder(CFG["results"])
        if not records.exempt(sys.argv):
            records.check(CFG["results"], records.model_of(CFG))
except ConfigError as exc:
    sys.exit(f"mapmerge: {exc}")
if workflow.is_main_process:
    print(f"mapmerge: {CFG['results']}: {preflight.plan(CFG).describe()}", file=sys.stderr)
R = CFG["results"]
TASKS = CFG["task_names"]
MODEL = CFG["model"]
DEVICE = CFG["evaluation"]["device"]
VALIDATION = CFG["validation"]
HF_FOLDERS = MODEL.get("adapter") == "transformers"  # merge_group also writes groups/<g>/merged/<task>/
# report/<name>.html, for snakemake --report
REPORT_TABLES = HTML_TABLES + (("validation",) if VALIDATION["enabled"] else ())


report: "workflow/report/workflow.rst"


wildcard_constraints:
    task=TASK_NAME.pattern,  # the config refuses a task name it would not match
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


onsuccess:
    from mapmerge.outputs.notes import final_notes  # at the end only: it imports pymoo (selection's fronts)
    from mapmerge.tools.status import no_gain_notes

    for server in JOB_SERVER:
        jobserver.stop(server)
    if workflow.is_main_process:
        records.record(R, records.model_of(CFG))
    if Path(L.selected).exists():
        for line in [*final_notes(R), *no_gain_notes(R, CFG["optimizer"]["objective"])]:
            print(f"mapmerge: {line}", file=sys.stderr)


rule all:
    default_target: True
    input:
        every_artifact(),
