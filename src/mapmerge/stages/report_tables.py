"""Stage report_tables: the key tables of a finished run as HTML, for `snakemake --report`."""

from __future__ import annotations

import os
from collections.abc import Mapping

PathLike = str | os.PathLike


def run_report_tables(results: PathLike, outputs: Mapping[str, PathLike]) -> None:
    """report/<name>.html for each of mapmerge.outputs.report.HTML_TABLES (and validation) that outputs names."""
    from mapmerge.outputs import report  # deferred: the rules import stage modules at every Snakefile parse

    report.write_html_tables(results, outputs)
