"""Cross-corpus boilerplate: lines or paragraphs that recur in many documents.

Navigation bars, footers, license headers recur verbatim across a site; a unit seen in
at least ``min_docs`` different documents is stripped from every document before
near-dedup, so two pages sharing only their chrome do not look alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from stages.dedup.normalize import hash64

_PARAGRAPH_BREAK = re.compile(r"(\n[ \t]*\n)")
_LINE_BREAK = re.compile(r"(\n)")
_SPACES = re.compile(r"\s+")


def split_units(text: str, unit: str) -> list[str]:
    """Units interleaved with their separators, so ``"".join(...)`` gives the text back."""
    return (_PARAGRAPH_BREAK if unit == "paragraph" else _LINE_BREAK).split(text)


def unit_key(unit_text: str, min_chars: int) -> int | None:
    """Hash of a unit with whitespace folded; None for units too short to judge."""
    folded = _SPACES.sub(" ", unit_text).strip()
    if len(folded) < min_chars:
        return None
    return hash64(folded)


def document_unit_keys(text: str, unit: str, min_chars: int) -> np.ndarray:
    """The distinct unit hashes of one document (each document counts a unit once)."""
    parts = split_units(text, unit)
    keys = {key for part in parts[0::2] if (key := unit_key(part, min_chars)) is not None}
    return np.fromiter(keys, dtype=np.uint64, count=len(keys))


def count_units(documents_keys: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(unit hash, number of documents containing it), sorted by hash."""
    arrays = [keys for keys in documents_keys if len(keys)]
    if not arrays:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    keys, counts = np.unique(np.concatenate(arrays), return_counts=True)
    return keys, counts.astype(np.int64)


def merge_counts(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum (hash, count) tables from several shards."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


def strip_boilerplate(text: str, boilerplate: np.ndarray, unit: str, min_chars: int) -> tuple[str, int]:
    """Text without its boilerplate units (sorted ``boilerplate`` hashes), and chars removed."""
    if not len(boilerplate):
        return text, 0
    parts = split_units(text, unit)
    kept: list[str] = []
    for i in range(0, len(parts), 2):
        key = unit_key(parts[i], min_chars)
        if key is not None:
            pos = np.searchsorted(boilerplate, np.uint64(key))
            if pos < len(boilerplate) and boilerplate[pos] == key:
                continue
        kept.append(parts[i])
    separator = "\n\n" if unit == "paragraph" else "\n"
    stripped = separator.join(part for part in kept if part.strip()) if len(kept) < (len(parts) + 1) // 2 else text
    return stripped, len(text) - len(stripped)
