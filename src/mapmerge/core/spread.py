"""Points spread along a front: the order in which refinement rounds and validation take them."""

from __future__ import annotations

import numpy as np


def spread_order(F: np.ndarray) -> np.ndarray:
    """Every row index of F, farthest first: in range-normalised space, the row lowest in the first column (an end
    of a front), then repeatedly the row farthest from those taken (ties: the lowest index)."""
    F = np.asarray(F, dtype=float)
    if len(F) == 0:
        return np.zeros(0, dtype=int)
    span = F.max(axis=0) - F.min(axis=0)
    X = (F - F.min(axis=0)) / np.where(span > 0, span, 1.0)
    chosen = [int(np.argmin(X[:, 0]))]
    distance = np.linalg.norm(X - X[chosen[0]], axis=1)
    while len(chosen) < len(F):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(X - X[chosen[-1]], axis=1))
    return np.array(chosen, dtype=int)
