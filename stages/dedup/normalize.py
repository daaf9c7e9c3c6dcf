"""Text normalization and stable hashes shared by every dedup step.

Exact dedup folds Unicode compatibility forms (NFKC), case, punctuation and whitespace,
so copies that differ only in those are one document. Hashes are blake2b-based:
stable across processes and machines (Python's ``hash`` is salted per process).
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import unicodedata

_SPACES = re.compile(r"\s+")


@functools.cache
def _punctuation_table() -> dict[int, str]:
    """Every Unicode punctuation code point (categories P*) -> space."""
    return {
        cp: " " for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)).startswith("P")
    }


def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation_table())
    return _SPACES.sub(" ", text).strip()


def hash64(data: str | bytes) -> int:
    """A stable unsigned 64-bit hash."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def exact_key(text: str) -> int:
    """Hash of the normalized text: equal for copies differing only in case, space, punctuation."""
    return hash64(normalize(text))
