"""A classifier's accuracy predicted from its class scores (surrogate.scores; fit (s) of benchmarks/front_quality.py).

Every example's score for every class (a network's logit) is a quadratic in the coefficients c, fitted by least
squares on the evaluated merges; the predicted accuracy of a merge is the share of examples whose best predicted
class is the right one. The scores change smoothly with c where the accuracy (their argmax, averaged) jumps, so
this predicts a merge's accuracy better than a quadratic of the accuracy itself (docs/performance.md). It needs the
evaluators' per-example scores (MergeEngine(scores="auto" or "required"): columns `scores` and `target`).

Prediction intervals are leave-one-out residuals added to the prediction (a jackknife): the real accuracy of each
evaluated merge minus the accuracy its scores' quadratics predict when fitted without it (closed form, e_i / (1 -
h_ii) per score), the interval the central `level` range of prediction + residual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mapmerge.core.quadratic import quadratic_features

CHUNK = 1 << 22  # predicted scores held at once (merges x examples x classes)


@dataclass(frozen=True, eq=False)
class ScoreQuadratic:
    """Per example and class, the quadratic's parameters of its score; the examples' right classes; the fit's
    leave-one-out residuals of the accuracy (empty with no more merges than parameters)."""

    params: np.ndarray  # [P, n_examples * n_classes]
    targets: np.ndarray  # [n_examples], int
    residuals: np.ndarray = field(default_factory=lambda: np.empty(0))  # [n]: real accuracy - held-out prediction

    def predict(self, C: np.ndarray) -> np.ndarray:
        """Predicted accuracy [m] of merges C [m, T]."""
        X = quadratic_features(np.atleast_2d(np.asarray(C, dtype=float)))
        step = max(1, CHUNK // self.params.shape[1])
        return np.concatenate([_accuracy(X[i : i + step] @ self.params, self.targets) for i in range(0, len(X), step)])

    def interval(self, C: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The `level` interval (low, high) of the real accuracy at merges C [m, T]: the prediction plus the
        residuals' central `level` range, clipped to [0, 1] and holding the prediction; NaN without residuals."""
        predicted = self.predict(C)
        if not len(self.residuals):
            nan = np.full(predicted.shape, np.nan)
            return nan, nan.copy()
        below, above = np.quantile(self.residuals, [0.5 - level / 2, 0.5 + level / 2])
        low = np.minimum(np.clip(predicted + below, 0.0, 1.0), predicted)
        return low, np.maximum(np.clip(predicted + above, 0.0, 1.0), predicted)


def _accuracy(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Share of examples whose best class is the target, per row of flat scores [m, examples * classes]."""
    return (scores.reshape(len(scores), len(targets), -1).argmax(axis=2) == targets).mean(axis=1)


def fit_scores(
    C: np.ndarray, scores: np.ndarray, targets: np.ndarray, accuracy: np.ndarray | None = None
) -> ScoreQuadratic:
    """Fit every example's class scores, scores [n, n_examples, n_classes] of the merges C [n, T], as quadratics in c
    (least squares; the minimum-norm solution below (T+1)(T+2)/2 merges); targets [n_examples]: the right classes.
    accuracy [n]: the merges' real accuracies, for the leave-one-out residuals (default: the scores' own)."""
    C = np.atleast_2d(np.asarray(C, dtype=float))
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 3 or len(scores) != len(C):
        raise ValueError(f"scores: expected [{len(C)}, examples, classes], got shape {scores.shape}")
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != (scores.shape[1],):
        raise ValueError(f"targets: expected one per example ({scores.shape[1]}), got shape {targets.shape}")
    X, Z = quadratic_features(C), scores.reshape(len(C), -1)
    params = np.linalg.lstsq(X, Z, rcond=None)[0]
    real = _accuracy(Z, targets) if accuracy is None else np.asarray(accuracy, dtype=float)
    return ScoreQuadratic(params, targets, _loo_residuals(X, Z, params, targets, real))


def _loo_residuals(
    X: np.ndarray, Z: np.ndarray, params: np.ndarray, targets: np.ndarray, real: np.ndarray
) -> np.ndarray:
    """real - the accuracy predicted at each merge by the fit (params, of Z on X) without it; empty where some merge
    holds the fit alone (leverage 1: no more merges than parameters, or a merge no other one pins down)."""
    n, p = X.shape
    if n <= p:
        return np.empty(0)
    leverage = np.einsum("ij,ji->i", X, np.linalg.pinv(X))
    if np.any(leverage > 1.0 - 1e-9):
        return np.empty(0)
    held_out = Z - (Z - X @ params) / (1.0 - leverage)[:, None]
    return real - _accuracy(held_out, targets)


def scores_of(examples: pd.DataFrame, samples: list[str], task: str) -> tuple[np.ndarray, np.ndarray]:
    """The class scores [n, examples, classes] of `samples` (in order) on `task`, and the examples' targets, from
    per-example rows (sample, task, example, scores, target) of an engine that kept scores. ValueError naming the
    sample when one has no scores (an evaluation without them, or a failed one)."""
    if "scores" not in examples:
        raise ValueError(f"task {task!r}: the evaluations hold no class scores (made without surrogate.scores)")
    rows = examples[examples["task"] == task].sort_values(["sample", "example"], kind="stable")
    per_sample = dict(tuple(rows.groupby("sample", sort=False)))
    stacked, targets = [], None
    for sample in samples:
        frame = per_sample.get(sample)
        if frame is None or frame["scores"].isna().any():
            raise ValueError(
                f"task {task!r}, sample {sample}: no class scores (a failed evaluation, or one made without surrogate.scores)"
            )
        stacked.append(np.stack(frame["scores"].to_numpy()))
        if targets is None:
            targets = frame["target"].to_numpy(dtype=np.int64)
    assert targets is not None
    return np.stack(stacked), targets
