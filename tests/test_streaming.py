"""Large models: lazy reading, streamed merging (merge_files), lower-precision task vectors."""

import typing

import pytest
import torch

from mapmerge.builtin.model import build_model
from mapmerge.io import ArtifactError
from mapmerge.run.config import ConfigError, load_config, stage_config
from mapmerge.run.schema import TensorSelection
from mapmerge.stages import task_vectors
from mapmerge.tensors.checkpoints import (
    load_state_dict,
    open_checkpoint,
    safetensors_metadata,
    save_safetensors,
)
from mapmerge.tensors.engine import MergeEngine
from mapmerge.tensors.taskvectors import (
    VECTOR_DTYPES,
    extract_task_vector,
    merge_files,
    merged_state,
    task_vector_table,
)

MEMBERS = ["rot90", "invert", "flip_parity"]
SPECS = [
    None,
    {"operator": "ties", "density": 0.4},
    {"operator": "dare", "drop_rate": 0.5},
    {"operator": "dare_ties", "drop_rate": 0.5},
]
C = [0.3, 0.8, -0.5]


def make_model(out, dtype=torch.float32, vector_dtype="float32"):
    """An untrained width-2 benchmark model (pretrained in `dtype`), three perturbed copies, their task vectors."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    pre = {k: v.to(dtype) for k, v in build_model(width=2).state_dict().items()}
    save_safetensors(pre, out / "pre.safetensors")
    files = {"pretrained": out / "pre.safetensors", "vectors": {}, "checkpoints": {}}
    for task in MEMBERS:
        ft = {k: v + 0.1 * torch.randn_like(v) for k, v in pre.items()}
        files["checkpoints"][task] = out / f"{task}.safetensors"
        save_safetensors(ft, files["checkpoints"][task])
        files["vectors"][task] = out / f"tau_{task}.safetensors"
        extract_task_vector(
            files["pretrained"],
            files["checkpoints"][task],
            ["*"],
            ["head.*"],
            files["vectors"][task],
            task,
            vector_dtype,
        )
    return files


def model_engine(model: dict, **options) -> MergeEngine:
    """A CPU engine over make_model's files (its width-2 builder, digits evaluators, heads not merged)."""
    return MergeEngine(
        builder={"_target_": "mapmerge.builtin.model.build_model", "width": 2},
        pretrained=model["pretrained"],
        vectors=model["vectors"],
        task_checkpoints=model["checkpoints"],
        evaluators={t: {"_target_": "mapmerge.builtin.model.DigitsEvaluator", "task": t} for t in MEMBERS},
        merge={"include": ["*"], "exclude": ["head.*"]},
        device="cpu",
        **options,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("tiny"))


def in_memory(files, spec, seed=5):
    pre = load_state_dict(files["pretrained"])
    vectors = [load_state_dict(p) for p in files["vectors"].values()]
    return merged_state(pre, vectors, C, operator=spec, members=list(files["vectors"]), seed=seed)


def assert_same(got, expected):
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert torch.equal(got[name], expected[name]), name


# merge_files = merged_state, exactly


@pytest.mark.parametrize("spec", SPECS, ids=["task_arithmetic", "ties", "dare", "dare_ties"])
def test_merge_files_equals_in_memory_merge(tiny, spec):
    merged = merge_files(tiny["pretrained"], tiny["vectors"], C, operator=spec, seed=5)
    expected = in_memory(tiny, spec)
    assert_same(merged, expected)
    pre = load_state_dict(tiny["pretrained"])
    assert torch.equal(merged["head.weight"], pre["head.weight"])  # not merged
    assert not torch.equal(merged["body.0.weight"], pre["body.0.weight"])


def test_merge_files_keeps_the_pretrained_dtype(tmp_path):
    files = make_model(tmp_path, dtype=torch.bfloat16)
    merged = merge_files(files["pretrained"], files["vectors"], C, operator=SPECS[1])
    assert_same(merged, in_memory(files, SPECS[1]))
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}


def test_merge_files_from_torch_state_dicts(tiny, tmp_path):
    # .pt files are loaded (memory-mapped), not streamed, but merge the same
    torch.save(load_state_dict(tiny["pretrained"]), tmp_path / "pre.pt")
    vectors = {}
    for member, path in tiny["vectors"].items():
        vectors[member] = tmp_path / f"{member}.pt"
        torch.save(load_state_dict(path), vectors[member])
    assert_same(merge_files(tmp_path / "pre.pt", vectors, C, operator=SPECS[2], seed=5), in_memory(tiny, SPECS[2]))


def test_merge_files_errors_name_the_file(tiny, tmp_path):
    with pytest.raises(ValueError, match="3 task vectors but 2 coefficients"):
        merge_files(tiny["pretrained"], tiny["vectors"], C[:2])
    tau = load_state_dict(tiny["vectors"]["invert"])
    name = sorted(tau)[0]
    save_safetensors({k: v for k, v in tau.items() if k != name}, tmp_path / "fewer.safetensors")
    with pytest.raises(
        ArtifactError, match="fewer.safetensors: task vector of 'invert' holds other tensors than 'rot90'"
    ):
        merge_files(tiny["pretrained"], {**tiny["vectors"], "invert": tmp_path / "fewer.safetensors"}, C)
    save_safetensors({**tau, name: torch.zeros(3, 3)}, tmp_path / "shape.safetensors")
    with pytest.raises(ArtifactError, match=rf"shape.safetensors: tensor '{name}' has shape \(3, 3\)"):
        merge_files(tiny["pretrained"], {**tiny["vectors"], "invert": tmp_path / "shape.safetensors"}, C)
    save_safetensors({**tau, name: torch.full_like(tau[name], float("nan"))}, tmp_path / "nan.safetensors")
    with pytest.raises(ArtifactError, match=rf"nan.safetensors: tensor '{name}' holds NaN or inf"):
        merge_files(tiny["pretrained"], {**tiny["vectors"], "invert": tmp_path / "nan.safetensors"}, C)
    with pytest.raises(ArtifactError, match="nothere.safetensors: checkpoint not found"):
        merge_files(tmp_path / "nothere.safetensors", tiny["vectors"], C)


# the lazy reader


def test_lazy_reader_reads_tensor_by_tensor(tiny, tmp_path):
    whole = load_state_dict(tiny["pretrained"])
    with open_checkpoint(tiny["pretrained"]) as ckpt:
        assert ckpt.keys() == list(whole) and len(ckpt) == len(whole) and "head.weight" in ckpt
        meta = ckpt.meta()
        for name, tensor in whole.items():
            assert meta[name].shape == tensor.shape and meta[name].dtype == tensor.dtype and meta[name].is_meta
            assert torch.equal(ckpt.get(name), tensor)
        assert [n for n, _ in ckpt.items()] == list(whole)
        with pytest.raises(ArtifactError, match="pre.safetensors: has no tensor 'nothing'"):
            ckpt.get("nothing")
    # torch files: plain, wrapped, and the legacy (non-zip) format that cannot be memory-mapped
    torch.save(whole, tmp_path / "plain.pt")
    torch.save({"state_dict": whole, "epoch": 1}, tmp_path / "wrapped.ckpt")
    torch.save(whole, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for file in ("plain.pt", "wrapped.ckpt", "legacy.pt"):
        with open_checkpoint(tmp_path / file) as ckpt:
            assert ckpt.keys() == list(whole)
            assert ckpt.meta()["body.0.weight"].shape == whole["body.0.weight"].shape
            assert all(torch.equal(ckpt.get(n), t) for n, t in whole.items())


def test_lazy_reader_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="nothere.safetensors: checkpoint not found"):
        open_checkpoint(tmp_path / "nothere.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="junk.safetensors: unreadable checkpoint") as info:
        open_checkpoint(tmp_path / "junk.safetensors")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="junk.pt: unreadable checkpoint"):
        open_checkpoint(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ArtifactError, match="list.pt: not a state dict of tensors"):
        open_checkpoint(tmp_path / "list.pt")
    # NaN is found when its tensor is read, not before: the other tensors read fine
    save_safetensors({"good": torch.ones(2), "bad": torch.tensor([1.0, float("nan")])}, tmp_path / "nan.safetensors")
    with open_checkpoint(tmp_path / "nan.safetensors") as ckpt:
        assert torch.equal(ckpt.get("good"), torch.ones(2))
        with pytest.raises(ArtifactError, match="nan.safetensors: tensor 'bad' holds NaN or inf"):
            ckpt.get("bad")


# task vectors in bfloat16 / float16


def test_bf16_vectors_round_trip_and_the_engine_matches(tiny, tmp_path):
    half = make_model(tmp_path / "bf16", vector_dtype="bfloat16")
    pre = load_state_dict(half["pretrained"])
    for member, path in half["vectors"].items():
        tau = load_state_dict(path)
        ft = load_state_dict(half["checkpoints"][member])
        assert {t.dtype for t in tau.values()} == {torch.bfloat16}
        assert safetensors_metadata(path)["dtype"] == "bfloat16"
        for name, value in tau.items():
            assert torch.equal(value, (ft[name].float() - pre[name].float()).to(torch.bfloat16))
        assert path.stat().st_size < 0.6 * tiny["vectors"][member].stat().st_size
    # merges compute in float32 from the bf16 values
    spec = SPECS[1]
    merged = merge_files(half["pretrained"], half["vectors"], C, operator=spec)
    widened = [{n: t.float() for n, t in load_state_dict(p).items()} for p in half["vectors"].values()]
    assert_same(merged, merged_state(pre, widened, C, operator=spec, members=MEMBERS))
    engine = model_engine(half, operator=spec)
    engine.merge(C)
    state = engine.module.state_dict()
    for name in engine.names:
        torch.testing.assert_close(state[name], merged[name], rtol=1e-6, atol=1e-6)


def test_extract_stage_writes_the_configured_dtype(tiny, tmp_path):
    merge = {"include": ["*"], "exclude": ["head.*"], "vector_dtype": "float16"}
    out = tmp_path / "tau.safetensors"
    task_vectors.run_extract_task_vector(
        {"merge": merge},
        task="rot90",
        pretrained=tiny["pretrained"],
        finetuned=tiny["checkpoints"]["rot90"],
        vector=out,
    )
    assert {t.dtype for t in load_state_dict(out).values()} == {torch.float16}
    with pytest.raises(
        ValueError, match="model.merge.vector_dtype: must be one of float32, bfloat16, float16, got 'int8'"
    ):
        extract_task_vector(tiny["pretrained"], tiny["checkpoints"]["rot90"], ["*"], [], out, "rot90", "int8")
    big = {k: v + 1e5 for k, v in load_state_dict(tiny["pretrained"]).items()}
    save_safetensors(big, tmp_path / "big.safetensors")
    with pytest.raises(
        ArtifactError,
        match="big.safetensors: tensor '.*' minus the pretrained one overflows model.merge.vector_dtype float16",
    ):
        extract_task_vector(
            tiny["pretrained"], tmp_path / "big.safetensors", ["*"], [], tmp_path / "o.safetensors", "x", "float16"
        )
    assert not (tmp_path / "o.safetensors").exists()


def test_task_vector_table_streams_the_gram_matrix(tiny, tmp_path):
    table = task_vector_table(tiny["vectors"]).set_index("task")
    flats = {
        m: torch.cat([t.double().flatten() for _, t in sorted(load_state_dict(p).items())])
        for m, p in tiny["vectors"].items()
    }
    for a in MEMBERS:
        assert table.loc[a, "norm"] == pytest.approx(float(flats[a].norm()), rel=1e-9)
        assert table.loc[a, "n_params"] == flats[a].numel()
        for b in MEMBERS:
            cos = float(flats[a] @ flats[b] / (flats[a].norm() * flats[b].norm()))
            assert table.loc[a, f"cos_{b}"] == pytest.approx(cos, rel=1e-9, abs=1e-12)
    tau = load_state_dict(tiny["vectors"]["invert"])
    save_safetensors(dict(list(tau.items())[1:]), tmp_path / "fewer.safetensors")
    with pytest.raises(ArtifactError, match="fewer.safetensors: task vector of 'invert' holds other tensors"):
        task_vector_table({**tiny["vectors"], "invert": tmp_path / "fewer.safetensors"})


# config


def test_vector_dtype_config(repo):
    assert typing.get_args(TensorSelection.model_fields["vector_dtype"].annotation) == tuple(VECTOR_DTYPES)
    base = load_config(repo / "config")
    assert base["model"]["merge"]["vector_dtype"] == "float32"
    half = load_config(repo / "config", overrides=["model.merge.vector_dtype=bfloat16"])
    assert half["model"]["merge"]["vector_dtype"] == "bfloat16"
    assert stage_config(half, "extract_task_vector") != stage_config(base, "extract_task_vector")  # reruns extraction
    with pytest.raises(
        ConfigError, match="model.merge.vector_dtype: must be one of float32, bfloat16, float16, got 'int8'"
    ) as info:
        load_config(repo / "config", overrides=["model.merge.vector_dtype=int8"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_merges_half_precision_vectors_in_float32(tmp_path, dtype):
    """bf16 task vectors are held as bf16 and added into a float32 accumulator: the float32 merge of their values,
    rounded once into the module's dtype (allowing for the order of the sum)."""
    half = make_model(tmp_path, vector_dtype="bfloat16")
    pre = load_state_dict(half["pretrained"])
    widened = [{n: t.float() for n, t in load_state_dict(p).items()} for p in half["vectors"].values()]
    expected = merged_state(pre, widened, C, members=MEMBERS)
    engine = model_engine(half, dtype=dtype)
    assert all(m.dense.dtype == torch.bfloat16 for m in engine.merged)  # kept in their storage dtype
    engine.merge(C)
    state = engine.module.state_dict()
    for name in engine.names:
        assert state[name].dtype == getattr(torch, dtype)
        if dtype == "float32":
            torch.testing.assert_close(state[name], expected[name], rtol=1e-6, atol=1e-6)
        else:  # one rounding of the float32 sum (a tie may round either way)
            torch.testing.assert_close(state[name], expected[name].to(torch.bfloat16), rtol=2**-8, atol=0)
