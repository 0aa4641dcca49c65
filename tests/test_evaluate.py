import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SMALL_BENCHMARK, SMALL_TASKS
from mapmerge.builtin.model import DigitsEvaluator, build_model
from mapmerge.core.metrics import metrics_from_examples
from mapmerge.errors import ConfigError
from mapmerge.tensors.checkpoints import load_state_dict
from mapmerge.tensors.engine import (
    FAILED_EXAMPLE,
    EvaluationError,
    MergeEngine,
    check_rows,
    failure_rows,
)
from mapmerge.tensors.taskvectors import extract_task_vector, merged_state


@pytest.fixture(scope="module")
def vectors(small_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors")
    paths = {}
    for task in SMALL_TASKS:
        paths[task] = out / f"{task}.safetensors"
        extract_task_vector(
            small_bench / "pretrained.safetensors",
            small_bench / f"{task}.safetensors",
            ["*"],
            ["head.*"],
            paths[task],
            task,
        )
    return paths


def evaluator_cfg(task):
    return {"_target_": "mapmerge.builtin.model.DigitsEvaluator", "task": task, "seed": 0}


def make_engine(small_bench, vectors, checkpoints=None, **kwargs):
    checkpoints = checkpoints or {t: small_bench / f"{t}.safetensors" for t in SMALL_TASKS}
    return MergeEngine(
        builder={"_target_": "mapmerge.builtin.model.build_model", "width": SMALL_BENCHMARK["width"]},
        pretrained=small_bench / "pretrained.safetensors",
        vectors=vectors,
        task_checkpoints=checkpoints,
        evaluators={t: evaluator_cfg(t) for t in SMALL_TASKS},
        merge={"include": ["*"], "exclude": ["head.*"]},
        device="cpu",
        **kwargs,
    )


def direct_eval(state, task):
    """Evaluate a full state dict the plain way: a fresh module, load, run the evaluator."""
    module = build_model(width=SMALL_BENCHMARK["width"])
    module.load_state_dict(state)
    module.eval()
    return DigitsEvaluator(task, seed=0)(module, "cpu")


def test_engine_equals_plain_task_arithmetic(small_bench, vectors):
    engine = make_engine(small_bench, vectors)
    c = [0.4, 0.7, 0.2]
    rows = engine.evaluate(c, sample="s1")
    assert (
        list(rows.columns) == ["sample", "task", "example", "correct", "loss", "error"] and rows["error"].isna().all()
    )
    pre = load_state_dict(small_bench / "pretrained.safetensors")
    merged = merged_state(pre, [load_state_dict(p) for p in vectors.values()], c)
    for task in SMALL_TASKS:
        head = {k: v for k, v in load_state_dict(small_bench / f"{task}.safetensors").items() if k.startswith("head.")}
        expected = direct_eval({**merged, **head}, task)
        got = rows[rows["task"] == task].reset_index(drop=True)
        assert (got["correct"].to_numpy() == expected["correct"].to_numpy()).all()
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-4, atol=1e-5)


def test_fine_tuned_corner_reproduces_the_fine_tuned_model(small_bench, vectors):
    engine = make_engine(small_bench, vectors)
    rows = engine.evaluate([1.0, 0.0, 0.0], sample="ft")
    expected = direct_eval(load_state_dict(small_bench / f"{SMALL_TASKS[0]}.safetensors"), SMALL_TASKS[0])
    got = rows[rows["task"] == SMALL_TASKS[0]]
    assert got["correct"].mean() == pytest.approx(expected["correct"].mean())


def test_checkpoints_are_read_once_and_the_model_never_copied(small_bench, vectors, tmp_path):
    # copies of the inputs, deleted after the engine is built: later samples cannot re-read them
    import shutil

    copies = {}
    for name in ["pretrained", *SMALL_TASKS]:
        copies[name] = shutil.copy(small_bench / f"{name}.safetensors", tmp_path / f"{name}.safetensors")
    vec_copies = {t: shutil.copy(p, tmp_path / f"tau_{t}.safetensors") for t, p in vectors.items()}
    engine = MergeEngine(
        builder={"_target_": "mapmerge.builtin.model.build_model", "width": SMALL_BENCHMARK["width"]},
        pretrained=copies["pretrained"],
        vectors=vec_copies,
        task_checkpoints={t: copies[t] for t in SMALL_TASKS},
        evaluators={t: evaluator_cfg(t) for t in SMALL_TASKS},
        merge={"include": ["*"], "exclude": ["head.*"]},
        device="cpu",
    )
    for path in tmp_path.iterdir():
        path.unlink()
    pointers = [p.data_ptr() for p in engine.module.parameters()]
    first = engine.evaluate([0.1, 0.2, 0.3], sample="a")
    second = engine.evaluate([0.9, 0.0, 0.5], sample="b")
    assert [p.data_ptr() for p in engine.module.parameters()] == pointers
    assert not first["correct"].equals(second["correct"]) or not np.allclose(first["loss"], second["loss"])
    # evaluating a again after b gives the same rows: no state leaks between samples
    again = engine.evaluate([0.1, 0.2, 0.3], sample="a")
    pd.testing.assert_frame_equal(first, again)


def test_bad_evaluator_output_names_sample_and_task():
    with pytest.raises(EvaluationError, match="sample s7, task t: evaluator returned NaN or inf in 'loss'"):
        check_rows(pd.DataFrame({"correct": [True], "loss": [float("nan")]}), "s7", "t")
    with pytest.raises(EvaluationError, match="sample s7, task t: evaluator returned neither"):
        check_rows(pd.DataFrame({"score": [1.0]}), "s7", "t")


def test_raising_evaluator_names_sample_and_task(small_bench, vectors):
    engine = make_engine(small_bench, vectors)
    engine.evaluators[SMALL_TASKS[1]] = lambda module, device: 1 / 0
    with pytest.raises(EvaluationError, match=f"sample s3, task {SMALL_TASKS[1]}: evaluator raised ZeroDivisionError"):
        engine.evaluate([0.1, 0.1, 0.1], sample="s3")


def test_recorded_failure_keeps_the_other_tasks(small_bench, vectors, caplog):
    engine = make_engine(small_bench, vectors)
    engine.evaluators[SMALL_TASKS[1]] = lambda module, device: pd.DataFrame({"correct": [True], "loss": [float("nan")]})
    with pytest.raises(EvaluationError, match=f"sample s3, task {SMALL_TASKS[1]}: evaluator returned NaN"):
        engine.evaluate([0.1, 0.1, 0.1], sample="s3")
    rows = engine.evaluate([0.1, 0.1, 0.1], sample="s3", on_error="record")
    failed = rows[rows["task"] == SMALL_TASKS[1]]
    assert len(failed) == 1 and failed["example"].iloc[0] == FAILED_EXAMPLE
    assert failed[["correct", "loss"]].isna().all(axis=None)
    assert failed["error"].iloc[0] == f"sample s3, task {SMALL_TASKS[1]}: evaluator returned NaN or inf in 'loss'"
    others = rows[rows["task"] != SMALL_TASKS[1]]
    assert set(others["task"]) == {SMALL_TASKS[0], SMALL_TASKS[2]} and others["error"].isna().all()
    assert "evaluation.on_error=record" in caplog.text


def test_metrics_from_examples():
    rows = pd.DataFrame(
        {
            "sample": ["a"] * 4,
            "task": ["x", "x", "y", "y"],
            "example": [0, 1, 0, 1],
            "correct": [1.0, 0.0, 1.0, 1.0],
            "loss": [0.5, 1.5, 0.1, 0.3],
        }
    )
    table = metrics_from_examples(rows).set_index(["task", "metric"])["value"]
    assert table[("x", "accuracy")] == 0.5 and table[("x", "loss")] == 1.0
    assert table[("y", "accuracy")] == 1.0 and table[("y", "loss")] == pytest.approx(0.2)


def test_metrics_keep_recorded_failures_visible():
    good = check_rows(pd.DataFrame({"correct": [True, False]}), "a", "x")  # this evaluator reports no loss
    rows = pd.concat([good, failure_rows("a", "y", "sample a, task y: boom")], ignore_index=True)
    table = metrics_from_examples(rows)
    assert table[["sample", "task", "metric"]].values.tolist() == [["a", "x", "accuracy"], ["a", "y", "accuracy"]]
    assert table["value"].iloc[0] == 0.5 and np.isnan(table["value"].iloc[1])
    assert pd.isna(table["error"].iloc[0]) and table["error"].iloc[1] == "sample a, task y: boom"


def test_device_choice():
    from mapmerge.run.preflight import check_device
    from mapmerge.tensors.engine import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EvaluationError, match="evaluation.device: 'cuda'"):
            pick_device("cuda")
    # a device this machine lacks: the job says what the driver's preflight says, less the driver's advice
    with pytest.raises(EvaluationError) as job:
        pick_device("cuda:99")
    with pytest.raises(ConfigError) as driver:
        check_device("cuda:99")
    assert str(driver.value).startswith(f"{job.value}; use auto or cpu here") and "\n" not in str(job.value)


def test_half_precision_checkpoints_are_evaluated_in_float32(small_bench, vectors, tmp_path):
    from mapmerge.tensors.checkpoints import save_safetensors

    half = {k: v.to(torch.bfloat16) for k, v in load_state_dict(small_bench / "pretrained.safetensors").items()}
    save_safetensors(half, tmp_path / "pretrained_bf16.safetensors")
    engine = MergeEngine(
        builder={"_target_": "mapmerge.builtin.model.build_model", "width": SMALL_BENCHMARK["width"]},
        pretrained=tmp_path / "pretrained_bf16.safetensors",
        vectors=vectors,
        task_checkpoints={t: small_bench / f"{t}.safetensors" for t in SMALL_TASKS},
        evaluators={t: evaluator_cfg(t) for t in SMALL_TASKS},
        merge={"include": ["*"], "exclude": ["head.*"]},
        device="cpu",
    )
    rows = engine.evaluate([1.0, 0.0, 0.0], sample="bf16")
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())
    assert rows[rows["task"] == SMALL_TASKS[0]]["correct"].mean() > 0.5


def old_merge(small_bench, vectors, c):
    """The engine's merge before it merged in place: one addmv over flat float32 vectors."""
    pre = load_state_dict(small_bench / "pretrained.safetensors")
    taus = [load_state_dict(p) for p in vectors.values()]
    names = sorted(taus[0])
    theta = torch.cat([pre[n].float().flatten() for n in names])
    matrix = torch.stack([torch.cat([tau[n].float().flatten() for n in names]) for tau in taus])
    return names, torch.addmv(theta, matrix.T, torch.tensor(c, dtype=torch.float32))


def test_float32_merge_is_the_old_addmv_exactly_and_half_rounds_once(small_bench, vectors):
    c = [0.4, -0.7, 1.2]
    names, expected = old_merge(small_bench, vectors, c)
    for dtype, placement in (("float32", "device"), ("float32", "host"), ("bfloat16", "auto"), ("float16", "auto")):
        engine = make_engine(small_bench, vectors, dtype=dtype, placement=placement)
        engine.merge(c)
        state = engine.module.state_dict()
        got = torch.cat([state[n].flatten() for n in names])
        assert torch.equal(got, expected.to(got.dtype)), (dtype, placement)


def test_half_precision_evaluation_of_the_cnn(small_bench, vectors):
    c = [0.5, 0.5, 0.5]
    rows = {
        dtype: make_engine(small_bench, vectors, dtype=dtype).evaluate(c, sample="s")
        for dtype in ("float32", "bfloat16")
    }
    half = make_engine(small_bench, vectors, dtype="bfloat16")
    assert {p.dtype for p in half.module.parameters()} == {torch.bfloat16}
    assert half.module(torch.zeros(2, 1, 8, 8)).dtype == torch.float32  # float inputs in, float32 out
    for task in SMALL_TASKS:
        accuracy = {d: r[r["task"] == task]["correct"].mean() for d, r in rows.items()}
        assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.02, (task, accuracy)
    with pytest.raises(ValueError, match="evaluation.dtype: must be one of float32, bfloat16, float16, got 'int8'"):
        make_engine(small_bench, vectors, dtype="int8")


@pytest.mark.slow  # fine-tunes the real MiniLM twice
def test_half_precision_accuracy_on_minilm_is_within_half_a_point(tmp_path):
    """Two MiniLM classifiers fine-tuned on fortunes topics, 200 held-out texts each: bfloat16 merges score
    within 0.5 points of float32 on every task (float16 is left out: 20x slower than bfloat16 on this CPU)."""
    transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'mapmerge[models]')")
    from fortunes_tasks import finetune_classifier, minilm_dir, topic_task, write_data
    from mapmerge.adapters import transformers as adapter

    transformers.logging.set_verbosity_error()
    base = minilm_dir()
    tasks = {"tech_food": ("computers", "food"), "law_science": ("law", "science")}
    data, checkpoints, vectors = {}, {}, {}
    for seed, (task, topics) in enumerate(tasks.items()):
        train, held = topic_task(topics, 96, 100, seed=seed)
        data[task] = write_data(held, tmp_path / f"{task}.csv")
        finetune_classifier(base, train, tmp_path / task, steps=24, seed=seed)
        checkpoints[task] = tmp_path / task / "model.safetensors"
        vectors[task] = tmp_path / f"tau_{task}.safetensors"
        extract_task_vector(base / "model.safetensors", checkpoints[task], ["*"], ["classifier.*"], vectors[task], task)
    evaluators = {
        t: {
            "_target_": adapter.EVALUATORS["sequence_classification"],
            "data": str(data[t]),
            "tokenizer": str(tmp_path / t),
            "directory": str(tmp_path / t),
            "max_length": 24,
        }
        for t in tasks
    }
    correct = {}  # (dtype, c) -> per task: examples right, examples
    for dtype in ("float32", "bfloat16"):
        engine = MergeEngine(
            {"_target_": "mapmerge.adapters.transformers.build_model", "directory": str(tmp_path / "tech_food")},
            base / "model.safetensors",
            vectors,
            checkpoints,
            evaluators,
            {"include": ["*"], "exclude": ["classifier.*"]},
            device="cpu",
            dtype=dtype,
        )
        for c in ([1.0, 0.0], [0.0, 1.0], [0.5, 0.5]):
            correct[dtype, tuple(c)] = engine.evaluate(c, sample="s").groupby("task")["correct"].agg(["sum", "size"])
    for (dtype, c), measured in correct.items():
        # in whole examples: half a point of 200 is one example (as fractions, 0.60 - 0.595 > 0.005 in floats)
        apart = (measured["sum"] - correct["float32", c]["sum"]).abs()
        assert (200 * apart <= measured["size"]).all(), (dtype, c, measured, correct["float32", c])
    right = correct["float32", (1.0, 0.0)].loc["tech_food"]
    assert right["sum"] >= 0.75 * right["size"]  # the fine-tuned models learned their task


def test_kept_scores_are_the_evaluators_logits(small_bench, vectors):
    plain = make_engine(small_bench, vectors).evaluate([0.3, 0.6, 0.2], sample="a")
    kept = make_engine(small_bench, vectors, scores="auto").evaluate([0.3, 0.6, 0.2], sample="a")
    assert "scores" not in plain and "target" not in plain  # the workflow's rows are as before
    pd.testing.assert_frame_equal(kept[list(plain.columns)], plain)
    scores = np.stack(kept["scores"].to_numpy())
    assert scores.shape == (len(kept), 10) and scores.dtype == np.float64
    assert ((scores.argmax(axis=1) == kept["target"].to_numpy()) == kept["correct"].astype(bool)).all()


def test_kept_scores_must_be_returned_whole():
    rows = pd.DataFrame({"correct": [True, False]})
    with pytest.raises(EvaluationError, match=r"sample s1, task t: evaluator returned no \['scores', 'target'\] \("):
        check_rows(rows, "s1", "t", scores="required")
    assert "scores" not in check_rows(rows, "s1", "t", scores="auto")  # auto: kept where returned
    ragged = rows.assign(scores=[[0.1, 0.2], [0.3]], target=[1, 0])
    with pytest.raises(EvaluationError, match="sample s1, task t: 'scores' of other lengths, NaN or inf"):
        check_rows(ragged, "s1", "t", scores="required")
    with pytest.raises(EvaluationError, match="'scores' of other lengths, NaN or inf"):
        check_rows(rows.assign(scores=[[0.1, np.nan], [0.3, 0.0]], target=[1, 0]), "s1", "t", scores="required")
    with pytest.raises(EvaluationError, match="sample s1, task t: a 'target' is not the index of one of its 'scores'"):
        check_rows(rows.assign(scores=[[0.1, 0.2], [0.3, 0.0]], target=[1, 2]), "s1", "t", scores="auto")
    assert "scores" not in check_rows(ragged, "s1", "t")  # kept only when asked (default: none)


def examples(model: str, task: str, n: int, key: str = "sample", error: str | None = None) -> pd.DataFrame:
    """A per-example table's rows for one (model, task) evaluation: n examples, or a failed one's single row."""
    rows = pd.DataFrame({key: model, "task": task, "example": range(n), "correct": 1.0, "loss": 0.1})
    return rows.assign(error=error) if error else rows.assign(error=None)


def test_a_task_evaluated_on_other_examples_stops_the_collection_and_the_ledger(tmp_path):
    """An evaluator that returns 499 rows for one model and 500 for the others: its accuracy was taken without a
    word. The group's collection refuses it (before any fit), and the ledger, which reads the reference models' too;
    a failed evaluation's single row (evaluation.on_error=record) is not counted."""
    from mapmerge.io import write_table
    from mapmerge.stages import collect

    rounds = write_table(
        pd.DataFrame({"sample": ["s0", "s1", "s2"], "c_a": [0.0, 0.5, 1.0]}), tmp_path / "r00.parquet", "x"
    )
    good = write_table(
        pd.concat([examples("s0", "a", 500), examples("s1", "a", 1, error="boom")]), tmp_path / "b0.parquet", "x"
    )
    short = write_table(examples("s2", "a", 499), tmp_path / "b1.parquet", "x")
    out = {"metrics": tmp_path / "metrics.parquet", "samples": tmp_path / "samples.parquet"}
    collect.run_collect_metrics({}, rounds=[rounds], evals=[good], **out)  # the failed one's row is no example count
    with pytest.raises(ValueError) as info:
        collect.run_collect_metrics({}, rounds=[rounds], evals=[good, short], **out)
    assert str(info.value) == (
        f"task a: the evaluator returned 499 rows for s2 ({short}) and 500 for each of 1 other evaluations; it must "
        "return one row per example, the same examples for every model"
    )
    reference = write_table(
        pd.concat([examples("pretrained", "a", 500, "model"), examples("a", "a", 498, "model")]),
        tmp_path / "ref.parquet",
        "x",
    )
    with pytest.raises(ValueError, match=r"^task a: the evaluator returned 498 rows for a \("):
        collect.run_ledger(
            {}, evals={"reference_examples.parquet": reference, "all/b0.parquet": good}, ledger=tmp_path / "l.parquet"
        )
    assert not (tmp_path / "l.parquet").exists()
