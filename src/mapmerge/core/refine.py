"""Refinement rounds: which points of a predicted front to evaluate for real next, and where a front meets its box.

A round evaluates the current pick for the user's preference (with refine.trust_radius: the best predicted merge
within a trust region around the best one measured, trust_region) and K points of the predicted
front where the measured front has no point yet; they join the fit, and the next round's front is predicted from every real
evaluation so far. Points already evaluated (closer than `gap` of the box's width in every
coefficient) are skipped for the next farthest one, so a round never spends an evaluation twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core.quadratic import n_params

KINDS = ("pick", "front", "extend")  # a refinement round's samples: the pick, front points, points past the box
ORDERS = ("cover", "gap")  # how round_points orders a round's front points
BOX_POINTS = 1024  # the dense sample of the box whose predicted non-dominated merges order `cover` covers
# a candidate this close (fraction of the box's width, in every coefficient) to an evaluated point is skipped
GAP = 1e-3
BOUND_TOL = 0.01  # a coefficient this close (fraction of the box's width) to a bound lies on it
TRUST_POINTS = 512  # the candidates of a pick taken beside the best merge measured (refine.trust_radius)


def front_points(cfg: Mapping[str, Any], n_members: int) -> int:
    """K, the front points a round evaluates besides the pick (refine.points; null: half the surrogate's parameter
    count, rounded down: docs/performance.md measured about half against the whole count)."""
    return int(cfg["points"] or n_params(n_members) // 2)


def round_size(cfg: Mapping[str, Any], n_members: int) -> int:
    """The most samples a refinement round evaluates: the pick, K front points, and with refine.extend one point
    beyond the box per member."""
    return front_points(cfg, n_members) + 1 + (n_members if cfg["extend"] > 0 else 0)


def round_points(
    front_C: np.ndarray,
    front_F: np.ndarray,
    picks: Sequence[int],
    k: int,
    evaluated: np.ndarray,
    measured_F: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    gap: float = GAP,
    order: str = "gap",
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The next round's coefficients [n, T] and each one's kind (`pick` or `front`): the pick (picks[0]) first, the
    other `picks` (front points to evaluate before any other, kind `front`) next, then front points in the
    `order`, skipping any within `gap` of an evaluated or already chosen point. Objectives are normalised by the
    candidates' range; `measured_F` holds the objectives of the non-dominated real evaluations (the measured front).

    - `cover` (the workflow's): `box` = (C, F), the predicted non-dominated merges of a dense sample of the box
      (mapmerge.core.pareto.sample_front), join the candidates; each next point is the candidate that most lowers
      the mean distance from the box's predicted non-dominated merges to their nearest measured or chosen point.
      The front a dense sample of real evaluations would give weighs each region by how many merges are
      non-dominated there; NSGA-III's front spreads its points evenly instead (docs/performance.md).
    - `gap`: the predicted front point farthest from the measured front and from the points chosen so far.

    (`cover` with NSGA-III's front as `box` is docs/performance.md's order `coverage`.)

    n = k + 1 while the candidates hold that many new points; fewer when they do not (a front that is already
    evaluated everywhere needs no more rounds).
    """
    if order not in ORDERS:
        raise ValueError(f"round_points: unknown order '{order}'; known: {', '.join(ORDERS)}")
    if (order == "cover") != (box is not None):
        raise ValueError("round_points: order 'cover' takes the box's predicted front (box), the others none")
    C = np.asarray(front_C, dtype=float)
    F = np.asarray(front_F, dtype=float)
    if box is not None:
        C, F = np.vstack([C, box[0]]), np.vstack([F, box[1]])
    span = F.max(axis=0) - F.min(axis=0)
    span = np.where(span > 0, span, 1.0)
    X = F / span  # the candidates
    reference = X if box is None else np.asarray(box[1], dtype=float) / span  # what the coverage orders cover
    reached = np.asarray(measured_F, dtype=float).reshape(-1, F.shape[1]) / span
    # per reference point (gap's: the candidates themselves) the distance to the measured front and the points chosen
    nearest = _nearest(reference, reached)
    available = np.ones(len(X), dtype=bool)  # not yet taken or skipped
    taken = np.asarray(evaluated, dtype=float).reshape(-1, C.shape[1])
    chosen, kinds = [], []
    pick, queue = picks[0], list(picks[1:])
    candidate: int | None = pick
    while candidate is not None and len(chosen) < k + 1:
        nearest = np.minimum(nearest, np.linalg.norm(reference - X[candidate], axis=1))
        if not _near(C[candidate], taken, lower, upper, gap):
            chosen.append(C[candidate])
            kinds.append("pick" if candidate == pick else "front")
            taken = np.vstack([taken, C[candidate]])
        available[candidate] = False
        if queue:
            candidate = queue.pop(0)
        elif not available.any():
            candidate = None
        elif order == "gap":
            candidate = int(np.argmax(np.where(available, nearest, -1.0)))
        else:
            candidate = _most_covering(X, reference, nearest, available)
    return np.array(chosen).reshape(-1, C.shape[1]), kinds


def _nearest(X: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per row of X the distance to the nearest of `points` (inf where there are none)."""
    if not len(points):
        return np.full(len(X), np.inf)
    return np.linalg.norm(X[:, None, :] - points[None, :, :], axis=2).min(axis=1)


def _most_covering(X: np.ndarray, reference: np.ndarray, covered: np.ndarray, available: np.ndarray) -> int:
    """The available row of X whose choice most lowers the sum over `reference` of the distance to the nearest
    point reached (`covered`)."""
    pairwise = np.linalg.norm(reference[:, None, :] - X[None, :, :], axis=2)
    gain = np.maximum(covered[:, None] - pairwise, 0.0).sum(axis=0)
    gain[~available] = -np.inf
    return int(np.argmax(gain))


def trust_region(
    center: np.ndarray, lower: np.ndarray, upper: np.ndarray, radius: float, seed: Sequence[int]
) -> np.ndarray:
    """TRUST_POINTS coefficient vectors [n, T], uniform within `radius` (a fraction of the box's width) of `center`
    in every coefficient and clipped to the box [lower, upper]; numpy's generator seeded with `seed` (the run's
    seed and the round)."""
    center = np.asarray(center, dtype=float)
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    step = np.random.default_rng(list(seed)).uniform(-1.0, 1.0, (TRUST_POINTS, len(center)))
    return np.clip(center + step * radius * (upper - lower), lower, upper)


def corrected(correction: str, samples: pd.DataFrame) -> bool:
    """Whether a group's fit on `samples` gets the local correction: surrogate.correction is `kernel` and the samples
    hold refinement rounds' evaluations (a fit on the design alone is never corrected)."""
    return correction == "kernel" and "kind" in samples.columns and bool(samples["kind"].isin(KINDS).any())


def _near(c: np.ndarray, points: np.ndarray, lower: np.ndarray, upper: np.ndarray, gap: float) -> bool:
    """Whether some row of `points` lies within `gap` of the box's width of c in every coefficient."""
    width = np.maximum(np.asarray(upper, dtype=float) - np.asarray(lower, dtype=float), 1e-12)
    return bool(len(points)) and bool((np.abs(points - c) / width).max(axis=1).min() < gap)


def on_bounds(
    C: np.ndarray, lower: np.ndarray, upper: np.ndarray, tol: float = BOUND_TOL
) -> list[tuple[int, str, float]]:
    """Per coefficient whose values touch a bound: (its index, 'lower' or 'upper', the fraction of rows of C on it).

    C: one row (a pick) or many (a front); a coefficient is listed once per bound it touches.
    """
    C = np.atleast_2d(np.asarray(C, dtype=float))
    lower = np.broadcast_to(np.asarray(lower, dtype=float), C.shape[1:])
    upper = np.broadcast_to(np.asarray(upper, dtype=float), C.shape[1:])
    width = np.maximum(upper - lower, 1e-12)
    found = []
    for j in range(C.shape[1]):
        for name, bound in (("lower", lower[j]), ("upper", upper[j])):
            share = float(np.mean(np.abs(C[:, j] - bound) <= tol * width[j]))
            if share > 0:
                found.append((j, name, share))
    return found


def extended_points(
    pick_c: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    step: float,
    limit: float,
    evaluated: np.ndarray,
    tol: float = BOUND_TOL,
) -> np.ndarray:
    """Points outside the box beside a pick that lies on its upper bound: per such coefficient, the pick with that
    coefficient raised by `step` (capped at `limit`), unless within GAP of an `evaluated` point. None when the pick
    is inside the box or already at `limit`."""
    pick_c = np.asarray(pick_c, dtype=float)
    evaluated = np.asarray(evaluated, dtype=float).reshape(-1, len(pick_c))
    points = []
    for j, bound, _ in on_bounds(pick_c, lower, upper, tol):
        if bound == "upper" and pick_c[j] < limit - tol:
            c = pick_c.copy()
            c[j] = min(limit, c[j] + step)
            if not _near(c, evaluated, lower, upper, GAP):
                points.append(c)
    return np.array(points).reshape(-1, len(pick_c))
