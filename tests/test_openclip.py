"""model=openclip: the task-vectors checkpoint layout, with a tiny CLIP-style encoder trained here.

open_clip and timm do not import beside this machine's CPU build of torch (their torchvision needs
CUDA libraries), so the encoder is tests/tiny_clip.py in plain torch.nn, pickled as whole modules
as the task-vectors code saves its encoders and heads.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_clip
from conftest import REPO, run, snakemake_command
from mapmerge.adapters.openclip import (
    ClassificationEvaluator,
    load_encoder,
    load_images,
)
from mapmerge.io import ArtifactError, read_table
from mapmerge.run.config import ConfigError, load_config
from mapmerge.tensors.checkpoints import load_state_dict

MODEL_NAME = "ViT-Tiny"
TASKS = ["Quadrant", "Colour"]
ENCODER = {"image_size": 8, "patch_size": 4, "width": 16, "layers": 1, "heads": 2, "output_dim": 8}
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def make_images(task: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 3, 8, 8) noise images and labels: the brighter quadrant (4 classes) or channel (3 classes)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, size=(n, 3, 8, 8)).astype(np.int64)
    if task == "Quadrant":
        labels = rng.integers(0, 4, size=n)
        for i, k in enumerate(labels):
            images[i, :, 4 * (k // 2) : 4 * (k // 2) + 4, 4 * (k % 2) : 4 * (k % 2) + 4] += 110
    else:
        labels = rng.integers(0, 3, size=n)
        images[np.arange(n), labels] += 90
    return images.clip(0, 255).astype(np.uint8), labels


def preprocess(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )


def finetune(encoder: torch.nn.Module, head: torch.nn.Module, task: str, seed: int) -> torch.nn.Module:
    """A copy of the encoder trained on the task through its frozen head (as task-vectors fine-tunes)."""
    torch.manual_seed(seed)
    model = tiny_clip.ImageEncoder(**ENCODER)
    model.load_state_dict(encoder.state_dict())
    images, labels = make_images(task, 512, seed)
    x, y = preprocess(images), torch.from_numpy(labels)
    head.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        batch = torch.randint(0, len(y), (64,))
        loss = torch.nn.functional.cross_entropy(head(model(x[batch])), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """The task-vectors layout: zeroshot.pt and Quadrant/finetuned.pt pickled whole, Colour's a state dict;
    head_Quadrant.pt a pickled ClassificationHead, head_Colour.pt a state dict; data as .npz (uint8) and .pt (float)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains faster on one thread
    try:
        return _make_layout(tmp_path_factory.mktemp("openclip"))
    finally:
        torch.set_num_threads(threads)


def _make_layout(root: Path) -> Path:
    encoder_dir = root / MODEL_NAME
    torch.manual_seed(0)
    zeroshot = tiny_clip.ImageEncoder(**ENCODER)
    (encoder_dir / "Quadrant").mkdir(parents=True)
    (encoder_dir / "Colour").mkdir()
    (root / "data").mkdir()
    torch.save(zeroshot, encoder_dir / "zeroshot.pt")
    heads = {
        t: tiny_clip.ClassificationHead(True, torch.randn(classes, ENCODER["output_dim"]))
        for t, classes in zip(TASKS, (4, 3))
    }
    torch.save(heads["Quadrant"], encoder_dir / "head_Quadrant.pt")
    torch.save(heads["Colour"].state_dict(), encoder_dir / "head_Colour.pt")
    torch.save(finetune(zeroshot, heads["Quadrant"], "Quadrant", 1), encoder_dir / "Quadrant" / "finetuned.pt")
    torch.save(finetune(zeroshot, heads["Colour"], "Colour", 2).state_dict(), encoder_dir / "Colour" / "finetuned.pt")
    images, labels = make_images("Quadrant", 200, 11)
    np.savez(root / "data" / "Quadrant.npz", images=images, labels=labels)
    images, labels = make_images("Colour", 200, 12)
    torch.save({"images": preprocess(images), "labels": torch.from_numpy(labels)}, root / "data" / "Colour.pt")
    return root


def overrides(root: Path) -> list[str]:
    """model=openclip on the fixture's layout: heads by the default pattern, data by a mapping task: path."""
    return [
        "model=openclip",
        f"model.openclip.root={root}",
        f"model.openclip.model_name={MODEL_NAME}",
        f"model.openclip.tasks=[{', '.join(TASKS)}]",
        f"model.openclip.data={{Quadrant: {root}/data/Quadrant.npz, Colour: {root}/data/Colour.pt}}",
        f"model.openclip.mean=[{', '.join(map(str, MEAN))}]",
        f"model.openclip.std=[{', '.join(map(str, STD))}]",
        f"model.python_path=[{REPO / 'tests'}]",
    ]


def config(root: Path, *extra: str) -> dict:
    return load_config(REPO / "config", overrides=[*overrides(root), *extra])


def test_layout_resolves_to_the_generic_model(layout):
    model = config(layout)["model"]
    encoder_dir = layout / MODEL_NAME
    assert model["pretrained"] == str(encoder_dir / "zeroshot.pt")
    assert model["builder"] == {
        "_target_": "mapmerge.adapters.openclip.load_encoder",
        "path": str(encoder_dir / "zeroshot.pt"),
    }
    assert list(model["tasks"]) == TASKS
    for task in TASKS:
        assert model["tasks"][task]["checkpoint"] == str(encoder_dir / task / "finetuned.pt")
        evaluator = model["tasks"][task]["evaluator"]
        assert evaluator["_target_"] == "mapmerge.adapters.openclip.ClassificationEvaluator"
        assert evaluator["head"] == str(encoder_dir / f"head_{task}.pt")
        assert evaluator["mean"] == MEAN and evaluator["batch_size"] == 128
    assert model["tasks"]["Colour"]["evaluator"]["data"] == str(layout / "data" / "Colour.pt")
    assert model["merge"]["include"] == ["*"] and model["merge"]["exclude"] == []
    assert model["python_path"] == [str(REPO / "tests")]


def test_pickled_modules_are_read_as_state_dicts(layout):
    encoder_dir = layout / MODEL_NAME
    module = torch.load(encoder_dir / "zeroshot.pt", weights_only=False)
    state = load_state_dict(encoder_dir / "zeroshot.pt")  # weights_only: no class of the file is imported or run
    assert list(state) == list(module.state_dict())
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    assert set(load_state_dict(encoder_dir / "head_Quadrant.pt")) == {"weight", "bias"}
    assert list(load_state_dict(encoder_dir / "Quadrant" / "finetuned.pt")) == list(state)


def test_an_encoder_whose_classes_do_not_import(tmp_path, monkeypatch):
    (tmp_path / "gone_module.py").write_text("import torch\n\nclass Encoder(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_module

    torch.save(gone_module.Encoder(3, 2), tmp_path / "zeroshot.pt")
    monkeypatch.delitem(sys.modules, "gone_module")
    (tmp_path / "gone_module.py").unlink()
    assert set(load_state_dict(tmp_path / "zeroshot.pt")) == {"weight", "bias"}  # weights-only: needs no class
    with pytest.raises(
        ArtifactError, match="zeroshot.pt: cannot unpickle the image encoder .*gone_module.*model.python_path"
    ):
        load_encoder(str(tmp_path / "zeroshot.pt"))


def test_fine_tuned_encoders_beat_zeroshot_on_their_task(layout):
    model = config(layout)["model"]
    encoder = load_encoder(model["pretrained"]).eval()
    accuracy = {}
    for task in TASKS:
        evaluate = ClassificationEvaluator(
            **{k: v for k, v in model["tasks"][task]["evaluator"].items() if k != "_target_"}
        )
        for name, path in (("zeroshot", model["pretrained"]), ("finetuned", model["tasks"][task]["checkpoint"])):
            encoder.load_state_dict(load_state_dict(path))
            with torch.inference_mode():
                rows = evaluate(encoder, torch.device("cpu"))
            assert list(rows.columns) == ["example", "correct", "loss"] and len(rows) == 200
            assert np.isfinite(rows["loss"]).all()
            accuracy[task, name] = rows["correct"].mean()
        assert accuracy[task, "finetuned"] > accuracy[task, "zeroshot"] + 0.2, accuracy


def broken_copy(layout: Path, tmp_path: Path, remove: str) -> Path:
    root = tmp_path / "layout"
    shutil.copytree(layout, root)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    return root


@pytest.mark.parametrize(
    "remove, message",
    [
        (f"{MODEL_NAME}/zeroshot.pt", f"model.openclip: pretrained image encoder .*{MODEL_NAME}/zeroshot.pt not found"),
        (f"{MODEL_NAME}/Colour", f"model.openclip.tasks: task folder .*{MODEL_NAME}/Colour not found"),
        (
            f"{MODEL_NAME}/Colour/finetuned.pt",
            "model.openclip.tasks: fine-tuned image encoder .*Colour/finetuned.pt not found",
        ),
        (
            f"{MODEL_NAME}/head_Quadrant.pt",
            "model.openclip.heads: classification head of task Quadrant, .*head_Quadrant.pt, not found",
        ),
        ("data/Colour.pt", "model.openclip.data: evaluation data of task Colour, .*Colour.pt, not found"),
    ],
)
def test_a_missing_file_is_a_one_line_error(layout, tmp_path, remove, message):
    root = broken_copy(layout, tmp_path, remove)
    with pytest.raises(ConfigError, match=message) as info:
        config(root)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.openclip.tasks=[Quadrant]", "model.openclip.tasks: must list at least two task folders"),
        ("model.openclip.model_name=ViT-L-14", "model.openclip.model_name: folder .*ViT-L-14 not found"),
        ("model.openclip.heads='{root}/{nope}_{task}.pt'", "model.openclip.heads: pattern .* is not valid"),
        ("model.openclip.std=[0.2, 0.2]", "model.openclip.std: must have as many entries as mean"),
        ("model.pretrained=x.pt", "model.pretrained: set by model.adapter=openclip"),
    ],
)
def test_a_bad_setting_is_a_one_line_error(layout, override, message):
    with pytest.raises(ConfigError, match=message) as info:
        config(layout, override)
    assert "\n" not in str(info.value)


def test_a_bad_data_file_is_a_one_line_error(layout, tmp_path):
    head = str(layout / MODEL_NAME / "head_Quadrant.pt")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a numpy file")
    no_labels = tmp_path / "no_labels.npz"
    np.savez(no_labels, images=np.zeros((2, 3, 8, 8), np.uint8))
    out_of_range = tmp_path / "labels.npz"
    np.savez(out_of_range, images=np.zeros((2, 3, 8, 8), np.uint8), labels=np.array([0, 9]))
    flat = tmp_path / "flat.pt"
    torch.save({"images": torch.zeros(2, 64), "labels": torch.zeros(2, dtype=torch.long)}, flat)
    for path, message in [
        (garbage, "unreadable evaluation data"),
        (no_labels, "evaluation data must hold 'images' .* and 'labels'"),
        (out_of_range, "label 9 is out of range for the head's 4 classes"),
        (flat, r"'images' must be \(N, C, H, W\)"),
    ]:
        with pytest.raises(ArtifactError, match=f"{path}: {message}") as info:
            ClassificationEvaluator(head=head, data=str(path), mean=MEAN, std=STD)
        assert "\n" not in str(info.value)
    with pytest.raises(ArtifactError, match="classification head needs a 2-D 'weight'"):
        ClassificationEvaluator(
            head=str(layout / MODEL_NAME / "zeroshot.pt"), data=str(layout / "data" / "Quadrant.npz")
        )


def test_a_folder_of_class_folders_is_read_as_images(tmp_path):
    from PIL import Image

    images, labels = make_images("Colour", 6, 3)
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / f"class{label}").mkdir(exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / f"class{label}" / f"{i}.png")
    read, read_labels = load_images(tmp_path, image_size=8)
    order = np.argsort(labels, kind="stable")  # class folders in sorted order, files by name within
    assert read.dtype == torch.uint8 and torch.equal(read, torch.from_numpy(images[order]))
    assert read_labels.tolist() == sorted(labels.tolist())


@pytest.mark.slow
def test_workflow_runs_to_a_front(layout, tmp_path):
    options = [
        *overrides(layout),
        "name=oc",
        "sampler.factor=2",
        "optimizer.pop_size=40",
        "optimizer.n_gen=40",
        "evaluation.samples_per_job=16",
        "model.openclip.max_examples=64",
        "refine.rounds=0",  # refinement rounds: test_workflow.py, test_example.py, test_methods.py
    ]
    run(snakemake_command(tmp_path, overrides=options))
    res = tmp_path / "results" / "oc"
    front = read_table(res / "pareto.parquet")
    assert len(front) > 0 and {f"c_{t}" for t in TASKS} <= set(front.columns)
    merged = load_state_dict(res / "groups" / "all" / "merged.safetensors")
    encoder = load_encoder(str(layout / MODEL_NAME / "zeroshot.pt"))
    encoder.load_state_dict(merged)  # strict: the merged checkpoint is the whole image encoder
    pretrained = load_state_dict(layout / MODEL_NAME / "zeroshot.pt")
    assert any(not torch.equal(merged[name], pretrained[name]) for name in pretrained)
    selected = read_table(res / "selected.parquet")
    assert all(0 <= selected[f"measured_accuracy_{t}"].iloc[-1] <= 1 for t in TASKS)
