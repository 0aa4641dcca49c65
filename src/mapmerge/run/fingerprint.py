"""Code fingerprints of the workflow's stages, computed from the source, not listed by hand.

A stage's fingerprint (its params' `code`) hashes the code (code_digest: the syntax tree less docstrings;
comments, blank lines and layout do not run) of every module its stage module
(mapmerge.stages.<name>) can import: the transitive closure over the import statements of mapmerge's
modules, at module level and inside functions, relative ones and `from mapmerge import x` where x is
a submodule, with the parent packages' __init__.py. The modules named by `_target_` strings in the
stage's params (the model builder, the evaluators) are followed too: mapmerge's own (the built-in
benchmark, the adapters) and the user's, where they are files under model.python_path, with what
those import from under python_path (and from mapmerge). The source is parsed with ast, nothing is
imported. The standard library and installed packages are not hashed, nor imports by computed names
(importlib.import_module).

The Snakefile is parsed by the driver and again in every cluster job, and every rule asks for its
params: a file is read, hashed and parsed once per process (again only when its size or mtime changes),
and a stage's closure is reused while none of its files changes: every stage of the package in
0.17-0.22 s, side by side with 0.12-0.14 s when the raw bytes were hashed and 0.30-0.39 s when comments
were found by tokenizing.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import mapmerge
from mapmerge import memo

PACKAGE = "mapmerge"
LENGTH = 12  # hex digits of a fingerprint

Stat = tuple[int, int]  # (mtime_ns, size)
Entry = tuple[
    int, str, tuple[str, ...] | None
]  # (relative level, module, names imported from it; None for `import module`)


def source_root() -> Path:
    """The folder holding the mapmerge package that runs (src/ of a checkout, or a copy on PYTHONPATH)."""
    return Path(mapmerge.__file__).resolve().parent.parent


def stage_fingerprint(
    module: str,
    params: Mapping[str, Any] | None = None,
    python_path: Sequence[str | os.PathLike] = (),
    root: str | os.PathLike | None = None,
) -> str:
    """The fingerprint of stage module `module` (e.g. 'mapmerge.stages.evaluation') with its params' `_target_`s.

    root: the folder holding the mapmerge package (default: the one running).
    """
    key = (
        module,
        tuple(sorted(set(targets(params)))),
        tuple(str(p) for p in python_path),
        str(Path(root or source_root()).resolve()),
    )
    cached = _closures.get(key)
    if cached is not None and all(_stat(path) == stat for path, stat in cached[1]):
        return cached[0]
    files = stage_files(*key)
    stats = tuple((path, _stat(path)) for path in files.values())
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name} {_source(files[name])[0]}\n".encode())
    _closures[key] = (digest.hexdigest()[:LENGTH], stats)
    return _closures[key][0]


_closures: dict[tuple, tuple[str, tuple[tuple[Path, Stat | None], ...]]] = {}


def stage_files(
    module: str,
    target_names: Iterable[str] = (),
    python_path: Sequence[str | os.PathLike] = (),
    root: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Module name -> source file of everything stage module `module` and the `_target_`s can import (see the module doc)."""
    roots = (Path(root or source_root()),)
    user = tuple(Path(p) for p in python_path)
    names = [module]
    for target in target_names:  # 'pkg.module.Class': its module is the longest prefix that is one
        parts = target.split(".")
        names += [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
    return closure(names, roots, user)


def targets(params: Any) -> Iterator[str]:
    """Every `_target_` string in a nested params structure."""
    if isinstance(params, Mapping):
        for key, value in params.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from targets(value)
    elif isinstance(params, (list, tuple)):
        for value in params:
            yield from targets(value)


def closure(names: Iterable[str], roots: Sequence[Path], python_path: Sequence[Path] = ()) -> dict[str, Path]:
    """Module name -> file of the modules `names` and everything they import, transitively, with their parent packages.

    mapmerge's modules are looked up under `roots`, other names under `python_path` (the user's modules,
    whose imports of mapmerge are followed too); a name found in neither (stdlib, installed packages, a
    class or function imported from a module) is left out.
    """
    found: dict[str, Path] = {}
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        in_package = name == PACKAGE or name.startswith(PACKAGE + ".")
        path = _module_file(name, roots if in_package else python_path)
        if path is None:
            continue
        found[name] = path
        if "." in name:
            todo.append(name.rpartition(".")[0])
        for imported in _imported(name, path.name == "__init__.py", _source(path)[1]):
            # mapmerge's modules never import the user's statically; the user's may import mapmerge's
            if not in_package or imported == PACKAGE or imported.startswith(PACKAGE + "."):
                todo.append(imported)
    return found


def _module_file(name: str, roots: Sequence[Path]) -> Path | None:
    """The source file of module `name` under the first of `roots` that has it (a package's __init__.py first)."""
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    for root in roots:
        base = root.joinpath(*parts)
        for path in (base / "__init__.py", base.with_name(parts[-1] + ".py")):
            if path.is_file():
                return path
    return None


def _imported(name: str, is_package: bool, entries: Sequence[Entry]) -> set[str]:
    """The absolute module names the import statements of module `name` may load (submodules or not)."""
    out = set()
    package = name if is_package else name.rpartition(".")[0]
    for level, module, names in entries:
        if level:
            parts = package.split(".") if package else []
            if level - 1 >= len(parts):
                continue  # beyond the top-level package: an ImportError
            base = ".".join([*parts[: len(parts) - (level - 1)], *([module] if module else [])])
        else:
            base = module
        if not base:
            continue
        out.add(base)
        out.update(f"{base}.{alias}" for alias in names or () if alias != "*")
    return out


def _stat(path: Path) -> Stat | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _source(path: Path) -> tuple[str, tuple[Entry, ...]]:
    """(sha256 of the file, its import statements), once per process and version of the file."""
    return _parse(str(path), _stat(path))


@cache
def _parse(path: str, stat: Stat | None) -> tuple[str, tuple[Entry, ...]]:
    data = Path(path).read_bytes()
    raw = hashlib.sha256(data).hexdigest()
    if raw not in _parsed:  # a copy of a file is parsed once, and once for every process in mapmerge.memo
        key = {"file": raw, "python": list(sys.version_info[:2]), "code": _CODE}
        digest, entries = memo.remembered("code_digest", key, lambda: _digest_and_imports(data, path))
        _parsed[raw] = (
            digest,
            tuple((level, module, None if names is None else tuple(names)) for level, module, names in entries),
        )
    return _parsed[raw]


def _digest_and_imports(data: bytes, path: str) -> tuple[str, list[Entry]]:
    try:
        tree = ast.parse(data, filename=path)
    except (SyntaxError, ValueError):  # hashed whole all the same; its imports are not followed
        return hashlib.sha256(data).hexdigest(), []
    return code_digest(tree), list(_import_entries(tree.body))


_parsed: dict[str, tuple[str, tuple[Entry, ...]]] = {}  # sha256 of a file -> (code_digest, import entries)
_CODE = memo.source_digest(__file__)  # how a digest is computed: a kept one counts only for this code


def code_digest(tree: ast.Module) -> str:
    """sha256 of a module's code: its syntax tree less docstrings, so that an edit of comments, docstrings, blank
    lines or layout (line breaks, spaces, parentheses, quotes) alone reruns nothing: they do not run. String
    literals other than docstrings are data and count as written. Empty fields (None, []) are left out, so that a
    Python release that adds one to a node does not change the digest."""
    parts: list[str] = []

    def dump(node: object) -> None:
        if isinstance(node, ast.AST):
            parts.append(type(node).__name__ + "(")
            for name, value in ast.iter_fields(node):
                if name == "body" and isinstance(node, _DOCUMENTED) and value and _is_docstring(value[0]):
                    value = value[1:]
                if value is not None and value != []:
                    parts.append(name + "=")
                    dump(value)
            parts.append(")")
        elif isinstance(node, list):
            parts.append("[")
            for item in node:
                dump(item)
            parts.append("]")
        else:
            parts.append(repr(node) + ",")

    dump(tree)
    return hashlib.sha256("".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)  # whose body may open with a docstring


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _import_entries(body: Sequence[ast.stmt]) -> Iterator[Entry]:
    """The import statements of a statement list and of the statements nested in it (functions, classes,
    if/try/with/for/while/match blocks); expressions are not walked: an import is a statement."""
    for node in body:
        if isinstance(node, ast.Import):
            yield from ((0, alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", tuple(alias.name for alias in node.names)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                nested = getattr(node, field, None)
                if isinstance(nested, list):
                    yield from _import_entries(nested)
