"""A local run with its job server against the same run without one (MAPMERGE_JOB_SERVER=off), side by side.

Command line (from the repo root, after `make setup`; about 8 minutes on 2 CPU cores as written):

    .venv/bin/python benchmarks/job_server.py [--runs 2] [--cores 2] [--overrides 'benchmark.tasks=2' ...]

Each run is the default pipeline from an empty folder, what `make demo` runs after its set-up (`snakemake --cores 2`
on the default config, with --overrides laid over it), in a temporary folder; the runs alternate between the two
arms (off first). Per run: its wall time; the CPU seconds of snakemake and every process under it (the job server
and the jobs it forked included: the driver stops and waits for the server, which waits for its jobs); the jobs the
server forked (their logs say so) out of all; the stages' own time (the "done <function> in X s" lines of the
jobs' logs). Per arm the median, and the ratios on/off. The two arms' artifacts (every Parquet file but the
evaluation cache's) are compared byte for byte. Other work on the machine moves the figures: compare within a run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from mapmerge.run.jobclient import FORKED_NOTE, OFF, SERVER_ENV
from workflow_command import STAGE_DONE, children_cpu, run_timed, workflow_command


def one_run(workdir: Path, cores: int, overrides: list[str], server: bool) -> dict[str, float]:
    """Wall and CPU seconds, jobs (forked, all) and the stages' own seconds of one run from an empty folder."""
    os.environ.pop(SERVER_ENV, None)
    if not server:
        os.environ[SERVER_ENV] = OFF
    cpu = children_cpu()
    wall = run_timed(workflow_command(workdir, cores=cores, overrides=overrides), str(workdir))
    cpu = children_cpu() - cpu
    os.environ.pop(SERVER_ENV, None)
    logs = [p.read_text() for p in workdir.glob("results/*/logs/**/*.log")]
    return {
        "wall": wall,
        "cpu": cpu,
        "forked": sum(FORKED_NOTE in text for text in logs),
        "jobs": len(logs),
        "stages": sum(float(m.group(2)) for text in logs for m in STAGE_DONE.finditer(text)),
    }


def artifacts(workdir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.glob("results/**/*.parquet"))
        if ".cache" not in p.parts
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per arm (alternating)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides (key=value)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mapmerge-job-server-"))
    os.environ["MAPMERGE_CACHE_DIR"] = str(tmp / "memo")  # each run starts as a fresh clone's first run does
    figures: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        for i in range(args.runs):
            for arm in ("off", "on"):
                shutil.rmtree(tmp / "memo", ignore_errors=True)
                run = one_run(tmp / f"{arm}{i}", args.cores, args.overrides, arm == "on")
                figures[arm].append(run)
                print(
                    f"{arm:>3} run {i + 1}: {run['wall']:6.1f} s wall, {run['cpu']:6.1f} s CPU, "
                    f"{run['forked']:.0f} of {run['jobs']:.0f} jobs forked by the server, stages {run['stages']:.1f} s",
                    flush=True,
                )
        same = artifacts(tmp / "off0") == artifacts(tmp / "on0")
        print(
            f"\nartifacts of the first runs (every Parquet file but the cache's): {'identical' if same else 'DIFFER'}"
        )
        medians = {arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for arm, runs in figures.items()}
        print(f"{'':>4} {'wall s':>8} {'CPU s':>8} {'stages s':>9} {'CPU - stages':>13}")
        for arm, m in medians.items():
            print(f"{arm:>4} {m['wall']:8.1f} {m['cpu']:8.1f} {m['stages']:9.1f} {m['cpu'] - m['stages']:13.1f}")
        on, off = medians["on"], medians["off"]
        print(
            f"on/off: wall {on['wall'] / off['wall']:.2f}x, CPU {on['cpu'] / off['cpu']:.2f}x, "
            f"CPU besides the stages {(on['cpu'] - on['stages']) / (off['cpu'] - off['stages']):.2f}x"
        )
        if not same:
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
