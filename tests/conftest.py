"""Shared fixtures: a small real benchmark (trained once per test session) and the repo root."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL_TASKS = ["rot90", "invert", "flip_parity"]
SMALL_BENCHMARK = {"tasks": SMALL_TASKS, "seed": 0, "width": 8, "pretrain_epochs": 15, "finetune_epochs": 8}


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory) -> Path:
    """Checkpoints of a small built-in benchmark: pretrained.safetensors and one file per task."""
    from mapmerge.benchmark import prepare_benchmark

    out = tmp_path_factory.mktemp("small_bench")
    prepare_benchmark(SMALL_BENCHMARK, out)
    return out
