"""The workflow's stages: one module per stage (or family of stages run by the same code), holding its
run_* entry points. Each reads its inputs, writes its outputs atomically and knows nothing of
Snakemake, so every stage can be run from Python and from tests.

Nothing is imported here, and a stage module imports only what its stage runs: a stage's code
fingerprint (its params' `code`, mapmerge.run.fingerprint) is the source of every mapmerge module its own
module can import, so a code change reruns the stages that run that code and no others.
The rules import their stage modules when the Snakefile is parsed, in every job: torch, pymoo, scipy
and matplotlib are imported inside the functions that need them, not at the top.
"""
