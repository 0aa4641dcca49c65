import numpy as np
import pytest

from mapmerge.core.selection import PreferenceError, normalize_preference, select_point

TASKS = ["rot90", "invert", "digits04"]


def test_equal_weights_by_default():
    expected = {t: pytest.approx(1 / 3) for t in TASKS}
    assert normalize_preference(None, TASKS) == expected
    assert normalize_preference({}, TASKS) == expected


def test_weights_normalised_in_task_order():
    weights = normalize_preference({"digits04": 1, "rot90": 3}, TASKS)
    assert list(weights) == TASKS
    assert weights == {"rot90": 0.75, "invert": 0.0, "digits04": 0.25}
    assert sum(
        normalize_preference({"rot90": np.float32(0.2), "invert": np.int64(1)}, TASKS).values()
    ) == pytest.approx(1)


def test_unknown_task():
    with pytest.raises(PreferenceError, match="^preference names unknown task 'x'; known: rot90, invert, digits04$"):
        normalize_preference({"x": 1.0}, TASKS)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.5", None, True])
def test_bad_weight_names_task(value):
    with pytest.raises(PreferenceError, match="preference weight for task 'invert' must be a finite number >= 0"):
        normalize_preference({"rot90": 1.0, "invert": value}, TASKS)


def test_all_zero():
    with pytest.raises(PreferenceError, match="all zero"):
        normalize_preference({"rot90": 0, "invert": 0.0}, TASKS)


# A concave (non-convex) accuracy front: the middle point lies below the chord of the extremes.
CONCAVE = np.array([[1.0, 0.0], [0.5, 0.45], [0.0, 1.0]])


def test_weighted_sum_picks_extreme_tchebycheff_the_middle():
    # weighted sum: 0.5, 0.475, 0.5 -> tie between the extremes, lowest index wins
    assert select_point(CONCAVE, [0.5, 0.5], [True, True], "weighted_sum") == 0
    # Tchebycheff regrets w (1 - u): (0, .5), (.25, .275), (.5, 0) -> max .5, .275, .5
    assert select_point(CONCAVE, [0.5, 0.5], [True, True], "tchebycheff") == 1


def test_weights_move_the_choice():
    assert select_point(CONCAVE, [0.4, 0.6], [True, True]) == 2
    # regrets: (0, .6), (.2, .33), (.4, 0) -> max .6, .33, .4
    assert select_point(CONCAVE, [0.4, 0.6], [True, True], "tchebycheff") == 1
    # regrets: (0, .9), (.05, .495), (.1, 0) -> max .9, .495, .1
    assert select_point(CONCAVE, [0.1, 0.9], [True, True], "tchebycheff") == 2


def test_minimised_objectives():
    losses = np.array([[0.1, 2.0], [1.0, 1.0], [2.0, 0.2]])
    # weighted sum of -loss: -1.05, -1.0, -1.1
    assert select_point(losses, [0.5, 0.5], [False, False]) == 1
    assert select_point(losses, [1.0, 0.0], [False, False], "tchebycheff") == 0
    assert select_point(losses, [0.0, 1.0], [False, False], "tchebycheff") == 2


def test_tchebycheff_augmentation_breaks_max_ties():
    # regrets under (0.5, 0.5): (.5, .5), (.5, 0), (0, .5): all have max .5
    F = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert select_point(F, [0.5, 0.5], [True, True], "tchebycheff", rho=0.0) == 0  # plain tie: lowest index
    assert select_point(F, [0.5, 0.5], [True, True], "tchebycheff", rho=0.05) == 1  # smaller sum, then index


def test_constant_objective_is_neutral():
    F = np.array([[0.9, 0.1], [0.9, 0.7], [0.9, 0.4]])
    assert select_point(F, [0.5, 0.5], [True, True], "tchebycheff") == 1


def test_select_point_errors():
    with pytest.raises(ValueError, match="unknown selection method 'lexicographic'; known: weighted_sum, tchebycheff"):
        select_point(CONCAVE, [0.5, 0.5], [True, True], "lexicographic")
    with pytest.raises(ValueError, match="3 weights"):
        select_point(CONCAVE, [0.2, 0.3, 0.5], [True, True])
    with pytest.raises(ValueError, match="NaN"):
        select_point(np.array([[np.nan, 1.0]]), [0.5, 0.5], [True, True])
    with pytest.raises(ValueError, match="m>0"):
        select_point(np.zeros((0, 2)), [0.5, 0.5], [True, True])
