import pytest
import torch

from mapmerge.io import ArtifactError
from mapmerge.tensors.checkpoints import (
    load_state_dict,
    safetensors_metadata,
    save_safetensors,
)


def tensors():
    return {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.steps": torch.tensor([3])}


def test_safetensors_roundtrip_with_deterministic_metadata(tmp_path):
    meta = {"z": 1, "a": "x", "m": [1, 2]}
    one = save_safetensors(tensors(), tmp_path / "one.safetensors", metadata=meta)
    two = save_safetensors(tensors(), tmp_path / "two.safetensors", metadata=dict(reversed(list(meta.items()))))
    assert one.read_bytes() == two.read_bytes()
    assert safetensors_metadata(one) == meta
    loaded = load_state_dict(one)
    assert set(loaded) == set(tensors()) and torch.equal(loaded["a.weight"], tensors()["a.weight"])


def test_torch_state_dicts_plain_and_wrapped(tmp_path):
    torch.save(tensors(), tmp_path / "plain.pt")
    torch.save({"state_dict": tensors(), "epoch": 3}, tmp_path / "wrapped.ckpt")
    for name in ("plain.pt", "wrapped.ckpt"):
        assert torch.equal(load_state_dict(tmp_path / name)["a.weight"], tensors()["a.weight"])


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="nothere.safetensors: checkpoint not found"):
        load_state_dict(tmp_path / "nothere.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="junk.safetensors: unreadable checkpoint"):
        load_state_dict(tmp_path / "junk.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ArtifactError, match="list.pt: not a state dict of tensors"):
        load_state_dict(tmp_path / "list.pt")
    save_safetensors({"w": torch.tensor([1.0, float("inf")])}, tmp_path / "inf.safetensors")
    with pytest.raises(ArtifactError, match="inf.safetensors: tensor 'w' holds NaN or inf"):
        load_state_dict(tmp_path / "inf.safetensors")
