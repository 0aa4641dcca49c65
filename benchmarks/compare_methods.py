"""Plain, nested and Bayesian MAP against task arithmetic on the built-in benchmark (6 tasks by default).

    .venv/bin/python benchmarks/compare_methods.py [--tasks 6] [--cores 2] [--keep DIR] [--dataset digits|fashion]

Runs the real workflow (`snakemake --cores N`) once per method into a temporary folder, then
prints a Markdown table: the real evaluations each method used (merged models evaluated, and
(model, task) evaluations, from its evaluations.parquet; the reference models are the same for
all and left out), its wall time, and the measured per-task accuracy of the merge it chose for
equal preferences. Task arithmetic with one shared coefficient (0.3, and the best single value of
a grid 0.05 ... 1.0 by mean accuracy) is evaluated with the same engine on the same checkpoints.
The first run (plain MAP) trains the seeded benchmark; the others take its checkpoints as their
model (an experiment file naming them, with the same builder and evaluators), so they extract
the same task vectors and evaluate the same models without training again. `common s` is the
logged time of the stages every method runs alike (benchmark training where it ran, task
vectors, reference models); `method s` is the wall time less that.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mapmerge.core.metrics import metrics_from_examples
from mapmerge.io import read_table
from mapmerge.run.config import load_config, stage_config
from mapmerge.stages import evaluation
from workflow_command import STAGE_DONE, run_timed, workflow_command  # this script's folder is on sys.path when it runs

REPO = Path(__file__).resolve().parents[1]
METHODS = {"plain MAP": "map", "nested MAP": "nested", "Bayesian MAP": "bayesian"}
FIRST = "map"  # its run trains the benchmark; the others evaluate the same checkpoints
COMMON_STAGES = ("prepare_benchmark", "extract_task_vector", "task_vector_table", "evaluate_reference")


def overrides(method: str, n_tasks: int, dataset: str = "digits", benchmark: bool = True) -> list[str]:
    """A run's overrides; benchmark=False for a run of the shared benchmark's experiment file (a model of its own)."""
    chosen = [f"benchmark={dataset}", f"benchmark.tasks={n_tasks}"] if benchmark else []
    return [f"name={method}", f"method={method}", *chosen]


def shared_benchmark(workdir: Path, n_tasks: int, dataset: str) -> Path:
    """An experiment file that names the first run's benchmark checkpoints as the model (its builder,
    checkpoints and evaluators, as resolved), so that later runs evaluate the same models without
    training them again."""
    cfg = load_config(
        REPO / "config", overrides=[*overrides(FIRST, n_tasks, dataset), f"results_dir={workdir / 'results'}"]
    )
    model = {key: cfg["model"][key] for key in ("builder", "pretrained", "tasks", "merge")}
    path = workdir / "shared_benchmark.yaml"
    path.write_text(yaml.safe_dump({"model": model}, sort_keys=False))  # the tasks in the benchmark's order
    return path


def run_workflow(workdir: Path, method: str, n_tasks: int, cores: int, dataset: str, experiment: Path | None) -> float:
    """Wall seconds of one full run of the workflow."""
    chosen = overrides(method, n_tasks, dataset, benchmark=experiment is None)
    cmd = workflow_command(workdir, cores=cores, overrides=chosen, experiment=experiment)
    return run_timed(cmd, f"method={method}")


def stage_seconds(results: Path, stages_: tuple[str, ...]) -> float:
    """Sum of the logged durations ('done ... in X s') of the given stages' jobs."""
    total = 0.0
    for stage in stages_:
        for log in [*results.glob(f"logs/{stage}.log"), *results.glob(f"logs/{stage}/**/*.log")]:
            match = STAGE_DONE.search(log.read_text())
            total += float(match.group(2)) if match else 0.0
    return total


def method_row(label: str, results: Path, wall: float, tasks: list[str]) -> dict[str, object]:
    ledger = read_table(results / "evaluations.parquet")
    merged = ledger[ledger["stage"] != "evaluate_reference"]
    final = read_table(results / "selected.parquet").iloc[-1]
    common = stage_seconds(results, COMMON_STAGES)
    row: dict[str, object] = {
        "method": label,
        "merged models evaluated": int(merged["models"].sum()),
        "(model, task) evaluations": int(merged["task_evaluations"].sum()),
        "wall s": f"{wall:.0f}",
        "common s": f"{common:.0f}",
        "method s": f"{wall - common:.0f}",
    }
    accuracies = {t: float(final[f"measured_accuracy_{t}"]) for t in tasks}
    return {**row, "mean acc": np.mean(list(accuracies.values())), **accuracies}


def task_arithmetic_rows(workdir: Path, n_tasks: int, tasks: list[str], dataset: str) -> list[dict[str, object]]:
    """Shared-coefficient task arithmetic on the plain run's checkpoints: 0.3 and the best grid value."""
    cfg = load_config(
        REPO / "config", overrides=[*overrides("map", n_tasks, dataset), f"results_dir={workdir / 'results'}"]
    )
    results = Path(cfg["results"])
    files = {
        "pretrained": cfg["model"]["pretrained"],
        "vectors": {t: results / "task_vectors" / f"{t}.safetensors" for t in tasks},
        "checkpoints": {t: cfg["model"]["tasks"][t]["checkpoint"] for t in tasks},
    }
    engine = evaluation._engine(stage_config(cfg, "evaluate"), files, "cpu", 1)

    def accuracies(lam: float) -> dict[str, float]:
        metrics = metrics_from_examples(engine.evaluate([lam] * len(tasks), sample=f"{lam:.2f}"))
        return metrics[metrics["metric"] == "accuracy"].set_index("task")["value"].to_dict()

    grid = {round(lam, 2): accuracies(lam) for lam in np.arange(0.05, 1.0001, 0.05)}
    best = max(grid, key=lambda lam: np.mean(list(grid[lam].values())))
    rows = []
    for label, lam in [("task arithmetic, c = 0.3", 0.3), (f"task arithmetic, best c = {best}", best)]:
        acc = grid[round(lam, 2)]
        evaluated = 1 if label.endswith("0.3") else len(grid)
        rows.append(
            {
                "method": label,
                "merged models evaluated": evaluated,
                "(model, task) evaluations": evaluated * len(tasks),
                "wall s": "",
                "common s": "",
                "method s": "",
                "mean acc": np.mean([acc[t] for t in tasks]),
                **{t: acc[t] for t in tasks},
            }
        )
    return rows


def markdown(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=6, help="built-in tasks to merge (8: about 11 min on 2 cores)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary folder)")
    parser.add_argument(
        "--dataset", choices=["digits", "fashion"], default="digits", help="the built-in benchmark's images"
    )
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="mapmerge-compare-"))
    try:
        rows, experiment = [], None
        for label, method in METHODS.items():
            wall = run_workflow(workdir, method, args.tasks, args.cores, args.dataset, experiment)
            experiment = experiment or shared_benchmark(workdir, args.tasks, args.dataset)
            results = workdir / "results" / method
            tasks = [m for m in read_table(results / "reference.parquet")["model"].unique() if m != "pretrained"]
            rows.append(method_row(label, results, wall, tasks))
            print(f"{label}: {wall:.0f} s", file=sys.stderr)
        rows += task_arithmetic_rows(workdir, args.tasks, tasks, args.dataset)
        print(markdown(pd.DataFrame(rows)))
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
