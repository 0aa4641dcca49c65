# Task vectors: tau_task = fine-tuned - pretrained over the merged tensors.


rule extract_task_vector:
    input:
        unpack(extraction_reads),
        pretrained=MODEL["pretrained"],
        finetuned=lambda wc: checkpoint_path(wc.task),
    output:
        vector=L.task_vector("{task}"),
    params:
        stage=params_of("extract_task_vector"),
        job=job_of("extract_task_vector"),
        **({"stamps": extraction_stamps} if USER_CHECKPOINTS else {}),
    log:
        L.log("extract_task_vector", "{task}"),
    threads: threads_of("extract_task_vector")
    resources:
        **resources_of("extract_task_vector"),
    conda:
        SOFTWARE
    shell:
        JOB


rule task_vector_table:
    input:
        unpack(task_vectors),
    output:
        table=L.task_vector_table,
    params:
        stage=params_of("task_vector_table"),  # its code version
        job=job_of("task_vector_table", task_vectors),
    log:
        L.log("task_vector_table"),
    threads: threads_of("task_vector_table")
    resources:
        **resources_of("task_vector_table"),
    conda:
        SOFTWARE
    shell:
        JOB
