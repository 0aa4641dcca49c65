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
- dare_ties: dare's masks and rescaling, then ties' sign election and disjoint mean (no trimming).
- slerp (two members): not linear in c. With s = c_1 + c_2 and t = c_2 / s, the merge is
  theta_pre + s (slerp(t; theta_1, theta_2) - theta_pre), theta_i = theta_pre + tau_i, slerp as mergekit's
  per tensor (its angle from the normalized tensors). The angle is computed once per tensor
  (slerp_dot), and per point slerp_weights gives the weights of tau_1, tau_2 and theta_pre, so the merge
  is still one weighted sum per tensor: theta_pre + w_1 tau_1 + w_2 tau_2 + w_pre theta_pre.

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
    "dare_ties": ("drop_rate",),
    "slerp": (),
}
PARAMETERS = ("density", "drop_rate")
# operators that draw random numbers (their result depends on the seed)
SEEDED = frozenset({"dare", "dare_ties"})
# operators whose weights depend on the point per tensor (slerp_weights), not only their effective vectors
POINTWISE = frozenset({"slerp"})
SLERP_MEMBERS = 2
# mergekit's SLERP: linear interpolation where |cos| of the angle is above this; norms at most EPS count as 1
DOT_THRESHOLD, EPS = 0.9995, 1e-8
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

    name is the tensor's name; members and seed are used by seeded operators (dare, dare_ties), which need a
    seed. slerp's effective vectors are the task vectors themselves (its weights: slerp_weights).
    """
    spec = validate(spec)
    op = spec["operator"]
    if stacked.dim() < 1 or stacked.shape[0] != len(members):
        raise ValueError(f"tensor '{name}': {tuple(stacked.shape)} stacked task vectors for {len(members)} members")
    if op == "task_arithmetic":
        return stacked
    if op == "ties":
        return ties(stacked, spec["density"])
    if op == "slerp":
        check_slerp_members(len(members))
        return stacked
    if seed is None:
        raise ValueError(f"merge.operator {op}: needs a seed")
    dropped = dare(stacked, spec["drop_rate"], members, name, seed)
    return disjoint_mean(dropped) if op == "dare_ties" else dropped


def trim_count(density: float, n: int) -> int:
    """The entries TIES keeps of a tensor of n: ceil(density * n), at least one (the tolerance keeps 0.3 * 10 at 3)."""
    return min(n, max(1, math.ceil(density * n - 1e-9)))


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
    k = trim_count(density, n)
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

    return disjoint_mean(torch.where(trim_mask(stacked, density), stacked, torch.zeros_like(stacked)))


def disjoint_mean(trimmed: torch.Tensor) -> torch.Tensor:
    """TIES' sign election and disjoint mean: per element, the nonzero entries of the sign of the sum, each
    divided by their count; where the sum is exactly 0 no sign is elected and every member gets 0."""
    import torch

    elected = torch.sign(trimmed.sum(dim=0, keepdim=True))
    keep = (torch.sign(trimmed) == elected) & (trimmed != 0)
    count = keep.sum(dim=0, keepdim=True).clamp_min(1).to(trimmed.dtype)
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


def check_slerp_members(n: int) -> None:
    """ValueError unless slerp gets exactly two members."""
    if n != SLERP_MEMBERS:
        raise ValueError(f"merge.operator: slerp merges exactly {SLERP_MEMBERS} models, got {n}")


def slerp_dot(pretrained: torch.Tensor, stacked: torch.Tensor, chunk: int = 1 << 20) -> float:
    """cos of the angle between theta_1 = theta_pre + tau_1 and theta_2 of one tensor (stacked: [2, *shape]),
    accumulated in float64 over chunks of the flattened tensor, on stacked's device. As mergekit's slerp, a norm
    at most EPS counts as 1 (so a zero tensor gives cos 0), and the cosine is clipped to [-1, 1]."""
    import torch

    check_slerp_members(len(stacked))
    pre, taus = pretrained.reshape(-1), stacked.reshape(SLERP_MEMBERS, -1)
    sums = torch.zeros(3, dtype=torch.float64, device=taus.device)  # |theta_1|^2, |theta_2|^2, theta_1 . theta_2
    for start in range(0, pre.numel(), chunk):
        v = pre[start : start + chunk].to(taus.device, torch.float64) + taus[:, start : start + chunk].to(torch.float64)
        sums += torch.stack([v[0] @ v[0], v[1] @ v[1], v[0] @ v[1]])
    *squares, dot = sums.tolist()
    norms = [norm if norm > EPS else 1.0 for norm in map(math.sqrt, squares)]
    return min(1.0, max(-1.0, dot / (norms[0] * norms[1])))


def slerp_weights(coefficients: Sequence[float], dot: float) -> tuple[list[float], float]:
    """([w_1, w_2], w_pre) of one tensor at coefficients (c_1, c_2): the merge there is
    theta_pre + s (slerp(t; theta_1, theta_2) - theta_pre) = theta_pre + w_1 tau_1 + w_2 tau_2 + w_pre theta_pre,
    s = c_1 + c_2, t = c_2 / s, dot the tensor's slerp_dot.

    slerp(t; v0, v1) = a v0 + b v1 with a = sin((1 - t) Omega) / sin Omega, b = sin(t Omega) / sin Omega,
    cos Omega = dot, so w_1 = s a, w_2 = s b, w_pre = s (a + b - 1). Where |dot| > DOT_THRESHOLD it is
    linear, a = 1 - t and b = t, so the merge is task arithmetic's: (c_1, c_2), w_pre 0 (for every s).
    At s = 0 the others give theta_pre (the limit as s -> 0).
    """
    c1, c2 = (float(c) for c in coefficients)
    if abs(dot) > DOT_THRESHOLD:
        return [c1, c2], 0.0
    s = c1 + c2
    if s == 0:
        return [0.0, 0.0], 0.0
    omega = math.acos(dot)
    w1, w2 = (s * math.sin(c / s * omega) / math.sin(omega) for c in (c1, c2))
    return [w1, w2], w1 + w2 - s
