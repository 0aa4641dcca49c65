"""Artifacts on disk: atomic Parquet tables and safetensors files with provenance metadata."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mapmerge import __version__

TEMP_SUFFIX = ".tmp"  # atomic_path writes `.<name>.<random>.tmp` beside the target
_pending: set[Path] = set()  # temporary files this process is writing
_written: list[Path] = []  # files this process has renamed into place
_commit = threading.Lock()  # held while renaming, and by undo_writes until the process exits
RUN_LOCK = ".mapmerge.lock"  # in every results folder a driver has run on (see mapmerge.run.runlock)


class ArtifactError(RuntimeError):
    """A file on disk is missing, unreadable or inconsistent; the message names the file."""


def recompute_hint(path: str | os.PathLike) -> str:
    """How to have a bad artifact recomputed, naming the results folder it lies in."""
    folder = next((p for p in Path(path).parents if (p / RUN_LOCK).exists()), "RESULTS")
    return (
        "delete it and run snakemake again to recompute it and what depends on it "
        f"(`mapmerge check {folder} --delete` finds and deletes every such file)"
    )


def config_hash(config: Any) -> str:
    """Stable short hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def provenance(stage: str, config: Any = None, inputs: Iterable[str | os.PathLike] = ()) -> dict[str, str]:
    """Metadata recorded in every artifact: stage, package version, config hash, input hashes."""
    return {
        "mapmerge.stage": stage,
        "mapmerge.version": __version__,
        "mapmerge.config_hash": config_hash(config),
        "mapmerge.inputs": json.dumps({Path(p).name: file_hash(p) for p in sorted(map(str, inputs))}, sort_keys=True),
    }


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; flush it to disk and rename it onto `path` only if the block succeeds.

    The file gets the usual permissions (0666 less the umask), whatever the writer used.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = tmp.stat().st_mode
    _pending.add(tmp)
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        with _commit:
            os.replace(tmp, path)
            _written.append(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _pending.discard(tmp)


def undo_writes() -> None:
    """Delete every file this process wrote or is writing through atomic_path; call it only right before exiting.

    A job stopped half-way then leaves none of its outputs, so snakemake simply runs it again.
    """
    _commit.acquire()
    for path in [*_pending, *_written]:
        path.unlink(missing_ok=True)


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    stage: str,
    config: Any = None,
    inputs: Iterable[str | os.PathLike] = (),
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write `df` as Parquet atomically, with provenance (and `extra`) in the key-value metadata."""
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.update({k.encode(): v.encode() for k, v in provenance(stage, config, inputs).items()})
    meta.update({k.encode(): str(v).encode() for k, v in (extra or {}).items()})
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)
    return Path(path)


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet artifact (page checksums verified); a missing or corrupt file raises ArtifactError naming it."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable Parquet ({exc}); {recompute_hint(path)}") from exc


def table_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key-value metadata of a Parquet artifact (pandas' own entry left out)."""
    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise ArtifactError(f"{path}: unreadable Parquet ({exc}); {recompute_hint(path)}") from exc
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"pandas"}


def safetensors_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor name -> shape of a safetensors file, from its header alone (no tensor is read)."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ArtifactError(f"{path}: unreadable safetensors header ({exc})") from exc
    return {name: list(info["shape"]) for name, info in header.items() if name != "__metadata__"}
