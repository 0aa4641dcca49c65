"""The `mapmerge` command: look at a run (summary, status), check its artifacts on disk, choose a merge
for a new preference from its stored front without evaluating anything (select), write a merge as a mergekit
configuration (export), draw its plots again (plot), drop the evaluation cache's tables of settings the run no longer
has (prune)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mapmerge.adapters.transformers import MAX_SHARD_SIZE, parse_size
from mapmerge.io import TEMP_SUFFIX, ArtifactError, read_table, recompute_hint
from mapmerge.layout import Layout
from mapmerge.run import evaluation_cache, runlock

ARTIFACT_SUFFIXES = (".parquet", ".safetensors")


def summary(results: Path) -> str:
    """Where a run's front, plots and merged model are, and the chosen merge's metrics."""
    paths = Layout(results)
    report = paths.report
    if not report.exists():
        raise ArtifactError(f"{report}: not found; has the workflow finished for this run?")
    selected = read_table(paths.selected)
    lines = [report.read_text(), "Where to look:", f"  Pareto front:   {paths.pareto}"]
    lines += [f"  plot:           {p}" for p in sorted(paths.plots.glob("*.png"))]
    lines += [f"  merged model:   {paths.merged(g)}" for g in selected["group"]]
    lines += [f"  chosen merge:   {paths.selected}", f"  report:         {report}"]
    return "\n".join(lines)


def artifact_problem(path: Path) -> str | None:
    """Why a Parquet or safetensors artifact does not read back whole, or None when it does."""
    from mapmerge.tensors.checkpoints import verify_safetensors  # deferred: torch

    try:
        if path.suffix == ".parquet":
            read_table(path)
        else:
            verify_safetensors(path)
    except ArtifactError as exc:
        return str(exc).removesuffix(f"; {recompute_hint(path)}")
    return None


def check(results: Path, delete: bool = False) -> tuple[str, int]:
    """Report (and with `delete` remove) unreadable artifacts and leftover temporary files; (text, exit status)."""
    if not results.is_dir():
        raise ArtifactError(f"{results}: not a folder")
    driver = runlock.holder(results)
    files = sorted(p for p in results.rglob("*") if p.is_file())
    artifacts = [p for p in files if p.suffix in ARTIFACT_SUFFIXES and not p.name.startswith(".")]
    bad = [(p, why) for p in artifacts if (why := artifact_problem(p))]
    # while a driver runs, temporary files are outputs being written
    leftovers = [] if driver else [p for p in files if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)]
    lines = [f"bad: {why}" for _, why in bad] + [f"leftover: {p} (temporary file of a stopped job)" for p in leftovers]
    lines.append(
        f"{len(artifacts)} artifacts checked under {results}: {len(bad)} bad, {len(leftovers)} leftover temporary files"
    )
    if driver:
        lines.append(
            f"a snakemake driver ({runlock.describe(driver)}) is running on this folder; nothing is deleted while it runs"
        )
    if delete and not driver and (bad or leftovers):
        for path in [p for p, _ in bad] + leftovers:
            path.unlink()
        lines.append(
            f"deleted {len(bad) + len(leftovers)} files; run snakemake again to recompute them and what depends on them"
        )
        return "\n".join(lines), 0
    return "\n".join(lines), 1 if bad else 0


def prune(results: Path, dry_run: bool = False) -> str:
    """Drop (or with `dry_run` list) the evaluation cache's tables whose jobs' tables now hold other merges'
    (evaluation_cache.prune), holding the run's lock meanwhile; what it dropped and kept, as text."""
    if not results.is_dir():
        raise ArtifactError(f"{results}: not a folder")
    if not (results / evaluation_cache.FOLDER).is_dir():  # no driver has kept a table here: nothing to lock
        return f"evaluation cache of {results}: none ({results / evaluation_cache.FOLDER} does not exist)"
    try:
        with runlock.holding(results):
            found = evaluation_cache.prune(results, dry_run)
    except runlock.RunLockError as exc:
        raise ArtifactError(f"{exc}; nothing is pruned while it runs") from None
    kept = [p for paths in found.kept.values() for p in paths]
    lines = [
        f"evaluation cache of {results}: {len(kept) + len(found.dropped)} tables, "
        f"{(found.size(kept) + found.size(found.dropped)) / 1e6:.1f} MB"
    ]
    lines += [
        f"  kept {len(paths)}: {evaluation_cache.KEEP_REASONS[reason]}" for reason, paths in found.kept.items() if paths
    ]
    verb = "would drop" if dry_run else "dropped"
    lines.append(
        f"  {verb} {len(found.dropped)} ({found.size(found.dropped) / 1e6:.1f} MB): their jobs' tables now hold "
        "other merges' results (settings the run no longer has; going back to one evaluates again)"
    )
    if found.notes:
        lines.append(f"  {verb} {len(found.notes)} hash notes of files since changed or gone")
    return "\n".join(lines)


def _preference_arg(text: str) -> dict[str, float]:
    from mapmerge.tools.runfolder import parse_preference  # deferred: torch (runfolder imports mapmerge.tensors)

    return parse_preference(text)


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _task_directory(text: str) -> tuple[str, str]:
    task, sep, directory = text.partition("=")
    if not sep or not task or not directory:
        raise argparse.ArgumentTypeError(f"{text!r} is not TASK=DIR")
    return task, directory


def _pick_options(parser: argparse.ArgumentParser, when: str = "") -> None:
    """--method, --rho and --metric: how a preference picks a point (select, export)."""
    parser.add_argument(
        "--method",
        default=None,
        choices=["weighted_sum", "tchebycheff", "balanced"],
        help=f"{when}how the preference picks a point (default: the run's selection.method)",
    )
    parser.add_argument(
        "--rho", type=float, default=0.05, metavar="RHO", help=f"{when}augmentation term of tchebycheff (default: 0.05)"
    )
    parser.add_argument(
        "--metric",
        default=None,
        choices=["accuracy", "loss"],
        help=f"{when}the objective metric (default: the run's optimizer.objective, read from groups.parquet)",
    )


def _command(sub: argparse._SubParsersAction, name: str, **kwargs: str) -> argparse.ArgumentParser:
    """A subcommand (help, description: as argparse's) and its first argument, the run's results folder."""
    parser = sub.add_parser(name, **kwargs)
    parser.add_argument("results", type=Path, help="the run's results folder, e.g. results/demo")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mapmerge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _command(sub, "summary", help="print a finished run's report and where its outputs are")
    verify = _command(
        sub,
        "check",
        help="read back every Parquet and safetensors artifact of a run and list the bad ones (exit status 1)",
    )
    verify.add_argument(
        "--delete",
        action="store_true",
        help="delete the bad and leftover files, so that snakemake recomputes them and what depends on them",
    )
    _command(
        sub,
        "status",
        help="what a run folder holds, finished or not: per stage its artifacts, the real evaluations, per group its front and merge",
        description="What a run folder holds, finished or not: the method (from levels/ and the group names), per stage "
        "whether its artifacts exist and read (done, partial, missing, unreadable: a Parquet footer or safetensors header "
        "that does not read; the files are listed), the real evaluations per stage (from evaluations.parquet, else counted "
        "from the evaluation files) and per group its rounds, evaluation files, samples, front size and merged checkpoint.",
    )
    pick = _command(
        sub,
        "select",
        help="choose the final merge for a new preference from the stored fronts (no evaluation) and write it",
        description="Choose the merge of the run's final group for a new preference, without evaluating anything, "
        "and write its merged checkpoint theta_pre + sum_i c_i tau'_i (the run's merge operator, from the header of "
        "groups/<g>/merged.safetensors); for a transformers run, one folder per task that from_pretrained loads, "
        "as merge_group writes them. Two candidates are shown, each marked: the predicted front's pick (the "
        "surrogates' predictions, with their intervals) and the measured front's pick (real evaluations of the run); "
        "as in the run, a run with refinement rounds merges the measured one, else the predicted one. "
        "Prints the candidates and the file. "
        "Before writing, the pretrained checkpoint is checked against the hash the run recorded (where the records "
        "cannot tell its hash, as in a transformers run, by merging the run's own choice from it, every tensor); "
        "a wrong one is refused and nothing is written. "
        "Nested MAP: only the top group is chosen again; the merges below it stay those of the run's own preference.",
    )
    pick.add_argument(
        "--prefer",
        required=True,
        type=str,
        metavar="TASK=W,...",
        help="preference weights, e.g. rot90=2,invert=1 (tasks left out get 0; weights are normalised)",
    )
    _pick_options(pick)
    pick.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PATH",
        help="the checkpoint to write, under RESULTS/selected/ or outside the run folder; its format follows the "
        "suffix: .safetensors, else a torch state dict (default: RESULTS/selected/<preference>.safetensors, or .pt "
        "when the pretrained checkpoint is a torch file). A transformers run: a folder, written whole, of one "
        "folder per task that from_pretrained loads (default: RESULTS/selected/<preference>/); a path ending in "
        ".safetensors (or .pt, .pth, .bin) gets the merged state dict instead",
    )
    pick.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        metavar="PATH",
        help="the pretrained checkpoint the run merged: a file (model.pretrained), a transformers directory "
        "or a Hugging Face model name org/name[@revision] in the local cache (model.transformers.pretrained); "
        "needed for your own model, whose checkpoints the run folder does not "
        "hold (the built-in benchmark's are in RESULTS/checkpoints/)",
    )
    pick.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="the run's seed, for a seeded merge operator (dare, dare_ties) when merged.safetensors does not record it",
    )
    pick.add_argument(
        "--max-shard-size",
        type=_size_arg,
        default=MAX_SHARD_SIZE,
        metavar="SIZE",
        help="a transformers run's folders: weights larger than this are saved in shards, as save_pretrained "
        f"does (bytes, or with KB, MB, GB; default: {MAX_SHARD_SIZE})",
    )
    port = _command(
        sub,
        "export",
        help="write the run's merge (or a preference's pick, or any front point) as a mergekit configuration",
        description="Write a mergekit configuration (mergekit-yaml OUT.yaml OUTPUT_DIR) of a transformers run's merge: "
        "its own (default), the point `mapmerge select` picks for --prefer, or --point. Its models are the "
        "directories given with --pretrained and --model, checked against the run's task vectors. mergekit's merge "
        "is mapmerge's for task_arithmetic at any point, ties and dare_ties at equal coefficients, slerp on "
        "c1 + c2 = 1 (other points are refused, saying why), dare and dare_ties up to their random masks.",
    )
    port.add_argument(
        "--mergekit", required=True, type=Path, metavar="OUT.yaml", help="the mergekit configuration to write"
    )
    port.add_argument(
        "--pretrained",
        required=True,
        metavar="DIR",
        help="the pretrained transformers directory the run merged (model.transformers.pretrained), or a cached "
        "Hugging Face model name org/name[@revision]",
    )
    port.add_argument(
        "--model",
        action="append",
        type=_task_directory,
        default=[],
        metavar="TASK=DIR",
        help="a task's fine-tuned directory (model.transformers.tasks.<task>.directory), once per task",
    )
    port.add_argument(
        "--prefer", type=str, default=None, metavar="TASK=W,...", help="the pick for this preference, as select"
    )
    port.add_argument(
        "--point",
        default=None,
        metavar="N|SAMPLE",
        help="a row of the final group's front.parquet (0-based) or an evaluated sample's name, instead of a pick",
    )
    _pick_options(port, "with --prefer: ")
    draw = _command(
        sub,
        "plot",
        help="draw a run's plots again from its artifacts (what the aggregate stage draws)",
        description="Draw the final group's plots again from the run's artifacts, as the aggregate stage draws them: "
        "front_parallel.png, and front_2d.png for 2 tasks. Prints the files written.",
    )
    draw.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="folder for the PNGs (default: RESULTS/plots)"
    )
    draw.add_argument(
        "--metric",
        default=None,
        choices=["accuracy", "loss"],
        help="the metric to draw (default: the run's optimizer.objective, read from groups.parquet)",
    )
    trim = _command(
        sub,
        "prune",
        help="drop the evaluation cache's tables of settings the run no longer has",
        description="Drop the tables of the run's evaluation cache (RESULTS/.cache/evaluations) whose evaluation "
        "job's table in the run now holds other merges' results: a setting changed and the job evaluated again. "
        "Kept: those whose job's table is the same, missing (an unfinished or interrupted run) or unreadable, and "
        "those kept before mapmerge noted their places. Refused while a snakemake driver runs on the folder.",
    )
    trim.add_argument("--dry-run", action="store_true", help="list what would be dropped; delete nothing")
    args = parser.parse_args(argv)
    from mapmerge.tools.runfolder import UsageError  # deferred: torch (runfolder imports mapmerge.tensors)

    try:
        if args.command == "summary":
            print(summary(args.results))
            return 0
        if args.command == "status":
            from mapmerge.tools.runfolder import status  # deferred: torch (runfolder imports mapmerge.tensors)

            print(status(args.results))
            return 0
        if args.command == "select":
            from mapmerge.tools.runfolder import select  # deferred: torch (runfolder imports mapmerge.tensors)

            chosen = select(
                args.results,
                _preference_arg(args.prefer),
                args.method,
                args.rho,
                args.out,
                args.pretrained,
                args.metric,
                args.seed,
                args.max_shard_size,
            )
            print(chosen.text)
            return 0
        if args.command == "export":
            from mapmerge.tools.mergekit_export import export  # deferred: torch (it reads checkpoints)

            tasks = [task for task, _ in args.model]
            twice = [task for task in tasks if tasks.count(task) > 1]
            if twice:
                raise UsageError(f"--model: task {twice[0]!r} is given twice")
            text = export(
                args.results,
                args.mergekit,
                None if args.prefer is None else _preference_arg(args.prefer),
                args.method,
                args.rho,
                args.point,
                args.pretrained,
                dict(args.model),
                args.metric,
            )
            print(text)
            return 0
        if args.command == "plot":
            from mapmerge.tools.runfolder import replot  # deferred: torch (runfolder imports mapmerge.tensors)

            if not args.results.is_dir():
                raise UsageError(f"{args.results}: not a folder")
            for path in replot(args.results, args.out, args.metric):
                print(path)
            return 0
        if args.command == "prune":
            print(prune(args.results, args.dry_run))
            return 0
        text, status_code = check(args.results, args.delete)
        print(text)
        return status_code
    except UsageError as exc:
        print(f"mapmerge {args.command}: {exc}", file=sys.stderr)
        return 2
    except ArtifactError as exc:
        print(f"mapmerge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
