"""Stage prepare_benchmark: the built-in benchmark's checkpoints."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mapmerge.builtin import model as benchmark
from mapmerge.io import ArtifactError, write_table

PathLike = str | os.PathLike
logger = logging.getLogger("mapmerge")


def run_prepare_benchmark(
    params: Mapping[str, Any], *, pretrained: PathLike, finetuned: Sequence[PathLike], table: PathLike
) -> None:
    """Train the built-in benchmark's pretrained and fine-tuned checkpoints and write benchmark.parquet (`table`):
    model, task, accuracy, file (each model's training time goes to the log, so the same config gives the same bytes).

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
    for row in frame.itertuples():
        logger.info("trained %s in %.1f s", row.model, row.seconds)
    write_table(frame.drop(columns="seconds"), table, "prepare_benchmark", params, inputs=files)
