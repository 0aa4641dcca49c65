"""The config's schema: every key of the composed config, its type, range and allowed values (pydantic v2).

`check(raw)` runs on the config Hydra composed (groups, experiment file, overrides) before anything is
derived from it. Unknown keys are errors at every level; the first problem becomes one line naming the
key as the user wrote it (with the closest known key for a typo) and, where the key comes from the
experiment file, that file.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mapmerge.core.selection import PreferenceError, normalize_preference
from mapmerge.errors import ConfigError


def _range(
    kind: type, low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False
) -> Any:
    """`kind` within bounds, with one message for the whole range ('must be in (0, 1]', 'must be an integer >= 1')."""
    if low is not None and high is not None:
        text = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    else:
        text = f"{'>' if open_low else '>='} {low:g}" if low is not None else f"{'<' if open_high else '<='} {high:g}"
    text = f"an integer {text}" if kind is int else text

    def check(value: Any) -> Any:
        below = low is not None and (value <= low if open_low else value < low)
        above = high is not None and (value >= high if open_high else value > high)
        if below or above:
            raise ValueError(f"must be {text}")
        return value

    return Annotated[kind, AfterValidator(check)]


PosInt = _range(int, 1)
NonNegInt = _range(int, 0)
# sizes past any a run needs, which would run for days or fill the memory (optimizer.pop_size=100000000)
MAX_SIZE = 100_000
Threads = _range(int, 1, 1024)
Gpus = _range(int, 0, 1)  # an evaluation job uses one device: the SLURM profile caps a job's GPUs at 1
PosFloat = _range(float, 0, open_low=True)
NonNegFloat = _range(float, 0)
Fraction = _range(float, 0, 1, open_low=True, open_high=True)


def _seed(value: int) -> int:
    if not 0 <= value < 2**32:  # torch.manual_seed refuses 2**64 and past, numpy's legacy seeds 2**32
        raise ValueError("must be an integer in [0, 2**32)")
    return value


Seed = Annotated[int, AfterValidator(_seed)]
Path_ = Annotated[str, Field(min_length=1)]
# a merge coefficient, or a bound of the box: a task vector scaled past 10 leaves every fine-tune far behind
# (sampler.upper=1e300 passed, and the jobs' models returned NaN)
Coefficient = _range(float, -10, 10)
Operator = Literal["task_arithmetic", "ties", "dare", "dare_ties", "slerp"]  # mapmerge.tensors.operators.OPERATORS
Density = _range(float, 0, 1, open_low=True)
DropRate = _range(float, 0, 1, open_high=True)
Link = Literal["sigmoid", "softplus", "identity"]
Metric = Literal["accuracy", "loss"]  # mapmerge.core.metrics.METRICS


class Section(BaseModel):
    """A block of the config: typed keys, no others; ints are not floats' strings, bools are not ints."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Target(BaseModel):
    """{_target_: importable.callable, ...its keyword arguments} (Hydra's instantiate convention)."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=False)
    target: Annotated[str, Field(alias="_target_")]

    @field_validator("target")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", value):
            raise ValueError("must be module.callable (a dotted import path)")
        return value


class Nested(Section):
    pairing: Literal["metric", "cosine"]


class Bayesian(Section):
    initial_factor: PosFloat
    per_round_factor: PosFloat
    rounds: NonNegInt
    bins: PosInt | None
    lam: NonNegFloat
    temperature: PosFloat
    radius: Literal["uniform", "sqrt", "volume"]
    max_bins: PosInt = 4096  # mapmerge.core.bayesian.MAX_BINS; optional, but not null


class Refine(Section):
    rounds: NonNegInt
    points: PosInt | None
    order: Literal["cover", "gap"]  # mapmerge.core.refine.ORDERS
    trust_radius: _range(float, 0, 1, open_low=True) | None  # fraction of the box's width; null: anywhere
    trust_from: PosInt  # the first refinement round whose pick lies in the trust region
    extend: _range(float, 0, 10)
    limit: _range(float, 0, 10, open_low=True)


class Baseline(Section):
    operator: Operator
    coefficient: Coefficient
    density: Density | None = None
    drop_rate: DropRate | None = None


class Validation(Section):
    enabled: bool
    resolution: _range(int, 2)
    max_tasks: _range(int, 2)
    max_points: PosInt
    batch: PosInt
    front_points: PosInt
    bootstrap: NonNegInt
    ci_level: Fraction
    baselines: dict[str, Baseline]

    @field_validator("baselines")
    @classmethod
    def _names(cls, value: dict[str, Baseline]) -> dict[str, Baseline]:
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z0-9_-]+", name)]
        if bad:
            raise ValueError(f"baseline name {bad[0]!r}: letters, digits, _ and - only")
        return value


class Benchmark(Section):
    tasks: int | list[str]
    width: PosInt
    pretrain_epochs: PosInt
    finetune_epochs: PosInt
    lr: PosFloat
    batch_size: PosInt
    test_fraction: Fraction
    threads: Threads
    dataset: Literal["digits", "fashion"] = "digits"
    data_dir: Path_ | None = None
    subset: _range(int, 100, 60000) | None = None

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value: Any) -> Any:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, list) and all(isinstance(t, str) for t in value))
        ):
            raise ValueError("must be a number of tasks (the first n) or a list of task names")
        return value


class Sampler(Section):
    kind: Literal["sobol", "lhs"]
    lower: Coefficient
    upper: Coefficient
    factor: PosFloat
    min_points: NonNegInt
    include_special: bool
    equal: float

    @model_validator(mode="after")
    def _box(self) -> Sampler:
        if not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower:g}) must be below upper ({self.upper:g})")
        if not self.lower <= self.equal <= self.upper:
            raise ValueError(f"equal ({self.equal:g}) must lie in [lower, upper] = [{self.lower:g}, {self.upper:g}]")
        return self


class Surrogate(Section):
    links: dict[Metric, Link]
    loo: bool
    missing: Literal["error", "drop"]
    correction: Literal["kernel", "none"]
    scores: Literal["auto", "required", "none"]  # mapmerge.core.class_scores
    interval: Fraction


class Optimizer(Section):
    objective: Metric
    pop_size: _range(int, 1, MAX_SIZE)
    n_gen: _range(int, 1, MAX_SIZE)
    ref_partitions: PosInt | None  # preflight.check_plan: at most MAX_SIZE reference directions
    grid_check_resolution: _range(int, 2, 2001)  # T = 2: resolution^2 merges predicted


class Selection(Section):
    method: Literal["weighted_sum", "tchebycheff", "balanced"]
    rho: NonNegFloat


class Evaluation(Section):
    device: str
    threads: _range(int, 0, 1024)
    samples_per_job: PosInt
    on_error: Literal["fail", "record"]
    dtype: Literal["float32", "bfloat16", "float16"]
    placement: Literal["auto", "device", "host"]
    cache: bool

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


class MergeOperator(Section):
    operator: Operator
    density: Density | None = None
    drop_rate: DropRate | None = None


class TensorSelection(Section):
    include: list[str]
    exclude: list[str]
    vector_dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class UserTask(Section):
    checkpoint: Path_
    evaluator: Target


class LMEvalTask(Section):
    task: Annotated[str, Field(min_length=1)]
    include_path: Path_
    num_fewshot: NonNegInt | None = None
    metric: Literal["acc", "acc_norm", "exact_match"] | None = None  # mapmerge.adapters.lm_eval_tasks
    seed: NonNegInt = Field(default=None)  # type: ignore[assignment]  # absent: lm-eval's fewshot seed


class TransformersTask(Section):
    directory: Path_
    data: Path_ | None = None
    lm_eval: LMEvalTask | None = None  # causal_lm: score with an lm-eval task instead of a data file
    # optional per task; absent = the block's value (a default is not validated, so null is refused)
    text_column: str = Field(default=None)  # type: ignore[assignment]
    label_column: str = Field(default=None)  # type: ignore[assignment]
    max_length: PosInt = Field(default=None)  # type: ignore[assignment]
    batch_size: PosInt = Field(default=None)  # type: ignore[assignment]
    limit: PosInt | None = None

    @model_validator(mode="after")
    def _scored_once(self) -> TransformersTask:
        if (self.data is None) == (self.lm_eval is None):
            both = self.data is not None
            raise ValueError(
                "give either data (a data file) or lm_eval (an lm-eval task), not both"
                if both
                else "needs data (a data file) or lm_eval (an lm-eval task)"
            )
        unused = [k for k in ("text_column", "label_column", "max_length") if getattr(self, k) is not None]
        if self.lm_eval is not None and unused:
            raise ValueError(f"{unused[0]} applies to a data file; an lm_eval task reads what its task YAML says")
        return self


class Transformers(Section):
    pretrained: Path_ | None = None
    task_type: Literal["sequence_classification", "causal_lm"] = "sequence_classification"
    heads: Literal["auto"] | list[str] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    max_length: PosInt = 128
    batch_size: PosInt = 32
    limit: PosInt | None = None
    tasks: dict[str, TransformersTask] = {}

    @field_validator("heads", mode="before")
    @classmethod
    def _heads(cls, value: Any) -> Any:
        if value != "auto" and not (isinstance(value, list) and all(isinstance(p, str) for p in value)):
            raise ValueError("must be auto or a list of tensor-name patterns")
        return value


TaskPaths = Annotated[str | dict[str, str], Field(union_mode="left_to_right")]


class OpenClip(Section):
    root: Path_ | None = None
    model_name: Path_ = "ViT-B-32"
    tasks: list[str] | None = None
    heads: TaskPaths = "{root}/{model_name}/head_{task}.pt"
    data: TaskPaths = "{root}/data/{task}.npz"
    builder: Target | None = None
    normalize: bool = True
    mean: Annotated[list[float], Field(min_length=1)] = [0.48145466, 0.4578275, 0.40821073]  # per channel
    std: Annotated[list[PosFloat], Field(min_length=1)] = [0.26862954, 0.26130258, 0.27577711]
    image_size: PosInt = 224
    batch_size: PosInt = 128
    max_examples: PosInt | None = None


class Model(Section):
    adapter: Literal["transformers", "openclip"] | None
    builder: Target | None
    pretrained: Path_ | None
    tasks: dict[str, UserTask] | None
    merge: TensorSelection
    python_path: list[str]
    transformers: Transformers | None = None
    openclip: OpenClip | None = None


class ResourcesEvaluate(Section):
    threads: Threads
    mem_mb: PosInt
    runtime: PosInt
    gpu: Gpus


class ResourcesLight(Section):
    threads: Threads
    mem_mb: PosInt
    runtime: PosInt


class Resources(Section):
    evaluate: ResourcesEvaluate
    light: ResourcesLight


class Budget(Section):
    max_evaluations: PosInt | None


class Config(Section):
    name: str  # a folder name: mapmerge.run.config.resolve
    results_dir: Path_
    seed: Seed
    method: Literal["map", "nested", "bayesian"]
    nested: Nested
    bayesian: Bayesian
    refine: Refine
    tasks: Annotated[list[str], Field(min_length=2)] | None
    preference: dict[str, float] | str
    validation: Validation
    budget: Budget
    benchmark: Benchmark
    sampler: Sampler
    surrogate: Surrogate
    optimizer: Optimizer
    selection: Selection
    evaluation: Evaluation
    merge: MergeOperator
    model: Model
    resources: Resources

    @model_validator(mode="after")
    def _extend_past_the_box(self) -> Config:
        if self.refine.extend > 0 and self.refine.limit <= self.sampler.upper:
            raise ValueError(
                f"refine.limit: {self.refine.limit:g} leaves no room past sampler.upper {self.sampler.upper:g} "
                "for refine.extend; raise it"
            )
        return self

    @model_validator(mode="after")
    def _objective_fitted(self) -> Config:
        if self.optimizer.objective not in self.surrogate.links:
            raise ValueError(
                f"optimizer.objective: {self.optimizer.objective} is not fitted; surrogate.links has {', '.join(self.surrogate.links)}"
            )
        return self


def check(
    raw: Mapping[str, Any],
    experiment: Mapping[str, Any] | None = None,
    experiment_file: str | None = None,
    overridden: Sequence[str] = (),
) -> dict[str, Any]:
    """`raw` with every number a float key takes as a float (`upper: 1` as 1.0: the stages' params, and so what
    reruns, see the value, not how it was written); ConfigError (one line) for the first problem of the composed
    config `raw`; experiment: the file's own keys, named as the key's source unless an override (`overridden`: the
    dotted keys the command line sets) replaced it."""
    try:
        validated = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_message(exc, raw, experiment, experiment_file, overridden)) from None
    return _floats_as_declared(raw, validated.model_dump(by_alias=True))


def _floats_as_declared(raw: Any, validated: Any) -> Any:
    """raw, where the validated value is a float and the written one an integer, with the float."""
    if isinstance(raw, Mapping) and isinstance(validated, Mapping):
        return {k: _floats_as_declared(v, validated[k]) if k in validated else v for k, v in raw.items()}
    if isinstance(raw, list) and isinstance(validated, list | tuple) and len(raw) == len(validated):
        return [_floats_as_declared(r, v) for r, v in zip(raw, validated)]
    if isinstance(raw, int) and not isinstance(raw, bool) and isinstance(validated, float):
        return validated
    return raw


def _message(
    exc: ValidationError,
    raw: Mapping[str, Any],
    experiment: Mapping[str, Any] | None,
    experiment_file: str | None,
    overridden: Sequence[str],
) -> str:
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo explains what follows it
    path = _written_path(error["loc"], raw, missing=error["type"] == "missing")
    key = ".".join(path)
    if error["type"] == "extra_forbidden":
        text = "unknown key" + _did_you_mean(path)
    elif error["type"] == "missing":
        text = "missing (required)"
    else:
        msg = _plain(error)
        inner = re.match(r"^(\w+(\.\w+)*): (.*)$", msg)  # a cross-key rule names its own key
        if inner and not key:
            key, msg = inner.group(1), inner.group(3)
        text = msg + ("" if isinstance(error["input"], Mapping) else f", got {error['input']!r}")
        if error["type"] == "literal_error" and isinstance(error["input"], str):  # a mistyped choice
            text += closest(error["input"], _choices(error))
    # the key (a cross-key rule's own, else the one the error is at) as the file wrote it, and no override replaced
    replaced = any(f"{key}.".startswith(f"{o}.") or o.startswith(f"{key}.") for o in overridden)
    written = bool(key) and experiment is not None and _written_in(key.split("."), experiment) and not replaced
    where = f"experiment file {experiment_file}: " if written else ""
    return f"{where}{key or 'config'}: {text}"


KINDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _choices(error: Mapping[str, Any]) -> list[str]:
    """The values a literal_error's field allows."""
    return re.findall(r"'([^']*)'", str((error.get("ctx") or {})["expected"]))


def _plain(error: Mapping[str, Any]) -> str:
    """pydantic's message in the config's words: 'must be >= 1', 'must be one of fail, record', 'must be an integer'."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in KINDS:
        return f"must be {KINDS[kind]}"
    if kind in BOUNDS:
        key, sign = BOUNDS[kind]
        return f"must be {sign} {ctx[key]}"
    if kind == "literal_error":
        return "must be one of " + ", ".join(_choices(error))
    if kind == "string_too_short":
        return (
            "must not be empty"
            if ctx.get("min_length") == 1
            else f"must have at least {ctx.get('min_length')} characters"
        )
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return f"must have {'at least' if kind == 'too_short' else 'at most'} {bound} items"
    return str(error["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")


def _written_path(loc: tuple[Any, ...], raw: Any, missing: bool) -> list[str]:
    """The error's location as the user's keys: pydantic's union-branch labels are dropped."""
    path, node = [], raw
    parts = list(loc[:-1] if missing else loc)
    for part in parts:
        if isinstance(node, Mapping) and part in node:
            path.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path[-1:] = [f"{path[-1]}[{part}]"] if path else [f"[{part}]"]
            node = node[part]
    return path + ([str(loc[-1])] if missing else [])


def _written_in(path: list[str], node: Any) -> bool:
    for part in path:
        part = part.split("[")[0]
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def unknown_key(key: str) -> str | None:
    """'<key>: unknown key (did you mean ...?)' for a dotted key the schema does not allow under parents it knows
    (a typo on the command line, which Hydra refuses before the schema sees it); None where it cannot tell."""
    path = key.split(".")
    for depth in range(1, len(path) + 1):  # the first part the schema does not know (resources.evalute.threads)
        parents = _node(path[: depth - 1])
        if _free(parents):  # {_target_, ...arguments}: any name may be an argument
            return None
        known = _fields(parents)
        if not known:
            return None
        if path[depth - 1] not in known:
            return f"{'.'.join(path[:depth])}: unknown key{_did_you_mean(path[:depth])}"
    return None


def list_for_mapping(written: Mapping[str, Any], prefix: str = "") -> tuple[str, list[Any]] | None:
    """The dotted key and value of the first list among `written` (config keys as a user wrote them, nested) where
    the schema takes a mapping: Hydra refuses it naming no key ('Cannot merge DictConfig with ListConfig')."""
    for name, value in written.items():
        key = f"{prefix}{name}"
        alternatives = _alternatives(_node(key.split(".")))
        mapping = any(_fields(a) or _free(a) or typing.get_origin(_unwrap(a)) is dict for a in alternatives)
        if isinstance(value, list) and mapping:
            return key, value
        if isinstance(value, Mapping) and (found := list_for_mapping(value, f"{key}.")):
            return found
    return None


def _free(node: Any) -> bool:
    """Whether a section of the schema takes keys of any name (a Target's arguments)."""
    node = _unwrap(node)
    return isinstance(node, type) and issubclass(node, BaseModel) and node.model_config.get("extra") == "allow"


def known_key(key: str) -> bool:
    """Whether an override may set the dotted `key`: a field the schema allows, an entry of a free mapping
    (preference.<task>; the schema checks its value, the config its name), or an argument of a `_target_`
    (model.builder.hidden; preflight checks it against the callable's signature)."""
    path = key.split(".")
    node = _node(path[:-1])
    return path[-1] in _fields(node) or any(typing.get_origin(a) is dict for a in _alternatives(node)) or argument(key)


def argument(key: str) -> bool:
    """Whether the dotted `key` is an argument of a `_target_` (a name the schema does not know under one)."""
    path = key.split(".")
    node = _node(path[:-1])
    return path[-1] not in _fields(node) and any(_free(a) for a in _alternatives(node))


def closest(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean `x`?)' for the choice closest to a mistyped word, '' where none is close."""
    close = close_match(word, choices)
    return f" (did you mean `{close}`?)" if close is not None else ""


def close_match(word: str, choices: typing.Iterable[str]) -> str | None:
    """The choice closest to a mistyped word; None where none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def close_folder(path: Path) -> Path | None:
    """The folder beside a path that does not exist whose name is closest to its (a mistyped folder); None where
    none is close."""
    parent = path.parent
    close = close_match(path.name, [p.name for p in parent.iterdir() if p.is_dir()]) if parent.is_dir() else None
    return parent / close if close is not None else None


def checked_weights(preference: Mapping[str, Any] | None, tasks: Sequence[str]) -> dict[str, float]:
    """normalize_preference's weights over `tasks`; PreferenceError also for weights whose sum is past the largest
    float, which would make every weight 0."""
    weights = normalize_preference(preference, tasks)
    if not math.isfinite(sum(float(w) for w in (preference or {}).values())):
        raise PreferenceError(
            f"preference weights sum past the largest float: {dict(preference or {})}; only their ratios count: "
            "give smaller ones"
        )
    return weights


def unknown_task(task: str, tasks: Sequence[str], known: Sequence[str]) -> str:
    """What is wrong with a preference naming `task`, which is not one of `tasks` (with the closest of them)."""
    return f"preference names unknown task {task!r}{closest(str(task), tasks)}; known: {', '.join(known)}"


def _did_you_mean(path: list[str]) -> str:
    known = _known_keys(path[:-1])
    if hint := closest(path[-1], known):
        return hint
    deeper = [
        f"`{'.'.join([*path[:-1], key, path[-1]])}`" for key in known if path[-1] in _known_keys([*path[:-1], key])
    ]
    if deeper:  # a section's key given one level up (rounds: 3 for refine.rounds)
        return f" (did you mean {' or '.join(deeper)}?)"
    return f"; known: {', '.join(known)}" if known else ""


def _known_keys(parents: list[str]) -> list[str]:
    """The keys the schema allows under `parents`."""
    return _fields(_node(parents))


def _node(parents: list[str]) -> Any:
    """The schema's annotation at the dotted path `parents` (None where the path leaves the schema)."""
    node: Any = Config
    for part in parents:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(part.split("[")[0])
            if field is None:
                return None
            node = field.annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        else:
            return None
    return node


def _fields(node: Any) -> list[str]:
    """The keys of a section (a model) of the schema; none for anything else."""
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [f.alias or name for name, f in node.model_fields.items()]
    return []


def _alternatives(node: Any) -> list[Any]:
    """The types a node may hold: the members of a union, or the node itself."""
    node = _unwrap(node)
    return list(typing.get_args(node)) if typing.get_origin(node) in (Union, types.UnionType) else [node]


def _unwrap(annotation: Any) -> Any:
    """X from X | None and Annotated[X, ...]."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation
