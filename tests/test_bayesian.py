import numpy as np
import pandas as pd
import pytest

from mapmerge.core.bayesian import (
    bin_probabilities,
    directions,
    loo_residuals,
    propose,
    sample_errors,
    to_angles,
)
from mapmerge.core.metrics import metrics_from_examples
from mapmerge.core.sampling import design
from mapmerge.core.surrogate import SurrogateError, fit_surrogate

CFG = {"bins": 5, "lam": 1.0, "temperature": 0.5, "radius": "uniform"}
SURROGATE = {"links": {"accuracy": "sigmoid", "loss": "softplus"}, "loo": True, "missing": "error"}


def frame(C: np.ndarray, start: int = 0) -> pd.DataFrame:
    samples = pd.DataFrame(C, columns=[f"c_t{j}" for j in range(C.shape[1])])
    samples.insert(0, "sample", [f"s{i:04d}" for i in range(start, start + len(C))])
    return samples


def long_metrics(samples: pd.DataFrame, values: dict[str, np.ndarray], metric: str) -> pd.DataFrame:
    rows = [
        {"sample": s, "task": task, "metric": metric, "value": v}
        for task, vals in values.items()
        for s, v in zip(samples["sample"], vals)
    ]
    return pd.DataFrame(rows)


# --- propose: geometry, determinism, validation ---------------------------------------------


def test_angles_round_trip():
    U = np.random.default_rng(0).random((50, 4))
    phi = to_angles(U)
    assert phi.shape == (50, 3) and phi.min() >= 0 and phi.max() <= np.pi / 2
    np.testing.assert_allclose(directions(phi) * np.linalg.norm(U, axis=1)[:, None], U, atol=1e-12)
    axes = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(to_angles(axes)[:, 0], [0, np.pi / 2, np.pi / 4])


@pytest.mark.parametrize("radius", ["uniform", "sqrt", "volume"])
@pytest.mark.parametrize("M", [2, 3, 4])
def test_propose_deterministic_and_inside(M, radius):
    rng = np.random.default_rng(M)
    lower, upper = np.linspace(-0.5, 0.0, M), np.linspace(1.0, 2.0, M)
    C = lower + rng.random((30, M)) * (upper - lower)
    errors = rng.random(30)
    cfg = dict(CFG, bins=3, radius=radius)
    P = propose(C, errors, 40, lower, upper, cfg, seed=7)
    assert P.shape == (40, M)
    assert np.all(P >= lower) and np.all(P <= upper)
    np.testing.assert_array_equal(P, propose(C, errors, 40, lower, upper, cfg, seed=7))
    assert not np.allclose(P, propose(C, errors, 40, lower, upper, cfg, seed=8))
    assert propose(C, errors, 0, lower, upper, cfg, seed=7).shape == (0, M)


def test_propose_without_history_and_nan_errors():
    P = propose(np.empty((0, 2)), np.empty(0), 5, [0, 0], [1, 1], CFG, seed=0)
    assert P.shape == (5, 2)
    C = np.random.default_rng(1).random((10, 2))
    errors = np.r_[np.full(5, np.nan), np.ones(5)]  # failed samples are ignored, not fatal
    assert np.isfinite(propose(C, errors, 5, [0, 0], [1, 1], CFG, seed=0)).all()


def test_radius_outer_shell():
    """'sqrt' and 'volume' put the points farther out along their ray than 'uniform'."""
    C, errors = np.random.default_rng(2).random((20, 3)), np.ones(20)

    def mean_fraction(radius: str) -> float:
        P = propose(C, errors, 4000, np.zeros(3), np.ones(3), dict(CFG, radius=radius), seed=3)
        return float(np.mean(P.max(axis=1)))  # r / r_max: the ray leaves the unit box where max = 1

    uniform, sqrt, volume = (mean_fraction(r) for r in ("uniform", "sqrt", "volume"))
    assert uniform == pytest.approx(0.5, abs=0.02)
    assert sqrt == pytest.approx(2 / 3, abs=0.02) and volume == pytest.approx(3 / 4, abs=0.02)


def test_bin_probabilities():
    # M = 2, 4 bins of 22.5 degrees; points in bins 0 (small errors) and 3 (large errors), none in 1, 2
    phi = np.array([[0.1], [0.2], [1.5], [1.55]])
    errors = np.array([0.01, 0.01, 0.2, 0.4])
    p = bin_probabilities(phi, errors, bins=4, lam=1.0, temperature=0.5)
    assert p.sum() == pytest.approx(1.0)
    assert p[1] == pytest.approx(p[2])  # empty bins score like the pooled errors: between the two
    assert p[3] > p[1] > p[0]
    sharper = bin_probabilities(phi, errors, bins=4, lam=1.0, temperature=0.1)
    assert sharper[3] > p[3]
    flat = bin_probabilities(phi, np.zeros(4), bins=4, lam=1.0, temperature=0.5)
    np.testing.assert_allclose(flat, 0.25)
    # the spread counts: same mean, larger std, higher score
    p2 = bin_probabilities(phi, np.array([0.1, 0.1, 0.0, 0.2]), bins=4, lam=1.0, temperature=0.5)
    assert p2[3] > p2[0]
    # scores are relative to the mean error: rescaling the errors changes nothing
    np.testing.assert_allclose(bin_probabilities(phi, 10 * errors, 4, 1.0, 0.5), p)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"temperature": 0}, r"^bayesian\.temperature: must be > 0, got 0$"),
        ({"temperature": "hot"}, r"^bayesian\.temperature: must be > 0, got 'hot'$"),
        ({"lam": -1.0}, r"^bayesian\.lam: must be a number >= 0, got -1\.0$"),
        ({"lam": float("nan")}, r"^bayesian\.lam: must be a number >= 0, got nan$"),
        ({"bins": 0}, r"^bayesian\.bins: must be an integer >= 1, got 0$"),
        ({"bins": 2.5}, r"^bayesian\.bins: must be an integer >= 1, got 2\.5$"),
        ({"radius": "log"}, r"^bayesian\.radius: must be one of uniform, sqrt, volume, got 'log'$"),
        ({"bins": 20, "max_bins": 1000}, r"^bayesian\.bins: 20\*\*3 = 8000 angular bins for 4 coefficients exceed"),
    ],
)
def test_config_errors(change, message):
    C, errors = np.random.default_rng(0).random((10, 4)), np.ones(10)
    with pytest.raises(ValueError, match=message):
        propose(C, errors, 3, np.zeros(4), np.ones(4), dict(CFG, **change), seed=0)


def test_shape_errors():
    with pytest.raises(ValueError, match="lower < upper"):
        propose(np.zeros((3, 2)), np.ones(3), 2, [0, 1], [1, 1], CFG, seed=0)
    with pytest.raises(ValueError, match="errors"):
        propose(np.zeros((3, 2)), np.ones(4), 2, [0, 0], [1, 1], CFG, seed=0)
    with pytest.raises(ValueError, match=r"C \(3, 4\)"):
        propose(np.zeros((3, 4)), np.ones(3), 2, [0, 0], [1, 1], CFG, seed=0)
    with pytest.raises(ValueError, match="n_new"):
        propose(np.zeros((3, 2)), np.ones(3), -1, [0, 0], [1, 1], CFG, seed=0)


# --- sample_errors ----------------------------------------------------------------------------


def test_sample_errors():
    rng = np.random.default_rng(0)
    C = rng.random((12, 2))
    samples = frame(C)
    # softplus of a quadratic: the surrogate's own form, so its LOO errors are ~0
    exact = np.logaddexp(0.0, 0.3 + 0.5 * C[:, 0] ** 2 + 0.2 * C[:, 0] * C[:, 1])
    bumped = exact.copy()
    bumped[4] += 0.3  # one outlier in task t1
    # per-example losses around the target values, through the real metrics table builder
    examples = pd.DataFrame(
        [
            {"sample": s, "task": task, "correct": float(k % 2), "loss": v + d}
            for task, values in (("t0", exact), ("t1", bumped))
            for s, v in zip(samples["sample"], values)
            for k, d in enumerate((-0.05, 0.05))
        ]
    )
    metrics = metrics_from_examples(examples)
    errors = sample_errors(samples, metrics, ["t0", "t1"], SURROGATE, "loss")
    assert list(errors.index) == list(samples["sample"]) and errors.index.name == "sample"
    expected = (np.abs(loo_residuals(C, exact, "softplus")) + np.abs(loo_residuals(C, bumped, "softplus"))) / 2
    np.testing.assert_allclose(errors.to_numpy(), expected, atol=1e-9)
    assert np.abs(loo_residuals(C, exact, "softplus")).max() < 1e-4
    assert errors.idxmax() == "s0004" and errors["s0004"] > 0.1

    # missing values: refused by default, left out with missing=drop
    gappy = metrics[~((metrics["sample"] == "s0002") & (metrics["task"] == "t1"))]
    with pytest.raises(SurrogateError, match="no value for samples"):
        sample_errors(samples, gappy, ["t0", "t1"], SURROGATE, "loss")
    dropped = sample_errors(samples, gappy, ["t0", "t1"], dict(SURROGATE, missing="drop"), "loss")
    keep = samples["sample"] != "s0002"
    assert dropped["s0002"] == pytest.approx(abs(loo_residuals(C, exact, "softplus")[2]))
    t1 = np.abs(loo_residuals(C[keep], bumped[keep], "softplus"))
    assert dropped["s0004"] == pytest.approx((abs(loo_residuals(C, exact, "softplus")[4]) + t1[3]) / 2)

    with pytest.raises(SurrogateError, match="no link for metric 'f1'"):
        sample_errors(samples, metrics, ["t0", "t1"], SURROGATE, "f1")
    with pytest.raises(SurrogateError, match="leave-one-out errors need at least 7"):
        sample_errors(samples.iloc[:6], metrics, ["t0", "t1"], SURROGATE, "loss")


# --- the property: adaptive rounds sample the hard region and fit it better ------------------

HARD_FROM = 3 * np.pi / 8  # the hard sector: polar angle of c in [67.5, 90] degrees (near the c_1 axis)


def objective(C: np.ndarray) -> np.ndarray:
    """An 'accuracy' in (0, 1): smooth quadratic everywhere plus a Gaussian bump inside the hard sector only."""
    base = 0.2 + 0.5 * C[:, 0] + 0.3 * C[:, 1] - 0.4 * C[:, 0] ** 2 + 0.2 * C[:, 0] * C[:, 1]
    inside = np.clip((to_angles(C)[:, 0] - HARD_FROM) / 0.05, 0.0, 1.0)  # 0 outside, 1 from 70.4 degrees on
    bump = np.exp(-((C[:, 0] - 0.15) ** 2 + (C[:, 1] - 0.8) ** 2) / (2 * 0.15**2))
    return base + 0.3 * inside * bump


def hard(C: np.ndarray) -> np.ndarray:
    return to_angles(C)[:, 0] >= HARD_FROM


def surrogate_errors(C: np.ndarray, grid: np.ndarray) -> tuple[float, float, float]:
    """Global RMSE, RMSE inside the hard sector and max |error| on `grid` of the sigmoid-quadratic fit on C."""
    fit = fit_surrogate(C, objective(C), "sigmoid", loo=False)
    err = fit.predict(grid) - objective(grid)
    return float(np.sqrt(np.mean(err**2))), float(np.sqrt(np.mean(err[hard(grid)] ** 2))), float(np.abs(err).max())


def adaptive_run(seed: int, rounds: int = 5, n_new: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Bayesian rounds from the standard initial design, and a non-adaptive design of the same size."""
    tasks = ["t0", "t1"]
    sampler = {"kind": "sobol", "lower": 0.0, "upper": 1.0, "factor": 3.0, "include_special": True, "equal": 0.5}
    samples = design(tasks, sampler, seed).drop(columns="kind")
    for r in range(rounds):
        y = objective(samples[["c_t0", "c_t1"]].to_numpy())
        metrics = long_metrics(samples, {"t0": y, "t1": 1.0 - y}, "accuracy")
        errors = sample_errors(samples, metrics, tasks, SURROGATE, "accuracy")
        C = samples[["c_t0", "c_t1"]].to_numpy()
        new = propose(C, errors.to_numpy(), n_new, np.zeros(2), np.ones(2), CFG, seed=seed + r)
        samples = pd.concat([samples, frame(new, start=len(samples))], ignore_index=True)
    adaptive = samples[["c_t0", "c_t1"]].to_numpy()
    uniform = design(tasks, dict(sampler, min_points=len(adaptive)), seed)[["c_t0", "c_t1"]].to_numpy()
    return adaptive, uniform


def test_adaptive_rounds_beat_sobol_where_it_is_hard():
    """Five rounds of 6 after the 18-point design (48 points) against 48 special + Sobol points.

    The quadratic cannot represent the bump, so a noise-free space-filling design already fits the
    L2 projection onto quadratics, the fit with the least *global* RMSE: adaptive rounds, which
    weight the hard sector, cannot beat it there and cost a little (bounded below). What they buy is
    the error where the surrogate is wrong: inside the hard sector and in the worst case.
    """
    g = np.linspace(0.0, 1.0, 101)
    grid = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    rows = []
    for seed in range(3):
        adaptive, uniform = adaptive_run(seed)
        assert len(adaptive) == len(uniform) == 48
        rows.append(
            {
                "seed": seed,
                "frac_adaptive": hard(adaptive).mean(),
                "frac_uniform": hard(uniform).mean(),
                **dict(zip(["rmse_adaptive", "hard_rmse_adaptive", "max_adaptive"], surrogate_errors(adaptive, grid))),
                **dict(zip(["rmse_uniform", "hard_rmse_uniform", "max_uniform"], surrogate_errors(uniform, grid))),
            }
        )
    table = pd.DataFrame(rows).set_index("seed")
    print("\n" + table.round(4).to_string())  # pytest -s shows the figures
    mean = table.mean()
    assert mean.frac_uniform == pytest.approx(hard(grid).mean(), abs=0.05)  # ~21% of the box
    assert mean.frac_adaptive > 2 * mean.frac_uniform
    # Over seeds 0-11 (four triples) the mean ratios adaptive / uniform were: hard-sector RMSE
    # 0.84-0.86 (lower for every single seed), max error 0.88-0.95 (higher for 3 seeds of 12),
    # global RMSE 1.01-1.16; the bounds below leave room for that spread.
    assert (table.hard_rmse_adaptive < table.hard_rmse_uniform).all()
    assert mean.hard_rmse_adaptive < 0.92 * mean.hard_rmse_uniform
    assert mean.max_adaptive < mean.max_uniform
    assert mean.rmse_adaptive < 1.25 * mean.rmse_uniform  # the price in global RMSE stays bounded


def test_the_schemas_max_bins_default_is_the_samplers():
    """run/schema.py writes bayesian.max_bins' default as a literal (it does not import the sampler, which imports
    scipy, for the CLI's sake): the two must agree."""
    from mapmerge.core.bayesian import MAX_BINS
    from mapmerge.run.schema import Bayesian

    assert Bayesian.model_fields["max_bins"].default == MAX_BINS
