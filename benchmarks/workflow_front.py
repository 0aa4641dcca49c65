"""The workflow's own measured front against grid search, on the built-in benchmark, one workflow run per seed.

front_quality.py measures MAP's loop in one process; this runs the workflow itself (`snakemake` with the given
overrides and `seed=<s>`, each seed its own benchmark training), then evaluates a dense grid of merges on the run's
own checkpoints and task vectors: its non-dominated set is the truth, and a coarse grid (`--grid-side`) is grid
search. Each truth of `--truths` scores the same runs: `grid:N`, the N^T grid, or `sobol:N`, front_quality.py's
scrambled Sobol points (the next power of two above N^T, seeded as there; they share no point with any grid).
Printed per truth, per seed and on average: the run's real evaluations of its group, the IGD and IGD+ (pymoo,
accuracies) of their non-dominated set and of grid search's, both IGDs also against the true-front points grid
search did not evaluate (`igd unshared`: front_quality.py's; equal to IGD where the truth shares no point with the
grid), and the grid's evaluations over the run's. Plain MAP on
the benchmark's tasks, accuracy; the merges lie in [0, 1]^T, the sampler's default box.

    .venv/bin/python benchmarks/workflow_front.py [--tasks 3] [--seeds 6] [--grid-side 3] [--truths grid:9] \
        [--overrides sampler.factor=0.6 refine.rounds=3 refine.points=2]    # the defaults; 1-2 min per seed

Runs go to a temporary folder, removed at the end (--keep FOLDER keeps them there).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from pymoo.indicators.igd_plus import IGDPlus

from front_quality import Evaluator, answer, grid, ground_truth, igd_against, model_engine, true_front
from mapmerge.io import read_table
from mapmerge.run.config import load_config
from workflow_command import REPO, run_timed, workflow_command

BELOW_P = ["sampler.factor=0.6", "refine.rounds=3", "refine.points=2"]  # 15 evaluations at T = 3


def truth_points(spec: str, n_tasks: int) -> np.ndarray:
    """The merges of a truth spec, `grid:N` or `sobol:N` (front_quality.ground_truth)."""
    kind, _, side = spec.partition(":")
    if kind not in ("grid", "sobol") or not side.isdigit() or int(side) < 2:
        raise SystemExit(f"--truths: {spec!r} is not grid:N or sobol:N with N >= 2")
    return ground_truth(n_tasks, kind, int(side))[0]


def run_seed(folder: Path, overrides: list[str], grid_side: int, truths: list[str]) -> dict[str, dict[str, float]]:
    """One workflow run in `folder` with `overrides`, scored per truth against grid search on its own checkpoints."""
    run_timed(workflow_command(folder, cores=2, overrides=overrides), str(folder))
    cfg = load_config(REPO / "config", overrides=[*overrides, f"results_dir={folder / 'results'}"])
    model, tasks = cfg["model"], cfg["task_names"]
    results = folder / "results" / cfg["name"]
    evaluate = Evaluator(model_engine(model, {t: results / "task_vectors" / f"{t}.safetensors" for t in tasks}, "none"))
    metrics = read_table(results / "groups" / "all" / "metrics.parquet")
    rows = metrics[metrics["metric"] == "accuracy"].pivot(index="sample", columns="task", values="value")[tasks]
    run, searched = answer(rows.to_numpy()), answer(evaluate(grid(len(tasks), grid_side)))
    scores = {}
    for spec in truths:
        front, shared = true_front(evaluate, truth_points(spec, len(tasks)), [grid_side])
        igd, igd_plus, unshared = igd_against(front), igd_against(front, IGDPlus), igd_against(front[~shared])
        scores[spec] = {
            "evaluations": len(rows),
            "igd": igd(run),
            "grid igd": igd(searched),
            "igd+": igd_plus(run),
            "grid igd+": igd_plus(searched),
            "igd unshared": unshared(run),
            "grid igd unshared": unshared(searched),
        }
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3, help="the benchmark's first T tasks")
    parser.add_argument("--seeds", type=int, default=6, help="seeds 0..N-1 (config `seed`: benchmark and run)")
    parser.add_argument("--grid-side", type=int, default=3, help="grid search's points per axis")
    parser.add_argument(
        "--truths",
        nargs="+",
        default=["grid:9"],
        help="the truths, each grid:N (N^T grid) or sobol:N (front_quality's)",
    )
    parser.add_argument("--overrides", nargs="*", default=BELOW_P, help="the runs' config overrides")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args()
    for spec in args.truths:
        truth_points(spec, 2)  # a bad spec stops here, before any run
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as scratch:
        base = args.keep or Path(scratch)
        rows: dict[str, list[dict[str, float]]] = {spec: [] for spec in args.truths}
        for seed in range(args.seeds):
            overrides = [f"benchmark.tasks={args.tasks}", *args.overrides, f"seed={seed}"]
            for spec, row in run_seed(base / f"seed{seed}", overrides, args.grid_side, args.truths).items():
                rows[spec].append({"seed": seed, **row})
                print(spec, " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    for spec in args.truths:
        print_table(pd.DataFrame(rows[spec]).set_index("seed"), args, spec)


def print_table(table: pd.DataFrame, args: argparse.Namespace, spec: str) -> None:
    """One truth's table, per seed and on average."""
    grid_evals = args.grid_side**args.tasks
    print(f"\nT = {args.tasks}, overrides {' '.join(args.overrides)}; truth {spec}\n")
    print("| seed | " + " | ".join(table.columns) + " |")
    print("|---" * (len(table.columns) + 1) + "|")
    for seed, row in table.iterrows():
        print(f"| {seed} | {row['evaluations']:.0f} | " + " | ".join(f"{v:.4f}" for v in row.iloc[1:]) + " |")
    mean = table.mean()
    print(
        f"\nmean: the run's IGD {mean['igd']:.4f} at {mean['evaluations']:.1f} evaluations against grid "
        f"{grid_evals}'s {mean['grid igd']:.4f} (IGD+ {mean['igd+']:.4f} against {mean['grid igd+']:.4f}); "
        f"{mean['evaluations'] / grid_evals:.2f}x its evaluations; the run ahead on {(table['igd'] <= table['grid igd']).sum()} "
        f"of {len(table)} seeds; against the true-front points grid search did not evaluate, the run's IGD "
        f"{mean['igd unshared']:.4f} against {mean['grid igd unshared']:.4f}, ahead on "
        f"{(table['igd unshared'] <= table['grid igd unshared']).sum()}"
    )


if __name__ == "__main__":
    main()
