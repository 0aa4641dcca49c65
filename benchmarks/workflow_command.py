"""The workflow's snakemake command line, as the benchmarks run it (tests/conftest.py has the tests' own)."""

from __future__ import annotations

import sys
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
