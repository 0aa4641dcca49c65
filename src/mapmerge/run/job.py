"""One job of the workflow: `python -m mapmerge.run.job LOG SPEC`, the `shell:` command of every rule.

SPEC, written by the rule's `job` param (job_of in workflow/rules/common.smk), says what to call:

    {"rule": "fit_surrogate", "params": {"stage": {...}, <the rule's other params>},
     "inputs": {name: path, [paths] or {key: path}}, "outputs": {...}, "args": {name: value}}

as JSON, or `z:` and the base64 of its zlib compression where it is long (a command line holds at most
128 KiB). The job looks the rule up in mapmerge.run.registry and calls its stage, through
mapmerge.run.logs.run_stage (LOG gets the timing and peak memory, and the traceback of a failure):

    <module>.<function>(params["stage"], **inputs, **outputs, **args, **<the other params>)

(the inputs but `reads`: files the stage opens through its config, mapmerge.run.reads).

It imports no Snakemake, parses no Snakefile and composes no config: only this module, the registry and
the stage's module with what that imports (torch only for the stages that use it). A failure ends it
with one line on stderr (the rule, the error, the log) and exit status 1. Started locally by a driver,
it stops when that driver is killed, deleting what it wrote (mapmerge.run.runlock.stop_with_driver).
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import signal
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mapmerge.run import jobclient
from mapmerge.run.logs import run_stage
from mapmerge.run.registry import READS, REGISTRY

PYTHON = "MAPMERGE_PYTHON"  # the interpreter of the jobs, set by shell_command in the process that parses the Snakefile
COMPRESSED = "z:"
LONG = 32 * 1024  # characters of JSON beyond which the spec travels compressed


def shell_command(conda: bool = False) -> str:
    """The `shell:` of every rule: this module, run by the Python that runs snakemake (so a job needs no
    activated environment), or by `python` where the rule's conda environment is active (--sdm conda) and
    where the command is pasted into a shell by hand (it names the log and the spec: the job runs alone)."""
    os.environ[PYTHON] = "python" if conda else sys.executable
    return (
        '"${{' + PYTHON + ':-python}}" -m mapmerge.run.job {log:q} {params.job:q}'
    )  # braces doubled: Snakemake formats it


def encode(spec: dict[str, Any]) -> str:
    """The spec as one command-line argument."""
    text = json.dumps(spec, separators=(",", ":"), default=os.fspath)
    if len(text) <= LONG:
        return text
    return COMPRESSED + base64.b64encode(zlib.compress(text.encode(), 9)).decode()


def decode(text: str) -> dict[str, Any]:
    if text.startswith(COMPRESSED):
        text = zlib.decompress(base64.b64decode(text[len(COMPRESSED) :])).decode()
    return json.loads(text)


def stage_call(spec: dict[str, Any]) -> tuple[Callable[..., Any], dict[str, Any], dict[str, Any]]:
    """(the stage function, its params, its keyword arguments) for a spec; not its `reads` (files the stage opens
    through its config, in the spec for Snakemake and the evaluation cache: mapmerge.run.reads)."""
    function = getattr(importlib.import_module(stage_module(spec)), REGISTRY[spec["rule"]].function)
    params = dict(spec.get("params") or {})
    stage_params = params.pop("stage", None)
    return (
        function,
        stage_params,
        {
            **{name: paths for name, paths in spec.get("inputs", {}).items() if name != READS},
            **spec.get("outputs", {}),
            **spec.get("args", {}),
            **params,
        },
    )


def stage_module(spec: dict[str, Any]) -> str:
    """The name of the module of the spec's stage."""
    return f"mapmerge.stages.{REGISTRY[spec['rule']].module}"


def describe(spec: dict[str, Any]) -> str:
    """'rule fit_surrogate (group=all)'."""
    wildcards = spec.get("wildcards") or {}
    return f"rule {spec['rule']}" + (f" ({', '.join(f'{k}={v}' for k, v in wildcards.items())})" if wildcards else "")


def run_cached(
    spec: dict[str, Any], function: Callable[..., Any], log: str, params: Any, kwargs: dict[str, Any]
) -> None:
    """Run the stage with its log; an evaluation with `cache` in its spec first looks for its tables in the
    evaluation cache and, run, keeps them there (mapmerge.run.evaluation_cache); a batch job's samples too, one by
    one (SampleReuse)."""
    from mapmerge.run import evaluation_cache  # deferred: pyarrow, which a job the job server forks does not need

    hashes: dict[str, str] = {}  # each input file hashed once for the job's keys
    kept = evaluation_cache.entries(spec, hashes) if spec.get("cache") else None
    if kept is None:
        run_stage(function, log, params, **kwargs)
        return
    outputs = spec["outputs"]
    for source in _kept_sources(spec, kept, hashes):
        if run_stage(evaluation_cache.restore, log, source, outputs):
            if source is not kept:  # kept under a key of before: under this key too from now on
                evaluation_cache.keep(outputs, kept)
            evaluation_cache.renote(source[evaluation_cache.PRIMARY])
            return
        print(
            f"mapmerge: {describe(spec)}: a table of it in the evaluation cache does not read; evaluating",
            file=sys.stderr,
        )
    reuse = evaluation_cache.sample_reuse(spec, kept, hashes)
    with evaluation_cache.reusing(reuse):
        run_stage(function, log, params, **kwargs)
    try:
        if evaluation_cache.keep(outputs, kept) and reuse is not None:
            reuse.note(kept[evaluation_cache.PRIMARY])
    except OSError as exc:  # the tables are written; only a later rerun would evaluate them again
        print(f"mapmerge: {describe(spec)}: its tables were not kept in the evaluation cache: {exc}", file=sys.stderr)


def _kept_sources(spec: dict[str, Any], kept: dict[str, Path], hashes: dict[str, str]) -> Iterator[dict[str, Path]]:
    """The job's tables in the evaluation cache, under its key, else under a key of before
    (evaluation_cache.EARLIER_KEYS), the first where all are there."""
    from mapmerge.run import evaluation_cache  # deferred: pyarrow

    if all(path.is_file() for path in kept.values()):
        yield kept
        return
    for earlier in evaluation_cache.EARLIER_KEYS:
        found = evaluation_cache.entries(spec, hashes, earlier)
        if found is not None and found != kept and all(path.is_file() for path in found.values()):
            yield found
            return


def _interrupt_once(signum: int, frame: Any) -> None:
    """Stop the job at the first SIGINT and let a second one (a terminal's Ctrl-C and its driver's,
    runlock.pass_interrupts_to_jobs) not break off the removal of what it was writing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m mapmerge.run.job LOG SPEC  (the command of a workflow rule)", file=sys.stderr)
        return 2
    from mapmerge.run import runlock  # deferred: mapmerge.io's pyarrow (see run_cached)

    log, spec = argv[0], decode(argv[1])
    runlock.stop_with_driver()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt_once)
    try:
        try:
            function, params, kwargs = stage_call(spec)
        except Exception:  # the stage's code does not import: its traceback goes to the log all the same
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            Path(log).write_text(f"mapmerge: {describe(spec)}: its stage cannot be loaded\n{traceback.format_exc()}")
            raise
        run_cached(spec, function, log, params, kwargs)
        runlock.stop_if_driver_gone()  # outputs finished after the driver died are not left for it to record
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # any stage error: one line here, the traceback in the log
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        print(f"mapmerge: {describe(spec)} failed: {message} (traceback in {log})", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    status = jobclient.delegate(sys.argv[1:])  # forked by the run's job server, where there is one
    if status is None:
        status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every output is on disk (written, flushed and renamed) and the log closed: exit without the
    # interpreter's teardown, which takes 0.6 s where torch is loaded (and Snakemake records a job
    # only once its process has exited).
    os._exit(status)
