"""Bayesian MAP: adaptive sampling of merge coefficients in rounds, where the surrogate is worst.

Each round refits the surrogates on every evaluated sample, measures their out-of-sample error at
those samples (`sample_errors`) and draws the next points (`propose`): the coefficient box is cut
into angular bins of hyperspherical coordinates around its lower corner, each bin is scored by the
errors of the samples in it, and a softmax of the scores at a temperature picks the bins.
Pure functions of their inputs and a seed; no workflow code here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mapmerge.core.surrogate import (
    SurrogateError,
    _coefficients,
    _present,
    _values,
    _where,
    fit_surrogate,
    n_params,
)

RADII = ("uniform", "sqrt", "volume")
MAX_BINS = 4096  # default cap on bins**(M-1): far more bins than samples leaves nearly all of them empty


def loo_residuals(C: np.ndarray, y: np.ndarray, link: str, task: str = "", metric: str = "") -> np.ndarray:
    """Leave-one-out residuals [n]: the prediction at C[i] of the fit on all other samples, minus y[i].

    Out of sample on purpose: in-sample residuals shrink as the quadratic bends toward the data, so
    they understate the error exactly where the surrogate is least trustworthy.
    """
    C = np.asarray(C, dtype=float)
    y = np.asarray(y, dtype=float)
    need = n_params(C.shape[1]) + 1
    if len(y) < need:
        raise SurrogateError(f"{_where(task, metric)}: {len(y)} samples; leave-one-out errors need at least {need}")
    keep = ~np.eye(len(y), dtype=bool)
    fits = (fit_surrogate(C[k], y[k], link, task, metric, loo=False) for k in keep)
    return np.array([fit.predict(C[i]) - y[i] for i, fit in enumerate(fits)])


def sample_errors(
    samples: pd.DataFrame,
    metrics: pd.DataFrame,
    members: Sequence[str],
    surrogate_cfg: Mapping[str, Any],
    metric: str,
) -> pd.Series:
    """Per sample, the mean over the `members` tasks of the absolute leave-one-out residual of `metric`.

    samples: columns 'sample' and 'c_<member>'; metrics: long (sample, task, metric, value). The
    link is surrogate_cfg['links'][metric]; surrogate_cfg['missing'] acts as in `fit_table` (with
    'drop' a task's missing samples leave its fit and that sample's mean; a sample missing from
    every task gets NaN). surrogate_cfg['loo'] is not consulted: these errors are always
    leave-one-out. Index: the sample ids, in `samples` order.
    """
    links = surrogate_cfg.get("links") or {}
    if metric not in links:
        raise SurrogateError(f"surrogate.links: no link for metric {metric!r}; known: {', '.join(links) or 'none'}")
    tasks = list(members)
    C = _coefficients(samples, tasks)
    ids = samples["sample"]
    errors = np.full((len(ids), len(tasks)), np.nan)
    for j, task in enumerate(tasks):
        y = _values(metrics, ids, task, metric)
        keep = _present(y, ids, _where(task, metric), str(surrogate_cfg.get("missing", "error")))
        errors[keep, j] = np.abs(loo_residuals(C[keep], y[keep], str(links[metric]), task, metric))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: samples missing from every task
        mean = np.nanmean(errors, axis=1)
    return pd.Series(mean, index=pd.Index(ids.to_numpy(), name="sample"), name="error")


def check_cfg(cfg: Mapping[str, Any], n_dims: int) -> tuple[int, float, float, str]:
    """(bins, lam, temperature, radius) from cfg, or a one-line ValueError naming the key."""

    def number(key: str, ok: Any, rule: str) -> float:
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"bayesian.{key}: must be {rule}, got {value!r}")
        return float(value)

    bins = cfg.get("bins")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bayesian.bins: must be an integer >= 1, got {bins!r}")
    max_bins = int(number("max_bins", lambda v: v >= 1, ">= 1")) if "max_bins" in cfg else MAX_BINS
    if bins ** (n_dims - 1) > max_bins:
        raise ValueError(
            f"bayesian.bins: {bins}**{n_dims - 1} = {bins ** (n_dims - 1)} angular bins for {n_dims} coefficients "
            f"exceed bayesian.max_bins ({max_bins}); lower bins"
        )
    lam = number("lam", lambda v: v >= 0, "a number >= 0")
    temperature = number("temperature", lambda v: v > 0, "> 0")
    radius = cfg.get("radius", "uniform")
    if radius not in RADII:
        raise ValueError(f"bayesian.radius: must be one of {', '.join(RADII)}, got {radius!r}")
    return int(bins), lam, temperature, str(radius)


def initial_sampler(sampler: Mapping[str, Any], cfg: Mapping[str, Any], n_dims: int) -> dict[str, Any]:
    """The design sampler of round 0: `initial_factor` times the surrogate's parameters, and enough
    points (P + 2) for leave-one-out errors."""
    return {
        **sampler,
        "factor": float(cfg["initial_factor"]),
        "min_points": max(int(sampler.get("min_points", 0)), n_params(n_dims) + 2),
    }


def round_size(cfg: Mapping[str, Any], n_dims: int) -> int:
    """Points per round: ceil(per_round_factor * (M+1)(M+2)/2), at least 1."""
    return max(1, math.ceil(float(cfg["per_round_factor"]) * n_params(n_dims)))


def with_bins(cfg: Mapping[str, Any], n_samples: int, n_dims: int) -> dict[str, Any]:
    """cfg with `bins` filled in where it is null: about two samples per bin, at least 2 bins per angle."""
    if cfg.get("bins") is not None or n_dims < 2:
        return {**cfg, "bins": cfg.get("bins") or 1}
    return {**cfg, "bins": max(2, int((n_samples / 2) ** (1.0 / (n_dims - 1))))}


def to_angles(U: np.ndarray) -> np.ndarray:
    """Hyperspherical angles [n, M-1], each in [0, pi/2], of points U [n, M] in the unit box.

    phi_k = atan2(|U[k+1:]|, U[k]): U = r (cos phi_1, sin phi_1 cos phi_2, ..., sin phi_1...sin phi_{M-1}).
    """
    tail = np.sqrt(np.cumsum(np.square(U[:, ::-1]), axis=1)[:, ::-1])  # tail[:, k] = |U[:, k:]|
    return np.arctan2(tail[:, 1:], U[:, :-1])


def directions(phi: np.ndarray) -> np.ndarray:
    """Unit vectors [n, M] of hyperspherical angles phi [n, M-1] (the inverse of `to_angles` at r = 1)."""
    n = len(phi)
    sines = np.cumprod(np.hstack([np.ones((n, 1)), np.sin(phi)]), axis=1)  # prod_{j<k} sin phi_j
    return sines * np.hstack([np.cos(phi), np.ones((n, 1))])


def _powers(bins: int, n_angles: int) -> np.ndarray:
    """Place values of a row-major bin index: bins**(n_angles-1), ..., bins, 1."""
    return bins ** np.arange(n_angles - 1, -1, -1, dtype=np.int64)


def bin_probabilities(phi: np.ndarray, errors: np.ndarray, bins: int, lam: float, temperature: float) -> np.ndarray:
    """Probabilities over the bins**(M-1) angular bins (row-major bin index) of the next points.

    A bin with points scores mean + lam * std (population std) of their errors; a bin without any
    scores what the pooled errors score (pooled mean + lam * pooled std): with no data of its own
    an unexplored region is expected to be like the box as a whole, so it is typically drawn more
    often than the well-fitted bins and less often than the badly fitted ones. Scores are divided by the
    pooled mean error, so the temperature is in units of the mean error whatever the metric's scale.
    """
    n_angles = phi.shape[1]
    index = np.minimum((phi / (np.pi / 2) * bins).astype(int), bins - 1)
    flat = index @ _powers(bins, n_angles)
    n_bins = bins**n_angles
    count = np.bincount(flat, minlength=n_bins)
    total = np.bincount(flat, errors, minlength=n_bins)
    squares = np.bincount(flat, np.square(errors), minlength=n_bins)
    filled = count > 0
    mean = np.divide(total, count, out=np.zeros(n_bins), where=filled)
    var = np.divide(squares, count, out=np.zeros(n_bins), where=filled) - np.square(mean)
    pooled = float(np.mean(errors)) + lam * float(np.std(errors)) if len(errors) else 0.0
    score = np.where(filled, mean + lam * np.sqrt(np.maximum(var, 0.0)), pooled)
    scale = float(np.mean(errors)) if len(errors) else 0.0
    logits = score / (scale * temperature) if scale > 0 else np.zeros(n_bins)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def propose(
    C: np.ndarray,
    errors: np.ndarray,
    n_new: int,
    lower: np.ndarray,
    upper: np.ndarray,
    cfg: Mapping[str, Any],
    seed: int,
) -> np.ndarray:
    """n_new new coefficient vectors [n_new, M] in [lower, upper], drawn where the errors are large.

    C [n, M]: the coefficients evaluated so far; errors [n]: their surrogate errors (rows with a
    non-finite error are ignored). Points are mapped to the unit box u = (c - lower) / (upper -
    lower) and binned by their hyperspherical angles around the origin, `cfg['bins']` equal bins
    per angle in [0, pi/2] (see `bin_probabilities` for cfg lam and temperature; the lower corner
    itself falls in the first bin). Each new point takes a bin by those probabilities, angles
    uniform inside it (in the coordinates, not in solid angle, for M >= 3) and a radius
    r = r_max * g(U), U ~ U(0, 1), where r_max is where the ray leaves the unit box and g is by
    cfg['radius']: 'uniform' U (uniform along the ray), 'sqrt' sqrt(U) (favours the outer shell; uniform in area
    for M = 2), 'volume' U**(1/M) (uniform in the volume of the bin's cone, the outer shell most).
    Optional cfg['max_bins'] (default 4096) caps bins**(M-1). Same inputs and seed, same points.
    """
    lower = np.atleast_1d(np.asarray(lower, dtype=float))
    upper = np.atleast_1d(np.asarray(upper, dtype=float))
    C = np.asarray(C, dtype=float)
    C = C.reshape(0, len(lower)) if C.size == 0 else C
    errors = np.asarray(errors, dtype=float)
    if (
        C.ndim != 2
        or C.shape[1] != len(lower)
        or errors.shape != (len(C),)
        or upper.shape != lower.shape
        or not np.all(lower < upper)
    ):
        raise ValueError(
            f"propose: need C [n, M], errors [n] and lower < upper [M]; got C {C.shape}, errors {errors.shape}, "
            f"lower {lower.tolist()}, upper {upper.tolist()}"
        )
    if isinstance(n_new, bool) or not isinstance(n_new, (int, np.integer)) or n_new < 0:
        raise ValueError(f"propose: n_new must be an integer >= 0, got {n_new!r}")
    n_dims = len(lower)
    bins, lam, temperature, radius = check_cfg(cfg, n_dims)
    seen = np.isfinite(errors) & np.isfinite(C).all(axis=1)
    U = np.clip((C[seen] - lower) / (upper - lower), 0.0, 1.0)
    probs = bin_probabilities(to_angles(U), errors[seen], bins, lam, temperature)

    rng = np.random.default_rng(seed)
    flat = rng.choice(len(probs), size=n_new, p=probs)
    index = flat[:, None] // _powers(bins, n_dims - 1) % bins
    phi = (index + rng.random(index.shape)) * (np.pi / 2) / bins
    d = directions(phi)
    r_max = 1.0 / d.max(axis=1)
    g = rng.random(n_new)
    g = {"uniform": g, "sqrt": np.sqrt(g), "volume": g ** (1.0 / n_dims)}[radius]
    return np.clip(lower + d * (r_max * g)[:, None] * (upper - lower), lower, upper)
