"""Quadratic surrogates of per-task metrics: M(c) ~ link(c^T A c + b^T c + e).

The quadratic is linear in its parameters over the features returned by `quadratic_features`
(1, c_i, then c_i*c_j for i <= j), so a fit is a linear least-squares start on the link scale
followed by a nonlinear least-squares refinement on the metric's own scale.

Prediction intervals (`SurrogateFit.interval`, `prediction_columns`) come from a residual bootstrap
(`fit_surrogate(..., bootstrap=B)`): the metric-scale residuals r of the fit, scaled by sqrt(n / (n - P))
so their spread is that of new errors, are drawn with replacement and added to the fitted values; the
surrogate is refitted to each of the B sets (started at the fit). The prediction at c of a new real
value is then link(x(c) @ p_b) - r_j over every refit b and scaled residual j: the interval is the
central `level` range of those B x n values, clipped to the link's range and widened to hold the
prediction itself. The refits carry the parameters' uncertainty, the residuals the surrogate's own
error (noise and the quadratic's misfit); stored are the B refitted parameter vectors and the n scaled
residuals. Chosen by measured coverage on real validation grids (docs/validation.md): a link-scale
covariance interval (sigma^2 (J^T J)^-1 sandwich plus the link-scale residual variance, the ends mapped by
the link) held 79% of the grid's accuracies at 90% once refinement rounds had crowded the samples along
the front, the bootstrap 87%; on plain designs both were within 5 points of 90%.

A fit may carry a local correction (`fit_surrogate(..., correct=True)`, mapmerge.core.correction): a kernel
model r(c) of the quadratic's link-scale residuals, added on the link scale, link(x(c) @ p + r(c)), to the
prediction. Its intervals are then the correction's own: the Gaussian process's predictive interval on the link
scale, q(c) + r(c) +- t sqrt(v(c)), v(c) = s^2 (1 + ridge - k(c)^T (K + ridge I)^-1 k(c) + u^T (H^T (K + ridge
I)^-1 H)^-1 u) with s^2 the profiled signal variance on n - P degrees of freedom and t Student's quantile on as
many (since 2026-12-05; before, n and the normal quantile), the ends mapped by the link (narrow near evaluated points,
wider away from them). The last term (universal kriging: H the quadratic's features at the points, u = h(c) - H^T
(K + ridge I)^-1 k(c)) counts the quadratic's parameters as estimated, not known; it grows where the quadratic
extrapolates. On the 2- and 3-task validation grids of the digits benchmark (default refinement) this held 0.851
and 0.953 of the accuracies at 90% (0.950 and 0.904 of the losses); without the last term 0.818 and 0.939 (0.921
and 0.886). The bootstrap around the corrected prediction over-covered (0.975 to 0.996: the quadratic's residuals,
twice the corrected error).
It follows the real evaluations near the points where refinement rounds have put them and fades to the
quadratic away from every point.

With surrogate.scores, a fit of accuracy may carry the quadratics of every example's class scores
(mapmerge.core.class_scores): its predictions and intervals are theirs, and r2, rmse and loo_rmse describe them;
`params` stay the accuracy's own quadratic (the Bayesian rounds' proposals use it), without a bootstrap or a
correction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from threadpoolctl import threadpool_limits

from mapmerge.core.class_scores import ScoreQuadratic, fit_scores, scores_of
from mapmerge.core.correction import KernelCorrection, fit_correction
from mapmerge.core.quadratic import n_params, quadratic_features


class SurrogateError(ValueError):
    """A surrogate cannot be fitted or rebuilt; the message names the task and metric."""


class _Link(NamedTuple):
    forward: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]
    low: float  # the link's closed range [low, high]
    high: float


EPS = 1e-3  # values are fitted clipped into [low + EPS, high - EPS], where the link is finite
LINK_FUNCTIONS: dict[str, _Link] = {
    "sigmoid": _Link(expit, lambda z: expit(z) * expit(-z), logit, 0.0, 1.0),
    "softplus": _Link(lambda z: np.logaddexp(0.0, z), expit, lambda y: y + np.log(-np.expm1(-y)), 0.0, np.inf),
    "identity": _Link(lambda z: z, np.ones_like, lambda y: y, -np.inf, np.inf),
}
LINKS = tuple(LINK_FUNCTIONS)
COEF_PREFIX = "c_"
TABLE_COLUMNS = [
    "task",
    "metric",
    "link",
    "n_samples",
    "r2",
    "rmse",
    "loo_rmse",
    "params",
    "tasks",
    "n_dropped",
    "dropped",
]
# what prediction intervals need (absent from tables written before them, empty for a fit without: no interval):
# refits, the B bootstrap refits' parameters (B x P, row-major); residuals, the n scaled residuals
INTERVAL_COLUMNS = ["refits", "residuals"]
# the local correction (absent from tables written before it; empty lists and NaN for a fit without): its centres
# [n, T] (row-major), kernel weights [n], coefficient scales [T], length scale and ridge
CORRECTION_COLUMNS = [
    "correction_centres",
    "correction_alpha",
    "correction_scale",
    "correction_length",
    "correction_ridge",
]
# the class scores' quadratics of an accuracy fit (surrogate.scores; absent from tables without any): parameters
# [P, examples x classes] (row-major), the examples' targets, the leave-one-out residuals; empty lists elsewhere
SCORE_COLUMNS = ["score_params", "score_targets", "score_residuals"]
INTERVAL_BOOTSTRAP = 200  # B, the bootstrap refits of every fit that surrogate.parquet stores
INTERVAL_SEED = 0  # the bootstrap's draws: the same for every fit, so a fit is reproducible
MISSING = ("error", "drop")  # surrogate.missing: refuse samples without a value, or fit without them


def _where(task: str, metric: str) -> str:
    return f"task {task!r}, metric {metric!r}"


def _link(name: str, task: str, metric: str) -> _Link:
    if name not in LINK_FUNCTIONS:
        raise SurrogateError(f"{_where(task, metric)}: unknown link {name!r}; known: {', '.join(LINKS)}")
    return LINK_FUNCTIONS[name]


@dataclass(frozen=True, eq=False)
class SurrogateFit:
    """A fitted surrogate of one task's metric; `params` are in `quadratic_features` order.

    `tasks` names the coefficients in order (filled by `fit_table`; empty when fitted directly).
    `refits` [B, P] and `residuals` [n]: the bootstrap's refitted parameters and the scaled residuals (module
    docstring); without them (or with no residual degrees of freedom) `interval` gives NaN. `correction`: the
    local correction added on the link scale (module docstring), or None. `scores`: the class scores' quadratics
    whose predictions and intervals replace the quadratic's (module docstring), or None.
    """

    task: str
    metric: str
    link: str
    params: np.ndarray
    r2: float
    rmse: float
    loo_rmse: float
    n_samples: int
    tasks: tuple[str, ...] = ()
    refits: np.ndarray | None = None
    residuals: np.ndarray | None = None
    correction: KernelCorrection | None = None
    scores: ScoreQuadratic | None = None

    def __post_init__(self) -> None:
        params = np.array(self.params, dtype=float)
        params.setflags(write=False)
        object.__setattr__(self, "params", params)
        for name, shape in (("refits", (-1, len(params))), ("residuals", (-1,))):
            value = getattr(self, name)
            if value is not None:
                value = np.array(value, dtype=float).reshape(shape)
                value.setflags(write=False)
                object.__setattr__(self, name, value)
        _link(self.link, self.task, self.metric)
        if self.tasks and len(params) != n_params(len(self.tasks)):
            raise SurrogateError(
                f"{_where(self.task, self.metric)}: {len(params)} parameters do not match "
                f"{len(self.tasks)} tasks ({n_params(len(self.tasks))} expected)"
            )

    @property
    def n_tasks(self) -> int:
        """Number of coefficients T, recovered from the parameter count."""
        return int(round((np.sqrt(8 * len(self.params) + 1) - 3) / 2))

    def predict(self, C: np.ndarray) -> np.ndarray:
        """Predicted metric for coefficients C [..., T] (a [T] vector gives a 0-d array)."""
        C = self._checked(C)
        if self.scores is not None:
            return self.scores.predict(C.reshape(-1, C.shape[-1])).reshape(C.shape[:-1])
        return LINK_FUNCTIONS[self.link].forward(self._link_scale(C))

    def _checked(self, C: np.ndarray) -> np.ndarray:
        C = np.asarray(C, dtype=float)
        if C.shape[-1:] != (self.n_tasks,):
            raise SurrogateError(
                f"{_where(self.task, self.metric)}: coefficients of shape {C.shape}, expected [..., {self.n_tasks}]"
            )
        return C

    def _link_scale(self, C: np.ndarray) -> np.ndarray:
        """x(c) @ params, plus the correction r(c) where the fit has one, for C [..., T]."""
        z = quadratic_features(C) @ self.params
        return z if self.correction is None else z + self.correction(C)

    def interval(self, C: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The `level` prediction interval (low, high) of a new real value of the metric at coefficients C [..., T].

        The central `level` range of the bootstrap's predictions (module docstring), clipped to the link's
        range; it contains `predict(C)` and widens with the level. NaN where the fit has no interval
        (fitted without the bootstrap, no residual degrees of freedom, or a table written before intervals).
        """
        if not 0.0 < level < 1.0:
            raise SurrogateError(f"{_where(self.task, self.metric)}: interval level {level!r} must be in (0, 1)")
        C = self._checked(C)
        if self.scores is not None:  # the class scores' leave-one-out residuals
            low, high = self.scores.interval(C.reshape(-1, C.shape[-1]), level)
            return low.reshape(C.shape[:-1]), high.reshape(C.shape[:-1])
        spec = LINK_FUNCTIONS[self.link]
        z = self._link_scale(C)
        if self.correction is not None:  # a corrected fit has no bootstrap: its Gaussian process's interval
            half = self.correction.half_width(C, level, basis=quadratic_features)
            return spec.forward(z - half), spec.forward(z + half)
        predicted = spec.forward(z)
        if self.refits is None or self.residuals is None or not len(self.refits) or not len(self.residuals):
            nan = np.full(predicted.shape, np.nan)
            return nan, nan.copy()
        flat = C.reshape(-1, C.shape[-1])
        low, high = np.empty(len(flat)), np.empty(len(flat))
        chunk = max(1, 2_000_000 // (len(self.refits) * len(self.residuals)))  # bounded memory for many points
        for start in range(0, len(flat), chunk):
            fitted = spec.forward(quadratic_features(flat[start : start + chunk]) @ self.refits.T)  # [m, B]
            draws = (fitted[:, :, None] - self.residuals[None, None, :]).reshape(len(fitted), -1)
            ends = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2], axis=1)
            low[start : start + chunk], high[start : start + chunk] = ends
        low = np.minimum(np.clip(low, spec.low, spec.high).reshape(predicted.shape), predicted)
        high = np.maximum(np.clip(high, spec.low, spec.high).reshape(predicted.shape), predicted)
        return low, high


def _check_data(C: np.ndarray, y: np.ndarray, link: _Link, link_name: str, where: str) -> None:
    if C.ndim != 2 or y.ndim != 1 or len(C) != len(y):
        raise SurrogateError(f"{where}: coefficients {C.shape} and values {y.shape} do not match ([n, T] and [n])")
    if not len(y):
        raise SurrogateError(f"{where}: no samples to fit")
    for name, arr in (("coefficients", C), ("metric values", y)):
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            raise SurrogateError(f"{where}: {name} are NaN or infinite in sample rows {np.flatnonzero(bad).tolist()}")
    if y.min() < link.low or y.max() > link.high:
        raise SurrogateError(
            f"{where}: values in [{y.min():.4g}, {y.max():.4g}] lie outside the range "
            f"[{link.low:g}, {link.high:g}] of link {link_name!r}"
        )


def _start(X: np.ndarray, target: np.ndarray, link: _Link) -> np.ndarray:
    """Linear least squares on the link scale."""
    return np.linalg.lstsq(X, link.inverse(target), rcond=None)[0]


def _refine(X: np.ndarray, y: np.ndarray, link: _Link, p0: np.ndarray) -> np.ndarray:
    """Nonlinear least squares on the metric's own scale, started at p0."""
    # deferred: scipy.optimize (with scipy.stats, 0.5 s) only where a fit runs, not in the stages that predict
    from scipy.optimize import least_squares

    result = least_squares(
        lambda p: link.forward(X @ p) - y,
        p0,
        jac=lambda p: link.derivative(X @ p)[:, None] * X,
        method="trf",
    )
    return result.x


def _loo_rmse(X: np.ndarray, target: np.ndarray, y: np.ndarray, link: _Link, params: np.ndarray) -> float:
    """Leave-one-out RMSE, each refit started at the full fit; NaN when n-1 < P (undetermined)."""
    n, p = X.shape
    if n - 1 < p:
        return float("nan")
    keep = ~np.eye(n, dtype=bool)
    errors = [link.forward(X[i] @ _refine(X[keep[i]], target[keep[i]], link, params)) - y[i] for i in range(n)]
    return float(np.sqrt(np.mean(np.square(errors))))


def _bootstrap(
    X: np.ndarray, y: np.ndarray, link: _Link, params: np.ndarray, resamples: int
) -> tuple[np.ndarray, np.ndarray]:
    """The residual bootstrap (module docstring): refitted parameters [B, P] and scaled residuals [n].

    Both empty when there are no residual degrees of freedom (n <= P) or no resamples.
    """
    n, p = X.shape
    if n <= p or resamples < 1:
        return np.empty((0, p)), np.empty(0)
    fitted = link.forward(X @ params)
    residuals = (fitted - y) * np.sqrt(n / (n - p))
    rng = np.random.default_rng(INTERVAL_SEED)
    refits = np.empty((resamples, p))
    for b in range(resamples):
        target = np.clip(fitted - residuals[rng.integers(0, n, n)], link.low + EPS, link.high - EPS)
        refits[b] = _refine(X, target, link, params)
    return refits, residuals


def fit_surrogate(
    C: np.ndarray,
    y: np.ndarray,
    link: str,
    task: str = "",
    metric: str = "",
    loo: bool = True,
    bootstrap: int = 0,
    correct: bool = False,
) -> SurrogateFit:
    """Fit M(c) ~ link(quadratic(c)) to coefficients C [n, T] and metric values y [n].

    Values are clipped EPS inside the link's range (accuracy 1.0 -> 0.999 for sigmoid) so the fit
    stays finite; the start is linear least squares on the link scale, refined on the metric scale.
    r2 and rmse are plain squared-error statistics on the fitting data (r2 is NaN for constant y);
    loo_rmse is the leave-one-out RMSE (NaN when loo is False or n-1 < P). bootstrap: the residual
    bootstrap's refits for prediction intervals (`SurrogateFit.interval`; 0 = none, INTERVAL_BOOTSTRAP in
    surrogate.parquet). correct: add the local correction (module docstring); r2 and rmse are then the corrected
    fit's, and loo_rmse leaves each point out of the correction with the quadratic held fixed.
    With no more samples than parameters (n <= P: a design below P, before refinement rounds add merges) the fit
    passes through the samples (the start is least squares' minimum-norm solution); it has no bootstrap and no
    correction (no residuals to model), so its intervals are NaN.
    """
    where = _where(task, metric)
    spec = _link(link, task, metric)
    C = np.asarray(C, dtype=float)
    y = np.asarray(y, dtype=float)
    _check_data(C, y, spec, link, where)
    X = quadratic_features(C)
    correct = correct and len(y) > X.shape[1]
    target = np.clip(y, spec.low + EPS, spec.high - EPS)
    with threadpool_limits(limits=1, user_api="blas"):  # threads only slow down such small problems
        params = _refine(X, target, spec, _start(X, target, spec))
        loo_rmse = _loo_rmse(X, target, y, spec, params) if loo and not correct else float("nan")
        # a corrected fit's intervals are the correction's own (its Gaussian process's predictive variance)
        refits, residuals = _bootstrap(X, y, spec, params, 0 if correct else bootstrap)
    correction = None
    if correct:
        link_target = spec.inverse(target)
        correction = fit_correction(C, link_target - X @ params)
        assert correction.loo is not None
        if loo:
            loo_rmse = float(np.sqrt(np.mean((spec.forward(link_target - correction.loo) - y) ** 2)))
    r2, rmse = _fit_stats(spec.forward(X @ params + (correction(C) if correction is not None else 0.0)), y)
    return SurrogateFit(
        task=task,
        metric=metric,
        link=link,
        params=params,
        r2=r2,
        rmse=rmse,
        loo_rmse=loo_rmse,
        n_samples=len(y),
        refits=refits,
        residuals=residuals,
        correction=correction,
    )


def _fit_stats(fitted: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """r2 (NaN for constant y) and rmse of fitted values against y."""
    residual = fitted - y
    ss_res = float(residual @ residual)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return (1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")), float(np.sqrt(ss_res / len(y)))


def _coefficients(samples: pd.DataFrame, tasks: list[str]) -> np.ndarray:
    columns = [COEF_PREFIX + t for t in tasks]
    missing = [c for c in ["sample", *columns] if c not in samples.columns]
    if missing:
        raise SurrogateError(f"samples table lacks columns {missing}")
    bad = [t for t in tasks if "," in t]
    if bad:
        raise SurrogateError(f"task names may not contain ',': {bad}")
    duplicated = samples["sample"][samples["sample"].duplicated()].tolist()
    if duplicated:
        raise SurrogateError(f"samples table repeats sample ids {duplicated[:5]}")
    return samples[columns].to_numpy(dtype=float)


def _values(metrics: pd.DataFrame, sample_ids: pd.Series, task: str, metric: str) -> np.ndarray:
    """The metric values of one task aligned to `sample_ids` (NaN where missing), with named errors for repeats and inf."""
    rows = metrics[(metrics["task"] == task) & (metrics["metric"] == metric)]
    where = _where(task, metric)
    repeated = rows["sample"][rows["sample"].duplicated()].tolist()
    if repeated:
        raise SurrogateError(f"{where}: metrics table has several values for samples {repeated[:5]}")
    values = rows.set_index("sample")["value"].reindex(sample_ids).to_numpy(dtype=float)
    infinite = sample_ids[np.isinf(values)].tolist()
    if infinite:
        raise SurrogateError(f"{where}: value is infinite for samples {infinite[:5]}")
    return values


def _present(values: np.ndarray, sample_ids: pd.Series, where: str, missing: str) -> np.ndarray:
    """Mask of the samples to fit on: all of them, or (missing='drop') those with a value."""
    if missing not in MISSING:
        raise SurrogateError(f"surrogate.missing: must be one of {', '.join(MISSING)}, got {missing!r}")
    present = ~np.isnan(values)
    if not present.all() and missing == "error":
        raise SurrogateError(
            f"{where}: no value for samples {sample_ids[~present].tolist()[:5]} (failed or missing evaluations, "
            "see the error column of metrics.parquet); set surrogate.missing=drop to fit without them"
        )
    return present


def fit_table(
    samples: pd.DataFrame,
    metrics: pd.DataFrame,
    members: list[str],
    links: Mapping[str, str],
    loo: bool = True,
    missing: str = "error",
    tasks: list[str] | None = None,
    bootstrap: int = 0,
    correct: bool = False,
    examples: pd.DataFrame | None = None,
    scores: str = "required",
) -> pd.DataFrame:
    """Fit every (task, metric in `links`) and return one row per fit, sorted by task and metric.

    samples: columns 'sample' and 'c_<member>' (the coefficients); metrics: long table sample,
    task, metric, value. tasks: the evaluated tasks (default: the members, as in plain MAP). A metric of `links`
    that no row of `metrics` reports (accuracy of a causal LM) is not fitted.
    Rows of `metrics` for samples not in `samples` are ignored. A sample without a value (absent
    or NaN: a failed evaluation) raises unless missing='drop'; then each fit leaves out its own
    missing samples and records them (n_dropped, dropped: comma-joined sample ids). bootstrap: each
    fit's refits for prediction intervals (INTERVAL_COLUMNS: refits, residuals; empty lists with 0). correct:
    each fit with its local correction (CORRECTION_COLUMNS; empty lists and NaN without). examples: the samples'
    per-example rows, for accuracy fits from their class scores (surrogate.scores, module docstring; SCORE_COLUMNS,
    which only a table fitted with examples has): every task's with `required`, where all its samples have them with
    `auto`, none with `none`.
    """
    absent = [c for c in ("sample", "task", "metric", "value") if c not in metrics.columns]
    if absent:
        raise SurrogateError(f"metrics table lacks columns {absent}")
    reported = set(metrics["metric"])
    links = {metric: link for metric, link in links.items() if metric in reported}
    if not links:
        raise SurrogateError(
            f"metrics table holds none of the fitted metrics (surrogate.links); it has {sorted(reported)}"
        )
    C = _coefficients(samples, members)
    rows = []
    for task in members if tasks is None else tasks:
        for metric, link in links.items():
            y = _values(metrics, samples["sample"], task, metric)
            keep = _present(y, samples["sample"], _where(task, metric), missing)
            kept = samples["sample"][keep].tolist()
            model = _score_model(examples, kept, C[keep], y[keep], task, scores) if metric == "accuracy" else None
            if model is None:
                fit = fit_surrogate(
                    C[keep], y[keep], link, task=task, metric=metric, loo=loo, bootstrap=bootstrap, correct=correct
                )
            else:  # the quadratic only for the Bayesian rounds: no bootstrap, correction or LOO of its own
                quadratic = fit_surrogate(C[keep], y[keep], link, task=task, metric=metric, loo=False)
                fit = _with_scores(quadratic, model, C[keep], y[keep], loo)
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "link": link,
                    "n_samples": fit.n_samples,
                    "r2": fit.r2,
                    "rmse": fit.rmse,
                    "loo_rmse": fit.loo_rmse,
                    "params": fit.params.tolist(),
                    "tasks": ",".join(members),
                    "n_dropped": int((~keep).sum()),
                    "dropped": ",".join(samples["sample"][~keep]),
                    "refits": fit.refits.ravel().tolist(),
                    "residuals": fit.residuals.tolist(),
                    **_correction_row(fit.correction),
                    **(_score_row(fit.scores) if examples is not None else {}),
                }
            )
    scored = SCORE_COLUMNS if examples is not None else []
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS + INTERVAL_COLUMNS + CORRECTION_COLUMNS + scored)
    return table.sort_values(["task", "metric"], ignore_index=True)


def _score_model(
    examples: pd.DataFrame | None, samples: list[str], C: np.ndarray, y: np.ndarray, task: str, mode: str
) -> ScoreQuadratic | None:
    """The class scores' quadratics of a task's accuracy (surrogate.scores), or None: with mode `none` or no
    examples, and with `auto` where some sample has no scores (`required`: SurrogateError naming it)."""
    if examples is None or mode == "none":
        return None
    try:
        scores, targets = scores_of(examples, samples, task)
    except ValueError as exc:
        if mode == "auto":
            return None
        raise SurrogateError(str(exc)) from exc
    return fit_scores(C, scores, targets, y)


def _with_scores(fit: SurrogateFit, model: ScoreQuadratic, C: np.ndarray, y: np.ndarray, loo: bool) -> SurrogateFit:
    """The accuracy fit on (C, y) predicting by the class scores' quadratics; r2, rmse and loo_rmse theirs."""
    r2, rmse = _fit_stats(model.predict(C), y)
    held_out = np.sqrt(np.mean(model.residuals**2)) if loo and len(model.residuals) else float("nan")
    return replace(fit, r2=r2, rmse=rmse, loo_rmse=float(held_out), scores=model)


def _score_row(scores: ScoreQuadratic | None) -> dict[str, Any]:
    if scores is None:
        return {c: [] for c in SCORE_COLUMNS}
    return {
        "score_params": scores.params.ravel().tolist(),
        "score_targets": scores.targets.tolist(),
        "score_residuals": scores.residuals.tolist(),
    }


def _scores_from(row: Any, size: int) -> ScoreQuadratic | None:
    if not len(row.score_params):
        return None
    params = np.asarray(row.score_params, dtype=float).reshape(size, -1)  # size: the quadratic's P
    targets = np.asarray(row.score_targets, dtype=np.int64)
    return ScoreQuadratic(params, targets, np.asarray(row.score_residuals, dtype=float))


def _correction_row(correction: KernelCorrection | None) -> dict[str, Any]:
    if correction is None:
        return {**{c: [] for c in CORRECTION_COLUMNS[:3]}, "correction_length": np.nan, "correction_ridge": np.nan}
    return {
        "correction_centres": correction.centres.ravel().tolist(),
        "correction_alpha": correction.alpha.tolist(),
        "correction_scale": correction.scale.tolist(),
        "correction_length": correction.length,
        "correction_ridge": correction.ridge,
    }


def _correction_from(row: Any) -> KernelCorrection | None:
    if not len(row.correction_alpha):
        return None
    scale = np.asarray(row.correction_scale, dtype=float)
    centres = np.asarray(row.correction_centres, dtype=float).reshape(-1, len(scale))
    alpha = np.asarray(row.correction_alpha, dtype=float)
    return KernelCorrection(centres, alpha, scale, float(row.correction_length), float(row.correction_ridge))


def fits_from_table(table: pd.DataFrame) -> dict[tuple[str, str], SurrogateFit]:
    """Rebuild the fits of a `fit_table` table, keyed by (task, metric); without intervals where the table lacks
    INTERVAL_COLUMNS (written before them), without corrections where it lacks CORRECTION_COLUMNS, without class
    scores where it lacks SCORE_COLUMNS."""
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise SurrogateError(f"surrogate table lacks columns {missing}")
    intervals = all(c in table.columns for c in INTERVAL_COLUMNS)
    corrected = all(c in table.columns for c in CORRECTION_COLUMNS)
    scored = all(c in table.columns for c in SCORE_COLUMNS)
    fits: dict[tuple[str, str], SurrogateFit] = {}
    for row in table.itertuples(index=False):
        key = (str(row.task), str(row.metric))
        if key in fits:
            raise SurrogateError(f"{_where(*key)}: surrogate table has several rows")
        fits[key] = SurrogateFit(
            task=key[0],
            metric=key[1],
            link=str(row.link),
            params=np.asarray(row.params, dtype=float),
            r2=float(row.r2),
            rmse=float(row.rmse),
            loo_rmse=float(row.loo_rmse),
            n_samples=int(row.n_samples),
            tasks=tuple(str(row.tasks).split(",")),
            **(
                {"refits": np.asarray(row.refits, dtype=float), "residuals": np.asarray(row.residuals, dtype=float)}
                if intervals
                else {}
            ),
            correction=_correction_from(row) if corrected else None,
            scores=_scores_from(row, len(row.params)) if scored else None,
        )
    return fits


def objective_predictor(table: pd.DataFrame, metric: str, tasks: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """A function C -> F with one column per task: the surrogate's (a `fit_table` table's) prediction of `metric`."""
    fits = fits_from_table(table)
    missing = [t for t in tasks if (t, metric) not in fits]
    if missing:
        raise KeyError(f"surrogate has no fit of metric '{metric}' for task '{missing[0]}' (surrogate.links)")
    chosen = [fits[(t, metric)] for t in tasks]
    return lambda C: np.column_stack([f.predict(C) for f in chosen])


def prediction_columns(table: pd.DataFrame, C: np.ndarray, tasks: Sequence[str], level: float) -> pd.DataFrame:
    """Every fitted metric of a `fit_table` table predicted at coefficients C [n, T], with its `level` interval.

    One row per row of C; per metric (in sorted order) and task (in the order of `tasks`) the columns
    `<metric>_<task>`, `<metric>_<task>_lo` and `<metric>_<task>_hi` (NaN bounds where the table has no
    interval). SurrogateError when a metric is fitted for some of `tasks` only.
    """
    if not 0.0 < level < 1.0:
        raise SurrogateError(f"surrogate.interval: must be in (0, 1), got {level!r}")
    C = np.atleast_2d(np.asarray(C, dtype=float))
    fits = fits_from_table(table)
    columns: dict[str, np.ndarray] = {}
    for metric in sorted({m for _, m in fits}):
        missing = [t for t in tasks if (t, metric) not in fits]
        if missing:
            raise SurrogateError(f"surrogate has no fit of metric '{metric}' for task '{missing[0]}'")
        for task in tasks:
            fit = fits[(task, metric)]
            low, high = fit.interval(C, level)
            name = f"{metric}_{task}"
            columns[name], columns[f"{name}_lo"], columns[f"{name}_hi"] = fit.predict(C), low, high
    return pd.DataFrame(columns, index=pd.RangeIndex(len(C)))
