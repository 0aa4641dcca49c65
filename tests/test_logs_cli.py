import subprocess
import sys

import pytest

from conftest import as_user
from mapmerge.run.logs import run_stage
from mapmerge.tools.cli import main


def good(x: int) -> int:
    return x + 1


def bad() -> None:
    raise ValueError("model.tasks.a: broken")


def test_run_stage_logs_and_keeps_the_traceback(tmp_path):
    assert run_stage(good, tmp_path / "ok.log", 1) == 2
    assert "done good" in (tmp_path / "ok.log").read_text()
    with pytest.raises(ValueError, match="model.tasks.a: broken"):
        run_stage(bad, tmp_path / "logs" / "bad.log")
    text = (tmp_path / "logs" / "bad.log").read_text()
    assert "failed bad" in text and "Traceback" in text


def test_cli_summary_of_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "run" / "logs").mkdir(parents=True)
    assert main(["summary", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.startswith(f"mapmerge: {tmp_path / 'run' / 'report.md'}: not found; ")
    (tmp_path / "run" / "report.md").write_bytes(b"\xff\xfe# report")
    assert main(["summary", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == (
        f"mapmerge: {tmp_path / 'run' / 'report.md'}: not UTF-8 text (invalid start byte at byte 0); delete it and "
        "run snakemake again to write it anew\n"
    )


def damaged_run(tmp_path):
    """A results folder with good and damaged artifacts and a temporary file left by a stopped job."""
    import pandas as pd
    import torch

    from mapmerge.io import write_table
    from mapmerge.tensors.checkpoints import save_safetensors

    results = tmp_path / "run"
    good = write_table(pd.DataFrame({"a": [1.0]}), results / "good.parquet", "s")
    bad_table = write_table(pd.DataFrame({"a": [1.0]}), results / "groups" / "bad.parquet", "s")
    bad_table.write_bytes(bad_table.read_bytes()[:-9])
    tensors = save_safetensors({"w": torch.ones(4)}, results / "ok.safetensors")
    bad_tensors = save_safetensors({"w": torch.ones(64)}, results / "task_vectors" / "t.safetensors")
    bad_tensors.write_bytes(bad_tensors.read_bytes()[:100])
    leftover = results / "groups" / ".x.parquet.1234abcd.tmp"
    leftover.write_bytes(b"half")
    mine = results / ".notes.tmp"  # a dotfile of the user's, not a write's (no random part): neither listed nor deleted
    mine.write_bytes(b"mine")
    return results, [good, tensors, mine], [bad_table, bad_tensors], leftover


def test_check_lists_bad_artifacts_and_deletes_them(tmp_path, capsys):
    results, good, bad, leftover = damaged_run(tmp_path)
    assert main(["check", str(results)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"bad: {bad[0]}: unreadable Parquet (") and out[1].startswith(
        f"bad: {bad[1]}: unreadable safetensors ("
    )
    assert out[2] == f"leftover: {leftover} (temporary file of a stopped job)"
    assert out[3] == f"4 artifacts checked under {results}: 2 bad, 1 leftover temporary files"
    assert all(p.exists() for p in [*good, *bad, leftover])
    assert main(["check", str(results), "--delete"]) == 0
    assert "deleted 3 files; run snakemake again" in capsys.readouterr().out
    assert all(p.exists() for p in good) and not any(p.exists() for p in [*bad, leftover])
    assert main(["check", str(results)]) == 0


def test_check_deletes_nothing_while_a_driver_runs(tmp_path, capsys):
    results, good, bad, leftover = damaged_run(tmp_path)
    hold = "import sys, time; from mapmerge.run import runlock; runlock.hold(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    driver = subprocess.Popen([sys.executable, "-c", hold, str(results)], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "held"
        assert main(["check", str(results), "--delete"]) == 1
        out = capsys.readouterr().out
        assert f"bad: {bad[0]}" in out and "leftover:" not in out  # temporary files are outputs being written
        assert f"a snakemake driver (pid {driver.pid} on" in out and "nothing is deleted while it runs" in out
        assert all(p.exists() for p in [*bad, leftover])
    finally:
        driver.kill()
        driver.wait()


def test_check_of_a_missing_folder(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"mapmerge check: {tmp_path / 'nothing'}: not a folder\n"


def test_check_says_which_files_it_cannot_delete(tmp_path):
    results, good, bad, leftover = damaged_run(tmp_path)
    folders = sorted({p.parent for p in [*bad, leftover]})
    for folder in folders:
        folder.chmod(0o555)
    try:
        done = subprocess.run(as_user(["check", str(results), "--delete"]), capture_output=True, text=True)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert done.returncode == 1 and done.stderr == ""
    out = done.stdout.splitlines()
    assert out[3] == f"4 artifacts checked under {results}: 2 bad, 1 leftover temporary files"
    assert out[4:] == [f"not deleted: {p} (Permission denied)" for p in [*bad, leftover]]
    assert all(p.exists() for p in [*good, *bad, leftover])
