"""Running one stage with its log file: timing, peak memory, and the full traceback kept in the log on failure."""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapmerge.run import jobclient

logger = logging.getLogger("mapmerge")


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes.

    VmHWM of /proc/self/status where there is one (Linux): the peak of this program alone. getrusage's ru_maxrss
    also keeps the memory of the parent it was forked from (carried across exec): a job forked by a 0.55 GB
    Snakemake driver said 0.55 GB for a stage that used 0.2 GB. Elsewhere ru_maxrss (KiB; bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


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
        where = f" in SLURM job {slurm}" if slurm else f" {jobclient.FORKED_NOTE}" if jobclient.forked() else ""
        logger.info("start %s%s", stage.__name__, where)
        result = stage(*args, **kwargs)
        # "done <stage> in N s" first: benchmarks/overhead.py and compare_methods.py parse it
        logger.info(
            "done %s in %.2f s, peak RSS %.3f GB", stage.__name__, time.perf_counter() - start, peak_rss() / 1e9
        )
        return result
    except BaseException:
        logger.error("failed %s after %.2f s\n%s", stage.__name__, time.perf_counter() - start, traceback.format_exc())
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
