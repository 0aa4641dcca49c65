# Gather all groups: the front, the chosen merge with its measured metrics, plots and a report.


rule aggregate:
    input:
        reference=f"{R}/reference.parquet",
        groups=aggregate_inputs(),
    output:
        pareto=f"{R}/pareto.parquet",
        selected=f"{R}/selected.parquet",
        report=f"{R}/report.md",
        plots=plot_outputs(),
    params:
        stage=params_of("aggregate"),
    log:
        f"{R}/logs/aggregate.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(
            stages.run_aggregate, log[0], params.stage, R, list(PLAN),
            output.pareto, output.selected, f"{R}/plots", output.report,
        )
