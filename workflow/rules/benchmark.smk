# The built-in benchmark's checkpoints (only when the model is built in).


if MODEL["builtin"]:

    rule prepare_benchmark:
        output:
            pretrained=MODEL["pretrained"],
            finetuned=[checkpoint_path(t) for t in CFG["benchmark"]["tasks"]],
            table=L.benchmark,
        params:
            stage=params_of("prepare_benchmark"),
            job=job_of("prepare_benchmark"),
        log:
            L.log("prepare_benchmark"),
        threads: threads_of("prepare_benchmark")
        resources:
            **resources_of("prepare_benchmark"),
        conda:
            SOFTWARE
        shell:
            JOB
