"""An lm-eval task's local JSON data read by the driver before any job (mapmerge.run.lm_eval_checks): each fault
failed the first evaluation job that loaded the task, after Snakemake had deleted its finished tables, in words that
named neither the file nor the fault (`StopIteration()`, `TypeError: 'NoneType' object is not iterable`, `Sample
larger than population`). No model and no lm_eval needed: the YAML and the JSONL files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapmerge.errors import ConfigError
from mapmerge.run.lm_eval_checks import check_task_data

KEY = "model.transformers.tasks.geo.lm_eval"
YAML = """task: capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: capitals.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: answer
"""
DOCS = [
    {"question": "capital of France?", "choices": ["Paris", "Rome", "Oslo"], "answer": 0},
    {"question": "capital of Italy?", "choices": ["Paris", "Rome", "Oslo"], "answer": 1},
    {"question": "capital of Norway?", "choices": ["Paris", "Rome", "Oslo"], "answer": 2},
]


def task(tmp_path: Path, yaml: str = YAML, docs: list | None = None, text: str | None = None) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir(exist_ok=True)
    (folder / "capitals.yaml").write_text(yaml)
    rows = DOCS if docs is None else docs
    (folder / "capitals.jsonl").write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in rows))
    return folder


def refused(tmp_path: Path, shots: int | None = None, limit: int | None = None, **kwargs) -> str:
    folder = task(tmp_path, **kwargs)
    with pytest.raises(ConfigError) as info:
        check_task_data({"include_path": str(folder), "task": "capitals", "num_fewshot": shots, "limit": limit}, KEY)
    assert "\n" not in str(info.value)
    return str(info.value).removeprefix(f"{KEY}.task: {folder / 'capitals.yaml'}: ")


def test_a_tasks_data_that_would_fail_its_jobs_is_refused(tmp_path):
    data = tmp_path / "tasks" / "capitals.jsonl"
    good = task(tmp_path)
    check_task_data({"include_path": str(good), "task": "capitals", "num_fewshot": 2, "limit": None}, KEY)
    without = [dict(DOCS[0]), {k: v for k, v in DOCS[1].items() if k != "choices"}, DOCS[2]]
    assert refused(tmp_path, yaml=YAML.replace("test_split: test", "test_split: tst")) == (
        "test_split tst is not a split of its data_files (test) (did you mean `test`?)"
    )
    assert refused(tmp_path, text="") == f"data file {data} holds no documents"
    assert refused(tmp_path, text=json.dumps(DOCS[0]) + '\n{"question": "broken\n').startswith(
        f"{data}:2: not a JSON document (Unterminated string"
    )
    assert refused(tmp_path, text="[1, 2]\n") == f"{data} item 0: a document must be a JSON object, got int"
    assert refused(tmp_path, docs=without) == f"{data}:2: the document has no choices (its doc_to_choice names it)"
    assert refused(tmp_path, yaml=YAML.replace("{{question}}", "{{questoin}}")) == (
        "doc_to_text names questoin, which no document has (question, choices, answer) (did you mean `question`?)"
    )
    assert refused(tmp_path, yaml=YAML.replace("doc_to_target: answer", "doc_to_target: answr")) == (
        "doc_to_target answr is not a field of its documents (question, choices, answer) (did you mean `answer`?)"
    )
    assert refused(tmp_path, docs=[*DOCS[:2], {**DOCS[2], "answer": 5}]) == (
        f"{data}:3: gold 5 (answer) is not one of its 3 choices"
    )
    task(tmp_path)  # good data again
    with pytest.raises(ConfigError) as info:
        check_task_data({"include_path": str(good), "task": "capitals", "num_fewshot": 3, "limit": None}, KEY)
    assert str(info.value) == (
        f"{KEY}.num_fewshot: 3 examples, but {good / 'capitals.yaml'} draws them from split test, which holds 2 "
        "besides the document scored"
    )
    # a field a statement guards may be missing: not checked
    guarded = YAML.replace('"{{question}}"', '"{% if question %}{{question}}{% endif %}"')
    check_task_data(
        {"include_path": str(task(tmp_path, yaml=guarded, docs=[{**DOCS[0], "question": None}])), "task": "capitals"},
        KEY,
    )
    # a document past the limit is not scored: lm-eval never templates it
    check_task_data({"include_path": str(task(tmp_path, docs=without)), "task": "capitals", "limit": 1}, KEY)
