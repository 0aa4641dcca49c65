"""A ~1B Llama through the real workflow in bfloat16: each evaluation job's peak memory against the formula (issue 14).

In --workdir (default /tmp/llm_workflow) it makes once (kept and reused while --params, --tasks and --scale stay):

- model/pretrained/: a random-weight LlamaForCausalLM of about --params parameters (llm_memory.llama_config:
  width 2048, 32k vocabulary, untied head), saved sharded in bfloat16 with save_pretrained, with a word-level
  tokenizer of the texts' words made here (nothing is downloaded);
- model/t<i>/ for T = --tasks tasks: SYNTHETIC fine-tunes, the pretrained weights plus small random
  perturbations (--scale x N(0, 1) per weight), saved the same way. Nothing is trained: the run measures
  the workflow's memory and time, not the quality of a merge;
- data/t<i>.jsonl: 4 short texts per task;
- experiment.yaml: model.adapter transformers, task_type causal_lm, optimizer.objective loss,
  evaluation.dtype bfloat16, task vectors stored in bfloat16, sampler.factor 1.5, optimizer pop_size 20 and
  n_gen 20, refine.rounds 1, evaluation.samples_per_job 16 (one evaluation job per round), and every
  evaluation job on --cores threads, so that they run one at a time and alone.

Then it deletes results/ and runs the workflow there, as the tests do (tests/conftest.py snakemake_command):

    python -m snakemake --cores 2 -s Snakefile -d WORKDIR --config experiment=WORKDIR/experiment.yaml \
        overrides='[model=transformers]'

and reads every evaluation job's log (results/llm/logs/evaluate_*): its peak resident memory (the "done run_<stage>
in N s, peak RSS X GB" line) and the sizes the engine logged with its placement (module, theta_pre, task vectors,
workspace, to 0.01 GiB), and computes the CPU formula of docs/scaling.md ("An evaluation job") with
mapmerge.tensors.placement.device_bytes, as benchmarks/llm_memory.py does: baseline + M + Pre + V + W, the
baseline being the resident memory of a fresh interpreter after the job's imports (its stage module, transformers'
Llama and tokenizer). The run's driver output goes to WORKDIR/snakemake.log.

    python benchmarks/llm_workflow.py                          # about 1B parameters, T = 2 (needs ~10 GB RAM)
    python benchmarks/llm_workflow.py --params 5e7 --workdir /tmp/llm_small   # a quick try

The last line is the largest evaluation job's: `peak <GB> formula <GB> ratio <r> wall <s>` (wall: the whole
workflow run).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llm_memory import llama_config  # this script's folder is on sys.path when it runs
from workflow_command import workflow_command

GB = 1e9
GIB = 1 << 30
REPO = Path(__file__).resolve().parents[1]
NAME = "llm"
TEXTS = {  # per task: 4 short texts (one task's words, a few shared)
    0: [
        "the old cat sat on the warm mat by the door",
        "a small dog ran under the red cart in the yard",
        "the big cat and the small dog slept in the sun",
        "a red bird sang on the old fence at dawn",
    ],
    1: [
        "rain fell on the cold town all night long",
        "the wind blew the grey clouds over the hills",
        "snow came early and the roads froze at dawn",
        "the sun broke through the clouds after the storm",
    ],
}
# the job's imports before its engine holds any tensor: what the formula's baseline measures
BASELINE = """
import mapmerge.run.job, mapmerge.stages.evaluation, transformers
from transformers.models.llama import modeling_llama
transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.PreTrainedTokenizerFast
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) * 1024)
"""
DONE = re.compile(r"INFO mapmerge: done (\w+) in ([0-9.]+) s, peak RSS ([0-9.]+) GB")
SIZES = re.compile(
    r"([0-9.]+) GiB of vectors with the model ([0-9.]+) GiB, theta_pre ([0-9.]+) GiB and workspace ([0-9.]+) GiB need"
)


def texts(task: int) -> list[str]:
    return TEXTS[task % len(TEXTS)]


def tokenizer(words: list[str]) -> Any:
    """A word-level tokenizer of `words` (ids 0-3: [PAD], [UNK], [BOS], [EOS]), made here."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]"
    )


def make_inputs(root: Path, params: float, tasks: int, scale: float) -> dict[str, Any]:
    """The pretrained model, the synthetic fine-tunes, the data files and the experiment file (run in a subprocess:
    the driver's process stays small while the workflow runs)."""
    import torch
    import yaml
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = llama_config(params)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 2, 3
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(root / "model" / "pretrained", max_shard_size="500MB")
    words = [w for t in range(tasks) for text in texts(t) for w in text.split()]
    tokenizer(words).save_pretrained(root / "model" / "pretrained")
    n_params = sum(t.numel() for t in model.state_dict().values())
    pre = {n: p.detach().clone() for n, p in model.named_parameters()}
    (root / "data").mkdir(parents=True, exist_ok=True)
    spec = {}
    for i in range(tasks):
        generator = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(pre[name].float() + scale * noise)
                del noise
        model.save_pretrained(root / "model" / f"t{i}", max_shard_size="500MB")
        data = root / "data" / f"t{i}.jsonl"
        data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts(i)))
        spec[f"t{i}"] = {"directory": f"model/t{i}", "data": f"data/t{i}.jsonl"}
    experiment = {
        "name": NAME,
        "model": {
            "adapter": "transformers",
            "merge": {"include": ["*"], "exclude": [], "vector_dtype": "bfloat16"},
            "transformers": {
                "pretrained": "model/pretrained",
                "task_type": "causal_lm",
                "max_length": 32,
                "batch_size": 8,
                "tasks": spec,
            },
        },
        "sampler": {"factor": 1.5},
        "optimizer": {"objective": "loss", "pop_size": 20, "n_gen": 20},
        "refine": {"rounds": 1},
        "evaluation": {"dtype": "bfloat16", "samples_per_job": 16},
        "resources": {"evaluate": {"threads": 2, "mem_mb": 16000}},  # threads: --cores, set by run()
    }
    (root / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    return {"params": n_params, "config": config.to_dict()}


def baseline() -> int:
    """Resident bytes of a fresh interpreter after an evaluation job's imports."""
    proc = subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True, check=True, cwd=REPO)
    return int(proc.stdout.split()[-1])


def evaluation_jobs(results: Path) -> list[dict[str, Any]]:
    """Per evaluation job log: its name, stage time, peak RSS and the sizes its engine logged (bytes)."""
    jobs = []
    logs = results / "logs"
    for log in sorted([*logs.glob("evaluate_*.log"), *logs.glob("evaluate_*/**/*.log")]):
        text = log.read_text()
        done, sizes = DONE.search(text), SIZES.search(text)
        if not done or not sizes:
            raise SystemExit(f"{log}: no 'done ... peak RSS' line or no placement sizes")
        vectors, module, pre, workspace = (int(float(x) * GIB) for x in sizes.groups())
        jobs.append(
            {
                "job": str(log.relative_to(logs).with_suffix("")),
                "seconds": float(done.group(2)),
                "peak": float(done.group(3)) * GB,
                "sizes": {"module": module, "pre": pre, "vectors": vectors, "workspace": workspace, "chunk": 0},
            }
        )
    if not jobs:
        raise SystemExit(f"no evaluation job logs under {logs}")
    return jobs


def other_peak(results: Path) -> tuple[float, str]:
    """The largest peak RSS of the run's other jobs, and which."""
    best = (0.0, "")
    for log in (results / "logs").rglob("*.log"):
        done = DONE.search(log.read_text())
        if done and not log.relative_to(results / "logs").parts[0].startswith("evaluate_"):
            best = max(best, (float(done.group(3)) * GB, str(log.relative_to(results / "logs").with_suffix(""))))
    return best


def run(root: Path, cores: int) -> float:
    """Run the workflow in root from scratch; its wall time."""
    import yaml

    experiment = root / "experiment.yaml"
    spec = yaml.safe_load(experiment.read_text())
    spec["resources"]["evaluate"]["threads"] = cores  # one evaluation job at a time, alone on the cores
    experiment.write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.rmtree(root / "results", ignore_errors=True)
    command = workflow_command(root, cores=cores, overrides=["model=transformers"], experiment=experiment)
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    with open(root / "snakemake.log", "w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (root / "snakemake.log").read_text()[-4000:]
        raise SystemExit(f"the workflow failed (exit {proc.returncode}) after {wall:.0f} s:\n{tail}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=1e9, help="model size (parameters), default 1e9")
    parser.add_argument("--tasks", type=int, default=2, help="fine-tunes T, default 2")
    parser.add_argument("--scale", type=float, default=1e-3, help="std of the fine-tunes' perturbations, default 1e-3")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores and each evaluation job's threads")
    parser.add_argument("--workdir", default="/tmp/llm_workflow", help="where inputs and results go")
    parser.add_argument("--make-inputs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    wanted = {"params": args.params, "tasks": args.tasks, "scale": args.scale}
    if args.make_inputs:
        root.mkdir(parents=True, exist_ok=True)
        made = make_inputs(root, args.params, args.tasks, args.scale)
        (root / "inputs.json").write_text(json.dumps({**wanted, **made}))
        return
    stamp = root / "inputs.json"
    start = time.perf_counter()
    if not stamp.is_file() or any(json.loads(stamp.read_text()).get(k) != v for k, v in wanted.items()):
        for folder in ("model", "data"):
            shutil.rmtree(root / folder, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        subprocess.run([sys.executable, __file__, "--make-inputs", *sys.argv[1:]], check=True)
    inputs = json.loads(stamp.read_text())
    cfg = inputs["config"]
    print(
        f"model: Llama {inputs['params'] / 1e9:.2f}B parameters ({cfg['num_hidden_layers']} layers, width "
        f"{cfg['hidden_size']}), bfloat16, sharded; T = {args.tasks} synthetic fine-tunes; evaluation.dtype "
        f"bfloat16, task vectors bfloat16; inputs ready in {time.perf_counter() - start:.0f} s; {args.cores} cores",
        flush=True,
    )
    wall = run(root, args.cores)

    from mapmerge.tensors.placement import Placement, Sizes, device_bytes

    base = baseline()
    results = root / "results" / NAME
    jobs = evaluation_jobs(results)
    print(f"workflow: {wall:.0f} s; baseline (the job's imports) {base / GB:.2f} GB")
    print(f"{'evaluation job':32s} {'stage s':>8s} {'peak GB':>8s} {'formula GB':>11s} {'ratio':>6s}")
    for job in jobs:
        # on CPU the device is the host: both placements hold baseline + M + Pre + V + W (docs/scaling.md)
        job["formula"] = base + device_bytes(Sizes(**job["sizes"]), Placement("device", "device", ""))
        print(
            f"{job['job']:32s} {job['seconds']:8.1f} {job['peak'] / GB:8.2f} {job['formula'] / GB:11.2f}"
            f" {job['peak'] / job['formula']:6.3f}"
        )
    sizes = jobs[0]["sizes"]
    print(
        "formula terms (GB): "
        + ", ".join(f"{k} {v / GB:.2f}" for k, v in (("baseline", base), *sizes.items()) if k != "chunk")
    )
    other, which = other_peak(results)
    print(f"other jobs: largest peak RSS {other / GB:.2f} GB ({which})")
    top = max(jobs, key=lambda j: j["peak"])
    print(
        f"peak {top['peak'] / GB:.2f} formula {top['formula'] / GB:.2f} ratio {top['peak'] / top['formula']:.3f} "
        f"wall {wall:.0f}"
    )


if __name__ == "__main__":
    main()
