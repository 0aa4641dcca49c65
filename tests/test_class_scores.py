import numpy as np
import pandas as pd
import pytest

from mapmerge.core import class_scores
from mapmerge.core.class_scores import fit_scores, scores_of
from mapmerge.core.quadratic import n_params, quadratic_features


def scores_at(params, C):
    """The scores [m, examples, classes] at merges C [m, T] of quadratics with parameters [P, examples, classes]."""
    return np.einsum("mp,pec->mec", quadratic_features(C), params)


def accuracy(params, targets, C):
    return (scores_at(params, C).argmax(axis=2) == targets).mean(axis=1)


def exact_fit(seed, n):
    """(model, parameters, targets, rng): 40 examples' 5 class scores exactly quadratic in c (T = 3), fitted on n
    random merges."""
    rng = np.random.default_rng(seed)
    params = rng.normal(size=(n_params(3), 40, 5))
    targets = rng.integers(0, 5, size=40)
    C = rng.uniform(size=(n, 3))
    return fit_scores(C, scores_at(params, C), targets), params, targets, rng


def test_scores_quadratic_in_c_give_the_exact_accuracy_anywhere():
    model, params, targets, rng = exact_fit(0, 12)
    new = rng.uniform(size=(50, 3))
    truth = accuracy(params, targets, new)
    assert len(set(truth)) > 5  # the accuracy varies over the new merges
    np.testing.assert_array_equal(model.predict(new), truth)


def test_prediction_in_chunks_is_the_same(monkeypatch):
    model, _, _, rng = exact_fit(1, 10)
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


def noisy_scores(rng, C, n_examples=30, n_classes=4):
    """Scores quadratic in c plus noise, so that no fit is exact: [n, examples, classes], and targets."""
    params = rng.normal(size=(n_params(C.shape[1]), n_examples, n_classes))
    noise = 0.3 * rng.normal(size=(len(C), n_examples, n_classes))
    return scores_at(params, C) + noise, rng.integers(0, n_classes, n_examples)


def test_leave_one_out_residuals_are_those_of_refits_without_each_merge():
    rng = np.random.default_rng(2)
    C = rng.uniform(size=(14, 2))
    scores, targets = noisy_scores(rng, C)
    real = (scores.argmax(axis=2) == targets).mean(axis=1)
    model = fit_scores(C, scores, targets, real)
    held_out = [
        fit_scores(np.delete(C, i, axis=0), np.delete(scores, i, axis=0), targets).predict(C[i : i + 1])[0]
        for i in range(len(C))
    ]
    np.testing.assert_allclose(model.residuals, real - np.array(held_out))
    assert np.abs(model.residuals).max() > 0  # the noise moves some prediction


def test_the_interval_adds_the_residuals_range_and_holds_the_prediction():
    rng = np.random.default_rng(3)
    C = rng.uniform(size=(20, 2))
    scores, targets = noisy_scores(rng, C)
    model = fit_scores(C, scores, targets)
    new = rng.uniform(size=(9, 2))
    low, high = model.interval(new, 0.8)
    below, above = np.quantile(model.residuals, [0.1, 0.9])
    predicted = model.predict(new)
    np.testing.assert_allclose(low, np.minimum(np.clip(predicted + below, 0, 1), predicted))
    np.testing.assert_allclose(high, np.maximum(np.clip(predicted + above, 0, 1), predicted))
    wider = model.interval(new, 0.95)
    assert (wider[0] <= low).all() and (wider[1] >= high).all()


def test_no_interval_without_more_merges_than_parameters():
    rng = np.random.default_rng(4)
    C = rng.uniform(size=(6, 2))  # P = 6
    scores, targets = noisy_scores(rng, C)
    model = fit_scores(C, scores, targets)
    assert model.residuals.size == 0
    low, high = model.interval(C, 0.9)
    assert np.isnan(low).all() and np.isnan(high).all()


def test_scores_of_orders_by_sample_and_example_and_names_a_sample_without_scores():
    rows = pd.DataFrame(
        {
            "sample": ["b", "a", "b", "a"],
            "task": "t",
            "example": [1, 1, 0, 0],
            "scores": [[4.0, 0.0], [2.0, 0.0], [3.0, 0.0], [1.0, 0.0]],
            "target": [1, 1, 0, 0],
        }
    )
    scores, targets = scores_of(rows, ["b", "a"], "t")
    np.testing.assert_array_equal(scores[:, :, 0], [[3.0, 4.0], [1.0, 2.0]])
    np.testing.assert_array_equal(targets, [0, 1])
    with pytest.raises(ValueError, match="task 't', sample c: no class scores"):
        scores_of(rows, ["a", "c"], "t")
    with pytest.raises(ValueError, match="task 't': the evaluations hold no class scores"):
        scores_of(rows.drop(columns="scores"), ["a"], "t")
