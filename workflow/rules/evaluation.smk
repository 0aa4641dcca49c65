# Real evaluations of merged models: the reference models, every designed sample (in batches of
# evaluation.samples_per_job per job), every Bayesian round's samples, the chosen merge.
# Each loads the pretrained weights and task vectors once and merges on the device (evaluation.device).
# evaluation.on_error applies to the designed samples only (the reference models and the chosen merge
# are needed by every later stage) and, like the device, is not a param: switching it after a
# failure reruns only the failed jobs.


rule evaluate_reference:
    input:
        unpack(reference_inputs),
        unpack(evaluation_reads),
    output:
        metrics=L.reference,
        examples=L.reference_examples,
    params:
        stage=params_of("evaluate"),
        job=job_of("evaluate_reference", reference_inputs, device=DEVICE),
        **STAMPED,
    log:
        L.log("evaluate_reference"),
    threads: threads_of("evaluate_reference")
    resources:
        **resources_of("evaluate_reference"),
    conda:
        SOFTWARE
    shell:
        JOB


rule evaluate_sample:
    input:
        unpack(engine_inputs),
        unpack(evaluation_reads),
    output:
        examples=L.batch("{group}", "{batch}"),
    params:
        stage=params_of("evaluate_group"),
        coefficients=batch_c,
        job=job_of("evaluate_sample", engine_inputs, device=DEVICE, on_error=ON_ERROR),
        **STAMPED,
    log:
        L.log("evaluate_sample", "{group}", "{batch}"),
    threads: threads_of("evaluate_sample")
    resources:
        **resources_of("evaluate_sample"),
    conda:
        SOFTWARE
    shell:
        JOB


rule evaluate_round:
    input:
        unpack(engine_inputs),
        unpack(evaluation_reads),
        samples=L.round("{group}", "{round}"),
    output:
        examples=L.round_batch("{group}", "{round}", "{index}"),
    wildcard_constraints:
        round="[0-9]{2}",
        index="[0-9]{4}",
    params:
        stage=params_of("evaluate_group"),
        job=job_of("evaluate_round", engine_inputs, size=CFG["evaluation"]["samples_per_job"], device=DEVICE, on_error=ON_ERROR),
        **STAMPED,
    log:
        L.log("evaluate_round", "{group}", "{round}", "{index}"),
    threads: threads_of("evaluate_round")
    resources:
        **resources_of("evaluate_round"),
    conda:
        SOFTWARE
    shell:
        JOB


rule evaluate_selected:
    input:
        unpack(engine_inputs),
        unpack(evaluation_reads),
        choice=L.choice("{group}"),
    output:
        examples=L.selected_evals("{group}"),
    params:
        stage=params_of("evaluate"),
        job=job_of("evaluate_selected", engine_inputs, device=DEVICE),
        **STAMPED,
    log:
        L.log("evaluate_selected", "{group}"),
    threads: threads_of("evaluate_selected")
    resources:
        **resources_of("evaluate_selected"),
    conda:
        SOFTWARE
    shell:
        JOB
