"""`mapmerge status`, `select` and `plot` on real run folders, built by calling the stage functions
in the workflow's order and layout (results/<name>/...), without Snakemake."""

from __future__ import annotations

import json
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
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import STAGES, as_user, stages_from
from mapmerge.builtin.model import build_model
from mapmerge.core import groups, pareto, refine
from mapmerge.core.metrics import sample_metrics
from mapmerge.core.sampling import sample_batches
from mapmerge.core.selection import (
    BALANCED_FLOOR,
    measured_front,
    normalize_preference,
    pick_point,
    reference_values,
    select_point,
)
from mapmerge.io import RUN_LOCK, file_hash, read_table, table_metadata, write_table
from mapmerge.layout import Layout
from mapmerge.outputs import report
from mapmerge.outputs.notes import group_notes
from mapmerge.run import evaluation_cache
from mapmerge.run.config import load_config, round_params, stage_config
from mapmerge.stages import (
    aggregate,
    collect,
    evaluation,
    fit_surrogate,
    merge_group,
    pareto_front,
    plan_level,
    prepare_benchmark,
    propose_round,
    refine_round,
    sample_coefficients,
    task_vectors,
)
from mapmerge.tensors.checkpoints import load_state_dict, safetensors_metadata
from mapmerge.tensors.taskvectors import merge_files
from mapmerge.tools.cli import main
from mapmerge.tools.runfolder import scan
from mapmerge.tools.status import evaluation_counts
from test_runlock import hold_in_a_process

REPO = Path(__file__).resolve().parents[1]
TASKS = ["rot90", "invert", "flip_parity"]
WIDTH = 8
SETTINGS = [
    f"benchmark.tasks=[{','.join(TASKS)}]",
    f"benchmark.width={WIDTH}",
    "benchmark.pretrain_epochs=15",
    "benchmark.finetune_epochs=8",
    "optimizer.pop_size=30",
    "optimizer.n_gen=20",
    "sampler.factor=2",
    "refine.rounds=1",
    "evaluation.samples_per_job=8",
]


def round_batches(params: dict, files: dict, plan: Path, group: str, r: int, n: int, batch: int) -> list[Path]:
    """Round r's evaluate_round jobs, as the workflow runs them: its samples (n at most) in batches of `batch`."""
    gdir = plan.parent.parent / "groups" / group
    outs = [gdir / "evals" / f"r{r:02d}b{i:04d}.parquet" for i in range(-(-n // batch))]
    for i, out in enumerate(outs):
        samples = gdir / "rounds" / f"r{r:02d}.parquet"
        evaluation.run_evaluate_round(
            params, **files, plan=plan, samples=samples, group=group, index=i, size=batch, examples=out, device="cpu"
        )
    return outs


def build_run(
    root: Path,
    name: str,
    overrides: list[str],
    bench: Path | None = None,
    finish: bool = True,
    experiment: Path | None = None,
) -> Path:
    """A run folder made as the workflow makes it (see workflow/rules/*.smk): every stage function, in order.

    bench: a run folder whose checkpoints/ and benchmark.parquet are copied instead of training them
    again (the same benchmark config). finish=False stops a Bayesian run after its rounds' evaluations.
    experiment: an experiment file (a user model's run has no benchmark stage).
    """
    settings = [
        s
        for s in SETTINGS
        if not (experiment and s.startswith("benchmark."))  # a user model's run has no benchmark
        and not ("method=bayesian" in overrides and s.startswith("sampler.factor="))  # its own: initial_factor
    ]
    cfg = load_config(
        REPO / "config",
        experiment=experiment,
        overrides=[f"name={name}", f"results_dir='{root}'", *settings, *overrides],
    )
    R = Path(cfg["results"])
    tasks, model = cfg["task_names"], cfg["model"]
    P = lambda stage: stage_config(cfg, stage)  # noqa: E731
    if not model["builtin"]:
        pass
    elif bench is None:
        prepare_benchmark.run_prepare_benchmark(
            P("prepare_benchmark"),
            pretrained=model["pretrained"],
            table=R / "benchmark.parquet",
            finetuned=[model["tasks"][t]["checkpoint"] for t in tasks],
        )
    else:
        shutil.copytree(bench / "checkpoints", R / "checkpoints")
        shutil.copy2(bench / "benchmark.parquet", R / "benchmark.parquet")
    pre = model["pretrained"]
    checkpoints = {t: model["tasks"][t]["checkpoint"] for t in tasks}
    levels = groups.structure(cfg["method"], len(tasks))
    group_names = [g for names in levels for g in names]

    def vector_path(m: str) -> Path:
        return R / "task_vectors" / f"{m}.safetensors" if m in tasks else R / "groups" / m / "vector.safetensors"

    for t in tasks:
        task_vectors.run_extract_task_vector(
            P("extract_task_vector"), task=t, pretrained=pre, finetuned=checkpoints[t], vector=vector_path(t)
        )
    task_vectors.run_task_vector_table(
        P("task_vector_table"), vectors={t: vector_path(t) for t in tasks}, table=R / "task_vectors.parquet"
    )
    reference_files = {"pretrained": pre, "vectors": {t: vector_path(t) for t in tasks}, "checkpoints": checkpoints}
    evaluation.run_evaluate_reference(
        P("evaluate"),
        **reference_files,
        metrics=R / "reference.parquet",
        examples=R / "reference_examples.parquet",
        device="cpu",
    )
    plans, evals = [], {"reference_examples.parquet": R / "reference_examples.parquet"}
    batch = cfg["evaluation"]["samples_per_job"]
    for k, names in enumerate(levels, 1):
        plan = R / "levels" / f"level{k}.parquet"
        params = {**P("plan_level"), "groups": names}
        if k == 1:
            params.pop("preference", None)
            inputs = {"reference": R / "reference.parquet"} if cfg["method"] == "nested" else {}
        else:
            inputs = {
                "previous": plans[-1],
                "selected": {g: R / "groups" / g / "selected_evals.parquet" for g in levels[k - 2]},
            }
        plan_level.run_plan_level(params, level=k, plan=plan, **inputs)
        plans.append(plan)
        for g in names:
            gdir = R / "groups" / g
            candidates = groups.candidates(tasks, levels, k)
            files = {"pretrained": pre, "vectors": {m: vector_path(m) for m in candidates}, "checkpoints": checkpoints}
            rounds = [gdir / "rounds" / "r00.parquet"]
            sample_coefficients.run_sample_coefficients(P("sample_coefficients"), plan=plan, group=g, samples=rounds[0])
            design = read_table(rounds[0])
            coefficients = {
                row["sample"]: [float(row[c]) for c in design.columns if c.startswith("c_")]
                for _, row in design.iterrows()
            }
            outs = []

            for b, samples in sample_batches(list(design["sample"]), batch).items():
                outs.append(gdir / "evals" / f"{b}.parquet")
                evaluation.run_evaluate_samples(
                    P("evaluate_group"),
                    **files,
                    plan=plan,
                    group=g,
                    coefficients={s: coefficients[s] for s in samples},
                    examples=outs[-1],
                    device="cpu",
                )
            for r in range(1, (cfg["bayesian"]["rounds"] if cfg["method"] == "bayesian" else 0) + 1):
                rounds.append(gdir / "rounds" / f"r{r:02d}.parquet")
                propose_round.run_propose_round(
                    P("propose_round"), round=r, rounds=rounds[:-1], evals=list(outs), samples=rounds[-1]
                )
                outs += round_batches(P("evaluate_group"), files, plan, g, r, len(read_table(rounds[-1])), batch)
            if not finish:
                return R
            first = len(rounds)
            for r in range(first, first + cfg["refine"]["rounds"]):
                rounds.append(gdir / "rounds" / f"r{r:02d}.parquet")
                refine_round.run_refine_round(
                    round_params(P("refine_round"), r - first + 1),
                    round=r,
                    rounds=rounds[:-1],
                    evals=list(outs),
                    plan=plan,
                    reference=R / "reference.parquet",
                    group=g,
                    samples=rounds[-1],
                )
                n = refine.round_size(cfg["refine"], len(groups.group_plan(plan, g)["members"]))
                outs += round_batches(P("evaluate_group"), files, plan, g, r, n, batch)
            collect.run_collect_metrics(
                P("collect_metrics"),
                rounds=rounds,
                evals=outs,
                metrics=gdir / "metrics.parquet",
                samples=gdir / "samples.parquet",
            )
            fit_surrogate.run_fit_surrogate(
                P("fit_surrogate"),
                samples=gdir / "samples.parquet",
                metrics=gdir / "metrics.parquet",
                evals=outs if cfg["surrogate"]["scores"] != "none" else [],
                surrogate=gdir / "surrogate.parquet",
            )
            pareto_front.run_pareto_front(
                P("pareto_front"),
                surrogate=gdir / "surrogate.parquet",
                samples=gdir / "samples.parquet",
                plan=plan,
                group=g,
                front=gdir / "front.parquet",
            )
            merge_group.run_merge_group(
                P("merge_group"),
                **files,
                plan=plan,
                front=gdir / "front.parquet",
                samples=gdir / "samples.parquet",
                metrics=gdir / "metrics.parquet",
                surrogate=gdir / "surrogate.parquet",
                reference=R / "reference.parquet",
                group=g,
                merged=gdir / "merged.safetensors",
                vector=gdir / "vector.safetensors",
                choice=gdir / "choice.parquet",
                folders=gdir / "merged",
            )
            evaluation.run_evaluate_selected(
                P("evaluate"),
                **files,
                plan=plan,
                choice=gdir / "choice.parquet",
                group=g,
                examples=gdir / "selected_evals.parquet",
                device="cpu",
            )
            evals.update({f"{g}/{p.name}": p for p in [*outs, gdir / "selected_evals.parquet"]})
    collect.run_ledger(P("ledger"), evals=evals, ledger=R / "evaluations.parquet")
    outputs = {f: R / f"{f}.parquet" for f in ("pareto", "measured", "selected", "groups")}
    aggregate.run_aggregate(
        P("aggregate"),
        reference=R / "reference.parquet",
        plans=plans,
        ledger=R / "evaluations.parquet",
        **outputs,
        report=R / "report.md",
        results=R,
        group_names=group_names,
    )
    report.write_html_tables(R, {name: R / "report" / f"{name}.html" for name in report.HTML_TABLES})
    return R


def pretrained_just_below(reference: pd.DataFrame, point: np.ndarray) -> pd.DataFrame:
    """reference.parquet's rows with each task's pretrained accuracy 0.01 below `point`'s (accuracies in TASKS' order)
    and its fine-tuned one 0.99 above: the point's gains are 0.01 on every task."""
    reference = reference.copy()
    for i, t in enumerate(TASKS):
        accuracy = (reference["task"] == t) & (reference["metric"] == "accuracy")
        reference.loc[accuracy & (reference["model"] == "pretrained"), "value"] = point[i] - 0.01
        reference.loc[accuracy & (reference["model"] == t), "value"] = point[i] + 0.99
    return reference


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three runs of the built-in benchmark (3 tasks, width 8): plain MAP, nested MAP with DARE, and
    Bayesian MAP stopped after round 1's evaluations."""
    root = tmp_path_factory.mktemp("cli") / "results"
    plain = build_run(root, "plain", [])
    nested = build_run(root, "nested", ["method=nested", "merge=dare"], bench=plain)
    bayes = build_run(
        root, "bayes", ["method=bayesian", "bayesian.rounds=1", "tasks=[rot90,invert]"], bench=plain, finish=False
    )
    return {"plain": plain, "nested": nested, "bayes": bayes}


def status_rows(text: str) -> dict[str, list[str]]:
    """The stage table of `mapmerge status`: stage -> [state, artifacts] (its lines are not indented)."""
    return {
        line.split()[0]: line.split(None, 2)[1:]
        for line in text.splitlines()
        if line[:1].strip() and line.split()[0] in STAGES
    }


def ledger_counts(path: Path) -> pd.DataFrame:
    ledger = read_table(path)
    return ledger.groupby("stage", sort=False)[["models", "task_evaluations"]].sum()


def test_status_of_a_finished_run(runs, capsys):
    R = runs["plain"]
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{R}: plain MAP (levels/level1.parquet: one group 'all' and no Bayesian rounds)"
    assert f"tasks (3): {', '.join(TASKS)}" in out
    rows = status_rows(out)
    assert set(rows) == set(STAGES)
    assert {s for s, (state, _) in rows.items() if state != "done"} == {"propose_round"}  # refined, not Bayesian
    assert "Real evaluations (from evaluations.parquet):" in out
    ledger = ledger_counts(R / "evaluations.parquet")
    total = [
        "total",
        str(len(read_table(R / "evaluations.parquet"))),
        str(ledger["models"].sum()),
        str(ledger["task_evaluations"].sum()),
    ]
    assert total in [line.split() for line in out.splitlines()]
    front = read_table(R / "groups" / "all" / "front.parquet")
    samples = read_table(R / "groups" / "all" / "samples.parquet")
    group_line = next(line for line in out.splitlines() if line.split()[:1] == ["all"])
    assert group_line.split() == [
        "all",
        "1",
        "2",  # the design and one refinement round
        str(len(list((R / "groups" / "all" / "evals").glob("*.parquet")))),
        str(len(samples)),
        str(len(front)),
        "yes",
    ]


def test_status_tells_the_evaluation_caches_size(runs, tmp_path, capsys):
    R = tmp_path / "kept"
    shutil.copytree(runs["plain"], R)
    assert main(["status", str(R)]) == 0
    assert "evaluation cache" not in capsys.readouterr().out  # none: the tests' runs call the stages directly
    tables = sorted((R / "groups" / "all" / "evals").glob("*.parquet"))[:2]
    for i, table in enumerate(tables):
        assert evaluation_cache.keep({"examples": table}, {"examples": R / evaluation_cache.FOLDER / f"{i}.parquet"})
    assert main(["status", str(R)]) == 0
    size = sum(p.stat().st_size for p in tables) / 1e6
    out = capsys.readouterr().out
    assert f"  evaluation cache: 2 tables, {size:.1f} MB in {R / evaluation_cache.FOLDER} (" in out
    assert "mapmerge prune" not in out  # both are the run's own tables
    shutil.copyfile(tables[1], tables[0])  # the first job's table now holds other merges'
    assert main(["status", str(R)]) == 0
    assert "    1 of them from settings the run no longer has" in capsys.readouterr().out


def test_status_tells_evaluation_files_the_runs_ledger_does_not_list(runs, tmp_path, capsys):
    R = tmp_path / "rebatched"
    shutil.copytree(runs["plain"], R)
    evals = R / "groups" / "all" / "evals"
    first = sorted(evals.glob("b*.parquet"))[0]
    shutil.copy2(first, evals / "b0099.parquet")  # a batch of an earlier evaluation.samples_per_job, before the ledger
    shutil.copy2(first, evals / "b0098.parquet")
    ledger = (R / "evaluations.parquet").stat().st_mtime
    os.utime(evals / "b0099.parquet", (ledger - 60, ledger - 60))
    os.utime(evals / "b0098.parquet", (ledger + 60, ledger + 60))  # written after it: a rerun's, not yet listed
    assert main(["status", str(R)]) == 0
    batches = len(list(evals.glob("b*.parquet")))
    out = capsys.readouterr().out
    assert status_rows(out)["evaluate_sample"][1] == (
        f"groups/<g>/evals/b<NNNN>.parquet: {batches} batches, 1 of them left from an earlier setting (the run's "
        "ledger does not list them; `mapmerge prune` removes them)"
    )
    group_line = next(line for line in out.splitlines() if line.split()[:1] == ["all"])
    assert group_line.split()[3] == str(len(list(evals.glob("*.parquet"))) - 1)  # eval files: the run's
    # a file of the user's among them, older than the ledger: no job's name, so neither counted nor pruned
    shutil.copy2(first, evals / "my_analysis.parquet")
    os.utime(evals / "my_analysis.parquet", (ledger - 60, ledger - 60))
    assert main(["status", str(R)]) == 0
    assert f"{batches} batches, 1 of them left" in status_rows(capsys.readouterr().out)["evaluate_sample"][1]
    assert main(["prune", str(R)]) == 0
    assert "removed 1 evaluation batch left from an earlier setting" in capsys.readouterr().out
    assert (evals / "my_analysis.parquet").exists() and not (evals / "b0099.parquet").exists()


def test_task_vectors_of_tasks_the_run_no_longer_merges_are_named_and_pruned(runs, tmp_path, capsys):
    """A task dropped from the run leaves its task vector (a model's size, for a language model): status names it,
    prune removes it with its job's log; one written after task_vectors.parquet (a rerun's) stays."""
    R = tmp_path / "fewer"
    shutil.copytree(runs["plain"], R)
    vectors, table = R / "task_vectors", (R / "task_vectors.parquet").stat().st_mtime
    for name, mtime in (("mod3", table - 60), ("newer", table + 60)):
        shutil.copy2(vectors / "rot90.safetensors", vectors / f"{name}.safetensors")
        os.utime(vectors / f"{name}.safetensors", (mtime, mtime))
    log = R / "logs" / "extract_task_vector" / "mod3.log"  # as its job wrote it (this run's stages ran in-process)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("done\n")
    assert main(["status", str(R)]) == 0
    assert status_rows(capsys.readouterr().out)["extract_task_vector"] == [
        "done",
        "task_vectors/<task>.safetensors: 3 of 3 tasks; task_vectors/mod3.safetensors left from an earlier task list",
    ]
    assert main(["prune", str(R)]) == 0
    size = (vectors / "rot90.safetensors").stat().st_size / 1e6
    assert (
        f"removed task_vectors/mod3.safetensors ({size:.1f} MB): task vectors of tasks the run no longer merges"
        in capsys.readouterr().out
    )
    assert not (vectors / "mod3.safetensors").exists() and not log.exists()
    assert (vectors / "newer.safetensors").exists() and (vectors / "rot90.safetensors").exists()


def remade(R: Path, changed: Path) -> None:
    """As a run remakes what reads a file the test changed, and what reads those: each table that records it records
    its new bytes (else status calls them stale: runfolder.changed_inputs)."""
    pending = [changed]
    while pending:
        file = pending.pop()
        for table in R.rglob("*.parquet"):
            metadata = table_metadata(table)
            inputs = json.loads(metadata.get("mapmerge.inputs", "{}"))
            if inputs.get(file.name, file_hash(file)) != file_hash(file):
                inputs[file.name] = file_hash(file)
                extra = {**metadata, "mapmerge.inputs": json.dumps(inputs, sort_keys=True)}
                write_table(read_table(table), table, metadata["mapmerge.stage"], extra=extra)
                pending.append(table)


def test_status_names_a_task_its_fine_tuned_model_does_not_gain_on(runs, tmp_path, capsys):
    """A fine-tuned model that scores no better on its task than the pretrained one (a failed fine-tune): status says
    so among what to know about the chosen merge, naming the task, the metric and both values."""
    assert main(["status", str(runs["plain"])]) == 0
    assert "scores no better on it" not in capsys.readouterr().out
    R = tmp_path / "no_gain"
    shutil.copytree(runs["plain"], R)
    reference = read_table(R / "reference.parquet")
    accuracy = reference["metric"] == "accuracy"
    pretrained = reference.loc[
        accuracy & (reference["model"] == "pretrained") & (reference["task"] == "invert"), "value"
    ]
    reference.loc[accuracy & (reference["model"] == "invert") & (reference["task"] == "invert"), "value"] = float(
        pretrained.iloc[0]
    )
    write_table(reference, R / "reference.parquet", "evaluate_reference")
    remade(R, R / "reference.parquet")
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    value = f"{float(pretrained.iloc[0]):.4g}"
    assert (
        f"  task invert: its fine-tuned model scores no better on it than the pretrained model (accuracy {value} "
        f"against {value}): " in out
    )
    assert out.count("scores no better on it") == 1
    # a gain of 0.001, far below a tenth of the others' median: named too, as weighed in part the same way
    reference.loc[accuracy & (reference["model"] == "invert") & (reference["task"] == "invert"), "value"] = (
        float(pretrained.iloc[0]) + 0.001
    )
    write_table(reference, R / "reference.parquet", "evaluate_reference")
    remade(R, R / "reference.parquet")
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    assert "scores no better on it" not in out
    assert (
        f"  task invert: its fine-tuned model gains little on it (accuracy {float(pretrained.iloc[0]) + 0.001:.4g} "
        in out
    )


def test_status_of_a_partial_run(runs, tmp_path, capsys):
    R = tmp_path / "partial"
    shutil.copytree(runs["plain"], R)
    for f in [
        "evaluations.parquet",
        "pareto.parquet",
        "measured.parquet",
        "selected.parquet",
        "groups.parquet",
        "report.md",
        "plots/front_parallel.png",
        "groups/all/front.parquet",
        "groups/all/choice.parquet",
        "groups/all/merged.safetensors",
        "groups/all/vector.safetensors",
        "groups/all/selected_evals.parquet",
        "groups/all/evals/b0001.parquet",
    ]:
        (R / f).unlink()
    shutil.rmtree(R / "report")
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    rows = status_rows(out)
    for stage in [
        "prepare_benchmark",
        "extract_task_vector",
        "evaluate_reference",
        "plan_level",
        "sample_coefficients",
    ]:
        assert rows[stage][0] == "done", stage
    # made from the batch now gone: no longer the folder's, though there
    assert rows["collect_metrics"][0] == rows["fit_surrogate"][0] == "stale"
    # a design batch gone: its samples are in no batch, which status counts from the design
    design = read_table(R / "groups/all/rounds/r00.parquet")
    gone = len(read_table(runs["plain"] / "groups/all/evals/b0001.parquet")["sample"].unique())
    assert rows["evaluate_sample"][0] == "partial"
    assert f"; {gone} of the {len(design)} samples to evaluate in none yet" in rows["evaluate_sample"][1]
    # without the design's table (no batch waits for it) the batches are not counted, and the line says so
    (R / "groups/all/rounds/r00.parquet").unlink()
    assert main(["status", str(R)]) == 0
    again = status_rows(capsys.readouterr().out)
    assert again["sample_coefficients"][0] == "missing"
    assert again["evaluate_sample"][0] == "done" and again["evaluate_sample"][1].endswith(
        "; not checked in all: no round table yet"
    )
    (R / "groups/all/rounds").mkdir(exist_ok=True)
    shutil.copy2(runs["plain"] / "groups/all/rounds/r00.parquet", R / "groups/all/rounds/r00.parquet")
    for stage in stages_from("pareto_front"):
        assert rows[stage][0] == "missing", stage
    assert "Real evaluations (counted from the evaluation files; evaluations.parquet is not written yet):" in out
    assert [line for line in out.splitlines() if line.split()[:1] == ["all"]][0].split()[-2:] == ["-", "no"]
    # counted from the files as the ledger counts them: the full run's ledger less the deleted files
    ledger = read_table(runs["plain"] / "evaluations.parquet")
    ledger = ledger[~ledger["file"].isin(["b0001.parquet", "selected_evals.parquet"])]
    counts, _, _ = evaluation_counts(R, scan(R))
    expected = ledger.groupby("stage", sort=False)[["models", "task_evaluations"]].sum()
    assert counts.set_index("stage")[["models", "task_evaluations"]].to_dict() == expected.to_dict()
    assert counts.set_index("stage")["files"].to_dict() == ledger.groupby("stage", sort=False).size().to_dict()
    # a folder with nothing in it yet
    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 0
    assert "method not known yet" in capsys.readouterr().out


def test_status_counts_a_rounds_samples_that_no_batch_holds(runs, tmp_path, capsys):
    """A round with a sample that no batch holds (its batch's job stopped or failed; here a row added to the round's
    table) is partial, with how many; with its batches gone, missing (its table asks for them), not '-' as in a run
    without rounds."""
    R = tmp_path / "bayes"
    shutil.copytree(runs["bayes"], R)
    path = R / "groups/all/rounds/r01.parquet"
    table = read_table(path)
    write_table(pd.concat([table, table.tail(1).assign(sample="r01s9999")], ignore_index=True), path, "propose_round")
    assert main(["status", str(R)]) == 0
    state, line = status_rows(capsys.readouterr().out)["evaluate_round"]
    assert state == "partial" and line.endswith(f"; 1 of the {len(table) + 1} samples to evaluate in none yet"), line
    for batch in (R / "groups/all/evals").glob("r01b*.parquet"):
        batch.unlink()
    assert main(["status", str(R)]) == 0
    state, line = status_rows(capsys.readouterr().out)["evaluate_round"]  # a proposed round, no batch yet: how many
    assert state == "missing" and line.endswith(f"; the {len(table) + 1} samples to evaluate in none yet"), line


def test_status_tells_the_method(runs, capsys):
    assert main(["status", str(runs["bayes"])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"{runs['bayes']}: Bayesian MAP (")
    rows = status_rows(out)
    assert rows["propose_round"] == ["done", "groups/<g>/rounds/r<NN>.parquet after r00: 1"]
    assert rows["evaluate_round"][0] == "done" and rows["collect_metrics"][0] == "missing"
    counts, _, _ = evaluation_counts(runs["bayes"], scan(runs["bayes"]))
    assert counts.set_index("stage").loc["evaluate_round", "models"] == len(
        read_table(runs["bayes"] / "groups/all/rounds/r01.parquet")
    )
    assert main(["status", str(runs["nested"])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"{runs['nested']}: nested MAP (groups named L<level>g<j>)")
    assert {line.split()[0] for line in out.splitlines() if line.split()[:1] in (["L1g0"], ["L2g0"])} == {
        "L1g0",
        "L2g0",
    }


def snapshot(*roots: Path) -> dict[Path, tuple[bytes, int] | None]:
    """Every file (bytes, mtime) and folder under the roots: what a command that only reads, or is refused, leaves as it was."""
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for root in roots
        for p in sorted(root.rglob("*"))
    }


def test_status_shows_unreadable_artifacts(runs, tmp_path, capsys):
    """Files that exist but do not read (Parquet footer, safetensors header and length) are `unreadable`, named, not `done`."""
    R = tmp_path / "damaged"
    shutil.copytree(runs["plain"], R)
    front, merged = R / "groups" / "all" / "front.parquet", R / "groups" / "all" / "merged.safetensors"
    front.write_bytes(b"not a table")
    merged.write_bytes(merged.read_bytes()[:-100])
    before = snapshot(R)
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    assert snapshot(R) == before
    rows = status_rows(out)
    assert rows["pareto_front"] == ["unreadable", "groups/<g>/front.parquet: 0 of 1 groups"]
    assert rows["merge_group"][0] == "unreadable" and rows["fit_surrogate"][0] == "done"
    assert {s for s, (state, _) in rows.items() if state not in ("done", "-")} == {"pareto_front", "merge_group"}
    unreadable = [line for line in out.splitlines() if line.startswith("unreadable: ")]
    size = len(merged.read_bytes())
    assert unreadable == [
        f"unreadable: {front}: not a readable Parquet file (Parquet magic bytes not found in footer. Either the file is corrupted "
        "or this is not a parquet file.)",
        f"unreadable: {merged}: truncated or padded safetensors file (its header says {size + 100} bytes, it has {size})",
    ]
    group_line = next(line for line in out.splitlines() if line.split()[:1] == ["all"])
    assert group_line.split()[-2:] == ["unreadable", "unreadable"]


def test_a_damaged_batch_is_unreadable_not_a_cause_of_stale_tables(runs, tmp_path, capsys):
    """A batch damaged in place is named unreadable (`mapmerge check --delete` is the way out), and the tables made from
    it are not called stale as if a run had replaced it."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    batch = R / "groups" / "all" / "evals" / "b0001.parquet"
    batch.write_bytes(batch.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    assert status_rows(out)["evaluate_sample"][0] == "unreadable" and f"unreadable: {batch}: " in out
    assert "stale" not in out


def test_status_of_what_is_not_a_folder(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err == f"mapmerge status: {tmp_path / 'nothing'}: not a folder\n"
    (tmp_path / "custom_mlp").mkdir()  # a run folder beside a mistyped one
    assert main(["status", str(tmp_path / "custom_mpl")]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"mapmerge status: {tmp_path / 'custom_mpl'}: not a folder (did you mean `{tmp_path / 'custom_mlp'}`?)\n"
    )


def test_every_command_refuses_the_folder_of_the_runs(runs, tmp_path, capsys):
    """results/ for results/plain, or results/plain/groups (slips every command would read as a run not started yet;
    `check` found "0 bad" in one): one line naming the run folder, exit status 2; an empty folder is still a run not
    started."""
    root = runs["plain"].parent
    run = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    (run / RUN_LOCK).touch()  # as every driver's start writes it (these runs were made by calling the stages)
    for inside in (run / "groups", run / "groups" / "all", run / "plots"):
        for command in (["status"], ["check"], ["select", "--prefer", "rot90=1"], ["plot"]):
            err = refused([command[0], str(inside), *command[1:]], 2, capsys, run)
            assert err == f"mapmerge {command[0]}: {inside}: lies inside the run folder {run}; give {run}\n"
    for command in (
        ["status"],
        ["summary"],
        ["check"],
        ["prune", "--dry-run"],
        ["plot"],
        ["select", "--prefer", "rot90=1"],
    ):
        assert main([command[0], str(root), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"mapmerge {command[0]}: {root}: holds the run folders bayes, nested, plain, not a run's files; give one of "
            f"them, e.g. {root / 'bayes'}\n"
        )
    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'empty'}: method not known yet")
    # a mistyped path: a folder of other files (read as a run not started: `check` found "0 bad"), or none
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    for command in (["status"], ["summary"], ["check"], ["prune"], ["plot"], ["select", "--prefer", "rot90=1"]):
        for folder, why in (
            (tmp_path / "notes", "holds files that are not a mapmerge run's (readme.txt); give a run's folder"),
            (tmp_path / "nowhere", "not a folder"),
        ):
            assert main([command[0], str(folder), *command[1:]]) == 2
            assert capsys.readouterr().err == f"mapmerge {command[0]}: {folder}: {why}\n"
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["readme.txt"]


def test_select_and_plot_into_a_folder_they_may_not_write(runs, tmp_path):
    """A write the file system refuses is one line naming the file and the folder, not a traceback, and leaves nothing
    there."""
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    R = str(runs["plain"])
    for argv, file in (
        (["select", R, "--prefer", "rot90=1", "--out", str(ro / "x.safetensors")], "x.safetensors"),
        (["plot", R, "--out", str(ro)], "front_parallel.png"),
    ):
        done = subprocess.run(as_user(argv), capture_output=True, text=True)
        why = f"mapmerge {argv[0]}: {ro / file}: cannot be written in {ro} (Permission denied)\n"
        assert (done.returncode, done.stderr) == (1, why)
    assert list(ro.iterdir()) == []


def test_a_reader_that_stops_reading_is_no_error(runs):
    """`mapmerge status RUN | head`: the closed pipe ends the command quietly (it said `Broken pipe`, exit 1)."""
    status = subprocess.Popen(
        [sys.executable, "-m", "mapmerge.tools.cli", "status", str(runs["plain"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    status.stdout.close()  # before it writes: it imports first
    assert (status.wait(timeout=120), status.stderr.read()) == (0, b"")


def test_a_damaged_group_tree_is_named_with_the_way_out(runs, tmp_path, capsys):
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    (R / "groups.parquet").write_bytes(b"PAR1 damaged")
    capsys.readouterr()
    assert main(["status", str(R)]) == 0  # listed as unreadable, as every other artifact is
    out = capsys.readouterr().out
    assert status_rows(out)["aggregate"][0] == "unreadable" and "What to know about the chosen merge" not in out
    assert f"unreadable: {R / 'groups.parquet'}: not a readable Parquet file (" in out
    err = refused(["select", str(R), "--prefer", "rot90=1"], 1, capsys, R)
    assert err.startswith(f"mapmerge: {R / 'groups.parquet'}: unreadable Parquet (") and err.endswith(
        "; delete it and run snakemake again to recompute it and what depends on it (`mapmerge check RESULTS "
        "--delete` finds and deletes every such file)\n"  # RESULTS: this folder, made by the stages, has no lock
    ), err


def _edited(R: Path, fault: str) -> tuple[Path, str, bool]:
    """(the table edited, why it is refused, whether `mapmerge check` sees it alone) for a fault made by hand."""
    front, reference, measured = R / "groups" / "all" / "front.parquet", R / "reference.parquet", R / "measured.parquet"
    path, why = {
        "no rows": (front, "no rows, where a run writes some"),
        "a prediction not a number": (front, "prediction column accuracy_invert holds a value that is "),
        "a coefficient not a number": (front, "coefficient column c_rot90 holds a value that is not a finite "),
        "a prediction missing": (front, "no prediction column accuracy_invert (its other tasks have accuracy_<task>)"),
        "a task's reference rows missing": (reference, "no accuracy row of model pretrained on task invert"),
        "a measured coefficient missing": (measured, "no column c_rot90, where a run writes one"),
    }[fault]
    table = read_table(path)
    if fault == "no rows":
        table = table.iloc[:0]
    elif fault == "a prediction missing":
        table = table.drop(columns=["accuracy_invert"])
    elif fault == "a task's reference rows missing":
        table = table[table["task"] != "invert"]
    elif fault == "a measured coefficient missing":
        table = table.drop(columns=["c_rot90"])
    else:  # a value that is not a number
        table.loc[len(table) // 2, "accuracy_invert" if "prediction" in fault else "c_rot90"] = np.nan
    metadata = table_metadata(path)
    write_table(table, path, metadata["mapmerge.stage"], extra=metadata)
    return path, why, path != measured  # measured.parquet: checked against the front by plot


@pytest.mark.parametrize(
    "fault",
    [
        "no rows",
        "a prediction not a number",
        "a coefficient not a number",
        "a prediction missing",
        "a task's reference rows missing",
        "a measured coefficient missing",
    ],
)
def test_a_table_edited_into_one_no_run_makes_gets_one_line(runs, tmp_path, capsys, fault):
    """A front, reference or measured front that reads but that no run writes (edited by hand): select and plot
    refuse it in one line naming the file and the fault (they gave a KeyError's or ValueError's traceback, or
    picked without the task), and `mapmerge check` lists it as bad, as the line says it would."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    path, why, alone = _edited(R, fault)
    remade(R, path)
    commands = [["select", str(R), "--prefer", "rot90=1"]] if path.name != "measured.parquet" else []
    for command in [*commands, ["plot", str(R), "--out", str(tmp_path / "plots")]]:
        err = refused(command, 1, capsys, R)
        assert err.startswith(f"mapmerge: {path}: {why}") and err.endswith("finds and deletes every such file)\n")
    assert not (tmp_path / "plots").exists()
    assert main(["check", str(R)]) == (1 if alone else 0)
    assert (f"bad: {path}: {why}" in capsys.readouterr().out) == alone


def test_command_line_mistakes_get_one_line(runs, tmp_path, capsys):
    """argparse's faults in the project's one line (a mistyped choice with the closest one); no abbreviated option
    (`check --d` was `--delete`), and an option given twice is refused, not replaced."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    bad = R / "groups" / "all" / "metrics.parquet"
    bad.write_bytes(b"PAR1 damaged")
    for argv, message in (
        (
            ["select", str(R), "--prefer", "rot90=1", "--method", "tchebychef"],
            "mapmerge select: argument --method: invalid choice: 'tchebychef' (choose from 'weighted_sum', "
            "'tchebycheff', 'balanced') (did you mean `tchebycheff`?); see mapmerge select --help",
        ),
        (
            ["select", str(R), "--prefer", "rot90=1", "--prefer", "invert=1"],
            "mapmerge select: argument --prefer: given twice; see mapmerge select --help",
        ),
        (  # every option: the second replaced the first without a word
            ["plot", str(R), "--out", "a", "--out=b"],
            "mapmerge plot: argument --out: given twice; see mapmerge plot --help",
        ),
        (
            ["check", str(R), "--delete", "--delete"],
            "mapmerge check: argument --delete: given twice; see mapmerge check --help",
        ),
        (["check", str(R), "--d"], "mapmerge check: unrecognized arguments: --d; see mapmerge check --help"),
        (  # a space after a comma: two arguments
            ["select", str(R), "--prefer", "rot90=1,", "invert=1"],
            "mapmerge select: unrecognized arguments: invert=1; see mapmerge select --help",
        ),
        (["plot", str(R), "--out", ""], "mapmerge plot: argument --out: empty; give a path; see mapmerge plot --help"),
        (  # a folder, or the file?
            ["select", str(R), "--prefer", "rot90=1", "--out", "merge.safetensors/"],
            "mapmerge select: argument --out: 'merge.safetensors/' ends in a slash (a folder) but names a .safetensors "
            "file; drop the slash to write the file; see mapmerge select --help",
        ),
        (["status", ""], "mapmerge status: argument results: empty; give a path; see mapmerge status --help"),
        (
            ["select", str(R)],
            "mapmerge select: the following arguments are required: --prefer; see mapmerge select --help",
        ),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and capsys.readouterr().err == message + "\n"
    assert bad.read_bytes() == b"PAR1 damaged"  # `--d` deleted nothing
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("mapmerge ")


def expected_choice(
    R: Path, preference: dict[str, float], method: str = "balanced", tasks=TASKS, rho: float = 0.05
) -> dict[str, float]:
    """What select should merge: the run refined its front, so the measured front's pick (the rule by hand)."""
    measured = sample_metrics(
        read_table(R / "groups/all/samples.parquet"), read_table(R / "groups/all/metrics.parquet")
    )
    kept = pareto.non_dominated(measured[[f"accuracy_{t}" for t in tasks]].to_numpy(), [True] * len(tasks))
    front = measured.iloc[kept]
    F = front[[f"accuracy_{t}" for t in tasks]].to_numpy()
    weights = list(normalize_preference(preference, tasks).values())
    if method == "balanced":
        ref = read_table(R / "reference.parquet").query("metric == 'accuracy'").set_index(["model", "task"])["value"]
        F = np.column_stack(
            [(F[:, i] - ref[("pretrained", t)]) / (ref[(t, t)] - ref[("pretrained", t)]) for i, t in enumerate(tasks)]
        )
        regret = np.array(weights) * (1 - F)
        kept = F[:, np.array(weights) > 0].min(axis=1) >= BALANCED_FLOOR  # no weighted task given up
        assert kept.any()  # (else balanced falls back to the weighted sum)
        index = int(np.argmin(np.where(kept, regret.max(axis=1) + rho * regret.sum(axis=1), np.inf)))
    else:
        index = select_point(F, weights, [True] * len(tasks), method)
    return {t: float(front[f"c_{t}"].iloc[index]) for t in tasks}


def test_select_two_preferences(runs, capsys):
    R = runs["plain"]
    chosen = []
    cases = [
        ("rot90=1", {"rot90": 1.0}, "rot90-1"),
        ("invert=3,flip_parity=1", {"invert": 3.0, "flip_parity": 1.0}, "invert-3_flip_parity-1"),
    ]
    for text, preference, name in cases:
        assert main(["select", str(R), "--prefer", text]) == 0
        out = capsys.readouterr().out
        path = R / "selected" / f"{name}.safetensors"
        assert f"merged checkpoint: {path}" in out and "chosen: the measured one" in out
        coefficients = json.loads(safetensors_metadata(path)["coefficients"])
        assert coefficients == expected_choice(R, preference)
        rows = {
            line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("predicted ", "measured "))
        }
        assert set(rows) == {"predicted", "measured"}  # both candidates, each marked
        assert rows["predicted"][:3] == ["predicted", "(not", "evaluated)"] and "[" in out  # with its interval
        assert "[low, high]: the predictions' 90% prediction intervals (surrogate.interval), not measurements" in out
        assert rows["measured"][4:7] == [f"{coefficients[t]:.4f}" for t in TASKS]
        state = load_state_dict(path)
        build_model(width=WIDTH).load_state_dict(state, strict=True)
        reference = merge_files(
            R / "checkpoints" / "pretrained.safetensors",
            {t: R / "task_vectors" / f"{t}.safetensors" for t in TASKS},
            [coefficients[t] for t in TASKS],
        )
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
        chosen.append(coefficients)
    assert chosen[0] != chosen[1]


def test_select_with_the_runs_preference_gives_the_runs_merge(runs, tmp_path, capsys):
    R = runs["plain"]
    out = tmp_path / "same.safetensors"
    # the plain run's task arithmetic draws nothing: a --seed would be ignored, so it is refused
    err = refused(["select", str(R), "--prefer", "rot90=1", "--seed", "3", "--out", str(out)], 2, capsys, R, tmp_path)
    assert err.startswith("mapmerge select: --seed 3: the run's merge operator ") and "draws no random masks" in err
    assert main(["select", str(R), "--prefer", "rot90=1,invert=1,flip_parity=1", "--out", str(out)]) == 0
    capsys.readouterr()
    choice = read_table(R / "groups" / "all" / "choice.parquet")
    assert json.loads(safetensors_metadata(out)["coefficients"]) == {t: float(choice[f"c_{t}"].iloc[0]) for t in TASKS}
    ours, theirs = load_state_dict(out), load_state_dict(R / "groups" / "all" / "merged.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs) and ours.keys() == theirs.keys()


def test_select_takes_the_runs_rho_and_refuses_one_weighted_sum_has_not(runs, tmp_path, capsys):
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    prefer = ["select", str(R), "--prefer", "rot90=1,invert=3"]
    err = refused([*prefer, "--max-shard-size", "1MB"], 2, capsys, R)
    assert err == (
        f"mapmerge select: --max-shard-size: has no effect ({R}: not a transformers run); it shards a transformers "
        "run's task folders\n"
    )
    err = refused([*prefer, "--method", "weighted_sum", "--rho", "0.2"], 2, capsys, R)
    assert (
        err
        == "mapmerge select: --rho: has no effect with --method weighted_sum; only tchebycheff and balanced take it\n"
    )
    # the run's own selection.*, as its choice.parquet records it: balanced, with rho 5
    choice = R / "groups" / "all" / "choice.parquet"
    metadata = {**table_metadata(choice), "mapmerge.selection": json.dumps({"method": "balanced", "rho": 5.0})}
    write_table(read_table(choice), choice, "merge_group", extra=metadata)
    assert main(prefer) == 0 and main([*prefer, "--rho", "0.05"]) == 0  # the run's rho, then another (its own file)
    capsys.readouterr()
    own, other = (
        json.loads(safetensors_metadata(R / "selected" / f"{name}.safetensors")["coefficients"])
        for name in ("rot90-1_invert-3", "rot90-1_invert-3_balanced-rho0.05")
    )
    preference = {"rot90": 1.0, "invert": 3.0}
    assert own == expected_choice(R, preference, rho=5.0) and other == expected_choice(R, preference, rho=0.05)
    assert own != other


def test_select_names_a_pick_by_another_metric_apart(runs, tmp_path, capsys):
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    prefer = ["select", str(R), "--prefer", "rot90=1,invert=3"]
    assert main([*prefer, "--metric", "accuracy"]) == 0 and main([*prefer, "--metric", "loss"]) == 0
    capsys.readouterr()
    own, loss = (R / "selected" / f"{name}.safetensors" for name in ("rot90-1_invert-3", "rot90-1_invert-3_loss"))
    assert json.loads(safetensors_metadata(own)["selection"])["metric"] == "accuracy"  # the run's objective
    assert json.loads(safetensors_metadata(loss)["selection"])["metric"] == "loss"  # its own file, not the above


def test_status_names_selected_merges_of_another_front(runs, tmp_path, capsys):
    """A merge select wrote, from the front the run has since replaced (its settings or files changed): status says so;
    the same front's rows written again with other provenance (a rebatching of its evaluations) are not another front."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    shutil.rmtree(R / "selected", ignore_errors=True)  # other tests' merges
    assert main(["select", str(R), "--prefer", "rot90=1,invert=3"]) == 0 and main(["status", str(R)]) == 0
    assert "selected/:" not in capsys.readouterr().out
    front = R / "groups" / "all" / "front.parquet"
    rows, metadata = read_table(front), table_metadata(front)
    write_table(rows, front, "pareto_front", extra={**metadata, "mapmerge.inputs": "{}"})  # the same rows, rewritten
    assert file_hash(front) != file_hash(runs["plain"] / "groups" / "all" / "front.parquet")
    assert main(["status", str(R)]) == 0 and "selected/:" not in capsys.readouterr().out
    write_table(rows.iloc[1:], front, "pareto_front", extra=metadata)  # another front
    assert main(["status", str(R)]) == 0
    assert (
        "selected/: 1 merge(s) of `mapmerge select` picked from another front than the run's now (its settings or "
        "files changed since): rot90-1_invert-3.safetensors; select them again, or delete them"
    ) in capsys.readouterr().out


def test_status_and_summary_name_tables_made_from_files_a_stopped_rerun_replaced(runs, tmp_path, capsys):
    """A rerun with another setting stopped part-way (Ctrl-C) leaves its new round tables beside the earlier
    setting's samples, fit, front and choice, and Snakemake deletes a table before the job that remakes it: status
    says those are stale and does not present the earlier choice as the run's; summary says so first, select warns."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    capsys.readouterr()
    assert main(["status", str(R)]) == 0 and "stale" not in capsys.readouterr().out
    rounds = R / "groups" / "all" / "rounds"
    r01 = read_table(rounds / "r01.parquet")
    write_table(r01.assign(c_rot90=r01["c_rot90"] / 2), rounds / "r01.parquet", "refine_round")  # the new setting's
    (R / "groups" / "all" / "evals" / "r01b0000.parquet").unlink()  # Snakemake deletes it before it remakes it
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    states = dict(re.findall(r"^(\w+)\s+(done|stale|partial|missing|unreadable|-)\s", out, re.M))
    assert {stage for stage, state in states.items() if state == "stale"} == {
        "collect_metrics",
        "fit_surrogate",
        "pareto_front",
        "merge_group",
        "ledger",
        "aggregate",
        "report_tables",
    }, out
    line = (
        "stale: made before files they read were replaced, removed or added: groups/all/samples.parquet "
        "(r01.parquet); groups/all/metrics.parquet (r01b0000.parquet); groups/all/surrogate.parquet (metrics.parquet, "
        "r01b0000.parquet, samples.parquet); groups/all/front.parquet (samples.parquet, surrogate.parquet); "
        "groups/all/choice.parquet (front.parquet, metrics.parquet, samples.parquet and 1 more); evaluations.parquet "
        "(r01b0000.parquet). These tables, what follows them and the chosen "
        "merge are not those of the files as they are (a run stopped part-way through a change of setting, or a file "
        "deleted); run snakemake again to make them anew"
    )
    assert line in out.splitlines() and "What to know about the chosen merge" not in out
    assert main(["summary", str(R)]) == 0 and capsys.readouterr().out.splitlines()[0] == line
    # select picks from the setting before, and says so; while a driver runs, it says that too
    driver = hold_in_a_process(R)
    try:
        assert main(["select", str(R), "--prefer", "rot90=1"]) == 0
    finally:
        driver.kill()
        driver.wait()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "mapmerge select: warning: groups/all/choice.parquet, groups/all/front.parquet, groups/all/metrics.parquet and "
        "2 more made before files they read were replaced, removed or added (a run stopped part-way through a change "
        "of setting, or a file deleted): this pick is of the setting before; run snakemake again first for the current one's"
    )
    assert err[1].startswith(f"mapmerge select: warning: a snakemake driver (pid {driver.pid} ") and len(err) == 2


def test_a_round_missing_before_the_last_makes_its_stage_partial(runs, tmp_path, capsys):
    """A rerun stopped after Snakemake deleted a round to remake it (or a round deleted by hand) leaves the rounds
    after it: the stage is partial and names the missing round, not done."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    rounds = R / "groups" / "all" / "rounds"
    shutil.copy(rounds / "r01.parquet", rounds / "r02.parquet")  # a second refinement round
    capsys.readouterr()
    assert main(["status", str(R)]) == 0 and status_rows(capsys.readouterr().out)["refine_round"][0] == "done"
    (rounds / "r01.parquet").unlink()
    assert main(["status", str(R)]) == 0
    state, artifacts = status_rows(capsys.readouterr().out)["refine_round"]
    assert state == "partial" and artifacts.endswith("; missing before the last: groups/all/rounds/r01.parquet"), (
        artifacts
    )


def test_a_bayesian_runs_refinement_rounds_after_its_own_are_done(runs, tmp_path, capsys):
    """A group's rounds are one sequence, the Bayesian ones first: the refinement round after them (r02 here) was
    called partial, with the Bayesian round r01, which is there, named as missing before it."""
    R = Path(shutil.copytree(runs["bayes"], tmp_path / "bayes"))
    shutil.copy(runs["plain"] / "groups/all/rounds/r01.parquet", R / "groups/all/rounds/r02.parquet")  # pick, front
    capsys.readouterr()
    assert main(["status", str(R)]) == 0
    rows = status_rows(capsys.readouterr().out)
    assert rows["propose_round"] == ["done", "groups/<g>/rounds/r<NN>.parquet after r00: 1"]
    assert rows["refine_round"][0] == "done" and "missing" not in rows["refine_round"][1], rows["refine_round"]


def test_a_run_stopped_in_its_extractions_is_partial(runs, tmp_path, capsys):
    """Stopped while extracting task vectors, before anything names the run's tasks: status counted the tasks from
    the vectors made so far and called the stage done; the benchmark's other tasks are named."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    for made_later in (R / "task_vectors/flip_parity.safetensors", R / "task_vectors.parquet", R / "reference.parquet"):
        made_later.unlink()
    shutil.rmtree(R / "levels")
    capsys.readouterr()
    assert main(["status", str(R)]) == 0
    assert status_rows(capsys.readouterr().out)["extract_task_vector"] == [
        "partial",
        "task_vectors/<task>.safetensors: 2 of 2 tasks; the benchmark also trained flip_parity, with none yet",
    ]


def new_choice(choice: Path) -> None:
    """Rewrite a group's choice as a rerun for another preference would: other coefficients, the same inputs."""
    table = read_table(choice)
    first = next(c for c in table.columns if c.startswith("c_"))
    write_table(table.assign(**{first: table[first] / 2}), choice, "merge_group", extra=table_metadata(choice))


def test_status_names_the_run_tables_of_a_choice_or_a_round_a_stopped_rerun_made_after_them(runs, tmp_path, capsys):
    """A change of preference stopped after merge_group leaves a new choice beside the run's tables of the earlier
    one, and a raised refine.rounds stopped after a new round's batch leaves a round and a batch that the tables
    written before do not list: status calls those tables stale (for the new choice, only the run's own), summary
    says so before the earlier report; in nested MAP, whose groups share file names, neither false alarm nor miss."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    choice = R / "groups" / "all" / "choice.parquet"
    new_choice(choice)
    capsys.readouterr()
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    assert {stage for stage, (state, _) in status_rows(out).items() if state == "stale"} == {
        "aggregate",
        "report_tables",
    }, out
    line = next(line for line in out.splitlines() if line.startswith("stale: "))
    assert (
        "pareto.parquet (choice.parquet); measured.parquet (choice.parquet); selected.parquet (choice.parquet)" in line
    )
    assert "groups/all/" not in line and "What to know about the chosen merge" not in out
    assert main(["summary", str(R)]) == 0 and capsys.readouterr().out.splitlines()[0] == line

    R = Path(shutil.copytree(runs["plain"], tmp_path / "rounds"))
    group = R / "groups" / "all"
    last = max(p for p in (group / "rounds").glob("r*.parquet"))
    number = int(last.stem[1:]) + 1
    shutil.copy(last, group / "rounds" / f"r{number:02d}.parquet")  # copies made now: newer than the tables
    shutil.copy(group / "evals" / f"{last.stem}b0000.parquet", group / "evals" / f"r{number:02d}b0000.parquet")
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    states = {stage: state for stage, (state, _) in status_rows(out).items()}
    assert {stage for stage, state in states.items() if state == "stale"} >= {
        "collect_metrics",
        "ledger",
        "aggregate",
    }, out
    line = next(line for line in out.splitlines() if line.startswith("stale: "))
    assert f"groups/all/samples.parquet (r{number:02d}.parquet)" in line
    assert f"groups/all/metrics.parquet (r{number:02d}b0000.parquet)" in line
    assert f"evaluations.parquet (r{number:02d}b0000.parquet)" in line

    # nested MAP: every group's choice, batch and plan shares its name with another group's
    capsys.readouterr()
    assert main(["status", str(runs["nested"])]) == 0 and "stale" not in capsys.readouterr().out
    R = Path(shutil.copytree(runs["nested"], tmp_path / "nested"))
    final = sorted((R / "groups").iterdir())[-1] / "choice.parquet"
    new_choice(final)
    assert main(["status", str(R)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("stale: "))
    assert "selected.parquet (choice.parquet)" in line and "groups/" not in line.split(". These tables")[0]


def test_the_two_task_plot_of_an_earlier_setting_is_told_apart_and_pruned(runs, tmp_path, capsys):
    """plots/front_2d.png left by the same name's run of two tasks (Snakemake leaves a file no longer an output) in a
    run of three: status counts it apart, summary does not list it as the run's, prune removes it."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    plots = R / "plots"
    shutil.copy(plots / "front_parallel.png", plots / "front_2d.png")  # as a two-task run drew it
    capsys.readouterr()
    assert main(["status", str(R)]) == 0
    row = status_rows(capsys.readouterr().out)["aggregate"]
    assert row[0] == "done" and row[1].endswith("plots/: 1 PNG (plots/front_2d.png left from an earlier setting)")
    assert main(["summary", str(R)]) == 0
    assert "front_2d" not in capsys.readouterr().out
    assert main(["prune", str(R)]) == 0
    assert "removed plots/front_2d.png: the two-task plot, left from an earlier setting" in capsys.readouterr().out
    assert sorted(p.name for p in plots.glob("*.png")) == ["front_parallel.png"]


def test_status_reads_the_front_file_hash_of_merges_select_wrote_before_it_hashed_rows(runs, tmp_path, capsys):
    """A merge whose record holds the hash of the front's file (select before front_rows): compared with the file's."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    shutil.rmtree(R / "selected", ignore_errors=True)
    assert main(["select", str(R), "--prefer", "rot90=1,invert=3"]) == 0
    merge, front = R / "selected" / "rot90-1_invert-3.safetensors", R / "groups" / "all" / "front.parquet"
    with safe_open(merge, "pt") as fh:
        header = fh.metadata()
    record = json.loads(header["mapmerge"])
    record["front"] = file_hash(front)
    del record["front_rows"]
    save_file(load_file(merge), merge, {**header, "mapmerge": json.dumps(record)})
    capsys.readouterr()
    assert main(["status", str(R)]) == 0 and "selected/:" not in capsys.readouterr().out
    write_table(read_table(front), front, "pareto_front", extra={**table_metadata(front), "mapmerge.inputs": "{}"})
    assert main(["status", str(R)]) == 0 and "rot90-1_invert-3.safetensors" in capsys.readouterr().out


def test_select_says_when_balanced_falls_back_to_the_weighted_sum_above_pretrained(runs, tmp_path, capsys):
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    paths = Layout(R)
    real = measured_front(
        sample_metrics(read_table(paths.samples("all")), read_table(paths.metrics("all"))), "accuracy", TASKS
    )
    F = real[[f"accuracy_{t}" for t in TASKS]].to_numpy()
    best_sum = int(np.argmax(F.mean(axis=1)))
    kept = int(np.argmax((F - F[best_sum]).max(axis=1)))  # the front point farthest above it on some task
    write_table(pretrained_just_below(read_table(paths.reference), F[kept]), paths.reference, "evaluate_reference")
    above = (F > F[kept] - 0.01).all(axis=1)  # no front point reaches gain 0.1 on every task: it would dominate `kept`
    assert above[kept] and not above[best_sum]
    expected = real.iloc[int(np.argmax(np.where(above, F.mean(axis=1), -np.inf)))]
    out = tmp_path / "x.safetensors"
    assert main(["select", str(R), "--prefer", "rot90=1,invert=1,flip_parity=1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "the measured candidate: selection weighted_sum_above_pretrained instead of balanced: no measured point keeps "
        "every weighted task's gain at 0.1 or more, so a measured point's score is the preference-weighted sum of the "
        "objective; -inf where a task is at or below its pretrained model" in text
    )
    assert json.loads(safetensors_metadata(out)["coefficients"]) == {t: float(expected[f"c_{t}"]) for t in TASKS}


def test_a_predicted_pick_records_and_reports_balanceds_fallback(runs, tmp_path):
    """A run without refinement rounds merges the predicted front's pick: where balanced falls back there,
    choice.parquet's metadata records the rule and the run's notes say it; where it does not, no such key."""
    R = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    paths, gdir = Layout(R), R / "groups" / "all"
    front = read_table(paths.front("all"))
    F = front[[f"accuracy_{t}" for t in TASKS]].to_numpy()
    best_sum = int(np.argmax(F.mean(axis=1)))
    kept = int(np.argmax((F - F[best_sum]).max(axis=1)))
    assert not (F >= F[kept] + 0.09).all(axis=1).any()  # no point reaches gain 0.1 on every task
    above = (F > F[kept] - 0.01).all(axis=1)
    assert above[kept] and not above[best_sum]
    original = read_table(paths.reference)
    files = {
        "pretrained": R / "checkpoints" / "pretrained.safetensors",
        "vectors": {t: R / "task_vectors" / f"{t}.safetensors" for t in TASKS},
        "checkpoints": {t: R / "checkpoints" / f"{t}.safetensors" for t in TASKS},
    }
    params = {"selection": {"method": "balanced", "rho": 0.05}, "preference": {}, "objective": "accuracy"}

    def merge(reference: pd.DataFrame) -> tuple[pd.Series, dict[str, str]]:
        write_table(reference, paths.reference, "evaluate_reference")
        merge_group.run_merge_group(
            params,
            **files,
            plan=R / "levels" / "level1.parquet",
            front=paths.front("all"),
            reference=paths.reference,
            group="all",
            merged=gdir / "merged.safetensors",
            vector=gdir / "vector.safetensors",
            choice=gdir / "choice.parquet",
            folders=gdir / "merged",
        )
        return read_table(gdir / "choice.parquet").iloc[0], table_metadata(gdir / "choice.parquet")

    choice, metadata = merge(pretrained_just_below(original, F[kept]))
    assert metadata["mapmerge.rule"] == "weighted_sum_above_pretrained"
    expected = front.iloc[int(np.argmax(np.where(above, F.mean(axis=1), -np.inf)))]
    assert [choice[f"c_{t}"] for t in TASKS] == [expected[f"c_{t}"] for t in TASKS]
    assert group_notes(R, "all")[:2] == [
        "the chosen merge is the predicted front's pick for the preference (no refinement rounds): chosen on "
        "predictions (choice.parquet), then measured (measured_* in selected.parquet)",
        "selection weighted_sum_above_pretrained instead of balanced: no predicted point keeps every weighted task's "
        "gain at 0.1 or more, so a predicted point's score is the preference-weighted sum of the objective; -inf where "
        "a task is at or below its pretrained model",
    ]
    _, metadata = merge(original)  # balanced applies: no key
    assert "mapmerge.rule" not in metadata
    assert not any("instead of balanced" in line for line in group_notes(R, "all"))


@pytest.fixture(scope="module")
def torch_run(runs, tmp_path_factory) -> tuple[Path, Path]:
    """(a user model's run, its checkpoints' folder): the benchmark's checkpoints saved as torch state dicts outside
    the run folder, the benchmark's builder and evaluators; the run folder records only their names and hashes."""
    root = tmp_path_factory.mktemp("torch_model")
    ckpts = root / "checkpoints"
    ckpts.mkdir()
    for path in (runs["plain"] / "checkpoints").glob("*.safetensors"):
        torch.save(load_state_dict(path), ckpts / f"{path.stem}.pt")
    builtin = load_config(REPO / "config", overrides=["name=plain", f"results_dir='{runs['plain'].parent}'", *SETTINGS])
    model = {
        "builder": builtin["model"]["builder"],
        "pretrained": str(ckpts / "pretrained.pt"),
        "merge": {"include": ["*"], "exclude": ["head.*"]},
        "tasks": {
            t: {"checkpoint": str(ckpts / f"{t}.pt"), "evaluator": builtin["model"]["tasks"][t]["evaluator"]}
            for t in TASKS
        },
    }
    (root / "experiment.yaml").write_text(json.dumps({"model": model}))  # JSON is YAML
    return build_run(root / "results", "user", [], experiment=root / "experiment.yaml"), ckpts


def refused(command: list[str], status: int, capsys, *untouched: Path) -> str:
    """The one line a refused command prints on stderr; it exits with `status` and writes or changes nothing under `untouched`."""
    before = snapshot(*untouched)
    capsys.readouterr()  # what came before
    assert main(command) == status
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert snapshot(*untouched) == before
    return captured.err


def with_largest_tensor_changed(source: Path, out: Path) -> Path:
    """A copy of a checkpoint whose largest tensor differs a little (its 3 smallest, and all but one, are the same)."""
    state = load_state_dict(source)
    largest = max(state, key=lambda name: state[name].numel())
    state[largest] = state[largest] + 0.01
    if out.suffix == ".safetensors":
        from mapmerge.tensors.checkpoints import save_safetensors

        save_safetensors(state, out)
    else:
        torch.save(state, out)
    return out


def test_select_tchebycheff_with_a_user_models_torch_pretrained(torch_run, capsys):
    R, ckpts = torch_run
    pre = ckpts / "pretrained.pt"
    assert (
        main(["select", str(R), "--prefer", "rot90=1,invert=2", "--method", "tchebycheff", "--pretrained", str(pre)])
        == 0
    )
    out = capsys.readouterr().out
    path = R / "selected" / "rot90-1_invert-2_tchebycheff.pt"
    assert f"merged checkpoint: {path}" in out
    assert f"checked: its hash {file_hash(pre)} is the one recorded in {R / 'reference.parquet'}" in out
    c = expected_choice(R, {"rot90": 1.0, "invert": 2.0}, method="tchebycheff")
    state = torch.load(path, weights_only=True)
    build_model(width=WIDTH).load_state_dict(state, strict=True)
    reference = merge_files(pre, {t: R / "task_vectors" / f"{t}.safetensors" for t in TASKS}, [c[t] for t in TASKS])
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_select_refuses_a_pretrained_whose_hash_is_not_the_runs(runs, torch_run, tmp_path, capsys):
    """Hashed whole and compared with the hash the run recorded: a checkpoint that differs only in its largest tensor is refused."""
    R = runs["plain"]
    own = R / "checkpoints" / "pretrained.safetensors"
    for given in (
        with_largest_tensor_changed(own, tmp_path / "other.safetensors"),
        R / "checkpoints" / "invert.safetensors",
    ):
        err = refused(
            [
                "select",
                str(R),
                "--prefer",
                "rot90=1",
                "--pretrained",
                str(given),
                "--out",
                str(tmp_path / "x.safetensors"),
            ],
            2,
            capsys,
            R,
            tmp_path,
        )
        assert err == (
            f"mapmerge select: --pretrained {given}: sha256[:16] {file_hash(given)}, but the run's pretrained checkpoint "
            f"pretrained.safetensors has {file_hash(own)} (recorded in {R / 'benchmark.parquet'}); the run's own is "
            f"{own}: leave --pretrained out\n"
        )
    # a user model's run: the hash is in the evaluations' metadata
    R, ckpts = torch_run
    other = with_largest_tensor_changed(ckpts / "pretrained.pt", tmp_path / "pretrained.pt")
    err = refused(["select", str(R), "--prefer", "rot90=1", "--pretrained", str(other)], 2, capsys, R, tmp_path, ckpts)
    assert err == (
        f"mapmerge select: --pretrained {other}: sha256[:16] {file_hash(other)}, but the run's pretrained checkpoint "
        f"pretrained.pt has {file_hash(ckpts / 'pretrained.pt')} (recorded in {R / 'reference.parquet'}); give the "
        "checkpoint the run merged (model.pretrained)\n"
    )
    err = refused(["select", str(R), "--prefer", "rot90=1"], 2, capsys, R)
    assert err == (
        f"mapmerge select: {R}: the pretrained checkpoint of a user model is not kept in the run folder (its artifacts "
        "record only file names and hashes); give it with --pretrained PATH (the experiment's model.pretrained)\n"
    )


def test_select_refuses_an_out_inside_the_run_folder(runs, torch_run, capsys):
    R = runs["plain"]
    for out in (R / "groups" / "all" / "front.parquet", R / "merged.safetensors", R / "selected" / ".." / "report.md"):
        err = refused(["select", str(R), "--prefer", "rot90=1", "--out", str(out)], 2, capsys, R)
        assert err == (
            f"mapmerge select: --out {out}: inside the run folder {R}, where select writes only under {R / 'selected'}/; "
            "give a path there or outside the run folder\n"
        )
    R, ckpts = torch_run
    pre = ckpts / "pretrained.pt"
    err = refused(
        ["select", str(R), "--prefer", "rot90=1", "--pretrained", str(pre), "--out", str(pre)], 2, capsys, R, ckpts
    )
    assert err == f"mapmerge select: --out {pre}: is the pretrained checkpoint itself; write the merge elsewhere\n"


def test_select_replaces_no_file_but_its_own_merges(runs, torch_run, tmp_path, capsys):
    """An --out that no checkpoint is named like, or an existing file select did not write (a task's checkpoint), is
    refused; a merge select wrote is replaced, .safetensors (its header) or torch (its state dict's _metadata)."""
    R = runs["plain"]
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    err = refused(["select", str(R), "--prefer", "rot90=1", "--out", str(notes)], 2, capsys, R, tmp_path)
    assert err == (
        f"mapmerge select: --out {notes}: not a checkpoint's file name; give one ending in .safetensors (or .pt, .pth, "
        ".bin for a torch state dict)\n"
    )
    out = tmp_path / "merge.safetensors"
    for preference in ("rot90=1", "invert=1"):  # the second replaces the first
        assert main(["select", str(R), "--prefer", preference, "--out", str(out)]) == 0
        assert json.loads(safetensors_metadata(out)["preference"]) == {preference.split("=")[0]: 1.0}
    R, ckpts = torch_run
    task = next(p for p in sorted(ckpts.glob("*.pt")) if p.name != "pretrained.pt")
    pre = ckpts / "pretrained.pt"
    command = ["select", str(R), "--prefer", "rot90=1", "--pretrained", str(pre), "--out"]
    err = refused([*command, str(task)], 2, capsys, R, ckpts)
    assert err == (
        f"mapmerge select: --out {task}: exists, and select replaces only the merges it wrote (it is not one); "
        "remove the file first, or give another path\n"
    )
    merge = tmp_path / "merge.pt"
    for preference in ("rot90=1", "invert=1"):  # a torch file of its own is replaced too: its _metadata says so
        assert main(["select", str(R), "--prefer", preference, "--pretrained", str(pre), "--out", str(merge)]) == 0
        state = torch.load(merge, weights_only=True)
        assert json.loads(state._metadata[""]["preference"]) == {preference.split("=")[0]: 1.0}
        build_model(width=WIDTH).load_state_dict(state)  # the metadata is no obstacle to loading it


@pytest.mark.parametrize(
    "prefer, message",
    [
        ("rot90=1,mnist=2", "preference names unknown task 'mnist'; known: rot90, invert, flip_parity"),
        ("rot90=1,invrt=2", "preference names unknown task 'invrt' (did you mean `invert`?); known: rot90, invert, "),
        ("rot90=1,invert=-1", "preference weight for task 'invert' must be a finite number >= 0; got -1.0"),
        ("rot90=x", "weight of task 'rot90' is not a number: 'x'"),
        ("rot90", "'rot90' is not task=weight"),
        ("rot90=0", "preference weights are all zero"),
        ("rot90=1e308,invert=1e308", "preference weights sum past the largest float: "),  # normalised: all 0
        ("", "empty; give task=weight,... or a preference file"),  # a shell variable left unset
        ("rot90=1,,invert=1", "an empty item in 'rot90=1,,invert=1' (two commas, or one first)"),
        (",rot90=1", "an empty item in ',rot90=1' (two commas, or one first)"),
    ],
)
def test_select_refuses_a_bad_preference(runs, prefer, message, capsys):
    assert main(["select", str(runs["plain"]), "--prefer", prefer]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mapmerge select: --prefer: ") and message in err and err.count("\n") == 1


def test_select_takes_a_preference_file(runs, tmp_path, capsys):
    """--prefer FILE: the config's preference file (YAML task: weight) picks as the same weights written inline; its
    faults name the file."""
    R = runs["plain"]
    (tmp_path / "prefs.yaml").write_text("rot90: 2\ninvert: 1\n")
    merges = {}
    for prefer in (str(tmp_path / "prefs.yaml"), "rot90=2,invert=1"):
        merges[prefer] = tmp_path / f"{len(merges)}.safetensors"
        assert main(["select", str(R), "--prefer", prefer, "--out", str(merges[prefer])]) == 0
    capsys.readouterr()
    first, second = (load_file(path) for path in merges.values())
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    odd = tmp_path / "w=2" / "prefs.yaml"  # a file whose path holds '=' is a file, not task=weight
    odd.parent.mkdir()
    odd.write_text("rot90: 2\ninvert: 1\n")
    assert main(["select", str(R), "--prefer", str(odd), "--out", str(tmp_path / "odd.safetensors")]) == 0
    capsys.readouterr()
    odd_merge = load_file(tmp_path / "odd.safetensors")
    assert all(torch.equal(odd_merge[k], first[k]) for k in first)
    for text, message in (
        ("rot90: two\n", "bad.yaml: preference weight for task 'rot90' must be a finite number >= 0; got 'two'"),
        ("- rot90\n", "bad.yaml: must be a mapping task: weight"),
        ("", "bad.yaml: empty; give its task: weight lines"),
        ("rot90: [2\n", "bad.yaml: not valid YAML (line 2"),
        ("rot9: 2\n", "bad.yaml: preference names unknown task 'rot9' (did you mean `rot90`?"),
        ("rot90: 0\ninvert: 0\n", "bad.yaml: preference weights are all zero"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        assert main(["select", str(R), "--prefer", str(tmp_path / "bad.yaml")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mapmerge select: --prefer: preference file {tmp_path}/") and message in err, err
    assert main(["select", str(R), "--prefer", str(tmp_path)]) == 2
    assert f"--prefer: preference file {tmp_path}: a folder, not a file" in capsys.readouterr().err
    assert main(["select", str(R), "--prefer", str(tmp_path / "none.yaml")]) == 2
    assert f"--prefer: preference file {tmp_path / 'none.yaml'}: not found" in capsys.readouterr().err


def test_select_in_a_nested_run(runs, tmp_path, capsys):
    R = runs["nested"]
    top = groups.group_info(read_table(R / "levels" / "level2.parquet"), "L2g0")
    # DARE draws masks from the run's seed, which merged.safetensors records; another one is refused
    assert main(["select", str(R), "--prefer", "rot90=1", "--seed", "7", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--seed 7: the run merged with seed 0" in capsys.readouterr().err
    assert main(["summary", str(R)]) == 0  # the final merge is the one named as the merged model
    out = capsys.readouterr().out.splitlines()
    merges = [line.split() for line in out if line.startswith(("  level merge:", "  merged model:"))]
    assert merges == [["level", "merge:", str(R / "groups/L1g0/merged.safetensors")]] + [
        ["merged", "model:", str(R / "groups/L2g0/merged.safetensors")]
    ]
    assert main(["select", str(R), "--prefer", "rot90=1"]) == 0
    out = capsys.readouterr().out
    assert "nested MAP: only the top group L2g0 is chosen again" in out
    # refined: the measured front of the top group's real evaluations, balanced against the reference models
    gdir = R / "groups" / "L2g0"
    measured = sample_metrics(read_table(gdir / "samples.parquet"), read_table(gdir / "metrics.parquet"))
    front = measured_front(measured, "accuracy", top["tasks"])
    reference = reference_values(read_table(R / "reference.parquet"), "accuracy", top["tasks"])
    index, _, _ = pick_point(front, top, {"rot90": 1.0}, "accuracy", "balanced", 0.05, reference)
    c = [float(front[f"c_{m}"].iloc[index]) for m in top["members"]]
    path = R / "selected" / "rot90-1.safetensors"
    assert json.loads(safetensors_metadata(path)["coefficients"]) == dict(zip(top["members"], c))
    vectors = {
        m: R / "task_vectors" / f"{m}.safetensors" if m in TASKS else R / "groups" / m / "vector.safetensors"
        for m in top["members"]
    }
    operator = json.loads(safetensors_metadata(R / "groups" / "L2g0" / "merged.safetensors")["operator"])
    assert operator["operator"] == "dare"
    reference = merge_files(R / "checkpoints" / "pretrained.safetensors", vectors, c, operator, 0)
    state = load_state_dict(path)
    build_model(width=WIDTH).load_state_dict(state, strict=True)
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_plot_draws_the_aggregate_plots_again(runs, tmp_path, capsys, monkeypatch):
    from mapmerge.outputs import plots

    R = runs["plain"]
    assert main(["plot", str(R), "--out", str(tmp_path / "plots")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "plots" / "front_parallel.png")]
    assert (tmp_path / "plots" / "front_parallel.png").read_bytes() == (R / "plots" / "front_parallel.png").read_bytes()
    titles, save = [], plots.save  # drawn in loss, the accuracy fronts say which metric made them
    monkeypatch.setattr(plots, "save", lambda fig, path: titles.append(fig._suptitle.get_text()) or save(fig, path))
    assert main(["plot", str(R), "--out", str(tmp_path / "loss"), "--metric", "loss"]) == 0
    assert len(titles) == 1 and titles[0].endswith(" (fronts by accuracy, drawn in loss)"), titles
    capsys.readouterr()
    copy = Path(shutil.copytree(R, tmp_path / "plain"))  # without --out, in another metric: beside the run's own
    own = {p: p.read_bytes() for p in (copy / "plots").glob("*.png")}
    assert main(["plot", str(copy), "--metric", "loss"]) == 0
    assert capsys.readouterr().out.split() == [str(copy / "plots" / "loss" / "front_parallel.png")]
    assert {p: p.read_bytes() for p in (copy / "plots").glob("*.png")} == own
    assert main(["plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err.startswith("mapmerge plot: ")
    assert not (tmp_path / "new").exists()  # no folder made for a refused command
    png = tmp_path / "plots" / "front_parallel.png"
    err = refused(["plot", str(R), "--out", str(png)], 2, capsys, R, tmp_path)
    assert err == f"mapmerge plot: --out {png}: is a file; give a folder for the PNGs\n"
    err = refused(["plot", str(R), "--out", str(png / "sub")], 2, capsys, R, tmp_path)
    assert err == f"mapmerge plot: --out {png / 'sub'}: cannot be made a folder for the PNGs (Not a directory)\n"
    for inside in (R / "groups", R):  # among the run's artifacts (plots/ and a folder under it are the run's own)
        err = refused(["plot", str(R), "--out", str(inside)], 2, capsys, R)
        assert err.startswith(
            f"mapmerge plot: --out {inside}: inside the run folder {R}, where plot writes only under "
        )
    err = refused(["plot", str(R), "--out", str(R.parent)], 2, capsys, R)
    assert err.startswith(f"mapmerge plot: --out {R.parent}: holds the run folder {R}, ")
    assert main(["plot", str(copy), "--out", str(copy / "plots" / "mine")]) == 0
    # while a driver runs, the run's own plots are its aggregate job's: not drawn over; another folder is drawn
    driver = hold_in_a_process(copy)
    try:
        for command in (["plot", str(copy)], ["plot", str(copy), "--out", str(copy / "plots")]):
            err = refused(command, 2, capsys, copy)
            assert err.startswith(f"mapmerge plot: a snakemake driver (pid {driver.pid} ") and err.endswith(
                f"is running on {copy}, whose aggregate job draws {copy / 'plots'}/; wait for it to finish, or give "
                "--out another folder\n"
            )
        assert main(["plot", str(copy), "--out", str(tmp_path / "while")]) == 0
    finally:
        driver.kill()
        driver.wait()


def test_select_and_plot_before_the_front_exists(runs, capsys):
    for command in (["select", str(runs["bayes"]), "--prefer", "rot90=1"], ["plot", str(runs["bayes"])]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err == (
            f"mapmerge: {runs['bayes'] / 'groups' / 'all' / 'front.parquet'}: not found; the final group all has no "
            f"Pareto front yet (`mapmerge status {runs['bayes']}` shows how far the run got)\n"
        )
