"""Checkpoints given under two keys whose files hold the same bytes (a copy of the pretrained checkpoint given as a
task's, one fine-tune saved twice): that task's vector would be zero, or another task's.

Reading every checkpoint whole would cost a large model's run minutes at every start, so each checkpoint is first
sketched (each file's size and a digest of SAMPLES blocks spread over it); only checkpoints whose sketches agree
are compared byte for byte, which ends at the first differing block.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TypeVar

from mapmerge.run.reads import SHARD_INDEX_SUFFIX, behind

SAMPLES = 16
BLOCK = 1 << 16
Key = TypeVar("Key", bound=Hashable)


def checkpoint_files(checkpoint: str | os.PathLike) -> tuple[Path, ...]:
    """The files whose bytes make a checkpoint: a sharded index's shards (every fine-tune of one model has the same
    index), else the file and the files read with it (a PEFT adapter's config)."""
    path = Path(checkpoint)
    shards = behind(path) if path.name.endswith(SHARD_INDEX_SUFFIX) else []
    return tuple(map(Path, shards)) if shards else (path, *map(Path, behind(path)))


def _sketch(files: tuple[Path, ...]) -> tuple[tuple[int, str], ...]:
    """Each file's size and the digest of SAMPLES blocks of BLOCK bytes spread evenly over it."""
    sketch = []
    for file in files:
        size = file.stat().st_size
        digest = hashlib.blake2b(digest_size=16)
        with file.open("rb") as handle:
            for n in range(SAMPLES):
                handle.seek(max(size - BLOCK, 0) * n // max(SAMPLES - 1, 1))
                digest.update(handle.read(BLOCK))
        sketch.append((size, digest.hexdigest()))
    return tuple(sketch)


def sketch(checkpoint: str | os.PathLike) -> str:
    """A short digest of a checkpoint's files (their sizes and sampled blocks; _sketch): the same bytes moved to
    another path keep it, and the few MiB it reads take milliseconds for a model of any size."""
    return hashlib.blake2b(repr(_sketch(checkpoint_files(checkpoint))).encode(), digest_size=16).hexdigest()


def first_twin(checkpoints: Mapping[Key, str | os.PathLike]) -> tuple[Key, Key] | None:
    """(an earlier key, a later key) of the first two checkpoints, in the mapping's order, whose files hold the same
    bytes; None when all differ. Checkpoints with a missing file are skipped: the header check names them."""
    seen: dict[tuple[tuple[int, str], ...], list[tuple[Key, tuple[Path, ...]]]] = {}
    for key, checkpoint in checkpoints.items():
        files = checkpoint_files(checkpoint)
        if not all(file.is_file() for file in files):
            continue
        candidates = seen.setdefault(_sketch(files), [])
        for earlier, earlier_files in candidates:
            if all(filecmp.cmp(a, b, shallow=False) for a, b in zip(earlier_files, files)):
                return earlier, key
        candidates.append((key, files))
    return None
