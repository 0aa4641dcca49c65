"""The evaluation cache (mapmerge.run.evaluation_cache): what its key holds, and how tables are kept and given back."""

from __future__ import annotations

import copy
import fcntl
import json
from pathlib import Path

import pandas as pd

from mapmerge.io import RUN_LOCK, TEMP_SUFFIX, file_hash, read_table, write_table
from mapmerge.run import evaluation_cache, job
from mapmerge.tensors.engine import failure_rows
from mapmerge.tools.cli import main


def files(tmp_path):
    """A results folder with an evaluation job's inputs: engine files, a plan and a round's samples; and its spec."""
    results = tmp_path / "results" / "run"
    results.mkdir(parents=True)
    (results / RUN_LOCK).write_text("")
    for name in ("pretrained", "a", "b", "plan"):
        (results / f"{name}.bin").write_bytes(name.encode() * 100)
    samples = pd.DataFrame(
        {"sample": ["r01s0", "r01s1"], "c_a": [0.25, 0.5], "c_b": [1.0, 0.0], "kind": ["pick", "front"]}
    )
    write_table(samples, results / "r01.parquet", "refine_round")
    spec = {
        "rule": "evaluate_round",
        "wildcards": {"group": "all", "round": "01", "index": "0000"},
        "params": {"stage": {"model": {"dtype": "float32"}, "code": "0123456789ab"}},
        "inputs": {
            "pretrained": str(results / "pretrained.bin"),
            "vectors": {"a": str(results / "a.bin"), "b": str(results / "b.bin")},
            "checkpoints": {"a": str(results / "a.bin"), "b": str(results / "b.bin")},
            "plan": str(results / "plan.bin"),
            "samples": str(results / "r01.parquet"),
        },
        "outputs": {"examples": str(results / "groups/all/evals/r01b0000.parquet")},
        "args": {"group": "all", "index": "0000", "size": 8, "device": "auto", "threads": 1, "on_error": "fail"},
        "cache": True,
    }
    return results, spec


def test_the_key_holds_the_merges_files_params_and_code_but_not_the_threads(tmp_path):
    results, spec = files(tmp_path)
    key = evaluation_cache.key(spec)
    assert evaluation_cache.key(copy.deepcopy(spec)) == key
    same = copy.deepcopy(spec)
    same["args"]["threads"] = 2
    assert evaluation_cache.key(same) == key
    # the round's other columns (its kinds, its predictions) do not count, nor the file's provenance
    samples = read_table(results / "r01.parquet")
    write_table(samples.assign(kind=["front", "front"]), results / "r01.parquet", "another stage", {"x": 1})
    assert evaluation_cache.key(spec) == key
    # its merges do
    write_table(samples.assign(c_a=[0.25, 0.5000001]), results / "r01.parquet", "refine_round")
    assert evaluation_cache.key(spec) != key
    write_table(samples, results / "r01.parquet", "refine_round")
    assert evaluation_cache.key(spec) == key
    for change in (
        lambda s: s["params"]["stage"].update(code="ba9876543210"),  # the code
        lambda s: s["params"]["stage"]["model"].update(dtype="bfloat16"),  # the params
        lambda s: s["args"].update(index="0001"),  # another batch of the round
        lambda s: s["inputs"]["vectors"].update(a=s["inputs"]["vectors"]["b"]),  # another file for a member
        lambda s: s.update(rule="evaluate_selected"),
    ):
        other = copy.deepcopy(spec)
        change(other)
        assert evaluation_cache.key(other) != key
    (results / "a.bin").write_bytes(b"retrained")  # a file's content
    assert evaluation_cache.key(spec) != key


def test_the_key_holds_what_the_files_hold_not_where_they_lie(tmp_path):
    """A model's folder moved (the same bytes): the same key. python_path's folders count by their number (the code
    fingerprint holds their modules), a param naming an input file by its bytes; a Parquet input by its data, not its
    provenance; the order of the tasks does count (a table's rows follow it)."""
    results, spec = files(tmp_path)
    plan = results / "level2.parquet"
    write_table(pd.DataFrame({"group": ["L2g0"], "members": ["a,b"]}), plan, "plan_level", {"preference": 1})
    spec["inputs"]["plan"] = str(plan)
    model = spec["params"]["stage"]["model"]
    model.update(python_path=[str(tmp_path / "code")], data=str(results / "a.bin"), tokenizer=str(tmp_path / "tok"))
    key = evaluation_cache.key(spec)
    moved = tmp_path / "elsewhere"
    results.rename(moved)
    spec = json.loads(json.dumps(spec).replace(str(results), str(moved)))
    spec["params"]["stage"]["model"]["python_path"] = [str(tmp_path / "other" / "code")]
    assert evaluation_cache.key(spec) == key
    write_table(read_table(plan := moved / "level2.parquet"), plan, "plan_level", {"preference": 2})  # provenance
    assert evaluation_cache.key(spec) == key
    for change in (
        lambda s: s["params"]["stage"]["model"].update(python_path=[]),  # fewer folders
        lambda s: s["params"]["stage"]["model"].update(data=str(moved / "b.bin")),  # another input file
        lambda s: s["params"]["stage"]["model"].update(tokenizer=str(tmp_path / "tok2")),  # a path the key cannot see
        lambda s: s["inputs"].update(vectors=dict(reversed(s["inputs"]["vectors"].items()))),  # the tasks' order
    ):
        other = copy.deepcopy(spec)
        change(other)
        assert evaluation_cache.key(other) != key
    write_table(pd.DataFrame({"group": ["L2g0"], "members": ["b,a"]}), plan, "plan_level", {"preference": 2})
    assert evaluation_cache.key(spec) != key  # the plan's data


def test_a_folder_of_the_jobs_files_and_the_files_it_reads_count_by_what_they_hold(tmp_path):
    """A transformers run's params name folders (the model's, its tokenizer's) whose files are the job's inputs, and
    the files the job reads come in the order of their paths: both moved (the same bytes) keep the key, which a
    tokenizer's file changed does not; a table kept under the key of before is given back."""
    results, spec = files(tmp_path)
    models = tmp_path / "models"
    (models / "tok").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (models / "tok" / name).write_text(name)
    (models / "z.csv").write_text("text,label\n")
    spec["inputs"]["reads"] = sorted([str(results / "plan.bin"), *(str(p) for p in models.rglob("*") if p.is_file())])
    spec["params"]["stage"]["model"]["tokenizer"] = str(models / "tok")
    key, before = evaluation_cache.key(spec), evaluation_cache.key(spec, earlier="folders")
    moved = tmp_path / "z_last"  # sorts after results/: the files read come in another order
    models.rename(moved)
    spec = json.loads(json.dumps(spec).replace(str(models), str(moved)))
    spec["inputs"]["reads"] = sorted(spec["inputs"]["reads"])
    assert evaluation_cache.key(spec) == key and evaluation_cache.key(spec, earlier="folders") != before
    (moved / "tok" / "tokenizer.json").write_text("another vocabulary")
    assert evaluation_cache.key(spec) != key


def kept_under_a_key_of_before(spec: dict, earlier: str, sample: str, rule: str) -> tuple[Path, bytes, dict[str, Path]]:
    """The job's table written, kept under the key `earlier` (one of evaluation_cache.EARLIER_KEYS) alone and removed
    from the run, as an upgrade finds it: its path, its bytes and where the key of now keeps it."""
    output = Path(spec["outputs"]["examples"])
    rows = pd.DataFrame({"sample": [sample], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.2]})
    write_table(rows.assign(error=[None]), output, rule)
    before, kept = evaluation_cache.entries(spec, earlier=earlier), evaluation_cache.entries(spec)
    assert before != kept and evaluation_cache.keep({"examples": output}, before)
    written = output.read_bytes()
    output.unlink()
    return output, written, kept


def never_evaluate(*args, **kwargs):
    raise AssertionError("evaluated")


def test_a_table_kept_under_the_key_of_before_is_given_back_and_kept_under_the_key(tmp_path):
    """An upgrade from before 2026-12-07 (the key held paths, file bytes, no order) evaluates nothing again."""
    results, spec = files(tmp_path)
    spec["params"]["stage"]["model"]["python_path"] = [str(tmp_path / "code")]
    output, written, kept = kept_under_a_key_of_before(spec, "paths", "r01s0", "evaluate_round")
    job.run_cached(spec, never_evaluate, str(tmp_path / "job.log"), spec["params"], {})
    assert output.read_bytes() == written == kept["examples"].read_bytes()


def test_the_reference_models_key_holds_no_merge_operator_and_a_table_kept_with_one_is_given_back(tmp_path):
    """The reference models are the real fine-tuned ones: another merge operator (merge=ties, merge.density) reruns
    their job (its params hold the operator) but takes their tables from the cache; a merged model's key keeps it.
    A table kept under the key of before (with the operator) is given back, not evaluated again."""
    results, spec = files(tmp_path)
    spec["rule"] = "evaluate_reference"
    spec["outputs"] = {"examples": str(results / "reference_examples.parquet")}
    stage = spec["params"]["stage"]
    stage.update(merge_operator={"operator": "task_arithmetic"}, merge_seed=None)
    ties = copy.deepcopy(spec)
    ties["params"]["stage"].update(merge_operator={"operator": "ties", "density": 0.2}, merge_seed=None)
    assert evaluation_cache.key(ties) == evaluation_cache.key(spec)
    assert evaluation_cache.key(ties, earlier="folders") != evaluation_cache.key(spec, earlier="folders")
    merged, merged_ties = copy.deepcopy(spec), copy.deepcopy(ties)
    merged["rule"] = merged_ties["rule"] = "evaluate_round"
    assert evaluation_cache.key(merged) != evaluation_cache.key(merged_ties)

    output, written, kept = kept_under_a_key_of_before(spec, "folders", "pretrained", "evaluate_reference")
    job.run_cached(spec, never_evaluate, str(tmp_path / "job.log"), spec["params"], {})  # the upgrade: kept anew
    assert output.read_bytes() == written == kept["examples"].read_bytes()
    output.unlink()
    job.run_cached(ties, never_evaluate, str(tmp_path / "job.log"), ties["params"], {})  # then another operator
    assert output.read_bytes() == written


def test_tables_are_kept_under_the_results_folder_and_given_back_whole(tmp_path):
    results, spec = files(tmp_path)
    kept = evaluation_cache.entries(spec)
    assert kept == {"examples": results / ".cache/evaluations" / f"{evaluation_cache.key(spec)}.parquet"}
    output = results / "groups/all/evals/r01b0000.parquet"
    rows = pd.DataFrame({"sample": ["r01s0"], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.2]})
    write_table(rows.assign(error=[None]), output, "evaluate_round")
    assert not evaluation_cache.restore(kept, {"examples": output})  # nothing kept yet
    assert evaluation_cache.keep({"examples": output}, kept)
    written = output.read_bytes()
    output.unlink()  # as Snakemake does before it reruns the job
    assert evaluation_cache.restore(kept, {"examples": output})
    assert output.read_bytes() == written and kept["examples"].read_bytes() == written
    assert not list(kept["examples"].parent.glob(".*"))  # no temporary file left
    # a damaged table is dropped, not given back
    kept["examples"].write_bytes(written[: len(written) // 2])
    output.unlink()
    assert not evaluation_cache.restore(kept, {"examples": output})
    assert not kept["examples"].exists() and not output.exists()


def test_a_job_with_more_tables_gets_all_of_them_back_or_none(tmp_path):
    """The reference models' job writes metrics beside its examples: each has a key of its own, derived from the
    job's, and a job restores them all or evaluates."""
    results, spec = files(tmp_path)
    spec = {**spec, "rule": "evaluate_reference", "outputs": {"metrics": "reference.parquet", "examples": "ex.parquet"}}
    spec["outputs"] = {name: str(results / path) for name, path in spec["outputs"].items()}
    kept = evaluation_cache.entries(spec)
    key = evaluation_cache.key(spec)
    assert kept["examples"].name == f"{key}.parquet" and kept["metrics"].name != kept["examples"].name
    assert kept["metrics"].parent == kept["examples"].parent
    outputs = {name: Path(path) for name, path in spec["outputs"].items()}
    write_table(pd.DataFrame({"model": ["pretrained"], "accuracy": [0.5]}), outputs["metrics"], "evaluate_reference")
    write_table(pd.DataFrame({"model": ["pretrained"], "correct": [1.0]}), outputs["examples"], "evaluate_reference")
    written = {name: path.read_bytes() for name, path in outputs.items()}
    assert evaluation_cache.keep(outputs, kept)
    assert {name: kept[name].with_suffix(evaluation_cache.PLACE).read_text() for name in kept} == {
        "metrics": "reference.parquet",
        "examples": "ex.parquet",
    }
    for path in outputs.values():
        path.unlink()
    assert evaluation_cache.restore(kept, outputs)
    assert {name: path.read_bytes() for name, path in outputs.items()} == written
    # one of them gone (pruned, deleted): none is given back, and the job evaluates
    for path in outputs.values():
        path.unlink()
    kept["metrics"].unlink()
    assert not evaluation_cache.restore(kept, outputs)
    assert not any(path.exists() for path in outputs.values())
    # an output that is not one Parquet table: not cached
    assert evaluation_cache.entries({**spec, "outputs": {**spec["outputs"], "plot": "plot.png"}}) is None


def test_a_table_with_a_failed_evaluation_is_not_kept(tmp_path):
    results, spec = files(tmp_path)
    kept = evaluation_cache.entries(spec)
    output = results / "groups/all/evals/r01b0000.parquet"
    ok = pd.DataFrame({"sample": ["r01s0"], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.2]})
    failed = pd.concat([ok.assign(error=[None]), failure_rows("r01s1", "b", "ValueError: NaN loss")], ignore_index=True)
    write_table(failed, output, "evaluate_round")
    assert not evaluation_cache.keep({"examples": output}, kept)
    assert not kept["examples"].exists()


def test_no_cache_outside_a_results_folder(tmp_path):
    results, spec = files(tmp_path)
    (results / RUN_LOCK).unlink()
    assert evaluation_cache.entries(spec) is None
    assert evaluation_cache.entries({**spec, "outputs": {"points": "p.parquet"}}) is None


def test_a_jobs_keys_hash_each_input_file_once(tmp_path, monkeypatch):
    """A batch job's own key, its samples' key and its merges' key hash the same files: with the job's `hashes`
    (mapmerge.run.job.run_cached) each is read once, and the keys are the same as without it."""
    results, spec = files(tmp_path)
    alone = evaluation_cache.entries(spec)
    reuse = evaluation_cache.sample_reuse(spec, alone)
    read = []
    monkeypatch.setattr(evaluation_cache, "file_hash", lambda path: read.append(path) or file_hash(path))
    hashes: dict[str, str] = {}
    kept = evaluation_cache.entries(spec, hashes)
    shared = evaluation_cache.sample_reuse(spec, kept, hashes)
    assert kept == alone and (shared.base, shared.merge) == (reuse.base, reuse.merge)
    assert sorted(map(str, read)) == sorted(str(results / f"{n}.bin") for n in ("a", "b", "pretrained", "plan"))
    read.clear()
    evaluation_cache.sample_reuse(spec, kept)  # without them: every file read again, for each of its two keys
    assert len(read) == 2 * 6  # a.bin and b.bin twice each (vectors, checkpoints), pretrained, plan


def test_a_large_files_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation_cache, "MEMO_BYTES", 1000)
    memo, vector = tmp_path / "hashes", tmp_path / "a.safetensors"
    vector.write_bytes(b"a" * 1000)
    digest = file_hash(vector)
    assert evaluation_cache.content_hash(vector, memo) == digest
    assert len(list(memo.glob("*.txt"))) == 1
    assert evaluation_cache.content_hash(vector, memo) == digest  # from the note
    (memo / next(memo.glob("*.txt")).name).write_text("noted")
    assert evaluation_cache.content_hash(vector, memo) == "noted"  # it is the note that answers
    vector.write_bytes(b"b" * 1001)  # rewritten: another size and mtime
    assert evaluation_cache.content_hash(vector, memo) == file_hash(vector) != digest
    small = tmp_path / "plan.parquet"
    small.write_bytes(b"p" * 999)  # below MEMO_BYTES: hashed every time, never noted
    assert evaluation_cache.content_hash(small, memo) == file_hash(small)
    assert len(list(memo.glob("*.txt"))) == 2


def test_an_input_that_does_not_read_is_left_to_the_stage_to_report(tmp_path):
    results, spec = files(tmp_path)
    samples = results / "r01.parquet"
    samples.write_bytes(samples.read_bytes()[:-100])
    assert evaluation_cache.entries(spec) is None
    (results / "a.bin").unlink()
    assert evaluation_cache.entries(spec) is None


def test_prune_drops_only_tables_whose_jobs_now_hold_other_merges(tmp_path, capsys):
    results, spec = files(tmp_path)
    cache = results / evaluation_cache.FOLDER
    rows = pd.DataFrame({"sample": ["r01s0"], "task": ["a"], "example": [0], "correct": [1.0], "loss": [0.2]})
    evals = results / "groups/all/evals"

    def evaluated(name: str, correct: float, key: str, setting: str | None = None) -> Path:
        """A job's table `name` as a run writes it with a setting (its params: by default, the key), and its copy kept
        under `key`."""
        write_table(rows.assign(correct=[correct]), evals / name, "evaluate_round", {"setting": setting or key})
        assert evaluation_cache.keep({"examples": evals / name}, {"examples": cache / f"{key}.parquet"})
        return cache / f"{key}.parquet"

    old = evaluated("r01b0000.parquet", 0.5, "old")  # a setting tried first ...
    new = evaluated("r01b0000.parquet", 0.75, "new")  # ... then another, whose round evaluated other merges
    assert (cache / "new.place").read_text() == "groups/all/evals/r01b0000.parquet"
    lost = evaluated("r02b0000.parquet", 0.25, "lost")
    (evals / "r02b0000.parquet").unlink()  # a job an interrupted run lost: its kept table is all that is left
    only = evaluated("r03b0000.parquet", 0.25, "only")
    (evals / "r03b0000.parquet").write_bytes(b"PAR1 damaged")  # the run's table damaged in place
    unplaced = evaluated("r04b0000.parquet", 0.25, "unplaced")
    unplaced.with_suffix(evaluation_cache.PLACE).unlink()  # kept before places were noted
    again = evaluated("r06b0000.parquet", 0.25, "again")
    # the same evaluation done again (with evaluation.cache=false, on a GPU) to other bytes: the same provenance
    write_table(rows.assign(correct=[0.2500001]), evals / "r06b0000.parquet", "evaluate_round", {"setting": "again"})
    leftover = cache / f".new.parquet.1234abcd{TEMP_SUFFIX}"  # a copy a killed job left half-written
    leftover.write_bytes(b"half")
    mine = cache / f".mine{TEMP_SUFFIX}"  # not a write's temporary file (no random part)
    mine.write_bytes(b"mine")
    before = {p: p.read_bytes() for p in cache.iterdir()}

    assert main(["prune", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert {p: p.read_bytes() for p in cache.iterdir()} == before  # a dry run deletes nothing
    assert "would drop 1 " in out and "kept 1: the run's table is the same" in out
    assert "kept 1: the run's table is missing" in out and "kept 1: the run's table does not read" in out
    assert "kept 1: the run's table is the same evaluation done again" in out
    assert f"would remove 1 temporary file of stopped jobs: {leftover.relative_to(results)}" in out
    assert (results / RUN_LOCK).read_text() == ""  # a dry run takes no lock (hold writes its pid there)

    assert main(["prune", str(results)]) == 0
    out = capsys.readouterr().out
    assert "dropped 1 " in out and "removed 1 temporary file of stopped jobs" in out
    assert not old.exists() and not old.with_suffix(evaluation_cache.PLACE).exists() and not leftover.exists()
    assert mine.exists()
    for table in (new, lost, only, unplaced, again):
        assert table.read_bytes() == before[table]
    # what was kept still comes back: the lost job's table, as its rerun would restore it
    assert evaluation_cache.restore({"examples": lost}, {"examples": evals / "r02b0000.parquet"})
    assert main(["prune", str(results)]) == 0 and "dropped 0 " in capsys.readouterr().out
    # a table kept before places were noted gets its place when a job restores it
    assert evaluation_cache.restore({"examples": unplaced}, {"examples": evals / "r05b0000.parquet"})
    assert unplaced.with_suffix(evaluation_cache.PLACE).read_text() == "groups/all/evals/r05b0000.parquet"


def test_prune_drops_the_hash_notes_of_files_since_changed_or_gone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluation_cache, "MEMO_BYTES", 100)
    results, _ = files(tmp_path)
    memo = results / evaluation_cache.HASHES
    (results / evaluation_cache.FOLDER).mkdir(parents=True)
    same, changed, gone = (results / f"{name}.bin" for name in ("pretrained", "a", "b"))
    for path in (same, changed, gone):
        evaluation_cache.content_hash(path, memo)
    assert len(notes := sorted(memo.glob("*.txt"))) == 3
    legacy = memo / "legacy.txt"  # written before notes named their file
    legacy.write_text(file_hash(same))
    changed.write_bytes(b"retrained" * 20)
    gone.unlink()
    assert main(["prune", str(results), "--dry-run"]) == 0
    assert "would drop 3 hash notes of files since changed or gone" in capsys.readouterr().out
    assert len(list(memo.glob("*.txt"))) == 4
    assert main(["prune", str(results)]) == 0
    assert "dropped 3 hash notes" in capsys.readouterr().out
    (left,) = memo.glob("*.txt")
    assert left in notes and evaluation_cache.content_hash(same, memo) == file_hash(same)
    assert set(memo.glob("*.txt")) == {left}  # answered from the note that is left
    assert main(["prune", str(results)]) == 0 and "hash notes" not in capsys.readouterr().out


def test_prune_is_refused_while_a_driver_runs(tmp_path, capsys):
    results, _ = files(tmp_path)
    stray = results / evaluation_cache.FOLDER / "stray.parquet"
    stray.parent.mkdir(parents=True)
    write_table(pd.DataFrame({"sample": ["s"]}), stray, "evaluate_round", {"c": {"s": [1.0]}})
    write_table(pd.DataFrame({"sample": ["t"]}), results / "stray.parquet", "evaluate_round", {"c": {"t": [0.5]}})
    stray.with_suffix(evaluation_cache.PLACE).write_text("stray.parquet")  # superseded: prune would drop it
    with open(results / RUN_LOCK) as fh:  # a driver's lock (another open file: flock refuses this process too)
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert main(["prune", str(results)]) == 1
        assert "nothing is pruned while it runs" in capsys.readouterr().err
        assert stray.exists()
        assert main(["prune", str(results), "--dry-run"]) == 1  # it takes no lock, but asks whether one is held
        assert "nothing is pruned while it runs" in capsys.readouterr().err
    assert main(["prune", str(results)]) == 0 and not stray.exists()
    assert main(["prune", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "fresh").mkdir()
    capsys.readouterr()
    assert main(["prune", str(tmp_path / "fresh")]) == 0  # a run not started: nothing to prune, nothing written
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'fresh'}: a run not started (no run's files in it): ")
    assert not (tmp_path / "fresh" / RUN_LOCK).exists()


def test_a_batch_jobs_samples_are_kept_by_their_own_keys(tmp_path):
    """A sample's key is its job's without the batching (a round's table, the batch's index and size): another
    batching of the same samples gets their rows back; another file, param or code does not."""
    results, spec = files(tmp_path)
    output = Path(spec["outputs"]["examples"])
    rows = pd.DataFrame(
        {"sample": ["r01s0", "r01s0", "r01s1"], "task": ["a", "b", "a"], "example": [0, 0, 0], "correct": [1.0, 0, 1]}
    )
    write_table(rows, output, "evaluate_round")
    kept = evaluation_cache.entries(spec)
    reuse = evaluation_cache.sample_reuse(spec, kept)
    assert reuse.rows("r01s0", [0.25, 1.0]) is None and reuse.rows("r01s1", [0.5, 0.0]) is None  # nothing noted yet
    assert evaluation_cache.keep({"examples": output}, kept)
    reuse.note(kept["examples"])
    rebatched = copy.deepcopy(spec)
    rebatched["args"].update(index="0003", size=2)
    write_table(read_table(results / "r01.parquet").iloc[::-1], results / "r99.parquet", "refine_round")
    rebatched["inputs"]["samples"] = str(results / "r99.parquet")
    again = evaluation_cache.sample_reuse(rebatched, evaluation_cache.entries(rebatched))
    assert again.base == reuse.base and evaluation_cache.entries(rebatched) != kept
    pd.testing.assert_frame_equal(again.rows("r01s0", [0.25, 1.0]), rows.iloc[:2])
    assert again.rows("r01s1", [0.5, 0.5]) is None  # another merge under the same name
    assert again.rows("r01s2", [0.25, 1.0]) is None  # the same merge under another name
    for change in (
        lambda s: s["params"]["stage"].update(code="ba9876543210"),
        lambda s: s["args"].update(device="cpu"),
        lambda s: s["inputs"]["vectors"].update(a=s["inputs"]["vectors"]["b"]),
        lambda s: s.update(rule="validate_grid"),
    ):
        other = copy.deepcopy(rebatched)
        change(other)
        assert evaluation_cache.sample_reuse(other, kept).rows("r01s0", [0.25, 1.0]) is None
    # the chosen merge's job (its rule, its table of points, no batching, no class scores) takes a measured merge's
    # rows, as it would write them: without the class scores' columns, under its own sample's name
    write_table(rows.assign(scores=[[0.1, 0.9]] * 3, target=[1, 1, 0]), output, "evaluate_round")
    assert evaluation_cache.keep({"examples": output}, kept)
    reuse.note(kept["examples"])
    chosen = copy.deepcopy(spec)
    chosen.update(rule="evaluate_selected", outputs={"examples": str(results / "groups/all/selected_evals.parquet")})
    chosen["params"]["stage"]["scores"] = "auto"  # the group's evaluations kept the class scores
    del chosen["args"]["index"], chosen["args"]["size"], chosen["args"]["on_error"], chosen["inputs"]["samples"]
    chosen["inputs"]["choice"] = str(results / "r01.parquet")
    mine = evaluation_cache.sample_reuse(chosen, evaluation_cache.entries(chosen))
    pd.testing.assert_frame_equal(mine.rows("selected", [0.25, 1.0]), rows.iloc[:2].assign(sample="selected"))
    assert mine.rows("selected", [0.25, 0.5]) is None  # a merge no job of the group evaluated
    chosen["args"]["device"] = "cpu"
    assert evaluation_cache.sample_reuse(chosen, kept).rows("selected", [0.25, 1.0]) is None
    # prune drops a note whose table it dropped (another merge now in the job's table)
    write_table(rows.assign(sample="r01s7"), output, "evaluate_round", {"c": {"r01s7": [0.1, 0.1]}})
    assert list((results / evaluation_cache.MERGES).glob("*.txt"))
    assert main(["prune", str(results)]) == 0
    assert not kept["examples"].exists() and not list((results / evaluation_cache.SAMPLES).glob("*.txt"))
    assert not list((results / evaluation_cache.MERGES).glob("*.txt"))
