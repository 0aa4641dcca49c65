"""`snakemake --report` on a real run folder whose name has reST markup characters: the workflow
description names the run, and docutils reports nothing (no "System Message" boxes)."""

from __future__ import annotations

import subprocess

import pytest

from conftest import snakemake_command
from test_cli import SETTINGS, build_run

pytestmark = pytest.mark.slow
NAME = "x_*1*`q`"  # strong emphasis, emphasis, a reference and interpreted text, were they not escaped


def test_report_names_the_run_without_docutils_warnings(tmp_path):
    build_run(tmp_path / "results", f"'{NAME}'", [])
    out = tmp_path / "report.html"
    cmd = snakemake_command(
        tmp_path, "--report", str(out), overrides=[f"name='{NAME}'", f"results_dir='{tmp_path / 'results'}'", *SETTINGS]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert f"mapmerge run <strong>{NAME}</strong>: MAP (model merging" in text
    assert "System Message" not in text and "system-message" not in text and "WARNING" not in text
