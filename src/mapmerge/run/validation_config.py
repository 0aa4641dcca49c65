"""The config's validation block: checks beyond the schema, and the params of the validation stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mapmerge.tensors import operators

STAGES = ("validate_front", "validate_baseline", "validate")
ONE_GROUP_METHODS = ("map", "bayesian")


def check_cfg(validation: Mapping[str, Any], method: str, n_tasks: int) -> dict[str, Any]:
    """The `validation` block (its keys' types and ranges checked by mapmerge.run.schema); ValueError naming the key
    when a baseline lacks its operator's parameters, or an enabled validation does not fit the method or the task count
    (a slerp baseline: two tasks).
    """
    validation = dict(validation)
    for name, spec in validation["baselines"].items():
        try:
            operators.validate({k: v for k, v in spec.items() if k != "coefficient"})
        except operators.OperatorError as exc:
            raise ValueError(str(exc).replace("merge.", f"validation.baselines.{name}.", 1)) from exc
    if validation["enabled"]:
        if method not in ONE_GROUP_METHODS:
            raise ValueError(
                f"validation.enabled: validation is for one-group methods ({', '.join(ONE_GROUP_METHODS)}), not method={method}"
            )
        slerp = [name for name, spec in validation["baselines"].items() if spec["operator"] == "slerp"]
        if slerp and n_tasks != operators.SLERP_MEMBERS:
            raise ValueError(
                f"validation.baselines.{slerp[0]}.operator: slerp merges exactly {operators.SLERP_MEMBERS} models, "
                f"and the run merges {n_tasks} tasks; remove the baseline or give 2 tasks"
            )
        if n_tasks > validation["max_tasks"]:
            raise ValueError(
                f"validation.max_tasks: a grid of {validation['resolution']}^{n_tasks} points is refused for {n_tasks} tasks "
                f"(at most {validation['max_tasks']}); merge fewer tasks or set validation.enabled=false"
            )
        points = validation["resolution"] ** n_tasks  # each evaluated for real; the plan lists them all
        if points > validation["max_points"]:
            raise ValueError(
                f"validation.resolution: a grid of {validation['resolution']}^{n_tasks} = {points:,} points is refused "
                f"(validation.max_points: {validation['max_points']:,}, each point evaluated on every task); lower "
                "the resolution, or raise max_points"
            )
    return validation


def stage_params(
    stage: str, cfg: Mapping[str, Any], evaluation_model: Mapping[str, Any], operator: Mapping[str, Any]
) -> dict[str, Any]:
    """The resolved sub-config a validation stage depends on (mapmerge.run.config.stage_config adds the code version).

    evaluation_model, operator: what the evaluations of the run's merges depend on (stage 'evaluate').
    """
    validation, objective = cfg["validation"], cfg["optimizer"]["objective"]
    if stage == "validate_front":
        return {
            "model": evaluation_model,
            **operator,
            "front_points": validation["front_points"],
            "objective": objective,
        }
    if stage == "validate_baseline":
        baselines = {}
        for name, spec in validation["baselines"].items():
            op = operators.validate({k: v for k, v in spec.items() if k != "coefficient"})
            baselines[name] = {
                "merge_operator": op,
                "merge_seed": cfg["seed"] if op["operator"] in operators.SEEDED else None,
                "coefficient": float(spec["coefficient"]),
            }
        return {"model": evaluation_model, "baselines": baselines}
    if stage == "validate":
        return {
            "bootstrap": validation["bootstrap"],
            "ci_level": validation["ci_level"],
            "interval": cfg["surrogate"]["interval"],  # the coverage of the surrogate's intervals on the grid
            "box": [cfg["sampler"]["lower"], cfg["sampler"]["upper"]],  # the grid's box (grid_points)
            "objective": objective,
            "seed": cfg["seed"],
        }
    raise ValueError(f"unknown validation stage '{stage}'; known: {', '.join(STAGES)}")


def baseline_params(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One baseline's params out of the stage's: the model, its operator and seed, its coefficient, the code."""
    return {"model": params["model"], **params["baselines"][name], "code": params["code"]}
