"""The transformers adapter on real models: PyPI's all-MiniLM-L6-v2 (a BertModel without head), text
tasks from Debian's fortunes, a tiny GPT-2 made here; sharded directories, the base_model_prefix
mapping, heads of other shapes, data files, errors, and the whole workflow to a merged directory
that transformers loads back."""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, job_counts, snakemake_command
from fortunes_tasks import (
    finetune_causal_lm,
    finetune_classifier,
    minilm_dir,
    topic_task,
    write_data,
)
from mapmerge.adapters import transformers as adapter
from mapmerge.io import ArtifactError, read_table
from mapmerge.run import evaluation_cache, job
from mapmerge.run.config import ConfigError, load_config
from mapmerge.run.registry import READS
from mapmerge.tensors.checkpoints import load_state_dict, open_checkpoint
from mapmerge.tensors.engine import MergeEngine
from mapmerge.tensors.hf_prefix import prefix_from_class, prefix_from_source
from mapmerge.tensors.taskvectors import extract_task_vector, merge_files
from mapmerge.tools.status import summary

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
transformers.logging.set_verbosity_error()
MAX_LENGTH = 24


def perturbed(model: torch.nn.Module, names: list[str], seed: int, scale: float = 0.02) -> torch.nn.Module:
    """The model with seeded noise added to the named parameters: a stand-in fine-tuned model (no training)."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].add_(scale * torch.randn(params[name].shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> dict[str, Path]:
    """The base MiniLM and two classifiers made from it without training: `two` (2 labels, with its
    tokenizer, one model.safetensors) and `three` (3 labels, no tokenizer, sharded), with data files."""
    base = minilm_dir()
    out = tmp_path_factory.mktemp("minilm")
    _, held = topic_task(["computers", "food"], 0, 8, seed=0)
    layer = "bert.encoder.layer.5.output.dense.weight"
    for name, labels, seed in (("two", 2, 0), ("three", 3, 1)):
        torch.manual_seed(seed)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=labels, local_files_only=True
        )
        perturbed(model, [layer, "bert.embeddings.word_embeddings.weight"], seed).save_pretrained(
            out / name, **({"max_shard_size": "30MB"} if name == "three" else {})
        )
    transformers.AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(out / "two")
    return {
        "base": base,
        "two": out / "two",
        "three": out / "three",
        "csv": write_data(held, out / "held.csv"),
        "parquet": write_data(held, out / "held.parquet"),
        "jsonl": write_data(held, out / "held.jsonl"),
        "dir": out,
    }


def experiment(path: Path, pretrained: Path, tasks: dict[str, dict], **block) -> Path:
    """An experiment file with model.transformers (paths as given)."""
    spec = {
        "name": "hf",
        "model": {"adapter": "transformers", "transformers": {"pretrained": str(pretrained), "tasks": tasks, **block}},
    }
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def direct_rows(directory: Path, data: Path, tokenizer: Path) -> pd.DataFrame:
    """correct and loss per example of the saved model, computed with transformers alone."""
    frame = pd.read_csv(data) if data.suffix == ".csv" else pd.read_parquet(data)
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True).eval()
    enc = tok(frame["text"].tolist(), truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    labels = torch.tensor(frame["label"].tolist())
    return pd.DataFrame(
        {
            "correct": (logits.argmax(1) == labels).numpy(),
            "loss": torch.nn.functional.cross_entropy(logits, labels, reduction="none").numpy(),
        }
    )


# (architecture, model_type) of models people merge: the source must settle each, and agree with the class
COMMON = [
    ("BertForSequenceClassification", "bert"),
    ("BertModel", "bert"),
    ("XLMRobertaForSequenceClassification", "xlm-roberta"),
    ("DebertaV2ForSequenceClassification", "deberta-v2"),
    ("GPT2LMHeadModel", "gpt2"),
    ("LlamaForCausalLM", "llama"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("T5ForConditionalGeneration", "t5"),
    ("CLIPModel", "clip"),
    ("ViTForImageClassification", "vit"),
]


def test_base_model_prefix_from_source_agrees_with_the_class():
    """The parsed source gives the imported class's prefix, or nothing (then the class is asked): for the common
    models and every 25th sequence-classification and causal-LM architecture transformers knows."""
    from transformers.models.auto import modeling_auto as auto

    known = [
        (arch if isinstance(arch, str) else arch[0], model_type)
        for mapping in (auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
        for model_type, arch in mapping.items()
    ]
    settled = 0
    for architecture, model_type in COMMON + sorted(known)[::25]:
        found = prefix_from_source(architecture, model_type)
        assert found is not None or (architecture, model_type) not in COMMON, (architecture, model_type)
        if found is not None:
            settled += 1
            assert found == prefix_from_class(architecture, model_type), (architecture, model_type)
    assert settled >= len(COMMON) + 5
    assert prefix_from_source("", "bert") == "bert"  # no architecture: the file's one value
    assert prefix_from_source("BertModel", "no-such-model") is None


@pytest.mark.slow  # the real MiniLM
def test_base_model_names_get_the_prefix_and_shards_read_as_one(minilm):
    with open_checkpoint(minilm["base"] / "model.safetensors") as base:
        assert all(name.startswith("bert.") for name in base.keys())
        assert (
            base.stored_name("bert.encoder.layer.0.attention.self.query.weight")
            == "encoder.layer.0.attention.self.query.weight"
        )
        assert base.meta()["bert.embeddings.word_embeddings.weight"].shape == (30522, 384)
    index = minilm["three"] / "model.safetensors.index.json"
    assert index.is_file() and len(list(minilm["three"].glob("model-*.safetensors"))) > 1
    saved = transformers.AutoModelForSequenceClassification.from_pretrained(
        minilm["three"], local_files_only=True
    ).state_dict()
    with open_checkpoint(index) as sharded:
        assert set(sharded.keys()) == set(saved) - {"bert.embeddings.position_ids"}
        torch.testing.assert_close(sharded.get("classifier.weight"), saved["classifier.weight"])
    # task vectors line up: the base's bert.* against the classifier's, heads and position_ids left out
    out = minilm["dir"] / "tau.safetensors"
    extract_task_vector(minilm["base"] / "model.safetensors", index, ["*"], ["classifier.*"], out, "three")
    tau = load_state_dict(out)
    assert "classifier.weight" not in tau and all(n.startswith("bert.") for n in tau)
    base = load_state_dict(minilm["base"] / "model.safetensors")
    name = "bert.encoder.layer.5.output.dense.weight"
    torch.testing.assert_close(base[name] + tau[name], saved[name])
    assert float(tau["bert.encoder.layer.0.output.dense.weight"].abs().max()) == 0.0
    bad = minilm["dir"] / "bad.safetensors.index.json"
    bad.write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    with pytest.raises(
        ArtifactError, match=r"bad.safetensors.index.json: shard model-1.safetensors not found \(tensor 'a'\)"
    ):
        open_checkpoint(bad)


@pytest.mark.slow  # the real MiniLM
def test_resolve_fills_the_generic_model(minilm, tmp_path):
    tasks = {
        "two": {"directory": str(minilm["two"]), "data": str(minilm["csv"])},
        "three": {"directory": str(minilm["three"]), "data": str(minilm["parquet"]), "limit": 4},
    }
    for overrides in ([], ["model=transformers"]):
        cfg = load_config(
            REPO / "config", experiment(tmp_path / "exp.yaml", minilm["base"], tasks, max_length=MAX_LENGTH), overrides
        )
        model = cfg["model"]
        assert model["pretrained"] == str(minilm["base"] / "model.safetensors")
        assert model["tasks"]["three"]["checkpoint"] == str(minilm["three"] / "model.safetensors.index.json")
        assert model["merge"]["exclude"] == ["classifier.*"] and model["builder"]["directory"] == str(minilm["two"])
        two, three = model["tasks"]["two"]["evaluator"], model["tasks"]["three"]["evaluator"]
        assert two["tokenizer"] == str(minilm["two"]) and three["tokenizer"] == str(minilm["base"])  # three has none
        assert (two["limit"], three["limit"], three["max_length"]) == (None, 4, MAX_LENGTH)
    # errors: one line naming the key and the file
    bad = {
        "model.transformers.tasks.two.directory: directory": {
            **tasks,
            "two": {**tasks["two"], "directory": str(tmp_path / "nope")},
        },
        "model.transformers.tasks.two.data: data file": {
            **tasks,
            "two": {**tasks["two"], "data": str(tmp_path / "nope.csv")},
        },
        "model.transformers.tasks.two.text_column: .*held.csv has no column 'body'": {
            **tasks,
            "two": {**tasks["two"], "text_column": "body"},
        },
    }
    for message, spec in bad.items():
        with pytest.raises(ConfigError, match=message) as info:
            load_config(REPO / "config", experiment(tmp_path / "bad.yaml", minilm["base"], spec))
        assert "\n" not in str(info.value)
    # a head pattern of the user's that matches nothing: the heads would be merged
    with pytest.raises(
        ConfigError,
        match=r"^model\.transformers\.heads: 'clasifier\.\*' matches no tensor of the checkpoints \(did you mean `classifier\.\*`\?\)$",
    ):
        load_config(REPO / "config", experiment(tmp_path / "bad.yaml", minilm["base"], tasks, heads=["clasifier.*"]))
    with pytest.raises(ConfigError, match="model.transformers.pretrained: .* has no config.json"):
        load_config(REPO / "config", experiment(tmp_path / "bad.yaml", minilm["dir"], tasks))
    # a sharded save's index that is not one: named with its key (it gave a traceback, or JSON's words alone)
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in minilm["three"].iterdir():
        (broken / file.name).symlink_to(file)
    index = broken / "model.safetensors.index.json"
    index.unlink()
    spec = {**tasks, "three": {**tasks["three"], "directory": "broken"}}  # relative to the experiment file
    for text, problem in (
        ('{"metadata": {}, "weight_map": {"classifier.bias"', "not a safetensors index"),
        ('{"weight_map": ["model-00001-of-00004.safetensors"]}', "not a safetensors index"),
        ("[]", "not a safetensors index"),
        ('{"weight_map": {"classifier.bias": null}}', "weight_map gives tensor 'classifier.bias' the shard None"),
    ):
        index.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(REPO / "config", experiment(tmp_path / "bad.yaml", minilm["base"], spec))
        assert str(info.value).startswith(f"model.transformers.tasks.three.directory: {index}: {problem}"), info.value
    # a local directory mistyped: a did-you-mean, not how to fetch a Hugging Face model of that name
    spec = {**tasks, "three": {**tasks["three"], "directory": "brokn"}}
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "config", experiment(tmp_path / "bad.yaml", minilm["base"], spec))
    assert str(info.value) == (
        f"model.transformers.tasks.three.directory: directory {tmp_path / 'brokn'} not found (did you mean `broken`?)"
    )
    # a column set for every task is named by that key, not by the task's own key the adapter fills from it
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "config", experiment(tmp_path / "bad.yaml", minilm["base"], tasks, label_column="lable"))
    assert str(info.value).startswith(
        f"model.transformers.label_column: {minilm['csv']} (task two) has no column 'lable' (did you mean `label`?)"
    ), info.value
    load_config(  # a task's own column where the others' is right: the task's key, as before
        REPO / "config",
        experiment(tmp_path / "ok.yaml", minilm["base"], {**tasks, "two": {**tasks["two"], "text_column": "text"}}),
    )


@pytest.mark.slow  # the real MiniLM
def test_data_files_read_alike(minilm):
    frames = [adapter.read_examples(minilm[kind], ["text", "label"], limit=5) for kind in ("csv", "jsonl", "parquet")]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])
    assert len(frames[0]) == 5 and len(adapter.read_examples(minilm["csv"], ["text"])) == 16
    with pytest.raises(ConfigError, match=r"held.jsonl: no column 'body' \(it has: text, label\)"):
        adapter.read_examples(minilm["jsonl"], ["body"])
    with pytest.raises(ConfigError, match="missing.parquet: data file not found"):
        adapter.read_examples(minilm["dir"] / "missing.parquet", ["text"])


@pytest.mark.slow  # the real MiniLM
def test_labels_past_a_binary_classifiers_default_two_are_refused_before_any_job(minilm, tmp_path):
    """transformers writes no num_labels, id2label or label2id for its default of 2 labels, so the data's labels went
    unchecked: a label 5 failed the first evaluation job, after Snakemake deleted its finished table."""
    from mapmerge.run import preflight

    config = json.loads((minilm["two"] / "config.json").read_text())
    folder = tmp_path / "binary"
    folder.mkdir()
    default = {k: v for k, v in config.items() if k not in ("num_labels", "id2label", "label2id")}
    (folder / "config.json").write_text(json.dumps(default))
    data = tmp_path / "data.csv"
    evaluator = {
        "_target_": adapter.EVALUATORS["sequence_classification"],
        "data": str(data),
        "label_column": "label",
        "limit": None,
        "directory": str(folder),
    }
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 1]}).to_csv(data, index=False)
    preflight._check_default_labels(evaluator)
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 5, 1]}).to_csv(data, index=False)
    with pytest.raises(ConfigError) as info:
        preflight._check_default_labels(evaluator)
    assert str(info.value) == (
        f"{data}: label 5 in column 'label' is outside 0..1 ({folder}/config.json names no labels: transformers' "
        "default of 2)"
    )
    (folder / "config.json").write_text(json.dumps({**default, "id2label": {"0": "a", "1": "b", "2": "c"}}))
    preflight._check_default_labels(evaluator)  # labels named: check_labels' case


def test_a_body_tensor_of_another_shape_is_warned_of_and_a_head_is_not(tmp_path):
    """A fine-tune of another vocabulary: its embeddings' shape differs from the pretrained model's, so the adapter
    leaves them out of the merge for every task, which changed the merge without a word; a head of more labels is a
    head, and a tensor the user's heads name is theirs."""
    from safetensors.torch import save_file

    from mapmerge.run import transformers_checks

    save_file(
        {"embeddings.word.weight": torch.zeros(40, 4), "encoder.w": torch.zeros(4, 4)}, tmp_path / "pre.safetensors"
    )
    task = {"bert.embeddings.word.weight": torch.zeros(50, 4), "bert.encoder.w": torch.zeros(4, 4)}
    save_file({**task, "classifier.weight": torch.zeros(3, 4)}, tmp_path / "a.safetensors")
    model = {
        "adapter": "transformers",
        "pretrained": str(tmp_path / "pre.safetensors"),
        "tasks": {"a": {"checkpoint": str(tmp_path / "a.safetensors")}},
        "merge": {"exclude": ["classifier.*", "bert.embeddings.word.weight"]},  # as head_patterns makes it
    }
    assert transformers_checks.check_same_bodies(model, ["a"]) == [
        "model.transformers.tasks.a.directory: tensor 'bert.embeddings.word.weight' has shape (50, 4), the pretrained "
        "model's (40, 4): it is merged for no task, each evaluating with its own"
    ]
    model["merge"]["exclude"] = ["classifier.*", "bert.embeddings.*"]  # the user's heads name it
    assert transformers_checks.check_same_bodies(model, ["a"]) == []


def test_engine_swaps_heads_of_other_shapes(minilm, tmp_path):
    """Pretrained without head, tasks with 2 and 3 labels: each task's merge equals its own model."""
    pre = minilm["base"] / "model.safetensors"
    checkpoints = {
        "two": minilm["two"] / "model.safetensors",
        "three": minilm["three"] / "model.safetensors.index.json",
    }
    vectors = {task: tmp_path / f"{task}.safetensors" for task in checkpoints}
    for task, path in checkpoints.items():
        extract_task_vector(pre, path, ["*"], ["classifier.*"], vectors[task], task)
    data = {"two": minilm["csv"], "three": minilm["parquet"]}
    evaluators = {
        t: {
            "_target_": adapter.EVALUATORS["sequence_classification"],
            "data": str(data[t]),
            "tokenizer": str(minilm["two"]),
            "directory": str(minilm[t]),
            "max_length": MAX_LENGTH,
        }
        for t in checkpoints
    }
    engine = MergeEngine(
        {"_target_": "mapmerge.adapters.transformers.build_model", "directory": str(minilm["two"])},
        pre,
        vectors,
        checkpoints,
        evaluators,
        {"include": ["*"], "exclude": ["classifier.*"]},
        device="cpu",
    )
    for c, task in (([1.0, 0.0], "two"), ([0.0, 1.0], "three"), ([1.0, 0.0], "two")):
        rows = engine.evaluate(c, sample="s").query("task == @task").reset_index(drop=True)
        expected = direct_rows(minilm[task], data[task], minilm["two"])
        np.testing.assert_allclose(rows["loss"], expected["loss"], atol=1e-4)
        np.testing.assert_array_equal(rows["correct"].astype(bool), expected["correct"])
    assert engine.module.classifier.weight.shape == (3, 384)  # three's head, swapped in
    assert engine.own["two"][0][2] is engine.own["three"][0][2]  # the module's own tensor kept for two


@pytest.mark.slow  # the real MiniLM
def test_merged_directory_loads_back(minilm, tmp_path):
    """A sharded task without tokenizer: its merged directory has the pretrained tokenizer, its head and
    the merged body (c = 1: the task's own model), and replaces an earlier one whole."""
    pre, index = minilm["base"] / "model.safetensors", minilm["three"] / "model.safetensors.index.json"
    extract_task_vector(pre, index, ["*"], ["classifier.*"], tmp_path / "three.safetensors", "three")
    merged = merge_files(pre, {"three": tmp_path / "three.safetensors"}, [1.0])
    names = load_state_dict(tmp_path / "three.safetensors").keys()
    for _ in range(2):
        out = adapter.save_merged_models(
            merged, list(names), {"three": index}, pre, tmp_path / "merged", {"coefficients": "[1.0]"}
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "three.safetensors"]  # no temporary folder left
    assert (out / "three" / "vocab.txt").is_file() and (out / "three" / "model.safetensors").is_file()
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        out / "three", local_files_only=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    own = transformers.AutoModelForSequenceClassification.from_pretrained(
        minilm["three"], local_files_only=True
    ).state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, own[name], msg=name)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> dict[str, Path]:
    """A tiny random GPT-2 (2 layers, width 32, MiniLM's tokenizer) and two perturbed copies, with text data."""
    out = tmp_path_factory.mktemp("gpt2")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=64,
        vocab_size=tok.vocab_size,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    dirs = {"pretrained": out / "pretrained", "food": out / "food", "law": out / "law"}
    for seed, (_name, directory) in enumerate(dirs.items()):
        if seed == 0:
            model = transformers.GPT2LMHeadModel(config)
        else:
            model = perturbed(
                transformers.GPT2LMHeadModel.from_pretrained(dirs["pretrained"]),
                ["transformer.wte.weight", "transformer.h.1.mlp.c_fc.weight"],
                seed,
                scale=0.2,
            )
        model.save_pretrained(directory)
        tok.save_pretrained(directory)
    for topic in ("food", "law"):
        _, held = topic_task([topic], 0, 6, seed=1)
        dirs[f"{topic}_data"] = write_data(held[["text"]], out / f"{topic}.jsonl")
    return dirs


def causal_lm_engine(gpt2: dict[str, Path], tasks: dict[str, dict], folder: Path) -> tuple[dict, MergeEngine]:
    """The adapter's config resolved for causal_lm tasks on gpt2's pretrained model (every tensor merged), and a
    merge engine on the CPU over their task vectors, extracted into `folder` (tau_<task>.safetensors)."""
    cfg = adapter.resolve(
        {
            "adapter": "transformers",
            "merge": {"include": ["*"], "exclude": []},
            "transformers": {
                "pretrained": str(gpt2["pretrained"]),
                "task_type": "causal_lm",
                "max_length": MAX_LENGTH,
                "tasks": tasks,
            },
        },
        folder,
    )
    vectors = {t: folder / f"tau_{t}.safetensors" for t in tasks}
    for t, path in vectors.items():
        extract_task_vector(cfg["pretrained"], cfg["tasks"][t]["checkpoint"], ["*"], [], path, t)
    engine = MergeEngine(
        cfg["builder"],
        cfg["pretrained"],
        vectors,
        {t: cfg["tasks"][t]["checkpoint"] for t in tasks},
        {t: cfg["tasks"][t]["evaluator"] for t in tasks},
        cfg["merge"],
        device="cpu",
    )
    return cfg, engine


def test_causal_lm_loss_is_the_mean_token_loss_and_merges_tied_weights(gpt2, tmp_path):
    evaluator = adapter.CausalLMEvaluator(
        str(gpt2["food_data"]), str(gpt2["food"]), max_length=MAX_LENGTH, batch_size=4
    )
    model = transformers.GPT2LMHeadModel.from_pretrained(gpt2["food"]).eval()
    with torch.no_grad():
        rows = evaluator(model, torch.device("cpu"))
        tok = transformers.AutoTokenizer.from_pretrained(gpt2["food"])
        texts = pd.read_json(gpt2["food_data"], lines=True)["text"]
        ids = [tok(t, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")["input_ids"] for t in texts]
        direct = [float(model(input_ids=i, labels=i).loss) for i in ids]  # transformers' own shifted mean loss
    np.testing.assert_allclose(rows["loss"], direct, rtol=1e-5)
    assert list(rows.columns) == ["example", "loss"]
    # the engine on GPT-2: lm_head is tied to the merged wte, so a merge at e_i is model i itself
    tasks = {t: {"directory": str(gpt2[t]), "data": str(gpt2[f"{t}_data"])} for t in ("food", "law")}
    cfg, engine = causal_lm_engine(gpt2, tasks, tmp_path)
    assert cfg["merge"]["exclude"] == []
    merged = engine.evaluate([1.0, 0.0], sample="s").query("task == 'food'")
    np.testing.assert_allclose(merged["loss"], rows["loss"], rtol=1e-4)
    assert engine.module.lm_head.weight is engine.module.transformer.wte.weight


# The whole workflow on two MiniLM classifiers fine-tuned for a few steps on fortunes topics.

TASKS = {"tech_food": ("computers", "food"), "law_science": ("law", "science")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """An experiment folder: fine-tuned/<task>/ (saved with save_pretrained), data/<task>.csv|jsonl, experiment.yaml."""
    base = minilm_dir()
    root = tmp_path_factory.mktemp("trained")
    (root / "data").mkdir()
    tasks = {}
    for i, (task, topics) in enumerate(TASKS.items()):
        train, held = topic_task(topics, 64, 16, seed=i)
        data = write_data(held, root / "data" / f"{task}.{'csv' if i == 0 else 'jsonl'}")
        finetune_classifier(
            base, train, root / "finetuned" / task, steps=12, seed=i, max_length=MAX_LENGTH, tokenizer=i == 0
        )
        tasks[task] = {"directory": f"finetuned/{task}", "data": str(data.relative_to(root))}
    spec = {
        "name": "hf",
        "model": {
            "adapter": "transformers",
            "transformers": {"pretrained": str(base), "max_length": MAX_LENGTH, "tasks": tasks},
        },
    }
    (root / "experiment.yaml").write_text(json.dumps(spec))
    return root


@pytest.mark.slow
def test_workflow_writes_merged_models_transformers_loads(trained):
    overrides = [
        "sampler.factor=1.5",
        "evaluation.samples_per_job=16",
        "optimizer.pop_size=40",
        "optimizer.n_gen=40",
        "refine.rounds=0",  # refinement rounds: test_workflow.py, test_example.py, test_methods.py
    ]
    cmd = snakemake_command(trained / "work", overrides=overrides, experiment=trained / "experiment.yaml")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = trained / "work" / "results" / "hf"
    front = read_table(res / "pareto.parquet")
    assert len(front) > 0 and {f"accuracy_{t}" for t in TASKS} <= set(front.columns)
    # summary names the merge's transformers folders, one per task, beside its state dict
    folders = [line.split()[-1] for line in summary(res).splitlines() if line.startswith("  per task:")]
    assert folders == [f"{res / 'groups' / 'all' / 'merged' / task}/" for task in sorted(TASKS)]
    reference = read_table(res / "reference.parquet").set_index(["model", "task", "metric"])["value"]
    for task in TASKS:
        assert reference[(task, task, "accuracy")] >= 0.75, reference  # the fine-tuned models learned their task
    measured = read_table(res / "groups/all/selected_evals.parquet")
    for task in TASKS:
        merged = res / "groups" / "all" / "merged" / task
        model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
            merged, local_files_only=True, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info
        data = next((trained / "data").glob(f"{task}.*"))
        frame = pd.read_csv(data) if data.suffix == ".csv" else pd.read_json(data, lines=True)
        tok = transformers.AutoTokenizer.from_pretrained(merged, local_files_only=True)
        with torch.no_grad():
            logits = model.eval()(
                **tok(frame["text"].tolist(), truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
            ).logits
        accuracy = float((logits.argmax(1).numpy() == frame["label"].to_numpy()).mean())
        assert accuracy == pytest.approx(
            measured.query("task == @task")["correct"].mean()
        )  # what the workflow measured
        assert accuracy >= 0.6, (task, accuracy)
    # an edited data file (one label flipped) reruns every evaluation, nothing before them (mapmerge.run.reads), and
    # their jobs' keys hold its bytes: the reference models' job misses the evaluation cache, which holds its tables
    # of the file as it was
    data = trained / "data" / "tech_food.csv"
    original = data.read_bytes()
    frame = pd.read_csv(data)
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]
    frame.to_csv(data, index=False)
    dry = subprocess.run(
        snakemake_command(trained / "work", "-n", "-p", overrides=overrides, experiment=trained / "experiment.yaml"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    batches = len(list((res / "groups" / "all" / "evals").glob("b*.parquet")))
    assert job_counts(dry.stdout) == {
        "evaluate_reference": 1,
        "evaluate_sample": batches,
        "evaluate_selected": 1,
        **{rule: 1 for rule in ("collect_metrics", "fit_surrogate", "pareto_front", "merge_group")},
        **{rule: 1 for rule in ("ledger", "aggregate", "report_tables", "all")},
    }, dry.stdout
    assert f"Updated input files: {data}" in dry.stdout
    spec, edited = kept_tables(dry.stdout, "evaluate_reference", trained / "work")
    assert str(data) in spec["inputs"][READS] and edited is not None
    assert not any(path.is_file() for path in edited.values())
    data.write_bytes(original)
    _, kept = kept_tables(dry.stdout, "evaluate_reference", trained / "work")
    assert kept is not None and all(path.is_file() for path in kept.values())


def kept_tables(plan: str, rule: str, workdir: Path) -> tuple[dict, dict[str, Path] | None]:
    """The spec (mapmerge.run.job) of the one job of `rule` among the commands `snakemake -n -p` printed, and where
    the evaluation cache keeps its tables, looked up in the job's own folder as the job would."""
    lines = [line for line in plan.splitlines() if "mapmerge.run.job" in line and f"/{rule}.log" in line]
    assert len(lines) == 1, plan[-3000:]
    spec = job.decode(shlex.split(lines[0])[-1])
    with contextlib.chdir(workdir):
        return spec, evaluation_cache.entries(spec)


@pytest.mark.slow
def test_causal_lm_merges_of_gpt2_finetuned_on_fortunes(gpt2, tmp_path):
    """The tiny GPT-2 trained briefly per topic: each model beats the pretrained one and the other on its
    topic, the engine's merge at e_i measures model i, the even merge beats the pretrained model's perplexity."""
    tasks = {}
    for seed, topic in enumerate(("food", "law"), 1):
        train, _ = topic_task([topic], 120, 6, seed=1)  # the held-out texts are gpt2's data files
        finetune_causal_lm(
            gpt2["pretrained"], train["text"].tolist(), tmp_path / topic, steps=15, seed=seed, max_length=MAX_LENGTH
        )
        tasks[topic] = {"directory": str(tmp_path / topic), "data": str(gpt2[f"{topic}_data"])}
    _, engine = causal_lm_engine(gpt2, tasks, tmp_path)
    loss = {
        name: engine.evaluate(c, sample=name).groupby("task")["loss"].mean()
        for name, c in {"pretrained": [0.0, 0.0], "food": [1.0, 0.0], "law": [0.0, 1.0], "half": [0.5, 0.5]}.items()
    }
    for topic, other in (("food", "law"), ("law", "food")):
        assert loss[topic][topic] < min(loss["pretrained"][topic] - 1.0, loss[other][topic] - 0.1), (
            loss
        )  # learned its topic
        evaluator = adapter.CausalLMEvaluator(str(gpt2[f"{topic}_data"]), str(tmp_path / topic), max_length=MAX_LENGTH)
        with torch.no_grad():
            own = evaluator(
                transformers.AutoModelForCausalLM.from_pretrained(tmp_path / topic).eval(), torch.device("cpu")
            )
        assert own["loss"].mean() == pytest.approx(loss[topic][topic], rel=1e-4)
    assert all(np.isfinite(loss["half"])) and float(np.exp(loss["half"]).max()) < float(
        np.exp(loss["pretrained"]).min()
    )  # perplexity
