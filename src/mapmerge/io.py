"""Artifacts on disk: atomic Parquet tables and safetensors files with provenance metadata."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mapmerge import __version__


class ArtifactError(RuntimeError):
    """A file on disk is missing, unreadable or inconsistent; the message names the file."""


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
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        pq.write_table(table, tmp)
    return Path(path)


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet artifact; a missing or corrupt file raises ArtifactError naming it."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ArtifactError(
            f"{path}: unreadable Parquet ({exc}); delete it and rerun snakemake to recompute it"
        ) from exc


def table_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key-value metadata of a Parquet artifact (pandas' own entry left out)."""
    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise ArtifactError(f"{path}: unreadable Parquet ({exc})") from exc
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"pandas"}
