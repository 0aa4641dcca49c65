"""Refinement rounds' choices (mapmerge.core.refine) and the balanced selection rule, on hand-made fronts."""

import numpy as np
import pandas as pd
import pytest

from mapmerge.core import refine, selection
from mapmerge.core.groundtruth import spread_indices
from mapmerge.core.spread import spread_order
from mapmerge.io import write_table
from mapmerge.layout import Layout
from mapmerge.outputs.notes import box_notes, choice_note, fallback_note, interval_level, left_out_note

LOWER, UPPER = np.zeros(2), np.ones(2)


def line_front(n: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """A 2-task front: c = (t, 1 - t), accuracies (t, 1 - t)."""
    t = np.linspace(0.0, 1.0, n)
    C = np.column_stack([t, 1 - t])
    return C, C.copy()


def test_spread_order_starts_at_an_end_and_takes_the_farthest_next():
    _, F = line_front()
    order = spread_order(F)
    assert sorted(order) == list(range(11))
    assert list(order[:3]) == [0, 10, 5]  # lowest in the first column, the other end, the middle
    assert list(spread_indices(F, 3)) == [0, 5, 10]  # validation's K points: the same order, sorted


def test_a_round_is_the_pick_then_front_points_skipping_what_was_evaluated():
    C, F = line_front()
    evaluated = np.array([C[10], C[5] + 1e-5])  # one end, and (within the gap) the middle
    points, kinds = refine.round_points(C, F, [3], 3, evaluated, F[[10, 5]], LOWER, UPPER)
    assert kinds == ["pick", "front", "front", "front"]
    np.testing.assert_array_equal(points[0], C[3])
    chosen = [int(np.flatnonzero((C == p).all(axis=1))[0]) for p in points]
    assert chosen[:2] == [3, 0] and 10 not in chosen and 5 not in chosen and len(set(chosen)) == 4


def test_front_points_go_where_the_measured_front_has_none_yet():
    C, F = line_front()
    # the measured front covers the lower half (t <= 0.5): every front point the round takes lies in the upper half
    reached = F[:6] - 0.01
    points, kinds = refine.round_points(C, F, [0], 3, np.zeros((0, 2)), reached, LOWER, UPPER)
    chosen = [int(np.flatnonzero((C == p).all(axis=1))[0]) for p in points]
    assert chosen[0] == 0 and kinds[0] == "pick"
    assert chosen[1] == 10 and all(i > 5 for i in chosen[1:])  # the end farthest from what was measured first


def test_coverage_takes_the_point_that_most_lowers_the_mean_distance():
    C, F = line_front()  # 11 evenly spaced points
    chosen = {}
    for order, box in (("gap", None), ("cover", (C, F))):  # cover with the front itself: `coverage`
        nothing = np.zeros((0, 2))
        points, _ = refine.round_points(C, F, [0], 1, nothing, nothing, LOWER, UPPER, order=order, box=box)
        chosen[order] = [int(np.flatnonzero((C == p).all(axis=1))[0]) for p in points]
    # beside the pick at one end: gap takes the other end (the largest distance), coverage point 7 (distances to the
    # nearest of {0, j} summed over the 11 points: least for j = 7)
    assert chosen == {"gap": [0, 10], "cover": [0, 7]}


def test_cover_goes_where_the_box_has_most_non_dominated_merges():
    C, F = line_front()  # NSGA-III's front: 11 points evenly spread
    # the box's predicted non-dominated merges crowd near t = 0.8 (as many merges of a box can be non-dominated in
    # one region of the front): cover takes a point there, where gap and coverage take the far end and the middle
    t = np.concatenate([np.linspace(0.75, 0.85, 20), [0.0, 1.0]])
    box = (np.column_stack([t, 1 - t]), np.column_stack([t, 1 - t]))
    nothing = np.zeros((0, 2))
    points, kinds = refine.round_points(C, F, [0], 1, nothing, nothing, LOWER, UPPER, order="cover", box=box)
    assert kinds == ["pick", "front"] and 0.75 <= points[1, 0] <= 0.85
    # the measured front already there: the next point goes elsewhere
    points, _ = refine.round_points(C, F, [0], 1, nothing, box[1][:20], LOWER, UPPER, order="cover", box=box)
    assert not 0.7 <= points[1, 0] <= 0.9
    with pytest.raises(ValueError, match="order 'cover' takes the box"):
        refine.round_points(C, F, [0], 1, nothing, nothing, LOWER, UPPER, order="cover")


def test_the_box_front_is_the_non_dominated_part_of_a_seeded_sobol_sample():
    from mapmerge.core.pareto import non_dominated, sample_front

    def predict(X):  # two tasks trading off along c_0 - c_1, both better with c_0 + c_1 up to 1
        return np.column_stack([X[:, 0] - X[:, 1] ** 2, X[:, 1] - X[:, 0] ** 2])

    C, F = sample_front(predict, LOWER, UPPER, [True, True], 256, seed=3)
    again, _ = sample_front(predict, LOWER, UPPER, [True, True], 256, seed=3)
    np.testing.assert_array_equal(C, again)
    assert 5 < len(C) < 256 and len(non_dominated(F, [True, True])) == len(F)
    np.testing.assert_allclose(F, predict(C))
    assert not np.array_equal(C, sample_front(predict, LOWER, UPPER, [True, True], 256, seed=4)[0])


def test_other_picks_come_right_after_the_pick_and_are_skipped_when_evaluated():
    C, F = line_front()
    points, kinds = refine.round_points(C, F, [0, 4, 0], 2, C[[7]], F[[7]], LOWER, UPPER)
    chosen = [int(np.flatnonzero((C == p).all(axis=1))[0]) for p in points]
    assert chosen[:2] == [0, 4] and kinds == ["pick", "front", "front"] and 7 not in chosen


def test_a_front_evaluated_everywhere_gives_a_short_round():
    C, F = line_front(3)
    points, kinds = refine.round_points(C, F, [0], 5, C[1:], F[1:], LOWER, UPPER)
    assert kinds == ["pick"] and len(points) == 1


def test_fits_are_corrected_once_a_refinement_round_is_among_the_samples():
    design = pd.DataFrame({"sample": ["s0000"], "kind": ["sobol"], "round": [0]})
    assert not refine.corrected("kernel", design) and not refine.corrected("kernel", design.drop(columns="kind"))
    rounds = pd.concat([design, pd.DataFrame({"sample": ["r01s0000"], "kind": ["pick"], "round": [1]})])
    assert refine.corrected("kernel", rounds) and not refine.corrected("none", rounds)


def test_round_size_counts_the_pick_the_front_points_and_the_points_past_the_box():
    assert refine.front_points({"points": None, "extend": 0.0}, 4) == 7  # half P of 4 members (15), rounded down
    assert refine.front_points({"points": None, "extend": 0.0}, 2) == 3
    assert refine.round_size({"points": 6, "extend": 0.0}, 4) == 7
    assert refine.round_size({"points": 6, "extend": 0.5}, 4) == 11


def test_on_bounds_names_each_coefficient_and_bound_with_its_share():
    C = np.array([[0.0, 0.5], [0.999, 0.5], [0.5, 1.0], [0.5, 0.2]])
    found = refine.on_bounds(C, LOWER, UPPER)
    assert found == [(0, "lower", 0.25), (0, "upper", 0.25), (1, "upper", 0.25)]
    assert refine.on_bounds(np.array([0.5, 0.5]), LOWER, UPPER) == []


def test_extended_points_raise_each_coefficient_on_the_upper_bound_up_to_the_limit():
    none = np.zeros((0, 3))
    points = refine.extended_points(np.array([1.0, 0.3, 1.0]), np.zeros(3), np.ones(3), 0.5, 1.2, none)
    np.testing.assert_allclose(points, [[1.2, 0.3, 1.0], [1.0, 0.3, 1.2]])
    assert len(refine.extended_points(np.array([0.5, 0.3]), LOWER, UPPER, 0.5, 2.0, none[:, :2])) == 0
    evaluated = np.array([[1.2, 0.3, 1.0]])  # one of them evaluated already: only the other is new
    kept = refine.extended_points(np.array([1.0, 0.3, 1.0]), np.zeros(3), np.ones(3), 0.5, 1.2, evaluated)
    np.testing.assert_allclose(kept, [[1.0, 0.3, 1.2]])


def four_points() -> tuple[pd.DataFrame, dict]:
    """Three tasks; the pretrained model scores 0.2 on each, the fine-tuned ones 0.9."""
    front = pd.DataFrame(
        {
            "accuracy_a": [0.90, 0.60, 0.50, 0.89],
            "accuracy_b": [0.90, 0.60, 0.50, 0.88],
            "accuracy_c": [0.21, 0.55, 0.50, 0.10],
        }
    )
    info = {"members": ["a", "b", "c"], "tasks": ["a", "b", "c"], "member_tasks": [["a"], ["b"], ["c"]]}
    return front, info


def test_an_equal_preference_gives_up_a_task_under_weighted_sum_but_not_when_balanced():
    front, info = four_points()
    reference = {t: (0.2, 0.9) for t in "abc"}
    ws, _, _ = selection.pick_point(front, info, None, "accuracy", "weighted_sum")
    balanced, _, _ = selection.pick_point(front, info, None, "accuracy", "balanced", 0.05, reference)
    assert ws == 0 and front["accuracy_c"][ws] < 0.25  # task c left at about the pretrained model's 0.2
    assert balanced == 1  # every task's gain at least (0.55 - 0.2) / 0.7 = 0.5


def test_balanced_judges_nested_maps_merged_member_by_its_tasks_mean_gain():
    """A merged member is judged by the mean of its tasks' gains, weighted by the sum of their weights (the rule
    docs/performance.md measured against judging every task: no better on the 6- and 8-task benchmarks): row 0
    keeps the member (a, b) at a mean gain of 0.49 with b below its pretrained model, row 1 every task at 0.36 or
    more, and row 0's weighted regret 2/3 (1 - 0.493) is the smaller (row 1's 2/3 (1 - 0.429))."""
    front = pd.DataFrame({"accuracy_a": [0.90, 0.50], "accuracy_b": [0.19, 0.50], "accuracy_c": [0.90, 0.45]})
    info = {"members": ["L1g0", "c"], "tasks": ["a", "b", "c"], "member_tasks": [["a", "b"], ["c"]]}
    reference = {t: (0.2, 0.9) for t in "abc"}
    index, weights, rule = selection.pick_point(front, info, None, "accuracy", "balanced", 0.05, reference)
    assert (index, rule) == (0, "balanced") and weights == pytest.approx({"L1g0": 2 / 3, "c": 1 / 3})
    plain = {"members": ["a", "b", "c"], "tasks": ["a", "b", "c"], "member_tasks": [["a"], ["b"], ["c"]]}
    assert selection.pick_point(front, plain, None, "accuracy", "balanced", 0.05, reference)[0] == 1


def test_balanced_follows_the_preference_and_needs_the_reference():
    front, info = four_points()
    reference = {t: (0.2, 0.9) for t in "abc"}
    assert selection.pick_point(front, info, {"a": 1, "b": 1}, "accuracy", "balanced", 0.05, reference)[0] == 0
    with pytest.raises(ValueError, match="needs the reference models' metrics"):
        selection.pick_point(front, info, None, "accuracy", "balanced")


def test_balanced_keeps_a_lightly_weighted_task_at_the_floor_where_a_point_does():
    """The demo's `--prefer rot90=2,invert=1`: row 0 is a's fine-tuned model with b at chance (gain 0.09), row 1 keeps
    both at 0.126 or more. Row 0's weighted regret, 1/3 x 0.91, is the larger (row 1's 1/3 x 0.874), but the rho
    term (0.05 x the regrets' sum: 0.015 against 0.029) made it the pick; a point below the floor now scores -inf
    while one keeps every weighted task at the floor, and a task without weight is not judged."""
    front = pd.DataFrame({"accuracy_a": [0.90, 0.60], "accuracy_b": [0.2636, 0.2882], "accuracy_c": [0.9, 0.2]})
    info = {"members": ["a", "b", "c"], "tasks": ["a", "b", "c"], "member_tasks": [["a"], ["b"], ["c"]]}
    reference = {t: (0.2, 0.9) for t in "abc"}
    prefer = {"a": 2, "b": 1}
    scores, _, rule = selection.preference_scores(front, info, prefer, "accuracy", "balanced", 0.05, reference)
    assert rule == "balanced" and np.isneginf(scores[0]) and np.isfinite(scores[1])
    regret = selection.preference_scores(front, info, prefer, "accuracy", "balanced", 0.05, reference, -np.inf)[0]
    assert int(np.argmax(regret)) == 0  # without the floor: the rho term's pick
    assert selection.pick_point(front, info, prefer, "accuracy", "balanced", 0.05, reference)[0] == 1
    assert selection.pick_point(front, info, {"a": 1}, "accuracy", "balanced", 0.05, reference)[0] == 0


def test_gains_run_from_the_pretrained_to_the_fine_tuned_model_for_loss_too():
    np.testing.assert_allclose(selection.gains(np.array([0.2, 0.55, 0.9]), 0.2, 0.9, True), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(selection.gains(np.array([2.0, 1.0, 0.0]), 2.0, 0.0, False), [0.0, 0.5, 1.0])


def test_a_task_its_fine_tuned_model_does_not_gain_on_is_weighed_like_the_others():
    """Its gain is 1 at the pretrained model's value and falls by 1 per the other tasks' median span: a merge that
    keeps it there gives nothing up, one a hair above it is not worth giving up the other tasks for."""
    front, info = four_points()
    front.loc[4] = [0.30, 0.30, 0.56]  # a and b barely past the pretrained model, c 0.06 above its 0.5
    reference = {"a": (0.2, 0.9), "b": (0.2, 0.9), "c": (0.5, 0.5)}
    gain = selection.task_gains({t: front[f"accuracy_{t}"].to_numpy() for t in "abc"}, reference, True)
    np.testing.assert_allclose(gain["c"], 1 + (front["accuracy_c"] - 0.5) / 0.7)
    np.testing.assert_allclose(gain["a"], (front["accuracy_a"] - 0.2) / 0.7)
    index, _, rule = selection.pick_point(front, info, None, "accuracy", "balanced", 0.05, reference)
    assert rule == "balanced" and index == 0  # the worst gain, c's 1 - 0.29 / 0.7 = 0.59, is the highest worst gain
    front.loc[0, "accuracy_c"] = 0.05  # now c loses 0.45 there: row 1 keeps every gain at 0.57 or more
    assert selection.pick_point(front, info, None, "accuracy", "balanced", 0.05, reference)[0] == 1


def test_a_tiny_gain_weighs_a_task_between_the_two_rules():
    """A fine-tune that gains a hair (0 < span < SMALL_GAIN of the median span) no longer makes every loss on its task
    count span-fold: the gains move continuously from the no-gain rule (span 0) to the usual gains (at SMALL_GAIN)."""
    values = np.array([0.5, 0.45, 0.4])
    threshold = selection.SMALL_GAIN * 0.7

    def gain(c_span: float) -> np.ndarray:
        reference = {"a": (0.2, 0.9), "b": (0.2, 0.9), "c": (0.5, 0.5 + c_span)}
        return selection.task_gains({"a": np.array([0.5]), "b": np.array([0.5]), "c": values}, reference, True)["c"]

    np.testing.assert_allclose(gain(1e-9), gain(0.0), atol=1e-6)  # no cliff at 0: 1e-9 was a billion-fold
    np.testing.assert_allclose(gain(threshold * (1 - 1e-9)), gain(threshold), atol=1e-6)  # none at the threshold
    np.testing.assert_allclose(gain(threshold), (values - 0.5) / threshold, atol=1e-9)  # the usual gains from there on
    np.testing.assert_allclose(gain(0.001), 1 + (values - 0.501) / (0.7 - 0.9 * 0.001 / selection.SMALL_GAIN))
    at = [gain(s) for s in np.linspace(0, threshold, 30)]
    assert all(np.all(np.diff(g) < 0) for g in at)  # each falls with the value lost...
    assert np.all(np.diff([g[-1] for g in at]) < 0)  # ...and a loss costs more as the span grows towards the usual


def test_task_gains_for_a_loss_and_where_no_task_gains():
    reference = {"a": (2.0, 1.0), "b": (1.0, 1.5)}  # a loss: a's fine-tune halves it, b's makes it worse
    gain = selection.task_gains({"a": np.array([2.0, 1.0]), "b": np.array([1.0, 1.5, 0.5])}, reference, False)
    np.testing.assert_allclose(gain["a"], [0.0, 1.0])
    np.testing.assert_allclose(gain["b"], [1.0, 0.5, 1.5])  # per a's span of 1
    gain = selection.task_gains({"b": np.array([1.0, 1.25])}, reference, False)
    np.testing.assert_allclose(gain["b"], [1.0, 0.75])  # per 1 of the metric: no task has a span


def test_the_measured_front_keeps_the_non_dominated_real_evaluations():
    measured = pd.DataFrame(
        {"sample": ["s0", "s1", "s2"], "accuracy_a": [0.9, 0.5, 0.4], "accuracy_b": [0.1, 0.6, 0.5]}
    )
    front = selection.measured_front(measured, "accuracy", ["a", "b"])
    assert list(front["sample"]) == ["s0", "s1"]


def test_the_notes_say_where_the_merge_comes_from_and_where_the_box_cuts_the_front():
    members = ["a", "b"]
    samples = pd.DataFrame({"c_a": [0.0, 1.0, 0.5], "c_b": [0.0, 1.0, 0.5]})
    front = pd.DataFrame({"c_a": [1.0, 1.0, 0.3], "c_b": [0.2, 0.0, 0.9]})
    choice = pd.Series({"c_a": 1.0, "c_b": 0.0, "source": "measured", "sample": "r01s0002", "kind": "front"})
    choice = pd.concat([choice, pd.Series({"round": 1, "score": 0.6, "last_pick": "r02s0000", "last_pick_score": 0.5})])
    lines = box_notes(front, samples, choice, members)
    assert lines == [
        "67% of the front lies on the upper bound c_a = 1 of the box; the chosen merge too: the front may go on past "
        "it (refine.extend > 0 has the refinement rounds evaluate past it, up to refine.limit)",
        "the chosen merge lies on the lower bound c_b = 0 of the box (its task vector is left out)",
    ]
    on_top = box_notes(front, samples, pd.concat([choice.drop("c_b"), pd.Series({"c_b": 1.0})]), members)
    assert on_top[-1] == (  # the pick alone on a bound the front leaves (c_b = 1): no share of 0% said
        "the chosen merge lies on the upper bound c_b = 1 of the box: the front may go on past it (refine.extend > 0 "
        "has the refinement rounds evaluate past it, up to refine.limit)"
    )
    # a lower bound other than 0 (sampler.lower) is the box's, not the front's own edge: named for the front too
    raised = samples.assign(c_b=[0.3, 1.0, 0.5])
    assert box_notes(
        front.assign(c_b=[0.3, 0.3, 0.9]), raised, pd.concat([choice.drop("c_b"), pd.Series({"c_b": 0.9})]), members
    )[-1] == (
        "67% of the front lies on the lower bound c_b = 0.3 of the box: the front may go on below it (a lower "
        "sampler.lower samples there)"
    )
    # a member of nested MAP that merges several tasks is named by them
    assert box_notes(front, samples, choice, members, [["a"], ["b", "c"]])[1].endswith(
        "(its task vector is left out: b, c)"
    )
    assert choice_note(choice, "balanced") == [
        "the chosen merge is the measured point r01s0002 (front point of round 1): it scores 0.6 for the preference, "
        "against 0.5 for the last refinement round's predicted pick r02s0000, measured",
        "a measured point's score is minus the weighted regret of the gains from pretrained (0) to fine-tuned (1); "
        "-inf where a weighted task's gain is below 0.1 (selection balanced)",
    ]
    short = choice_note(
        pd.concat([choice.drop("last_pick_score"), pd.Series({"last_pick_score": -np.inf})]), "balanced"
    )
    assert short[0].endswith(
        "against -inf for the last refinement round's predicted pick r02s0000, which, measured, "
        "leaves a weighted task's gain below 0.1"
    )
    predicted = choice_note(pd.Series({"c_a": 1.0}), "weighted_sum")  # no rounds, no fallback: no score line
    assert len(predicted) == 1 and "chosen on predictions" in predicted[0]


def test_a_nested_merge_names_every_task_it_leaves_out_at_any_level(tmp_path):
    """left_out_note walks the tree down from a group through its members chosen above 0: every member chosen at 0 on
    the way is named with its tasks and the group that chose it; a member at 0 hides what lies below it."""
    layout = Layout(tmp_path)

    def plan(level, members, member_tasks):
        return {"level": level, "members": members, "member_tasks": member_tasks, "tasks": sum(member_tasks, [])}

    plans = {
        "L1g0": plan(1, ["a", "b"], [["a"], ["b"]]),
        "L1g1": plan(1, ["c", "d"], [["c"], ["d"]]),
        "L2g0": plan(2, ["L1g0", "L1g1"], [["a", "b"], ["c", "d"]]),
        "L3g0": plan(3, ["L2g0", "e"], [["a", "b", "c", "d"], ["e"]]),
    }

    def choose(**coefficients):
        for group, values in coefficients.items():
            row = {f"c_{m}": v for m, v in zip(plans[group]["members"], values)}
            write_table(pd.DataFrame([row]), layout.choice(group), stage="merge_group")

    choose(L1g0=(0.0, 0.7), L1g1=(0.5, 0.0), L2g0=(0.4, 0.6), L3g0=(0.8, 0.0))
    assert left_out_note(layout, plans, "L3g0") == [
        "in all, the merge leaves out the task vectors of 3 of its 5 tasks: e (c_e = 0 in group L3g0); "
        "a (c_a = 0 in group L1g0); d (c_d = 0 in group L1g1)"
    ]
    assert left_out_note(layout, plans, "L2g0") == [
        "in all, the merge leaves out the task vectors of 2 of its 4 tasks: a (c_a = 0 in group L1g0); "
        "d (c_d = 0 in group L1g1)"
    ]
    choose(L2g0=(0.0, 0.6))  # L1g0 left out whole: its own zero is not named again
    assert left_out_note(layout, plans, "L3g0") == [
        "in all, the merge leaves out the task vectors of 4 of its 5 tasks: e (c_e = 0 in group L3g0); "
        "a, b (c_L1g0 = 0 in group L2g0); d (c_d = 0 in group L1g1)"
    ]
    choose(L1g1=(0.5, 0.3), L2g0=(0.4, 0.6))  # only L3g0's own zero: box_notes names it, no line here
    choose(L1g0=(0.2, 0.7))
    assert left_out_note(layout, plans, "L3g0") == []


def test_balanced_falls_back_to_weighted_sum_when_every_point_gives_a_task_up():
    front, info = four_points()
    reference = {"a": (0.2, 0.9), "b": (0.2, 0.9), "c": (0.6, 0.9)}  # c's gain is below 0 everywhere
    front.loc[1, "accuracy_c"] = 0.55
    scores, _, rule = selection.preference_scores(front, info, None, "accuracy", "balanced", 0.05, reference)
    assert rule == "weighted_sum" and int(np.argmax(scores)) == 0  # not the least merge: the best weighted sum
    _, _, rule = selection.preference_scores(front, info, {"a": 1, "b": 1}, "accuracy", "balanced", 0.05, reference)
    assert rule == "balanced"  # c has no weight: a and b keep their gains


def test_balanced_falls_back_to_the_weighted_sum_above_pretrained_where_a_point_gains_on_every_task():
    front, info = four_points()  # the best weighted sum, row 0, puts c below its pretrained model
    front.loc[2, ["accuracy_a", "accuracy_b", "accuracy_c"]] = [0.70, 0.65, 0.545]
    reference = {"a": (0.2, 0.9), "b": (0.2, 0.9), "c": (0.54, 0.9)}  # c gains in rows 1 and 2 only: 0.028, 0.014
    scores, _, rule = selection.preference_scores(front, info, None, "accuracy", "balanced", 0.05, reference)
    assert rule == selection.ABOVE_PRETRAINED and int(np.argmax(scores)) == 2  # not balancing's row 1, nor row 0
    assert np.isneginf(scores[[0, 3]]).all() and np.isfinite(scores[[1, 2]]).all()
    index, _, _ = selection.pick_point(front, info, None, "accuracy", "balanced", 0.05, reference)
    balancing, _, _ = selection.preference_scores(front, info, None, "accuracy", "balanced", 0.05, reference, -np.inf)
    assert index == 2 and int(np.argmax(balancing)) == 1
    reference["c"] = (0.56, 0.9)  # no point above c's pretrained model: the weighted sum over every point
    scores, _, rule = selection.preference_scores(front, info, None, "accuracy", "balanced", 0.05, reference)
    assert rule == "weighted_sum" and int(np.argmax(scores)) == 0
    chosen = pd.Series(
        {
            "source": "measured",
            "sample": "r02s0001",
            "kind": "front",
            "round": 2,
            "rule": selection.ABOVE_PRETRAINED,
            "score": 1.93,
            "last_pick": "r02s0000",
            "last_pick_score": -np.inf,
        }
    )
    assert choice_note(chosen, "balanced") == [
        "the chosen merge is the measured point r02s0001 (front point of round 2): it scores 1.93 for the preference, "
        "against -inf for the last refinement round's predicted pick r02s0000, which, measured, leaves a weighted task "
        "at or below its pretrained model",  # a score of -inf said in words
        "selection weighted_sum_above_pretrained instead of balanced: no measured point keeps every weighted task's "
        "gain at 0.1 or more, so a measured point's score is the preference-weighted sum of the objective; -inf where "
        "a task is at or below its pretrained model",
    ]
    assert choice_note(chosen, "balanced", merged=True) == [  # nested MAP's merged members: their tasks' mean gain
        "the chosen merge is the measured point r02s0001 (front point of round 2): it scores 1.93 for the preference, "
        "against -inf for the last refinement round's predicted pick r02s0000, which, measured, leaves a weighted "
        "member's tasks on average at or below their pretrained models",
        "selection weighted_sum_above_pretrained instead of balanced: no measured point keeps every weighted member's "
        "gain (the mean of its tasks') at 0.1 or more, so a measured point's score is the preference-weighted sum of "
        "the objective; -inf where a member's tasks are on average at or below their pretrained models",
    ]
    assert fallback_note("weighted_sum", "balanced", "predicted", merged=True).endswith(
        "(every predicted point leaves some weighted member's tasks on average at or below their pretrained models)"
    )


def test_trust_region_stays_within_the_radius_and_the_box_and_follows_its_seed():
    lower, upper = np.array([0.0, 0.0, 0.5]), np.array([1.0, 2.0, 1.5])
    center = np.array([0.05, 1.0, 1.45])  # near the first lower and the third upper bound
    points = refine.trust_region(center, lower, upper, 0.1, (0, 1))
    assert points.shape == (refine.TRUST_POINTS, 3)
    assert (np.abs(points - center) <= 0.1 * (upper - lower) + 1e-12).all()
    assert (points >= lower).all() and (points <= upper).all()
    assert (points[:, 0] == 0.0).any() and (points[:, 2] == 1.5).any()  # clipped to the box
    assert np.ptp(points[:, 1]) > 0.3  # spread over the radius (0.2 of a width of 2), not at the centre
    np.testing.assert_array_equal(points, refine.trust_region(center, lower, upper, 0.1, (0, 1)))
    assert not np.array_equal(points, refine.trust_region(center, lower, upper, 0.1, (0, 2)))


def test_the_intervals_level_is_read_where_recorded_and_none_elsewhere(tmp_path):
    """select, plot and the report only name the level: a table without it, or one that does not read, gives None."""
    frame = pd.DataFrame({"group": ["all"]})
    write_table(frame, tmp_path / "recorded.parquet", "aggregate", extra={"mapmerge.interval": "0.8"})
    write_table(frame, tmp_path / "before.parquet", "aggregate")  # aggregated before the level was recorded
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 torn")
    assert interval_level(tmp_path / "recorded.parquet") == 0.8
    assert [interval_level(tmp_path / f"{n}.parquet") for n in ("before", "torn", "missing")] == [None, None, None]
