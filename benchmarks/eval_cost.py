"""Cost of one evaluation job, measured on this machine: the figures docs/scaling.md builds on.

Prints, side by side from one run:
  1. the built-in CNN: engine start-up (load pretrained + T task vectors, build evaluators), time per
     merged-model evaluation on all T tasks, and peak resident memory of the process;
  2. the merge itself at a larger size: theta_pre + sum_i c_i tau_i as one fused addmv over P
     parameters and T task vectors (float32), in GB of task vectors read per second, against a
     per-tensor Python loop over the same data (the naive way), and their ratio.

Usage: python benchmarks/eval_cost.py [--params 20000000] [--tasks 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from mapmerge.builtin.digits import TASK_NAMES
from mapmerge.builtin.model import prepare_benchmark
from mapmerge.tensors.engine import MergeEngine
from mapmerge.tensors.taskvectors import extract_task_vector


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cnn_figures(n_tasks: int, repeats: int) -> dict[str, float]:
    """Start-up and per-sample time of the engine on the built-in benchmark with n_tasks tasks."""
    tasks = list(TASK_NAMES[:n_tasks])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, vec = Path(tmp) / "ckpt", Path(tmp) / "vec"
        prepare_benchmark({"tasks": tasks, "pretrain_epochs": 2, "finetune_epochs": 1}, ckpt)
        for task in tasks:
            extract_task_vector(
                ckpt / "pretrained.safetensors",
                ckpt / f"{task}.safetensors",
                ["*"],
                ["head.*"],
                vec / f"{task}.safetensors",
                task,
            )
        start = time.perf_counter()
        engine = MergeEngine(
            builder={"_target_": "mapmerge.builtin.model.build_model", "width": 16},
            pretrained=ckpt / "pretrained.safetensors",
            vectors={t: vec / f"{t}.safetensors" for t in tasks},
            task_checkpoints={t: ckpt / f"{t}.safetensors" for t in tasks},
            evaluators={t: {"_target_": "mapmerge.builtin.model.DigitsEvaluator", "task": t} for t in tasks},
            merge={"include": ["*"], "exclude": ["head.*"]},
            device="cpu",
        )
        startup = time.perf_counter() - start
        engine.evaluate([0.5] * n_tasks, sample="warm-up")
        start = time.perf_counter()
        for i in range(repeats):
            engine.evaluate([0.1 * i] * n_tasks, sample=f"s{i}")
        per_sample = (time.perf_counter() - start) / repeats
    return {"params": float(engine.n_params), "startup_s": startup, "per_sample_s": per_sample}


def merge_figures(n_params: int, n_tasks: int, repeats: int) -> dict[str, float]:
    """Fused merge (one addmv) against a per-tensor loop, over the same float32 data."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(n_params, generator=generator)
    vectors = torch.randn(n_tasks, n_params, generator=generator)
    out = torch.empty_like(theta)
    c = torch.full((n_tasks,), 0.3)
    chunks = [vectors[:, i : i + 1_000_000] for i in range(0, n_params, 1_000_000)]  # like a model's tensors
    start = time.perf_counter()
    for _ in range(repeats):
        torch.addmv(theta, vectors.T, c, out=out)
    fused = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        pieces = []
        for j, chunk in enumerate(chunks):
            piece = theta[j * 1_000_000 : j * 1_000_000 + chunk.shape[1]].clone()
            for i in range(n_tasks):
                piece += float(c[i]) * chunk[i]
            pieces.append(piece)
    loop = (time.perf_counter() - start) / repeats
    gigabytes = vectors.numel() * 4 / 1e9
    return {"fused_s": fused, "loop_s": loop, "fused_gb_s": gigabytes / fused, "loop_gb_s": gigabytes / loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\nbuilt-in CNN, one evaluation job (CPU)")
    print("| tasks | parameters | start-up s | per sample (all tasks) s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for n_tasks in (2, 4, 8):
        fig = cnn_figures(n_tasks, args.repeats)
        print(
            f"| {n_tasks} | {fig['params']:.0f} | {fig['startup_s']:.2f} | {fig['per_sample_s']:.3f} | {peak_rss_mb():.0f} |"
        )
    fig = merge_figures(args.params, args.tasks, args.repeats)
    print(
        f"\nmerge of {args.tasks} task vectors x {args.params:,} float32 parameters ({args.tasks * args.params * 4 / 1e9:.2f} GB)"
    )
    print("| merge | seconds | GB/s of task vectors | ratio |")
    print("|---|---|---|---|")
    print(
        f"| fused addmv (mapmerge) | {fig['fused_s']:.3f} | {fig['fused_gb_s']:.2f} | {fig['loop_s'] / fig['fused_s']:.1f}x |"
    )
    print(f"| per-tensor loop | {fig['loop_s']:.3f} | {fig['loop_gb_s']:.2f} | 1.0x |")
    print(f"\npeak RSS of this process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
