"""Selection rules compared: what weighted_sum, tchebycheff and balanced choose for an equal preference.

    .venv/bin/python benchmarks/selection_rules.py [--settings 4 8 mlp] [--rules weighted_sum tchebycheff balanced]
        [--cores 2] [--workdir /tmp/selbench] [--reuse] [--retries 1]

Runs the real workflow (`snakemake --cores N -s Snakefile -d WORKDIR`) once per setting and rule, one
run at a time, with the default config otherwise (refinement on: refine.rounds=2, whose picks follow
the rule, so every rule has its own run and its own measured front):

- `4`: the built-in benchmark, 4 tasks (the default config), run `sel4_<rule>`;
- `8`: the built-in benchmark with `benchmark.tasks=8`, run `sel8_<rule>`;
- `mlp`: examples/custom_mlp (its checkpoints made first where missing), run `selmlp_<rule>`. Its
  experiment file weighs stripes_0 twice; the comparison is for an equal preference, so the run sets
  `preference.stripes_0=1` (the others are 1 already). `preference={}` would not do: a Hydra dict
  override merges into the experiment's preference and leaves it as it was.

Every run is seeded alike (seed 0), so a setting's rules train the same benchmark and evaluate the
same design; they differ from the first refinement round on. From each finished run it reads
selected.parquet (the chosen merge: `measured_accuracy_<task>`; `accuracy_<task>` is the surrogates'
prediction), reference.parquet (pretrained and fine-tuned accuracies) and measured.parquet (the
measured front: the real evaluations no other dominates), and prints per setting and rule:

- `wall s` of the run, `evals`: (model, task) evaluations in its ledger (evaluations.parquet);
- `mean acc` of the chosen merge (measured), `min gain`: the lowest normalised gain
  (acc - pretrained) / (finetuned - pretrained) over tasks, `near pre`: tasks whose accuracy is at
  most their pretrained accuracy + 0.02 (given up), `|pred-meas|`: mean over tasks of the chosen
  merge's |predicted - measured| accuracy;
- of the run's measured front: `front`: its points, `front best min gain`: the highest min gain of
  any point (> 0.1: no task needs to be given up, `avoidable`), `front best mean`: the highest mean
  accuracy of any point;
- a per-task table: accuracy (gain) of each rule's merge, and the pretrained and fine-tuned
  accuracies;
- each rule applied (mapmerge.core.selection.pick_point) to each run's measured front, no new
  evaluation: mean accuracy / min gain of its pick, `*` where it is the run's own choice. This
  separates the rule's final choice from the front its refinement picks built. Column `balanced,
  else weighted_sum` is a what-if: balanced where some front point keeps every task's gain above
  0.1, weighted_sum's pick otherwise.

--reuse takes a run whose selected.parquet and recorded wall time (WORKDIR/walls.json) exist
instead of running it again (to print the tables again). --retries N: a failed run is logged (the
tail of its stderr and its job logs named) and rerun from an empty folder after 60 s, up to N times
(for a tree that other people are editing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mapmerge.core.selection import METHODS, gains, measured_front, pick_point, reference_values
from mapmerge.io import read_table
from workflow_command import workflow_command  # this script's folder is on sys.path when it runs

REPO = Path(__file__).resolve().parents[1]
MLP = REPO / "examples" / "custom_mlp"
NEAR = 0.02  # a task at most this far above its pretrained accuracy is given up
AVOIDABLE = 0.1  # a measured front point with every task's gain above this: giving up a task is avoidable
SETTINGS = {
    "4": ("built-in benchmark, 4 tasks", "sel4", [], None),
    "8": ("built-in benchmark, 8 tasks", "sel8", ["benchmark.tasks=8"], None),
    "mlp": ("examples/custom_mlp, 3 tasks", "selmlp", ["preference.stripes_0=1"], MLP / "experiment.yaml"),
}


def run_workflow(workdir: Path, name: str, rule: str, extra: list[str], experiment: Path | None, cores: int) -> float:
    """Wall seconds of one full run; raises RuntimeError with the tail of its stderr on failure."""
    overrides = [f"name={name}", f"selection.method={rule}", *extra]
    cmd = workflow_command(workdir, "--rerun-incomplete", cores=cores, overrides=overrides, experiment=experiment)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    (workdir / f"{name}.stderr.txt").write_text(proc.stderr)
    if proc.returncode != 0:
        logs = sorted(str(p.relative_to(workdir)) for p in (workdir / "results" / name / "logs").rglob("*.log"))
        raise RuntimeError(
            f"snakemake failed for {name} (rc {proc.returncode}):\n{proc.stderr[-3000:]}\nlogs: {logs[-5:]}"
        )
    return wall


def measure(results: Path, wall: float) -> tuple[dict[str, object], dict[str, float], dict[str, float], dict]:
    """Summary row, per-task accuracies, per-task gains and the reference (pretrained, fine-tuned) of one run."""
    selected = read_table(results / "selected.parquet")
    if len(selected) != 1:
        raise RuntimeError(f"{results}: selected.parquet has {len(selected)} rows; this benchmark expects one group")
    chosen = selected.iloc[0]
    tasks = [c.removeprefix("c_") for c in selected.columns if c.startswith("c_")]
    weights = {t: float(chosen[f"weight_{t}"]) for t in tasks}
    if max(weights.values()) - min(weights.values()) > 1e-9:
        raise RuntimeError(f"{results}: the preference was not equal: {weights}")
    ref = reference_values(read_table(results / "reference.parquet"), "accuracy", tasks)
    acc = {t: float(chosen[f"measured_accuracy_{t}"]) for t in tasks}
    gain = {t: float(gains(np.array(acc[t]), *ref[t], True)) for t in tasks}
    error = np.mean([abs(float(chosen[f"accuracy_{t}"]) - acc[t]) for t in tasks])
    front = read_table(results / "measured.parquet")
    front = measured_front(
        front[front["group"] == chosen["group"]], "accuracy", tasks
    )  # measured.parquet is one already
    front_acc = front[[f"accuracy_{t}" for t in tasks]].to_numpy(dtype=float)
    front_gain = np.column_stack([gains(front_acc[:, i], *ref[t], True) for i, t in enumerate(tasks)])
    ledger = read_table(results / "evaluations.parquet")
    row = {
        "wall s": f"{wall:.0f}",
        "evals": int(ledger["task_evaluations"].sum()),
        "mean acc": float(np.mean(list(acc.values()))),
        "min gain": min(gain.values()),
        "near pre": sum(acc[t] <= ref[t][0] + NEAR for t in tasks),
        "|pred-meas|": float(error),
        "pick": f"{chosen['sample']} ({chosen['kind']}, r{int(chosen['round'])})",
        "front": len(front),
        "front best min gain": float(front_gain.min(axis=1).max()),
        "avoidable": "yes" if (front_gain > AVOIDABLE).all(axis=1).any() else "no",
        "front best mean": float(front_acc.mean(axis=1).max()),
    }
    return row, acc, gain, ref


def offline(results: Path, rules: list[str]) -> dict[str, object]:
    """Each rule applied by pick_point to this run's measured front (equal preference): 'mean acc / min gain' of
    its pick, '*' where it is the run's own choice; and the what-if `balanced, else weighted_sum`: balanced where
    some front point has every task's gain above AVOIDABLE, weighted_sum's pick otherwise."""
    chosen = read_table(results / "selected.parquet").iloc[0]
    tasks = [c.removeprefix("c_") for c in chosen.index if c.startswith("c_")]
    ref = reference_values(read_table(results / "reference.parquet"), "accuracy", tasks)
    front = read_table(results / "measured.parquet")
    front = front[front["group"] == chosen["group"]].reset_index(drop=True)
    info = {"members": tasks, "tasks": tasks, "member_tasks": [[t] for t in tasks]}
    acc = front[[f"accuracy_{t}" for t in tasks]].to_numpy(dtype=float)
    gain = np.column_stack([gains(acc[:, i], *ref[t], True) for i, t in enumerate(tasks)])
    picks = {rule: pick_point(front, info, None, "accuracy", rule, 0.05, ref)[0] for rule in rules}
    if "balanced" in picks and "weighted_sum" in picks:
        avoidable = (gain > AVOIDABLE).all(axis=1).any()
        picks["balanced, else weighted_sum"] = picks["balanced" if avoidable else "weighted_sum"]

    def cell(i: int) -> str:
        own = "*" if front["sample"].iloc[i] == chosen["sample"] else ""
        return f"{acc[i].mean():.3f} / {gain[i].min():+.2f}{own}"

    return {rule: cell(i) for rule, i in picks.items()}


def markdown(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)

    header = [str(c).replace("|", "\\|") for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--rules", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/selbench"))
    parser.add_argument("--reuse", action="store_true", help="take finished runs in --workdir instead of rerunning")
    parser.add_argument("--retries", type=int, default=0, help="rerun a failed run from scratch after 60 s")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    walls_file = workdir / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
    if "mlp" in args.settings and not (MLP / "checkpoints" / "pretrained.pt").exists():
        subprocess.run([sys.executable, str(MLP / "make_checkpoints.py")], check=True)
    total = time.perf_counter()
    for key in args.settings:
        title, prefix, extra, experiment = SETTINGS[key]
        rows, per_task, reference, fronts = [], {}, None, []
        for rule in args.rules:
            name = f"{prefix}_{rule}"
            results = workdir / "results" / name
            if not (args.reuse and name in walls and (results / "selected.parquet").exists()):
                for attempt in range(args.retries + 1):
                    shutil.rmtree(results, ignore_errors=True)  # a full run every time: comparable wall times
                    try:
                        walls[name] = run_workflow(workdir, name, rule, extra, experiment, args.cores)
                        break
                    except RuntimeError as exc:
                        print(f"... attempt {attempt + 1}: {exc}", file=sys.stderr, flush=True)
                        if attempt == args.retries:
                            raise SystemExit(f"{name}: failed {attempt + 1} times") from None
                        time.sleep(60)
                walls_file.write_text(json.dumps(walls, indent=1))
            row, acc, gain, ref = measure(results, walls[name])
            print(f"... {name}: {walls[name]:.0f} s", file=sys.stderr, flush=True)
            rows.append({"rule": rule, **row})
            fronts.append({"front of run": rule, **offline(results, args.rules)})
            per_task[rule] = {t: f"{acc[t]:.3f} ({gain[t]:+.2f})" for t in acc}
            if reference is not None and reference != ref:
                print(f"... {name}: reference accuracies differ from the first rule's run", file=sys.stderr)
            reference = reference or ref
        print(f"\n### {title}\n")
        print(markdown(pd.DataFrame(rows)))
        table = [{"": rule, **cells} for rule, cells in per_task.items()]
        table += [
            {"": "pretrained", **{t: f"{v[0]:.3f}" for t, v in reference.items()}},
            {"": "fine-tuned", **{t: f"{v[1]:.3f}" for t, v in reference.items()}},
        ]
        print("\naccuracy (normalised gain) per task:\n")
        print(markdown(pd.DataFrame(table)))
        print("\neach rule on each run's measured front: mean acc / min gain of its pick (* the run's own choice):\n")
        print(markdown(pd.DataFrame(fronts)), flush=True)
    print(f"\ntotal {time.perf_counter() - total:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
