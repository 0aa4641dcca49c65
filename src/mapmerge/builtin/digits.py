"""The tasks of the built-in benchmark: 8x8 images, transformed per task.

The images are scikit-learn's bundled digits (dataset "digits", the default) or a subset of
Fashion-MNIST downsampled to 8x8 (dataset "fashion", see mapmerge.builtin.fashion); the plain 10-way task
of a dataset is named after it. NumPy only (scikit-learn and the Fashion-MNIST reader are imported
when the data is first read), so the config can list the task names without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from mapmerge.builtin import fashion

PRETRAIN_TASK = "digits"
DATASETS = (PRETRAIN_TASK, "fashion")  # the plain task of each dataset is named after it
NOISE_STD = 0.5
SHIFT = 2

# A transform maps all images (n, 8, 8) in [0, 1], their digits (n,) and a generator seeded from the
# benchmark seed to the task's images and labels, example by example (so the split can come after).
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _shifted(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[:, SHIFT:, SHIFT:] = x[:, :-SHIFT, :-SHIFT]
    return out


def _noisy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, NOISE_STD, x.shape).astype(x.dtype)


def _bottom_half(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[:, : x.shape[1] // 2] = 0.0
    return out


_TRANSFORMS: dict[str, Transform] = {
    "rot90": lambda x, y, rng: (np.rot90(x, 1, axes=(1, 2)), y),  # rotated 90 degrees counter-clockwise
    "invert": lambda x, y, rng: (1.0 - x, y),  # inverted intensities
    "flip_parity": lambda x, y, rng: (x[:, :, ::-1], y % 2),  # mirrored left-right, label: odd or even
    "mod3": lambda x, y, rng: (x, y % 3),  # plain images, label: digit mod 3
    "shift": lambda x, y, rng: (_shifted(x), y),  # moved 2 pixels down and right
    "transpose": lambda x, y, rng: (x.transpose(0, 2, 1), y),  # rows and columns swapped
    "noisy": lambda x, y, rng: (_noisy(x, rng), y),  # gaussian noise, std 0.5
    "bottom_half": lambda x, y, rng: (_bottom_half(x), y),  # top half blanked out
}

TASK_NAMES: tuple[str, ...] = tuple(_TRANSFORMS)


def check_dataset(dataset: str) -> str:
    """Return `dataset` if known, else raise ValueError listing the known ones."""
    if dataset not in DATASETS:
        raise ValueError(f"benchmark.dataset: unknown dataset '{dataset}'; known: {', '.join(DATASETS)}")
    return dataset


def check_task(task: str, allow_pretrain: bool = False, dataset: str = "digits") -> str:
    """Return `task` if known (with allow_pretrain, the dataset's plain task too), else raise ValueError listing the known ones."""
    known = TASK_NAMES + ((check_dataset(dataset),) if allow_pretrain else ())
    if task not in known:
        raise ValueError(f"unknown benchmark task '{task}'; known tasks: {', '.join(known)}")
    return task


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: images (n, 8, 8) float32 scaled to [0, 1], labels (n,) int64."""
    from sklearn.datasets import load_digits  # slow import, only needed here

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@lru_cache(maxsize=4)
def _images(dataset: str, subset: int | None, seed: int, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """All images of the dataset's pool (n, 8, 8) float32 in [0, 1] and their labels (n,) int64.

    digits: all 1797 (subset, seed and data_dir are not used); fashion: `subset` training images
    drawn by the seed from the files in data_dir (default: Debian's dataset-fashion-mnist).
    """
    if check_dataset(dataset) == "digits":
        return _digits()
    if subset is None:
        raise ValueError("benchmark.subset: the fashion dataset needs the number of images to use")
    return fashion.fashion_arrays(subset, seed, data_dir or fashion.DATA_DIR)


@lru_cache(maxsize=8)
def _split_indices(
    seed: int, test_fraction: float, dataset: str = "digits", subset: int | None = None, data_dir: str | None = None
) -> dict[str, np.ndarray]:
    """Train and test example indices, stratified by class, fixed by the seed."""
    from sklearn.model_selection import train_test_split

    labels = _images(dataset, subset, seed, data_dir)[1]
    train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels)
    return {"train": train, "test": test}


def task_arrays(
    task: str,
    split: str = "test",
    seed: int = 0,
    test_fraction: float = 0.3,
    dataset: str = "digits",
    subset: int | None = None,
    data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 8, 8) float32 and labels (n,) int64 of a task's train or test split.

    `task` is one of TASK_NAMES or the dataset's name (its plain 10-way pretraining task); subset
    and data_dir choose the fashion images (see `_images`). Training and evaluation both read data
    through here, so the split and transforms are defined once.
    """
    check_task(task, allow_pretrain=True, dataset=dataset)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}'; expected 'train' or 'test'")
    source = (dataset, None if subset is None else int(subset), None if data_dir is None else str(data_dir))
    x, y = _images(source[0], source[1], seed, source[2])
    if task != dataset:
        x, y = _TRANSFORMS[task](x, y, np.random.default_rng(seed))
    index = _split_indices(seed, float(test_fraction), *source)[split]
    return np.ascontiguousarray(x[index]), y[index]
