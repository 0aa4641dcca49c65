"""examples/custom_mlp: a model defined outside the package, run through the real workflow."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from conftest import EXAMPLE_RUN, copy_run, snakemake_command
from conftest import example_run as shared_example_run
from mapmerge.io import read_table
from mapmerge.tensors.checkpoints import load_state_dict

pytestmark = pytest.mark.slow


def snakemake(example: Path, workdir: Path, *args: str, overrides: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = snakemake_command(
        workdir, *args, overrides=[*EXAMPLE_RUN, *overrides], experiment=example / "experiment.yaml"
    )
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def load_model_module(example: Path) -> ModuleType:
    """The example's model.py, imported under a unique name (no sys.path change)."""
    spec = importlib.util.spec_from_file_location("custom_mlp_model", example / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> tuple[Path, Path]:
    """(example, workdir): a copy of examples/custom_mlp with the checkpoints its script made, and this module's copy
    of the session's finished run of it (conftest.example_run)."""
    example, workdir = shared_example_run(tmp_path_factory)
    return example, copy_run(workdir, tmp_path_factory.mktemp("example") / "work")


def test_example_front_choice_and_merged_model(example_run):
    example, workdir = example_run
    res = workdir / "results" / "custom_mlp"
    model = load_model_module(example)
    tasks = list(model.TASKS)
    front = read_table(res / "pareto.parquet")
    assert {f"c_{t}" for t in tasks} | {f"accuracy_{t}" for t in tasks} <= set(front.columns)
    selected = read_table(res / "selected.parquet")
    assert len(selected) == 1
    for task in tasks:
        assert 0 <= selected[f"measured_accuracy_{task}"].iloc[0] <= 1
    assert selected["weight_stripes_0"].iloc[0] == pytest.approx(0.5)  # the experiment's preference
    merged = load_state_dict(res / "groups" / "all" / "merged.safetensors")
    model.build().load_state_dict(merged)  # strict: the merge fits the user's model
    pretrained = load_state_dict(example / "checkpoints" / "pretrained.pt")
    assert merged["head.weight"].equal(pretrained["head.weight"])  # excluded tensors stay pretrained


# A second run of it has nothing to do: test_bad_input.py's last dry run, on the same shared run.
def test_changed_evaluator_reruns_every_evaluation(example_run):
    example, workdir = example_run
    proc = snakemake(example, workdir, "-n", overrides=("model.tasks.stripes_0.evaluator.n=400",))
    jobs = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", proc.stdout.split("Job stats:")[1].split("total")[0], re.M)
    }
    n_batches = len(list((workdir / "results/custom_mlp/groups/all/evals").glob("b*.parquet")))
    assert jobs["evaluate_reference"] == 1 and jobs["evaluate_sample"] == n_batches and jobs["evaluate_selected"] == 1
    assert "extract_task_vector" not in jobs and "sample_coefficients" not in jobs


def test_missing_checkpoint_names_the_file(example_run, tmp_path):
    copy = Path(shutil.copytree(example_run[0], tmp_path / "custom_mlp", ignore=shutil.ignore_patterns("__pycache__")))
    missing = copy / "checkpoints" / "stripes_60.pt"
    missing.unlink()
    workdir = tmp_path / "work"
    proc = snakemake(copy, workdir)
    assert proc.returncode != 0
    assert str(missing) in proc.stdout + proc.stderr
    assert not (workdir / "results" / "custom_mlp" / "pareto.parquet").exists()


def test_a_checkpoint_replaced_with_an_older_mtime_reruns_what_reads_it(example_run, tmp_path):
    """cp -p, tar x and rsync -a restore a file's mtime: other bytes older than the task vector made from them, which
    Snakemake's mtime check passes over; each reader's `stamps` param (size and mtime) reruns it."""
    torch = pytest.importorskip("torch")
    copy = Path(shutil.copytree(example_run[0], tmp_path / "custom_mlp", ignore=shutil.ignore_patterns("__pycache__")))
    workdir, reference = tmp_path / "work", "results/custom_mlp/reference.parquet"  # and every task vector
    assert snakemake(copy, workdir, reference).returncode == 0
    checkpoint = copy / "checkpoints" / "stripes_60.pt"
    original, other = shutil.copy2(checkpoint, tmp_path / "original.pt"), tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "trunk.0.weight": state["trunk.0.weight"] + 0.3}, other)
    os.utime(other, ns=(1_577_836_800 * 10**9,) * 2)  # 2020
    shutil.copy2(other, checkpoint)  # as cp -p
    vector = workdir / "results/custom_mlp/task_vectors/stripes_60.safetensors"
    assert checkpoint.stat().st_mtime < vector.stat().st_mtime
    proc = snakemake(copy, workdir, reference, "-n")
    assert proc.returncode == 0 and "Params have changed since last execution" in proc.stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout.split("Job stats:")[1].split("total")[0], re.M))
    assert (
        jobs == {"extract_task_vector": "1", "evaluate_reference": "1"} and "wildcards: task=stripes_60" in proc.stdout
    )
    shutil.copy2(original, checkpoint)  # its own bytes and mtime back: nothing to do
    proc = snakemake(copy, workdir, reference, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def test_the_models_folder_moved_is_the_same_model_and_nothing_is_evaluated_again(example_run, tmp_path):
    """The experiment's folder moved elsewhere (the same bytes): not refused as another model's run; what reads the
    files reruns, and each evaluation comes back from the evaluation cache, whose keys hold no paths."""
    torch = pytest.importorskip("torch")
    copy = Path(shutil.copytree(example_run[0], tmp_path / "custom_mlp", ignore=shutil.ignore_patterns("__pycache__")))
    workdir, reference = tmp_path / "work", "results/custom_mlp/reference.parquet"
    assert snakemake(copy, workdir, reference).returncode == 0
    written = (workdir / reference).read_bytes()
    moved = copy.rename(tmp_path / "moved")
    proc = snakemake(moved, workdir, reference)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (workdir / "results/custom_mlp/logs/evaluate_reference.log").read_text()
    assert "start restore" in log and "from the evaluation cache" in log and "evaluate_reference" not in log
    assert (workdir / reference).read_bytes() == written
    other = Path(shutil.copytree(moved, tmp_path / "other", ignore=shutil.ignore_patterns("__pycache__")))
    state = torch.load(other / "checkpoints" / "pretrained.pt", weights_only=True)
    torch.save({**state, "trunk.0.weight": state["trunk.0.weight"] + 0.3}, other / "checkpoints" / "pretrained.pt")
    proc = snakemake(other, workdir, reference, "-n")
    assert proc.returncode == 1 and "holds a run of another model" in proc.stderr
