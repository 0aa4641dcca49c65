# Validation against ground truth (validation.enabled; one group, `all`): a dense grid of merges
# evaluated for real in batches (each batch's coefficients are its params, like evaluate_sample),
# K points of the predicted front evaluated for real, one job per baseline (its own merge operator),
# then the indicators with bootstrap intervals and the plot. Rule all asks for these files only when
# validation is enabled; nothing here is computed at parse time otherwise.


rule validate_grid:
    input:
        unpack(validation_engine_inputs),
        unpack(evaluation_reads),
    output:
        examples=L.grid_batch("{batch}"),
    params:
        stage=params_of("evaluate"),
        coefficients=grid_batch_c,
        job=job_of("validate_grid", validation_engine_inputs, group="all", device=DEVICE, on_error="fail", stage="validate_grid"),
        **STAMPED,
    log:
        L.log("validate_grid", "{batch}"),
    threads: threads_of("validate_grid")
    resources:
        **resources_of("validate_grid"),
    conda:
        SOFTWARE
    shell:
        JOB


rule validate_front:
    input:
        unpack(validation_engine_inputs),
        unpack(evaluation_reads),
        front=L.front("all"),
    output:
        points=L.validation_front,
        examples=L.validation_front_evals,
    params:
        stage=params_of("validate_front"),
        job=job_of("validate_front", validation_engine_inputs, device=DEVICE),
        **STAMPED,
    log:
        L.log("validate_front"),
    threads: threads_of("validate_front")
    resources:
        **resources_of("validate_front"),
    conda:
        SOFTWARE
    shell:
        JOB


rule validate_baseline:
    input:
        unpack(validation_engine_inputs),
        unpack(evaluation_reads),
    output:
        examples=L.baseline("{baseline}"),
    wildcard_constraints:
        baseline="|".join(VALIDATION["baselines"]) or "^$",
    params:
        stage=lambda wc: validation_config.baseline_params(params_of("validate_baseline"), wc.baseline),
        job=job_of("validate_baseline", validation_engine_inputs, device=DEVICE),
        **STAMPED,
    log:
        L.log("validate_baseline", "{baseline}"),
    threads: threads_of("validate_baseline")
    resources:
        **resources_of("validate_baseline"),
    conda:
        SOFTWARE
    shell:
        JOB


rule validate:
    input:
        unpack(baseline_inputs),
        front=L.front("all"),
        points=L.validation_front,
        front_evals=L.validation_front_evals,
        grid=lambda wc: grid_files(),
        reference=L.reference,
        surrogate=L.surrogate("all"),
        samples=L.samples("all"),  # the win rates' budget: the group's real evaluations
    output:
        table=L.validation,
        plot=report(L.plot("validation"), caption="../report/validation_plot.rst", category="Validation"),
    params:
        stage=params_of("validate"),
        job=job_of("validate", baseline_inputs),
    log:
        L.log("validate"),
    # light threads, an evaluation job's memory and time: the bootstrap recomputes every model's metrics per resample
    threads: threads_of("validate")
    resources:
        **resources_of("validate"),
    conda:
        SOFTWARE
    shell:
        JOB
