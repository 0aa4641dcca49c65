"""A run's results folder, read back: what it holds, a new choice from its stored front, its plots again.

The work of `mapmerge status`, `mapmerge select` and `mapmerge plot`. Nothing here evaluates a model
or needs Snakemake. Everything is read from the artifacts (see README, "Stages and artifacts"):

- the method: levels/level<k>.parquet and the group names (L<k>g<j>: nested MAP), Bayesian rounds
  (groups/<g>/rounds/r01.parquet and later: Bayesian MAP), else plain MAP;
- the objective metric: the `measured_<metric>` column of groups.parquet (aggregate), else --metric;
- the merge operator and the coefficients the run chose: the header of groups/<g>/merged.safetensors;
- the pretrained checkpoint: RESULTS/checkpoints/ for the built-in benchmark (benchmark.parquet); a
  user model's is not kept in the run folder (its artifacts record only file names and hashes), so it
  is given with --pretrained, and checked against the recorded hash (pretrained_record) before anything
  is written.

torch is imported only where a checkpoint is read or written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mapmerge.adapters import hub
from mapmerge.adapters.transformers import (
    HF_WEIGHTS,
    MAX_SHARD_SIZE,
    merged_tensor_names,
    non_persistent_buffers,
    save_merged_models,
    weights_file,
)
from mapmerge.core import groups, metrics, refine, selection
from mapmerge.core.metrics import (
    METRICS,
    maximized,
    metrics_from_examples,
    suffixes,
    wide_metrics,
)
from mapmerge.errors import ConfigError
from mapmerge.io import (
    ArtifactError,
    atomic_path,
    file_hash,
    read_table,
    table_metadata,
)
from mapmerge.layout import Layout
from mapmerge.outputs.notes import fallback_note, final_notes
from mapmerge.outputs.report import HTML_TABLES
from mapmerge.run import evaluation_cache, runlock
from mapmerge.run.registry import STAGES
from mapmerge.tensors.operators import SEEDED

NESTED_GROUP = re.compile(r"^L(\d+)g(\d+)$")  # nested MAP's group names (mapmerge.core.groups.structure)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
STATUS_STAGES = [
    s.rule for s in STAGES if not s.validation
]  # the stages `mapmerge status` reports, in the workflow's order
EVAL_STAGES = [s.rule for s in STAGES if s.resources == "evaluate" and not s.validation]  # the ledger's stages
METHOD_NAMES = {"map": "plain MAP", "nested": "nested MAP", "bayesian": "Bayesian MAP", None: "method not known yet"}


class UsageError(ValueError):
    """Bad command-line input (a folder that is none, a preference, a missing option): exit status 2."""


# ---------------------------------------------------------------------------------------------------
# What a run folder holds


@dataclass
class Scan:
    """A run folder's method, tasks and groups, as far as its artifacts tell."""

    results: Path
    method: str | None  # map, nested, bayesian; None when nothing tells yet
    why: str  # how the method was told
    tasks: list[str]
    plans: dict[int, Path]  # level -> levels/level<k>.parquet (those on disk)
    levels: list[list[str]]  # group names per level: expected for the method, else those found
    problems: dict[Path, str] = field(default_factory=dict)  # unreadable artifacts met on the way: path -> why

    @property
    def groups(self) -> list[str]:
        return [g for names in self.levels for g in names]

    def level_of(self, group: str) -> int:
        return next(k for k, names in enumerate(self.levels, 1) for g in names if g == group)

    @property
    def paths(self) -> Layout:
        return Layout(self.results)


def _level_plans(results: Path) -> dict[int, Path]:
    found = {}
    for path in Layout(results).levels.glob("level*.parquet"):
        number = path.stem.removeprefix("level")
        if number.isdigit():
            found[int(number)] = path
    return dict(sorted(found.items()))


def _group_dirs(results: Path) -> list[str]:
    root = Layout(results).groups
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _rounds(results: Path, group: str) -> list[Path]:
    folder = Layout(results).rounds(group)
    return sorted(p for p in folder.glob("r*.parquet") if Layout.round_number(p) is not None) if folder.is_dir() else []


def _bayesian_round(results: Path, group: str, problems: dict[Path, str]) -> bool:
    """Whether the group's round r01 is a Bayesian one (not a refinement round's pick and front points)."""
    later = [p for p in _rounds(results, group) if Layout.round_number(p)]
    first = _try_read(later[0], problems, columns=["kind"]) if later else None
    return first is not None and bool((first["kind"] == "bayesian").any())


def _try_read(path: Path, problems: dict[Path, str], columns: list[str] | None = None) -> pd.DataFrame | None:
    try:
        return read_table(path, columns=columns)
    except (ArtifactError, KeyError, ValueError) as exc:  # KeyError/ValueError: a column missing
        problems[path] = str(exc).split("; delete it")[0].removeprefix(f"{path}: ")
        return None


def _nested_order(name: str) -> tuple[int, int]:
    match = NESTED_GROUP.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def scan(results: Path) -> Scan:
    """The method, tasks and groups of a run folder (which may be partly finished)."""
    results = Path(results)
    paths = Layout(results)
    if not results.is_dir():
        raise UsageError(f"{results}: not a folder")
    problems: dict[Path, str] = {}
    plans = _level_plans(results)
    frames = {k: _try_read(p, problems) for k, p in plans.items()}
    planned = [g for f in frames.values() if f is not None for g in f["group"].dropna()]
    dirs = _group_dirs(results)
    tasks: list[str] = []
    if frames.get(1) is not None:
        tasks = [t for ts in frames[1]["tasks"] for t in ts]
    if not tasks and paths.reference.exists():
        ref = _try_read(paths.reference, problems, columns=["model"])
        tasks = [] if ref is None else [m for m in dict.fromkeys(ref["model"]) if m != "pretrained"]
    if not tasks:
        tasks = sorted(p.stem for p in paths.task_vectors.glob("*.safetensors"))
    names = planned + dirs
    if any(NESTED_GROUP.match(g) for g in names):
        method, why = "nested", "groups named L<level>g<j>"
    elif any(_bayesian_round(results, g, problems) for g in dirs):
        method, why = "bayesian", "Bayesian rounds r01 and later under groups/all/rounds"
    elif groups.PLAIN_GROUP in names:
        how = "levels/level1.parquet: one group 'all'" if groups.PLAIN_GROUP in planned else "one group 'all'"
        method, why = "map", f"{how} and no Bayesian rounds"
    else:
        method, why = None, "no level plan or group yet"
    if method == "nested" and len(tasks) >= 2:
        levels = groups.structure("nested", len(tasks))
    elif method == "nested":
        found = sorted({g for g in names if NESTED_GROUP.match(g)}, key=_nested_order)
        levels = [[g for g in found if _nested_order(g)[0] == k] for k in sorted({_nested_order(g)[0] for g in found})]
    elif method is not None:
        levels = [[groups.PLAIN_GROUP]]
    else:
        levels = []
    return Scan(results, method, why, tasks, plans, levels, problems)


def artifact_damage(path: Path) -> str | None:
    """Why an artifact that exists does not read as what its suffix says, judged cheaply; None when it does.

    A Parquet file: its footer (schema, row groups), not its pages. A safetensors file: its header and
    that the file is as long as the header says. Other files are not looked into. What lies deeper (a
    damaged page, a tensor that is not finite) is for `mapmerge check`, which reads everything.
    """
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        try:
            pq.read_metadata(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others
            return f"not a readable Parquet file ({' '.join(str(exc).split())})"
    elif path.suffix == ".safetensors":
        return _safetensors_damage(path)
    return None


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        start = fh.read(8)
        length = int.from_bytes(start, "little") if len(start) == 8 else -1
        if not 0 < length <= size - 8:
            return f"not a safetensors file (its {size} bytes hold no header)"
        try:
            header = json.loads(fh.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            return f"not a safetensors file (unreadable header: {exc})"
    if 8 + length + end != size:
        return f"truncated or padded safetensors file (its header says {8 + length + end} bytes, it has {size})"
    return None


def _rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # any unreadable file: shown as such
        return None


def _evaluation_files(results: Path, layout: Scan) -> list[tuple[str, str | None, Path]]:
    """(stage, group, path) of every evaluation file on disk."""
    paths = Layout(results)
    files = []
    if paths.reference_examples.exists():
        files.append(("evaluate_reference", None, paths.reference_examples))
    for group in sorted(set(layout.groups) | set(_group_dirs(results))):
        for path in sorted(paths.evals(group).glob("*.parquet")):
            files.append(("evaluate_round" if Layout.is_round_batch(path) else "evaluate_sample", group, path))
        if paths.selected_evals(group).exists():
            files.append(("evaluate_selected", group, paths.selected_evals(group)))
    return files


def evaluation_counts(results: Path, layout: Scan) -> tuple[pd.DataFrame, str]:
    """Real evaluations per stage (files, models, (model, task) evaluations) and where the counts come from.

    From evaluations.parquet (the ledger) when it is there, else counted from the evaluation files
    as the ledger counts them (models per file, distinct (model, task) pairs per file).
    """
    columns = ["stage", "files", "models", "task_evaluations"]
    ledger = Layout(results).ledger
    if ledger.exists():
        frame = _try_read(ledger, layout.problems)
        if frame is not None:
            counts = frame.groupby("stage", sort=False).agg(
                files=("file", "size"), models=("models", "sum"), task_evaluations=("task_evaluations", "sum")
            )
            return counts.reset_index()[columns], "from evaluations.parquet"
    rows = []
    for stage, _, path in _evaluation_files(results, layout):
        key = "model" if stage == "evaluate_reference" else "sample"
        frame = _try_read(path, layout.problems, columns=[key, "task"])
        if frame is None:
            continue
        counts = metrics.evaluation_counts(frame)
        rows.append(
            {"stage": stage, "files": 1, "models": counts["models"], "task_evaluations": counts["task_evaluations"]}
        )
    if not rows:
        return pd.DataFrame(columns=columns), "no evaluation file yet"
    counts = pd.DataFrame(rows).groupby("stage", sort=False)[columns[1:]].sum().reset_index()
    order = {s: i for i, s in enumerate(EVAL_STAGES)}
    counts = counts.sort_values("stage", key=lambda s: s.map(order), ignore_index=True)
    return (
        counts,
        f"counted from the evaluation files; evaluations.parquet is {'unreadable' if ledger.exists() else 'not written yet'}",
    )


def _state(done: int, expected: int | None) -> str:
    if expected is None:
        return "done" if done else "missing"
    return "done" if done >= expected and expected > 0 else ("partial" if done else "missing")


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> list[str]:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


class _Disk:
    """The artifacts status looks at: each read once (Parquet footer, safetensors header), its damage kept."""

    def __init__(self, problems: dict[Path, str]) -> None:
        self.problems = problems  # path -> why, shared with the Layout (scan's own finds are there)
        self._good: dict[Path, bool] = {}

    def good(self, path: Path) -> bool:
        """The file exists and reads."""
        if path not in self._good:
            why = artifact_damage(path) if path.is_file() else None
            if why:
                self.problems.setdefault(path, why)
            self._good[path] = path.is_file() and path not in self.problems
        return self._good[path]

    def count(self, paths: Sequence[Path]) -> int:
        return sum(self.good(p) for p in paths)

    def bad(self, paths: Sequence[Path]) -> bool:
        return any(not self.good(p) and p in self.problems for p in paths)

    def state(self, paths: Sequence[Path], expected: int | None) -> str:
        """done, partial or missing by the good files among `paths`; unreadable when one of them is."""
        return "unreadable" if self.bad(paths) else _state(self.count(paths), expected)


def status(results: Path) -> str:
    """What a run folder holds: per stage its artifacts, the real evaluations, per group its front and merge.

    An artifact counts only when it reads (Parquet footer, safetensors header: see artifact_damage); a
    stage with one that does not is `unreadable`, and the files are listed at the end.
    """
    results = Path(results)
    layout = scan(results)
    R = results
    disk = _Disk(layout.problems)
    tasks, groups_ = layout.tasks, layout.groups
    n_groups = len(groups_) if groups_ else None
    lines = [f"{R}: {METHOD_NAMES[layout.method]} ({layout.why})"]
    lines.append(
        f"tasks ({len(tasks)}): {', '.join(tasks)}"
        if tasks
        else "tasks: not known yet (no level plan, reference or task vector)"
    )
    driver = runlock.holder(R)
    if driver:
        lines.append(f"a snakemake driver ({runlock.describe(driver)}) is running on this folder")

    L = Layout(R)

    def each(artifact: str) -> list[Path]:
        """A group artifact (a method of Layout) of every group."""
        return [getattr(L, artifact)(g) for g in groups_]

    def pattern(*artifacts: str) -> str:
        """'groups/<g>/front.parquet' for Layout.front, the others by file name."""
        first, *rest = (getattr(L, a)("<g>") for a in artifacts)
        return ", ".join([str(first.relative_to(R)), *(p.name for p in rest)])

    def gcount(artifact: str) -> tuple[str, str]:
        return disk.state(
            each(artifact), n_groups
        ), f"{pattern(artifact)}: {disk.count(each(artifact))} of {n_groups or '?'} groups"

    def present(paths: Sequence[Path]) -> str:  # for stages whose count is not checked against an expected one
        return "unreadable" if disk.bad(paths) else ("done" if disk.count(paths) else "-")

    def named(*paths: Path) -> str:
        return ", ".join(str(p.relative_to(R)) for p in paths)

    counts, source = evaluation_counts(
        R, layout
    )  # first: it reads evaluations.parquet whole, which may find it damaged
    ckpts = sorted(L.checkpoints.glob("*.safetensors"))
    if L.benchmark.exists():
        files = [L.benchmark, *ckpts]
        bench = (
            "unreadable" if disk.bad(files) else "done",
            f"{named(L.benchmark)}, {named(L.checkpoints)}/ ({len(ckpts)} files)",
        )
    else:
        bench = ("-", f"no {named(L.benchmark)}: not run yet, or a user model (checkpoints outside the run folder)")
    vectors = [L.task_vector(t) for t in tasks]
    n_levels = len(layout.levels) or None
    rounds = {g: _rounds(R, g) for g in groups_}
    later = [p for r in rounds.values() for p in r[1:]]
    kinds = {p: _try_read(p, layout.problems, columns=["kind"]) for p in later}
    refined = [p for p, k in kinds.items() if k is not None and k["kind"].isin(refine.KINDS).any()]
    later = [p for p in later if p not in refined]
    evals = {g: sorted(L.evals(g).glob("*.parquet")) for g in groups_}
    batches = [p for files in evals.values() for p in files if not Layout.is_round_batch(p)]
    round_batches = [p for files in evals.values() for p in files if Layout.is_round_batch(p)]
    merge_outputs = [each(f) for f in ("merged", "group_vector", "choice")]
    merged = min(disk.count(files) for files in merge_outputs)
    collected = sum(disk.good(s) and disk.good(m) for s, m in zip(each("samples"), each("metrics")))
    aggregate = [L.pareto, L.measured, L.selected, L.group_tree, L.report]
    tables = sum(L.report_table(name).exists() for name in HTML_TABLES)
    agg_done = [f for f in aggregate if disk.good(f)]
    pngs = sorted(L.plots.glob("*.png"))
    if disk.bad(aggregate):
        agg_state = "unreadable"
    else:
        agg_state = (
            "done" if len(agg_done) == len(aggregate) and pngs else ("partial" if agg_done or pngs else "missing")
        )
    plans = list(layout.plans.values())
    designs = [L.round(g, 0) for g in groups_]
    states = {
        "prepare_benchmark": bench,
        "extract_task_vector": (
            disk.state(vectors, len(tasks) or None),
            f"{named(L.task_vector('<task>'))}: {disk.count(vectors)} of {len(tasks) or '?'} tasks",
        ),
        "task_vector_table": (disk.state([L.task_vector_table], 1), named(L.task_vector_table)),
        "evaluate_reference": (
            disk.state([L.reference, L.reference_examples], 2),
            named(L.reference, L.reference_examples),
        ),
        "plan_level": (
            disk.state(plans, n_levels),
            f"{named(L.plan('<k>'))}: {disk.count(plans)} of {n_levels or '?'} levels",
        ),
        "sample_coefficients": (
            disk.state(designs, n_groups),
            f"{named(L.round('<g>', 0))}: {disk.count(designs)} of {n_groups or '?'} groups",
        ),
        "propose_round": (
            present(later),
            f"{named(L.round('<g>', '<NN>'))} after r00: {len(later)}" + ("" if later else " (Bayesian MAP only)"),
        ),
        "refine_round": (
            present(refined),
            f"{named(L.round('<g>', '<NN>'))} with pick and front points: {len(refined)}"
            + ("" if refined else " (refine.rounds > 0 only)"),
        ),
        "evaluate_sample": (
            "unreadable" if disk.bad(batches) else ("done" if disk.count(batches) else "missing"),
            f"{named(L.batch('<g>', 'b<NNNN>'))}: {len(batches)} batches",
        ),
        "evaluate_round": (
            present(round_batches),
            f"{named(L.round_batch('<g>', '<NN>', '<NNNN>'))}: {len(round_batches)} batches"
            + ("" if round_batches else " (Bayesian MAP and refinement rounds only)"),
        ),
        "collect_metrics": (
            "unreadable" if disk.bad(each("samples") + each("metrics")) else _state(collected, n_groups),
            f"{pattern('samples', 'metrics')}: {collected} of {n_groups or '?'} groups",
        ),
        "fit_surrogate": gcount("surrogate"),
        "pareto_front": gcount("front"),
        "merge_group": (
            "unreadable" if disk.bad([p for files in merge_outputs for p in files]) else _state(merged, n_groups),
            f"{pattern('merged', 'group_vector', 'choice')}: {merged} of {n_groups or '?'} groups",
        ),
        "evaluate_selected": gcount("selected_evals"),
        "ledger": (disk.state([L.ledger], 1), named(L.ledger)),
        "aggregate": (
            agg_state,
            f"{named(*aggregate)}: {len(agg_done)} of {len(aggregate)}; {named(L.plots)}/: {len(pngs)} PNG",
        ),
        "report_tables": (
            _state(tables, len(HTML_TABLES)),
            f"{named(L.report_tables)}/*.html (for snakemake --report): {tables} of {len(HTML_TABLES)}",
        ),
    }
    rows = [(stage, *states.get(stage, ("-", "not read by mapmerge status"))) for stage in STATUS_STAGES]
    lines += ["", *_table(rows, ["stage", "state", "artifacts"])]

    lines += ["", f"Real evaluations ({source}):"]
    if len(counts):
        table = [(r.stage, r.files, r.models, r.task_evaluations) for r in counts.itertuples()]
        table.append(
            ("total", int(counts["files"].sum()), int(counts["models"].sum()), int(counts["task_evaluations"].sum()))
        )
        lines += ["  " + line for line in _table(table, ["stage", "files", "models", "(model, task) evaluations"])]
    else:
        lines.append("  none yet")
    cache = R / evaluation_cache.FOLDER
    if kept := sorted(cache.glob("*.parquet")):
        lines.append(
            f"  evaluation cache: {len(kept)} table{'s' * (len(kept) != 1)}, "
            f"{sum(p.stat().st_size for p in kept) / 1e6:.1f} MB in {cache} "
            "(a rerun job that evaluates the same merges takes its table from there)"
        )
        if stale := evaluation_cache.prune(R, dry_run=True).dropped:
            lines.append(
                f"    {len(stale)} of them from settings the run no longer has (their jobs' tables now hold other "
                "merges'): `mapmerge prune` drops them"
            )

    def shown(path: Path, value: object) -> object:
        return "unreadable" if path in layout.problems else ("-" if value is None else value)

    if groups_:
        table = []
        for g in groups_:
            front, samples, merged_file = L.front(g), L.samples(g), L.merged(g)
            table.append(
                (
                    g,
                    layout.level_of(g),
                    len(rounds[g]),
                    len(evals[g]),
                    shown(samples, _rows(samples) if disk.good(samples) else None),
                    shown(front, _rows(front) if disk.good(front) else None),
                    shown(merged_file, "yes" if disk.good(merged_file) else "no"),
                )
            )
        lines += ["", "Groups (the last is the final merge):"]
        header = ["group", "level", "rounds", "eval files", "samples", "front points", "merged.safetensors"]
        lines += ["  " + line for line in _table(table, header)]
    selected = L.selected
    if disk.good(selected) and all(disk.good(p) for g in groups_ for p in (L.front(g), L.choice(g), L.samples(g))):
        lines += ["", "What to know about the chosen merge:", *(f"  {line}" for line in final_notes(R))]
    if layout.problems:
        lines += ["", *(f"unreadable: {path}: {why}" for path, why in sorted(layout.problems.items()))]
        lines.append(f"  (`mapmerge check {R} --delete` deletes such files, so that snakemake makes them again)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The final group, its front and its metric


def final_group(layout: Scan) -> tuple[str, dict[str, Any]]:
    """The name of the group whose merge is the final model, and its plan (members, tasks inside each)."""
    R = layout.results
    if not layout.groups:
        raise ArtifactError(f"{R}: no group planned yet (levels/ is empty); has the workflow run?")
    group = layout.groups[-1]
    plan = layout.paths.plan(len(layout.levels))
    if plan.exists():
        return group, groups.group_info(read_table(plan), group)
    if layout.method == "nested":
        raise ArtifactError(f"{plan}: not found; the run has not reached its top level (group {group}) yet")
    front = read_table(layout.paths.front(group))  # a run from before levels/ existed
    members = suffixes(front.columns, "c")
    return group, {
        "group": group,
        "level": 1,
        "members": members,
        "member_tasks": [[m] for m in members],
        "tasks": members,
    }


def front_file(results: Path, group: str) -> Path:
    """The final group's front.parquet; ArtifactError saying so when the run has not made it yet."""
    path = Layout(results).front(group)
    if not path.exists():
        raise ArtifactError(
            f"{path}: not found; the final group {group} has no Pareto front yet (`mapmerge status {results}` shows how far the run got)"
        )
    return path


def objective_metric(
    results: Path, front: pd.DataFrame, tasks: Sequence[str], given: str | None = None
) -> tuple[str, str]:
    """(the objective metric, where it comes from): --metric, groups.parquet's measured_<metric>, or accuracy."""
    available = [m for m in METRICS if all(f"{m}_{t}" in front.columns for t in tasks)]
    if given:
        if given not in available:
            raise UsageError(
                f"--metric: the front has no predicted '{given}' for every task; it has: {', '.join(available)}"
            )
        return given, "--metric"
    tree = Layout(results).group_tree
    if tree.exists():
        recorded = [m for m in suffixes(table_columns(tree), "measured") if m in available]
        if len(recorded) == 1:
            return recorded[0], "the run's optimizer.objective, from groups.parquet"
    if "accuracy" in available:
        return "accuracy", "the default optimizer.objective (groups.parquet not written yet; --metric to choose)"
    if len(available) == 1:
        return available[0], "the only metric of the front"
    raise UsageError(f"{tree}: not found, so the run's objective metric is not known; give it with --metric")


def table_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:
        raise ArtifactError(f"{path}: unreadable Parquet ({exc})") from exc


# ---------------------------------------------------------------------------------------------------
# select


def parse_preference(text: str) -> dict[str, float]:
    """'task=weight,task=weight' as {task: weight}; UsageError naming the bad item."""
    preference: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        task, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not task:
            raise UsageError(f"--prefer: {item!r} is not task=weight")
        try:
            weight = float(value)
        except ValueError:
            raise UsageError(f"--prefer: weight of task {task!r} is not a number: {value!r}") from None
        if task in preference:
            raise UsageError(f"--prefer: task {task!r} is given twice")
        preference[task] = weight
    if not preference:
        raise UsageError("--prefer: give at least one task=weight")
    return preference


def preference_name(preference: Mapping[str, float], method: str, rho: float, own: str = "weighted_sum") -> str:
    """A file name for a preference: rot90-2_invert-1 (and the selection method when not the run's own)."""
    name = "_".join(f"{t}-{w:g}" for t, w in preference.items())
    if method != own:
        name += f"_{method}" + (f"-rho{rho:g}" if rho != 0.05 else "")
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
    if len(name) > 100:
        name = f"{name[:80]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def _decoded(value: object) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def merge_record(merged: Path) -> tuple[dict[str, Any], dict[str, float], Any]:
    """(operator spec, the run's chosen coefficients by member, seed or None) from a merged.safetensors header."""
    from mapmerge.tensors.checkpoints import safetensors_metadata  # deferred: torch

    if not merged.exists():
        raise ArtifactError(f"{merged}: not found; it records the run's merge operator: has merge_group run?")
    try:
        meta = safetensors_metadata(merged)
    except Exception as exc:  # safetensors raises its own error types
        raise ArtifactError(f"{merged}: unreadable safetensors header ({exc})") from exc
    if "operator" not in meta or "coefficients" not in meta:
        raise ArtifactError(
            f"{merged}: its header records no merge operator and coefficients (made by an older mapmerge?); run the workflow again"
        )
    seed = meta.get("seed", meta.get("merge_seed"))
    return _decoded(meta["operator"]), _decoded(meta["coefficients"]), _decoded(seed)


@dataclass
class PretrainedRecord:
    """What a run folder records of its pretrained checkpoint (see pretrained_record)."""

    key: str  # the config key that names it, for messages
    builtin: bool = False  # the built-in benchmark's, kept in RESULTS/checkpoints/
    name: str | None = None  # its file name
    digest: str | None = None  # its mapmerge.io.file_hash; None where the records do not single it out
    source: Path | None = None  # the artifact whose metadata holds the digest
    why: str = ""  # why digest is None, or why it does not vouch for every tensor

    def hint(self, results: Path) -> str:
        """What to give instead of a wrong --pretrained."""
        if self.builtin:
            return f"the run's own is {Layout(results).checkpoints / str(self.name)}: leave --pretrained out"
        return f"give the checkpoint the run merged ({self.key})"


def _checkpoint_sources(results: Path) -> list[str]:
    """The fine-tuned checkpoints' file names, from the `source` in each task vector's header."""
    from mapmerge.tensors.checkpoints import safetensors_metadata  # deferred: torch

    names = []
    for path in sorted(Layout(results).task_vectors.glob("*.safetensors")):
        try:
            source = safetensors_metadata(path).get("source")
        except Exception:  # an unreadable vector: select fails on it later, naming it
            continue
        if isinstance(source, str):
            names.append(source)
    return names


def _config_key(sources: Sequence[str]) -> str:
    from mapmerge.tensors.checkpoints import HF_WEIGHTS  # deferred: torch

    if sources and all(name in HF_WEIGHTS for name in sources):
        return "model.transformers.pretrained"
    if sources and all(name == "finetuned.pt" for name in sources):
        return "model.openclip: {root}/{model_name}/zeroshot.pt"
    return "model.pretrained"


def pretrained_record(results: Path, layout: Scan, group: str) -> PretrainedRecord:
    """The run's pretrained checkpoint as its artifacts record it: file name and hash.

    Every artifact's metadata maps the file names of its inputs to their hashes (mapmerge.io.provenance).
    The built-in benchmark: benchmark.parquet's pretrained row and its hash there. A user model: the
    inputs of reference.parquet (else of the final group's evaluation files): the pretrained checkpoint,
    the task vectors (<task>.safetensors, vector.safetensors), the fine-tuned checkpoints (the `source`
    in each vector's header) and tables; the one name that is none of the others is the pretrained
    checkpoint's. Where its name is also another input's (a transformers run: every directory's weights
    are model.safetensors), the metadata keeps one hash for the name and does not tell whose: digest None.
    """
    sources = _checkpoint_sources(results)
    key = _config_key(sources)
    paths = Layout(results)
    bench = paths.benchmark
    if bench.exists():
        frame = read_table(bench, columns=["model", "file"])
        rows = frame[frame["model"] == "pretrained"]
        name = str(rows["file"].iloc[0]) if len(rows) else "pretrained.safetensors"
        digest = json.loads(table_metadata(bench).get("mapmerge.inputs", "{}")).get(name)
        return PretrainedRecord(
            "model.pretrained", True, name, digest, bench, "" if digest else f"{bench} records no hash of it"
        )
    records = [paths.reference, paths.reference_examples, *sorted(paths.evals(group).glob("*.parquet"))]
    others = {
        paths.task_vector(t).name for t in [*layout.tasks, *(p.stem for p in paths.task_vectors.glob("*.safetensors"))]
    }
    others |= {paths.group_vector(group).name, *sources}
    for path in records:
        try:
            inputs = json.loads(table_metadata(path).get("mapmerge.inputs", "{}"))
        except (ArtifactError, ValueError):
            continue
        left = [n for n in inputs if n not in others and not n.endswith(".parquet")]
        if len(left) == 1:
            return PretrainedRecord(key, False, left[0], inputs[left[0]], path)
        return PretrainedRecord(
            key,
            why=(
                f"{path.name} keeps its inputs' hashes by file name, and the pretrained checkpoint's is also a fine-tuned one's"
                if not left
                else f"{path.name} does not single it out among its inputs {', '.join(left)}"
            ),
        )
    return PretrainedRecord(key, why="no artifact records its hash")


def pretrained_file(given: Path) -> Path:
    """--pretrained as the checkpoint file the run read: the file, or a transformers directory's weights
    (model.safetensors, or model.safetensors.index.json of a sharded save), as model.transformers resolves them;
    where no file or folder of that spelling exists, a Hugging Face model name's (org/name[@revision]) cached
    snapshot's (mapmerge.adapters.hub)."""
    try:
        given = hub.model_path(str(given), f"--pretrained {given}", Path(given))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if given.is_dir():
        try:
            return weights_file(given, f"--pretrained {given}")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    if not given.is_file():
        raise UsageError(f"--pretrained {given}: not found")
    return given


def find_pretrained(results: Path, given: Path | None, record: PretrainedRecord) -> tuple[Path, str]:
    """The run's pretrained checkpoint file and where it was found (not yet checked: see check_pretrained)."""
    if given is not None:
        return pretrained_file(given), "--pretrained"
    if record.builtin:
        path = Layout(results).checkpoints / str(record.name)
        if not path.exists():
            raise ArtifactError(
                f"{path}: not found (the built-in benchmark's pretrained checkpoint, see {record.source})"
            )
        return path, "the built-in benchmark's checkpoints/"
    raise UsageError(
        f"{results}: the pretrained checkpoint of a user model is not kept in the run folder "
        f"(its artifacts record only file names and hashes); give it with --pretrained PATH (the experiment's {record.key})"
    )


def check_pretrained(results: Path, path: Path, given: bool, record: PretrainedRecord) -> str | None:
    """Refuse a pretrained checkpoint whose hash is not the one the run recorded, hashed as the run hashed it
    (mapmerge.io.file_hash of the file, of a shard index for a sharded checkpoint).

    Returns how the hash vouched for it, or None where it cannot vouch for every tensor and check_reproduces
    must: the records do not single out its hash (record.why), or the file is a shard index (whose hash does
    not cover its shards). UsageError for a --pretrained file, ArtifactError for the run folder's own (a
    benchmark checkpoint replaced since the run).
    """
    from mapmerge.tensors.checkpoints import SHARD_INDEX_SUFFIX  # deferred: torch

    if record.digest is None:
        return None
    digest = file_hash(path)
    if digest != record.digest:
        what = f"--pretrained {path}" if given else str(path)
        hint = f"; {record.hint(results)}" if given else "; it was replaced after the run"
        error = UsageError if given else ArtifactError
        raise error(
            f"{what}: sha256[:16] {digest}, but the run's pretrained checkpoint {record.name} has {record.digest} "
            f"(recorded in {record.source}){hint}"
        )
    if path.name.endswith(SHARD_INDEX_SUFFIX):
        record.why = "the hash of a shard index does not cover its shards"
        return None
    return f"its hash {digest} is the one recorded in {record.source}"


def member_vectors(results: Path, members: Sequence[str], tasks: Sequence[str]) -> dict[str, Path]:
    """Each member's task vector: task_vectors/<task>.safetensors, or a lower group's groups/<g>/vector.safetensors."""
    vectors = {}
    for m in members:
        path = Layout(results).vector(m, list(tasks))
        if not path.exists():
            raise ArtifactError(f"{path}: not found (the task vector of member '{m}')")
        vectors[m] = path
    return vectors


def check_reproduces(
    pretrained: Path,
    vectors: Mapping[str, Path],
    coefficients: Sequence[float],
    operator: Mapping[str, Any],
    seed: int | None,
    merged: Path,
    given: bool,
    hint: str,
    ignore: Collection[str] = (),
) -> None:
    """Merge the run's own choice from `pretrained` and compare every tensor with the run's merged.safetensors.

    For a pretrained checkpoint the run's records cannot vouch for by its hash (see check_pretrained): any
    tensor that differs (the merged ones and the others, which merged.safetensors holds as the pretrained
    ones) makes the merge differ. Reads the checkpoint, the task vectors and merged.safetensors once, one
    tensor at a time. UsageError (ArtifactError for the run folder's own, not `given`) naming the first tensor
    that differs; `hint` says what to give instead. `ignore`: names compared in neither (a transformers model's
    non-persistent buffers, which older transformers saved and newer does not).
    """
    import torch

    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch
    from mapmerge.tensors.lora import member_delta, vector_names  # deferred: with merge_tensor
    from mapmerge.tensors.operators import validate
    from mapmerge.tensors.taskvectors import merge_tensor  # deferred: torch

    spec, members = validate(operator), list(vectors)
    what, error = (f"--pretrained {pretrained}", UsageError) if given else (str(pretrained), ArtifactError)
    with ExitStack() as stack:
        pre = stack.enter_context(open_checkpoint(pretrained))
        stored = stack.enter_context(open_checkpoint(merged))
        readers = [stack.enter_context(open_checkpoint(p)) for p in vectors.values()]
        names = {name for reader in readers for name in vector_names(reader, reader.path)}  # dense or LoRA
        differ = sorted((set(pre.keys()) ^ set(stored.keys())) - set(ignore))
        if differ:
            where = "lacks" if differ[0] in stored else "has"
            raise error(f"{what}: {where} tensor '{differ[0]}', unlike the run's {merged}; {hint}")
        for name in (n for n in pre.keys() if n not in ignore):
            expected = pre.get(name)
            if name in names:
                expected = merge_tensor(
                    spec, members, name, expected, (member_delta(r, name) for r in readers), coefficients, seed
                )
            actual = stored.get(name)
            if expected.shape != actual.shape or not torch.allclose(
                expected.float(), actual.float(), rtol=1e-5, atol=1e-6
            ):
                raise error(
                    f"{what}: tensor '{name}' with the run's task vectors at the run's own coefficients does not "
                    f"give the run's {merged}; {hint}"
                )


def check_out(
    results: Path,
    out: Path,
    tasks: Sequence[str] | None = None,
    option: str = "--out",
    tool: str = "select",
    file: str = "a file path (.safetensors, else a torch state dict)",
) -> None:
    """Refuse an --out (`option` of `tool`) that would add or replace a file of the run folder outside
    RESULTS/selected/.

    tasks: the folder of per-task folders a transformers run's select writes (replaced whole), which may exist only
    as such a folder (nothing in it but folders named after the tasks); else `file`, not a folder.
    """
    run, target, selections = results.resolve(), out.resolve(), Layout(results).selections
    if (target.is_relative_to(run) and not target.is_relative_to(selections.resolve())) or run.is_relative_to(target):
        raise UsageError(
            f"{option} {out}: {'inside' if target.is_relative_to(run) else 'holds'} the run folder {results}, where "
            f"{tool} writes only under {selections}/; give a path there or outside the run folder"
        )
    if tasks is None:
        if target.is_dir():
            raise UsageError(f"{option} {out}: is a folder; give {file}")
        return
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder for the per-task model folders")
    other = sorted(p.name for p in target.iterdir() if p.name not in tasks or not p.is_dir()) if target.is_dir() else []
    if other:
        raise UsageError(
            f"--out {out}: a folder holding {other[0]}, which select would replace with the folder; give a new folder, "
            f"or one holding only task folders ({', '.join(tasks)})"
        )


def task_folder(folder: Path, task: str) -> Path:
    """The weights of the run's merged model folder of a task (groups/<g>/merged/<task>/, written by merge_group)."""
    if not (folder / "config.json").is_file() or not any((folder / name).is_file() for name in HF_WEIGHTS):
        raise ArtifactError(
            f"{folder}: not found or incomplete (the run's merged model of task {task}: its config, tokenizer and "
            "head, from which select makes its folders); run the workflow again, or give --out FILE.safetensors"
        )
    return weights_file(folder, str(folder))


def out_is_folder(out: Path | None) -> bool:
    """Whether a transformers run's --out names the folder of per-task folders (no .safetensors or torch suffix)."""
    return out is None or out.suffix not in (".safetensors", *TORCH_SUFFIXES)


def save_checkpoint(state: Mapping[str, Any], out: Path, metadata: Mapping[str, str]) -> Path:
    """A state dict as safetensors (out ends in .safetensors, metadata in its header) or torch.save, atomically."""
    import torch

    from mapmerge.tensors.checkpoints import save_safetensors  # deferred: torch

    if out.suffix == ".safetensors":
        return save_safetensors(state, out, metadata=metadata)
    with atomic_path(out) as tmp:
        torch.save(dict(state), tmp)
    return out


@dataclass
class Selection:
    """What `select` chose and wrote."""

    group: str
    method: str  # of the run: map, nested, bayesian
    members: list[str]
    coefficients: dict[str, float]
    member_weights: dict[str, float]
    task_weights: dict[str, float]
    index: int
    front: pd.DataFrame
    metric: str
    out: Path
    text: str


def checked_method(method: str, rho: float) -> str:
    """The selection method, checked with tchebycheff's rho (UsageError naming --method or --rho)."""
    if method not in selection.METHODS:
        raise UsageError(f"--method: must be one of {', '.join(selection.METHODS)}, got {method!r}")
    if not (math.isfinite(rho) and rho >= 0):
        raise UsageError(f"--rho: must be a finite number >= 0, got {rho}")
    return method


def run_selection(results: Path) -> str | None:
    """The run's own selection.method, as its choice.parquet records it (None where it does not)."""
    for path in sorted(Path(results).glob("groups/*/choice.parquet")):
        recorded = table_metadata(path).get("mapmerge.selection")
        if recorded:
            return str(json.loads(recorded)["method"])
    return None


def preference_candidates(
    results: Path,
    group: str,
    info: Mapping[str, Any],
    front: pd.DataFrame,
    task_weights: Mapping[str, float],
    metric: str,
    method: str,
    rho: float,
) -> tuple[int, dict[str, float], list[pd.DataFrame], bool]:
    """(the predicted pick's row in `front`, the member weights, the candidates, refined) for a preference.

    The candidates (one row each, marked in `source`, with the `rule` that picked it: `method`, or balanced's
    fallback, selection.preference_scores): the predicted front's pick and, where the run evaluated samples, the
    measured front's pick. refined: whether the run's own rule merges the measured one (after refinement rounds, as
    its merge_group did; the last candidate), else the predicted one (the first).
    """
    paths = Layout(results)
    tasks = info["tasks"]
    reference = selection.reference_values(read_table(paths.reference), metric, tasks) if method == "balanced" else None

    def pick(points: pd.DataFrame, source: str) -> tuple[int, dict[str, float], pd.DataFrame]:
        index, weights, rule = selection.pick_point(points, info, task_weights, metric, method, rho, reference)
        return index, weights, points.iloc[index].to_frame().T.assign(source=source, rule=rule)

    index, member_weights, predicted = pick(front, "predicted")
    candidates = [predicted]
    refined = (
        "source" in table_columns(paths.choice(group))
        and read_table(paths.choice(group))["source"].iloc[0] == "measured"
    )
    if paths.samples(group).exists() and paths.metrics(group).exists():
        evaluated = metrics.sample_metrics(read_table(paths.samples(group)), read_table(paths.metrics(group)))
        candidates.append(pick(selection.measured_front(evaluated, metric, tasks), "measured")[2])
    return index, member_weights, candidates, refined


def select(
    results: Path,
    preference: Mapping[str, float],
    method: str | None = None,
    rho: float = 0.05,
    out: Path | None = None,
    pretrained: Path | None = None,
    metric: str | None = None,
    seed: int | None = None,
    max_shard_size: int | str = MAX_SHARD_SIZE,
) -> Selection:
    """Pick the final group's merge for `preference` (no evaluation) and write its merged checkpoint.

    Two candidates: the predicted front's pick (the surrogates' predictions) and, where the run evaluated samples,
    the measured front's pick (real values); the run's own rule decides, as its merge_group did: after refinement
    rounds the measured pick, else the predicted one. `method` (default: the run's selection.method, from its
    choice.parquet) picks within each.

    A transformers run (its merge_group wrote groups/<g>/merged/<task>/) gets the same folders: `out` (default
    RESULTS/selected/<preference>/) holds <task>/ per task, each its config, tokenizer and weights (sharded past
    max_shard_size), the merged tensors at the new coefficients and the task's own head, made from the run's folders
    (save_merged_models); an `out` ending in .safetensors or a torch suffix gets the merged state dict instead. Either
    way the model's non-persistent buffers are left out.
    """
    from mapmerge.tensors.checkpoints import hf_config  # deferred: torch
    from mapmerge.tensors.taskvectors import merge_files  # deferred: torch

    results = Path(results)
    own = run_selection(results) or "weighted_sum"
    method = checked_method(method or own, rho)
    layout = scan(results)
    group, info = final_group(layout)
    tasks = info["tasks"]
    folders = Layout(results).merged_folders(group)
    transformers_run = folders.is_dir() or _config_key(_checkpoint_sources(results)) == "model.transformers.pretrained"
    out = None if out is None else Path(out)
    as_folders = transformers_run and out_is_folder(out)
    if out is not None:
        check_out(results, out, tasks if as_folders else None)
    try:
        task_weights = selection.normalize_preference(preference, tasks)
    except selection.PreferenceError as exc:
        raise UsageError(f"--prefer: {exc}") from None
    paths = Layout(results)
    merged = paths.merged(group)
    front = read_table(front_file(results, group))
    metric, metric_source = objective_metric(results, front, tasks, metric)
    operator, chosen, recorded_seed = merge_record(merged)
    if operator.get("operator") in SEEDED:
        if recorded_seed is not None and seed is not None and int(seed) != int(recorded_seed):
            raise UsageError(f"--seed {seed}: the run merged with seed {recorded_seed} ({merged})")
        seed = recorded_seed if recorded_seed is not None else seed
        if seed is None:
            raise UsageError(
                f"the run's merge operator {operator['operator']} draws random masks and {merged} "
                "does not record their seed; give the run's seed (the config's `seed`) with --seed N"
            )
        seed = int(seed)
    else:
        seed = None
    members = info["members"]
    record = pretrained_record(results, layout, group)
    pre_path, pre_source = find_pretrained(results, pretrained, record)
    vectors = member_vectors(results, members, layout.tasks or tasks)
    templates = {t: task_folder(folders / t, t) for t in tasks} if as_folders else {}
    if out is None:
        from mapmerge.tensors.checkpoints import SHARD_INDEX_SUFFIX  # deferred: torch

        torch_file = pre_path.suffix != ".safetensors" and not pre_path.name.endswith(SHARD_INDEX_SUFFIX)
        suffix = "" if as_folders else ".pt" if torch_file else ".safetensors"
        out = paths.selections / f"{preference_name(preference, method, rho, own)}{suffix}"
        if as_folders:  # replaced whole: an earlier select's folders only
            check_out(results, out, tasks)
    if out.resolve() == pre_path.resolve():
        raise UsageError(f"--out {out}: is the pretrained checkpoint itself; write the merge elsewhere")
    if as_folders and pre_path.parent.resolve().is_relative_to(out.resolve()):
        raise UsageError(f"--out {out}: holds the pretrained checkpoint {pre_path}; write the merge elsewhere")
    buffers = non_persistent_buffers(pre_path) if transformers_run and hf_config(pre_path) else set()
    checked = check_pretrained(results, pre_path, pretrained is not None, record)
    if checked is None:
        check_reproduces(
            pre_path,
            vectors,
            [float(chosen[m]) for m in members],
            operator,
            seed,
            merged,
            pretrained is not None,
            record.hint(results),
            buffers,
        )
        checked = f"merged at the run's own coefficients it gives {merged}, every tensor ({record.why})"

    index, member_weights, candidates, refined = preference_candidates(
        results, group, info, front, task_weights, metric, method, rho
    )
    pick = candidates[-1] if refined else candidates[0]
    c = {m: float(pick[f"c_{m}"].iloc[0]) for m in members}
    state = merge_files(pre_path, vectors, list(c.values()), operator, seed)
    metadata = {
        "coefficients": json.dumps(c),
        "operator": json.dumps(operator),
        "preference": json.dumps(dict(preference)),
        "selection": json.dumps({"method": method, "rho": rho}),
        "candidate": str(pick["source"].iloc[0]),
        "group": group,
        "source": "mapmerge select",
        **({"seed": str(seed)} if seed is not None else {}),
    }
    if as_folders:
        names = merged_tensor_names(vectors.values())
        save_merged_models(state, names, templates, pre_path, out, metadata, max_shard_size)
    else:
        save_checkpoint({k: v for k, v in state.items() if k not in buffers}, out, metadata)
    del state

    lines = [
        f"{results}: {METHOD_NAMES[layout.method or 'map']}; group {group} (members {', '.join(members)}), "
        f"its stored front of {len(front)} points; objective {metric} ({metric_source}); selection {method}"
        + (f" (rho {rho:g})" if method == "tchebycheff" else ""),
        "preference (normalised): " + ", ".join(f"{t} {w:.3g}" for t, w in task_weights.items()),
    ]
    if layout.method == "nested":
        lines += [
            f"nested MAP: only the top group {group} is chosen again; its members ({', '.join(members)}) keep the merges",
            "  chosen for the run's own preference, since each level's merges depend on the choices below it. To choose every",
            "  level for this preference, run the workflow again with it: that keeps level 1's sample evaluations and",
            "  recomputes level 1's fronts and choices and everything of the later levels.",
        ]
        lines.append(
            "member weights (sums of their tasks' weights): "
            + ", ".join(f"{m} {w:.3g}" for m, w in member_weights.items())
        )
    chosen_source = str(pick["source"].iloc[0])
    why = (
        "the run refined its front with real evaluations, so, as its own merge, the best measured point"
        if refined
        else "the run has no refinement rounds, so, as its own merge, the predicted front's pick"
    )
    lines += ["", f"candidates ({method}); chosen: the {chosen_source} one: {why}", ""]
    shown = [m for m in METRICS if all(f"{m}_{t}" in front.columns for t in tasks)]
    header = ["candidate", "sample", *(f"c_{m}" for m in members)]
    header += [f"{m}_{t}" for m in shown for t in tasks]
    rows = []
    for frame in candidates:
        row = frame.iloc[0]
        source = str(row["source"])
        label = "predicted (not evaluated)" if source == "predicted" else "measured (real evaluation)"
        values = []
        for m in shown:
            for t in tasks:
                value = f"{float(row[f'{m}_{t}']):.4f}"
                if f"{m}_{t}_lo" in row.index and source == "predicted":
                    value += f" [{float(row[f'{m}_{t}_lo']):.3f}, {float(row[f'{m}_{t}_hi']):.3f}]"
                values.append(value)
        rows.append((label, str(row.get("sample", "-")), *(f"{float(row[f'c_{m}']):.4f}" for m in members), *values))
    lines += _table(rows, header)
    for frame in candidates:
        rule, source = str(frame["rule"].iloc[0]), str(frame["source"].iloc[0])
        if rule != method:
            lines.append(f"the {source} candidate: {fallback_note(rule, method, source)}")
    lines.append("")
    run_c = ", ".join(f"{float(chosen[m]):.4f}" for m in members)
    lines += [
        f"(the run's own choice: {run_c})",
        "preference weights: " + ", ".join(f"{t} {task_weights[t]:.3g}" for t in tasks),
        "",
    ]
    if as_folders:
        lines.append(
            f"merged models: {out}/<task>/ for {', '.join(tasks)}: each its config, tokenizer and weights, the merged "
            "tensors and the task's own head (from_pretrained loads it)"
        )
    else:
        lines.append(f"merged checkpoint: {out}")
    lines.append(
        f"  theta_pre + sum_i c_i tau'_i, merge operator {operator.get('operator')}"
        + (f" (seed {seed})" if seed is not None else "")
    )
    lines.append(f"  pretrained: {pre_path} ({pre_source}); the parameters that are not merged are the pretrained ones")
    lines.append(f"  checked: {checked}")
    return Selection(
        group,
        layout.method or "map",
        members,
        c,
        member_weights,
        task_weights,
        index,
        front,
        metric,
        out,
        "\n".join(lines),
    )


# ---------------------------------------------------------------------------------------------------
# plot


def replot(results: Path, out_dir: Path | None = None, metric: str | None = None) -> list[Path]:
    """Render the final group's plots again from the run's artifacts, as the aggregate stage does."""
    from mapmerge.outputs import plots  # deferred: matplotlib

    results = Path(results)
    layout = scan(results)
    group, info = final_group(layout)
    paths = Layout(results)
    front = read_table(front_file(results, group)).assign(group=group)
    metric, _ = objective_metric(results, front, info["tasks"], metric)
    chosen = None
    if paths.choice(group).exists():
        chosen = read_table(paths.choice(group)).assign(group=group)
        if paths.selected_evals(group).exists():
            measured = metrics_from_examples(read_table(paths.selected_evals(group))).set_index(["metric", "task"])[
                "value"
            ]
            for name in sorted(set(measured.index.get_level_values("metric"))):
                for task in suffixes(chosen.columns, metric):
                    chosen[f"measured_{name}_{task}"] = measured[(name, task)]
    samples = read_table(paths.samples(group))
    samples = samples.merge(wide_metrics(read_table(paths.metrics(group)), "sample").reset_index(), on="sample")
    reference = read_table(paths.reference)
    return plots.plot_all(
        samples,
        front,
        reference,
        suffixes(front.columns, metric),
        metric,
        out_dir if out_dir is not None else paths.plots,
        selected=chosen,
        maximize=maximized(metric),
        members=suffixes(front.columns, "c"),
    )
