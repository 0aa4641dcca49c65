"""Running one stage with its log file: timing, and the full traceback kept in the log on failure."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("mapmerge")


def run_stage(stage: Callable[..., Any], log: str | os.PathLike, /, *args: Any, **kwargs: Any) -> Any:
    """Call `stage(*args, **kwargs)` with the 'mapmerge' logger writing to `log` (any keyword, `stage` too, is the stage's)."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        slurm = os.environ.get("SLURM_JOB_ID")
        logger.info("start %s%s", stage.__name__, f" in SLURM job {slurm}" if slurm else "")
        result = stage(*args, **kwargs)
        logger.info("done %s in %.2f s", stage.__name__, time.perf_counter() - start)
        return result
    except BaseException:
        logger.error("failed %s after %.2f s\n%s", stage.__name__, time.perf_counter() - start, traceback.format_exc())
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
