"""mapmerge.memo: values kept on disk between processes, under a key naming everything they depend on."""

from __future__ import annotations

import ast

import pytest

from mapmerge import memo
from mapmerge.core import sampling
from mapmerge.run import fingerprint


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPMERGE_CACHE_DIR", str(tmp_path / "memo"))
    return tmp_path / "memo"


def fails(*args):
    raise AssertionError("computed again")


def test_a_kept_value_comes_back_without_computing(folder):
    assert memo.remembered("k", {"a": 1}, lambda: [1.5, "x"]) == [1.5, "x"]
    assert memo.remembered("k", {"a": 1}, fails) == [1.5, "x"]
    assert len(list((folder / "k").glob("*.json"))) == 1
    assert memo.remembered("k", {"a": 2}, lambda: 3) == 3  # another key, another entry
    assert memo.remembered("other", {"a": 1}, lambda: 4) == 4  # another kind too


def test_a_damaged_entry_is_computed_again_and_replaced(folder):
    memo.remembered("k", [1], lambda: 1)
    (entry,) = (folder / "k").glob("*.json")
    entry.write_text('{"trunc')
    assert memo.remembered("k", [1], lambda: 2) == 2
    assert memo.remembered("k", [1], fails) == 2


def test_turned_off_or_unwritable_it_only_computes(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPMERGE_CACHE_DIR", memo.OFF)
    assert memo.memo_dir() is None
    assert [memo.remembered("k", [1], lambda i=i: i) for i in range(2)] == [0, 1]
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("MAPMERGE_CACHE_DIR", str(blocked / "memo"))  # under a file: cannot be made
    assert [memo.remembered("k", [1], lambda i=i: i) for i in range(2)] == [0, 1]
    assert blocked.read_text() == ""


def test_the_default_folder_is_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MAPMERGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert memo.memo_dir() == tmp_path / "mapmerge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert memo.memo_dir() == tmp_path / ".cache" / "mapmerge"


def test_without_a_home_folder_nothing_is_kept(monkeypatch):
    """A job environment without HOME (and no password entry) computes, instead of failing the driver's start."""
    monkeypatch.delenv("MAPMERGE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> None:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(memo.Path, "home", no_home)
    assert memo.memo_dir() is None
    assert [memo.remembered("k", [1], lambda i=i: i) for i in range(2)] == [0, 1]


@pytest.mark.parametrize("kind", ["sobol", "lhs"])
@pytest.mark.parametrize("n", [0, 1, 13])
def test_space_filling_points_from_the_memo_are_the_computed_bits(folder, monkeypatch, kind, n):
    sampler = {"kind": kind, "lower": -0.1, "upper": 1.2}
    computed = sampling._space_filling(kind, 3, n, -0.1, 1.2, 7)
    first = sampling.space_filling(3, n, sampler, 7)
    monkeypatch.setattr(sampling, "_space_filling", fails)
    kept = sampling.space_filling(3, n, sampler, 7)
    for points in (first, kept):
        assert points.dtype == computed.dtype and points.shape == computed.shape == (n, 3)
        assert points.tobytes() == computed.tobytes()
    with pytest.raises(AssertionError, match="computed again"):
        sampling.space_filling(3, n, sampler, 8)  # another seed is another entry


def test_code_digests_from_the_memo_are_the_parsed_ones(folder, monkeypatch, tmp_path):
    source = tmp_path / "mod.py"
    source.write_text('"""doc"""\nimport os\nfrom . import b\n\ndef f():\n    from .c import d, e\n    return 1\n')
    tree = ast.parse(source.read_bytes())
    parsed = (fingerprint.code_digest(tree), ((0, "os", None), (1, "", ("b",)), (1, "c", ("d", "e"))))
    assert fingerprint._source(source) == parsed  # computed, and kept
    monkeypatch.setattr(fingerprint, "_parsed", {})
    monkeypatch.setattr(fingerprint, "_digest_and_imports", fails)
    fingerprint._parse.cache_clear()
    assert fingerprint._source(source) == parsed  # from the memo, as tuples again
