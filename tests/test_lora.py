"""LoRA fine-tunes as low-rank task vectors: PEFT adapters of a tiny random Llama (peft makes them; mapmerge reads
them without peft), checked against PEFT's own merge_and_unload, the task-arithmetic sum of the dense deltas, the
size on disk and the refusals. The whole workflow from adapters to a front and merged models: tests/test_lm_eval.py
(its adapters scored by lm-eval tasks)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import REPO
from mapmerge.adapters.transformers import model_weights, save_merged_models
from mapmerge.io import ArtifactError
from mapmerge.run.config import ConfigError, load_config
from mapmerge.tensors.checkpoints import load_state_dict, open_checkpoint, save_safetensors
from mapmerge.tensors.lora import FACTOR_A, FACTOR_B, read_adapter
from mapmerge.tensors.taskvectors import (
    compatible_names,
    extract_task_vector,
    gram_matrix,
    merge_files,
    merged_state,
)
from word_tokenizer import word_tokenizer

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
if importlib.util.find_spec("peft") is None:  # found, not imported: importing it is 2.5 s in every test worker
    pytest.skip("needs peft (pip install 'mapmerge[llm]')", allow_module_level=True)
transformers.logging.set_verbosity_error()

# adapter name -> LoraConfig keywords: overlapping targets, ranks, alpha, rsLoRA, a per-module rank
ADAPTERS = {
    "qv": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "mlp": {"r": 2, "lora_alpha": 16, "use_rslora": True, "target_modules": ["q_proj", "up_proj", "down_proj"]},
    "ko": {"r": 3, "lora_alpha": 6, "target_modules": ["k_proj", "o_proj"], "rank_pattern": {"o_proj": 5}},
}
TOLERANCE = 1e-5  # max abs difference, float32


WORDS = "the a cat dog sat ran on under mat log red blue big small old new time saves nine all that is not gold".split()


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer of WORDS (made here: nothing is downloaded)."""
    return word_tokenizer(WORDS, bos_token="[BOS]", eos_token="[EOS]")


def llama_config(intermediate_size: int = 48) -> transformers.LlamaConfig:
    """A tiny Llama: 2 layers, width 32, grouped-query attention, the tokenizer's vocabulary."""
    return transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )


def make_adapter(pretrained: Path, out: Path, seed: int, **lora) -> dict[str, torch.Tensor]:
    """A PEFT LoRA adapter of the pretrained model with random, non-zero lora_B, saved to `out`; returns PEFT's own
    merge_and_unload state dict."""
    import peft

    torch.manual_seed(seed)
    model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(pretrained), peft.LoraConfig(**lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    model.save_pretrained(out)
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny random Llama (save_pretrained) and the ADAPTERS of it, with PEFT's merged state dict of each."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(llama_config()).save_pretrained(root / "pretrained")
    tokenizer().save_pretrained(root / "pretrained")
    merged = {
        name: make_adapter(root / "pretrained", root / name, seed, **lora)
        for seed, (name, lora) in enumerate(ADAPTERS.items(), start=1)
    }
    pretrained = root / "pretrained" / "model.safetensors"
    vectors = {name: root / f"tau_{name}.safetensors" for name in ADAPTERS}
    for name, path in vectors.items():
        extract_task_vector(pretrained, root / name, ["*"], [], path, name)
    return {"root": root, "pretrained": pretrained, "merged": merged, "vectors": vectors}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_one_adapter_at_one_is_peft_merge_and_unload(tiny, tmp_path):
    state = merge_files(tiny["pretrained"], {"qv": tiny["vectors"]["qv"]}, [1.0])
    assert max_diff(state, tiny["merged"]["qv"]) <= TOLERANCE
    # the merged model written as a transformers directory: the pretrained's config, the merged weights
    weights = model_weights(tiny["root"] / "qv" / "adapter_model.safetensors", tiny["pretrained"])
    assert weights == tiny["pretrained"]
    with open_checkpoint(tiny["vectors"]["qv"]) as reader:
        names = sorted({k.split("::")[0] for k in reader.keys()})
    save_merged_models(state, names, {"qv": weights}, tiny["pretrained"], tmp_path / "out")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "qv").state_dict()
    assert max_diff(loaded, tiny["merged"]["qv"]) <= TOLERANCE
    for name, lora in ADAPTERS.items():  # every adapter alone at c = 1, rsLoRA and rank_pattern included
        state = merge_files(tiny["pretrained"], {name: tiny["vectors"][name]}, [1.0])
        assert max_diff(state, tiny["merged"][name]) <= TOLERANCE, (name, lora)


def test_several_adapters_are_the_task_arithmetic_sum_of_dense_deltas(tiny, tmp_path):
    pre = load_state_dict(tiny["pretrained"])
    c = {"qv": 0.7, "mlp": -0.4, "ko": 1.3}
    expected = {
        k: w + sum(c[n] * (tiny["merged"][n][k] - w) for n in ADAPTERS) for k, w in load_state_dict_hf(tiny).items()
    }
    state = merge_files(tiny["pretrained"], tiny["vectors"], list(c.values()))
    assert max_diff(state, expected) <= TOLERANCE
    in_memory = merged_state(pre, [load_state_dict(p) for p in tiny["vectors"].values()], list(c.values()))
    assert max_diff(in_memory, expected) <= TOLERANCE
    # the merge's own task vector (what a nested level merges) stays low-rank: rank sum r_i where adapters overlap
    delta = merge_files(tiny["pretrained"], tiny["vectors"], list(c.values()), delta=True)
    assert all(k.endswith((FACTOR_A, FACTOR_B)) for k in delta)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert delta[q + FACTOR_A].shape == (4 + 2, 32)  # qv's and mlp's ranks
    save_safetensors(delta, tmp_path / "delta.safetensors")
    again = merge_files(tiny["pretrained"], {"all": tmp_path / "delta.safetensors"}, [1.0])
    assert max_diff(again, expected) <= TOLERANCE


def load_state_dict_hf(tiny: dict) -> dict[str, torch.Tensor]:
    """The pretrained model's state dict as transformers loads it (the names merge_and_unload gives)."""
    return transformers.AutoModelForCausalLM.from_pretrained(tiny["pretrained"].parent).state_dict()


def test_gram_matrix_from_factors_equals_the_dense_one(tiny, tmp_path):
    """Inner products from the factors (low-rank x low-rank, low-rank x dense) equal those of the dense vectors."""
    dense = {}
    for name in ADAPTERS:
        transformers.AutoModelForCausalLM.from_pretrained(tiny["pretrained"].parent).save_pretrained(
            tmp_path / f"full_{name}", state_dict=tiny["merged"][name]
        )
        dense[name] = tmp_path / f"dense_{name}.safetensors"
        extract_task_vector(
            tiny["pretrained"], tmp_path / f"full_{name}" / "model.safetensors", ["*"], [], dense[name], name
        )
    reference, n_dense = gram_matrix(dense)
    low_rank, n_params = gram_matrix(tiny["vectors"])
    mixed, _ = gram_matrix({"qv": tiny["vectors"]["qv"], "mlp": dense["mlp"], "ko": tiny["vectors"]["ko"]})
    torch.testing.assert_close(low_rank, reference, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(mixed, reference, rtol=1e-6, atol=1e-9)
    assert low_rank[0, 2] == 0 and low_rank[0, 1] != 0  # qv and ko adapt disjoint layers; qv and mlp share q_proj
    assert n_params < n_dense  # the tensors any adapter adapts, counted dense


def test_the_task_vector_is_low_rank_on_disk(tiny):
    path = tiny["vectors"]["mlp"]
    with open_checkpoint(path) as reader:
        keys = reader.keys()
        factor_bytes = sum(reader.get(k).nbytes for k in keys)
    assert keys and all(k.endswith((FACTOR_A, FACTOR_B)) for k in keys)
    assert {k.split("::")[0] for k in keys} == {
        f"model.layers.{i}.{m}.weight" for i in range(2) for m in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")
    }
    with open_checkpoint(tiny["pretrained"]) as pre:
        dense_bytes = sum(pre.get(k.split("::")[0]).nbytes for k in keys if k.endswith(FACTOR_A))
    size = path.stat().st_size
    assert factor_bytes < size < factor_bytes + 4096  # the factors and a header
    assert factor_bytes * 4 < dense_bytes  # rank 2 of 32..48 features


def test_base_model_adapter_names_get_the_prefix(tiny, tmp_path):
    """An adapter of the base model (LlamaModel: layers.*) adapts the pretrained checkpoint's model.layers.*."""
    import peft

    torch.manual_seed(5)
    base = transformers.AutoModel.from_pretrained(tiny["pretrained"].parent)
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    model.save_pretrained(tmp_path / "base_lora")
    merged = model.merge_and_unload().state_dict()
    extract_task_vector(tiny["pretrained"], tmp_path / "base_lora", ["*"], [], tmp_path / "tau.safetensors", "b")
    state = merge_files(tiny["pretrained"], {"b": tmp_path / "tau.safetensors"}, [1.0])
    assert max_diff({k: state[f"model.{k}"] for k in merged}, merged) <= TOLERANCE


def test_factor_keys_with_the_adapter_name_read_alike(tiny, tmp_path):
    """`...lora_A.default.weight` (a PEFT state dict saved with its adapter's name) as `...lora_A.weight`."""
    folder = adapter_with(tiny, tmp_path / "named")
    state = load_state_dict(folder / "adapter_model.safetensors")
    save_safetensors(
        {k.replace(".weight", ".default.weight"): v for k, v in state.items()}, folder / "adapter_model.safetensors"
    )
    extract_task_vector(tiny["pretrained"], folder, ["*"], [], tmp_path / "tau.safetensors", "qv")
    assert max_diff(load_state_dict(tmp_path / "tau.safetensors"), load_state_dict(tiny["vectors"]["qv"])) == 0


def adapter_with(tiny: dict, folder: Path, **changes) -> Path:
    """A copy of adapter qv with its adapter_config.json changed."""
    folder.mkdir()
    config = json.loads((tiny["root"] / "qv" / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    (folder / "adapter_model.safetensors").write_bytes((tiny["root"] / "qv" / "adapter_model.safetensors").read_bytes())
    return folder


def test_unsupported_adapters_are_refused(tiny, tmp_path):
    pre = tiny["root"] / "pretrained"
    made = {
        "DoRA \\(use_dora\\)": {"r": 2, "target_modules": ["q_proj"], "use_dora": True},
        "embedding LoRA": {"r": 2, "target_modules": ["embed_tokens"]},
        "modules_to_save": {"r": 2, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
        "trained biases \\(bias: all\\)": {"r": 2, "target_modules": ["q_proj"], "bias": "all"},
    }
    for i, (feature, lora) in enumerate(made.items()):
        folder = tmp_path / f"made{i}"
        make_adapter(pre, folder, i, **lora)
        with pytest.raises(ArtifactError, match=rf"^{folder}/adapter_\w+\.(json|safetensors): .*{feature}") as info:
            extract_task_vector(tiny["pretrained"], folder, ["*"], [], tmp_path / "o.safetensors", "x")
        assert "\n" not in str(info.value)
    edited = {
        "PEFT method IA3": {"peft_type": "IA3"},
        "fan_in_fan_out": {"fan_in_fan_out": True},
        "alpha_pattern": {"alpha_pattern": {"q_proj": 4}},
    }
    for i, (feature, changes) in enumerate(edited.items()):
        folder = adapter_with(tiny, tmp_path / f"edited{i}", **changes)
        with pytest.raises(ArtifactError, match=rf"^{folder}/adapter_config.json: .*{feature}"):
            read_adapter(folder)
    # adapters that do not fit the pretrained model or the merge
    with pytest.raises(
        ArtifactError, match=r"qv/adapter_model.safetensors: adapts 'model.layers.0.self_attn.q_proj.weight', "
    ):
        compatible_names(tiny["pretrained"], tiny["root"] / "qv", ["*"], ["*.q_proj.*"])
    other = tmp_path / "other"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(llama_config(intermediate_size=40)).save_pretrained(other)
    make_adapter(other, tmp_path / "wide", 0, r=2, target_modules=["up_proj"])
    with pytest.raises(
        ArtifactError, match=r"wide/adapter_model.safetensors: layer 'model.layers.0.mlp.up_proj' maps 32 -> 40"
    ):
        compatible_names(tiny["pretrained"], tmp_path / "wide", ["*"], [])


def test_ties_and_dare_refuse_low_rank_vectors(tiny):
    with pytest.raises(
        ValueError, match=r"^tensor '[\w.]+': merge operator ties needs dense task vectors; task vector 0 is"
    ):
        merge_files(tiny["pretrained"], tiny["vectors"], [1, 1, 1], {"operator": "ties", "density": 0.5})


# ---------------------------------------------------------------------------------------------------
# The config: adapters as model.transformers tasks, the checks before any job


def lora_experiment(root: Path, tasks: dict[str, Path], data: Path, **extra) -> Path:
    spec = {
        "name": "lora",
        "model": {
            "adapter": "transformers",
            "transformers": {
                "pretrained": str(root / "pretrained"),
                "task_type": "causal_lm",
                "max_length": 16,
                "tasks": {t: {"directory": str(d), "data": str(data)} for t, d in tasks.items()},
            },
        },
        "optimizer": {"objective": "loss"},
        **extra,
    }
    path = root / "experiment.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_config_takes_adapter_directories_and_checks_them(tiny, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a b c"}\n')
    tasks = {"qv": tiny["root"] / "qv", "ko": tiny["root"] / "ko"}
    root = tiny["root"]
    cfg = load_config(REPO / "config", lora_experiment(root, tasks, data), check_files=True)
    model = cfg["model"]
    assert model["tasks"]["qv"]["checkpoint"] == str(root / "qv" / "adapter_model.safetensors")
    assert model["builder"]["directory"] == str(root / "pretrained")  # the adapter has no config.json
    assert model["merge"]["exclude"] == []
    # each of model.merge's patterns must match a tensor (an adapter's layers are the pretrained model's)
    spec = json.loads(lora_experiment(root, tasks, data).read_text())
    for which, patterns, meant in (
        ("include", ["model.*", "modl.layers.*"], "model.layers.*"),
        ("exclude", ["model.nrm.*"], "model.norm.*"),
    ):
        spec["model"]["merge"] = {which: patterns}
        (tmp_path / "patterns.yaml").write_text(json.dumps(spec))
        with pytest.raises(
            ConfigError,
            match=rf"^model\.merge\.{which}: '{re.escape(patterns[-1])}' matches no tensor of the checkpoints \(did you mean `{re.escape(meant)}`\?\)$",
        ):
            load_config(REPO / "config", tmp_path / "patterns.yaml")
    # refused before any job: ties and dare (merge.operator, enabled validation baselines), unsupported adapters
    for extra, message in (
        ({"merge": {"operator": "ties", "density": 0.5}}, r"^merge.operator: ties needs dense task vectors, but "),
        ({"validation": {"enabled": True}}, r"^validation.baselines.ties.operator: ties needs dense task vectors"),
    ):
        with pytest.raises(ConfigError, match=message + "|" + message.replace("ties", "dare")) as info:
            load_config(REPO / "config", lora_experiment(root, tasks, data, **extra))
        assert "model.transformers.tasks.qv.directory is a LoRA adapter" in str(info.value)
    # a causal LM reports the loss only: an accuracy objective is refused before any job
    with pytest.raises(
        ConfigError, match=r"^optimizer.objective: accuracy, but .*causal_lm .*set optimizer.objective=loss"
    ):
        load_config(REPO / "config", lora_experiment(root, tasks, data, optimizer={"objective": "accuracy"}))
    dora = adapter_with(tiny, tmp_path / "dora", use_dora=True)
    with pytest.raises(ConfigError, match=r"^model.transformers.tasks.ko.directory: .*dora/adapter_config.json: DoRA"):
        load_config(REPO / "config", lora_experiment(root, {**tasks, "ko": dora}, data), check_files=False)


def test_user_model_checkpoint_names_the_adapter_weights(tiny, tmp_path):
    """model=user: a task's checkpoint may be an adapter's adapter_model.safetensors (not its directory)."""
    evaluator = {"_target_": "mapmerge.builtin.model.TaskEvaluator"}
    spec = {
        "name": "user_lora",
        "model": {
            "builder": {
                "_target_": "mapmerge.adapters.transformers.build_model",
                "directory": str(tiny["root"] / "pretrained"),
                "task_type": "causal_lm",
            },
            "pretrained": str(tiny["pretrained"]),
            "tasks": {
                "qv": {"checkpoint": str(tiny["root"] / "qv" / "adapter_model.safetensors"), "evaluator": evaluator},
                "ko": {"checkpoint": str(tiny["root"] / "ko"), "evaluator": evaluator},
            },
        },
    }
    (tmp_path / "exp.yaml").write_text(json.dumps(spec))
    with pytest.raises(
        ConfigError,
        match=r"^model.tasks.ko.checkpoint: .*/ko is a PEFT adapter directory; give its .*ko/adapter_model.safetensors",
    ):
        load_config(REPO / "config", tmp_path / "exp.yaml")
