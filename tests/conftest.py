"""Shared fixtures: a small real benchmark (trained once per test session) and the repo root."""

from __future__ import annotations

import re
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


def job_counts(output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table snakemake prints (empty when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
