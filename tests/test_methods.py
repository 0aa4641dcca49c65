"""Nested MAP, run for real with Snakemake on a small built-in benchmark (Bayesian MAP: test_bayesian_workflow.py).

Nested MAP on 3 tasks: level 1 pairs two models and passes the third up; level 2 merges that pair's
merge with it. The driver is killed while level 2 is being evaluated; the restart keeps level 1.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import artifacts, job_counts, only_running, run, snakemake_command, start_driver, wait_for
from mapmerge.io import read_table
from mapmerge.outputs.report import chosen_merge
from mapmerge.tensors.checkpoints import load_state_dict

pytestmark = pytest.mark.slow

COMMON = [
    "benchmark.width=8",
    "benchmark.pretrain_epochs=10",
    "benchmark.finetune_epochs=6",
    "sampler.factor=2",  # 12 samples for 2 members
    "optimizer.pop_size=40",
    "optimizer.n_gen=40",
    "refine.rounds=1",  # each group's refinement, in one round
]
# 2 evaluation batches per nested group: the driver runs one job at a time, and the kill falls after level 2's first
NESTED = [
    "name=nested",
    "method=nested",
    "benchmark.tasks=[rot90, invert, flip_parity]",
    "evaluation.samples_per_job=6",
    *COMMON,
]


@dataclass
class NestedRun:
    workdir: Path
    results: Path
    level1: dict[Path, int]  # level-1 artifacts and their mtimes at the kill
    restart: str  # output of the run after the kill


def recorded(driver_log: Path, part: str) -> int:
    """Jobs whose log path holds `part` that the driver has recorded as finished (its output)."""
    text = driver_log.read_text()
    jobs = {jobid for log, jobid in re.findall(r"log: (\S+)\s+jobid: (\d+)", text) if part in log}
    return len(jobs & set(re.findall(r"Finished jobid: (\d+)", text)))


@pytest.fixture(scope="module")
def nested(tmp_path_factory) -> NestedRun:
    workdir = tmp_path_factory.mktemp("nested")
    results = workdir / "results" / "nested"
    level2_evals = results / "groups" / "L2g0" / "evals"
    driver = start_driver(workdir, NESTED, start_new_session=True)  # one job at a time (see start_driver)
    try:
        # a level-2 batch done and recorded by the driver (it records a job, then prints "Finished jobid", once the
        # job's process has exited, right after writing its output), and the next batch running, alone (no batch needs
        # the design's table, so its job may come between two batches)
        wait_for(
            lambda: (
                recorded(workdir / "driver.log", "/L2g0/") == len(list(level2_evals.glob("b*.parquet"))) > 0
                and only_running(workdir, "/evaluate_sample/L2g0/")
            ),
            driver,
            timeout=600,
        )
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    level1 = {p: t for p, t in artifacts(results).items() if "L1g0" in p.parts or p.name == "level1.parquet"}
    assert len(list(level2_evals.glob("b*.parquet"))) < 2, "level 2 was done before the kill"
    run(snakemake_command(workdir, "--unlock", overrides=NESTED))
    return NestedRun(workdir, results, level1, run(snakemake_command(workdir, overrides=NESTED))[1])


def test_killed_in_level_2_the_rerun_recomputes_nothing_of_level_1(nested):
    assert len(nested.level1) >= 10  # plan, design, batches, metrics, fit, front, merge, vector, choice, selected
    assert {p: p.stat().st_mtime_ns for p in nested.level1} == nested.level1
    jobs = job_counts(nested.restart)
    assert "prepare_benchmark" not in jobs and "extract_task_vector" not in jobs
    assert jobs.get("merge_group") == 1 and jobs.get("evaluate_selected") == 1  # level 2's only
    assert jobs.get("evaluate_sample", 0) < 2


def test_nested_tree_pairs_closest_models_and_passes_the_odd_one(nested):
    tree = read_table(nested.results / "groups.parquet")
    reference = read_table(nested.results / "reference.parquet").set_index(["model", "task", "metric"])["value"]
    own = {t: reference[(t, t, "accuracy")] for t in ["rot90", "invert", "flip_parity"]}
    level1 = tree[tree["level"] == 1]
    pair = level1.dropna(subset=["group"]).iloc[0]
    passed = level1[level1["group"].isna()].iloc[0]["members"][0]
    gaps = {frozenset((a, b)): abs(own[a] - own[b]) for a in own for b in own if a < b}
    assert frozenset(pair["members"]) == min(gaps, key=gaps.get)  # the closest pair merges first
    assert passed not in pair["members"]
    top = tree[tree["level"] == 2].iloc[0]
    assert top["group"] == "L2g0" and set(top["members"]) == {"L1g0", passed}
    assert sorted(top["tasks"]) == sorted(own) and list(top["member_tasks"][0]) == list(pair["tasks"])
    # level 2 pairs by the merge's measured metric: the equal-weight mean over its tasks
    selected = read_table(nested.results / "groups" / "L1g0" / "selected_evals.parquet")
    measured = selected.groupby("task")["correct"].mean()
    assert top["member_score"][0] == pytest.approx(measured[list(pair["tasks"])].mean())
    assert pair["measured_accuracy"] == pytest.approx(measured.mean())
    report = (nested.results / "report.md").read_text()  # the passed model's row says so, with no nan or None
    shown = report[report.index("## Nested merge tree") : report.index("## Real evaluations")]
    assert f"| 1 | (passed up) | {passed} | " in shown and "nan" not in shown and "None" not in shown


def test_the_final_nested_merge_is_measured_on_every_task(nested):
    selected = read_table(nested.results / "selected.parquet")
    final = selected[selected["group"] == "L2g0"].iloc[0]
    for task in ["rot90", "invert", "flip_parity"]:
        assert 0 <= final[f"measured_accuracy_{task}"] <= 1
    about, per_task = chosen_merge(selected)  # the report's table: the last row's tasks only, one row each
    assert about.set_index("column")["value"]["group"] == "L2g0"
    assert sorted(per_task["task"]) == ["flip_parity", "invert", "rot90"] and not per_task.isna().any().any()
    assert per_task.set_index("task")["measured_accuracy"].to_dict() == {
        t: final[f"measured_accuracy_{t}"] for t in per_task["task"]
    }
    passed = read_table(nested.results / "groups.parquet").iloc[-1]["members"][1]
    merged = load_state_dict(nested.results / "groups" / "L2g0" / "merged.safetensors")
    pre = load_state_dict(nested.results / "checkpoints" / "pretrained.safetensors")
    pair = load_state_dict(nested.results / "groups" / "L1g0" / "vector.safetensors")
    task = load_state_dict(nested.results / "task_vectors" / f"{passed}.safetensors")
    name = "features.0.weight"  # theta_pre + c_pair * (pair merge - theta_pre) + c_task * tau_task
    expected = pre[name] + final["c_L1g0"] * pair[name] + final[f"c_{passed}"] * task[name]
    np.testing.assert_allclose(merged[name], expected, rtol=1e-5, atol=1e-6)
    _, out = run(snakemake_command(nested.workdir, "-n", overrides=NESTED))
    assert "Nothing to be done" in out


def test_the_ledger_counts_every_real_evaluation(nested):
    ledger = read_table(nested.results / "evaluations.parquet")
    by_stage = ledger.groupby("stage")[["models", "task_evaluations"]].sum()
    assert by_stage.loc["evaluate_reference"].tolist() == [4, 12]  # pretrained + 3 fine-tuned, on 3 tasks
    assert by_stage.loc["evaluate_sample"].tolist() == [24, 12 * 2 + 12 * 3]  # 12 samples per group; 2 then 3 tasks
    assert by_stage.loc["evaluate_selected"].tolist() == [2, 2 + 3]
    assert (ledger["failed"] == 0).all()
