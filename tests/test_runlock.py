"""The results folder's driver lock, and jobs that stop when their driver is killed (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapmerge.run import runlock

HOLD = "import sys, time; from mapmerge.run import runlock; runlock.hold(sys.argv[1]); print('held', flush=True); time.sleep(60)"
# a driver that starts one job; the job watches it, writes an output and waits
DRIVER = """
import subprocess, sys, time
from mapmerge.run import runlock
runlock.mark_driver()
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(60)
"""
JOB = """
import sys, time
import pandas as pd
from mapmerge.run import runlock
from mapmerge.io import write_table
assert runlock.stop_with_driver(interval=0.1) is not None
write_table(pd.DataFrame({"a": [1]}), sys.argv[1], "job")
time.sleep(60)
"""


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def hold_in_a_process(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_driver_is_refused_until_the_first_dies(tmp_path):
    assert runlock.holder(tmp_path) is None
    first = hold_in_a_process(tmp_path)
    try:
        info = runlock.holder(tmp_path)
        assert info["pid"] == first.pid and info["cwd"] == os.getcwd()
        with pytest.raises(runlock.RunLockError, match=f"{tmp_path}: another snakemake driver \\(pid {first.pid} on "):
            runlock.hold(tmp_path)
    finally:
        first.kill()
        first.wait()
    assert runlock.holder(tmp_path) is None  # the kernel dropped the killed driver's lock: nothing stale to remove
    second = hold_in_a_process(tmp_path)
    second.kill()
    second.wait()


def test_a_job_stops_and_removes_its_outputs_when_its_driver_is_killed(tmp_path):
    out = tmp_path / "out.parquet"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, JOB, str(out)])
    try:
        wait_for(out.exists)
        job = next(p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == driver.pid)
    finally:
        driver.kill()
        driver.wait()
    wait_for(lambda: not job.exists() or _state(job) == "Z", timeout=10)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_only_descendants_of_the_driver_watch_it(monkeypatch):
    monkeypatch.setenv(runlock.DRIVER_ENV, f"{os.getpid()}@{runlock.socket.gethostname()}")
    assert runlock.stop_with_driver() is None  # this process is the driver, not its job
    monkeypatch.setenv(runlock.DRIVER_ENV, f"{os.getppid()}@another-host")
    assert runlock.stop_with_driver() is None  # a cluster job


def _stat(proc: Path) -> list[str]:
    return (proc / "stat").read_text().rpartition(")")[2].split()


def _parent(proc: Path) -> int:
    try:
        return int(_stat(proc)[1])
    except OSError:
        return -1


def _state(proc: Path) -> str:
    try:
        return _stat(proc)[0]
    except OSError:
        return "gone"
