"""How far the surrogates' predictions at the chosen merge and at each round's pick are from the real values.

Reads a finished run folder (a group that ran refinement rounds: `make demo`'s results/demo by default) and prints,
side by side for the quadratic alone, the quadratic with the local correction (surrogate.correction) and, where the
group's evaluations hold class scores (surrogate.scores; accuracy only), the class scores' quadratics:

- the chosen merge (choice.parquet): mean over tasks of |predicted - measured|, with the surrogates fitted on
  every real evaluation (`in-sample`: what choice.parquet and the report show) and on every real evaluation but
  the chosen one's (`held out`: what the fit would have said before evaluating it);
- each refinement round's pick: the prediction of the fit on the evaluations before that round (what the round
  itself saw when it chose the pick), against the pick's measurement.

    .venv/bin/python benchmarks/pick_error.py [results/demo] [--group all]

The metric is optimizer.objective as recorded in the choice's metadata (accuracy unless the run says otherwise).
Its last line: `chosen in-sample <q> / <c>  held-out <q> / <c>  picks <q> / <c>` (quadratic / corrected), each with
` / <s>` (class scores) appended where they were fitted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from mapmerge.core.class_scores import fit_scores, scores_of
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


def scores_error(
    examples: pd.DataFrame, train: pd.DataFrame, target: pd.Series, members: list[str], tasks: list[str]
) -> float:
    """Mean over tasks of |prediction - measurement| of accuracy at `target`, the class scores' quadratics fitted on
    `train`'s evaluations."""
    C = train[[f"c_{m}" for m in members]].to_numpy(dtype=float)
    c = target[[f"c_{m}" for m in members]].to_numpy(dtype=float)[None]
    errors = []
    for task in tasks:
        model = fit_scores(C, *scores_of(examples, train["sample"].tolist(), task))
        errors.append(abs(float(model.predict(c)[0]) - float(target[f"accuracy_{task}"])))
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
    examples = pd.concat([read_table(p) for p in sorted(layout.evals(args.group).glob("*.parquet"))])
    readings = {
        "quadratic": lambda train, at: fitted_error(train, at, members, columns, False),
        # corrected once a round is among the samples, as the workflow's fits are
        "corrected": lambda train, at: fitted_error(train, at, members, columns, bool((train["round"] > 0).any())),
    }
    if "scores" in examples and args.metric == "accuracy":
        readings["scores"] = lambda train, at: scores_error(examples, train, at, members, tasks)
    for name, error in readings.items():
        inside, out = error(measured, target), error(held, target)
        picks = [
            error(measured[measured["round"] < pick["round"]], pick)
            for _, pick in measured[measured["kind"] == "pick"].iterrows()
        ]
        rows.append((name, inside, out, picks))
        print(
            f"  {name:9s}: chosen in-sample {inside:.4f}, held out {out:.4f}; round picks, as each round saw them:"
            f" {', '.join(f'{p:.4f}' for p in picks)} (mean {np.mean(picks):.4f})"
        )
    inside, out, picks = (
        " / ".join(f"{v:.4f}" for v in values) for values in zip(*((r[1], r[2], np.mean(r[3])) for r in rows))
    )
    print(f"chosen in-sample {inside}  held-out {out}  picks {picks}")


if __name__ == "__main__":
    main()
