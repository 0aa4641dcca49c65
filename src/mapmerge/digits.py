"""The digits tasks of the built-in benchmark: scikit-learn's bundled digits, transformed per task.

NumPy only (scikit-learn is imported when the data is first read), so the config can list the
task names without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

PRETRAIN_TASK = "digits"
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

def check_task(task: str, allow_pretrain: bool = False) -> str:
    """Return `task` if known (with allow_pretrain, "digits" too), else raise ValueError listing the known ones."""
    known = TASK_NAMES + ((PRETRAIN_TASK,) if allow_pretrain else ())
    if task not in known:
        raise ValueError(f"unknown benchmark task '{task}'; known tasks: {', '.join(known)}")
    return task


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: images (n, 8, 8) float32 scaled to [0, 1], labels (n,) int64."""
    from sklearn.datasets import load_digits  # slow import, only needed here

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@lru_cache(maxsize=8)
def _split_indices(seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    """Train and test example indices, stratified by digit, fixed by the seed."""
    from sklearn.model_selection import train_test_split

    labels = _digits()[1]
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return {"train": train, "test": test}


def task_arrays(
    task: str, split: str = "test", seed: int = 0, test_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 8, 8) float32 and labels (n,) int64 of a task's train or test split.

    `task` is one of TASK_NAMES or "digits" (the plain 10-way pretraining task). Training and
    evaluation both read data through here, so the split and transforms are defined once.
    """
    check_task(task, allow_pretrain=True)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}'; expected 'train' or 'test'")
    x, y = _digits()
    if task != PRETRAIN_TASK:
        x, y = _TRANSFORMS[task](x, y, np.random.default_rng(seed))
    index = _split_indices(seed, float(test_fraction))[split]
    return np.ascontiguousarray(x[index]), y[index]
