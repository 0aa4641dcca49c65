"""Progress bars for long loops (evaluating many samples, merging large models), on a terminal only."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Yield items with a tqdm bar on stderr where stderr is a terminal; silent in logs, CI and SLURM jobs."""
    yield from tqdm(
        items, desc=desc, total=total, unit=unit, file=sys.stderr, disable=None, leave=False, dynamic_ncols=True
    )
