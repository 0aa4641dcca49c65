"""Memory and merge time of the evaluation engine on a random-weight Llama-shaped model (issue 14).

Builds a LlamaForCausalLM of about --params parameters (saved sharded in bfloat16 with save_pretrained in a
temporary folder) and --tasks task vectors twice: dense (bfloat16) and low-rank (random rank --rank factors
of every Linear weight, in the artifact format name::lora_A / name::lora_B). Then, for each kind and each
placement (device, host), one subprocess builds a MergeEngine in --dtype, merges once and runs one forward,
and reports its peak memory (VmHWM on CPU, torch.cuda.max_memory_allocated on CUDA) against the formula of
docs/scaling.md (on CPU: the interpreter's memory after its imports + the engine's tensors), and the merge
time against the floor: the bytes it reads over the copy bandwidth of a large torch copy measured in the
same run.

    python benchmarks/llm_memory.py                         # about 1B parameters, T = 4 (needs ~15 GB RAM)
    python benchmarks/llm_memory.py --params 5e7 --tasks 2  # a quick try

The last line is the default placement's (auto) with dense vectors:
`peak <GB> formula <GB> ratio <r> merge-vs-floor <x>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GB = 1e9


def llama_config(params: float) -> Any:
    """A LlamaConfig of about `params` parameters: width by size, depth to fill, untied 32k-token embeddings."""
    from transformers import LlamaConfig

    hidden = 2048 if params >= 5e8 else 1024 if params >= 1e8 else 256
    inter, vocab = int(hidden * 2.75), 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=vocab,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )


def make_inputs(root: Path, params: float, tasks: int, rank: int) -> dict[str, Any]:
    """The sharded model directory and the dense and low-rank task vectors' files."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = llama_config(params)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(root / "model", max_shard_size="500MB")
    shapes = {n: t.shape for n, t in model.state_dict().items()}
    n_params = sum(t.numel() for t in model.state_dict().values())
    del model
    files: dict[str, Any] = {"dense": {}, "lowrank": {}, "params": n_params, "config": config.to_dict()}
    for i in range(tasks):
        generator = torch.Generator().manual_seed(i)
        dense = {n: (1e-3 * torch.randn(s, generator=generator)).to(torch.bfloat16) for n, s in shapes.items()}
        files["dense"][f"t{i}"] = str(root / f"dense_{i}.safetensors")
        save_file(dense, files["dense"][f"t{i}"])
        del dense
        low = {}
        for name, shape in shapes.items():
            if len(shape) == 2 and "embed" not in name and "lm_head" not in name:  # the Linear layers LoRA adapts
                low[f"{name}::lora_A"] = torch.randn(rank, shape[1], generator=generator).to(torch.bfloat16)
                low[f"{name}::lora_B"] = (1e-3 * torch.randn(shape[0], rank, generator=generator)).to(torch.bfloat16)
        files["lowrank"][f"t{i}"] = str(root / f"lowrank_{i}.safetensors")
        save_file(low, files["lowrank"][f"t{i}"])
    return files


def copy_bandwidth(device: str, nbytes: int, repeats: int) -> tuple[float, float]:
    """Bytes read per second by a large torch copy on the device (the best of `repeats`), and on CUDA from pinned
    host memory to the device (what the host placement streams; 0 on CPU)."""
    import torch

    target = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )

    def best(dst: torch.Tensor, src: torch.Tensor) -> float:
        dst.copy_(src)  # untimed: the first touch of dst's pages
        times = []
        for _ in range(repeats):
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            start = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            times.append(time.perf_counter() - start)
        return nbytes / min(times)

    src = torch.ones(nbytes // 4, device=target)
    on_device = best(torch.empty_like(src), src)
    if target.type != "cuda":
        return on_device, 0.0
    return on_device, best(torch.empty_like(src), torch.ones(nbytes // 4).pin_memory())


def rss(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One engine in this process: build, merge once, one forward; its peak memory and the formula's figures."""
    import torch
    from transformers.models.llama import modeling_llama  # noqa: F401 (imported here: part of the baseline)

    from mapmerge.tensors.engine import MergeEngine
    from mapmerge.tensors.placement import Placement, device_bytes

    torch.set_num_threads(spec["threads"])
    baseline = rss("VmRSS")  # the interpreter, torch, transformers: what the formula's tensors come on top of
    engine = MergeEngine(
        builder={
            "_target_": "mapmerge.adapters.transformers.build_model",
            "directory": spec["model"],
            "task_type": "causal_lm",
        },
        pretrained=next(p for p in Path(spec["model"]).glob("model.safetensors*") if "-of-" not in p.name),
        vectors=spec["vectors"],
        task_checkpoints={},
        evaluators={},
        merge={"include": ["*"], "exclude": []},
        device=spec["device"],
        dtype=spec["dtype"],
        placement=spec["placement"],
    )
    engine.merge([0.3] * len(spec["vectors"]))  # warm-up: first-touch of the workspace
    with torch.inference_mode():
        engine.module(input_ids=torch.arange(16, device=engine.device)[None], use_cache=False)
    cuda = engine.device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(engine.device) if cuda else rss("VmHWM")
    # the merge and the copy bandwidth, taken turn about in this process (the best of 3 each): a loaded
    # machine slows both alike
    merges, bandwidths = [], []
    for k in range(3):
        bandwidths.append(copy_bandwidth(spec["device"], 1 << 29, repeats=1))
        start = time.perf_counter()
        engine.merge([0.5 + 0.1 * k] * len(spec["vectors"]))
        merges.append(time.perf_counter() - start)
    bandwidth, host_to_device = (max(b[i] for b in bandwidths) for i in range(2))
    sizes = engine.sizes
    # what a host placement on CUDA streams over the host link (on CPU the host is the device)
    streamed = (sizes.vectors if engine.placement.vectors == "host" else 0) + (
        sizes.pre if engine.placement.pre == "host" else 0
    )
    streamed = streamed if cuda else 0
    # CUDA: what the placement holds on the device; CPU: everything, both placements, on top of the imports
    formula = (
        device_bytes(sizes, engine.placement)
        if cuda
        else baseline + device_bytes(sizes, Placement("device", "device", ""))
    )
    # the floor: the bytes the merge reads at the copy bandwidth, streamed ones over the host link
    floor = (sizes.pre + sizes.vectors - streamed) / bandwidth + (streamed / host_to_device if streamed else 0)
    return {
        "placement": engine.placement.vectors,
        "peak": peak,
        "formula": formula,
        "merge_s": min(merges),
        "floor_s": floor,
        "bandwidth": bandwidth,
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {spec['kind']}/{spec['placement']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=1e9, help="model size (parameters), default 1e9")
    parser.add_argument("--tasks", type=int, default=4, help="task vectors T, default 4")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the low-rank task vectors, default 16")
    parser.add_argument("--dtype", default="bfloat16", help="evaluation.dtype, default bfloat16")
    parser.add_argument("--device", default="auto", help="evaluation.device, default auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, default all cores")
    parser.add_argument(
        "--inputs", help="a folder to make the model and task vectors in once and reuse (default: temporary)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    with tempfile.TemporaryDirectory(prefix="llm_memory_") as tmp:
        root = Path(args.inputs or tmp)
        start = time.perf_counter()
        if (root / "inputs.json").is_file():
            files = json.loads((root / "inputs.json").read_text())
        else:
            files = make_inputs(root, args.params, args.tasks, args.rank)
            (root / "inputs.json").write_text(json.dumps(files))
        cfg = files["config"]
        print(
            f"model: Llama {files['params'] / 1e9:.2f}B parameters ({cfg['num_hidden_layers']} layers, width "
            f"{cfg['hidden_size']}), bfloat16, sharded; T = {len(files['dense'])}, LoRA rank {args.rank}; "
            f"evaluation.dtype {args.dtype}; inputs ready in {time.perf_counter() - start:.0f} s; {args.threads} threads"
        )
        print("vectors  placement     peak GB  formula GB  ratio  merge s  copy GB/s  floor s  merge/floor")
        results = {}
        for kind in ("dense", "lowrank"):
            for placement in ("auto", "host"):
                if placement == "host" and results[kind, "auto"]["placement"] == "host":
                    continue
                spec = {
                    "kind": kind,
                    "model": str(root / "model"),
                    "vectors": files[kind],
                    "device": args.device,
                    "dtype": args.dtype,
                    "placement": placement,
                    "threads": args.threads,
                }
                r = results[kind, placement] = run_worker(spec)
                r["vs_floor"] = r["merge_s"] / r["floor_s"]
                print(
                    f"{kind:8s} {placement + '->' + r['placement']:12s} {r['peak'] / GB:7.2f} {r['formula'] / GB:11.2f}"
                    f" {r['peak'] / r['formula']:6.3f} {r['merge_s']:8.3f} {r['bandwidth'] / GB:10.1f}"
                    f" {r['floor_s']:8.3f} {r['vs_floor']:12.2f}"
                )
        default = results["dense", "auto"]
        print(
            f"peak {default['peak'] / GB:.2f} formula {default['formula'] / GB:.2f} "
            f"ratio {default['peak'] / default['formula']:.3f} merge-vs-floor {default['vs_floor']:.2f}"
        )


if __name__ == "__main__":
    main()
