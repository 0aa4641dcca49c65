"""Checkpoints whose files hold the same bytes under two keys (mapmerge.run.checkpoint_twins). The driver's refusal
on a real example run: test_bad_input.py's checkpoint-copy cases."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from mapmerge.run.checkpoint_twins import BLOCK, SAMPLES, first_twin


def _bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_copy_is_found_and_distinct_files_are_not(tmp_path):
    pre = _write(tmp_path / "pre.pt", _bytes(3 * BLOCK + 5, 0))
    a = _write(tmp_path / "a.pt", _bytes(3 * BLOCK + 5, 1))
    b = _write(tmp_path / "b.pt", _bytes(100, 2))  # smaller than one block
    assert first_twin({"pre": pre, "a": a, "b": b}) is None
    shutil.copyfile(a, tmp_path / "copy.pt")
    assert first_twin({"pre": pre, "a": a, "b": b, "c": tmp_path / "copy.pt"}) == ("a", "c")
    shutil.copyfile(b, tmp_path / "small_copy.pt")
    assert first_twin({"b": b, "pre": pre, "d": tmp_path / "small_copy.pt"}) == ("b", "d")


def test_files_alike_in_every_sampled_block_are_compared_whole(tmp_path):
    """A fine-tune that changed only bytes between the sketch's blocks (a head, a few layers) is not a twin."""
    size = 4 * SAMPLES * BLOCK
    data = bytearray(_bytes(size, 3))
    pre = _write(tmp_path / "pre.pt", bytes(data))
    data[BLOCK + 10] ^= 0xFF  # after the first sampled block, before the second (at (size - BLOCK) / (SAMPLES - 1))
    task = _write(tmp_path / "task.pt", bytes(data))
    assert (size - BLOCK) // (SAMPLES - 1) > BLOCK + 10
    assert first_twin({"pre": pre, "task": task}) is None
    assert first_twin({"pre": pre, "task": shutil.copyfile(pre, tmp_path / "same.pt")}) == ("pre", "task")


def _sharded(folder: Path, seed: int) -> Path:
    """A sharded checkpoint: two shards and the index naming them (the same index for every seed)."""
    for n in (1, 2):
        _write(folder / f"model-0000{n}-of-00002.safetensors", _bytes(2 * BLOCK, seed * 10 + n))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder / "model.safetensors.index.json"


def test_sharded_checkpoints_are_compared_by_their_shards_not_their_index(tmp_path):
    pre, task = _sharded(tmp_path / "pre", 0), _sharded(tmp_path / "task", 1)
    assert pre.read_bytes() == task.read_bytes()
    assert first_twin({"pre": pre, "task": task}) is None
    shutil.copytree(tmp_path / "task", tmp_path / "task_copy")
    assert first_twin({"pre": pre, "task": task, "copy": tmp_path / "task_copy" / pre.name}) == ("task", "copy")


def test_adapters_with_the_same_weights_and_another_config_differ(tmp_path):
    weights = _bytes(BLOCK, 4)
    first = _write(tmp_path / "a" / "adapter_model.safetensors", weights)
    second = _write(tmp_path / "b" / "adapter_model.safetensors", weights)
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"lora_alpha": 16, "r": 8}))
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps({"lora_alpha": 32, "r": 8}))
    assert first_twin({"a": first, "b": second}) is None
    shutil.copyfile(tmp_path / "a" / "adapter_config.json", tmp_path / "b" / "adapter_config.json")
    assert first_twin({"a": first, "b": second}) == ("a", "b")


def test_a_missing_file_is_left_to_the_header_check(tmp_path):
    pre = _write(tmp_path / "pre.pt", _bytes(10, 5))
    assert first_twin({"pre": pre, "gone": tmp_path / "gone.pt", "hub": "org/model-name"}) is None
