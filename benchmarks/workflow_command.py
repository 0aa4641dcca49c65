"""The workflow's snakemake command line, as the benchmarks run it (tests/conftest.py has the tests' own)."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a job log's line for its stage's own time (mapmerge.run.logs.run_stage): the function, the seconds
STAGE_DONE = re.compile(r"INFO mapmerge: done (\w+) in ([0-9.]+) s")


def children_cpu() -> float:
    """CPU seconds (user and system) of this process's finished and waited-for children and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def workflow_command(
    workdir: Path, *args: str, cores: int, overrides: Sequence[str] = (), experiment: Path | None = None
) -> list[str]:
    """`python -m snakemake` on the repository's Snakefile in `workdir` on `cores` cores, with `args`, the experiment
    file and the config overrides."""
    config = [f"overrides=[{', '.join(overrides)}]"] + ([f"experiment={experiment}"] if experiment else [])
    snakefile = ["-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    return [sys.executable, "-m", "snakemake", "--cores", str(cores), *args, *snakefile, "--config", *config]


def run_timed(cmd: Sequence[str], what: str) -> float:
    """Wall seconds of the workflow command `cmd`; a failure ends the script, naming `what` and its stderr's end."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed for {what}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start
