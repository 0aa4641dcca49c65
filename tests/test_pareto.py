import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from mapmerge.core.pareto import (
    default_partitions,
    gd,
    grid_front,
    hypervolume,
    igd,
    non_dominated,
    surrogate_front,
)
from mapmerge.core.surrogate import fit_table
from mapmerge.io import read_table, write_table
from mapmerge.stages.pareto_front import run_pareto_front

FAST = {"pop_size": 40, "n_gen": 60}


def two_accuracies(C: np.ndarray) -> np.ndarray:
    """Maximise 1 - |c|^2 and 1 - |c - e1|^2: Pareto set c2 = 0, c1 in [0, 1]; g2 = 1 - (1 - sqrt(1 - g1))^2."""
    c1, c2 = C[:, 0], C[:, 1]
    return np.column_stack([1 - c1**2 - c2**2, 1 - (c1 - 1) ** 2 - c2**2])


def dominated_by_any(F: np.ndarray, maximize) -> np.ndarray:
    """Brute force: which rows of F are dominated by another row."""
    G = F * np.where(maximize, -1.0, 1.0)
    le = (G[None, :, :] <= G[:, None, :]).all(-1)
    lt = (G[None, :, :] < G[:, None, :]).any(-1)
    return (le & lt).any(axis=1)


def test_nsga3_matches_known_front():
    lower, upper = np.array([-0.5, -0.5]), np.array([1.5, 1.5])
    C, F = surrogate_front(two_accuracies, 2, lower, upper, [True, True], **FAST)
    assert C.shape[1] == 2 and F.shape == (len(C), 2) and len(C) >= 20
    np.testing.assert_allclose(F, two_accuracies(C))  # original scale, not negated
    assert np.all((C >= lower) & (C <= upper))
    assert not dominated_by_any(F, [True, True]).any()
    assert np.all(np.abs(C[:, 1]) < 0.05) and np.all((C[:, 0] > -0.05) & (C[:, 0] < 1.05))
    np.testing.assert_allclose(F[:, 1], 1 - (1 - np.sqrt(1 - F[:, 0])) ** 2, atol=0.01)
    assert np.all(np.diff(C[:, 0]) > 0)  # sorted by the first coefficient
    C_grid, F_grid = grid_front(two_accuracies, lower, upper, [True, True], resolution=201)
    assert not dominated_by_any(F_grid, [True, True]).any()
    assert igd(F, F_grid, [True, True]) < 0.03
    assert gd(F, F_grid, [True, True]) < 0.01


def test_nsga3_is_deterministic():
    args = (two_accuracies, 2, np.zeros(2), np.ones(2), [True, True])
    a, b = surrogate_front(*args, seed=3, **FAST), surrogate_front(*args, seed=3, **FAST)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def three_objectives(C: np.ndarray) -> np.ndarray:
    """Two accuracies (maximise) and one loss (minimise); the Pareto set is the simplex."""
    e = np.eye(3)
    return np.column_stack([1 - ((C - e[0]) ** 2).sum(1), 1 - ((C - e[1]) ** 2).sum(1), ((C - e[2]) ** 2).sum(1)])


def test_nsga3_three_tasks_mixed_directions():
    objectives, maximize = three_objectives, [True, True, False]
    C, F = surrogate_front(objectives, 3, np.zeros(3), np.ones(3), maximize, **FAST)
    assert C.shape[1] == 3 and len(C) >= 10
    np.testing.assert_allclose(F, objectives(C))
    assert not dominated_by_any(F, maximize).any()
    # moving c onto the plane sum(c) = 1 improves every objective by exactly (sum(c) - 1)^2 / 3
    gap = (C.sum(axis=1) - 1) ** 2 / 3
    assert np.median(gap) < 0.03  # about 0.15 for random points in the cube
    assert F[:, 0].max() > 0.8 and F[:, 1].max() > 0.8 and F[:, 2].min() < 0.2  # extremes are covered


def interfering(C: np.ndarray) -> np.ndarray:
    """Accuracies, each its own coefficient less half the sum of the others: task i is best at the corner e_i."""
    return C - 0.5 * (C.sum(axis=1, keepdims=True) - C)


def test_the_front_holds_the_box_corners_when_asked():
    C, F = surrogate_front(interfering, 8, np.zeros(8), np.ones(8), [True] * 8, corners=True, **FAST)
    for e in np.eye(8):
        assert (C == e).all(axis=1).sum() == 1, e  # every corner, once
    np.testing.assert_allclose(F, interfering(C))
    assert not dominated_by_any(F, [True] * 8).any()


def test_a_dominated_corner_stays_off_the_front():
    def both_grow(C: np.ndarray) -> np.ndarray:  # (1, 1) dominates every other point of the box
        return np.column_stack([C.sum(axis=1), C[:, 1]])

    C, F = surrogate_front(both_grow, 2, np.zeros(2), np.ones(2), [True, True], corners=True, **FAST)
    assert not ((C == [1, 0]).all(axis=1) | (C == [0, 1]).all(axis=1)).any()
    assert not dominated_by_any(F, [True, True]).any()


def test_stage_pareto_front_adds_the_corners(tmp_path):
    """The stage's front holds every one-task corner of the sampled box that no front point dominates (here each task's
    best, at e_i), though NSGA-III, cut short, reaches none exactly."""
    tasks = ["a", "b", "c"]
    C = np.vstack([np.eye(3), np.zeros((1, 3)), np.random.default_rng(0).uniform(0, 1, (26, 3))])
    samples = pd.DataFrame({"sample": [f"s{i:04d}" for i in range(len(C))]})
    for k, task in enumerate(tasks):
        samples[f"c_{task}"] = C[:, k]
    accuracy = expit(3 * interfering(C))
    metrics = pd.DataFrame(
        [(s, t, "accuracy", accuracy[i, k]) for i, s in enumerate(samples["sample"]) for k, t in enumerate(tasks)],
        columns=["sample", "task", "metric", "value"],
    )
    plan = pd.DataFrame({"level": [1], "group": ["all"], "members": [tasks], "member_tasks": [[[t] for t in tasks]]})
    plan["tasks"] = [tasks]
    files = {name: tmp_path / f"{name}.parquet" for name in ("samples", "surrogate", "plan", "front")}
    write_table(samples, files["samples"], "test")
    write_table(fit_table(samples, metrics, tasks, {"accuracy": "sigmoid"}, loo=False), files["surrogate"], "test")
    write_table(plan, files["plan"], "test")
    optimizer = {
        "objective": "accuracy",
        "pop_size": 12,
        "n_gen": 3,
        "ref_partitions": None,
        "grid_check_resolution": 11,
    }
    run_pareto_front({"optimizer": optimizer, "seed": 0, "interval": 0.9}, group="all", **files)
    front = read_table(files["front"])
    coef = front[[f"c_{t}" for t in tasks]].to_numpy()
    assert [int((coef == e).all(axis=1).sum()) for e in np.eye(3)] == [1, 1, 1]
    assert not dominated_by_any(front[[f"accuracy_{t}" for t in tasks]].to_numpy(), [True] * 3).any()


def test_grid_front_three_tasks():
    C, F = grid_front(three_objectives, np.zeros(3), np.ones(3), [True, True, False], resolution=11)
    total = C.sum(axis=1)
    assert np.isclose(total, 1).sum() == 66  # every simplex point of the 0.1 lattice
    assert np.all(np.abs(total - 1) < 0.1 + 1e-9)  # off-simplex survivors are one lattice step away
    assert not dominated_by_any(F, [True, True, False]).any()


def test_front_needs_two_objectives_and_valid_box():
    with pytest.raises(ValueError, match="at least 2 objectives"):
        surrogate_front(lambda C: C[:, :1], 2, np.zeros(2), np.ones(2), [True])
    with pytest.raises(ValueError, match="lower < upper"):
        surrogate_front(two_accuracies, 2, np.ones(2), np.zeros(2), [True, True])
    with pytest.raises(ValueError, match=r"shape \(40, 1\)"):
        surrogate_front(lambda C: C[:, :1], 2, np.zeros(2), np.ones(2), [True, True], **FAST)


def test_default_partitions():
    assert default_partitions(2, 200) == 199  # 200 directions
    assert default_partitions(4, 200) == 8  # C(11, 3) = 165 <= 200 < C(12, 3)
    assert default_partitions(8, 5) == 1


def test_grid_front_sorted_and_filtered():
    C, F = grid_front(two_accuracies, [0, 0], [1, 1], [True, True], resolution=11)
    np.testing.assert_allclose(C, np.column_stack([np.linspace(0, 1, 11), np.zeros(11)]), atol=1e-12)
    np.testing.assert_allclose(F, two_accuracies(C))
    with pytest.raises(ValueError, match="at most 3 coefficients"):
        grid_front(lambda C: C, np.zeros(4), np.ones(4), [True] * 4)


def test_non_dominated_keeps_ties():
    F = np.array([[1.0, 3.0], [2.0, 2.0], [2.0, 2.0], [1.0, 1.0], [3.0, 0.5]])
    np.testing.assert_array_equal(non_dominated(F, [True, True]), [0, 1, 2, 4])
    np.testing.assert_array_equal(non_dominated(F, [False, False]), [3, 4])


def test_igd_and_gd_by_hand():
    front = np.array([[0.0, 1.0], [1.0, 0.0]])
    reference = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    # nearest front point of each reference point: 0, sqrt(0.5), 0
    assert igd(front, reference, [False, False]) == pytest.approx(np.sqrt(0.5) / 3)
    assert igd(-front, -reference, [True, True]) == pytest.approx(np.sqrt(0.5) / 3)
    # front point (0, 2) is 1 from (0, 1); (1, 0) is on the reference
    assert gd(np.array([[0.0, 2.0], [1.0, 0.0]]), front, [False, False]) == pytest.approx(0.5)
    assert gd(np.array([[0.0, 2.0], [1.0, 0.0]]), front, [True, False]) == pytest.approx(0.5)


def test_hypervolume_by_hand():
    stairs = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    # maximise, reference (0, 0): columns of height 3, 2, 1
    assert hypervolume(stairs, [0, 0], [True, True]) == pytest.approx(6.0)
    assert hypervolume(np.vstack([stairs, [1.0, 1.0]]), [0, 0], [True, True]) == pytest.approx(6.0)
    # minimise, reference (4, 4): columns of height 1, 2, 3
    assert hypervolume(stairs, [4, 4], [False, False]) == pytest.approx(6.0)
    # maximise f1, minimise f2, reference (0, 4): (1, 1) gives 1 x 3, (2, 3) adds 1 x 1
    assert hypervolume(np.array([[1.0, 1.0], [2.0, 3.0]]), [0, 4], [True, False]) == pytest.approx(4.0)
