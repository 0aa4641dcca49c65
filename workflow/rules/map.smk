# MAP per group: the level's plan, design (and Bayesian rounds), metrics, surrogate, Pareto front, pick and merge.

from mapmerge.stages.collect import run_collect_metrics
from mapmerge.stages.fit_surrogate import run_fit_surrogate
from mapmerge.stages.merge_group import run_merge_group
from mapmerge.stages.pareto_front import run_pareto_front
from mapmerge.stages.plan_level import run_plan_level
from mapmerge.stages.propose_round import run_propose_round
from mapmerge.stages.sample_coefficients import run_sample_coefficients


rule plan_level:
    input:
        unpack(level_inputs),
    output:
        f"{R}/levels/level{{level}}.parquet",
    params:
        stage=lambda wc: level_params(int(wc.level)),
    log:
        f"{R}/logs/plan_level/{{level}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_plan_level, log[0], params.stage, int(wildcards.level), output[0], **level_files(wildcards, input))


rule sample_coefficients:
    input:
        plan=lambda wc: plan_path(wc.group),
    output:
        f"{R}/groups/{{group}}/rounds/r00.parquet",
    params:
        stage=params_of("sample_coefficients"),
    log:
        f"{R}/logs/sample_coefficients/{{group}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_sample_coefficients, log[0], params.stage, input.plan, wildcards.group, output[0])


rule propose_round:
    input:
        rounds=lambda wc: group_rounds(wc.group, int(wc.round)),
        evals=lambda wc: group_evals(wc.group, int(wc.round)),
    output:
        f"{R}/groups/{{group}}/rounds/r{{round}}.parquet",
    wildcard_constraints:
        round="0[1-9]|[1-9][0-9]",
    params:
        stage=params_of("propose_round"),
    log:
        f"{R}/logs/propose_round/{{group}}/{{round}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_propose_round, log[0], params.stage, int(wildcards.round), input.rounds, input.evals, output[0])


rule collect_metrics:
    input:
        rounds=lambda wc: group_rounds(wc.group),
        evals=lambda wc: group_evals(wc.group),
    output:
        metrics=f"{R}/groups/{{group}}/metrics.parquet",
        samples=f"{R}/groups/{{group}}/samples.parquet",
    params:
        stage=params_of("collect_metrics"),  # its code version
    log:
        f"{R}/logs/collect_metrics/{{group}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_collect_metrics, log[0], input.rounds, input.evals, output.metrics, output.samples)


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
        run_stage(run_fit_surrogate, log[0], params.stage, input.samples, input.metrics, output[0])


rule pareto_front:
    input:
        surrogate=f"{R}/groups/{{group}}/surrogate.parquet",
        samples=f"{R}/groups/{{group}}/samples.parquet",
        plan=lambda wc: plan_path(wc.group),
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
        run_stage(run_pareto_front, log[0], params.stage, input.surrogate, input.samples, input.plan, wildcards.group, output[0])


rule merge_group:
    input:
        unpack(engine_inputs),
        front=f"{R}/groups/{{group}}/front.parquet",
    output:
        merged=f"{R}/groups/{{group}}/merged.safetensors",
        vector=f"{R}/groups/{{group}}/vector.safetensors",
        choice=f"{R}/groups/{{group}}/choice.parquet",
        **({"folders": directory(f"{R}/groups/{{group}}/merged")} if HF_FOLDERS else {}),  # merged/<task>/, loadable by transformers
    params:
        stage=params_of("merge_group"),
    log:
        f"{R}/logs/merge_group/{{group}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(
            run_merge_group, log[0], params.stage, input.front, engine_files(wildcards, input), input.plan, wildcards.group,
            output.merged, output.vector, output.choice,
        )
