"""`mapmerge export --mergekit`: the configuration it writes, run by mergekit itself on a tiny random Llama and two
fine-tunes made by perturbing it, gives mapmerge's merge, every tensor (max abs difference <= 1e-5 in float32):
task arithmetic at the run's own unequal coefficients (on a real run folder, with a tensor the run did not merge),
ties and dare_ties at equal coefficients, slerp on c1 + c2 = 1, dare and dare_ties at drop_rate 0 only (their masks
are random in both, so at drop_rate > 0 only the configuration's form is checked). And the refusals."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from mapmerge.io import read_table
from mapmerge.tensors.checkpoints import load_state_dict, safetensors_metadata
from mapmerge.tensors.operators import slerp_dot
from mapmerge.tensors.taskvectors import extract_task_vector, merge_files
from mapmerge.tools.cli import main
from mapmerge.tools.mergekit_export import mergekit_config, per_tensor_setting, read_models, write_config
from mapmerge.tools.runfolder import UsageError
from test_cli import build_run, refused
from test_lora import llama_config, tokenizer

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
if importlib.util.find_spec("mergekit") is None:  # found, not imported: importing it is 3 s in every test worker
    pytest.skip("needs mergekit (pip install 'mapmerge[llm]')", allow_module_level=True)

transformers.logging.set_verbosity_error()
TASKS = ["cats", "dogs"]
TEXTS = ["the cat sat on the mat", "a big dog ran under the old log", "time saves nine", "all that is not gold"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> dict:
    """A tiny random Llama (pretrained/), two fine-tunes of it (cats/, dogs/: every weight perturbed, the norms' by
    little, so that SLERP interpolates some tensors linearly), their task vectors and a data file."""
    root = tmp_path_factory.mktemp("mergekit")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(llama_config()).save_pretrained(root / "pretrained")
    tokenizer().save_pretrained(root / "pretrained")
    for seed, task in enumerate(TASKS, 1):
        model = transformers.LlamaForCausalLM.from_pretrained(root / "pretrained")
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.add_((0.01 if "norm" in name else 0.05) * torch.randn_like(param))
        model.save_pretrained(root / task)
    pretrained = root / "pretrained" / "model.safetensors"
    vectors = {t: root / f"tau_{t}.safetensors" for t in TASKS}
    for task, path in vectors.items():
        extract_task_vector(pretrained, root / task / "model.safetensors", ["*"], [], path, task)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return {"root": root, "pretrained": pretrained, "vectors": vectors, "data": data}


def experiment(llama: dict, name: str, **transformers_keys) -> Path:
    spec = {
        "model": {
            "adapter": "transformers",
            "transformers": {
                "pretrained": str(llama["root"] / "pretrained"),
                "task_type": "causal_lm",
                "max_length": 16,
                "tasks": {t: {"directory": str(llama["root"] / t), "data": str(llama["data"])} for t in TASKS},
                **transformers_keys,
            },
        },
        "optimizer": {"objective": "loss"},
    }
    path = llama["root"] / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def runs(llama, tmp_path_factory) -> dict[str, Path]:
    """Run folders made by the stage functions (test_cli.build_run): task arithmetic with lm_head kept per task (not
    merged), and slerp."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "ta": build_run(root, "ta", [], experiment=experiment(llama, "ta", heads=["lm_head.*"])),
        "slerp": build_run(root, "slerp", ["merge=slerp"], experiment=experiment(llama, "slerp")),
    }


def directories(llama: dict) -> list[str]:
    root = llama["root"]
    return ["--pretrained", str(root / "pretrained"), *(f"--model={t}={root / t}" for t in TASKS)]


def mergekit_merge(config: Path, out: Path) -> dict[str, torch.Tensor]:
    """mergekit's own merge of a configuration file (its Python API, as mergekit-yaml runs it), on the CPU."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    merge = MergeConfiguration.model_validate(yaml.safe_load(config.read_text()))
    options = MergeOptions(copy_tokenizer=False, lazy_unpickle=False, write_model_card=False, quiet=True)
    run_merge(merge, str(out), options)
    return load_state_dict(out / "model.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_a_run_exported_and_merged_by_mergekit_is_the_runs_merge(runs, llama, tmp_path, capsys):
    R = runs["ta"]
    out = tmp_path / "merge.yaml"
    assert main(["export", str(R), "--mergekit", str(out), *directories(llama)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(
        f"{out}: mergekit task_arithmetic of the run's own merge ({R / 'groups/all/merged.safetensors'})"
    )
    lines = out.read_text().splitlines()
    assert lines[0].startswith(f"# mergekit configuration written by `mapmerge export` from {R}: the run's own merge")
    config = yaml.safe_load(out.read_text())
    chosen = json.loads(safetensors_metadata(R / "groups/all/merged.safetensors")["coefficients"])
    assert config["merge_method"] == "task_arithmetic" and config["base_model"] == str(llama["root"] / "pretrained")
    assert config["parameters"] == {"normalize": False} and config["dtype"] == "float32"
    assert [m["model"] for m in config["models"]] == [str(llama["root"] / t) for t in TASKS]
    # lm_head is not merged (a task head): weight 0, so mergekit keeps the pretrained one, as merged.safetensors
    for model, task in zip(config["models"], TASKS, strict=True):
        assert model["parameters"]["weight"] == [{"filter": "lm_head.weight", "value": 0.0}, {"value": chosen[task]}]
    assert abs(chosen["cats"] - chosen["dogs"]) > 1e-3  # unequal weights
    merged = mergekit_merge(out, tmp_path / "mergekit")
    assert max_diff(merged, load_state_dict(R / "groups/all/merged.safetensors")) <= TOLERANCE
    # a front point, and the point select picks for a preference
    front = read_table(R / "groups/all/front.parquet")
    assert main(["export", str(R), "--mergekit", str(out), "--point", "3", *directories(llama)]) == 0
    weights = [m["parameters"]["weight"][-1]["value"] for m in yaml.safe_load(out.read_text())["models"]]
    assert weights == [float(front[f"c_{t}"].iloc[3]) for t in TASKS]
    sample = read_table(R / "groups/all/samples.parquet").iloc[5]
    assert main(["export", str(R), "--mergekit", str(out), "--point", str(sample["sample"]), *directories(llama)]) == 0
    weights = [m["parameters"]["weight"][-1]["value"] for m in yaml.safe_load(out.read_text())["models"]]
    assert weights == [float(sample[f"c_{t}"]) for t in TASKS]
    selected = tmp_path / "selected.safetensors"
    pretrained = str(llama["root"] / "pretrained")
    assert (
        main(["select", str(R), "--prefer", "cats=3,dogs=1", "--pretrained", pretrained, "--out", str(selected)]) == 0
    )
    assert main(["export", str(R), "--mergekit", str(out), "--prefer", "cats=3,dogs=1", *directories(llama)]) == 0
    assert "pick for the preference cats=3, dogs=1" in capsys.readouterr().out
    picked = json.loads(safetensors_metadata(selected)["coefficients"])
    weights = [m["parameters"]["weight"][-1]["value"] for m in yaml.safe_load(out.read_text())["models"]]
    assert weights == [picked[t] for t in TASKS]


def test_export_refusals(runs, llama, tmp_path, capsys):
    out = tmp_path / "x.yaml"
    R, root = runs["slerp"], llama["root"]
    err = refused(["export", str(R), "--mergekit", str(out), *directories(llama)], 2, capsys, R, tmp_path)
    s = sum(json.loads(safetensors_metadata(R / "groups/all/merged.safetensors")["coefficients"]).values())
    assert err == (
        f"mapmerge export: merge operator slerp: the point's c1 + c2 = {s:.6g}, not 1, and mergekit's slerp is "
        "mapmerge's merge only on that line (elsewhere mapmerge scales the SLERP'd model's task vector by c1 + c2); "
        "export a point with c1 + c2 = 1\n"
    )
    swapped = [
        "--pretrained",
        str(root / "pretrained"),
        f"--model=cats={root / 'dogs'}",
        f"--model=dogs={root / 'cats'}",
    ]
    err = refused(["export", str(R), "--mergekit", str(out), *swapped], 2, capsys, R, tmp_path)
    assert err.startswith(f"mapmerge export: --model cats={root / 'dogs'}: its tensor ") and err.endswith(
        f"minus --pretrained's is not the run's task vector {R / 'task_vectors/cats.safetensors'}; give the "
        "directories the run merged\n"
    )
    err = refused(["export", str(R), "--mergekit", str(out), *directories(llama)[:3]], 2, capsys, R, tmp_path)
    assert (
        err
        == "mapmerge export: --model: no directory for task 'dogs'; give TASK=DIR for each of the run's tasks cats, dogs\n"
    )
    both = ["--point", "0", "--prefer", "cats=1"]
    err = refused(["export", str(R), "--mergekit", str(out), *both, *directories(llama)], 2, capsys, R, tmp_path)
    assert err == "mapmerge export: --prefer and --point: give one (or neither, for the run's own merge)\n"
    err = refused(
        ["export", str(R), "--mergekit", str(out), "--rho", "0.1", *directories(llama)], 2, capsys, R, tmp_path
    )
    assert err == "mapmerge export: --rho: has no effect without --prefer (it picks the point for a preference)\n"
    far = ["--point", "999"]
    err = refused(["export", str(R), "--mergekit", str(out), *far, *directories(llama)], 2, capsys, R, tmp_path)
    assert err.startswith(f"mapmerge export: --point 999: the front {R / 'groups/all/front.parquet'} has ")
    inside = R / "groups" / "x.yaml"
    err = refused(["export", str(R), "--mergekit", str(inside), *directories(llama)], 2, capsys, R, tmp_path)
    assert err.startswith(f"mapmerge export: --mergekit {inside}: inside the run folder {R}, where export writes only")
    # export replaces only what it wrote: not an experiment file, nor a file not named like YAML
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("name: mine\n")
    err = refused(["export", str(R), "--mergekit", str(experiment), *directories(llama)], 2, capsys, R, tmp_path)
    assert err == (
        f"mapmerge export: --mergekit {experiment}: exists, and export replaces only the configurations it wrote; "
        "remove the file first, or give another path\n"
    )
    notes = tmp_path / "notes.md"
    err = refused(["export", str(R), "--mergekit", str(notes), *directories(llama)], 2, capsys, R, tmp_path)
    assert err == f"mapmerge export: --mergekit {notes}: not a YAML file's name; give one ending in .yaml or .yml\n"


@pytest.mark.parametrize(
    "spec, c",
    [
        ({"operator": "ties", "density": 0.3}, [0.7, 0.7]),
        ({"operator": "dare", "drop_rate": 0.0}, [0.3, 0.8]),
        ({"operator": "dare_ties", "drop_rate": 0.0}, [0.6, 0.6]),
        ({"operator": "slerp"}, [0.35, 0.65]),
    ],
)
def test_mergekit_reproduces_the_operators(llama, tmp_path, spec, c):
    """mapmerge's merge_files (as merge_group and select merge) against mergekit on the exported configuration."""
    models = read_models(
        str(llama["root"] / "pretrained"), {t: str(llama["root"] / t) for t in TASKS}, llama["vectors"]
    )
    config, notes = mergekit_config(spec, dict(zip(TASKS, c)), models)
    write_config(config, notes, tmp_path / "merge.yaml")
    expected = merge_files(llama["pretrained"], llama["vectors"], c, spec, seed=0)
    assert max_diff(mergekit_merge(tmp_path / "merge.yaml", tmp_path / "out"), expected) <= TOLERANCE
    if spec["operator"] == "ties":  # mergekit keeps int(density * n) entries, mapmerge ceil: densities per tensor
        density = config["models"][0]["parameters"]["density"]
        assert isinstance(density, list) and density[-1] == {"value": 0.3} and len(density) > 1
        assert config["parameters"] == {"normalize": True, "lambda": 0.7}
    if spec["operator"] == "slerp":  # both of mergekit's branches: angular and (nearly parallel tensors) linear
        pre, taus = load_state_dict(llama["pretrained"]), [load_state_dict(v) for v in llama["vectors"].values()]
        dots = [slerp_dot(pre[n], torch.stack([t[n] for t in taus])) for n in taus[0]]
        assert min(dots) < 0.9995 < max(dots)
        assert config["base_model"] == str(llama["root"] / "cats") and config["parameters"] == {"t": 0.65}


def test_the_configuration_of_each_operator_and_its_refusals(llama):
    models = read_models(
        str(llama["root"] / "pretrained"), {t: str(llama["root"] / t) for t in TASKS}, llama["vectors"]
    )
    with pytest.raises(
        UsageError,
        match=r"^merge operator ties: the point's coefficients \(cats=0.5, dogs=0.6\) are not all equal, and mergekit's ties elects each element's sign from the weighted deltas",
    ) as info:
        mergekit_config({"operator": "ties", "density": 0.2}, {"cats": 0.5, "dogs": 0.6}, models)
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match=r"^merge operator dare_ties: the point's coefficients"):
        mergekit_config({"operator": "dare_ties", "drop_rate": 0.5}, {"cats": 0.5, "dogs": 0.6}, models)
    with pytest.raises(UsageError, match=r"^merge operator slerp: the point's c1 \+ c2 = 1.1, not 1"):
        mergekit_config({"operator": "slerp"}, {"cats": 0.5, "dogs": 0.6}, models)
    with pytest.raises(
        UsageError, match=r"^merge operator slerp: the run did not merge some tensors \(1, e.g. lm_head"
    ):
        mergekit_config({"operator": "slerp"}, {"cats": 0.4, "dogs": 0.6}, replace(models, others=["lm_head.weight"]))
    # DARE at drop_rate 0.5: mapmerge's form (rescale off, 1 / (1 - p) in the weights), the masks' note on top
    config, notes = mergekit_config({"operator": "dare", "drop_rate": 0.5}, {"cats": 0.3, "dogs": 0.4}, models)
    assert config["merge_method"] == "dare_linear" and config["parameters"] == {"normalize": False, "rescale": False}
    assert [m["parameters"] for m in config["models"]] == [
        {"weight": 0.6, "density": 0.5},
        {"weight": 0.8, "density": 0.5},
    ]
    assert any(n.startswith("DARE masks are random in both") for n in notes)
    config, _ = mergekit_config({"operator": "dare_ties", "drop_rate": 0.5}, {"cats": 0.4, "dogs": 0.4}, models)
    assert config["merge_method"] == "dare_ties"
    assert config["parameters"] == {"normalize": True, "rescale": False, "lambda": 0.8}
    assert [m["parameters"] for m in config["models"]] == [{"weight": 1.0, "density": 0.5}] * 2


def test_per_tensor_settings_give_each_tensor_its_value_in_mergekit():
    """mergekit takes the first {filter, value} whose filter is a substring of the tensor's name: a name inside
    another ('w' in 'w2', 'ww') must not catch it."""
    values = {"w": 0.0, "w2": 1.0, "ww": 1.0, "x.w": 0.5, "v": 1.0}
    setting = per_tensor_setting(values, 1.0)
    assert setting[-1] == {"value": 1.0} and {e.get("filter") for e in setting} == {"x.w", "w2", "ww", "w", None}
    from mergekit.config import ConditionalParameter, evaluate_setting

    parsed = [ConditionalParameter(**entry) for entry in setting]
    assert {name: evaluate_setting(name, parsed, validate=float) for name in values} == values
    assert per_tensor_setting({"w": 1.0, "v": 1.0}, 1.0) == 1.0


def test_a_fine_tune_stored_otherwise_than_the_pretrained_model_is_named_with_what_differs():
    """A headless base model's names lack its body's prefix (`bert.`), and a classifier adds a head: the line says
    how many names are only in either and that a prefix tells most apart (it named one tensor as not the pretrained
    model's, though the pretrained model held it under another name); a tensor of another shape is named with both."""
    from mapmerge.tools.mergekit_export import _check_same_tensors

    pre = {"embeddings.w": (4, 2), "encoder.w": (2, 2)}
    ft = {"bert.embeddings.w": (4, 2), "bert.encoder.w": (2, 2), "classifier.weight": (3, 2)}
    with pytest.raises(UsageError) as info:
        _check_same_tensors(pre, ft, "--model a=/m/a", Path("/m/pre"))
    assert str(info.value) == (
        "--model a=/m/a: not stored as the pretrained model /m/pre: 3 tensors only in it ('bert.embeddings.w'), 2 only "
        "in the pretrained model ('embeddings.w'); 2 of them the same but for the prefix 'bert.'; mergekit merges "
        "models of one architecture, stored alike"
    )
    with pytest.raises(UsageError, match=r"tensor 'encoder.w' has shape \(3, 2\), the pretrained model's \(2, 2\);"):
        _check_same_tensors(pre, {**pre, "encoder.w": (3, 2)}, "--model a=/m/a", Path("/m/pre"))
    _check_same_tensors(pre, dict(pre), "--model a=/m/a", Path("/m/pre"))
