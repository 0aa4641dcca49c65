# Gather all groups: the evaluation ledger, the front, the chosen merge with its measured metrics,
# the group tree, plots and a report.


rule ledger:
    input:
        unpack(ledger_inputs),
    output:
        ledger=L.ledger,
    params:
        stage=params_of("ledger"),  # its code version
        job=job_of("ledger", ledger_inputs),
    log:
        L.log("ledger"),
    threads: threads_of("ledger")
    resources:
        **resources_of("ledger"),
    conda:
        SOFTWARE
    shell:
        JOB


rule aggregate:
    input:
        reference=L.reference,
        plans=[L.plan(k) for k in range(1, len(LEVELS) + 1)],
        ledger=L.ledger,
        group_tables=group_outputs(),  # read through the layout
        task_vectors=L.task_vector_table,  # the run's task order, read through the layout
        **({"validation": L.validation} if VALIDATION["enabled"] else {}),  # its table in report.md
    output:
        pareto=L.pareto,
        measured=L.measured,
        selected=L.selected,
        groups=L.group_tree,
        report=L.report,
        plots=[report(p, caption="../report/plots.rst", category="Plots") for p in plot_outputs()],
    params:
        stage=params_of("aggregate"),
        job=job_of("aggregate", results=R, group_names=GROUPS),
    log:
        L.log("aggregate"),
    threads: threads_of("aggregate")
    resources:
        **resources_of("aggregate"),
    conda:
        SOFTWARE
    shell:
        JOB


rule report_tables:
    input:
        reference=L.reference,
        task_vectors=L.task_vector_table,
        pareto=L.pareto,
        measured=L.measured,
        selected=L.selected,
        evaluations=L.ledger,
        **({"validation_table": L.validation} if VALIDATION["enabled"] else {}),
    output:
        **{key: report(L.report_table(key), caption=f"../report/{key}.rst", category="Tables") for key in REPORT_TABLES},
    params:
        stage=params_of("report_tables"),  # its code version: a change to the tables remakes them
        job=job_of("report_tables"),
    log:
        L.log("report_tables"),
    threads: threads_of("report_tables")
    resources:
        **resources_of("report_tables"),
    conda:
        SOFTWARE
    shell:
        JOB
