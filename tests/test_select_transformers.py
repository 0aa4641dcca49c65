"""`mapmerge select` on a transformers run: a real run folder of a tiny BERT whose checkpoints hold
`embeddings.position_ids`, as older transformers saved it. select writes one folder per task that from_pretrained
loads with no missing or unexpected keys and that gives the logits of the merged tensors, every file with the
usual mode, sharded past --max-shard-size; --out FILE.safetensors writes the merged state dict; --pretrained takes
a directory, a sharded one or a cached model name.

In such a run every directory's weights are model.safetensors, so the artifacts' input hashes (kept by
file name) do not single out the pretrained checkpoint's: select checks it by merging the run's own
choice from it, every tensor, against the run's merged.safetensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fortunes_tasks import minilm_dir, write_data
from mapmerge.adapters.transformers import SequenceClassificationEvaluator
from mapmerge.tensors.checkpoints import load_state_dict, safetensors_metadata
from mapmerge.tensors.taskvectors import merge_files
from mapmerge.tools.cli import main
from test_cli import build_run, refused
from test_hub import cache_model

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
transformers.logging.set_verbosity_error()
TASKS = {
    "fruit": ["red apple pie", "ripe pear jam", "sweet plum tart", "green grape juice"],
    "trains": ["fast train ride", "late night bus", "old steam engine", "busy rail station"],
}
LARGEST = "bert.embeddings.word_embeddings.weight"
BUFFER = "bert.embeddings.position_ids"  # a non-persistent buffer of BertModel that older transformers saved


def tiny_bert(tok) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )


def with_position_ids(weights: Path, name: str) -> None:
    """Add position_ids to a checkpoint, as older transformers saved it (all-MiniLM-L6-v2's file holds it)."""
    state = load_file(weights)
    state[name] = torch.arange(32)[None]
    save_file(state, weights, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory) -> tuple[Path, Path]:
    """(the run folder, the models' folder): a tiny random BertModel (no head, saved without the `bert.` prefix) as the
    pretrained directory, two BertForSequenceClassification made from it with perturbed weights, a data file each."""
    root = tmp_path_factory.mktemp("hf_select")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    torch.manual_seed(0)
    transformers.BertModel(tiny_bert(tok)).save_pretrained(root / "pretrained")
    tok.save_pretrained(root / "pretrained")
    tasks = {}
    for seed, (task, texts) in enumerate(TASKS.items(), 1):
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification.from_pretrained(root / "pretrained", num_labels=2)
        with torch.no_grad():
            for _name, param in model.named_parameters():
                param.add_(0.05 * torch.randn_like(param))
        model.save_pretrained(root / task)
        with_position_ids(root / task / "model.safetensors", BUFFER)
        rows = [(text, 0) for text in texts] + [(text, 1) for other in TASKS if other != task for text in TASKS[other]]
        data = write_data(pd.DataFrame(rows, columns=["text", "label"]), root / f"{task}.csv")
        tasks[task] = {"directory": str(root / task), "data": str(data)}
    with_position_ids(root / "pretrained" / "model.safetensors", BUFFER.removeprefix("bert."))
    spec = {
        "model": {
            "adapter": "transformers",
            "transformers": {"pretrained": str(root / "pretrained"), "max_length": 16, "tasks": tasks},
        }
    }
    (root / "experiment.yaml").write_text(json.dumps(spec))  # JSON is YAML
    # no refinement rounds: select merges the predicted front's pick, whose coefficients are not 0
    return build_run(root / "results", "hf", ["refine.rounds=0"], experiment=root / "experiment.yaml"), root


def expected_merge(R: Path, pretrained: Path, written: Path) -> dict[str, torch.Tensor]:
    """The merge at the coefficients in the header of a file select wrote, computed here from the task vectors."""
    c = json.loads(safetensors_metadata(written)["coefficients"])
    return merge_files(pretrained, {t: R / "task_vectors" / f"{t}.safetensors" for t in TASKS}, [c[t] for t in TASKS])


def stored_names(weights: Path) -> set[str]:
    with safe_open(str(weights), framework="pt") as fh:
        return set(fh.keys())


def loads_whole(folder: Path) -> transformers.BertForSequenceClassification:
    """The model of a folder, loaded by transformers with no missing, unexpected or mismatched keys."""
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


def usual_mode(tmp_path: Path) -> int:
    """The permissions a new file gets here (0666 less the umask)."""
    (tmp_path / "probe").touch()
    return (tmp_path / "probe").stat().st_mode & 0o777


def test_select_writes_folders_transformers_loads_with_the_merged_tensors(hf_run, tmp_path, capsys):
    R, root = hf_run
    pretrained = root / "pretrained" / "model.safetensors"
    assert main(["select", str(R), "--prefer", "fruit=1", "--pretrained", str(root / "pretrained")]) == 0
    out = R / "selected" / "fruit-1"
    text = capsys.readouterr().out
    assert (
        f"merged models: {out}/<task>/ for fruit, trains: each its config, tokenizer and weights, the merged tensors "
        "and the task's own head (from_pretrained loads it)"
    ) in text and f"pretrained: {pretrained} (--pretrained)" in text
    assert (
        f"checked: merged at the run's own coefficients it gives {R / 'groups' / 'all' / 'merged.safetensors'}, every tensor "
        "(reference.parquet keeps its inputs' hashes by file name, and the pretrained checkpoint's is also a fine-tuned one's)"
    ) in text
    assert sorted(p.name for p in out.iterdir()) == sorted(TASKS)
    merge = expected_merge(R, pretrained, out / "fruit" / "model.safetensors")
    assert not torch.equal(merge[LARGEST], load_state_dict(pretrained)[LARGEST])  # coefficients not all 0
    for task in TASKS:
        folder = out / task
        model = loads_whole(folder)
        # the task's own model with the merged tensors over its body: the same logits, so the same accuracy
        reference = transformers.BertForSequenceClassification.from_pretrained(root / task).eval()
        names = stored_names(R / "task_vectors" / f"{task}.safetensors")
        assert LARGEST in names and BUFFER not in names
        missing, _ = reference.load_state_dict({n: merge[n] for n in names}, strict=False)
        assert set(missing) == {"classifier.weight", "classifier.bias"}  # the task's own head stays
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        batch = tok([t for texts in TASKS.values() for t in texts], padding=True, return_tensors="pt")
        evaluator = SequenceClassificationEvaluator(str(root / f"{task}.csv"), str(folder), str(folder), max_length=16)
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, reference(**batch).logits)
            assert evaluator(model, "cpu").equals(evaluator(reference, "cpu"))
        assert BUFFER in stored_names(root / task / "model.safetensors")
        assert BUFFER not in stored_names(folder / "model.safetensors")  # non-persistent: left out
    # every file select and the run's merge_group wrote has the usual permissions
    written = [p for p in [*out.rglob("*"), *(R / "groups" / "all" / "merged").rglob("*")] if p.is_file()]
    assert len(written) > 8 and {p.stat().st_mode & 0o777 for p in written} == {usual_mode(tmp_path)}


def test_select_shards_past_a_size_and_writes_the_state_dict_to_a_file(hf_run, tmp_path, capsys):
    R, root = hf_run
    base = ["select", str(R), "--prefer", "fruit=1", "--pretrained", str(root / "pretrained")]
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0
    assert main([*base, "--out", str(tmp_path / "sharded"), "--max-shard-size", "500KB"]) == 0
    for task in TASKS:
        folder = tmp_path / "sharded" / task
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
        assert not (folder / "model.safetensors").exists() and len(shards) >= 2
        assert shards == [f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)]
        assert sorted(set(index["weight_map"].values())) == shards and index["metadata"]["total_size"] > 0
        assert all((folder / s).stat().st_size <= 500_000 for s in shards if s != index["weight_map"][LARGEST])
        whole = load_state_dict(tmp_path / "whole" / task / "model.safetensors")
        model = loads_whole(folder)
        assert BUFFER not in index["weight_map"] and index["weight_map"].keys() == whole.keys()
        assert all(torch.equal(model.state_dict()[k], whole[k]) for k in whole)
    # --out FILE.safetensors: the merged state dict, from the same model saved in shards as the pretrained one
    sharded = tmp_path / "pretrained_sharded"
    transformers.BertModel.from_pretrained(root / "pretrained").save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    flat = tmp_path / "x.safetensors"
    capsys.readouterr()
    assert main([*base[:-1], str(sharded), "--out", str(flat), "--max-shard-size", "500KB"]) == 2  # one file: no shards
    assert capsys.readouterr().err == (
        f"mapmerge select: --max-shard-size: has no effect (--out {flat}: one checkpoint file); it shards a "
        "transformers run's task folders\n"
    )
    assert main([*base[:-1], str(sharded), "--out", str(flat)]) == 0
    assert f"merged checkpoint: {flat}" in capsys.readouterr().out
    state, reference = load_state_dict(flat), expected_merge(R, root / "pretrained" / "model.safetensors", flat)
    assert BUFFER in reference and state.keys() == reference.keys() - {BUFFER}
    assert all(torch.equal(state[k], reference[k]) for k in state)


def test_select_takes_a_cached_model_name_as_pretrained(hf_run, tmp_path, monkeypatch, capsys):
    R, root = hf_run
    snapshot = cache_model(tmp_path / "cache", "org/tiny-bert", root / "pretrained", "c" * 40, ("main",))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "named"
    assert main(["select", str(R), "--prefer", "trains=1", "--pretrained", "org/tiny-bert", "--out", str(out)]) == 0
    assert f"pretrained: {snapshot / 'model.safetensors'} (--pretrained)" in capsys.readouterr().out
    assert (loads_whole(out / "trains").config.architectures or [""])[0] == "BertForSequenceClassification"
    err = refused(["select", str(R), "--prefer", "fruit=1", "--pretrained", "org/other@v2"], 2, capsys, R)
    assert err == (
        f"mapmerge select: --pretrained org/other@v2: no directory {Path('org/other@v2').resolve()} and org/other is "
        f"not in the Hugging Face cache {tmp_path / 'cache'}; fetch it with `hf download org/other --revision v2` "
        "(the cache: HF_HUB_CACHE, else HF_HOME/hub)\n"
    )


def test_select_refuses_a_transformers_pretrained_that_differs_in_its_largest_tensor(hf_run, tmp_path, capsys):
    R, root = hf_run
    other = tmp_path / "other"
    shutil.copytree(root / "pretrained", other)
    model = transformers.BertModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(0.01)
    model.save_pretrained(other)
    with_position_ids(other / "model.safetensors", BUFFER.removeprefix("bert."))
    err = refused(["select", str(R), "--prefer", "fruit=1", "--pretrained", str(other)], 2, capsys, R)
    assert err == (
        f"mapmerge select: --pretrained {other / 'model.safetensors'}: tensor '{LARGEST}' with the run's task vectors "
        f"at the run's own coefficients does not give the run's {R / 'groups' / 'all' / 'merged.safetensors'}; give the "
        "checkpoint the run merged (model.transformers.pretrained)\n"
    )
    err = refused(["select", str(R), "--prefer", "fruit=1"], 2, capsys, R)
    assert err.endswith("give it with --pretrained PATH (the experiment's model.transformers.pretrained)\n")
    (tmp_path / "empty").mkdir()
    err = refused(["select", str(R), "--prefer", "fruit=1", "--pretrained", str(tmp_path / "empty")], 2, capsys, R)
    assert err == (
        f"mapmerge select: --pretrained {tmp_path / 'empty'}: {tmp_path / 'empty'} has neither model.safetensors nor "
        "model.safetensors.index.json (save it with save_pretrained)\n"
    )
    # --out: a folder holding anything but task folders is not replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    command = ["select", str(R), "--prefer", "fruit=1", "--pretrained", str(root / "pretrained")]
    err = refused([*command, "--out", str(tmp_path / "mine")], 2, capsys, R, tmp_path / "mine")
    assert err == (
        f"mapmerge select: --out {tmp_path / 'mine'}: a folder holding notes.txt, which select would replace with the "
        "folder; give a new folder, or one holding only task folders (fruit, trains)\n"
    )
