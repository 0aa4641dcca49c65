"""Hydra config: compose once, resolve into a plain dict, and cut it into per-stage sub-configs."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mapmerge import adapters
from mapmerge.builtin import fashion
from mapmerge.builtin.digits import TASK_NAMES
from mapmerge.core import bayesian, groups
from mapmerge.core.selection import PreferenceError
from mapmerge.errors import ConfigError
from mapmerge.io import ArtifactError
from mapmerge.layout import Layout
from mapmerge.run import fingerprint, inert, preflight, records, schema, transformers_checks, validation_config
from mapmerge.run.registry import stage_modules
from mapmerge.tensors import operators

BENCHMARK_BUILDER = "mapmerge.builtin.model.build_model"
BENCHMARK_EVALUATOR = "mapmerge.builtin.model.DigitsEvaluator"
EXPERIMENT_NODE = "_experiment_file"
COMMAND_LINE_KEYS = ("experiment", "overrides")  # what the Snakefile reads of Snakemake's --config


def check_command_line(given: Mapping[str, Any]) -> None:
    """Refuse a key of Snakemake's config other than experiment and overrides (from --config or --configfile):
    Snakemake keeps any key and mapmerge reads only those two, so `--config seed=5` would run with the default seed;
    and an empty experiment (a shell variable left unset), which would run the default config."""
    for key, value in given.items():
        if key == "experiment" and value in ("", None):  # experiment=$EXP with EXP unset: the default run instead
            raise ConfigError("--config experiment: empty; give the experiment file's path, or leave the key out")
        if key in COMMAND_LINE_KEYS:
            continue
        close = difflib.get_close_matches(str(key), COMMAND_LINE_KEYS, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean `{close[0]}`?"
        else:
            shown = value if isinstance(value, (str, int, float, bool)) else "..."
            hint = (
                f"to set a config key: --config overrides='[{key}={shown}]', or an experiment=FILE (not --configfile)"
            )
        raise ConfigError(
            f"--config {key}: unknown key ({hint}); mapmerge reads --config experiment=FILE and overrides='[key=value, ...]'"
        )


def load_config(
    config_dir: str | os.PathLike,
    experiment: str | os.PathLike | None = None,
    overrides: Sequence[str] | str | None = None,
    check_files: bool = True,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compose the primary config, an optional experiment YAML file and Hydra overrides, check, then resolve.

    Precedence (last wins): config groups' defaults, the experiment file, the overrides. Every key is
    checked against mapmerge.run.schema, the plan against mapmerge.run.preflight.check_plan, and with
    check_files the files the config names (checkpoint headers, data, labels, importable targets).
    An override that cannot take effect is refused; `warn` gets a line for each such key of the experiment file.
    """
    overrides = _as_list(overrides)
    _check_overrides(overrides)
    exp_dir: Path | None = None
    exp_keys: dict[str, Any] | None = None
    if experiment:
        exp_path = Path(experiment).expanduser().resolve()
        if not exp_path.is_file():
            found = "a folder, not a file" if exp_path.is_dir() else "not found"
            raise ConfigError(f"experiment file {experiment}: {found} (looked for {exp_path})")
        node = _load_yaml(exp_path, f"experiment file {experiment}")
        if not OmegaConf.is_dict(node):
            raise ConfigError(f"experiment file {experiment}: must be a mapping of config keys")
        if not node:  # a file saved empty would run the default config, the built-in benchmark
            raise ConfigError(f"experiment file {experiment}: empty; give its config keys (name, model, ...)")
        exp_keys = OmegaConf.to_container(node)
        ConfigStore.instance().store(group="experiment", name=EXPERIMENT_NODE, node=node, package="_global_")
        overrides = [f"experiment@_global_={EXPERIMENT_NODE}", *overrides]
        exp_dir = exp_path.parent
    _check_group_lists(overrides, config_dir)
    whole = _whole_map_overrides(overrides)  # each override parses: _check_overrides
    _check_preference_entries(exp_keys, overrides, whole)
    try:
        cfg = _compose(Path(config_dir), [o for o in overrides if o not in whole])
        for key, value in whole.values():
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:  # Hydra: ValueError for a malformed defaults
        if isinstance(exc, ValueError) and _raised_in(exc) not in ("hydra", "omegaconf"):
            raise  # a bug, not the user's config: its traceback, not one line
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        option = (
            _unknown_option(message, overrides, experiment)
            or _unknown_group(message, config_dir, experiment)
            or _group_misused(message, overrides)
        )
        if option:
            raise ConfigError(option) from exc
        if found := _list_for_mapping(message, experiment, exp_keys):
            raise ConfigError(found) from exc
        typo = re.match(r"Could not override '([\w.]+)'\.", message)
        message = (typo and schema.unknown_key(typo.group(1))) or message.split(" Config search path:")[0]
        raise ConfigError("config: " + message.replace(f"experiment/{EXPERIMENT_NODE}", f"{experiment}")) from exc
    except RecursionError as exc:  # a defaults list that loads the primary config, which loads the experiment again
        where = f"experiment file {experiment}" if experiment else "config"
        raise ConfigError(
            f"{where}: its defaults list includes the primary config again (endless recursion); an experiment file's "
            "defaults list may only choose options of config groups ('- override /model: openclip')"
        ) from exc
    try:
        raw = schema.check(
            raw, exp_keys, str(experiment) if experiment else None, [_override_key(o) for o in overrides]
        )
    except ConfigError as exc:
        raise ConfigError(f"{exc}{_group_option_hint(str(exc), config_dir)}") from None
    cfg = resolve(raw, base_dir=exp_dir or Path.cwd())
    _check_inert(cfg, overrides, exp_keys, experiment, warn)
    if warn is not None and (line := _unweighted(cfg["task_names"], raw.get("preference"), exp_dir or Path.cwd())):
        warn(line)
    preflight.check_plan(cfg)
    if check_files:
        preflight.check_files(cfg, warn)
    return cfg


def _check_inert(
    cfg: Mapping[str, Any],
    overrides: Sequence[str],
    exp_keys: Mapping[str, Any] | None,
    experiment: Any,
    warn: Callable[[str], None] | None,
) -> None:
    """Refuse an override that cannot take effect (mapmerge.run.inert); `warn` of such a key of the experiment file
    that no override replaced (a file may hold settings for a method that the command line does not choose)."""
    given = {o: _override_key(o) for o in overrides if "=" in o and not o.startswith("experiment@")}
    last = {key: override for override, key in given.items()}  # a key given twice: the last value is the run's
    for key, override in last.items():
        if why := inert.why_inert(key, cfg):
            raise ConfigError(f"overrides: {override}: has no effect: {why}; leave it out, or change the setting named")
        if override.partition("=")[2].strip() == "{}" and (held := _mapping_at(cfg, key)):
            raise ConfigError(
                f"overrides: {override}: has no effect: a mapping on the command line is merged into the config's, "
                f"which holds {', '.join(map(str, held))}; remove one with ~{key}.<name>"
            )
    if warn is None or not exp_keys:
        return
    for key in inert.leaf_keys({k: v for k, v in exp_keys.items() if k != "defaults"}):
        replaced = any(key == k or key.startswith(f"{k}.") for k in given.values())
        if not replaced and (why := inert.why_inert(key, cfg)):
            warn(f"experiment file {experiment}: {key}: has no effect: {why}")


def _mapping_at(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The resolved config's mapping at a dotted key; None where there is none."""
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def _group_option_hint(message: str, config_dir: str | os.PathLike) -> str:
    """For a config group's option written as the group's value in an experiment file (`selection: tchebycheff`,
    which the command line's selection=tchebycheff chooses): how an experiment file chooses it."""
    found = re.fullmatch(r"experiment file .*: (\w+): must be a mapping, got '([\w.-]+)'", message)
    if not found or not (Path(config_dir) / found[1] / f"{found[2]}.yaml").is_file():
        return ""
    group, option = found.groups()
    return f" (an experiment file chooses a group's option in its defaults list: defaults: [{{override /{group}: {option}}}])"


def _list_for_mapping(message: str, experiment: Any, written: Mapping[str, Any] | None) -> str | None:
    """One line for Hydra's words on a list where a mapping is needed (`preference: [2, 1]` in the experiment file,
    surrogate.links=[logit] on the command line), naming the key."""
    override = re.match(r"Error merging override ([\w.]+)=(\[.*\])$", message)
    if override:
        key, value = override.groups()
        nested: dict[str, Any] = {key.split(".")[-1]: [value]}
        for part in reversed(key.split(".")[:-1]):
            nested = {part: nested}
        if schema.list_for_mapping(nested):
            return f"overrides: {key}: must be a mapping, got {value}"
    if "Cannot merge DictConfig with ListConfig" in message and written and (found := schema.list_for_mapping(written)):
        return f"experiment file {experiment}: {found[0]}: must be a mapping, got {found[1]!r}"
    return None


def _unknown_group(message: str, config_dir: str | os.PathLike, experiment: Any) -> str | None:
    """One line for Hydra's words on an experiment file's defaults entry that names no config group: a group's name
    mistyped ("Could not override 'GROUP'. No match in the defaults list"), or an entry without `override /`
    (which Hydra looks up under experiment/), with the closest group and all of them."""
    found = re.search(
        r"Could not override '(?:experiment/)?([\w.]+)(?:@[\w.]*)?'\. No match in the defaults list", message
    )
    bare = re.search(r"Could not find 'experiment/([\w.]+)/([^']+)'", message)
    if not experiment or not (found or bare):
        return None
    groups = sorted(p.name for p in Path(config_dir).iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    group = (found or bare).group(1)
    if group in groups:
        option = bare.group(2) if bare else "OPTION"
        return f"experiment file {experiment}: defaults: an entry for group {group} without `override /`; write '- override /{group}: {option}'"
    hint = schema.closest(group, groups)
    return f"experiment file {experiment}: defaults: '{group}' is not a config group{hint}; the groups: {', '.join(groups)}"


def _override_key(override: str, signs: str = "+~") -> str:
    """The key (or config group) an override names: `+key=value`, `~key` -> key."""
    return override.lstrip(signs).split("=", 1)[0]


def _group_misused(message: str, overrides: Sequence[str]) -> str | None:
    """One line for a config group given on the command line with a '+' where the defaults already choose it
    (+sampler=lhs: "Multiple values for sampler", whose advice is for a defaults list)."""
    plus = re.search(r"Multiple values for ([\w.]+)\.", message)
    given = [o for o in overrides if plus and _override_key(o, "+") == plus.group(1)]
    if not given:
        return None
    return f"overrides: {given[-1]}: the defaults already choose a {plus.group(1)}; write {given[-1].lstrip('+')}"


def _check_group_lists(overrides: Sequence[str], config_dir: str | os.PathLike) -> None:
    """Refuse a config group given a list of options before Hydra sees it (model=[a,b]: "Could not load 'model/b'";
    sampler=[1]: a TypeError)."""
    for override in overrides:
        group = _override_key(override, "+")
        if override.partition("=")[2].lstrip().startswith("[") and (Path(config_dir) / group).is_dir():
            options = sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml"))
            raise ConfigError(
                f"overrides: {override}: a config group takes one option; the options: {', '.join(options)}"
            )


def _unknown_option(message: str, overrides: Sequence[str], experiment: Any) -> str | None:
    """One line for Hydra's 'Could not find GROUP/OPTION' (a config group's option mistyped), naming where it was
    given (the overrides, else the experiment file's defaults list), the closest option and all of them."""
    found = re.search(
        r"Could not find '([\w.]+)/([^']*)' Available options in '[^']*': (.*?) Config search path", message
    )
    if not found:
        return None
    group, option, options = found.group(1), found.group(2), found.group(3).split()
    given = any(_override_key(o) == group for o in overrides)
    where = "overrides" if given or not experiment else f"experiment file {experiment}"
    hint = schema.closest(option, options)
    return f"{where}: {group}: unknown option '{option}'{hint}; the options: {', '.join(options)}"


def _compose(config_dir: Path, overrides: list[str]) -> DictConfig:
    """Hydra's compose of the primary config with the overrides. An override `key=value` of a key the schema allows
    but the defaults leave unset (benchmark.dataset), which Hydra refuses without a '+', is given again as ++key=value."""
    while True:
        try:
            with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base=None):
                cfg = compose(config_name="config", overrides=overrides)
            for override in overrides:  # an argument given where nothing takes it: Hydra added the callable's node
                key = _override_key(override)
                parent = key.rpartition(".")[0]
                if (
                    override.startswith("++")
                    and schema.argument(key)
                    and OmegaConf.select(cfg, f"{parent}._target_") is None
                ):
                    raise ConfigError(f"overrides: {override[2:]}: the config sets no {parent} to give an argument to")
            return cfg
        except ConfigCompositionException as exc:
            refused = re.match(r"Could not override '([\w.]+)'\.", str(exc))
            key = refused.group(1) if refused else None
            plain = [o for o in overrides if key and o.split("=", 1)[0] == key]
            if not plain or not schema.known_key(key):
                raise
            overrides = [f"++{o}" if o in plain else o for o in overrides]


# maps that an override `key={...}` (or +key=, ++key=) replaces whole, where Hydra would merge it into the experiment
# file's (and refuse a key the file lacks): a task left out of a preference weighs 0, so the file's weights must not
# survive a preference given on the command line; `key.item=value` still changes one entry
WHOLE_MAPS = ("preference",)


def _raised_in(exc: BaseException) -> str:
    """The top-level package of the Python frame that raised exc ('' when none is known)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] if tb is not None else ""


def _whole_map_overrides(overrides: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """override -> (key, value) for each override that sets a WHOLE_MAPS key whole, and each that sets an entry of
    one after such an override (applied in Hydra's compose, it would come before the whole map and be lost), in
    order."""
    keys = [_override_key(o, "+") if "=" in o else None for o in overrides]
    first = next((i for i, key in enumerate(keys) if key in WHOLE_MAPS), len(keys))
    chosen = [
        o
        for i, (o, key) in enumerate(zip(overrides, keys))
        if key in WHOLE_MAPS or (i > first and key and key.split(".", 1)[0] in WHOLE_MAPS)
    ]
    parsed = OverridesParser.create().parse_overrides(chosen)
    return {line: (o.key_or_group, o.value()) for line, o in zip(chosen, parsed)}


def _check_preference_entries(
    exp_keys: Mapping[str, Any] | None, overrides: Sequence[str], maps: Mapping[str, tuple[str, Any]]
) -> None:
    """Refuse an override of one task's weight (preference.rot90=2) where the preference is a file: Hydra would
    replace the file's name by that one weight, and the file's other tasks would weigh 0. maps: the overrides'
    _whole_map_overrides."""
    whole = {line: value for line, (key, value) in maps.items() if key in WHOLE_MAPS}
    last = max((i for i, o in enumerate(overrides) if o in whole), default=-1)
    entries = [o for o in overrides[last + 1 :] if _override_key(o).startswith("preference.")]
    preference = whole[overrides[last]] if last >= 0 else (exp_keys or {}).get("preference")
    if entries and isinstance(preference, str):
        key, _, weight = entries[0].partition("=")
        task = _override_key(key).removeprefix("preference.")
        raise ConfigError(
            f"overrides: {entries[0]}: the preference is the file {preference}, and one weight would replace it "
            f"whole; give every weight (preference={{{task}: {weight}, <task>: <weight>, ...}}) or edit the file"
        )


# Hydra's override parse errors -> what to do, before its own words
OVERRIDE_HINTS = {
    "token recognition error": "quote the value, key='value': Hydra reserves characters such as ~ and * in a bare one; ",
    "missing EQUAL": "write key=value; ",
}


def _check_overrides(overrides: Sequence[str]) -> None:
    """Refuse, naming it, an override without a key ('=3', which Hydra reads as a config group and reports obscurely)
    or one Hydra's grammar does not parse (a bare value with a character it reserves: results_dir=~/runs)."""
    parser = OverridesParser.create()
    for item in overrides:
        if not _override_key(item):
            raise ConfigError(f"overrides: {item!r} has no key (write key=value, e.g. seed=3)")
        try:
            parser.parse_override(item)
        except HydraException as exc:
            message = " ".join(str(exc).split()).removeprefix(f"Error parsing override '{item}' ")
            hint = next((h for key, h in OVERRIDE_HINTS.items() if key in message), "")
            if re.search(r"\s[+~]*[\w.]+=", item):  # 'name=a seed=3': two overrides run together
                hint = "separate overrides with commas, [name=a, seed=3]; "
            raise ConfigError(f"overrides: {item!r} does not parse ({hint}{message})") from None


def _as_list(overrides: Sequence[str] | str | None) -> list[str]:
    """Overrides as a list; a string '[a=1, b=[x, y]]' is split at top-level commas only."""
    if overrides is None:
        return []
    if not isinstance(overrides, str):
        return [str(item).strip() for item in overrides]
    text = overrides.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in [*items, current] if item.strip()]


def resolve(cfg: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Fill in derived keys (results folder, the model of the built-in benchmark, the task list)."""
    cfg = dict(cfg)
    name = str(cfg.get("name") or "")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"name: '{name}' is not a valid run name (a folder name, no '/')")
    # the same folder spelled as its files were made (Snakemake keeps its records by the path as written)
    cfg["results"] = records.recorded_spelling(str(Path(cfg["results_dir"]).expanduser() / name))
    model = dict(cfg["model"])
    try:
        adapters.check_unused(model)
        if model.get("adapter") == "transformers":
            transformers_checks.check_block(model.get("transformers") or {}, base_dir)
        if model.get("adapter") is not None:
            model = adapters.resolve(model, base_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    builtin = model.get("pretrained") is None
    model["builtin"] = builtin
    model = _benchmark_model(cfg, model) if builtin else _user_model(model, base_dir)
    cfg["model"] = model
    _check_task_names(model)
    cfg["task_names"] = _select_tasks(cfg.get("tasks"), list(model["tasks"]))
    _check_column_clash(cfg["task_names"], "tasks" if cfg.get("tasks") is not None else _tasks_key(model))
    given = cfg.get("preference")
    cfg["preference"] = _preference(given, base_dir)
    _check_preference(cfg["preference"], list(model["tasks"]), cfg["task_names"], given)
    cfg["preference"] = canonical_preference(cfg["preference"], cfg["task_names"])
    model["merge"] = {**model["merge"], "vector_dtype": model["merge"].get("vector_dtype", "float32")}
    _check_method(cfg)
    cfg["validation"] = _check_validation(cfg)
    try:
        cfg["merge"] = operators.validate(cfg.get("merge"))  # the merge operator (not model.merge)
    except operators.OperatorError as exc:
        raise ConfigError(str(exc)) from exc
    return cfg


def _load_yaml(path: Path, what: str) -> Any:
    """OmegaConf's node of a YAML file; ConfigError with one line saying where the YAML breaks."""
    try:
        return OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{what}: not valid YAML ({where}{exc.problem or exc.context})") from None
    except Exception as exc:  # other yaml errors, and a file that does not decode
        raise ConfigError(f"{what}: not valid YAML ({' '.join(str(exc).split())})") from None


def _preference(value: Any, base_dir: Path) -> dict[str, Any]:
    """The preference mapping, or the YAML file (task: weight) it names, relative to the experiment file."""
    if isinstance(value, dict):
        return dict(value)
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        found = "a folder, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"preference file {value}: {found} (looked for {path})")
    return read_preference_file(path)


def read_preference_file(path: Path) -> dict[str, Any]:
    """A preference file's task: weight mapping (the weights as written); ConfigError naming the file."""
    loaded = OmegaConf.to_container(_load_yaml(path, f"preference file {path}"))
    if not isinstance(loaded, dict):
        raise ConfigError(f"preference file {path}: must be a mapping task: weight")
    if not loaded:  # equal weights without a word: leave `preference` out for those
        raise ConfigError(f"preference file {path}: empty; give its task: weight lines")
    if list(loaded) == ["preference"] and isinstance(loaded["preference"], dict):
        raise ConfigError(
            f"preference file {path}: holds `preference:` with the weights under it; write its task: weight lines "
            "at the top level"
        )
    return loaded


def _check_preference(preference: Mapping[str, Any], tasks: list[str], merged: list[str], given: Any) -> None:
    """Refuse a preference naming a task the model lacks (with the closest name), or one `tasks` leaves out of the
    merge, or weights normalize_preference refuses; a preference file is named."""
    where = f"preference file {given}: " if isinstance(given, str) else ""
    for task in preference or {}:
        if task not in tasks:
            raise ConfigError(where + schema.unknown_task(task, tasks, merged))
        if task not in merged:
            raise ConfigError(
                f"{where}preference weighs task {task!r}, which `tasks` leaves out of the merge (it merges "
                f"{', '.join(merged)}); drop its weight or add it to `tasks`"
            )
    try:
        schema.checked_weights(preference, merged)
    except PreferenceError as exc:
        raise ConfigError(where + str(exc)) from exc


def _unweighted(merged: Sequence[str], given: Any, base_dir: Path) -> str | None:
    """The warning for merged tasks a preference that names some gives no weight (0: the pick ignores them; a task
    added to a run whose preference was written before it, say); None where it names every one (0 too), or none.
    given: the preference as the config gives it (a mapping, or a file's name relative to base_dir)."""
    preference = _preference(given, base_dir) if given else {}
    unnamed = [task for task in merged if task not in preference]
    if not preference or not unnamed:
        return None
    where = f"preference file {given}" if isinstance(given, str) else "preference"
    return (
        f"{where}: gives no weight to {', '.join(unnamed)}, which the run merges: weight 0, the pick ignores "
        f"{'its' if len(unnamed) == 1 else 'their'} metrics; give {'it' if len(unnamed) == 1 else 'each'} a weight "
        "(0 to say so)"
    )


def canonical_preference(preference: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, float]:
    """One spelling of each preference, so that the stages' params, and so what reruns, see the weights, not how they
    were written (keys reordered, weights scaled, a zero weight given, 1 for 1.0): the weights normalized over the
    merged tasks, in their order, without the zero ones; {} for equal weights, as the default writes them."""
    weights = schema.checked_weights(preference, tasks)
    if len(set(weights.values())) == 1:
        return {}
    return {task: weight for task, weight in weights.items() if weight > 0}


def _check_method(cfg: dict[str, Any]) -> None:
    """method and the bayesian schedule, checked before any job runs."""
    try:
        groups.structure(cfg["method"], len(cfg["task_names"]))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    bayes = cfg["bayesian"]
    if cfg["method"] == "bayesian":
        try:
            bayesian.check_cfg(bayesian.with_bins(bayes, 2, len(cfg["task_names"])), len(cfg["task_names"]))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


def _check_validation(cfg: dict[str, Any]) -> dict[str, Any]:
    """The validation block, checked (grid size and method only when enabled); see mapmerge.core.groundtruth."""
    try:
        return validation_config.check_cfg(cfg.get("validation"), cfg["method"], len(cfg["task_names"]))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _benchmark_model(cfg: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    bench = cfg["benchmark"]
    tasks = bench["tasks"]
    if isinstance(tasks, int):
        if not 2 <= tasks <= len(TASK_NAMES):
            raise ConfigError(f"benchmark.tasks: {tasks} is out of range 2..{len(TASK_NAMES)}")
        tasks = list(TASK_NAMES[:tasks])
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        raise ConfigError(f"benchmark.tasks: unknown task '{unknown[0]}'; known: {', '.join(TASK_NAMES)}")
    _check_twice(tasks, "benchmark.tasks")
    bench = {**bench, "tasks": list(tasks), "seed": cfg["seed"]}
    source = _benchmark_source(bench)
    cfg["benchmark"] = bench
    layout = Layout(cfg["results"])
    model["builder"] = {"_target_": BENCHMARK_BUILDER, "width": bench["width"]}
    model["pretrained"] = str(layout.checkpoint("pretrained"))
    model["tasks"] = {
        t: {
            "checkpoint": str(layout.checkpoint(t)),
            "evaluator": {
                "_target_": BENCHMARK_EVALUATOR,
                "task": t,
                "seed": cfg["seed"],
                "test_fraction": bench["test_fraction"],
                **source,
            },
        }
        for t in tasks
    }
    if model["merge"]["exclude"] == []:
        model["merge"] = {**model["merge"], "exclude": ["head.*"]}
    return model


def _benchmark_source(bench: dict[str, Any]) -> dict[str, Any]:
    """The evaluators' image keys for benchmark.dataset (none for the digits); fashion's files must exist."""
    dataset = bench.get("dataset", "digits")
    if dataset == "digits":
        return {}
    subset = bench.get("subset")
    if subset is None:
        raise ConfigError(
            "benchmark.subset: required with benchmark.dataset=fashion (images of Fashion-MNIST used, 100..60000)"
        )
    data_dir = str(Path(bench.get("data_dir") or fashion.DATA_DIR).expanduser())
    try:
        fashion.files("train", data_dir)
    except ArtifactError as exc:
        raise ConfigError(f"benchmark.data_dir: {exc}") from exc
    return {"dataset": dataset, "subset": subset, "data_dir": data_dir}


def _user_model(model: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    def path(value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: must be a file path")
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base_dir / p).resolve())

    builder = model.get("builder")
    if not isinstance(builder, dict) or "_target_" not in builder:
        raise ConfigError("model.builder: must be a mapping with a _target_ (an importable callable)")
    tasks = model.get("tasks")
    if not isinstance(tasks, dict) or len(tasks) < 2:
        raise ConfigError("model.tasks: must map at least two task names to {checkpoint, evaluator}")
    model["pretrained"] = path(model["pretrained"], "model.pretrained")
    model["python_path"] = [path(p, "model.python_path") for p in model.get("python_path") or []]
    resolved = {}
    for task, spec in tasks.items():
        if not isinstance(spec, dict) or "checkpoint" not in spec or "evaluator" not in spec:
            raise ConfigError(f"model.tasks.{task}: needs checkpoint and evaluator")
        if not isinstance(spec["evaluator"], dict) or "_target_" not in spec["evaluator"]:
            raise ConfigError(f"model.tasks.{task}.evaluator: must be a mapping with a _target_")
        resolved[str(task)] = {**spec, "checkpoint": path(spec["checkpoint"], f"model.tasks.{task}.checkpoint")}
    model["tasks"] = resolved
    return model


# a task's name is a file name and a wildcard of the workflow's rules (the Snakefile's wildcard_constraints)
TASK_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def _tasks_key(model: Mapping[str, Any]) -> str:
    """The key that lists the model's tasks."""
    where = {"transformers": "model.transformers.tasks", "openclip": "model.openclip.tasks"}
    return where.get(model.get("adapter"), "model.tasks")


def _check_task_names(model: Mapping[str, Any]) -> None:
    """Refuse a task name that cannot name a file or match the rules' wildcard ('stripes 60', 'a/b'): Snakemake
    would stop with a MissingInputException after the checks."""
    for task in model["tasks"]:
        if not TASK_NAME.fullmatch(str(task)):
            raise ConfigError(
                f"{_tasks_key(model)}: task name {str(task)!r} may hold only ASCII letters, digits, '_', '-' and '.' "
                "(not first): it names the task's files"
            )


def _check_column_clash(tasks: list[str], key: str) -> None:
    """Refuse two tasks merged together of which one is named as the other and `_lo` or `_hi`: the tables' column
    of the one's interval bound would be the other's value (`accuracy_a_lo`, mapmerge.core.metrics.suffixes)."""
    names = set(tasks)
    for task in tasks:
        for end in ("_lo", "_hi"):
            if task.endswith(end) and (other := task.removesuffix(end)) in names:
                raise ConfigError(
                    f"{key}: task names {other!r} and {task!r} clash: a table's column accuracy_{task} would be both "
                    f"the bound of {other!r}'s interval and {task!r}'s value; rename one of them"
                )


def _select_tasks(selection: Any, available: list[str]) -> list[str]:
    """The tasks to merge: `tasks` (a selection), else every task of the model (a user model's has two or more)."""
    if selection is None:
        if len(available) < 2:
            raise ConfigError(
                f"benchmark.tasks: MAP merges at least two tasks (its front is their trade-offs), got "
                f"{len(available)}: {', '.join(available) or 'none'}"
            )
        return available
    if not isinstance(selection, list) or len(selection) < 2:
        raise ConfigError("tasks: must be null or a list of at least two task names")
    unknown = [t for t in selection if t not in available]
    if unknown:
        raise ConfigError(f"tasks: unknown task '{unknown[0]}'; the model has: {', '.join(available)}")
    _check_twice(selection, "tasks")
    return [str(t) for t in selection]


def _check_twice(tasks: Sequence[str], key: str) -> None:
    """Refuse a list of tasks that names one twice (a copy-paste slip: one task the fewer, or a task merged twice)."""
    twice = next((t for n, t in enumerate(tasks) if t in tasks[:n]), None)
    if twice is not None:
        raise ConfigError(f"{key}: names task '{twice}' twice")


# Per-stage sub-configs: each rule gets only these as params, so a change reruns that stage and later ones.

# The module of mapmerge.stages that runs each set of params (mapmerge.run.registry: the rules that take
# them). A stage's params carry its code fingerprint: the source of every mapmerge module that module can
# import, and of the modules the params' `_target_`s name (builder, evaluators; mapmerge.run.fingerprint).
# A code change reruns the stages that can run it, and then, through their files, what follows them.
# "evaluate": the evaluations of the reference models, the chosen merge and the validation grid; "evaluate_group":
# those of a group's samples and rounds (with the class scores where surrogate.scores fits them).
STAGE_ENTRY = stage_modules()


def code_version(stage: str, params: dict[str, Any] | None = None, python_path: Sequence[str] = ()) -> str:
    """The fingerprint of the code a stage runs: what its stage module imports, and its params' `_target_`s (under python_path)."""
    return fingerprint.stage_fingerprint(f"mapmerge.stages.{STAGE_ENTRY[stage]}", params, python_path)


def stage_config(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    """The resolved sub-config one stage depends on (its params), plus its code fingerprint (`code`)."""
    model = cfg["model"]
    tasks = cfg["task_names"]
    evaluation_model = {
        "builder": model["builder"],
        "merge": model["merge"],
        "python_path": model["python_path"],
        "evaluators": {t: model["tasks"][t]["evaluator"] for t in tasks},
        "dtype": cfg["evaluation"]["dtype"],
        "placement": cfg["evaluation"]["placement"],
    }
    # the merge operator, and the seed where it draws random numbers (else a seed change would rerun)
    merge_op = operators.validate(cfg.get("merge"))
    operator = {
        "merge_operator": merge_op,
        "merge_seed": cfg["seed"] if merge_op["operator"] in operators.SEEDED else None,
    }
    evaluate = {"model": evaluation_model, **operator}
    method, objective = cfg["method"], cfg["optimizer"]["objective"]
    sampler = cfg["sampler"]
    # what a fit depends on: not the level of the intervals drawn from it (surrogate.interval)
    fitting = {k: v for k, v in cfg["surrogate"].items() if k != "interval"}
    if method == "bayesian":
        sampler = bayesian.initial_sampler(sampler, cfg["bayesian"], len(tasks))
    if stage in validation_config.STAGES:
        params = validation_config.stage_params(stage, cfg, evaluation_model, operator)
        return {**params, "code": code_version(stage, params, model["python_path"])}
    parts: dict[str, Any] = {
        "prepare_benchmark": {"benchmark": cfg["benchmark"]},
        "extract_task_vector": {"merge": model["merge"]},
        "task_vector_table": {},
        "collect_metrics": {},
        "ledger": {},
        "evaluate": evaluate,
        # a group's design and rounds: the class scores too, where the surrogate fits them
        "evaluate_group": {**evaluate, "scores": cfg["surrogate"]["scores"]},
        "plan_level": {
            "method": method,
            "tasks": tasks,
            **(
                {"nested": cfg["nested"], "preference": cfg["preference"], "objective": objective}
                if method == "nested"
                else {}
            ),
        },
        "sample_coefficients": {"sampler": sampler, "seed": cfg["seed"]},
        # not the number of rounds (more rounds keep the earlier ones) nor the initial design's size (its own stage)
        "propose_round": {
            "bayesian": {k: v for k, v in cfg["bayesian"].items() if k not in ("rounds", "initial_factor")},
            # Bayesian rounds: the quadratic (not its correction, nor the class scores)
            "surrogate": {k: v for k, v in fitting.items() if k not in ("correction", "scores")},
            "sampler": cfg["sampler"],
            "objective": objective,
            "seed": cfg["seed"],
        },
        # not the number of rounds (more rounds keep the earlier ones)
        "refine_round": {
            "refine": {k: v for k, v in cfg["refine"].items() if k != "rounds"},
            # no LOO, no intervals
            "surrogate": {k: cfg["surrogate"][k] for k in ("links", "missing", "correction", "scores")},
            "optimizer": cfg["optimizer"],
            "selection": cfg["selection"],
            "preference": cfg["preference"],
            "seed": cfg["seed"],
        },
        "fit_surrogate": {"surrogate": fitting},
        # a nested group's objectives are preference-weighted means of its tasks; plain MAP's front does not depend on it
        "pareto_front": {
            "optimizer": cfg["optimizer"],
            "seed": cfg["seed"],
            "interval": cfg["surrogate"]["interval"],
            **({"preference": cfg["preference"]} if method == "nested" else {}),
        },
        # refined: the merge is the best measured point (mapmerge.stages.merge_group.measured_choice)
        "merge_group": {
            "selection": cfg["selection"],
            "preference": cfg["preference"],
            "objective": cfg["optimizer"]["objective"],
            **operator,
            **({"refined": True, "interval": cfg["surrogate"]["interval"]} if cfg["refine"]["rounds"] else {}),
        },
        "aggregate": {
            "objective": objective,
            "preference": cfg["preference"],
            "interval": cfg["surrogate"]["interval"],
        },
        "report_tables": {},
    }
    return {**parts[stage], "code": code_version(stage, parts[stage], model["python_path"])}


def round_params(params: dict[str, Any], number: int) -> dict[str, Any]:
    """Refinement round `number`'s params (1: the first refinement round) out of refine_round's stage_config: its
    pick's refine.trust_radius where the round takes it in the trust region (number >= refine.trust_from), else
    null, and no trust_from, so that a change of either reruns only the rounds whose picks it changes."""
    settings = {k: v for k, v in params["refine"].items() if k != "trust_from"}
    if number < params["refine"]["trust_from"]:
        settings["trust_radius"] = None
    return {**params, "refine": settings}
