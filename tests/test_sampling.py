import numpy as np
import pytest

from mapmerge.core.quadratic import n_params
from mapmerge.core.sampling import design, design_size

SOBOL = {
    "kind": "sobol",
    "lower": 0.0,
    "upper": 1.0,
    "factor": 1.5,
    "min_points": 0,
    "include_special": True,
    "equal": 0.5,
}


@pytest.mark.parametrize("n_tasks", [2, 3, 4, 8])
def test_design_covers_box_with_enough_points(n_tasks):
    tasks = [f"t{i}" for i in range(n_tasks)]
    frame = design(tasks, SOBOL, seed=0)
    C = frame[[f"c_{t}" for t in tasks]].to_numpy()
    assert len(frame) == design_size(n_tasks, SOBOL) >= 1.5 * n_params(n_tasks)
    assert C.min() >= 0.0 and C.max() <= 1.0
    assert frame["sample"].is_unique
    rows = {tuple(r) for r in C}
    assert tuple(np.zeros(n_tasks)) in rows and tuple(np.full(n_tasks, 0.5)) in rows
    for i in range(n_tasks):
        assert tuple(np.eye(n_tasks)[i]) in rows
    # the space-filling part reaches every corner region of the box
    fill = C[frame["kind"] == "sobol"]
    assert (fill.min(axis=0) < 0.25).all() and (fill.max(axis=0) > 0.75).all()


def test_design_is_seeded_and_sobol_prefix_is_stable():
    tasks = ["a", "b", "c"]
    one = design(tasks, SOBOL, seed=3)
    assert one.equals(design(tasks, SOBOL, seed=3))
    assert not one.equals(design(tasks, SOBOL, seed=4))
    more = design(tasks, {**SOBOL, "factor": 3.0}, seed=3)
    # growing the design keeps every earlier sample (same id, same coefficients): no re-evaluation
    assert more.iloc[: len(one)].equals(one)


def test_lhs_and_box_and_errors():
    frame = design(["a", "b"], {**SOBOL, "kind": "lhs", "lower": -0.5, "upper": 1.5, "min_points": 20}, seed=0)
    assert len(frame) == 20
    C = frame[["c_a", "c_b"]].to_numpy()
    assert C.min() >= -0.5 and C.max() <= 1.5
    with pytest.raises(ValueError, match="sampler.kind: unknown kind 'grid'"):
        design(["a", "b"], {**SOBOL, "kind": "grid"}, seed=0)
    with pytest.raises(ValueError, match="lower"):
        design(["a", "b"], {**SOBOL, "lower": 1.0}, seed=0)


def test_the_design_holds_its_special_points_and_rounds_its_size_as_written():
    assert design_size(3, {**SOBOL, "factor": 0.2}) == 5  # ceil(2), but the origin, 3 single tasks and all equal
    assert len(design(["a", "b", "c"], {**SOBOL, "factor": 0.2}, seed=0)) == 5
    assert design_size(3, {**SOBOL, "factor": 0.2, "include_special": False}) == 2
    assert design_size(3, {**SOBOL, "factor": 1.1}) == 11  # 1.1 x 10 in floating point is 11.000000000000002
    assert design_size(3, {**SOBOL, "factor": 0.6}) == 6
