"""How far the surrogates' predictions at the chosen merge and at each round's pick are from the real values.

Reads a finished run folder (a group that ran refinement rounds: `make demo`'s results/demo by default) and prints,
side by side for the quadratic alone and the quadratic with the local correction (surrogate.correction):

- the chosen merge (choice.parquet): mean over tasks of |predicted - measured|, with the surrogates fitted on
  every real evaluation (`in-sample`: what choice.parquet and the report show) and on every real evaluation but
  the chosen one's (`held out`: what the fit would have said before evaluating it);
- each refinement round's pick: the prediction of the fit on the evaluations before that round (what the round
  itself saw when it chose the pick), against the pick's measurement.

    .venv/bin/python benchmarks/pick_error.py [results/demo] [--group all]

The metric is optimizer.objective as recorded in the choice's metadata (accuracy unless the run says otherwise).
Its last line: `chosen in-sample <q> / <c>  held-out <q> / <c>  picks <q> / <c>` (quadratic / corrected).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from mapmerge.core.metrics import sample_metrics, suffixes
from mapmerge.core.surrogate import fit_surrogate
from mapmerge.io import read_table
from mapmerge.layout import Layout


def fitted_error(
    train: pd.DataFrame, target: pd.Series, members: list[str], columns: list[str], correct: bool
) -> float:
    """Mean over tasks of |prediction - measurement| at `target`, the surrogates fitted on `train` (sigmoid link)."""
    C = train[[f"c_{m}" for m in members]].to_numpy(dtype=float)
    c = target[[f"c_{m}" for m in members]].to_numpy(dtype=float)
    errors = []
    for column in columns:
        fit = fit_surrogate(C, train[column].to_numpy(dtype=float), "sigmoid", loo=False, correct=correct)
        errors.append(abs(float(fit.predict(c)) - float(target[column])))
    return float(np.mean(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default="results/demo", type=Path)
    parser.add_argument("--group", default="all")
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args()
    layout = Layout(args.results)
    samples, metrics = read_table(layout.samples(args.group)), read_table(layout.metrics(args.group))
    members = suffixes(samples.columns, "c")
    measured = sample_metrics(samples, metrics)
    tasks = list(dict.fromkeys(metrics["task"]))
    columns = [f"{args.metric}_{t}" for t in tasks]
    choice = read_table(layout.choice(args.group)).iloc[0]
    chosen = measured.set_index("sample").loc[str(choice["sample"])]
    stored = float(np.mean([abs(float(choice[c]) - float(chosen[c])) for c in columns]))
    print(f"{args.results} group {args.group}: {len(measured)} evaluated samples, tasks {', '.join(tasks)}")
    print(f"chosen merge {choice['sample']} ({choice['kind']}, round {choice['round']})")
    print(f"  as stored in choice.parquet (the run's own surrogates, in-sample): {stored:.4f}")
    rows = []
    held = measured[measured["sample"] != choice["sample"]]
    target = chosen.copy()
    for name, correct in (("quadratic", False), ("corrected", True)):
        inside = fitted_error(measured, target, members, columns, correct)
        out = fitted_error(held, target, members, columns, correct)
        picks = []
        for _, pick in measured[measured["kind"] == "pick"].iterrows():
            before = measured[measured["round"] < pick["round"]]
            picks.append(fitted_error(before, pick, members, columns, correct and (before["round"] > 0).any()))
        rows.append((name, inside, out, picks))
        print(
            f"  {name:9s}: chosen in-sample {inside:.4f}, held out {out:.4f}; round picks, as each round saw them:"
            f" {', '.join(f'{p:.4f}' for p in picks)} (mean {np.mean(picks):.4f})"
        )
    (_, qi, qo, qp), (_, ci, co, cp) = rows
    print(
        f"chosen in-sample {qi:.4f} / {ci:.4f}  held-out {qo:.4f} / {co:.4f}  picks {np.mean(qp):.4f} / {np.mean(cp):.4f}"
    )


if __name__ == "__main__":
    main()
