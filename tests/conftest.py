"""Shared fixtures: a small real benchmark (trained once per test session) and the repo root."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
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
    from mapmerge.builtin.model import prepare_benchmark

    out = tmp_path_factory.mktemp("small_bench")
    prepare_benchmark(SMALL_BENCHMARK, out)
    return out


def job_counts(output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table snakemake prints (empty when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


ARTIFACTS = ("*.parquet", "*.safetensors", "*.png", "*.md")


def snakemake_command(workdir: Path, *args: str, overrides: list[str], experiment: Path | None = None) -> list[str]:
    """The workflow's snakemake command line, run in `workdir` with these config overrides."""
    config = ([f"experiment={experiment}"] if experiment else []) + [f"overrides=[{', '.join(overrides)}]"]
    return [sys.executable, "-m", "snakemake", "--cores", "2", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args,
            "--config", *config]


def run(cmd: list[str], ok: bool = True) -> tuple[int, str]:
    """(exit status, stdout and stderr) of a command; `ok` asserts it succeeded."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:8])}... failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.returncode, proc.stdout


def artifacts(results: Path) -> dict[Path, int]:
    """mtime (ns) of every artifact under a results folder."""
    return {p: p.stat().st_mtime_ns for pattern in ARTIFACTS for p in results.rglob(pattern)}


def wait_for(condition, driver: subprocess.Popen | None = None, timeout: float = 300) -> float:
    """Seconds until `condition()` holds; fails when it times out or `driver` exits first."""
    start = time.monotonic()
    while not condition():
        assert driver is None or driver.poll() is None, f"the driver exited early ({driver.returncode})"
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.1)
    return time.monotonic() - start


def edit_a_function(path: Path) -> None:
    """Change a source file as an edit would: a statement added to its first function (a line at the end where it has none)."""
    text = path.read_text()
    functions = [n for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    last = functions[0].body[-1] if functions else None
    if last is None or last.lineno == functions[0].lineno:
        path.write_text(text + "\nEDITED = True\n")
        return
    lines = text.splitlines(keepends=True)
    lines.insert(last.lineno - 1, " " * last.col_offset + "edited = True\n")
    path.write_text("".join(lines))
    ast.parse(path.read_text())  # still Python
