"""Bayesian MAP on 2 tasks, run for real with Snakemake: an initial design and rounds of proposed
samples, all kept and fitted; one more round runs only that round."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import job_counts, run, snakemake_command
from mapmerge.core import pareto
from mapmerge.core.metrics import sample_metrics
from mapmerge.io import read_table
from mapmerge.tools.cli import main
from test_methods import COMMON

pytestmark = pytest.mark.slow
TASKS = ["rot90", "flip_parity"]

BAYES = [
    "name=bayes",
    "method=bayesian",
    "benchmark.tasks=[rot90, flip_parity]",
    "evaluation.samples_per_job=9",
    *(s for s in COMMON if not s.startswith("sampler.factor=")),  # its design's own: bayesian.initial_factor
    "refine.rounds=0",  # Bayesian rounds alone (after COMMON, which sets one refinement round)
]


@pytest.fixture(scope="module")
def bayes(tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("bayes")
    run(snakemake_command(workdir, overrides=[*BAYES, "bayesian.rounds=1"]))
    return workdir, run(snakemake_command(workdir, overrides=[*BAYES, "bayesian.rounds=2"]))[1]


def test_bayesian_rounds_are_kept_and_all_fitted(bayes):
    workdir, more_rounds = bayes
    results = workdir / "results" / "bayes"
    samples = read_table(results / "groups" / "all" / "samples.parquet")
    # round 0: max(1.5 * 6, 6 + 2) = 9 points; rounds 1 and 2: ceil(0.5 * 6) = 3 each
    assert samples.groupby("round").size().to_dict() == {0: 9, 1: 3, 2: 3}
    assert samples["sample"].is_unique
    fit = read_table(results / "groups" / "all" / "surrogate.parquet")
    assert (fit["n_samples"] == 15).all()
    metrics = read_table(results / "groups" / "all" / "metrics.parquet")
    assert set(metrics["sample"]) == set(samples["sample"])
    # one more round: only that round is proposed and evaluated; rounds 0 and 1 are kept
    jobs = job_counts(more_rounds)
    assert jobs.get("propose_round") == 1 and jobs.get("evaluate_round") == 1 and "evaluate_sample" not in jobs
    ledger = read_table(results / "evaluations.parquet")
    assert ledger.groupby("stage")["models"].sum().to_dict() == {
        "evaluate_reference": 3,
        "evaluate_sample": 9,
        "evaluate_round": 6,
        "evaluate_selected": 1,
    }


def test_the_measured_front_holds_the_chosen_merges_real_evaluation(bayes, capsys, tmp_path):
    """Without refinement rounds the chosen merge is the predicted pick, evaluated for real by evaluate_selected: it is
    one of the run's real evaluations, so the measured front (measured.parquet) and select's measured candidate hold
    it (sample `chosen`) where no sample dominates it, and leave out the samples it dominates."""
    results = bayes[0] / "results" / "bayes"
    group = results / "groups" / "all"
    evaluated = sample_metrics(read_table(group / "samples.parquet"), read_table(group / "metrics.parquet"))
    chosen = read_table(results / "selected.parquet").iloc[-1]
    real = {t: chosen[f"measured_accuracy_{t}"] for t in TASKS}
    assert "source" not in chosen.index  # the predicted pick
    everything = pd.concat(
        [evaluated, pd.DataFrame([{"sample": "chosen", **{f"accuracy_{t}": real[t] for t in TASKS}}])],
        ignore_index=True,
    )
    kept = pareto.non_dominated(everything[[f"accuracy_{t}" for t in TASKS]].to_numpy(), [True] * len(TASKS))
    measured = read_table(results / "measured.parquet")
    assert sorted(measured["sample"]) == sorted(everything["sample"].iloc[kept])
    if "chosen" in set(measured["sample"]):
        row = measured.set_index("sample").loc["chosen"]
        assert row["kind"] == "chosen" and row["round"] == evaluated["round"].max()
        assert [row[f"accuracy_{t}"] for t in TASKS] == [real[t] for t in TASKS]
        assert [row[f"c_{t}"] for t in TASKS] == [chosen[f"c_{t}"] for t in TASKS]
    # select with the run's own preference: its measured candidate is the best of the measured front, the chosen
    # merge among them, never a sample that the chosen merge dominates
    prefer = ["--prefer", "rot90=1,flip_parity=1"]  # the run's own: equal weights
    assert main(["select", str(results), *prefer, "--out", str(tmp_path / "pick.safetensors")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("measured (real evaluation)"))
    assert line.split()[3] in set(measured["sample"])


def test_bayesian_rounds_sample_inside_the_box_and_differ_from_the_design(bayes):
    results = bayes[0] / "results" / "bayes"
    samples = read_table(results / "groups" / "all" / "samples.parquet")
    C = samples[["c_rot90", "c_flip_parity"]].to_numpy()
    assert ((C >= 0) & (C <= 1)).all()
    assert len(np.unique(C.round(9), axis=0)) == len(C)
    assert (samples.loc[samples["round"] > 0, "kind"] == "bayesian").all()


def test_refinement_rounds_after_bayesian_ones_count_trust_from_from_the_first_refinement_round(tmp_path):
    # rounds 1-2 are Bayesian, 3-4 refinement rounds 1-2: trust_from=2 puts round 4's pick, not round 3's, in the
    # trust region (each job's params, in the shell command a dry run prints)
    overrides = [*BAYES, "bayesian.rounds=2", "refine.rounds=2", "refine.trust_from=2"]
    _, out = run(snakemake_command(tmp_path, "-n", "-p", overrides=overrides))
    radius = {
        wildcards["round"]: params["stage"]["refine"]["trust_radius"]
        for wildcards, params in (
            (spec["wildcards"], spec["params"])
            for spec in map(json.loads, re.findall(r"mapmerge\.run\.job \S+ '(\{.*?\})'", out))
            if spec["rule"] == "refine_round"
        )
    }
    assert radius == {"03": None, "04": 0.1}
