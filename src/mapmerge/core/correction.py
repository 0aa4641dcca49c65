"""A local correction of the quadratic surrogate: a kernel model of its residuals on the link scale.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import product

import numpy as np
from scipy.special import stdtrit

LENGTH_SCALES = (0.1, 0.15, 0.2, 0.3, 0.5, 0.75)  # in units of each coefficient's range over the points
RIDGES = (1e-3, 1e-2, 0.1, 1.0)  # noise variance over the kernel's variance


def _kernel(A: np.ndarray, B: np.ndarray, length: float) -> np.ndarray:
    d2 = np.sum((A[:, None, :] - B[None, :, :]) ** 2, axis=-1)
    return np.exp(-d2 / (2.0 * length**2))


@dataclass(frozen=True, eq=False)
class KernelCorrection:
    """r(c), the kernel model of a quadratic's link-scale residuals; `loo` its leave-one-out residuals."""

    centres: np.ndarray  # [n, T] the points, scaled by `scale`
    alpha: np.ndarray  # [n] kernel weights
    scale: np.ndarray  # [T] each coefficient's range over the points (1 where constant)
    length: float
    ridge: float
    loo: np.ndarray | None = None  # [n] each residual less its leave-one-out prediction (link scale), when fitted

    def __call__(self, C: np.ndarray) -> np.ndarray:
        """r(c) on the link scale for coefficients C [..., T]."""
        C = np.asarray(C, dtype=float)
        flat = C.reshape(-1, C.shape[-1]) / self.scale
        out = np.empty(len(flat))
        chunk = max(1, 4_000_000 // max(1, len(self.centres)))  # bounded memory for many points
        for start in range(0, len(flat), chunk):
            out[start : start + chunk] = _kernel(flat[start : start + chunk], self.centres, self.length) @ self.alpha
        return out.reshape(C.shape[:-1])

    @cached_property
    def _solve(self) -> tuple[np.ndarray, float]:
        """(K + ridge I)^-1 at the centres, and the profiled signal variance s^2 = r^T (K + ridge I)^-1 r / n."""
        A = _kernel(self.centres, self.centres, self.length) + self.ridge * np.eye(len(self.centres))
        residual = A @ self.alpha  # the residuals the correction was fitted to
        return np.linalg.inv(A), float(residual @ self.alpha) / len(self.centres)

    def variance(self, C: np.ndarray, basis: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """The predictive variance of a new value's link-scale residual at coefficients C [..., T]: the Gaussian
        process's s^2 (1 + ridge - k(c)^T (K + ridge I)^-1 k(c)).

        basis: the features the mean was fitted on (the quadratic's), to count its p parameters as estimated rather
        than known: the universal-kriging term s^2 u^T (H^T (K + ridge I)^-1 H)^-1 u, u = h(c) - H^T (K + ridge
        I)^-1 k(c), H = basis at the points, is added (it grows away from the points, where the quadratic extrapolates),
        and s^2 takes n - p degrees of freedom in place of n (restricted maximum likelihood: the residuals of a fit of
        p parameters are that much smaller than its errors; `half_width` takes Student's quantile on as many).
        """
        C = np.asarray(C, dtype=float)
        flat = C.reshape(-1, C.shape[-1]) / self.scale
        inverse, signal = self._solve
        H = None if basis is None else basis(self.centres * self.scale)
        spread = None if H is None else np.linalg.pinv(H.T @ inverse @ H)
        if H is not None:
            signal *= len(H) / (len(H) - H.shape[1])
        out = np.empty(len(flat))
        chunk = max(1, 4_000_000 // max(1, len(self.centres)))
        for start in range(0, len(flat), chunk):
            k = _kernel(flat[start : start + chunk], self.centres, self.length)
            weights = k @ inverse
            out[start : start + chunk] = 1.0 + self.ridge - np.einsum("ij,ij->i", weights, k)
            if basis is not None:
                u = basis(flat[start : start + chunk] * self.scale) - weights @ H
                out[start : start + chunk] += np.maximum(np.einsum("ij,jk,ik->i", u, spread, u), 0.0)
        return (signal * np.maximum(out, 0.0)).reshape(C.shape[:-1])

    def half_width(self, C: np.ndarray, level: float, basis: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Half the central `level` interval of a new value's link-scale residual at coefficients C [..., T]: Student's
        quantile on n - p degrees of freedom times the square root of `variance(C, basis)` (n points, p = the basis's
        features; needs n > p)."""
        n, p = len(self.centres), basis(self.centres[:1] * self.scale).shape[1]
        return stdtrit(n - p, 0.5 + level / 2) * np.sqrt(self.variance(C, basis=basis))


def fit_correction(
    C: np.ndarray,
    residual: np.ndarray,
    lengths: Sequence[float] = LENGTH_SCALES,
    ridges: Sequence[float] = RIDGES,
) -> KernelCorrection:
    """Kernel ridge on the link-scale residuals [n] of a quadratic at coefficients C [n, T]; (length, ridge) is the
    pair of `lengths` x `ridges` with the largest profiled marginal likelihood."""
    C = np.asarray(C, dtype=float)
    residual = np.asarray(residual, dtype=float)
    span = C.max(axis=0) - C.min(axis=0)
    scale = np.where(span > 0, span, 1.0)
    X = C / scale
    best: tuple[float, float, float, np.ndarray, np.ndarray] | None = None
    for length, ridge in product(lengths, ridges):
        inverse = np.linalg.inv(_kernel(X, X, length) + ridge * np.eye(len(X)))
        alpha = inverse @ residual
        _, logdet_inverse = np.linalg.slogdet(inverse)
        nll = len(X) * np.log(max(float(residual @ alpha), 1e-300) / len(X)) - logdet_inverse
        if best is None or nll < best[0]:
            best = (nll, length, ridge, alpha, alpha / np.diag(inverse))
    assert best is not None
    _, length, ridge, alpha, loo = best
    return KernelCorrection(X, alpha, scale, float(length), float(ridge), loo)
