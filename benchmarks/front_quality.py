"""Front quality per budget: IGD and win rate of each method's real front against a dense-grid ground truth.

    .venv/bin/python benchmarks/front_quality.py [--tasks 2 3 4] [--seeds 3] [--budgets 10,15,20,30]
        [--grid-sides 2,3,4] [--methods map bayesian refine random grid] [--refine K:R ...] [--fits a b c]
        [--spreads cover front gap coverage] [--trust-radii none 0.1] [--trust-from N] [--dataset digits|fashion]
        [--truth grid|sobol] [--truth-side N] [--front-points K] [--win-vectors N] [--save CSV] [--quick]
        [--measured-only] [--jobs N] [--trainings N]

The built-in benchmark (config `benchmark=<dataset>`, seed 0) is trained once with max(--tasks)
tasks; T tasks use its first T task vectors. --trainings N trains it N times (config seed 0..N-1: the
checkpoints of benchmarks/workflow_front.py's seeds), each training with its own truth and grid search; every
figure is then a mean over trainings x seeds (one training can favour a method: docs/performance.md).
Per T the ground truth is a dense grid over [0, 1]^T
(21^2 for T = 2, 9^3 for T = 3, 5^4 = 625 for T = 4; --truth-side N: N^T), every point evaluated for real once; its
non-dominated accuracies are the true front (--truth sobol: as many scrambled Sobol points instead, rounded up to
a power of two, seeded apart from every design). Per T, budget B and seed s, each method spends real
evaluations (a merged model evaluated on all T tasks) and answers with a real front:

- MAP: a Sobol design of B points (the special points included; --sampler lhs for LHS), one
  quadratic surrogate per task (the config's accuracy link: sigmoid), NSGA-III on them; K points
  of the predicted front, spread along it (each task's best first, then the farthest in accuracy
  space), are evaluated for real. K = --front-points, default P = (T+1)(T+2)/2. Its answer: the
  non-dominated set of all its real evaluations (design and front points), as for the searches;
  `igd front` is that of the K re-evaluated front points alone. NSGA-III: population 100, 100
  generations (the workflow's default is 200 x 200; --pop-size, --n-gen).
- Bayesian MAP: the same, with the design grown inside B by mapmerge.core.bayesian's rounds (initial
  design max(P + 2, initial_factor x P) points, rounds of per_round_factor x P points from the
  config, the last one cut to B); needs B >= P + 2.
- MAP + refinement, `refine (a|b) K=k[, cover|gap|coverage]` (--refine K:R, --fits, --spreads): the Sobol
  design of B points and the quadratic fit as MAP; then R rounds, each evaluating for real the
  equal-preference pick of the predicted front and K points spread along it, then refitting on
  every real evaluation so far and predicting the front again. The K points: `front`
  (spread_points below: spread_order along the predicted front, points already evaluated skipped)
  or mapmerge.core.refine.round_points in one of its orders: `cover` (as the workflow does: each next point
  the one that most lowers the mean distance from the predicted non-dominated merges of 1024 Sobol points of
  the box, pareto.sample_front, to the real front found so far and the points chosen), `gap` (the predicted
  front point farthest from the real front found so far) or `coverage` (as `cover`, with NSGA-III's front in
  place of the box's merges). --trust-radii r (`, trust r` in the name): the pick is instead the best predicted of
  mapmerge.core.refine.trust_region's points within r of the best merge measured so far, as the workflow's
  refine.trust_radius (`none`: the predicted front's pick); --trust-from N (`, trust r from N`; default 1): only
  from round N on, as refine.trust_from (the workflow's default: its last round, 4). The refit: (a) the same quadratic on every point; (b)
  the quadratic plus a kernel model of its residuals on the link scale (mapmerge.core.correction, a local correction
  near the points); (c), a candidate the workflow does not offer (docs/performance.md): a Gaussian process alone
  (scikit-learn; constant mean on the link scale, Matern 5/2), for the design's fit too;
  (s), the workflow's where the evaluators return class scores (surrogate.scores: auto, the built-in benchmark's;
  (b) is its fit elsewhere): every example's class scores (the built-in evaluator's logits) a quadratic in c, the
  accuracy the share of examples whose best predicted class is right (mapmerge.core.class_scores), for the design's
  fit too. B may be below P (from T + 2, the design's special points), as in the workflow with refinement rounds: a
  quadratic's fit on P or fewer merges is least squares' minimum-norm solution, without a correction.
  Round r's points do not depend on later rounds, so one run with R rounds gives
  the rows for 1..R rounds (column `rounds`). Its answer: the non-dominated set of all its real
  evaluations; `igd front`: that of the rounds' points alone.
- random search: B uniform random coefficient vectors; answer: the non-dominated ones.
- grid search: a regular n^T grid per n of --grid-sides; answer: the non-dominated points.
  Deterministic, so its spread over seeds is 0.

Counting: the table reports the evaluations of the design and those after it (MAP's K front points,
the refinement rounds) separately (`design`, `front`) and in `total`; the ratios use the total, so
every real evaluation counts. IGD is pymoo's (mean distance from each true-front point to the nearest
answer point, in accuracy units), with accuracies negated since pymoo minimises; IGD+ is pymoo's IGDPlus
(Ishibuchi et al. 2015): the same, each distance counted only over the tasks where the answer point is worse, so
a true-front point that the answer dominates counts 0 (IGD is not Pareto-compliant: an answer that dominates the
reference can score worse than one that matches it). Mean and standard deviation over the seeds; `vs grid`: mean
IGD over that of the largest grid search with at most the row's total evaluations (< 1 is better).

`igd offered`, for the methods with a surrogate: the IGD of what the method offers a user to choose from, the
non-dominated set of its real evaluations and of its final predicted front's merges, each of the latter evaluated
for real to score it (not counted in `total`, as the win rate's picks are not): the merges a user choosing from the
front gets, at their real values. Its ratio table compares it with grid search's IGD; the other tables count only
what was measured (this column's evaluations would otherwise count as spent).

Win rate (the MAP paper's metric; mapmerge.core.pareto.win_rate), for the methods with a surrogate:
preference vectors W = the Das-Dennis lattice over the T tasks with at most --win-vectors vectors
(21 by default: 21 for T = 2 and 3, 20 for T = 4). Per w, MAP's pick is the point of its final
predicted front (after the last refit) with the best predicted weighted sum sum_i w_i acc_i (the
selection rule weighted_sum), evaluated for real; it wins when its real weighted sum is at least the
best real weighted sum of a brute-force search with the same number of real evaluations as the
method's total: `win rnd`, random search (total uniform points, seeded as the run); `win grid`, the
largest regular grid with at most that many points. `win best` is `win rnd` with MAP's answer per w
the better of the pick and the best of its own real evaluations (what the workflow's refinement
hands over). The picks' and the brute forces' evaluations are not counted in `total`: they are what is
scored, not what the method spent.

The ratio table: per T, method and rounds, and per target (grid search's mean IGD at each of its
sizes, random search's at its largest budget), the fewest total evaluations at which the method's mean
IGD is at most the target, and (x) the target's evaluations over those. Caveat: grid search's points
whose axes lie on the ground-truth grid are scored against their own exact values (distance 0 where they are on
the true front; at T = 4 the 5^4 truth holds all of grid 81, where --truth-side 6 shares only its corners);
--truth sobol shares no point with any grid and removes that advantage. `igd unshared` measures it on any truth:
every method's IGD against only the true-front points that no grid search of the run evaluated (with no grid
search, or a truth sharing none of them, it equals igd); its own ratio table follows where the truth shares some.
Evaluations of the same coefficients are computed once and counted for every method asking.

--measured-only leaves out the win rates and `igd offered` (NaN): their real evaluations (the picks, the brute
forces, every merge of each final predicted front) take most of a refinement run's time, and IGD, IGD+ and `igd
front` do not depend on them. --jobs N runs the (method, budget, seed) runs in N processes, forked once the ground
truth is evaluated (each keeps its own cache of later evaluations); every run is deterministic, so the rows are
the same for any N.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pymoo.indicators.igd import IGD
from pymoo.indicators.igd_plus import IGDPlus
from scipy.stats import qmc
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from mapmerge.builtin.model import prepare_benchmark
from mapmerge.core import bayesian, sampling
from mapmerge.core.class_scores import fit_scores, scores_of
from mapmerge.core.pareto import (
    non_dominated,
    preference_vectors,
    sample_front,
    surrogate_front,
    weighted_picks,
    win_rate,
)
from mapmerge.core.quadratic import n_params
from mapmerge.core.refine import BOX_POINTS, GAP, round_points, trust_region
from mapmerge.core.selection import select_point
from mapmerge.core.spread import spread_order
from mapmerge.core.surrogate import EPS, LINK_FUNCTIONS, fit_surrogate
from mapmerge.run.config import load_config
from mapmerge.tensors.engine import MergeEngine
from mapmerge.tensors.taskvectors import extract_task_vector

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUDGETS = {2: [6, 10, 15, 21], 3: [12, 15, 20, 30], 4: [15, 17, 20, 30]}
DEFAULT_GRID_SIDES = {2: [2, 3, 4, 5], 3: [2, 3, 4], 4: [2, 3]}
DEFAULT_REFINE = {2: ["4:4"], 3: ["6:4"], 4: ["8:4"]}  # K:R per T
GROUND_TRUTH = {2: 21, 3: 9, 4: 5}  # grid points per axis of the ground truth
TRUTH_SEED = 987654  # the scrambled Sobol ground truth's seed (--truth sobol): no method's design uses it
KINDS = ("map", "bayesian", "refine", "random", "grid")
FITS = {
    "a": "quadratic refit",
    "b": "quadratic + kernel correction",
    "c": "a Gaussian process alone",
    "s": "every example's class scores a quadratic",
}
SPREADS = {
    "cover": "round_points, order cover: most lowering the mean distance from the box's predicted front",
    "front": "spread_points: spread_order along the front",
    "gap": "round_points: far from the real front",
    "coverage": "round_points, order coverage: most lowering the mean distance to the real front",
}


@dataclass
class Result:
    """What one method's run answers: its real front, what it spent, and its final predicted front."""

    answer: np.ndarray  # real accuracies of the answer: the non-dominated set of every real evaluation
    design: int  # evaluations of the design
    front: int  # evaluations after the design (MAP's front points, refinement rounds)
    evaluated: np.ndarray | None = None  # real accuracies of every evaluation (methods with a surrogate)
    front_only: np.ndarray | None = None  # real accuracies of the evaluations after the design
    predicted: tuple[np.ndarray, np.ndarray] | None = None  # the final predicted front (C, F): the picks per w
    rounds: int = 0
    seconds: float | None = None  # spent besides the real evaluations up to this result (None: the whole run)


Runner = Callable[["Evaluator", int, int, dict[str, Any]], list[Result]]


class Evaluator:
    """Real accuracies [n, T] of merges c [n, T] on the first T tasks; each distinct c is evaluated once. With an
    engine that keeps scores, each merge's per-task class scores are kept too (`scores`)."""

    def __init__(self, engine: MergeEngine) -> None:
        self.engine = engine
        self.cache: dict[tuple[float, ...], np.ndarray] = {}
        self.score_cache: dict[tuple[float, ...], list[np.ndarray]] = {}
        self.targets: list[np.ndarray] = []  # per task, the examples' right classes (an engine keeping scores)
        self.seconds = 0.0  # spent evaluating

    def __call__(self, C: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        rows = []
        for c in np.asarray(C, dtype=float).reshape(-1, len(self.engine.tasks)):
            key = tuple(c.round(12))
            if key not in self.cache:
                examples = self.engine.evaluate(c, sample="c")
                self.cache[key] = examples.groupby("task")["correct"].mean()[self.engine.tasks].to_numpy(dtype=float)
                if self.engine.scores != "none":
                    kept = [scores_of(examples, ["c"], t) for t in self.engine.tasks]
                    self.score_cache[key] = [scores[0] for scores, _ in kept]
                    self.targets = [targets for _, targets in kept]
            rows.append(self.cache[key])
        self.seconds += time.perf_counter() - start
        return np.array(rows).reshape(-1, len(self.engine.tasks))

    def scores(self, C: np.ndarray) -> list[np.ndarray]:
        """Per task, the class scores [n, examples, classes] of merges C [n, T], each evaluated before."""
        kept = [self.score_cache[tuple(c.round(12))] for c in np.asarray(C, dtype=float)]
        return [np.stack([k[i] for k in kept]) for i in range(len(self.engine.tasks))]


def extract_vectors(model: dict[str, Any], tasks: Sequence[str], folder: Path) -> dict[str, Path]:
    """The task vectors of `tasks` of a resolved `model` config, written to folder/<task>.safetensors."""
    vectors = {t: folder / f"{t}.safetensors" for t in tasks}
    for t, path in vectors.items():
        merge, checkpoint = model["merge"], model["tasks"][t]["checkpoint"]
        extract_task_vector(model["pretrained"], checkpoint, merge["include"], merge["exclude"], path, t)
    return vectors


def model_engine(model: dict[str, Any], vectors: dict[str, Path], scores: str) -> MergeEngine:
    """A CPU merge engine of a resolved `model` config on the tasks of `vectors` (task -> task vector file)."""
    return MergeEngine(
        builder=model["builder"],
        pretrained=model["pretrained"],
        vectors=vectors,
        task_checkpoints={t: model["tasks"][t]["checkpoint"] for t in vectors},
        evaluators={t: model["tasks"][t]["evaluator"] for t in vectors},
        merge=model["merge"],
        device="cpu",
        scores=scores,
    )


def build_engines(
    dataset: str, max_tasks: int, workdir: Path, training: int = 0
) -> tuple[dict[str, Any], dict[int, MergeEngine], float]:
    """Train the benchmark (config seed `training`), extract its task vectors; an engine per T (its first T tasks)
    and the seconds it took."""
    start = time.perf_counter()
    cfg = load_config(
        REPO / "config",
        overrides=[
            f"benchmark={dataset}",
            f"benchmark.tasks={max_tasks}",
            f"results_dir={workdir}",
            "name=front_quality",
            f"seed={training}",
        ],
    )
    model = cfg["model"]
    ckpt = Path(model["pretrained"]).parent
    prepare_benchmark(cfg["benchmark"], ckpt)
    tasks = cfg["task_names"]
    vectors = extract_vectors(model, tasks, workdir / "vectors")
    engines = {n: model_engine(model, {t: vectors[t] for t in tasks[:n]}, "required") for n in range(2, max_tasks + 1)}
    return cfg, engines, time.perf_counter() - start


def grid(n_tasks: int, per_axis: int) -> np.ndarray:
    """The regular grid [per_axis^T, T] over [0, 1]^T."""
    axes = np.meshgrid(*[np.linspace(0.0, 1.0, per_axis)] * n_tasks, indexing="ij")
    return np.stack([a.ravel() for a in axes], axis=1)


def on_grid(C: np.ndarray, per_axis: int) -> np.ndarray:
    """Which rows of coefficients C [n, T] are points of the regular grid with per_axis points per axis."""
    steps = np.asarray(C, dtype=float) * (per_axis - 1)
    return np.all(np.abs(steps - np.round(steps)) < 1e-9, axis=1)


def true_front(evaluate: Evaluator, points: np.ndarray, sides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The real accuracies of the non-dominated merges among `points` [n, T], and which of those merges are points of
    a grid search with one of `sides` points per axis."""
    F = evaluate(points)
    on_front = non_dominated(F, [True] * F.shape[1])
    shared = np.zeros(len(on_front), dtype=bool)
    for side in sides:
        shared |= on_grid(points[on_front], side)
    return F[on_front], shared


def igd_against(reference: np.ndarray, indicator: type = IGD) -> Callable[[np.ndarray], float]:
    """pymoo's IGD (or `indicator`: IGDPlus) of real accuracies against the `reference` accuracies (both negated:
    pymoo minimises); NaN for an empty reference (a truth that is a grid search's own grid has no point left
    unshared)."""
    if not len(reference):
        return lambda _: np.nan
    igd = indicator(-reference)
    return lambda F: float(igd.do(-F))


def ground_truth(n_tasks: int, kind: str, per_axis: int) -> tuple[np.ndarray, str]:
    """The ground truth's coefficients and their description: the dense grid of per_axis points per axis or, for
    `sobol`, as many scrambled Sobol points (the next power of two) seeded with TRUTH_SEED, which share no point with
    any grid."""
    if kind == "grid":
        return grid(n_tasks, per_axis), f"{per_axis}^{n_tasks} grid"
    n = 2 ** math.ceil(math.log2(per_axis**n_tasks))
    return qmc.Sobol(d=n_tasks, scramble=True, seed=TRUTH_SEED).random(n), f"{n} scrambled Sobol points"


def random_points(n_tasks: int, n: int, seed: int) -> np.ndarray:
    """Random search's n points for a seed; the first m of them are its m points (one stream per seed)."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, n_tasks))


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


def fit_predictor(
    C: np.ndarray, F: np.ndarray, link: str, fit: str = "a", seed: int = 0, evaluate: Evaluator | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Per task the quadratic surrogate on (C, F) ((a)), or it plus the kernel correction of its residuals ((b)), or a
    Gaussian process alone ((c): gaussian_process), or the quadratic of every example's class scores ((s):
    mapmerge.core.class_scores, the scores of C kept by `evaluate`)."""
    if fit == "c":
        processes = [gaussian_process(C, F[:, i], link, seed) for i in range(F.shape[1])]
        return lambda X: np.column_stack([p(X) for p in processes])
    if fit == "s":
        assert evaluate is not None, "fit (s) reads the merges' class scores from the evaluator"
        models = [fit_scores(C, S, t) for S, t in zip(evaluate.scores(C), evaluate.targets)]
        return lambda X: np.column_stack([m.predict(X) for m in models])
    fits = [fit_surrogate(C, F[:, i], link, loo=False, correct=fit == "b") for i in range(F.shape[1])]
    return lambda X: np.column_stack([f.predict(X) for f in fits])


def gaussian_process(C: np.ndarray, y: np.ndarray, link: str, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Fit (c), a candidate the workflow does not offer: scikit-learn's Gaussian process of y on the link scale (values
    clipped EPS inside the link's range, as the quadratic's), its mean the values' mean (normalize_y), the kernel a
    constant times an isotropic Matern 5/2 plus white noise, hyperparameters by marginal likelihood (2 restarts seeded
    by `seed`); the prediction is its posterior mean through the link. No quadratic: it needs no P points."""
    spec = LINK_FUNCTIONS[link]
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(0.3, (0.05, 3.0), nu=2.5) + WhiteKernel(1e-2, (1e-6, 1.0))
    process = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed)
    with warnings.catch_warnings():  # a hyperparameter at its bound: the bounds are the search's, not an error
        warnings.simplefilter("ignore", ConvergenceWarning)
        process.fit(C, spec.inverse(np.clip(y, spec.low + EPS, spec.high - EPS)))
    return lambda X: spec.forward(process.predict(np.asarray(X, dtype=float)))


def predicted_front(predict: Callable[[np.ndarray], np.ndarray], n_tasks: int, opt: dict[str, Any], seed: int):
    """NSGA-III front (C, F) of the predictor in [0, 1]^T."""
    return surrogate_front(
        predict,
        n_tasks,
        np.zeros(n_tasks),
        np.ones(n_tasks),
        [True] * n_tasks,
        pop_size=opt["pop_size"],
        n_gen=opt["n_gen"],
        seed=seed,
    )


def surrogate_answer(C: np.ndarray, F: np.ndarray, evaluate: Evaluator, opt: dict[str, Any], seed: int) -> Result:
    """Fit the quadratic surrogate per task on (C, F), NSGA-III in [0, 1]^T, evaluate K front points."""
    n_tasks = C.shape[1]
    C_front, F_pred = predicted_front(fit_predictor(C, F, opt["surrogate"]["links"]["accuracy"]), n_tasks, opt, seed)
    picked = evaluate(C_front[spread(F_pred, opt["front_points"][n_tasks])])
    every = np.vstack([F, picked])
    return Result(answer(every), len(C), len(picked), every, answer(picked), (C_front, F_pred))


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


def run_map(evaluate: Evaluator, budget: int, seed: int, opt: dict[str, Any]) -> list[Result]:
    tasks = evaluate.engine.tasks
    if budget < n_params(len(tasks)):
        return []
    C = map_design(tasks, budget, opt["sampler"], seed)
    return [surrogate_answer(C, evaluate(C), evaluate, opt, seed)]


def spread_points(front_C: np.ndarray, front_F: np.ndarray, pick: int, k: int, evaluated_C: np.ndarray) -> np.ndarray:
    """The `front` spread, for comparison: the pick, then k front points in spread_order (an end of the front first,
    then the farthest from those taken), points within GAP of an evaluated or chosen one skipped. It starts at the
    same end every round, so each round re-evaluates near the same spots (the workflow's round_points fills the
    measured front's gaps instead)."""
    near = np.asarray(evaluated_C, dtype=float)
    chosen: list[int] = []
    for i in [pick, *(int(i) for i in spread_order(front_F) if i != pick)]:
        if len(chosen) == k + 1:
            break
        if not len(near) or np.abs(near - front_C[i]).max(axis=1).min() >= GAP:
            chosen.append(i)
            near = np.vstack([near, front_C[i]])
    return front_C[chosen].reshape(-1, front_C.shape[1])


def run_refined(
    evaluate: Evaluator,
    budget: int,
    seed: int,
    opt: dict[str, Any],
    fit: str,
    k: int,
    rounds: int,
    spread: str = "front",
    trust_radius: float | None = None,
    trust_from: int = 1,
) -> list[Result]:
    """MAP's design and quadratic fit, then `rounds` refinement rounds of the pick and k front points, each followed
    by a refit ((a) quadratic, (b) quadratic + kernel correction (none on P or fewer merges); (c) a Gaussian process
    alone, the design's fit too; (s) the class scores' quadratic, the design's fit too); any budget from T + 2, the
    design's special points (a quadratic below P: least squares' minimum-norm solution);
    one result after each round. spread: the front
    points of spread_points (`front`) or of mapmerge.core.refine.round_points in its order (`gap`, `coverage`,
    `cover`: with the predicted non-dominated merges of BOX_POINTS Sobol points of the box, seeded by the run's
    seed, as the workflow does); trust_radius: the pick from trust_region around the best real evaluation, as the
    workflow's refine.trust_radius, in the rounds from trust_from on."""
    tasks = evaluate.engine.tasks
    n_tasks = len(tasks)
    if budget < n_tasks + 2:  # the design's special points
        return []
    link = opt["surrogate"]["links"]["accuracy"]
    lower, upper, maximize = np.zeros(n_tasks), np.ones(n_tasks), [True] * n_tasks
    C = map_design(tasks, budget, opt["sampler"], seed)
    start, evaluating = time.perf_counter(), evaluate.seconds
    F = evaluate(C)
    first = fit if fit in ("c", "s") else "a"  # the design's fit: the quadratic, or (c) or (s) throughout
    predict = fit_predictor(C, F, link, first, seed, evaluate)
    front = predicted_front(predict, n_tasks, opt, seed)
    results = []
    for rnd in range(1, rounds + 1):
        C_front, F_front = front
        weights = np.full(n_tasks, 1.0 / n_tasks)
        pick = select_point(F_front, weights, maximize)
        if trust_radius is not None and rnd >= trust_from:  # the pick beside the best real evaluation
            local = trust_region(C[select_point(F, weights, maximize)], lower, upper, trust_radius, (seed, rnd))
            predicted = predict(local)
            best = select_point(predicted, weights, maximize)
            C_front, F_front = np.vstack([C_front, local[best]]), np.vstack([F_front, predicted[best]])
            pick = len(C_front) - 1
        if spread == "front":
            new = spread_points(C_front, F_front, pick, k, C)
        else:
            box = None  # gap
            if spread == "cover":
                box = sample_front(predict, lower, upper, maximize, BOX_POINTS, seed)
            elif spread == "coverage":  # cover with NSGA-III's front in place of the box's merges
                box = front
            order = "gap" if spread == "gap" else "cover"
            new, _ = round_points(C_front, F_front, [pick], k, C, answer(F), lower, upper, order=order, box=box)
        if len(new):
            C, F = np.vstack([C, new]), np.vstack([F, evaluate(new)])
            predict = fit_predictor(C, F, link, fit, seed, evaluate)
            front = predicted_front(predict, n_tasks, opt, seed)
        spent = time.perf_counter() - start - (evaluate.seconds - evaluating)
        results.append(Result(answer(F), budget, len(C) - budget, F, answer(F[budget:]), front, rnd, spent))
    return results


def run_bayesian(evaluate: Evaluator, budget: int, seed: int, opt: dict[str, Any]) -> list[Result]:
    tasks = evaluate.engine.tasks
    n_tasks, p = len(tasks), n_params(len(tasks))
    cfg, surrogate_cfg = opt["bayesian"], opt["surrogate"]
    if budget < p + 2:
        return []
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
    return [surrogate_answer(C, F, evaluate, opt, seed)]


def run_random(evaluate: Evaluator, budget: int, seed: int, opt: dict[str, Any]) -> list[Result]:
    return [Result(answer(evaluate(random_points(len(evaluate.engine.tasks), budget, seed))), budget, 0)]


def run_grid(evaluate: Evaluator, budget: int, seed: int, opt: dict[str, Any]) -> list[Result]:
    """Grid search with `budget` points per axis."""
    C = grid(len(evaluate.engine.tasks), budget)
    return [Result(answer(evaluate(C)), len(C), 0)]


def runners(
    kinds: Sequence[str],
    refine: Sequence[tuple[int, int]],
    fits: Sequence[str],
    spreads: Sequence[str],
    trust_radii: Sequence[float | None] = (None,),
    trust_from: int = 1,
) -> dict[str, Runner]:
    """The methods to run, by name, in table order."""
    methods: dict[str, Runner] = {}
    if "map" in kinds:
        methods["MAP"] = run_map
    if "bayesian" in kinds:
        methods["Bayesian MAP"] = run_bayesian
    if "refine" in kinds:
        for spread in spreads:
            for radius in trust_radii:
                for fit in fits:
                    for k, rounds in refine:
                        name = f"refine ({fit}) K={k}" + (f", {spread}" if spread != "front" else "")
                        if radius is not None:
                            name += f", trust {radius:g}" + (f" from {trust_from}" if trust_from > 1 else "")
                        methods[name] = partial(
                            run_refined,
                            fit=fit,
                            k=k,
                            rounds=rounds,
                            spread=spread,
                            trust_radius=radius,
                            trust_from=trust_from,
                        )
    if "random" in kinds:
        methods["random search"] = run_random
    if "grid" in kinds:
        methods["grid search"] = run_grid
    return methods


def largest_grid(n_tasks: int, budget: int) -> np.ndarray | None:
    """The regular grid with the most points per axis (at least 2) and at most `budget` points; None if none fits."""
    side = int(math.floor(budget ** (1.0 / n_tasks) + 1e-9))
    return grid(n_tasks, side) if side >= 2 else None


def win_rates(evaluate: Evaluator, result: Result, W: np.ndarray, seed: int) -> dict[str, float]:
    """`win rnd`, `win grid`, `win best` of a result with a predicted front (see the module's docstring)."""
    n_tasks = W.shape[1]
    maximize = [True] * n_tasks
    C_front, F_front = result.predicted
    picks, where = np.unique(weighted_picks(F_front, W, maximize), return_inverse=True)
    picked = evaluate(C_front[picks])[where]  # [n_w, T] the picks' real accuracies
    total = result.design + result.front
    rnd = evaluate(random_points(n_tasks, total, seed))
    box = largest_grid(n_tasks, total)
    # per w, the better (by its real weighted sum) of the pick and the best of the method's own evaluations
    own = result.evaluated[weighted_picks(result.evaluated, W, maximize)]
    best = np.where(((own - picked) * W).sum(axis=1, keepdims=True) > 0, own, picked)
    return {
        "win rnd": win_rate(W, picked, rnd, maximize),
        "win grid": np.nan if box is None else win_rate(W, picked, evaluate(box), maximize),
        "win best": win_rate(W, best, rnd, maximize),
    }


def offered(evaluate: Evaluator, result: Result) -> np.ndarray:
    """The real accuracies of what a method with a surrogate offers a user to choose from: the non-dominated set of
    its own real evaluations and its final predicted front's merges, each evaluated for real (to score them: not
    counted in what the method spent, as for the win rate)."""
    return answer(np.vstack([result.evaluated, evaluate(result.predicted[0])]))


def measure(
    evaluate: Evaluator,
    budgets: Sequence[int],
    sides: Sequence[int],
    seeds: int,
    opt: dict[str, Any],
    methods: dict[str, Runner],
    truth_points: np.ndarray,
    truth_name: str,
    jobs: int = 1,
) -> pd.DataFrame:
    """One row per (method, budget, seed, rounds): evaluations spent, IGD of the answer, win rates, seconds. The runs
    go to `jobs` processes (forked after the ground truth is evaluated; the rows are the same for any number)."""
    n_tasks = len(evaluate.engine.tasks)
    truth, shared = true_front(evaluate, truth_points, sides if "grid search" in methods else [])
    W = preference_vectors(n_tasks, opt["win_vectors"])
    print(
        f"T={n_tasks}: ground truth {truth_name}, {len(truth)} points on its front ({shared.sum()} of them grid "
        f"search's own); {len(W)} preference vectors",
        file=sys.stderr,
    )
    _SHARED.update(evaluate=evaluate, opt=opt, methods=methods, truth=truth, unshared=truth[~shared], W=W)
    runs = [
        (method, budget, seed)
        for method in methods
        for budget in (sides if method == "grid search" else budgets)
        for seed in range(1 if method == "grid search" else seeds)
    ]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_scored, runs, chunksize=1)
    else:
        parts = [_scored(run) for run in runs]
    return pd.DataFrame([row for part in parts for row in part])


_SHARED: dict[str, Any] = {}  # what measure's runs share: set before its processes fork


def _scored(run: tuple[str, int, int]) -> list[dict[str, Any]]:
    """The rows of one (method, budget, seed) run of measure: one per result (per rounds)."""
    method, budget, seed = run
    evaluate, opt, truth, W = _SHARED["evaluate"], _SHARED["opt"], _SHARED["truth"], _SHARED["W"]
    igd, igd_plus, igd_unshared = igd_against(truth), igd_against(truth, IGDPlus), igd_against(_SHARED["unshared"])
    is_grid = method == "grid search"
    start, evaluating = time.perf_counter(), evaluate.seconds
    results = _SHARED["methods"][method](evaluate, budget, seed, opt)
    spent = time.perf_counter() - start - (evaluate.seconds - evaluating)
    rows = []
    for result in results:
        scored = result.predicted is not None and not opt["measured_only"]
        wins = (
            win_rates(evaluate, result, W, seed)
            if scored
            else {"win rnd": np.nan, "win grid": np.nan, "win best": np.nan}
        )
        rows.append(
            {
                "T": len(evaluate.engine.tasks),
                "method": method,
                "budget": result.design if is_grid else budget,
                "rounds": result.rounds,
                "seed": seed,
                "design": result.design,
                "front": result.front,
                "total": result.design + result.front,
                "igd": igd(result.answer),
                "igd+": igd_plus(result.answer),
                "igd unshared": igd_unshared(result.answer),
                "igd front": np.nan if result.front_only is None else igd(result.front_only),
                "igd offered": igd(offered(evaluate, result)) if scored else np.nan,
                **wins,
                "method s": spent if result.seconds is None else result.seconds,
            }
        )
    print(f"  {method}, budget {budget}, seed {seed}: {spent:.1f} s besides evaluations", file=sys.stderr)
    return rows


def summary(raw: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Mean and spread per (T, method, budget, rounds), and the mean IGD relative to grid search's."""
    table = (
        raw.groupby(["T", "method", "budget", "rounds"], sort=False)
        .agg(
            seeds=("seed", "size"),
            design=("design", "first"),
            front=("front", "mean"),
            total=("total", "mean"),
            igd_mean=("igd", "mean"),
            igd_std=("igd", "std"),
            igdplus_mean=("igd+", "mean"),
            igd_unshared=("igd unshared", "mean"),
            igd_front=("igd front", "mean"),
            igd_offered=("igd offered", "mean"),
            win_rnd=("win rnd", "mean"),
            win_grid=("win grid", "mean"),
            win_best=("win best", "mean"),
            method_s=("method s", "mean"),
        )
        .reset_index()
    )
    table["igd_std"] = table["igd_std"].fillna(0.0)
    table = table.rename(columns={"igdplus_mean": "igd+ mean"})
    table.columns = [
        c.replace("_", " ") if c.startswith(("win", "igd_front", "igd_offered", "igd_unshared", "method")) else c
        for c in table.columns
    ]
    grids = table[table["method"] == "grid search"]
    table["vs grid"] = [
        row.igd_mean / mine["igd_mean"].iloc[-1]
        if len(mine := grids[(grids["T"] == row.T) & (grids["total"] <= row.total + 1e-9)].sort_values("total"))
        else np.nan
        for row in table.itertuples()
    ]
    rank = {m: i for i, m in enumerate(order)}
    return table.sort_values(
        ["T", "method", "rounds", "budget"],
        key=lambda s: s.map(rank) if s.name == "method" else s,
        ignore_index=True,
    )


def ratios(table: pd.DataFrame, column: str = "igd_mean") -> pd.DataFrame:
    """Per T, method and rounds: for each target (grid search at each size, random search at its largest budget), the
    fewest total evaluations whose mean IGD (`column`: `igd+ mean` for IGD+; `igd unshared` for IGD against the
    true-front points no grid search evaluated; `igd offered` for what a surrogate method offers, against the
    targets' IGD) reaches the target's, and the target's evaluations over these. A refined
    method also gets a row `any`: the fewest over every (design budget, rounds), with that budget B and rounds R."""
    label = {"igd+ mean": "IGD+", "igd unshared": "IGD unshared"}.get(column, "IGD")
    target_column = "igd_mean" if column == "igd offered" else column
    rows = []
    for n_tasks, part in table.groupby("T", sort=True):
        targets = [
            (f"grid {int(r['total'])}", r)
            for _, r in part[part["method"] == "grid search"].sort_values("total").iterrows()
        ]
        randoms = part[part["method"] == "random search"].sort_values("budget")
        if len(randoms):
            targets.append((f"random {int(randoms.iloc[-1]['total'])}", randoms.iloc[-1]))
        groups = [
            ((m, r), ran) for (m, r), ran in part.groupby(["method", "rounds"], sort=False) if ran[column].notna().any()
        ]
        groups += [((m, "any"), ran) for m, ran in part[part["rounds"] > 0].groupby("method", sort=False)]
        for (method, rounds), ran in groups:
            row: dict[str, object] = {"T": n_tasks, "method": method, "rounds": rounds}
            for name, target in targets:
                mine = ran[ran[column] <= target[target_column] + 1e-12].sort_values(["total", column])
                cell = "not reached"
                if len(mine):
                    best = mine.iloc[0]
                    cell = f"{best['total']:.0f} ({target['total'] / best['total']:.1f}x)"
                    cell += f", B={best['budget']} R={best['rounds']}" if rounds == "any" else ""
                row[f"{name} ({label} {target[target_column]:.4f})"] = cell
            rows.append(row)
    order = {m: i for i, m in enumerate(dict.fromkeys(table["method"]))}
    return pd.DataFrame(rows).sort_values("method", key=lambda s: s.map(order), kind="stable", ignore_index=True)


COUNTS = (
    "T",
    "budget",
    "rounds",
    "seeds",
    "design",
    "front",
    "total",
)  # columns of evaluation counts (means over seeds)


def markdown(frame: pd.DataFrame) -> str:
    def cell(column: str, v: object) -> str:
        if isinstance(v, (float, np.floating, int, np.integer)) and not isinstance(v, bool):
            if np.isnan(v):
                return "-"
            if column in COUNTS:
                return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
            return f"{v:.2f}" if column.startswith(("win", "method", "vs")) else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join(cell(c, v) for c, v in zip(frame.columns, row)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def parse_refine(specs: Sequence[str]) -> list[tuple[int, int]]:
    """K:R pairs: K front points per round, R rounds."""
    pairs = []
    for spec in specs:
        k, _, r = spec.partition(":")
        pairs.append((int(k), int(r or 1)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 3], choices=[2, 3, 4], help="values of T")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (T, method, budget)")
    parser.add_argument(
        "--trainings",
        type=int,
        default=1,
        help="benchmark trainings (config seed 0..N-1), each with its own truth and grid search; the tables average "
        "over trainings x seeds",
    )
    parser.add_argument(
        "--budgets",
        help="comma-separated design budgets (MAP's design, Bayesian MAP's and random search's evaluations) for every "
        "T (default: 6,10,15,21 for T=2, 12,15,20,30 for T=3, 15,17,20,30 for T=4)",
    )
    parser.add_argument(
        "--grid-sides", help="comma-separated grid search points per axis (default: 2-5 for T=2, 2-4 for T=3, 2-3 T=4)"
    )
    parser.add_argument("--methods", nargs="+", choices=KINDS, default=list(KINDS), help="which methods to run")
    parser.add_argument(
        "--refine",
        nargs="+",
        help="MAP + refinement settings K:R (K front points per round, R rounds; rows for 1..R rounds); "
        "default: 4:4 for T=2, 6:4 for T=3, 8:4 for T=4",
    )
    parser.add_argument(
        "--fits",
        nargs="+",
        choices=list(FITS),
        default=["a", "b"],
        help="refinement refits: a (the quadratic), b (it plus the kernel correction: the workflow's without class "
        "scores), c (a Gaussian process alone, not in the workflow), s (every example's class scores a quadratic, "
        "the design's fit too: the workflow's on the built-in benchmark, surrogate.scores); budgets from T + 2",
    )
    parser.add_argument(
        "--spreads",
        nargs="+",
        choices=list(SPREADS),
        default=list(SPREADS),
        help="refinement front points: front (spread_order), gap (gap-filling: mapmerge.core.refine.round_points), "
        "coverage (round_points' order coverage), cover (round_points' order cover, the workflow's)",
    )
    parser.add_argument(
        "--trust-radii",
        nargs="+",
        type=lambda text: None if text == "none" else float(text),
        default=[None],
        help="refinement picks: none (the predicted front's) or a radius r (refine.trust_radius: the best predicted "
        "merge within r of the best real evaluation)",
    )
    parser.add_argument(
        "--trust-from",
        type=int,
        default=1,
        help="the first round whose pick lies in the trust region (refine.trust_from)",
    )
    parser.add_argument("--dataset", choices=["digits", "fashion"], default="digits")
    parser.add_argument(
        "--truth",
        choices=["grid", "sobol"],
        default="grid",
        help="ground truth: the dense grid, or as many scrambled Sobol points (no point shared with a grid search)",
    )
    parser.add_argument(
        "--truth-side",
        type=int,
        help="the ground truth's grid points per axis (default: 21 for T = 2, 9 for T = 3, 5 for T = 4; 11 with "
        "--quick); with --truth sobol, as many Sobol points as that grid has, rounded up to a power of two",
    )
    parser.add_argument("--sampler", choices=list(sampling.KINDS), default="sobol", help="MAP's design")
    parser.add_argument("--front-points", type=int, help="predicted front points MAP evaluates for real (default: P)")
    parser.add_argument("--win-vectors", type=int, default=21, help="at most this many preference vectors (lattice)")
    parser.add_argument("--save", type=Path, help="also write every run's row (seeds apart) to this CSV file")
    parser.add_argument(
        "--measured-only",
        action="store_true",
        help="score only what each method measured (IGD, IGD+, igd front): no win rates and no offered front, whose "
        "real evaluations take most of a refinement run's time",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes for the runs (each run on one thread; the same rows for any N)"
    )
    parser.add_argument("--pop-size", type=int, default=100, help="NSGA-III population")
    parser.add_argument("--n-gen", type=int, default=100, help="NSGA-III generations")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: T=2, 2 seeds, budgets 6,15, grid sides 2-4, refinement 2:2, small NSGA-III and truth",
    )
    args = parser.parse_args()
    if args.truth_side is not None and args.truth_side < 2:
        parser.error(f"--truth-side: at least 2 points per axis, got {args.truth_side}")
    if args.jobs < 1:
        parser.error(f"--jobs: at least 1 process, got {args.jobs}")
    if args.trainings < 1:
        parser.error(f"--trainings: at least 1, got {args.trainings}")
    if args.quick:
        args.tasks, args.seeds, args.pop_size, args.n_gen = [2], 2, 40, 30
        args.budgets, args.grid_sides, args.refine = args.budgets or "6,15", args.grid_sides or "2,3,4", ["2:2"]
    budgets = {n: [int(b) for b in args.budgets.split(",")] if args.budgets else DEFAULT_BUDGETS[n] for n in args.tasks}
    sides = {
        n: [int(b) for b in args.grid_sides.split(",")] if args.grid_sides else DEFAULT_GRID_SIDES[n]
        for n in args.tasks
    }
    torch.set_num_threads(1)  # more threads only contend on a shared 2-core machine
    start = time.perf_counter()
    raws, order, setup = [], [], 0.0
    for training in range(args.trainings):  # config seed: the benchmark training (0: the default)
        with tempfile.TemporaryDirectory(prefix="mapmerge-front-") as tmp:
            cfg, engines, seconds = build_engines(args.dataset, max(args.tasks), Path(tmp), training)
            setup += seconds
            opt = {
                "sampler": args.sampler,
                "pop_size": args.pop_size,
                "n_gen": args.n_gen,
                "bayesian": cfg["bayesian"],
                "surrogate": cfg["surrogate"],
                "front_points": {n: args.front_points or n_params(n) for n in args.tasks},
                "win_vectors": args.win_vectors,
                "measured_only": args.measured_only,
            }
            for n in args.tasks:
                methods = runners(
                    args.methods,
                    parse_refine(args.refine or DEFAULT_REFINE[n]),
                    args.fits,
                    args.spreads,
                    args.trust_radii,
                    args.trust_from,
                )
                order += [m for m in methods if m not in order]
                per_axis = args.truth_side or (11 if args.quick else GROUND_TRUTH[n])
                truth, truth_name = ground_truth(n, args.truth, per_axis)
                measured = measure(
                    Evaluator(engines[n]), budgets[n], sides[n], args.seeds, opt, methods, truth, truth_name, args.jobs
                )
                raws.append(measured.assign(training=training))
    raw = pd.concat(raws, ignore_index=True)
    if args.save:
        raw.to_csv(args.save, index=False)
    table = summary(raw, order)
    print(
        f"front quality on the built-in benchmark ({args.dataset}, tasks {', '.join(cfg['task_names'])}), "
        f"{args.seeds} seeds x {args.trainings} benchmark training{'s' * (args.trainings != 1)}, "
        f"NSGA-III {args.pop_size} x {args.n_gen}, MAP design {args.sampler}, "
        f"at most {args.win_vectors} preference vectors; setup (training, task vectors) {setup:.0f} s, "
        f"total {time.perf_counter() - start:.0f} s"
    )
    print(
        "budget: design size (grid search: its points); rounds: refinement rounds; design / front: real evaluations "
        "of the design and after it (MAP's front points, refinement rounds); total: both; igd: mean and std over "
        "seeds (accuracy units, lower is better); igd+ mean: IGD+'s mean; igd unshared: IGD against the true-front "
        "points no grid search evaluated; win rnd / win grid: win rate of the pick "
        "per preference against random search / the largest regular grid with as many evaluations; win best: the "
        "better of the pick and the method's best evaluation, against random search; vs grid: IGD / that of the "
        "largest grid search with at most as many evaluations; method s: seconds per run besides the real "
        "evaluations\n"
    )
    print(markdown(table))
    print(
        "\ntotal real evaluations each method needs to reach a target's mean IGD (x: the target's evaluations over "
        "these)\n"
    )
    print(markdown(ratios(table)))
    print("\nthe same for IGD+ (distances only where the answer is worse: a reference point it dominates counts 0)\n")
    print(markdown(ratios(table, "igd+ mean")))
    if ((table["igd unshared"] - table["igd_mean"]).abs() > 1e-12).any():  # the truth shares points with a grid
        print(
            "\nthe same for IGD against the true-front points that no grid search evaluated (igd unshared: grid "
            "search's own points, at distance 0 from themselves, left out of every method's reference)\n"
        )
        print(markdown(ratios(table, "igd unshared")))
    if args.measured_only:
        return
    print(
        "\nthe same for what a surrogate method offers (igd offered: its real evaluations and its final predicted "
        "front's merges, the latter evaluated for real to score them, not counted), against the targets' IGD\n"
    )
    print(markdown(ratios(table, "igd offered")))


if __name__ == "__main__":
    main()
