"""Validation against ground truth: indicators on hand-computed cases, the bootstrap, config, and a real workflow run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import artifacts, copy_run, job_counts, run, snakemake_command
from mapmerge.core import groundtruth
from mapmerge.core.metrics import metrics_from_examples, wide_metrics
from mapmerge.core.surrogate import prediction_columns
from mapmerge.io import read_table, table_metadata, write_table
from mapmerge.outputs.validation_plot import plot_validation
from mapmerge.run import evaluation_cache, validation_config
from mapmerge.run.config import ConfigError, load_config, stage_config
from mapmerge.stages.validate import run_validate
from mapmerge.tools.cli import main
from test_workflow import BASE, TASKS, finished_run

SQRT_HALF = math.sqrt(0.5)


# indicators, by hand


def test_igd_and_gd_against_the_grids_non_dominated_points():
    # accuracy (maximised): (0.2, 0.2) is dominated by (0.5, 0.5); the true front is the other three
    grid = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.2]])
    one_end = groundtruth.front_indicators(grid, {"real": np.array([[1.0, 0.0]])}, np.zeros(2), maximize=True)
    assert one_end[("igd", "real")] == pytest.approx((0 + math.sqrt(2) + SQRT_HALF) / 3)
    assert one_end[("gd", "real")] == pytest.approx(0.0)
    # IGD+ counts only what the front falls short by: 0 for (1, 0), 1 for (0, 1), 0.5 for (0.5, 0.5)
    assert one_end[("igd_plus", "real")] == pytest.approx((0 + 1 + 0.5) / 3)
    off = groundtruth.front_indicators(grid, {"real": np.array([[0.5, 0.4]])}, np.zeros(2), maximize=True)
    assert off[("gd", "real")] == pytest.approx(0.1)  # nearest true-front point: (0.5, 0.5)
    assert off[("igd", "real")] == pytest.approx((math.hypot(0.5, 0.4) + math.hypot(0.5, 0.6) + 0.1) / 3)
    assert off[("igd_plus", "real")] == pytest.approx((0.5 + 0.6 + 0.1) / 3)
    # a front that dominates every true-front point scores IGD+ 0, though IGD is positive
    above = groundtruth.front_indicators(grid, {"real": np.array([[1.0, 1.0]])}, np.zeros(2), maximize=True)
    assert above[("igd_plus", "real")] == 0.0 and above[("igd", "real")] > 0.5
    # read as losses (minimised) (0.2, 0.2) dominates (0.5, 0.5) instead
    as_loss = groundtruth.front_indicators(grid, {"real": np.array([[1.0, 0.0]])}, np.ones(2), maximize=False)
    assert as_loss[("igd", "real")] == pytest.approx((0 + math.sqrt(2) + math.hypot(0.8, 0.2)) / 3)
    # losses: (1, 0) is worse than (0, 1) by 1 in the first, than (0.2, 0.2) by 0.8 in the first
    assert as_loss[("igd_plus", "real")] == pytest.approx((0 + 1 + 0.8) / 3)


def test_hypervolume_takes_the_sign_of_the_metric():
    accuracy = np.array([[0.8, 0.2], [0.2, 0.8]])
    grid = np.vstack([accuracy, [[0.0, 0.0]]])
    reference = groundtruth.hv_reference(grid, maximize=True)
    assert reference.tolist() == [0.0, 0.0]  # the grid's worst accuracy per task
    values = groundtruth.front_indicators(grid, {"real": accuracy[:1]}, reference, maximize=True)
    assert values[("hv", "grid")] == pytest.approx(0.8 * 0.2 + 0.2 * 0.8 - 0.2 * 0.2)  # two boxes less their overlap
    assert values[("hv", "real")] == pytest.approx(0.8 * 0.2)
    loss = 1 - grid  # the same points as losses: minimised, the reference is the worst (largest) loss
    reference = groundtruth.hv_reference(loss, maximize=False)
    assert reference.tolist() == [1.0, 1.0]
    values = groundtruth.front_indicators(loss, {"real": loss[:1]}, reference, maximize=False)
    assert values[("hv", "grid")] == pytest.approx(0.28) and values[("hv", "real")] == pytest.approx(0.16)
    # a point worse than the reference point dominates nothing
    assert groundtruth.front_indicators(grid, {"real": np.array([[0.5, -0.1]])}, np.zeros(2), True)[("hv", "real")] == 0


def test_prediction_error_is_mean_and_max_over_points_and_tasks():
    points = pd.DataFrame(
        {"accuracy_a": [0.5, 0.7], "accuracy_b": [0.2, 0.2], "loss_a": [1.0, 1.0], "loss_b": [2.0, 2.0]}
    )
    measured = pd.DataFrame(
        {"accuracy_a": [0.6, 0.4], "accuracy_b": [0.2, 0.25], "loss_a": [1.5, 1.0], "loss_b": [2.0, 2.0]}
    )
    errors = groundtruth.prediction_errors(points, measured, ["accuracy", "loss"])
    assert errors[("pred_mae", "accuracy")] == pytest.approx((0.1 + 0.3 + 0 + 0.05) / 4)
    assert errors[("pred_max", "accuracy")] == pytest.approx(0.3)
    assert errors[("pred_mae", "loss")] == pytest.approx(0.5 / 4) and errors[("pred_max", "loss")] == pytest.approx(0.5)


def test_front_points_are_spread_along_the_front():
    t = np.linspace(0, 1, 21)
    front = pd.DataFrame(
        {"c_a": t, "c_b": 1 - t, "accuracy_a": t, "accuracy_b": 1 - t**2, "loss_a": 1 - t, "loss_b": t}
    )
    points = groundtruth.front_sample(front, "accuracy", 3)
    assert points["sample"].tolist() == ["f00", "f01", "f02"]
    assert points["front_row"].tolist()[0] == 0 and points["front_row"].tolist()[-1] == 20  # both ends, then between
    assert 5 <= points["front_row"].iloc[1] <= 15
    assert (
        points[["c_a", "accuracy_b"]].to_numpy().tolist()
        == front.iloc[points["front_row"]][["c_a", "accuracy_b"]].to_numpy().tolist()
    )
    assert len(groundtruth.front_sample(front.iloc[:2], "accuracy", 3)) == 2  # a short front: all of it


def test_grid_points_cover_the_box():
    grid = groundtruth.grid_points(["a", "b"], 0.0, 1.0, 3)
    assert len(grid) == 9 and grid["sample"].iloc[0] == "g000000"
    assert sorted(set(grid["c_a"])) == [0.0, 0.5, 1.0]
    assert {(0.0, 0.0), (1.0, 1.0), (0.0, 1.0)} <= set(zip(grid["c_a"], grid["c_b"]))


# bootstrap


def synthetic_examples(n_grid: int = 9, n_front: int = 3, n_examples: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-example rows of grid and front points on two tasks, and the front points' predictions."""
    rng = np.random.default_rng(1)
    c = np.linspace(0, 1, n_grid)
    models = {
        **{f"g{i:06d}": (c[i], 1 - c[i] ** 2) for i in range(n_grid)},
        **{f"f{i:02d}": (c[2 * i + 1], 1 - c[2 * i + 1] ** 2 - 0.05) for i in range(n_front)},
    }
    rows = [
        (s, task, e, float(rng.random() < p[k]), float(rng.random()))
        for s, p in models.items()
        for k, task in enumerate(["a", "b"])
        for e in range(n_examples)
    ]
    examples = pd.DataFrame(rows, columns=["sample", "task", "example", "correct", "loss"])
    points = pd.DataFrame(
        {
            "sample": [f"f{i:02d}" for i in range(n_front)],
            "accuracy_a": [models[f"f{i:02d}"][0] for i in range(n_front)],
            "accuracy_b": [models[f"f{i:02d}"][1] for i in range(n_front)],
        }
    )
    return examples, points


def test_resampled_metrics_are_the_metrics_of_the_examples_drawn():
    examples, _ = synthetic_examples()
    failed = (examples["sample"] == "g000003") & (examples["task"] == "b")  # a failed evaluation: one row, NaN metrics
    examples.loc[failed, ["correct", "loss"]] = np.nan
    examples = examples.drop(examples[failed].index[1:])
    examples["error"] = np.where(examples["correct"].isna(), "evaluator raised", None)
    matrices = groundtruth.ExampleMatrices(examples)
    counts = matrices.draw(np.random.default_rng(0))
    assert all(c.sum() == 40 and (c == 0).any() and (c > 1).any() for c in counts.values())  # with replacement
    assert not np.array_equal(counts["a"], counts["b"])  # one draw per task...
    # ...shared by every model: the metrics of the drawn rows, repeated as often as drawn, recomputed from scratch
    weight = np.array([counts[t][e] for t, e in zip(examples["task"], examples["example"])])
    weight[examples["error"].notna().to_numpy()] = 1
    drawn = examples.iloc[np.repeat(np.arange(len(examples)), weight)]
    expected = wide_metrics(metrics_from_examples(drawn), "sample")
    got = matrices.metrics(counts)
    pd.testing.assert_frame_equal(got[sorted(expected.columns)], expected[sorted(expected.columns)], check_names=False)
    assert np.isnan(got.loc["g000003", "accuracy_b"]) and np.isfinite(got.loc["g000003", "accuracy_a"])
    again = groundtruth.ExampleMatrices(examples)
    np.testing.assert_array_equal(again.draw(np.random.default_rng(0))["a"], counts["a"])


def test_bootstrap_intervals_are_reproducible_with_the_seed():
    examples, points = synthetic_examples()
    table, reference = groundtruth.validation_table(
        examples, points, "accuracy", True, bootstrap=10, ci_level=0.9, seed=3
    )
    same, _ = groundtruth.validation_table(examples, points, "accuracy", True, bootstrap=10, ci_level=0.9, seed=3)
    other, _ = groundtruth.validation_table(examples, points, "accuracy", True, bootstrap=10, ci_level=0.9, seed=4)
    none, _ = groundtruth.validation_table(examples, points, "accuracy", True, bootstrap=0, ci_level=0.9, seed=3)
    pd.testing.assert_frame_equal(table, same)
    assert not np.allclose(table["ci_low"], other["ci_low"])
    np.testing.assert_array_equal(table["value"], none["value"])  # the point estimate does not depend on the resamples
    assert none["ci_low"].isna().all() and (table["ci_low"] <= table["ci_high"]).all()
    assert list(table.columns) == groundtruth.COLUMNS
    assert set(zip(table["indicator"], table["front"])) == {
        ("hv", "grid"),
        *((i, f) for i in ("igd", "igd_plus", "gd", "hv") for f in ("predicted", "real")),
        ("pred_mae", "predicted"),
        ("pred_max", "predicted"),
    }
    grid = metrics_from_examples(examples[examples["sample"].str.startswith("g")])
    worst = grid[grid["metric"] == "accuracy"].groupby("task")["value"].min()
    assert reference.tolist() == worst.loc[["a", "b"]].tolist()


def test_prediction_errors_resample_the_points_so_their_interval_holds_the_error_measured():
    examples, points = synthetic_examples(n_front=4)
    measured = wide_metrics(metrics_from_examples(examples), "sample").loc[points["sample"]]
    exact = points.assign(accuracy_a=measured["accuracy_a"].to_numpy(), accuracy_b=measured["accuracy_b"].to_numpy())
    off = exact.assign(accuracy_a=exact["accuracy_a"] + [0.0, 0.0, 0.1, 0.3])  # two points off, on one task
    tables = {
        name: groundtruth.validation_table(examples, pts, "accuracy", True, bootstrap=200, ci_level=0.9, seed=0)[0]
        for name, pts in [("exact", exact), ("off", off), ("before", points)]
    }
    errors = {
        name: t.set_index("indicator").loc["pred_mae", ["value", "ci_low", "ci_high"]] for name, t in tables.items()
    }
    # predictions that equal the measurements: no error, and none in any resample (resampled examples would add noise)
    assert errors["exact"].tolist() == [0.0, 0.0, 0.0]
    # errors over (point, task): 0, 0, 0.1, 0.3 on a, 0 on b; resamples of the 4 points average between 0 and 0.3 / 2
    assert errors["off"]["value"] == pytest.approx(0.4 / 8)
    assert 0.0 <= errors["off"]["ci_low"] < errors["off"]["value"] < errors["off"]["ci_high"] <= 0.15
    for table in tables.values():
        low, value, high = (
            table.set_index("indicator").loc[["pred_mae", "pred_max"], ["ci_low", "value", "ci_high"]].T.to_numpy()
        )
        assert ((low <= value + 1e-12) & (value <= high + 1e-12)).all()
    # the front indicators' intervals still resample the examples, as before
    others = tables["before"].query("indicator not in ['pred_mae', 'pred_max']")
    assert (others["ci_low"] < others["ci_high"]).sum() >= 8


def test_validation_plot_has_a_panel_per_pair_of_tasks(tmp_path):
    tasks = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    grid = pd.DataFrame(rng.random((27, 3)), columns=[f"accuracy_{t}" for t in tasks])
    front = pd.DataFrame(rng.random((10, 3)), columns=grid.columns)
    points = front.iloc[:3].reset_index(drop=True)
    points = pd.concat([points, (points - 0.05).add_prefix("measured_")], axis=1)
    baselines = pd.DataFrame([[0.3, 0.3, 0.3]], columns=grid.columns, index=["task_arithmetic"])
    reference = pd.DataFrame([(t, t, "accuracy", 0.9) for t in tasks], columns=["model", "task", "metric", "value"])
    path = plot_validation(grid, front, points, baselines, reference, tasks, "accuracy", tmp_path / "v.png")
    import matplotlib.image as mpimg

    height, width = mpimg.imread(path).shape[:2]
    assert width > 2.5 * height  # three panels side by side


# coverage of the surrogate's prediction intervals


def grid_case(resolution: int = 5, n_examples: int = 200) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-example rows of a two-task grid, its coefficients and a surrogate fitted to a third of its points."""
    from scipy.special import expit

    from mapmerge.core.surrogate import fit_table

    rng = np.random.default_rng(2)
    coefficients = groundtruth.grid_points(["a", "b"], 0.0, 1.0, resolution)
    c = coefficients[["c_a", "c_b"]].to_numpy()
    chance = {"a": expit(0.5 + 2 * c[:, 0] - 1.5 * c[:, 1] ** 2), "b": expit(1 - c[:, 0] + 1.2 * c[:, 1])}
    rows = [
        (s, task, e, float(rng.random() < chance[task][i]), float(rng.exponential(1 - chance[task][i])))
        for i, s in enumerate(coefficients["sample"])
        for task in ("a", "b")
        for e in range(n_examples)
    ]
    examples = pd.DataFrame(rows, columns=["sample", "task", "example", "correct", "loss"])
    fitted = coefficients.iloc[::3].reset_index(drop=True)
    metrics = metrics_from_examples(examples[examples["sample"].isin(fitted["sample"])])
    links = {"accuracy": "sigmoid", "loss": "softplus"}
    surrogate = fit_table(fitted, metrics, ["a", "b"], links, loo=False, bootstrap=50)
    return examples, coefficients, surrogate


def grid_bounds(coefficients: pd.DataFrame, surrogate: pd.DataFrame, level: float) -> pd.DataFrame:
    bounds = prediction_columns(surrogate, coefficients[["c_a", "c_b"]].to_numpy(), ["a", "b"], level)
    return bounds.set_index(coefficients["sample"])


def test_coverage_rows_per_task_and_overall():
    examples, coefficients, surrogate = grid_case()
    table = groundtruth.coverage_table(examples, grid_bounds(coefficients, surrogate, 0.9), 20, 0.9, seed=0)
    assert list(table.columns) == groundtruth.COLUMNS
    assert set(zip(table["indicator"], table["front"], table["metric"])) == {
        ("coverage", front, metric) for front in ("a", "b", "all") for metric in ("accuracy", "loss")
    }
    assert table[["value", "ci_low", "ci_high"]].apply(lambda v: v.between(0, 1)).all().all()
    assert (table["ci_low"] <= table["ci_high"]).all() and (table["n_reference"] == 25).all()
    # resamples of the grid's points, the real values kept: the interval holds the coverage measured
    assert ((table["ci_low"] <= table["value"]) & (table["value"] <= table["ci_high"])).all(), table
    assert (table["ci_low"] < table["ci_high"]).any()
    assert table.set_index("front")["n_points"].to_dict() == {"a": 25, "b": 25, "all": 50}
    rows = table.set_index(["front", "metric"])["value"]
    assert rows[("all", "accuracy")] == pytest.approx((rows[("a", "accuracy")] + rows[("b", "accuracy")]) / 2)
    assert rows[("all", "accuracy")] > 0.5  # a quadratic in logits fitted to 9 points of a quadratic in logits
    wide = groundtruth.coverage_table(examples, grid_bounds(coefficients, surrogate, 0.99), 0, 0.9, seed=0)
    assert (wide["value"].to_numpy() >= table["value"].to_numpy()).all() and wide["ci_low"].isna().all()


def test_coverage_counts_the_real_values_inside_the_bounds():
    wide = pd.DataFrame({"accuracy_a": [0.5, 0.7, 0.9, np.nan]}, index=["g0", "g1", "g2", "g3"])
    bounds = pd.DataFrame(
        {"accuracy_a_lo": [0.4, 0.75, 0.8, 0.0], "accuracy_a_hi": [0.6, 0.8, 0.9, 1.0]}, index=wide.index
    )
    values = groundtruth.interval_coverage(wide, bounds, ["a"], ["accuracy"])
    assert values == {("coverage", "a", "accuracy"): 0.5, ("coverage", "all", "accuracy"): 0.5}  # NaN: outside
    resampled = groundtruth.interval_coverage(wide, bounds, ["a"], ["accuracy"], rows=np.array([0, 0, 2, 1]))
    assert resampled[("coverage", "a", "accuracy")] == 0.75  # g0 twice, g2, not g1 nor g3


def test_stage_validate_adds_the_coverage_rows(tmp_path):
    from mapmerge.io import write_table

    examples, coefficients, surrogate = grid_case(resolution=4, n_examples=50)
    group = tmp_path / "groups" / "all"
    front = coefficients.iloc[[0, 5, 15]].drop(columns="sample").reset_index(drop=True)
    wide = wide_metrics(metrics_from_examples(examples), "sample").loc[coefficients["sample"].iloc[[0, 5, 15]]]
    front = pd.concat([front, wide.reset_index(drop=True)], axis=1)
    points = front.assign(sample=["f00", "f01", "f02"])
    evals = examples[examples["sample"].isin(coefficients["sample"].iloc[[0, 5, 15]])].copy()
    evals["sample"] = evals["sample"].map(dict(zip(coefficients["sample"].iloc[[0, 5, 15]], points["sample"])))
    write_table(pd.DataFrame({"sample": [f"s{i}" for i in range(6)]}), group / "samples.parquet", "collect_metrics")
    reference = pd.DataFrame([(t, t, "accuracy", 0.95) for t in "ab"], columns=["model", "task", "metric", "value"])
    params = {"objective": "accuracy", "bootstrap": 5, "ci_level": 0.9, "seed": 0, "interval": 0.9, "box": [0.0, 1.0]}
    run_validate(
        params,
        front=write_table(front, group / "front.parquet", "pareto_front"),
        points=write_table(points, tmp_path / "points.parquet", "validate_front"),
        front_evals=write_table(evals, tmp_path / "front_evals.parquet", "validate_front"),
        grid=[write_table(examples, tmp_path / "b0000.parquet", "evaluate")],
        baselines={},
        reference=write_table(reference, tmp_path / "reference.parquet", "x"),
        surrogate=write_table(surrogate, group / "surrogate.parquet", "fit_surrogate"),
        table=tmp_path / "validation.parquet",
        plot=tmp_path / "validation.png",
    )
    table = read_table(tmp_path / "validation.parquet")
    coverage = table[table["indicator"] == "coverage"].set_index(["front", "metric"])
    assert set(coverage.index) == {(f, m) for f in ("a", "b", "all") for m in ("accuracy", "loss")}
    assert coverage["value"].between(0, 1).all() and (coverage["n_reference"] == 16).all()
    expected = groundtruth.coverage_table(examples, grid_bounds(coefficients, surrogate, 0.9), 5, 0.9, 0)
    assert (
        coverage.loc[("all", "accuracy"), "value"]
        == expected.set_index(["front", "metric"]).loc[("all", "accuracy"), "value"]
    )
    assert {"igd", "hv"} <= set(table["indicator"])  # beside the other indicators
    assert table_metadata(tmp_path / "validation.parquet")["mapmerge.interval"] == "0.9"


def test_the_plots_draw_the_intervals_where_the_front_has_them(tmp_path):
    from mapmerge.outputs.plots import plot_all

    examples, coefficients, surrogate = grid_case(resolution=4, n_examples=50)
    bounds = grid_bounds(coefficients, surrogate, 0.9).reset_index(drop=True)
    front = pd.concat([coefficients.drop(columns="sample"), bounds], axis=1)
    plain = front[[c for c in front.columns if not c.endswith(("_lo", "_hi"))]]
    chosen = front.iloc[[5]].reset_index(drop=True)
    for name, table in (("bands", front), ("plain", plain)):
        plot_all(
            None, table, None, ["a", "b"], "accuracy", tmp_path / name, selected=chosen if name == "bands" else None
        )
        points = table.iloc[[0, 5, 15]].reset_index(drop=True)
        points = pd.concat([points, points[["accuracy_a", "accuracy_b"]].add_prefix("measured_")], axis=1)
        grid = wide_metrics(metrics_from_examples(examples), "sample")
        plot_validation(grid, table, points, None, None, ["a", "b"], "accuracy", tmp_path / name / "validation.png")
    for png in ("front_2d.png", "front_parallel.png", "validation.png"):
        assert (tmp_path / "bands" / png).read_bytes() != (tmp_path / "plain" / png).read_bytes()


# config


def load(repo: Path, *overrides: str) -> dict:
    return load_config(repo / "config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["validation.enabled=true"], "validation.max_tasks: a grid of 11^4 points is refused for 4 tasks"),
        (
            ["validation.enabled=true", "benchmark.tasks=2", "method=nested"],
            "validation.enabled: validation is for one-group methods",
        ),
        (["validation.resolution=1"], "validation.resolution: must be an integer >= 2"),
        (  # planned, 10^9 points filled the driver's memory before a job ran
            ["validation.enabled=true", "benchmark.tasks=3", "validation.resolution=1000"],
            "validation.resolution: a grid of 1000^3 = 1,000,000,000 points is refused (validation.max_points: 20,000",
        ),
        (["validation.bootstrap=-1"], "validation.bootstrap: must be an integer >= 0"),
        (["validation.ci_level=1.5"], "validation.ci_level: must be in (0, 1)"),
        (["validation.baselines.ties.density=2"], "validation.baselines.ties.density: must be in (0, 1]"),
        (["validation.baselines.dare.coefficient=null"], "validation.baselines.dare.coefficient: must be a number"),
    ],
)
def test_bad_validation_config_is_one_line(repo, overrides, message):
    with pytest.raises(ConfigError) as info:
        load(repo, *overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_validation_is_checked_only_when_enabled(repo):
    assert load(repo)["validation"]["enabled"] is False  # 4 tasks: fine while disabled
    assert load(repo, "validation.enabled=true", "benchmark.tasks=3", "method=bayesian")["validation"]["enabled"]


@pytest.mark.parametrize(
    "override, changed",
    [
        ("validation.front_points=3", {"validate_front"}),
        ("validation.bootstrap=10", {"validate"}),
        ("validation.baselines.ties.density=0.5", {"validate_baseline"}),
        ("validation.resolution=5", set()),  # the grid's coefficients are its batches' params
    ],
)
def test_each_validation_setting_reaches_only_its_stage(repo, override, changed):
    enabled = ("benchmark.tasks=2", "validation.enabled=true")
    base, other = load(repo, *enabled), load(repo, *enabled, override)
    assert {s for s in validation_config.STAGES if stage_config(base, s) != stage_config(other, s)} == changed


def test_the_interval_level_reaches_the_front_and_validate_but_refits_nothing(repo):
    base, other = load(repo, "benchmark.tasks=2"), load(repo, "benchmark.tasks=2", "surrogate.interval=0.8")
    assert stage_config(base, "pareto_front")["interval"] == 0.9 and stage_config(other, "validate")["interval"] == 0.8
    for stage in ("fit_surrogate", "sample_coefficients", "propose_round"):
        assert stage_config(base, stage) == stage_config(other, stage)
    with pytest.raises(ConfigError, match=r"surrogate.interval: must be in \(0, 1\)"):
        load(repo, "surrogate.interval=1.0")


def test_each_baseline_has_its_own_operator_and_seed(repo):
    params = stage_config(load(repo, "seed=7"), "validate_baseline")
    ties, dare = validation_config.baseline_params(params, "ties"), validation_config.baseline_params(params, "dare")
    assert ties["merge_operator"] == {"operator": "ties", "density": 0.2} and ties["merge_seed"] is None
    assert dare["merge_operator"]["operator"] == "dare" and dare["merge_seed"] == 7
    assert validation_config.baseline_params(params, "task_arithmetic")["coefficient"] == 0.3


# the workflow


# on a copy of test_workflow.py's finished run (built once per test session): only the validation's stages run
WORKFLOW = [
    *BASE,
    "validation.enabled=true",
    "validation.resolution=5",  # 25 grid points, one job
    "validation.batch=25",
    "validation.front_points=4",
    "validation.bootstrap=20",
    "~validation.baselines.dare",  # two baselines are enough here (one job each)
]
TARGETS = ["results/wf/validation.parquet", "results/wf/plots/validation.png"]  # not the chosen merge's stages


@pytest.mark.slow
def status_state(out: str, stage: str) -> str:
    """The state `mapmerge status` gives a stage."""
    return next(line.split()[1] for line in out.splitlines() if line.split()[:1] == [stage])


def test_workflow_validates_the_front_and_keeps_the_grid(tmp_path_factory, tmp_path, capsys):
    workdir = copy_run(finished_run(tmp_path_factory), tmp_path / "run")
    validation = job_counts(run(snakemake_command(workdir, *TARGETS, overrides=WORKFLOW))[1])
    assert validation == {"validate_grid": 1, "validate_front": 1, "validate_baseline": 2, "validate": 1}
    res = workdir / "results" / "wf"
    table = read_table(res / "validation.parquet").set_index(["indicator", "front", "metric"])
    assert list(table.reset_index().columns) == groundtruth.COLUMNS
    for front in ("predicted", "real"):
        assert 0 <= table.loc[("igd", front, "accuracy"), "value"] < 0.5
        assert 0 <= table.loc[("gd", front, "accuracy"), "value"] < 0.5
        assert 0 < table.loc[("hv", front, "accuracy"), "value"] <= 1
    assert 0 < table.loc[("hv", "grid", "accuracy"), "value"] <= 1
    mae, top = (
        table.loc[("pred_mae", "predicted", "accuracy"), "value"],
        table.loc[("pred_max", "predicted", "accuracy"), "value"],
    )
    assert 0 <= mae <= top < 0.5
    assert (table["n_points"].xs("real", level="front") == 4).all()
    assert table[["value", "ci_low", "ci_high"]].notna().all().all() and (table["ci_low"] <= table["ci_high"]).all()
    coverage = table.xs("coverage")["value"]  # the surrogate's 90% intervals on the grid
    assert set(coverage.index) == {(f, m) for f in (*TASKS, "all") for m in ("accuracy", "loss")}
    assert coverage.between(0, 1).all()
    front = read_table(res / "groups/all/front.parquet")
    assert (front["accuracy_rot90_lo"] <= front["accuracy_rot90"]).all()
    assert (front["accuracy_rot90"] <= front["accuracy_rot90_hi"]).all()
    hv_reference = json.loads(table_metadata(res / "validation.parquet")["mapmerge.hv_reference"])
    assert set(hv_reference) == set(TASKS) and all(0 <= v < 1 for v in hv_reference.values())
    assert (res / "plots" / "validation.png").read_bytes().startswith(b"\x89PNG")
    grid = read_table(res / "validation/grid/b0000.parquet")
    assert grid["sample"].nunique() == 25 and set(grid["task"]) == set(TASKS)
    baselines = {name: read_table(res / f"validation/baselines/{name}.parquet") for name in ("task_arithmetic", "ties")}
    assert [b["sample"].unique().tolist() for b in baselines.values()] == [["task_arithmetic"], ["ties"]]
    assert not baselines["ties"]["loss"].equals(baselines["task_arithmetic"]["loss"])  # each with its own operator

    # the validation's evaluations, run again on the same merges and files, come back from the evaluation cache
    kept = {p: p.read_bytes() for p in (res / "validation").rglob("*.parquet")}
    forced = run(
        snakemake_command(
            workdir, *TARGETS, "--forcerun", "validate_front", "validate_baseline", "validate_grid", overrides=WORKFLOW
        )
    )
    assert job_counts(forced[1]) == {"validate_front": 1, "validate_baseline": 2, "validate_grid": 1, "validate": 1}
    assert {p: p.read_bytes() for p in (res / "validation").rglob("*.parquet")} == kept
    logs = [
        res / "logs/validate_front.log",
        *(res / "logs/validate_baseline").glob("*.log"),
        *(res / "logs/validate_grid").glob("*.log"),
    ]
    assert len(logs) == 4 and all("from the evaluation cache" in log.read_text() for log in logs)

    fewer = [*WORKFLOW, "validation.front_points=3"]
    # rule all asks for the validation stage when it is enabled; the grid and the baselines are kept
    plan = job_counts(run(snakemake_command(workdir, "-n", overrides=fewer))[1])
    assert {"validate_front", "validate"} <= set(plan) and not {"validate_grid", "validate_baseline"} & set(plan)
    before = artifacts(res / "validation")
    assert set(job_counts(run(snakemake_command(workdir, *TARGETS, overrides=fewer))[1])) == {
        "validate_front",
        "validate",
    }
    after = artifacts(res / "validation")
    assert {p: t for p, t in after.items() if "front" not in p.name} == {
        p: t for p, t in before.items() if "front" not in p.name
    }
    assert len(read_table(res / "validation/front.parquet")) == 3

    # report.md shows the validation's table (aggregate takes validation.parquet where validation is enabled)
    assert job_counts(run(snakemake_command(workdir, "results/wf/report.md", overrides=fewer))[1]) == {"aggregate": 1}
    report = (res / "report.md").read_text()
    igd = read_table(res / "validation.parquet").set_index(["indicator", "front"]).loc[("igd", "real"), "value"]
    assert "## Validation against a real grid (validation.parquet)" in report
    assert f"| igd | real | accuracy | {igd:.3f} |" in report and "![validation.png](plots/validation.png)" in report

    # mapmerge status lists the validation's stages after the others, and its HTML table among report_tables'
    assert main(["status", str(res)]) == 0
    rows = {
        line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines() if line[:1].strip()
    }
    assert rows["validate_grid"] == ["done", "validation/grid/b<NNNN>.parquet: 1 batch"]
    assert rows["validate_baseline"] == ["done", "validation/baselines/<name>.parquet: task_arithmetic, ties"]
    assert rows["validate"] == ["done", "validation.parquet, plots/validation.png"]
    assert rows["validate_front"][0] == "done" and rows["report_tables"][1].endswith(": 5 of 6")  # no report_tables run

    # another batching of the grid (validation.batch) takes the grid points' rows from the evaluation cache, one by
    # one; with one point's note gone, only the job holding that point builds its engine and evaluates it
    grid = pd.concat([read_table(p) for p in sorted((res / "validation/grid").glob("*.parquet"))], ignore_index=True)
    table = read_table(res / "validation.parquet")
    kept = res / evaluation_cache.FOLDER
    notes = [  # the grid points' notes: their kept table's place is the grid's batch
        note
        for note in sorted((res / evaluation_cache.SAMPLES).glob("*.txt"))
        if (kept / note.read_text().strip())
        .with_suffix(evaluation_cache.PLACE)
        .read_text()
        .startswith("validation/grid/")
    ]
    assert len(notes) == 25
    notes[0].unlink()
    rebatched = [*fewer, "validation.batch=10"]
    assert job_counts(run(snakemake_command(workdir, *TARGETS, overrides=rebatched))[1]) == {
        "validate_grid": 3,
        "validate": 1,
    }
    logs = [log.read_text() for log in sorted((res / "logs/validate_grid").glob("*.log"))]
    assert len(logs) == 3 and sum(log.count(" INFO mapmerge: took g") for log in logs) == 24
    assert sum("evaluation.placement" in log for log in logs) == 1  # the engine's line: built in one job only
    again = [read_table(p) for p in sorted((res / "validation/grid").glob("*.parquet"))]
    assert [len(t) for t in again] == [len(grid) * n // 25 for n in (10, 10, 5)]
    pd.testing.assert_frame_equal(pd.concat(again, ignore_index=True), grid)
    pd.testing.assert_frame_equal(read_table(res / "validation.parquet"), table)

    # back to one batch: its table comes back whole, and the other two batches stay on disk, read by no job; status
    # counts them apart, and prune removes them with their kept tables, taking nothing the run reads
    assert job_counts(run(snakemake_command(workdir, *TARGETS, overrides=fewer))[1]) == {
        "validate_grid": 1,
        "validate": 1,
    }
    left = [res / "validation/grid/b0001.parquet", res / "validation/grid/b0002.parquet"]
    assert main(["status", str(res)]) == 0
    assert "grid/b<NNNN>.parquet: 3 batches, 2 of them left from an earlier setting (validation.parquet did not" in (
        capsys.readouterr().out
    )
    assert main(["prune", str(res)]) == 0
    assert "removed 2 validation tables left from an earlier setting" in capsys.readouterr().out
    assert not any(p.exists() for p in left) and (res / "validation/grid/b0000.parquet").exists()
    assert sorted(p.name for p in (res / "logs/validate_grid").glob("*.log")) == ["b0000.log"]  # their logs too
    places = [p.read_text() for p in kept.glob(f"*{evaluation_cache.PLACE}")]
    assert not {str(p.relative_to(res)) for p in left} & set(places)
    # the batch restored whole holds the 25 points again: their notes point at its kept table, not at the dropped ones
    assert all((kept / note.read_text().split()[0]).is_file() for note in notes)
    assert job_counts(run(snakemake_command(workdir, *TARGETS, "-n", overrides=fewer))[1]) == {}
    # a change of the grid stopped part-way (a batch rewritten with the new setting's points, validation.parquet not
    # yet): status calls the validation stale, naming the batch, and says nothing of the earlier one as the run's
    batch = res / "validation/grid/b0000.parquet"
    rows = read_table(batch)
    write_table(rows.iloc[: len(rows) // 2], batch, "validate_grid", extra=table_metadata(batch))
    assert main(["status", str(res)]) == 0
    out = capsys.readouterr().out
    assert status_state(out, "validate") == "stale" and "validation.parquet (b0000.parquet)" in out, out
