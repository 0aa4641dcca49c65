"""A run's results folder, read back: its method, tasks and groups, the final group, its front and metric.

What every `mapmerge` command that reads a run starts from (status, select, export, plot). Nothing here
evaluates a model or needs Snakemake. Everything is read from the artifacts (see README, "Stages and
artifacts"):

- the method: levels/level<k>.parquet and the group names (L<k>g<j>: nested MAP), Bayesian rounds
  (groups/<g>/rounds/r01.parquet and later: Bayesian MAP), else plain MAP;
- the final group: the last of the top level's plan;
- the objective metric: the `measured_<metric>` column of groups.parquet (aggregate), else --metric.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mapmerge.core import groups
from mapmerge.core.metrics import METRICS, suffixes
from mapmerge.io import ArtifactError, file_hash, read_table, recompute_hint, table_metadata
from mapmerge.layout import Layout
from mapmerge.run import runlock
from mapmerge.run.evaluation_cache import table_digest
from mapmerge.run.records import foreign_files, is_run, run_holding
from mapmerge.run.schema import close_folder
from mapmerge.tools.check import artifact_damage, read_checked

NESTED_GROUP = re.compile(r"^L(\d+)g(\d+)$")  # nested MAP's group names (mapmerge.core.groups.structure)
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


DESIGN_BATCH = re.compile(r"b\d+\.parquet")  # the design's batches, the validation grid's (a round's: Layout's)


def batch_files(folder: Path) -> list[Path]:
    """The evaluation jobs' tables in a folder (groups/<g>/evals/, validation/grid/): not other files put there."""
    return sorted(p for p in folder.glob("*.parquet") if DESIGN_BATCH.fullmatch(p.name) or Layout.is_round_batch(p))


def check_run_folder(results: Path) -> None:
    """Refuse what is not a run's folder: a path that is not a folder, a folder that holds run folders instead of a
    run's files (results/ for results/demo), lies inside a run's folder (results/demo/groups) or holds files of
    another kind (a mistyped path), each of which every command would read as a run not started yet (an empty
    folder is one)."""
    holder = run_holding(results)
    if holder is not None:
        raise UsageError(f"{results}: lies inside the run folder {holder}; give {holder}")
    if not results.is_dir():
        raise UsageError(f"{results}: not a folder{_close_folder(results)}")
    if is_run(results):
        return
    runs = sorted(p.name for p in results.iterdir() if p.is_dir() and is_run(p))
    if runs:
        raise UsageError(
            f"{results}: holds the run folders {', '.join(runs)}, not a run's files; give one of them, "
            f"e.g. {results / runs[0]}"
        )
    if shown := foreign_files(results):
        raise UsageError(f"{results}: holds files that are not a mapmerge run's ({shown}); give a run's folder")


def _level_plans(results: Path) -> dict[int, Path]:
    found = {}
    for path in Layout(results).levels.glob("level*.parquet"):
        number = path.stem.removeprefix("level")
        if number.isdigit():
            found[int(number)] = path
    return dict(sorted(found.items()))


def group_dirs(results: Path) -> list[str]:
    """The names of the folders under groups/."""
    root = Layout(results).groups
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def group_rounds(results: Path, group: str) -> list[Path]:
    """A group's round tables on disk (rounds/r00.parquet, r01.parquet, ...), in order."""
    folder = Layout(results).rounds(group)
    return sorted(p for p in folder.glob("r*.parquet") if Layout.round_number(p) is not None) if folder.is_dir() else []


PLOT_2D = "front_2d"  # the plot the workflow draws for two tasks only (workflow/rules/common.smk, plot_outputs)


@dataclass
class LeftBehind:
    """A run folder's files left from an earlier setting, which no job of the run reads (Snakemake leaves a file in
    place once it is no longer an output): evaluation batches of another evaluation.samples_per_job or of more rounds,
    those rounds' tables, the validation's grid batches and baselines of another validation.batch or list, the
    two-task plot of a run whose tasks are now more, and the task vectors of tasks it no longer merges."""

    evals: set[Path]  # groups/<g>/evals/*.parquet that the run's ledger, written after them, does not list
    rounds: set[Path]  # groups/<g>/rounds/r<NN>.parquet (after r00) whose every batch is among `evals`
    validation: set[Path]  # validation/{grid,baselines}/*.parquet that validation.parquet, written after, did not read
    plots: set[Path] = field(default_factory=set)  # plots/front_2d.png of a run now of other than two tasks
    vectors: set[Path] = field(default_factory=set)  # task_vectors/<t>.safetensors of a task the run no longer merges

    @property
    def evaluations(self) -> set[Path]:
        """The evaluation tables among them (whose kept tables go with them)."""
        return self.evals | self.validation

    def logs(self, L: Layout) -> list[Path]:
        """The logs, on disk, of the jobs that wrote them (the rules' `log:` in workflow/rules)."""
        logs = []
        for path in self.evals:
            group, stem = path.parent.parent.name, path.stem
            is_round = Layout.is_round_batch(path)  # r03b0000: round 03, batch 0000
            logs.append(
                L.log("evaluate_round", group, stem[1:3], stem[4:])
                if is_round
                else L.log("evaluate_sample", group, stem)
            )
        for path in self.rounds:
            group, number = path.parent.parent.name, path.stem[1:]
            logs += [L.log("refine_round", group, number), L.log("propose_round", group, number)]
        for path in self.validation:
            logs.append(L.log("validate_grid" if path.parent.name == "grid" else "validate_baseline", path.stem))
        logs += [L.log("extract_task_vector", path.stem) for path in self.vectors]
        return sorted(log for log in logs if log.is_file())


def _close_folder(path: Path) -> str:
    """' (did you mean `results/demo`?)' for a folder beside `path` of a close name (a mistyped run folder); ''."""
    close = close_folder(path)
    return f" (did you mean `{close}`?)" if close is not None else ""


def left_behind(
    results: Path, groups_: Sequence[str], problems: dict[Path, str], tasks: Sequence[str] = ()
) -> LeftBehind:
    """The files of `groups_` and of the validation left from an earlier setting (LeftBehind): none of the groups'
    while the ledger (evaluations.parquet) is missing or does not read (noted in `problems`), none of the
    validation's while validation.parquet is. A file newer than the table that would list it is a rerun's. The
    two-task plot (PLOT_2D) where the run's `tasks`, if known, are other than two; the task vectors of other tasks
    than those, older than task_vectors.parquet."""
    L = Layout(results)
    ledger = try_read(L.ledger, problems, columns=["group", "file"]) if L.ledger.is_file() else None
    evals: set[Path] = set()
    rounds: set[Path] = set()
    if ledger is not None:
        listed = {(str(g), str(f)) for g, f in zip(ledger["group"], ledger["file"])}
        written = L.ledger.stat().st_mtime
        for g in groups_:
            files = batch_files(L.evals(g))
            evals |= {p for p in files if (g, p.name) not in listed and p.stat().st_mtime <= written}
            for table in group_rounds(results, g)[1:]:
                batches = {p for p in files if p.name.startswith(f"{table.stem}b")}
                if batches and batches <= evals and table.stat().st_mtime <= written:
                    rounds.add(table)
    return LeftBehind(evals, rounds, _validation_left(L, problems), left_plots(results, tasks), _vectors_left(L, tasks))


def _vectors_left(L: Layout, tasks: Sequence[str]) -> set[Path]:
    """The task vectors of tasks other than the run's `tasks` (if known) that task_vectors.parquet, written after them,
    does not list: a task the run merged before (a model's size each, for a language model)."""
    if not tasks or not L.task_vector_table.is_file():
        return set()
    written = L.task_vector_table.stat().st_mtime
    return {p for p in L.task_vectors.glob("*.safetensors") if p.stem not in tasks and p.stat().st_mtime <= written}


def left_plots(results: Path, tasks: Sequence[str]) -> set[Path]:
    """The two-task plot (PLOT_2D) where the run's `tasks`, if known, are other than two."""
    plot_2d = Layout(results).plot(PLOT_2D)
    return {plot_2d} if tasks and len(tasks) != 2 and plot_2d.is_file() else set()


def _validation_left(L: Layout, problems: dict[Path, str]) -> set[Path]:
    """The grid batches and baselines under validation/ that validation.parquet, written after them, did not read
    (its provenance names every input file)."""
    if not L.validation.is_file():
        return set()
    try:
        read = set(json.loads(table_metadata(L.validation).get("mapmerge.inputs", "{}")))
    except (ArtifactError, ValueError) as exc:
        _note_problem(problems, L.validation, exc)
        return set()
    written = L.validation.stat().st_mtime
    tables = [*batch_files(L.grid_batch("b0000").parent), *L.baseline("x").parent.glob("*.parquet")]
    return {p for p in tables if p.name not in read and p.stat().st_mtime <= written}


def _bayesian_round(results: Path, group: str, problems: dict[Path, str]) -> bool:
    """Whether the group's round r01 is a Bayesian one (not a refinement round's pick and front points)."""
    later = [p for p in group_rounds(results, group) if Layout.round_number(p)]
    first = try_read(later[0], problems, columns=["kind"]) if later else None
    return first is not None and bool((first["kind"] == "bayesian").any())


def try_read(path: Path, problems: dict[Path, str], columns: list[str] | None = None) -> pd.DataFrame | None:
    """The table, or None with why it does not read noted in `problems`."""
    try:
        return read_table(path, columns=columns)
    except (ArtifactError, KeyError, ValueError) as exc:  # KeyError/ValueError: a column missing
        _note_problem(problems, path, exc)
        return None


def _note_problem(problems: dict[Path, str], path: Path, exc: Exception) -> None:
    """Note why `path` does not read, less its name and the way out (status lists those at the end)."""
    problems[path] = str(exc).split("; delete it")[0].removeprefix(f"{path}: ")


def _nested_order(name: str) -> tuple[int, int]:
    match = NESTED_GROUP.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def scan(results: Path) -> Scan:
    """The method, tasks and groups of a run folder (which may be partly finished)."""
    results = Path(results)
    paths = Layout(results)
    if not results.is_dir():
        raise UsageError(f"{results}: not a folder{_close_folder(results)}")
    problems: dict[Path, str] = {}
    plans = _level_plans(results)
    frames = {k: try_read(p, problems) for k, p in plans.items()}
    planned = [g for f in frames.values() if f is not None for g in f["group"].dropna()]
    dirs = group_dirs(results)
    tasks: list[str] = []
    if frames.get(1) is not None:
        tasks = [t for ts in frames[1]["tasks"] for t in ts]
    if not tasks and paths.reference.exists():
        ref = try_read(paths.reference, problems, columns=["model"])
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
    front = read_checked(layout.paths.front(group))  # a run from before levels/ existed
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


def recorded_objectives(results: Path) -> list[str]:
    """The metrics groups.parquet measured the chosen merges in (its `measured_<metric>` columns: the run's
    optimizer.objective); none before the aggregate stage wrote it."""
    tree = Layout(results).group_tree
    return suffixes(table_columns(tree), "measured") if tree.exists() else []


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
    recorded = [m for m in recorded_objectives(results) if m in available]
    if len(recorded) == 1:
        return recorded[0], "the run's optimizer.objective, from groups.parquet"
    if "accuracy" in available:
        return "accuracy", "the default optimizer.objective (groups.parquet not written yet; --metric to choose)"
    if len(available) == 1:
        return available[0], "the only metric of the front"
    raise UsageError(f"{tree}: not found, so the run's objective metric is not known; give it with --metric")


def run_objective(results: Path, front: pd.DataFrame, tasks: Sequence[str]) -> str | None:
    """The run's objective metric, that made its fronts (objective_metric without --metric); None where it is not
    known."""
    try:
        return objective_metric(results, front, tasks)[0]
    except UsageError:
        return None


def listed_names(folder: Path, paths: Iterable[Path], shown: int = 6) -> str:
    """The first `shown` of these files, under `folder`, and how many more."""
    names = sorted(str(p.relative_to(folder)) for p in paths)
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def table_columns(path: Path) -> list[str]:
    """A Parquet artifact's column names, from its footer (ArtifactError naming it, with io's way out, where it does
    not read)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:
        raise ArtifactError(f"{path}: unreadable Parquet ({exc}); {recompute_hint(path)}") from exc


# ---------------------------------------------------------------------------------------------------


def text_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> list[str]:
    """Rows as lines of left-aligned columns under `header` (what status and select print)."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


METADATA_KEY = "mapmerge"  # tensors.checkpoints.METADATA_KEY: the header's entry that holds mapmerge's metadata
# in a merge `mapmerge select` wrote: evaluation_cache.table_digest of the front it picked from
FRONT_KEY = "front_rows"
FILE_FRONT_KEY = "front"  # what select recorded before FRONT_KEY: the hash of the front's file, provenance and all


def stale_selections(results: Path) -> list[Path]:
    """The safetensors merges `mapmerge select` wrote under RESULTS/selected/ (a transformers run's: each task
    folder's first weights file) that picked from another front than the group's now: the run's settings or files
    changed since. A torch file (.pt) is not read (torch), nor a merge from before select recorded its front."""
    paths = Layout(results)
    digests: dict[tuple[str, str], str | None] = {}  # each group's front's digest of each kind, taken once
    stale = []
    for path in sorted(paths.selections.rglob("*.safetensors")):
        if path.name.startswith("model-") and not path.name.startswith("model-00001-"):
            continue  # a shard after the first: its folder is counted once
        metadata = safetensors_metadata_light(path)
        kind = FRONT_KEY if FRONT_KEY in metadata else FILE_FRONT_KEY
        group, recorded = metadata.get("group"), metadata.get(kind)
        if group is None or recorded is None:
            continue
        if (group, kind) not in digests:
            front = paths.front(group)
            if not front.exists():
                digests[group, kind] = None
            else:
                digests[group, kind] = table_digest(front) if kind == FRONT_KEY else file_hash(front)
        if digests[group, kind] != recorded:
            stale.append(path)
    return stale


GROUP_TABLES = ("samples", "metrics", "surrogate", "front", "choice")  # a group's tables made from its others
# the run's tables made from every group's files (Layout), and the validation's (validation.enabled)
RUN_TABLES = ("ledger", "pareto", "measured", "selected", "group_tree", "validation")
INPUTS_KEY = "mapmerge.inputs"  # mapmerge.io.provenance: the hash of each input, by file name


def changed_inputs(
    results: Path, groups_: Sequence[str], unreadable: Iterable[Path] = (), run_tables: bool = False
) -> dict[Path, list[str]]:
    """Each group table (GROUP_TABLES) whose recorded inputs (their hashes, by file name, in its metadata) are no
    longer on disk as they were, or are such tables themselves, and a group's samples or metrics table written before
    a round or batch it does not list: a later run replaced, removed or added them and stopped before it made the
    table again (a Ctrl-C part-way through a rerun with another setting). With `run_tables`, the run's own tables
    (RUN_TABLES) too, for their own reasons only (what follows a stale group table is stale with it): an input
    matched by name among every group's files and the validation's (nested MAP's groups share names), and a batch
    added after the ledger, or a grid batch after validation.parquet.
    The names of those inputs, by table; only Parquet inputs are compared, found in the group's folder, its rounds/
    and evals/, the levels/ and the run folder; not those `unreadable`, nor one whose footer does not read (status
    names them as such)."""
    paths = Layout(results)
    skipped = set(unreadable)
    hashes: dict[Path, str] = {}  # each file hashed once

    def differs(where: Path, digest: str) -> bool | None:
        """Whether the file's hash is not `digest`; None where it is skipped, or damaged rather than replaced."""
        if where in skipped:
            return None
        if where not in hashes:
            hashes[where] = file_hash(where)
        if hashes[where] == digest:
            return False
        return True if artifact_damage(where) is None else None

    def places(group: str) -> list[Path]:
        return [paths.group(group), paths.rounds(group), paths.evals(group)]

    changed: dict[Path, list[str]] = {}
    for group in groups_:
        folders = [*places(group), paths.levels, results]
        listed = {"samples": group_rounds(results, group), "metrics": batch_files(paths.evals(group))}  # may be added
        for name in GROUP_TABLES:
            table = getattr(paths, name)(group)
            if (recorded := recorded_inputs(table)) is None:
                continue  # missing or unreadable: status says so itself
            for file, digest in recorded.items():
                where = next((f / file for f in folders if (f / file).is_file()), None)
                replaced = True if where is None else differs(where, digest)  # no file: removed
                if replaced is None:
                    continue
                if replaced or paths.group(group) / file in changed:
                    changed.setdefault(table, []).append(file)
            if added := _added(table, recorded, listed.get(name, [])):
                changed.setdefault(table, []).extend(added)
    if not run_tables:
        return changed
    grid = paths.grid_batch("b0000").parent
    validation = [paths.validation_dir, grid, paths.baseline("x").parent]
    folders = [place for group in groups_ for place in places(group)] + [paths.levels, results, *validation]
    batches = {"ledger": [p for g in groups_ for p in batch_files(paths.evals(g))], "validation": batch_files(grid)}
    for name in RUN_TABLES:
        table = getattr(paths, name)
        if (recorded := recorded_inputs(table)) is None:
            continue
        for file, digest in recorded.items():
            found = [f / file for f in folders if (f / file).is_file()]
            judged = [differs(where, digest) for where in found]
            if not found or (None not in judged and all(judged)):
                changed.setdefault(table, []).append(file)  # removed, or no file of its name as it was
        if added := _added(table, recorded, batches.get(name, [])):
            changed.setdefault(table, []).extend(added)
    return changed


def recorded_inputs(table: Path) -> dict[str, str] | None:
    """The Parquet inputs a table's metadata records (INPUTS_KEY), by file name; None where it is missing or does not
    read."""
    try:
        recorded = json.loads(table_metadata(table).get(INPUTS_KEY, "{}"))
    except (ArtifactError, ValueError):
        return None
    return {file: digest for file, digest in recorded.items() if file.endswith(".parquet")}


def _added(table: Path, recorded: Mapping[str, str], files: Iterable[Path]) -> list[str]:
    """The names of `files` written after `table` that it does not list: a later run's rounds or batches."""
    written = table.stat().st_mtime
    return sorted(p.name for p in files if p.name not in recorded and p.stat().st_mtime > written)


def pick_warnings(results: Path, group: str) -> list[str]:
    """What select and export say before they pick from a group's front: its tables are stale (changed_inputs), or a
    driver is running on the folder (its jobs may replace the front as it is read)."""
    warnings = []
    if stale := changed_inputs(results, [group]):
        warnings.append(
            f"warning: {listed_names(results, stale, 3)} made before files they read were replaced, removed or added (a "
            "run stopped part-way through a change of setting, or a file deleted): this pick is of the setting before; run "
            "snakemake again first for the current one's"
        )
    if (driver := runlock.holder(results)) is not None:
        warnings.append(
            f"warning: a snakemake driver ({runlock.describe(driver)}) is running on {results}: where it remakes the "
            "front, this pick is of the files as they were read"
        )
    return warnings


def safetensors_metadata_light(path: Path) -> dict[str, Any]:
    """What mapmerge stored in a safetensors file's header (tensors.checkpoints.safetensors_metadata, without torch;
    {} where it stored nothing or the header does not read)."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            stored = json.loads(json.loads(fh.read(size)).get("__metadata__", {}).get(METADATA_KEY, "{}"))
    except (OSError, ValueError, struct.error, AttributeError):
        return {}
    return stored if isinstance(stored, dict) else {}
