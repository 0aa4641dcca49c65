"""A workflow job without Snakemake (mapmerge.run.job), and the stage registry against the stage functions."""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

import pandas as pd
import pytest

from mapmerge.io import read_table, write_table
from mapmerge.run import job, jobclient, jobserver, runlock
from mapmerge.run.config import STAGE_ENTRY
from mapmerge.run.logs import run_stage
from mapmerge.run.registry import REGISTRY, STAGES


@pytest.mark.parametrize("stage", STAGES, ids=[s.rule for s in STAGES])
def test_every_registered_name_is_an_argument_of_its_function(stage):
    function = getattr(importlib.import_module(f"mapmerge.stages.{stage.module}"), stage.function)
    parameters = inspect.signature(function).parameters
    assert list(parameters)[0] == "params"
    keywords = {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    required = {name for name in keywords if parameters[name].default is inspect.Parameter.empty}
    unpacked = [p for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    if unpacked:  # **job: Unpack[EngineJob]: its TypedDict's keys are keywords too
        typed = typing.get_args(typing.get_type_hints(function)[unpacked[0].name])[0]
        keywords |= set(typed.__annotations__)
        required |= set(typed.__required_keys__)
    assert set(stage.inputs) | set(stage.outputs) | set(stage.args) <= keywords
    assert required <= set(stage.inputs) | set(stage.outputs) | set(stage.args)
    assert STAGE_ENTRY[stage.params_key] == stage.module


def test_a_long_spec_travels_compressed():
    spec = {
        "rule": "ledger",
        "inputs": {"evals": {f"g/b{i:04d}.parquet": f"results/x/groups/g/evals/b{i:04d}.parquet" for i in range(3000)}},
    }
    text = job.encode(spec)
    assert text.startswith(job.COMPRESSED) and len(text) < 128 * 1024 and job.decode(text) == spec
    assert job.decode(job.encode({"rule": "ledger"})) == {"rule": "ledger"}


def collect_spec(tmp_path, evals):
    rounds = tmp_path / "r00.parquet"
    write_table(
        pd.DataFrame({"sample": ["s0"], "kind": ["sobol"], "c_a": [0.5], "round": [0]}), rounds, "sample_coefficients"
    )
    return {
        "rule": "collect_metrics",
        "wildcards": {"group": "all"},
        "params": {"stage": {"code": "x"}},
        "inputs": {"rounds": [str(rounds)], "evals": [str(p) for p in evals]},
        "outputs": {"metrics": str(tmp_path / "metrics.parquet"), "samples": str(tmp_path / "samples.parquet")},
        "args": {},
    }


def test_a_job_runs_its_stage_with_a_log(tmp_path):
    evals = tmp_path / "b0000.parquet"
    rows = pd.DataFrame(
        {"sample": ["s0", "s0"], "task": ["a", "a"], "example": [0, 1], "correct": [1.0, 0.0], "loss": [0.1, 0.3]}
    )
    write_table(rows, evals, "evaluate_sample")
    log = tmp_path / "logs" / "collect_metrics" / "all.log"
    proc = subprocess.run(
        [sys.executable, "-m", "mapmerge.run.job", str(log), job.encode(collect_spec(tmp_path, [evals]))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(read_table(tmp_path / "metrics.parquet")["metric"]) == {"accuracy", "loss"}
    assert "done run_collect_metrics in" in log.read_text()
    # the job imports neither Snakemake nor the config machinery, and this stage no torch
    timed = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "mapmerge.run.job",
            str(log),
            job.encode(collect_spec(tmp_path, [evals])),
        ],
        capture_output=True,
        text=True,
    )
    imported = {
        line.rpartition("|")[2].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")
    }
    assert timed.returncode == 0 and imported and not imported & {"torch", "snakemake", "hydra", "mapmerge.run.config"}


def test_a_failed_job_says_one_line_and_keeps_the_traceback_in_its_log(tmp_path):
    missing = tmp_path / "b0000.parquet"
    log = tmp_path / "all.log"
    proc = subprocess.run(
        [sys.executable, "-m", "mapmerge.run.job", str(log), job.encode(collect_spec(tmp_path, [missing]))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mapmerge: rule collect_metrics (group=all) failed: {missing}")
    assert lines[0].endswith(f"(traceback in {log})")
    assert "Traceback" in log.read_text() and "failed run_collect_metrics" in log.read_text()
    assert not (tmp_path / "metrics.parquet").exists()


def test_every_rule_of_the_registry_has_its_stage():
    assert set(REGISTRY) == {s.rule for s in STAGES} and len(STAGES) == len(REGISTRY)


def test_a_job_whose_driver_is_already_gone_does_not_start(tmp_path):
    evals = tmp_path / "b0000.parquet"
    rows = pd.DataFrame({"sample": ["s0"], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.1]})
    write_table(rows, evals, "evaluate_sample")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a driver killed as it launched the job: its pid names no process any more
    env = {**os.environ, runlock.DRIVER_ENV: f"{gone.pid}@{socket.gethostname()}"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mapmerge.run.job",
            str(tmp_path / "all.log"),
            job.encode(collect_spec(tmp_path, [evals])),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == runlock.ORPHAN_EXIT, proc.stderr
    assert not (tmp_path / "metrics.parquet").exists() and not (tmp_path / "all.log").exists()


def test_a_stage_argument_may_be_named_like_the_runners_own(tmp_path):
    def stage(params, *, log, stage):  # validate_grid passes `stage`
        return params, log, stage

    assert run_stage(stage, tmp_path / "x.log", 1, log="a", stage="b") == (1, "a", "b")


@pytest.fixture
def server(monkeypatch):
    """A job server started by this test's process (its driver), in a temporary folder of its own (short: a socket's
    path holds at most 108 bytes) that holds the socket folder of a killed server whose driver is gone, which the
    start removes."""
    monkeypatch.delenv(jobclient.SERVER_ENV, raising=False)
    tmp_path = Path(tempfile.mkdtemp(prefix="mm"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{jobserver.FOLDER_PREFIX}{gone.pid}-x1y2"
    stale.mkdir()
    (stale / "socket").touch()
    alive = tmp_path / f"{jobserver.FOLDER_PREFIX}{os.getpid()}-x3y4"  # a running driver's
    alive.mkdir()
    proc = jobserver.start()
    assert not stale.exists() and alive.is_dir()
    path = Path(os.environ[jobclient.SERVER_ENV])
    deadline = time.monotonic() + 120
    while not path.exists():  # it listens once its imports are done
        assert proc.poll() is None and time.monotonic() < deadline, "the job server did not start"
        time.sleep(0.05)
    yield path
    jobserver.stop(proc)
    assert not path.parent.exists() and jobclient.SERVER_ENV not in os.environ  # it removed its socket's folder
    shutil.rmtree(tmp_path)


ONE_THREAD = dict.fromkeys(jobclient.THREAD_VARS, "1")  # what Snakemake sets for a local job of 1 thread


def run_job(cwd, log, spec, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mapmerge.run.job", str(log), job.encode(spec)]
    env = {**os.environ, **ONE_THREAD} if env is None else env
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)


def test_the_job_server_forks_a_job_as_its_command_would_run_it(server, tmp_path):
    """Its working folder (a relative log path), its environment (a driver that is gone: the job does not start),
    its standard streams (the failure's one line) and its exit status, each as the job's own process would have."""
    evals = tmp_path / "b0000.parquet"
    rows = pd.DataFrame({"sample": ["s0"], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.1]})
    write_table(rows, evals, "evaluate_sample")
    proc = run_job(tmp_path, "logs/all.log", collect_spec(tmp_path, [evals]))
    assert proc.returncode == 0, proc.stderr
    assert f"start run_collect_metrics {jobclient.FORKED_NOTE}" in (tmp_path / "logs/all.log").read_text()
    assert set(read_table(tmp_path / "metrics.parquet")["metric"]) == {"accuracy", "loss"}

    missing = tmp_path / "missing.parquet"
    proc = run_job(tmp_path, "logs/failed.log", collect_spec(tmp_path, [missing]))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"mapmerge: rule collect_metrics (group=all) failed: {missing}"), proc.stderr

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    env = {**os.environ, **ONE_THREAD, runlock.DRIVER_ENV: f"{gone.pid}@{socket.gethostname()}"}
    proc = run_job(tmp_path, "logs/orphan.log", collect_spec(tmp_path / "logs", [evals]), env)
    assert proc.returncode == runlock.ORPHAN_EXIT, proc.stderr
    assert not (tmp_path / "logs/orphan.log").exists()

    # a job of 2 threads runs itself: the server's libraries were loaded for 1
    proc = run_job(
        tmp_path, "logs/two.log", collect_spec(tmp_path, [evals]), {**os.environ, **ONE_THREAD, "OMP_NUM_THREADS": "2"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "start run_collect_metrics\n" in (tmp_path / "logs/two.log").read_text()


def test_a_killed_job_process_takes_its_forked_job_with_it_and_the_server_goes_on(server, tmp_path):
    """As Snakemake kills a job: SIGKILL to the job's process, whose forked job (here blocked opening its log, a FIFO
    nobody reads) the server then kills; the next job is served as before."""
    evals = tmp_path / "b0000.parquet"
    rows = pd.DataFrame({"sample": ["s0"], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.1]})
    write_table(rows, evals, "evaluate_sample")
    os.mkfifo(tmp_path / "blocked.log")
    command = [sys.executable, "-m", "mapmerge.run.job", "blocked.log", job.encode(collect_spec(tmp_path, [evals]))]
    client = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, **ONE_THREAD})
    server_pid = next(
        pid for pid in children(os.getpid()) if str(server).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    deadline = time.monotonic() + 60
    while not children(server_pid):  # the forked job
        assert client.poll() is None and time.monotonic() < deadline, "no job was forked"
        time.sleep(0.05)
    client.kill()
    client.wait()
    deadline = time.monotonic() + 10
    while children(server_pid):
        assert time.monotonic() < deadline, "the forked job outlived its job's process"
        time.sleep(0.05)
    assert not (tmp_path / "metrics.parquet").exists()
    proc = run_job(tmp_path, "logs/next.log", collect_spec(tmp_path, [evals]))
    assert proc.returncode == 0, proc.stderr
    assert jobclient.FORKED_NOTE in (tmp_path / "logs/next.log").read_text()


def test_a_job_whose_server_is_killed_under_it_says_one_line(monkeypatch):
    """`timeout -s TERM snakemake ...` signals the whole process group: the job's process forwards SIGTERM to the
    server, which is killed before it reads it. The job's process said so with a ConnectionResetError traceback; now
    with the one line of a server that went away."""
    monkeypatch.delenv(jobclient.SERVER_ENV, raising=False)
    folder = Path(tempfile.mkdtemp(prefix="mm"))  # short: a socket's path holds at most 108 bytes
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    proc = jobserver.start()
    forked: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not Path(os.environ[jobclient.SERVER_ENV]).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the job server did not start"
            time.sleep(0.05)
        evals = folder / "b0000.parquet"
        rows = pd.DataFrame({"sample": ["s0"], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.1]})
        write_table(rows, evals, "evaluate_sample")
        os.mkfifo(folder / "blocked.log")  # the forked job waits for a reader of its log
        command = [sys.executable, "-m", "mapmerge.run.job", "blocked.log", job.encode(collect_spec(folder, [evals]))]
        err = folder / "stderr.txt"  # not a pipe: the forked job holds the job's streams, and would keep it open
        with open(err, "w") as stderr:
            client = subprocess.Popen(command, cwd=folder, env={**os.environ, **ONE_THREAD}, stderr=stderr)
        while not (forked := children(proc.pid)):
            assert client.poll() is None and time.monotonic() < deadline, "no job was forked"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)  # the server reads nothing more ...
        client.send_signal(signal.SIGTERM)  # ... of the signal the job's process forwards to it
        time.sleep(0.5)
        proc.kill()  # its socket closes with that byte unread: the job's process reads a reset
        proc.wait()
        assert client.wait(timeout=60) == 1
        assert err.read_text() == "mapmerge: the run's job server stopped before this job ended\n"
    finally:
        for pid in forked:
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        os.environ.pop(jobclient.SERVER_ENV, None)
        shutil.rmtree(folder)


def children(pid: int) -> list[int]:
    """The pids of a process's living children (not the zombies)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid") == str(pid) and not fields.get("State", "").startswith("Z"):
            found.append(int(fields["Pid"]))
    return found


@pytest.mark.parametrize("value", ["off", "/nonexistent/socket"])
def test_a_job_without_a_listening_server_runs_itself(tmp_path, value):
    evals = tmp_path / "b0000.parquet"
    rows = pd.DataFrame({"sample": ["s0"], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.1]})
    write_table(rows, evals, "evaluate_sample")
    proc = run_job(
        tmp_path, "all.log", collect_spec(tmp_path, [evals]), {**os.environ, **ONE_THREAD, jobclient.SERVER_ENV: value}
    )
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "all.log").read_text()
    assert "start run_collect_metrics\n" in log and "forked" not in log
