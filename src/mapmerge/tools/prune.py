"""`mapmerge prune`: drop the evaluation cache's tables of settings the run no longer has, and remove the files those
settings left (evaluation batches, rounds' tables, the validation's grid batches and baselines), under the run's lock."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from mapmerge.io import ArtifactError
from mapmerge.layout import Layout
from mapmerge.run import evaluation_cache, runlock
from mapmerge.run.records import is_run
from mapmerge.tools.runfolder import group_dirs, left_behind, listed_names, scan


def prune(results: Path, dry_run: bool = False) -> str:
    """Drop (or with `dry_run` list) the evaluation cache's tables whose jobs' tables now hold other merges'
    (evaluation_cache.prune), and remove the files left from an earlier setting (runfolder.left_behind) with their
    kept tables, holding the run's lock meanwhile; what it did, as text."""
    cache = results / evaluation_cache.FOLDER
    if not is_run(results):  # a run not started (an empty folder): nothing to prune, and no lock file to write there
        return f"{results}: a run not started (no run's files in it): no evaluation cache, nothing left from an earlier setting"
    if dry_run and (driver := runlock.holder(results)) is not None:  # a dry run only reads: it takes no lock
        raise ArtifactError(f"{runlock.busy(results, driver)}; nothing is pruned while it runs")
    try:
        with nullcontext() if dry_run else runlock.holding(results):
            left = left_behind(results, group_dirs(results), {}, scan(results).tasks)
            logs = left.logs(Layout(results))
            vector_mb = sum(p.stat().st_size for p in left.vectors) / 1e6
            found = evaluation_cache.prune(results, dry_run, gone=left.evaluations)
            if not dry_run:
                for path in [*left.evaluations, *left.rounds, *logs, *left.plots, *left.vectors]:
                    path.unlink()
    except runlock.RunLockError as exc:
        raise ArtifactError(f"{exc}; nothing is pruned while it runs") from None
    verb, remove = ("would drop", "would remove") if dry_run else ("dropped", "removed")
    lines = _cache_lines(results, cache, found, verb)
    if found.notes:
        lines.append(f"  {verb} {len(found.notes)} hash notes of files since changed or gone")
    if temporary := found.temporary:
        lines.append(
            f"  {remove} {len(temporary)} temporary file{'s' * (len(temporary) != 1)} of stopped jobs: "
            f"{listed_names(results, temporary, 3)}"
        )
    counts = [(len(left.evals), "evaluation batch", "es"), (len(left.rounds), "round table", "s")]
    counts.append((len(left.validation), "validation table", "s"))
    if any(n for n, _, _ in counts):
        what = ", ".join(f"{n} {name}{plural * (n != 1)}" for n, name, plural in counts if n)
        lines.append(
            f"  {remove} {what} left from an earlier setting (evaluations.parquet "
            f"or validation.parquet, written after them, lists none of them; no job of the run reads them), "
            f"with {len(logs)} job log{'s' * (len(logs) != 1)}: {listed_names(results, [*left.evaluations, *left.rounds])}"
        )
    if left.plots:
        lines.append(
            f"  {remove} {listed_names(results, left.plots)}: the two-task plot, left from an earlier setting (the run "
            "now has other than two tasks; report.md does not show it)"
        )
    if left.vectors:
        lines.append(
            f"  {remove} {listed_names(results, left.vectors)} ({vector_mb:.1f} MB): task vectors of tasks the run no "
            "longer merges (task_vectors.parquet, written after them, lists none of them; a task merged again is "
            "extracted again, its evaluations restored from the cache)"
        )
    return "\n".join(lines)


def _cache_lines(results: Path, cache: Path, found: evaluation_cache.Pruning, verb: str) -> list[str]:
    """What prune found of the evaluation cache's tables (none where the run keeps none: evaluation.cache=false)."""
    if not cache.is_dir():
        return [f"evaluation cache of {results}: none ({cache} does not exist)"]
    kept = [p for paths in found.kept.values() for p in paths]
    lines = [
        f"evaluation cache of {results}: {len(kept) + len(found.dropped)} tables, "
        f"{(found.size(kept) + found.size(found.dropped)) / 1e6:.1f} MB"
    ]
    lines += [
        f"  kept {len(paths)}: {evaluation_cache.KEEP_REASONS[reason]}" for reason, paths in found.kept.items() if paths
    ]
    lines.append(
        f"  {verb} {len(found.dropped)} ({found.size(found.dropped) / 1e6:.1f} MB): "
        "their jobs' tables now hold other merges' results or are left from an earlier setting (settings the run no "
        "longer has; going back to one evaluates again the merges that no table kept holds)"
    )
    return lines
