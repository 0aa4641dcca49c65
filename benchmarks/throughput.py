"""Merged-model evaluations per second: mapmerge's MergeEngine against a naive per-sample reload.

Command line (from the repo root; about 1.5 minutes on 2 CPU cores):

    .venv/bin/python benchmarks/throughput.py

Options: --samples 32 (Sobol points per width), --threads 1 (torch threads of every measured process),
--widths 16,64 (benchmark.width of each variant; 16 is the default benchmark), --batch 8.

What is compared, on the same coefficient vectors, the same checkpoints and the same evaluators:

  engine  mapmerge.tensors.engine.MergeEngine, as an evaluate_sample job uses it: pretrained and task vectors
          loaded once, a merge is one torch.addmv into the flat buffer the module's tensors view, then
          every task is evaluated; the per-example rows are written with mapmerge.io.write_table, one
          Parquet per batch of --batch samples (evaluation.samples_per_job, default 8), as in the workflow.
  naive   the way the original MAP reference code works: for every sample, reload the pretrained and the
          fine-tuned checkpoints from disk (safetensors.torch.load_file), deep-copy the model, compute
          theta_pre + sum_i c_i (theta_ft_i - theta_pre) tensor by tensor in a Python loop, and for every
          task load_state_dict (merged tensors + that task's own head) and run the same DigitsEvaluator.
          It writes nothing to disk (the reference code keeps accuracies in memory), which favours it.

One "evaluation" is one merged model evaluated on all 4 tasks (one designed sample). The 4-task
built-in benchmark is trained once per width into a temporary folder (seeded, prepare_benchmark; the
wider variant with fewer epochs, as only the time per evaluation matters there) and its task vectors
are extracted as the workflow does. Then, per width:

  timing  one fresh Python process sets up both approaches and evaluates every sample with each,
          alternating which goes first from sample to sample, so that load from other work on the
          machine falls on both alike; each approach's time per sample is recorded and split into parts.
  memory  one fresh process per approach (set-up, then the first 4 samples): its start-up time (cold:
          loading what it keeps, building the evaluators), its RSS after imports and its peak RSS
          (VmHWM), so that neither approach's memory shows up in the other's peak.

Both approaches must give the same per-task accuracy and mean loss on every sample (checked; the
script fails otherwise), so the forward work is identical. Torch runs with --threads threads (1 by
default, as evaluation.threads) in every measured process.

Other work may share this machine: absolute figures are noisy, the ratios measured side by side in
one run are what to compare. Temporary files are removed at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ["rot90", "invert", "flip_parity", "mod3"]  # the default benchmark's 4 tasks
HEAD = "head."
SEED = 0
EPOCHS = {16: (20, 10)}  # width -> (pretrain, finetune) epochs: the defaults at the default width
WIDE_EPOCHS = (4, 2)  # other widths: only the time per evaluation matters
MEMORY_SAMPLES = 4


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """RSS high-water mark of this process. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    over fork + exec, so a worker would report at least the driver's RSS at the time it was started."""
    return _status_mb("VmHWM")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


# ---------------------------------------------------------------------------------------------
# the two approaches; each is built once per process, then called once per sample


def evaluator_configs() -> dict[str, dict]:
    return {
        t: {"_target_": "mapmerge.builtin.model.DigitsEvaluator", "task": t, "seed": SEED, "test_fraction": 0.3}
        for t in TASKS
    }


class Engine:
    """MergeEngine + write_table of each batch of samples, as run_evaluate_samples does."""

    parts = ("merge (addmv)", "forward (evaluators)", "rows: heads, checks, concat", "write Parquet")

    def __init__(self, work: Path, width: int, batch: int):
        from mapmerge.tensors.engine import MergeEngine

        ckpt, vec = work / "ckpt", work / "vec"
        start = time.perf_counter()
        self.engine = MergeEngine(
            builder={"_target_": "mapmerge.builtin.model.build_model", "width": width},
            pretrained=ckpt / "pretrained.safetensors",
            vectors={t: vec / f"{t}.safetensors" for t in TASKS},
            task_checkpoints={t: ckpt / f"{t}.safetensors" for t in TASKS},
            evaluators=evaluator_configs(),
            merge={"include": ["*"], "exclude": [HEAD + "*"]},
            device="cpu",
        )
        self.startup = time.perf_counter() - start
        self.inputs = [
            ckpt / "pretrained.safetensors",
            *(vec / f"{t}.safetensors" for t in TASKS),
            *(ckpt / f"{t}.safetensors" for t in TASKS),
        ]
        self.out, self.batch, self.pending, self.n_written = work / "evals", batch, [], 0
        self.split = dict.fromkeys(self.parts, 0.0)
        for task, evaluator in self.engine.evaluators.items():  # time the evaluator calls inside engine.evaluate
            self.engine.evaluators[task] = self._timed(evaluator)

    def _timed(self, evaluator):
        def call(module, device):
            start = time.perf_counter()
            rows = evaluator(module, device)
            self.split["forward (evaluators)"] += time.perf_counter() - start
            return rows

        return call

    def __call__(self, sample: str, c: list[float], last: bool) -> dict[str, list[float]]:
        import pandas as pd

        from mapmerge.io import write_table

        before, forward = dict(self.engine.timings), self.split["forward (evaluators)"]
        frame = self.engine.evaluate(c, sample=sample)
        self.split["merge (addmv)"] += self.engine.timings["merge"] - before["merge"]
        evaluate = self.engine.timings["evaluate"] - before["evaluate"]  # evaluators + heads + row checks + concat
        self.split["rows: heads, checks, concat"] += evaluate - (self.split["forward (evaluators)"] - forward)
        self.pending.append((sample, c, frame))
        if len(self.pending) == self.batch or last:
            start = time.perf_counter()
            table = pd.concat([f for _, _, f in self.pending], ignore_index=True)
            params = {"c": {s: cs for s, cs, _ in self.pending}}
            write_table(table, self.out / f"b{self.n_written:04d}.parquet", "evaluate_sample", params, self.inputs)
            self.split["write Parquet"] += time.perf_counter() - start
            self.pending, self.n_written = [], self.n_written + 1
        return {t: [float(g["correct"].mean()), float(g["loss"].mean())] for t, g in frame.groupby("task")}


class Naive:
    """Per sample: reload every checkpoint, deep-copy the model, merge in a Python loop, load_state_dict per task."""

    parts = ("reload checkpoints", "deep-copy model", "merge (Python loop)", "load_state_dict", "evaluate (forward)")

    def __init__(self, work: Path, width: int):
        from hydra.utils import instantiate

        from mapmerge.builtin.model import build_model

        start = time.perf_counter()
        self.ckpt = work / "ckpt"
        self.base = build_model(width).float().eval()
        self.evaluators = {t: instantiate(cfg) for t, cfg in evaluator_configs().items()}
        self.startup = time.perf_counter() - start
        self.split = dict.fromkeys(self.parts, 0.0)

    def __call__(self, sample: str, c: list[float], last: bool) -> dict[str, list[float]]:
        import torch
        from safetensors.torch import load_file

        t0 = time.perf_counter()
        pre = load_file(str(self.ckpt / "pretrained.safetensors"))
        fts = [load_file(str(self.ckpt / f"{task}.safetensors")) for task in TASKS]
        t1 = time.perf_counter()
        model = copy.deepcopy(self.base)
        t2 = time.perf_counter()
        merged = {}
        for name, tensor in pre.items():
            if name.startswith(HEAD):
                merged[name] = tensor.clone()
                continue
            value = tensor.clone()
            for ci, ft in zip(c, fts):
                value += ci * (ft[name] - tensor)
            merged[name] = value
        t3 = time.perf_counter()
        self.split["reload checkpoints"] += t1 - t0
        self.split["deep-copy model"] += t2 - t1
        self.split["merge (Python loop)"] += t3 - t2
        result = {}
        for task, ft in zip(TASKS, fts):
            t4 = time.perf_counter()
            model.load_state_dict({**merged, **{n: v for n, v in ft.items() if n.startswith(HEAD)}}, strict=True)
            t5 = time.perf_counter()
            rows = self.evaluators[task](model, torch.device("cpu"))
            self.split["load_state_dict"] += t5 - t4
            self.split["evaluate (forward)"] += time.perf_counter() - t5
            result[task] = [float(rows["correct"].astype(float).mean()), float(rows["loss"].mean())]
        return result


# ---------------------------------------------------------------------------------------------
# workers: each runs in its own process and writes a JSON


def worker_timing(work: Path, width: int, batch: int) -> dict:
    """Both approaches in one process, alternating which goes first on each sample."""
    coefficients = json.loads((work / "samples.json").read_text())
    runners = {"engine": Engine(work, width, batch), "naive": Naive(work, width)}
    warm = {name: r("warm-up", coefficients["warm-up"], False) for name, r in runners.items()}  # not timed
    del warm
    runners["engine"].pending = []
    for r in runners.values():
        r.split = dict.fromkeys(r.parts, 0.0)
    samples = [s for s in coefficients if s != "warm-up"]
    times = {name: [] for name in runners}
    metrics = {name: {} for name in runners}
    for i, sample in enumerate(samples):
        for name in ("engine", "naive") if i % 2 == 0 else ("naive", "engine"):
            start = time.perf_counter()
            metrics[name][sample] = runners[name](sample, coefficients[sample], last=i == len(samples) - 1)
            times[name].append(time.perf_counter() - start)
    return {
        "params": int(runners["engine"].engine.n_params),
        "n": len(samples),
        **{
            name: {"startup_s": r.startup, "times": times[name], "split_s": r.split, "metrics": metrics[name]}
            for name, r in runners.items()
        },
    }


def worker_memory(kind: str, work: Path, width: int, batch: int) -> dict:
    """One approach alone: RSS after imports, then peak RSS over set-up and the first samples."""
    import pandas as pd  # noqa: F401  (imported by both approaches anyway)
    import torch  # noqa: F401
    from hydra.utils import instantiate  # noqa: F401
    from safetensors.torch import load_file  # noqa: F401

    from mapmerge.io import write_table  # noqa: F401
    from mapmerge.tensors.engine import MergeEngine  # noqa: F401

    coefficients = json.loads((work / "samples.json").read_text())
    rss_start = current_rss_mb()
    runner = Engine(work, width, batch) if kind == "engine" else Naive(work, width)
    samples = list(coefficients)[: MEMORY_SAMPLES + 1]
    for i, sample in enumerate(samples):
        runner(sample, coefficients[sample], last=i == len(samples) - 1)
    return {"rss_start_mb": rss_start, "peak_rss_mb": peak_rss_mb(), "startup_s": runner.startup}


def worker_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    work = Path(args.work)
    if args.worker == "timing":
        result = worker_timing(work, args.width, args.batch)
    else:
        result = worker_memory(args.worker, work, args.width, args.batch)
    result["threads"] = torch.get_num_threads()
    shutil.rmtree(work / "evals", ignore_errors=True)
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# driver


def prepare(work: Path, width: int, n_samples: int) -> float:
    """Train the benchmark at `width`, extract its task vectors, write the designed samples; return seconds."""
    from mapmerge.builtin.model import prepare_benchmark
    from mapmerge.core.sampling import space_filling
    from mapmerge.tensors.taskvectors import extract_task_vector

    pretrain, finetune = EPOCHS.get(width, WIDE_EPOCHS)
    start = time.perf_counter()
    ckpt = work / "ckpt"
    prepare_benchmark(
        {"tasks": TASKS, "seed": SEED, "width": width, "pretrain_epochs": pretrain, "finetune_epochs": finetune}, ckpt
    )
    for task in TASKS:
        extract_task_vector(
            ckpt / "pretrained.safetensors",
            ckpt / f"{task}.safetensors",
            ["*"],
            [HEAD + "*"],
            work / "vec" / f"{task}.safetensors",
            task,
        )
    points = space_filling(len(TASKS), n_samples, {"kind": "sobol", "lower": 0.0, "upper": 1.0}, SEED)
    coefficients = {"warm-up": [0.5] * len(TASKS)}
    coefficients.update({f"s{i:04d}": [float(v) for v in p] for i, p in enumerate(points)})
    (work / "samples.json").write_text(json.dumps(coefficients))
    return time.perf_counter() - start


def run_worker(kind: str, work: Path, width: int, args: argparse.Namespace) -> dict:
    result = work / f"{kind}.json"
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--work",
        str(work),
        "--width",
        str(width),
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--result",
        str(result),
    ]
    subprocess.run(command, check=True)
    return json.loads(result.read_text())


def check_same(engine: dict, naive: dict) -> tuple[float, float]:
    """Largest accuracy and relative mean-loss differences over (sample, task); fail when not close."""
    worst_acc = worst_loss = 0.0
    for sample, per_task in engine["metrics"].items():
        for task, (acc, loss) in per_task.items():
            n_acc, n_loss = naive["metrics"][sample][task]
            worst_acc = max(worst_acc, abs(acc - n_acc))
            worst_loss = max(worst_loss, abs(loss - n_loss) / max(abs(n_loss), 1e-12))
    # float32 sums in another order: allow one of ~540 test examples to flip, losses to 1e-4 relative
    assert worst_acc <= 1 / 500 + 1e-12, f"per-task accuracies differ by {worst_acc}"
    assert worst_loss <= 1e-4, f"per-task mean losses differ by {worst_loss:.2e} (relative)"
    return worst_acc, worst_loss


def report(width: int, train_s: float, timing: dict, memory: dict[str, dict]) -> dict:
    n = timing["n"]
    engine, naive = timing["engine"], timing["naive"]
    worst_acc, worst_loss = check_same(engine, naive)
    total = {k: sum(timing[k]["times"]) for k in ("engine", "naive")}
    median = {k: statistics.median(timing[k]["times"]) for k in ("engine", "naive")}
    rate = {k: n / total[k] for k in total}
    # start-up from the memory processes, where each approach starts cold (in the timing process the
    # second one to start finds the evaluators' data already loaded)
    rate_su = {k: n / (total[k] + memory[k]["startup_s"]) for k in total}
    ms = lambda s: 1000 * s / n  # noqa: E731
    print(
        f"\n## width {width}: {timing['params']:,} merged parameters, {n} Sobol samples x {len(TASKS)} tasks, "
        f"{timing['threads']} torch thread(s); benchmark trained in {train_s:.0f} s"
    )
    print(
        f"same results: largest per-task accuracy difference {worst_acc:.4f}, mean-loss difference {worst_loss:.1e} (relative)\n"
    )
    print(
        "| approach | evaluations/s | ms per evaluation (mean) | ms (median) | start-up s | evaluations/s incl. start-up | RSS after imports MB | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k in ("engine", "naive"):
        print(
            f"| {k} | {rate[k]:.2f} | {ms(total[k]):.1f} | {1000 * median[k]:.1f} | {memory[k]['startup_s']:.2f} | {rate_su[k]:.2f} "
            f"| {memory[k]['rss_start_mb']:.0f} | {memory[k]['peak_rss_mb']:.0f} |"
        )
    print(
        f"| **ratio engine / naive** | **{rate['engine'] / rate['naive']:.2f}x** | | {median['naive'] / median['engine']:.2f}x "
        f"| | {rate_su['engine'] / rate_su['naive']:.2f}x | | |"
    )
    print("\nper-evaluation time split (one evaluation = one merge evaluated on all tasks)\n")
    print("| approach | part | ms | share |")
    print("|---|---|---|---|")
    for k in ("engine", "naive"):
        for part, seconds in timing[k]["split_s"].items():
            print(f"| {k} | {part} | {ms(seconds):.2f} | {seconds / total[k]:.0%} |")
        rest = total[k] - sum(timing[k]["split_s"].values())
        print(f"| {k} | other (Python glue) | {ms(rest):.2f} | {rest / total[k]:.0%} |")
    forward = naive["split_s"]["evaluate (forward)"]
    besides = {"naive": total["naive"] - forward, "engine": total["engine"] - engine["split_s"]["forward (evaluators)"]}
    merge = {"naive": naive["split_s"]["merge (Python loop)"], "engine": engine["split_s"]["merge (addmv)"]}
    print(
        f"\nforward passes: engine {ms(engine['split_s']['forward (evaluators)']):.2f} ms, naive {ms(forward):.2f} ms per evaluation "
        "(the same evaluators on the same weights: any difference is noise)"
    )
    print(
        f"why: the forward passes take {forward / total['naive']:.0%} of the naive time, "
        f"so no merge implementation can be more than {total['naive'] / forward:.2f}x faster than naive here (Amdahl)."
    )
    print(
        f"work besides the forward pass, per evaluation: naive {ms(besides['naive']):.2f} ms (reload + copy + merge + load_state_dict + glue), "
        f"engine {ms(besides['engine']):.2f} ms (addmv + heads + row checks + Parquet + glue); naive / engine = {besides['naive'] / besides['engine']:.1f}x"
    )
    print(
        f"the merge alone: {ms(merge['naive']):.3f} ms Python loop vs {ms(merge['engine']):.3f} ms addmv ({merge['naive'] / merge['engine']:.1f}x)"
    )
    return {
        "width": width,
        "params": timing["params"],
        "ratio": rate["engine"] / rate["naive"],
        "median_ratio": median["naive"] / median["engine"],
        "bound": total["naive"] / forward,
        "besides": besides["naive"] / besides["engine"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widths", default="16,64")
    parser.add_argument("--batch", type=int, default=8, help="samples per Parquet file (evaluation.samples_per_job)")
    parser.add_argument("--worker", choices=["timing", "engine", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(
        f"torch {torch.__version__}; {os.cpu_count()} CPUs; every measured process uses {args.threads} torch thread(s)"
    )
    print(
        f"{args.samples} Sobol samples in [0,1]^{len(TASKS)} per width; engine and naive alternate sample by sample in one process"
    )
    tmp = Path(tempfile.mkdtemp(prefix="mapmerge-throughput-"))
    summary = []
    try:
        for width in (int(w) for w in args.widths.split(",")):
            work = tmp / f"w{width}"
            train_s = prepare(work, width, args.samples)
            timing = run_worker("timing", work, width, args)
            memory = {kind: run_worker(kind, work, width, args) for kind in ("engine", "naive")}
            summary.append(report(width, train_s, timing, memory))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n## summary\n")
    print(
        "| width | merged parameters | engine / naive evaluations/s | same, per-sample medians | upper bound (naive time / its forward time) | work besides the forward pass, naive / engine |"
    )
    print("|---|---|---|---|---|---|")
    for row in summary:
        print(
            f"| {row['width']} | {row['params']:,} | {row['ratio']:.2f}x | {row['median_ratio']:.2f}x | {row['bound']:.2f}x | {row['besides']:.1f}x |"
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s; temporary files removed: {not tmp.exists()}")


if __name__ == "__main__":
    main()
