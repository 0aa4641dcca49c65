import numpy as np
import pandas as pd
import pytest

from mapmerge.core import groups
from mapmerge.core.sampling import sample_batches


def test_plain_and_bayesian_map_are_one_group_of_all_tasks():
    assert groups.structure("map", 3) == [["all"]] == groups.structure("bayesian", 3)
    plan = groups.plain_plan(["a", "b", "c"])
    info = groups.group_info(plan, "all")
    assert info["members"] == ["a", "b", "c"] == info["tasks"]
    assert info["member_tasks"] == [["a"], ["b"], ["c"]]
    with pytest.raises(ValueError, match="method: unknown method 'tree'"):
        groups.structure("tree", 2)


@pytest.mark.parametrize(
    ("n_tasks", "shape"),
    [(2, [1]), (3, [1, 1]), (5, [2, 1, 1]), (8, [4, 2, 1]), (9, [4, 2, 1, 1])],
)
def test_nested_tree_shape_depends_only_on_the_number_of_tasks(n_tasks, shape):
    levels = groups.structure("nested", n_tasks)
    assert [len(level) for level in levels] == shape
    assert levels[0][0] == "L1g0" and levels[-1] == [f"L{len(shape)}g0"]
    with pytest.raises(ValueError, match="at least 2 tasks"):
        groups.structure("nested", 1)


def test_candidates_are_tasks_and_groups_below():
    levels = groups.structure("nested", 5)
    assert groups.candidates(list("abcde"), levels, 1) == list("abcde")
    assert groups.candidates(list("abcde"), levels, 3) == [*"abcde", "L1g0", "L1g1", "L2g0"]


def test_closest_metric_pairs_first_and_the_odd_model_passes():
    # metrics 0.90, 0.50, 0.88, 0.52, 0.10: closest pairs are (a, c) at 0.02, then (b, d) at 0.02 -> a,c first
    # by model order; e (0.10) is left and passes up
    scores = {"a": 0.90, "b": 0.50, "c": 0.88, "d": 0.52, "e": 0.10}
    models = {m: [m] for m in scores}
    plan = groups.pair_plan(
        1, ["L1g0", "L1g1"], models, scores, groups.metric_distance(list(scores.values())), "metric"
    )
    rows = {None if pd.isna(g) else g: list(m) for g, m in zip(plan["group"], plan["members"])}
    assert rows == {"L1g0": ["a", "c"], "L1g1": ["b", "d"], None: ["e"]}
    assert list(plan.loc[plan["group"] == "L1g0", "member_score"].iloc[0]) == [0.90, 0.88]
    with pytest.raises(ValueError, match="make 2 pairs, the plan expects 1"):
        groups.pair_plan(1, ["L1g0"], models, scores, groups.metric_distance(list(scores.values())), "metric")


def test_cosine_pairing_takes_the_most_similar_vectors():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs, passed = groups.pair_greedily(list("abcd"), 1.0 - unit @ unit.T)  # distance: 1 - cosine
    assert pairs == [("a", "c"), ("b", "d")] and passed == []


def test_preference_propagates_as_sums_up_the_tree():
    preference = {"a": 3.0, "b": 1.0}  # c and d unnamed: weight 0
    weights = groups.task_weights(preference, ["a", "b", "c", "d"])
    assert weights == {"a": 3.0, "b": 1.0, "c": 0.0, "d": 0.0}
    info = {"member_tasks": [["a", "c"], ["b", "d"]]}
    sides = groups.side_weights(info, weights)
    assert [sum(s.values()) for s in sides] == [3.0, 1.0]  # a merged model weighs the sum of its tasks
    # its metric is the weighted mean over its tasks; equal weights where they are all zero
    assert groups.weighted_mean({"a": 0.8, "c": 0.4}, sides[0]) == pytest.approx(0.8)
    assert groups.weighted_mean({"c": 0.4, "d": 0.6}, {"c": 0.0, "d": 0.0}) == pytest.approx(0.5)
    assert groups.task_weights({}, ["a", "b"]) == {"a": 1.0, "b": 1.0}


def test_sample_batches_keep_earlier_batches_when_the_design_grows():
    ids = [f"s{i:04d}" for i in range(10)]
    small = sample_batches(ids, 4)
    assert small == {"b0000": ids[:4], "b0001": ids[4:8], "b0002": ids[8:]}
    grown = sample_batches([*ids, "s0010", "s0011", "s0012"], 4)
    assert grown["b0000"] == small["b0000"] and grown["b0001"] == small["b0001"]
    with pytest.raises(ValueError, match="evaluation.samples_per_job"):
        sample_batches(ids, 0)


def test_plan_level_pairs_the_most_similar_task_vectors(small_bench, tmp_path):
    from mapmerge.io import read_table, write_table
    from mapmerge.stages.plan_level import run_plan_level
    from mapmerge.stages.task_vectors import run_extract_task_vector
    from mapmerge.tensors.checkpoints import load_state_dict

    tasks = ["rot90", "invert", "flip_parity"]
    merge = {"merge": {"include": ["*"], "exclude": ["head.*"]}}
    vectors = {t: tmp_path / f"{t}.safetensors" for t in tasks}
    for t in tasks:
        run_extract_task_vector(
            merge,
            task=t,
            pretrained=small_bench / "pretrained.safetensors",
            finetuned=small_bench / f"{t}.safetensors",
            vector=vectors[t],
        )
    reference = pd.DataFrame({"model": tasks, "task": tasks, "metric": "accuracy", "value": [0.9, 0.8, 0.7]})
    write_table(reference, tmp_path / "reference.parquet", "evaluate_reference")
    params = {
        "method": "nested",
        "tasks": tasks,
        "nested": {"pairing": "cosine"},
        "objective": "accuracy",
        "groups": ["L1g0"],
    }
    run_plan_level(
        params, level=1, plan=tmp_path / "level1.parquet", reference=tmp_path / "reference.parquet", vectors=vectors
    )
    flat = {
        t: np.concatenate([v.numpy().ravel() for _, v in sorted(load_state_dict(p).items())])
        for t, p in vectors.items()
    }
    cos = {
        (a, b): flat[a] @ flat[b] / np.linalg.norm(flat[a]) / np.linalg.norm(flat[b])
        for a in tasks
        for b in tasks
        if a < b
    }
    plan = read_table(tmp_path / "level1.parquet")
    pair = plan.dropna(subset=["group"]).iloc[0]
    assert set(pair["members"]) == set(max(cos, key=cos.get))
    assert plan["pairing"].eq("cosine").all() and plan["group"].isna().sum() == 1
