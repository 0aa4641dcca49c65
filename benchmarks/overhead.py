"""Workflow wall time against its jobs' compute time: Snakemake's per-job start cost, and batching.

Command line (from the repo root; 3.5 minutes on 2 CPU cores, about 6 when every Snakemake process
waits on the SLURM probe described at the end):

    .venv/bin/python benchmarks/overhead.py

Options: --ks 1,8,32 (evaluation.samples_per_job of each measured run), --cores 2, --factor 1
(sampler.factor: 1 x 15 = 15 designed samples, so that the K=1 run, one job per sample, stays short
enough for the whole script to take under 10 minutes; K=32 is then one job with all of them),
--stub-scontrol (run every snakemake with a `scontrol` on PATH that fails at once; see the end).

What it runs, all inside one temporary folder TMP that is removed at the end (-d TMP/work keeps
Snakemake's .snakemake/ metadata there instead of in the repo), with
OVR = name=ovh, results_dir=TMP/results, sampler.factor=1 and M = TMP/results/ovh/groups/all/metrics.parquet:

 1. once, everything the evaluation jobs need and that does not depend on K (prepare_benchmark, which
    trains the built-in benchmark: 4 tasks, width 16, seed 0; extract_task_vector per task; the plan
    and design jobs), by asking for M with the largest K:
        .venv/bin/snakemake M --cores 2 -s Snakefile -d TMP/work --config overrides='[OVR, evaluation.samples_per_job=32]'
    The built-in model's checkpoints live in results_dir/<name>/checkpoints (mapmerge.run.config derives
    them from the run name), so the measured runs keep the same name and results folder: they share
    the checkpoints, task vectors and design, and differ only in evaluation.samples_per_job = K;
 2. for each K, after deleting the evaluation batches, M and their logs, the evaluation part of the
    workflow, every evaluate_sample batch and collect_metrics:
        .venv/bin/snakemake M --cores 2 -s Snakefile -d TMP/work --config overrides='[OVR, evaluation.samples_per_job=K]'
    and checks that every K gives the same metrics.parquet values.
    The later stages (surrogate, Pareto front, merge, aggregate) are left out: their job count does
    not depend on K, and the whole benchmark has to fit in 10 minutes on 2 cores.

Measured per run: wall time of the snakemake command; jobs (each with a mapmerge log); the sum of the
jobs' compute, i.e. the time inside the stage function, from the "done <stage> in X s" line that
mapmerge.run.logs.run_stage writes to every job's log (for an evaluation job this includes its own
start-up: importing torch, loading the checkpoints once); the sum of the jobs' wall times, from the
second-resolution "[timestamp] localrule ..." and "Finished jobid" lines Snakemake prints (the
rounding averages out over many jobs); the driver's start-up (launch to first job); the CPU seconds
of snakemake and all its job processes. Overhead per job = (sum of job wall - sum of compute) / jobs:
what a job costs besides its stage (a fresh `python -m snakemake` process that imports Snakemake and
its plugins, parses the Snakefile, composes the Hydra config, checks its inputs and outputs).
Finally it times the part of a Snakemake process's start that is an import: `import snakemake.api`,
as installed, and with `scontrol` on PATH replaced by a stub that fails at once. The difference is
snakemake-executor-plugin-slurm, imported by every Snakemake process, running `scontrol show config`:
with the SLURM client installed and an /etc/slurm/slurm.conf whose controller does not answer (as
after this repo's SLURM test cluster has stopped), that waits about 9 s per process; without a
slurm.conf it fails at once. The script times that call before and after the runs and warns when the
machine's state changed in between.
A job other than evaluate_sample and collect_metrics that runs in a measured run is reported: it means
its code or params changed during the benchmark (the repo being edited meanwhile).

Other work may share this machine, so absolute figures are noisy; ratios within one run of this
script are what to compare.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = REPO / ".venv" / "bin" / "snakemake"
PYTHON = REPO / ".venv" / "bin" / "python"
NAME = "ovh"
DONE = re.compile(r"INFO mapmerge: done (\w+) in ([0-9.]+) s")
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def snakemake(args: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run snakemake from the repo root; wall s, CPU s of it and its children, launch time. Output to `log`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = datetime.now()
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([str(SNAKEMAKE), *args], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed ({proc.returncode}); its output:\n{log.read_text()[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "launched": launched}


def job_times(output: str) -> tuple[dict[str, float], datetime | None]:
    """Log path -> job wall time (s, 1 s resolution) from Snakemake's printed job lines; first job's start."""
    stamp = first = None
    started: dict[str, datetime] = {}
    logs: dict[str, str] = {}
    walls: dict[str, float] = {}
    current = None
    for line in output.splitlines():
        text = line.strip()
        m = STAMP.match(text)
        if m:
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif text.startswith(("localrule ", "rule ")):
            current = {"start": stamp}
            first = first or stamp
        elif current is not None and text.startswith("log: "):
            current["log"] = text[5:].split(",")[0].strip()
        elif current is not None and text.startswith("jobid: "):
            jobid = text[7:].strip()
            started[jobid] = current["start"]
            if "log" in current:
                logs[jobid] = current["log"]
            current = None
        elif text.startswith("Finished jobid: "):
            jobid = text[len("Finished jobid: "):].split()[0]
            if jobid in logs and jobid in started:
                walls[logs[jobid]] = (stamp - started[jobid]).total_seconds()
    return walls, first


def run_stats(results: Path, output: str, run: dict) -> dict:
    """This run's jobs (each with a mapmerge log), their summed compute and wall, overall and for evaluate_sample."""
    walls, first = job_times(output)
    jobs = []
    for log in map(Path, sorted(walls)):
        done = DONE.search(log.read_text())
        if not done:
            sys.exit(f"{log}: no 'done' line")
        rule = log.relative_to(results / "logs").parts[0].removesuffix(".log")
        jobs.append({"rule": rule, "compute": float(done.group(2)), "wall": walls[str(log)]})
    if not jobs:
        sys.exit("no job start and finish lines in snakemake's output (format changed?)")
    evals = [j for j in jobs if j["rule"] == "evaluate_sample"]
    others = sorted({j["rule"] for j in jobs if j["rule"] not in ("evaluate_sample", "collect_metrics")})
    return {
        "others": others,
        **run,
        "jobs": len(jobs),
        "compute": sum(j["compute"] for j in jobs),
        "job_wall": sum(j["wall"] for j in jobs),
        "eval_jobs": len(evals),
        "eval_compute": sum(j["compute"] for j in evals),
        "eval_job_wall": sum(j["wall"] for j in evals),
        "driver_startup": (first - run["launched"]).total_seconds() if first else float("nan"),
    }


def metrics_of(results: Path) -> np.ndarray:
    from mapmerge.io import read_table

    frame = read_table(results / "groups" / "all" / "metrics.parquet")
    return frame.sort_values(["sample", "task", "metric"])["value"].to_numpy()


def probe_time() -> float:
    """Seconds `scontrol show config` takes to answer or fail (NaN without the SLURM client)."""
    start = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return float("nan")
    return time.perf_counter() - start


def import_time(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(PYTHON), "-c", "import snakemake.api"], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,8,32", help="evaluation.samples_per_job of each run")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--factor", type=float, default=1.0, help="sampler.factor (design size factor x 15 for 4 tasks)")
    parser.add_argument("--stub-scontrol", action="store_true", help="measure with `scontrol` stubbed to fail at once")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    total_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mapmerge-overhead-"))
    work, results_dir = tmp / "work", tmp / "results"
    results = results_dir / NAME
    base = ["--cores", str(args.cores), "-s", str(REPO / "Snakefile"), "-d", str(work)]
    overrides = lambda k: f"overrides=[name={NAME}, results_dir={results_dir}, sampler.factor={args.factor}, evaluation.samples_per_job={k}]"  # noqa: E731
    rows = []
    try:
        stub = tmp / "stub"
        stub.mkdir()
        (stub / "scontrol").write_text("#!/bin/sh\nexit 1\n")
        (stub / "scontrol").chmod(0o755)
        stubbed = {**os.environ, "PATH": f"{stub}:{os.environ.get('PATH', '')}"}
        env = stubbed if args.stub_scontrol else None
        probe_before = probe_time()
        metrics = str(results / "groups" / "all" / "metrics.parquet")
        prep = snakemake([metrics, *base, "--config", overrides(max(ks))], tmp / "prep.out", env)
        prep_stats = run_stats(results, (tmp / "prep.out").read_text(), prep)
        reference = None
        for k in ks:
            for stale in (results / "groups" / "all" / "evals", results / "logs" / "evaluate_sample", results / "logs" / "collect_metrics"):
                shutil.rmtree(stale, ignore_errors=True)
            (results / "groups" / "all" / "metrics.parquet").unlink(missing_ok=True)
            out = tmp / f"k{k}.out"
            run = snakemake([metrics, *base, "--config", overrides(k)], out, env)
            rows.append({"k": k, **run_stats(results, out.read_text(), run)})
            values = metrics_of(results)
            if reference is None:
                reference = values
            assert values.shape == reference.shape and np.array_equal(values, reference), f"K={k}: metrics differ from K={ks[0]}"
            print(f"... K={k}: {run['wall']:.0f} s", file=sys.stderr, flush=True)
        # where a Snakemake process's start goes: its imports, with and without a working `scontrol`
        import_real = import_time(dict(os.environ))
        import_stub = import_time(stubbed)
        probe_after = probe_time()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    from mapmerge.core.sampling import design_size

    n_samples = design_size(4, {"factor": args.factor})
    print(f"mapmerge evaluation jobs on the built-in benchmark (4 tasks, width 16; sampler.factor={args.factor}"
          f": {n_samples} samples), snakemake --cores {args.cores}, evaluation.threads=1")
    print(f"shared set-up, run once (training, task vectors, plan, design; evaluations with K={max(ks)}, then deleted): "
          f"{prep['wall']:.0f} s wall, {prep_stats['jobs']} jobs, {prep_stats['compute']:.0f} s of job compute")
    if args.stub_scontrol:
        print("measured with `scontrol` stubbed to fail at once (--stub-scontrol): without the SLURM plugin's import-time probe")
    print("every K gave identical metrics.parquet values.")
    for r in rows:
        if r["others"]:
            print(f"NOTE K={r['k']}: jobs besides the evaluation ones ran ({', '.join(r['others'])}): their code or params "
                  "changed during the benchmark (the repo was edited meanwhile); they are counted in the first table")
    print()
    print(f"| K (samples/job) | jobs | evaluate_sample jobs | wall s | sum of job compute s | sum of job wall s | overhead s per job | driver start-up s | CPU s (all processes) | wall ratio vs K={ks[0]} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_job = (r["job_wall"] - r["compute"]) / r["jobs"]
        print(f"| {r['k']} | {r['jobs']} | {r['eval_jobs']} | {r['wall']:.1f} | {r['compute']:.1f} | {r['job_wall']:.0f} | {per_job:.1f} "
              f"| {r['driver_startup']:.0f} | {r['cpu']:.0f} | {r['wall'] / rows[0]['wall']:.2f} |")
    print("\nevaluate_sample jobs alone (the only rule whose job count depends on K)\n")
    print("| K | jobs | compute s | job wall s | overhead s per job | compute s per job |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['eval_jobs']} | {r['eval_compute']:.1f} | {r['eval_job_wall']:.0f} "
              f"| {(r['eval_job_wall'] - r['eval_compute']) / r['eval_jobs']:.1f} | {r['eval_compute'] / r['eval_jobs']:.2f} |")
    print(f"\nstart of every snakemake process (the driver and each job): `import snakemake.api` takes {import_real:.1f} s; "
          f"{import_stub:.1f} s with `scontrol` stubbed to fail at once.")
    print(f"the difference is snakemake-executor-plugin-slurm running `scontrol show config` when it is imported "
          f"(building its settings' help); where slurm.conf names a controller that does not answer, that call waits "
          f"for it: `scontrol show config` "
          f"took {probe_before:.1f} s before the runs and {probe_after:.1f} s after them.")
    if abs(probe_before - probe_after) > 2:
        print("WARNING: that changed during the runs (a SLURM config under /etc/slurm appeared or went, e.g. a SLURM test "
              "started or stopped its cluster), so the runs' per-job overhead is not comparable; run again.")
    print(f"\ntotal {time.perf_counter() - total_start:.0f} s; temporary folder removed: {not tmp.exists()}")


if __name__ == "__main__":
    main()
