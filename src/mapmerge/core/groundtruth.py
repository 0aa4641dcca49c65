"""Validation of a MAP front against ground truth (opt-in, `validation.enabled`).

Ground truth is the real evaluation of a dense grid of coefficient vectors over the sampler's box
(resolution^T merges, so for few tasks only); its non-dominated points are the true front. K points
spread along MAP's predicted front are evaluated for real, and baselines (a merge operator at one
coefficient for every task) once each. The indicators, on the objective metric (optimizer.objective):

- igd: mean distance from each true-front point to its nearest point of the front measured;
- igd_plus: IGD+, the same with each distance counted only over the tasks where the front's point is worse (a
  true-front point that the front dominates counts 0: IGD alone can score a better front worse);
- gd: mean distance from each point of the front measured to its nearest true-front point;
- hv: hypervolume dominated by the front, bounded by the grid's nadir (per task the worst value
  over every grid point), the same reference point for every front and every bootstrap resample;
- pred_mae, pred_max: mean and largest |predicted - real| over the K points and every task, per metric;
- coverage: the share of the grid's real values inside the surrogate's prediction interval at the grid's
  coefficients (surrogate.interval), per fitted metric, per task (front: the task) and over all tasks (front
  `all`); nominal is the interval's level (coverage_table).

igd, igd_plus, gd and hv are given for the K points as MAP predicted them (front `predicted`) and as measured
(front `real`), and hv also for the true front (front `grid`). Intervals: each task's examples are
drawn with replacement (one draw for every model, from the master seed), metrics recomputed from the
per-example rows and the indicators with them; ci_low and ci_high are the central `ci_level` interval.
pred_mae's, pred_max's and coverage's intervals resample the points instead (the K points, the grid's points; with
replacement, a stream of their own beside the seed): how they would differ with other merges. Resampling the
examples would add noise to the real values, so to every absolute error and to every value outside an interval:
an interval that need not hold the value measured.

The stages' entry points are in mapmerge.stages (validate_front, validate_baseline, validate); the
grid's batches are evaluated by stage evaluate.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mapmerge.core.metrics import METRICS, metrics_from_examples, suffixes, wide_metrics
from mapmerge.core.spread import spread_order

COLUMNS = ["indicator", "front", "metric", "value", "ci_low", "ci_high", "n_points", "n_reference"]
GRID_PREFIX, FRONT_PREFIX = "g", "f"  # sample names of grid and front points
POINTS_STREAM = 2  # the resamples of the points (pred_mae, pred_max, coverage), beside the master seed


def grid_points(members: Sequence[str], lower: float, upper: float, resolution: int) -> pd.DataFrame:
    """The grid: resolution points per axis over [lower, upper]^T; one row per point, `sample` and `c_<member>`."""
    axis = np.linspace(float(lower), float(upper), resolution)
    points = np.array(list(itertools.product(axis, repeat=len(members))), dtype=float)
    frame = pd.DataFrame(points, columns=[f"c_{m}" for m in members])
    frame.insert(0, "sample", [f"{GRID_PREFIX}{i:06d}" for i in range(len(frame))])
    return frame


def spread_indices(F: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of k rows of F spread out (the first k of mapmerge.core.spread.spread_order); every row
    when there are at most k."""
    F = np.asarray(F, dtype=float)
    if len(F) <= k:
        return np.arange(len(F))
    return np.sort(spread_order(F)[:k])


def front_sample(front: pd.DataFrame, metric: str, k: int) -> pd.DataFrame:
    """K points spread along a predicted front (spread in its predicted `metric`), named f00, f01, ...

    Keeps the front's `c_<member>` and predicted `<metric>_<task>` columns, and its row as `front_row`.
    """
    columns = [f"{metric}_{t}" for t in suffixes(front.columns, metric)]
    rows = spread_indices(front[columns].to_numpy(), k)
    frame = front.iloc[rows].reset_index(drop=True)
    frame.insert(0, "front_row", rows)
    frame.insert(0, "sample", [f"{FRONT_PREFIX}{i:02d}" for i in range(len(frame))])
    return frame


class ExampleMatrices:
    """The per-example rows as one (samples x examples) matrix per (metric, task), for fast resampled metrics.

    A failed (sample, task) (a non-empty `error`) has no row in its task's matrices, so its metrics are NaN.
    """

    def __init__(self, examples: pd.DataFrame) -> None:
        ok = examples[examples["error"].isna()] if "error" in examples else examples
        self.samples = sorted(set(examples["sample"]))
        self.tasks = sorted(set(examples["task"]))
        self.ids: dict[str, np.ndarray] = {}
        self.blocks: dict[tuple[str, str], np.ndarray] = {}
        for task, rows in ok.groupby("task", sort=True):
            for metric, column in METRICS.items():
                if rows[column].notna().any():
                    block = rows.pivot(index="sample", columns="example", values=column).reindex(self.samples)
                    self.ids[task] = block.columns.to_numpy()
                    self.blocks[(metric, task)] = block.to_numpy(dtype=float)

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Per task, how often each example is drawn: its examples with replacement, one draw for every sample."""
        return {
            task: np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)) for task, ids in self.ids.items()
        }

    def metrics(self, counts: Mapping[str, np.ndarray]) -> pd.DataFrame:
        """Wide metrics (sample x `<metric>_<task>`, as wide_metrics) with each example weighted by its count."""
        columns = {
            f"{metric}_{task}": block @ counts[task] / counts[task].sum()
            for (metric, task), block in sorted(self.blocks.items())
        }
        return pd.DataFrame(columns, index=pd.Index(self.samples, name="sample"))


def hv_reference(grid: np.ndarray, maximize: bool) -> np.ndarray:
    """The hypervolume's reference point: per task the worst value over every grid point (the grid's nadir)."""
    return grid.min(axis=0) if maximize else grid.max(axis=0)


def front_indicators(
    grid: np.ndarray, fronts: Mapping[str, np.ndarray], reference: np.ndarray, maximize: bool
) -> dict[tuple[str, str], float]:
    """(indicator, front) -> value: igd, igd_plus, gd, hv of each front against the grid's non-dominated points, and
    hv of those.

    grid [n, T] and each front [k, T] hold the objective metric; maximize: whether larger is better.
    """
    from mapmerge.core import pareto  # deferred: pymoo

    signs = [maximize] * grid.shape[1]
    truth = grid[pareto.non_dominated(grid, signs)]
    values = {("hv", "grid"): pareto.hypervolume(truth, reference, signs)}
    for name, F in fronts.items():
        values[("igd", name)] = pareto.igd(F, truth, signs)
        values[("igd_plus", name)] = pareto.igd_plus(F, truth, signs)
        values[("gd", name)] = pareto.gd(F, truth, signs)
        values[("hv", name)] = pareto.hypervolume(F, reference, signs)
    return values


def prediction_errors(
    points: pd.DataFrame, measured: pd.DataFrame, metrics: Sequence[str], rows: np.ndarray | None = None
) -> dict[tuple[str, str], float]:
    """(indicator, metric) -> pred_mae / pred_max: |predicted - measured| over the points and tasks.

    points: predicted `<metric>_<task>` per row; measured: the same columns, rows in the same order; rows: which
    points to count (indices, repeats allowed: a resample of the points), all of them if None.
    """
    values = {}
    for metric in metrics:
        columns = [f"{metric}_{t}" for t in suffixes(points.columns, metric)]
        error = np.abs(points[columns].to_numpy(dtype=float) - measured[columns].to_numpy(dtype=float))
        error = error if rows is None else error[rows]
        values[("pred_mae", metric)], values[("pred_max", metric)] = float(error.mean()), float(error.max())
    return values


def _indicators(
    wide: pd.DataFrame,
    grid_samples: Sequence[str],
    points: pd.DataFrame,
    metric: str,
    reference: np.ndarray,
    maximize: bool,
) -> dict[tuple[str, str, str], float]:
    """The front indicators, keyed (indicator, front, metric), from the models' wide metrics."""
    columns = [f"{metric}_{t}" for t in suffixes(points.columns, metric)]
    measured = wide.loc[points["sample"], columns].to_numpy(dtype=float)
    fronts = {"predicted": points[columns].to_numpy(dtype=float), "real": measured}
    grid = wide.loc[grid_samples, columns].to_numpy(dtype=float)
    return {(i, f, metric): v for (i, f), v in front_indicators(grid, fronts, reference, maximize).items()}


def _errors(
    wide: pd.DataFrame, points: pd.DataFrame, metric: str, rows: np.ndarray | None = None
) -> dict[tuple[str, str, str], float]:
    """pred_mae and pred_max of every metric fitted and measured, keyed (indicator, `predicted`, metric), over the
    points' `rows` (all of them if None)."""
    tasks = suffixes(points.columns, metric)
    measured = wide.loc[points["sample"]].reset_index(drop=True)
    shared = [m for m in METRICS if f"{m}_{tasks[0]}" in points.columns and f"{m}_{tasks[0]}" in measured.columns]
    return {(i, "predicted", m): v for (i, m), v in prediction_errors(points, measured, shared, rows).items()}


def validation_table(
    examples: pd.DataFrame,
    points: pd.DataFrame,
    metric: str,
    maximize: bool,
    bootstrap: int,
    ci_level: float,
    seed: int,
    budget: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The indicators with bootstrap intervals (COLUMNS), and the hypervolume's reference point.

    examples: per-example rows of the grid points (samples g...) and of the front points (points['sample']).
    budget: the run's real evaluations of group all, for the win rates (WinRate); None: no win-rate rows.
    """
    from mapmerge.core import pareto  # deferred: pymoo

    wide = wide_metrics(metrics_from_examples(examples), "sample")
    grid_samples = [s for s in wide.index if s.startswith(GRID_PREFIX)]
    tasks = suffixes(points.columns, metric)
    grid = wide.loc[grid_samples, [f"{metric}_{t}" for t in tasks]].to_numpy(dtype=float)
    reference = hv_reference(grid, maximize)
    n_truth = len(pareto.non_dominated(grid, [maximize] * len(tasks)))
    values = _indicators(wide, grid_samples, points, metric, reference, maximize)
    values.update(_errors(wide, points, metric))
    win = WinRate(points, grid_samples, metric, maximize, budget, seed) if budget else None
    values.update(win(wide) if win else {})
    rng = np.random.default_rng(seed)
    matrices = ExampleMatrices(examples)
    draws = {key: [] for key in values}
    for _ in range(bootstrap):
        resampled = matrices.metrics(matrices.draw(rng))
        for key, value in _indicators(resampled, grid_samples, points, metric, reference, maximize).items():
            draws[key].append(value)
        for key, value in (win(resampled) if win else {}).items():
            draws[key].append(value)
    points_rng = np.random.default_rng([seed, POINTS_STREAM])
    for _ in range(bootstrap):
        for key, value in _errors(wide, points, metric, points_rng.integers(0, len(points), len(points))).items():
            draws[key].append(value)
    tail = 50 * (1 - ci_level)
    rows = []
    for (indicator, front, name), value in values.items():
        low, high = (
            np.percentile(draws[(indicator, front, name)], [tail, 100 - tail]) if bootstrap else (np.nan, np.nan)
        )
        rows.append(
            [
                indicator,
                front,
                name,
                value,
                float(low),
                float(high),
                n_truth if front == "grid" else len(points),
                win.sizes.get(indicator, n_truth) if win else n_truth,  # win rates: the brute force's evaluations
            ]
        )
    return pd.DataFrame(rows, columns=COLUMNS), reference


# win rate (the MAP paper's metric): MAP's pick per preference vector against brute force on the same budget

WIN_VECTORS = 100  # at most this many preference vectors, the Das-Dennis lattice: 100 for 2 tasks, 91 for 3
WIN_SUBSETS = 100  # random brute-force searches: seeded subsets of the grid of the budget's size
WIN_STREAM = 1  # the subsets' random stream, beside the master seed (the bootstrap draws from the seed alone)


def grid_subset(n_grid: int, n_tasks: int, budget: int) -> np.ndarray:
    """Indices (into grid_points' rows) of the regular sub-grid of the resolution^T grid (n_grid points) with the most
    points per axis and at most `budget` points: n = floor(budget^(1/T)) per axis (1 <= n <= resolution), evenly
    spread over the grid's axis, both ends included when n >= 2."""
    resolution = int(round(n_grid ** (1.0 / n_tasks)))
    n = max(1, min(resolution, int(np.floor(budget ** (1.0 / n_tasks) + 1e-9))))
    axis = np.unique(np.round(np.linspace(0, resolution - 1, n)).astype(int))
    index = np.array(list(itertools.product(axis, repeat=n_tasks))).T
    return np.ravel_multi_index(tuple(index), (resolution,) * n_tasks)  # row-major, as itertools.product


class WinRate:
    """The win rate of the K measured front points against brute force on the validation grid, on the objective.

    Preference vectors: the Das-Dennis lattice over the tasks, at most WIN_VECTORS. MAP's pick per vector w: of the
    K points, the one with the best predicted weighted sum (the selection rule weighted_sum), scored by its measured
    values. Brute force with `budget` real evaluations (the run's evaluations of group all): win_rate_grid, the
    regular sub-grid of the grid with at most `budget` points (grid_subset); win_rate_random, WIN_SUBSETS random
    subsets of the grid of min(budget, grid) points each (seeded), the rate averaged over them. A win: the pick's
    measured weighted sum is at least the best of the brute force's (mapmerge.core.pareto.win_rate). The picks and
    subsets are fixed; calling it on resampled metrics gives the rates for that resample.
    """

    def __init__(
        self,
        points: pd.DataFrame,
        grid_samples: Sequence[str],
        metric: str,
        maximize: bool,
        budget: int,
        seed: int,
    ) -> None:
        from mapmerge.core import pareto  # deferred: pymoo

        self.metric = metric
        self.columns = [f"{metric}_{t}" for t in suffixes(points.columns, metric)]
        self.maximize = [maximize] * len(self.columns)
        self.W = pareto.preference_vectors(len(self.columns), WIN_VECTORS)
        predicted = points[self.columns].to_numpy(dtype=float)
        self.picks = points["sample"].to_numpy()[pareto.weighted_picks(predicted, self.W, self.maximize)]
        self.grid_samples = list(grid_samples)
        numbers = {int(s[len(GRID_PREFIX) :]): s for s in self.grid_samples}
        regular = grid_subset(max(numbers) + 1, len(self.columns), budget)
        self.regular = [numbers[i] for i in regular if i in numbers]
        size = min(int(budget), len(self.grid_samples))
        rng = np.random.default_rng([seed, WIN_STREAM])
        self.subsets = np.array([rng.choice(len(self.grid_samples), size, replace=False) for _ in range(WIN_SUBSETS)])
        self.sizes = {"win_rate_grid": len(self.regular), "win_rate_random": size}  # the brute forces' evaluations

    def __call__(self, wide: pd.DataFrame) -> dict[tuple[str, str, str], float]:
        """(indicator, front, metric) -> win rate, from the models' wide metrics (measured or resampled)."""
        from mapmerge.core import pareto  # deferred: pymoo

        picked = wide.loc[self.picks, self.columns].to_numpy(dtype=float)
        grid = wide.loc[self.grid_samples, self.columns].to_numpy(dtype=float)
        regular = wide.loc[self.regular, self.columns].to_numpy(dtype=float)
        return {
            ("win_rate_grid", "real", self.metric): pareto.win_rate(self.W, picked, regular, self.maximize),
            ("win_rate_random", "real", self.metric): pareto.win_rate(
                self.W, picked, grid[self.subsets], self.maximize
            ),
        }


# coverage of the surrogate's prediction intervals on the grid

COVERAGE_ALL = "all"  # the `front` of the coverage row pooling every task


def interval_coverage(
    wide: pd.DataFrame,
    bounds: pd.DataFrame,
    tasks: Sequence[str],
    metrics: Sequence[str],
    rows: np.ndarray | None = None,
) -> dict[tuple[str, str, str], float]:
    """(coverage, task or 'all', metric) -> share of the real `<metric>_<task>` of `wide` within [`_lo`, `_hi`].

    wide: real metrics per grid sample; bounds: the intervals (`<metric>_<task>_lo`, `_hi`), indexed by the same
    samples. A NaN real value or bound counts as outside. rows: which of the bounds' points to count (indices,
    repeats allowed: a resample of the points), all of them if None.
    """
    values = {}
    for metric in metrics:
        inside = []
        for task in tasks:
            name = f"{metric}_{task}"
            real = wide.loc[bounds.index, name].to_numpy(dtype=float)
            held = (bounds[f"{name}_lo"].to_numpy(dtype=float) <= real) & (
                real <= bounds[f"{name}_hi"].to_numpy(dtype=float)
            )
            held = held if rows is None else held[rows]
            values[("coverage", task, metric)] = float(held.mean())
            inside.append(held)
        values[("coverage", COVERAGE_ALL, metric)] = float(np.concatenate(inside).mean())
    return values


def coverage_table(
    examples: pd.DataFrame, bounds: pd.DataFrame, bootstrap: int, ci_level: float, seed: int
) -> pd.DataFrame:
    """The coverage rows (COLUMNS) of prediction intervals on the grid, every metric they are given for.

    examples: per-example rows of the grid points; bounds: the intervals at the grid's points, indexed by
    sample, as mapmerge.core.surrogate.prediction_columns gives them (`<metric>_<task>`, `_lo`, `_hi`).
    ci_low, ci_high: the grid's points resampled with replacement (the stream POINTS_STREAM beside the seed), the
    prediction intervals and the real values fixed. n_points: the real values counted (grid points x tasks for `all`); n_reference: the grid's points.
    """
    grid = examples[examples["sample"].str.startswith(GRID_PREFIX)]
    wide = wide_metrics(metrics_from_examples(grid), "sample")
    metrics = [m for m in METRICS if suffixes(bounds.columns, m)]
    tasks = suffixes(bounds.columns, metrics[0]) if metrics else []
    metrics = [m for m in metrics if all(f"{m}_{t}" in wide for t in tasks)]
    bounds = bounds.loc[wide.index]
    values = interval_coverage(wide, bounds, tasks, metrics)
    rng = np.random.default_rng([seed, POINTS_STREAM])
    draws = {key: [] for key in values}
    for _ in range(bootstrap):
        for key, value in interval_coverage(
            wide, bounds, tasks, metrics, rng.integers(0, len(bounds), len(bounds))
        ).items():
            draws[key].append(value)
    tail = 50 * (1 - ci_level)
    rows = []
    for (indicator, front, metric), value in values.items():
        low, high = np.percentile(draws[(indicator, front, metric)], [tail, 100 - tail]) if bootstrap else (np.nan,) * 2
        counted = len(wide) * (len(tasks) if front == COVERAGE_ALL else 1)
        rows.append([indicator, front, metric, value, float(low), float(high), counted, len(wide)])
    return pd.DataFrame(rows, columns=COLUMNS)
