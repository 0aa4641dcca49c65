"""The OpenCLIP / task-vectors checkpoint layout (Ilharco et al.) as a mapmerge model.

Layout: {root}/{model_name}/zeroshot.pt (the pretrained image encoder), {root}/{model_name}/{task}/
finetuned.pt (one fine-tuned image encoder per task), a classification head per task (a linear layer
from image features to classes; path pattern `heads`) and per task local evaluation data (`data`).
The checkpoints may be whole pickled modules (torch.save(module), as in that code) or state dicts;
mapmerge.tensors.checkpoints reads either without running the pickle. The builder unpickles zeroshot.pt
for real (torch.load weights_only=False, the module's classes importable through model.python_path),
unless model.openclip.builder names one. See config/model/openclip.yaml for every key.

torch is imported where it is used: resolve() runs when the Snakefile is parsed, in every job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mapmerge.errors import ConfigError
from mapmerge.io import ArtifactError

if TYPE_CHECKING:
    import pandas as pd
    import torch

KEY = "model.openclip"
GENERIC_KEYS = ("builder", "pretrained", "tasks")  # filled in by the adapter
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def resolve(model: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The generic model config (builder, pretrained, tasks) for the layout in model.openclip.

    Checks that every file the layout names exists (ConfigError naming the key and the file);
    what the files hold is checked when they are read.
    """
    taken = [k for k in GENERIC_KEYS if model.get(k) is not None]
    if taken:
        raise ConfigError(f"model.{taken[0]}: set by model.adapter=openclip from model.openclip; leave it null")
    block = model.get("openclip")
    if not isinstance(block, Mapping):
        raise ConfigError(f"{KEY}: must be a mapping (root, model_name, tasks, heads, data, ...)")
    root = _path(block.get("root"), f"{KEY}.root", base_dir)
    if not root.is_dir():
        raise ConfigError(f"{KEY}.root: folder {root} not found")
    model_name = block.get("model_name")
    if not isinstance(model_name, str) or not model_name:
        raise ConfigError(f"{KEY}.model_name: must be the name of the encoder's folder under root, e.g. ViT-B-32")
    encoder_dir = root / model_name
    if not encoder_dir.is_dir():
        raise ConfigError(f"{KEY}.model_name: folder {encoder_dir} not found")
    zeroshot = encoder_dir / "zeroshot.pt"
    if not zeroshot.is_file():
        raise ConfigError(f"{KEY}: pretrained image encoder {zeroshot} not found")
    tasks = block.get("tasks")
    if not isinstance(tasks, list) or len(tasks) < 2 or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"{KEY}.tasks: must list at least two task folders under {encoder_dir}")
    if len(set(tasks)) < len(tasks):
        raise ConfigError(f"{KEY}.tasks: lists a task twice")
    settings = _evaluation_settings(block)
    fields = {"root": str(root), "model_name": model_name}
    resolved, heads, data = {}, {}, {}
    for task in tasks:
        finetuned = encoder_dir / task / "finetuned.pt"
        if not (encoder_dir / task).is_dir():
            raise ConfigError(f"{KEY}.tasks: task folder {encoder_dir / task} not found")
        if not finetuned.is_file():
            raise ConfigError(f"{KEY}.tasks: fine-tuned image encoder {finetuned} not found")
        heads[task] = _task_path(block.get("heads"), "heads", task, fields, base_dir)
        if not heads[task].is_file():
            raise ConfigError(f"{KEY}.heads: classification head of task {task}, {heads[task]}, not found")
        data[task] = _task_path(block.get("data"), "data", task, fields, base_dir)
        if not data[task].exists():
            raise ConfigError(f"{KEY}.data: evaluation data of task {task}, {data[task]}, not found")
        evaluator = {
            "_target_": f"{__name__}.ClassificationEvaluator",
            "head": str(heads[task]),
            "data": str(data[task]),
        }
        resolved[task] = {"checkpoint": str(finetuned), "evaluator": {**evaluator, **settings}}
    builder = block.get("builder")
    if builder is None:
        builder = {"_target_": f"{__name__}.load_encoder", "path": str(zeroshot)}
    elif not isinstance(builder, Mapping) or "_target_" not in builder:
        raise ConfigError(f"{KEY}.builder: must be null (unpickle zeroshot.pt) or a mapping with a _target_")
    resolved_block = {
        **block,
        **fields,
        "heads": {t: str(p) for t, p in heads.items()},
        "data": {t: str(p) for t, p in data.items()},
    }
    return {
        **model,
        "builder": dict(builder),
        "pretrained": str(zeroshot),
        "tasks": resolved,
        "openclip": resolved_block,
    }


def _path(value: Any, key: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _task_path(spec: Any, name: str, task: str, fields: Mapping[str, str], base_dir: Path) -> Path:
    """A task's file from a pattern with {root}, {model_name}, {task}, or from a mapping task -> path."""
    key = f"{KEY}.{name}"
    if isinstance(spec, Mapping):
        if task not in spec:
            raise ConfigError(f"{key}: has no entry for task {task}")
        return _path(spec[task], f"{key}.{task}", base_dir)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(
            f"{key}: must be a path pattern with {{task}} (and {{root}}, {{model_name}}) or a mapping task: path"
        )
    try:
        value = spec.format(task=task, **fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{key}: pattern {spec!r} is not valid (known fields: root, model_name, task; {exc})"
        ) from exc
    return _path(value, key, base_dir)


def _evaluation_settings(block: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluator's keyword arguments shared by every task, checked."""
    mean, std = block.get("mean"), block.get("std")
    for key, value in (("mean", mean), ("std", std)):
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(f"{KEY}.{key}: must be a list of numbers, one per image channel")
    if len(mean) != len(std) or min(std) <= 0:
        raise ConfigError(f"{KEY}.std: must have as many entries as mean ({len(mean)}), all > 0")
    batch_size, max_examples, image_size = block.get("batch_size"), block.get("max_examples"), block.get("image_size")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"{KEY}.batch_size: must be an integer >= 1, got {batch_size!r}")
    if max_examples is not None and (
        not isinstance(max_examples, int) or isinstance(max_examples, bool) or max_examples < 1
    ):
        raise ConfigError(f"{KEY}.max_examples: must be null or an integer >= 1, got {max_examples!r}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ConfigError(f"{KEY}.image_size: must be an integer >= 1, got {image_size!r}")
    if not isinstance(block.get("normalize"), bool):
        raise ConfigError(f"{KEY}.normalize: must be true or false, got {block.get('normalize')!r}")
    return {
        "normalize": block["normalize"],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "batch_size": batch_size,
        "max_examples": max_examples,
        "image_size": image_size,
    }


def load_encoder(path: str) -> torch.nn.Module:
    """The image encoder pickled whole in `path` (torch.save(module)), unpickled for real.

    torch.load(weights_only=False) runs code the file names: use it only on files you trust. The
    module's classes must import (model.python_path; open_clip for open_clip models).
    """
    import torch

    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as exc:
        raise ArtifactError(
            f"{path}: cannot unpickle the image encoder ({exc}); add the folder of its classes' code to model.python_path"
        ) from exc
    except Exception as exc:  # torch.load raises many types for a bad file
        raise ArtifactError(
            f"{path}: cannot unpickle the image encoder ({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from exc
    if not isinstance(module, torch.nn.Module):
        raise ArtifactError(
            f"{path}: holds a {type(module).__name__}, not a pickled torch.nn.Module; set model.openclip.builder to build the encoder"
        )
    return module


class ClassificationEvaluator:
    """Classifies a task's images: features of the evaluated image encoder, through the task's head.

    head: a checkpoint with `weight` (classes x features) and optionally `bias` (a pickled
    task-vectors ClassificationHead or a state dict). data: see load_images. uint8 images are scaled
    to [0, 1] and normalised per channel with mean/std; float images are used as they are. normalize:
    L2-normalise the features before the head. Returns per example: example, correct, loss (cross entropy).
    """

    def __init__(
        self,
        head: str,
        data: str,
        normalize: bool = True,
        mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
        batch_size: int = 128,
        max_examples: int | None = None,
        image_size: int = 224,
    ) -> None:
        import torch

        from mapmerge.tensors.checkpoints import load_state_dict  # deferred: torch

        tensors = load_state_dict(head)
        weight = tensors.get("weight")
        if weight is None or weight.ndim != 2:
            raise ArtifactError(
                f"{head}: a classification head needs a 2-D 'weight' (classes x features); it has {', '.join(sorted(tensors))}"
            )
        bias = tensors.get("bias")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ArtifactError(f"{head}: 'bias' has shape {tuple(bias.shape)}, 'weight' has {weight.shape[0]} classes")
        self.weight, self.bias = weight.float(), None if bias is None else bias.float()
        self.images, self.labels = load_images(data, image_size, max_examples)
        if self.images.dtype == torch.uint8 and self.images.shape[1] != len(mean):
            raise ArtifactError(
                f"{data}: images have {self.images.shape[1]} channels, model.openclip.mean has {len(mean)}"
            )
        if int(self.labels.max()) >= weight.shape[0]:
            raise ArtifactError(
                f"{data}: label {int(self.labels.max())} is out of range for the head's {weight.shape[0]} classes ({head})"
            )
        self.normalize, self.batch_size = normalize, batch_size
        self.mean = torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).view(1, -1, 1, 1)

    def __call__(self, module: torch.nn.Module, device: torch.device) -> pd.DataFrame:
        import pandas as pd
        import torch
        import torch.nn.functional as F

        weight = self.weight.to(device)
        bias = None if self.bias is None else self.bias.to(device)
        mean, std = self.mean.to(device), self.std.to(device)
        correct, losses = [], []
        for start in range(0, len(self.labels), self.batch_size):
            images = self.images[start : start + self.batch_size].to(device)
            if images.dtype == torch.uint8:
                images = (images.float() / 255 - mean) / std
            features = module(images.float())
            if features.ndim != 2 or features.shape[1] != weight.shape[1]:
                raise ValueError(
                    f"the image encoder returned features of shape {tuple(features.shape)}; the head takes {weight.shape[1]}"
                )
            features = features.float()
            if self.normalize:
                features = F.normalize(features, dim=-1)
            logits = F.linear(features, weight, bias)
            labels = self.labels[start : start + self.batch_size].to(device)
            correct.append((logits.argmax(dim=1) == labels).cpu())
            losses.append(F.cross_entropy(logits, labels, reduction="none").cpu())
        return pd.DataFrame(
            {
                "example": range(len(self.labels)),
                "correct": torch.cat(correct).numpy(),
                "loss": torch.cat(losses).double().numpy(),
            }
        )


def load_images(
    path: str | Path, image_size: int = 224, max_examples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W) uint8 or float32, labels (N,) int64) of a task's evaluation data.

    path: a .npz file (numpy arrays `images`, `labels`), a .pt file (a dict of tensors `images`,
    `labels`, read weights_only), or a folder with one subfolder of images per class (class k is the
    k-th subfolder in sorted order, images resized to image_size x image_size, RGB). max_examples:
    keep the first N. ArtifactError naming the file when it holds something else.
    """
    import numpy as np
    import torch

    path = Path(path)
    if path.is_dir():
        images, labels = _image_folder(path, image_size)
    else:
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in ("images", "labels") if k in npz.files}
            elif path.suffix == ".pt":
                arrays = torch.load(path, map_location="cpu", weights_only=True)
            else:
                raise ArtifactError(f"{path}: evaluation data must be a .npz or .pt file or a folder of class folders")
        except ArtifactError:
            raise
        except Exception as exc:  # numpy, zipfile and pickle raise many types for a bad file
            raise ArtifactError(
                f"{path}: unreadable evaluation data ({type(exc).__name__}: {' '.join(str(exc).split())})"
            ) from exc
        if not isinstance(arrays, Mapping) or "images" not in arrays or "labels" not in arrays:
            raise ArtifactError(f"{path}: evaluation data must hold 'images' (N, C, H, W) and 'labels' (N,)")
        images, labels = torch.as_tensor(np.asarray(arrays["images"])), torch.as_tensor(np.asarray(arrays["labels"]))
    if images.ndim != 4 or not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise ArtifactError(
            f"{path}: 'images' must be (N, C, H, W) uint8 or float, got {tuple(images.shape)} {images.dtype}"
        )
    if labels.ndim != 1 or len(labels) != len(images) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ArtifactError(
            f"{path}: 'labels' must be (N,) integers, one per image; got {tuple(labels.shape)} {labels.dtype} for {len(images)} images"
        )
    if len(labels) == 0 or int(labels.min()) < 0:
        raise ArtifactError(f"{path}: needs at least one example and labels >= 0")
    if images.is_floating_point():
        images = images.float()
        if not torch.isfinite(images).all():
            raise ArtifactError(f"{path}: 'images' holds NaN or inf")
    return images[:max_examples], labels.long()[:max_examples]


def _image_folder(path: Path, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    import torch

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise ArtifactError(f"{path}: reading a folder of images needs Pillow (pip install pillow)") from exc
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    images, labels = [], []
    for label, folder in enumerate(classes):
        for file in sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC))
            except (OSError, UnidentifiedImageError) as exc:
                raise ArtifactError(f"{file}: unreadable image ({exc})") from exc
            images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise ArtifactError(f"{path}: no images in class folders ({', '.join(IMAGE_SUFFIXES)})")
    return torch.stack(images), torch.tensor(labels)
