"""Hugging Face model names (org/name[@revision]) resolved offline from a local cache the test builds as
huggingface_hub stores it (models--org--name/{blobs, refs, snapshots/<commit>}): the snapshot a name and a
revision select, the one-line error for a name that is not cached, a directory of the same spelling winning, and
a whole experiment naming its models so, through the config loading, down to an evaluation."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO
from fortunes_tasks import write_data
from mapmerge.adapters import hub
from mapmerge.adapters.transformers import SequenceClassificationEvaluator
from mapmerge.errors import ConfigError
from mapmerge.run.config import load_config
from word_tokenizer import word_tokenizer

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
transformers.logging.set_verbosity_error()

WORDS = "red apple pie ripe pear jam fast train ride late night bus".split()
OLD, NEW = "a" * 40, "b" * 40  # commit hashes of two revisions


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer of WORDS (made here: nothing is downloaded)."""
    return word_tokenizer(WORDS, cls_token="[CLS]", sep_token="[SEP]")


def bert_config() -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=len(WORDS) + 4,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=2,
    )


def cache_model(cache: Path, repo: str, folder: Path, commit: str, refs: tuple[str, ...] = ()) -> Path:
    """Put a model folder into a hub cache as snapshot `commit` of `repo`, as huggingface_hub does: each file a
    blob named by its sha256, linked from snapshots/<commit>/; refs/<ref> holds the commit. Returns the snapshot."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, storage / "blobs" / blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    for ref in refs:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models saved with save_pretrained: a BertModel (pretrained, two revisions) and two fine-tuned
    BertForSequenceClassification, with a tokenizer each, in a hub cache; a data file."""
    root = tmp_path_factory.mktemp("hub")
    folders = root / "folders"
    tok = tokenizer()
    for seed, name in enumerate(["base-old", "base-new", "task-a", "task-b"]):
        torch.manual_seed(seed)
        model = (transformers.BertModel if name.startswith("base") else transformers.BertForSequenceClassification)(
            bert_config()
        )
        model.save_pretrained(folders / name)
        tok.save_pretrained(folders / name)
    cache = root / "cache"
    snapshots = {
        "base@old": cache_model(cache, "org/base", folders / "base-old", OLD, ("v1",)),
        "base": cache_model(cache, "org/base", folders / "base-new", NEW, ("main",)),
        "task-a": cache_model(cache, "org/task-a", folders / "task-a", NEW, ("main",)),
        "task-b": cache_model(cache, "org/task-b", folders / "task-b", OLD, ("main",)),
    }
    rows = [("red apple pie", 0), ("fast train ride", 1), ("ripe pear jam", 0), ("late night bus", 1)]
    data = write_data(pd.DataFrame(rows, columns=["text", "label"]), root / "data.csv")
    return {"root": root, "cache": cache, "folders": folders, "data": data, **snapshots}


@pytest.fixture
def cached(models, monkeypatch) -> dict[str, Path]:
    monkeypatch.setenv("HF_HUB_CACHE", str(models["cache"]))
    return models


def test_a_name_and_a_revision_select_a_cached_snapshot(cached):
    assert hub.snapshot("org/base", "k") == cached["base"]
    assert hub.snapshot("org/base@main", "k") == cached["base"]
    assert hub.snapshot("org/base@v1", "k") == cached["base@old"]  # a tag
    assert hub.snapshot(f"org/base@{OLD}", "k") == cached["base@old"]  # a commit hash
    assert [hub.is_name(v) for v in ["org/base", "org/base@v1", "my-org/m.v2_x", "./x", "/a/b", "a", "a/b/c"]] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_hf_home_names_the_cache_when_hf_hub_cache_is_unset(models, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    shutil.copytree(models["cache"], tmp_path / "hub", symlinks=True)  # the links are relative, as the hub's
    assert hub.cache_dir() == tmp_path / "hub"
    assert hub.snapshot("org/base", "k") == tmp_path / "hub" / models["base"].relative_to(models["cache"])


def test_a_name_not_in_the_cache_is_one_line_saying_how_to_fetch_it(cached):
    cache = cached["cache"]
    errors = {
        "org/nope": f"k: org/nope is not in the Hugging Face cache {cache}; fetch it with `hf download org/nope` "
        "(the cache: HF_HUB_CACHE, else HF_HOME/hub)",
        "org/base@v9": f"k: revision v9 of org/base is not in the Hugging Face cache {cache}; fetch it with "
        "`hf download org/base --revision v9` (the cache: HF_HUB_CACHE, else HF_HOME/hub)",
    }
    for name, message in errors.items():
        with pytest.raises(ConfigError) as info:
            hub.snapshot(name, "k")
        assert str(info.value) == message


def experiment(path: Path, pretrained: str, tasks: dict[str, str], data: Path) -> Path:
    spec = {
        "name": "hub",
        "model": {
            "adapter": "transformers",
            "transformers": {
                "pretrained": pretrained,
                "max_length": 8,
                "tasks": {t: {"directory": d, "data": str(data)} for t, d in tasks.items()},
            },
        },
    }
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_an_experiment_names_its_models_and_a_directory_of_that_spelling_wins(cached, tmp_path):
    tasks = {"a": "org/task-a", "b": "org/task-b"}
    cfg = load_config(REPO / "config", experiment(tmp_path / "exp.yaml", "org/base", tasks, cached["data"]))
    model = cfg["model"]
    assert model["pretrained"] == str(cached["base"] / "model.safetensors")
    assert model["tasks"]["a"]["checkpoint"] == str(cached["task-a"] / "model.safetensors")
    assert model["tasks"]["b"]["checkpoint"] == str(cached["task-b"] / "model.safetensors")
    assert model["builder"]["directory"] == str(cached["task-a"])
    evaluator = model["tasks"]["b"]["evaluator"]
    assert evaluator["tokenizer"] == evaluator["directory"] == str(cached["task-b"])
    # the snapshot works as a directory does: the evaluator reads its tokenizer, the model loads from it
    spec = {k: v for k, v in evaluator.items() if k != "_target_"}
    module = transformers.BertForSequenceClassification.from_pretrained(cached["task-b"], local_files_only=True)
    with torch.no_grad():  # as the engine calls it
        rows = SequenceClassificationEvaluator(**spec)(module.eval(), "cpu")
    assert len(rows) == 4 and set(rows.columns) == {"example", "correct", "loss"}
    # another revision is another snapshot, so other paths: the workflow's inputs and params change, and it reruns
    cfg = load_config(REPO / "config", experiment(tmp_path / "exp.yaml", "org/base@v1", tasks, cached["data"]))
    assert cfg["model"]["pretrained"] == str(cached["base@old"] / "model.safetensors")
    # a folder spelled as the name, relative to the experiment file, is a directory and wins over the cache
    shutil.copytree(cached["folders"] / "base-old", tmp_path / "org" / "base")
    cfg = load_config(REPO / "config", experiment(tmp_path / "exp.yaml", "org/base", tasks, cached["data"]))
    assert cfg["model"]["pretrained"] == str(tmp_path / "org" / "base" / "model.safetensors")


def test_an_experiment_naming_an_uncached_model_is_one_line(cached, tmp_path):
    tasks = {"a": "org/task-a", "b": "org/task-z@v2"}
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "config", experiment(tmp_path / "exp.yaml", "org/base", tasks, cached["data"]))
    assert str(info.value) == (
        f"model.transformers.tasks.b.directory: no directory {tmp_path / 'org' / 'task-z@v2'} and org/task-z is not "
        f"in the Hugging Face cache {cached['cache']}; fetch it with `hf download org/task-z --revision v2` "
        "(the cache: HF_HUB_CACHE, else HF_HOME/hub)"
    )
    assert os.listdir(tmp_path) == ["exp.yaml"]
