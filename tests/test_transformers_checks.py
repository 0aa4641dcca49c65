"""Transformers runs whose every evaluation job of a task failed, after its task vector was extracted, now refused
before any job with one line: a fine-tune of a wider model, a LoRA adapter for sequence classification of a base
model without a head, a tokenizer given tokens its model was never resized for, a first task whose config.json the
pretrained checkpoint does not fit. A fine-tune with added tokens and resized embeddings, listed second, still runs
(with its warning)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from fortunes_tasks import minilm_dir
from mapmerge.run import preflight
from mapmerge.run.config import ConfigError, load_config
from mapmerge.run.transformers_checks import vocabulary

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
transformers.logging.set_verbosity_error()
REPO = Path(__file__).resolve().parents[1]
ADDED = ["applepie", "steamengine"]


def tiny_bert(vocab: int, hidden: int = 16, layers: int = 1) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )


def fine_tune(base: Path, out: Path, seed: int, tokenizer=None) -> Path:
    """A sequence classifier of `base` with seeded noise on every weight (no training), its embeddings resized to
    `tokenizer` where given."""
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification.from_pretrained(base, num_labels=2)
    if tokenizer is not None:
        model.resize_token_embeddings(len(tokenizer))
        tokenizer.save_pretrained(out)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(out)
    return out


def lora(base: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA adapter of a base model without a head (no task_type: no classifier saved beside it)."""
    import peft

    torch.manual_seed(seed)
    model = peft.get_peft_model(
        transformers.BertModel.from_pretrained(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query"])
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """A tiny headless BERT with MiniLM's tokenizer and what users made of it: two fine-tunes (a, b), one of a wider
    BERT (wide), one of a deeper one (deep), one whose tokenizer got tokens without resizing (unresized), one with the tokens and its embeddings
    resized (added), two LoRA adapters (lora_a, lora_b); a data file using the added tokens."""
    root = tmp_path_factory.mktemp("family")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    torch.manual_seed(0)
    transformers.BertModel(tiny_bert(tok.vocab_size)).save_pretrained(root / "pre")
    tok.save_pretrained(root / "pre")
    transformers.BertModel(tiny_bert(tok.vocab_size, hidden=32)).save_pretrained(root / "wider")
    transformers.BertModel(tiny_bert(tok.vocab_size, layers=2)).save_pretrained(root / "deeper")
    # the pretrained body with BERT's pretraining head (cls.*), as bert-base-uncased is saved
    transformers.BertForMaskedLM.from_pretrained(root / "pre").save_pretrained(root / "with_head")
    tok.save_pretrained(root / "with_head")
    models = {"pre": root / "pre", "with_head": root / "with_head", "data": root / "data.csv"}
    for seed, name in enumerate(("a", "b"), 1):
        models[name] = fine_tune(root / "pre", root / name, seed)
    models["wide"] = fine_tune(root / "wider", root / "wide", 3)
    models["deep"] = fine_tune(root / "deeper", root / "deep", 9)
    grown = transformers.AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    grown.add_tokens(ADDED)
    models["added"] = fine_tune(root / "pre", root / "added", 4, grown)
    models["unresized"] = fine_tune(root / "pre", root / "unresized", 5)
    grown.save_pretrained(root / "unresized")
    # the same words under other ids: two tokens' ids swapped in its tokenizer.json
    models["swapped"] = fine_tune(root / "pre", root / "swapped", 10)
    tok.save_pretrained(root / "swapped")
    spec = json.loads((root / "swapped" / "tokenizer.json").read_text(encoding="utf-8"))
    first, second = (t for t, i in spec["model"]["vocab"].items() if i in (2000, 2001))
    vocab = spec["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (root / "swapped" / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    for seed, name in enumerate(("lora_a", "lora_b"), 6):
        models[name] = lora(root / "pre", root / name, seed)
    rows = [(f"{ADDED[0]} red apple", 0), (f"{ADDED[1]} fast train", 1)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(models["data"], index=False)
    return models


def checked(family: dict[str, Path], tmp_path: Path, *tasks: str, pretrained: str = "pre") -> list[str]:
    """The warnings of check_files, the driver's check before any job, on a run of these tasks."""
    spec = {
        "name": "hf",
        "results_dir": str(tmp_path / "results"),
        "model": {
            "adapter": "transformers",
            "transformers": {
                "pretrained": str(family[pretrained]),
                "max_length": 16,
                "tasks": {t: {"directory": str(family[t]), "data": str(family["data"])} for t in tasks},
            },
        },
    }
    (tmp_path / "experiment.yaml").write_text(json.dumps(spec))  # JSON is YAML
    warnings: list[str] = []
    preflight.check_files(load_config(REPO / "config", tmp_path / "experiment.yaml"), warnings.append)
    return warnings


def refusal(family: dict[str, Path], tmp_path: Path, *tasks: str, pretrained: str = "pre") -> str:
    with pytest.raises(ConfigError) as info:
        checked(family, tmp_path, *tasks, pretrained=pretrained)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.slow  # builds BERTs and PEFT adapters
def test_fine_tunes_the_jobs_could_not_evaluate_are_refused(family, tmp_path):
    pre = family["pre"] / "model.safetensors"
    assert refusal(family, tmp_path, "a", "wide") == (
        "model.transformers.tasks.wide.directory: tensor 'bert.embeddings.LayerNorm.bias' has shape (32,), the "
        "pretrained model's (16,) (config.json: hidden_size 32, the pretrained's 16): not a fine-tune of the "
        "pretrained model, whose config.json builds every task's model"
    )
    assert refusal(family, tmp_path, "wide", "a").startswith("model.transformers.tasks.wide.directory: tensor ")
    # another depth: the extra layer was left out of its evaluations without a word, and its merged folder shipped it
    assert refusal(family, tmp_path, "a", "deep") == (
        f"model.transformers.tasks.deep.directory: {family['deep'] / 'model.safetensors'} holds "
        "'bert.encoder.layer.1.attention.output.LayerNorm.bias', 'bert.encoder.layer.1.attention.output.LayerNorm.weight', "
        "'bert.encoder.layer.1.attention.output.dense.bias' and 13 more, which neither the pretrained checkpoint nor the "
        "model the first task's config.json builds has (config.json: num_hidden_layers 2, the pretrained's 1): not a "
        "fine-tune of the pretrained model"
    )
    assert refusal(family, tmp_path, "deep", "a").startswith(
        "model.transformers.tasks.deep.directory: its config.json builds every task's model, with "
        "'bert.encoder.layer.1.attention.self.query.weight', "
    )
    assert refusal(family, tmp_path, "lora_a", "lora_b") == (
        f"model.transformers.tasks.lora_a.directory: {family['lora_a'] / 'adapter_model.safetensors'} (a LoRA "
        "adapter, whose other tensors are the pretrained model's) lacks 'classifier.weight', 'classifier.bias' of the "
        f"model, which the pretrained checkpoint {pre} lacks too: task lora_a cannot be evaluated"
    )
    assert refusal(family, tmp_path, "a", "unresized") == (
        f"model.transformers.tasks.unresized.directory: the tokenizer in {family['unresized']} has "
        f"token ids up to 30523, but the model's vocab_size is 30522 ({family['unresized'] / 'config.json'}): text "
        "with those tokens fails the evaluation; resize the model's embeddings to the tokenizer "
        "(model.resize_token_embeddings(len(tokenizer))) and save it again"
    )
    # merged and evaluated without a word: its embeddings index other tokens
    ids = json.loads((family["pre"] / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    token = min((t for t, i in ids.items() if i in (2000, 2001)), key=ids.__getitem__)
    assert refusal(family, tmp_path, "a", "swapped") == (
        f"model.transformers.tasks.swapped.directory: the tokenizer in {family['swapped']} gives 2 of the pretrained "
        f"tokenizer's tokens other ids ({token!r}: 2001, the pretrained's 2000), so its model's embeddings index "
        "other tokens than the pretrained model's: not a fine-tune of the pretrained model with its tokenizer"
    )
    assert refusal(family, tmp_path, "added", "a").startswith(
        "model.transformers.tasks.added.directory: its config.json builds every task's model, which the pretrained "
        f"checkpoint {pre} does not fit (size mismatch for bert.embeddings.word_embeddings.weight"
    )
    # a pretrained model saved with its pretraining head, which the fine-tunes dropped: the way out said
    assert refusal(family, tmp_path, "a", "b", pretrained="with_head").endswith(
        "(5 missing); the pretrained model's head 'cls.*', which the fine-tunes dropped: give "
        "model.transformers.pretrained its body alone (AutoModel.from_pretrained(folder).save_pretrained(new_folder))"
    )
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # builds BERTs
def test_added_tokens_with_resized_embeddings_pass_with_their_warning(family, tmp_path):
    assert checked(family, tmp_path, "a", "b") == []
    assert checked(family, tmp_path, "a", "added") == [
        "model.transformers.tasks.added.directory: tensor 'bert.embeddings.word_embeddings.weight' has shape "
        "(30524, 16), the pretrained model's (30522, 16): it is merged for no task, each evaluating with its own"
    ]


def test_vocabulary_from_each_kind_of_file(tmp_path):
    """Token -> id: tokenizer.json (a WordPiece's dict, a Unigram's list, added tokens), vocab.txt, vocab.json with
    added_tokens.json; nothing where only tokenizer.model holds it."""
    fast = {"model": {"vocab": {"a": 0, "b": 1}}, "added_tokens": [{"id": 7, "content": "x"}]}
    cases = {
        "wordpiece": ({"tokenizer.json": json.dumps(fast)}, {"a": 0, "b": 1, "x": 7}),
        "unigram": ({"tokenizer.json": json.dumps({"model": {"vocab": [["a", 0.0], ["b", -1.0]]}})}, {"a": 0, "b": 1}),
        "vocab.txt": ({"vocab.txt": "a\nb\n"}, {"a": 0, "b": 1}),
        "bpe": (
            {"vocab.json": json.dumps({"a": 0, "b": 4}), "added_tokens.json": '{"y": 9}'},
            {"a": 0, "b": 4, "y": 9},
        ),
        "sentencepiece": ({"tokenizer.model": "binary"}, {}),
    }
    for name, (files, expected) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        assert vocabulary(folder) == expected, name


def test_a_causal_lm_needs_a_token_and_the_next():
    """max_length 1 on a causal LM's data task passed the check (>= 1) and failed every evaluation job: the key the
    user wrote, the block's or the task's, is named."""
    evaluator = {"_target_": "mapmerge.adapters.transformers.CausalLMEvaluator", "max_length": 1}
    model = {"transformers": {"max_length": 1, "tasks": {"a": {}, "b": {"max_length": 1}}}}
    for task, key in (("a", "model.transformers.max_length"), ("b", "model.transformers.tasks.b.max_length")):
        with pytest.raises(ConfigError) as info:
            preflight._check_next_token(model, task, evaluator)
        assert str(info.value) == (
            f"{key}: must be at least 2 for a causal LM (a token and the next one it predicts), got 1"
        )
    preflight._check_next_token(model, "a", {**evaluator, "max_length": 2})
