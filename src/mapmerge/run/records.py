"""Whether Snakemake's records of a run folder's files are where this run looks for them.

Snakemake reruns a job whose params or code changed only if it holds a record of the settings its files were made
with: in the working directory's .snakemake/, under each file's path as the rules name it. A run folder moved or
copied to another path, a folder named by an absolute path and run from another working directory, or a working
directory whose .snakemake/ was removed has files without records, and then a changed setting reruns nothing: the
run says "Nothing to be done" and reports the old settings' results as the new ones'.

Every successful driver writes HOME into the folder (the path the rules name, the working directory, the model);
`check` refuses, before any job, a folder made under another path or working directory, or whose working directory
lost its records. One run with --forceall makes every file again under this path (each evaluation comes back from
the folder's evaluation cache) and records it here. It also refuses a folder that holds a run of another model: a
name given to two experiments would replace one run's results with the other's. A model moved or copied to another
path (the same bytes: its checkpoint's sketch, checkpoint_twins.sketch) is the same model: its run goes on, every job
again as Snakemake sees other files, each evaluation from the evaluation cache, whose keys do not hold where the files
lie (evaluation_cache.key).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mapmerge.errors import ConfigError
from mapmerge.io import RUN_LOCK, atomic_path
from mapmerge.run.checkpoint_twins import sketch

HOME = ".mapmerge.home"  # in the run folder: {"results": as the rules name it, "cwd", "model", "sketch"}
BUILTIN = "the built-in benchmark"
RECORDS = Path(".snakemake") / "metadata"  # Snakemake's records (its file backend), relative to the working directory
# options under which the check does not apply: every job runs again (--forceall), or none runs and nothing is reported
# as this run's result (--unlock, --lint, --cleanup-metadata, --report: it shows the files as they are); --touch marks
# the files as made with these settings
EXEMPT = ("--forceall", "--unlock", "--lint", "--touch", "--cleanup-metadata", "--report")
EXEMPT_SHORT = "Ft"  # -F (--forceall), -t (--touch), alone or among other one-letter options (-nF)


# what a run writes into its folder from its start on: the driver's lock, the jobs' logs, then its artifacts
OWN_MARKERS = (RUN_LOCK, HOME)  # what only mapmerge's driver writes: a folder of task_vectors/ may be anyone's
RUN_MARKERS = (*OWN_MARKERS, "logs", "benchmark.parquet", "task_vectors", "levels", "groups")


def is_run(folder: Path) -> bool:
    """Whether `folder` holds a run's files (started, or finished)."""
    return any((folder / name).exists() for name in RUN_MARKERS)


def run_holding(folder: Path) -> Path | None:
    """The run folder that `folder` lies inside (results/demo for results/demo/groups), as `folder` names it where it
    can; None where it is not inside one. A folder above counts as a run's by OWN_MARKERS, not by names such as logs/
    that a user's own folders have."""
    if is_run(folder):
        return None
    for above in Path(os.path.abspath(folder)).parents:
        if any((above / name).exists() for name in OWN_MARKERS):
            return above if folder.is_absolute() else Path(os.path.relpath(above))
    return None


def check_own_folder(results: str) -> None:
    """ConfigError where the run folder exists and holds files, none of them a run's (results_dir=. with name=docs):
    the run would write its report, plots and logs among them; or where it lies inside another run's folder
    (results_dir=results/demo), among that run's files."""
    folder = Path(results)
    holder = run_holding(folder)
    if holder is not None:
        raise ConfigError(
            f"{results}: lies inside the run folder {holder}; give the run a folder of its own (name=..., "
            "results_dir=...)"
        )
    if shown := foreign_files(folder):
        raise ConfigError(
            f"{results}: exists and holds files that are not a mapmerge run's ({shown}); give the run a folder of its "
            "own (name=..., results_dir=...)"
        )


def foreign_files(folder: Path) -> str | None:
    """The first names in a folder that holds files, none of them a run's ('adapters.md, artifacts.md, cli.md, ...');
    None for a run's folder, an empty one, or none."""
    if not folder.is_dir() or is_run(folder):
        return None
    held = sorted(p.name for p in folder.iterdir())
    return ", ".join(held[:3]) + (", ..." if len(held) > 3 else "") if held else None


def exempt(argv: Sequence[str]) -> bool:
    """Whether snakemake's command line `argv` runs every job again or none (EXEMPT)."""
    return any(arg in EXEMPT or (re.fullmatch(r"-[A-Za-z]+", arg) and set(arg[1:]) & set(EXEMPT_SHORT)) for arg in argv)


def model_of(cfg: Mapping[str, Any]) -> str:
    """The model a resolved config merges: its pretrained checkpoint, or the built-in benchmark."""
    return BUILTIN if cfg["model"]["builtin"] else str(cfg["model"]["pretrained"])


def _sketch(model: str) -> str | None:
    """The sketch of a model_of's checkpoint (checkpoint_twins.sketch); None for the built-in benchmark, or a checkpoint
    that does not read."""
    if model == BUILTIN:
        return None
    try:
        return sketch(model)
    except OSError:
        return None


def record(results: str, model: str) -> None:
    """In a driver whose run succeeded: write HOME (the folder's path as the rules name it, the working directory, the
    model, model_of, and its checkpoint's sketch)."""
    home = Path(results) / HOME
    if Path(results).is_dir():
        record = {"results": str(results), "cwd": os.getcwd(), "model": model, "sketch": _sketch(model)}
        with atomic_path(home) as tmp:
            tmp.write_text(json.dumps(record))


def recorded_spelling(results: str) -> str:
    """`results` as the folder's HOME records it where that names the same folder from the same working directory
    (`/home/me/proj/results/demo` or `./results/demo` for `results/demo`): Snakemake keeps its records by the path as
    written, so another spelling was refused and cost a --forceall."""
    try:
        home = json.loads((Path(results) / HOME).read_text())
    except (OSError, ValueError):
        return results
    written = home.get("results")
    same = isinstance(written, str) and home.get("cwd") == os.getcwd()
    return written if same and written != results and Path(written).resolve() == Path(results).resolve() else results


def check(results: str, model: str) -> None:
    """ConfigError where the folder holds a run of another model (a name given to two experiments; the same
    checkpoint moved to another path is the same model), or its files were made under another path or working
    directory (HOME), or this working directory has no Snakemake records: a changed setting would rerun nothing
    there."""
    try:
        home = json.loads((Path(results) / HOME).read_text())
    except (OSError, ValueError):
        return  # a new folder, or one no driver of this version has finished
    if home.get("model", model) != model and (home.get("sketch") is None or home["sketch"] != _sketch(model)):
        raise ConfigError(
            f"{results}: holds a run of another model ({home['model']}; this run's: {model}): give this run its own "
            "name (name=...), or run snakemake once with --forceall to replace that run (a new model reruns every "
            "job anyway)"
        )
    cwd = os.getcwd()
    if home.get("results") != str(results):
        why = f"its files were made as {home.get('results')} (from {home.get('cwd')}), and Snakemake keeps its records"
        why += " of them under that path"
    elif Path(results).is_absolute() and home.get("cwd") != cwd:
        why = f"its files were made from {home.get('cwd')}, whose .snakemake/ keeps Snakemake's records of them"
    elif not RECORDS.is_dir():
        why = f"this working directory ({cwd}) has no Snakemake records ({RECORDS} is missing)"
    else:
        return
    raise ConfigError(
        f"{results}: {why}, so here a changed setting would rerun nothing; run snakemake once with --forceall (every "
        "evaluation comes back from the folder's evaluation cache)"
    )
