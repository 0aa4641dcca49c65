"""`mapmerge status` and `mapmerge summary`: what a run folder holds, finished or not.

Per stage its artifacts (done, partial, missing or unreadable), the real evaluations per stage, the evaluation
cache, per group its rounds, evaluation files, samples, front and merge, and what to know about the chosen merge.
An artifact counts only when it reads (check.artifact_damage: a Parquet footer, a safetensors header).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mapmerge.core import metrics, refine
from mapmerge.core.metrics import maximized
from mapmerge.core.selection import SMALL_GAIN, median_span, reference_values, span
from mapmerge.io import ArtifactError, read_table
from mapmerge.layout import Layout
from mapmerge.outputs.notes import final_notes
from mapmerge.outputs.report import HTML_TABLES
from mapmerge.run import evaluation_cache, runlock
from mapmerge.run.registry import STAGES
from mapmerge.tools.check import artifact_damage
from mapmerge.tools.runfolder import (
    GROUP_TABLES,
    METHOD_NAMES,
    RUN_TABLES,
    LeftBehind,
    Scan,
    batch_files,
    changed_inputs,
    group_dirs,
    group_rounds,
    left_behind,
    left_plots,
    listed_names,
    recorded_objectives,
    scan,
    stale_selections,
    text_table,
    try_read,
)

STATUS_STAGES = [s.rule for s in STAGES if not s.validation]  # the stages `mapmerge status` reports, in order
VALIDATION_STAGES = [s.rule for s in STAGES if s.validation]  # and after them where the folder holds a validation
EVAL_STAGES = [s.rule for s in STAGES if s.resources == "evaluate" and not s.validation]  # the ledger's stages


def stale_lines(results: Path, stale: dict[Path, list[str]]) -> list[str]:
    """What status and summary say of tables made before files they read were replaced, removed or added
    (changed_inputs)."""
    tables = "; ".join(
        f"{p.relative_to(results)} ({listed_names(Path(), map(Path, names), 3)})" for p, names in stale.items()
    )
    return [
        f"stale: made before files they read were replaced, removed or added: {tables}. These tables, what follows them and the chosen "
        "merge are not those of the files as they are (a run stopped part-way through a change of setting, or a file "
        "deleted); run snakemake again to make them anew"
    ]


def summary(results: Path) -> str:
    """Where a finished run's front, plots and merged model are, and the chosen merge's metrics."""
    paths = Layout(results)
    report = paths.report
    if not report.exists():
        raise ArtifactError(f"{report}: not found; has the workflow finished for this run?")
    try:
        text = report.read_text()
    except UnicodeDecodeError as exc:
        raise ArtifactError(
            f"{report}: not UTF-8 text ({exc.reason} at byte {exc.start}); delete it and run snakemake again to write "
            "it anew"
        ) from None
    selected = read_table(paths.selected)
    layout = scan(results)
    stale = changed_inputs(results, layout.groups, run_tables=True)
    lines = [*stale_lines(results, stale), text] if stale else [text]
    lines += ["Where to look:", f"  Pareto front:   {paths.pareto}"]
    old = left_plots(results, layout.tasks)
    lines += [f"  plot:           {p}" for p in sorted(paths.plots.glob("*.png")) if p not in old]
    *below, final = list(selected["group"])  # nested MAP: the levels' merges, then the final one
    lines += [f"  level merge:    {paths.merged(g)}" for g in below] + [f"  merged model:   {paths.merged(final)}"]
    folders = sorted(p for p in paths.merged_folders(final).glob("*") if p.is_dir())  # a transformers run's
    lines += [f"  per task:       {folder}/" for folder in folders]
    lines += [f"  chosen merge:   {paths.selected}", f"  report:         {report}"]
    return "\n".join(lines)


def no_gain_notes(results: Path, metric: str | None = None) -> list[str]:
    """A line per task whose fine-tuned model scores no better on it than the pretrained model (reference.parquet),
    in `metric` (default: the run's objective, as groups.parquet records it, else accuracy): its task vector brings
    the task nothing to merge, and the balanced selection rule weighs it by the pretrained model's value instead
    (selection.task_gains); and a line per task it gains on by less than SMALL_GAIN of the tasks' median gain, which
    that rule weighs in part the same way."""
    if metric is None:
        recorded = recorded_objectives(results)
        metric = recorded[0] if len(recorded) == 1 else "accuracy"
    reference = read_table(Layout(results).reference)
    if metric not in set(reference["metric"]):
        return []
    tasks = [m for m in dict.fromkeys(reference["model"]) if m != "pretrained"]  # as scan reads them
    values = reference_values(reference, metric, tasks)
    spans = {task: span(pretrained, finetuned, maximized(metric)) for task, (pretrained, finetuned) in values.items()}
    small = SMALL_GAIN * median_span(spans.values())
    lines = []
    for task, (pretrained, finetuned) in values.items():
        if spans[task] <= 0:
            lines.append(
                f"task {task}: its fine-tuned model scores no better on it than the pretrained model ({metric} "
                f"{finetuned:.4g} against {pretrained:.4g}): its task vector brings the task nothing to merge; "
                "selection.method=balanced counts the task as fully kept at the pretrained model's value, and a loss "
                "on it as on the other tasks (per their median fine-tuning gain)"
            )
        elif spans[task] < small:
            lines.append(
                f"task {task}: its fine-tuned model gains little on it ({metric} {finetuned:.4g} against the pretrained "
                f"model's {pretrained:.4g}, less than {SMALL_GAIN:g} of the tasks' median gain): "
                "selection.method=balanced weighs a loss on it between its own gain and the median gain, not per its "
                "own gain alone"
            )
    return lines


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
    for group in sorted(set(layout.groups) | set(group_dirs(results))):
        for path in batch_files(paths.evals(group)):
            files.append(("evaluate_round" if Layout.is_round_batch(path) else "evaluate_sample", group, path))
        if paths.selected_evals(group).exists():
            files.append(("evaluate_selected", group, paths.selected_evals(group)))
    return files


def failed_lines(results: Path, layout: Scan, failed: pd.DataFrame) -> list[str]:
    """Where the ledger counts evaluations recorded as failed (evaluation.on_error=record; `failed`: its rows that do,
    from evaluation_counts): which files hold them, and how to evaluate them again (a job does not rerun by itself
    once its table is written, failures and all)."""
    if failed.empty:
        return []
    where = {
        (stage, None if group is None else str(group), path.name): path
        for stage, group, path in _evaluation_files(results, layout)
    }
    keys = [(r.stage, None if pd.isna(r.group) else str(r.group), r.file) for r in failed.itertuples()]
    files = [where[key] for key in keys if key in where]
    return [
        f"{int(failed['failed'].sum())} (model, task) evaluations failed and were recorded (evaluation.on_error=record) "
        f"in {listed_names(results, files, 3)}; their jobs do not run again by "
        "themselves: `snakemake --cores N --forcerun "
        + " ".join(map(str, files))
        + "` (with the run's --config) evaluates "
        "those batches again (a table with a failure is not kept in the evaluation cache)"
    ]


def evaluation_counts(results: Path, layout: Scan) -> tuple[pd.DataFrame, str, pd.DataFrame]:
    """Real evaluations per stage (files, models, (model, task) evaluations), where the counts come from, and the
    ledger's rows of files that recorded failed evaluations (none without a readable ledger).

    From evaluations.parquet (the ledger) when it is there, else counted from the evaluation files
    as the ledger counts them (models per file, distinct (model, task) pairs per file).
    """
    columns = ["stage", "files", "models", "task_evaluations"]
    ledger = Layout(results).ledger
    if ledger.exists():
        frame = try_read(ledger, layout.problems)
        if frame is not None:
            counts = frame.groupby("stage", sort=False).agg(
                files=("file", "size"), models=("models", "sum"), task_evaluations=("task_evaluations", "sum")
            )
            failed = frame[frame["failed"] > 0] if "failed" in frame.columns else frame.iloc[:0]
            return counts.reset_index()[columns], "from evaluations.parquet", failed
    rows = []
    for stage, _, path in _evaluation_files(results, layout):
        key = "model" if stage == "evaluate_reference" else "sample"
        frame = try_read(path, layout.problems, columns=[key, "task"])
        if frame is None:
            continue
        counts = metrics.evaluation_counts(frame)
        rows.append(
            {"stage": stage, "files": 1, "models": counts["models"], "task_evaluations": counts["task_evaluations"]}
        )
    if not rows:
        return pd.DataFrame(columns=columns), "no evaluation file yet", pd.DataFrame()
    counts = pd.DataFrame(rows).groupby("stage", sort=False)[columns[1:]].sum().reset_index()
    order = {s: i for i, s in enumerate(EVAL_STAGES)}
    counts = counts.sort_values("stage", key=lambda s: s.map(order), ignore_index=True)
    return (
        counts,
        f"counted from the evaluation files; evaluations.parquet is {'unreadable' if ledger.exists() else 'not written yet'}",
        pd.DataFrame(),
    )


STALE = "stale"  # a table made before a later run replaced, removed or added files it reads (runfolder.changed_inputs)


def _state(done: int, expected: int | None) -> str:
    if expected is None:
        return "done" if done else "missing"
    return "done" if done >= expected and expected > 0 else ("partial" if done else "missing")


class _Disk:
    """The artifacts status looks at: each read once (Parquet footer, safetensors header), its damage kept."""

    def __init__(self, problems: dict[Path, str]) -> None:
        self.problems = problems  # path -> why, shared with the Scan (scan's own finds are there)
        self._good: dict[Path, bool] = {}
        self.stale: dict[Path, list[str]] = {}  # runfolder.changed_inputs: tables made before files they read changed

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
        """done, partial or missing by the good files among `paths` (judged)."""
        return self.judged(paths, _state(self.count(paths), expected))

    def judged(self, paths: Sequence[Path], counted: str) -> str:
        """unreadable where one of `paths` is, stale where one was made from files since replaced, else `counted`."""
        return "unreadable" if self.bad(paths) else STALE if any(p in self.stale for p in paths) else counted

    def present(self, paths: Sequence[Path]) -> str:
        """For stages whose count is not checked against an expected one: done or -, unreadable when one is."""
        return "unreadable" if self.bad(paths) else ("done" if self.count(paths) else "-")


def _stage_states(
    layout: Scan, disk: _Disk, rounds: dict[str, list[Path]], evals: dict[str, list[Path]], left: LeftBehind
) -> dict[str, tuple[str, str]]:
    """Per stage that status reads: (state, what its artifacts are and how many of them are there); `rounds` and
    `evals`: each group's round tables and evaluation files; `left`: those of them left from an earlier setting."""
    R, L = layout.results, layout.paths
    tasks, groups_ = layout.tasks, layout.groups
    n_groups = len(groups_) if groups_ else None

    def each(artifact: str) -> list[Path]:
        """A group artifact (a method of Layout) of every group."""
        return [getattr(L, artifact)(g) for g in groups_]

    def pattern(*artifacts: str) -> str:
        """'groups/<g>/front.parquet' for Layout.front, the others by file name."""
        first, *rest = (getattr(L, a)("<g>") for a in artifacts)
        return ", ".join([str(first.relative_to(R)), *(p.name for p in rest)])

    def gcount(artifact: str) -> tuple[str, str]:
        files = each(artifact)
        return disk.state(files, n_groups), f"{pattern(artifact)}: {disk.count(files)} of {n_groups or '?'} groups"

    def named(*paths: Path) -> str:
        return ", ".join(str(p.relative_to(R)) for p in paths)

    def gaps(tables: list[Path]) -> list[Path]:
        """The rounds missing before the last of `tables` in each group (a stopped rerun deleted one to remake it)."""
        numbers: dict[Path, set[int]] = {}
        for table in tables:
            numbers.setdefault(table.parent, set()).add(Layout.round_number(table) or 0)
        return [
            folder / L.round("x", n).name for folder, got in numbers.items() for n in range(1, max(got)) if n not in got
        ]

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
    later = [p for g in groups_ for p in rounds[g][1:]]
    kinds = {p: try_read(p, layout.problems, columns=["kind"]) for p in later}
    refined = [p for p, k in kinds.items() if k is not None and k["kind"].isin(refine.KINDS).any()]
    later = [p for p in later if p not in refined]
    # a group's rounds are one sequence, its Bayesian rounds (r01 on) before its refinement rounds: a gap after the
    # last Bayesian round present is a refinement round's
    proposed: dict[Path, int] = {}  # a group's rounds folder -> its last Bayesian round present
    for p in later:
        proposed[p.parent] = max(proposed.get(p.parent, 0), Layout.round_number(p) or 0)
    all_gaps = gaps(later + refined)
    refined_gaps = [p for p in all_gaps if (Layout.round_number(p) or 0) > proposed.get(p.parent, 0)]
    later_gaps = [p for p in all_gaps if p not in refined_gaps]
    evaluated = [p for g in groups_ for p in evals[g]]
    batches = [p for p in evaluated if not Layout.is_round_batch(p)]
    round_batches = [p for p in evaluated if Layout.is_round_batch(p)]
    merge_outputs = [each(f) for f in ("merged", "group_vector", "choice")]
    merged = min(disk.count(files) for files in merge_outputs)
    collected = sum(disk.good(s) and disk.good(m) for s, m in zip(each("samples"), each("metrics")))
    aggregate = [L.pareto, L.measured, L.selected, L.group_tree, L.report]
    validated = L.validation_dir.is_dir() or L.validation.exists()  # validation.enabled: its stages, its HTML table
    names = [*HTML_TABLES, *(["validation"] if validated else [])]
    tables, n_tables = sum(L.report_table(name).exists() for name in names), len(names)
    agg_done = [f for f in aggregate if disk.good(f)]
    pngs = sorted(p for p in L.plots.glob("*.png") if p not in left.plots)
    if disk.bad(aggregate):
        agg_state = "unreadable"
    else:
        agg_state = (
            "done" if len(agg_done) == len(aggregate) and pngs else ("partial" if agg_done or pngs else "missing")
        )
    plans = list(layout.plans.values())
    designs = [L.round(g, 0) for g in groups_]
    extract = disk.state(vectors, len(tasks) or None)
    unextracted = _unextracted(layout, tasks)
    return {
        "prepare_benchmark": bench,
        "extract_task_vector": (
            "partial" if unextracted and extract == "done" else extract,
            f"{named(L.task_vector('<task>'))}: {disk.count(vectors)} of {len(tasks) or '?'} tasks"
            + (f"; the benchmark also trained {', '.join(unextracted)}, with none yet" if unextracted else "")
            + (f"; {named(*sorted(left.vectors))} left from an earlier task list" if left.vectors else ""),
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
            _rounds_state(disk, later, later_gaps),
            f"{named(L.round('<g>', '<NN>'))} after r00: {len(later)}"
            + (_left_note(later, left.rounds, ROUNDS_LEFT) if later else " (Bayesian MAP's, once its rounds have run)")
            + _gap_note(R, later_gaps),
        ),
        "refine_round": (
            _rounds_state(disk, refined, refined_gaps),
            f"{named(L.round('<g>', '<NN>'))} with pick and front points: {len(refined)}"
            + (
                _left_note(refined, left.rounds, ROUNDS_LEFT)
                if refined
                else " (with refine.rounds > 0, once its rounds have run)"
            )
            + _gap_note(R, refined_gaps),
        ),
        "evaluate_sample": _batch_state(
            disk,
            [d for d in designs if d.is_file()],
            batches,
            left.evals,
            f"{named(L.batch('<g>', 'b<NNNN>'))}: {_batches(len(batches))}",
            "missing",
        ),
        "evaluate_round": _batch_state(
            disk,
            [p for p in later + refined if p not in left.rounds],
            round_batches,
            left.evals,
            f"{named(L.round_batch('<g>', '<NN>', '<NNNN>'))}: {_batches(len(round_batches))}",
            "-",
            " (Bayesian MAP and refinement rounds only)",
        ),
        "collect_metrics": (
            disk.judged(each("samples") + each("metrics"), _state(collected, n_groups)),
            f"{pattern('samples', 'metrics')}: {collected} of {n_groups or '?'} groups",
        ),
        "fit_surrogate": gcount("surrogate"),
        "pareto_front": gcount("front"),
        "merge_group": (
            disk.judged([p for files in merge_outputs for p in files], _state(merged, n_groups)),
            f"{pattern('merged', 'group_vector', 'choice')}: {merged} of {n_groups or '?'} groups",
        ),
        "evaluate_selected": gcount("selected_evals"),
        "ledger": (disk.state([L.ledger], 1), named(L.ledger)),
        "aggregate": (
            STALE if disk.stale and agg_done else agg_state,
            f"{named(*aggregate)}: {len(agg_done)} of {len(aggregate)}; {named(L.plots)}/: {len(pngs)} PNG"
            + (f" ({named(*sorted(left.plots))} left from an earlier setting)" if left.plots else ""),
        ),
        "report_tables": (
            STALE if disk.stale and tables else _state(tables, n_tables),
            f"{named(L.report_tables)}/*.html (for snakemake --report): {tables} of {n_tables}",
        ),
        **(_validation_states(L, disk, left.validation) if validated else {}),
    }


def _batch_state(
    disk: _Disk,
    tables: list[Path],
    batches: list[Path],
    left: set[Path],
    line: str,
    none: str,
    why_none: str = "",
) -> tuple[str, str]:
    """An evaluation stage's state and line: done once its batches hold every sample of the round tables they
    evaluate (the design's r00, or the later rounds'), partial where some sample is in none (its job stopped or
    failed: the batches are numbered from the tables' rows, so a missing one leaves no other trace but its log), not
    checked where the table is not written yet; without batches, `none` (with `why_none`) where no table asks for
    any, else missing. Batches `left` from an earlier setting hold nothing."""
    line += _left_note(batches, left, BATCHES_LEFT)
    if disk.bad(batches):
        return "unreadable", line
    if not disk.count(batches):
        if not tables:
            return none, line + why_none
        return "missing", f"{line}; the {len(_samples(disk.problems, tables))} samples to evaluate in none yet"
    current = [p for p in batches if p not in left]
    expected = _samples(disk.problems, tables)
    if missing := len(expected - _samples(disk.problems, current)):
        return "partial", f"{line}; {missing} of the {len(expected)} samples to evaluate in none yet"
    # the design's batches do not wait for its table (their coefficients are the jobs' params, drawn as the workflow
    # is parsed): until it is written, they cannot be counted against it
    unchecked = sorted({p.parent.parent.name for p in current} - {t.parent.parent.name for t in tables})
    return "done", line + (f"; not checked in {', '.join(unchecked)}: no round table yet" if unchecked else "")


def _samples(problems: dict[Path, str], tables: list[Path]) -> set[tuple[str, str]]:
    """(group, sample) of every row of these tables (a group's rounds/ or evals/ files)."""
    found = set()
    for path in tables:
        if (table := try_read(path, problems, columns=["sample"])) is not None:
            found.update((path.parent.parent.name, sample) for sample in table["sample"].unique())
    return found


def _batches(n: int) -> str:
    """'1 batch', '3 batches'."""
    return f"{n} batch" if n == 1 else f"{n} batches"


BATCHES_LEFT = "the run's ledger does not list them"
ROUNDS_LEFT = "the run's ledger lists none of their batches"
VALIDATION_LEFT = "validation.parquet did not read them"


def _unextracted(layout: Scan, tasks: list[str]) -> list[str]:
    """The built-in benchmark's tasks without a task vector where nothing yet names the run's tasks (no level plan,
    reference or task vector table: a run stopped in its extractions, whose tasks status counts from the task
    vectors made so far), unless a `tasks` setting leaves them out, which status does not read."""
    L = layout.paths
    if layout.plans or L.reference.exists() or L.task_vector_table.exists() or not L.benchmark.exists():
        return []
    benchmark = try_read(L.benchmark, layout.problems, columns=["model"])
    trained = [] if benchmark is None else [m for m in dict.fromkeys(benchmark["model"]) if m != "pretrained"]
    return [t for t in trained if t not in tasks]


def _rounds_state(disk: _Disk, tables: list[Path], missing: list[Path]) -> str:
    """A round stage's state: partial where a round before a group's last is missing (status does not read the
    config, so a last round not written yet is not seen), else done or - (unreadable where one is)."""
    state = disk.present(tables)
    return "partial" if missing and state == "done" else state


def _gap_note(results: Path, missing: list[Path]) -> str:
    """'; missing before the last: groups/all/rounds/r02.parquet' where rounds are."""
    return f"; missing before the last: {listed_names(results, missing, 3)}" if missing else ""


def _left_note(files: Sequence[Path], left: set[Path], why: str) -> str:
    """', 5 of them left from an earlier setting (why)' where some of `files` are."""
    n = len(left.intersection(files))
    return f", {n} of them left from an earlier setting ({why}; `mapmerge prune` removes them)" if n else ""


def _validation_states(L: Layout, disk: _Disk, left: set[Path]) -> dict[str, tuple[str, str]]:
    """The validation's stages (validation.enabled): their artifacts, counted, since the grid's size is the config's;
    `left`: those of them left from an earlier setting."""
    grid = batch_files(L.grid_batch("b0000").parent)
    baselines = sorted(L.baseline("x").parent.glob("*.parquet"))
    front = [L.validation_front, L.validation_front_evals]
    table = [L.validation, L.plot("validation")]
    names = ", ".join(p.stem for p in baselines) or "none"
    return {
        "validate_grid": (
            disk.present(grid),
            f"{L.grid_batch('b<NNNN>').relative_to(L.root)}: {_batches(len(grid))}"
            + _left_note(grid, left, VALIDATION_LEFT),
        ),
        "validate_front": (disk.state(front, 2), ", ".join(str(p.relative_to(L.root)) for p in front)),
        "validate_baseline": (
            disk.present(baselines),
            f"{L.baseline('<name>').relative_to(L.root)}: {names}" + _left_note(baselines, left, VALIDATION_LEFT),
        ),
        "validate": (disk.state(table, 2), ", ".join(str(p.relative_to(L.root)) for p in table)),
    }


def _evaluation_lines(results: Path, counts: pd.DataFrame, source: str, left: LeftBehind) -> list[str]:
    """The real evaluations per stage and the evaluation cache's tables (those of the batches `left` from an earlier
    setting among the ones prune drops)."""
    lines = [f"Real evaluations ({source}):"]
    if len(counts):
        table = [(r.stage, r.files, r.models, r.task_evaluations) for r in counts.itertuples()]
        table.append(
            ("total", int(counts["files"].sum()), int(counts["models"].sum()), int(counts["task_evaluations"].sum()))
        )
        lines += ["  " + line for line in text_table(table, ["stage", "files", "models", "(model, task) evaluations"])]
    else:
        lines.append("  none yet")
    cache = results / evaluation_cache.FOLDER
    if kept := sorted(cache.glob("*.parquet")):
        lines.append(
            f"  evaluation cache: {len(kept)} table{'s' * (len(kept) != 1)}, "
            f"{sum(p.stat().st_size for p in kept) / 1e6:.1f} MB in {cache} "
            "(a rerun job that evaluates the same merges takes its table from there)"
        )
        if stale := evaluation_cache.prune(results, dry_run=True, gone=left.evaluations).dropped:
            lines.append(
                f"    {len(stale)} of them from settings the run no longer has (their jobs' tables now hold other "
                "merges', or are left from an earlier setting): `mapmerge prune` drops them"
            )
    return lines


def _group_lines(
    layout: Scan, disk: _Disk, rounds: dict[str, list[Path]], evals: dict[str, list[Path]], left: LeftBehind
) -> list[str]:
    """Per group: its level, rounds and evaluation files (but those `left` from an earlier setting), samples, front
    points and merged checkpoint."""
    L = layout.paths

    def shown(path: Path, value: object) -> object:
        return "unreadable" if path in layout.problems else ("-" if value is None else value)

    table = []
    for g in layout.groups:
        front, samples, merged_file = L.front(g), L.samples(g), L.merged(g)
        table.append(
            (
                g,
                layout.level_of(g),
                len(set(rounds[g]) - left.rounds),
                len(set(evals[g]) - left.evals),
                shown(samples, _rows(samples) if disk.good(samples) else None),
                shown(front, _rows(front) if disk.good(front) else None),
                shown(merged_file, "yes" if disk.good(merged_file) else "no"),
            )
        )
    header = [
        "group",
        "level",
        "round tables (r00: design)",
        "eval files",
        "samples",
        "front points",
        "merged.safetensors",
    ]
    return ["Groups (the last is the final merge):", *("  " + line for line in text_table(table, header))]


RETRIES = 3  # reads of a folder a driver is running on: its jobs replace files between status's listing and reading


def status(results: Path) -> str:
    """What a run folder holds: per stage its artifacts, the real evaluations, per group its front and merge.

    An artifact counts only when it reads (Parquet footer, safetensors header: see check.artifact_damage); a
    stage with one that does not is `unreadable`, and the files are listed at the end. While a driver runs on the
    folder, a file gone or replaced between listing and reading it is read again from the start (RETRIES times).
    """
    results = Path(results)
    for _ in range(RETRIES):
        try:
            return _status(results)
        except ArtifactError as exc:
            if runlock.holder(results) is None:
                raise
            error = exc
            time.sleep(1)
    raise ArtifactError(
        f"{error} (a snakemake driver is running on {results} and replaces its files while status reads them: run "
        "status again)"
    )


def _status(results: Path) -> str:
    layout = scan(results)
    disk = _Disk(layout.problems)
    tasks, L = layout.tasks, layout.paths
    lines = [f"{results}: {METHOD_NAMES[layout.method]} ({layout.why})"]
    lines.append(
        f"tasks ({len(tasks)}): {', '.join(tasks)}"
        if tasks
        else "tasks: not known yet (no level plan, reference or task vector)"
    )
    if driver := runlock.holder(results):
        lines.append(f"a snakemake driver ({runlock.describe(driver)}) is running on this folder")
    counts, source, failed = evaluation_counts(results, layout)  # first: it reads evaluations.parquet whole
    rounds = {g: group_rounds(results, g) for g in layout.groups}
    evals = {g: batch_files(L.evals(g)) for g in layout.groups}
    left = left_behind(results, layout.groups, layout.problems, layout.tasks)
    tables = [getattr(L, name)(g) for g in layout.groups for name in GROUP_TABLES]
    tables += [getattr(L, name) for name in RUN_TABLES]
    unreadable = [p for p in tables if p.is_file() and not disk.good(p)]
    disk.stale = changed_inputs(results, layout.groups, unreadable, run_tables=True)
    states = _stage_states(layout, disk, rounds, evals, left)
    shown = [*STATUS_STAGES, *(stage for stage in VALIDATION_STAGES if stage in states)]
    rows = [(stage, *states.get(stage, ("-", "not read by mapmerge status"))) for stage in shown]
    lines += ["", *text_table(rows, ["stage", "state", "artifacts"])]
    lines += ["", *_evaluation_lines(results, counts, source, left)]
    lines += [f"  {line}" for line in failed_lines(results, layout, failed)]
    if layout.groups:
        lines += ["", *_group_lines(layout, disk, rounds, evals, left)]
    if stale := stale_selections(results):
        lines += [
            "",
            f"selected/: {len(stale)} merge(s) of `mapmerge select` picked from another front than the run's now (its "
            f"settings or files changed since): {listed_names(L.selections, stale, 3)}; select them again, or delete them",
        ]
    if disk.stale:
        lines += ["", *stale_lines(results, disk.stale)]
    finished = [L.selected, L.group_tree, *(p for g in layout.groups for p in (L.front(g), L.choice(g), L.samples(g)))]
    if all(disk.good(p) for p in finished) and not disk.stale:
        notes = [*final_notes(results), *no_gain_notes(results)]
        lines += ["", "What to know about the chosen merge:", *(f"  {line}" for line in notes)]
    if layout.problems:
        lines += ["", *(f"unreadable: {path}: {why}" for path, why in sorted(layout.problems.items()))]
        lines.append(f"  (`mapmerge check {results} --delete` deletes such files, so that snakemake makes them again)")
    return "\n".join(lines)
