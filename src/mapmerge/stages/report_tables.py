"""Stage report_tables: the key tables of a finished run as HTML, for `snakemake --report`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mapmerge.outputs import report

PathLike = str | os.PathLike


def run_report_tables(
    params: Mapping[str, Any],
    *,
    reference: PathLike,
    task_vectors: PathLike,
    pareto: PathLike,
    measured: PathLike,
    selected: PathLike,
    evaluations: PathLike,
    models: PathLike,
    front: PathLike,
    measured_front: PathLike,
    chosen: PathLike,
    ledger: PathLike,
    validation_table: PathLike | None = None,
    validation: PathLike | None = None,
) -> None:
    """report/<name>.html for each of mapmerge.outputs.report.HTML_TABLES, and report/validation.html from
    validation.parquet (`validation_table`) with validation."""
    tables = {"reference": reference, "task_vectors": task_vectors, "pareto": pareto, "measured": measured}
    tables |= {"selected": selected, "evaluations": evaluations}
    outputs = {"models": models, "front": front, "measured_front": measured_front, "chosen": chosen, "ledger": ledger}
    if validation is not None:
        tables["validation"], outputs["validation"] = validation_table, validation
    report.write_html_tables(tables, outputs)
