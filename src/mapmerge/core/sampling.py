"""Coefficient design: which merges c get a real evaluation."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy

from mapmerge import memo
from mapmerge.core.quadratic import n_params

KINDS = ("sobol", "lhs")


def design_size(n_tasks: int, sampler: Mapping[str, Any]) -> int:
    """Total number of points: max(min_points, ceil(factor * (T+1)(T+2)/2), the special points' count)."""
    scaled = math.ceil(round(float(sampler["factor"]) * n_params(n_tasks), 9))  # 1.1 x 10 is 11, not 12
    return max(int(sampler.get("min_points", 0)), scaled, len(_special(n_tasks, sampler)))


def special_points(n_tasks: int, sampler: Mapping[str, Any]) -> np.ndarray:
    """The points that matter: the pretrained model (origin), each task alone at `upper`, all equal."""
    lower, upper = float(sampler["lower"]), float(sampler["upper"])
    points = [np.full(n_tasks, max(lower, 0.0))]
    points += [np.where(np.arange(n_tasks) == i, upper, max(lower, 0.0)) for i in range(n_tasks)]
    points.append(np.full(n_tasks, float(sampler["equal"])))
    return np.clip(np.asarray(points), lower, upper)


def space_filling(n_tasks: int, n: int, sampler: Mapping[str, Any], seed: int) -> np.ndarray:
    """n seeded space-filling points in the box; Sobol's first n points do not change as n grows.

    Kept in mapmerge.memo: the driver computes the design at every start, and scipy.stats takes longer to
    import than the rest of the Snakefile's imports together.
    """
    kind = sampler["kind"]
    if kind not in KINDS:
        raise ValueError(f"sampler.kind: unknown kind '{kind}'; known: {', '.join(KINDS)}")
    lower, upper = float(sampler["lower"]), float(sampler["upper"])
    key = {
        "kind": kind,
        "d": n_tasks,
        "n": n,
        "lower": lower,
        "upper": upper,
        "seed": seed,
        "versions": [scipy.__version__, np.__version__],
        "code": memo.source_digest(__file__),
    }
    values = memo.remembered(
        "space_filling", key, lambda: _space_filling(kind, n_tasks, n, lower, upper, seed).tolist()
    )
    return np.array(values, dtype=float).reshape(n, n_tasks)


def _space_filling(kind: str, n_tasks: int, n: int, lower: float, upper: float, seed: int) -> np.ndarray:
    from scipy.stats import qmc  # deferred: a second to import, and the driver's start needs it only without a memo

    if kind == "sobol":
        engine = qmc.Sobol(d=n_tasks, scramble=True, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # balance warning for n not a power of 2
            unit = engine.random(n)
    else:
        unit = qmc.LatinHypercube(d=n_tasks, seed=seed).random(n)
    return qmc.scale(unit, lower, upper) if n else unit


def _special(n_tasks: int, sampler: Mapping[str, Any]) -> np.ndarray:
    """The design's distinct special points (none without include_special)."""
    if not sampler.get("include_special", True):
        return np.empty((0, n_tasks))
    return np.unique(special_points(n_tasks, sampler), axis=0)


def design(tasks: Sequence[str], sampler: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """The designed coefficient vectors: one row per sample with `sample`, `kind` and `c_<task>` columns."""
    n_tasks = len(tasks)
    lower, upper = float(sampler["lower"]), float(sampler["upper"])
    if not lower < upper:
        raise ValueError(f"sampler: lower ({lower}) must be below upper ({upper})")
    special = _special(n_tasks, sampler)
    n_fill = design_size(n_tasks, sampler) - len(special)
    points = np.vstack([special, space_filling(n_tasks, n_fill, sampler, seed)])
    kinds = ["special"] * len(special) + [sampler["kind"]] * n_fill
    frame = pd.DataFrame(points, columns=[f"c_{t}" for t in tasks])
    frame.insert(0, "kind", kinds)
    frame.insert(0, "sample", [f"s{i:04d}" for i in range(len(frame))])
    return frame


def sample_batches(samples: Sequence[str], size: int) -> dict[str, list[str]]:
    """Consecutive batches of `size` samples, named b0000, b0001, ...; a grown design keeps earlier batches."""
    if size < 1:
        raise ValueError(f"evaluation.samples_per_job: must be at least 1, got {size}")
    return {f"b{i // size:04d}": list(samples[i : i + size]) for i in range(0, len(samples), size)}
