"""Fashion-MNIST for the built-in benchmark, read from Debian's dataset-fashion-mnist (no downloads).

The IDX files (gzip) are parsed with NumPy. The benchmark uses a seeded, class-stratified subset of
the training file's 60000 images, cropped to the central 24x24 pixels and averaged over 3x3 blocks
down to 8x8, so the digits benchmark's small CNN and task transforms apply unchanged.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from mapmerge.io import ArtifactError

PACKAGE = "dataset-fashion-mnist"
DATA_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "t10k")
N_CLASSES = 10
CROP = 2  # pixels dropped at each border (28 -> 24)
POOL = 3  # block size of the averaging (24 -> 8)
# IDX element types by their type code (all big-endian)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def files(split: str = "train", data_dir: str | os.PathLike = DATA_DIR) -> tuple[Path, Path]:
    """The (images, labels) files of a split ('train' or 't10k'); a one-line ArtifactError naming the
    Debian package when one is absent."""
    if split not in SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split '{split}'; expected one of {', '.join(SPLITS)}")
    paths = (Path(data_dir) / f"{split}-images-idx3-ubyte.gz", Path(data_dir) / f"{split}-labels-idx1-ubyte.gz")
    for path in paths:
        if not path.is_file():
            raise ArtifactError(
                f"{path}: Fashion-MNIST not found; install the Debian package {PACKAGE} "
                "(workflow/scripts/install-data.sh) or set benchmark.data_dir"
            )
    return paths


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in a gzip-compressed IDX file (magic: 0, 0, type code, number of dimensions)."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise ArtifactError(f"{path}: not a readable gzip file ({exc})") from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise ArtifactError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ArtifactError(
            f"{path}: IDX header says shape {shape}, but the file holds {len(data) - offset} bytes of data"
        )
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


@lru_cache(maxsize=2)
def read_split(split: str = "train", data_dir: str = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Raw images (n, 28, 28) uint8 and labels (n,) int64 of a split."""
    image_file, label_file = files(split, data_dir)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ArtifactError(
            f"{image_file}: {images.shape} images do not match {labels.shape} labels in {label_file.name}"
        )
    return images, labels.astype(np.int64)


def downsample(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, 8, 8) float32 in [0, 1]: central 24x24 crop, 3x3 block means."""
    inner = images[:, CROP:-CROP, CROP:-CROP].astype(np.float32) / 255.0
    n, side = len(inner), inner.shape[1] // POOL
    return inner.reshape(n, side, POOL, side, POOL).mean(axis=(2, 4))


def subset_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` indices (sorted) with the classes as equally represented as possible, fixed by the seed."""
    if not N_CLASSES <= size <= len(labels):
        raise ValueError(f"benchmark.subset: {size} is out of range {N_CLASSES}..{len(labels)}")
    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(labels == k) for k in range(N_CLASSES)]
    counts = np.full(N_CLASSES, size // N_CLASSES)
    counts[rng.permutation(N_CLASSES)[: size % N_CLASSES]] += 1
    return np.sort(np.concatenate([rng.choice(idx, n, replace=False) for idx, n in zip(per_class, counts)]))


def fashion_arrays(size: int, seed: int, data_dir: str = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's pool: `size` training images (n, 8, 8) float32 in [0, 1] and labels (n,) int64."""
    images, labels = read_split("train", str(data_dir))
    index = subset_indices(labels, int(size), int(seed))
    return downsample(images[index]), labels[index]
