# Validation against ground truth (validation.enabled; one group, `all`): a dense grid of merges
# evaluated for real in batches (each batch's coefficients are its params, like evaluate_sample),
# K points of the predicted front evaluated for real, one job per baseline (its own merge operator),
# then the indicators with bootstrap intervals and the plot. Rule all asks for these files only when
# validation is enabled; nothing here is computed at parse time otherwise.

from mapmerge.stages.evaluation import run_evaluate_samples
from mapmerge.stages.validate import run_validate
from mapmerge.stages.validate_baseline import run_evaluate_baseline
from mapmerge.stages.validate_front import run_evaluate_front


rule validate_grid:
    input:
        unpack(validation_engine_inputs),
    output:
        f"{R}/validation/grid/{{batch}}.parquet",
    params:
        stage=params_of("evaluate"),
        c=grid_batch_c,
    log:
        f"{R}/logs/validate_grid/{{batch}}.log",
    threads: EVAL["threads"]
    resources:
        mem_mb=EVAL["mem_mb"],
        runtime=EVAL["runtime"],
        gpu=EVAL["gpu"],
    run:
        run_stage(
            run_evaluate_samples, log[0], params.stage, engine_files(wildcards, input), input.plan, "all", params.c,
            output[0], DEVICE, threads, "fail", "validate_grid",
        )


rule validate_front:
    input:
        unpack(validation_engine_inputs),
        front=f"{R}/groups/all/front.parquet",
    output:
        points=f"{R}/validation/front.parquet",
        evals=f"{R}/validation/front_evals.parquet",
    params:
        stage=params_of("validate_front"),
    log:
        f"{R}/logs/validate_front.log",
    threads: EVAL["threads"]
    resources:
        mem_mb=EVAL["mem_mb"],
        runtime=EVAL["runtime"],
        gpu=EVAL["gpu"],
    run:
        run_stage(
            run_evaluate_front, log[0], params.stage, input.front, engine_files(wildcards, input), input.plan,
            output.points, output.evals, DEVICE, threads,
        )


rule validate_baseline:
    input:
        unpack(validation_engine_inputs),
    output:
        f"{R}/validation/baselines/{{baseline}}.parquet",
    wildcard_constraints:
        baseline="|".join(VALIDATION["baselines"]) or "^$",
    params:
        stage=lambda wc: validation_config.baseline_params(params_of("validate_baseline"), wc.baseline),
    log:
        f"{R}/logs/validate_baseline/{{baseline}}.log",
    threads: EVAL["threads"]
    resources:
        mem_mb=EVAL["mem_mb"],
        runtime=EVAL["runtime"],
        gpu=EVAL["gpu"],
    run:
        run_stage(
            run_evaluate_baseline, log[0], params.stage, wildcards.baseline, engine_files(wildcards, input), input.plan,
            output[0], DEVICE, threads,
        )


rule validate:
    input:
        front=f"{R}/groups/all/front.parquet",
        points=f"{R}/validation/front.parquet",
        front_evals=f"{R}/validation/front_evals.parquet",
        grid=lambda wc: grid_files(),
        baselines=lambda wc: list(baseline_files().values()),
        reference=f"{R}/reference.parquet",
    output:
        table=f"{R}/validation.parquet",
        plot=report(f"{R}/plots/validation.png", caption="../report/validation_plot.rst", category="Validation"),
    params:
        stage=params_of("validate"),
    log:
        f"{R}/logs/validate.log",
    threads: LIGHT["threads"]
    resources:  # an evaluation job's memory and time: the bootstrap recomputes every model's metrics per resample
        mem_mb=EVAL["mem_mb"],
        runtime=EVAL["runtime"],
    run:
        run_stage(run_validate, log[0], params.stage, *validate_args(input, output))
