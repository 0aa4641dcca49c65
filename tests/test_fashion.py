"""The Fashion-MNIST variant of the built-in benchmark: the IDX reader on the real files, the config
that selects it (benchmark=fashion) and a small training run."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mapmerge.builtin import fashion
from mapmerge.io import ArtifactError
from mapmerge.run.config import ConfigError, load_config

HAVE_DATA = all(
    (Path(fashion.DATA_DIR) / f"{s}-{k}-ubyte.gz").is_file()
    for s in fashion.SPLITS
    for k in ("images-idx3", "labels-idx1")
)
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason=f"Fashion-MNIST absent: install the Debian package {fashion.PACKAGE}"
)


@needs_data
def test_read_split_shapes_and_labels() -> None:
    for split, n in (("train", 60000), ("t10k", 10000)):
        images, labels = fashion.read_split(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert np.bincount(labels).tolist() == [n // 10] * 10  # classes 0..9, balanced


@needs_data
def test_subset_is_balanced_and_fixed_by_the_seed() -> None:
    x, y = fashion.fashion_arrays(503, seed=1)
    assert x.shape == (503, 8, 8) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1
    assert sorted(np.bincount(y).tolist()) == [50] * 7 + [51] * 3
    again = fashion.fashion_arrays(503, seed=1)
    assert np.array_equal(again[0], x) and np.array_equal(again[1], y)
    assert not np.array_equal(fashion.fashion_arrays(503, seed=2)[0], x)
    with pytest.raises(ValueError, match="benchmark.subset: 5 is out of range"):
        fashion.fashion_arrays(5, seed=1)


def test_downsample_averages_3x3_blocks_of_the_central_crop() -> None:
    images = np.zeros((1, 28, 28), dtype=np.uint8)
    images[0, 2:5, 2:5] = 255  # the first block of the crop
    images[0, 0, :] = 255  # the border, cropped away
    images[0, 25, 25] = 255  # one pixel of the last block
    small = fashion.downsample(images)
    assert small.shape == (1, 8, 8) and small.dtype == np.float32
    assert small[0, 0, 0] == 1.0 and small[0, 7, 7] == pytest.approx(1 / 9)
    assert small.sum() == pytest.approx(1 + 1 / 9)


def test_bad_files_are_one_line_errors_naming_file_and_package(tmp_path: Path, repo: Path) -> None:
    with pytest.raises(
        ArtifactError,
        match=f"train-images-idx3-ubyte.gz: Fashion-MNIST not found; install the Debian package {fashion.PACKAGE}",
    ):
        fashion.files("train", tmp_path)
    with pytest.raises(ConfigError, match=f"benchmark.data_dir: .*{fashion.PACKAGE}"):
        load_config(repo / "config", overrides=["benchmark=fashion", f"benchmark.data_dir={tmp_path}"])
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abc"))  # says 5 bytes, holds 3
    with pytest.raises(ArtifactError, match="bad.gz: IDX header says shape"):
        fashion.read_idx(bad)
    bad.write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(ArtifactError, match="bad.gz: not an IDX file"):
        fashion.read_idx(bad)
    bad.write_bytes(b"plain")
    with pytest.raises(ArtifactError, match="bad.gz: not a readable gzip file"):
        fashion.read_idx(bad)


@needs_data
def test_config_selects_fashion(repo: Path) -> None:
    cfg = load_config(repo / "config", overrides=["benchmark=fashion", "benchmark.tasks=2"])
    assert cfg["benchmark"]["dataset"] == "fashion" and cfg["task_names"] == ["rot90", "invert"]
    evaluator = cfg["model"]["tasks"]["rot90"]["evaluator"]
    assert evaluator["dataset"] == "fashion" and evaluator["subset"] == cfg["benchmark"]["subset"]
    assert "dataset" not in load_config(repo / "config")["model"]["tasks"]["rot90"]["evaluator"]  # digits as before
    with pytest.raises(ConfigError, match=r"benchmark.subset: must be an integer in \[100, 60000\]"):
        load_config(repo / "config", overrides=["benchmark=fashion", "benchmark.subset=50"])


@needs_data
@pytest.mark.slow
def test_prepare_benchmark_fashion_finetuned_beat_pretrained(tmp_path: Path, repo: Path) -> None:
    from hydra.utils import instantiate

    from mapmerge.builtin.model import build_model, prepare_benchmark
    from mapmerge.tensors.checkpoints import load_state_dict

    overrides = [
        "benchmark=fashion",
        "benchmark.tasks=[rot90, invert]",
        "benchmark.subset=1000",
        "benchmark.pretrain_epochs=10",
        "benchmark.finetune_epochs=6",
    ]
    cfg = load_config(repo / "config", overrides=overrides)
    table = prepare_benchmark(cfg["benchmark"], tmp_path)  # on benchmark.threads, as the stage
    assert list(table["task"]) == ["fashion", "rot90", "invert"]
    assert table.loc[0, "accuracy"] > 0.6  # 10 classes, 300 test images of 8x8

    def accuracy(file: str, task: str) -> float:
        model = build_model(cfg["benchmark"]["width"])
        model.load_state_dict(load_state_dict(tmp_path / file))
        rows = instantiate(cfg["model"]["tasks"][task]["evaluator"])(model.eval(), "cpu")
        assert len(rows) == 300
        return float(rows["correct"].mean())

    for task in ("rot90", "invert"):
        assert accuracy(f"{task}.safetensors", task) > accuracy("pretrained.safetensors", task) + 0.2, task
