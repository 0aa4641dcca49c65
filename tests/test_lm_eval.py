"""lm-evaluation-harness tasks as a causal LM's evaluator (mapmerge.adapters.lm_eval_tasks): a tiny random Llama
scored on a multiple-choice and a generate-until task over local JSONL files, the rows checked against lm-eval's own
per-sample log and against the model's own log-likelihoods; the config block, its refusals, and the workflow on
LoRA adapters scored by them with an accuracy objective."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import REPO, snakemake_command
from mapmerge.adapters.lm_eval_tasks import TARGET, LMEvalEvaluator, local_datasets
from mapmerge.io import read_table
from mapmerge.run.config import ConfigError, load_config
from mapmerge.tensors.checkpoints import load_state_dict, open_checkpoint, safetensors_metadata
from mapmerge.tensors.lora import FACTOR_A, FACTOR_B
from mapmerge.tensors.taskvectors import merge_files
from mapmerge.tools.cli import main

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
lm_eval = pytest.importorskip("lm_eval", reason="needs lm-eval (pip install 'mapmerge[llm]')")

from test_lora import TOLERANCE, llama_config, make_adapter, max_diff, tokenizer  # noqa: E402

CPU = torch.device("cpu")
BATCH = 2
FINETUNED = ("mc_ft", "gen_ft")  # the config tests' task directories (tiny), distinct from the pretrained one
# multiple choice over the tokenizer's words; gold is the index of the right choice
CHOICES = [
    {"question": "the cat sat on the", "choices": ["mat", "log", "dog"], "gold": 0},
    {"question": "a big dog ran under the", "choices": ["old log", "red mat"], "gold": 1},
    {"question": "time saves", "choices": ["nine", "gold", "cat"], "gold": 0},
    {"question": "all that is not", "choices": ["gold", "blue", "new", "small"], "gold": 0},
]
PROMPTS = ["the cat sat on the", "all that is not", "a big dog ran", "time saves", "not all gold"]
MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""
GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["[EOS]"]
  max_gen_toks: 2
  do_sample: false
metric_list:
  - metric: exact_match
filter_list:
  - name: stripped
    filter:
      - function: remove_whitespace
      - function: take_first
"""


def greedy(model, tok, prompt: str) -> str:
    """The model's greedy 2-token continuation of prompt, decoded (transformers' own generate)."""
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def write_tasks(folder: Path, model, tok) -> Path:
    """The task YAMLs and their JSONL files; every other generation answer is the model's own greedy one (none
    empty), the others three words (2 tokens cannot match them)."""
    folder.mkdir(parents=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHOICES))
    answers = [greedy(model, tok, p) if i % 2 == 0 else "gold gold gold" for i, p in enumerate(PROMPTS)]
    assert all(answers)
    rows = [{"question": p, "answer": a} for p, a in zip(PROMPTS, answers)]
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_mc.yaml").write_text(MC_YAML)
    (folder / "tiny_gen.yaml").write_text(GEN_YAML)
    return folder


def save_model(seed: int, folder: Path, base: Path | None = None) -> transformers.LlamaForCausalLM:
    """A tiny Llama with its tokenizer in folder: random (seed), or base's weights plus seeded noise."""
    torch.manual_seed(seed)
    if base is None:
        model = transformers.LlamaForCausalLM(llama_config())
    else:
        model = transformers.LlamaForCausalLM.from_pretrained(base)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.3 * torch.randn_like(param))
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A pretrained tiny Llama on disk, a different one in memory only (what is scored), and the task folder."""
    root = tmp_path_factory.mktemp("lm_eval")
    save_model(0, root / "pretrained")
    for seed, name in enumerate(FINETUNED, 2):  # the tasks' own directories (the config tests read their headers)
        save_model(seed, root / name)
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(llama_config()).eval()  # never saved: no weights can be reloaded
    tok = tokenizer()
    return {"root": root, "model": model, "tok": tok, "tasks": write_tasks(root / "tasks", model, tok)}


def evaluator(tiny: dict, task: str, metric: str, output_type: str) -> LMEvalEvaluator:
    return LMEvalEvaluator(
        task=task,
        include_path=str(tiny["tasks"]),
        tokenizer=str(tiny["root"] / "pretrained"),
        metric=metric,
        output_type=output_type,
        batch_size=BATCH,
    )


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> dict:
    """lm-eval's own run of both tasks on the in-memory model: simple_evaluate's per-sample log, by task."""
    from lm_eval.models.huggingface import HFLM  # here, not at collection: 2 s in every test worker
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=tiny["model"], tokenizer=tiny["tok"], batch_size=BATCH)
    manager = TaskManager(include_path=str(tiny["tasks"]), include_defaults=False)
    with pytest.MonkeyPatch.context() as mp, local_datasets(str(tmp_path_factory.mktemp("datasets"))):
        mp.chdir(tiny["tasks"])  # the YAMLs' data_files are relative to their folder
        results = lm_eval.simple_evaluate(
            model=lm, tasks=["tiny_mc", "tiny_gen"], task_manager=manager, log_samples=True, bootstrap_iters=0
        )
    return {task: sorted(samples, key=lambda s: s["doc_id"]) for task, samples in results["samples"].items()}


def own_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context) of the model, from one forward pass (as lm-eval builds the pair)."""
    ctx = tok(context).input_ids
    whole = tok(context + continuation).input_ids
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    return float(sum(logprobs[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def test_multiple_choice_rows_are_lm_evals_per_sample_log(tiny, reference):
    task = evaluator(tiny, "tiny_mc", "acc", "multiple_choice")
    assert any(Path(task._cache.name).rglob("*.arrow"))  # datasets prepared the data in the evaluator's folder
    rows = task(tiny["model"], CPU)
    samples = reference["tiny_mc"]
    assert list(rows.columns) == ["example", "correct", "loss"]
    assert rows["example"].tolist() == [s["doc_id"] for s in samples] == list(range(len(CHOICES)))
    assert rows["correct"].tolist() == [s["acc"] for s in samples]
    for row, sample, doc in zip(rows.itertuples(), samples, CHOICES):
        lls = torch.tensor([resp[0] for resp in sample["filtered_resps"]], dtype=torch.float64)
        own = [own_loglikelihood(tiny["model"], tiny["tok"], doc["question"], " " + c) for c in doc["choices"]]
        assert lls.tolist() == pytest.approx(own, abs=1e-4)  # the in-memory model's log-likelihoods
        assert row.loss == pytest.approx(float(torch.logsumexp(lls, 0) - lls[doc["gold"]]), abs=1e-6)
        assert row.correct == float(int(lls.argmax()) == doc["gold"])
    assert 0 < rows["correct"].sum() < len(rows)  # both outcomes occur
    # as the engine calls it: the same module again with new weights in place, scored anew
    torch.manual_seed(3)
    moved = copy.deepcopy(tiny["model"])
    assert task(moved, CPU).equals(rows)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(0.2 * torch.randn_like(param))
    after = task(moved, CPU)
    assert after.equals(evaluator(tiny, "tiny_mc", "acc", "multiple_choice")(moved, CPU))
    assert not after["loss"].equals(rows["loss"])
    # acc_norm: the same log-likelihoods ranked per character
    norm = evaluator(tiny, "tiny_mc", "acc_norm", "multiple_choice")(tiny["model"], CPU)
    assert norm["correct"].tolist() == [s["acc_norm"] for s in samples]
    assert norm["loss"].tolist() == pytest.approx(rows["loss"].tolist(), abs=1e-6)


def test_generation_rows_are_lm_evals_exact_match(tiny, reference, capfd):
    task = evaluator(tiny, "tiny_gen", "exact_match", "generate_until")
    capfd.readouterr()
    rows = task(tiny["model"], CPU)
    assert capfd.readouterr().err == ""  # lm-eval's progress bars and notices stay off the job's stderr
    samples = reference["tiny_gen"]
    assert list(rows.columns) == ["example", "correct", "loss"]
    assert rows["example"].tolist() == [s["doc_id"] for s in samples] == list(range(len(PROMPTS)))
    assert {s["filter"] for s in samples} == {"stripped"}
    assert rows["correct"].tolist() == [float(s["exact_match"]) for s in samples]
    # greedy: the answers that are the model's own greedy continuation match, the others cannot
    assert rows["correct"].tolist() == [1.0 if i % 2 == 0 else 0.0 for i in range(len(PROMPTS))]
    # loss: -log p(" " + reference answer | prompt), the model's own, from the prompt lm-eval generated from
    answers = [json.loads(line)["answer"] for line in (tiny["tasks"] / "gen.jsonl").read_text().splitlines()]
    assert [s["arguments"][0][0] for s in samples] == PROMPTS
    own = [-own_loglikelihood(tiny["model"], tiny["tok"], p, " " + a) for p, a in zip(PROMPTS, answers)]
    assert rows["loss"].tolist() == pytest.approx(own, abs=1e-4)


# ---------------------------------------------------------------------------------------------------
# The config


def experiment(root: Path, tasks: dict[str, dict], **extra) -> Path:
    """An experiment file in root (relative paths: to root) over the pretrained tiny Llama."""
    spec = {
        "name": "lm_eval",
        "model": {
            "adapter": "transformers",
            "transformers": {"pretrained": "pretrained", "task_type": "causal_lm", "batch_size": BATCH, "tasks": tasks},
        },
        "optimizer": {"objective": "accuracy"},
        **extra,
    }
    path = root / "experiment.yaml"
    path.write_text(json.dumps(spec))
    return path


def scored(task: str, directory: str = "mc_ft", **lm_eval) -> dict:
    return {"directory": directory, "lm_eval": {"task": task, "include_path": "tasks", **lm_eval}}


def test_config_builds_the_evaluator(tiny):
    root = tiny["root"]
    tasks = {"mc": scored("tiny_mc"), "gen": scored("tiny_gen", "gen_ft", num_fewshot=0, seed=7)}
    cfg = load_config(REPO / "config", experiment(root, tasks), check_files=True)
    spec = cfg["model"]["tasks"]["mc"]["evaluator"]
    assert spec == {
        "_target_": TARGET,
        "task": "tiny_mc",
        "include_path": str(root / "tasks"),
        "tokenizer": str(root / "mc_ft"),  # the task's directory's (the same tokenizer as the pretrained one's)
        "metric": "acc",  # the first accuracy metric of the task's metric_list
        "output_type": "multiple_choice",
        "num_fewshot": None,
        "seed": 1234,
        "batch_size": BATCH,
        "limit": None,
    }
    gen = cfg["model"]["tasks"]["gen"]["evaluator"]
    assert (gen["metric"], gen["output_type"], gen["num_fewshot"], gen["seed"]) == (
        "exact_match",
        "generate_until",
        0,
        7,
    )
    # the engine builds it as it builds any evaluator; the rows are those of the evaluator made by hand
    rows = instantiate(dict(spec))(tiny["model"], CPU)
    expected = evaluator(tiny, "tiny_mc", "acc", "multiple_choice")(tiny["model"], CPU)
    assert rows.equals(expected)
    # the config is resolved and planned as every job's Snakefile parse does it, importing no lm-eval, torch, transformers
    code = (
        "import sys; from mapmerge.run import config, preflight; "
        f"preflight.check_plan(config.load_config({str(REPO / 'config')!r}, {str(root / 'experiment.yaml')!r}, "
        "check_files=False)); print(sorted({'lm_eval', 'torch', 'transformers', 'datasets'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
    # limit (the task's, else the block's) reaches lm-eval
    limited = load_config(REPO / "config", experiment(root, {**tasks, "mc": {**scored("tiny_mc"), "limit": 2}}))
    assert len(instantiate(dict(limited["model"]["tasks"]["mc"]["evaluator"]))(tiny["model"], CPU)) == 2


def test_config_refusals(tiny, tmp_path, monkeypatch):
    root = tiny["root"]
    good = {"mc": scored("tiny_mc"), "gen": scored("tiny_gen", "gen_ft")}
    (root / "text.jsonl").write_text('{"text": "the cat sat"}\n')
    mixed = {**good, "gen": {"directory": "gen_ft", "data": "text.jsonl"}}
    task = "model.transformers.tasks.mc"
    schema = rf"^experiment file .*: {task}"
    cases = [  # (tasks, the error, experiment keys)
        (
            {"mc": scored("nope")},
            rf"^{task}.lm_eval.task: no task 'nope' in the YAML files under .*/tasks "
            r"\(it defines: tiny_gen, tiny_mc\)$",
            {},
        ),
        (
            {"mc": scored("tiny_mc", include_path="elsewhere")},
            rf"^{task}.lm_eval.include_path: folder .*/elsewhere not found$",
            {},
        ),
        (
            {"mc": scored("tiny_mc", metric="exact_match")},
            rf"^{task}.lm_eval.metric: .*tiny_mc.yaml: task 'tiny_mc' reports "
            r"acc, acc_norm, not exact_match$",
            {},
        ),
        (
            {"mc": scored("tiny_mc", metric="f1")},
            schema + r".lm_eval.metric: must be one of acc, acc_norm, exact_match",
            {},
        ),
        ({"mc": {**scored("tiny_mc"), "data": "text.jsonl"}}, schema + r": give either data .* not both$", {}),
        ({"mc": {"directory": "mc_ft"}}, schema + r": needs data \(a data file\) or lm_eval", {}),
        ({"mc": {**scored("tiny_mc"), "max_length": 64}}, schema + r": max_length applies to a data file", {}),
        (
            good,
            rf"^{task}.lm_eval: needs model.transformers.task_type causal_lm \(it is sequence_classification\)$",
            {"task_type": "sequence_classification"},
        ),
        # lm-eval tasks report accuracy and loss, a causal LM's data file the loss only: no accuracy objective, no mix
        (
            mixed,
            r"^optimizer.objective: accuracy, but .*causal_lm reports the loss only \(task gen\); set "
            r"optimizer.objective=loss, or score the task with an lm-eval task \(model.transformers.tasks.gen.lm_eval\)$",
            {},
        ),
        (
            mixed,
            r"^model.transformers.tasks.gen.data: gives the loss only, but task mc is scored by lm-eval \(accuracy "
            r"and loss\), and every task must report the same metrics; score gen with lm_eval too$",
            {"objective": "loss"},
        ),
    ]
    # task YAMLs mapmerge cannot score: a variant of tiny_gen each
    bad = {
        "f1": (
            "metric_list:\n  - metric: f1\n",
            r"task 'bad' reports f1, no per-example accuracy \(acc, acc_norm, exact_match\)$",
        ),
        "sampled": ("generation_kwargs:\n  do_sample: true\n", r"generation_kwargs sample .*: set do_sample: false$"),
        "rolling": (
            "output_type: loglikelihood_rolling\n",
            r"output_type loglikelihood_rolling is not supported "
            r"\(multiple_choice, generate_until\)$",
        ),
        "missing": ("dataset_kwargs:\n  data_files:\n    test: none.jsonl\n", r"data file none.jsonl not found"),
        "hub": ("dataset_path: org/data\ndataset_kwargs: null\n", r"dataset_path org/data is not local data; "),
        # the task's data, read by the driver (mapmerge.run.lm_eval_checks): lm-eval said KeyError('tst') in the job
        "split": ("test_split: tst\n", r"test_split tst is not a split of its data_files \(test\)"),
    }
    for name, (extra, match) in bad.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "gen.jsonl").write_text((tiny["tasks"] / "gen.jsonl").read_text())
        (tmp_path / name / "bad.yaml").write_text(GEN_YAML.replace("task: tiny_gen", "task: bad") + extra)
        include = str(tmp_path / name)
        cases.append(
            ({"mc": scored("bad", include_path=include)}, rf"^{task}.lm_eval.task: .*{name}/bad.yaml: {match}", {})
        )
    load_config(REPO / "config", experiment(root, good, optimizer={"objective": "loss"}))  # the loss of both
    for tasks, match, keys in cases:
        objective = keys.pop("objective", "accuracy")
        path = experiment(root, {**good, **tasks}, optimizer={"objective": objective})
        spec = json.loads(path.read_text())
        spec["model"]["transformers"].update(keys)
        path.write_text(json.dumps(spec))
        with pytest.raises(ConfigError, match=match) as info:
            load_config(REPO / "config", path)
        assert "\n" not in str(info.value)
    # without lm_eval installed (None in sys.modules: the import system finds no such package)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(
        ConfigError,
        match=rf"^{task}.lm_eval: scoring with lm-eval needs the lm_eval package; "
        r"pip install 'mapmerge\[llm\]'$",
    ):
        load_config(REPO / "config", experiment(root, good))


# ---------------------------------------------------------------------------------------------------
# The whole workflow


@pytest.mark.slow
def test_workflow_from_lora_adapters_scored_by_lm_eval(tiny, tmp_path, capsys):
    """Two LoRA adapters of the tiny Llama, scored by the two lm-eval tasks, go through the real workflow with
    optimizer.objective=accuracy: reference accuracies and losses equal to the evaluators' own on PEFT's merged
    fine-tuned models, low-rank task vectors on disk, a front of accuracies, per task a merged model that
    transformers loads, equal to the merge of the chosen coefficients and scored as the run measured it, and
    `mapmerge select` merging the low-rank vectors again. (One run for both: each HF job imports transformers.)"""
    (tmp_path / "tasks").symlink_to(tiny["tasks"])
    save_model(0, tmp_path / "pretrained")
    targets = {"mc": ["q_proj", "v_proj"], "gen": ["up_proj", "down_proj"]}
    peft_merged = {
        task: make_adapter(tmp_path / "pretrained", tmp_path / task, seed, r=4, lora_alpha=8, target_modules=modules)
        for seed, (task, modules) in enumerate(targets.items(), 2)
    }
    tasks = {"mc": scored("tiny_mc", "mc"), "gen": scored("tiny_gen", "gen")}
    # few jobs: each evaluation job imports lm-eval and loads both tasks once
    overrides = ["sampler.factor=1.5", "optimizer.pop_size=20", "optimizer.n_gen=20", "evaluation.samples_per_job=32"]
    overrides += ["refine.rounds=0"]  # refinement rounds: test_workflow.py, test_example.py, test_methods.py
    cmd = snakemake_command(tmp_path / "work", overrides=overrides, experiment=experiment(tmp_path, tasks))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = tmp_path / "work" / "results" / "lm_eval"
    scorers = {
        "mc": evaluator(tiny, "tiny_mc", "acc", "multiple_choice"),
        "gen": evaluator(tiny, "tiny_gen", "exact_match", "generate_until"),
    }

    def scored_model(directory: Path, state: dict | None = None) -> transformers.LlamaForCausalLM:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        if state is not None:
            model.load_state_dict(state)
        return model.eval()

    reference = read_table(res / "reference.parquet").set_index(["model", "task", "metric"])["value"]
    for task, state in peft_merged.items():  # the fine-tuned models the engine evaluated: PEFT's merge_and_unload
        rows = scorers[task](scored_model(tmp_path / "pretrained", state), CPU)
        assert reference[(task, task, "accuracy")] == pytest.approx(rows["correct"].mean())
        assert reference[(task, task, "loss")] == pytest.approx(rows["loss"].mean(), abs=1e-5)
    with open_checkpoint(res / "task_vectors" / "mc.safetensors") as reader:
        assert all(k.endswith((FACTOR_A, FACTOR_B)) for k in reader.keys())
    front = read_table(res / "pareto.parquet")
    assert len(front) > 0 and {"accuracy_mc", "accuracy_gen"} <= set(front.columns)
    choice = read_table(res / "groups" / "all" / "choice.parquet")
    measured = read_table(res / "groups" / "all" / "selected_evals.parquet")
    vectors = {t: res / "task_vectors" / f"{t}.safetensors" for t in targets}
    expected = merge_files(
        tmp_path / "pretrained" / "model.safetensors", vectors, [float(choice[f"c_{t}"].iloc[0]) for t in targets]
    )
    for task in targets:
        model = scored_model(res / "groups" / "all" / "merged" / task)
        loaded = model.state_dict()
        assert max(float((loaded[k] - expected[k]).abs().max()) for k in expected) <= TOLERANCE
        rows = scorers[task](model, CPU)
        run_rows = measured.query("task == @task")
        assert run_rows["loss"].mean() == pytest.approx(rows["loss"].mean(), abs=1e-5)  # what the run measured
        assert run_rows["correct"].mean() == pytest.approx(rows["correct"].mean())
    # mapmerge select merges the LoRA task vectors again, having checked the pretrained model against the run's merge
    pretrained = tmp_path / "pretrained"
    out = res / "selected" / "mc-1.safetensors"  # the flat state dict (the default on this run: per-task folders)
    args = ["select", str(res), "--prefer", "mc=1", "--pretrained", str(pretrained), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr()
    c = json.loads(safetensors_metadata(out)["coefficients"])
    again = merge_files(pretrained / "model.safetensors", vectors, [c[t] for t in targets])
    assert max_diff(load_state_dict(out), again) == 0
