# Task vectors: tau_task = fine-tuned - pretrained over the merged tensors.

from mapmerge.stages.task_vectors import run_extract_task_vector, run_task_vector_table


rule extract_task_vector:
    input:
        pretrained=MODEL["pretrained"],
        finetuned=lambda wc: checkpoint_path(wc.task),
    output:
        f"{R}/task_vectors/{{task}}.safetensors",
    params:
        stage=params_of("extract_task_vector"),
    log:
        f"{R}/logs/extract_task_vector/{{task}}.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_extract_task_vector, log[0], params.stage, wildcards.task, input.pretrained, input.finetuned, output[0])


rule task_vector_table:
    input:
        [vector_path(t) for t in TASKS],
    output:
        f"{R}/task_vectors.parquet",
    params:
        stage=params_of("task_vector_table"),
    log:
        f"{R}/logs/task_vector_table.log",
    threads: LIGHT["threads"]
    resources:
        mem_mb=LIGHT["mem_mb"],
        runtime=LIGHT["runtime"],
    run:
        run_stage(run_task_vector_table, log[0], dict(zip(TASKS, input)), output[0])
