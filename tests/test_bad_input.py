"""Bad input never costs an evaluation: every case of the table fails before the first job, with one line.

The cases are mistakes users make in an experiment file or on the command line, on the run of a
model nobody here wrote (a copy of examples/custom_mlp). Each is checked three ways: load_config raises
the one-line ConfigError (fast lane); `snakemake -n` exits non-zero with that line; and a real
`snakemake --cores 2` on the finished run folder does the same and leaves every file in it with its
bytes and mtime (Snakemake deletes a job's outputs before rerunning it, so a bad value that reached
the DAG would throw finished evaluations away).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from conftest import EXAMPLE_RUN, REPO, copy_example, copy_run, error_lines, example_run, snakemake_command
from mapmerge.run import preflight
from mapmerge.run.config import ConfigError, check_command_line, load_config
from mapmerge.run.preflight import check_device


@dataclass(frozen=True)
class Case:
    """A mistake: overrides on the command line and/or an edit of the experiment file, and the line it must give."""

    id: str
    message: str  # a regex the one line must match (after 'mapmerge: ' on the command line)
    overrides: tuple[str, ...] = ()
    edit: Callable[[dict, Path], None] | None = field(default=None, compare=False)  # (experiment dict, example folder)
    config: tuple[str, ...] = ()  # more KEY=VALUE items of Snakemake's --config


def _set(path: str, value: object) -> Callable[[dict, Path], None]:
    def edit(exp: dict, _: Path) -> None:
        *parents, last = path.split(".")
        node = exp
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


def _rename(path: str, new: str) -> Callable[[dict, Path], None]:
    def edit(exp: dict, _: Path) -> None:
        *parents, last = path.split(".")
        node = exp
        for key in parents:
            node = node[key]
        node[new] = node.pop(last)

    return edit


def _copy(source: str, key: str) -> Callable[[dict, Path], None]:
    """The checkpoint at `key` replaced by a copy of the example's file `source` (checkpoints_copy/copy.pt)."""

    def edit(exp: dict, example: Path) -> None:
        out = example / "checkpoints_copy" / "copy.pt"
        out.parent.mkdir(exist_ok=True)
        shutil.copyfile(example / source, out)
        _set(key, str(out.relative_to(example)))(exp, example)

    return edit


def _other_width_checkpoint(exp: dict, example: Path) -> None:
    """stripes_60's checkpoint replaced by one of a network with another hidden width (the example's model.build with
    hidden 16, untrained: only its shapes matter here)."""
    out = example / "checkpoints_h16" / "stripes_60.pt"
    if not out.exists():
        spec = importlib.util.spec_from_file_location("custom_mlp_model_h16", example / "model.py")
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)
        out.parent.mkdir(exist_ok=True)
        torch.save(model.build(hidden=16).state_dict(), out)
    exp["model"]["tasks"]["stripes_60"]["checkpoint"] = "checkpoints_h16/stripes_60.pt"


CASES = [
    # typos in the experiment file, at every level
    Case(
        "typo-model-key",
        r"experiment file .*bad\.yaml: model\.pretrianed: unknown key \(did you mean `pretrained`\?\)",
        edit=_rename("model.pretrained", "pretrianed"),
    ),
    Case(
        "typo-top-level",
        r"experiment file .*bad\.yaml: modle: unknown key \(did you mean `model`\?\)",
        edit=_rename("model", "modle"),
    ),
    Case(
        "typo-task-key",
        r"model\.tasks\.stripes_0\.checkpiont: unknown key \(did you mean `checkpoint`\?\)",
        edit=_rename("model.tasks.stripes_0.checkpoint", "checkpiont"),
    ),
    Case(
        "typo-group-key",
        r"experiment file .*: sampler\.factr: unknown key \(did you mean `factor`\?\)",
        edit=_set("sampler.factr", 2.0),
    ),
    Case(  # a config key given to Snakemake's --config itself, which Snakemake keeps and mapmerge would ignore
        "config-key",
        r"^--config seed: unknown key \(to set a config key: --config overrides='\[seed=5\]'",
        config=("seed=5",),
    ),
    Case("config-typo", r"^--config overide: unknown key \(did you mean `overrides`\?\)", config=("overide=[seed=1]",)),
    Case(  # experiment=$EXP with EXP unset in the shell: the default config's run instead
        "config-empty-experiment",
        r"^--config experiment: empty; give the experiment file's path",
        config=("experiment=",),
    ),
    Case(
        "unknown-key-override",
        r"^optimizer\.popsize: unknown key \(did you mean `pop_size`\?\)",
        overrides=("+optimizer.popsize=10",),
    ),
    # settings that cannot take effect (an experiment file's: a warning, test_config)
    Case(
        "inert-method-setting",
        r"^overrides: bayesian\.rounds=5: has no effect: method is map, and only method=bayesian reads bayesian\.\*",
        overrides=("bayesian.rounds=5",),
    ),
    Case(
        "inert-benchmark-setting",
        r"^overrides: benchmark\.width=8: has no effect: the model is your own",
        overrides=("benchmark.width=8",),
    ),
    # bad values
    Case(
        "limit-not-a-number",
        r"^model\.transformers\.limit: must be an integer, got 'abc'",
        overrides=("+model.transformers.limit=abc",),
    ),
    Case("factor-negative", r"^sampler\.factor: must be > 0, got -1", overrides=("sampler.factor=-1",)),
    Case("factor-zero", r"^sampler\.factor: must be > 0, got 0", overrides=("sampler.factor=0",)),
    Case(
        "factor-too-small",
        r"^sampler\.factor: 0\.5 gives 5 design points for the surrogate's 10 parameters .* at least 11: .* or add "
        r"refinement rounds",
        overrides=("sampler.factor=0.5", "refine.rounds=0"),
    ),
    Case(  # a design below P needs rounds that bring it above
        "factor-too-small-for-the-rounds",
        r"^sampler\.factor: 0\.5 gives 5 design points for the surrogate's 10 parameters \(3 coefficients per group\), "
        r"and refine\.rounds=1 add at most 2: together they need at least 11",
        overrides=("sampler.factor=0.5", "refine.rounds=1", "refine.points=1"),
    ),
    Case("factor-not-a-number", r"^sampler\.factor: must be a number, got 'abc'", overrides=("sampler.factor=abc",)),
    Case(
        "pop-size-zero",
        r"^optimizer\.pop_size: must be an integer in \[1, 100000\], got 0",
        overrides=("optimizer.pop_size=0",),
    ),
    Case(
        "pop-size-too-small",
        r"^optimizer\.pop_size: 3 is too small for 3 objectives; NSGA-III needs at least 6",
        overrides=("optimizer.pop_size=3",),
    ),
    Case(
        "tasks-fraction",
        r"^benchmark\.tasks: must be a number of tasks .* got 1\.5",
        overrides=("benchmark.tasks=1.5",),
    ),
    Case(
        "tasks-letters",
        r"^benchmark\.tasks: must be a number of tasks .* got 'abc'",
        overrides=("benchmark.tasks=abc",),
    ),
    Case("seed-letters", r"^seed: must be an integer, got 'abc'", overrides=("seed=abc",)),
    Case("box-empty", r"^sampler: lower \(1\) must be below upper \(1\)", overrides=("sampler.lower=1",)),
    Case(
        "on-error-choice",
        r"^evaluation\.on_error: must be one of fail, record, got 'skip'",
        overrides=("evaluation.on_error=skip",),
    ),
    Case(
        "device",
        r"^evaluation\.device: must be auto, cpu, cuda or cuda:N, got 'gpu'",
        overrides=("evaluation.device=gpu",),
    ),
    Case("method-typo", r"^method: must be one of map, nested, bayesian, got 'nestd'", overrides=("method=nestd",)),
    Case(
        "objective",
        r"^optimizer\.objective: must be one of accuracy, loss, got 'f1'",
        overrides=("optimizer.objective=f1",),
    ),
    Case(
        "enabled-not-bool",
        r"^validation\.enabled: must be true or false, got 'yes'",
        overrides=("validation.enabled=yes",),
    ),
    Case("density", r"^merge\.density: must be in \(0, 1\], got 0", overrides=("merge=ties", "merge.density=0")),
    Case(
        "vector-dtype",
        r"^model\.merge\.vector_dtype: must be one of float32, bfloat16, float16, got 'int8'",
        overrides=("model.merge.vector_dtype=int8",),
    ),
    Case("one-task", r"^tasks: must have at least 2 items", overrides=("tasks=[stripes_0]",)),
    Case("unknown-task", r"^tasks: unknown task 'nope'", overrides=("tasks=[stripes_0, nope]",)),
    Case("preference-task", r"preference names unknown task 'nope'", overrides=("+preference.nope=1",)),
    Case(
        "budget",
        r"^budget\.max_evaluations: plain MAP on 3 tasks plans at most 96 \(model, task\) evaluations, past the budget of 50; "
        r"use method=nested",
        overrides=("budget.max_evaluations=50",),
    ),
    Case("run-name", r"^name: 'a/b' is not a valid run name", overrides=("name=a/b",)),
    Case(  # a path where the run folder cannot be made: here a file in the way
        "results-dir",
        r"^results_dir: the run folder .*README\.md/custom_mlp cannot be made or written \(.*README\.md: Not a directory\)",
        overrides=(f"results_dir={REPO / 'README.md'}",),
    ),
    # files the config names, read before the first job
    Case(
        "missing-checkpoint",
        r"^model\.pretrained: .*nothere\.pt: checkpoint not found",
        edit=_set("model.pretrained", "nothere.pt"),
    ),
    Case(  # the pretrained checkpoint given as a task's: its task vector would be zero
        "checkpoint-pretrained",
        r"^model\.tasks\.stripes_60\.checkpoint: .*pretrained\.pt is also given as model\.pretrained; each task needs its own",
        edit=_set("model.tasks.stripes_60.checkpoint", "checkpoints/pretrained.pt"),
    ),
    Case(
        "checkpoint-twice",
        r"^model\.tasks\.stripes_120\.checkpoint: .*stripes_0\.pt is also given as model\.tasks\.stripes_0\.checkpoint;",
        edit=_set("model.tasks.stripes_120.checkpoint", "checkpoints/stripes_0.pt"),
    ),
    Case(  # a copy of the pretrained checkpoint: another path, the same bytes
        "checkpoint-copy",
        r"^model\.tasks\.stripes_60\.checkpoint: .*copy\.pt holds the same bytes as .*pretrained\.pt "
        r"\(model\.pretrained\); each task needs its own",
        edit=_copy("checkpoints/pretrained.pt", "model.tasks.stripes_60.checkpoint"),
    ),
    Case(
        "checkpoint-copy-task",
        r"^model\.tasks\.stripes_120\.checkpoint: .*copy\.pt holds the same bytes as .*stripes_0\.pt "
        r"\(model\.tasks\.stripes_0\.checkpoint\);",
        edit=_copy("checkpoints/stripes_0.pt", "model.tasks.stripes_120.checkpoint"),
    ),
    Case(
        "checkpoint-shape",
        r"^model\.tasks\.stripes_60\.checkpoint: .*checkpoints_h16/stripes_60\.pt: tensor '[\w.]+' has shape",
        edit=_other_width_checkpoint,
    ),
    Case(
        "evaluator-typo",
        r"^model\.tasks\.stripes_60\.evaluator\._target_: module model \(.*model\.py\) has no TaskEvalutor "
        r"\(did you mean `TaskEvaluator`\?\)$",
        edit=_set("model.tasks.stripes_60.evaluator._target_", "model.TaskEvalutor"),
    ),
    Case(  # an evaluator's argument mistyped: every evaluation job would fail building it
        "evaluator-argument",
        r"^model\.tasks\.stripes_60\.evaluator: model\.TaskEvaluator\(task, n, seed\): no argument 'tsk' "
        r"\(did you mean `task`\?\)$",
        edit=_rename("model.tasks.stripes_60.evaluator.task", "tsk"),
    ),
    Case(  # on the command line (Hydra alone would say to append it with '+', then the jobs would fail)
        "evaluator-argument-override",
        r"^model\.tasks\.stripes_0\.evaluator: model\.TaskEvaluator\(task, n, seed\): no argument 'tsk' "
        r"\(did you mean `task`\?\)$",
        overrides=("model.tasks.stripes_0.evaluator.tsk=stripes_0",),
    ),
    Case(  # a task the experiment file does not have: Hydra would make one of the argument alone
        "evaluator-argument-of-no-task",
        r"^overrides: model\.tasks\.stripes_9\.evaluator\.n=3: the config sets no model\.tasks\.stripes_9\.evaluator "
        r"to give an argument to$",
        overrides=("model.tasks.stripes_9.evaluator.n=3",),
    ),
    Case(
        "builder-argument",
        r"^model\.builder: model\.build\(hidden, n_classes\): no argument 'hiden' \(did you mean `hidden`\?\)$",
        edit=_rename("model.builder.hidden", "hiden"),
    ),
    Case(  # a builder whose module does not take the checkpoints' tensors: every evaluation job would fail loading them
        "builder-shape",
        r"^model\.builder: .*pretrained\.pt: does not fit model\.builder \(size mismatch for trunk\.0\.weight: copying "
        r"a param with shape torch\.Size\(\[32, 2\]\) from checkpoint, the shape in current model is torch\.Size\(\[16, 2\]\)",
        edit=_set("model.builder.hidden", 16),
    ),
    Case(
        "builder-module",
        r"^model\.builder\._target_: module modle not found in model\.python_path",
        edit=_set("model.builder._target_", "modle.build"),
    ),
    Case(
        "python-path", r"^model\.python_path: folder .*nowhere not found", edit=_set("model.python_path", ["nowhere"])
    ),
    Case(  # a head pattern mistyped: the heads would be merged, without a word
        "exclude-typo",
        r"^model\.merge\.exclude: 'heads\.\*' matches no tensor of the checkpoints \(did you mean `head\.\*`\?\)$",
        edit=_set("model.merge.exclude", ["heads.*"]),
    ),
    Case(  # one include pattern of two mistyped: its tensors would be left out of the merge
        "include-typo",
        r"^model\.merge\.include: 'trnk\.0\.\*' matches no tensor of the checkpoints \(did you mean `trunk\.0\.\*`\?\)$",
        edit=_set("model.merge.include", ["trunk.2.*", "trnk.0.*"]),
    ),
]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """A copy of examples/custom_mlp with its checkpoints made by its script (once per test session, conftest)."""
    return copy_example(tmp_path_factory, tmp_path_factory.mktemp("bad_input") / "custom_mlp")


def experiment_for(case: Case, example: Path, folder: Path) -> Path:
    """The experiment file a case runs with: the example's own, or an edited copy in folder/bad-<case> beside links
    to the example's model and checkpoints (relative paths hold; the example is not changed)."""
    if case.edit is None:
        return example / "experiment.yaml"
    exp = yaml.safe_load((example / "experiment.yaml").read_text())
    path = folder / f"bad-{case.id}" / "bad.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("model.py", "checkpoints"):
        if not (path.parent / name).exists():
            (path.parent / name).symlink_to(example / name)
    case.edit(exp, path.parent)
    path.write_text(yaml.safe_dump(exp))
    return path


def snakemake(
    workdir: Path, experiment: Path, overrides: tuple[str, ...], *args: str, config: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    cmd = snakemake_command(workdir, *args, overrides=[*EXAMPLE_RUN, *overrides], experiment=experiment)
    return subprocess.run([*cmd, *config], capture_output=True, text=True, timeout=600)  # --config's items end cmd


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under folder: its bytes' hash and mtime."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_table_has_enough_cases():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_load_config_refuses_with_one_line(case, example, tmp_path):
    with pytest.raises(ConfigError) as info:
        check_command_line(dict(item.split("=", 1) for item in case.config))
        load_config(
            REPO / "config",
            experiment=experiment_for(case, example, tmp_path),
            overrides=[*EXAMPLE_RUN, *case.overrides],
        )
    message = str(info.value)
    assert "\n" not in message
    assert re.search(case.message, message), message


def test_the_builder_check_leaves_a_large_model_and_sys_path_alone(example, tmp_path, monkeypatch):
    """A pretrained model over BUILD_CHECK_BYTES is not built by the driver (its builder may load weights itself): the
    mismatched builder of case builder-shape then passes, for its jobs to report; and the check leaves no folder of
    model.python_path on sys.path."""
    case = next(c for c in CASES if c.id == "builder-shape")
    path = list(sys.path)
    with pytest.raises(ConfigError, match="does not fit model.builder"):
        load_config(REPO / "config", experiment=experiment_for(case, example, tmp_path), overrides=EXAMPLE_RUN)
    assert sys.path == path
    monkeypatch.setattr(preflight, "BUILD_CHECK_BYTES", 1000)  # the example's model: 4.9 KB
    load_config(REPO / "config", experiment=experiment_for(case, example, tmp_path), overrides=EXAMPLE_RUN)


@pytest.mark.slow
def test_a_failed_run_changes_nothing_on_disk(tmp_path_factory, tmp_path):
    """From a finished run: the cases fail in a real run or a dry run, each with its line, and no file changes."""
    example, finished = example_run(tmp_path_factory)
    workdir = copy_run(finished, tmp_path / "work")
    results = workdir / "results" / "custom_mlp"
    assert (results / "selected.parquet").exists()
    before, inputs = snapshot(results), snapshot(example / "checkpoints")

    experiments = {case.id: experiment_for(case, example, tmp_path) for case in CASES}  # written before the runs

    def attempt(job: tuple[Case, tuple[str, ...]]) -> tuple[Case, tuple[str, ...], subprocess.CompletedProcess]:
        case, args = job
        return case, args, snakemake(workdir, experiments[case.id], case.overrides, *args, config=case.config)

    # Every case fails in load_config before any job (test_load_config_refuses_with_one_line, in-process, all of
    # them); the command line adds only the driver's one-line report, the same code for every ConfigError. So a
    # sixth of the table in a real run and a few in a dry run (the same Snakefile parse) prove that path: edits
    # of the experiment file and overrides, typos, bad values and files, both ways.
    # Snakemake's own --config keys are read before load_config, in the Snakefile: each of them in a real run.
    jobs = [(case, ()) for case in CASES[::6]] + [(case, ("-n",)) for case in CASES[2::15]]
    jobs += [(case, ()) for case in CASES if case.config and case not in CASES[::6]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for case, args, proc in pool.map(attempt, jobs):
            kind = "dry run" if args else "run"
            assert proc.returncode != 0, f"{case.id}: the {kind} succeeded"
            lines = error_lines(proc.stderr)
            assert len(lines) == 1 and lines[0].startswith("mapmerge: "), f"{case.id} ({kind}): {proc.stderr[-2000:]}"
            assert re.search(case.message, lines[0].removeprefix("mapmerge: ")), f"{case.id} ({kind}): {lines[0]}"
    assert snapshot(results) == before
    assert snapshot(example / "checkpoints") == inputs
    # and the folder is still a finished run: nothing to do with the right config, whose file may hold a setting of
    # another method (a warning)
    right = example / "experiment_and_bayesian.yaml"  # beside it: the same files, by the same paths
    right.write_text((example / "experiment.yaml").read_text() + "\nbayesian: {rounds: 5}\n")
    try:
        proc = snakemake(workdir, right, (), "-n")
    finally:
        right.unlink()
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert f"mapmerge: warning: experiment file {right}: bayesian.rounds: has no effect: method is map" in proc.stderr


DEVICE_PAST = "cuda:99"  # past the devices of any machine this runs on, with CUDA or without
DEVICE_LINE = r"^evaluation\.device: 'cuda:99' asked for, but this machine has (no CUDA device|\d+ CUDA device)"


def test_check_device_refuses_a_device_this_machine_lacks():
    for device in ("auto", "cpu"):
        check_device(device)
    with pytest.raises(ConfigError) as info:
        check_device(DEVICE_PAST)
    assert re.search(DEVICE_LINE, str(info.value)) and "\n" not in str(info.value), str(info.value)


@pytest.mark.slow
def test_a_missing_device_stops_a_local_run_before_any_job(tmp_path_factory, tmp_path):
    """A CUDA device the machine lacks passes load_config (a cluster's nodes may have it) but stops a local run in
    its onstart, after the DAG is built and before its first job (here: a third refinement round), with one line,
    no file changed, and no lock left behind."""
    example, finished = example_run(tmp_path_factory)
    workdir = copy_run(finished, tmp_path / "work")
    results = workdir / "results" / "custom_mlp"
    before = snapshot(results)
    proc = snakemake(workdir, example / "experiment.yaml", ("refine.rounds=3", f"evaluation.device={DEVICE_PAST}"))
    assert proc.returncode != 0, proc.stderr[-2000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert re.search(DEVICE_LINE, last.removeprefix("mapmerge: ")), proc.stderr[-2000:]
    assert snapshot(results) == before
    assert not (workdir / ".snakemake" / "locks").exists() or not any((workdir / ".snakemake" / "locks").iterdir())


def test_check_builds_builds_the_users_and_names_the_first_that_fails(example):
    """The example's evaluators build; one whose constructor raises is named with the cause on one line; mapmerge's own
    evaluators (the built-in benchmark's) are left to the schema; sys.path is left as it was."""
    cfg = load_config(REPO / "config", experiment=example / "experiment.yaml", overrides=EXAMPLE_RUN)
    path = list(sys.path)
    preflight.check_builds(cfg["model"], cfg["task_names"])
    bad = copy.deepcopy(cfg["model"])
    bad["tasks"]["stripes_120"]["evaluator"]["n"] = -1
    with pytest.raises(ConfigError) as info:
        preflight.check_builds(bad, cfg["task_names"])
    assert str(info.value) == (
        "model.tasks.stripes_120.evaluator: model.TaskEvaluator could not be built: "
        "ValueError: negative dimensions are not allowed"
    )
    assert sys.path == path
    # a wrong type among the builder's arguments: it fails on the meta device as on the CPU, which the jobs use
    bad = copy.deepcopy(cfg["model"])
    bad["builder"]["hidden"] = "32"
    with pytest.raises(ConfigError, match=r"^model\.builder: model\.build could not be built: TypeError: empty\(\)"):
        preflight.check_builds(bad, cfg["task_names"])
    assert sys.path == path
    builtin = load_config(REPO / "config")["model"]
    task = next(iter(builtin["tasks"]))
    builtin["tasks"][task]["evaluator"]["no_such_argument"] = 1  # instantiated, it would raise
    preflight.check_builds(builtin, [task])
    # built, but not callable as every job calls it, evaluator(module, device): the first job failed, after
    # Snakemake had deleted its finished table
    for spec, why in (
        ({"_target_": "math.sqrt", "_partial_": True}, "its signature is (x, /) (too many positional arguments)"),
        ({"_target_": "collections.Counter"}, None),
    ):
        bad = copy.deepcopy(cfg["model"])
        bad["tasks"]["stripes_60"]["evaluator"] = spec
        with pytest.raises(ConfigError) as info:
            preflight.check_builds(bad, cfg["task_names"])
        where = f"model.tasks.stripes_60.evaluator: {spec['_target_']}"
        assert str(info.value) == (
            f"{where}: cannot be called as evaluator(module, device), as the jobs call it: {why}"
            if why
            else f"{where}: built a Counter, which cannot be called as evaluator(module, device)"
        )
    assert sys.path == path


def warnings_with(example: Path, checkpoint: Path) -> list[str]:
    """The driver's warnings for the example's run with task stripes_60's checkpoint replaced by `checkpoint`."""
    lines: list[str] = []
    load_config(
        REPO / "config",
        experiment=example / "experiment.yaml",
        overrides=[*EXAMPLE_RUN, f"model.tasks.stripes_60.checkpoint={checkpoint}"],
        warn=lines.append,
    )
    return lines


def test_a_fine_tuned_checkpoint_without_a_tensor_the_merge_leaves_alone_is_warned_of(example, tmp_path):
    """A fine-tuned checkpoint saved without its head (a tensor the pretrained one has and the merge leaves alone):
    its task's evaluations take the pretrained head, which changed the reference scores, the front and the chosen
    merge without a word. The driver warns, naming the task, the file and the tensor; a whole checkpoint, none."""
    cfg = load_config(REPO / "config", experiment=example / "experiment.yaml", overrides=EXAMPLE_RUN)
    assert preflight.unmerged_fallbacks(cfg["model"], cfg["task_names"]) == []
    state = torch.load(example / "checkpoints" / "stripes_60.pt", weights_only=True)
    del state["head.weight"]
    torch.save(state, tmp_path / "headless.pt")
    assert warnings_with(example, tmp_path / "headless.pt") == [
        f"model.tasks.stripes_60.checkpoint: {tmp_path / 'headless.pt'} lacks 'head.weight', which the merge leaves "
        f"alone: task stripes_60's evaluations take it from the pretrained checkpoint {example / 'checkpoints' / 'pretrained.pt'}"
    ]


def test_a_fine_tuned_checkpoint_with_a_tensor_the_pretrained_lacks_is_warned_of(example, tmp_path):
    """A tensor only a fine-tuned checkpoint holds is neither merged nor evaluated: a warning names it."""
    state = torch.load(example / "checkpoints" / "stripes_60.pt", weights_only=True)
    torch.save({**state, "aux.weight": torch.ones(3)}, tmp_path / "extra.pt")
    assert warnings_with(example, tmp_path / "extra.pt") == [
        f"model.tasks.stripes_60.checkpoint: {tmp_path / 'extra.pt'} holds 'aux.weight', which the pretrained checkpoint "
        f"{example / 'checkpoints' / 'pretrained.pt'} lacks: left out of the merge and of task stripes_60's evaluations"
    ]


def test_a_fine_tuned_checkpoint_saved_with_another_prefix_is_told_so(example, tmp_path):
    """A fine-tune saved inside a wrapper (`model.` before every name) lacks every tensor of the pretrained one: the
    refusal says which prefix, either way round."""
    state = torch.load(example / "checkpoints" / "stripes_60.pt", weights_only=True)
    torch.save({f"model.{k}": v for k, v in state.items()}, tmp_path / "wrapped.pt")
    pretrained = torch.load(example / "checkpoints" / "pretrained.pt", weights_only=True)
    torch.save({f"model.{k}": v for k, v in pretrained.items()}, tmp_path / "wrapped_pretrained.pt")
    first = next(iter(state))
    cases = {
        f"model.tasks.stripes_60.checkpoint={tmp_path / 'wrapped.pt'}": (
            f"; its names carry a prefix the pretrained checkpoint's do not ('model.': 'model.{first}'): save both "
            "with the same names"
        ),
        f"model.pretrained={tmp_path / 'wrapped_pretrained.pt'}": (
            f"; its names lack the prefix the pretrained checkpoint's carry ('model.': '{first}' for 'model.{first}'): "
            "save both with the same names"
        ),
    }
    for override, hint in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(REPO / "config", experiment=example / "experiment.yaml", overrides=[*EXAMPLE_RUN, override])
        assert str(info.value).endswith(hint), info.value


@pytest.mark.slow
def test_an_evaluator_that_cannot_be_built_stops_a_local_run_before_any_job(tmp_path_factory, tmp_path):
    """A value the user's evaluator refuses in its constructor (a task name model.TaskEvaluator does not know) passes
    load_config (the arguments fit its signature) but stops a local run in its onstart, before the first job, with one
    line and no file changed: the evaluation jobs it reruns would fail only after Snakemake deleted their tables."""
    example, finished = example_run(tmp_path_factory)
    workdir = copy_run(finished, tmp_path / "work")
    results = workdir / "results" / "custom_mlp"
    before = snapshot(results)
    proc = snakemake(workdir, example / "experiment.yaml", ("model.tasks.stripes_60.evaluator.task=stripes_6",))
    assert proc.returncode != 0, proc.stderr[-2000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert re.fullmatch(
        r"mapmerge: model\.tasks\.stripes_60\.evaluator: model\.TaskEvaluator could not be built: "
        r"ValueError: unknown task 'stripes_6'; known: rings, stripes_0, stripes_60, stripes_120",
        last,
    ), proc.stderr[-2000:]
    assert snapshot(results) == before
