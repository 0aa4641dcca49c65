# The built-in benchmark's checkpoints (only when the model is built in).

from mapmerge.stages.prepare_benchmark import run_prepare_benchmark


if MODEL["builtin"]:

    rule prepare_benchmark:
        output:
            pretrained=MODEL["pretrained"],
            finetuned=[checkpoint_path(t) for t in CFG["benchmark"]["tasks"]],
            table=f"{R}/benchmark.parquet",
        params:
            stage=params_of("prepare_benchmark"),
        log:
            f"{R}/logs/prepare_benchmark.log",
        threads: LIGHT["threads"]
        resources:
            mem_mb=LIGHT["mem_mb"],
            runtime=LIGHT["runtime"],
        run:
            run_stage(run_prepare_benchmark, log[0], params.stage, Path(output.pretrained).parent, output.table)
