"""The `mapmerge` command: look at a finished run, or check a run's artifacts on disk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mapmerge import runlock
from mapmerge.io import TEMP_SUFFIX, ArtifactError, read_table, recompute_hint

ARTIFACT_SUFFIXES = (".parquet", ".safetensors")


def summary(results: Path) -> str:
    """Where a run's front, plots and merged model are, and the chosen merge's metrics."""
    report = results / "report.md"
    if not report.exists():
        raise ArtifactError(f"{report}: not found; has the workflow finished for this run?")
    selected = read_table(results / "selected.parquet")
    lines = [report.read_text(), "Where to look:", f"  Pareto front:   {results / 'pareto.parquet'}"]
    lines += [f"  plot:           {p}" for p in sorted((results / "plots").glob("*.png"))]
    lines += [f"  merged model:   {results / 'groups' / g / 'merged.safetensors'}" for g in selected["group"]]
    lines += [f"  chosen merge:   {results / 'selected.parquet'}", f"  report:         {report}"]
    return "\n".join(lines)


def artifact_problem(path: Path) -> str | None:
    """Why a Parquet or safetensors artifact does not read back whole, or None when it does."""
    from mapmerge.checkpoints import verify_safetensors

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
    lines.append(f"{len(artifacts)} artifacts checked under {results}: {len(bad)} bad, {len(leftovers)} leftover temporary files")
    if driver:
        lines.append(f"a snakemake driver ({runlock.describe(driver)}) is running on this folder; nothing is deleted while it runs")
    if delete and not driver and (bad or leftovers):
        for path in [p for p, _ in bad] + leftovers:
            path.unlink()
        lines.append(f"deleted {len(bad) + len(leftovers)} files; run snakemake again to recompute them and what depends on them")
        return "\n".join(lines), 0
    return "\n".join(lines), 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mapmerge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("summary", help="print a finished run's report and where its outputs are")
    show.add_argument("results", type=Path, help="the run's results folder, e.g. results/demo")
    verify = sub.add_parser(
        "check", help="read back every Parquet and safetensors artifact of a run and list the bad ones (exit status 1)"
    )
    verify.add_argument("results", type=Path, help="the run's results folder, e.g. results/demo")
    verify.add_argument("--delete", action="store_true", help="delete the bad and leftover files, so that snakemake recomputes them and what depends on them")
    args = parser.parse_args(argv)
    try:
        if args.command == "summary":
            print(summary(args.results))
            return 0
        text, status = check(args.results, args.delete)
        print(text)
        return status
    except ArtifactError as exc:
        print(f"mapmerge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
