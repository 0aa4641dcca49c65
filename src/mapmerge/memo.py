"""Results of pure, costly functions kept on disk between processes, for what every workflow start recomputes.

Each driver start (and each SLURM job, which parses the Snakefile again) computes the same things from the same
inputs: the design's space-filling points (for which scipy.stats alone takes about 1 s to import) and the code
fingerprints' syntax trees. A value is kept under a digest of everything it depends on (the caller's key holds
its inputs, the versions of the libraries that compute it and the code that computes it), so a kept value is
never stale: another input or version is another entry. The folder is $MAPMERGE_CACHE_DIR, else
$XDG_CACHE_HOME/mapmerge, else ~/.cache/mapmerge; a folder that cannot be read or written only costs the
computation, and `MAPMERGE_CACHE_DIR=off` turns the memo off.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

OFF = "off"


def memo_dir() -> Path | None:
    """The memo's folder (None where it is turned off)."""
    chosen = os.environ.get("MAPMERGE_CACHE_DIR")
    if chosen == OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home folder known (no HOME, no password entry): nothing is kept
        return None
    return Path(base) / "mapmerge"


def remembered(kind: str, key: Any, compute: Callable[[], Any]) -> Any:
    """compute()'s JSON value for `key` (JSON data naming everything the value depends on): kept on disk, or
    computed and kept."""
    folder = memo_dir()
    if folder is None:
        return compute()
    digest = hashlib.sha256(json.dumps([kind, key], sort_keys=True).encode()).hexdigest()
    path = folder / kind / f"{digest}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{digest}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(value, fh)
            os.replace(tmp, path)  # whole or not at all, whoever else writes the same entry
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError:
        pass
    return value


def source_digest(file: str | os.PathLike) -> str:
    """sha256 of a source file's bytes: the code that computes a value, for its key."""
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()
