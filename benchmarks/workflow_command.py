"""The workflow's snakemake command line, as the benchmarks run it (tests/conftest.py has the tests' own)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
