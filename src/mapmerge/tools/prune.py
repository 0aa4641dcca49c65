"""`mapmerge prune`: drop the evaluation cache's tables of settings the run no longer has, under the run's lock."""

from __future__ import annotations

from pathlib import Path

from mapmerge.io import ArtifactError
from mapmerge.run import evaluation_cache, runlock


def prune(results: Path, dry_run: bool = False) -> str:
    """Drop (or with `dry_run` list) the evaluation cache's tables whose jobs' tables now hold other merges'
    (evaluation_cache.prune), holding the run's lock meanwhile; what it dropped and kept, as text."""
    if not results.is_dir():
        raise ArtifactError(f"{results}: not a folder")
    if not (results / evaluation_cache.FOLDER).is_dir():  # no driver has kept a table here: nothing to lock
        return f"evaluation cache of {results}: none ({results / evaluation_cache.FOLDER} does not exist)"
    try:
        with runlock.holding(results):
            found = evaluation_cache.prune(results, dry_run)
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
        "other merges' results (settings the run no longer has; going back to one evaluates again the merges "
        "that no table kept holds)"
    )
    if found.notes:
        lines.append(f"  {verb} {len(found.notes)} hash notes of files since changed or gone")
    return "\n".join(lines)
