"""The workflow on a real SLURM cluster: a single node on this machine (workflow/scripts/slurm-cluster.sh),
submitted with the SLURM profile (workflow/profiles/slurm), checked against a local run of the same config."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import yaml

from conftest import REPO, job_counts
from mapmerge.io import read_table
from mapmerge.outputs.report import HTML_TABLES
from test_workflow import BASE, finished_run

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CLUSTER = REPO / "workflow" / "scripts" / "slurm-cluster.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
RUN_LIMIT = 600  # seconds; the SLURM plugin can hang ignoring SIGTERM, so runs are killed with SIGKILL
TABLES = [
    "pareto.parquet",
    "measured.parquet",
    "selected.parquet",
    "reference.parquet",
    "task_vectors.parquet",
    *(f"groups/all/{name}.parquet" for name in ["samples", "metrics", "surrogate", "front"]),
]
GROUPS = yaml.safe_load((PROFILE / "profile.yaml").read_text())["groups"]  # rule -> job group
AGGREGATE_OUTPUTS = {
    "pareto.parquet",
    "measured.parquet",
    "selected.parquet",
    "groups.parquet",
    "report.md",
    "plots/front_2d.png",
    "plots/front_parallel.png",
    "logs/aggregate.log",
    "logs/report_tables.log",
    *(f"report/{name}.html" for name in HTML_TABLES),
}


class SlurmJob(NamedTuple):
    id: str
    comment: str  # rule_<rule>[_wildcards_<values>], or rule_<group>_<rules> for a group job
    state: str
    start: datetime | None  # None while pending
    end: datetime | None


class Runs(NamedTuple):
    slurm: Path
    local: Path


def command(workdir: Path, *args: str, slurm: bool = True, overrides: Sequence[str] = ()) -> list[str]:
    """snakemake on the small benchmark of test_workflow.py, on SLURM with the profile or locally."""
    executor = ["--cores", "2"]
    if slurm:  # --cores caps a group job's CPUs at those of the local cluster's one node (nproc)
        cores = str(len(os.sched_getaffinity(0)))
        executor = ["--workflow-profile", str(PROFILE), "--executor", "slurm", "--cores", cores]
        # the first status check 1 s after a submission or a finish, not the profile's 5 s: the plugin waits 10 s
        # longer after each check that finds nothing, so a 7-16 s job here was seen only 20 s after its start, and
        # the run of BASE took 254 s against 191 s (docs/slurm.md, "Trying it on one machine")
        executor += ["--slurm-init-seconds-before-status-checks", "1"]
    return [
        "timeout",
        "-s",
        "KILL",
        str(RUN_LIMIT),
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        *executor,
        *args,
        "--config",
        f"overrides=[{', '.join([*BASE, *overrides])}]",
    ]


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-5000:]}")
    return proc


def slurm_jobs(workdir: Path) -> list[SlurmJob]:
    """SLURM's own records of the jobs that ran in `workdir` (squeue keeps them for MinJobAge=600 s)."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%k|%T|%S|%e|%Z"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        job_id, comment, state, start, end, where = line.split("|")
        if Path(where).resolve() == workdir.resolve():
            start, end = (None if t in ("N/A", "Unknown") else datetime.fromisoformat(t) for t in (start, end))
            jobs.append(SlurmJob(job_id, comment, state, start, end))
    return sorted(jobs, key=lambda j: int(j.id))


def results(workdir: Path) -> Path:
    return workdir / "results" / "wf"


def copy_run(workdir: Path, tmp_path: Path) -> Path:
    """A copy of a finished run (outputs and Snakemake's records, times kept) to change without touching it."""
    target = tmp_path / "run"
    shutil.copytree(workdir, target, symlinks=True)
    return target


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """The local SLURM cluster; started (and stopped afterwards) here unless it already runs."""
    if not Path("/etc/debian_version").exists():
        pytest.skip("the local SLURM cluster (workflow/scripts/slurm-cluster.sh) needs a Debian-based machine")
    started_here = subprocess.run([str(CLUSTER), "status"], capture_output=True).returncode != 0
    proc = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"could not start the local SLURM cluster:\n{proc.stdout}{proc.stderr}")
    yield
    if started_here:
        subprocess.run([str(CLUSTER), "stop"], check=True, timeout=120)


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> Runs:
    """The config of test_workflow.py run on SLURM and, at the same time, locally: test_workflow.py's run, which is
    made once per test session (the same command without the SLURM executor), here or by test_workflow.py."""
    slurm_dir = tmp_path_factory.mktemp("slurm")
    slurm = subprocess.Popen(command(slurm_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        local = copy_run(finished_run(tmp_path_factory), tmp_path_factory.mktemp("local"))
    finally:
        output = slurm.communicate()[0]
    assert slurm.returncode == 0, f"snakemake failed ({slurm.returncode}):\n{output[-5000:]}"
    return Runs(slurm_dir, local)


def stage_times(log: Path) -> tuple[datetime, datetime]:
    """When the stage in this log (written by mapmerge.run.logs.run_stage) started and finished."""
    lines = log.read_text().splitlines()
    assert " INFO mapmerge: start " in lines[0] and " INFO mapmerge: done " in lines[-1], log
    return tuple(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in (lines[0], lines[-1]))


def runs_stage(job: SlurmJob, stage: Path) -> bool:
    """Whether the job's comment names the stage whose log is logs/<stage>.log (<rule>[/<wildcard values>])."""
    rule, *values = stage.parts
    if rule in GROUPS:
        return job.comment.startswith(f"rule_{GROUPS[rule]}_") and rule in job.comment
    return job.comment == f"rule_{rule}" + (f"_wildcards_{'_'.join(values)}" if values else "")


def test_every_stage_ran_in_a_completed_slurm_job(runs):
    jobs = slurm_jobs(runs.slurm)
    assert jobs and all(job.state == "COMPLETED" for job in jobs), jobs
    logs = results(runs.slurm) / "logs"
    second = timedelta(seconds=1)  # squeue's times are whole seconds
    hosts: dict[str, SlurmJob] = {}
    for log in sorted(logs.rglob("*.log")):
        stage = log.relative_to(logs).with_suffix("")
        start, done = stage_times(log)
        found = [
            job for job in jobs if runs_stage(job, stage) and job.start - second <= start and done <= job.end + second
        ]
        assert len(found) == 1, f"{stage}: no single SLURM job ran it (from {start} to {done}): {jobs}"
        hosts[stage.as_posix()] = found[0]
    assert set(hosts.values()) == set(jobs)
    # job groups: both evaluation batches in one job, the light per-group chain in another
    assert hosts["evaluate_sample/all/b0000"] == hosts["evaluate_sample/all/b0001"]
    fit = ["collect_metrics", "fit_surrogate", "pareto_front"]  # merge_group alone (nested MAP's levels lead back)
    assert len({hosts[f"{rule}/all"] for rule in fit}) == 1


def test_results_equal_a_local_run(runs):
    for table in TABLES:
        pd.testing.assert_frame_equal(read_table(results(runs.slurm) / table), read_table(results(runs.local) / table))
    merged = "groups/all/merged.safetensors"
    assert filecmp.cmp(results(runs.slurm) / merged, results(runs.local) / merged, shallow=False)
    # the SLURM jobs kept their evaluation tables under the same keys as the local jobs did, in another folder
    kept = {p.name for p in (results(runs.slurm) / ".cache" / "evaluations").glob("*.parquet")}
    assert kept == {p.name for p in (results(runs.local) / ".cache" / "evaluations").glob("*.parquet")}
    # one per batch and round, the choice's, and the reference models' two tables
    assert len(kept) == len(list((results(runs.slurm) / "groups" / "all" / "evals").glob("*.parquet"))) + 3


def test_second_run_has_nothing_to_do(runs):
    assert "Nothing to be done" in run(command(runs.slurm, "-n")).stdout


def test_a_cancelled_job_is_resubmitted_and_only_it_reruns(runs, tmp_path):
    workdir = copy_run(runs.slurm, tmp_path)
    files = {
        p: p.stat().st_mtime_ns for p in results(workdir).rglob("*") if p.is_file() and not p.name.startswith(".")
    }  # artifacts and logs, not lock files
    proc = subprocess.Popen(
        command(workdir, "--forcerun", "aggregate"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not (running := [job for job in slurm_jobs(workdir) if job.state == "RUNNING"]):
        assert time.monotonic() < deadline and proc.poll() is None, "the job never ran"
        time.sleep(0.2)
    subprocess.run(["scancel", running[0].id], check=True)
    output = proc.communicate()[0]
    assert proc.returncode == 0, output[-5000:]
    assert job_counts(output) == {"aggregate": 1, "report_tables": 1, "all": 1}
    assert f"SLURM-job '{running[0].id}' failed, SLURM status is: 'CANCELLED'" in output
    assert [(job.comment, job.state) for job in slurm_jobs(workdir)] == [
        ("rule_aggregate", "CANCELLED"),
        ("rule_aggregate", "COMPLETED"),
        ("rule_report_tables", "COMPLETED"),
    ]
    changed = {p.relative_to(results(workdir)).as_posix() for p, t in files.items() if p.stat().st_mtime_ns != t}
    assert changed == AGGREGATE_OUTPUTS
    for table in ["pareto.parquet", "selected.parquet"]:
        pd.testing.assert_frame_equal(read_table(results(workdir) / table), read_table(results(runs.local) / table))


def test_a_gpu_request_reaches_sbatch(runs, tmp_path):
    workdir = copy_run(runs.slurm, tmp_path)
    proc = run(
        command(
            workdir,
            "--verbose",
            "--forcerun",
            "evaluate_sample",
            "--until",
            "evaluate_sample",
            overrides=["resources.evaluate.gpu=1"],
        ),
        check=False,
    )
    calls = [line for line in proc.stdout.splitlines() if line.startswith("sbatch call: ")]
    # one job for both batches, which share one GPU and run one after the other (2 x 30 minutes)
    assert calls and all(" --gpus=1" in call and " -t 60 " in call for call in calls), proc.stdout[-5000:]
    assert proc.returncode != 0  # and this cluster, which has no GPU, refuses it
    assert not slurm_jobs(workdir)
