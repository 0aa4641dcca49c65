"""A local correction of the quadratic surrogate: the quadratic plus a kernel model of its residuals, on the link scale.

    M(c) ~ link(q(c) + r(c)),   r(c) = sum_j alpha_j k(c, c_j),   k(c, c') = exp(-|c - c'|^2 / (2 l^2))

q is the quadratic of mapmerge.core.surrogate fitted to every point; r is kernel ridge regression (the posterior
mean of a Gaussian process with a zero prior mean) of the residuals inverse_link(y_j) - q(c_j) at the points c_j,
with distances in coefficients scaled by their range over the points. Far from every point r decays to 0 and the
quadratic is left as it is; near the points (after refinement rounds: near the predicted front) it follows the
measurements. The length scale l and the ridge (noise over signal variance) are chosen per task and metric from a
small grid by the Gaussian process's marginal likelihood, its variance profiled out: the pair minimising
n log(r^T A^-1 r / n) + log det A, A = K_l + ridge I, r the residuals (the quadratic held fixed). (On the digits
benchmark's refinement rounds this chose longer length scales than the closed-form leave-one-out error, which
favours the shortest on clustered points, and predicted the true front better: docs/performance.md.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from mapmerge.core.surrogate import EPS, LINK_FUNCTIONS, SurrogateFit, fit_surrogate, quadratic_features

LENGTH_SCALES = (0.1, 0.15, 0.2, 0.3, 0.5, 0.75)  # in units of each coefficient's range over the points
RIDGES = (1e-3, 1e-2, 0.1, 1.0)  # noise variance over the kernel's variance


def _kernel(A: np.ndarray, B: np.ndarray, length: float) -> np.ndarray:
    d2 = np.sum((A[:, None, :] - B[None, :, :]) ** 2, axis=-1)
    return np.exp(-d2 / (2.0 * length**2))


@dataclass(frozen=True, eq=False)
class CorrectedFit:
    """The quadratic `base` plus the kernel correction on the link scale; `predict` as SurrogateFit's."""

    base: SurrogateFit
    centres: np.ndarray  # [n, T] the points, scaled by `scale`
    alpha: np.ndarray  # [n] kernel weights
    scale: np.ndarray  # [T] each coefficient's range over the points (1 where constant)
    length: float
    ridge: float
    loo_rmse: float  # the chosen (length, ridge)'s leave-one-out RMSE on the metric's scale (the quadratic fixed)

    def correction(self, C: np.ndarray) -> np.ndarray:
        """The residual model r(c) on the link scale, for C [n, T]."""
        C = np.atleast_2d(np.asarray(C, dtype=float)) / self.scale
        return _kernel(C, self.centres, self.length) @ self.alpha

    def predict(self, C: np.ndarray) -> np.ndarray:
        """Predicted metric for coefficients C [n, T]."""
        C = np.atleast_2d(np.asarray(C, dtype=float))
        z = quadratic_features(C) @ self.base.params + self.correction(C)
        return LINK_FUNCTIONS[self.base.link].forward(z)


def fit_corrected(
    C: np.ndarray,
    y: np.ndarray,
    link: str,
    base: SurrogateFit | None = None,
    lengths: Sequence[float] = LENGTH_SCALES,
    ridges: Sequence[float] = RIDGES,
) -> CorrectedFit:
    """The quadratic (`base`, or fitted here to every point) plus kernel ridge on its link-scale residuals.

    C [n, T], y [n]: the points and their measured metric; link: the surrogate's link (sigmoid, softplus, identity).
    (length, ridge) is the pair of `lengths` x `ridges` with the largest profiled marginal likelihood.
    """
    C = np.asarray(C, dtype=float)
    y = np.asarray(y, dtype=float)
    base = base if base is not None else fit_surrogate(C, y, link, loo=False)
    spec = LINK_FUNCTIONS[link]
    target = spec.inverse(np.clip(y, spec.low + EPS, spec.high - EPS))  # y on the link scale
    residual = target - quadratic_features(C) @ base.params
    span = C.max(axis=0) - C.min(axis=0)
    scale = np.where(span > 0, span, 1.0)
    X = C / scale
    best: tuple[float, float, float, np.ndarray, float] | None = None
    for length, ridge in product(lengths, ridges):
        inverse = np.linalg.inv(_kernel(X, X, length) + ridge * np.eye(len(X)))
        alpha = inverse @ residual
        _, logdet_inverse = np.linalg.slogdet(inverse)
        nll = len(X) * np.log(max(float(residual @ alpha), 1e-300) / len(X)) - logdet_inverse
        loo = alpha / np.diag(inverse)  # residual_i less its leave-one-out prediction
        rmse = float(np.sqrt(np.mean((spec.forward(target - loo) - y) ** 2)))
        if best is None or nll < best[0]:
            best = (nll, length, ridge, alpha, rmse)
    assert best is not None
    _, length, ridge, alpha, rmse = best
    return CorrectedFit(base, X, alpha, scale, float(length), float(ridge), rmse)
