"""The benchmark scripts call the package's internals, and no test runs them (they take minutes): every name they
import from mapmerge (function-local imports and gpu_check.sh's Python included) must still exist, so that a move or
a rename fails here rather than in the next measurement."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "benchmarks").glob("*.sh")])
HEREDOC = re.compile(r"<<'EOF'\n(.*?)\nEOF\n", re.S)  # the Python a shell script runs


def python_of(script: Path) -> list[str]:
    """The script's Python source: the file itself, or a shell script's quoted here-documents."""
    text = script.read_text()
    return [text] if script.suffix == ".py" else HEREDOC.findall(text)


def mapmerge_imports(source: str) -> list[tuple[str, str | None]]:
    """(module, name) for every `from mapmerge... import name` and (module, None) for every `import mapmerge...`."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mapmerge":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "mapmerge"]
    return found


def test_every_benchmark_is_read():
    assert {s.name for s in SCRIPTS} >= {"front_quality.py", "gpu_check.sh", "llm_memory.py"}
    assert mapmerge_imports(python_of(REPO / "benchmarks" / "gpu_check.sh")[0])  # its CNN part, read through


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_imports_exist(script: Path):
    for source in python_of(script):
        for module, name in mapmerge_imports(source):
            imported = importlib.import_module(module)
            if name is not None:  # a name in the module, or a submodule of a package
                submodule = hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}")
                assert hasattr(imported, name) or submodule, f"{script.name}: {module}.{name} is gone"
