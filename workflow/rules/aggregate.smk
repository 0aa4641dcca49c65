# Gather all groups: the evaluation ledger, the front, the chosen merge with its measured metrics,
# the group tree, plots and a report.

from mapmerge.stages.aggregate import run_aggregate
from mapmerge.stages.collect import run_ledger
from mapmerge.stages.report_tables import run_report_tables


rule ledger:
    input:
        all_evals().values(),
    output:
        f"{R}/evaluations.parquet",
    params:
        stage=params_of("ledger"),  # its code version
    log:
        f"{R}/logs/ledger.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_ledger, log[0], dict(zip(all_evals(), input)), output[0])


rule aggregate:
    input:
        reference=f"{R}/reference.parquet",
        plans=[f"{R}/levels/level{k}.parquet" for k in range(1, len(LEVELS) + 1)],
        ledger=f"{R}/evaluations.parquet",
        groups=group_outputs(),
    output:
        pareto=f"{R}/pareto.parquet",
        selected=f"{R}/selected.parquet",
        groups=f"{R}/groups.parquet",
        report=f"{R}/report.md",
        plots=[report(p, caption="../report/plots.rst", category="Plots") for p in plot_outputs()],
    params:
        stage=params_of("aggregate"),
    log:
        f"{R}/logs/aggregate.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_aggregate, log[0], params.stage, R, as_list(input.plans), GROUPS, input.ledger, aggregate_outputs(output))


rule report_tables:
    input:
        f"{R}/reference.parquet",
        f"{R}/pareto.parquet",
        f"{R}/selected.parquet",
        f"{R}/evaluations.parquet",
        [f"{R}/validation.parquet"] if "validation" in REPORT_TABLES else [],
    output:
        **{key: report(f"{R}/report/{key}.html", caption=f"../report/{key}.rst", category="Tables") for key in REPORT_TABLES},
    params:
        stage=params_of("report_tables"),  # its code version: a change to the tables remakes them
    log:
        f"{R}/logs/report_tables.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_report_tables, log[0], R, dict(output.items()))
