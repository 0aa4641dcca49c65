import json

import pandas as pd
import pytest

from mapmerge import __version__
from mapmerge.io import ArtifactError, atomic_path, config_hash, read_table, table_metadata, write_table


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
    with pytest.raises(ArtifactError, match=r"t\.parquet: unreadable Parquet.*rerun"):
        read_table(path)
    with pytest.raises(ArtifactError, match="missing.parquet: file not found"):
        read_table(tmp_path / "missing.parquet")
