"""Shared fixtures and helpers: the repo root, a small real benchmark and the example's checkpoints (each made once
per test session, whatever the number of pytest-xdist workers), finished runs shared the same way, and the order
in which the test files start."""

from __future__ import annotations

import ast
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL_TASKS = ["rot90", "invert", "flip_parity"]
SMALL_BENCHMARK = {"tasks": SMALL_TASKS, "seed": 0, "width": 8, "pretrain_epochs": 15, "finetune_epochs": 8}
EXAMPLE = REPO / "examples" / "custom_mlp"


# --- spreading the tests over pytest-xdist workers ---------------------------------------------------------------
#
# `make test` runs pytest -n 3 --dist loadfile --no-loadscope-reorder: a file's tests run on one worker, one after
# the other (they share its module fixtures), and the files start in the order below, the longest first, so that
# the long ones overlap and the short ones fill the end; files not named follow in their usual order. It is only a
# start order, from measured durations: nothing depends on it, and every test passes alone or in any order.
LONGEST_FIRST = [
    "test_slurm.py",  # mostly waiting for SLURM's status checks: the other workers use the cores meanwhile
    "test_faults.py",
    "test_transformers.py",
    "test_workflow.py",
    "test_methods.py",
    "test_bad_input.py",  # makes the shared custom_mlp run (conftest.example_run) that test_example.py reads later
    "test_lora.py",
    "test_lm_eval.py",
    "test_bayesian_workflow.py",
    "test_validation.py",
    "test_openclip.py",
    "test_example.py",
    "test_evaluate.py",
    "test_cli.py",
    "test_report_html.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), position[id(item)]))


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist workers share the machine's cores: torch in each worker gets its share, not all of them
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


def as_user(argv: list[str]) -> list[str]:
    """A mapmerge command line run without root's override of file permissions (CI and containers run as root, whom
    a folder's mode does not stop), so that a read-only folder is one."""
    command = [sys.executable, "-m", "mapmerge.tools.cli", *argv]
    if os.geteuid() != 0:
        return command
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *command]


# --- things made once per test session -----------------------------------------------------------------------------


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this test session sees: the session's base temporary folder (without xdist,
    the process's own)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(exist_ok=True)
    return root


def build_once(tmp_path_factory: pytest.TempPathFactory, key: str, build: Callable[[Path], object]) -> Path:
    """The folder `key` made by build(folder) once per test session: the first worker to ask builds it while the
    others wait for it (a file lock); after a build that fails, the next one to ask tries again. Treat it as
    read-only: copy what a test changes (copy_run)."""
    root = shared_root(tmp_path_factory)
    done = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_dir():
            partial = root / f"{key}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            build(partial)
            partial.rename(done)
    return done


def copy_run(workdir: Path, target: Path) -> Path:
    """A copy of a snakemake working folder (outputs and Snakemake's records, mtimes kept): Snakemake sees in it
    the run it saw in the original, and the copy can change without touching it."""
    shutil.copytree(workdir, target, symlinks=True)
    return target


@pytest.fixture(scope="session", autouse=True)
def memo_of_the_session(tmp_path_factory) -> None:
    """mapmerge.memo's folder for this test session (its drivers and jobs inherit it): the suite starts as CI does,
    with nothing kept, and writes nothing into the home folder."""
    os.environ["MAPMERGE_CACHE_DIR"] = str(shared_root(tmp_path_factory) / "memo")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory) -> Path:
    """Checkpoints of a small built-in benchmark: pretrained.safetensors and one file per task (read-only)."""

    def build(out: Path) -> None:
        from mapmerge.builtin.model import prepare_benchmark

        prepare_benchmark(SMALL_BENCHMARK, out)  # trains on benchmark.threads' default, as the stage does

    return build_once(tmp_path_factory, "small_bench", build)


def example_checkpoints(tmp_path_factory: pytest.TempPathFactory, hidden: int = 32) -> Path:
    """A folder of examples/custom_mlp's checkpoints, made by its make_checkpoints.py (--hidden as given) once per
    session (read-only)."""

    def build(out: Path) -> None:
        example = shutil.copytree(EXAMPLE, out / "example", ignore=shutil.ignore_patterns("checkpoints", "__pycache__"))
        script = [
            sys.executable,
            str(example / "make_checkpoints.py"),
            str(out / "checkpoints"),
            "--hidden",
            str(hidden),
        ]
        assert str(out / "checkpoints" / "pretrained.pt") in run(script)[1]  # it says what it wrote

    return build_once(tmp_path_factory, f"custom_mlp_h{hidden}", build) / "checkpoints"


def copy_example(tmp_path_factory: pytest.TempPathFactory, target: Path) -> Path:
    """A copy of examples/custom_mlp at `target` with its checkpoints (made by its script, once per session)."""
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("checkpoints", "__pycache__"))
    shutil.copytree(example_checkpoints(tmp_path_factory), target / "checkpoints")
    return target


# The run every test of a finished examples/custom_mlp run shares (example_run): the example's experiment file as
# it is, a smaller design and optimizer, and two refinement rounds with the default points per round.
EXAMPLE_RUN = ["sampler.factor=1.5", "optimizer.pop_size=30", "optimizer.n_gen=20", "refine.rounds=2"]


def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(example, workdir): a copy of examples/custom_mlp with its checkpoints, and the working folder of a finished
    run of its experiment.yaml with EXAMPLE_RUN, both made once per session (read-only: copy_run the workdir to
    run snakemake in it). The example keeps its path, since the run's config holds its files' absolute paths."""
    example = build_once(tmp_path_factory, "custom_mlp_example", lambda out: copy_example(tmp_path_factory, out / "ex"))
    example = example / "ex"

    def build(out: Path) -> None:
        run(snakemake_command(out / "work", overrides=EXAMPLE_RUN, experiment=example / "experiment.yaml"))

    return example, build_once(tmp_path_factory, "custom_mlp_run", build) / "work"


# --- running snakemake and reading what it did -----------------------------------------------------------------------


def job_counts(output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table snakemake prints (empty when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


ARTIFACTS = ("*.parquet", "*.safetensors", "*.png", "*.md")


def snakemake_command(
    workdir: Path,
    *args: str,
    overrides: list[str],
    experiment: Path | None = None,
    cores: int = 2,
    snakefile: Path = REPO / "Snakefile",
) -> list[str]:
    """The workflow's snakemake command line, run in `workdir` on `cores` cores with these config overrides."""
    config = ([f"experiment={experiment}"] if experiment else []) + [f"overrides=[{', '.join(overrides)}]"]
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(cores),
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        *args,
        "--config",
        *config,
    ]


def start_driver(workdir: Path, overrides: list[str], **popen) -> subprocess.Popen:
    """snakemake started in `workdir` on one core, its output going to workdir/driver.log: one job at a time, so
    that when every finished job is recorded there, the job running has just started."""
    with open(workdir / "driver.log", "w") as log:
        return subprocess.Popen(
            snakemake_command(workdir, overrides=overrides, cores=1), stdout=log, stderr=subprocess.STDOUT, **popen
        )


# Snakemake's own first line where it reads the workflow's default profile (profiles/default): not mapmerge's output
PROFILE_NOTICE = "Using workflow specific profile profiles/default for setting default command line arguments."


def error_lines(stderr: str) -> list[str]:
    """A snakemake run's non-blank stderr lines but Snakemake's notice of the default profile (PROFILE_NOTICE)."""
    return [line for line in stderr.splitlines() if line.strip() and line != PROFILE_NOTICE]


def only_running(workdir: Path, part: str) -> bool:
    """Whether the one job a start_driver driver runs has a log path holding `part`, every job it started before
    being recorded as finished (its output, driver.log). A SIGKILL then falls in no job's window between writing its
    outputs and the driver's record of them (a job killed in that window leaves a file marked incomplete)."""
    text = (workdir / "driver.log").read_text()
    finished = set(re.findall(r"Finished jobid: (\d+)", text))
    running = [log for log, jobid in re.findall(r"log: (\S+)\s+jobid: (\d+)", text) if jobid not in finished]
    return len(running) == 1 and part in running[0]


# The workflow's stages in order, as `mapmerge status` lists them (its rules but `all` and the validate_* ones).
# From fit_surrogate on they form a chain, each reading what the one before wrote: a change that reaches one of
# these reruns it and every stage after it.
STAGES = (
    "prepare_benchmark",
    "extract_task_vector",
    "task_vector_table",
    "evaluate_reference",
    "plan_level",
    "sample_coefficients",
    "propose_round",
    "refine_round",
    "evaluate_sample",
    "evaluate_round",
    "collect_metrics",
    "fit_surrogate",
    "pareto_front",
    "merge_group",
    "evaluate_selected",
    "ledger",
    "aggregate",
    "report_tables",
)


def stages_from(first: str) -> set[str]:
    """`first` and every stage after it in STAGES (for a stage from fit_surrogate on: what reruns when it does)."""
    return set(STAGES[STAGES.index(first) :])


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
