"""A run folder whose files Snakemake holds no records of here (moved, copied, run from another working directory, or
.snakemake/ removed) is refused before any job, since a changed setting would rerun nothing (mapmerge.run.records)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import EXAMPLE_RUN, REPO, copy_run, error_lines, example_run, snakemake_command
from mapmerge.errors import ConfigError
from mapmerge.run import records
from mapmerge.run.config import load_config
from test_bad_input import snapshot


@pytest.mark.parametrize(
    "argv, exempt",
    [
        (["snakemake", "--cores", "2"], False),
        (["snakemake", "-n"], False),
        (["snakemake", "--forcerun", "fit_surrogate"], False),
        (["snakemake", "--forceall"], True),
        (["snakemake", "-F"], True),
        (["snakemake", "-nF"], True),
        (["snakemake", "--unlock"], True),
        (["snakemake", "--touch"], True),
        (["snakemake", "--config", "overrides=[name=Ft]"], False),  # a value, not an option
    ],
)
def test_only_options_that_rerun_every_job_or_none_are_exempt(argv, exempt):
    assert records.exempt(argv) is exempt


MODEL = "/models/pre.pt"


def _home(folder: Path, results: str, cwd: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / records.HOME).write_text(json.dumps({"results": results, "cwd": str(cwd), "model": MODEL}))


def test_the_check_refuses_a_folder_whose_records_are_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records.check("results/new", MODEL)  # no folder yet
    (tmp_path / "results" / "old").mkdir(parents=True)
    records.check("results/old", MODEL)  # made before the record was kept: not known
    records.record("results/old", MODEL)
    assert json.loads((tmp_path / "results/old" / records.HOME).read_text()) == {
        "results": "results/old",
        "cwd": str(tmp_path),
        "model": MODEL,
        "sketch": None,  # no such file
    }
    with pytest.raises(ConfigError, match=r"no Snakemake records \(\.snakemake/metadata is missing\)"):
        records.check("results/old", MODEL)
    (tmp_path / records.RECORDS).mkdir(parents=True)
    records.check("results/old", MODEL)

    shutil.copytree(tmp_path / "results/old", tmp_path / "results/moved")
    with pytest.raises(ConfigError) as info:
        records.check("results/moved", MODEL)
    assert str(info.value) == (
        f"results/moved: its files were made as results/old (from {tmp_path}), and Snakemake keeps its records of them "
        "under that path, so here a changed setting would rerun nothing; run snakemake once with --forceall (every "
        "evaluation comes back from the folder's evaluation cache)"
    )

    absolute = str(tmp_path / "results/abs")
    _home(Path(absolute), absolute, tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=rf"its files were made from {tmp_path}/elsewhere, whose \.snakemake/"):
        records.check(absolute, MODEL)
    _home(Path(absolute), absolute, tmp_path)
    records.check(absolute, MODEL)
    # a relative folder in a copied working directory (with its .snakemake/): the records came along
    _home(tmp_path / "results/old", "results/old", tmp_path / "original")
    records.check("results/old", MODEL)
    with pytest.raises(ConfigError) as info:  # the name of another experiment's run
        records.check("results/old", records.BUILTIN)
    assert str(info.value) == (
        f"results/old: holds a run of another model ({MODEL}; this run's: the built-in benchmark): give this run its "
        "own name (name=...), or run snakemake once with --forceall to replace that run (a new model reruns every "
        "job anyway)"
    )


def test_the_same_folder_spelled_otherwise_is_taken_as_its_files_were_made(tmp_path, monkeypatch):
    """results_dir given as an absolute path (or with ..) for a run made as results/demo from the same working
    directory was refused, and the way out was a --forceall: the folder's recorded spelling is taken instead. Another
    folder, or the same one from another working directory, keeps its own spelling (and records.check's refusal)."""
    monkeypatch.chdir(tmp_path)
    _home(tmp_path / "results/demo", "results/demo", tmp_path)
    for spelling in (str(tmp_path / "results/demo"), "results/../results/demo", "./results/demo"):
        assert records.recorded_spelling(spelling) == "results/demo", spelling
    assert records.recorded_spelling("results/other") == "results/other"  # no record
    shutil.copytree(tmp_path / "results/demo", tmp_path / "results/copy")
    assert records.recorded_spelling("results/copy") == "results/copy"  # its record names another folder
    _home(tmp_path / "results/demo", "results/demo", tmp_path / "elsewhere")
    assert records.recorded_spelling(str(tmp_path / "results/demo")) == str(tmp_path / "results/demo")
    _home(tmp_path / "results/demo", "results/demo", tmp_path)
    cfg = load_config(REPO / "config", overrides=[f"results_dir={tmp_path}/results"], check_files=False)
    assert cfg["results"] == "results/demo"
    assert cfg["model"]["pretrained"].startswith("results/demo/")  # every path the rules name, spelled alike


def test_a_model_moved_to_another_path_is_the_same_model(tmp_path, monkeypatch):
    """The checkpoint's sketch, recorded: the same bytes under another path pass; other bytes are another model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / records.RECORDS).mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "pre.pt").write_bytes(bytes(range(256)) * 1000)
    records.record(str(tmp_path / "results"), str(tmp_path / "a" / "pre.pt"))  # no folder yet: nothing written
    (tmp_path / "results").mkdir()
    records.record("results", str(tmp_path / "a" / "pre.pt"))
    (tmp_path / "a").rename(tmp_path / "b")
    records.check("results", str(tmp_path / "b" / "pre.pt"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "pre.pt").write_bytes(bytes(range(256)) * 999 + bytes(256))  # one block differs
    with pytest.raises(
        ConfigError, match=rf"results: holds a run of another model \({tmp_path}/a/pre.pt; this run's: "
    ):
        records.check("results", str(tmp_path / "c" / "pre.pt"))
    records.record("results", str(tmp_path / "b" / "pre.pt"))  # the folder's record follows the model
    assert json.loads((tmp_path / "results" / records.HOME).read_text())["model"] == str(tmp_path / "b" / "pre.pt")


def test_a_folder_of_other_files_is_not_a_run_folder(tmp_path):
    """check_own_folder: a new or empty folder, or a run's (any of what a run writes first), is a run folder; one that
    holds only other files is refused, naming a few of them."""
    records.check_own_folder(str(tmp_path / "new"))
    records.check_own_folder(str(tmp_path))  # empty
    for name in ["a.txt", "b", "c.tex", "d.md"]:
        (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError) as info:
        records.check_own_folder(str(tmp_path))
    assert str(info.value) == (
        f"{tmp_path}: exists and holds files that are not a mapmerge run's (a.txt, b, c.tex, ...); give the run a "
        "folder of its own (name=..., results_dir=...)"
    )
    for marker in records.RUN_MARKERS:
        run = tmp_path / f"run-{marker}"
        (run / marker).mkdir(parents=True)
        (run / "notes.txt").write_text("x")
        records.check_own_folder(str(run))


def test_a_folder_inside_a_run_is_not_a_run_folder(tmp_path, monkeypatch):
    """run_holding finds the run folder above a folder (by the driver's own files, not by a logs/ or task_vectors/ any
    folder may have), named as the folder is: relative or absolute; check_own_folder refuses a new run there."""
    run = tmp_path / "results" / "demo"
    (run / "groups" / "all").mkdir(parents=True)
    for name in ("logs", "task_vectors"):  # a user's own folders above, of names a run's folder holds too: not a run
        (tmp_path / name).mkdir()
    assert records.run_holding(run / "groups") is None
    (run / records.HOME).write_text("{}")
    assert records.run_holding(run / "groups" / "all") == run and records.run_holding(run / "new") == run
    assert records.run_holding(run) is None and records.run_holding(tmp_path / "results" / "other") is None
    monkeypatch.chdir(tmp_path / "results")
    assert records.run_holding(Path("demo/groups")) == Path("demo")
    with pytest.raises(ConfigError) as info:
        records.check_own_folder("demo/x")
    assert str(info.value) == (
        "demo/x: lies inside the run folder demo; give the run a folder of its own (name=..., results_dir=...)"
    )
    assert not (run / "x").exists()


@pytest.mark.slow
def test_a_copied_run_folder_is_refused_until_a_forceall_run(tmp_path_factory, tmp_path):
    """A finished run copied within its working directory: a changed setting would find "Nothing to be done"; the run
    and a dry run stop with one line and change nothing, a dry run with --forceall goes on. The built-in benchmark's
    run under the example's name is refused too."""
    example, finished = example_run(tmp_path_factory)
    assert json.loads((finished / "results/custom_mlp" / records.HOME).read_text())["results"] == "results/custom_mlp"
    workdir = copy_run(finished, tmp_path / "work")
    shutil.copytree(workdir / "results/custom_mlp", workdir / "results/moved", symlinks=True)
    before = snapshot(workdir / "results")
    experiment = example / "experiment.yaml"
    overrides = [*EXAMPLE_RUN, "name=moved", "refine.points=5"]
    for args in [(), ("-n",)]:
        proc = subprocess.run(
            snakemake_command(workdir, *args, overrides=overrides, experiment=experiment),
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = error_lines(proc.stderr)
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
        assert re.fullmatch(
            r"mapmerge: results/moved: its files were made as results/custom_mlp \(from .*\), .*", lines[0]
        )
    # the built-in benchmark's run given the example's name
    proc = subprocess.run(
        snakemake_command(workdir, "-n", overrides=[*EXAMPLE_RUN, "name=custom_mlp"]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and error_lines(proc.stderr)[0].startswith(
        "mapmerge: results/custom_mlp: holds a run of another model ("
    )
    assert snapshot(workdir / "results") == before
    # a run folder that holds someone else's files, even with --forceall: refused before the records are looked at
    (workdir / "notes").mkdir()
    (workdir / "notes" / "report.md").write_text("mine")
    proc = subprocess.run(
        snakemake_command(
            workdir, "-n", "-F", overrides=[*overrides, "results_dir=.", "name=notes"], experiment=experiment
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and error_lines(proc.stderr)[0].startswith(
        "mapmerge: notes: exists and holds files that are not a mapmerge run's (report.md); give the run a folder"
    ), proc.stderr[-2000:]
    assert (workdir / "notes" / "report.md").read_text() == "mine" and len(list((workdir / "notes").iterdir())) == 1
    proc = subprocess.run(
        snakemake_command(workdir, "-n", "-F", overrides=overrides, experiment=experiment),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "evaluate_round" in proc.stdout, proc.stderr[-2000:]
