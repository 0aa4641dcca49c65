"""`mapmerge check`: whether a run folder's artifacts read, cheaply (artifact_damage, what `mapmerge status`
counts) or whole (artifact_problem); the bad ones and leftover temporary files listed, and deleted on request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mapmerge.core.metrics import METRICS
from mapmerge.io import ArtifactError, read_table, recompute_hint
from mapmerge.run import runlock

ARTIFACT_SUFFIXES = (".parquet", ".safetensors")


def artifact_damage(path: Path) -> str | None:
    """Why an artifact that exists does not read as what its suffix says, judged cheaply; None when it does.

    A Parquet file: its footer (schema, row groups), not its pages. A safetensors file: its header and
    that the file is as long as the header says. Other files are not looked into. What lies deeper (a
    damaged page, a tensor that is not finite) is for `mapmerge check`, which reads everything.
    """
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        try:
            pq.read_metadata(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others
            return f"not a readable Parquet file ({' '.join(str(exc).split())})"
    elif path.suffix == ".safetensors":
        return _safetensors_damage(path)
    return None


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        start = fh.read(8)
        length = int.from_bytes(start, "little") if len(start) == 8 else -1
        if not 0 < length <= size - 8:
            return f"not a safetensors file (its {size} bytes hold no header)"
        try:
            header = json.loads(fh.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            return f"not a safetensors file (unreadable header: {exc})"
    if 8 + length + end != size:
        return f"truncated or padded safetensors file (its header says {8 + length + end} bytes, it has {size})"
    return None


# tables that select, export, plot and summary read, by file name: none of them has a run made without rows
NONEMPTY_TABLES = ("front.parquet", "choice.parquet", "samples.parquet", "metrics.parquet", "reference.parquet")
INTERVAL_ENDS = ("_lo", "_hi")  # a prediction's interval bounds: <metric>_<task>_lo, _hi
PRETRAINED = "pretrained"  # reference.parquet's name of the pretrained model


def content_problem(path: Path, table: pd.DataFrame, tasks: Sequence[str] = ()) -> str | None:
    """Why a group's table that reads is not one a run makes (a table edited by hand): no rows where a run writes some
    (NONEMPTY_TABLES), a coefficient (`c_<task>`) or a front's prediction (`<metric>_<task>`) that is not a finite
    number, a front's or choice's prediction missing for one of its tasks (or of `tasks`), reference.parquet
    without the rows of the pretrained model, or of a fine-tuned one on its own task; None when none of them, and
    for other tables (the run's pareto.parquet holds no coefficient for the members of other groups)."""
    if path.name not in NONEMPTY_TABLES:
        return None
    if table.empty:
        return f"{path}: no rows, where a run writes some"
    columns = [str(c) for c in table.columns]
    if path.name == "reference.parquet":
        return _reference_gap(path, table, tasks)
    members = [c.removeprefix("c_") for c in columns if c.startswith("c_")]
    # the front's predictions too: <metric>_<task> (not its interval's _lo and _hi, nor choice's other columns)
    predicted = [c for c in columns if not c.startswith("c_") and c.endswith(tuple(f"_{t}" for t in members))]
    for column in [f"c_{t}" for t in members] + (predicted if path.name == "front.parquet" else []):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            kind = "coefficient" if column.startswith("c_") else "prediction"
            return f"{path}: {kind} column {column} holds a value that is not a finite number"
    if path.name in ("front.parquet", "choice.parquet"):
        return _prediction_gap(path, columns, tasks)
    return None


def _prediction_gap(path: Path, columns: Sequence[str], tasks: Sequence[str]) -> str | None:
    """A metric the table predicts for some task but not for another of its tasks (or of `tasks`)."""
    predicted: dict[str, set[str]] = {}  # metric -> the tasks it has a prediction column of
    for metric in METRICS:
        if found := {c.removeprefix(f"{metric}_") for c in columns if c.startswith(f"{metric}_")} - {""}:
            predicted[metric] = {t for t in found if not t.endswith(INTERVAL_ENDS)}
    expected = set(tasks).union(*predicted.values())
    for metric, found in predicted.items():
        if missing := sorted(expected - found):
            return f"{path}: no prediction column {metric}_{missing[0]} (its other tasks have {metric}_<task>)"
    return None


def _reference_gap(path: Path, table: pd.DataFrame, tasks: Sequence[str]) -> str | None:
    """reference.parquet without a row the choice reads: the pretrained model on a task, a fine-tuned model on its
    own task (for each metric; the tasks: those it names, and `tasks`)."""
    if not {"model", "task", "metric"} <= set(table.columns):
        return None
    models = set(table["model"].astype(str))
    named = sorted(set(tasks) | set(table["task"].astype(str)) | (models - {PRETRAINED}), key=str)
    held = set(zip(table["model"].astype(str), table["task"].astype(str), table["metric"].astype(str)))
    for metric in sorted(set(table["metric"].astype(str))):
        for task in named:
            for model in (PRETRAINED, task):
                if (model, task, metric) not in held:
                    return f"{path}: no {metric} row of model {model} on task {task}"
    return None


def require_columns(path: Path, table: pd.DataFrame, columns: Sequence[str]) -> None:
    """ArtifactError naming the table and the first of `columns` it lacks (a table edited by hand)."""
    if missing := [c for c in columns if c not in table.columns]:
        raise ArtifactError(f"{path}: no column {missing[0]}, where a run writes one; {recompute_hint(path)}")


def read_checked(path: Path, tasks: Sequence[str] = ()) -> pd.DataFrame:
    """read_table, and ArtifactError where the table's content is not one a run makes (content_problem), of these
    tasks where given."""
    table = read_table(path)
    if why := content_problem(path, table, tasks):
        raise ArtifactError(f"{why}; {recompute_hint(path)}")
    return table


def artifact_problem(path: Path) -> str | None:
    """Why a Parquet or safetensors artifact does not read back whole, or as a run makes it (content_problem); None
    when it does."""
    from mapmerge.tensors.checkpoints import verify_safetensors  # deferred: torch

    try:
        if path.suffix == ".parquet":
            read_checked(path)
        else:
            verify_safetensors(path)
    except ArtifactError as exc:
        return str(exc).removesuffix(f"; {recompute_hint(path)}")
    return None


def check(results: Path, delete: bool = False) -> tuple[str, int]:
    """Report (and with `delete` remove) unreadable artifacts and leftover temporary files; (text, exit status)."""
    driver = runlock.holder(results)
    files = sorted(p for p in results.rglob("*") if p.is_file())
    artifacts = [p for p in files if p.suffix in ARTIFACT_SUFFIXES and not p.name.startswith(".")]
    bad = [(p, why) for p in artifacts if (why := artifact_problem(p))]
    # while a driver runs, temporary files are outputs being written
    leftovers = [] if driver else [p for p in files if runlock.TEMPORARY.fullmatch(p.name)]
    lines = [f"bad: {why}" for _, why in bad] + [f"leftover: {p} (temporary file of a stopped job)" for p in leftovers]
    lines.append(
        f"{len(artifacts)} artifacts checked under {results}: {len(bad)} bad, {len(leftovers)} leftover temporary files"
    )
    if driver:
        lines.append(
            f"a snakemake driver ({runlock.describe(driver)}) is running on this folder; nothing is deleted while it runs"
        )
    if delete and not driver and (bad or leftovers):
        kept = []
        for path in [p for p, _ in bad] + leftovers:
            try:
                path.unlink()
            except OSError as exc:  # a run folder the user may not write
                kept.append(f"not deleted: {path} ({exc.strerror})")
        deleted = len(bad) + len(leftovers) - len(kept)
        lines += kept
        if deleted:
            lines.append(
                f"deleted {deleted} file{'s' * (deleted != 1)}; run snakemake again to recompute them and what depends "
                "on them"
            )
        return "\n".join(lines), 1 if kept else 0
    return "\n".join(lines), 1 if bad else 0
