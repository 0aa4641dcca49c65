# MAP per group: design, metrics, surrogate, Pareto front, pick and merge.


rule plan_groups:
    output:
        f"{R}/groups.parquet",
    params:
        stage=params_of("plan_groups"),
    log:
        f"{R}/logs/plan_groups.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(stages.run_plan_groups, log[0], params.stage, output[0])


rule sample_coefficients:
    input:
        f"{R}/groups.parquet",
    output:
        f"{R}/groups/{{group}}/samples.parquet",
    params:
        stage=params_of("sample_coefficients"),
    log:
        f"{R}/logs/sample_coefficients/{{group}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(stages.run_sample_coefficients, log[0], params.stage, input[0], wildcards.group, output[0])


rule collect_metrics:
    input:
        group_evals,
    output:
        f"{R}/groups/{{group}}/metrics.parquet",
    params:
        stage=params_of("collect_metrics"),
    log:
        f"{R}/logs/collect_metrics/{{group}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(stages.run_collect_metrics, log[0], list(input), output[0])


rule fit_surrogate:
    input:
        samples=f"{R}/groups/{{group}}/samples.parquet",
        metrics=f"{R}/groups/{{group}}/metrics.parquet",
    output:
        f"{R}/groups/{{group}}/surrogate.parquet",
    params:
        stage=params_of("fit_surrogate"),
    log:
        f"{R}/logs/fit_surrogate/{{group}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(stages.run_fit_surrogate, log[0], params.stage, input.samples, input.metrics, output[0])


rule pareto_front:
    input:
        surrogate=f"{R}/groups/{{group}}/surrogate.parquet",
        samples=f"{R}/groups/{{group}}/samples.parquet",
    output:
        f"{R}/groups/{{group}}/front.parquet",
    params:
        stage=params_of("pareto_front"),
    log:
        f"{R}/logs/pareto_front/{{group}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(stages.run_pareto_front, log[0], params.stage, input.surrogate, input.samples, output[0])


rule merge_group:
    input:
        unpack(engine_inputs),
        front=f"{R}/groups/{{group}}/front.parquet",
    output:
        merged=f"{R}/groups/{{group}}/merged.safetensors",
        choice=f"{R}/groups/{{group}}/choice.parquet",
    params:
        stage=params_of("merge_group"),
    log:
        f"{R}/logs/merge_group/{{group}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(stages.run_merge_group, log[0], params.stage, input.front, engine_files(wildcards, input), *output)
