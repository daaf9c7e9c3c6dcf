"""Hash of the repo source files a stage imports, for the cache key.

Not the git sha: that would invalidate every stage on every commit. We follow the
stage module's ``stages.*`` imports (statically, by AST) and hash exactly those
files, so editing the dedup code recomputes dedup but not ingest.
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


def _imports_of(path: Path, module: str) -> set[str]:
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
    return {name for name in found if name == _PACKAGE or name.startswith(_PACKAGE + ".")}


@functools.cache
def source_files(module: str) -> tuple[Path, ...]:
    """All ``stages`` source files reachable from ``module`` by import."""
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
        todo.extend(_imports_of(path, name))
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return tuple(sorted(set(seen.values())))


@functools.cache
def code_hash(module: str) -> str:
    digest = hashlib.sha256()
    root = Path(importlib.util.find_spec(_PACKAGE).origin).parent.parent
    for path in source_files(module):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
