"""Merge operators: turn the members' task vectors into effective task vectors tau'_i.

An operator acts per tensor on the stacked task vectors of the members being merged, once; the
merge then stays linear in the coefficients, theta_pre + sum_i c_i tau'_i, so MAP searches the
coefficients of TIES-merging or DARE exactly as those of plain task arithmetic.

- task_arithmetic: tau' = tau.
- ties: trim every member to its top `density` fraction by magnitude, elect a sign per element
  (sign of the sum of the trimmed values), keep the entries of that sign and divide them by the
  number of members kept there (disjoint mean). With all c_i = lambda the merge is TIES:
  theta_pre + lambda * disjoint_mean.
- dare: drop each entry with probability `drop_rate`, rescale the rest by 1 / (1 - drop_rate); the
  mask of (member, tensor) depends only on the seed, the member's name and the tensor's name.

torch is imported inside the functions: config validation uses this module at workflow parse time.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# operator -> the parameters it takes
OPERATORS: dict[str, tuple[str, ...]] = {
    "task_arithmetic": (),
    "ties": ("density",),
    "dare": ("drop_rate",),
}
PARAMETERS = ("density", "drop_rate")
# operators that draw random numbers (their result depends on the seed)
SEEDED = frozenset({"dare"})
DEFAULT = {"operator": "task_arithmetic"}


class OperatorError(ValueError):
    """An invalid operator spec; the one-line message names the key (merge.<key>)."""


def validate(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checked spec, reduced to the operator and the parameters it takes.

    Parameters of other operators are ignored (so switching operator needs no cleanup); unknown keys
    and missing or out-of-range parameters raise OperatorError.
    """
    spec = dict(DEFAULT if spec is None else spec)
    op = spec.get("operator")
    if op not in OPERATORS:
        raise OperatorError(f"merge.operator: must be one of {', '.join(OPERATORS)}, got {op!r}")
    unknown = sorted(set(spec) - {"operator", *PARAMETERS})
    if unknown:
        raise OperatorError(f"merge.{unknown[0]}: unknown key; merge takes operator, {', '.join(PARAMETERS)}")
    out: dict[str, Any] = {"operator": op}
    for key in OPERATORS[op]:
        if spec.get(key) is None:
            raise OperatorError(f"merge.{key}: required by operator {op}")
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise OperatorError(f"merge.{key}: must be a number, got {value!r}")
        if key == "density" and not 0 < value <= 1:
            raise OperatorError(f"merge.density: must be in (0, 1], got {value}")
        if key == "drop_rate" and not 0 <= value < 1:
            raise OperatorError(f"merge.drop_rate: must be in [0, 1), got {value}")
        out[key] = float(value)
    return out


def apply_operator(
    spec: Mapping[str, Any] | None,
    members: Sequence[str],
    name: str,
    stacked: torch.Tensor,
    seed: int | None = None,
) -> torch.Tensor:
    """Effective task vectors of one tensor: stacked is [M, *shape] (row i: member i), same shape out.

    name is the tensor's name; members and seed are used by seeded operators (dare), which need a seed.
    """
    spec = validate(spec)
    op = spec["operator"]
    if stacked.dim() < 1 or stacked.shape[0] != len(members):
        raise ValueError(f"tensor '{name}': {tuple(stacked.shape)} stacked task vectors for {len(members)} members")
    if op == "task_arithmetic":
        return stacked
    if op == "ties":
        return ties(stacked, spec["density"])
    if seed is None:
        raise ValueError(f"merge.operator {op}: needs a seed")
    return dare(stacked, spec["drop_rate"], members, name, seed)


def trim_mask(stacked: torch.Tensor, density: float) -> torch.Tensor:
    """Per row, True at its k = ceil(density * n) entries largest in magnitude (at least one).

    Equal magnitudes at the threshold go to the lower flat index, so exactly k entries are kept
    and the result is the same on every device.
    """
    import torch

    flat = stacked.reshape(stacked.shape[0], -1).abs()
    n = flat.shape[1]
    if n == 0:
        return torch.zeros_like(stacked, dtype=torch.bool)
    k = min(n, max(1, math.ceil(density * n - 1e-9)))  # the tolerance keeps 0.3 * 10 at 3
    threshold = flat.kthvalue(n - k + 1, dim=1, keepdim=True).values  # the k-th largest magnitude
    above = flat > threshold
    at = flat == threshold
    room = k - above.sum(dim=1, keepdim=True)
    mask = above | (at & (at.cumsum(dim=1) <= room))
    return mask.reshape(stacked.shape)


def ties(stacked: torch.Tensor, density: float) -> torch.Tensor:
    """TIES effective vectors: trimmed entries agreeing with the elected sign over their count.

    Where the trimmed values sum to exactly 0 no sign is elected and every member gets 0.
    """
    import torch

    trimmed = torch.where(trim_mask(stacked, density), stacked, torch.zeros_like(stacked))
    elected = torch.sign(trimmed.sum(dim=0, keepdim=True))
    keep = (torch.sign(trimmed) == elected) & (trimmed != 0)
    count = keep.sum(dim=0, keepdim=True).clamp_min(1).to(stacked.dtype)
    return torch.where(keep, trimmed, torch.zeros_like(trimmed)) / count


def seed_for(seed: int, member: str, name: str) -> int:
    """The generator seed of one (member, tensor): a stable hash of f'{seed}/{member}/{name}'."""
    digest = hashlib.sha256(f"{seed}/{member}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def dare(stacked: torch.Tensor, drop_rate: float, members: Sequence[str], name: str, seed: int) -> torch.Tensor:
    """DARE effective vectors: entries dropped with probability drop_rate, the rest scaled by 1/(1-p).

    The masks are drawn on the CPU from a generator seeded by seed_for(seed, member, name), so they
    do not depend on the device, the order of the members or of the tensors.
    """
    import torch

    if drop_rate == 0:
        return stacked
    shape = stacked.shape[1:]
    rows = []
    for member in members:
        generator = torch.Generator(device="cpu").manual_seed(seed_for(seed, member, name))
        rows.append(torch.rand(shape, generator=generator, dtype=torch.float64) >= drop_rate)
    keep = torch.stack(rows).to(stacked.device)
    return torch.where(keep, stacked, torch.zeros_like(stacked)) / (1.0 - drop_rate)
