"""A classifier's accuracy predicted from its class scores: fit (s) of benchmarks/front_quality.py.

Every example's score for every class (a network's logit) is a quadratic in the coefficients c, fitted by least
squares on the evaluated merges; the predicted accuracy of a merge is the share of examples whose best predicted
class is the right one. The scores change smoothly with c where the accuracy (their argmax, averaged) jumps, so
this predicts a merge's accuracy better than a quadratic of the accuracy itself (docs/performance.md). It needs the
evaluators' per-example scores (MergeEngine(scores=True)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mapmerge.core.quadratic import quadratic_features

CHUNK = 1 << 22  # predicted scores held at once (merges x examples x classes)


@dataclass(frozen=True)
class ScoreQuadratic:
    """Per example and class, the quadratic's parameters of its score; the examples' right classes."""

    params: np.ndarray  # [P, n_examples * n_classes]
    targets: np.ndarray  # [n_examples], int

    def predict(self, C: np.ndarray) -> np.ndarray:
        """Predicted accuracy [m] of merges C [m, T]."""
        X = quadratic_features(np.atleast_2d(np.asarray(C, dtype=float)))
        n_examples = len(self.targets)
        step = max(1, CHUNK // self.params.shape[1])
        out = [
            (
                (X[i : i + step] @ self.params).reshape(len(X[i : i + step]), n_examples, -1).argmax(axis=2)
                == self.targets
            ).mean(axis=1)
            for i in range(0, len(X), step)
        ]
        return np.concatenate(out)


def fit_scores(C: np.ndarray, scores: np.ndarray, targets: np.ndarray) -> ScoreQuadratic:
    """Fit every example's class scores, scores [n, n_examples, n_classes] of the merges C [n, T], as quadratics in c
    (least squares; the minimum-norm solution below (T+1)(T+2)/2 merges); targets [n_examples]: the right classes."""
    C = np.atleast_2d(np.asarray(C, dtype=float))
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 3 or len(scores) != len(C):
        raise ValueError(f"scores: expected [{len(C)}, examples, classes], got shape {scores.shape}")
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != (scores.shape[1],):
        raise ValueError(f"targets: expected one per example ({scores.shape[1]}), got shape {targets.shape}")
    params = np.linalg.lstsq(quadratic_features(C), scores.reshape(len(C), -1), rcond=None)[0]
    return ScoreQuadratic(params, targets)
