# Real evaluations of merged models: the reference models, every designed sample (in batches of
# evaluation.samples_per_job per job), every Bayesian round's samples, the chosen merge.
# Each loads the pretrained weights and task vectors once and merges on the device (evaluation.device).
# evaluation.on_error applies to the designed samples only (the reference models and the chosen merge
# are needed by every later stage) and, like the device, is not a param: switching it after a
# failure reruns only the failed jobs.

from mapmerge.stages.evaluation import run_evaluate_reference, run_evaluate_round, run_evaluate_samples, run_evaluate_selected


ON_ERROR = CFG["evaluation"]["on_error"]


rule evaluate_reference:
    input:
        pretrained=MODEL["pretrained"],
        vectors=[vector_path(t) for t in TASKS],
        checkpoints=[checkpoint_path(t) for t in TASKS],
    output:
        metrics=f"{R}/reference.parquet",
        examples=f"{R}/reference_examples.parquet",
    params:
        stage=params_of("evaluate"),
    log:
        f"{R}/logs/evaluate_reference.log",
    threads: EVAL["threads"]
    resources:
        mem_mb=EVAL["mem_mb"],
        runtime=EVAL["runtime"],
        gpu=EVAL["gpu"],
    run:
        run_stage(run_evaluate_reference, log[0], params.stage, engine_files(wildcards, input), *output, DEVICE, threads)


rule evaluate_sample:
    input:
        unpack(engine_inputs),
    output:
        f"{R}/groups/{{group}}/evals/{{batch}}.parquet",
    params:
        stage=params_of("evaluate"),
        c=batch_c,
    log:
        f"{R}/logs/evaluate_sample/{{group}}/{{batch}}.log",
    threads: EVAL["threads"]
    resources:
        mem_mb=EVAL["mem_mb"],
        runtime=EVAL["runtime"],
        gpu=EVAL["gpu"],
    run:
        run_stage(
            run_evaluate_samples, log[0], params.stage, engine_files(wildcards, input), input.plan, wildcards.group,
            params.c, output[0], DEVICE, threads, ON_ERROR,
        )


rule evaluate_round:
    input:
        unpack(engine_inputs),
        samples=f"{R}/groups/{{group}}/rounds/r{{round}}.parquet",
    output:
        f"{R}/groups/{{group}}/evals/r{{round}}b{{index}}.parquet",
    wildcard_constraints:
        round="[0-9]{2}",
        index="[0-9]{4}",
    params:
        stage=params_of("evaluate"),
    log:
        f"{R}/logs/evaluate_round/{{group}}/{{round}}/{{index}}.log",
    threads: EVAL["threads"]
    resources:
        mem_mb=EVAL["mem_mb"],
        runtime=EVAL["runtime"],
        gpu=EVAL["gpu"],
    run:
        run_stage(run_evaluate_round, log[0], params.stage, *round_batch(wildcards, input), output[0], DEVICE, threads, ON_ERROR)


rule evaluate_selected:
    input:
        unpack(engine_inputs),
        choice=f"{R}/groups/{{group}}/choice.parquet",
    output:
        f"{R}/groups/{{group}}/selected_evals.parquet",
    params:
        stage=params_of("evaluate"),
    log:
        f"{R}/logs/evaluate_selected/{{group}}.log",
    threads: EVAL["threads"]
    resources:
        mem_mb=EVAL["mem_mb"],
        runtime=EVAL["runtime"],
        gpu=EVAL["gpu"],
    run:
        run_stage(
            run_evaluate_selected, log[0], params.stage, input.choice, engine_files(wildcards, input), input.plan,
            wildcards.group, output[0], DEVICE, threads,
        )
