"""Where the engine keeps task vectors (mapmerge.tensors.placement), and low-rank task vectors in the merge."""

import logging

import pytest
import torch
from safetensors.torch import save_file

from mapmerge.builtin.model import build_model
from mapmerge.run.config import ConfigError, load_config, stage_config
from mapmerge.tensors import placement
from mapmerge.tensors.engine import EvaluationError, MergeEngine
from mapmerge.tensors.placement import GIB, Placement, Sizes

SIZES = Sizes(module=2 * GIB, pre=2 * GIB, vectors=8 * GIB, workspace=GIB // 8, chunk=GIB // 4)


@pytest.mark.parametrize(
    ("requested", "free", "vectors", "pre"),
    [
        ("auto", 20 * GIB, "device", "device"),  # 12.1 GiB needed, 18 usable
        ("auto", 12 * GIB, "host", "device"),  # 10.8 usable: the vectors stream, theta_pre stays
        ("auto", 4 * GIB, "host", "host"),  # 3.6 usable: not even the model and theta_pre
        ("host", 20 * GIB, "host", "device"),
        ("device", 4 * GIB, "device", "device"),  # forced: obeyed, the log says it would not fit
    ],
)
def test_plan_picks_what_fits_and_logs_why(requested, free, vectors, pre, caplog):
    with caplog.at_level(logging.INFO, logger="mapmerge"):
        chosen = placement.plan(requested, free, SIZES, "cuda")
    assert (chosen.vectors, chosen.pre) == (vectors, pre)
    assert caplog.messages == [chosen.reason] and "\n" not in chosen.reason
    assert chosen.reason.startswith(f"evaluation.placement {requested}: task vectors ")
    assert "8.00 GiB of vectors" in chosen.reason and f"{free / GIB:.2f} GiB free" in chosen.reason
    assert ("forced by evaluation.placement" in chosen.reason) == (requested != "auto")


def test_plan_counts_what_is_already_resident_and_refuses_unknown_values():
    # on CPU the model and theta_pre are in memory before the plan: they are part of what the job may use
    assert placement.plan("auto", 10 * GIB, SIZES, "cpu", resident=4 * GIB).vectors == "device"
    assert placement.plan("auto", 10 * GIB, SIZES, "cpu").vectors == "host"
    with pytest.raises(ValueError, match="evaluation.placement: must be one of auto, device, host, got 'disk'"):
        placement.plan("disk", GIB, SIZES, "cpu")


def test_device_bytes_formula():
    assert (
        placement.device_bytes(SIZES, Placement("device", "device", ""))
        == SIZES.module + SIZES.pre + SIZES.vectors + SIZES.workspace
    )
    assert (
        placement.device_bytes(SIZES, Placement("host", "device", ""))
        == SIZES.module + SIZES.pre + SIZES.workspace + 2 * SIZES.chunk
    )
    assert (
        placement.device_bytes(SIZES, Placement("host", "host", "")) == SIZES.module + SIZES.workspace + 2 * SIZES.chunk
    )


def test_free_memory_on_cpu():
    assert 0 < placement.free_memory(torch.device("cpu")) < 1 << 50


def test_config_keys(repo):
    base = load_config(repo / "config")
    assert (base["evaluation"]["dtype"], base["evaluation"]["placement"]) == ("float32", "auto")
    half = load_config(repo / "config", overrides=["evaluation.dtype=bfloat16"])
    assert stage_config(half, "evaluate")["model"]["dtype"] == "bfloat16"
    assert stage_config(half, "evaluate") != stage_config(base, "evaluate")  # evaluated again
    for key, value in (("dtype", "int8"), ("placement", "disk")):
        with pytest.raises(ConfigError, match=f"evaluation.{key}") as info:
            load_config(repo / "config", overrides=[f"evaluation.{key}={value}"])
        assert "\n" not in str(info.value)


# low-rank task vectors: name::lora_A [r x in], name::lora_B [out x r], tau = B A

MEMBERS = ["dense", "lora", "both"]
C = [0.7, -0.4, 1.3]


@pytest.fixture(scope="module")
def low_rank(tmp_path_factory):
    """A width-2 model; `dense` covers every body tensor, `lora` only body.0.weight (rank 2), `both` has a dense
    features.0.weight and a rank-1 body.0.weight; returns the files and every member's dense tau."""
    out = tmp_path_factory.mktemp("lowrank")
    torch.manual_seed(0)
    pre = build_model(width=2).state_dict()
    save_file(pre, out / "pre.safetensors")
    shape = pre["body.0.weight"].shape
    a1, b1 = torch.randn(2, shape[1]), 0.1 * torch.randn(shape[0], 2)
    a2, b2 = torch.randn(1, shape[1]), 0.1 * torch.randn(shape[0], 1)
    dense_f = 0.1 * torch.randn_like(pre["features.0.weight"])
    taus = {
        "dense": {n: 0.1 * torch.randn_like(t) for n, t in pre.items() if not n.startswith("head.")},
        "lora": {"body.0.weight": b1 @ a1},
        "both": {"features.0.weight": dense_f, "body.0.weight": b2 @ a2},
    }
    stored = {
        "dense": taus["dense"],
        "lora": {"body.0.weight::lora_A": a1, "body.0.weight::lora_B": b1},
        "both": {"features.0.weight": dense_f, "body.0.weight::lora_A": a2, "body.0.weight::lora_B": b2},
    }
    files = {"pretrained": out / "pre.safetensors", "vectors": {}, "checkpoints": {}, "taus": taus, "pre": pre}
    for member in MEMBERS:
        files["vectors"][member] = out / f"tau_{member}.safetensors"
        save_file({k: v.contiguous() for k, v in stored[member].items()}, files["vectors"][member])
        files["checkpoints"][member] = out / "pre.safetensors"
    return files


def engine_for(files, **kwargs):
    return MergeEngine(
        builder={"_target_": "mapmerge.builtin.model.build_model", "width": 2},
        pretrained=files["pretrained"],
        vectors=files["vectors"],
        task_checkpoints={"rot90": files["pretrained"]},
        evaluators={"rot90": {"_target_": "mapmerge.builtin.model.DigitsEvaluator", "task": "rot90"}},
        merge={"include": ["*"], "exclude": ["head.*"]},
        device="cpu",
        **kwargs,
    )


@pytest.mark.parametrize("where", ["device", "host"])
def test_low_rank_members_merge_as_their_product(low_rank, where):
    engine = engine_for(low_rank, placement=where)
    assert engine.placement.vectors == where
    assert engine.names == sorted(low_rank["taus"]["dense"])  # the union over members
    engine.merge(C)
    state = engine.module.state_dict()
    for name in engine.names:
        expected = low_rank["pre"][name].clone()
        for c, member in zip(C, MEMBERS):
            expected += c * low_rank["taus"][member].get(name, torch.zeros_like(expected))  # a missing tensor adds 0
        torch.testing.assert_close(state[name], expected, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(state["head.weight"], low_rank["pre"]["head.weight"])  # not merged
    assert engine.evaluate(C, sample="s")["correct"].notna().all()


def test_low_rank_members_refuse_other_operators(low_rank):
    with pytest.raises(
        EvaluationError,
        match=r"merge.operator: ties needs dense task vectors, and 'lora' \(.*tau_lora.safetensors\) is low-rank",
    ):
        engine_for(low_rank, operator={"operator": "ties", "density": 0.5})


def test_bad_low_rank_factors_name_the_file_and_tensor(low_rank, tmp_path):
    shape = low_rank["pre"]["body.0.weight"].shape
    cases = {
        "lonely": (
            {"body.0.weight::lora_A": torch.ones(2, shape[1])},
            "tensor 'body.0.weight::lora_A' lacks its other low-rank factor",
        ),
        "shape": (
            {"body.0.weight::lora_A": torch.ones(2, 3), "body.0.weight::lora_B": torch.ones(shape[0], 2)},
            r"low-rank tensor 'body.0.weight': lora_B \(8, 2\) @ lora_A \(2, 3\) does not give the pretrained model's shape \(8, 64\)",
        ),
        "suffix": (
            {"body.0.weight::lora_C": torch.ones(2)},
            "tensor 'body.0.weight::lora_C': a low-rank factor is named",
        ),
    }
    for label, (tensors, message) in cases.items():
        save_file(tensors, tmp_path / f"{label}.safetensors")
        files = {**low_rank, "vectors": {**low_rank["vectors"], "lora": tmp_path / f"{label}.safetensors"}}
        with pytest.raises(Exception, match=f"{label}.safetensors: {message}"):
            engine_for(files)
