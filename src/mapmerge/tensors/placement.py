"""Where an evaluation job keeps its task vectors and theta_pre: on the device, or in host memory.

The planner compares what the engine would hold on the device with the memory the job may use there
(the device's free memory less HEADROOM, kept for activations) and logs one line saying what it chose
and why. On CUDA, `host` means pinned host memory streamed to the device chunk by chunk during a
merge; on CPU the device is the host, so `host` and `device` are the same memory.
See docs/scaling.md for the memory formula of each placement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

PLACEMENTS = ("auto", "device", "host")
HEADROOM = 0.1  # share of the free memory kept for activations and the allocator's slack
GIB = 1 << 30
logger = logging.getLogger("mapmerge")

Where = Literal["device", "host"]


@dataclass(frozen=True)
class Sizes:
    """Bytes the engine holds (see docs/scaling.md): the module in the evaluation dtype, theta_pre (the merged
    tensors, checkpoint dtype), the held task vectors, the merge's workspace, and one chunk of streamed vectors."""

    module: int
    pre: int
    vectors: int
    workspace: int
    chunk: int


@dataclass(frozen=True)
class Placement:
    """Where the task vectors and theta_pre live, and the one-line reason logged."""

    vectors: Where
    pre: Where
    reason: str


def free_memory(device: torch.device) -> int:
    """Bytes free on the device: torch.cuda.mem_get_info on CUDA; on CPU the available RAM (psutil, else /proc/meminfo)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("evaluation.placement: cannot tell the available memory (no psutil, no MemAvailable)")


def device_bytes(sizes: Sizes, placement: Placement) -> int:
    """What a placement holds on the device (the formula of docs/scaling.md, activations aside)."""
    held = sizes.module + sizes.workspace
    held += sizes.vectors if placement.vectors == "device" else 2 * sizes.chunk  # two chunks in flight
    return held + (sizes.pre if placement.pre == "device" else 0)


def plan(requested: str, free: int, sizes: Sizes, device_type: str, resident: int = 0) -> Placement:
    """The placement for evaluation.placement `requested` (auto | device | host), logged with its reason.

    free: the device's free memory now; resident: the bytes of `sizes` already in it (on CPU, the module
    and theta_pre are built in host memory before the plan).
    """
    if requested not in PLACEMENTS:
        raise ValueError(f"evaluation.placement: must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
    usable = (free + resident) * (1 - HEADROOM)
    on_device = Placement("device", "device", "")
    need = device_bytes(sizes, on_device)
    fits = need <= usable
    if requested == "auto":
        vectors: Where = "device" if fits else "host"
        why = f"{'fit' if fits else 'do not fit'} in the {_gib(usable)} the job may use"
    else:
        vectors = "device" if requested == "device" else "host"
        why = f"forced by evaluation.placement ({'they would fit' if fits else 'they would not fit'} in {_gib(usable)})"
    pre: Where = "device"
    if vectors == "host" and device_bytes(sizes, Placement("host", "device", "")) > usable:
        pre = "host"
    where = (
        "on the device"
        if vectors == "device"
        else ("in host memory" if device_type == "cpu" else "in pinned host memory, streamed")
    )
    reason = (
        f"evaluation.placement {requested}: task vectors {where}: {_gib(sizes.vectors)} of vectors with the model "
        f"{_gib(sizes.module)}, theta_pre {_gib(sizes.pre)} and workspace {_gib(sizes.workspace)} need {_gib(need)}, "
        f"which {why} ({_gib(free)} free, {HEADROOM:.0%} kept); theta_pre on the {pre}"
    )
    placement = Placement(vectors, pre, reason)
    logger.info("%s", reason)
    return placement


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"
