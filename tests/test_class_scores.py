import numpy as np
import pytest

from mapmerge.core import class_scores
from mapmerge.core.class_scores import fit_scores
from mapmerge.core.quadratic import n_params, quadratic_features


def quadratic_scores(rng, n_tasks=3, n_examples=40, n_classes=5):
    """Scores that are exactly quadratic in c: parameters [P, examples, classes]."""
    return rng.normal(size=(n_params(n_tasks), n_examples, n_classes))


def accuracy(params, targets, C):
    scores = np.einsum("mp,pec->mec", quadratic_features(C), params)
    return (scores.argmax(axis=2) == targets).mean(axis=1)


def test_scores_quadratic_in_c_give_the_exact_accuracy_anywhere():
    rng = np.random.default_rng(0)
    params = quadratic_scores(rng)
    targets = rng.integers(0, 5, size=40)
    C = rng.uniform(size=(12, 3))
    model = fit_scores(C, np.einsum("mp,pec->mec", quadratic_features(C), params), targets)
    new = rng.uniform(size=(50, 3))
    truth = accuracy(params, targets, new)
    assert len(set(truth)) > 5  # the accuracy varies over the new merges
    np.testing.assert_array_equal(model.predict(new), truth)


def test_prediction_in_chunks_is_the_same(monkeypatch):
    rng = np.random.default_rng(1)
    params = quadratic_scores(rng)
    targets = rng.integers(0, 5, size=40)
    C = rng.uniform(size=(10, 3))
    model = fit_scores(C, np.einsum("mp,pec->mec", quadratic_features(C), params), targets)
    new = rng.uniform(size=(33, 3))
    whole = model.predict(new)
    monkeypatch.setattr(class_scores, "CHUNK", 7 * 40 * 5)  # 7 merges per chunk: 5 chunks, the last of 5
    np.testing.assert_array_equal(model.predict(new), whole)


def test_shapes_are_checked():
    C = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"scores: expected \[4, examples, classes\], got shape \(4, 3\)"):
        fit_scores(C, np.zeros((4, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"targets: expected one per example \(3\), got shape \(2,\)"):
        fit_scores(C, np.zeros((4, 3, 2)), np.zeros(2))
