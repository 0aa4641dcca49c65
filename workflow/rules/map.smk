# MAP per group: the level's plan, design (Bayesian rounds, refinement rounds), metrics, surrogate, Pareto front, pick and merge.


rule plan_level:
    input:
        unpack(level_inputs),
    output:
        plan=L.plan("{level}"),
    params:
        stage=lambda wc: level_params(int(wc.level)),
        job=job_of("plan_level", level_inputs),
    log:
        L.log("plan_level", "{level}"),
    threads: threads_of("plan_level")
    resources:
        **resources_of("plan_level"),
    conda:
        SOFTWARE
    shell:
        JOB


rule sample_coefficients:
    input:
        plan=lambda wc: L.plan(LEVEL_OF[wc.group]),
    output:
        samples=L.round("{group}", 0),
    params:
        stage=params_of("sample_coefficients"),
        job=job_of("sample_coefficients"),
    log:
        L.log("sample_coefficients", "{group}"),
    threads: threads_of("sample_coefficients")
    resources:
        **resources_of("sample_coefficients"),
    conda:
        SOFTWARE
    shell:
        JOB


rule propose_round:
    input:
        rounds=lambda wc: group_rounds(wc.group, int(wc.round)),
        evals=lambda wc: group_evals(wc.group, int(wc.round)),
    output:
        samples=L.round("{group}", "{round}"),
    wildcard_constraints:
        round=round_numbers(1, BAYES_ROUNDS),
    params:
        stage=params_of("propose_round"),
        job=job_of("propose_round"),
    log:
        L.log("propose_round", "{group}", "{round}"),
    threads: threads_of("propose_round")
    resources:
        **resources_of("propose_round"),
    conda:
        SOFTWARE
    shell:
        JOB


rule refine_round:
    input:
        rounds=lambda wc: group_rounds(wc.group, int(wc.round)),
        evals=lambda wc: group_evals(wc.group, int(wc.round)),
        plan=lambda wc: L.plan(LEVEL_OF[wc.group]),
        reference=L.reference,
    output:
        samples=L.round("{group}", "{round}"),
    wildcard_constraints:
        round=round_numbers(BAYES_ROUNDS + 1, ROUNDS),
    params:
        stage=lambda wc: round_params(REFINE_ROUND, int(wc.round) - BAYES_ROUNDS),  # its own trust region
        job=job_of("refine_round"),
    log:
        L.log("refine_round", "{group}", "{round}"),
    threads: threads_of("refine_round")
    resources:
        **resources_of("refine_round"),
    conda:
        SOFTWARE
    shell:
        JOB


rule collect_metrics:
    input:
        rounds=lambda wc: group_rounds(wc.group),
        evals=lambda wc: group_evals(wc.group),
    output:
        metrics=L.metrics("{group}"),
        samples=L.samples("{group}"),
    params:
        stage=params_of("collect_metrics"),  # its code version
        job=job_of("collect_metrics"),
    log:
        L.log("collect_metrics", "{group}"),
    threads: threads_of("collect_metrics")
    resources:
        **resources_of("collect_metrics"),
    conda:
        SOFTWARE
    shell:
        JOB


rule fit_surrogate:
    input:
        samples=L.samples("{group}"),
        metrics=L.metrics("{group}"),
        evals=lambda wc: group_evals(wc.group) if CFG["surrogate"]["scores"] != "none" else [],  # their class scores
    output:
        surrogate=L.surrogate("{group}"),
    params:
        stage=params_of("fit_surrogate"),
        job=job_of("fit_surrogate"),
    log:
        L.log("fit_surrogate", "{group}"),
    threads: threads_of("fit_surrogate")
    resources:
        **resources_of("fit_surrogate"),
    conda:
        SOFTWARE
    shell:
        JOB


rule pareto_front:
    input:
        surrogate=L.surrogate("{group}"),
        samples=L.samples("{group}"),
        plan=lambda wc: L.plan(LEVEL_OF[wc.group]),
    output:
        front=L.front("{group}"),
    params:
        stage=params_of("pareto_front"),
        job=job_of("pareto_front"),
    log:
        L.log("pareto_front", "{group}"),
    threads: threads_of("pareto_front")
    resources:
        **resources_of("pareto_front"),
    conda:
        SOFTWARE
    shell:
        JOB


rule merge_group:
    input:
        unpack(engine_inputs),
        unpack(evaluation_reads),  # a model folder's config and tokenizer files go into the merged folders
        front=L.front("{group}"),
        samples=L.samples("{group}"),
        metrics=L.metrics("{group}"),
        surrogate=L.surrogate("{group}"),
        reference=L.reference,
    output:
        merged=L.merged("{group}"),
        vector=L.group_vector("{group}"),
        choice=L.choice("{group}"),
        **({"folders": directory(L.merged_folders("{group}"))} if HF_FOLDERS else {}),  # merged/<task>/, loadable by transformers
    params:
        stage=params_of("merge_group"),
        job=job_of("merge_group", engine_inputs, folders=lambda wc: L.merged_folders(wc.group)),
        **STAMPED,
    log:
        L.log("merge_group", "{group}"),
    threads: threads_of("merge_group")
    resources:
        **resources_of("merge_group"),
    conda:
        SOFTWARE
    shell:
        JOB
