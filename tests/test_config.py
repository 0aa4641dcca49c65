import os
import re
from pathlib import Path

import pytest

from mapmerge.run import config as config_module
from mapmerge.run.config import STAGE_ENTRY, ConfigError, canonical_preference, load_config, round_params, stage_config
from mapmerge.run.preflight import check_results_folder

STAGES = list(STAGE_ENTRY)


def load(repo: Path, **kwargs):
    return load_config(repo / "config", **kwargs)


def test_default_config_is_the_builtin_benchmark(repo):
    cfg = load(repo)
    assert cfg["results"] == "results/demo"
    assert cfg["model"]["builtin"] is True
    assert len(cfg["task_names"]) == 4
    assert cfg["model"]["merge"]["exclude"] == ["head.*"]
    assert cfg["model"]["pretrained"] == "results/demo/checkpoints/pretrained.safetensors"


def test_overrides_and_group_selection(repo):
    cfg = load(repo, overrides="[name=trial2, benchmark.tasks=2, sampler=lhs, surrogate.links.accuracy=identity]")
    assert cfg["results"] == "results/trial2"
    assert cfg["sampler"]["kind"] == "lhs"
    assert cfg["surrogate"]["links"]["accuracy"] == "identity"
    assert len(cfg["task_names"]) == 2


def test_experiment_file_then_overrides(repo, tmp_path):
    (tmp_path / "sub").mkdir()
    exp = tmp_path / "sub" / "exp.yaml"
    exp.write_text(
        "name: mine\n"
        "model:\n"
        "  builder: {_target_: mymodel.build, hidden: 3}\n"
        "  pretrained: ckpt/pre.pt\n"
        "  python_path: [.]\n"
        "  tasks:\n"
        "    a: {checkpoint: ckpt/a.pt, evaluator: {_target_: mymodel.Eval, task: a}}\n"
        "    b: {checkpoint: /abs/b.pt, evaluator: {_target_: mymodel.Eval, task: b}}\n"
        "sampler: {factor: 2.0}\n"
    )
    cfg = load(repo, experiment=exp, overrides=["sampler.factor=3.0"], check_files=False)  # paths only: no files there
    assert cfg["name"] == "mine" and cfg["model"]["builtin"] is False
    assert cfg["model"]["pretrained"] == str(tmp_path / "sub" / "ckpt" / "pre.pt")
    assert cfg["model"]["tasks"]["b"]["checkpoint"] == "/abs/b.pt"
    assert cfg["model"]["python_path"] == [str(tmp_path / "sub")]
    assert cfg["model"]["builder"] == {"_target_": "mymodel.build", "hidden": 3}
    assert cfg["sampler"]["factor"] == 3.0  # the override wins over the experiment
    assert cfg["sampler"]["kind"] == "sobol"  # group defaults stay under the experiment
    assert cfg["task_names"] == ["a", "b"]


def user_model(tasks: list[str]) -> str:
    """An experiment file of a user's model with these tasks (its files need not exist: check_files=False)."""
    lines = ["model:", "  builder: {_target_: mymodel.build}", "  pretrained: pre.pt", "  tasks:"]
    lines += [f"    '{t}': {{checkpoint: t{i}.pt, evaluator: {{_target_: mymodel.Eval}}}}" for i, t in enumerate(tasks)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("task", ["stripes 60", "a/b", ".hidden", "strïpes"])
def test_a_task_name_that_cannot_name_a_file_is_refused(repo, tmp_path, task):
    """A task's name names its files and matches the rules' wildcard: 'stripes 60' passed every check and Snakemake
    then stopped with a MissingInputException of 25 lines."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(user_model(["a", task]))
    with pytest.raises(ConfigError) as info:
        load(repo, experiment=exp, check_files=False)
    assert str(info.value) == (
        f"model.tasks: task name {task!r} may hold only ASCII letters, digits, '_', '-' and '.' (not first): it names "
        "the task's files"
    )


@pytest.mark.parametrize(
    "tasks, chosen", [(["a", "a_lo", "b"], None), (["b_hi", "a", "b"], None), (["a", "a_lo", "b"], ["a_lo", "a"])]
)
def test_task_names_whose_columns_clash_are_refused(repo, tmp_path, tasks, chosen):
    """A task named as another and _lo or _hi: its value's column would be the other's interval bound (accuracy_a_lo);
    it passed every check, evaluated everything, fitted its surrogate without a task and failed in pareto_front.
    Refused before any job; merging only one of the two is not."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(user_model(tasks) + (f"tasks: [{', '.join(chosen)}]\n" if chosen else ""))
    clash = next(t for t in tasks if t.endswith(("_lo", "_hi")))
    with pytest.raises(ConfigError) as info:
        load(repo, experiment=exp, check_files=False)
    assert str(info.value) == (
        f"{'tasks' if chosen else 'model.tasks'}: task names {clash[:-3]!r} and {clash!r} clash: a table's column "
        f"accuracy_{clash} would be both the bound of {clash[:-3]!r}'s interval and {clash!r}'s value; rename one of them"
    )
    exp.write_text(user_model(tasks) + f"tasks: [{clash}, {next(t for t in tasks if t not in (clash, clash[:-3]))}]\n")
    assert load(repo, experiment=exp, check_files=False)["task_names"][0] == clash


def test_a_model_of_one_task_is_refused(repo, tmp_path):
    """MAP's front is the trade-offs between tasks: one task (the built-in benchmark's list, or a user model's) is
    refused before any job, as `tasks` of one is."""
    with pytest.raises(ConfigError, match=r"^benchmark.tasks: MAP merges at least two tasks .*, got 1: rot90$"):
        load(repo, overrides=["benchmark.tasks=[rot90]"], check_files=False)
    exp = tmp_path / "exp.yaml"
    exp.write_text(user_model(["a"]))
    with pytest.raises(ConfigError, match=r"^model.tasks: must map at least two task names"):
        load(repo, experiment=exp, check_files=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["benchmark.tasks=[rot90, nope]"], "benchmark.tasks: unknown task 'nope'"),
        (["benchmark.tasks=1"], "benchmark.tasks: 1 is out of range"),
        # an evaluation job uses one device; the SLURM profile gave 2 asked for as 1, without a word
        (["resources.evaluate.gpu=2"], r"^resources.evaluate.gpu: must be an integer in \[0, 1\], got 2$"),
        # optional, with a default: null passed the schema and failed the Bayesian check
        (["method=bayesian", "bayesian.max_bins=null"], r"^bayesian.max_bins: must be an integer, got None$"),
        (["tasks=[rot90, zzz]"], "tasks: unknown task 'zzz'"),
        (["tasks=[rot90, invert, rot90]"], "^tasks: names task 'rot90' twice$"),
        (["benchmark.tasks=[rot90, rot90]"], "^benchmark.tasks: names task 'rot90' twice$"),
        (["name=a/b"], "name: 'a/b' is not a valid run name"),
        (["sampler=nonexistent"], r"^overrides: sampler: unknown option 'nonexistent'; the options: lhs, sobol$"),
        (
            ["model=openclp"],
            r"^overrides: model: unknown option 'openclp' \(did you mean `openclip`\?\); the options: ",
        ),
        (["model.pretrained=x.pt"], "model.builder: must be a mapping"),
        (["sampler="], r"^overrides: sampler: unknown option ''; the options: lhs, sobol$"),
        (
            ["model=[a,b]"],
            r"^overrides: model=\[a,b\]: a config group takes one option; the options: default, openclip, ",
        ),
        (["+sampler=lhs"], r"^overrides: \+sampler=lhs: the defaults already choose a sampler; write sampler=lhs$"),
        (["+preference.nope=1"], "preference names unknown task 'nope'"),
        (["+preference.rot90=-1"], "preference weight for task 'rot90'"),
        (
            ["sampler=[1]"],
            r"^overrides: sampler=\[1\]: a config group takes one option; the options: lhs, sobol$",
        ),  # a TypeError
        (["surrogate.links=[logit]"], r"^overrides: surrogate\.links: must be a mapping, got \[logit\]$"),
        (["resources.evalute.threads=2"], r"^config: resources\.evalute: unknown key \(did you mean `evaluate`\?\)$"),
        (["seed=18446744073709551616"], r"^seed: must be an integer in \[0, 2\*\*32\), got 18446744073709551616$"),
        (["sampler.upper=1e300"], r"^sampler\.upper: must be in \[-10, 10\], got 1e\+300$"),  # the jobs' models: NaN
        (["refine.limit=1e301"], r"^refine\.limit: must be in \(0, 10\], got 1e\+301$"),
        # each finite, but their sum is not: normalised, every weight would be 0
        (["+preference={rot90:1e308,invert:1e308}"], r"^preference weights sum past the largest float: "),
        (["preference.rot9=1"], "preference names unknown task 'rot9'"),
        (
            ["benchmark.tasks=4", "tasks=[rot90,invert]", "preference.mod3=1"],
            r"^preference weighs task 'mod3', which `tasks` leaves out of the merge \(it merges rot90, invert\); drop ",
        ),
        (["refine.rouns=6"], r"config: refine.rouns: unknown key \(did you mean `rounds`\?\)"),  # not Hydra's "use +"
        (["=3"], r"overrides: '=3' has no key \(write key=value"),
        (["seed=1", "+=3"], r"overrides: '\+=3' has no key"),
        (
            ["name=a benchmark.tasks=2"],
            r"^overrides: 'name=a benchmark.tasks=2' does not parse \(separate overrides with commas, \[name=a, seed=3\]; ",
        ),
        (["nme=x"], r"config: nme: unknown key \(did you mean `name`\?\)"),
        (["rounds=3"], r"^config: rounds: unknown key \(did you mean `bayesian.rounds` or `refine.rounds`\?\)$"),
        (
            ["+pop_size=10"],
            r"^pop_size: unknown key \(did you mean `optimizer.pop_size`\?\)$",
        ),  # a section's key one level up
        (
            ["+model.openclip.root=ckpts"],
            r"model.openclip: is set but model.adapter is None; choose it with model=openclip",
        ),
        (["model.adapter=keras"], "model.adapter: must be one of transformers, openclip, got 'keras'"),
        # sizes nobody means: they would run for days or fill the memory
        (["optimizer.pop_size=100000000"], r"^optimizer.pop_size: must be an integer in \[1, 100000\], got 100000000$"),
        (["optimizer.n_gen=1000000000"], r"^optimizer.n_gen: must be an integer in \[1, 100000\], got 1000000000$"),
        (
            ["optimizer.ref_partitions=100000"],
            r"^optimizer.ref_partitions: 100000 gives 166,676,666,850,001 reference directions for 4 objectives, past "
            r"100,000 \(NSGA-III keeps a point per direction\); lower it, or null$",
        ),
        (["evaluation.threads=100000"], r"^evaluation.threads: must be an integer in \[0, 1024\], got 100000$"),
        (["resources.light.threads=5000"], r"^resources.light.threads: must be an integer in \[1, 1024\], got 5000$"),
        (["optimizer.grid_check_resolution=100000"], r"^optimizer.grid_check_resolution: must be an integer in \[2, "),
    ],
)
def test_bad_config_gives_one_line_error(repo, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(repo, overrides=overrides)
    assert "\n" not in str(info.value)


def test_a_fault_is_named_where_the_key_was_set(repo, tmp_path):
    """The experiment file is named for a bad value written in it, not for one an override replaced (name=5 was
    blamed on the file that said `name: mine`), nor for a rule between keys it does not set."""
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: mine\nsampler: {factor: -1}\n")
    with pytest.raises(ConfigError) as info:
        load(repo, experiment=exp)
    assert str(info.value) == f"experiment file {exp}: sampler.factor: must be > 0, got -1"
    for overrides, message in (
        (["name=5", "sampler.factor=2"], "name: must be a string, got 5"),
        (["sampler={factor: -2}"], "sampler.factor: must be > 0, got -2"),
        (["sampler.factor=2", "refine.extend=0.5", "refine.limit=1"], "refine.limit: 1 leaves no room past "),
    ):
        with pytest.raises(ConfigError) as info:
            load(repo, experiment=exp, overrides=overrides)
        assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("text, key", [("preference: [2, 1, 1]\n", "preference"), ("model: [1]\n", "model")])
def test_a_list_for_a_mapping_in_the_experiment_file_is_named(repo, tmp_path, text, key):
    """Hydra's words were 'Cannot merge DictConfig with ListConfig', naming no key."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(repo, experiment=exp)
    assert str(info.value).startswith(f"experiment file {exp}: {key}: must be a mapping, got [")


def test_missing_experiment_file(repo, tmp_path):
    with pytest.raises(ConfigError, match="nothere.yaml: not found"):
        load(repo, experiment=tmp_path / "nothere.yaml")
    with pytest.raises(ConfigError, match=r": a folder, not a file \(looked for"):
        load(repo, experiment=tmp_path)
    (tmp_path / "empty.yaml").write_text("# my experiment, to fill in\n")  # it ran the built-in benchmark's demo
    with pytest.raises(ConfigError, match=r"^experiment file .*empty.yaml: empty; give its config keys"):
        load(repo, experiment=tmp_path / "empty.yaml")


@pytest.mark.parametrize(
    "text, where",
    [
        ("model:\n  pretrained: a.pt\n tasks: [x\n", r"line 3, column 2: expected <block end>"),
        ("sampler:\n\tfactor: 2\n", r"line 2, column 1: found character '\\t' that cannot start any token"),
        ("preference: [1\n", r"line 2, column 1: expected ',' or ']'"),
    ],
)
def test_broken_yaml_gives_one_line_saying_where(repo, tmp_path, text, where):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load(repo, experiment=tmp_path / "bad.yaml")
    assert "\n" not in str(info.value)
    assert re.search(rf"^experiment file .*bad\.yaml: not valid YAML \({where}", str(info.value)), str(info.value)


@pytest.mark.parametrize(
    "defaults, message",
    [
        ("[/config, _self_]", "exp.yaml: its defaults list includes the primary config again"),
        (
            "[override /modl: openclip]",
            r"^experiment file .*exp.yaml: defaults: 'modl' is not a config group \(did you mean `model`\?\); "
            r"the groups: benchmark, evaluation, merge, model, optimizer, resources, sampler, selection, surrogate$",
        ),
        ("[override modl: openclip]", r"^experiment file .*exp.yaml: defaults: 'modl' is not a config group \(did you"),
        (
            "[override zzz: openclip]",
            r"^experiment file .*exp.yaml: defaults: 'zzz' is not a config group; the groups: ",
        ),
        (
            "[model: openclip]",
            r"^experiment file .*exp.yaml: defaults: an entry for group model without `override /`; "
            r"write '- override /model: openclip'$",
        ),
        ("[override model: openclip]", r"group model without `override /`; write '- override /model: OPTION'$"),
        (
            "[override /model: openclp]",
            r"^experiment file .*exp.yaml: model: unknown option 'openclp' \(did you mean `openclip`\?\); the options: ",
        ),
        ("3", r"config: Invalid defaults list in '.*exp.yaml', defaults must be a list"),
    ],
)
def test_bad_experiment_defaults_list_gives_one_line_error(repo, tmp_path, defaults, message):
    (tmp_path / "exp.yaml").write_text(f"defaults: {defaults}\nname: bad\n")
    with pytest.raises(ConfigError, match=message) as info:
        load(repo, experiment=tmp_path / "exp.yaml")
    assert "\n" not in str(info.value)


def test_a_value_error_of_mapmerge_itself_is_not_read_as_a_config_error(repo, monkeypatch):
    """Only Hydra's and OmegaConf's ValueErrors (a malformed defaults list) become one-line config errors; a bug
    in mapmerge's own code around compose keeps its type and traceback."""

    def broken(overrides):
        raise ValueError("a bug in mapmerge")

    monkeypatch.setattr(config_module, "_whole_map_overrides", broken)
    with pytest.raises(ValueError, match="a bug in mapmerge") as info:
        load(repo)
    assert not isinstance(info.value, ConfigError)


def changed_stages(repo, override, method="map", refine=2):
    base = load(repo, overrides=[f"method={method}", f"refine.rounds={refine}"])
    other = load(repo, overrides=[f"method={method}", f"refine.rounds={refine}", override])
    used = [s for s in STAGES if (s != "propose_round" or method == "bayesian") and (s != "refine_round" or refine)]
    return {s for s in used if stage_config(base, s) != stage_config(other, s)}


def test_each_stage_sees_only_its_own_config(repo):
    # a change reruns its own stage (and, through the files, what follows), nothing before it; the refinement
    # rounds (refine.rounds = 2 by default) follow the front and the pick, so what changes those reruns them
    assert changed_stages(repo, "surrogate.loo=false") == {"fit_surrogate"}
    assert changed_stages(repo, "optimizer.n_gen=10") == {"pareto_front", "refine_round"}
    assert changed_stages(repo, "+preference.rot90=2") == {"merge_group", "aggregate", "refine_round"}
    assert changed_stages(repo, "selection=tchebycheff") == {"merge_group", "refine_round"}
    assert changed_stages(repo, "sampler.factor=2") == {"sample_coefficients"}
    assert changed_stages(repo, "evaluation.device=cpu") == set()
    assert changed_stages(repo, "evaluation.on_error=record") == set()
    assert changed_stages(repo, "evaluation.cache=false") == set()
    assert changed_stages(repo, "surrogate.missing=drop") == {"fit_surrogate", "refine_round"}
    # the class scores: kept by the group's evaluations (not the reference models'), fitted by the rounds and the fit;
    # Bayesian MAP's proposals use the accuracy's own quadratic either way
    assert changed_stages(repo, "surrogate.scores=none") == {"evaluate_group", "fit_surrogate", "refine_round"}
    assert changed_stages(repo, "surrogate.scores=none", method="bayesian") == {
        "evaluate_group",
        "fit_surrogate",
        "refine_round",
    }
    # without refinement rounds a preference or a selection rule costs no evaluation
    assert changed_stages(repo, "+preference.rot90=2", refine=0) == {"merge_group", "aggregate"}
    assert changed_stages(repo, "selection=tchebycheff", refine=0) == {"merge_group"}


def test_a_value_written_another_way_reruns_nothing(repo):
    """The same value spelled otherwise gives every stage the same params: an integer for a float key (the params held
    1 where the run had 1.0, and 18 jobs ran again, then 18 more going back), and a preference reordered, scaled, with
    a zero weight or its equal weights written out (17 jobs: the rounds and what follows)."""
    assert changed_stages(repo, "sampler.upper=1") == set()
    assert changed_stages(repo, "sampler.lower=0") == set()
    assert changed_stages(repo, "refine.extend=0") == set()
    assert changed_stages(repo, "preference={rot90: 1, invert: 1, flip_parity: 1, mod3: 1}") == set()
    weighted = load(repo, overrides=["preference={rot90: 2, invert: 1}"])
    for spelling in ("{invert: 1, rot90: 2}", "{rot90: 4.0, invert: 2, mod3: 0}", "{invert: 0.5, rot90: 1.0}"):
        other = load(repo, overrides=[f"preference={spelling}"])
        assert [stage_config(other, s) for s in STAGES] == [stage_config(weighted, s) for s in STAGES], spelling
    assert weighted["preference"] == {"rot90": 2 / 3, "invert": 1 / 3}  # normalized, in the tasks' order
    assert load(repo, overrides=["preference={flip_parity: 3}"])["preference"] == {"flip_parity": 1.0}


def test_method_settings_reach_only_their_stages(repo):
    # more rounds keep the earlier ones: no stage's params change, the DAG only grows
    assert changed_stages(repo, "bayesian.rounds=5", "bayesian") == set()
    assert changed_stages(repo, "refine.rounds=4") == set()
    assert changed_stages(repo, "refine.points=5") == {"refine_round"}
    assert changed_stages(repo, "bayesian.lam=2", "bayesian") == {"propose_round"}
    assert changed_stages(repo, "bayesian.initial_factor=2", "bayesian") == {"sample_coefficients"}
    # nested: a merged model's weight and metric follow the preference at every level
    assert changed_stages(repo, "+preference.rot90=2", "nested") == {
        "plan_level",
        "pareto_front",
        "merge_group",
        "aggregate",
        "refine_round",
    }
    assert changed_stages(repo, "nested.pairing=cosine", "nested") == {"plan_level"}
    with pytest.raises(ConfigError, match="has no effect: method is map, and only method=nested reads nested"):
        changed_stages(repo, "nested.pairing=cosine")  # plain MAP does not pair


def test_a_trust_region_change_reaches_only_the_rounds_whose_picks_it_changes(repo):
    def rounds(*overrides):
        params = stage_config(load(repo, overrides=list(overrides)), "refine_round")
        return [round_params(params, n) for n in range(1, 7)]

    default = rounds()
    assert [r["refine"]["trust_radius"] for r in default] == [None, None, None, 0.1, 0.1, 0.1]  # from round 4
    assert not any("trust_from" in r["refine"] for r in default)

    def changed(*overrides):
        return [n for n, (a, b) in enumerate(zip(default, rounds(*overrides)), 1) if a != b]

    assert changed("refine.trust_from=2") == [2, 3]
    assert changed("refine.rounds=6", "refine.trust_from=6") == [4, 5]
    assert changed("refine.trust_radius=0.2") == [4, 5, 6]
    assert changed("refine.trust_radius=null") == [4, 5, 6]
    assert changed("refine.rounds=8") == []  # more rounds keep the earlier ones
    assert changed("refine.order=gap") == [1, 2, 3, 4, 5, 6]


def test_stage_code_version_is_part_of_params(repo):
    assert "code" in stage_config(load(repo), "fit_surrogate")


def test_overrides_string_with_nested_lists(repo):
    # what snakemake passes for --config overrides='[name=x, benchmark.tasks=[rot90, invert]]'
    cfg = load(repo, overrides="[name=x, benchmark.tasks=[rot90, invert], tasks=[invert, rot90]]")
    assert cfg["benchmark"]["tasks"] == ["rot90", "invert"]
    assert cfg["task_names"] == ["invert", "rot90"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluation.on_error=skip", "evaluation.on_error: must be one of fail, record, got 'skip'"),
        ("surrogate.missing=ignore", "surrogate.missing: must be one of error, drop, got 'ignore'"),
        ("surrogate.scores=true", "surrogate.scores: must be one of auto, required, none, got True"),
    ],
)
def test_fault_policies_are_checked(repo, override, message):
    with pytest.raises(ConfigError, match=message):
        load(repo, overrides=[override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("selection.method=tchebychef", "got 'tchebychef' (did you mean `tchebycheff`?)"),
        ("surrogate.links.accuracy=sigmod", "got 'sigmod' (did you mean `sigmoid`?)"),
        ("evaluation.dtype=fp16", "got 'fp16'"),  # nothing close: no guess
        ("results_dir=", "results_dir: must not be empty, got ''"),
    ],
)
def test_a_mistyped_choice_gets_the_closest_one_and_an_empty_string_says_so(repo, override, message):
    with pytest.raises(ConfigError) as exc:
        load(repo, overrides=[override])
    assert str(exc.value).endswith(message)


def test_a_known_key_the_defaults_leave_unset_needs_no_plus(repo):
    """benchmark.dataset=fashion as +benchmark.dataset=fashion, and preference.rot90=2 as +preference.rot90=2 (Hydra
    refuses both without '+'); a typo still fails."""
    plain = load(repo, overrides=["benchmark.dataset=fashion", "benchmark.subset=500"], check_files=False)
    plus = load(repo, overrides=["+benchmark.dataset=fashion", "+benchmark.subset=500"], check_files=False)
    assert plain == plus and plain["benchmark"]["dataset"] == "fashion" and plain["benchmark"]["subset"] == 500
    with pytest.raises(ConfigError, match=r"^config: benchmark.datset: unknown key \(did you mean `dataset`\?\)$"):
        load(repo, overrides=["benchmark.datset=fashion"], check_files=False)
    # so is an entry of a free mapping: a task's preference weight, which the defaults' empty preference lacks
    assert load(repo, overrides=["preference.rot90=2"], check_files=False)["preference"] == {"rot90": 1.0}  # normalized


def test_paths_starting_with_a_tilde_are_in_the_home_folder(repo, tmp_path, monkeypatch):
    """A path the shell left unexpanded (quoted, or inside overrides) is the user's home, not a folder named ~."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "exp.yaml").write_text("name: home\npreference: ~/prefs.yaml\n")
    (tmp_path / "prefs.yaml").write_text("rot90: 2\ninvert: 1\n")
    cfg = load(repo, experiment="~/exp.yaml", overrides=["results_dir='~/runs'"], check_files=False)
    assert cfg["results"] == str(tmp_path / "runs" / "home")
    assert cfg["preference"] == {"rot90": 2 / 3, "invert": 1 / 3}


@pytest.mark.parametrize(
    "override, message",
    [
        ("results_dir=~/runs", r"'results_dir=~/runs' does not parse \(quote the value, key='value': Hydra reserves"),
        ("seed", r"'seed' does not parse \(write key=value; missing EQUAL"),
        ("sampler.factor=[1,2", r"'sampler.factor=\[1,2' does not parse \(no viable alternative at input"),
    ],
)
def test_an_override_hydra_cannot_parse_is_named(repo, override, message):
    with pytest.raises(ConfigError, match="^overrides: " + message):
        load(repo, overrides=["seed=1", override], check_files=False)


def test_preference_file_is_yaml_task_weight(repo, tmp_path):
    (tmp_path / "prefs.yaml").write_text("rot90: 2\ninvert: 1\n")
    (tmp_path / "exp.yaml").write_text("name: pref\npreference: prefs.yaml\n")  # relative to the experiment file
    assert load(repo, experiment=tmp_path / "exp.yaml")["preference"] == {"rot90": 2 / 3, "invert": 1 / 3}
    (tmp_path / "bad.yaml").write_text("rot90: -1\n")
    with pytest.raises(ConfigError) as info:
        load(repo, overrides=[f"preference={tmp_path / 'bad.yaml'}"])
    assert str(info.value) == (
        f"preference file {tmp_path / 'bad.yaml'}: preference weight for task 'rot90' must be a finite number >= 0; got -1"
    )
    (tmp_path / "list.yaml").write_text("- rot90\n")
    with pytest.raises(ConfigError, match="list.yaml: must be a mapping task: weight"):
        load(repo, overrides=[f"preference={tmp_path / 'list.yaml'}"])
    (tmp_path / "empty.yaml").write_text("")  # equal weights without a word
    with pytest.raises(ConfigError, match="empty.yaml: empty; give its task: weight lines"):
        load(repo, overrides=[f"preference={tmp_path / 'empty.yaml'}"])
    with pytest.raises(ConfigError, match="preference file nothere.yaml: not found"):
        load(repo, overrides=["preference=nothere.yaml"])
    with pytest.raises(ConfigError, match=f"preference file {tmp_path}: a folder, not a file"):
        load(repo, overrides=[f"preference={tmp_path}"])
    (tmp_path / "typo.yaml").write_text("rot90: 2\ninvrt: 1\n")  # the file is named, with the closest task
    with pytest.raises(ConfigError) as info:
        load(repo, overrides=[f"preference={tmp_path / 'typo.yaml'}"])
    assert str(info.value) == (
        f"preference file {tmp_path / 'typo.yaml'}: preference names unknown task 'invrt' (did you mean `invert`?); "
        "known: rot90, invert, flip_parity, mod3"
    )
    (tmp_path / "nested.yaml").write_text("preference: {rot90: 2}\n")  # the experiment file's key, copied along
    with pytest.raises(ConfigError, match=r"nested.yaml: holds `preference:` with the weights under it; write its "):
        load(repo, overrides=[f"preference={tmp_path / 'nested.yaml'}"])


def test_a_preference_on_the_command_line_replaces_the_experiment_files(repo, tmp_path):
    """Hydra merges a map given on the command line into the experiment file's; a preference weighs the tasks it
    leaves out 0, so the command line's replaces the file's whole (its keys one by one still merge)."""
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("preference: {rot90: 2, invert: 1}\n")

    def preference(*overrides: str) -> dict:
        return load_config(repo / "config", experiment=experiment, overrides=list(overrides))["preference"]

    def as_run(weights: dict) -> dict:  # as the run takes it: normalized, in the tasks' order
        return canonical_preference(weights, ["rot90", "invert", "flip_parity", "mod3"])

    assert preference() == as_run({"rot90": 2, "invert": 1})
    assert preference("preference={flip_parity: 1}") == as_run({"flip_parity": 1})
    assert preference("preference={}") == {}  # equal weights
    assert preference("preference.invert=3") == as_run({"rot90": 2, "invert": 3})
    assert preference("++preference.mod3=1") == as_run({"rot90": 2, "invert": 1, "mod3": 1})
    assert preference("preference.mod3=1") == as_run({"rot90": 2, "invert": 1, "mod3": 1})  # no '+' needed
    # in the order given: a weight after a whole preference adds to it, one before it is replaced with the rest
    assert preference("preference={invert: 1}", "preference.rot90=3") == as_run({"invert": 1, "rot90": 3})
    assert preference("preference.rot90=3", "preference={invert: 1}") == as_run({"invert": 1})


def test_one_weight_does_not_replace_a_preference_file(repo, tmp_path):
    """preference.rot90=2 where the preference is a file would leave only rot90 (Hydra replaces the file's name by the
    mapping): refused, whether the file is the experiment's or the command line's; a whole mapping after it is not."""
    (tmp_path / "prefs.yaml").write_text("rot90: 1\ninvert: 3\n")
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("preference: prefs.yaml\n")
    line = (
        r"^overrides: preference.rot90=2: the preference is the file prefs.yaml, and one weight would replace it whole; "
        r"give every weight \(preference=\{rot90: 2, <task>: <weight>, \.\.\.\}\) or edit the file$"
    )
    with pytest.raises(ConfigError, match=line):
        load_config(repo / "config", experiment=experiment, overrides=["preference.rot90=2"])
    with pytest.raises(ConfigError, match="the preference is the file prefs.yaml"):
        load_config(repo / "config", overrides=["preference=prefs.yaml", "preference.rot90=2"])
    cfg = load_config(
        repo / "config", experiment=experiment, overrides=["preference={invert: 1}", "preference.rot90=2"]
    )
    assert cfg["preference"] == {"rot90": 2 / 3, "invert": 1 / 3}  # normalized, in the tasks' order
    cfg = load_config(repo / "config", overrides=["preference.rot90=2", f"preference={tmp_path / 'prefs.yaml'}"])
    assert cfg["preference"] == {"rot90": 0.25, "invert": 0.75}  # a weight before the file: the file wins, as last


def test_the_run_folder_check_leaves_nothing_behind(tmp_path):
    """check_results_folder writes nothing: a folder that does not exist yet stays so, one that exists keeps its
    contents and its mtime (a dry run changes nothing on disk); a file or a dangling link in the way is refused,
    naming results_dir."""
    check_results_folder(str(tmp_path / "new" / "demo"))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "kept.parquet").write_bytes(b"x")
    os.utime(tmp_path / "demo", ns=(1_000_000_000, 1_000_000_000))
    check_results_folder(str(tmp_path / "demo"))
    check_results_folder(str(tmp_path / "demo" / "next"))
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["kept.parquet"]
    assert (tmp_path / "demo").stat().st_mtime_ns == 1_000_000_000
    with pytest.raises(ConfigError, match=r"^results_dir: the run folder .*kept\.parquet/demo cannot be made"):
        check_results_folder(str(tmp_path / "demo" / "kept.parquet" / "demo"))
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(
        ConfigError, match=r"gone/demo cannot be made or written \(.*gone: a symbolic link to nothing\)$"
    ):
        check_results_folder(str(tmp_path / "gone" / "demo"))


@pytest.mark.parametrize(
    "overrides, why",
    [
        (["bayesian.rounds=5"], "method is map, and only method=bayesian reads bayesian.*"),
        (  # no round reads it, but it reran them
            ["optimizer.grid_check_resolution=300"],
            "the group has 4 members, and only a front of 2 is checked against a grid (nested MAP's groups are pairs)",
        ),
        (["bayesian={rounds: 5}"], "method is map, and only method=bayesian reads bayesian.*"),
        (["method=bayesian", "nested.pairing=cosine"], "method is bayesian, and only method=nested reads nested.*"),
        (["validation.resolution=5"], "validation.enabled is false"),
        (
            ["selection=weighted_sum", "selection.rho=0.1"],
            "selection.method is weighted_sum, which has no rho (tchebycheff and balanced take it)",
        ),
        (["method=bayesian", "sampler.factor=3"], "method=bayesian sizes its design with bayesian.initial_factor"),
        (
            ["method=bayesian", "bayesian.rounds=0", "bayesian.lam=2"],
            "bayesian.rounds is 0 (no Bayesian round after the initial design)",
        ),
        (
            ["tasks=[rot90, invert]", "method=nested", "nested.pairing=cosine"],
            "the run has 2 tasks, one pair: nested.pairing has nothing to choose",
        ),
        (["refine.rounds=0", "refine.points=3"], "refine.rounds is 0 (no refinement round)"),
        (["refine.rounds=0", "surrogate.correction=none"], "refine.rounds is 0 (no refinement round)"),
        (["refine.limit=3"], "refine.extend is 0 (the box never grows)"),
        (["refine.trust_radius=null", "refine.trust_from=2"], "refine.trust_radius is null (no trust region)"),
        (
            ["refine.rounds=2", "refine.trust_radius=0.2"],
            "refine.trust_from (4) is past refine.rounds (2), so no round takes its pick in the trust region",
        ),
        (["refine.rounds=0", "refine.trust_radius=null"], "refine.rounds is 0 (no refinement round)"),
        (["merge.density=0.3"], "merge.operator is task_arithmetic, which does not take density (ties takes it)"),
        (
            ["merge=ties", "merge.drop_rate=0.3"],
            "merge.operator is ties, which does not take drop_rate (dare, dare_ties take it)",
        ),
        (
            ["tasks=[rot90, invert]", "validation.enabled=true", "validation.baselines.task_arithmetic.density=0.3"],
            "validation.baselines.task_arithmetic.operator is task_arithmetic, which does not take density (ties "
            "takes it)",
        ),
    ],
)
def test_an_override_that_cannot_take_effect_is_refused(repo, overrides, why):
    with pytest.raises(ConfigError) as info:
        load(repo, overrides=overrides)
    assert (
        str(info.value)
        == f"overrides: {overrides[-1]}: has no effect: {why}; leave it out, or change the setting named"
    )


def test_a_key_given_twice_is_named_with_its_last_value(repo):
    """The last value of a key given twice is the run's (Hydra's rule, on which the suite's and benchmarks' base
    lists rely): a setting that cannot take effect is named with it, not with the value it replaced."""
    with pytest.raises(ConfigError) as info:
        load(repo, overrides=["sampler.factor=2", "method=bayesian", "sampler.factor=3"])
    assert str(info.value).startswith("overrides: sampler.factor=3: has no effect: method=bayesian sizes its design")


def test_settings_that_take_effect_pass(repo):
    for overrides in (
        ["method=bayesian", "bayesian.rounds=2", "sampler.min_points=20"],
        ["method=bayesian", "bayesian.rounds=0", "bayesian.initial_factor=2"],  # the design without its rounds
        ["method=nested", "nested.pairing=cosine"],
        ["validation.enabled=true", "benchmark.tasks=2", "validation.resolution=5"],
        ["refine.extend=0.5", "refine.limit=3"],
        ["selection.rho=0.1"],  # balanced, the default
        ["refine.rounds=2", "refine.trust_from=2", "refine.trust_radius=0.2"],
        ["refine.rounds=2", "refine.trust_radius=null"],  # no trust region, where the default would have none either
    ):
        load(repo, overrides=overrides)


def test_an_experiment_files_setting_that_cannot_take_effect_is_warned_of(repo, tmp_path):
    """A file may hold settings for a method the command line does not choose: a warning, not a refusal; none where
    the command line replaces the key, or chooses the method that reads it."""
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("bayesian: {rounds: 2, lam: 2.0}\nrefine: {points: 4}\n")
    warned: list[str] = []
    load(repo, experiment=experiment, warn=warned.append)
    assert warned == [
        f"experiment file {experiment}: bayesian.rounds: has no effect: method is map, and only method=bayesian reads "
        "bayesian.*",
        f"experiment file {experiment}: bayesian.lam: has no effect: method is map, and only method=bayesian reads "
        "bayesian.*",
    ]
    warned.clear()
    load(repo, experiment=experiment, overrides=["method=bayesian"], warn=warned.append)
    assert warned == []
    load(repo, experiment=experiment, overrides=["refine.rounds=0"], warn=warned.append)
    assert (
        warned[-1]
        == f"experiment file {experiment}: refine.points: has no effect: refine.rounds is 0 (no refinement round)"
    )


def test_a_preference_that_leaves_merged_tasks_out_is_warned_of(repo, tmp_path):
    """Tasks a preference does not name weigh 0 (a task added after the preference was written, say): a warning naming
    them, none where every merged task is named (0 too) or the preference is equal."""
    warned: list[str] = []
    tasks = "tasks=[rot90, invert, flip_parity]"
    load(repo, overrides=[tasks, "preference={rot90: 2, invert: 1}"], warn=warned.append)
    assert warned == [
        "preference: gives no weight to flip_parity, which the run merges: weight 0, the pick ignores its metrics; "
        "give it a weight (0 to say so)"
    ]
    warned.clear()
    for preference in ("{rot90: 2, invert: 1, flip_parity: 0}", "{}"):
        load(repo, overrides=[tasks, f"preference={preference}"], warn=warned.append)
    assert warned == []
    (tmp_path / "weights.yaml").write_text("rot90: 1\n")
    load(repo, overrides=[tasks, f"preference={tmp_path / 'weights.yaml'}"], warn=warned.append)
    assert warned == [
        f"preference file {tmp_path / 'weights.yaml'}: gives no weight to invert, flip_parity, which the run merges: "
        "weight 0, the pick ignores their metrics; give each a weight (0 to say so)"
    ]


def test_a_group_option_written_as_the_groups_value_says_how_an_experiment_file_chooses_it(repo, tmp_path):
    """`selection: tchebycheff` in an experiment file (the command line's selection=tchebycheff): the line says how a
    file chooses a group's option, and that way loads; a value no option of the group has gets no such hint."""
    exp = tmp_path / "exp.yaml"
    exp.write_text("selection: tchebycheff\n")
    with pytest.raises(ConfigError) as info:
        load(repo, experiment=exp, check_files=False)
    assert str(info.value) == (
        f"experiment file {exp}: selection: must be a mapping, got 'tchebycheff' (an experiment file chooses a "
        "group's option in its defaults list: defaults: [{override /selection: tchebycheff}])"
    )
    exp.write_text("defaults: [{override /selection: tchebycheff}]\n")
    assert load(repo, experiment=exp, check_files=False)["selection"]["method"] == "tchebycheff"
    exp.write_text("selection: tchebychef\n")
    with pytest.raises(ConfigError) as info:
        load(repo, experiment=exp, check_files=False)
    assert str(info.value) == f"experiment file {exp}: selection: must be a mapping, got 'tchebychef'"


def test_an_empty_mapping_that_would_be_merged_into_a_full_one_is_refused(repo, tmp_path):
    """`validation.baselines={}` is merged into the config's baselines (Hydra merges mappings) and removed none: a
    silent no-op, refused with the way to remove one; `preference={}` replaces the experiment file's weights (equal
    weights), as documented, and is taken."""
    with pytest.raises(ConfigError) as info:
        load(repo, overrides=["tasks=[rot90, invert]", "validation.enabled=true", "validation.baselines={}"])
    assert str(info.value) == (
        "overrides: validation.baselines={}: has no effect: a mapping on the command line is merged into the config's, "
        "which holds task_arithmetic, ties, dare; remove one with ~validation.baselines.<name>"
    )
    cfg = load(repo, overrides=["tasks=[rot90, invert]", "validation.enabled=true", "~validation.baselines.dare"])
    assert list(cfg["validation"]["baselines"]) == ["task_arithmetic", "ties"]
    exp = tmp_path / "exp.yaml"
    exp.write_text("preference: {rot90: 2, invert: 1}\n")
    assert load(repo, experiment=exp, overrides=["preference={}"], check_files=False)["preference"] == {}
