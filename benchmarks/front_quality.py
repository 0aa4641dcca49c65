"""Front quality per budget: IGD of each method's real front against a dense-grid ground truth.

    .venv/bin/python benchmarks/front_quality.py [--tasks 2 3] [--seeds 3] [--budgets 6,10,15,21]
        [--dataset digits|fashion] [--front-points K] [--quick]

The built-in benchmark (config `benchmark=<dataset>`, seed 0) is trained once with max(--tasks)
tasks; T tasks use its first T task vectors. Per T the ground truth is a dense grid over [0, 1]^T
(21^2 for T = 2, 9^3 for T = 3), every point evaluated for real once; its non-dominated
accuracies are the true front. Per T, budget B and seed s, each method spends real evaluations
(a merged model evaluated on all T tasks) and answers with a real front:

- MAP: a Sobol design of B points (the special points included; --sampler lhs for LHS), one
  quadratic surrogate per task (the config's accuracy link: sigmoid), NSGA-III on them; K points
  of the predicted front, spread along it (each task's best first, then the farthest in accuracy
  space), are evaluated for real. K = --front-points, default P = (T+1)(T+2)/2. Its answer: the non-dominated set of all its
  real evaluations (design and front points), as for the searches; `igd front` is that of the K
  re-evaluated front points alone. NSGA-III: population 100, 100 generations (the workflow's
  default is 200 x 200; --pop-size, --n-gen), which keeps the whole run under 10 minutes.
- Bayesian MAP: the same, with the design grown inside B by mapmerge.core.bayesian's rounds (initial
  design max(P + 2, initial_factor x P) points, rounds of per_round_factor x P points from the
  config, the last one cut to B); needs B >= P + 2.
- random search: B uniform random coefficient vectors; answer: the non-dominated ones.
- grid search: a regular n^T grid, n = round(B^(1/T)) (at least 2); answer: the non-dominated
  points. Deterministic, so its spread over seeds is 0.

Counting: the table reports MAP's and Bayesian MAP's K front re-evaluations separately
(`design`, `front`) and in `total`; the ratios use the total, so every real evaluation counts.
IGD is pymoo's (mean distance from each true-front point to the nearest answer point, in
accuracy units), with accuracies negated since pymoo minimises. Mean and standard deviation
over the seeds; `vs grid`: mean IGD over grid search's at the same budget (< 1 is better).
The ratio table: per T and target (grid search's, then random search's mean IGD at the largest
budget), per method the fewest total evaluations at which its mean IGD is at most the target,
and (x) the target's evaluations over those. Caveat: grid search's points with n = 2, 3, 5 per
axis lie on the ground-truth grid, so they are scored against their own exact values.
Evaluations of the same coefficients are computed once and counted for every method asking.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pymoo.indicators.igd import IGD

from mapmerge.builtin.model import prepare_benchmark
from mapmerge.core import bayesian, sampling
from mapmerge.core.pareto import non_dominated, surrogate_front
from mapmerge.core.surrogate import fit_surrogate, n_params
from mapmerge.run.config import load_config
from mapmerge.tensors.engine import MergeEngine
from mapmerge.tensors.taskvectors import extract_task_vector

REPO = Path(__file__).resolve().parents[1]
METHODS = ("MAP", "Bayesian MAP", "random search", "grid search")
DEFAULT_BUDGETS = {2: [6, 10, 15, 21], 3: [10, 15, 20, 30]}
GROUND_TRUTH = {2: 21, 3: 9}  # grid points per axis of the ground truth
# real accuracies of the answer, of the re-evaluated front points alone (None: no surrogate), design and front evaluations
Front = tuple[np.ndarray, np.ndarray | None, int, int]


class Evaluator:
    """Real accuracies [n, T] of merges c [n, T] on the first T tasks; each distinct c is evaluated once."""

    def __init__(self, engine: MergeEngine) -> None:
        self.engine = engine
        self.cache: dict[tuple[float, ...], np.ndarray] = {}
        self.seconds = 0.0  # spent evaluating

    def __call__(self, C: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        rows = []
        for c in np.asarray(C, dtype=float):
            key = tuple(c.round(12))
            if key not in self.cache:
                examples = self.engine.evaluate(c, sample="c")
                self.cache[key] = examples.groupby("task")["correct"].mean()[self.engine.tasks].to_numpy(dtype=float)
            rows.append(self.cache[key])
        self.seconds += time.perf_counter() - start
        return np.array(rows)


def build_engines(dataset: str, max_tasks: int, workdir: Path) -> tuple[dict[str, Any], dict[int, MergeEngine], float]:
    """Train the benchmark, extract its task vectors; an engine per T (its first T tasks) and the seconds it took."""
    start = time.perf_counter()
    cfg = load_config(
        REPO / "config",
        overrides=[
            f"benchmark={dataset}",
            f"benchmark.tasks={max_tasks}",
            f"results_dir={workdir}",
            "name=front_quality",
        ],
    )
    model = cfg["model"]
    ckpt = Path(model["pretrained"]).parent
    prepare_benchmark(cfg["benchmark"], ckpt)
    tasks = cfg["task_names"]
    vectors = {t: workdir / "vectors" / f"{t}.safetensors" for t in tasks}
    for t in tasks:
        extract_task_vector(
            model["pretrained"],
            model["tasks"][t]["checkpoint"],
            model["merge"]["include"],
            model["merge"]["exclude"],
            vectors[t],
            t,
        )
    engines = {
        n: MergeEngine(
            builder=model["builder"],
            pretrained=model["pretrained"],
            vectors={t: vectors[t] for t in tasks[:n]},
            task_checkpoints={t: model["tasks"][t]["checkpoint"] for t in tasks[:n]},
            evaluators={t: model["tasks"][t]["evaluator"] for t in tasks[:n]},
            merge=model["merge"],
            device="cpu",
        )
        for n in range(2, max_tasks + 1)
    }
    return cfg, engines, time.perf_counter() - start


def grid(n_tasks: int, per_axis: int) -> np.ndarray:
    """The regular grid [per_axis^T, T] over [0, 1]^T."""
    axes = np.meshgrid(*[np.linspace(0.0, 1.0, per_axis)] * n_tasks, indexing="ij")
    return np.stack([a.ravel() for a in axes], axis=1)


def answer(F: np.ndarray) -> np.ndarray:
    """The non-dominated rows of real accuracies F (all maximised)."""
    return F[non_dominated(F, [True] * F.shape[1])]


def spread(F: np.ndarray, k: int) -> np.ndarray:
    """Indices of k rows of F far apart: each column's best row first, then greedily the farthest."""
    chosen = list(dict.fromkeys(int(np.argmax(F[:, j])) for j in range(F.shape[1])))[:k]
    distance = np.linalg.norm(F[:, None, :] - F[chosen][None, :, :], axis=2).min(axis=1)
    while len(chosen) < min(k, len(F)):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(F - F[chosen[-1]], axis=1))
    return np.array(chosen)


def surrogate_answer(C: np.ndarray, F: np.ndarray, evaluate: Evaluator, opt: dict[str, Any], seed: int) -> Front:
    """Fit the quadratic surrogate per task on (C, F), NSGA-III in the sampled box, evaluate K front points."""
    n_tasks = C.shape[1]
    link = opt["surrogate"]["links"]["accuracy"]
    fits = [fit_surrogate(C, F[:, i], link, loo=False) for i in range(n_tasks)]
    C_front, F_pred = surrogate_front(
        lambda X: np.column_stack([f.predict(X) for f in fits]),
        n_tasks,
        C.min(axis=0),
        C.max(axis=0),
        [True] * n_tasks,
        pop_size=opt["pop_size"],
        n_gen=opt["n_gen"],
        seed=seed,
    )
    picked = evaluate(C_front[spread(F_pred, opt["front_points"][n_tasks])])
    return answer(np.vstack([F, picked])), answer(picked), len(C), len(picked)


def map_design(tasks: Sequence[str], n: int, kind: str, seed: int) -> np.ndarray:
    """The sampler's design of exactly n points in [0, 1]^T (special points first)."""
    sampler = {
        "kind": kind,
        "lower": 0.0,
        "upper": 1.0,
        "factor": 0.0,
        "min_points": n,
        "include_special": True,
        "equal": 0.5,
    }
    return sampling.design(list(tasks), sampler, seed)[[f"c_{t}" for t in tasks]].to_numpy()


def run_map(evaluate: Evaluator, budget: int, seed: int, opt: dict[str, Any]) -> Front | None:
    tasks = evaluate.engine.tasks
    if budget < n_params(len(tasks)):
        return None
    C = map_design(tasks, budget, opt["sampler"], seed)
    return surrogate_answer(C, evaluate(C), evaluate, opt, seed)


def run_bayesian(evaluate: Evaluator, budget: int, seed: int, opt: dict[str, Any]) -> Front | None:
    tasks = evaluate.engine.tasks
    n_tasks, p = len(tasks), n_params(len(tasks))
    cfg, surrogate_cfg = opt["bayesian"], opt["surrogate"]
    if budget < p + 2:
        return None
    C = map_design(tasks, min(budget, max(p + 2, math.ceil(float(cfg["initial_factor"]) * p))), opt["sampler"], seed)
    F = evaluate(C)
    rnd = 0
    while len(C) < budget:
        rnd += 1
        ids = [f"s{i:04d}" for i in range(len(C))]
        samples = pd.DataFrame(C, columns=[f"c_{t}" for t in tasks]).assign(sample=ids)
        metrics = pd.DataFrame(
            [
                {"sample": s, "task": t, "metric": "accuracy", "value": F[i, j]}
                for i, s in enumerate(ids)
                for j, t in enumerate(tasks)
            ]
        )
        errors = bayesian.sample_errors(samples, metrics, tasks, surrogate_cfg, "accuracy").to_numpy()
        round_cfg = bayesian.with_bins(cfg, len(C), n_tasks)
        n_new = min(bayesian.round_size(round_cfg, n_tasks), budget - len(C))
        new = bayesian.propose(C, errors, n_new, np.zeros(n_tasks), np.ones(n_tasks), round_cfg, seed + rnd)
        C, F = np.vstack([C, new]), np.vstack([F, evaluate(new)])
    return surrogate_answer(C, F, evaluate, opt, seed)


def run_random(evaluate: Evaluator, budget: int, seed: int, opt: dict[str, Any]) -> Front:
    C = np.random.default_rng(seed).uniform(0.0, 1.0, (budget, len(evaluate.engine.tasks)))
    return answer(evaluate(C)), None, budget, 0


def run_grid(evaluate: Evaluator, budget: int, seed: int, opt: dict[str, Any]) -> Front:
    n_tasks = len(evaluate.engine.tasks)
    C = grid(n_tasks, max(2, round(budget ** (1.0 / n_tasks))))
    return answer(evaluate(C)), None, len(C), 0


RUNNERS: dict[str, Callable[[Evaluator, int, int, dict[str, Any]], Front | None]] = {
    "MAP": run_map,
    "Bayesian MAP": run_bayesian,
    "random search": run_random,
    "grid search": run_grid,
}


def measure(
    evaluate: Evaluator, budgets: Sequence[int], seeds: int, opt: dict[str, Any], truth_per_axis: int
) -> pd.DataFrame:
    """One row per (method, budget, seed): evaluations spent, IGD of the answer, seconds besides evaluating."""
    n_tasks = len(evaluate.engine.tasks)
    truth = answer(evaluate(grid(n_tasks, truth_per_axis)))
    igd = IGD(-truth)  # pymoo minimises: negated accuracies
    print(
        f"T={n_tasks}: ground truth {truth_per_axis}^{n_tasks} grid, {len(truth)} points on its front", file=sys.stderr
    )
    rows = []
    for budget in budgets:
        for method, run in RUNNERS.items():
            for seed in range(1 if method == "grid search" else seeds):
                start, evaluating = time.perf_counter(), evaluate.seconds
                result = run(evaluate, budget, seed, opt)
                if result is None:
                    continue
                front, front_only, design, refront = result
                rows.append(
                    {
                        "T": n_tasks,
                        "method": method,
                        "budget": budget,
                        "seed": seed,
                        "design": design,
                        "front": refront,
                        "total": design + refront,
                        "igd": float(igd.do(-front)),
                        "igd front": np.nan if front_only is None else float(igd.do(-front_only)),
                        "method s": time.perf_counter() - start - (evaluate.seconds - evaluating),
                    }
                )
    return pd.DataFrame(rows)


def summary(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread per (T, method, budget), and the mean IGD relative to grid search's."""
    table = (
        raw.groupby(["T", "method", "budget"], sort=False)
        .agg(
            seeds=("seed", "size"),
            design=("design", "first"),
            front=("front", "first"),
            total=("total", "first"),
            igd_mean=("igd", "mean"),
            igd_std=("igd", "std"),
            igd_front=("igd front", "mean"),
            method_s=("method s", "mean"),
        )
        .reset_index()
    )
    table["igd_std"] = table["igd_std"].fillna(0.0)
    table = table.rename(columns={"igd_front": "igd front", "method_s": "method s"})
    grid_igd = table[table["method"] == "grid search"].set_index(["T", "budget"])["igd_mean"]
    table["vs grid"] = table["igd_mean"] / grid_igd.reindex(pd.MultiIndex.from_frame(table[["T", "budget"]])).to_numpy()
    order = {m: i for i, m in enumerate(METHODS)}
    return table.sort_values(
        ["T", "method", "budget"], key=lambda s: s.map(order) if s.name == "method" else s, ignore_index=True
    )


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Per T and target (grid or random search at its largest budget): per method, the fewest total
    evaluations whose mean IGD reaches the target's, and the target's evaluations over these."""
    rows = []
    for n_tasks, part in table.groupby("T", sort=True):
        for reference in ("grid search", "random search"):
            target = part[part["method"] == reference].sort_values("budget").iloc[-1]
            row: dict[str, object] = {
                "T": n_tasks,
                "target": f"{reference}, {int(target['total'])} evals, IGD {target['igd_mean']:.4f}",
            }
            for method in METHODS:
                ran = part[part["method"] == method]
                mine = ran[ran["igd_mean"] <= target["igd_mean"]]
                needed = int(mine["total"].min()) if len(mine) else 0
                row[method] = (
                    f"{needed} ({target['total'] / needed:.1f}x)" if needed else "not reached" if len(ran) else "-"
                )
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return "-" if np.isnan(v) else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 3], choices=[2, 3], help="values of T")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (T, method, budget)")
    parser.add_argument(
        "--budgets",
        help="comma-separated real-evaluation budgets for every T (default: 6,10,15,21 "
        "for T=2 and 10,15,20,30 for T=3)",
    )
    parser.add_argument("--dataset", choices=["digits", "fashion"], default="digits")
    parser.add_argument("--sampler", choices=list(sampling.KINDS), default="sobol", help="MAP's design")
    parser.add_argument("--front-points", type=int, help="predicted front points MAP evaluates for real (default: P)")
    parser.add_argument("--pop-size", type=int, default=100, help="NSGA-III population")
    parser.add_argument("--n-gen", type=int, default=100, help="NSGA-III generations")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: T=2, 2 seeds, budgets 6,15, small NSGA-III and truth"
    )
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.budgets, args.pop_size, args.n_gen = [2], 2, args.budgets or "6,15", 40, 30
    budgets = {n: [int(b) for b in args.budgets.split(",")] if args.budgets else DEFAULT_BUDGETS[n] for n in args.tasks}
    truth = {n: 11 if args.quick else GROUND_TRUTH[n] for n in args.tasks}
    torch.set_num_threads(1)  # more threads only contend on a shared 2-core machine
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mapmerge-front-") as tmp:
        cfg, engines, setup = build_engines(args.dataset, max(args.tasks), Path(tmp))
        opt = {
            "sampler": args.sampler,
            "pop_size": args.pop_size,
            "n_gen": args.n_gen,
            "bayesian": cfg["bayesian"],
            "surrogate": cfg["surrogate"],
            "front_points": {n: args.front_points or n_params(n) for n in args.tasks},
        }
        raw = pd.concat(
            [measure(Evaluator(engines[n]), budgets[n], args.seeds, opt, truth[n]) for n in args.tasks],
            ignore_index=True,
        )
    table = summary(raw)
    print(
        f"front quality on the built-in benchmark ({args.dataset}, tasks {', '.join(cfg['task_names'])}), "
        f"{args.seeds} seeds, NSGA-III {args.pop_size} x {args.n_gen}, MAP design {args.sampler}; "
        f"setup (training, task vectors) {setup:.0f} s, total {time.perf_counter() - start:.0f} s"
    )
    print(
        "design / front: real evaluations of the design and of MAP's re-evaluated front points; total: both; "
        "igd: mean and std over seeds (accuracy units, lower is better); vs grid: IGD / grid search's IGD; "
        "method s: seconds per run besides the real evaluations (fits, NSGA-III, Bayesian rounds)\n"
    )
    print(markdown(table))
    print("\ntotal real evaluations each method needs to reach a target IGD (x: the target's evaluations over these)\n")
    print(markdown(ratios(table)))


if __name__ == "__main__":
    main()
