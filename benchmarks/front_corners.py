"""How far a run's predicted front falls short of its own one-task corners, and whether seeding NSGA-III helps.

    .venv/bin/python benchmarks/front_corners.py RUN [RUN ...] [--group all] [--metric accuracy]
        [--pop-size 200] [--n-gen 200] [--seed 0]

For a finished run folder's group (plain MAP: `all`) it reads the surrogates (surrogate.parquet) and the stored
front (front.parquet), and prints per task: the front's best predicted value, and the surrogates' prediction at
the box's corner for that task alone (the box of the group's samples, as stage pareto_front takes it; c_t at its
upper bound, every other coefficient at its lower bound: in the default box [0, 1], the task's fine-tuned model),
and which corners no front point equals or dominates (since 2026-12-07 stage pareto_front adds those to the
front, so a run made since lists none). Then it runs NSGA-III again as mapmerge.core.pareto.surrogate_front
does (the options: the workflow's optimizer.pop_size, n_gen and seed, defaults of the run's config), once as the
workflow does and once with the corners in its first population (the rest uniform in the box, numpy seeded alike),
and prints both fronts' best per task and the share of each front's points the other dominates. Plain MAP's
objectives: one per task (a member of several tasks is not handled).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.optimize import minimize
from pymoo.util.ref_dirs import get_reference_directions

from mapmerge.core.pareto import (
    _signs,
    _sorted_front,
    _SurrogateProblem,
    box_corners,
    default_partitions,
    surrogate_front,
)
from mapmerge.core.surrogate import objective_predictor
from mapmerge.io import ArtifactError, read_table
from mapmerge.layout import Layout


def nsga3(predict, lower: np.ndarray, upper: np.ndarray, pop_size: int, n_gen: int, seed: int, seeded: bool):
    """The objectives F of NSGA-III's front as surrogate_front finds it (no corners added), or, `seeded`, of the same
    NSGA-III with the one-task corners in its first population."""
    n = len(lower)
    maximize = [True] * n
    if not seeded:
        return surrogate_front(predict, n, lower, upper, maximize, pop_size, n_gen, seed)[1]
    signs = _signs(maximize)
    ref_dirs = get_reference_directions("das-dennis", n, n_partitions=default_partitions(n, pop_size))
    size = max(pop_size, len(ref_dirs))
    first = np.vstack([box_corners(lower, upper), np.random.default_rng(seed).uniform(lower, upper, (size - n, n))])
    algorithm = NSGA3(ref_dirs=ref_dirs, pop_size=size, sampling=first)
    result = minimize(_SurrogateProblem(predict, lower, upper, signs), algorithm, ("n_gen", n_gen), seed=seed)
    return _sorted_front(result.pop.get("X"), result.pop.get("F") * signs, maximize)[1]


def dominated_share(X: np.ndarray, Y: np.ndarray) -> float:
    """The share of X's points that some point of Y dominates (all objectives maximised)."""
    return float(np.mean([(np.all(Y >= x, axis=1) & np.any(Y > x, axis=1)).any() for x in X]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--group", default="all")
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--pop-size", type=int, default=200)
    parser.add_argument("--n-gen", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for results in args.runs:
        L = Layout(results)
        try:
            table, front, samples = (read_table(p(args.group)) for p in (L.surrogate, L.front, L.samples))
        except ArtifactError as error:
            raise SystemExit(f"front_corners: {error} (a finished run folder, please)") from None
        tasks = [c.removeprefix("c_") for c in front.columns if c.startswith("c_")]
        predict = objective_predictor(table, args.metric, tasks)
        coef = samples[[f"c_{t}" for t in tasks]].to_numpy(dtype=float)
        lower, upper = coef.min(axis=0), coef.max(axis=0)
        corners = predict(box_corners(lower, upper))
        F = front[[f"{args.metric}_{t}" for t in tasks]].to_numpy(dtype=float)
        missing = [t for t, corner in zip(tasks, corners) if not (F >= corner).all(axis=1).any()]
        print(f"== {results}, group {args.group}: {len(F)} front points, {len(tasks)} tasks")
        rows = {"front's best": F.max(axis=0), "corner": np.diag(corners)}
        fronts = {}
        for seeded in (False, True):
            start = time.perf_counter()
            fronts[seeded] = nsga3(predict, lower, upper, args.pop_size, args.n_gen, args.seed, seeded)
            label = "NSGA-III, corners seeded" if seeded else "NSGA-III again"
            rows[f"{label} ({time.perf_counter() - start:.0f} s)"] = fronts[seeded].max(axis=0)
        print(pd.DataFrame(rows, index=tasks).T.round(3).to_string())
        print(f"  corners that no front point equals or dominates: {', '.join(missing) or 'none'}")
        print(
            f"  share of the plain front dominated by the seeded one {dominated_share(fronts[False], fronts[True]):.3f},"
            f" of the seeded one by the plain one {dominated_share(fronts[True], fronts[False]):.3f}"
        )


if __name__ == "__main__":
    main()
