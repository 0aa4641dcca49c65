"""Merge operators (task_arithmetic, ties, dare, dare_ties, slerp): hand-computed examples, seeding, config, wiring."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from mapmerge.builtin.model import build_model
from mapmerge.core.groups import plain_plan
from mapmerge.io import write_table
from mapmerge.run.config import STAGE_ENTRY, ConfigError, load_config, stage_config
from mapmerge.run.fingerprint import stage_files
from mapmerge.stages import evaluation, merge_group
from mapmerge.tensors.checkpoints import load_state_dict, save_safetensors
from mapmerge.tensors.operators import (
    OperatorError,
    apply_operator,
    seed_for,
    slerp_dot,
    slerp_weights,
    trim_mask,
    validate,
)
from mapmerge.tensors.taskvectors import extract_task_vector, merge_files, merged_state

TIES = {"operator": "ties", "density": 0.4}
DARE = {"operator": "dare", "drop_rate": 0.5}
DARE_TIES = {"operator": "dare_ties", "drop_rate": 0.5}
SLERP = {"operator": "slerp"}

# TIES, 3 members x 5 elements, density 0.4 -> k = ceil(0.4 * 5) = 2 entries kept per member.
TAUS = torch.tensor(
    [
        [3.0, -1.0, 2.0, 0.5, -4.0],  # |.| 3 1 2 .5 4 -> keeps -4 (e4) and 3 (e0)
        [-2.0, 5.0, 1.0, -1.0, -1.0],  # |.| 2 5 1 1 1 -> keeps 5 (e1) and -2 (e0)
        [1.0, 2.0, -3.0, 2.0, 2.0],  # |.| 1 2 3 2 2 -> keeps -3 (e2), then the tie at 2 (e1, e3, e4) goes to e1
    ]
)
# trimmed:  [3, 0, 0, 0, -4], [-2, 5, 0, 0, 0], [0, 2, -3, 0, 0]
# sum:      [1, 7, -3, 0, -4] -> elected signs [+, +, -, none, -]
# agreeing: e0 member 1 only (3; member 2's -2 disagrees), e1 members 2 and 3 (5, 2), e2 member 3 (-3),
#           e3 none, e4 member 1 (-4); each kept entry is divided by its count (1, 2, 1, -, 1):
TIES_EXPECTED = torch.tensor(
    [
        [3.0, 0.0, 0.0, 0.0, -4.0],
        [0.0, 2.5, 0.0, 0.0, 0.0],
        [0.0, 1.0, -3.0, 0.0, 0.0],
    ]
)
# so with all c_i = lambda the merge adds lambda * disjoint mean = lambda * [3, 3.5, -3, 0, -4].


def test_task_arithmetic_is_identity():
    stacked = torch.randn(3, 4, 2)
    out = apply_operator({"operator": "task_arithmetic"}, ["a", "b", "c"], "w", stacked)
    assert torch.equal(out, stacked)
    assert torch.equal(apply_operator(None, ["a", "b", "c"], "w", stacked), stacked)


def test_ties_hand_computed():
    out = apply_operator(TIES, ["a", "b", "c"], "w", TAUS)
    torch.testing.assert_close(out, TIES_EXPECTED, rtol=0, atol=0)
    torch.testing.assert_close(out.sum(dim=0), torch.tensor([3.0, 3.5, -3.0, 0.0, -4.0]), rtol=0, atol=0)
    # per tensor: the shape is kept, each [M, *shape] row trimmed over all its entries
    out2d = apply_operator(TIES, ["a", "b", "c"], "w", TAUS.reshape(3, 5, 1))
    assert out2d.shape == (3, 5, 1) and torch.equal(out2d.reshape(3, 5), TIES_EXPECTED)


def test_ties_zero_sum_elects_no_sign_and_full_density_keeps_all():
    # density 1: nothing trimmed; e0: +1 and -1 sum to 0 -> no sign, both 0; e1: 2 and 4 agree -> 1, 2
    stacked = torch.tensor([[1.0, 2.0], [-1.0, 4.0]])
    out = apply_operator({"operator": "ties", "density": 1.0}, ["a", "b"], "b", stacked)
    assert torch.equal(out, torch.tensor([[0.0, 1.0], [0.0, 2.0]]))


def test_trim_keeps_exactly_k_with_ties_to_the_lower_index():
    row = torch.tensor([[1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # all magnitudes equal
    mask = trim_mask(row, 0.3)  # ceil(0.3 * 10) = 3 (not 4 from 3.0000000000000004)
    assert mask.tolist() == [[True, True, True] + [False] * 7]
    assert trim_mask(torch.tensor([[0.5, -9.0, 0.1]]), 0.01).tolist() == [[False, True, False]]  # at least one


def test_dare_hand_computed_rescale():
    # drop_rate 0.75: every entry is either dropped (0) or kept and scaled by 1 / 0.25 = 4
    stacked = torch.arange(1.0, 201.0).reshape(2, 100)
    out = apply_operator({"operator": "dare", "drop_rate": 0.75}, ["a", "b"], "w", stacked, seed=0)
    kept = out != 0
    assert torch.equal(out[kept], 4 * stacked[kept])
    assert 0.1 < kept.float().mean() < 0.4
    # drop_rate 0 keeps everything as it is
    assert torch.equal(
        apply_operator({"operator": "dare", "drop_rate": 0.0}, ["a", "b"], "w", stacked, seed=0), stacked
    )


def test_dare_seeding_is_pinned():
    # Regression pins (recorded values, not hand-computed): the generator seed is the first 8 bytes of
    # sha256("0/a/w") (little endian, 63 bits), and the mask it draws, so that a code change cannot
    # silently change the DARE merges of existing runs.
    assert seed_for(0, "a", "w") == 2619251026209311327
    assert seed_for(0, "a", "w") != seed_for(1, "a", "w") != seed_for(0, "b", "w")
    out = apply_operator(DARE, ["a"], "w", torch.ones(1, 8), seed=0)
    assert out.tolist() == [[2.0, 2.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0]]  # kept entries scaled by 1 / 0.5


def test_dare_depends_only_on_seed_member_and_tensor():
    members = ["rot90", "invert", "flip"]
    stacked = torch.randn(3, 40, 5)
    out = apply_operator(DARE, members, "body.0.weight", stacked, seed=7)
    assert torch.equal(out, apply_operator(DARE, members, "body.0.weight", stacked.clone(), seed=7))  # repeatable
    # the members in another order: each member's rows are the same
    order = [2, 0, 1]
    permuted = apply_operator(DARE, [members[i] for i in order], "body.0.weight", stacked[order], seed=7)
    assert torch.equal(permuted, out[order])
    # a member alone gets the same mask as in the group
    assert torch.equal(apply_operator(DARE, ["invert"], "body.0.weight", stacked[1:2], seed=7), out[1:2])
    # another seed or tensor name gives another mask
    assert not torch.equal(apply_operator(DARE, members, "body.0.weight", stacked, seed=8), out)
    assert not torch.equal(apply_operator(DARE, members, "body.2.weight", stacked, seed=7), out)


def test_dare_ties_hand_computed():
    # seed 0, tensor 'w', drop_rate 0.5: the pinned DARE masks (test_dare_seeding_is_pinned) keep
    # a: e0 e1 e5 e6 e7, b: e1 e2 e4; the kept entries are doubled, then TIES' election without trimming
    stacked = torch.tensor(
        [
            [1.0, -2.0, 3.0, 4.0, 5.0, 1.0, -1.0, 0.5],
            [3.0, -1.0, -2.0, 7.0, -4.0, 2.0, 1.0, 9.0],
        ]
    )
    # dropped and doubled: a [2, -4, 0, 0, 0, 2, -2, 1], b [0, -2, -4, 0, -8, 0, 0, 0]
    # sum [2, -6, -4, 0, -8, 2, -2, 1]: signs [+, -, -, none, -, +, -, +]; e1: both agree, count 2
    expected = torch.tensor(
        [
            [2.0, -2.0, 0.0, 0.0, 0.0, 2.0, -2.0, 1.0],
            [0.0, -1.0, -4.0, 0.0, -8.0, 0.0, 0.0, 0.0],
        ]
    )
    out = apply_operator(DARE_TIES, ["a", "b"], "w", stacked, seed=0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # the same masks as dare; at drop_rate 0 it is TIES without trimming
    dared = apply_operator(DARE, ["a", "b"], "w", stacked, seed=0)
    assert not ((out != 0) & (dared == 0)).any()  # what DARE dropped stays dropped
    no_drop = apply_operator({"operator": "dare_ties", "drop_rate": 0.0}, ["a", "b"], "w", stacked, seed=0)
    assert torch.equal(no_drop, apply_operator({"operator": "ties", "density": 1.0}, ["a", "b"], "w", stacked))
    with pytest.raises(ValueError, match="needs a seed"):
        apply_operator(DARE_TIES, ["a", "b"], "w", stacked)


def slerp_merge(pre, tau1, tau2, c):
    """The slerp merge of one tensor 'w' at c, through merged_state (merge_tensor)."""
    vectors = [{"w": tau1}, {"w": tau2}]
    return merged_state({"w": pre}, vectors, c, operator=SLERP)["w"]


def test_slerp_hand_computed():
    # theta_1 = [1, 0] and theta_2 = [0, 1]: orthogonal unit vectors, Omega = pi / 2, slerp(t) = [cos(t pi/2), sin(t pi/2)]
    pre, tau1, tau2 = torch.tensor([1.0, 1.0]), torch.tensor([0.0, -1.0]), torch.tensor([-1.0, 0.0])
    assert slerp_dot(pre, torch.stack([tau1, tau2])) == 0.0
    r = math.sqrt(0.5)
    for c, expected in [
        ((0.5, 0.5), [r, r]),  # s = 1, t = 0.5
        ((0.25, 0.75), [math.sin(math.pi / 8), math.sin(3 * math.pi / 8)]),  # s = 1, t = 0.75
        ((1.0, 0.0), [1.0, 0.0]),  # theta_1
        ((0.0, 1.0), [0.0, 1.0]),  # theta_2
        ((1.0, 1.0), [2 * r - 1, 2 * r - 1]),  # s = 2, t = 0.5: theta_pre + 2 (slerp(0.5) - theta_pre)
        ((0.25, 0.25), [1 - 0.5 + 0.5 * r, 1 - 0.5 + 0.5 * r]),  # s = 0.5: theta_pre + 0.5 (slerp(0.5) - theta_pre)
        ((0.0, 0.0), [1.0, 1.0]),  # s = 0: theta_pre
    ]:
        torch.testing.assert_close(slerp_merge(pre, tau1, tau2, list(c)), torch.tensor(expected), rtol=0, atol=1e-6)
    # the weights: w_1 = s a, w_2 = s b, w_pre = s (a + b - 1)
    weights, pre_weight = slerp_weights([0.5, 0.5], 0.0)
    assert weights == pytest.approx([r, r]) and pre_weight == pytest.approx(2 * r - 1)
    assert slerp_weights([0.3, -0.3], 0.0) == ([0.0, 0.0], 0.0)  # s = 0


def test_slerp_of_nearly_parallel_tensors_is_task_arithmetic():
    # |cos| > 0.9995: linear interpolation, so theta_pre + s ((1 - t) theta_1 + t theta_2 - theta_pre) = c_1 tau_1 + c_2 tau_2
    pre, tau1, tau2 = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.001])
    assert slerp_dot(pre, torch.stack([tau1, tau2])) > 0.9995
    for c in ([0.3, 0.4], [0.5, -0.5], [2.0, 0.0]):
        expected = pre + c[0] * tau1 + c[1] * tau2
        torch.testing.assert_close(slerp_merge(pre, tau1, tau2, c), expected, rtol=0, atol=1e-6)
    assert slerp_weights([0.5, -0.5], 1.0) == ([0.5, -0.5], 0.0)


def test_slerp_on_the_line_is_mergekits_slerp():
    """On c_1 + c_2 = 1 the merge is mergekit's slerp(t = c_2) of theta_1 and theta_2, tensor by tensor: angular,
    nearly parallel (linear) and zero tensors."""
    mergekit_slerp = pytest.importorskip("mergekit.merge_methods.slerp", reason="needs mergekit").slerp
    torch.manual_seed(0)
    cases = {
        "angular": (torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 5)),
        "parallel": (10 + torch.randn(6, 5), 0.01 * torch.randn(6, 5), 0.01 * torch.randn(6, 5)),
        "zero": (torch.zeros(4), torch.zeros(4), torch.randn(4)),  # |theta_1| = 0 counts as 1: cos 0
    }
    dots = {}
    for case, (pre, tau1, tau2) in cases.items():
        dots[case] = slerp_dot(pre, torch.stack([tau1, tau2]))
        for t in (0.0, 0.3, 0.5, 0.9, 1.0):
            ours = slerp_merge(pre, tau1, tau2, [1 - t, t])
            theirs = mergekit_slerp(torch.tensor(t), (pre + tau1)[None], (pre + tau2)[None])[0]
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert abs(dots["angular"]) < 0.9 and dots["parallel"] > 0.9995 and dots["zero"] == 0.0


def test_slerp_takes_exactly_two_members():
    with pytest.raises(ValueError, match=r"^merge.operator: slerp merges exactly 2 models, got 3$"):
        apply_operator(SLERP, ["a", "b", "c"], "w", torch.ones(3, 2))
    assert torch.equal(apply_operator(SLERP, ["a", "b"], "w", torch.ones(2, 2)), torch.ones(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_operators_same_on_cuda():
    stacked = torch.randn(3, 64, 9)
    for spec in (TIES, DARE, DARE_TIES):
        cpu = apply_operator(spec, ["a", "b", "c"], "w", stacked, seed=3)
        gpu = apply_operator(spec, ["a", "b", "c"], "w", stacked.cuda(), seed=3)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
    pre = torch.randn(64, 9)  # the engine's case: theta_pre on the host, the task vectors on the device
    assert slerp_dot(pre, stacked[:2].cuda()) == pytest.approx(slerp_dot(pre, stacked[:2]), abs=1e-12)


def test_dare_is_unbiased():
    tau = torch.linspace(-1.0, 1.0, 50).reshape(1, 50)
    draws = torch.stack([apply_operator(DARE, ["a"], "w", tau, seed=s) for s in range(400)])
    # each entry is tau * 2 * Bernoulli(0.5): mean tau, std |tau| / sqrt(400) <= 0.05
    torch.testing.assert_close(draws.mean(dim=0), tau, rtol=0, atol=0.25)
    assert abs(float((draws.mean(dim=0) - tau).mean())) < 0.03


def test_dare_needs_a_seed():
    with pytest.raises(ValueError, match="needs a seed"):
        apply_operator(DARE, ["a"], "w", torch.ones(1, 3))


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"operator": "magic"},
            "merge.operator: must be one of task_arithmetic, ties, dare, dare_ties, slerp, got 'magic'",
        ),
        ({"operator": "ties", "density": 0}, r"merge.density: must be in \(0, 1\], got 0"),
        ({"operator": "ties", "density": 1.5}, r"merge.density: must be in \(0, 1\], got 1.5"),
        ({"operator": "ties"}, "merge.density: required by operator ties"),
        ({"operator": "ties", "density": "x"}, "merge.density: must be a number, got 'x'"),
        ({"operator": "dare", "drop_rate": 1.0}, r"merge.drop_rate: must be in \[0, 1\), got 1.0"),
        ({"operator": "dare", "drop_rate": -0.1}, r"merge.drop_rate: must be in \[0, 1\), got -0.1"),
        ({"operator": "ties", "density": 0.2, "desnity": 0.3}, "merge.desnity: unknown key"),
    ],
)
def test_validate_errors(spec, message):
    with pytest.raises(OperatorError, match=message) as info:
        validate(spec)
    assert "\n" not in str(info.value)


def test_validate_keeps_only_the_operators_parameters():
    assert validate(None) == {"operator": "task_arithmetic"}
    assert validate({"operator": "dare", "drop_rate": 0.3, "density": 0.2}) == {"operator": "dare", "drop_rate": 0.3}


# config


def load(repo, overrides=()):
    return load_config(repo / "config", overrides=list(overrides))


def test_config_group_and_overrides(repo):
    assert load(repo)["merge"] == {"operator": "task_arithmetic"}
    assert load(repo, ["merge=ties"])["merge"] == {"operator": "ties", "density": 0.2}
    assert load(repo, ["merge=ties", "merge.density=0.3"])["merge"] == {"operator": "ties", "density": 0.3}
    assert load(repo, ["merge=dare"])["merge"] == {"operator": "dare", "drop_rate": 0.5}
    assert load(repo, ["merge=dare_ties"])["merge"] == {"operator": "dare_ties", "drop_rate": 0.5}
    assert load(repo, ["merge=slerp", "benchmark.tasks=[rot90,invert]"])["merge"] == {"operator": "slerp"}
    assert load(repo, ["merge=slerp", "method=nested"])["merge"] == {"operator": "slerp"}  # pairs, 4 tasks
    assert load(repo)["model"]["merge"]["exclude"] == ["head.*"]  # model.merge is a different thing


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["merge=ties", "merge.density=0"], r"merge.density: must be in \(0, 1\], got 0"),
        (["merge=dare", "merge.drop_rate=1"], r"merge.drop_rate: must be in \[0, 1\), got 1"),
        (["merge.operator=ties"], "merge.density: required by operator ties"),
        (["merge.operator=median"], "merge.operator: must be one of"),
        (
            ["merge=slerp"],
            r"^merge.operator: slerp merges exactly 2 models, and plain MAP merges all 4 tasks in one group; "
            r"give 2 tasks, or use method=nested \(pairs\)$",
        ),
        (
            [
                "benchmark.tasks=3",
                "validation.enabled=true",
                "+validation.baselines.s={operator: slerp, coefficient: 0.5}",
            ],
            r"^validation.baselines.s.operator: slerp merges exactly 2 models, and the run merges 3 tasks",
        ),
    ],
)
def test_bad_operator_config_fails_at_load(repo, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(repo, overrides)
    assert "\n" not in str(info.value)


def test_operator_reruns_evaluations_and_merges_only(repo):
    base = load(repo)
    for overrides in (["merge=ties"], ["merge=dare"], ["merge=dare_ties"]):
        other = load(repo, overrides)
        # (validate_front evaluates front points with the run's operator; the grid's batches are stage evaluate)
        assert {s for s in STAGE_ENTRY if stage_config(base, s) != stage_config(other, s)} == {
            "evaluate",
            "evaluate_group",
            "merge_group",
            "validate_front",
        }
    # the seed is part of the params only where the operator draws random numbers
    assert stage_config(load(repo, ["merge=dare"]), "evaluate")["merge_seed"] == 0
    assert stage_config(load(repo, ["merge=dare_ties"]), "evaluate")["merge_seed"] == 0
    assert stage_config(base, "evaluate")["merge_seed"] is None
    # and the operators' code is part of those stages' code fingerprints
    assert all(
        "mapmerge.tensors.operators" in stage_files(f"mapmerge.stages.{STAGE_ENTRY[s]}")
        for s in ("evaluate", "evaluate_group", "merge_group")
    )


# engine, merged_state and the stages agree

MEMBERS = ["rot90", "invert", "flip_parity"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained width-2 benchmark model, three perturbed copies and their task vectors."""
    out = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    pre = build_model(width=2).state_dict()
    save_safetensors(pre, out / "pre.safetensors")
    files = {"pretrained": out / "pre.safetensors", "vectors": {}, "checkpoints": {}}
    for task in MEMBERS:
        ft = {k: v + 0.1 * torch.randn_like(v) for k, v in pre.items()}
        save_safetensors(ft, out / f"{task}.safetensors")
        files["checkpoints"][task] = out / f"{task}.safetensors"
        files["vectors"][task] = out / f"tau_{task}.safetensors"
        extract_task_vector(
            out / "pre.safetensors", out / f"{task}.safetensors", ["*"], ["head.*"], files["vectors"][task], task
        )
    return files


def engine_params(spec, seed):
    model = {
        "builder": {"_target_": "mapmerge.builtin.model.build_model", "width": 2},
        "merge": {"include": ["*"], "exclude": ["head.*"]},
        "python_path": [],
        "evaluators": {
            t: {"_target_": "mapmerge.builtin.model.DigitsEvaluator", "task": t, "seed": 0} for t in MEMBERS
        },
        "dtype": "float32",
        "placement": "auto",
    }
    return {"model": model, "merge_operator": spec, "merge_seed": seed}


def merge_stage(
    files: dict, members: list[str], c: list[float], spec: dict | None, seed: int | None, folder: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(merged checkpoint, its task vector) as the merge_group stage writes them in `folder` for a front of the
    one point c (the engine's files, the operator `spec` with its seed)."""
    front = pd.DataFrame({**{f"c_{m}": [ci] for m, ci in zip(members, c)}, **{f"accuracy_{m}": [0.5] for m in members}})
    write_table(front, folder / "front.parquet", "pareto_front")
    write_table(plain_plan(members), folder / "plan.parquet", "plan_level")
    params = {"selection": {"method": "weighted_sum", "rho": 0.05}, "preference": {}, "objective": "accuracy"}
    merge_group.run_merge_group(
        {**params, "merge_operator": spec, "merge_seed": seed},
        **files,
        plan=folder / "plan.parquet",
        front=folder / "front.parquet",
        group="all",
        merged=folder / "merged.safetensors",
        vector=folder / "vector.safetensors",
        choice=folder / "choice.parquet",
        folders=folder / "merged",
    )
    return load_state_dict(folder / "merged.safetensors"), load_state_dict(folder / "vector.safetensors")


@pytest.mark.parametrize("spec", [None, {"operator": "task_arithmetic"}, TIES, DARE, DARE_TIES])
def test_engine_and_merged_state_agree(tiny, tmp_path, spec):
    params = engine_params(spec, 5)
    engine = evaluation._engine(params, tiny, "cpu", 0)
    c = [0.3, 0.8, 0.5]
    engine.merge(c)
    pre = load_state_dict(tiny["pretrained"])
    vectors = [load_state_dict(p) for p in tiny["vectors"].values()]
    expected = merged_state(pre, vectors, c, operator=spec, members=MEMBERS, seed=5)
    got = engine.module.state_dict()
    for name in engine.names:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-6)
    if spec not in (None, {"operator": "task_arithmetic"}):  # the operator did something
        plain = merged_state(pre, vectors, c)
        assert any(not torch.allclose(plain[n], expected[n]) for n in engine.names)
    # the merge stage writes the same checkpoint
    written, _ = merge_stage(tiny, MEMBERS, c, spec, 5, tmp_path)
    for name in engine.names:
        torch.testing.assert_close(written[name], expected[name], rtol=1e-6, atol=1e-6)


def test_engine_ties_with_equal_coefficients_is_ties(tiny):
    # all c_i = lambda: theta_pre + lambda * (TIES disjoint mean of the trimmed, sign-elected vectors)
    engine = evaluation._engine(engine_params(TIES, None), tiny, "cpu", 0)
    engine.merge([0.7, 0.7, 0.7])
    pre = load_state_dict(tiny["pretrained"])
    vectors = [load_state_dict(p) for p in tiny["vectors"].values()]
    got = engine.module.state_dict()
    for name in engine.names:
        stacked = torch.stack([v[name] for v in vectors])
        trimmed = stacked * trim_mask(stacked, 0.4)
        sign = torch.sign(trimmed.sum(dim=0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        mean = (trimmed * agree).sum(dim=0) / agree.sum(dim=0).clamp_min(1)
        torch.testing.assert_close(got[name], pre[name] + 0.7 * mean, rtol=1e-6, atol=1e-6)


def test_merged_state_dare_needs_member_names(tiny):
    pre = load_state_dict(tiny["pretrained"])
    vectors = [load_state_dict(p) for p in tiny["vectors"].values()]
    with pytest.raises(ValueError, match="needs the members' names"):
        merged_state(pre, vectors, [1, 1, 1], operator=DARE, seed=0)


def test_slerp_engine_merged_state_merge_group_and_group_vector_agree(tiny, tmp_path):
    """slerp (two members): the engine's in-place merge, merged_state, merge_group's checkpoint, and its task
    vector (what a nested level merges: the merge minus theta_pre) agree, at points on and off c_1 + c_2 = 1."""
    members = MEMBERS[:2]
    files = {key: {m: tiny[key][m] for m in members} for key in ("vectors", "checkpoints")}
    files["pretrained"] = tiny["pretrained"]
    engine = evaluation._engine(engine_params(SLERP, None), files, "cpu", 0)
    pre = load_state_dict(tiny["pretrained"])
    vectors = [load_state_dict(files["vectors"][m]) for m in members]
    for c in ([0.3, 0.7], [0.8, 0.6], [-0.2, 0.5]):
        engine.merge(c)
        expected = merged_state(pre, vectors, c, operator=SLERP, members=members)
        got = engine.module.state_dict()
        for name in engine.names:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-6)
        plain = merged_state(pre, vectors, c)
        assert any(not torch.allclose(plain[n], expected[n], atol=1e-4) for n in engine.names)  # not task arithmetic
    written, vector = merge_stage(files, members, [0.8, 0.6], SLERP, None, tmp_path)
    expected = merged_state(pre, vectors, [0.8, 0.6], operator=SLERP, members=members)
    assert set(vector) == set(engine.names)
    for name in engine.names:
        torch.testing.assert_close(written[name], expected[name], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(vector[name], expected[name] - pre[name], rtol=1e-6, atol=1e-6)
    delta = merge_files(tiny["pretrained"], files["vectors"], [0.8, 0.6], SLERP, delta=True)
    assert all(torch.equal(delta[n], vector[n]) for n in engine.names)
