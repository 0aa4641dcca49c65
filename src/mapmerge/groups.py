"""Grouping of tasks into MAP problems: plain MAP is one group holding every task."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

METHODS = ("map",)
PLAIN_GROUP = "all"


def plan_groups(method: str, tasks: Sequence[str]) -> pd.DataFrame:
    """One row per group: group, level, members (the task vectors merged), tasks (the tasks evaluated)."""
    if method not in METHODS:
        raise ValueError(f"method: unknown method '{method}'; known: {', '.join(METHODS)}")
    return pd.DataFrame({"group": [PLAIN_GROUP], "level": [0], "members": [list(tasks)], "tasks": [list(tasks)]})
