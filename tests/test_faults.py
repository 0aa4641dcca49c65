"""Faults during real runs of the workflow, and what a user types after each (README, "When something goes wrong").

One run on the built-in benchmark is killed mid-way (two more drivers are tried on it while it runs),
restarted, then has an evaluation batch corrupted. Another is stopped by Ctrl-C in its evaluation batches and
run again. A copy of examples/custom_mlp with an evaluator
that returns NaN for some merges runs with and without evaluation.on_error and surrogate.missing.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import (
    artifacts,
    copy_example,
    job_counts,
    only_running,
    run,
    snakemake_command,
    stages_from,
    start_driver,
    wait_for,
)
from mapmerge.io import read_table
from mapmerge.run import jobclient, runlock
from mapmerge.tools.cli import main

pytestmark = pytest.mark.slow

BASE = [
    "name=faults",
    "benchmark.tasks=[rot90, flip_parity]",
    "benchmark.width=8",
    "benchmark.pretrain_epochs=5",
    "benchmark.finetune_epochs=3",
    "sampler.factor=1.5",
    "optimizer.pop_size=30",
    "optimizer.n_gen=20",
    "evaluation.samples_per_job=3",  # 9 samples: 3 evaluation batches
    "refine.rounds=0",  # the design's batches alone (refinement rounds: tests/test_workflow.py)
]


def command(workdir: Path, *args: str, overrides: list[str] = BASE, experiment: Path | None = None) -> list[str]:
    return snakemake_command(workdir, *args, overrides=overrides, experiment=experiment)


def job_processes(workdir: Path, forked: bool = True) -> list[int]:
    """Job processes running in `workdir`: `python -m mapmerge.run.job` (a job the driver started, not the driver),
    and with `forked` the run's job server and the jobs it forked (`-m mapmerge.run.jobserver`)."""
    modules = {b"mapmerge.run.job", b"mapmerge.run.jobserver"} if forked else {b"mapmerge.run.job"}
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and modules & set((proc / "cmdline").read_bytes().split(b"\0"))
                and (proc / "cwd").resolve() == workdir
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def recorded_batches(workdir: Path) -> int:
    """evaluate_sample jobs the driver has recorded as finished (its output, driver.log)."""
    return (workdir / "driver.log").read_text().count("(Rule: evaluate_sample)")


@dataclass
class Killed:
    workdir: Path
    results: Path
    driver_pid: int
    same_folder: tuple[int, str]  # a second driver in the same working directory
    elsewhere: tuple[int, str]  # a second driver in another working directory, same results folder
    orphans_gone_s: float  # seconds until the killed driver's jobs were gone
    kept: dict[Path, int]  # artifacts (and mtimes) when the jobs were gone
    batches_missing: int


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Killed:
    """A run whose driver is killed with SIGKILL while evaluation batches run."""
    workdir = tmp_path_factory.mktemp("killed")
    results = workdir / "results" / "faults"
    evals = results / "groups" / "all" / "evals"
    driver = start_driver(workdir, BASE)  # one job at a time (see start_driver)
    try:
        wait_for(lambda: runlock.holder(results) is not None, driver)
        elsewhere = command(
            tmp_path_factory.mktemp("elsewhere"), overrides=[*BASE, f"results_dir={workdir / 'results'}"]
        )
        others = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for cmd in (command(workdir), elsewhere)
        ]
        same_folder, elsewhere_run = [(p.wait(timeout=300), p.stdout.read()) for p in others]
        # a batch done and recorded by the driver (it prints "Finished jobid" after recording a job, which it does
        # once the job's process has exited, right after writing its output), and the next batch running, alone (no
        # batch needs the design's table, so its job may come between two batches)
        wait_for(
            lambda: (
                recorded_batches(workdir) == len(list(evals.glob("b*.parquet"))) > 0
                and only_running(workdir, "/evaluate_sample/")
                and job_processes(workdir, forked=False)
            ),
            driver,
        )
    finally:
        driver.kill()
        driver.wait()
    orphans_gone_s = wait_for(lambda: not job_processes(workdir), timeout=30)
    kept = artifacts(results)
    missing = 3 - len(list(evals.glob("b*.parquet")))
    assert missing > 0, "every batch was done before the kill"
    return Killed(workdir, results, driver.pid, same_folder, elsewhere_run, orphans_gone_s, kept, missing)


def test_a_second_driver_in_the_same_folder_is_refused(killed):
    status, out = killed.same_folder
    assert status != 0 and "Directory cannot be locked" in out  # snakemake's own lock
    assert f"mapmerge: a snakemake driver (pid {killed.driver_pid} on " in out  # ...and it is not a stale one
    assert "do not --unlock meanwhile" in out  # Snakemake's own message advises --unlock


def test_a_second_driver_elsewhere_on_the_same_results_is_refused(killed):
    status, out = killed.elsewhere
    assert status != 0
    assert f"{killed.workdir / 'results' / 'faults'}: another snakemake driver (pid {killed.driver_pid} on " in out
    assert f"in {killed.workdir})" in out and "Finished jobid" not in out
    refusal = (
        f"mapmerge: {killed.workdir / 'results' / 'faults'}: another snakemake driver (pid {killed.driver_pid} on "
    )
    assert any(line.startswith(refusal) for line in out.splitlines()) and "Traceback" not in out, out[-2000:]


def test_jobs_stop_with_their_killed_driver(killed):
    assert killed.orphans_gone_s < 10
    logs = [p.read_text() for p in (killed.results / "logs").rglob("*.log")]
    assert any(jobclient.FORKED_NOTE in text for text in logs)  # the server's jobs stopped too
    assert not list(killed.results.rglob("*.tmp"))  # nothing half-written is left behind


@dataclass
class Restarted:
    corrupt: Path  # a batch finished before the kill, then truncated (a crash mid-write to disk, a bad disk)
    blocked: tuple[int, str]  # the same command again: refused, the kill left snakemake's lock
    unlock: str
    restart: tuple[int, str]  # --unlock, then the same command: runs what is missing, fails on the corrupt batch


@pytest.fixture(scope="module")
def restarted(killed) -> Restarted:
    """What a user types after the kill: the same command, then --unlock and the same command."""
    corrupt = min(p for p in killed.kept if p.parent.name == "evals")
    corrupt.write_bytes(corrupt.read_bytes()[:-100])
    blocked = run(command(killed.workdir), ok=False)
    unlock = run(command(killed.workdir, "--unlock"))[1]
    return Restarted(corrupt, blocked, unlock, run(command(killed.workdir), ok=False))


def test_restart_after_a_kill_needs_unlock_and_runs_only_what_is_missing(killed, restarted):
    status, out = restarted.blocked
    assert status != 0 and "--unlock" in out and "mapmerge: a snakemake driver" not in out  # the lock is stale
    assert "Unlocked working directory" in restarted.unlock
    jobs = job_counts(restarted.restart[1])
    assert jobs["evaluate_sample"] == killed.batches_missing
    design = killed.results / "groups" / "all" / "rounds" / "r00.parquet"  # no batch needs it: it may come later
    assert not {"prepare_benchmark", "extract_task_vector"} & set(jobs)
    assert ("sample_coefficients" in jobs) == (design not in killed.kept)
    after = artifacts(killed.results)
    assert all(after[p] == mtime for p, mtime in killed.kept.items() if p != restarted.corrupt)  # finished work kept


def test_a_job_reading_a_corrupt_artifact_names_it_and_the_way_out(killed, restarted):
    status, out = restarted.restart
    relative = restarted.corrupt.relative_to(killed.workdir)
    assert status != 0 and f"{relative}: unreadable Parquet" in out
    assert "delete it and run snakemake again" in out and "`mapmerge check results/faults --delete`" in out


def test_check_finds_the_corrupt_batch_and_snakemake_remakes_it_with_what_follows(killed, restarted, capsys):
    results, corrupt = killed.results, restarted.corrupt
    assert main(["check", str(results)]) == 1
    bad = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bad: ")]
    assert len(bad) == 1 and bad[0].startswith(f"bad: {corrupt}: unreadable Parquet")
    assert main(["check", str(results), "--delete"]) == 0 and not corrupt.exists()

    before = artifacts(results)
    jobs = job_counts(run(command(killed.workdir))[1])
    assert jobs == {
        "evaluate_sample": 1,
        "collect_metrics": 1,
        "fit_surrogate": 1,
        "pareto_front": 1,
        "merge_group": 1,
        "evaluate_selected": 1,
        "ledger": 1,
        "aggregate": 1,
        "report_tables": 1,
        "all": 1,
    }
    # the batch was finished before the damage: its job gives back the evaluation cache's copy, evaluating nothing
    assert "from the evaluation cache" in (results / "logs/evaluate_sample/all" / f"{corrupt.stem}.log").read_text()
    assert all(artifacts(results)[p] == mtime for p, mtime in before.items())  # nothing else was redone
    assert main(["check", str(results)]) == 0 and (results / "report.md").is_file()


def test_a_job_finished_in_the_instant_before_its_driver_died_runs_again_by_itself(tmp_path):
    """The window the tests above keep clear of: a job wrote its output and exited, and its driver died before
    recording it (stopped meanwhile, here, then killed; a Ctrl-C or SIGINT in that instant too). Snakemake left the
    file marked incomplete, and the same command stopped with IncompleteFilesException; the workflow's default profile
    (profiles/default: rerun-incomplete) runs the job again, its table coming back from the evaluation cache."""
    results = tmp_path / "results" / "faults"
    batch = results / "groups" / "all" / "evals" / "b0000.parquet"
    log = results / "logs" / "evaluate_sample" / "all" / "b0000.log"
    driver = start_driver(tmp_path, BASE)
    try:
        # the job started: the driver prints a job's lines before it starts the job, and a driver stopped between
        # the two never starts it
        wait_for(
            lambda: (
                only_running(tmp_path, "/evaluate_sample/all/b0000")
                and (log.exists() or job_processes(tmp_path, forked=False))
            ),
            driver,
        )
        driver.send_signal(signal.SIGSTOP)
        wait_for(lambda: batch.exists() and not job_processes(tmp_path, forked=False), timeout=120)
        written = batch.read_bytes()
    finally:
        driver.kill()
        driver.wait()
    wait_for(lambda: not job_processes(tmp_path), timeout=30)
    run(command(tmp_path, "--unlock"))
    _, out = run(command(tmp_path))  # the same command: no IncompleteFilesException
    assert "Incomplete" not in out and job_counts(out)["evaluate_sample"] >= 1
    assert "start restore" in log.read_text() and batch.read_bytes() == written


@dataclass
class Interrupted:
    workdir: Path
    results: Path
    batch: Path  # the evaluation batch whose job ran at the Ctrl-C
    kept: dict[Path, int]  # artifacts (and mtimes) just before it
    status: int
    output: str
    jobs_gone_s: float  # seconds from the Ctrl-C until no job process (nor the job server) was left
    said: str  # what `mapmerge status` said then
    batches_done: int  # design batches on disk then, of 3 (3 samples each)
    design_written: bool  # the design's table (rounds/r00.parquet) then


def running_batch(results: Path) -> Path | None:
    """The output of an evaluation batch whose job has started its stage and not finished it (its log says so)."""
    for log in (results / "logs" / "evaluate_sample").rglob("*.log"):
        text = log.read_text()
        if " INFO mapmerge: start " in text and " INFO mapmerge: done " not in text:
            return results / "groups" / log.parent.name / "evals" / f"{log.stem}.parquet"
    return None


@pytest.fixture(scope="module", params=["terminal", "driver"])
def interrupted(request, tmp_path_factory) -> Interrupted:
    """A run stopped while an evaluation batch runs, after another batch was done: as a terminal's Ctrl-C stops it
    (SIGINT to the driver's process group, its jobs and job server with it), or by a SIGINT to the driver alone
    (`kill -INT`, `timeout -s INT`), which it passes on to its jobs (runlock.pass_interrupts_to_jobs)."""
    workdir = tmp_path_factory.mktemp("interrupted")
    results = workdir / "results" / "faults"
    # a terminal's foreground group, whose Ctrl-C is not ignored (a test runner's may be)
    driver = start_driver(workdir, BASE, start_new_session=True, preexec_fn=default_sigint)
    try:
        wait_for(lambda: recorded_batches(workdir) > 0 and running_batch(results) is not None, driver)
        batch, kept = running_batch(results), artifacts(results)
        (os.killpg if request.param == "terminal" else os.kill)(driver.pid, signal.SIGINT)
        status = driver.wait(timeout=120)
        jobs_gone_s = wait_for(lambda: not job_processes(workdir), timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    output = (workdir / "driver.log").read_text()
    with redirect_stdout(io.StringIO()) as said:
        main(["status", str(results)])
    done = len(list((results / "groups" / "all" / "evals").glob("b*.parquet")))
    design = (results / "groups" / "all" / "rounds" / "r00.parquet").exists()
    return Interrupted(workdir, results, batch, kept, status, output, jobs_gone_s, said.getvalue(), done, design)


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_job_and_keeps_what_was_finished(interrupted):
    assert interrupted.status != 0 and "Terminating processes on user request" in interrupted.output
    assert interrupted.jobs_gone_s < 10
    after = artifacts(interrupted.results)
    assert all(after.get(p) == mtime for p, mtime in interrupted.kept.items())  # nothing finished was touched
    assert not interrupted.batch.exists()  # the interrupted batch left nothing, not even half a file
    assert not list(interrupted.results.rglob("*.tmp"))
    # and status does not call the design's batches done: it counts them against the design, once that is written
    # (sample_coefficients; no batch waits for it)
    line = next(line for line in interrupted.said.splitlines() if line.startswith("evaluate_sample "))
    if interrupted.design_written:
        missing = 9 - 3 * interrupted.batches_done
        assert line.split()[1] == "partial" and f"{missing} of the 9 samples to evaluate in none yet" in line, line
    else:
        assert line.endswith("; not checked in all: no round table yet"), line


def test_after_ctrl_c_the_same_command_runs_only_what_is_missing(interrupted):
    evals = interrupted.results / "groups" / "all" / "evals"
    done = len(list(evals.glob("b*.parquet")))
    jobs = job_counts(run(command(interrupted.workdir))[1])  # no --unlock: the driver released its lock
    assert jobs["evaluate_sample"] == 3 - done and interrupted.batch.exists()
    assert not {"prepare_benchmark", "extract_task_vector"} & set(jobs)  # a batch needs them: they were done
    after = artifacts(interrupted.results)
    assert all(after[p] == mtime for p, mtime in interrupted.kept.items())  # nothing finished ran again


# A user's evaluator that fails for some merges: the loss of stripes_0 is NaN when the coefficients
# sum to more than MAX_SUM. Of the 9 designed samples of stripes_0 and stripes_60 only s0004
# (0.85 + 0.93, in batch b0000 of samples s0000-s0007) does.
FLAKY = '''

class FlakyEvaluator(TaskEvaluator):
    """TaskEvaluator whose loss is NaN for merges whose coefficients sum to more than max_sum.

    The coefficients are read back from the module: least squares of (trunk - pretrained trunk) on the task vectors.
    """

    def __init__(self, task, pretrained, finetuned, max_sum, n=500, seed=0):
        super().__init__(task, n, seed)
        self._pre = _trunk(torch.load(pretrained))
        self._taus = torch.stack([_trunk(torch.load(path)) - self._pre for path in finetuned], dim=1)
        self.max_sum = max_sum

    def __call__(self, module, device):
        rows = super().__call__(module, device)
        c = torch.linalg.lstsq(self._taus, (_trunk(module.state_dict()) - self._pre)[:, None]).solution
        if c.sum() > self.max_sum:
            rows["loss"] = float("nan")
        return rows


def _trunk(state):
    return torch.cat([state[k].detach().cpu().double().flatten() for k in sorted(state) if k.startswith("trunk.")])
'''
MAX_SUM = 1.7
FLAKY_RUN = ["tasks=[stripes_0, stripes_60]", "sampler.factor=1.5", "optimizer.pop_size=30", "optimizer.n_gen=20"]


@dataclass
class Flaky:
    workdir: Path
    experiment: Path

    @property
    def results(self) -> Path:
        return self.workdir / "results" / "custom_mlp"

    def snakemake(self, *args: str, overrides: tuple[str, ...] = (), ok: bool = False) -> tuple[int, str]:
        return run(command(self.workdir, *args, overrides=[*FLAKY_RUN, *overrides], experiment=self.experiment), ok=ok)


@pytest.fixture(scope="module")
def flaky(tmp_path_factory) -> Flaky:
    """A copy of examples/custom_mlp whose stripes_0 evaluator fails for merges with a large coefficient sum."""
    example = copy_example(
        tmp_path_factory, tmp_path_factory.mktemp("flaky") / "custom_mlp"
    )  # checkpoints by its script
    with open(example / "model.py", "a") as fh:
        fh.write(FLAKY)
    experiment = OmegaConf.load(example / "experiment.yaml")
    checkpoints = example / "checkpoints"
    experiment.model.tasks.stripes_0.evaluator = {
        "_target_": "model.FlakyEvaluator",
        "task": "stripes_0",
        "max_sum": MAX_SUM,
        "pretrained": str(checkpoints / "pretrained.pt"),
        "finetuned": [str(checkpoints / f"{task}.pt") for task in ("stripes_0", "stripes_60")],
    }
    experiment.preference = {"stripes_0": 2, "stripes_60": 1}
    experiment.refine = {"rounds": 0}  # the surrogate's missing-sample policy, met first by fit_surrogate
    OmegaConf.save(experiment, example / "experiment.yaml")
    return Flaky(example.parent / "work", example / "experiment.yaml")


@pytest.fixture(scope="module")
def failed(flaky) -> tuple[int, str]:
    """The default (evaluation.on_error=fail) with --keep-going."""
    return flaky.snakemake("--keep-going")


def test_a_failed_evaluation_names_sample_and_task_and_the_rest_goes_on(flaky, failed):
    status, out = failed
    message = "sample s0004, task stripes_0: evaluator returned NaN or inf in 'loss'"
    assert status != 0 and message in out
    assert message in (flaky.results / "logs" / "evaluate_sample" / "all" / "b0000.log").read_text()
    evals = flaky.results / "groups" / "all" / "evals"
    assert (evals / "b0001.parquet").is_file() and not (evals / "b0000.parquet").exists()
    assert (flaky.results / "reference.parquet").is_file()  # --keep-going ran what did not need the failed batch


@pytest.fixture(scope="module")
def recorded(flaky, failed) -> tuple[int, str, dict[Path, int]]:
    """Then evaluation.on_error=record: the failure is recorded, and the surrogate refuses it."""
    before = artifacts(flaky.results)
    status, out = flaky.snakemake(overrides=("evaluation.on_error=record",))
    return status, out, before


def test_a_recorded_failure_reruns_only_the_failed_batch_and_stays_visible(flaky, recorded):
    status, out, before = recorded
    jobs = job_counts(out)
    assert jobs["evaluate_sample"] == 1 and "evaluate_reference" not in jobs
    b0001 = flaky.results / "groups" / "all" / "evals" / "b0001.parquet"
    assert b0001.stat().st_mtime_ns == before[b0001]
    log = (flaky.results / "logs" / "evaluate_sample" / "all" / "b0000.log").read_text()
    assert "WARNING" in log and "recorded: evaluation.on_error=record" in log
    metrics = read_table(flaky.results / "groups" / "all" / "metrics.parquet")
    failures = metrics.dropna(subset=["error"])
    assert set(zip(failures["sample"], failures["task"], failures["metric"])) == {
        ("s0004", "stripes_0", "accuracy"),
        ("s0004", "stripes_0", "loss"),
    }
    assert (
        failures["value"].isna().all()
        and "sample s0004, task stripes_0: evaluator returned NaN" in failures["error"].iloc[0]
    )
    assert len(metrics) == 9 * 2 * 2 and metrics.drop(failures.index)["value"].notna().all()


def test_the_surrogate_refuses_missing_samples_by_default(flaky, recorded):
    status, out, _ = recorded
    assert status != 0
    assert (
        "metrics.parquet: task 'stripes_0', metric 'accuracy': no value for samples ['s0004'] (failed or missing "
        "evaluations, see the error column of metrics.parquet); set surrogate.missing=drop to fit without them"
    ) in out


def test_the_surrogate_drops_them_when_told_and_says_so(flaky, recorded, capsys):
    metrics = flaky.results / "groups" / "all" / "metrics.parquet"
    before = metrics.stat().st_mtime_ns
    status, out = flaky.snakemake(overrides=("evaluation.on_error=record", "surrogate.missing=drop"), ok=True)
    assert set(job_counts(out)) == stages_from("fit_surrogate") | {"all"}
    table = read_table(flaky.results / "groups" / "all" / "surrogate.parquet").set_index(["task", "metric"])
    assert (table.loc["stripes_0", "dropped"] == "s0004").all() and (table.loc["stripes_0", "n_samples"] == 8).all()
    assert (table.drop(index="stripes_0", level="task")["n_dropped"] == 0).all()
    assert (
        "fitted without samples s0004 (surrogate.missing=drop)"
        in (flaky.results / "logs" / "fit_surrogate" / "all.log").read_text()
    )
    assert metrics.stat().st_mtime_ns == before  # the failures stay recorded in metrics.parquet
    assert np.isfinite(read_table(flaky.results / "selected.parquet")["measured_accuracy_stripes_0"]).all()
    # status says which batch holds the recorded failure, and how to evaluate it again (its job will not rerun)
    evals = flaky.results / "groups" / "all" / "evals"
    batch = next(p for p in sorted(evals.glob("*.parquet")) if "s0004" in set(read_table(p)["sample"]))
    assert main(["status", str(flaky.results)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "were recorded (evaluation.on_error=record)" in x)
    assert line.startswith("  1 (model, task) evaluations failed and were recorded") and f"--forcerun {batch}`" in line
