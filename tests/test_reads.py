"""Files the jobs read that no rule names (mapmerge.run.reads): found from the config, keyed by the evaluation cache,
never passed to the stage. The workflow's own check: test_transformers.py (an edited data file reruns the
evaluations and misses the cache)."""

from __future__ import annotations

import json
import os

from mapmerge.run import evaluation_cache, reads
from mapmerge.run.job import stage_call
from test_evaluation_cache import files


def test_an_evaluators_files_are_the_strings_of_its_spec_that_name_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.csv").write_text("text,label\na,1\n")
    (tmp_path / "labels.json").write_text("{}")
    (tmp_path / "digits").write_text("a file named like a plain word")
    spec = {
        "_target_": "model.TaskEvaluator",
        "data": str(tmp_path / "data" / "test.csv"),  # absolute
        "extra": {"files": ["labels.json", "missing.csv"]},  # relative to the jobs' folder, nested
        "tokenizer": str(tmp_path / "data"),  # a folder: not read as a whole
        "dataset": "digits",  # a word, not a path
        "n": 400,
    }
    assert reads.evaluator_files(spec) == sorted([str(tmp_path / "data" / "test.csv"), str(tmp_path / "labels.json")])
    # a Hugging Face model folder: its config and tokenizer files, not its weights nor anything else
    model = tmp_path / "finetuned"
    model.mkdir()
    for name in ("config.json", "tokenizer_config.json", "vocab.txt", "model.safetensors", "README.md"):
        (model / name).write_text("{}")
    assert reads.evaluator_files({"_target_": "m.E", "tokenizer": "finetuned/"}) == [
        str(model / "config.json"),
        str(model / "tokenizer_config.json"),
        str(model / "vocab.txt"),
    ]


def test_a_file_named_relative_to_the_models_code_is_read_too(tmp_path, monkeypatch):
    """An evaluator may open its data from its own folder (Path(__file__).parent / data): a name relative to a
    python_path folder, as the experiment file's other paths are to its own, is a read as well."""
    code, elsewhere = tmp_path / "ex", tmp_path / "run"
    code.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (code / "flips.npy").write_bytes(b"0")
    spec = {"_target_": "model.TaskEvaluator", "data": "flips.npy", "task": "stripes_0"}
    assert reads.evaluator_files(spec) == []
    assert reads.evaluator_files(spec, [str(code)]) == [str(code / "flips.npy")]
    model = {
        "builder": {"_target_": "model.build"},
        "pretrained": str(code / "pre.pt"),
        "python_path": [str(code)],
        "tasks": {"stripes_0": {"checkpoint": str(code / "s0.pt"), "evaluator": spec}},
    }
    assert reads.evaluation_reads(model, ["stripes_0"]) == [str(code / "flips.npy")]


def test_stamps_are_each_files_size_and_mtime(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"12345")
    b.write_bytes(b"1")
    os.utime(a, ns=(10**18, 10**18))
    stamps = reads.stamps([b, a, tmp_path / "missing.pt", a])
    assert stamps == {str(a): f"5:{10**18}", str(b): f"1:{b.stat().st_mtime_ns}"} and list(stamps) == [str(a), str(b)]
    a.write_bytes(b"54321")  # the same size, other bytes: a new mtime
    os.utime(a, ns=(10**17, 10**17))  # ... set back to an older one (cp -p)
    assert reads.stamps([a])[str(a)] != stamps[str(a)]


def test_the_files_behind_a_checkpoint_are_read_and_the_engines_files_are_not_repeated(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(
        json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors", "c": "model-1.safetensors"}})
    )
    single = tmp_path / "task.safetensors"
    single.write_bytes(b"x")
    assert reads.behind(index) == [str(tmp_path / "model-1.safetensors"), str(tmp_path / "model-2.safetensors")]
    assert reads.behind(single) == []
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_model.safetensors").write_bytes(b"x")
    (lora / "adapter_config.json").write_text("{}")  # lora_alpha, target modules: what the task vector is
    assert reads.behind(lora / "adapter_model.safetensors") == [str(lora / "adapter_config.json")]
    model = {
        "builder": {"_target_": "m.build", "width": 8},
        "pretrained": str(index),
        "tasks": {
            "a": {"checkpoint": str(single), "evaluator": {"_target_": "m.E", "weights": str(single)}},
            "b": {"checkpoint": str(single), "evaluator": {"_target_": "m.E", "data": str(index)}},
        },
    }
    # the pretrained checkpoint's shards; the checkpoints an evaluator names are the rule's own inputs already
    assert reads.evaluation_reads(model, ["a", "b"]) == reads.behind(index)
    # a checkpoint that is not sharded has none; a file an evaluator names that is no engine file is read
    assert reads.evaluation_reads({**model, "pretrained": str(single)}, ["a", "b"]) == [str(index)]


def test_an_lm_eval_task_reads_its_folder_and_its_data_files(tmp_path):
    tasks = tmp_path / "tasks"
    (tasks / "__pycache__").mkdir(parents=True)
    (tasks / "__pycache__" / "utils.cpython-311.pyc").write_bytes(b"")
    (tasks / "utils.py").write_text("def process(doc):\n    return doc\n")
    (tasks / "mc.yaml").write_text(
        "task: mc\noutput_type: multiple_choice\ndataset_path: json\n"
        "dataset_kwargs: {data_files: {test: ../data/mc.jsonl}}\ntest_split: test\n"
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mc.jsonl").write_text("{}\n")
    spec = {"_target_": "mapmerge.adapters.lm_eval_tasks.LMEvalEvaluator", "include_path": str(tasks), "task": "mc"}
    assert reads.evaluator_files(spec) == sorted(
        [str(tasks / "mc.yaml"), str(tasks / "utils.py"), str(tmp_path / "data" / "mc.jsonl")]
    )


def test_the_files_read_are_in_the_cache_key_but_not_in_the_stages_call(tmp_path):
    results, spec = files(tmp_path)
    data = tmp_path / "test.csv"
    data.write_text("text,label\na,1\n")
    spec["inputs"][reads.READS] = [str(data)]
    key = evaluation_cache.key(spec)
    data.write_text("text,label\na,0\n")
    assert evaluation_cache.key(spec) != key
    data.write_text("text,label\na,1\n")
    assert evaluation_cache.key(spec) == key
    _, _, kwargs = stage_call(spec)
    assert reads.READS not in kwargs and "samples" in kwargs
