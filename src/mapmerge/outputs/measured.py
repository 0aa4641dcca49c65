"""A group's real evaluations as the measured front sees them: its samples' and the chosen merge's.

After refinement rounds the chosen merge is one of the samples; without them (refine.rounds 0) it is the predicted
pick, evaluated for real by its own job (evaluate_selected), and leaving it out showed a point it dominates as
measured-optimal (measured.parquet, the plots, `mapmerge select`'s measured candidate).
"""

from __future__ import annotations

import math

import pandas as pd

CHOSEN = "chosen"  # the sample name and kind of the chosen merge's row where it is not a sample


def with_chosen_merge(evaluated: pd.DataFrame, choice: pd.DataFrame, real: pd.Series) -> pd.DataFrame:
    """`evaluated` (sample_metrics' rows) and, where the group's choice (choice.parquet) is not a measured sample, a
    row for the chosen merge: sample and kind CHOSEN, the last round's number, its coefficients and its real metrics
    (`real`: measured_metrics of its evaluation, indexed by metric and task; none where one failed)."""
    row = choice.iloc[0]
    metrics = {f"{metric}_{task}": float(value) for (metric, task), value in real.items()}
    if row.get("source") == "measured" or not all(map(math.isfinite, metrics.values())):
        return evaluated
    chosen = {"sample": CHOSEN, "kind": CHOSEN, "round": evaluated["round"].max() if len(evaluated) else 0}
    chosen |= metrics | {c: row[c] for c in choice.columns if c.startswith("c_")}
    added = pd.DataFrame([{c: chosen.get(c) for c in evaluated.columns}]).astype(evaluated.dtypes.to_dict())
    return pd.concat([evaluated, added], ignore_index=True)
