"""`mapmerge select --pretrained` with a Hugging Face transformers directory, on a real run folder of a tiny BERT.

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

from fortunes_tasks import minilm_dir, write_data
from mapmerge.tensors.checkpoints import load_state_dict, safetensors_metadata
from mapmerge.tensors.taskvectors import merge_files
from mapmerge.tools.cli import main
from test_cli import build_run, refused

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
transformers.logging.set_verbosity_error()
TASKS = {
    "fruit": ["red apple pie", "ripe pear jam", "sweet plum tart", "green grape juice"],
    "trains": ["fast train ride", "late night bus", "old steam engine", "busy rail station"],
}
LARGEST = "bert.embeddings.word_embeddings.weight"


def tiny_bert(tok) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )


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
        rows = [(text, 0) for text in texts] + [(text, 1) for other in TASKS if other != task for text in TASKS[other]]
        data = write_data(pd.DataFrame(rows, columns=["text", "label"]), root / f"{task}.csv")
        tasks[task] = {"directory": str(root / task), "data": str(data)}
    spec = {
        "model": {
            "adapter": "transformers",
            "transformers": {"pretrained": str(root / "pretrained"), "max_length": 16, "tasks": tasks},
        }
    }
    (root / "experiment.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return build_run(root / "results", "hf", [], experiment=root / "experiment.yaml"), root


def expected_merge(R: Path, pretrained: Path, out: Path) -> dict[str, torch.Tensor]:
    c = json.loads(safetensors_metadata(out)["coefficients"])
    return merge_files(pretrained, {t: R / "task_vectors" / f"{t}.safetensors" for t in TASKS}, [c[t] for t in TASKS])


def test_select_takes_a_transformers_directory_whole_or_sharded(hf_run, tmp_path, capsys):
    R, root = hf_run
    assert main(["select", str(R), "--prefer", "fruit=1", "--pretrained", str(root / "pretrained")]) == 0
    out = R / "selected" / "fruit-1.safetensors"
    text = capsys.readouterr().out
    assert (
        f"merged checkpoint: {out}" in text
        and f"pretrained: {root / 'pretrained' / 'model.safetensors'} (--pretrained)" in text
    )
    assert (
        f"checked: merged at the run's own coefficients it gives {R / 'groups' / 'all' / 'merged.safetensors'}, every tensor "
        "(reference.parquet keeps its inputs' hashes by file name, and the pretrained checkpoint's is also a fine-tuned one's)"
    ) in text
    state, reference = load_state_dict(out), expected_merge(R, root / "pretrained" / "model.safetensors", out)
    assert (
        state.keys() == reference.keys()
        and LARGEST in state
        and all(torch.equal(state[k], reference[k]) for k in state)
    )
    # the same model saved in shards: the same tensors, so the same merge
    sharded = tmp_path / "sharded"
    transformers.BertModel.from_pretrained(root / "pretrained").save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    assert (
        main(
            [
                "select",
                str(R),
                "--prefer",
                "fruit=1",
                "--pretrained",
                str(sharded),
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert all(torch.equal(load_state_dict(tmp_path / "x.safetensors")[k], state[k]) for k in state)


def test_select_refuses_a_transformers_pretrained_that_differs_in_its_largest_tensor(hf_run, tmp_path, capsys):
    R, root = hf_run
    other = tmp_path / "other"
    shutil.copytree(root / "pretrained", other)
    model = transformers.BertModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(0.01)
    model.save_pretrained(other)
    err = refused(["select", str(R), "--prefer", "fruit=1", "--pretrained", str(other)], 2, capsys, R, other)
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
