import pytest
import torch

from conftest import SMALL_TASKS
from mapmerge.io import ArtifactError
from mapmerge.tensors.checkpoints import load_state_dict, save_safetensors
from mapmerge.tensors.taskvectors import (
    extract_task_vector,
    merged_names,
    merged_state,
    task_vector_table,
)


def test_task_vector_is_finetuned_minus_pretrained(small_bench, tmp_path):
    out = tmp_path / "rot90.safetensors"
    stats = extract_task_vector(
        small_bench / "pretrained.safetensors", small_bench / "rot90.safetensors", ["*"], ["head.*"], out, "rot90"
    )
    pre, ft, tau = (
        load_state_dict(p) for p in (small_bench / "pretrained.safetensors", small_bench / "rot90.safetensors", out)
    )
    assert tau and not any(name.startswith("head.") for name in tau)
    for name, value in tau.items():
        torch.testing.assert_close(pre[name] + value, ft[name])
    assert stats["n_params"] == sum(v.numel() for v in tau.values()) and stats["norm"] > 0


def test_merged_state_is_task_arithmetic(small_bench, tmp_path):
    paths = []
    for task in SMALL_TASKS[:2]:
        paths.append(tmp_path / f"{task}.safetensors")
        extract_task_vector(
            small_bench / "pretrained.safetensors",
            small_bench / f"{task}.safetensors",
            ["*"],
            ["head.*"],
            paths[-1],
            task,
        )
    pre = load_state_dict(small_bench / "pretrained.safetensors")
    taus = [load_state_dict(p) for p in paths]
    merged = merged_state(pre, taus, [0.3, 0.7])
    name = sorted(taus[0])[0]
    torch.testing.assert_close(merged[name], pre[name] + 0.3 * taus[0][name] + 0.7 * taus[1][name])
    torch.testing.assert_close(merged["head.weight"], pre["head.weight"])
    table = task_vector_table(dict(zip(SMALL_TASKS[:2], paths)))
    assert table.loc[0, f"cos_{SMALL_TASKS[0]}"] == pytest.approx(1.0)
    assert -1 < table.loc[0, f"cos_{SMALL_TASKS[1]}"] < 1


def test_patterns():
    state = {
        "features.0.weight": torch.zeros(2),
        "head.weight": torch.zeros(2),
        "steps": torch.zeros(1, dtype=torch.long),
    }
    assert merged_names(state, ["*"], ["head.*"]) == ["features.0.weight"]
    assert merged_names(state, ["head.*"], []) == ["head.weight"]


def test_mismatched_checkpoints_are_named(small_bench, tmp_path):
    pre_path = small_bench / "pretrained.safetensors"
    ft = load_state_dict(small_bench / "rot90.safetensors")
    name = sorted(ft)[0]
    save_safetensors({**ft, name: torch.zeros(3, 3)}, tmp_path / "shape.safetensors")
    with pytest.raises(ArtifactError, match=rf"shape.safetensors: tensor '{name}' has shape \(3, 3\)"):
        extract_task_vector(pre_path, tmp_path / "shape.safetensors", ["*"], [], tmp_path / "o.safetensors", "x")
    save_safetensors({k: v for k, v in ft.items() if k != name}, tmp_path / "missing.safetensors")
    with pytest.raises(ArtifactError, match=rf"missing.safetensors: lacks tensor '{name}'"):
        extract_task_vector(pre_path, tmp_path / "missing.safetensors", ["*"], [], tmp_path / "o.safetensors", "x")
    bad = {**ft, name: torch.full_like(ft[name], float("nan"))}
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(ArtifactError, match=rf"nan.pt: tensor '{name}' holds NaN"):
        extract_task_vector(pre_path, tmp_path / "nan.pt", ["*"], [], tmp_path / "o.safetensors", "x")
    with pytest.raises(ArtifactError, match="no tensor matches"):
        extract_task_vector(
            pre_path, small_bench / "rot90.safetensors", ["nothing.*"], [], tmp_path / "o.safetensors", "x"
        )
    assert not (tmp_path / "o.safetensors").exists()
