"""Win rate (the MAP paper's metric): preference vectors, the pick per vector, wins on hand-computed cases, and the
win-rate rows of validation (mapmerge.core.groundtruth.WinRate, validation_table, stage validate)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mapmerge.core import groundtruth
from mapmerge.core.metrics import metrics_from_examples, wide_metrics
from mapmerge.core.pareto import (
    preference_vectors,
    preference_wins,
    simplex_lattice,
    weighted_picks,
    win_rate,
)
from mapmerge.core.selection import select_point
from mapmerge.io import read_table, write_table
from mapmerge.stages.validate import run_validate

# preference vectors and picks


def test_simplex_lattice_by_hand():
    assert simplex_lattice(2, 2).tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    assert simplex_lattice(3, 2).tolist() == [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.5, 0.0, 0.5],
        [0.0, 1.0, 0.0],
        [0.0, 0.5, 0.5],
        [0.0, 0.0, 1.0],
    ]
    with pytest.raises(ValueError, match="partitions >= 1"):
        simplex_lattice(2, 0)


@pytest.mark.parametrize("n_obj, at_most, size", [(2, 100, 100), (3, 100, 91), (4, 100, 84), (4, 21, 20), (2, 1, 2)])
def test_the_lattice_has_as_many_vectors_as_fit(n_obj, at_most, size):
    W = preference_vectors(n_obj, at_most)
    assert W.shape == (size, n_obj) and np.allclose(W.sum(axis=1), 1) and (W >= 0).all()
    assert len(np.unique(W, axis=0)) == size


def test_dirichlet_vectors_are_seeded():
    W = preference_vectors(3, 50, "dirichlet", seed=4)
    assert W.shape == (50, 3) and np.allclose(W.sum(axis=1), 1)
    np.testing.assert_array_equal(W, preference_vectors(3, 50, "dirichlet", seed=4))
    assert not np.allclose(W, preference_vectors(3, 50, "dirichlet", seed=5))
    with pytest.raises(ValueError, match="unknown kind"):
        preference_vectors(3, 5, "sobol")


def test_picks_are_the_selection_rule_for_every_vector():
    rng = np.random.default_rng(0)
    F = rng.random((30, 3))
    W = preference_vectors(3, 30)
    for maximize in ([True] * 3, [False] * 3):
        expected = [select_point(F, w, maximize) for w in W]
        assert weighted_picks(F, W, maximize).tolist() == expected
    assert weighted_picks(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([[0.3, 0.7]]), [True, True]).tolist() == [0]


# wins, by hand

W3 = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
CANDIDATES = np.array([[0.8, 0.2], [0.3, 0.9], [0.6, 0.6]])


def test_a_win_is_a_pick_at_least_as_good_as_the_best_candidate():
    # w = (1, 0): best candidate 0.8, pick 0.8 (a tie wins); w = (0, 1): best 0.9, pick 0.85 loses;
    # w = (1/2, 1/2): best candidate 0.6 ((0.3 + 0.9) / 2 and (0.6 + 0.6) / 2), pick (0.7 + 0.55) / 2 = 0.625 wins
    picked = np.array([[0.8, 0.1], [0.2, 0.85], [0.7, 0.55]])
    assert preference_wins(W3, picked, CANDIDATES, [True, True]).tolist() == [True, False, True]
    assert win_rate(W3, picked, CANDIDATES, [True, True]) == pytest.approx(2 / 3)


def test_minimised_objectives_are_negated():
    # losses: w = (1, 0): best candidate 0.3, pick 0.3 ties; w = (0, 1): best 0.2, pick 0.25 loses;
    # w = (1/2, 1/2): best candidate (0.8 + 0.2) / 2 = 0.5, pick (0.4 + 0.5) / 2 = 0.45 wins
    picked = np.array([[0.3, 0.9], [0.1, 0.25], [0.4, 0.5]])
    assert preference_wins(W3, picked, CANDIDATES, [False, False]).tolist() == [True, False, True]
    # maximise the first, minimise the second: the candidates score 0.8, 0.3, 0.6 for w = (1, 0), -0.2, -0.9, -0.6
    # for w = (0, 1), 0.3, -0.3, 0 for w = (1/2, 1/2); the picks 0.8 (a tie), -0.2 (a tie), 0.3 - 0.025 (loses)
    mixed = np.array([[0.8, 0.0], [0.0, 0.2], [0.6, 0.05]])
    assert preference_wins(W3, mixed, CANDIDATES, [True, False]).tolist() == [True, True, False]


def test_several_searches_average_and_nan_rows_are_left_out():
    picked = np.array([[0.8, 0.1], [0.2, 0.85], [0.7, 0.55]])
    easy = np.array([[0.1, 0.1], [np.nan, 0.99], [0.2, 0.2]])  # the NaN row cannot beat the pick for w = (0, 1)
    both = np.stack([CANDIDATES, easy])
    assert preference_wins(W3, picked, both, [True, True]).tolist() == [[True, False, True], [True, True, True]]
    assert win_rate(W3, picked, both, [True, True]) == pytest.approx(5 / 6)
    failed = picked.copy()
    failed[2, 0] = np.nan  # a pick without a value never wins
    assert preference_wins(W3, failed, easy, [True, True]).tolist() == [True, True, False]
    assert win_rate(W3, picked, np.zeros((0, 2)), [True, True]) == 1.0  # no candidate: nothing to beat
    with pytest.raises(ValueError, match="need"):
        win_rate(W3, picked[:2], CANDIDATES, [True, True])


# validation's win rates


def test_grid_subset_is_a_regular_sub_grid():
    assert groundtruth.grid_subset(25, 2, 10).tolist() == [0, 2, 4, 10, 12, 14, 20, 22, 24]  # 3 of 5 per axis
    assert groundtruth.grid_subset(25, 2, 100).tolist() == list(range(25))  # at most the whole grid
    assert groundtruth.grid_subset(27, 3, 8).tolist() == [0, 2, 6, 8, 18, 20, 24, 26]  # the corners
    assert groundtruth.grid_subset(9, 2, 3).tolist() == [0]  # budget < 2^T: one point
    # the indices are grid_points' rows: the sub-grid's coefficients are the axis' evenly spread values
    points = groundtruth.grid_points(["a", "b"], 0.0, 1.0, 5).iloc[groundtruth.grid_subset(25, 2, 10)]
    assert sorted(set(points["c_a"])) == sorted(set(points["c_b"])) == [0.0, 0.5, 1.0]


def two_point_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tasks. The K = 2 front points: f00 predicted best on task a, measured (0.9, 0.1); f01 on task b, measured
    (0.1, 0.9). A 3 x 3 grid measuring (0.5, 0.5) everywhere but its centre g000004, (0.7, 0.7).

    For w = (x, 1 - x) the pick is f00 when x >= 1/2 (ties: the lower index), scoring 0.1 + 0.8 x, else f01, scoring
    0.9 - 0.8 x. Against the whole grid (best 0.7) it wins for x >= 0.75 and x <= 0.25: 50 of the lattice's 100
    vectors (x = i / 99). Against the corners (best 0.5) it always wins."""
    measured = {f"g{i:06d}": (0.5, 0.5) for i in range(9)} | {
        "g000004": (0.7, 0.7),
        "f00": (0.9, 0.1),
        "f01": (0.1, 0.9),
    }
    rows = [
        (sample, task, e, float(e < round(10 * value[j])), 1.0)
        for sample, value in measured.items()
        for j, task in enumerate(["a", "b"])
        for e in range(10)
    ]
    examples = pd.DataFrame(rows, columns=["sample", "task", "example", "correct", "loss"])
    points = pd.DataFrame(
        {
            "sample": ["f00", "f01"],
            "c_a": [1.0, 0.0],
            "c_b": [0.0, 1.0],
            "accuracy_a": [1.0, 0.0],
            "accuracy_b": [0, 1.0],
        }
    )
    return examples, points


def test_win_rates_against_the_grid_and_its_random_subsets():
    examples, points = two_point_case()
    wide = wide_metrics(metrics_from_examples(examples), "sample")
    grid_samples = [f"g{i:06d}" for i in range(9)]
    whole = groundtruth.WinRate(points, grid_samples, "accuracy", True, budget=9, seed=0)
    assert len(whole.W) == 100 and whole.sizes == {"win_rate_grid": 9, "win_rate_random": 9}
    assert whole(wide)[("win_rate_grid", "real", "accuracy")] == pytest.approx(0.5)
    assert whole(wide)[("win_rate_random", "real", "accuracy")] == pytest.approx(0.5)  # every subset: the grid
    corners = groundtruth.WinRate(points, grid_samples, "accuracy", True, budget=4, seed=0)
    assert corners.regular == ["g000000", "g000002", "g000006", "g000008"]
    values = corners(wide)
    assert values[("win_rate_grid", "real", "accuracy")] == 1.0
    # a random subset of 4 of the 9 points holds the centre or not: a rate of 0.5 or 1
    with_centre = np.mean([4 in subset for subset in corners.subsets])
    assert 0 < with_centre < 1 and corners.subsets.shape == (groundtruth.WIN_SUBSETS, 4)
    assert values[("win_rate_random", "real", "accuracy")] == pytest.approx(1 - 0.5 * with_centre)
    again = groundtruth.WinRate(points, grid_samples, "accuracy", True, budget=4, seed=0)
    np.testing.assert_array_equal(again.subsets, corners.subsets)  # seeded


def test_validation_table_has_win_rate_rows_only_with_a_budget():
    examples, points = two_point_case()
    table, _ = groundtruth.validation_table(examples, points, "accuracy", True, 20, 0.9, seed=1, budget=4)
    rows = table.set_index(["indicator", "front"])
    assert rows.loc[("win_rate_grid", "real"), "value"] == 1.0
    assert rows.loc[("win_rate_grid", "real"), ["n_points", "n_reference"]].tolist() == [2, 4]
    assert rows.loc[("win_rate_random", "real"), "n_reference"] == 4
    win = table[table["indicator"].str.startswith("win_rate")]
    assert ((win["ci_low"] <= win["value"] + 1e-12) & (win["value"] <= win["ci_high"] + 1e-12)).all()
    assert ((win[["value", "ci_low", "ci_high"]] >= 0) & (win[["value", "ci_low", "ci_high"]] <= 1)).all().all()
    without, _ = groundtruth.validation_table(examples, points, "accuracy", True, 20, 0.9, seed=1)
    assert not without["indicator"].str.startswith("win_rate").any()
    common = table[~table["indicator"].str.startswith("win_rate")].reset_index(drop=True)
    pd.testing.assert_frame_equal(common, without)  # the other indicators and their intervals are unchanged


def test_stage_validate_writes_win_rates_with_the_groups_sample_count(tmp_path):
    examples, points = two_point_case()
    group = tmp_path / "groups" / "all"
    front = write_table(points.drop(columns="sample"), group / "front.parquet", "pareto_front")
    write_table(pd.DataFrame({"sample": [f"s{i}" for i in range(4)]}), group / "samples.parquet", "collect_metrics")
    grid = write_table(examples[examples["sample"].str.startswith("g")], tmp_path / "b0000.parquet", "evaluate")
    evals = write_table(examples[examples["sample"].str.startswith("f")], tmp_path / "front_evals.parquet", "x")
    reference = pd.DataFrame([(t, t, "accuracy", 0.95) for t in "ab"], columns=["model", "task", "metric", "value"])
    params = {"objective": "accuracy", "bootstrap": 5, "ci_level": 0.9, "seed": 0}
    run_validate(
        params,
        front=front,
        points=write_table(points, tmp_path / "points.parquet", "validate_front"),
        front_evals=evals,
        grid=[grid],
        baselines={},
        reference=write_table(reference, tmp_path / "reference.parquet", "x"),
        table=tmp_path / "validation.parquet",
        plot=tmp_path / "validation.png",
    )
    table = read_table(tmp_path / "validation.parquet").set_index(["indicator", "front"])
    assert table.loc[("win_rate_grid", "real"), "value"] == 1.0  # 4 samples: the grid's corners
    assert table.loc[("win_rate_random", "real"), "n_reference"] == 4
