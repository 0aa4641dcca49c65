import pytest

from mapmerge.groups import PLAIN_GROUP, plan_groups
from mapmerge.stages import sample_batches


def test_plain_map_is_one_group_of_all_tasks():
    table = plan_groups("map", ["a", "b", "c"])
    assert table["group"].tolist() == [PLAIN_GROUP]
    assert list(table["members"].iloc[0]) == ["a", "b", "c"] == list(table["tasks"].iloc[0])
    with pytest.raises(ValueError, match="method: unknown method 'nested'"):
        plan_groups("nested", ["a", "b"])


def test_sample_batches_keep_earlier_batches_when_the_design_grows():
    ids = [f"s{i:04d}" for i in range(10)]
    small = sample_batches(ids, 4)
    assert small == {"b0000": ids[:4], "b0001": ids[4:8], "b0002": ids[8:]}
    grown = sample_batches([*ids, "s0010", "s0011", "s0012"], 4)
    assert grown["b0000"] == small["b0000"] and grown["b0001"] == small["b0001"]
    with pytest.raises(ValueError, match="evaluation.samples_per_job"):
        sample_batches(ids, 0)
