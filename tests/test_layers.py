"""The package's layers and the direction of its imports (every import, function-local ones included).

base (errors, io, progress) < core < tensors < adapters, builtin < stages; outputs sits on core; run
(config, checks, fingerprints) and tools (cli, run folder) on top. A layer imports only the layers
listed for it, and no group of modules imports itself round in a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"
ALLOWED = {
    "base": set(),
    "core": {"base"},
    "tensors": {"base", "core"},
    "adapters": {"base", "core", "tensors"},
    "builtin": {"base", "core", "tensors"},
    "outputs": {"base", "core"},
    "stages": {"base", "core", "tensors", "adapters", "builtin", "outputs"},
    "run": {"base", "core", "tensors", "adapters", "builtin"},
    "tools": {"base", "core", "tensors", "adapters", "builtin", "outputs", "run"},
}


def modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted((SRC / "mapmerge").rglob("*.py"))
    }


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "base"


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported mapmerge module, line, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else [])
                    )
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in known else base, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(m, line, f) for m, line, f in found if m.split(".")[0] == "mapmerge"]


def test_every_module_is_in_a_layer():
    for module in modules():
        assert layer(module) in ALLOWED, module


def test_imports_point_down_the_layers():
    mods = modules()
    bad = []
    for module, path in mods.items():
        for imported, line, _ in imports(module, path, set(mods)):
            if imported.split(".")[0] != "mapmerge" or imported == "mapmerge":
                continue
            have, want = layer(module), layer(imported)
            if want != have and want not in ALLOWED[have]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {have} imports {want} ({imported})")
    assert not bad, "\n".join(bad)


def test_function_local_imports_say_why():
    """A function-local import of mapmerge itself defers a heavy dependency on purpose, and its line says so."""
    mods = modules()
    silent = []
    for module, path in mods.items():
        lines = path.read_text().splitlines()
        for imported, line, in_function in imports(module, path, set(mods)):
            if (
                in_function
                and imported.split(".")[0] == "mapmerge"
                and "deferred" not in lines[line - 1] + lines[line - 2]
            ):
                silent.append(f"{path.relative_to(REPO)}:{line}: {imported}")
    assert not silent, "\n".join(silent)


def test_no_import_cycles():
    mods = modules()
    graph = {m: {i for i, _, _ in imports(m, p, set(mods)) if i in mods and i != m} for m, p in mods.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, cycles


def test_the_snakefile_imports_no_heavy_library():
    """What the Snakefile imports at parse time (every driver start, every SLURM job) loads no torch, pymoo,
    matplotlib or scipy.stats (a second to import; the design's points come from mapmerge.memo): those belong to
    the stages, which jobs import alone."""
    snakefile = (SRC.parent / "Snakefile").read_text()
    lines = [line for line in snakefile.splitlines() if line.startswith(("import ", "from "))]
    code = "\n".join(
        [
            *lines,
            "import sys",
            "print(sorted({'torch', 'pymoo', 'moocore', 'matplotlib', 'scipy.stats'} & set(sys.modules)))",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
