"""Content digests: the lineage record and the cache key are built from these."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_json(value: Any) -> str:
    return sha256_bytes(canonical_json(value).encode("utf-8"))


def tree_digests(root: Path, *, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """sha256 of every file under ``root`` by posix relative path (hidden files skipped).

    A single file gives ``{name: digest}``.
    """
    root = Path(root)
    if root.is_file():
        return {root.name: sha256_file(root)}
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel in exclude or any(p.startswith(".") for p in path.relative_to(root).parts):
            continue
        out[rel] = sha256_file(path)
    return out


def combined_digest(digests: dict[str, str]) -> str:
    """One digest for a set of named digests (order-independent)."""
    return sha256_json(sorted(digests.items()))
