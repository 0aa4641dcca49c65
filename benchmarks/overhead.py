"""What a workflow job costs besides its stage, against its floor, and the demo pipeline's wall time.

Command line (from the repo root, after `make setup`; 8 minutes on 2 CPU cores as written, about 5.5
with one demo run per tree):

    .venv/bin/python benchmarks/overhead.py --before ec6a896 --demo-runs 2

Options: --before REV (also measure the tree of git revision REV, side by side: a `git worktree` in the
temporary folder, run with its own src/ on PYTHONPATH, removed at the end), --demo-runs N (demo
pipelines per tree, alternating trees; default 1), --repeats R (fit_surrogate jobs and floor imports
per tree; default 5), --cores (of the demo pipeline; default 2).

Everything runs in one temporary folder TMP, removed at the end. Per tree (this checkout, `after`,
and with --before the other, `before`):

 1. the demo pipeline: what `make demo` runs after its set-up, `snakemake --cores 2` on the default
    config (4 tasks, 45 designed merges in 6 evaluation jobs, 24 jobs), in TMP/<tree>/demo (-d);
    its wall time and the CPU seconds of snakemake and all its children;
 2. per-job overhead on that finished folder, with `--cores 1` (one job at a time, no other job on
    the CPUs), for a light stage and a torch stage:
      fit_surrogate:   R runs of  snakemake RESULTS/groups/all/surrogate.parquet --forcerun fit_surrogate
      evaluate_sample: one run of snakemake RESULTS/groups/all/evals/b0000..b0005.parquet --forcerun evaluate_sample
    A job's wall time is the time between the driver's lines for it ("localrule <rule>:", printed as
    the job starts, and "Finished jobid: N"), which the driver prints with epoch timestamps to the
    millisecond here: it runs as `python -c '<snakemake.logging.timestamp patched>; snakemake.cli.main()'`.
    The stage's own time is measured inside the job: the "done <function> in X s" line that
    mapmerge.run.logs.run_stage writes to the job's log (the time in the stage function, after the
    job has imported its stage module). Overhead = job wall - stage time: a new process, its
    imports, the driver's bookkeeping before and after;
 3. the floor: `python -c "import mapmerge.stages.<module>"` (fit_surrogate; evaluation), timed R
    times in the same run, median; the ratio overhead / floor (the goal: within 1.3x).

For the `before` tree (every rule a `run:` job: a `python -m snakemake --target-jobs` process that
imports Snakemake, parses the Snakefile and composes the config before its stage, whose module imports
torch inside the stage function), the same figures; its stage time includes the torch import that its
stage functions do, and its floor is the import of its own stage module.

Other work may share this machine, so absolute figures are noisy; compare the trees within one run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workflow_command import STAGE_DONE, children_cpu  # this script's folder is on sys.path when it runs

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
DRIVER = (
    "import sys, time, snakemake.logging as log; log.timestamp = lambda: f'[{time.time():.3f}]'; "
    "sys.argv[0] = 'snakemake'; from snakemake.cli import main; sys.exit(main())"
)
STAMP = re.compile(r"^\[(\d+\.\d+)\]$")
RESULTS = Path("results") / "demo"
BATCHES = [f"b{k:04d}" for k in range(6)]  # the default design: 45 samples in batches of 8
KINDS = {  # stage kind -> (rule, stage module)
    "light (fit_surrogate)": ("fit_surrogate", "mapmerge.stages.fit_surrogate"),
    "torch (evaluate_sample)": ("evaluate_sample", "mapmerge.stages.evaluation"),
}


def run_snakemake(tree: Path, workdir: Path, args: list[str], log: Path, env: dict[str, str]) -> dict[str, float]:
    """snakemake with the tree's Snakefile in `workdir` (the timestamp-patched driver); wall and CPU s. Output to `log`."""
    cpu = children_cpu()
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(
            [str(PYTHON), "-c", DRIVER, "-s", str(tree / "Snakefile"), "-d", str(workdir), *args],
            cwd=tree,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        sys.exit(f"snakemake failed ({proc.returncode}) in {workdir}; its output:\n{log.read_text()[-4000:]}")
    return {"wall": wall, "cpu": cpu}


def job_walls(output: str) -> dict[str, float]:
    """Log path -> job wall time (s), from the driver's epoch-stamped 'localrule' and 'Finished jobid' lines."""
    stamp = None
    started: dict[str, float] = {}
    logs: dict[str, str] = {}
    walls: dict[str, float] = {}
    current = None
    for line in output.splitlines():
        text = line.strip()
        if m := STAMP.match(text):
            stamp = float(m.group(1))
        elif text.startswith(("localrule ", "rule ")):
            current = {"start": stamp}
        elif current is not None and text.startswith("log: "):
            current["log"] = text[5:].split(",")[0].strip()
        elif current is not None and text.startswith("jobid: "):
            jobid = text[7:].strip()
            started[jobid], logs[jobid] = current["start"], current.get("log", "")
            current = None
        elif text.startswith("Finished jobid: "):
            jobid = text[len("Finished jobid: ") :].split()[0]
            if logs.get(jobid) and started.get(jobid) is not None:
                walls[logs[jobid]] = stamp - started[jobid]
    return walls


def stage_time(log: Path) -> float:
    done = STAGE_DONE.search(log.read_text())
    if not done:
        sys.exit(f"{log}: no 'done' line")
    return float(done.group(2))


def import_time(module: str, env: dict[str, str], repeats: int) -> float:
    """Median wall s of `python -c "import module"`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(PYTHON), "-c", f"import {module}"], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that runs `tree`'s own package (its src/ before the editable install's)."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    where = subprocess.run(
        [str(PYTHON), "-c", "import mapmerge; print(mapmerge.__file__)"], env=env, capture_output=True, text=True
    )
    if not Path(where.stdout.strip()).is_relative_to(tree / "src"):
        sys.exit(
            f"{tree}: its mapmerge does not come first on sys.path ({where.stdout.strip()} {where.stderr.strip()})"
        )
    return env


def demo(tree: Path, folder: Path, cores: int, env: dict[str, str]) -> dict[str, float]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run = run_snakemake(tree, folder, ["--cores", str(cores)], folder.parent / f"{folder.name}.out", env)
    run["jobs"] = len(job_walls((folder.parent / f"{folder.name}.out").read_text()))
    return run


def overheads(tree: Path, folder: Path, env: dict[str, str], repeats: int, tmp: Path, label: str) -> dict[str, dict]:
    """Per stage kind: jobs, median job wall, stage time, overhead, floor (import of the stage module)."""
    rows = {}
    for kind, (rule, module) in KINDS.items():
        if rule == "fit_surrogate":
            runs = [(["--cores", "1", str(RESULTS / "groups/all/surrogate.parquet"), "--forcerun", rule])] * repeats
        else:
            # evaluated for real: this tree's evaluation cache would give the tables back (a tree before it has none)
            fresh = ["--config", "overrides=[evaluation.cache=false]"] if tree == REPO else []
            runs = [
                [
                    "--cores",
                    "1",
                    *(str(RESULTS / f"groups/all/evals/{b}.parquet") for b in BATCHES),
                    "--forcerun",
                    rule,
                    *fresh,
                ]
            ]
        jobs = []
        for i, args in enumerate(runs):
            out = tmp / f"{label}-{rule}-{i}.out"
            run_snakemake(tree, folder, args, out, env)
            for log, wall in job_walls(out.read_text()).items():
                stage = stage_time(folder / log)
                jobs.append({"wall": wall, "stage": stage, "overhead": wall - stage})
        if not jobs:
            sys.exit(f"{label} {rule}: no job lines in snakemake's output")
        floor = import_time(module, env, repeats)
        overhead = statistics.median(j["overhead"] for j in jobs)
        rows[kind] = {
            "jobs": len(jobs),
            "wall": statistics.median(j["wall"] for j in jobs),
            "stage": statistics.median(j["stage"] for j in jobs),
            "overhead": overhead,
            "floor": floor,
            "ratio": overhead / floor,
        }
    rows["python -c pass"] = {"floor": import_time("sys", env, repeats)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", help="a git revision to measure side by side (e.g. the commit before `shell:` jobs)"
    )
    parser.add_argument("--demo-runs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    total_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mapmerge-overhead-"))
    trees = {"after": REPO}
    demos: dict[str, list[dict]] = {}
    jobs: dict[str, dict] = {}
    try:
        if args.before:
            trees = {"before": tmp / "before", "after": REPO}
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tmp / "before"), args.before],
                check=True,
                capture_output=True,
            )
        envs = {label: tree_env(tree) for label, tree in trees.items()}
        for rep in range(args.demo_runs):
            for label, tree in trees.items():
                demos.setdefault(label, []).append(demo(tree, tmp / label / "demo", args.cores, envs[label]))
                print(f"... demo {label} {rep + 1}: {demos[label][-1]['wall']:.0f} s", file=sys.stderr, flush=True)
        for label, tree in trees.items():
            jobs[label] = overheads(tree, tmp / label / "demo", envs[label], args.repeats, tmp, label)
            print(f"... per-job overheads of {label} measured", file=sys.stderr, flush=True)
    finally:
        if args.before:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "before")], capture_output=True
            )
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    names = {"after": f"after (this checkout, {REPO})", "before": f"before ({args.before})"}
    print(
        f"The demo pipeline: snakemake --cores {args.cores} on the default config (built-in benchmark, 4 tasks, "
        f"45 designed merges), from an empty folder; {args.demo_runs} run(s) per tree, alternating\n"
    )
    print("| tree | jobs | wall s | CPU s (snakemake and its children) |")
    print("|---|---|---|---|")
    for label, runs in demos.items():
        for run in runs:
            print(f"| {names[label]} | {run['jobs']} | {run['wall']:.1f} | {run['cpu']:.0f} |")
    if "before" in demos:
        before = statistics.median(r["wall"] for r in demos["before"])
        after = statistics.median(r["wall"] for r in demos["after"])
        print(f"\nspeed-up of the demo pipeline: {before:.1f} s / {after:.1f} s = {before / after:.2f}x (medians)")
    print(
        "\nPer-job overhead (job wall - the stage's own time inside the job; medians; `--cores 1`) against its floor, "
        '`python -c "import <stage module>"`:\n'
    )
    print("| tree | stage kind | jobs | job wall s | stage s | overhead s | floor s (import) | overhead / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for label, rows in jobs.items():
        for kind, r in rows.items():
            if "jobs" in r:
                print(
                    f"| {label} | {kind} | {r['jobs']} | {r['wall']:.2f} | {r['stage']:.2f} | {r['overhead']:.2f} | "
                    f"{r['floor']:.2f} | {r['ratio']:.2f} |"
                )
    for label, rows in jobs.items():
        print(f'({label}: `python -c "import sys"` takes {rows["python -c pass"]["floor"]:.3f} s)')
    print(f"\ntotal {time.perf_counter() - total_start:.0f} s; temporary folder removed: {not tmp.exists()}")


if __name__ == "__main__":
    main()
