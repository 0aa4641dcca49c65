"""Stage prepare_benchmark: the built-in benchmark's checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mapmerge.io import write_table

PathLike = str | os.PathLike


def run_prepare_benchmark(params: Mapping[str, Any], checkpoint_dir: PathLike, table: PathLike) -> None:
    """Train the built-in benchmark's pretrained and fine-tuned checkpoints."""
    import torch

    from mapmerge.builtin import model as benchmark  # deferred: the rules import stage modules at every Snakefile parse

    torch.set_num_threads(int(params["benchmark"]["threads"]))
    frame = benchmark.prepare_benchmark(params["benchmark"], checkpoint_dir)
    files = [Path(checkpoint_dir) / f for f in frame["file"]]
    write_table(frame, table, "prepare_benchmark", params, inputs=files)
