"""The `mapmerge` command: look at a run (summary, status), check its artifacts on disk, choose a merge
for a new preference from its stored front without evaluating anything (select), write a merge as a mergekit
configuration (export), draw its plots again (plot), drop the evaluation cache's tables and the files of settings the
run no longer has (prune). The work of each is in its own module of mapmerge.tools; this one parses the command line."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

from mapmerge.adapters.transformers import MAX_SHARD_SIZE, parse_size
from mapmerge.io import ArtifactError
from mapmerge.run import runlock
from mapmerge.run.schema import closest
from mapmerge.tools.check import check
from mapmerge.tools.prune import prune
from mapmerge.tools.replot import replot
from mapmerge.tools.runfolder import UsageError, check_run_folder
from mapmerge.tools.select_merge import CHECKPOINT_SUFFIXES, parse_preference, select
from mapmerge.tools.status import status, summary


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (the closest choice to a mistyped one), and without abbreviated
    options (`check --d` was `--delete`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # the subcommands' parsers, by name

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, but an argument left over is the subcommand's error (`mapmerge select: unrecognized ...`)."""
        parsed, extra = self.parse_known_args(args, namespace)
        command = self.commands.get(getattr(parsed, "command", None), self)
        if extra:
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        if twice := _given_twice(command, sys.argv[1:] if args is None else args):
            command.error(f"argument {twice}: given twice")
        return parsed

    def error(self, message: str) -> NoReturn:
        if choice := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
            message += closest(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def _given_twice(parser: argparse.ArgumentParser, args: Sequence[str]) -> str | None:
    """The first option of a command given twice (`--out a --out b`: the second replaced the first without a word);
    an option that collects its values (export's --model) may repeat."""
    actions = {
        name: action
        for name, action in parser._option_string_actions.items()
        if not isinstance(action, argparse._AppendAction | argparse._ExtendAction)
    }
    seen: set[str] = set()
    for token in args:
        if token == "--":
            break
        action = actions.get(token.split("=", 1)[0])
        if action is not None and action.dest in seen:
            return token.split("=", 1)[0]
        seen |= {action.dest} if action is not None else set()
    return None


def _path(text: str) -> Path:
    if not text.strip():  # Path("") is the working folder: a shell variable left unset
        raise argparse.ArgumentTypeError("empty; give a path")
    return Path(text)


def _out_path(text: str) -> Path:
    """select's --out: a path, not one that ends in a slash and names a checkpoint file (a folder or a file?)."""
    path = _path(text)
    if text.rstrip().endswith(("/", os.sep)) and path.suffix in CHECKPOINT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text!r} ends in a slash (a folder) but names a {path.suffix} file; drop the slash to write the file"
        )
    return path


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
        "--rho",
        type=float,
        default=None,
        metavar="RHO",
        help=f"{when}augmentation term of tchebycheff and balanced (default: the run's selection.rho)",
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
    parser.add_argument("results", type=_path, help="the run's results folder, e.g. results/demo")
    return parser


def _check_command(sub: argparse._SubParsersAction) -> None:
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


def _status_command(sub: argparse._SubParsersAction) -> None:
    _command(
        sub,
        "status",
        help="what a run folder holds, finished or not: per stage its artifacts, the real evaluations, per group its front and merge",
        description="What a run folder holds, finished or not: the method (from levels/ and the group names), per stage "
        "whether its artifacts exist and read (done, partial, missing, unreadable: a Parquet footer or safetensors header "
        "that does not read; the files are listed), the real evaluations per stage (from evaluations.parquet, else counted "
        "from the evaluation files) and per group its rounds, evaluation files, samples, front size and merged checkpoint.",
    )


def _select_command(sub: argparse._SubParsersAction) -> None:
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
        metavar="TASK=W,...|FILE",
        help="preference weights, e.g. rot90=2,invert=1, or a YAML file of task: weight lines, as the config's "
        "preference takes (tasks left out get 0; weights are normalised)",
    )
    _pick_options(pick)
    pick.add_argument(
        "--out",
        type=_out_path,
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
        type=_path,
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
        default=None,
        metavar="SIZE",
        help="a transformers run's folders: weights larger than this are saved in shards, as save_pretrained "
        f"does (bytes, or with KB, MB, GB; default: {MAX_SHARD_SIZE})",
    )


def _export_command(sub: argparse._SubParsersAction) -> None:
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
        "--mergekit", required=True, type=_path, metavar="OUT.yaml", help="the mergekit configuration to write"
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
        "--prefer",
        default=None,
        metavar="TASK=W,...|FILE",
        help="the pick for this preference (weights or a preference file), as select",
    )
    port.add_argument(
        "--point",
        default=None,
        metavar="N|SAMPLE",
        help="a row of the final group's front.parquet (0-based) or an evaluated sample's name, instead of a pick",
    )
    _pick_options(port, "with --prefer: ")


def _plot_command(sub: argparse._SubParsersAction) -> None:
    draw = _command(
        sub,
        "plot",
        help="draw a run's plots again from its artifacts (what the aggregate stage draws)",
        description="Draw the final group's plots again from the run's artifacts, as the aggregate stage draws them: "
        "front_parallel.png, and front_2d.png for 2 tasks. Prints the files written.",
    )
    draw.add_argument(
        "--out", type=_path, default=None, metavar="DIR", help="folder for the PNGs (default: RESULTS/plots)"
    )
    draw.add_argument(
        "--metric",
        default=None,
        choices=["accuracy", "loss"],
        help="the metric to draw (default: the run's optimizer.objective, read from groups.parquet)",
    )


def _prune_command(sub: argparse._SubParsersAction) -> None:
    trim = _command(
        sub,
        "prune",
        help="drop the evaluation cache's tables and the files of settings the run no longer has",
        description="Drop the tables of the run's evaluation cache (RESULTS/.cache/evaluations) whose evaluation "
        "job's table in the run now holds other merges' results: a setting changed and the job evaluated again. "
        "Kept: those whose job's table is the same, missing (an unfinished or interrupted run) or unreadable, and "
        "those kept before mapmerge noted their places. Also remove, with their jobs' logs and kept tables, the "
        "files an earlier setting left that no job of the run reads (the evaluation batches evaluations.parquet "
        "does not list, their rounds' tables, the validation's grid batches and baselines validation.parquet did "
        "not read; `mapmerge status` counts them apart). Refused while a snakemake driver runs on the folder.",
    )
    trim.add_argument("--dry-run", action="store_true", help="list what would be dropped and removed; delete nothing")


def parser() -> _Parser:
    """The command line: one subcommand per command, each with the run's results folder first."""
    parser = _Parser(prog="mapmerge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mapmerge {version('mapmerge')}")
    sub = parser.add_subparsers(dest="command", required=True)
    _command(sub, "summary", help="print a finished run's report and where its outputs are")
    for add in (_check_command, _status_command, _select_command, _export_command, _plot_command, _prune_command):
        add(sub)
    parser.commands = dict(sub.choices)
    return parser


def _select(args: argparse.Namespace) -> int:
    chosen = select(
        args.results,
        parse_preference(args.prefer),
        args.method,
        args.rho,
        args.out,
        args.pretrained,
        args.metric,
        args.seed,
        args.max_shard_size,
    )
    for warning in chosen.warnings:
        print(f"mapmerge select: {warning}", file=sys.stderr)
    print(chosen.text)
    return 0


def _export(args: argparse.Namespace) -> int:
    from mapmerge.tools.mergekit_export import export  # deferred: torch (it reads checkpoints)

    tasks = [task for task, _ in args.model]
    twice = [task for task in tasks if tasks.count(task) > 1]
    if twice:
        raise UsageError(f"--model: task {twice[0]!r} is given twice")
    text, warnings = export(
        args.results,
        args.mergekit,
        None if args.prefer is None else parse_preference(args.prefer),
        args.method,
        args.rho,
        args.point,
        args.pretrained,
        dict(args.model),
        args.metric,
    )
    for warning in warnings:
        print(f"mapmerge export: {warning}", file=sys.stderr)
    print(text)
    return 0


def _plot(args: argparse.Namespace) -> int:
    for path in replot(args.results, args.out, args.metric):
        print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    text, status_code = check(args.results, args.delete)
    print(text)
    return status_code


def _printed(work: Callable[[argparse.Namespace], str]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        print(work(args))
        return 0

    return command


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "summary": _printed(lambda args: summary(args.results)),
    "status": _printed(lambda args: status(args.results)),
    "select": _select,
    "export": _export,
    "plot": _plot,
    "prune": _printed(lambda args: prune(args.results, args.dry_run)),
    "check": _check,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run a `mapmerge` command; its exit status (2: a bad command line, 1: a missing or unreadable artifact, or a
    file the command cannot read or write)."""
    args = parser().parse_args(argv)
    try:
        check_run_folder(Path(args.results))
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"mapmerge {args.command}: {exc}", file=sys.stderr)
        return 2
    except ArtifactError as exc:
        print(f"mapmerge: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mapmerge status RUN | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 0
    except OSError as exc:  # a folder it may not write (select --out, plot --out, prune or check --delete of a run)
        path = Path(exc.filename) if exc.filename else None
        why = exc.strerror or exc
        if path is not None and (temporary := runlock.TEMPORARY.fullmatch(path.name)):  # written beside the file
            file = path.parent / temporary[1]
            print(f"mapmerge {args.command}: {file}: cannot be written in {path.parent} ({why})", file=sys.stderr)
            return 1
        print(f"mapmerge {args.command}: {f'{path}: ' if path else ''}{why}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
