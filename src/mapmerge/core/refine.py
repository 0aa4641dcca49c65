"""Refinement rounds: which points of a predicted front to evaluate for real next, and where a front meets its box.

A round evaluates the current pick for the user's preference and K points spread along the
predicted front; they join the fit, and the next round's front is predicted from every real
evaluation so far. Points already evaluated (closer than `gap` of the box's width in every
coefficient) are skipped for the next farthest one, so a round never spends an evaluation twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mapmerge.core.spread import spread_order
from mapmerge.core.surrogate import n_params

KINDS = ("pick", "front", "extend")  # a refinement round's samples: the pick, front points, points past the box
# a candidate this close (fraction of the box's width, in every coefficient) to an evaluated point is skipped
GAP = 1e-3
BOUND_TOL = 0.01  # a coefficient this close (fraction of the box's width) to a bound lies on it


def front_points(cfg: Mapping[str, Any], n_members: int) -> int:
    """K, the front points a round evaluates besides the pick (refine.points; null: the surrogate's parameter count)."""
    return int(cfg["points"] or n_params(n_members))


def round_size(cfg: Mapping[str, Any], n_members: int) -> int:
    """The most samples a refinement round evaluates: the pick, K front points, and with refine.extend one point
    beyond the box per member."""
    return front_points(cfg, n_members) + 1 + (n_members if cfg["extend"] > 0 else 0)


def round_points(
    front_C: np.ndarray,
    front_F: np.ndarray,
    pick: int,
    k: int,
    evaluated: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    gap: float = GAP,
) -> tuple[np.ndarray, list[str]]:
    """The next round's coefficients [n, T] and each one's kind (`pick` or `front`): the pick first, then front
    points in spread order, skipping any within `gap` of an evaluated or already chosen point.

    n = k + 1 while the front has that many new points; fewer when it has not (a front that is already
    evaluated everywhere needs no more rounds).
    """
    front_C = np.asarray(front_C, dtype=float)
    order = [pick, *(int(i) for i in spread_order(front_F) if i != pick)]
    taken = np.asarray(evaluated, dtype=float).reshape(-1, front_C.shape[1])
    chosen, kinds = [], []
    for i in order:
        if len(chosen) == k + 1:
            break
        if _near(front_C[i], taken, lower, upper, gap):
            continue
        chosen.append(front_C[i])
        kinds.append("pick" if i == pick else "front")
        taken = np.vstack([taken, front_C[i]])
    return np.array(chosen).reshape(-1, front_C.shape[1]), kinds


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
