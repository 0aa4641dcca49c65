"""Stage code fingerprints (mapmerge.run.fingerprint): which stages' params change when a module's source changes.

Real source trees: copies of the package in tmp_path with one function edited, and a user's model
code under model.python_path.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from conftest import edit_a_function
from mapmerge.run import fingerprint
from mapmerge.run.config import STAGE_ENTRY, load_config, stage_config

SRC = fingerprint.source_root()
STAGES = set(STAGE_ENTRY)
# every real evaluation of merged models (evaluate_group: a group's samples and rounds)
EVALUATIONS = {"evaluate", "evaluate_group", "validate_front", "validate_baseline"}
TASK_VECTORS = {"extract_task_vector", "task_vector_table"}
ENGINE = EVALUATIONS | TASK_VECTORS | {"merge_group", "plan_level"}  # what reads checkpoints and merges task vectors
BENCHMARK = EVALUATIONS | {"prepare_benchmark"}  # trains it; the evaluations' params name its model and evaluators
# the surrogate: validate: the coverage of the prediction intervals; refine_round fits; merge_group predicts at a
# measured pick; the run's notes (aggregate's report, report_tables) size the rounds
SURROGATE = {
    "propose_round",
    "fit_surrogate",
    "pareto_front",
    "validate",
    "refine_round",
    "merge_group",
    "aggregate",
    "report_tables",
}

# The spec, written from what each stage runs: for each module of the package, the stages whose code
# fingerprint changes when its source changes. A module not named here must be run by no stage.
EXPECTED = {
    # imported by every stage: the package and the stages package (their __init__.py), the artifacts' I/O
    "mapmerge": STAGES,
    "mapmerge.stages": STAGES,
    "mapmerge.io": STAGES,
    # the layers' packages (their __init__.py), imported with any of their modules
    "mapmerge.core": STAGES - TASK_VECTORS - {"prepare_benchmark"},
    "mapmerge.tensors": ENGINE | {"prepare_benchmark"},
    "mapmerge.builtin": BENCHMARK,
    "mapmerge.outputs": {"aggregate", "report_tables", "validate"},
    # the stage modules: their own stages (validation's front and baselines evaluate through stage evaluate's code)
    "mapmerge.stages.prepare_benchmark": {"prepare_benchmark"},
    "mapmerge.stages.task_vectors": TASK_VECTORS,
    "mapmerge.stages.evaluation": EVALUATIONS,
    "mapmerge.stages.plan_level": {"plan_level"},
    "mapmerge.stages.sample_coefficients": {"sample_coefficients"},
    "mapmerge.stages.propose_round": {"propose_round"},
    "mapmerge.stages.collect": {
        "collect_metrics",
        "ledger",
        "propose_round",
        "refine_round",
    },  # rounds read as collected
    "mapmerge.stages.fit_surrogate": {"fit_surrogate"},
    "mapmerge.stages.pareto_front": {"pareto_front", "refine_round"},  # a round predicts the front as pareto_front does
    "mapmerge.stages.refine_round": {"refine_round"},
    "mapmerge.stages.merge_group": {"merge_group"},
    "mapmerge.stages.aggregate": {"aggregate"},
    "mapmerge.stages.report_tables": {"report_tables"},
    "mapmerge.stages.validate_front": {"validate_front"},
    "mapmerge.stages.validate_baseline": {"validate_baseline"},
    "mapmerge.stages.validate": {"validate"},
    # the engine, and what reads checkpoints and merges task vectors (plan_level: cosine pairing)
    "mapmerge.tensors.engine": EVALUATIONS,
    "mapmerge.tensors.devices": EVALUATIONS,  # pick_device (and the driver's preflight, which no stage is)
    "mapmerge.tensors.placement": EVALUATIONS,  # where the engine keeps the task vectors
    "mapmerge.tensors.checkpoints": ENGINE | {"prepare_benchmark"},
    "mapmerge.tensors.hf_prefix": ENGINE | {"prepare_benchmark"},  # read by checkpoints
    "mapmerge.tensors.taskvectors": ENGINE,
    "mapmerge.progress": ENGINE,
    "mapmerge.tensors.operators": ENGINE,
    "mapmerge.tensors.lora": ENGINE,  # LoRA task vectors: read, merged, their Gram matrix
    # the built-in benchmark
    "mapmerge.builtin.model": BENCHMARK,
    "mapmerge.builtin.digits": BENCHMARK,
    "mapmerge.builtin.fashion": BENCHMARK,
    # the MAP stages' domain modules
    "mapmerge.core.groups": EVALUATIONS
    | {
        "plan_level",
        "sample_coefficients",
        "pareto_front",
        "merge_group",
        "aggregate",
        "refine_round",
        "report_tables",
    },
    "mapmerge.core.metrics": STAGES - TASK_VECTORS - {"prepare_benchmark", "sample_coefficients"},
    "mapmerge.core.sampling": {"sample_coefficients"},
    "mapmerge.memo": {
        "sample_coefficients"
    },  # the design's points kept on disk (the driver computes them at each start)
    "mapmerge.core.surrogate": SURROGATE,
    # the quadratic's parameter count and features: also the design's size (sample_coefficients), which the fit's
    # own code does not reach, so that a change to the fit re-evaluates nothing
    "mapmerge.core.quadratic": SURROGATE | {"sample_coefficients"},
    "mapmerge.core.correction": SURROGATE,  # the surrogate's local correction
    "mapmerge.core.class_scores": SURROGATE,  # accuracy from the class scores (surrogate.scores)
    # the notes' box bounds; whether a fit gets the correction (fit_surrogate)
    "mapmerge.core.refine": {"refine_round", "fit_surrogate", "aggregate", "report_tables"},
    "mapmerge.core.spread": {"validate", "validate_front"},
    "mapmerge.core.bayesian": {"propose_round"},
    # plots' non_dominated; validation's indicators; the measured front (merge_group, aggregate; report_tables
    # through selection, whose rules' names the notes use)
    "mapmerge.core.pareto": {
        "report_tables",
        "pareto_front",
        "aggregate",
        "validate",
        "validate_front",
        "merge_group",
        "refine_round",
    },
    # the rules' names in the notes (report_tables)
    "mapmerge.core.selection": {"merge_group", "refine_round", "aggregate", "report_tables"},
    # merge_group writes transformers folders (save_merged_models); the adapters' evaluators are _target_s
    "mapmerge.adapters": {"merge_group"},
    "mapmerge.adapters.transformers": {"merge_group"},
    "mapmerge.adapters.hub": {"merge_group"},  # imported by the transformers adapter
    # the lm-eval evaluator: imported by the transformers adapter (its config check); an evaluator _target_
    "mapmerge.adapters.lm_eval_tasks": {"merge_group"},
    "mapmerge.errors": {"merge_group"},
    "mapmerge.adapters.openclip": set(),
    "mapmerge.outputs.figure": {"aggregate", "validate"},  # what the figures share
    "mapmerge.outputs.plots": {"aggregate"},
    "mapmerge.outputs.validation_plot": {"validate"},
    "mapmerge.outputs.measured": {"aggregate"},  # the measured front with the chosen merge's evaluation
    "mapmerge.outputs.report": {"aggregate", "report_tables"},
    "mapmerge.outputs.notes": {"aggregate", "report_tables"},
    # the run folder's layout: read by the stages that find files by name (aggregate, and the report)
    "mapmerge.layout": {"aggregate", "report_tables"},
    "mapmerge.core.groundtruth": {"validate_front", "validate"},
    # no stage runs these: the config (its values are the params), the command line, run folders, locks, logs,
    # the stage registry and the job that calls a stage
    "mapmerge.run.config": set(),
    "mapmerge.run.fingerprint": set(),
    "mapmerge.tools.cli": set(),
    "mapmerge.tools.runfolder": set(),
    "mapmerge.tools.status": set(),
    "mapmerge.tools.check": set(),
    "mapmerge.tools.prune": set(),
    "mapmerge.tools.replot": set(),
    "mapmerge.tools.select_merge": set(),
    "mapmerge.tools.merge_inputs": set(),
    "mapmerge.tools.mergekit_export": set(),
    "mapmerge.run.runlock": set(),
    "mapmerge.run.logs": set(),
    "mapmerge.run.registry": set(),
    "mapmerge.run.job": set(),
}


def stage_params(cfg: dict) -> dict[str, dict]:
    """Every stage's params without their code fingerprint (what the fingerprint reads: the _target_s)."""
    return {s: {k: v for k, v in stage_config(cfg, s).items() if k != "code"} for s in STAGES}


def fingerprints(params: dict[str, dict], root: Path, python_path=()) -> dict[str, str]:
    return {
        s: fingerprint.stage_fingerprint(f"mapmerge.stages.{STAGE_ENTRY[s]}", params[s], python_path, root)
        for s in STAGES
    }


def copy_package(root: Path) -> Path:
    shutil.copytree(SRC / "mapmerge", root / "mapmerge", ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def cfg(repo) -> dict:
    """The built-in benchmark's config, with every stage (validation's too)."""
    return load_config(repo / "config", overrides=["validation.enabled=true", "benchmark.tasks=2"])


@pytest.fixture(scope="module")
def builtin_params(cfg) -> dict[str, dict]:
    return stage_params(cfg)


def test_a_module_change_reruns_the_stages_that_run_it(cfg, builtin_params, tmp_path):
    base = fingerprints(builtin_params, copy_package(tmp_path / "base"))
    assert base == {s: stage_config(cfg, s)["code"] for s in STAGES}  # where the source lies does not matter
    changed = {}
    for path in sorted((tmp_path / "base" / "mapmerge").rglob("*.py")):
        rel = path.relative_to(tmp_path / "base")
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        root = copy_package(tmp_path / module)
        edit_a_function(root / rel)
        new = fingerprints(builtin_params, root)
        changed[module] = {s for s in STAGES if new[s] != base[s]}
    assert set(EXPECTED) - set(changed) == set(), "modules of the table that no longer exist"
    assert {m: stages for m, stages in changed.items() if stages != EXPECTED.get(m, set())} == {}


def test_user_model_code_reruns_the_evaluations_only(cfg, tmp_path):
    user = tmp_path / "user"
    (user / "mymodel").mkdir(parents=True)
    (user / "mymodel" / "__init__.py").write_text("from .nets import Eval, build\n")
    (user / "mymodel" / "nets.py").write_text(
        "import torch\n\nfrom helpers import width\n\n\ndef build():\n    return torch.nn.Linear(width(), 2)\n\n\n"
        "class Eval:\n    def __call__(self, module, device):\n        from mymodel.losses import loss\n\n        return loss(module)\n"
    )
    (user / "mymodel" / "losses.py").write_text("def loss(module):\n    return 0.0\n")
    (user / "helpers.py").write_text("def width():\n    return 4\n")
    (user / "unused.py").write_text("def other():\n    return 1\n")
    cfg = dict(cfg)
    tasks = cfg["task_names"]
    cfg["model"] = {
        **cfg["model"],
        "builtin": False,
        "builder": {"_target_": "mymodel.build"},
        "python_path": [str(user)],
        "tasks": {
            t: {"checkpoint": str(user / f"{t}.pt"), "evaluator": {"_target_": "mymodel.nets.Eval", "task": t}}
            for t in tasks
        },
    }
    params = stage_params(cfg)
    files = fingerprint.stage_files("mapmerge.stages.evaluation", fingerprint.targets(params["evaluate"]), [user], SRC)
    assert {n for n in files if not n.startswith("mapmerge")} == {
        "mymodel",
        "mymodel.nets",
        "mymodel.losses",
        "helpers",
    }
    assert "mapmerge.builtin.model" not in files  # the built-in benchmark is not this model
    before = {s: stage_config(cfg, s)["code"] for s in STAGES}
    assert before == fingerprints(params, SRC, [str(user)])
    for name in ("helpers.py", "mymodel/losses.py", "mymodel/__init__.py", "unused.py"):
        edit_a_function(user / name)
        after = {s: stage_config(cfg, s)["code"] for s in STAGES}
        assert {s for s in STAGES if after[s] != before[s]} == (set() if name == "unused.py" else EVALUATIONS), name
        before = after


def test_adapter_targets_are_followed(builtin_params):
    # model=transformers: its builder and evaluators are mapmerge.adapters.transformers; a function name is no module
    params = {
        "model": {
            "builder": {"_target_": "mapmerge.adapters.transformers.build_model"},
            "evaluators": {"a": {"_target_": "mapmerge.adapters.transformers.SequenceClassificationEvaluator"}},
        }
    }
    files = fingerprint.stage_files("mapmerge.stages.evaluation", fingerprint.targets(params))
    assert {"mapmerge.adapters", "mapmerge.adapters.transformers", "mapmerge.errors"} <= set(files)
    assert "mapmerge.builtin.model" not in files and "mapmerge.adapters.openclip" not in files
    assert fingerprint.stage_fingerprint("mapmerge.stages.evaluation", params) != fingerprint.stage_fingerprint(
        "mapmerge.stages.evaluation", builtin_params["evaluate"]
    )


def test_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "mapmerge"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\nfrom .sub import c as renamed\n")
    (pkg / "b.py").write_text(
        "def f():\n    try:\n        from mapmerge import d\n    except ImportError:\n        pass\n"
    )
    (pkg / "sub" / "c.py").write_text("from ..e import thing\nfrom ... import beyond\nimport mapmerge.sub.g\n")
    for name in ("d", "e", "f"):
        (pkg / f"{name}.py").write_text("thing = 1\n")
    (pkg / "sub" / "g.py").write_text("if True:\n    import numpy\n")
    files = fingerprint.closure(["mapmerge.a"], [tmp_path])
    assert set(files) == {
        "mapmerge",
        "mapmerge.a",
        "mapmerge.b",
        "mapmerge.sub",
        "mapmerge.sub.c",
        "mapmerge.d",
        "mapmerge.e",
        "mapmerge.sub.g",
    }


CODE = '''"""A module."""

import os  # a comment


class A:
    """A class."""

    def f(self, x):
        """A method,
        over two lines."""
        text = """kept
as written:  \\n

"""
        return x + 1  # one more


def g():
    """Only a docstring."""
'''


def digest(text: str) -> str:
    data = text.encode()
    return fingerprint.code_digest(ast.parse(data))


@pytest.mark.parametrize(
    "edit",
    [
        ("# a comment", "# another comment, longer"),
        ('"""A module."""', '"""A module,\nits docstring rewritten."""'),
        ('"""A method,\n        over two lines."""', '"""A method."""'),
        ('"""Only a docstring."""', '"""Only a docstring, longer: ""\\" and é."""'),
        ("import os  # a comment", "import os"),
        ("class A:\n", "\n\nclass A:  # with a comment\n"),
        ("return x + 1  # one more", "return x + 1   "),
        ("return x + 1", "return (\n            x\n            + 1\n        )"),  # layout
        ("import os", "import os;"),
        ('def g():\n    """Only a docstring."""', "def g():\n    'Only a docstring.'"),
        ('    """A class."""\n\n', ""),  # a docstring removed
    ],
)
def test_comments_docstrings_blank_lines_and_layout_leave_the_digest(edit):
    old, new = edit
    assert old in CODE
    assert digest(CODE.replace(old, new)) == digest(CODE)


@pytest.mark.parametrize(
    "edit",
    [
        ("return x + 1", "return x + 2"),
        ("as written:  \\n\n\n", "as written:  \\n\n"),  # a blank line inside a string literal is data
        ("as written:  \\n", "as written:\\n"),  # and so are its spaces
        ("import os", "import sys"),
        ("        return x + 1", "        return x + 1\n        pass"),
        ('def g():\n    """Only a docstring."""', 'def g():\n    """Only a docstring."""\n    return 1'),
        ("return x + 1", "return 1 + x"),
        ("return x + 1", "return x + 1.0"),
    ],
)
def test_code_and_string_data_change_the_digest(edit):
    old, new = edit
    assert old in CODE
    assert digest(CODE.replace(old, new)) != digest(CODE)


def test_a_comment_or_docstring_edit_of_a_module_reruns_nothing(builtin_params, tmp_path):
    base = fingerprints(builtin_params, copy_package(tmp_path / "base"))
    root = copy_package(tmp_path / "edited")
    engine = root / "mapmerge" / "tensors" / "engine.py"
    text = engine.read_text()
    first_def = text.index("\ndef ")
    docstring_end = text.index('"""', text.index('"""', first_def) + 3)
    text = text[:docstring_end] + " Edited." + text[docstring_end:]  # the first function's docstring
    engine.write_text(text.replace("\nimport ", "\n# a new comment\n\nimport ", 1) + "\n# the end\n")
    assert fingerprints(builtin_params, root) == base
    edit_a_function(engine)
    assert {s for s, code in fingerprints(builtin_params, root).items() if code != base[s]} == EXPECTED[
        "mapmerge.tensors.engine"
    ]
