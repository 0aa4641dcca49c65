"""Pareto fronts of surrogate objectives (NSGA-III or a dense grid) and front-quality indicators.

Objectives are given on their own scale with a `maximize` flag each (accuracy: True, loss: False);
maximised objectives are negated internally for pymoo, and every result is on the original scale.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from math import comb

import moocore
import numpy as np
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.core.problem import Problem
from pymoo.indicators.gd import GD
from pymoo.indicators.hv import HV
from pymoo.indicators.igd import IGD
from pymoo.indicators.igd_plus import IGDPlus
from pymoo.optimize import minimize
from pymoo.util.ref_dirs import get_reference_directions

Predict = Callable[[np.ndarray], np.ndarray]
GRID_CHUNK = 1 << 18  # grid points evaluated and pre-filtered at a time


def _signs(maximize: Sequence[bool]) -> np.ndarray:
    """+1 for minimised, -1 for maximised objectives: F * signs is to be minimised."""
    return np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)


def _evaluate(predict: Predict, C: np.ndarray, n_obj: int) -> np.ndarray:
    F = np.asarray(predict(C), dtype=float)
    if F.shape != (len(C), n_obj):
        raise ValueError(f"predict returned shape {F.shape} for {len(C)} points; expected ({len(C)}, {n_obj})")
    if not np.isfinite(F).all():
        raise ValueError("predict returned NaN or infinite objectives")
    return F


def _box(lower: np.ndarray, upper: np.ndarray, n_var: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.broadcast_to(np.asarray(lower, dtype=float), (n_var,)).copy()
    hi = np.broadcast_to(np.asarray(upper, dtype=float), (n_var,)).copy()
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo < hi).all()):
        raise ValueError(f"coefficient box needs finite lower < upper; got lower={lo.tolist()}, upper={hi.tolist()}")
    return lo, hi


def box_corners(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The box's one-coefficient corners [n, n]: row i has coefficient i at its upper bound, the others at their lower
    (in the box [0, 1], each fine-tuned model)."""
    return np.where(np.eye(len(lower), dtype=bool), upper, lower)


def non_dominated(F: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows of F [n, k]; equal rows are all kept."""
    F = np.asarray(F, dtype=float)
    if len(F) == 0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(moocore.is_nondominated(F * _signs(maximize), keep_weakly=True))


def _sorted_front(C: np.ndarray, F: np.ndarray, maximize: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated, de-duplicated (by C) points sorted by the first coefficient, then the rest."""
    keep = non_dominated(F, maximize)
    C, F = C[keep], F[keep]
    _, first = np.unique(C, axis=0, return_index=True)
    C, F = C[first], F[first]
    order = np.lexsort(C.T[::-1])
    return C[order], F[order]


def default_partitions(n_obj: int, pop_size: int) -> int:
    """Largest Das-Dennis partition count whose number of directions fits in `pop_size` (at least 1)."""
    p = 1
    while comb(p + n_obj, n_obj - 1) <= pop_size:
        p += 1
    return p


class _SurrogateProblem(Problem):
    def __init__(self, predict: Predict, lower: np.ndarray, upper: np.ndarray, signs: np.ndarray) -> None:
        super().__init__(n_var=len(lower), n_obj=len(signs), xl=lower, xu=upper)
        self.predict = predict
        self.signs = signs

    def _evaluate(self, x: np.ndarray, out: dict, *args, **kwargs) -> None:
        out["F"] = _evaluate(self.predict, x, self.n_obj) * self.signs


def surrogate_front(
    predict: Predict,
    n_tasks: int,
    lower: np.ndarray,
    upper: np.ndarray,
    maximize: Sequence[bool],
    pop_size: int = 200,
    n_gen: int = 200,
    seed: int = 0,
    ref_partitions: int | None = None,
    corners: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """NSGA-III front of `predict` (C [n, n_tasks] -> F [n, len(maximize)]) inside the box.

    Returns (C_front [m, n_tasks], F_front [m, k]) of the final population's non-dominated points,
    de-duplicated and sorted by coefficients; F on the original scale. Deterministic for a seed.
    Reference directions are Das-Dennis with `ref_partitions` (default: as many as fit in pop_size);
    pop_size is raised to the number of directions when smaller. `corners`: the box's one-coefficient corners
    (box_corners) join the final population before the non-dominated sort; NSGA-III seldom reaches them with many
    objectives.
    """
    signs = _signs(maximize)
    if len(signs) < 2:
        raise ValueError(f"a Pareto front needs at least 2 objectives; got {len(signs)}")
    lo, hi = _box(lower, upper, n_tasks)
    partitions = ref_partitions if ref_partitions is not None else default_partitions(len(signs), pop_size)
    ref_dirs = get_reference_directions("das-dennis", len(signs), n_partitions=partitions)
    algorithm = NSGA3(ref_dirs=ref_dirs, pop_size=max(pop_size, len(ref_dirs)))
    result = minimize(_SurrogateProblem(predict, lo, hi, signs), algorithm, ("n_gen", n_gen), seed=seed, verbose=False)
    C, F = result.pop.get("X"), result.pop.get("F") * signs
    if corners:
        ends = box_corners(lo, hi)
        C, F = np.vstack([C, ends]), np.vstack([F, _evaluate(predict, ends, len(signs))])
    return _sorted_front(C, F, maximize)


def grid_front(
    predict: Predict, lower: np.ndarray, upper: np.ndarray, maximize: Sequence[bool], resolution: int = 201
) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated points of a `resolution`^T grid over the box (T <= 3); as `surrogate_front`.

    Memory is bounded (chunks of GRID_CHUNK points), time grows as resolution^T.
    """
    n_var = int(np.prod(np.broadcast_shapes(np.shape(lower), np.shape(upper))))
    lo, hi = _box(lower, upper, n_var)
    if n_var > 3:
        raise ValueError(f"grid_front is for at most 3 coefficients; got {n_var}, use surrogate_front")
    axes = np.linspace(lo, hi, resolution)  # [resolution, T]
    shape = (resolution,) * n_var
    Cs, Fs = [], []
    for start in range(0, resolution**n_var, GRID_CHUNK):
        index = np.unravel_index(np.arange(start, min(start + GRID_CHUNK, resolution**n_var)), shape)
        C = np.stack([axes[i, d] for d, i in enumerate(index)], axis=-1)
        F = _evaluate(predict, C, len(maximize))
        keep = non_dominated(F, maximize)
        Cs.append(C[keep])
        Fs.append(F[keep])
    return _sorted_front(np.concatenate(Cs), np.concatenate(Fs), maximize)


def sample_front(
    predict: Predict, lower: np.ndarray, upper: np.ndarray, maximize: Sequence[bool], n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated points of n scrambled Sobol points of the box (seeded); as `grid_front`, for any number of
    coefficients. Unlike NSGA-III's evenly spread front, its points are as dense as the box's merges are
    non-dominated: the front a dense sample of real evaluations gives."""
    from scipy.stats import qmc  # deferred: scipy.stats, for the stages that sample the box only

    lo, hi = _box(lower, upper, int(np.prod(np.broadcast_shapes(np.shape(lower), np.shape(upper)))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Sobol's balance warning for n not a power of 2
        C = lo + qmc.Sobol(d=len(lo), scramble=True, seed=seed).random(n) * (hi - lo)
    return _sorted_front(C, _evaluate(predict, C, len(maximize)), maximize)


def _minimised(front: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    return np.atleast_2d(np.asarray(front, dtype=float)) * _signs(maximize)


def igd(front: np.ndarray, reference: np.ndarray, maximize: Sequence[bool]) -> float:
    """Inverted generational distance: mean distance from each reference point to its nearest front point."""
    return float(IGD(_minimised(reference, maximize)).do(_minimised(front, maximize)))


def igd_plus(front: np.ndarray, reference: np.ndarray, maximize: Sequence[bool]) -> float:
    """IGD+ (Ishibuchi et al. 2015): IGD with each distance counted only over the objectives where the front's point is
    worse, so a reference point the front dominates counts 0 (IGD is not Pareto-compliant; IGD+ weakly is)."""
    return float(IGDPlus(_minimised(reference, maximize)).do(_minimised(front, maximize)))


def gd(front: np.ndarray, reference: np.ndarray, maximize: Sequence[bool]) -> float:
    """Generational distance: mean distance from each front point to its nearest reference point."""
    return float(GD(_minimised(reference, maximize)).do(_minimised(front, maximize)))


def hypervolume(front: np.ndarray, ref_point: np.ndarray, maximize: Sequence[bool]) -> float:
    """Hypervolume dominated by `front` and bounded by `ref_point` (both on the original scale)."""
    ref = np.asarray(ref_point, dtype=float) * _signs(maximize)
    return float(HV(ref_point=ref).do(_minimised(front, maximize)))


# win rate: MAP's pick per preference against the best of a brute-force search (pure numpy)


def simplex_lattice(n_obj: int, partitions: int) -> np.ndarray:
    """Das-Dennis preference vectors [C(partitions + n_obj - 1, n_obj - 1), n_obj]: every w >= 0 summing to 1 with
    entries in {0, 1/partitions, ..., 1}, in lexicographic order of the counts (descending in the first weight)."""
    if n_obj < 1 or partitions < 1:
        raise ValueError(f"a simplex lattice needs n_obj >= 1 and partitions >= 1; got {n_obj}, {partitions}")

    def counts(total: int, parts: int) -> list[list[int]]:
        if parts == 1:
            return [[total]]
        return [[first, *rest] for first in range(total, -1, -1) for rest in counts(total - first, parts - 1)]

    return np.array(counts(partitions, n_obj), dtype=float) / partitions


def preference_vectors(n_obj: int, max_vectors: int, kind: str = "lattice", seed: int = 0) -> np.ndarray:
    """Preference vectors W [n, n_obj] (rows >= 0, summing to 1).

    lattice: the Das-Dennis lattice with the most partitions whose size is at most `max_vectors` (at least 1
    partition: the n_obj corners); deterministic. dirichlet: `max_vectors` draws of a flat Dirichlet from `seed`.
    """
    if kind == "lattice":
        if n_obj == 1:
            return np.ones((1, 1))
        partitions = 1
        while comb(partitions + n_obj, n_obj - 1) <= max_vectors:
            partitions += 1
        return simplex_lattice(n_obj, partitions)
    if kind == "dirichlet":
        return np.random.default_rng(seed).dirichlet(np.ones(n_obj), size=max_vectors)
    raise ValueError(f"unknown kind of preference vectors {kind!r}; known: lattice, dirichlet")


def weighted_scores(F: np.ndarray, W: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Weighted-sum scores [..., n_w, m] of the points F [..., m, k] for the preferences W [n_w, k]: sum_i w_i * F_i
    with minimised objectives negated (larger is better), as mapmerge.core.selection's weighted_sum."""
    signed = np.asarray(F, dtype=float) * -_signs(maximize)
    return np.einsum("wk,...mk->...wm", np.asarray(W, dtype=float), signed)


def weighted_picks(F: np.ndarray, W: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Per preference vector (rows of W [n_w, k]), the index of the point of F [m, k] with the best weighted-sum
    score (ties: the lowest index): the selection rule weighted_sum, for many preferences at once."""
    return np.argmax(weighted_scores(F, W, maximize), axis=-1)


def preference_wins(
    W: np.ndarray, picked: np.ndarray, candidates: np.ndarray, maximize: Sequence[bool], tol: float = 1e-12
) -> np.ndarray:
    """Whether MAP's pick is at least as good as the best brute-force candidate, per preference vector.

    W [n_w, k]: preference vectors; picked [n_w, k]: the real objective values of MAP's pick for each w;
    candidates [m, k], or [s, m, k] for s brute-force searches: their real objective values. Scores are weighted
    sums (maximised; minimised objectives negated). A win: score(pick) >= max over candidates of their score,
    less `tol`. Candidate rows with a NaN are left out; a pick with a NaN never wins. Returns [n_w] or [s, n_w].
    """
    W = np.asarray(W, dtype=float)
    picked = np.asarray(picked, dtype=float)
    candidates = np.asarray(candidates, dtype=float)
    if picked.shape != W.shape or candidates.ndim not in (2, 3) or candidates.shape[-1] != W.shape[1]:
        raise ValueError(
            f"W {W.shape}, picked {picked.shape} and candidates {candidates.shape} need [n_w, k], [n_w, k] and "
            "[m, k] or [s, m, k]"
        )
    mine = np.einsum("wk,wk->w", W, picked * -_signs(maximize))
    scores = weighted_scores(candidates, W, maximize)  # [..., n_w, m]
    scores = np.where(np.isnan(scores), -np.inf, scores)
    best = scores.max(axis=-1) if scores.shape[-1] else np.full(scores.shape[:-1], -np.inf)
    return mine >= best - tol


def win_rate(
    W: np.ndarray, picked: np.ndarray, candidates: np.ndarray, maximize: Sequence[bool], tol: float = 1e-12
) -> float:
    """The fraction of preference vectors for which MAP's pick is at least as good as the best brute-force candidate
    (the MAP paper's win rate); with [s, m, k] candidates, the mean over the s searches. See `preference_wins`."""
    return float(np.mean(preference_wins(W, picked, candidates, maximize, tol)))
