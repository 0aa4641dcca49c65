"""What `balanced` picks for unequal preferences: a sweep of preferences over finished plain-MAP runs' fronts.

    .venv/bin/python benchmarks/preference_sweep.py RUN [RUN ...] [--ratio 3] [--random 40] [--seed 0]

Reads each run folder's reference.parquet, measured.parquet (its real evaluations) and pareto.parquet (the predicted
front) and applies, without evaluating anything, selection rules to both fronts for a set of preferences:

- `pairs 1:R`: every ordered pair of tasks weighted 1 and R (the other tasks 0);
- `random`: N preferences over every task drawn from a flat Dirichlet (numpy, `--seed`), and the equal one.

The rules: `balanced` as the workflow applies it (mapmerge.core.selection.pick_point, with its fallback where no
point keeps every weighted task's gain at BALANCED_FLOOR), and two what-ifs for that fallback: `keep weight`, the
points that keep the largest share of the preference's weight at the floor, then balanced's Tchebycheff regret on
the gains among them; `gain sum`, the fallback with the preference-weighted sum of the gains in place of the
metric's. Per front, set and rule, over the preferences where balanced falls back (elsewhere the rules agree): the
mean preference-weighted gain of the pick, the heaviest task's mean gain (`best`: the highest any point offers it),
how many picks leave the heaviest task below the floor, the mean of the picks' lowest weighted gain, and how many
put some weighted task below its pretrained model (gain < 0). Then each front's pick for the equal preference (the
what-ifs only where balanced falls back). Gain: (metric - pretrained) / (fine-tuned - pretrained), as balanced
takes it (mapmerge.core.selection.task_gains). Plain MAP only: one group whose members are the tasks.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from mapmerge.core.selection import (
    BALANCED_FLOOR,
    measured_front,
    pick_point,
    point_scores,
    reference_values,
    task_gains,
)
from mapmerge.io import ArtifactError, read_table
from mapmerge.layout import Layout

METRIC = "accuracy"
RHO = 0.05  # selection.rho's default


def keep_weight_pick(G: np.ndarray, w: np.ndarray) -> int:
    """The what-if rule: among the points keeping the largest weight at the floor, the least weighted regret."""
    kept = ((G >= BALANCED_FLOOR) * w).sum(axis=1)
    scores = point_scores(G, list(w), [True] * len(w), "balanced", RHO)
    return int(np.argmax(np.where(kept >= kept.max() - 1e-12, scores, -np.inf)))


def gain_sum_pick(G: np.ndarray, w: np.ndarray) -> int:
    """The what-if fallback: balanced's, the preference-weighted sum of the gains instead of the metric's."""
    on = w > 0
    above = (G[:, on] > 0).all(axis=1)
    scores = G @ w
    return int(np.argmax(np.where(above, scores, -np.inf) if above.any() else scores))


WHAT_IF = {"keep weight": keep_weight_pick, "gain sum": gain_sum_pick}


def preferences(n_tasks: int, ratio: float, random: int, seed: int) -> dict[str, list[np.ndarray]]:
    """The sweep's preference sets, each weight vector summing to 1."""
    pairs = []
    for light, heavy in itertools.permutations(range(n_tasks), 2):
        w = np.zeros(n_tasks)
        w[light], w[heavy] = 1.0, ratio
        pairs.append(w / w.sum())
    rng = np.random.default_rng(seed)
    drawn = [rng.dirichlet(np.ones(n_tasks)) for _ in range(random)] + [np.full(n_tasks, 1.0 / n_tasks)]
    return {f"pairs 1:{ratio:g}": pairs, "random": drawn}


class Front:
    """A plain-MAP front (one member per task) with its points' gains G [points, tasks] (task_gains)."""

    def __init__(self, points: pd.DataFrame, tasks: list[str], reference: dict) -> None:
        self.points, self.tasks, self.reference = points, tasks, reference
        self.info = {"members": tasks, "tasks": tasks, "member_tasks": [[t] for t in tasks]}
        gain = task_gains({t: points[f"{METRIC}_{t}"].to_numpy(dtype=float) for t in tasks}, reference, True)
        self.G = np.column_stack([gain[t] for t in tasks])

    def picks(self, w: np.ndarray) -> dict[str, int]:
        """The row each rule picks for weights `w`: balanced's (keyed by the rule that picked, its own or its
        fallback's) and, where balanced falls back, each what-if's."""
        preference = dict(zip(self.tasks, map(float, w)))
        now, _, rule = pick_point(self.points, self.info, preference, METRIC, "balanced", RHO, self.reference)
        if rule == "balanced":
            return {rule: now}
        return {rule: now, **{name: pick(self.G, w) for name, pick in WHAT_IF.items()}}


def sweep(front: Front, weights: list[np.ndarray]) -> pd.DataFrame:
    """Per preference where balanced falls back: every rule's pick in gains."""
    G, rows = front.G, []
    for w in weights:
        chosen = front.picks(w)
        if len(chosen) == 1:
            continue
        heavy, on = int(np.argmax(w)), w > 0
        for name, i in zip(["balanced", *WHAT_IF], chosen.values()):
            rows.append(
                {
                    "rule": name,
                    "weighted gain": float(G[i] @ w),
                    "heaviest": G[i, heavy],
                    "best": G[:, heavy].max(),
                    "heaviest < floor": G[i, heavy] < BALANCED_FLOOR,
                    "lowest": G[i, on].min(),
                    "below pretrained": bool((G[i, on] < 0).any()),
                }
            )
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        return rows
    table = rows.groupby("rule", sort=False).agg(
        n=("weighted gain", "size"),
        weighted_gain=("weighted gain", "mean"),
        heaviest=("heaviest", "mean"),
        best=("best", "mean"),
        heaviest_below_floor=("heaviest < floor", "sum"),
        lowest=("lowest", "mean"),
        below_pretrained=("below pretrained", "sum"),
    )
    return table.round(3)


def equal_picks(front: Front) -> list[str]:
    """A line per rule: its pick for the equal preference."""
    points, tasks = front.points, front.tasks
    lines = []
    for name, i in front.picks(np.full(len(tasks), 1 / len(tasks))).items():
        label = points["sample"].iloc[i] if "sample" in points else f"point {i}"
        mean = points[[f"{METRIC}_{t}" for t in tasks]].iloc[i].mean()
        gains = " ".join(f"{t} {g:+.2f}" for t, g in zip(tasks, front.G[i]))
        lines.append(f"    {name}: {label}, mean {METRIC} {mean:.3f}, gains {gains}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--ratio", type=float, default=3.0)
    parser.add_argument("--random", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    for results in args.runs:
        L = Layout(results)
        try:
            measured, reference, pareto = (read_table(p) for p in (L.measured, L.reference, L.pareto))
        except ArtifactError as error:
            raise SystemExit(f"preference_sweep: {error} (a finished plain-MAP run folder, please)") from None
        tasks = [c.removeprefix("c_") for c in measured.columns if c.startswith("c_")]
        reference = reference_values(reference, METRIC, tasks)
        fronts = {
            "measured": Front(measured_front(measured, METRIC, tasks).reset_index(drop=True), tasks, reference),
            "predicted": Front(pareto.reset_index(drop=True), tasks, reference),
        }
        sets = preferences(len(tasks), args.ratio, args.random, args.seed)
        for name, front in fronts.items():
            print(f"== {results}: {name} front, {len(front.points)} points, {len(tasks)} tasks")
            for label, weights in sets.items():
                table = summary(sweep(front, weights))
                print(
                    f"  {label}: {len(weights)} preferences, balanced falls back for {table['n'].iloc[0] if len(table) else 0}"
                )
                if len(table):
                    print("\n".join("    " + line for line in table.to_string().splitlines()))
            print("  equal preference:")
            print("\n".join(equal_picks(front)))


if __name__ == "__main__":
    main()
