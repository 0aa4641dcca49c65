"""Tests of the built-in digits benchmark: data, model, training, evaluation and task conflict."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mapmerge.builtin.model import (
    TASK_NAMES,
    DigitsEvaluator,
    build_model,
    prepare_benchmark,
    task_data,
)
from mapmerge.stages.prepare_benchmark import run_prepare_benchmark
from mapmerge.tensors.checkpoints import load_state_dict

DEFAULT_TASKS = TASK_NAMES[:4]
State = dict[str, torch.Tensor]
TINY = {"tasks": ["rot90", "mod3"], "pretrain_epochs": 2, "finetune_epochs": 1, "seed": 3}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("bench")
    return out, prepare_benchmark({}, out)


def _model(state: State) -> torch.nn.Module:
    model = build_model()
    model.load_state_dict(state)
    return model.eval()


def _merge(pre: State, tuned: dict[str, State], coefs: dict[str, float], head: str) -> State:
    """theta_pre + sum_i c_i (theta_i - theta_pre) on all but head.*, which comes from task `head`."""
    return {
        name: tuned[head][name]
        if name.startswith("head.")
        else value + sum(c * (tuned[task][name] - value) for task, c in coefs.items())
        for name, value in pre.items()
    }


def _accuracy(evaluator: DigitsEvaluator, state: State) -> float:
    return float(evaluator(_model(state), "cpu")["correct"].mean())


def test_task_names() -> None:
    assert len(TASK_NAMES) == 8 and len(set(TASK_NAMES)) == 8
    assert DEFAULT_TASKS == ("rot90", "invert", "flip_parity", "mod3")


def test_build_model_names() -> None:
    model = build_model(width=8)
    names = [name for name, _ in model.named_parameters()]
    assert all(name.split(".")[0] in ("features", "body", "head") for name in names)
    assert [n for n in names if n.startswith("head.")] == ["head.weight", "head.bias"]
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 10
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_task_data_shares_one_split() -> None:
    x, y = task_data("digits", "test")
    assert x.shape == (540, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(task_data("digits", "train")[1]) == 1797 - 540
    assert torch.equal(task_data("flip_parity", "test")[1], y % 2)
    assert torch.equal(task_data("rot90", "test")[0], torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(task_data("invert", "test")[0], 1 - x)
    assert torch.equal(task_data("noisy", "test", seed=1)[0], task_data("noisy", "test", seed=1)[0])
    assert not torch.equal(task_data("digits", "test", seed=1)[1], y)


def test_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown benchmark task 'rot45'.*rot90, invert"):
        prepare_benchmark({"tasks": ["rot90", "rot45"]}, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="rot45"):
        DigitsEvaluator("rot45")


def _stage(folder: Path) -> list[str]:
    """Stage prepare_benchmark on TINY into folder: the names of the files it wrote."""
    run_prepare_benchmark(
        {"benchmark": TINY},
        pretrained=folder / "pretrained.safetensors",
        finetuned=[folder / "rot90.safetensors", folder / "mod3.safetensors"],
        table=folder / "benchmark.parquet",
    )
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
def test_same_config_gives_identical_files(tmp_path: Path) -> None:
    """The stage's checkpoints and benchmark.parquet, byte for byte (no training time in the table), whatever
    torch's thread count the caller has set: training runs on benchmark.threads and restores it."""
    first = _stage(tmp_path / "a")
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    torch.set_num_threads(other)
    try:
        second = _stage(tmp_path / "b")
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(threads)
    assert first == second == ["benchmark.parquet", "mod3.safetensors", "pretrained.safetensors", "rot90.safetensors"]
    for file in first:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


@pytest.mark.slow
def test_benchmark_table_and_checkpoints(bench: tuple[Path, pd.DataFrame]) -> None:
    out, table = bench
    assert list(table.columns) == ["model", "task", "accuracy", "seconds", "file"]
    assert list(table["model"]) == ["pretrained", *DEFAULT_TASKS]
    assert list(table["task"]) == ["digits", *DEFAULT_TASKS]
    states = [load_state_dict(out / file) for file in table["file"]]
    assert all({k: v.shape for k, v in s.items()} == {k: v.shape for k, v in states[0].items()} for s in states)
    assert table.loc[0, "accuracy"] > 0.95


@pytest.mark.slow
def test_finetuned_beats_pretrained_on_own_task(bench: tuple[Path, pd.DataFrame]) -> None:
    out, _ = bench
    pre = load_state_dict(out / "pretrained.safetensors")
    for task in DEFAULT_TASKS:
        tuned = {task: load_state_dict(out / f"{task}.safetensors")}
        evaluator = DigitsEvaluator(task)
        finetuned = _accuracy(evaluator, tuned[task])
        assert finetuned > 0.9, task
        assert finetuned > _accuracy(evaluator, pre) + 0.2, task
        assert finetuned > _accuracy(evaluator, _merge(pre, tuned, {}, head=task)) + 0.2, task


@pytest.mark.slow
def test_default_tasks_conflict(bench: tuple[Path, pd.DataFrame]) -> None:
    """Adding task a's vector (c_a: 0 -> 1, c_b = 1) lowers task b's accuracy for most pairs."""
    out, _ = bench
    pre = load_state_dict(out / "pretrained.safetensors")
    tuned = {task: load_state_dict(out / f"{task}.safetensors") for task in DEFAULT_TASKS}
    evaluators = {task: DigitsEvaluator(task) for task in DEFAULT_TASKS}
    drops = {
        (a, b): _accuracy(evaluators[b], _merge(pre, tuned, {b: 1.0}, head=b))
        - _accuracy(evaluators[b], _merge(pre, tuned, {a: 1.0, b: 1.0}, head=b))
        for a, b in itertools.permutations(DEFAULT_TASKS, 2)
    }
    assert sum(drop >= 0.05 for drop in drops.values()) >= 8, drops


@pytest.mark.slow
def test_evaluator_rows_and_no_side_effects(bench: tuple[Path, pd.DataFrame]) -> None:
    out, table = bench
    model = _model(load_state_dict(out / "pretrained.safetensors"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluator = DigitsEvaluator("digits")
    rows = evaluator(model, "cpu")
    assert list(rows.columns) == ["example", "correct", "loss", "scores", "target"]
    assert [str(t) for t in rows.dtypes] == ["int64", "bool", "float64", "object", "int64"]
    scores = np.stack(rows["scores"].to_numpy())  # the logits: the right class's scores highest where correct
    assert scores.shape == (540, 10) and (rows["correct"] == (scores.argmax(axis=1) == rows["target"])).all()
    assert np.array_equal(rows["example"], np.arange(540))
    assert (rows["loss"] >= 0).all()
    assert rows["correct"].mean() == pytest.approx(table.loc[0, "accuracy"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pd.testing.assert_frame_equal(evaluator(model, torch.device("cpu")), rows)
    assert len(DigitsEvaluator("mod3", split="train", batch_size=100)(model, "cpu")) == 1797 - 540
