"""Peak host memory of merging T task vectors: streamed (merge_files) against all in memory.

Usage: python benchmarks/merge_memory.py [--size-mb 300] [--tasks 1 2 4 8] [--threads 2]

Builds, with the package's own code and no download, a model of about --size-mb MB (a stack of
Linear layers, float32), T perturbed fine-tuned copies and their task vectors (extract_task_vector)
in a temporary folder, which it deletes at the end. Each measurement runs in a fresh subprocess:
peak = the process's resident-memory high-water mark (getrusage ru_maxrss) at the end, minus its
resident memory after the imports. Measured for every T, side by side:
  streamed:  merge_files (one tensor at a time) + save_safetensors of the merge;
  in-memory: load_state_dict of the pretrained model and of every task vector whole, merged_state,
             save_safetensors (the way merges were done before merge_files).
Then the same at the largest T with the task vectors stored in bfloat16 (model.merge.vector_dtype)
and with the TIES operator, whose per-tensor temporaries are larger. The issue's target: streamed
merging of T = 8 task vectors within 2.5x the model size of peak host memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIES = {"operator": "ties", "density": 0.2}


def peak_rss_mb() -> float:
    """The process's resident-memory high-water mark so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """The process's resident memory now (Linux; elsewhere the high-water mark)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * int(Path("/proc/self/statm").read_text().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def layer_sizes(size_mb: float, width: int = 2048) -> tuple[int, int]:
    """(layers, width) of a Linear stack of about size_mb MB in float32."""
    per_layer = (width * width + width) * 4 / 2**20
    return max(1, round(size_mb / per_layer)), width


def build(folder: Path, size_mb: float, n_tasks: int, vector_dtypes: list[str]) -> dict[str, float]:
    """pretrained.safetensors, and per task and vector dtype tau_<dtype>_<i>.safetensors; the files' MB."""
    import torch

    from mapmerge.tensors.checkpoints import save_safetensors
    from mapmerge.tensors.taskvectors import extract_task_vector

    layers, width = layer_sizes(size_mb)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
    del model
    save_safetensors(pre, folder / "pretrained.safetensors")
    generator = torch.Generator().manual_seed(1)
    for i in range(n_tasks):  # one fine-tuned checkpoint on disk at a time
        ft = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in pre.items()}
        save_safetensors(ft, folder / "finetuned.safetensors")
        del ft
        for dtype in vector_dtypes:
            extract_task_vector(
                folder / "pretrained.safetensors",
                folder / "finetuned.safetensors",
                ["*"],
                [],
                folder / f"tau_{dtype}_{i}.safetensors",
                f"t{i}",
                dtype,
            )
        (folder / "finetuned.safetensors").unlink()
    mb = lambda p: p.stat().st_size / 2**20  # noqa: E731
    return {
        "model": mb(folder / "pretrained.safetensors"),
        **{d: mb(folder / f"tau_{d}_0.safetensors") for d in vector_dtypes},
    }


def measure(folder: Path, mode: str, n_tasks: int, dtype: str, operator: dict | None, threads: int) -> dict[str, float]:
    """Run one merge in this (fresh) process; its peak resident memory above the post-import baseline."""
    import torch

    from mapmerge.tensors.checkpoints import load_state_dict, save_safetensors
    from mapmerge.tensors.taskvectors import merge_files, merged_state

    torch.set_num_threads(threads)
    baseline = rss_mb()
    vectors = {f"t{i}": folder / f"tau_{dtype}_{i}.safetensors" for i in range(n_tasks)}
    c = [1.0 / n_tasks] * n_tasks
    pretrained = folder / "pretrained.safetensors"
    start = time.perf_counter()
    if mode == "streamed":
        merged = merge_files(pretrained, vectors, c, operator=operator, seed=0)
    else:
        taus = [load_state_dict(p) for p in vectors.values()]
        merged = merged_state(load_state_dict(pretrained), taus, c, operator=operator, members=list(vectors), seed=0)
        del taus
    metadata = {
        "coefficients": json.dumps(dict(zip(vectors, c))),
        "operator": json.dumps(operator or {"operator": "task_arithmetic"}),
    }
    save_safetensors(merged, folder / f"merged_{mode}.safetensors", metadata=metadata)
    seconds = time.perf_counter() - start
    (folder / f"merged_{mode}.safetensors").unlink()
    return {"peak_mb": peak_rss_mb() - baseline, "baseline_mb": baseline, "seconds": seconds}


def run_child(*args: str) -> dict[str, float]:
    """Run this script with args in a fresh process; its last line of output, as JSON.

    The parent never imports torch and stays small: a forked child starts with the parent's
    resident-memory high-water mark, which exec keeps in ru_maxrss.
    """
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_measure(
    folder: Path, mode: str, n_tasks: int, dtype: str, operator: dict | None, threads: int
) -> dict[str, float]:
    return run_child("--child", str(folder), mode, str(n_tasks), dtype, json.dumps(operator), "--threads", str(threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=300.0)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--child", nargs=5, metavar=("FOLDER", "MODE", "T", "DTYPE", "OPERATOR"), help=argparse.SUPPRESS
    )
    parser.add_argument("--build", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, mode, n, dtype, operator = args.child
        print(json.dumps(measure(Path(folder), mode, int(n), dtype, json.loads(operator), args.threads)))
        return
    if args.build:
        print(json.dumps(build(Path(args.build), args.size_mb, max(args.tasks), ["float32", "bfloat16"])))
        return

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = time.perf_counter()
    t_max = max(args.tasks)
    with tempfile.TemporaryDirectory(prefix="mapmerge-merge-memory-") as tmp:
        folder = Path(tmp)
        sizes = run_child("--build", str(folder), "--size-mb", str(args.size_mb), "--tasks", str(t_max))
        model = sizes["model"]
        print(
            f"model: {model:.0f} MB float32 ({layer_sizes(args.size_mb)[0]} Linear layers of width 2048); "
            f"one task vector: {sizes['float32']:.0f} MB float32, {sizes['bfloat16']:.0f} MB bfloat16 "
            f"(built in {time.perf_counter() - started:.0f} s)"
        )
        print(
            "peak = resident-memory high-water mark above the resident memory after the imports; merge + save of the merged model\n"
        )
        header = f"{'T':>3} {'model MB':>9} {'peak MB streamed':>17} {'peak/model':>11} {'peak MB in-memory':>18} {'peak/model':>11} {'ratio':>6} {'s streamed':>11} {'s in-memory':>12}"

        def row(label: str, n: int, dtype: str, operator: dict | None) -> str:
            streamed = run_measure(folder, "streamed", n, dtype, operator, args.threads)
            memory = run_measure(folder, "in-memory", n, dtype, operator, args.threads)
            return (
                f"{label:>3} {model:9.0f} {streamed['peak_mb']:17.0f} {streamed['peak_mb'] / model:11.2f} "
                f"{memory['peak_mb']:18.0f} {memory['peak_mb'] / model:11.2f} {memory['peak_mb'] / streamed['peak_mb']:6.2f} "
                f"{streamed['seconds']:11.1f} {memory['seconds']:12.1f}"
            )

        print("task arithmetic, float32 task vectors")
        print(header)
        for n in args.tasks:
            print(row(str(n), n, "float32", None), flush=True)
        print(f"\nT = {t_max}, other settings")
        print("  " + header)
        print(
            f"  bfloat16 task vectors ({t_max} x {sizes['bfloat16']:.0f} MB on disk, float32: {t_max} x {sizes['float32']:.0f} MB)"
        )
        print("  " + row(str(t_max), t_max, "bfloat16", None), flush=True)
        print(f"  TIES (density {TIES['density']}), float32 task vectors")
        print("  " + row(str(t_max), t_max, "float32", TIES), flush=True)
    print(
        f"\nratio = peak in-memory / peak streamed; target: streamed T = 8 within 2.5x the model; "
        f"total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
