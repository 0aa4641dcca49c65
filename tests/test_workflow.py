"""The whole workflow, run for real with Snakemake on a small built-in benchmark in a temporary folder."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, build_once, copy_run, edit_a_function, job_counts, snakemake_command, stages_from
from mapmerge.builtin.model import build_model
from mapmerge.core.class_scores import fit_scores, scores_of
from mapmerge.io import read_table, table_metadata
from mapmerge.outputs.report import HTML_TABLES
from mapmerge.run import evaluation_cache
from mapmerge.tensors.checkpoints import load_state_dict
from mapmerge.tools.cli import main as cli

pytestmark = pytest.mark.slow

BASE = [
    "name=wf",
    "benchmark.tasks=[rot90, flip_parity]",
    "benchmark.width=8",
    "benchmark.pretrain_epochs=10",
    "benchmark.finetune_epochs=6",
    "sampler.factor=2",
    "optimizer.pop_size=60",
    "optimizer.n_gen=60",
    "refine.rounds=1",  # one round shows them all (two: test_example, test_bad_input's finished run)
]
TASKS = ["rot90", "flip_parity"]


def snakemake(
    workdir: Path, *args: str, overrides: list[str] = (), check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    cmd = snakemake_command(workdir, *args, overrides=[*BASE, *overrides])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def finished_run(tmp_path_factory) -> Path:
    """The working folder of a finished run of BASE, made once per test session (test_slurm compares its SLURM run
    with it); read-only."""
    return build_once(tmp_path_factory, "workflow_wf", snakemake)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """This module's copy of the finished run, for the tests that read it or only plan on it (snakemake -n)."""
    return copy_run(finished_run(tmp_path_factory), tmp_path_factory.mktemp("workflow") / "run")


@pytest.fixture
def own_run(tmp_path_factory, tmp_path) -> Path:
    """A copy of the finished run for one test that runs snakemake on it: no other test sees what it changes."""
    return copy_run(finished_run(tmp_path_factory), tmp_path / "run")


def results(workdir: Path) -> Path:
    return workdir / "results" / "wf"


def test_every_stage_writes_its_artifact(run):
    res = results(run)
    for rel in [
        "benchmark.parquet",
        "task_vectors.parquet",
        "reference.parquet",
        "groups.parquet",
        "pareto.parquet",
        "selected.parquet",
        "report.md",
        "plots/front_2d.png",
        "plots/front_parallel.png",
        "groups/all/samples.parquet",
        "groups/all/metrics.parquet",
        "groups/all/surrogate.parquet",
        "groups/all/front.parquet",
        "groups/all/merged.safetensors",
        "checkpoints/pretrained.safetensors",
    ]:
        assert (res / rel).is_file(), rel
    samples = read_table(res / "groups/all/samples.parquet")
    assert len(samples) >= 1.5 * 6 and [c for c in samples if c.startswith("c_")] == [f"c_{t}" for t in TASKS]
    metrics = read_table(res / "groups/all/metrics.parquet")
    assert set(metrics.columns) == {"sample", "task", "metric", "value", "error"} and metrics["error"].isna().all()
    assert len(metrics) == len(samples) * len(TASKS) * 2
    evals = sorted((res / "groups/all/evals").glob("*.parquet"))
    examples = read_table(evals[0])
    assert {"sample", "task", "example", "correct", "loss"} <= set(examples.columns)
    meta = table_metadata(res / "groups/all/surrogate.parquet")
    assert meta["mapmerge.stage"] == "fit_surrogate" and "metrics.parquet" in meta["mapmerge.inputs"]


def test_the_report_counts_the_measured_front_and_shows_the_plots(run):
    res = results(run)
    report = (res / "report.md").read_text()
    measured = read_table(res / "measured.parquet")
    assert (
        f"- measured front: {len(measured)} of the evaluated merges, those no other one dominates: "
        f"{res.relative_to(run) / 'measured.parquet'}\n" in report
    )
    # the intervals' level, which select and plot read back from selected.parquet (they read no config)
    assert table_metadata(res / "selected.parquet")["mapmerge.interval"] == "0.9"
    assert "`_lo`, `_hi`: the predictions' 90% prediction intervals (surrogate.interval), not measurements\n" in report
    # the chosen merge is a measured point (refinement rounds): its evaluate_selected table is not counted again
    ledger = read_table(res / "evaluations.parquet")
    assert read_table(res / "selected.parquet")["source"].tolist() == ["measured"]
    assert (
        f"Real model evaluations in all: {ledger['models'].sum() - 1} models, "
        f"{ledger['task_evaluations'].sum() - 2} (model, task) evaluations (a chosen merge that is a measured point "
        "counted once: evaluate_selected's table repeats rows evaluated before).\n" in report
    )
    images = re.findall(r"^!\[(.+)\]\((.+)\)$", report, flags=re.MULTILINE)  # what aggregate drew, 2 tasks
    assert images == [("front_parallel.png", "plots/front_parallel.png"), ("front_2d.png", "plots/front_2d.png")]
    assert all((res / path).is_file() for _, path in images) and report.endswith(")\n")


def test_the_single_models_and_the_fits_follow_the_runs_task_order(run):
    # reference.parquet's rows are sorted by model (flip_parity first); the report's table keeps rot90, flip_parity
    lines = (results(run) / "report.md").read_text().split("## Single models (real evaluations)\n\n")[1].splitlines()
    assert lines[0] == "| model | " + " | ".join(f"{m}_{t}" for m in ("accuracy", "loss") for t in TASKS) + " |"
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| pretrained", *(f"| {t}" for t in TASKS)]
    fit = (results(run) / "report.md").read_text().split("Surrogate fit per task and metric:\n\n")[1].splitlines()
    assert [line.split(" | ")[:2] for line in fit[2:6]] == [[f"| {t}", m] for t in TASKS for m in ("accuracy", "loss")]


def test_front_and_choice(run):
    res = results(run)
    front = read_table(res / "groups/all/front.parquet")
    assert {f"c_{t}" for t in TASKS} | {f"accuracy_{t}" for t in TASKS} | {f"loss_{t}" for t in TASKS} <= set(
        front.columns
    )
    assert len(front) >= 10
    C = front[[f"c_{t}" for t in TASKS]].to_numpy()
    assert C.min() >= 0 and C.max() <= 1
    # NSGA-III agrees with a dense grid on the surrogate (T = 2)
    assert float(table_metadata(res / "groups/all/front.parquet")["mapmerge.grid_igd"]) < 0.02
    selected = read_table(res / "selected.parquet")
    assert len(selected) == 1
    for task in TASKS:
        measured = selected[f"measured_accuracy_{task}"].iloc[0]
        assert 0 <= measured <= 1
        assert abs(measured - selected[f"accuracy_{task}"].iloc[0]) < 0.3  # predicted and measured are close-ish


def test_merged_checkpoint_is_the_chosen_merge(run):
    res = results(run)
    selected = read_table(res / "selected.parquet")
    merged = load_state_dict(res / "groups/all/merged.safetensors")
    pre = load_state_dict(res / "checkpoints/pretrained.safetensors")
    module = build_model(width=8)
    module.load_state_dict(merged)  # loads back into the model, strict
    name = "features.0.weight"
    expected = pre[name].clone()
    for task in TASKS:
        tau = load_state_dict(res / f"task_vectors/{task}.safetensors")
        expected += float(selected[f"c_{task}"].iloc[0]) * tau[name]
    torch.testing.assert_close(merged[name], expected)
    torch.testing.assert_close(merged["head.weight"], pre["head.weight"])


def test_second_run_has_nothing_to_do(run):
    assert "Nothing to be done" in snakemake(run, "-n").stdout


def planned_reasons(output: str) -> dict[str, list[str]]:
    """rule -> the `reason:` line of each of its jobs in a dry run's plan."""
    reasons, rule = {}, None
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif line.startswith("    reason: ") and rule:
            reasons.setdefault(rule, []).append(line.removeprefix("    reason: "))
    return reasons


# Snakemake gives a job that follows an updated input that reason only: evaluate_selected's params
# change with evaluate.py too, but it reruns after merge_group anyway.
@pytest.mark.parametrize(
    "module, rules, kept",
    [
        # a later stage's code: the evaluations on disk are kept
        (
            "outputs/plots.py",
            {"aggregate"},
            {"evaluate_reference", "evaluate_sample", "evaluate_selected", "fit_surrogate", "merge_group"},
        ),
        (
            "stages/evaluation.py",
            {"evaluate_reference", "evaluate_sample"},
            {"prepare_benchmark", "extract_task_vector", "plan_level", "sample_coefficients"},
        ),
    ],
)
def test_a_code_change_reruns_the_stages_that_run_it(run, tmp_path, module, rules, kept):
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "mapmerge", src / "mapmerge", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(src)}
    # the copy wins over the editable install (a .pth path entry, which comes after PYTHONPATH on sys.path)
    where = subprocess.run(
        [sys.executable, "-c", "import mapmerge; print(mapmerge.__file__)"], env=env, capture_output=True, text=True
    )
    assert Path(where.stdout.strip()).is_relative_to(src), where.stdout + where.stderr
    edit_a_function(src / "mapmerge" / module)
    reasons = planned_reasons(snakemake(run, "-n", env=env).stdout)
    assert {
        r for r, lines in reasons.items() if any("Params have changed since last execution" in x for x in lines)
    } == rules
    assert reasons.keys().isdisjoint(kept)
    # every other planned job follows one that reruns
    assert all(
        "Input files updated by another job" in x
        for r, lines in reasons.items()
        if r not in rules | {"all"}
        for x in lines
    )


REFINED = {"refine_round", "evaluate_round"} | stages_from("collect_metrics")  # the refinement rounds and what follows


# One override per kind of change, each a dry run (a snakemake start): tests/test_config.py checks in-process which
# stages every setting reaches (selection, evaluation.on_error, surrogate.missing, ...).
@pytest.mark.parametrize(
    "override, expected",
    [
        # the refinement rounds fit with the links, predict the front and pick for the preference: what changes
        # those reruns the rounds and their evaluations too
        ("surrogate.links.accuracy=identity", stages_from("fit_surrogate") | REFINED),
        ("optimizer.n_gen=30", stages_from("pareto_front") | REFINED),
        ("+preference.rot90=3", stages_from("merge_group") | REFINED),
        ("surrogate.loo=false", stages_from("fit_surrogate")),
        # the group's evaluations drop the class scores: they rerun (the reference models' do not), and all after
        ("surrogate.scores=none", {"evaluate_sample"} | REFINED),
        ("refine.rounds=2", REFINED),  # one more round: the earlier ones and the design are kept
        ("refine.order=gap", REFINED),  # other round points, from the first round on
        ("refine.trust_from=1", REFINED),  # the pick in the trust region from the first round on
        ("evaluation.device=cpu", set()),
    ],
)
def test_a_change_reruns_only_what_follows(run, override, expected):
    jobs = job_counts(snakemake(run, "-n", overrides=[override]).stdout)
    assert set(jobs) - {"all"} == expected


def test_the_rounds_order_and_trust_radius_choose_other_points_and_keep_the_design(own_run):
    res = results(own_run)
    design = sorted((res / "groups/all/evals").glob("b*.parquet"))
    assert design  # the design's batches
    before = {p: p.stat().st_mtime_ns for p in design}
    cover = read_table(res / "groups/all/rounds/r01.parquet")
    proc = snakemake(own_run, "--until", "refine_round", overrides=["refine.order=gap"])
    assert job_counts(proc.stdout + proc.stderr) == {"refine_round": 1}  # only the round's choice, here
    gap = read_table(res / "groups/all/rounds/r01.parquet")
    assert {p: p.stat().st_mtime_ns for p in design} == before
    columns = [c for c in cover.columns if c.startswith("c_")]
    # the same pick (the same design, fit and rule), other front points
    assert cover["kind"].tolist()[0] == gap["kind"].tolist()[0] == "pick"
    np.testing.assert_array_equal(cover[columns].iloc[0], gap[columns].iloc[0])
    assert not np.array_equal(cover[columns].iloc[1:].to_numpy(), gap[columns].iloc[1:].to_numpy())
    # refine.trust_radius from round 1 on: another pick, within the radius (of the box's width) of a measured merge
    proc = snakemake(own_run, "--until", "refine_round", overrides=["refine.trust_from=1"])
    assert job_counts(proc.stdout + proc.stderr) == {"refine_round": 1}
    trusted = read_table(res / "groups/all/rounds/r01.parquet")
    assert {p: p.stat().st_mtime_ns for p in design} == before
    assert trusted["kind"].tolist()[0] == "pick"
    pick = trusted[columns].iloc[0].to_numpy()
    assert not np.allclose(pick, cover[columns].iloc[0].to_numpy())
    measured = read_table(res / "groups/all/rounds/r00.parquet")[columns].to_numpy()
    width = measured.max(axis=0) - measured.min(axis=0)
    assert (np.abs(measured - pick) <= 0.1 * width + 1e-12).all(axis=1).any()


def test_prune_removes_the_batches_and_rounds_an_earlier_setting_left(own_run, capsys):
    """Fewer rounds and larger batches leave the earlier setting's files in place (Snakemake does not delete a file
    that is no longer an output): status counts them apart, prune removes them and drops their kept tables, and the
    run then has nothing left to do."""
    res = results(own_run)
    assert sorted(p.name for p in (res / "groups/all/evals").glob("*.parquet")) == [
        "b0000.parquet",
        "b0001.parquet",  # 12 design merges, 8 per job
        "r01b0000.parquet",
    ]
    smaller = ["refine.rounds=0", "evaluation.samples_per_job=12"]
    snakemake(own_run, overrides=smaller)
    left = ["groups/all/evals/b0001.parquet", "groups/all/evals/r01b0000.parquet", "groups/all/rounds/r01.parquet"]
    places = {p: p.read_text() for p in (res / evaluation_cache.FOLDER).glob(f"*{evaluation_cache.PLACE}")}
    assert {"groups/all/evals/b0001.parquet", "groups/all/evals/r01b0000.parquet"} <= set(places.values())
    assert cli(["status", str(res)]) == 0
    out = capsys.readouterr().out
    assert "2 batches, 1 of them left from an earlier setting (the run's ledger does not list them;" in out
    assert "pick and front points: 1, 1 of them left from an earlier setting (the run's ledger lists none of" in out
    rounds = next(line for line in out.splitlines() if line.startswith("evaluate_round "))
    assert rounds.endswith(
        "1 batch, 1 of them left from an earlier setting (the run's ledger does not list them; "
        "`mapmerge prune` removes them)"
    ), rounds  # not counted against a round table: it has none
    assert next(line for line in out.splitlines() if line.split()[:1] == ["all"]).split()[2:4] == ["1", "1"]
    assert cli(["prune", str(res), "--dry-run"]) == 0
    assert "would remove 2 evaluation batches, 1 round table left from an earlier setting" in capsys.readouterr().out
    assert all((res / name).exists() for name in left)
    logs = ["evaluate_sample/all/b0001.log", "evaluate_round/all/01/0000.log", "refine_round/all/01.log"]
    assert all((res / "logs" / name).exists() for name in logs)
    assert cli(["prune", str(res)]) == 0
    out = capsys.readouterr().out
    assert "removed 2 evaluation batches, 1 round table left from an earlier setting (evaluations.parquet " in out
    assert "no job of the run reads them), with 3 job logs: groups/all/evals/b0001.parquet, " in out
    assert not any((res / name).exists() for name in left)
    assert not any((res / "logs" / name).exists() for name in logs)  # and their jobs' logs
    assert (res / "logs/evaluate_sample/all/b0000.log").exists()
    kept = {p: p.read_text() for p in (res / evaluation_cache.FOLDER).glob(f"*{evaluation_cache.PLACE}")}
    assert not set(kept.values()) & set(left)  # their kept tables are dropped
    assert job_counts(snakemake(own_run, "-n", overrides=smaller).stdout) == {}  # nothing the run needs is gone
    assert cli(["status", str(res)]) == 0
    assert "left from an earlier setting" not in capsys.readouterr().out


def test_the_chosen_measured_merge_is_not_evaluated_again(own_run):
    """After refinement the chosen merge is a measured point: its job takes that point's rows (no engine built), and
    writes the table a fresh evaluation of it writes, byte for byte."""
    res = results(own_run)
    choice = read_table(res / "groups/all/choice.parquet")
    assert choice["source"].iloc[0] == "measured"
    log = (res / "logs/evaluate_selected/all.log").read_text()
    assert f"took the chosen merge's rows from its evaluation as {choice['sample'].iloc[0]} (" in log
    assert "evaluation.placement" not in log  # the engine's line: not built
    table = res / "groups/all/selected_evals.parquet"
    taken = table.read_bytes()
    fresh = ["evaluation.cache=false"]  # evaluates every job it runs
    snakemake(own_run, "--forcerun", "evaluate_selected", "--until", "evaluate_selected", overrides=fresh)
    assert "evaluation.placement" in (res / "logs/evaluate_selected/all.log").read_text()
    assert table.read_bytes() == taken


def test_rerun_after_a_change_keeps_evaluations(own_run):
    res = results(own_run)
    evals = sorted((res / "groups/all/evals").glob("*.parquet")) + [res / "reference.parquet"]
    before = {p: p.stat().st_mtime_ns for p in evals}
    snakemake(own_run, overrides=["surrogate.loo=false"])
    assert {p: p.stat().st_mtime_ns for p in evals} == before
    assert np.isnan(read_table(res / "groups/all/surrogate.parquet")["loo_rmse"]).all()


def test_a_rerun_round_gets_its_evaluations_back_from_the_cache(own_run):
    """A round that reruns (as after a change to the fit's code) and chooses the same merges costs no evaluation."""
    res = results(own_run)
    tables = sorted((res / "groups/all/evals").glob("r01b*.parquet"))
    logs = sorted((res / "logs/evaluate_round").rglob("*.log"))
    assert tables and len(logs) == len(tables)
    before = {p: p.read_bytes() for p in tables}
    proc = snakemake(own_run, "--forcerun", "refine_round", "--until", "evaluate_round")
    assert job_counts(proc.stdout + proc.stderr) == {"refine_round": 1, "evaluate_round": len(tables)}
    assert {p: p.read_bytes() for p in tables} == before
    for log in logs:
        text = log.read_text()
        assert "restored" in text and "from the evaluation cache" in text and "run_evaluate_round" not in text
    # evaluation.cache=false evaluates them again, to the same tables
    snakemake(own_run, "--forcerun", "refine_round", "--until", "evaluate_round", overrides=["evaluation.cache=false"])
    assert {p: p.read_bytes() for p in tables} == before
    assert all("done run_evaluate_round" in log.read_text() for log in logs)


def test_reference_models_evaluated_again_on_rewritten_vectors_come_back_from_the_cache(own_run):
    """Task vectors extracted again to the same bytes (as after a change to the extraction's code) cost no
    evaluation of the reference models: both their tables come back from the cache."""
    res = results(own_run)
    tables = [res / "reference.parquet", res / "reference_examples.parquet"]
    before = {p: p.read_bytes() for p in tables}
    proc = snakemake(own_run, "--forcerun", "extract_task_vector", "--until", "evaluate_reference")
    assert job_counts(proc.stdout + proc.stderr) == {"extract_task_vector": 2, "evaluate_reference": 1}
    assert {p: p.read_bytes() for p in tables} == before
    log = (res / "logs/evaluate_reference.log").read_text()
    assert log.count("from the evaluation cache") == 2 and "run_evaluate_reference" not in log


def test_the_accuracy_comes_from_the_class_scores_of_the_groups_evaluations(run):
    res = results(run)
    assert "scores" not in read_table(res / "reference_examples.parquet")  # kept for the group's evaluations only
    group = res / "groups/all"
    examples = pd.concat([read_table(p) for p in sorted((group / "evals").glob("*.parquet"))], ignore_index=True)
    assert {"scores", "target"} <= set(examples.columns) and len(examples["scores"].iloc[0]) == 10
    samples = read_table(group / "samples.parquet")
    columns = [f"c_{t}" for t in TASKS]
    table = read_table(group / "surrogate.parquet")
    front = read_table(group / "front.parquet")
    for task in TASKS:  # the front's accuracy: the class scores' quadratics, refitted here from the evaluations
        scores, targets = scores_of(examples, samples["sample"].tolist(), task)
        model = fit_scores(samples[columns].to_numpy(), scores, targets)
        np.testing.assert_allclose(front[f"accuracy_{task}"], model.predict(front[columns].to_numpy()))
        assert np.isfinite(front[[f"accuracy_{task}_lo", f"accuracy_{task}_hi"]].to_numpy()).all()
        rows = table[table["task"] == task].set_index("metric")
        assert len(rows.loc["accuracy", "score_params"]) and not len(rows.loc["loss", "score_params"])
    report = (res / "report.md").read_text().splitlines()
    fits = [line for line in report if line.startswith((f"| {TASKS[0]} | accuracy | ", f"| {TASKS[0]} | loss | "))]
    assert [line.rsplit("|", 2)[1].strip() for line in fits] == ["yes", ""]  # the fit table's class_scores column


def test_a_bigger_design_evaluates_only_new_samples(own_run):
    res = results(own_run)
    batches = sorted((res / "groups/all/evals").glob("b*.parquet"))
    assert [p.name for p in batches] == ["b0000.parquet", "b0001.parquet"]  # 12 samples, 8 per job
    before = {p.name: p.stat().st_mtime_ns for p in batches}
    grown = ["sampler.factor=4"]  # 24 samples: b0000 unchanged, b0001 gains samples, b0002 is new
    plan = snakemake(own_run, "-n", overrides=grown).stdout
    assert job_counts(plan)["evaluate_sample"] == 2
    assert "evals/b0000.parquet" not in plan.split("Job stats:")[0].split("rule collect_metrics")[0]
    snakemake(own_run, overrides=grown)
    assert (res / "groups/all/evals/b0000.parquet").stat().st_mtime_ns == before["b0000.parquet"]
    assert (res / "groups/all/evals/b0001.parquet").stat().st_mtime_ns != before["b0001.parquet"]
    samples = read_table(res / "groups/all/samples.parquet")
    metrics = read_table(res / "groups/all/metrics.parquet")
    assert (samples["round"] == 0).sum() == 24 and set(metrics["sample"]) == set(samples["sample"])  # and the rounds
    assert "Nothing to be done" in snakemake(own_run, "-n", overrides=grown).stdout
    # the cache kept b0001's table of the first design too; prune drops it, and what the run holds stays kept
    cache = res / evaluation_cache.FOLDER
    places = {kept: (res / kept.with_suffix(".place").read_text()) for kept in cache.glob("*.parquet")}
    superseded = {kept for kept, place in places.items() if kept.read_bytes() != place.read_bytes()}
    assert any(place.name == "b0001.parquet" for kept, place in places.items() if kept in superseded)
    assert cli(["prune", str(res)]) == 0
    assert set(cache.glob("*.parquet")) == set(places) - superseded
    assert "Nothing to be done" in snakemake(own_run, "-n", overrides=grown).stdout


def test_a_design_below_the_surrogates_parameters_is_completed_by_the_rounds(own_run):
    res = results(own_run)
    group = res / "groups/all"
    small = ["sampler.factor=0.5"]  # the 4 special points for P = 6 parameters; the round adds up to 4
    snakemake(own_run, overrides=small)
    samples = read_table(group / "samples.parquet")
    assert (samples["round"] == 0).sum() == 4 and len(samples) > 6  # the round's merges were chosen from a fit on 4
    table = read_table(group / "surrogate.parquet")
    assert (table["n_samples"] == len(samples)).all()
    assert table.loc[table["metric"] == "loss", "correction_length"].notna().all()  # more merges than P: corrected
    front = read_table(group / "front.parquet")
    bounds = front[[f"{m}_{t}_{end}" for m in ("accuracy", "loss") for t in TASKS for end in ("lo", "hi")]]
    assert np.isfinite(bounds.to_numpy()).all()
    assert "Nothing to be done" in snakemake(own_run, "-n", overrides=small).stdout


def test_lint_is_clean(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_config_fails_before_any_job(tmp_path):
    proc = snakemake(tmp_path, overrides=["benchmark.tasks=[rot90, nope]"], check=False)
    assert proc.returncode != 0
    assert "benchmark.tasks: unknown task 'nope'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_report_and_summary_point_at_the_outputs(run, capsys):
    from mapmerge.tools.cli import main

    assert main(["summary", str(results(run))]) == 0
    text = capsys.readouterr().out
    selected = read_table(results(run) / "selected.parquet").iloc[-1]
    rot90 = f"| rot90 | {selected['accuracy_rot90']:.3f} | {selected['accuracy_rot90_lo']:.3f} |"
    assert "Surrogate fit per task and metric" in text and "| task | accuracy | accuracy_lo |" in text
    assert f"{rot90} {selected['accuracy_rot90_hi']:.3f} | {selected['measured_accuracy_rot90']:.3f} |" in text
    assert str(results(run) / "groups/all/merged.safetensors") in text
    assert str(results(run) / "plots/front_2d.png") in text


def test_snakemake_report_is_one_html_file_with_plots_and_tables(run, tmp_path):
    out = tmp_path / "report.html"
    snakemake(run, "--report", str(out))
    text = out.read_text()
    embedded = {
        m.group(1): base64.b64decode(m.group(2)).decode("utf-8", "replace")
        for m in re.finditer(r'"data_uri": "data:[^;]+;charset=utf8;filename=([^;]+);base64,([A-Za-z0-9+/=]+)"', text)
    }
    assert set(embedded) == {"front_2d.png", "front_parallel.png", *(f"{name}.html" for name in HTML_TABLES)}
    selected = read_table(results(run) / "selected.parquet")
    assert (
        "<th>measured_accuracy</th>" in embedded["chosen.html"]
        and f"<td>{selected['measured_accuracy_rot90'].iloc[0]:.4g}</td>" in embedded["chosen.html"]
        and f"{selected['c_rot90'].iloc[0]:.4g}" in embedded["chosen.html"]
    )
    assert len(read_table(results(run) / "pareto.parquet")) == embedded["front.html"].count(
        "<tr>"
    )  # a row per point (the header row has a style)
    assert "evaluate_sample" in embedded["ledger.html"] and "pretrained" in embedded["models.html"]
