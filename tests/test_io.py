import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from mapmerge import __version__
from mapmerge.io import (
    RUN_LOCK,
    ArtifactError,
    atomic_path,
    config_hash,
    read_table,
    table_metadata,
    write_table,
)


def frame() -> pd.DataFrame:
    return pd.DataFrame({"sample": ["s0", "s1"], "value": [0.5, 0.25]})


def test_write_read_roundtrip_with_provenance(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("x")
    path = write_table(frame(), tmp_path / "t.parquet", "fit_surrogate", {"a": 1}, inputs=[source], extra={"k": "v"})
    pd.testing.assert_frame_equal(read_table(path), frame())
    meta = table_metadata(path)
    assert meta["mapmerge.stage"] == "fit_surrogate"
    assert meta["mapmerge.version"] == __version__
    assert meta["mapmerge.config_hash"] == config_hash({"a": 1}) != config_hash({"a": 2})
    assert list(json.loads(meta["mapmerge.inputs"])) == ["input.txt"]
    assert meta["k"] == "v"


def test_same_data_gives_identical_bytes(tmp_path):
    a = write_table(frame(), tmp_path / "a.parquet", "s", {"x": 1})
    b = write_table(frame(), tmp_path / "b.parquet", "s", {"x": 1})
    assert a.read_bytes() == b.read_bytes()


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_names_the_file(tmp_path):
    path = write_table(frame(), tmp_path / "t.parquet", "s")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ArtifactError, match=r"t\.parquet: unreadable Parquet.*delete it and run snakemake again"):
        read_table(path)
    with pytest.raises(ArtifactError, match="missing.parquet: file not found"):
        read_table(tmp_path / "missing.parquet")


def test_artifacts_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_table(frame(), tmp_path / "t.parquet", "s")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_flipped_bit_is_caught_by_the_page_checksums(tmp_path):
    path = write_table(pd.DataFrame({"x": np.linspace(0, 1, 1000)}), tmp_path / "t.parquet", "s")
    data = bytearray(path.read_bytes())
    data[2000] ^= 0x10  # inside the data page of column x
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="t.parquet: unreadable Parquet.*CRC checksum verification failed"):
        read_table(path)


def test_the_hint_names_the_results_folder(tmp_path):
    (tmp_path / "run" / RUN_LOCK).parent.mkdir()
    (tmp_path / "run" / RUN_LOCK).touch()
    path = write_table(frame(), tmp_path / "run" / "groups" / "t.parquet", "s")
    path.write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=f"`mapmerge check {tmp_path / 'run'} --delete`"):
        read_table(path)
