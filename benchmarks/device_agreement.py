"""One run's evaluations on two devices, example by example: the CUDA path against the CPU one (docs/scaling.md,
"The workflow on CUDA").

    python benchmarks/device_agreement.py [--device cuda] [--reference cpu] [--cores 16] [--keep DIR]

Runs `make demo`'s pipeline (the default config) to the end in a temporary folder with evaluation.device=DEVICE,
copies its results, and runs its design batches and reference models again there (rules evaluate_sample and
evaluate_reference, forced, and nothing after them) with evaluation.device=REFERENCE, from the same checkpoints and
task vectors. Prints per rewritten table the examples compared, how many of them agree in correctness and the largest
loss difference; the last line: `examples N agree F max-loss-diff D wall S` (S: the DEVICE run's seconds). Exits 1
where an example's correctness differs or a loss by more than TOLERANCE (float32 kernels differ by about 1e-5).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from mapmerge.io import read_table
from workflow_command import run_timed, workflow_command  # this script's folder is on sys.path when it runs

FORCED = ("evaluate_sample", "evaluate_reference")
TOLERANCE = 1e-4


def run_workflow(workdir: Path, cores: int, device: str, *args: str) -> float:
    """Wall seconds of `snakemake` in `workdir` with evaluation.device=device, every job evaluating (no evaluation
    cache); a failure ends the script."""
    cmd = workflow_command(
        workdir, *args, cores=cores, overrides=[f"evaluation.device={device}", "evaluation.cache=false"]
    )
    return run_timed(cmd, f"evaluation.device={device}")


def example_tables(results: Path) -> dict[Path, float]:
    """The run's per-example tables (Parquet files with `example` and `correct` columns) and their mtimes."""
    tables = [
        p
        for p in results.rglob("*.parquet")
        if ".cache" not in p.relative_to(results).parts and {"example", "correct"} <= set(pq.read_schema(p).names)
    ]
    return {p.relative_to(results): p.stat().st_mtime for p in tables}


def agreement(first: Path, second: Path) -> dict[str, float]:
    """Examples compared, how many of them have the same `correct`, and the largest |loss difference|."""
    a, b = read_table(first), read_table(second)
    key = [c for c in ("sample", "model", "task", "example") if c in a.columns]
    both = a.merge(b, on=key, suffixes=("_a", "_b"), validate="one_to_one")
    if len(both) != len(a) or len(both) != len(b):
        raise SystemExit(f"{second}: {len(b)} examples against {len(a)}, {len(both)} in common")
    return {
        "examples": len(both),
        "agreeing": int((both["correct_a"] == both["correct_b"]).sum()),
        "max_loss_diff": float((both["loss_a"] - both["loss_b"]).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device under test (evaluation.device)")
    parser.add_argument("--reference", default="cpu", help="the device it is compared with")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="device_agreement."))
    tested, reference = root / args.device.replace(":", "_"), root / f"reference_{args.reference.replace(':', '_')}"
    wall = run_workflow(tested, args.cores, args.device)
    shutil.copytree(tested / "results", reference / "results")  # mtimes kept: nothing is stale there
    before = example_tables(reference / "results")
    run_workflow(reference, args.cores, args.reference, "--forcerun", *FORCED, "--until", *FORCED)
    rewritten = sorted(p for p, mtime in example_tables(reference / "results").items() if before.get(p) != mtime)
    if not rewritten:
        raise SystemExit(f"the {args.reference} run rewrote no per-example table under {reference / 'results'}")
    rows = pd.DataFrame(
        [{"table": str(p), **agreement(tested / "results" / p, reference / "results" / p)} for p in rewritten]
    )
    print(f"evaluation.device={args.device} against {args.reference}, the same run's checkpoints and task vectors:")
    print(rows.to_string(index=False))
    examples, agreeing = int(rows["examples"].sum()), int(rows["agreeing"].sum())
    worst = float(rows["max_loss_diff"].max())
    print(f"examples {examples} agree {agreeing / examples:.6f} max-loss-diff {worst:.2e} wall {wall:.1f}")
    if args.keep is None:
        shutil.rmtree(root)
    if agreeing < examples or worst > TOLERANCE:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
