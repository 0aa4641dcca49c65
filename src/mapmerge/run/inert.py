"""Settings a run cannot use: keys the user set that the method or another setting keeps from taking effect
(bayesian.rounds under method=map, refine.points with refine.rounds=0,
bayesian.lam with bayesian.rounds=0, nested.pairing for 2 tasks), found before the first job."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mapmerge.tensors import operators


def why_inert(key: str, cfg: Mapping[str, Any]) -> str | None:
    """Why the dotted `key` takes no effect in the resolved config `cfg`; None where it may."""
    section, _, rest = key.partition(".")
    method, refine = cfg["method"], cfg["refine"]
    if section in ("bayesian", "nested") and method != section:
        return f"method is {method}, and only method={section} reads {section}.*"
    if section == "bayesian" and rest not in ("rounds", "initial_factor") and not cfg["bayesian"]["rounds"]:
        return "bayesian.rounds is 0 (no Bayesian round after the initial design)"
    if key == "nested.pairing" and len(cfg["task_names"]) <= 2:
        return f"the run has {len(cfg['task_names'])} tasks, one pair: nested.pairing has nothing to choose"
    if section == "validation" and rest != "enabled" and not cfg["validation"]["enabled"]:
        return "validation.enabled is false"
    if section == "benchmark" and not cfg["model"]["builtin"]:
        return "the model is your own (model.pretrained is set), and benchmark.* sets up the built-in benchmark"
    if section == "merge" and rest in operators.PARAMETERS:
        return _unread_parameter(rest, cfg["merge"]["operator"], "merge.operator")
    baseline, _, parameter = rest.removeprefix("baselines.").partition(".")
    if section == "validation" and rest.startswith("baselines.") and parameter in operators.PARAMETERS:
        operator = (cfg["validation"]["baselines"].get(baseline) or {}).get("operator")
        return _unread_parameter(parameter, operator, f"validation.baselines.{baseline}.operator")
    if key == "selection.rho" and cfg["selection"]["method"] == "weighted_sum":
        return "selection.method is weighted_sum, which has no rho (tchebycheff and balanced take it)"
    if key == "optimizer.grid_check_resolution" and method != "nested" and len(cfg["task_names"]) != 2:
        return (
            f"the group has {len(cfg['task_names'])} members, and only a front of 2 is checked against a grid "
            "(nested MAP's groups are pairs)"
        )
    if key == "sampler.factor" and method == "bayesian":
        return "method=bayesian sizes its design with bayesian.initial_factor"
    if ((section == "refine" and rest and rest != "rounds") or key == "surrogate.correction") and not refine["rounds"]:
        return "refine.rounds is 0 (no refinement round)"
    if key == "refine.limit" and not refine["extend"] > 0:
        return "refine.extend is 0 (the box never grows)"
    trusted = refine["trust_radius"] is not None
    if key == "refine.trust_from" and not trusted:
        return "refine.trust_radius is null (no trust region)"
    if key in ("refine.trust_radius", "refine.trust_from") and trusted and refine["trust_from"] > refine["rounds"]:
        return (
            f"refine.trust_from ({refine['trust_from']}) is past refine.rounds ({refine['rounds']}), so no round takes "
            "its pick in the trust region"
        )
    return None


def _unread_parameter(parameter: str, operator: Any, where: str) -> str | None:
    """Why a merge operator's parameter takes no effect: the operator set at `where` does not take it."""
    if operator not in operators.OPERATORS or parameter in operators.OPERATORS[operator]:
        return None
    takers = [op for op, params in operators.OPERATORS.items() if parameter in params]
    return f"{where} is {operator}, which does not take {parameter} ({', '.join(takers)} take{'s' * (len(takers) == 1)} it)"


def leaf_keys(node: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    """The dotted keys of a nested mapping's leaves (an empty mapping is a leaf)."""
    for name, value in node.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            yield from leaf_keys(value, f"{key}.")
        else:
            yield key
