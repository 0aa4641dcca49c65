"""The quadratic's parametrisation: its parameter count and its features (1, c_i, c_i*c_j for i <= j).

Apart from mapmerge.core.surrogate (the fit) so that the stage that only sizes a design (sample_coefficients, through
mapmerge.core.sampling) does not import the fit, and its code fingerprint does not change when the fit or its
intervals change. (The design's evaluations take their coefficients as params, so they never reran for it.)
"""

from __future__ import annotations

import numpy as np


def n_params(n_tasks: int) -> int:
    """Number of quadratic parameters for `n_tasks` coefficients: (T+1)(T+2)/2."""
    return (n_tasks + 1) * (n_tasks + 2) // 2


def quadratic_features(C: np.ndarray) -> np.ndarray:
    """Features [..., T] -> [..., P]: 1, c_1..c_T, then c_i*c_j for i <= j in row-major order."""
    C = np.asarray(C, dtype=float)
    i, j = np.triu_indices(C.shape[-1])
    return np.concatenate([np.ones(C.shape[:-1] + (1,)), C, C[..., i] * C[..., j]], axis=-1)
