"""`mapmerge prune`: drop the evaluation cache's tables of settings the run no longer has, and remove the files those
settings left (evaluation batches, rounds' tables, the validation's grid batches and baselines), under the run's lock."""

from __future__ import annotations

from pathlib import Path

from mapmerge.io import ArtifactError
from mapmerge.layout import Layout
from mapmerge.run import evaluation_cache, runlock
from mapmerge.tools.runfolder import LeftBehind, group_dirs, left_behind


def prune(results: Path, dry_run: bool = False) -> str:
    """Drop (or with `dry_run` list) the evaluation cache's tables whose jobs' tables now hold other merges'
    (evaluation_cache.prune), and remove the files left from an earlier setting (runfolder.left_behind) with their
    kept tables, holding the run's lock meanwhile; what it did, as text."""
    if not results.is_dir():
        raise ArtifactError(f"{results}: not a folder")
    if not (results / evaluation_cache.FOLDER).is_dir():  # no driver has kept a table here: nothing to lock
        return f"evaluation cache of {results}: none ({results / evaluation_cache.FOLDER} does not exist)"
    try:
        with runlock.holding(results):
            left = left_behind(results, group_dirs(results), {})
            logs = left.logs(Layout(results))
            found = evaluation_cache.prune(results, dry_run, gone=left.evaluations)
            if not dry_run:
                for path in [*left.evaluations, *left.rounds, *logs]:
                    path.unlink()
    except runlock.RunLockError as exc:
        raise ArtifactError(f"{exc}; nothing is pruned while it runs") from None
    kept = [p for paths in found.kept.values() for p in paths]
    lines = [
        f"evaluation cache of {results}: {len(kept) + len(found.dropped)} tables, "
        f"{(found.size(kept) + found.size(found.dropped)) / 1e6:.1f} MB"
    ]
    lines += [
        f"  kept {len(paths)}: {evaluation_cache.KEEP_REASONS[reason]}" for reason, paths in found.kept.items() if paths
    ]
    verb = "would drop" if dry_run else "dropped"
    lines.append(
        f"  {verb} {len(found.dropped)} ({found.size(found.dropped) / 1e6:.1f} MB): their jobs' tables now hold "
        "other merges' results or are left from an earlier setting (settings the run no longer has; going back to "
        "one evaluates again the merges that no table kept holds)"
    )
    if found.notes:
        lines.append(f"  {verb} {len(found.notes)} hash notes of files since changed or gone")
    counts = [(len(left.evals), "evaluation batch", "es"), (len(left.rounds), "round table", "s")]
    counts.append((len(left.validation), "validation table", "s"))
    if any(n for n, _, _ in counts):
        what = ", ".join(f"{n} {name}{plural * (n != 1)}" for n, name, plural in counts if n)
        lines.append(
            f"  {'would remove' if dry_run else 'removed'} {what} left from an earlier setting (evaluations.parquet "
            f"or validation.parquet, written after them, lists none of them; no job of the run reads them), "
            f"with {len(logs)} job log{'s' * (len(logs) != 1)}: {_names(results, left)}"
        )
    return "\n".join(lines)


def _names(results: Path, left: LeftBehind, shown: int = 6) -> str:
    """The first `shown` files left behind, under the run folder, and how many more."""
    names = sorted(str(p.relative_to(results)) for p in [*left.evaluations, *left.rounds])
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
