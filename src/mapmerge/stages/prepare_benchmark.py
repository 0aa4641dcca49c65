"""Stage prepare_benchmark: the built-in benchmark's checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mapmerge.builtin import model as benchmark
from mapmerge.io import ArtifactError, write_table

PathLike = str | os.PathLike


def run_prepare_benchmark(
    params: Mapping[str, Any], *, pretrained: PathLike, finetuned: Sequence[PathLike], table: PathLike
) -> None:
    """Train the built-in benchmark's pretrained and fine-tuned checkpoints and write benchmark.parquet (`table`).

    The checkpoints go to `pretrained`'s folder, each named after its model (pretrained, <task>):
    `pretrained` and `finetuned` are those files.
    """
    folder = Path(pretrained).parent
    frame = benchmark.prepare_benchmark(params["benchmark"], folder)
    files = [folder / f for f in frame["file"]]
    missing = sorted({str(p) for p in [pretrained, *finetuned]} - {str(p) for p in files})
    if missing:
        raise ArtifactError(
            f"{missing[0]}: not among the checkpoints the benchmark wrote ({', '.join(map(str, files))})"
        )
    write_table(frame, table, "prepare_benchmark", params, inputs=files)
