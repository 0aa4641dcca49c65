import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, stdtrit

from mapmerge.core.class_scores import fit_scores
from mapmerge.core.correction import fit_correction
from mapmerge.core.surrogate import (
    INTERVAL_COLUMNS,
    LINKS,
    SCORE_COLUMNS,
    SurrogateError,
    SurrogateFit,
    fit_surrogate,
    fit_table,
    fits_from_table,
    n_params,
    prediction_columns,
    quadratic_features,
)

FORWARD = {"sigmoid": expit, "softplus": lambda z: np.logaddexp(0.0, z), "identity": lambda z: z}


def quadratic_data(T: int, n: int, link: str, seed: int = 0, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    C = rng.uniform(0.0, 1.0, (n, T))
    params = rng.normal(0.0, 0.7, n_params(T))
    y = FORWARD[link](quadratic_features(C) @ params) + rng.normal(0.0, noise, n)
    return C, y, params


def test_n_params():
    assert [n_params(t) for t in (1, 2, 4, 8)] == [3, 6, 15, 45]


def test_feature_order():
    X = quadratic_features(np.array([[2.0, 3.0, 5.0]]))
    # 1, c1, c2, c3, c1c1, c1c2, c1c3, c2c2, c2c3, c3c3
    np.testing.assert_array_equal(X, [[1, 2, 3, 5, 4, 6, 10, 9, 15, 25]])
    assert quadratic_features(np.zeros((7, 4))).shape == (7, n_params(4))
    assert quadratic_features(np.zeros((2, 3, 4))).shape == (2, 3, n_params(4))


@pytest.mark.parametrize("link", LINKS)
def test_exact_recovery(link):
    C, y, params = quadratic_data(T=3, n=30, link=link)
    fit = fit_surrogate(C, y, link, task="a", metric="m")
    np.testing.assert_allclose(fit.params, params, atol=1e-5)
    assert fit.r2 > 1 - 1e-9
    assert fit.rmse < 1e-7 and fit.loo_rmse < 1e-5
    assert fit.n_samples == 30 and fit.link == link
    C_new = np.random.default_rng(9).uniform(0, 1, (5, 3))
    np.testing.assert_allclose(fit.predict(C_new), FORWARD[link](quadratic_features(C_new) @ params), atol=1e-6)


def test_predict_shapes():
    C, y, _ = quadratic_data(T=2, n=12, link="identity")
    fit = fit_surrogate(C, y, "identity")
    assert fit.predict(C).shape == (12,)
    assert fit.predict(C[0]).shape == ()
    assert fit.predict(C[0]) == pytest.approx(fit.predict(C)[0])
    with pytest.raises(SurrogateError, match=r"shape \(12, 3\)"):
        fit.predict(np.zeros((12, 3)))


def test_saturated_accuracy_stays_finite():
    rng = np.random.default_rng(3)
    C = rng.uniform(0, 1, (20, 2))
    y = np.round(expit(3 + 6 * C[:, 0] - 4 * C[:, 1] ** 2) * 200) / 200  # accuracy on 200 examples
    assert (y == 1.0).sum() >= 5
    fit = fit_surrogate(C, y, "sigmoid")
    assert np.isfinite(fit.params).all() and np.abs(fit.params).max() < 100
    assert fit.rmse < 0.005 and np.all(fit.predict(C[y == 1.0]) > 0.99)


def test_below_the_parameter_count_the_fit_passes_through_the_samples_without_an_interval():
    C, y, _ = quadratic_data(T=4, n=10, link="sigmoid")  # 10 samples for 15 parameters (a design below P)
    fit = fit_surrogate(C, y, "sigmoid", task="rot90", metric="accuracy", bootstrap=50, correct=True)
    np.testing.assert_allclose(fit.predict(C), y, atol=1e-6)
    assert fit.correction is None and not len(fit.refits) and np.isnan(fit.loo_rmse)  # no residuals to model
    assert np.isnan(np.stack(fit.interval(C, 0.9))).all()
    with pytest.raises(SurrogateError, match="^task 'rot90', metric 'accuracy': no samples to fit$"):
        fit_surrogate(C[:0], y[:0], "sigmoid", task="rot90", metric="accuracy")


def test_loo_undefined_at_minimum_sample_count():
    C, y, _ = quadratic_data(T=2, n=6, link="identity")
    fit = fit_surrogate(C, y, "identity")
    assert np.isnan(fit.loo_rmse) and fit.r2 > 1 - 1e-9


@pytest.mark.parametrize("where", ["C", "y"])
def test_nan_rejected(where):
    C, y, _ = quadratic_data(T=2, n=12, link="sigmoid")
    (C[3] if where == "C" else y[3:4])[0] = np.nan
    with pytest.raises(SurrogateError, match=r"task 'inv', metric 'accuracy': .*NaN.*\[3\]"):
        fit_surrogate(C, y, "sigmoid", task="inv", metric="accuracy")


def test_bad_link_and_range():
    C, y, _ = quadratic_data(T=2, n=12, link="identity")
    with pytest.raises(SurrogateError, match="task 'a', metric 'm': unknown link 'probit'"):
        fit_surrogate(C, y, "probit", task="a", metric="m")
    with pytest.raises(SurrogateError, match="outside the range .* of link 'sigmoid'"):
        fit_surrogate(C, y + 5.0, "sigmoid", task="a", metric="m")


def test_loo_exceeds_rmse_on_noisy_data():
    C, y, _ = quadratic_data(T=3, n=25, link="sigmoid", noise=0.02)
    fit = fit_surrogate(C, np.clip(y, 0, 1), "sigmoid")
    assert fit.loo_rmse > fit.rmse > 0
    assert np.isnan(fit_surrogate(C, np.clip(y, 0, 1), "sigmoid", loo=False).loo_rmse)


def test_deterministic():
    C, y, _ = quadratic_data(T=3, n=25, link="softplus", noise=0.02)
    y = np.clip(y, 0, None)
    a, b = fit_surrogate(C, y, "softplus"), fit_surrogate(C, y, "softplus")
    np.testing.assert_array_equal(a.params, b.params)
    assert (a.r2, a.rmse, a.loo_rmse) == (b.r2, b.rmse, b.loo_rmse)


def test_fit_is_read_only():
    C, y, _ = quadratic_data(T=2, n=12, link="identity")
    fit = fit_surrogate(C, y, "identity")
    with pytest.raises(ValueError):
        fit.params[0] = 1.0


def make_tables(tasks, n=20, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.uniform(0, 1, (n, len(tasks)))
    samples = pd.DataFrame({"sample": [f"s{i:03d}" for i in range(n)]})
    for k, task in enumerate(tasks):
        samples[f"c_{task}"] = C[:, k]
    rows = []
    for task in tasks:
        z = quadratic_features(C) @ rng.normal(0, 0.7, n_params(len(tasks)))
        for sample, acc, loss in zip(samples["sample"], expit(z), np.logaddexp(0, -z)):
            rows += [(sample, task, "accuracy", acc), (sample, task, "loss", loss)]
    metrics = pd.DataFrame(rows, columns=["sample", "task", "metric", "value"])
    return samples, metrics


LINK_MAP = {"accuracy": "sigmoid", "loss": "softplus"}


def test_fit_table_round_trip(tmp_path):
    tasks = ["rot90", "digits04", "invert"]
    samples, metrics = make_tables(tasks)
    table = fit_table(samples, metrics, tasks, LINK_MAP)
    assert list(table.columns) == [
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
        "refits",
        "residuals",
        "correction_centres",
        "correction_alpha",
        "correction_scale",
        "correction_length",
        "correction_ridge",
    ]
    assert list(zip(table["task"], table["metric"])) == sorted((t, m) for t in tasks for m in LINK_MAP)
    assert (table["tasks"] == "rot90,digits04,invert").all() and (table["n_samples"] == 20).all()
    assert (table["n_dropped"] == 0).all() and (table["dropped"] == "").all()
    assert (table["r2"] > 0.999).all()
    table.to_parquet(tmp_path / "surrogate.parquet")
    fits = fits_from_table(pd.read_parquet(tmp_path / "surrogate.parquet"))
    assert set(fits) == {(t, m) for t in tasks for m in LINK_MAP}
    C = samples[[f"c_{t}" for t in tasks]].to_numpy()
    for (task, metric), fit in fits.items():  # noqa: B007 (task is read by the query string)
        assert fit.tasks == tuple(tasks) and fit.link == LINK_MAP[metric]
        direct = fit_surrogate(C, metrics.query("task == @task and metric == @metric")["value"], fit.link)
        np.testing.assert_array_equal(fit.predict(C), direct.predict(C))


def test_a_corrected_fit_survives_the_table_and_follows_what_a_quadratic_cannot(tmp_path):
    rng = np.random.default_rng(3)
    C = rng.uniform(0, 1, (60, 2))
    bump = 0.8 * np.exp(-np.sum((C - 0.5) ** 2, axis=1) / 0.02)  # what a quadratic cannot follow
    samples = pd.DataFrame({"sample": [f"s{i:03d}" for i in range(60)], "c_a": C[:, 0], "c_b": C[:, 1]})
    acc = expit(1 + C[:, 0] - 2 * C[:, 1] + bump)
    metrics = pd.DataFrame({"sample": samples["sample"], "task": "a", "metric": "accuracy", "value": acc})
    plain = fit_table(samples, metrics, ["a", "b"], {"accuracy": "sigmoid"}, tasks=["a"], bootstrap=20)
    corrected = fit_table(
        samples, metrics, ["a", "b"], {"accuracy": "sigmoid"}, tasks=["a"], bootstrap=20, correct=True
    )
    assert np.isnan(plain["correction_length"]).all() and corrected["correction_length"].notna().all()
    assert (corrected["loo_rmse"] < 0.5 * plain["loo_rmse"]).all()  # out of sample too
    corrected.to_parquet(tmp_path / "surrogate.parquet")
    fit = fits_from_table(pd.read_parquet(tmp_path / "surrogate.parquet"))[("a", "accuracy")]
    assert (
        np.abs(fit.predict(C) - acc).mean()
        < 0.5 * np.abs(fits_from_table(plain)[("a", "accuracy")].predict(C) - acc).mean()
    )
    far = np.array([[6.0, -5.0]])  # far from every point: the quadratic alone, and an interval around it
    np.testing.assert_allclose(fit.predict(far), fits_from_table(plain)[("a", "accuracy")].predict(far))
    low, high = fit.interval(C, 0.9)
    assert (low <= fit.predict(C)).all() and (fit.predict(C) <= high).all() and (high > low).any()
    # the Gaussian process's interval: narrow at an evaluated point, wider between them, widest far from them
    between = np.array([[0.5, 0.5]]) + 0.07
    widths = [np.subtract(*fit.interval(c, 0.9)[::-1])[0] for c in (C[:1], between, np.array([[1.6, -0.6]]))]
    assert widths[0] < widths[1] < widths[2]
    assert corrected["refits"].map(len).eq(0).all()  # no bootstrap: a corrected fit's intervals are its own


def test_corrected_interval_counts_the_quadratics_parameters_as_estimated():
    rng = np.random.default_rng(3)
    C = rng.uniform(0, 1, (30, 2))
    residual = np.sin(4 * C[:, 0]) * 0.3 + rng.normal(0, 0.05, len(C))
    correction = fit_correction(C, residual)
    known = correction.variance(C)
    estimated = correction.variance(C, basis=quadratic_features)
    assert (estimated >= known).all()
    far = np.array([[3.0, -2.0]])  # where the quadratic extrapolates: its parameters' spread dominates
    assert correction.variance(far, basis=quadratic_features)[0] > 10 * correction.variance(far)[0]
    # by hand at one point: the universal-kriging term, and the signal variance on n - P degrees of freedom
    inverse, signal = correction._solve
    H = quadratic_features(C)
    k = np.exp(-np.sum((far / correction.scale - correction.centres) ** 2, axis=1) / (2 * correction.length**2))
    u = quadratic_features(far)[0] - k @ inverse @ H
    extra = signal * u @ np.linalg.pinv(H.T @ inverse @ H) @ u
    np.testing.assert_allclose(
        correction.variance(far, basis=quadratic_features)[0], (correction.variance(far)[0] + extra) * 30 / (30 - 6)
    )


def test_corrected_interval_is_students_on_the_residual_degrees_of_freedom():
    C, y, _ = quadratic_data(T=2, n=9, link="identity", noise=0.05)  # 9 merges, 6 parameters: 3 degrees of freedom
    fit = fit_surrogate(C, y, "identity", correct=True)
    assert fit.correction is not None
    at = np.array([[0.3, 0.7], [1.5, 1.5]])
    low, high = fit.interval(at, 0.9)
    half = stdtrit(3, 0.95) * np.sqrt(fit.correction.variance(at, basis=quadratic_features))  # 2.35, not 1.64
    np.testing.assert_allclose(high - low, 2 * half)


def test_fit_table_missing_sample():
    tasks = ["a", "b"]
    samples, metrics = make_tables(tasks)
    metrics = metrics.drop(metrics.index[(metrics["sample"] == "s007") & (metrics["task"] == "b")][:1])
    with pytest.raises(
        SurrogateError, match=r"task 'b', metric 'accuracy': no value for samples \['s007'\].*surrogate.missing=drop"
    ):
        fit_table(samples, metrics, tasks, LINK_MAP, loo=False)


def failed_evaluations(samples: pd.DataFrame, metrics: pd.DataFrame, task: str, failed: list[str]) -> pd.DataFrame:
    """metrics with the rows of `failed` samples of `task` as a recorded failure: NaN value and an error."""
    metrics = metrics.assign(error=pd.Series(None, index=metrics.index, dtype="str"))
    rows = metrics["sample"].isin(failed) & (metrics["task"] == task)
    metrics.loc[rows, "value"] = np.nan
    metrics.loc[rows, "error"] = "evaluator returned NaN"
    return metrics


def test_fit_table_refuses_failed_evaluations_by_default():
    tasks = ["a", "b"]
    samples, metrics = make_tables(tasks)
    metrics = failed_evaluations(samples, metrics, "a", ["s004", "s011"])
    with pytest.raises(
        SurrogateError,
        match=r"task 'a', metric 'accuracy': no value for samples \['s004', 's011'\] "
        r"\(failed or missing evaluations.*set surrogate.missing=drop to fit without them",
    ):
        fit_table(samples, metrics, tasks, LINK_MAP, loo=False)


def test_fit_table_drops_failed_evaluations_and_says_so():
    tasks = ["a", "b"]
    samples, metrics = make_tables(tasks)
    failed = failed_evaluations(samples, metrics, "a", ["s004", "s011"])
    table = fit_table(samples, failed, tasks, LINK_MAP, loo=False, missing="drop").set_index(["task", "metric"])
    assert table.loc[("a", "accuracy"), "dropped"] == "s004,s011" and table.loc[("a", "loss"), "n_dropped"] == 2
    assert (table.loc["a", "n_samples"] == 18).all() and (table.loc["b", "n_samples"] == 20).all()
    assert (table.loc["b", "n_dropped"] == 0).all() and (table.loc["b", "dropped"] == "").all()
    kept = ~samples["sample"].isin(["s004", "s011"])
    subset = fit_table(samples[kept], metrics, tasks, LINK_MAP, loo=False).set_index(["task", "metric"])
    assert table.loc["a", "params"].tolist() == subset.loc["a", "params"].tolist()  # the same as fitting without them


def test_fit_table_rejects_an_unknown_missing_policy():
    samples, metrics = make_tables(["a", "b"])
    with pytest.raises(SurrogateError, match="surrogate.missing: must be one of error, drop, got 'skip'"):
        fit_table(samples, metrics, ["a", "b"], LINK_MAP, loo=False, missing="skip")


def test_fit_table_infinite_value_names_sample():
    tasks = ["a", "b"]
    samples, metrics = make_tables(tasks)
    metrics.loc[(metrics["sample"] == "s004") & (metrics["task"] == "a") & (metrics["metric"] == "loss"), "value"] = (
        np.inf
    )
    with pytest.raises(SurrogateError, match=r"task 'a', metric 'loss': value is infinite for samples \['s004'\]"):
        fit_table(samples, metrics, tasks, LINK_MAP, loo=False)


def test_fit_table_missing_column():
    samples, metrics = make_tables(["a", "b"])
    with pytest.raises(SurrogateError, match=r"samples table lacks columns \['c_c'\]"):
        fit_table(samples, metrics, ["a", "b", "c"], LINK_MAP, loo=False)


def test_fits_from_table_checks_param_count():
    samples, metrics = make_tables(["a", "b"])
    table = fit_table(samples, metrics, ["a", "b"], {"accuracy": "sigmoid"}, loo=False)
    table.loc[0, "tasks"] = "a,b,c"
    with pytest.raises(SurrogateError, match="task 'a', metric 'accuracy': 6 parameters do not match 3 tasks"):
        fits_from_table(table)


def test_surrogate_fit_validates_link():
    with pytest.raises(SurrogateError, match="unknown link"):
        SurrogateFit("a", "m", "cubic", np.zeros(3), 1.0, 0.0, 0.0, 3)


# prediction intervals


def noisy_accuracy(C: np.ndarray, params: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Accuracy whose noise is `noise` on the link (logit) scale: the intervals' error model."""
    return expit(quadratic_features(C) @ params + rng.normal(0.0, noise, len(C)))


@pytest.mark.parametrize("link", LINKS)
def test_interval_holds_the_prediction_and_widens_with_the_level(link):
    C, y, _ = quadratic_data(T=3, n=30, link=link, noise=0.03)
    fit = fit_surrogate(C, np.clip(y, 0, None) if link != "identity" else y, link, loo=False, bootstrap=50)
    C_new = np.random.default_rng(5).uniform(-0.2, 1.2, (50, 3))  # inside the box and a little beyond
    predicted = fit.predict(C_new)
    widths = []
    for level in (0.5, 0.8, 0.9, 0.99):
        low, high = fit.interval(C_new, level)
        assert low.shape == high.shape == predicted.shape
        assert np.all(low <= predicted) and np.all(predicted <= high) and np.all(low < high)
        widths.append(high - low)
    assert all(np.all(narrow <= wide) for narrow, wide in zip(widths, widths[1:]))
    assert np.mean(widths[-1]) > 2 * np.mean(widths[0])
    low, high = fit.interval(C[0], 0.9)  # one point: 0-d, like predict
    assert low.shape == () and low <= fit.predict(C[0]) <= high
    with pytest.raises(SurrogateError, match="level 1.0 must be in"):
        fit.interval(C_new, 1.0)


def test_interval_stays_in_the_links_range():
    rng = np.random.default_rng(2)
    C = rng.uniform(0, 1, (40, 2))
    params = np.array([2.0, 1.5, -2.0, 0.5, -1.0, 0.3])
    fit = fit_surrogate(C, noisy_accuracy(C, params, 0.8, rng), "sigmoid", loo=False, bootstrap=50)
    low, high = fit.interval(rng.uniform(-1, 2, (200, 2)), 0.99)
    assert np.all(low >= 0) and np.all(high <= 1)


@pytest.mark.parametrize("link, noise", [("identity", 0.05), ("sigmoid", 0.3)])
def test_interval_coverage_with_known_noise_is_near_nominal(link, noise):
    """New values at new points fall inside a 90% interval about 90% of the time (averaged over 20 designs of 8 x P
    points; with 4 x P, few residuals to draw from, a percentile bootstrap holds about 87%)."""
    rng = np.random.default_rng(11)
    params = np.array([0.5, 1.5, -1.0, -1.2, 0.8, 0.4])
    covered = {0.5: [], 0.9: []}
    for _ in range(20):
        C, C_new = rng.uniform(0, 1, (48, 2)), rng.uniform(0, 1, (400, 2))
        if link == "identity":
            y, y_new = (quadratic_features(c) @ params + rng.normal(0, noise, len(c)) for c in (C, C_new))
        else:
            y, y_new = noisy_accuracy(C, params, noise, rng), noisy_accuracy(C_new, params, noise, rng)
        fit = fit_surrogate(C, y, link, loo=False, bootstrap=100)
        for level, hits in covered.items():
            low, high = fit.interval(C_new, level)
            hits.append(np.mean((low <= y_new) & (y_new <= high)))
    assert np.mean(covered[0.9]) == pytest.approx(0.9, abs=0.03)
    assert np.mean(covered[0.5]) == pytest.approx(0.5, abs=0.05)


def test_no_interval_without_residual_degrees_of_freedom_or_bootstrap():
    C, y, _ = quadratic_data(T=2, n=6, link="identity", noise=0.1)  # n = P: an exact fit, nothing left over
    fit = fit_surrogate(C, y, "identity", loo=False, bootstrap=50)
    assert fit.refits.shape == (0, 6) and fit.residuals.shape == (0,)
    low, high = fit.interval(C, 0.9)
    assert np.isnan(low).all() and np.isnan(high).all()
    C, y, _ = quadratic_data(T=2, n=12, link="identity", noise=0.1)
    assert np.isnan(fit_surrogate(C, y, "identity", loo=False).interval(C, 0.9)[0]).all()  # bootstrap=0: none


def test_the_bootstrap_is_reproducible():
    C, y, _ = quadratic_data(T=2, n=15, link="sigmoid", noise=0.02)
    a, b = (fit_surrogate(C, np.clip(y, 0, 1), "sigmoid", loo=False, bootstrap=20) for _ in range(2))
    assert a.refits.shape == (20, 6) and a.residuals.shape == (15,)
    np.testing.assert_array_equal(a.refits, b.refits)
    np.testing.assert_array_equal(a.interval(C, 0.9), b.interval(C, 0.9))


def test_prediction_columns_from_the_table():
    tasks = ["a", "b"]
    samples, metrics = make_tables(tasks, n=20)
    metrics["value"] += np.random.default_rng(1).normal(0, 0.01, len(metrics)).clip(-0.005, 0.005)
    table = fit_table(samples, metrics, tasks, LINK_MAP, loo=False, bootstrap=30)
    C = np.random.default_rng(3).uniform(0, 1, (7, 2))
    frame = prediction_columns(table, C, tasks, 0.9)
    assert list(frame.columns) == [
        f"{m}_{t}{end}" for m in ("accuracy", "loss") for t in tasks for end in ("", "_lo", "_hi")
    ]
    assert len(frame) == 7 and frame.notna().all().all()
    fits = fits_from_table(table)
    for (task, metric), fit in fits.items():
        low, high = fit.interval(C, 0.9)
        name = f"{metric}_{task}"
        np.testing.assert_array_equal(frame[name], fit.predict(C))
        np.testing.assert_array_equal(frame[f"{name}_lo"], low)
        np.testing.assert_array_equal(frame[f"{name}_hi"], high)
        assert np.all(frame[f"{name}_lo"] <= frame[name]) and np.all(frame[name] <= frame[f"{name}_hi"])
    wider = prediction_columns(table, C, tasks, 0.99)
    assert np.all(wider["accuracy_a_hi"] - wider["accuracy_a_lo"] > frame["accuracy_a_hi"] - frame["accuracy_a_lo"])
    one = prediction_columns(table, C[0], tasks, 0.9)  # a single point: one row
    pd.testing.assert_frame_equal(one, frame.iloc[:1])
    with pytest.raises(SurrogateError, match=r"surrogate.interval: must be in \(0, 1\)"):
        prediction_columns(table, C, tasks, 0.0)
    with pytest.raises(SurrogateError, match="no fit of metric 'accuracy' for task 'c'"):
        prediction_columns(table, C, ["a", "c"], 0.9)


def test_tables_written_before_intervals_predict_without_them():
    tasks = ["a", "b"]
    samples, metrics = make_tables(tasks, n=20)
    table = fit_table(samples, metrics, tasks, LINK_MAP, loo=False).drop(columns=INTERVAL_COLUMNS)
    frame = prediction_columns(table, np.full((3, 2), 0.5), tasks, 0.9)
    assert frame["accuracy_a"].notna().all() and frame["accuracy_a_lo"].isna().all() and frame["loss_b_hi"].isna().all()


def test_metrics_no_evaluator_reports_are_not_fitted():
    samples, metrics = make_tables(["a", "b"])
    table = fit_table(samples, metrics[metrics["metric"] == "loss"], ["a", "b"], LINK_MAP, loo=False)
    assert set(table["metric"]) == {"loss"}  # a causal LM: the loss only
    with pytest.raises(
        SurrogateError, match=r"holds none of the fitted metrics \(surrogate.links\); it has \['loss'\]"
    ):
        fit_table(samples, metrics[metrics["metric"] == "loss"], ["a", "b"], {"accuracy": "sigmoid"})


def test_class_scores_give_the_accuracy_fits_predictions_and_intervals_through_the_table(tmp_path):
    tasks = ["a", "b"]
    rng = np.random.default_rng(5)
    samples, _ = make_tables(tasks, n=16)
    C = samples[[f"c_{t}" for t in tasks]].to_numpy()
    rows, metrics, models = [], [], {}
    for task in tasks:  # per task, 25 examples' 3 class scores: a quadratic in c plus noise
        params = rng.normal(size=(n_params(2), 25, 3))
        scores = np.einsum("mp,pec->mec", quadratic_features(C), params) + 0.3 * rng.normal(size=(16, 25, 3))
        targets = rng.integers(0, 3, 25)
        real = (scores.argmax(axis=2) == targets).mean(axis=1)
        models[task] = fit_scores(C, scores, targets, real)
        for i, sample in enumerate(samples["sample"]):
            rows.append(
                pd.DataFrame(
                    {
                        "sample": sample,
                        "task": task,
                        "example": np.arange(25),
                        "scores": list(scores[i]),
                        "target": targets,
                    }
                )
            )
            metrics += [(sample, task, "accuracy", real[i]), (sample, task, "loss", 1.0 - real[i] + 0.1 * i)]
    metrics = pd.DataFrame(metrics, columns=["sample", "task", "metric", "value"])
    examples = pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=0)  # any row order
    plain = fit_table(samples, metrics, tasks, LINK_MAP)
    assert not set(SCORE_COLUMNS) & set(plain.columns)  # a table without class scores is as before
    table = fit_table(samples, metrics, tasks, LINK_MAP, examples=examples)
    assert list(table.columns) == list(plain.columns) + SCORE_COLUMNS
    table.to_parquet(tmp_path / "surrogate.parquet")
    fits = fits_from_table(pd.read_parquet(tmp_path / "surrogate.parquet"))
    new = rng.uniform(size=(30, 2))
    for task in tasks:
        accuracy, loss = fits[(task, "accuracy")], fits[(task, "loss")]
        np.testing.assert_array_equal(accuracy.predict(new), models[task].predict(new))
        for got, want in zip(accuracy.interval(new, 0.9), models[task].interval(new, 0.9)):
            np.testing.assert_array_equal(got, want)
        row = table.set_index(["task", "metric"]).loc[(task, "accuracy")]
        assert row["loo_rmse"] == pytest.approx(np.sqrt(np.mean(models[task].residuals ** 2)))
        assert loss.scores is None  # the loss keeps its quadratic
        np.testing.assert_array_equal(loss.predict(new), fits_from_table(plain)[(task, "loss")].predict(new))
    columns = prediction_columns(table, new, tasks, 0.9)
    np.testing.assert_array_equal(columns["accuracy_b"], models["b"].predict(new))


def test_class_scores_missing_for_a_sample_name_task_and_sample():
    samples, metrics = make_tables(["a"], n=8)
    examples = pd.DataFrame(
        {"sample": samples["sample"][:7], "task": "a", "example": 0, "scores": [[0.0, 1.0]] * 7, "target": 1}
    )
    with pytest.raises(
        SurrogateError,
        match=r"^task 'a', sample s007: no class scores \(a failed evaluation, or one made without surrogate.scores\)$",
    ):
        fit_table(samples, metrics, ["a"], LINK_MAP, examples=examples)
    auto = fit_table(samples, metrics, ["a"], LINK_MAP, examples=examples, scores="auto")  # the quadratic, then
    assert not any(len(p) for p in auto["score_params"])
    C = samples[["c_a"]].to_numpy()
    np.testing.assert_array_equal(
        fits_from_table(auto)[("a", "accuracy")].predict(C),
        fits_from_table(fit_table(samples, metrics, ["a"], LINK_MAP))[("a", "accuracy")].predict(C),
    )
