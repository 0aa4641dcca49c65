"""The `mapmerge` command: look at a finished run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mapmerge.io import ArtifactError, read_table


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mapmerge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("summary", help="print a finished run's report and where its outputs are")
    show.add_argument("results", type=Path, help="the run's results folder, e.g. results/demo")
    args = parser.parse_args(argv)
    try:
        print(summary(args.results))
    except ArtifactError as exc:
        print(f"mapmerge: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
