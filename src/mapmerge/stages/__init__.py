"""The workflow's stages: one module per stage (or family of stages run by the same code), holding its
run_* entry points. Each reads its inputs, writes its outputs atomically and knows nothing of
Snakemake, so every stage can be run from Python and from tests: `run_<stage>(params, **named files, **args)`,
as mapmerge.run.registry lists them and mapmerge.run.job calls them.

Nothing is imported here, and a stage module imports only what its stage runs, at the top: a job
imports its own stage module and nothing else of the workflow (the Snakefile never imports one), and a
stage's code fingerprint (its params' `code`, mapmerge.run.fingerprint) is the source of every mapmerge
module its own module can import, so a code change reruns the stages that run that code and no others.
"""
