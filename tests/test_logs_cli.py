import pytest

from mapmerge.cli import main
from mapmerge.logs import run_stage


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


def test_cli_summary_of_a_missing_run(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "nothing")]) == 1
    assert "report.md: not found" in capsys.readouterr().err
