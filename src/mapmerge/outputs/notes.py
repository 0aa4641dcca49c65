"""What a user choosing from a front should be told: where the chosen merge comes from and where the box cuts the front.

The same lines go to report.md, `mapmerge status` and the end of a run (the Snakefile's onsuccess).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import pandas as pd

from mapmerge.core import groups
from mapmerge.core.metrics import suffixes
from mapmerge.core.refine import on_bounds
from mapmerge.core.selection import ABOVE_PRETRAINED, BALANCED_FLOOR
from mapmerge.io import ArtifactError, read_table, table_metadata
from mapmerge.layout import Layout

FRONT_SHARE = 0.1  # a bound is named for the front when at least this share of its points lie on it


RULES = {  # what a selection rule's score is (mapmerge.core.selection.point_scores), higher is better
    "weighted_sum": "the preference-weighted sum of the objective",
    "tchebycheff": "minus the weighted Tchebycheff regret over the candidates",
    "balanced": "minus the weighted regret of the gains from pretrained (0) to fine-tuned (1); -inf where {short}",
    ABOVE_PRETRAINED: "the preference-weighted sum of the objective; -inf where {below}",
}

# The unit the balanced rule and its fallbacks judge: a task, or (nested MAP's merged members) a member by the mean
# of its tasks' gains (mapmerge.core.selection.preference_scores).
GAIN = {False: "every weighted task's gain", True: "every weighted member's gain (the mean of its tasks')"}
BELOW = {
    False: "a task is at or below its pretrained model",
    True: "a member's tasks are on average at or below their pretrained models",
}
SHORT = {  # where balanced scores a point -inf: some weighted gain short of the floor
    False: f"a weighted task's gain is below {BALANCED_FLOOR:g}",
    True: f"a weighted member's gain (the mean of its tasks') is below {BALANCED_FLOOR:g}",
}
LEFT = {  # what a point leaves, after "some" or "a"
    False: "weighted task at or below its pretrained model",
    True: "weighted member's tasks on average at or below their pretrained models",
}
SHORT_LEFT = {  # what a point balanced scores -inf leaves, after "a"
    False: f"weighted task's gain below {BALANCED_FLOOR:g}",
    True: f"weighted member's gain (the mean of its tasks') below {BALANCED_FLOOR:g}",
}


def rule_score(rule: str, merged: bool = False) -> str:
    """What a point's score is under `rule`; `merged`: the members are merges of several tasks (nested MAP)."""
    return RULES[rule].format(below=BELOW[merged], short=SHORT[merged])


def fallback_note(rule: str, method: str, points: str, merged: bool = False) -> str:
    """Why the selection `method` (balanced) fell back to `rule` (mapmerge.core.selection.preference_scores) on a front
    of `points` (measured, predicted), and what a point's score then is; `merged` as for rule_score."""
    return (
        f"selection {rule} instead of {method}: no {points} point keeps {GAIN[merged]} at "
        f"{BALANCED_FLOOR:g} or more, so a {points} point's score is {rule_score(rule, merged)}"
        + ("" if rule == ABOVE_PRETRAINED else f" (every {points} point leaves some {LEFT[merged]})")
    )


def choice_note(choice: pd.Series, method: str, rule: str | None = None, merged: bool = False) -> list[str]:
    """Where the chosen merge comes from: the predicted pick, or a measured point and what it beat; then, on a line of
    its own, the score it was chosen by where that is not plain `method`'s on predictions (`method`: the selection
    rule; the rule that picked: a measured choice's `rule` column, else `rule`, where balanced fell back for the
    predicted pick, else `method`); `merged` as for rule_score."""
    measured = choice.get("source") == "measured"
    rule = str(choice.get("rule", rule or method))
    points = "measured" if measured else "predicted"
    score = [fallback_note(rule, method, points, merged)] if rule != method else []
    if not measured:
        return [
            "the chosen merge is the predicted front's pick for the preference (no refinement rounds): chosen on "
            "predictions (choice.parquet), then measured (measured_* in selected.parquet)",
            *score,
        ]
    score = score or [f"a measured point's score is {rule_score(rule, merged)} (selection {rule})"]
    where = f"{choice['sample']} ({choice['kind']} point of round {int(choice['round'])})"
    if choice["sample"] == choice["last_pick"]:
        return [
            f"the chosen merge is {where}: the last refinement round's predicted pick, measured; no other real "
            f"evaluation scores better for the preference (score {choice['score']:.4g})",
            *score,
        ]
    last = float(choice["last_pick_score"])
    beaten = (
        f"-inf for the last refinement round's predicted pick {choice['last_pick']}, which, measured, leaves a "
        f"{(SHORT_LEFT if rule == 'balanced' else LEFT)[merged]}"
        if last == -math.inf
        else f"{last:.4g} for the last refinement round's predicted pick {choice['last_pick']}, measured"
    )
    return [
        f"the chosen merge is the measured point {where}: it scores {choice['score']:.4g} for the preference, "
        f"against {beaten}",
        *score,
    ]


INTERVAL_KEY = "mapmerge.interval"  # selected.parquet's metadata: the level of the predictions' intervals


def interval_level(selected: str | os.PathLike) -> float | None:
    """The level of the prediction intervals (surrogate.interval) that selected.parquet records; None where it records
    none (a run aggregated before it did) or does not read (what reads the level only names it)."""
    try:
        return float(table_metadata(selected)[INTERVAL_KEY])
    except (ArtifactError, KeyError, ValueError):
        return None


def interval_line(level: float | None, shown: str = "`_lo`, `_hi`") -> str:
    """What the intervals `shown` are, naming their level where known."""
    named = f"{level:.0%} " if level is not None else ""
    return f"{shown}: the predictions' {named}prediction intervals (surrogate.interval), not measurements"


def box_notes(
    front: pd.DataFrame,
    samples: pd.DataFrame,
    choice: pd.Series,
    members: Sequence[str],
    member_tasks: Sequence[Sequence[str]] | None = None,
) -> list[str]:
    """Where the front or the chosen merge lies on a bound of the box it was searched in (the evaluated coefficients'
    range), naming the member and the bound; a member left out at 0 that is a merge of several tasks (nested MAP's
    `member_tasks`) names them. A front on a lower bound of 0 is not named (a task left out: the front's own edge), on
    any other bound it is."""
    columns = [f"c_{m}" for m in members]
    coef = samples[columns].to_numpy(dtype=float)
    lower, upper = coef.min(axis=0), coef.max(axis=0)
    shares = {(j, bound): share for j, bound, share in on_bounds(front[columns].to_numpy(dtype=float), lower, upper)}
    picked = {(j, bound) for j, bound, _ in on_bounds(choice[columns].to_numpy(dtype=float), lower, upper)}
    bounds = {"lower": lower, "upper": upper}
    left_out = {(j, "lower") for j in range(len(members)) if lower[j] == 0}  # the front's own edge: not named
    named = {key for key, share in shares.items() if share >= FRONT_SHARE and key not in left_out} | picked
    lines = []
    for j, bound in sorted(named):
        where = f"the {bound} bound c_{members[j]} = {bounds[bound][j]:g} of the box"
        share = shares.get((j, bound), 0.0)
        if (j, bound) in left_out:  # the pick
            tasks = member_tasks[j] if member_tasks is not None else [members[j]]
            unused = " (its task vector is left out" + (f": {', '.join(tasks)})" if len(tasks) > 1 else ")")
            lines.append(f"the chosen merge lies on {where}{unused}")
            continue
        if share >= FRONT_SHARE:
            also = "; the chosen merge too" if (j, bound) in picked else ""
            lead = f"{share:.0%} of the front lies on {where}{also}"
        else:  # the pick alone
            lead = f"the chosen merge lies on {where}"
        past = (
            "past it (refine.extend > 0 has the refinement rounds evaluate past it, up to refine.limit)"
            if bound == "upper"
            else "below it (a lower sampler.lower samples there)"
        )
        lines.append(f"{lead}: the front may go on {past}")
    return lines


def group_notes(results: str | os.PathLike, group: str) -> list[str]:
    """A finished group's notes: where its chosen merge comes from, the box's bounds on its front, and for a group
    of nested MAP above level 1 every task whose vector its merge leaves out."""
    layout = Layout(results)
    choice = read_table(layout.choice(group)).iloc[0]
    metadata = table_metadata(layout.choice(group))
    recorded = metadata.get("mapmerge.selection")
    method = json.loads(recorded)["method"] if recorded else "weighted_sum"
    front = read_table(layout.front(group))
    members = suffixes(front.columns, "c")
    plans = _plans(layout)
    member_tasks = plans[group]["member_tasks"] if group in plans else None
    merged = member_tasks is not None and any(len(tasks) > 1 for tasks in member_tasks)
    return [
        *choice_note(choice, method, metadata.get("mapmerge.rule"), merged),
        *box_notes(front, read_table(layout.samples(group)), choice, members, member_tasks),
        *(left_out_note(layout, plans, group) if group in plans and plans[group]["level"] > 1 else []),
    ]


def _plans(layout: Layout) -> dict[str, dict]:
    """Every planned group's plan (members, the tasks inside each), by name; empty for a run from before levels/."""
    return {
        group: groups.group_info(table, group)
        for plan in sorted(layout.levels.glob("level*.parquet"))
        for table in [read_table(plan)]
        for group in table["group"].dropna()  # a model passed up to the next level is a row without a group
    }


def left_out_note(layout: Layout, plans: Mapping[str, dict], group: str) -> list[str]:
    """Nested MAP: the tasks whose vectors the merge of `group` leaves out, where a group below it chose a member at
    coefficient 0 (one line, naming `group`'s own zeros too; none where only `group` chose one: box_notes names it)."""
    left, where, below, pending = [], [], False, [group]
    while pending:
        name = pending.pop(0)
        choice = read_table(layout.choice(name)).iloc[0]
        for member, inside in zip(plans[name]["members"], plans[name]["member_tasks"]):
            if float(choice[f"c_{member}"]) == 0:
                left += inside
                where.append(f"{', '.join(inside)} (c_{member} = 0 in group {name})")
                below = below or name != group
            elif member in plans:
                pending.append(member)
    if not below:
        return []
    total = len(plans[group]["tasks"])
    return [f"in all, the merge leaves out the task vectors of {len(left)} of its {total} tasks: {'; '.join(where)}"]


def final_notes(results: str | os.PathLike) -> list[str]:
    """The notes of a finished run's final group (the last row of selected.parquet), each line prefixed by it."""
    group = str(read_table(Layout(results).selected)["group"].iloc[-1])
    return [f"group {group}: {line}" for line in group_notes(results, group)]
