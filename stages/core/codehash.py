"""Hash of the source files a stage imports, for the cache key.

Not the git sha: that would invalidate every stage on every commit. We follow the
stage module's imports within lmforge's ``stages`` package and within the stage's own
top-level package (a plugin's), statically by AST, and hash exactly those files by
module name, so editing the dedup code recomputes dedup but not ingest, and the key
does not depend on where the code is installed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from pathlib import Path

_PACKAGE = "stages"


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports_of(path: Path, module: str, packages: frozenset[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in packages}


@functools.cache
def source_modules(module: str) -> tuple[tuple[str, Path], ...]:
    """(name, file) of every ``stages`` (or the stage's own package's) module reachable from ``module``."""
    packages = frozenset({_PACKAGE, module.split(".")[0]})
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports_of(path, name, packages))
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return tuple(sorted(seen.items()))


@functools.cache
def code_hash(module: str) -> str:
    digest = hashlib.sha256()
    for name, path in source_modules(module):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
